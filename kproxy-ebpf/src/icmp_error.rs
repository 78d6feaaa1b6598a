//! ICMP errors about translated flows (destination unreachable, including
//! fragmentation needed, and time exceeded), translated with their flow as netfilter
//! translates the errors it finds RELATED to a NATed connection
//! (`nf_nat_icmp_reply_translation`), so PMTU discovery and UDP's "port unreachable"
//! work through services. The error quotes the packet it is about (its IPv4 header and
//! at least 8 bytes of its transport header: the ports); that packet went one way of a
//! flow, so its tuple reversed is the key of the other way:
//!
//! - toward the client ([`Scope::Replies`]): the quote is a translated packet the client
//!   side sent (masquerade address:port → backend), so its reverse is the flow's reply
//!   key. The quote gets the client's own tuple back (client → frontend), the outer
//!   source becomes the frontend (whoever sent the error: the backend's port
//!   unreachable, or a router's), and the outer destination the client, if masqueraded.
//! - toward the backend ([`Scope::Both`] also): the quote is a reverse-translated reply
//!   (frontend → client), so its reverse is the flow's service key. The quote becomes
//!   the reply as the backend sent it (backend → masquerade address:port), the outer
//!   destination the backend, and the outer source the masquerade address, if
//!   masqueraded.
//!
//! The quote's checksums are kept right: its IPv4 header checksum, and its TCP/UDP
//! checksum when the quote holds it (UDP's is in the first 8 bytes; TCP's only when the
//! whole TCP header is quoted; a zero UDP checksum stays zero), then the ICMP checksum
//! (no pseudo header) over every quoted word that changed, and the outer IPv4 checksum.
//! Each change is compensated inside its own checksum, so the packet's sum is unchanged
//! and `skb->csum` needs no update: the fields are stored without the kernel's checksum
//! helpers. The flow's entries are not refreshed (netfilter does not refresh on
//! RELATED). A translated error no longer matches either key, so it is translated once.
//!
//! TC only. XDP passes ICMP to the stack untouched, and TC ingress, attached wherever
//! XDP is, translates it.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use kproxy_common::{
    CtEntry, CtKey,
    conntrack::{CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_MASQ},
    csum,
    icmp::{ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, PROTO_ICMP},
    lb::{PROTO_TCP, PROTO_UDP},
    stats::EV_ICMP_ERROR_NAT,
};

use crate::{
    conntrack as ct,
    ctx::{Packet, read_at},
    datapath::Verdict,
    hdr::{
        ETH_LEN, ETH_P_IP_BE, ETH_TYPE_OFF, IP_CSUM_OFF, IP_DST_OFF, IP_FRAG_OFF, IP_PROTO_OFF, IP_SRC_OFF,
        IP_TOT_LEN_OFF, IP_VIHL_OFF, IPV4_LEN, TCP_MIN_LEN, UDP_LEN,
    },
    snat,
    stats::event,
};

/// Length of the ICMP error header (type, code, checksum, 4 bytes unused or MTU).
const ICMP_HDR_LEN: usize = 8;
/// Offset of the ICMP header (outer IPv4 without options).
const ICMP_OFF: usize = ETH_LEN + IPV4_LEN;
/// Offset of the ICMP checksum.
const ICMP_CSUM_OFF: usize = ICMP_OFF + 2;
/// Offset of the quoted IPv4 header.
const IN_IP_OFF: usize = ICMP_OFF + ICMP_HDR_LEN;
/// Offset of the quoted transport header (quoted IPv4 without options).
const IN_L4_OFF: usize = IN_IP_OFF + IPV4_LEN;
/// Quoted IPv4 fields, at the outer header's offsets shifted by the quote's start.
const IN_SHIFT: usize = IN_IP_OFF - ETH_LEN;
/// Offset of the quoted ports (source, then destination).
const IN_PORTS_OFF: usize = IN_L4_OFF;
/// Offset of the quoted UDP checksum (inside the first 8 bytes).
const IN_UDP_CSUM_OFF: usize = IN_L4_OFF + 6;
/// Offset of the quoted TCP checksum (only there if the whole TCP header is quoted).
const IN_TCP_CSUM_OFF: usize = IN_L4_OFF + 16;
/// The least an error must hold: both IPv4 headers, ICMP's, the quoted ports.
const MIN_LEN: usize = IN_L4_OFF + UDP_LEN;

/// Which flows' errors a hook translates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Toward the client only (TC egress, a reply-only hook: errors the node itself
    /// sends about a translated packet it forwarded).
    Replies,
    /// Toward the client and toward the backend (TC ingress).
    Both,
}

