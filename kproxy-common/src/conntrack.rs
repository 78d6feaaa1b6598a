//! Connection tracking of translated flows.
//!
//! A translated flow has two entries in `KPROXY_CT_V1`, with the same value layout:
//! - [`CT_DIR_SERVICE`]: keyed by the pre-DNAT tuple the client sent (client → frontend);
//! - [`CT_DIR_REPLY`]: keyed by the tuple the backend's replies carry (backend → client,
//!   or backend → masquerade address and port for a masqueraded or SNATed flow).

/// Entry of the client → frontend direction.
pub const CT_DIR_SERVICE: u8 = 0;
/// Entry of the backend → client direction (replies to reverse-NAT).
pub const CT_DIR_REPLY: u8 = 1;

/// TCP: an ACK was seen in this entry's direction (past the handshake's SYN).
pub const CT_ST_ESTABLISHED: u8 = 1 << 0;
/// TCP: a FIN or RST was seen in either direction; the entry expires soon.
pub const CT_ST_CLOSING: u8 = 1 << 1;

/// Flag: the client's source was rewritten to [`CtEntry::masq_addr`] and
/// [`CtEntry::masq_port`] (hairpin: the masquerade address, the client's port; or SNAT).
pub const CT_F_MASQ: u8 = 1 << 0;
/// Flag (with [`CT_F_MASQ`]): SNAT to the node's address and a port the datapath
/// allocated, claimed by inserting the reply entry with `BPF_NOEXIST`.
pub const CT_F_SNAT: u8 = 1 << 1;

const SEC: u64 = 1_000_000_000;
/// Idle lifetime of a TCP entry before its handshake completes.
pub const CT_TIMEOUT_TCP_SYN_NS: u64 = 60 * SEC;
/// Idle lifetime of an established TCP entry (Cilium's default, 6 h).
pub const CT_TIMEOUT_TCP_ESTABLISHED_NS: u64 = 21_600 * SEC;
/// Idle lifetime of a TCP entry after FIN or RST.
pub const CT_TIMEOUT_TCP_CLOSING_NS: u64 = 10 * SEC;
/// Idle lifetime of a UDP entry.
pub const CT_TIMEOUT_UDP_NS: u64 = 60 * SEC;

/// One direction of a translated flow, as the packets of that direction arrive (key of
/// `KPROXY_CT_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address (network order).
    pub saddr: u32,
    /// Destination address (network order).
    pub daddr: u32,
    /// Source port (network order).
    pub sport: u16,
    /// Destination port (network order).
    pub dport: u16,
    pub proto: u8,
    /// [`CT_DIR_SERVICE`] or [`CT_DIR_REPLY`].
    pub dir: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CtKey>() == 16);

/// A translated flow: who the client is, which frontend it used, which backend serves it
/// (value of `KPROXY_CT_V1`; both directions hold the same flow data, each with its own
/// `last_seen_ns` and `state`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns()` of the last packet in this direction.
    pub last_seen_ns: u64,
    /// `bpf_ktime_get_ns()` when the flow was created.
    pub created_ns: u64,
    pub backend_id: u32,
    /// [`ServiceValue::rev_nat_id`](crate::ServiceValue::rev_nat_id) of the frontend.
    pub rev_nat_id: u32,
    /// The frontend address the client used (for NodePort: the node address it hit).
    pub frontend_addr: u32,
    pub backend_addr: u32,
    /// The client's own address (before masquerade).
    pub client_addr: u32,
    /// The source address the backend sees: `masq_addr` with [`CT_F_MASQ`], else 0.
    pub masq_addr: u32,
    pub frontend_port: u16,
    pub backend_port: u16,
    pub client_port: u16,
    /// Source port the backend sees: the client's, or the allocated one with [`CT_F_SNAT`].
    pub masq_port: u16,
    /// `CT_ST_*` bits of this direction.
    pub state: u8,
    /// `CT_F_*` bits.
    pub flags: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<CtEntry>() == 56);

/// How long `entry` of protocol `proto` may stay idle.
#[inline(always)]
pub const fn ct_timeout_ns(proto: u8, state: u8) -> u64 {
    if proto == crate::lb::PROTO_TCP {
        if state & CT_ST_CLOSING != 0 {
            CT_TIMEOUT_TCP_CLOSING_NS
        } else if state & CT_ST_ESTABLISHED != 0 {
            CT_TIMEOUT_TCP_ESTABLISHED_NS
        } else {
            CT_TIMEOUT_TCP_SYN_NS
        }
    } else {
        CT_TIMEOUT_UDP_NS
    }
}

// SAFETY: repr(C), integer fields only, explicit padding, sizes asserted above.
unsafe_impl_pod!(CtKey, CtEntry);
