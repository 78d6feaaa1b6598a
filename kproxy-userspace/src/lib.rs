//! kproxy's library: one service model, read from Kubernetes objects, and the writers
//! that turn it into a datapath.
//!
//! Sources → model → writers → kernel:
//! - [`manifests`] reads Service and EndpointSlice YAML into the [`model`] (with
//!   [`config`], kube-proxy's configuration file);
//! - [`ebpf`] writes the model into the BPF maps of kproxy's own datapath (and loads and
//!   attaches its programs); [`iptables`] renders kube-proxy's exact rules for the same
//!   model and applies them;
//! - [`agent`] (`kproxy run`) keeps one writer in step with the model, and leaves a
//!   [`record`] of what it applied;
//! - [`inspect`] reads both writers' output side by side.
//!
//! `docs/architecture.md` says what may import what.

pub mod agent;
pub mod cluster;
pub mod config;
pub mod ebpf;
pub mod inspect;
pub mod iptables;
pub mod manifests;
pub mod model;
pub mod record;

/// The kernel programs, built from `kproxy-ebpf` and embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kproxy"));

/// `err` and its causes on one line (`a: b: c`), for log lines. kproxy's errors, like
/// aya's, print their cause only through `source()`, never in their own message.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
