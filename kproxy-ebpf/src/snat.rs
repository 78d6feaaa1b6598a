//! SNAT of the new flows kube-proxy masquerades (its KUBE-MARK-MASQ cases, decided per
//! frontend by the agent): the source becomes the node's address and a port the
//! datapath allocates from the configured range. The port is claimed by inserting the
//! flow's reply entry with `BPF_NOEXIST` (Cilium's `snat_v4_new_mapping`), so two flows
//! to one backend never share a reply tuple; replies are un-SNATed by the reply path.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_prandom_u32, bpf_loop},
};
use kproxy_common::{
    Backend, Config, CtEntry, ServiceValue,
    conntrack::{CT_F_MASQ, CT_F_SNAT, CtTimeouts},
    lb::{SVC_F_SNAT, SVC_F_SNAT_OFF_CLUSTER},
    node::SNAT_RETRIES,
};

use crate::{
    conntrack::{self as ct, CreateError, Table},
    maps::CONFIG,
    parse::Flow,
};

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
        ct::remove(Table::Any, &ct::reply_key_of(e, flow.proto));
        return Err(SnatError::CtFull);
    }
    Ok(())
}

/// Sets `e.masq_port` to a port of the range whose reply tuple is free and inserts the
/// reply entry there: random ports, a taken one reclaimed if its flow is dead, at most
/// [`SNAT_RETRIES`] tries. The tries run under `bpf_loop`, so the verifier checks one
/// try, not each of them (the search is the program's largest part).
#[inline(always)]
fn claim_port(e: &mut CtEntry, proto: u8, cfg: &Config, now: u64) -> Result<(), SnatError> {
    let (min, max) = (cfg.snat_port_min as u32, cfg.snat_port_max as u32);
    if min == 0 || max < min {
        return Err(SnatError::PortExhausted);
    }
    let mut search = PortSearch {
        entry: e,
        timeouts: &cfg.ct_timeouts,
        now,
        min,
        size: max - min + 1,
        proto,
        outcome: SEARCHING,
    };
    // SAFETY: `claim_try` has bpf_loop's callback signature and is given a `PortSearch`
    // that outlives the call.
    unsafe {
        bpf_loop(
            SNAT_RETRIES,
            claim_try as *mut c_void,
            (&raw mut search).cast(),
            0,
        );
    }
    match search.outcome {
        CLAIMED => Ok(()),
        FULL => Err(SnatError::CtFull),
        _ => Err(SnatError::PortExhausted),
    }
}

/// `PortSearch::outcome` while no try has succeeded (or every try found its port taken).
const SEARCHING: u8 = 0;
/// A port was claimed.
const CLAIMED: u8 = 1;
/// The conntrack table refused the entry.
const FULL: u8 = 2;

/// The port search's state, shared with each try (`claim_try`) through `bpf_loop`.
#[repr(C)]
struct PortSearch<'a> {
    entry: &'a mut CtEntry,
    timeouts: &'a CtTimeouts,
    now: u64,
    /// The range's first port and its size (at least 1).
    min: u32,
    size: u32,
    proto: u8,
    outcome: u8,
}

/// One try of the port search (bpf_loop's callback): a random port of the range, claimed
/// if its reply tuple is free; returns 1 to stop the loop, 0 to try again.
extern "C" fn claim_try(_index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `claim_port` passes a live `PortSearch` as the context.
    let s = unsafe { &mut *ctx.cast::<PortSearch>() };
    // SAFETY: helper without arguments.
    let Some(offset) = unsafe { bpf_get_prandom_u32() }.checked_rem(s.size) else {
        // `size` is at least 1; this spares the verifier a panic path.
        return 1;
    };
    s.entry.masq_port = ((s.min + offset) as u16).to_be();
    let key = ct::reply_key_of(s.entry, s.proto);
    match ct::claim(key, s.entry, None, s.now, s.timeouts) {
        Ok(()) => {
            s.outcome = CLAIMED;
            1
        }
        Err(CreateError::Clash) => 0,
        Err(CreateError::Full) => {
            s.outcome = FULL;
            1
        }
    }
}
