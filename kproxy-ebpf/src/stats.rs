//! Per-interface packet counters.

use kproxy_common::{CounterKey, IfaceCounters};

use crate::maps::IFACE_STATS;

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
