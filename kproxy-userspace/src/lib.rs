//! kproxy's agent library: loading the kernel programs, reading their maps, and (in
//! later modules) the service model, BPF sync, iptables renderer and inspection.

pub mod agent;
pub mod attach;
pub mod bpf;
pub mod config;
pub mod counters;
pub mod iface;
pub mod inspect;
pub mod iptables;
pub mod model;
pub mod netfilter;
pub mod programs;
pub mod source;
pub mod state;
pub mod sync;
pub mod watch;
pub mod xdp_features;

/// The kernel programs, built from `kproxy-ebpf` and embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kproxy"));
