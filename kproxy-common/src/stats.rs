//! Counters the datapath keeps: packets and bytes per interface and hook, per service
//! and per backend, and the global event counters.

/// Packets and bytes seen by one program on one interface (value of the per-CPU
/// `KPROXY_IFACE_STATS_V1` map, keyed by ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<IfaceCounters>() == 16);

/// Index of the XDP program's counters in a [`CounterKey`].
pub const HOOK_XDP: u32 = 0;
/// Index of the TC ingress program's counters in a [`CounterKey`].
pub const HOOK_TC_INGRESS: u32 = 1;
/// Index of the TC egress program's counters in a [`CounterKey`].
pub const HOOK_TC_EGRESS: u32 = 2;
/// Names of the hooks, by index.
pub const HOOK_NAMES: [&str; 3] = ["xdp", "tc_ingress", "tc_egress"];

/// Which hook, on which interface (key of `KPROXY_IFACE_STATS_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub ifindex: u32,
    pub hook: u32,
}
const _: () = assert!(size_of::<CounterKey>() == 8);

/// Packets and bytes translated to a service or backend, per CPU (values of
/// `KPROXY_SERVICE_STATS_V2` and `KPROXY_BACKEND_STATS_V2`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct FlowCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows (conntrack entries) created.
    pub new_flows: u64,
    /// Packets dropped because the service had no usable backend: where kube-proxy
    /// DROPs (policy Local), TCP segments other than a SYN, and replies the rate limit
    /// suppressed.
    pub no_backend_drops: u64,
    /// ICMP port unreachable replies sent because the service had no endpoints.
    pub rejects: u64,
    /// New flows dropped because their source is outside `loadBalancerSourceRanges`.
    pub source_range_drops: u64,
}
const _: () = assert!(size_of::<FlowCounters>() == 48);

impl core::ops::AddAssign for FlowCounters {
    /// Sums counters (over CPUs, or over a service's frontends).
    fn add_assign(&mut self, other: Self) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.new_flows += other.new_flows;
        self.no_backend_drops += other.no_backend_drops;
        self.rejects += other.rejects;
        self.source_range_drops += other.source_range_drops;
    }
}

// SAFETY: repr(C), u32 and u64 fields only, no padding, sizes asserted above.
unsafe_impl_pod!(IfaceCounters, CounterKey, FlowCounters);

// Indexes of the datapath's global event counters (per-CPU array `KPROXY_EVENTS_V5`).

/// A new flow got a backend and conntrack entries.
pub const EV_NEW_FLOW: u32 = 0;
/// A packet followed an existing conntrack entry.
pub const EV_CT_HIT: u32 = 1;
/// A reply was translated back to its frontend.
pub const EV_REPLY_NAT: u32 = 2;
/// A flow's backend had gone (or its entry was stale): a new backend was chosen.
pub const EV_RESELECT: u32 = 3;
/// Dropped: the service has no usable backend and no reply is due (policy Local, a TCP
/// segment other than a SYN, a reply the rate limit suppressed, or one that failed).
pub const EV_DROP_NO_BACKEND: u32 = 4;
/// Dropped: a slot or backend the service value points to is missing (maps mid-update
/// by a non-conforming writer).
pub const EV_DROP_INCONSISTENT: u32 = 5;
/// Dropped: the conntrack entries could not be created (fail closed, as Cilium).
pub const EV_DROP_CT_FULL: u32 = 6;
/// A flow was masqueraded (hairpin: the client is the chosen backend).
pub const EV_MASQ: u32 = 7;
/// Passed untranslated: IPv4 with options (not handled).
pub const EV_PASS_UNHANDLED: u32 = 8;
/// Dropped: a checksum or store helper failed mid-rewrite.
pub const EV_DROP_REWRITE: u32 = 9;
/// XDP: a translated packet was sent straight to its next hop's interface
/// (`bpf_fib_lookup` + `bpf_redirect_map`), skipping the stack.
pub const EV_XDP_REDIRECT: u32 = 10;
/// XDP: a translated packet was handed to the stack (no route or neighbour known to the
/// FIB, TTL expiring, MTU exceeded, or its interface not a redirect target).
pub const EV_XDP_PASS_TRANSLATED: u32 = 11;
/// A new flow was SNATed to the node's address and an allocated port.
pub const EV_SNAT: u32 = 12;
/// Dropped: a new flow to SNAT found no free port in the range (after `SNAT_RETRIES`).
pub const EV_DROP_SNAT_PORT_EXHAUSTED: u32 = 13;
/// Answered with ICMP port unreachable: the service has no endpoints (kube-proxy's REJECT).
pub const EV_REJECT: u32 = 14;
/// Dropped instead of answered: the reply rate limit was reached (`kproxy_common::icmp`).
pub const EV_REJECT_RATE_LIMITED: u32 = 15;
/// Dropped: a new flow to a LoadBalancer IP from outside its `loadBalancerSourceRanges`.
pub const EV_DROP_SOURCE_RANGE: u32 = 16;
/// Socket-LB: a connect or sendmsg to a frontend was sent to a backend instead.
pub const EV_SOCK_XLATE: u32 = 17;
/// Socket-LB: a connect or sendmsg to a frontend without endpoints failed with
/// ECONNREFUSED.
pub const EV_SOCK_REFUSED: u32 = 18;
/// Socket-LB: a recvmsg or getpeername showed the frontend instead of the backend.
pub const EV_SOCK_REVNAT: u32 = 19;
/// An ICMP error (destination unreachable, time exceeded) about a translated flow was
/// translated: outer and quoted headers.
pub const EV_ICMP_ERROR_NAT: u32 = 20;
/// A non-first fragment got the translation its datagram's first fragment got.
pub const EV_FRAG_NAT: u32 = 21;
/// A non-first fragment whose first fragment was never seen (or forgotten).
pub const EV_FRAG_UNKNOWN: u32 = 22;
/// A flow that had lost one of its two conntrack entries got it back from the other.
pub const EV_CT_REPAIRED: u32 = 23;
/// Number of event counters.
pub const EV_MAX: u32 = 24;

/// Names of the event counters, by index.
pub const EVENT_NAMES: [&str; EV_MAX as usize] = [
    "new_flow",
    "ct_hit",
    "reply_nat",
    "reselect",
    "drop_no_backend",
    "drop_inconsistent",
    "drop_ct_full",
    "masquerade",
    "pass_unhandled",
    "drop_rewrite",
    "xdp_redirect",
    "xdp_pass_translated",
    "snat",
    "snat_port_exhausted",
    "reject",
    "reject_rate_limited",
    "drop_source_range",
    "sock_xlate",
    "sock_refused",
    "sock_revnat",
    "icmp_error_nat",
    "frag_nat",
    "frag_unknown",
    "ct_repaired",
];
