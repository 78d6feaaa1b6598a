//! Connection tracking of translated flows.
//!
//! A translated flow has two entries, with the same value layout, in one of two tables:
//! `KPROXY_CT_ANY_V1` from its first packet (UDP flows for life, TCP flows during their
//! handshake), `KPROXY_CT_TCP_V1` once a TCP flow's handshake has completed both ways.
//! - [`CT_DIR_SERVICE`]: keyed by the pre-DNAT tuple the client sent (client → frontend);
//! - [`CT_DIR_REPLY`]: keyed by the tuple the backend's replies carry (backend → client,
//!   or backend → masquerade address and port for a masqueraded or SNATed flow).

/// Entry of the client → frontend direction.
pub const CT_DIR_SERVICE: u8 = 0;
/// Entry of the backend → client direction (replies to reverse-NAT).
pub const CT_DIR_REPLY: u8 = 1;

/// TCP: an ACK was seen in this entry's direction (past the handshake's SYN).
pub const CT_ST_ESTABLISHED: u8 = 1 << 0;
/// TCP: the flow is closed: a RST either way, or a FIN each way. A SYN on its tuple
/// starts a new flow.
pub const CT_ST_CLOSING: u8 = 1 << 1;
/// TCP: this entry's direction sent a FIN.
pub const CT_ST_FIN: u8 = 1 << 2;
/// TCP: the other direction sent a FIN. One FIN half-closes the flow: the other side may
/// go on sending (netfilter's CLOSE_WAIT), so the flow lives until both have finished.
pub const CT_ST_PEER_FIN: u8 = 1 << 3;
/// UDP: a stream: a reply was seen and the flow was still active 2 s after it began
/// (netfilter's ASSURED: the stream timeout applies).
pub const CT_ST_REPLIED: u8 = 1 << 4;
/// UDP: a reply was seen (netfilter's SEEN_REPLY). A single exchange (a DNS query and
/// its answer) keeps the unreplied timeout, as in netfilter.
pub const CT_ST_SEEN_REPLY: u8 = 1 << 5;
/// How long after its first packet a replied UDP flow must still be active to become a
/// stream (netfilter's `stream_ts`: 2 s).
pub const UDP_STREAM_AFTER_NS: u64 = 2 * SEC;

/// Flag: the client's source was rewritten to [`CtEntry::masq_addr`] and
/// [`CtEntry::masq_port`] (hairpin: the masquerade address, the client's port; or SNAT).
pub const CT_F_MASQ: u8 = 1 << 0;
/// Flag (with [`CT_F_MASQ`]): SNAT to the node's address and a port the datapath
/// allocated, claimed by inserting the reply entry with `BPF_NOEXIST`.
pub const CT_F_SNAT: u8 = 1 << 1;

const SEC: u64 = 1_000_000_000;

/// Idle timeouts of kproxy's conntrack entries, in seconds (part of the config map's
/// entry): netfilter's, with kube-proxy's settings from the configuration's `conntrack`
/// section. A 0 means the default ([`CtTimeouts::DEFAULT`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtTimeouts {
    /// Before the handshake completes (netfilter's SYN_SENT: 120 s).
    pub tcp_syn: u32,
    /// Established (kube-proxy's `tcpEstablishedTimeout`: 24 h).
    pub tcp_established: u32,
    /// Half-closed: one side sent a FIN (kube-proxy's `tcpCloseWaitTimeout`: 1 h).
    pub tcp_close_wait: u32,
    /// Both sides sent a FIN (netfilter's TIME_WAIT: 120 s).
    pub tcp_time_wait: u32,
    /// Reset (netfilter's CLOSE: 10 s).
    pub tcp_close: u32,
    /// UDP without a reply yet (netfilter's `udp_timeout`: 30 s).
    pub udp: u32,
    /// UDP after a reply (netfilter's `udp_timeout_stream`: 120 s).
    pub udp_stream: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CtTimeouts>() == 32);

impl CtTimeouts {
    /// netfilter's timeouts as kube-proxy leaves them by default.
    pub const DEFAULT: CtTimeouts = CtTimeouts {
        tcp_syn: 120,
        tcp_established: 86_400,
        tcp_close_wait: 3_600,
        tcp_time_wait: 120,
        tcp_close: 10,
        udp: 30,
        udp_stream: 120,
        _pad: 0,
    };

    /// How long an entry of protocol `proto` in `state` may stay idle.
    #[inline(always)]
    pub fn timeout_ns(&self, proto: u8, state: u8) -> u64 {
        let d = Self::DEFAULT;
        let pick = |set: u32, default: u32| u64::from(if set == 0 { default } else { set }) * SEC;
        if proto != crate::lb::PROTO_TCP {
            return if state & CT_ST_REPLIED != 0 {
                pick(self.udp_stream, d.udp_stream)
            } else {
                pick(self.udp, d.udp)
            };
        }
        let both_fin = CT_ST_FIN | CT_ST_PEER_FIN;
        if state & CT_ST_CLOSING != 0 {
            if state & both_fin == both_fin {
                pick(self.tcp_time_wait, d.tcp_time_wait)
            } else {
                pick(self.tcp_close, d.tcp_close)
            }
        } else if state & both_fin != 0 {
            pick(self.tcp_close_wait, d.tcp_close_wait)
        } else if state & CT_ST_ESTABLISHED != 0 {
            pick(self.tcp_established, d.tcp_established)
        } else {
            pick(self.tcp_syn, d.tcp_syn)
        }
    }
}

/// One direction of a translated flow, as the packets of that direction arrive (key of
/// both conntrack tables).
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
/// (value of both conntrack tables; both directions hold the same flow data, each with its own
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

impl CtEntry {
    /// The key of the client's packets of this flow (protocol `proto`).
    #[inline(always)]
    pub fn service_key(&self, proto: u8) -> CtKey {
        CtKey {
            saddr: self.client_addr,
            daddr: self.frontend_addr,
            sport: self.client_port,
            dport: self.frontend_port,
            proto,
            dir: CT_DIR_SERVICE,
            _pad: [0; 2],
        }
    }
}

// SAFETY: repr(C), integer fields only, explicit padding, sizes asserted above.
unsafe_impl_pod!(CtKey, CtEntry, CtTimeouts);
