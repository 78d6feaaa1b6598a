//! Indexes of the datapath's global event counters (per-CPU array `KPROXY_EVENTS_V1`).

/// A new flow got a backend and conntrack entries.
pub const EV_NEW_FLOW: u32 = 0;
/// A packet followed an existing conntrack entry.
pub const EV_CT_HIT: u32 = 1;
/// A reply was translated back to its frontend.
pub const EV_REPLY_NAT: u32 = 2;
/// A flow's backend had gone (or its entry was stale): a new backend was chosen.
pub const EV_RESELECT: u32 = 3;
/// Dropped: the service has no backends (kube-proxy's REJECT).
pub const EV_DROP_NO_BACKEND: u32 = 4;
/// Dropped: a slot or backend the service value points to is missing (maps mid-update
/// by a non-conforming writer).
pub const EV_DROP_INCONSISTENT: u32 = 5;
/// Dropped: the conntrack entries could not be created (fail closed, as Cilium).
pub const EV_DROP_CT_FULL: u32 = 6;
/// A flow was masqueraded (hairpin: the client is the chosen backend).
pub const EV_MASQ: u32 = 7;
/// Passed untranslated: IPv4 with options or fragmented (not handled).
pub const EV_PASS_UNHANDLED: u32 = 8;
/// Dropped: a checksum or store helper failed mid-rewrite.
pub const EV_DROP_REWRITE: u32 = 9;
/// XDP: a translated packet was sent straight to its next hop's interface
/// (`bpf_fib_lookup` + `bpf_redirect_map`), skipping the stack.
pub const EV_XDP_REDIRECT: u32 = 10;
/// XDP: a translated packet was handed to the stack (no route or neighbour known to the
/// FIB, TTL expiring, MTU exceeded, or its interface not a redirect target).
pub const EV_XDP_PASS_TRANSLATED: u32 = 11;
/// Number of event counters.
pub const EV_MAX: u32 = 12;

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
];
