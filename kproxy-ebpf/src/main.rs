//! kproxy's program entry points. The logic lives in the library modules.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use kproxy_common::stats::{HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP};
use kproxy_ebpf::{
    datapath::{Verdict, handle, handle_reply},
    fib,
    icmp_error::{self, Scope},
    reject, sock,
    stats::count_packet,
};

/// XDP on external interfaces: counts the packet, then runs the same datapath as TC
/// (DNAT of service traffic, reverse NAT of replies; everything else passes untouched)
/// and sends what it translated to its next hop itself when the FIB knows it (`fib`).
#[xdp]
pub fn kproxy_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    count_packet(ctx.ingress_ifindex() as u32, HOOK_XDP, len);
    // ICMP (errors about translated flows included) is not parsed here: it passes, and
    // TC ingress, attached wherever XDP is, translates it (`icmp_error`).
    match handle(&ctx) {
        // A reject is TC's to answer (`reject`): on to the stack untouched.
        Verdict::Pass | Verdict::Reject { .. } => xdp_action::XDP_PASS,
        Verdict::Translated => fib::forward(&ctx),
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// TC ingress on pod-facing veths (host side) and external interfaces: counts the
/// packet, then translates service traffic and its replies (see `datapath`), and answers
/// packets to services without endpoints with ICMP port unreachable (`reject`).
#[classifier]
pub fn kproxy_tc_ingress(ctx: TcContext) -> i32 {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    count_packet(ifindex, HOOK_TC_INGRESS, len as u64);
    // ICMP errors about translated flows, either way; everything else to the datapath.
    let verdict = icmp_error::translate(&ctx, Scope::Both).unwrap_or_else(|| handle(&ctx));
    match verdict {
        Verdict::Pass | Verdict::Translated => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Reject { rev_nat_id } => reject::answer(&ctx, rev_nat_id),
    }
}

/// TC egress on the same interfaces: counts the packet, then reverse-translates replies
/// that reached no ingress hook as replies (generated on the node, or de-masqueraded by
/// netfilter after routing), and ICMP errors toward clients (`icmp_error`); never DNATs.
/// Replies (and errors) already translated at ingress miss.
#[classifier]
pub fn kproxy_tc_egress(ctx: TcContext) -> i32 {
    // SAFETY: the context's skb pointer is valid for the program's run.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    count_packet(ifindex, HOOK_TC_EGRESS, len as u64);
    // The node's own ICMP errors about a translated packet it forwarded go to the client.
    let verdict = icmp_error::translate(&ctx, Scope::Replies).unwrap_or_else(|| handle_reply(&ctx));
    match verdict {
        Verdict::Pass | Verdict::Translated | Verdict::Reject { .. } => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

/// Socket-LB, cgroup connect4: a host process connecting to a frontend is connected to
/// a backend instead (or refused when there is none; see `sock`).
#[cgroup_sock_addr(connect4)]
pub fn kproxy_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

/// Socket-LB, cgroup sendmsg4: an unconnected UDP datagram to a frontend goes to a
/// backend.
#[cgroup_sock_addr(sendmsg4)]
pub fn kproxy_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

/// Socket-LB, cgroup recvmsg4: a UDP reply from a backend appears to come from the
/// frontend the socket sent to.
#[cgroup_sock_addr(recvmsg4)]
pub fn kproxy_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

/// Socket-LB, cgroup getpeername4: a translated socket's peer is the frontend.
#[cgroup_sock_addr(getpeername4)]
pub fn kproxy_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: bpf_fib_lookup and other helpers the datapath uses are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
