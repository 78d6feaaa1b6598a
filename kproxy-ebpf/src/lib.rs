//! Kernel-side modules of kproxy. The entry points live in `main.rs`.
//!
//! Layout (Cilium bpf/lib style, one concern per module):
//! - [`hdr`]: header offsets and lengths of the frames handled;
//! - [`ctx`]: the packet-context abstraction (TC via checksum helpers, XDP via RFC 1624);
//! - [`parse`]: Ethernet/IPv4/TCP/UDP into a [`parse::Flow`];
//! - [`lb`]: frontend lookup (exact, then NodePort on node addresses) and backend choice;
//! - [`conntrack`]: both directions' entries, timeouts, TCP state;
//! - [`nat`]: DNAT, masquerade and reverse NAT;
//! - [`snat`]: which new flows are SNATed to the node, and their port allocation;
//! - [`datapath`]: the packet walk every hook runs;
//! - [`fib`]: XDP only: sending translated packets to their next hop (or the stack);
//! - [`maps`], [`stats`].
//!
//! A service without backends drops its packets and counts them (`no_backend_drops`,
//! `EV_DROP_NO_BACKEND`): kube-proxy REJECTs with ICMP port-unreachable, which needs a
//! generated reply packet; dropping is the documented minimum (clients time out instead
//! of failing fast).
#![no_std]

pub mod conntrack;
pub mod ctx;
pub mod datapath;
pub mod fib;
pub mod hdr;
pub mod lb;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod snat;
pub mod stats;
