//! The counters the programs keep: per frontend and per backend (pinned, summed over
//! CPUs), the global events, and per interface and hook (held by the loaded object).

use aya::{
    Ebpf,
    maps::{IterableMap, MapError, PerCpuHashMap},
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

/// One map's fill: entries held (None for arrays, always full) and `max_entries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSize {
    pub map: &'static str,
    pub entries: Option<usize>,
    pub capacity: u32,
}

/// The size of a keyed map: its keys counted (one BPF_MAP_GET_NEXT_KEY each: callers
/// keep this off the sync thread) and its `max_entries`.
fn keyed<K: aya::Pod, M: IterableMap<K, V>, V>(
    map: &M,
    keys: impl Iterator<Item = Result<K, MapError>>,
    name: &'static str,
) -> Result<MapSize, MapsError> {
    Ok(MapSize {
        map: name,
        entries: Some(keys.flatten().count()),
        capacity: capacity(map, name)?,
    })
}

fn array(capacity: u32, name: &'static str) -> MapSize {
    MapSize {
        map: name,
        entries: None,
        capacity,
    }
}

fn capacity<K: aya::Pod, V, M: IterableMap<K, V>>(map: &M, name: &'static str) -> Result<u32, MapsError> {
    Ok(map.map().info().map_err(MapOp::Info.on(name))?.max_entries())
}

impl DatapathMaps {
    /// Entries and capacity of every map the agent keeps or the programs fill.
    pub fn map_sizes(&self) -> Result<Vec<MapSize>, MapsError> {
        Ok(vec![
            keyed(&self.services, self.services.keys(), names::SERVICES)?,
            keyed(&self.slots, self.slots.keys(), names::SLOTS)?,
            keyed(&self.backends, self.backends.keys(), names::BACKENDS)?,
            keyed(&self.revnat, self.revnat.keys(), names::REVNAT)?,
            keyed(&self.ct_tcp, self.ct_tcp.keys(), names::CT_TCP)?,
            keyed(&self.ct_any, self.ct_any.keys(), names::CT_ANY)?,
            keyed(&self.affinity, self.affinity.keys(), names::AFFINITY)?,
            keyed(&self.node_addrs, self.node_addrs.keys(), names::NODE_ADDRS)?,
            keyed(
                &self.service_stats,
                self.service_stats.keys(),
                names::SERVICE_STATS,
            )?,
            keyed(
                &self.backend_stats,
                self.backend_stats.keys(),
                names::BACKEND_STATS,
            )?,
            keyed(
                &self.source_ranges,
                self.source_ranges.keys(),
                names::SOURCE_RANGES,
            )?,
            array(capacity(&self.config, names::CONFIG)?, names::CONFIG),
            array(capacity(&self.events, names::EVENTS)?, names::EVENTS),
            array(
                capacity(&self.reject_rate, names::REJECT_RATE)?,
                names::REJECT_RATE,
            ),
        ])
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
