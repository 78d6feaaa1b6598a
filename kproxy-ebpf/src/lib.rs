//! Kernel-side modules of kproxy. The entry points live in `main.rs`.
//!
//! Layout (Cilium bpf/lib style, one concern per module):
//! - [`hdr`]: header offsets and lengths of the frames handled;
//! - [`ctx`]: the packet-context abstraction (TC via checksum helpers, XDP via RFC 1624);
//! - [`parse`]: Ethernet/IPv4/TCP/UDP into a [`parse::Flow`];
//! - [`frag`]: IPv4 fragments: the first fragment's ports for the later ones;
//! - [`lb`]: frontend lookup (exact, then NodePort on node addresses) and backend choice;
//! - [`conntrack`]: both directions' entries, timeouts, TCP state;
//! - [`nat`]: DNAT, masquerade and reverse NAT;
//! - [`snat`]: which new flows are SNATed to the node, and their port allocation;
//! - [`reject`]: frontends without usable backends: REJECT or DROP as kube-proxy does;
//! - [`icmp`]: TC only: the ICMP port unreachable built in place from the packet;
//! - [`icmp_error`]: TC only: ICMP errors about translated flows, translated with them;
//! - [`datapath`]: the packet walk every hook runs;
//! - [`fib`]: XDP only: sending translated packets to their next hop (or the stack);
//! - [`sock`]: socket-LB: cgroup connect4/sendmsg4/recvmsg4/getpeername4 translation;
//! - [`maps`], [`stats`].
#![no_std]

pub mod conntrack;
pub mod ctx;
pub mod datapath;
pub mod fib;
pub mod frag;
pub mod hdr;
pub mod icmp;
pub mod icmp_error;
pub mod lb;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod reject;
pub mod snat;
pub mod sock;
pub mod stats;
