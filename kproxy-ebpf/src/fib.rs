//! Forwarding translated packets from XDP (as Cilium's `fib_redirect`): the kernel's FIB
//! names the egress interface and both MACs, the frame gets them, its TTL drops by one
//! as at any router, and it is redirected through [`XDP_TARGETS`](crate::maps::XDP_TARGETS).
//!
//! Whenever the FIB cannot finish the job (no route, neighbour not resolved yet, a local
//! destination, MTU exceeded, forwarding off), the TTL is about to expire, or the egress
//! interface is not a vetted target, the frame goes to the stack as it is (translated,
//! MACs untouched), and the stack forwards it or answers with ICMP.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use kproxy_common::{
    csum,
    stats::{EV_XDP_PASS_TRANSLATED, EV_XDP_REDIRECT},
};

use crate::{
    ctx::{ptr_at, read_at},
    hdr::{
        IP_CSUM_OFF, IP_DST_OFF, IP_PROTO_OFF, IP_SRC_OFF, IP_TOS_OFF, IP_TOT_LEN_OFF, IP_TTL_PROTO_OFF,
        L4_DPORT_OFF, L4_SPORT_OFF,
    },
    maps::XDP_TARGETS,
    stats::event,
};

const AF_INET: u8 = 2;

/// The XDP action for a packet the datapath translated: redirected to its next hop when
/// the FIB knows it, else passed to the stack.
#[inline(always)]
pub fn forward(ctx: &XdpContext) -> u32 {
    match redirect(ctx) {
        Some(action) => {
            event(EV_XDP_REDIRECT);
            action
        }
        None => {
            event(EV_XDP_PASS_TRANSLATED);
            xdp_action::XDP_PASS
        }
    }
}

/// Route lookup for the (translated) packet in `ctx`, as if the stack forwarded it.
#[inline(always)]
fn lookup(ctx: &XdpContext) -> Option<FibParams> {
    // Read the header again: the translation rewrote it.
    let tos: u8 = read_at(ctx, IP_TOS_OFF)?;
    let tot_len: u16 = read_at(ctx, IP_TOT_LEN_OFF)?;
    let proto: u8 = read_at(ctx, IP_PROTO_OFF)?;
    let saddr: u32 = read_at(ctx, IP_SRC_OFF)?;
    let daddr: u32 = read_at(ctx, IP_DST_OFF)?;
    let sport: u16 = read_at(ctx, L4_SPORT_OFF)?;
    let dport: u16 = read_at(ctx, L4_DPORT_OFF)?;
    // SAFETY: plain-data struct of integers and unions of integers: all zeroes is valid.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.sport = sport;
    p.dport = dport;
    // Host order, for the MTU check.
    p.__bindgen_anon_1.tot_len = u16::from_be(tot_len);
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_2.tos = tos;
    p.__bindgen_anon_3.ipv4_src = saddr;
    p.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: `p` is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p, core::mem::size_of::<FibParams>() as i32, 0) };
    (rc == BPF_FIB_LKUP_RET_SUCCESS as i64).then_some(p)
}

/// Rewrites the frame for its next hop and redirects it; None (frame untouched) when it
/// must go to the stack instead.
#[inline(always)]
fn redirect(ctx: &XdpContext) -> Option<u32> {
    let p = lookup(ctx)?;
    let macs = ptr_at::<XdpContext, [u8; 12]>(ctx, 0)?;
    let ttl_proto = ptr_at::<XdpContext, u16>(ctx, IP_TTL_PROTO_OFF)?;
    let check = ptr_at::<XdpContext, u16>(ctx, IP_CSUM_OFF)?;
    // SAFETY: bounds-checked against data_end just above.
    let old = unsafe { ttl_proto.read_unaligned() };
    let [ttl, proto] = old.to_ne_bytes();
    if ttl <= 1 {
        // The stack sends the ICMP time exceeded.
        return None;
    }
    // Not a target: nothing was written yet, the stack takes the frame as it is. The
    // redirect itself happens after the program returns, so rewriting after it is fine.
    let action = XDP_TARGETS.redirect(p.ifindex, 0).ok()?;
    let new = u16::from_ne_bytes([ttl - 1, proto]);
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&p.dmac);
    eth[6..].copy_from_slice(&p.smac);
    // SAFETY: the three pointers were bounds-checked against data_end above and nothing
    // moved the frame since.
    unsafe {
        check.write_unaligned(csum::replace2(check.read_unaligned(), old, new));
        ttl_proto.write_unaligned(new);
        macs.write_unaligned(eth);
    }
    Some(action)
}