/// An error's outer addresses and its quote's tuple, network order.
#[derive(Clone, Copy)]
struct Tuples {
    outer_src: u32,
    outer_dst: u32,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// Translates the packet in `ctx` if it is an ICMP error about a translated flow; None
/// if it is not ICMP (for the datapath), else what became of it.
#[inline(always)]
pub fn translate(ctx: &TcContext, scope: Scope) -> Option<Verdict> {
    if !ctx.pull(ETH_LEN + IPV4_LEN) {
        return None;
    }
    let ethertype: u16 = read_at(ctx, ETH_TYPE_OFF)?;
    let proto: u8 = read_at(ctx, IP_PROTO_OFF)?;
    if ethertype != ETH_P_IP_BE || proto != PROTO_ICMP {
        return None;
    }
    Some(error(ctx, scope).unwrap_or(Verdict::Pass))
}

/// The ICMP packet in `ctx`: translated if it is an error about a translated flow; None
/// (passed untouched) if not, or if it is not one we parse.
#[inline(always)]
fn error(ctx: &TcContext, scope: Scope) -> Option<Verdict> {
    // Outer IPv4 without options, unfragmented, long enough for the quoted ports.
    let vihl: u8 = read_at(ctx, IP_VIHL_OFF)?;
    let frag: u16 = read_at(ctx, IP_FRAG_OFF)?;
    let tot_len = u16::from_be(read_at(ctx, IP_TOT_LEN_OFF)?) as usize;
    if vihl != 0x45 || u16::from_be(frag) & 0x3fff != 0 || tot_len < MIN_LEN - ETH_LEN {
        return None;
    }
    if !ctx.pull(MIN_LEN) {
        return None;
    }
    let ty: u8 = read_at(ctx, ICMP_OFF)?;
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
        return None;
    }
    // The quote: IPv4 without options, TCP or UDP, a first (or only) fragment.
    let in_vihl: u8 = read_at(ctx, IP_VIHL_OFF + IN_SHIFT)?;
    let in_proto: u8 = read_at(ctx, IP_PROTO_OFF + IN_SHIFT)?;
    let in_frag: u16 = read_at(ctx, IP_FRAG_OFF + IN_SHIFT)?;
    if in_vihl != 0x45
        || (in_proto != PROTO_TCP && in_proto != PROTO_UDP)
        || u16::from_be(in_frag) & 0x1fff != 0
    {
        return None;
    }
    let [sport, dport]: [u16; 2] = read_at(ctx, IN_PORTS_OFF)?;
    let old = Tuples {
        outer_src: read_at(ctx, IP_SRC_OFF)?,
        outer_dst: read_at(ctx, IP_DST_OFF)?,
        saddr: read_at(ctx, IP_SRC_OFF + IN_SHIFT)?,
        daddr: read_at(ctx, IP_DST_OFF + IN_SHIFT)?,
        sport,
        dport,
    };
    let new = translated(&old, in_proto, scope)?;
    // The quoted TCP checksum is only rewritten when the whole TCP header is quoted
    // (netfilter's rule); UDP's is always in the quote.
    let l4_csum_off = if in_proto == PROTO_UDP {
        IN_UDP_CSUM_OFF
    } else if tot_len >= IN_L4_OFF + TCP_MIN_LEN - ETH_LEN && ctx.pull(IN_L4_OFF + TCP_MIN_LEN) {
        IN_TCP_CSUM_OFF
    } else {
        0
    };
    event(EV_ICMP_ERROR_NAT);
    Some(
        match rewrite(ctx, &old, &new, l4_csum_off, in_proto == PROTO_UDP) {
            Some(()) => Verdict::Translated,
            None => Verdict::Drop,
        },
    )
}

