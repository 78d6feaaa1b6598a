//! Every map the programs use, in one place, each with its purpose.
//! Names carry a version suffix so a layout change never reuses an old pinned map
//! (userspace names: `kproxy_common::map_names`). All but the per-interface counters are
//! pinned by name under the agent's pin directory, so they survive agent restarts.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use kproxy_common::frag::{FragKey, FragPorts};
use kproxy_common::{
    AffinityKey, AffinityValue, Backend, Config, CounterKey, CtEntry, CtKey, FlowCounters, IfaceCounters,
    NodeAddr, RateBucket, RevNat, ServiceKey, ServiceValue, SlotKey, SockRevNat, SockRevNatKey,
    SourceRangeKey, SourceRangeValue, stats::EV_MAX,
};

/// Hash maps the agent writes: not preallocated, so an update replaces an element
/// atomically and a reader never sees a recycled one.
const NO_PREALLOC: u32 = 1;

/// Packets and bytes per (interface, hook), per CPU: what each program has seen.
#[map(name = "KPROXY_IFACE_STATS_V1")]
pub static IFACE_STATS: PerCpuHashMap<CounterKey, IfaceCounters> = PerCpuHashMap::with_max_entries(1024, 0);

/// Frontends (address, port, protocol, scope) → rev-NAT id, backend count, slot base, flags.
#[map(name = "KPROXY_SERVICES_V2")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(65_536, NO_PREALLOC);

/// (rev-NAT id, slot) → backend id: the service's usable backends, chosen at random.
#[map(name = "KPROXY_SLOTS_V1")]
pub static SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(262_144, NO_PREALLOC);

/// Backend id → backend address and port.
#[map(name = "KPROXY_BACKENDS_V1")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(65_536, NO_PREALLOC);

/// Rev-NAT id → frontend address and port, for inspection; replies use
/// the address recorded in conntrack (a NodePort frontend has no single address).
#[map(name = "KPROXY_REVNAT_V1")]
pub static REVNAT: HashMap<u32, RevNat> = HashMap::pinned(65_536, NO_PREALLOC);

/// Conntrack of established TCP flows (both handshake directions seen): pre-DNAT tuple
/// and reply tuple → the flow (LRU). Only real connections enter it, so neither UDP
/// churn nor a SYN flood can evict them (netfilter's early_drop spares ASSURED entries).
#[map(name = "KPROXY_CT_TCP_V1")]
pub static CT_TCP: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(262_144, 0);

/// Conntrack of every other translated flow: UDP, and TCP until its handshake completes
/// (then moved to `CT_TCP`) (LRU).
#[map(name = "KPROXY_CT_ANY_V1")]
pub static CT_ANY: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(131_072, 0);

/// ClientIP session affinity: (client, rev-NAT id) → backend and when last chosen (LRU).
#[map(name = "KPROXY_AFFINITY_V1")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(65_536, 0);

/// The node's addresses NodePort frontends answer on (address, network order → flags).
#[map(name = "KPROXY_NODE_ADDRS_V1")]
pub static NODE_ADDRS: HashMap<u32, NodeAddr> = HashMap::pinned(256, NO_PREALLOC);

/// Node-wide settings written by the agent (one entry: masquerade address, SNAT address,
/// cluster CIDR, SNAT port range, socket-LB netns cookie and flags).
#[map(name = "KPROXY_CONFIG_V4")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

/// Per-service packets, bytes, new flows, no-backend drops, rejects and source-range
/// drops, per CPU (by rev-NAT id).
#[map(name = "KPROXY_SERVICE_STATS_V2")]
pub static SERVICE_STATS: PerCpuHashMap<u32, FlowCounters> = PerCpuHashMap::pinned(65_536, NO_PREALLOC);

/// Per-backend packets, bytes and new flows, per CPU (by backend id).
#[map(name = "KPROXY_BACKEND_STATS_V2")]
pub static BACKEND_STATS: PerCpuHashMap<u32, FlowCounters> = PerCpuHashMap::pinned(65_536, NO_PREALLOC);

/// Global event counters, per CPU (indexes `kproxy_common::stats::EV_*`).
#[map(name = "KPROXY_EVENTS_V5")]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::pinned(EV_MAX, 0);

/// Interfaces XDP may redirect translated packets to (ifindex → itself), written by the
/// agent: only those whose driver accepts redirected frames from the XDP mode in use.
#[map(name = "KPROXY_XDP_TARGETS_V1")]
pub static XDP_TARGETS: DevMapHash = DevMapHash::pinned(1024, 0);

/// `loadBalancerSourceRanges`: (rev-NAT id, source prefix) → allowed, for frontends with
/// `SVC_F_SOURCE_RANGES` (longest-prefix match; the id's 32 bits always match whole).
#[map(name = "KPROXY_SOURCE_RANGES_V1")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, SourceRangeValue> = LpmTrie::pinned(65_536, 0);

/// Each CPU's token bucket for ICMP port-unreachable replies (one entry).
#[map(name = "KPROXY_REJECT_RATE_V1")]
pub static REJECT_RATE: PerCpuArray<RateBucket> = PerCpuArray::pinned(1, 0);

/// Socket-LB reverse translation: (socket cookie, backend) → the frontend the socket
/// dialled, written by connect4/sendmsg4, read by recvmsg4/getpeername4 (LRU).
#[map(name = "KPROXY_SOCK_REVNAT_V1")]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNat> = LruHashMap::pinned(65_536, 0);

/// IPv4 fragments: (source, destination, IP id, protocol) of a datagram → the ports its
/// first fragment carried, for its later fragments (LRU, as Cilium's fragment map).
#[map(name = "KPROXY_FRAGS_V1")]
pub static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(8192, 0);

/// Addresses of exact frontends (ClusterIP, externalIP, LoadBalancer IP; network order)
/// → how many frontends use each: a later fragment whose first fragment was not seen is
/// dropped when addressed to one (`frag`), as its translation is unknown.
#[map(name = "KPROXY_FRONTEND_ADDRS_V1")]
pub static FRONTEND_ADDRS: HashMap<u32, u32> = HashMap::pinned(65_536, NO_PREALLOC);
