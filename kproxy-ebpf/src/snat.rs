//! SNAT of the new flows kube-proxy masquerades (its KUBE-MARK-MASQ cases, decided per
//! frontend by the agent): the source becomes the node's address and a port the
//! datapath allocates from the configured range. The port is claimed by inserting the
//! flow's reply entry with `BPF_NOEXIST` (Cilium's `snat_v4_new_mapping`), so two flows
//! to one backend never share a reply tuple; replies are un-SNATed by the reply path.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use kproxy_common::{
    Backend, Config, CtEntry, ServiceValue,
    conntrack::{CT_F_MASQ, CT_F_SNAT},
    lb::{SVC_F_SNAT, SVC_F_SNAT_OFF_CLUSTER},
    node::SNAT_RETRIES,
};

use crate::{
    conntrack::{self as ct},
    maps::{CONFIG, CONNTRACK},
    parse::Flow,
};

/// `-EEXIST` from a map update with `BPF_NOEXIST`: the key is taken.
const EEXIST: i32 = -17;

/// Why a new SNAT flow got no entries.
pub enum SnatError {
    /// Every port tried is held by a live flow to the same backend.
    PortExhausted,
    /// The conntrack map refused an entry.
    CtFull,
}

/// The node-wide settings (the config map's single entry), if written.
#[inline(always)]
pub fn config() -> Option<Config> {
    CONFIG.get(0).copied()
}

/// Whether a new flow of `flow` to backend `b` of the frontend `svc` is SNATed: its
/// frontend says so always, or for sources outside the cluster CIDR; never without a
/// SNAT address, nor to a backend at the node's own address (a host-network endpoint:
/// delivered locally, its packets never reach kube-proxy's POSTROUTING masquerade, and
/// a reply to the node's own address would leave through `lo`, which has no program).
#[inline(always)]
pub fn wanted(svc: &ServiceValue, flow: &Flow, b: &Backend, cfg: &Config) -> bool {
    if cfg.snat_addr == 0 {
        return false;
    }
    let masquerade = svc.flags & SVC_F_SNAT != 0
        || (svc.flags & SVC_F_SNAT_OFF_CLUSTER != 0 && flow.saddr & cfg.cluster_mask != cfg.cluster_net);
    masquerade && b.addr != cfg.snat_addr
}

/// Inserts both entries of the new flow `e` of `flow` with its source rewritten to
/// `e.masq_addr` (set by the caller: the node's address for SNAT; the client's own, or
/// the hairpin masquerade address, to remap a clashing port) and a port allocated from
/// the range: claims the port (the reply entry), then the service entry.
#[inline(always)]
pub fn create(flow: &Flow, e: &mut CtEntry, cfg: &Config, now: u64) -> Result<(), SnatError> {
    e.flags |= CT_F_MASQ | CT_F_SNAT;
    claim_port(e, flow.proto, cfg, now)?;
    if ct::insert_service(flow, e).is_err() {
        let _ = CONNTRACK.remove(ct::reply_key_of(e, flow.proto));
        return Err(SnatError::CtFull);
    }
    Ok(())
}

/// Sets `e.masq_port` to a port of the range whose reply tuple is free and inserts the
/// reply entry there: random ports, a taken one reclaimed if its flow is dead, at most
/// [`SNAT_RETRIES`] tries.
#[inline(always)]
fn claim_port(e: &mut CtEntry, proto: u8, cfg: &Config, now: u64) -> Result<(), SnatError> {
    let (min, max) = (cfg.snat_port_min as u32, cfg.snat_port_max as u32);
    if min == 0 || max < min {
        return Err(SnatError::PortExhausted);
    }
    let size = max - min + 1;
    for _ in 0..SNAT_RETRIES {
        // SAFETY: helper without arguments.
        let Some(offset) = unsafe { bpf_get_prandom_u32() }.checked_rem(size) else {
            // `size` is at least 1; this spares the verifier a panic path.
            return Err(SnatError::PortExhausted);
        };
        let port = min + offset;
        e.masq_port = (port as u16).to_be();
        let key = ct::reply_key_of(e, proto);
        match CONNTRACK.insert(key, *e, BPF_NOEXIST as u64) {
            Ok(()) => return Ok(()),
            Err(EEXIST) => {}
            Err(_) => return Err(SnatError::CtFull),
        }
        if ct::reclaim(key, proto, now, &cfg.ct_timeouts)
            && CONNTRACK.insert(key, *e, BPF_NOEXIST as u64).is_ok()
        {
            return Ok(());
        }
    }
    Err(SnatError::PortExhausted)
}
