//! IPv4 fragments (as Cilium's `ipv4_handle_fragmentation`): only a datagram's first
//! fragment carries the L4 header. Its ports are remembered in `FRAGS` by (source,
//! destination, IP id, protocol), so the later fragments get a flow with the same ports
//! and the same conntrack entry, hence the same translation: addresses only, with the
//! IPv4 header checksum (the L4 checksum is in the first fragment, whose rewrite covers
//! the whole datagram's pseudo header).
//!
//! Later fragments take a path of their own, short and apart from the main walk (which
//! the verifier would otherwise explore twice): their first fragment already chose the
//! flow. Fragments are expected in order (Linux sends them so); a later fragment whose
//! first was never seen is counted (`EV_FRAG_UNKNOWN`) and dropped if addressed to a
//! frontend's address (`FRONTEND_ADDRS`), else passed untouched.

use kproxy_common::{
    CtEntry,
    conntrack::CT_F_MASQ,
    frag::{FragKey, FragPorts},
    lb::PROTO_UDP,
    stats::{EV_DROP_REWRITE, EV_FRAG_NAT, EV_FRAG_UNKNOWN},
};

use crate::{
    conntrack as ct,
    ctx::{L4Csum, Packet, RewriteError, read_at},
    datapath::Verdict,
    hdr::{IP_DST_OFF, IP_ID_OFF, IP_PROTO_OFF, IP_SRC_OFF},
    lb,
    maps::{FRAGS, FRONTEND_ADDRS},
    parse::Flow,
    stats::{self, Delta, event},
};

/// More-fragments flag of the IPv4 flags and fragment offset word (host order).
const IP_MF: u16 = 0x2000;
/// Fragment offset bits of the same word.
const IP_OFFSET: u16 = 0x1fff;

/// Where a packet stands in its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Not fragmented.
    Whole,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: payload only.
    Later,
}

/// The position of a packet whose flags and fragment offset word is `frag_off`
/// (network order, as read from the header; DF may be set).
#[inline(always)]
pub fn position(frag_off: u16) -> Position {
    let v = u16::from_be(frag_off);
    if v & IP_OFFSET != 0 {
        Position::Later
    } else if v & IP_MF != 0 {
        Position::First
    } else {
        Position::Whole
    }
}

#[inline(always)]
fn key(saddr: u32, daddr: u32, id: u16, proto: u8) -> FragKey {
    FragKey {
        saddr,
        daddr,
        id,
        proto,
        _pad: 0,
    }
}

/// Remembers the ports of `flow` (IP id `id`; flags and fragment offset `frag_off` as
/// read, offset 0) if it is a first fragment, for the later fragments of its datagram.
#[inline(always)]
pub fn remember(flow: &Flow, id: u16, frag_off: u16) {
    if u16::from_be(frag_off) & IP_MF != 0 {
        let ports = FragPorts {
            sport: flow.sport,
            dport: flow.dport,
        };
        let _ = FRAGS.insert(key(flow.saddr, flow.daddr, id, flow.proto), ports, 0);
    }
}

/// A later fragment (TC ingress and XDP; at TC egress, `reply_only`): the translation
/// its datagram's first fragment got, from the conntrack entry the first fragment's
/// ports name: addresses only, with the IPv4 header checksum.
#[inline(always)]
pub fn later<C: Packet>(ctx: &C, reply_only: bool) -> Verdict {
    let (Some(saddr), Some(daddr)) = (
        read_at::<C, u32>(ctx, IP_SRC_OFF),
        read_at::<C, u32>(ctx, IP_DST_OFF),
    ) else {
        return Verdict::Pass;
    };
    let Some(flow) = later_flow(ctx, saddr, daddr) else {
        event(EV_FRAG_UNKNOWN);
        // Its translation is unknown: to a frontend, it must not leave as it is.
        if !reply_only && FRONTEND_ADDRS.get_ptr(daddr).is_some() {
            return Verdict::Drop;
        }
        return Verdict::Pass;
    };
    if !reply_only && let Some((_, p)) = ct::find(&ct::service_key(&flow)) {
        // SAFETY: map value pointer, copied at once.
        let e = unsafe { *p };
        let delta = Delta::packet(ctx.packet_len() as u64);
        stats::count_service(e.rev_nat_id, delta);
        stats::count_backend(e.backend_id, delta);
        return outcome(dnat(ctx, &flow, &e));
    }
    if let Some((_, p)) = ct::find(&ct::reply_key(&flow)) {
        // SAFETY: map value pointer, copied at once.
        let e = unsafe { *p };
        return outcome(rev_nat(ctx, &flow, &e));
    }
    // A datagram to a frontend whose first fragment got no flow (dropped or answered):
    // its later fragments never leave untranslated.
    if !reply_only && lb::lookup_service(&flow).is_some() {
        return Verdict::Drop;
    }
    Verdict::Pass
}

/// The flow of the later fragment in `ctx` (from `saddr` to `daddr`): its datagram's
/// ports (`tcp_flags` 0; `l4` unused), if its first fragment was seen.
#[inline(always)]
fn later_flow<C: Packet>(ctx: &C, saddr: u32, daddr: u32) -> Option<Flow> {
    let id: u16 = read_at(ctx, IP_ID_OFF)?;
    let proto: u8 = read_at(ctx, IP_PROTO_OFF)?;
    // SAFETY: map value pointer, copied at once.
    let ports = unsafe { *FRAGS.get_ptr(key(saddr, daddr, id, proto))? };
    Some(Flow {
        saddr,
        daddr,
        sport: ports.sport,
        dport: ports.dport,
        proto,
        tcp_flags: 0,
        l4: L4Csum {
            off: 0,
            udp: proto == PROTO_UDP,
        },
    })
}

/// The verdict on a later fragment after its rewrite.
#[inline(always)]
fn outcome(rewrite: Result<(), RewriteError>) -> Verdict {
    if rewrite.is_err() {
        event(EV_DROP_REWRITE);
        return Verdict::Drop;
    }
    event(EV_FRAG_NAT);
    Verdict::Translated
}

/// `nat::dnat` of a later fragment: the addresses only (the ports are in the first).
#[inline(always)]
fn dnat<C: Packet>(ctx: &C, flow: &Flow, e: &CtEntry) -> Result<(), RewriteError> {
    if e.backend_addr != flow.daddr {
        ctx.rewrite_ip_addr(IP_DST_OFF, flow.daddr, e.backend_addr)?;
    }
    if e.flags & CT_F_MASQ != 0 && e.masq_addr != flow.saddr {
        ctx.rewrite_ip_addr(IP_SRC_OFF, flow.saddr, e.masq_addr)?;
    }
    Ok(())
}

/// `nat::rev_nat` of a later fragment: the addresses only.
#[inline(always)]
fn rev_nat<C: Packet>(ctx: &C, flow: &Flow, e: &CtEntry) -> Result<(), RewriteError> {
    if e.frontend_addr != flow.saddr {
        ctx.rewrite_ip_addr(IP_SRC_OFF, flow.saddr, e.frontend_addr)?;
    }
    if e.flags & CT_F_MASQ != 0 && e.client_addr != flow.daddr {
        ctx.rewrite_ip_addr(IP_DST_OFF, flow.daddr, e.client_addr)?;
    }
    Ok(())
}
