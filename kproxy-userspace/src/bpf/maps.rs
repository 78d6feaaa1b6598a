//! Typed handles on every datapath map, with the operations the sync needs.
//!
//! Userspace speaks std::net types; conversion to the maps' network-order `#[repr(C)]`
//! types (`kproxy_common`) happens here only.

use std::{
    collections::BTreeSet,
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        xdp::{DevMapHash, XdpMapError},
    },
};
use kproxy_common::{
    AffinityKey, AffinityValue, Backend, Config, CtEntry, CtKey, FlowCounters, NodeAddr, RevNat, ServiceKey,
    ServiceValue, SlotKey,
    byteorder::{addr_octets, be_addr, be_port, host_port},
    conntrack::{CT_DIR_REPLY, CT_F_MASQ, CT_ST_CLOSING, CT_ST_ESTABLISHED},
    lb::{
        MAX_BACKENDS_PER_SERVICE, PROTO_TCP, PROTO_UDP, SCOPE_EXACT, SCOPE_NODE_PORT, SLOT_BASE_ALT,
        SVC_F_AFFINITY,
    },
    map_names as names,
    stats::EVENT_NAMES,
};

/// Transport protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// What a client addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frontend {
    /// A ClusterIP, externalIP or LoadBalancer IP with its port.
    Address { addr: SocketAddrV4, proto: Protocol },
    /// A NodePort: this port on every node address ([`DatapathMaps::set_node_addresses`]).
    NodePort { port: u16, proto: Protocol },
}

impl Frontend {
    fn key(self) -> ServiceKey {
        match self {
            Frontend::Address { addr, proto } => ServiceKey {
                addr: be_addr(addr.ip().octets()),
                port: be_port(addr.port()),
                proto: proto.number(),
                scope: SCOPE_EXACT,
            },
            Frontend::NodePort { port, proto } => ServiceKey {
                addr: 0,
                port: be_port(port),
                proto: proto.number(),
                scope: SCOPE_NODE_PORT,
            },
        }
    }

    fn from_key(key: &ServiceKey) -> Option<Self> {
        let proto = Protocol::from_number(key.proto)?;
        match key.scope {
            SCOPE_EXACT => Some(Frontend::Address {
                addr: sock(key.addr, key.port),
                proto,
            }),
            SCOPE_NODE_PORT => Some(Frontend::NodePort {
                port: host_port(key.port),
                proto,
            }),
            _ => None,
        }
    }

    fn rev_nat(self) -> RevNat {
        let key = self.key();
        RevNat {
            addr: key.addr,
            port: key.port,
            _pad: 0,
        }
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frontend::Address { addr, proto } => write!(f, "{addr}/{proto}"),
            Frontend::NodePort { port, proto } => write!(f, "nodeport *:{port}/{proto}"),
        }
    }
}

/// The agent's handle on a backend endpoint (any non-zero number it picks, stable while
/// the endpoint exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A frontend's id in the maps (also its reverse-NAT id and counters key), allocated by
/// [`DatapathMaps::upsert_service`] and kept across updates and agent restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

/// Per-frontend options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// `sessionAffinity: ClientIP` with this timeout (kube-proxy default 10800 s).
    pub client_ip_affinity: Option<Duration>,
}

/// A frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub frontend: Frontend,
    pub id: ServiceId,
    /// Backends in slot order (stops at the first missing slot).
    pub backends: Vec<BackendId>,
    /// How many slots the service value declares (more than `backends` when slots are
    /// missing: inspection reports it).
    pub slot_count: u16,
    pub options: ServiceOptions,
}

/// Direction of a conntrack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtDirection {
    /// Client → frontend (the entry the forward packets follow).
    Service,
    /// Backend → client (the entry replies are reverse-translated by).
    Reply,
}

