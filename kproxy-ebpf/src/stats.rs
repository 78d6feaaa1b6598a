//! Counters: per interface and hook, per service, per backend, and global events.

use aya_ebpf::maps::PerCpuHashMap;
use kproxy_common::{CounterKey, FlowCounters, IfaceCounters};

use crate::maps::{BACKEND_STATS, EVENTS, IFACE_STATS, SERVICE_STATS};

/// Adds one packet of `bytes` length to the counters of `hook` on `ifindex`.
#[inline(always)]
pub fn count_packet(ifindex: u32, hook: u32, bytes: u64) {
    let key = CounterKey { ifindex, hook };
    if let Some(counters) = IFACE_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, so no other program writes it concurrently.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        }
        return;
    }
    let first = IfaceCounters { packets: 1, bytes };
    // Another CPU's first packet can race this insert: BPF_NOEXIST would lose ours,
    // BPF_ANY on a per-CPU map only writes this CPU's slot, so use it.
    let _ = IFACE_STATS.insert(key, first, 0);
}

/// Bumps the global event counter `ev` (`kproxy_common::stats::EV_*`).
#[inline(always)]
pub fn event(ev: u32) {
    if let Some(c) = EVENTS.get_ptr_mut(ev) {
        // SAFETY: per-CPU slot of an array map: valid and written by this CPU only.
        unsafe { *c += 1 };
    }
}

/// What one packet adds to a flow counter.
#[derive(Clone, Copy)]
pub struct Delta {
    pub bytes: u64,
    pub new_flow: bool,
    pub no_backend_drop: bool,
    pub reject: bool,
    pub source_range_drop: bool,
}

impl Delta {
    /// A packet of `bytes` and nothing else.
    #[inline(always)]
    pub const fn packet(bytes: u64) -> Self {
        Delta {
            bytes,
            new_flow: false,
            no_backend_drop: false,
            reject: false,
            source_range_drop: false,
        }
    }
}

#[inline(always)]
fn add(map: &PerCpuHashMap<u32, FlowCounters>, id: u32, d: Delta) {
    if let Some(c) = map.get_ptr_mut(id) {
        // SAFETY: per-CPU value, written only by this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += d.bytes;
            (*c).new_flows += d.new_flow as u64;
            (*c).no_backend_drops += d.no_backend_drop as u64;
            (*c).rejects += d.reject as u64;
            (*c).source_range_drops += d.source_range_drop as u64;
        }
        return;
    }
    let first = FlowCounters {
        packets: 1,
        bytes: d.bytes,
        new_flows: d.new_flow as u64,
        no_backend_drops: d.no_backend_drop as u64,
        rejects: d.reject as u64,
        source_range_drops: d.source_range_drop as u64,
    };
    // BPF_ANY: only this CPU's slot is written (see count_packet).
    let _ = map.insert(id, first, 0);
}

/// Counts a packet of the service with reverse-NAT id `rev_nat_id`.
#[inline(always)]
pub fn count_service(rev_nat_id: u32, d: Delta) {
    add(&SERVICE_STATS, rev_nat_id, d);
}

/// Counts a packet sent to backend `id`.
#[inline(always)]
pub fn count_backend(id: u32, d: Delta) {
    add(&BACKEND_STATS, id, d);
}
