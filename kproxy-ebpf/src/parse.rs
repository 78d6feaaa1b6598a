//! Parsing Ethernet + IPv4 + TCP/UDP into a flow (values only, no packet pointers kept).
//!
//! Handled: untagged Ethernet, IPv4 without options (IHL 5), TCP or UDP, whole or a
//! first fragment (whose ports `frag` remembers). Later fragments take their own path
//! (`frag::later`). Everything else (ARP, IPv6, VLAN tags, IP options, short packets) is
//! reported as not handled and passes untouched.

use kproxy_common::lb::{PROTO_TCP, PROTO_UDP};

use crate::{
    ctx::{L4Csum, Packet, read_at},
    frag::{self, Position},
    hdr::{
        ETH_LEN, ETH_P_IP_BE, ETH_TYPE_OFF, IP_DST_OFF, IP_FRAG_OFF, IP_ID_OFF, IP_PROTO_OFF, IP_SRC_OFF,
        IP_TOT_LEN_OFF, IP_VIHL_OFF, IPV4_LEN, L4_DPORT_OFF, L4_OFF, L4_SPORT_OFF, TCP_CSUM_OFF,
        TCP_FLAGS_OFF, TCP_MIN_LEN, UDP_CSUM_OFF, UDP_LEN,
    },
};

/// The fields of a packet the datapath decides on.
#[derive(Clone, Copy)]
pub struct Flow {
    /// Addresses and ports in network order.
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    pub l4: L4Csum,
}

/// Why a packet is not parsed into a flow.
pub enum NotHandled {
    /// Not IPv4/TCP/UDP, or too short: not ours, pass silently.
    Other,
    /// IPv4 TCP/UDP we deliberately do not translate (options): pass, counted.
    Unsupported,
    /// A later fragment of a TCP/UDP datagram: no L4 header; `frag::later` handles it.
    LaterFragment,
}

/// Parses the frame in `ctx`.
#[inline(always)]
pub fn parse_ipv4<C: Packet>(ctx: &C) -> Result<Flow, NotHandled> {
    if !ctx.pull(ETH_LEN + IPV4_LEN) {
        return Err(NotHandled::Other);
    }
    let ethertype: u16 = read_at(ctx, ETH_TYPE_OFF).ok_or(NotHandled::Other)?;
    if ethertype != ETH_P_IP_BE {
        return Err(NotHandled::Other);
    }
    let vihl: u8 = read_at(ctx, IP_VIHL_OFF).ok_or(NotHandled::Other)?;
    let proto: u8 = read_at(ctx, IP_PROTO_OFF).ok_or(NotHandled::Other)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(NotHandled::Other);
    }
    if vihl >> 4 != 4 {
        return Err(NotHandled::Other);
    }
    if vihl != 0x45 {
        return Err(NotHandled::Unsupported);
    }
    let frags: u16 = read_at(ctx, IP_FRAG_OFF).ok_or(NotHandled::Other)?;
    if frag::position(frags) == Position::Later {
        return Err(NotHandled::LaterFragment);
    }
    let id: u16 = read_at(ctx, IP_ID_OFF).ok_or(NotHandled::Other)?;
    let tot_len = u16::from_be(read_at::<C, u16>(ctx, IP_TOT_LEN_OFF).ok_or(NotHandled::Other)?) as usize;
    let (l4_len, csum_off) = if proto == PROTO_TCP {
        (TCP_MIN_LEN, TCP_CSUM_OFF)
    } else {
        (UDP_LEN, UDP_CSUM_OFF)
    };
    if tot_len < IPV4_LEN + l4_len || !ctx.pull(L4_OFF + l4_len) {
        return Err(NotHandled::Other);
    }
    // Re-read after the pull: it may have moved the data.
    let saddr: u32 = read_at(ctx, IP_SRC_OFF).ok_or(NotHandled::Other)?;
    let daddr: u32 = read_at(ctx, IP_DST_OFF).ok_or(NotHandled::Other)?;
    let sport: u16 = read_at(ctx, L4_SPORT_OFF).ok_or(NotHandled::Other)?;
    let dport: u16 = read_at(ctx, L4_DPORT_OFF).ok_or(NotHandled::Other)?;
    let tcp_flags: u8 = if proto == PROTO_TCP {
        read_at(ctx, TCP_FLAGS_OFF).ok_or(NotHandled::Other)?
    } else {
        0
    };
    let flow = Flow {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        tcp_flags,
        l4: L4Csum {
            off: csum_off,
            udp: proto == PROTO_UDP,
        },
    };
    frag::remember(&flow, id, frags);
    Ok(flow)
}