/// A decoded conntrack entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtFlow {
    pub direction: CtDirection,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// The tuple packets of this direction carry.
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub client: SocketAddrV4,
    /// The frontend address the client used (for NodePort, the node address).
    pub frontend: SocketAddrV4,
    pub backend: SocketAddrV4,
    pub backend_id: BackendId,
    pub service_id: ServiceId,
    /// The source the backend sees, when masqueraded (hairpin).
    pub masquerade: Option<SocketAddrV4>,
    pub established: bool,
    pub closing: bool,
    /// CLOCK_MONOTONIC ns (compare with [`ktime_now_ns`]).
    pub last_seen_ns: u64,
    pub created_ns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("{op} {map} ({call}): {}", chain(.source))]
    Op {
        op: &'static str,
        map: &'static str,
        call: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error(
        "insert into {map} (BPF_MAP_UPDATE_ELEM): the map is full; raise its max_entries in \
         kproxy-ebpf/src/maps.rs (or LoadOptions for conntrack), or remove stale entries"
    )]
    Full { map: &'static str },
    #[error("map {0} is missing from the eBPF object")]
    Missing(&'static str),
    #[error("open pinned map {} (BPF_OBJ_GET): {}", path.display(), chain(.source))]
    OpenPinned {
        path: PathBuf,
        #[source]
        source: Box<MapError>,
    },
    #[error(
        "map {map} has an unexpected type or layout ({}); a pinned map of an older layout? unpin it",
        chain(.source)
    )]
    Layout {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("{frontend}: {count} backends, at most {MAX_BACKENDS_PER_SERVICE} per frontend")]
    TooManyBackends { frontend: Frontend, count: usize },
    #[error(
        "{frontend}: backend {id} is not in KPROXY_BACKENDS_V1; upsert backends before the services using them"
    )]
    UnknownBackend { frontend: Frontend, id: BackendId },
    #[error("backend id 0 is reserved")]
    ReservedBackendId,
    #[error("no free service id ({0} frontends)")]
    NoServiceId(usize),
    #[error("insert into KPROXY_XDP_TARGETS_V1: {0}")]
    XdpTarget(XdpMapError),
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

fn is_errno(err: &MapError, errno: i32) -> bool {
    match err {
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(errno),
        MapError::IoError(e) => e.raw_os_error() == Some(errno),
        _ => false,
    }
}

fn update_err(map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| {
        if is_errno(&source, libc::E2BIG) || is_errno(&source, libc::ENOSPC) {
            MapsError::Full { map }
        } else {
            MapsError::Op {
                op: "insert into",
                map,
                call: "BPF_MAP_UPDATE_ELEM",
                source: Box::new(source),
            }
        }
    }
}

fn lookup_err(map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Op {
        op: "look up in",
        map,
        call: "BPF_MAP_LOOKUP_ELEM",
        source: Box::new(source),
    }
}

fn iter_err(map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Op {
        op: "iterate",
        map,
        call: "BPF_MAP_GET_NEXT_KEY/BPF_MAP_LOOKUP_ELEM",
        source: Box::new(source),
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
        let key = key.map_err(iter_err(map))?;
        if !want.contains(&key) {
            stale.push(key);
        }
    }
    Ok(stale)
}

/// Ok(None) for a missing key.
fn found<V>(r: Result<V, MapError>, map: &'static str) -> Result<Option<V>, MapsError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(lookup_err(map)(e)),
    }
}

/// Deleting a missing key is fine.
fn removed(r: Result<(), MapError>, map: &'static str) -> Result<(), MapsError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
        Err(source) => Err(MapsError::Op {
            op: "delete from",
            map,
            call: "BPF_MAP_DELETE_ELEM",
            source: Box::new(source),
        }),
    }
}

fn sock(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(addr_octets(addr)), host_port(port))
}

fn sum(values: &[FlowCounters]) -> FlowCounters {
    values.iter().fold(FlowCounters::default(), |s, c| FlowCounters {
        packets: s.packets + c.packets,
        bytes: s.bytes + c.bytes,
        new_flows: s.new_flows + c.new_flows,
        no_backend_drops: s.no_backend_drops + c.no_backend_drops,
    })
}

