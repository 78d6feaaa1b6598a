//! Types shared by the kernel programs (`kproxy-ebpf`) and the agent (`kproxy-userspace`).
//!
//! Every map key and value is `#[repr(C)]` with explicit padding fields, so the byte
//! layout is the same on both sides and no uninitialised byte is ever hashed.
//!
//! One module per concern, named as in `kproxy-ebpf` where both sides have one:
//! - [`lb`]: frontends, backend slots, backends, reverse NAT, ClientIP affinity;
//! - [`conntrack`]: entries of translated flows and their timeouts;
//! - [`frag`]: the first fragment's ports, for the later fragments of a datagram;
//! - [`icmp`]: the port-unreachable replies to frontends without endpoints, rate-limited;
//! - [`node`]: the node's addresses and node-wide settings;
//! - [`sock`]: socket-level load balancing (cgroup programs): the sockets' reverse translation;
//! - [`stats`]: interface, service and backend counters, global events;
//! - [`byteorder`]: the maps' network-order addresses and ports;
//! - [`csum`]: incremental checksum updates (XDP rewrites);
//! - [`map_names`]: the maps' names.
#![no_std]

/// Implements `aya::Pod` (userspace only) for map keys and values. The caller vouches,
/// in a `// SAFETY:` comment, that each type is `#[repr(C)]`, has integer fields only
/// and spells its padding out as fields (so every byte is initialised).
macro_rules! unsafe_impl_pod {
    ($($ty:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $ty {}
        )+
    };
}

pub mod byteorder;
pub mod conntrack;
pub mod csum;
pub mod frag;
pub mod icmp;
pub mod lb;
pub mod node;
pub mod sock;
pub mod stats;

pub use conntrack::{CtEntry, CtKey};
pub use frag::{FragKey, FragPorts};
pub use icmp::RateBucket;
pub use lb::{
    AffinityKey, AffinityValue, Backend, RevNat, ServiceKey, ServiceValue, SlotKey, SourceRangeKey,
    SourceRangeValue,
};
pub use node::{Config, NodeAddr};
pub use sock::{SockRevNat, SockRevNatKey};
pub use stats::{CounterKey, FlowCounters, IfaceCounters};

/// Names of the maps in the eBPF object (versioned: a layout change gets a new name, so a
/// new agent never adopts an old pinned map of another layout).
pub mod map_names {
    pub const SERVICES: &str = "KPROXY_SERVICES_V2";
    pub const SLOTS: &str = "KPROXY_SLOTS_V1";
    pub const BACKENDS: &str = "KPROXY_BACKENDS_V1";
    pub const REVNAT: &str = "KPROXY_REVNAT_V1";
    /// Established TCP flows (the V1 table, one for every flow, is retired).
    pub const CT_TCP: &str = "KPROXY_CT_TCP_V1";
    /// UDP flows and TCP handshakes.
    pub const CT_ANY: &str = "KPROXY_CT_ANY_V1";
    /// The single conntrack table before the split (same layout): its flows are copied
    /// into the two tables when an agent adopts it.
    pub const RETIRED_CONNTRACK: &str = "KPROXY_CT_V1";
    pub const AFFINITY: &str = "KPROXY_AFFINITY_V1";
    pub const NODE_ADDRS: &str = "KPROXY_NODE_ADDRS_V1";
    /// V2: SNAT address, cluster CIDR and port range added. V3: the socket-LB netns
    /// cookie and the localhost NodePort flag.
    pub const CONFIG: &str = "KPROXY_CONFIG_V4";
    /// V2: `FlowCounters` gained `rejects` and `source_range_drops`.
    pub const SERVICE_STATS: &str = "KPROXY_SERVICE_STATS_V2";
    /// V2: `FlowCounters` gained `rejects` and `source_range_drops`.
    pub const BACKEND_STATS: &str = "KPROXY_BACKEND_STATS_V2";
    /// V3: SNAT, reject and source-range events added (an array's size is part of its
    /// layout).
    /// V4: socket-LB events added. V5: ICMP error, fragment and conntrack repair events.
    pub const EVENTS: &str = "KPROXY_EVENTS_V5";
    pub const SOURCE_RANGES: &str = "KPROXY_SOURCE_RANGES_V1";
    pub const REJECT_RATE: &str = "KPROXY_REJECT_RATE_V1";
    pub const XDP_TARGETS: &str = "KPROXY_XDP_TARGETS_V1";
    pub const IFACE_STATS: &str = "KPROXY_IFACE_STATS_V1";
    pub const SOCK_REVNAT: &str = "KPROXY_SOCK_REVNAT_V1";
    pub const FRAGS: &str = "KPROXY_FRAGS_V1";
    pub const FRONTEND_ADDRS: &str = "KPROXY_FRONTEND_ADDRS_V1";
    /// Every pinned map (all but the per-load interface counters).
    pub const PINNED: [&str; 18] = [
        SERVICES,
        SLOTS,
        BACKENDS,
        REVNAT,
        CT_TCP,
        CT_ANY,
        AFFINITY,
        NODE_ADDRS,
        CONFIG,
        SERVICE_STATS,
        BACKEND_STATS,
        EVENTS,
        XDP_TARGETS,
        SOURCE_RANGES,
        REJECT_RATE,
        SOCK_REVNAT,
        FRAGS,
        FRONTEND_ADDRS,
    ];
    /// Pinned maps of earlier layouts: no program uses them; the agent and `kproxy
    /// cleanup` remove them.
    pub const RETIRED: [&str; 11] = [
        "KPROXY_SERVICES_V1",
        RETIRED_CONNTRACK,
        "KPROXY_CONFIG_V1",
        "KPROXY_CONFIG_V2",
        "KPROXY_CONFIG_V3",
        "KPROXY_SERVICE_STATS_V1",
        "KPROXY_BACKEND_STATS_V1",
        "KPROXY_EVENTS_V1",
        "KPROXY_EVENTS_V2",
        "KPROXY_EVENTS_V3",
        "KPROXY_EVENTS_V4",
    ];
}
