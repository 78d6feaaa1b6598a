//! Load balancing: service frontends, their backend slots, backends, reverse-NAT
//! entries and ClientIP affinity.
//!
//! Addresses and ports are in network byte order ([`crate::byteorder`]).

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Frontend scope: the key's address is the frontend address (ClusterIP, externalIP,
/// LoadBalancer IP).
pub const SCOPE_EXACT: u8 = 0;
/// Frontend scope: NodePort. The key's address is 0.0.0.0 and matches any address in
/// the node-address map (`KPROXY_NODE_ADDRS_V1`).
pub const SCOPE_NODE_PORT: u8 = 1;

/// Service flag: ClientIP session affinity (timeout in [`ServiceValue::affinity_timeout_s`]).
pub const SVC_F_AFFINITY: u16 = 1 << 0;
/// Service flag: SNAT every new flow to the node's address and an allocated port
/// (kube-proxy's unconditional KUBE-MARK-MASQ: external frontends with
/// `externalTrafficPolicy: Cluster`, ClusterIPs with `masqueradeAll`).
pub const SVC_F_SNAT: u16 = 1 << 1;
/// Service flag: SNAT new flows whose source is outside the cluster CIDR of the config
/// map (a ClusterIP under kube-proxy's `! -s CLUSTER_CIDR -j KUBE-MARK-MASQ`).
pub const SVC_F_SNAT_OFF_CLUSTER: u16 = 1 << 2;
/// Service flag: without usable backends, drop instead of rejecting. Set where kube-proxy
/// DROPs ("has no local endpoints": a traffic policy Local with endpoints elsewhere only);
/// unset, a frontend without backends answers with ICMP port unreachable (its REJECT).
pub const SVC_F_DROP_NO_BACKEND: u16 = 1 << 3;
/// Service flag: `loadBalancerSourceRanges` apply: new flows from sources outside the
/// frontend's prefixes in `KPROXY_SOURCE_RANGES_V1` are dropped (kube-proxy's KUBE-FW).
pub const SVC_F_SOURCE_RANGES: u16 = 1 << 4;

/// Slots of one service are written at base 0 or at base [`SLOT_BASE_ALT`], alternately,
/// so an update writes the new set beside the old one and then flips the service value.
pub const SLOT_BASE_ALT: u32 = 1 << 16;
/// At most this many backends per service (the slot count is a u16).
pub const MAX_BACKENDS_PER_SERVICE: u32 = 0xffff;

/// Frontend a client addresses: address, port, protocol and scope (key of `KPROXY_SERVICES_V2`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Frontend address (network order); 0 for [`SCOPE_NODE_PORT`].
    pub addr: u32,
    /// Frontend port (network order).
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`SCOPE_EXACT`] or [`SCOPE_NODE_PORT`].
    pub scope: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 8);

/// What a frontend leads to: its reverse-NAT id, how many backend slots it has and where
/// (value of `KPROXY_SERVICES_V2`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// The frontend's reverse-NAT id (Cilium's `rev_nat_index`), never 0: the one id
    /// that keys its slots, ClientIP affinity, `KPROXY_REVNAT_V1` entry and service
    /// counters, and that its flows' conntrack entries record.
    pub rev_nat_id: u32,
    /// Number of usable backends: slots `slot_base .. slot_base + count`. 0 = reject (or
    /// drop, with [`SVC_F_DROP_NO_BACKEND`]).
    pub count: u16,
    /// `SVC_F_*` bits.
    pub flags: u16,
    /// First slot of the current backend set: 0 or [`SLOT_BASE_ALT`].
    pub slot_base: u32,
    /// ClientIP affinity timeout in seconds (with [`SVC_F_AFFINITY`]).
    pub affinity_timeout_s: u32,
    /// The ClusterIP frontend (address, port; network order) whose backends serve pods
    /// and the node's own processes instead of this frontend's: kube-proxy's
    /// `externalTrafficPolicy: Local` short-circuit ("pod traffic for … external
    /// destinations", "route LOCAL traffic … to cluster endpoints"). 0: none.
    pub cluster_addr: u32,
    pub cluster_port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<ServiceValue>() == 24);

/// One backend slot of a service (key of `KPROXY_SLOTS_V1`, value: backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub rev_nat_id: u32,
    /// `slot_base + index`.
    pub slot: u32,
}
const _: () = assert!(size_of::<SlotKey>() == 8);

/// Backend flag: reserved for terminating/serving states (0 today).
pub const BACKEND_F_NONE: u8 = 0;

/// A backend endpoint (value of `KPROXY_BACKENDS_V1`, keyed by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Address (network order).
    pub addr: u32,
    /// Port (network order).
    pub port: u16,
    pub flags: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<Backend>() == 8);

/// The frontend replies are translated back to (value of `KPROXY_REVNAT_V1`, keyed by
/// reverse-NAT id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNat {
    /// Frontend address (network order); 0 for a NodePort frontend (then the address the
    /// client used is in the conntrack entry).
    pub addr: u32,
    /// Frontend port (network order).
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<RevNat>() == 8);

/// ClientIP affinity: which client, which frontend (key of `KPROXY_AFFINITY_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Client address (network order).
    pub client_addr: u32,
    pub rev_nat_id: u32,
}
const _: () = assert!(size_of::<AffinityKey>() == 8);

/// The backend a client sticks to and when that was last decided (value of `KPROXY_AFFINITY_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityValue {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<AffinityValue>() == 16);

/// The data of a source-range key (`KPROXY_SOURCE_RANGES_V1`, an LPM trie keyed by
/// `prefix_len` + this): the frontend's id, always matched whole (so a key's prefix
/// length is 32 + the range's), then the source prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceRangeKey {
    /// The frontend's reverse-NAT id (its bytes as stored; only equality matters).
    pub rev_nat_id: u32,
    /// Source address or network (network order, host bits clear).
    pub addr: u32,
}
const _: () = assert!(size_of::<SourceRangeKey>() == 8);

/// Bits of a source-range key's `prefix_len` taken by [`SourceRangeKey::rev_nat_id`].
pub const SOURCE_RANGE_ID_BITS: u32 = 32;

/// Value of a `KPROXY_SOURCE_RANGES_V1` entry: present = allowed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRangeValue {
    /// Reserved (0).
    pub flags: u32,
}
const _: () = assert!(size_of::<SourceRangeValue>() == 4);

// SAFETY: repr(C), integer fields only, padding spelled out as fields, sizes asserted above.
unsafe_impl_pod!(
    SourceRangeKey,
    SourceRangeValue,
    ServiceKey,
    ServiceValue,
    SlotKey,
    Backend,
    RevNat,
    AffinityKey,
    AffinityValue
);
