//! Reading the per-interface packet counters the programs keep.

use std::borrow::Borrow;

use aya::maps::{MapData, MapError, PerCpuHashMap};
use kproxy_common::{CounterKey, IfaceCounters};

/// Name of the per-CPU (interface, hook) → counters map in the eBPF object.
pub const IFACE_STATS_MAP: &str = "KPROXY_IFACE_STATS_V1";

/// The counters of `hook` on `ifindex`, summed over CPUs; zero when nothing was counted.
pub fn iface_counters<T: Borrow<MapData>>(
    map: &PerCpuHashMap<T, CounterKey, IfaceCounters>,
    ifindex: u32,
    hook: u32,
) -> Result<IfaceCounters, MapError> {
    match map.get(&CounterKey { ifindex, hook }, 0) {
        Ok(per_cpu) => Ok(per_cpu
            .iter()
            .fold(IfaceCounters::default(), |sum, c| IfaceCounters {
                packets: sum.packets + c.packets,
                bytes: sum.bytes + c.bytes,
            })),
        Err(MapError::KeyNotFound) => Ok(IfaceCounters::default()),
        Err(err) => Err(err),
    }
}