/// CLOCK_MONOTONIC now in ns: the clock of `bpf_ktime_get_ns` and of conntrack times.
pub fn ktime_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Handles on every datapath map.
pub struct DatapathMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    slots: HashMap<MapData, SlotKey, u32>,
    backends: HashMap<MapData, u32, Backend>,
    revnat: HashMap<MapData, u32, RevNat>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    node_addrs: HashMap<MapData, u32, NodeAddr>,
    config: Array<MapData, Config>,
    service_stats: PerCpuHashMap<MapData, u32, FlowCounters>,
    backend_stats: PerCpuHashMap<MapData, u32, FlowCounters>,
    events: PerCpuArray<MapData, u64>,
    xdp_targets: DevMapHash<MapData>,
    /// Service ids in use (rebuilt from the services map when adopted).
    used_ids: BTreeSet<u32>,
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
    /// Takes the maps out of a freshly loaded object (see `Datapath::load`).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Self::build(|name| ebpf.take_map(name).ok_or(MapsError::Missing(name)))
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
            conntrack: typed!(get, names::CONNTRACK),
            affinity: typed!(get, names::AFFINITY),
            node_addrs: typed!(get, names::NODE_ADDRS),
            config: typed!(get, names::CONFIG),
            service_stats: typed!(get, names::SERVICE_STATS),
            backend_stats: typed!(get, names::BACKEND_STATS),
            events: typed!(get, names::EVENTS),
            xdp_targets: typed!(get, names::XDP_TARGETS),
            used_ids: BTreeSet::new(),
        };
        for item in maps.services.iter() {
            let (_, v) = item.map_err(iter_err(names::SERVICES))?;
            maps.used_ids.insert(v.rev_nat_id);
        }
        Ok(maps)
    }

    // ---- backends ----

    /// Creates or updates backend `id` (must be done before a service uses it).
    pub fn upsert_backend(&mut self, id: BackendId, addr: SocketAddrV4) -> Result<(), MapsError> {
        if id.0 == 0 {
            return Err(MapsError::ReservedBackendId);
        }
        let value = Backend {
            addr: be_addr(addr.ip().octets()),
            port: be_port(addr.port()),
            flags: 0,
            _pad: 0,
        };
        self.backends
            .insert(id.0, value, 0)
            .map_err(update_err(names::BACKENDS))
    }

    /// Removes backend `id` and its counters. Flows still pointing at it choose a live
    /// backend on their next packet. Remove it from services first.
    pub fn remove_backend(&mut self, id: BackendId) -> Result<(), MapsError> {
        removed(self.backends.remove(&id.0), names::BACKENDS)?;
        removed(self.backend_stats.remove(&id.0), names::BACKEND_STATS)
    }

    /// Every backend.
    pub fn backends(&self) -> Result<Vec<(BackendId, SocketAddrV4)>, MapsError> {
        let mut out = Vec::new();
        for item in self.backends.iter() {
            let (id, b) = item.map_err(iter_err(names::BACKENDS))?;
            out.push((BackendId(id), sock(b.addr, b.port)));
        }
        out.sort();
        Ok(out)
    }

    // ---- services ----

    /// Points `frontend` at `backends` (in slot order; empty = reject its packets),
    /// creating it if needed; returns its id. Make before break: the new slots are
    /// written at the other slot base, then the service value flips to them in one
    /// update, then the old slots are deleted, so packets always see a complete set.
    /// Every backend must already exist ([`Self::upsert_backend`]).
    pub fn upsert_service(
        &mut self,
        frontend: Frontend,
        backends: &[BackendId],
        options: ServiceOptions,
    ) -> Result<ServiceId, MapsError> {
        if backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
            return Err(MapsError::TooManyBackends {
                frontend,
                count: backends.len(),
            });
        }
        for &id in backends {
            if found(self.backends.get(&id.0, 0), names::BACKENDS)?.is_none() {
                return Err(MapsError::UnknownBackend { frontend, id });
            }
        }
        let key = frontend.key();
        let current = found(self.services.get(&key, 0), names::SERVICES)?;
        let (flags, affinity_timeout_s) = match options.client_ip_affinity {
            Some(t) => (SVC_F_AFFINITY, t.as_secs().min(u32::MAX as u64) as u32),
            None => (0, 0),
        };
        let (id, base) = match current {
            Some(cur) => {
                if cur.flags == flags
                    && cur.affinity_timeout_s == affinity_timeout_s
                    && self.slot_backends(&cur)? == backends
                {
                    return Ok(ServiceId(cur.rev_nat_id));
                }
                (cur.rev_nat_id, cur.slot_base ^ SLOT_BASE_ALT)
            }
            None => {
                let id = self.allocate_id()?;
                // Leftovers of an id used before (a crash mid-removal) must not count.
                removed(self.service_stats.remove(&id), names::SERVICE_STATS)?;
                (id, 0)
            }
        };
        for (i, b) in backends.iter().enumerate() {
            let slot = SlotKey {
                rev_nat_id: id,
                slot: base + i as u32,
            };
            self.slots
                .insert(slot, b.0, 0)
                .map_err(update_err(names::SLOTS))?;
        }
        self.revnat
            .insert(id, frontend.rev_nat(), 0)
            .map_err(update_err(names::REVNAT))?;
        let value = ServiceValue {
            rev_nat_id: id,
            count: backends.len() as u16,
            flags,
            slot_base: base,
            affinity_timeout_s,
        };
        self.services
            .insert(key, value, 0)
            .map_err(update_err(names::SERVICES))?;
        self.used_ids.insert(id);
        if let Some(old) = current {
            self.remove_slots(old.rev_nat_id, old.slot_base, old.count)?;
        }
        Ok(ServiceId(id))
    }

    /// Removes `frontend`: new packets to it pass untranslated, replies of its existing
    /// flows are still translated until their conntrack entries expire.
    pub fn remove_service(&mut self, frontend: Frontend) -> Result<(), MapsError> {
        let key = frontend.key();
        let Some(cur) = found(self.services.get(&key, 0), names::SERVICES)? else {
            return Ok(());
        };
        removed(self.services.remove(&key), names::SERVICES)?;
        self.remove_slots(cur.rev_nat_id, cur.slot_base, cur.count)?;
        removed(self.revnat.remove(&cur.rev_nat_id), names::REVNAT)?;
        removed(self.service_stats.remove(&cur.rev_nat_id), names::SERVICE_STATS)?;
        self.used_ids.remove(&cur.rev_nat_id);
        Ok(())
    }

    /// The id of `frontend`, if present.
    pub fn service_id(&self, frontend: Frontend) -> Result<Option<ServiceId>, MapsError> {
        Ok(found(self.services.get(&frontend.key(), 0), names::SERVICES)?.map(|v| ServiceId(v.rev_nat_id)))
    }

    /// Every frontend with its backends (what an adopting agent diffs its model against).
    pub fn services(&self) -> Result<Vec<ServiceEntry>, MapsError> {
        let mut out = Vec::new();
        for item in self.services.iter() {
            let (key, v) = item.map_err(iter_err(names::SERVICES))?;
            let Some(frontend) = Frontend::from_key(&key) else {
                continue;
            };
            out.push(ServiceEntry {
                frontend,
                id: ServiceId(v.rev_nat_id),
                backends: self.slot_backends(&v)?,
                slot_count: v.count,
                options: ServiceOptions {
                    client_ip_affinity: (v.flags & SVC_F_AFFINITY != 0)
                        .then(|| Duration::from_secs(v.affinity_timeout_s as u64)),
                },
            });
        }
        out.sort_by_key(|s| s.frontend);
        Ok(out)
    }

    /// Deletes slots no live service points at (left by an agent that died mid-update).
    pub fn prune_orphan_slots(&mut self) -> Result<usize, MapsError> {
        let mut live = std::collections::HashMap::new();
        for item in self.services.iter() {
            let (_, v) = item.map_err(iter_err(names::SERVICES))?;
            live.insert(v.rev_nat_id, v);
        }
        let mut orphans = Vec::new();
        for key in self.slots.keys() {
            let key = key.map_err(iter_err(names::SLOTS))?;
            let keep = live
                .get(&key.rev_nat_id)
                .is_some_and(|v| key.slot >= v.slot_base && key.slot < v.slot_base + v.count as u32);
            if !keep {
                orphans.push(key);
            }
        }
        for key in &orphans {
            removed(self.slots.remove(key), names::SLOTS)?;
        }
        Ok(orphans.len())
    }

    fn slot_backends(&self, v: &ServiceValue) -> Result<Vec<BackendId>, MapsError> {
        let mut out = Vec::with_capacity(v.count as usize);
        for i in 0..v.count as u32 {
            let key = SlotKey {
                rev_nat_id: v.rev_nat_id,
                slot: v.slot_base + i,
            };
            match found(self.slots.get(&key, 0), names::SLOTS)? {
                Some(b) => out.push(BackendId(b)),
                None => break,
            }
        }
        Ok(out)
    }

    fn remove_slots(&mut self, id: u32, base: u32, count: u16) -> Result<(), MapsError> {
        for i in 0..count as u32 {
            let key = SlotKey {
                rev_nat_id: id,
                slot: base + i,
            };
            removed(self.slots.remove(&key), names::SLOTS)?;
        }
        Ok(())
    }

    /// The id after the highest in use (constant time per frontend, so a full sync of
    /// N services stays linear); gaps are searched only once ids reach the top.
    fn allocate_id(&self) -> Result<u32, MapsError> {
        match self.used_ids.last() {
            None => Ok(1),
            Some(&max) if max < u32::MAX => Ok(max + 1),
            Some(_) => (1..=u32::MAX)
                .find(|id| !self.used_ids.contains(id))
                .ok_or(MapsError::NoServiceId(self.used_ids.len())),
        }
    }

    /// The reverse-NAT entry of service `id`: the address replies are rewritten to come
    /// from (0.0.0.0 for a NodePort: the node address the client used).
    pub fn rev_nat(&self, id: ServiceId) -> Result<Option<SocketAddrV4>, MapsError> {
        Ok(found(self.revnat.get(&id.0, 0), names::REVNAT)?.map(|r| sock(r.addr, r.port)))
    }

    // ---- node ----

    /// Sets the addresses NodePort frontends answer on (adds new ones before removing
    /// stale ones).
    pub fn set_node_addresses(&mut self, addrs: &[Ipv4Addr]) -> Result<(), MapsError> {
        let want: BTreeSet<u32> = addrs.iter().map(|a| be_addr(a.octets())).collect();
        for &a in &want {
            self.node_addrs
                .insert(a, NodeAddr { flags: 0 }, 0)
                .map_err(update_err(names::NODE_ADDRS))?;
        }
        for key in stale_keys(self.node_addrs.keys(), &want, names::NODE_ADDRS)? {
            removed(self.node_addrs.remove(&key), names::NODE_ADDRS)?;
        }
        Ok(())
    }

    /// The node addresses NodePort frontends answer on.
    pub fn node_addresses(&self) -> Result<Vec<Ipv4Addr>, MapsError> {
        let mut out = Vec::new();
        for key in self.node_addrs.keys() {
            out.push(Ipv4Addr::from(addr_octets(
                key.map_err(iter_err(names::NODE_ADDRS))?,
            )));
        }
        out.sort();
        Ok(out)
    }

    /// Sets the source address of hairpin flows (a pod reaching itself through a
    /// service); None disables masquerade (such flows then fail, as their replies skip
    /// the reverse translation). Use an address the node does not own (e.g. 169.254.x.y):
    /// the translation happens before routing, where a local source is a martian.
    pub fn set_masquerade_address(&mut self, addr: Option<Ipv4Addr>) -> Result<(), MapsError> {
        let value = Config {
            masq_addr: addr.map(|a| be_addr(a.octets())).unwrap_or(0),
            flags: 0,
        };
        self.config.set(0, value, 0).map_err(update_err(names::CONFIG))
    }

    /// The masquerade (hairpin) source address, if set.
    pub fn masquerade_address(&self) -> Result<Option<Ipv4Addr>, MapsError> {
        let value = self.config.get(&0, 0).map_err(lookup_err(names::CONFIG))?;
        Ok((value.masq_addr != 0).then(|| Ipv4Addr::from(addr_octets(value.masq_addr))))
    }

    // ---- XDP forwarding ----

    /// Sets the interfaces (ifindexes in the caller's network namespace) the XDP program
    /// may redirect translated packets to; it hands packets routed anywhere else to the
    /// stack. List only interfaces that accept redirected frames from the XDP mode in use:
    /// in native mode a veth does only if its peer runs XDP or has GRO on, and a frame
    /// redirected to one that does not is lost. Adds new ones before removing stale ones.
    pub fn set_xdp_targets(&mut self, ifindexes: &[u32]) -> Result<(), MapsError> {
        let want: BTreeSet<u32> = ifindexes.iter().copied().collect();
        for &i in &want {
            self.xdp_targets.insert(i, i, None, 0).map_err(|e| match e {
                XdpMapError::MapError(e) => update_err(names::XDP_TARGETS)(e),
                other => MapsError::XdpTarget(other),
            })?;
        }
        for key in stale_keys(self.xdp_targets.keys(), &want, names::XDP_TARGETS)? {
            removed(self.xdp_targets.remove(key), names::XDP_TARGETS)?;
        }
        Ok(())
    }

    /// The interfaces XDP may redirect to (ifindexes), sorted.
    pub fn xdp_targets(&self) -> Result<Vec<u32>, MapsError> {
        let mut out = self
            .xdp_targets
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(iter_err(names::XDP_TARGETS))?;
        out.sort();
        Ok(out)
    }

    // ---- counters ----

    /// Counters of service `id`, summed over CPUs (zero if none yet).
    pub fn service_counters(&self, id: ServiceId) -> Result<FlowCounters, MapsError> {
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

    /// The global event counters (`kproxy_common::stats::EV_*`), by name, summed over CPUs.
    pub fn events(&self) -> Result<Vec<(&'static str, u64)>, MapsError> {
        let mut out = Vec::with_capacity(EVENT_NAMES.len());
        for (i, name) in EVENT_NAMES.iter().enumerate() {
            let v = self
                .events
                .get(&(i as u32), 0)
                .map_err(lookup_err(names::EVENTS))?;
            out.push((*name, v.iter().sum()));
        }
        Ok(out)
    }

    // ---- conntrack ----

    /// Every conntrack entry, raw.
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, MapsError> {
        self.conntrack
            .iter()
            .map(|r| r.map_err(iter_err(names::CONNTRACK)))
            .collect()
    }

    /// Every conntrack entry, decoded.
    pub fn conntrack(&self) -> Result<Vec<CtFlow>, MapsError> {
        Ok(self
            .conntrack_entries()?
            .iter()
            .map(|(k, e)| CtFlow {
                direction: if k.dir == CT_DIR_REPLY {
                    CtDirection::Reply
                } else {
                    CtDirection::Service
                },
                proto: k.proto,
                src: sock(k.saddr, k.sport),
                dst: sock(k.daddr, k.dport),
                client: sock(e.client_addr, e.client_port),
                frontend: sock(e.frontend_addr, e.frontend_port),
                backend: sock(e.backend_addr, e.backend_port),
                backend_id: BackendId(e.backend_id),
                service_id: ServiceId(e.rev_nat_id),
                masquerade: (e.flags & CT_F_MASQ != 0).then(|| sock(e.masq_addr, e.masq_port)),
                established: e.state & CT_ST_ESTABLISHED != 0,
                closing: e.state & CT_ST_CLOSING != 0,
                last_seen_ns: e.last_seen_ns,
                created_ns: e.created_ns,
            })
            .collect())
    }

    /// One raw conntrack entry.
    pub fn conntrack_get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapsError> {
        found(self.conntrack.get(key, 0), names::CONNTRACK)
    }

    /// Writes a raw conntrack entry (restoring state, tests).
    pub fn conntrack_insert(&mut self, key: CtKey, entry: CtEntry) -> Result<(), MapsError> {
        self.conntrack
            .insert(key, entry, 0)
            .map_err(update_err(names::CONNTRACK))
    }

    /// Deletes a raw conntrack entry (missing is fine).
    pub fn conntrack_remove(&mut self, key: &CtKey) -> Result<(), MapsError> {
        removed(self.conntrack.remove(key), names::CONNTRACK)
    }

    /// Number of ClientIP affinity entries (for inspection).
    pub fn affinity_len(&self) -> usize {
        self.affinity.keys().count()
    }
}
