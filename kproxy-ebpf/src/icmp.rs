//! The ICMP port unreachable that answers a TCP or UDP packet, built in place from it
//! (RFC 792; RFC 1812 4.3.2): the Ethernet addresses swapped, a new IPv4 header from the
//! address the client dialled back to the client, the ICMP header, then the original IPv4
//! header and the start of its transport header as the quote.
//!
//! The quote is the whole fixed transport header: 8 bytes for UDP, 20 for TCP. RFC 792's
//! minimum of 8 is not enough for TCP: a SYN from a local pod is `CHECKSUM_PARTIAL`, and
//! `bpf_skb_change_tail` refuses to cut such a packet before its checksum field (byte 16
//! of the TCP header). RFC 1812 asks for as much as fits in 576 bytes; Linux's own REJECT
//! quotes everything, so a longer quote is what clients already see.
//!
//! TC only: the skb helpers resize the packet, and the reply leaves by `bpf_redirect`.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::{bpf_csum_diff, bpf_skb_change_tail},
    programs::TcContext,
};
use kproxy_common::{
    csum,
    icmp::{ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, PROTO_ICMP, REPLY_TOS, REPLY_TTL},
    lb::PROTO_TCP,
};

use crate::{
    ctx::{Packet, ptr_at, read_at},
    hdr::{ETH_LEN, IP_DST_OFF, IP_PROTO_OFF, IP_SRC_OFF, IPV4_LEN, TCP_MIN_LEN, UDP_LEN},
};

/// Length of the ICMP header of a destination unreachable.
const ICMP_LEN: usize = 8;
/// The reply's own headers, inserted between the Ethernet header and the quote.
const ROOM: usize = IPV4_LEN + ICMP_LEN;
/// Offset of the ICMP header in the reply.
const ICMP_OFF: usize = ETH_LEN + IPV4_LEN;
/// IPv4 "don't fragment" (the reply is far below any MTU).
const IP_DF: u16 = 0x4000;

/// A helper refused a step; the packet may be half rebuilt and must be dropped.
pub struct BuildError;

/// An IPv4 header without options, fields in network order.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    vihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}
const _: () = assert!(size_of::<Ipv4Hdr>() == IPV4_LEN);

/// The ICMP header of a destination unreachable (the 4 unused bytes stay zero).
#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpHdr {
    ty: u8,
    code: u8,
    check: u16,
    unused: u32,
}
const _: () = assert!(size_of::<IcmpHdr>() == ICMP_LEN);

/// Rewrites the TCP/UDP packet in `ctx` (as parsed: Ethernet, IPv4 without options,
/// the transport header linear) into the port unreachable that answers it.
#[inline(always)]
pub fn port_unreachable(ctx: &TcContext) -> Result<(), BuildError> {
    let macs: [[u8; 6]; 2] = read_at(ctx, 0).ok_or(BuildError)?;
    let proto: u8 = read_at(ctx, IP_PROTO_OFF).ok_or(BuildError)?;
    let saddr: u32 = read_at(ctx, IP_SRC_OFF).ok_or(BuildError)?;
    let daddr: u32 = read_at(ctx, IP_DST_OFF).ok_or(BuildError)?;
    if proto == PROTO_TCP {
        build::<{ ICMP_LEN + IPV4_LEN + TCP_MIN_LEN }>(ctx, macs, saddr, daddr)
    } else {
        build::<{ ICMP_LEN + IPV4_LEN + UDP_LEN }>(ctx, macs, saddr, daddr)
    }
}

/// The reply whose ICMP message (header and quote) is `MSG` bytes long.
#[inline(always)]
fn build<const MSG: usize>(
    ctx: &TcContext,
    [dst_mac, src_mac]: [[u8; 6]; 2],
    saddr: u32,
    daddr: u32,
) -> Result<(), BuildError> {
    // Keep the Ethernet header and the quote, then open the room for the new headers
    // after the Ethernet header (the helper zeroes it).
    const { assert!(MSG.is_multiple_of(4), "bpf_csum_diff sums whole 32-bit words") };
    let quote = MSG - ICMP_LEN;
    let quoted = (ETH_LEN + quote) as u32;
    // SAFETY: the context's skb pointer is valid for the program's run.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, quoted, 0) } != 0 {
        return Err(BuildError);
    }
    ctx.adjust_room(ROOM as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(|_| BuildError)?;
    let mut ip = Ipv4Hdr {
        vihl: 0x45,
        tos: REPLY_TOS,
        tot_len: ((ROOM + quote) as u16).to_be(),
        id: 0,
        frag: IP_DF.to_be(),
        ttl: REPLY_TTL,
        proto: PROTO_ICMP,
        check: 0,
        saddr: daddr,
        daddr: saddr,
    };
    ip.check = ipv4_check(&ip);
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&src_mac);
    eth[6..].copy_from_slice(&dst_mac);
    let icmp = IcmpHdr {
        ty: ICMP_DEST_UNREACH,
        code: ICMP_PORT_UNREACH,
        check: 0,
        unused: 0,
    };
    ctx.store(0, &eth, 0).map_err(|_| BuildError)?;
    ctx.store(ETH_LEN, &ip, 0).map_err(|_| BuildError)?;
    ctx.store(ICMP_OFF, &icmp, 0).map_err(|_| BuildError)?;
    // The ICMP checksum covers its header and the quote.
    if !ctx.pull(ICMP_OFF + MSG) {
        return Err(BuildError);
    }
    let msg = ptr_at::<TcContext, [u8; MSG]>(ctx, ICMP_OFF).ok_or(BuildError)?;
    // SAFETY: `msg` is bounds-checked packet memory of the size passed; nothing is read
    // from the null `from` of size 0.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, msg.cast(), MSG as u32, 0) };
    if sum < 0 {
        return Err(BuildError);
    }
    let check = csum::finish(sum as u32);
    ctx.store(ICMP_OFF + 2, &check, 0).map_err(|_| BuildError)
}

/// The header checksum of `h` (its `check` zero).
#[inline(always)]
fn ipv4_check(h: &Ipv4Hdr) -> u16 {
    // SAFETY: repr(C) of integers without padding, exactly ten 16-bit words.
    let words: [u16; IPV4_LEN / 2] = unsafe { core::mem::transmute(*h) };
    csum::checksum(&words)
}
