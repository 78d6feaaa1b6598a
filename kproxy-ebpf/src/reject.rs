//! Frontends without usable backends, treated as kube-proxy's filter rules treat them:
//! REJECT where the service has no endpoints at all ("has no endpoints": an ICMP port
//! unreachable, so clients fail at once), DROP where it has endpoints but none its
//! traffic policy lets this node use ("has no local endpoints", `SVC_F_DROP_NO_BACKEND`).
//!
//! Only a UDP datagram or a TCP SYN gets a reply: kube-proxy's REJECT answers every
//! packet, but a stray ACK or FIN to a frontend without backends belongs to no
//! connection its client could still be opening, and the SYN's reply already failed it.
//! Replies are rate-limited per CPU as the kernel limits the ones REJECT makes it send
//! (`kproxy_common::icmp`); what the limit suppresses is dropped and counted.
//!
//! TC answers ([`answer`], [`crate::icmp`]); XDP hands such packets to the stack
//! unchanged, and TC on the same interface (an `--xdp-iface` interface is one of the
//! `--iface` ones too) answers them.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    programs::TcContext,
};
use kproxy_common::{
    ServiceValue,
    lb::{PROTO_TCP, SVC_F_DROP_NO_BACKEND},
    stats::{EV_DROP_NO_BACKEND, EV_DROP_REWRITE, EV_REJECT, EV_REJECT_RATE_LIMITED},
};

use crate::{
    conntrack::opens,
    datapath::Verdict,
    icmp,
    maps::REJECT_RATE,
    parse::Flow,
    stats::{self, Delta, event},
};

/// What becomes of `flow`, sent to `svc` that has no usable backend (`bytes` long).
#[inline(always)]
pub fn without_backends(flow: &Flow, svc: &ServiceValue, bytes: u64) -> Verdict {
    let answerable = flow.proto != PROTO_TCP || opens(flow);
    if svc.flags & SVC_F_DROP_NO_BACKEND != 0 || !answerable {
        dropped(svc.rev_nat_id, bytes);
        return Verdict::Drop;
    }
    Verdict::Reject {
        rev_nat_id: svc.rev_nat_id,
    }
}

/// TC: answers the packet in `ctx` (to service `rev_nat_id`) with ICMP port
/// unreachable out the interface it came in on; the TC action.
#[inline(always)]
pub fn answer(ctx: &TcContext, rev_nat_id: u32) -> i32 {
    let bytes = ctx.len() as u64;
    if !take_token() {
        event(EV_REJECT_RATE_LIMITED);
        dropped(rev_nat_id, bytes);
        return TC_ACT_SHOT;
    }
    // SAFETY: the context's skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if icmp::port_unreachable(ctx).is_err() {
        event(EV_DROP_REWRITE);
        dropped(rev_nat_id, bytes);
        return TC_ACT_SHOT;
    }
    event(EV_REJECT);
    stats::count_service(
        rev_nat_id,
        Delta {
            reject: true,
            ..Delta::packet(bytes)
        },
    );
    // SAFETY: plain helper call; flags 0 = out of (egress) the interface.
    match unsafe { bpf_redirect(ifindex, 0) } {
        r if r == i64::from(TC_ACT_REDIRECT) => TC_ACT_REDIRECT,
        _ => TC_ACT_SHOT,
    }
}

/// Counts a packet to service `id` dropped for want of a backend.
#[inline(always)]
fn dropped(id: u32, bytes: u64) {
    event(EV_DROP_NO_BACKEND);
    stats::count_service(
        id,
        Delta {
            no_backend_drop: true,
            ..Delta::packet(bytes)
        },
    );
}

/// Takes one reply's credit from this CPU's bucket.
#[inline(always)]
fn take_token() -> bool {
    let Some(b) = REJECT_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU slot of an array map: valid and written by this CPU only.
    unsafe { (*b).take(now) }
}
