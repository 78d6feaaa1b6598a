//! Typed handles on every datapath map, with the operations the sync, verify and
//! inspection need, split by map family the way aya splits its maps: frontends
//! (services, slots, reverse NAT), source ranges, backends, node-wide settings (with the
//! reject rate limit), conntrack, counters.
//!
//! Userspace speaks std::net types; conversion to the maps' network-order `#[repr(C)]`
//! types (`kproxy_common`) happens in this module only.

mod backends;
mod conntrack;
pub mod counters;
mod frontend;
mod frontend_addrs;
mod frontends;
mod node;
mod source_ranges;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        xdp::{DevMapHash, XdpMapError},
    },
};
pub use conntrack::{CtDirection, CtFlow};
pub use frontend::{
    BackendId, Frontend, FrontendEntry, FrontendId, FrontendOptions, Masquerade, SourceRange,
};
use kproxy_common::{
    AffinityKey, AffinityValue, Backend, Config, CtEntry, CtKey, FlowCounters, NodeAddr, RateBucket, RevNat,
    ServiceKey, ServiceValue, SlotKey, SourceRangeKey, SourceRangeValue, lb::MAX_BACKENDS_PER_SERVICE,
    map_names as names,
};
pub use node::SnatSettings;

/// A failed map operation or an update the maps cannot take.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("{} {map}: `{}` failed", op.verb(), op.call())]
    Op {
        op: MapOp,
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error(
        "insert into {map}: the map is full; raise its max_entries in kproxy-ebpf/src/maps.rs \
         (or LoadOptions for conntrack), or remove stale entries"
    )]
    Full { map: &'static str },
    #[error("map {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("open pinned map {}: `BPF_OBJ_GET` failed", path.display())]
    OpenPinned {
        path: PathBuf,
        #[source]
        source: Box<MapError>,
    },
    #[error("map {map} has an unexpected type or layout; a pinned map of an older layout? unpin it")]
    Layout {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("{frontend}: {count} backends, at most {MAX_BACKENDS_PER_SERVICE} per frontend")]
    TooManyBackends { frontend: Frontend, count: usize },
    #[error(
        "{frontend}: backend {id} is not in {}; upsert backends before the frontends using them",
        names::BACKENDS
    )]
    UnknownBackend { frontend: Frontend, id: BackendId },
    #[error("backend id 0 is reserved")]
    ReservedBackendId,
    #[error("no free frontend id ({0} frontends)")]
    NoFrontendId(usize),
    #[error("insert into {}", names::XDP_TARGETS)]
    XdpTarget(#[source] XdpMapError),
}

/// A map operation, named by the bpf(2) command it issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    Insert,
    Lookup,
    Iterate,
    Delete,
    Info,
}

impl MapOp {
    fn verb(self) -> &'static str {
        match self {
            MapOp::Insert => "insert into",
            MapOp::Lookup => "look up in",
            MapOp::Iterate => "iterate",
            MapOp::Delete => "delete from",
            MapOp::Info => "read the info of",
        }
    }

    fn call(self) -> &'static str {
        match self {
            MapOp::Insert => "BPF_MAP_UPDATE_ELEM",
            MapOp::Lookup => "BPF_MAP_LOOKUP_ELEM",
            MapOp::Iterate => "BPF_MAP_GET_NEXT_KEY/BPF_MAP_LOOKUP_ELEM",
            MapOp::Delete => "BPF_MAP_DELETE_ELEM",
            MapOp::Info => "BPF_OBJ_GET_INFO_BY_FD",
        }
    }

    /// The error for `source` from this operation on `map` (a full map on insert is
    /// [`MapsError::Full`]).
    fn on(self, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
        move |source| {
            if self == MapOp::Insert && (is_errno(&source, libc::E2BIG) || is_errno(&source, libc::ENOSPC)) {
                MapsError::Full { map }
            } else {
                MapsError::Op {
                    op: self,
                    map,
                    source: Box::new(source),
                }
            }
        }
    }
}

fn is_errno(err: &MapError, errno: i32) -> bool {
    match err {
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(errno),
        MapError::IoError(e) => e.raw_os_error() == Some(errno),
        _ => false,
    }
}

/// Ok(None) for a missing key.
fn found<V>(r: Result<V, MapError>, map: &'static str) -> Result<Option<V>, MapsError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(MapOp::Lookup.on(map)(e)),
    }
}