/// The tuples after translation, if the quote belongs to a live translated flow.
#[inline(always)]
fn translated(old: &Tuples, proto: u8, scope: Scope) -> Option<Tuples> {
    // The quote's tuple reversed: the other direction's key.
    let mut key = CtKey {
        saddr: old.daddr,
        daddr: old.saddr,
        sport: old.dport,
        dport: old.sport,
        proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    };
    let mut e = entry(key);
    if e.is_none() && scope == Scope::Both {
        key.dir = CT_DIR_SERVICE;
        e = entry(key);
    }
    let e = e?;
    let masq = e.flags & CT_F_MASQ != 0;
    let (other, new) = if key.dir == CT_DIR_REPLY {
        // About masquerade:port → backend: the client's own packet to the frontend.
        let (saddr, sport, outer_dst) = if masq {
            (e.client_addr, e.client_port, e.client_addr)
        } else {
            (old.saddr, old.sport, old.outer_dst)
        };
        let t = Tuples {
            outer_src: e.frontend_addr,
            outer_dst,
            saddr,
            daddr: e.frontend_addr,
            sport,
            dport: e.frontend_port,
        };
        (ct::service_key_of(&e, proto), t)
    } else {
        // About frontend → client: the reply as the backend sent it.
        let (daddr, dport, outer_src) = if masq {
            (e.masq_addr, e.masq_port, e.masq_addr)
        } else {
            (old.daddr, old.dport, old.outer_src)
        };
        let t = Tuples {
            outer_src,
            outer_dst: e.backend_addr,
            saddr: e.backend_addr,
            daddr,
            sport: e.backend_port,
            dport,
        };
        (ct::reply_key_of(&e, proto), t)
    };
    let t = snat::config().map(|c| c.ct_timeouts).unwrap_or_default();
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if !ct::flow_alive(&e, proto, now, other, &t) {
        return None;
    }
    Some(new)
}

/// A copy of the conntrack entry `key`, if any (looked up only: not refreshed).
#[inline(always)]
fn entry(key: CtKey) -> Option<CtEntry> {
    // SAFETY: map value pointer, copied at once.
    ct::find(&key).map(|(_, p)| unsafe { *p })
}

/// Stores the translated `new` over `old` with every checksum updated; the L4 checksum
/// of the quote at `l4_csum_off` (0: not quoted). None if a store failed (the packet may
/// be half rewritten).
#[inline(always)]
fn rewrite(ctx: &TcContext, old: &Tuples, new: &Tuples, l4_csum_off: usize, udp: bool) -> Option<()> {
    let ip_csum: u16 = read_at(ctx, IP_CSUM_OFF)?;
    let icmp_csum: u16 = read_at(ctx, ICMP_CSUM_OFF)?;
    let in_ip_csum: u16 = read_at(ctx, IP_CSUM_OFF + IN_SHIFT)?;
    let l4_csum: u16 = if l4_csum_off != 0 {
        read_at(ctx, l4_csum_off)?
    } else {
        0
    };
    // The quoted addresses are in the quote's IPv4 checksum and its L4 pseudo header.
    let new_in_ip_csum = csum::replace4(
        csum::replace4(in_ip_csum, old.saddr, new.saddr),
        old.daddr,
        new.daddr,
    );
    let new_l4_csum = if l4_csum_off == 0 || (udp && l4_csum == 0) {
        l4_csum
    } else {
        let c = csum::replace4(
            csum::replace4(l4_csum, old.saddr, new.saddr),
            old.daddr,
            new.daddr,
        );
        let c = csum::replace2(csum::replace2(c, old.sport, new.sport), old.dport, new.dport);
        if udp && c == 0 { 0xffff } else { c }
    };
    // ICMP's checksum covers every quoted word that changed, checksums included.
    let c = csum::replace4(
        csum::replace4(icmp_csum, old.saddr, new.saddr),
        old.daddr,
        new.daddr,
    );
    let c = csum::replace2(csum::replace2(c, old.sport, new.sport), old.dport, new.dport);
    let new_icmp_csum = csum::replace2(
        csum::replace2(c, in_ip_csum, new_in_ip_csum),
        l4_csum,
        new_l4_csum,
    );
    let new_ip_csum = csum::replace4(
        csum::replace4(ip_csum, old.outer_src, new.outer_src),
        old.outer_dst,
        new.outer_dst,
    );
    ctx.store(IP_SRC_OFF, &[new.outer_src, new.outer_dst], 0).ok()?;
    ctx.store(IP_CSUM_OFF, &new_ip_csum, 0).ok()?;
    ctx.store(ICMP_CSUM_OFF, &new_icmp_csum, 0).ok()?;
    ctx.store(IP_SRC_OFF + IN_SHIFT, &[new.saddr, new.daddr], 0)
        .ok()?;
    ctx.store(IP_CSUM_OFF + IN_SHIFT, &new_in_ip_csum, 0).ok()?;
    ctx.store(IN_PORTS_OFF, &[new.sport, new.dport], 0).ok()?;
    if l4_csum_off != 0 {
        ctx.store(l4_csum_off, &new_l4_csum, 0).ok()?;
    }
    Some(())
}
