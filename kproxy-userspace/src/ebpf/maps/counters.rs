//! The counters the programs keep: per frontend and per backend (pinned, summed over
//! CPUs), the global events, and per interface and hook (held by the loaded object).

use aya::{
    Ebpf,
    maps::{MapError, PerCpuHashMap},
};
use kproxy_common::{CounterKey, FlowCounters, IfaceCounters, map_names as names, stats::EVENT_NAMES};

use super::{BackendId, DatapathMaps, FrontendId, MapOp, MapsError, found};

fn sum(values: &[FlowCounters]) -> FlowCounters {
    values.iter().fold(FlowCounters::default(), |mut total, c| {
        total += *c;
        total
    })
}

impl DatapathMaps {
    /// Counters of frontend `id`, summed over CPUs (zero if none yet).
    pub fn frontend_counters(&self, id: FrontendId) -> Result<FlowCounters, MapsError> {
        Ok(found(self.service_stats.get(&id.0, 0), names::SERVICE_STATS)?
            .map(|v| sum(&v))
            .unwrap_or_default())
    }

    /// Counters of backend `id`, summed over CPUs (zero if none yet).
    pub fn backend_counters(&self, id: BackendId) -> Result<FlowCounters, MapsError> {
        Ok(found(self.backend_stats.get(&id.0, 0), names::BACKEND_STATS)?
            .map(|v| sum(&v))
            .unwrap_or_default())
    }

    /// The global event counters (`kproxy_common::stats::EVENT_NAMES`), by name, summed over CPUs.
    pub fn events(&self) -> Result<Vec<(&'static str, u64)>, MapsError> {
        let mut out = Vec::with_capacity(EVENT_NAMES.len());
        for (i, name) in EVENT_NAMES.iter().enumerate() {
            let v = self
                .events
                .get(&(i as u32), 0)
                .map_err(MapOp::Lookup.on(names::EVENTS))?;
            out.push((*name, v.iter().sum()));
        }
        Ok(out)
    }
}

/// The counters of `hook` on `ifindex` in the loaded object `ebpf`, summed over CPUs;
/// zero when nothing was counted.
pub fn iface_counters(ebpf: &Ebpf, ifindex: u32, hook: u32) -> Result<IfaceCounters, MapsError> {
    let map = ebpf
        .map(names::IFACE_STATS)
        .ok_or(MapsError::Missing(names::IFACE_STATS))?;
    let map: PerCpuHashMap<_, CounterKey, IfaceCounters> =
        PerCpuHashMap::try_from(map).map_err(|source| MapsError::Layout {
            map: names::IFACE_STATS,
            source: Box::new(source),
        })?;
    match map.get(&CounterKey { ifindex, hook }, 0) {
        Ok(per_cpu) => Ok(per_cpu
            .iter()
            .fold(IfaceCounters::default(), |sum, c| IfaceCounters {
                packets: sum.packets + c.packets,
                bytes: sum.bytes + c.bytes,
            })),
        Err(MapError::KeyNotFound) => Ok(IfaceCounters::default()),
        Err(err) => Err(MapOp::Lookup.on(names::IFACE_STATS)(err)),
    }
}