/// Deleting a missing key is fine.
fn removed(r: Result<(), MapError>, map: &'static str) -> Result<(), MapsError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
        Err(source) => Err(MapOp::Delete.on(map)(source)),
    }
}

/// The keys of a set-like map (`keys`, read whole before any removal) not in `want`.
fn stale_keys(
    keys: impl Iterator<Item = Result<u32, MapError>>,
    want: &BTreeSet<u32>,
    map: &'static str,
) -> Result<Vec<u32>, MapsError> {
    let mut stale = Vec::new();
    for key in keys {
        let key = key.map_err(MapOp::Iterate.on(map))?;
        if !want.contains(&key) {
            stale.push(key);
        }
    }
    Ok(stale)
}

/// CLOCK_MONOTONIC now in ns: the clock of `bpf_ktime_get_ns` and of conntrack times.
pub fn ktime_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Handles on every pinned datapath map.
pub struct DatapathMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    slots: HashMap<MapData, SlotKey, u32>,
    backends: HashMap<MapData, u32, Backend>,
    revnat: HashMap<MapData, u32, RevNat>,
    /// Established TCP flows.
    ct_tcp: HashMap<MapData, CtKey, CtEntry>,
    /// UDP flows and TCP handshakes.
    ct_any: HashMap<MapData, CtKey, CtEntry>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    node_addrs: HashMap<MapData, u32, NodeAddr>,
    config: Array<MapData, Config>,
    service_stats: PerCpuHashMap<MapData, u32, FlowCounters>,
    backend_stats: PerCpuHashMap<MapData, u32, FlowCounters>,
    events: PerCpuArray<MapData, u64>,
    xdp_targets: DevMapHash<MapData>,
    source_ranges: LpmTrie<MapData, SourceRangeKey, SourceRangeValue>,
    reject_rate: PerCpuArray<MapData, RateBucket>,
    /// Frontend ids in use (rebuilt from the services map when adopted).
    used_ids: BTreeSet<u32>,
    /// Exact frontends' addresses, with their frontend counts (`frontend_addrs`).
    frontend_addrs: HashMap<MapData, u32, u32>,
    frontend_addr_counts: std::collections::BTreeMap<u32, u32>,
}

macro_rules! typed {
    ($get:expr, $name:expr) => {{
        let map: Map = $get($name)?;
        map.try_into().map_err(|source: MapError| MapsError::Layout {
            map: $name,
            source: Box::new(source),
        })?
    }};
}

impl DatapathMaps {
    /// Takes the maps out of a freshly loaded object (see `Loaded::load`).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let mut maps = Self::build(|name| ebpf.take_map(name).ok_or(MapsError::Missing(name)))?;
        maps.write_frontend_addrs()?;
        Ok(maps)
    }

    /// Opens the maps pinned under `pin_dir` by a running agent (for inspection tools).
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapsError> {
        Self::build(|name| {
            let path = pin_dir.join(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| MapsError::OpenPinned {
                    path,
                    source: Box::new(source),
                })
        })
    }

    fn build(mut get: impl FnMut(&'static str) -> Result<Map, MapsError>) -> Result<Self, MapsError> {
        let mut maps = Self {
            services: typed!(get, names::SERVICES),
            slots: typed!(get, names::SLOTS),
            backends: typed!(get, names::BACKENDS),
            revnat: typed!(get, names::REVNAT),
            ct_tcp: typed!(get, names::CT_TCP),
            ct_any: typed!(get, names::CT_ANY),
            affinity: typed!(get, names::AFFINITY),
            node_addrs: typed!(get, names::NODE_ADDRS),
            config: typed!(get, names::CONFIG),
            service_stats: typed!(get, names::SERVICE_STATS),
            backend_stats: typed!(get, names::BACKEND_STATS),
            events: typed!(get, names::EVENTS),
            xdp_targets: typed!(get, names::XDP_TARGETS),
            source_ranges: typed!(get, names::SOURCE_RANGES),
            reject_rate: typed!(get, names::REJECT_RATE),
            used_ids: BTreeSet::new(),
            frontend_addrs: typed!(get, names::FRONTEND_ADDRS),
            frontend_addr_counts: std::collections::BTreeMap::new(),
        };
        for item in &maps.services {
            let (key, v) = item.map_err(MapOp::Iterate.on(names::SERVICES))?;
            maps.used_ids.insert(v.rev_nat_id);
            frontend_addrs::count(&mut maps.frontend_addr_counts, key, 1);
        }
        Ok(maps)
    }
}
