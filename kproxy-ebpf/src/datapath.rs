//! The packet walk shared by every hook: parse, frontend lookup, conntrack, backend
//! choice (and SNAT of the flows kube-proxy masquerades, `snat`), translation; replies
//! are reverse-translated (`handle` at ingress; `handle_reply`, the same reply path
//! alone, at TC egress). Anything not ours passes untouched.

use aya_ebpf::{EbpfContext, helpers::bpf_ktime_get_ns};
use aya_log_ebpf::debug;
use kproxy_common::{
    Backend, Config, CtEntry, ServiceValue,
    conntrack::{CT_F_MASQ, CT_ST_CLOSING, CtTimeouts},
    lb::{PROTO_TCP, PROTO_UDP},
    stats::{
        EV_CT_HIT, EV_DROP_CT_FULL, EV_DROP_INCONSISTENT, EV_DROP_REWRITE, EV_DROP_SNAT_PORT_EXHAUSTED,
        EV_DROP_SOURCE_RANGE, EV_MASQ, EV_NEW_FLOW, EV_PASS_UNHANDLED, EV_REPLY_NAT, EV_RESELECT, EV_SNAT,
    },
};

use crate::{
    conntrack::{self as ct, CreateError, Table},
    ctx::Packet,
    frag, lb, nat,
    parse::{Flow, NotHandled, parse_ipv4},
    reject,
    snat::{self, SnatError},
    stats::{self, Delta, event},
};

/// What the hook does with the packet (each entry point maps it to its return code).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not ours (or not translatable): continue through the stack untouched.
    Pass,
    /// Translated (DNAT or reverse NAT): forward it; TC hands it to the stack, XDP may
    /// send it to its next hop itself (`fib`).
    Translated,
    /// Drop (no backend, or a rewrite that could not be completed).
    Drop,
    /// Untouched, to be answered with ICMP port unreachable: the service `rev_nat_id`
    /// has no endpoints (`reject`). TC answers; XDP passes it on for TC.
    Reject { rev_nat_id: u32 },
}

/// Runs the datapath on the packet in `ctx`.
#[inline(always)]
pub fn handle<C: Packet + EbpfContext>(ctx: &C) -> Verdict {
    let flow = match parse_ipv4(ctx) {
        Ok(flow) => flow,
        Err(NotHandled::Unsupported) => {
            event(EV_PASS_UNHANDLED);
            return Verdict::Pass;
        }
        Err(NotHandled::LaterFragment) => return frag::later(ctx, false),
        Err(NotHandled::Other) => return Verdict::Pass,
    };
    match lb::lookup_service(&flow) {
        Some(svc) => to_service(ctx, &flow, &svc),
        None => reply(ctx, &flow),
    }
}

/// Runs only the reply path on the packet in `ctx` (TC egress: no service lookup, no
/// DNAT). A reply the ingress hooks already translated misses the reply key, so every
/// reply is translated exactly once, wherever it is first seen.
#[inline(always)]
pub fn handle_reply<C: Packet + EbpfContext>(ctx: &C) -> Verdict {
    match parse_ipv4(ctx) {
        Ok(flow) => reply(ctx, &flow),
        Err(NotHandled::Unsupported) => {
            event(EV_PASS_UNHANDLED);
            Verdict::Pass
        }
        Err(NotHandled::LaterFragment) => frag::later(ctx, true),
        Err(NotHandled::Other) => Verdict::Pass,
    }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// A packet to the frontend `frontend`: follow its flow's conntrack entry, or start a
/// flow (with the backends of the service serving its source, `lb::serving`).
#[inline(always)]
fn to_service<C: Packet + EbpfContext>(ctx: &C, flow: &Flow, frontend: &ServiceValue) -> Verdict {
    let bytes = ctx.packet_len() as u64;
    let cfg = snat::config().unwrap_or_default();
    let svc = &lb::serving(frontend, flow.saddr, flow.proto, &cfg);
    if svc.count == 0 {
        let v = reject::without_backends(flow, svc, bytes);
        if v == Verdict::Drop {
            debug!(
                ctx,
                "kproxy: service {} has no usable backend, dropped", svc.rev_nat_id
            );
        }
        return v;
    }
    let now = now();
    let key = ct::service_key(flow);
    let mut existing: Option<CtEntry> = None;
    if let Some((table, p)) = ct::find(&key) {
        // SAFETY: map value pointer, copied at once.
        let e = unsafe { *p };
        let reply = ct::reply_key_of(&e, flow.proto);
        if follows(&e, flow, svc, now, &cfg.ct_timeouts) {
            // SAFETY: `p` comes from the lookup above.
            unsafe { ct::touch(p, flow, now) };
            ct::repair(table, reply, &e);
            if ct::closes(flow) {
                ct::note_close(reply, flow);
            }
            if flow.proto == PROTO_UDP {
                // SAFETY: as above.
                unsafe { ct::note_udp(p, reply, false, now) };
            } else if table == Table::Any {
                // SAFETY: as above.
                unsafe { ct::promote(&key, p) };
            }
            event(EV_CT_HIT);
            existing = Some(e);
        } else {
            // Stale, another service's, a new connection on a closed one, or its backend
            // is gone: choose again (the new backend's stack resets a mid-stream TCP
            // packet; UDP just moves on). The new flow starts in `CT_ANY`, so the old
            // one's entries go wherever they are.
            event(EV_RESELECT);
            ct::remove(table, &reply);
            ct::remove(table, &key);
        }
    }
    let (e, new_flow) = match existing {
        Some(e) => (e, false),
        None => {
            // Source ranges gate new flows only, as kube-proxy's nat rules do, and before
            // its short-circuit for pods (KUBE-FW precedes KUBE-EXT).
            if !lb::source_allowed(frontend, flow.saddr) {
                event(EV_DROP_SOURCE_RANGE);
                let denied = Delta {
                    source_range_drop: true,
                    ..Delta::packet(bytes)
                };
                stats::count_service(frontend.rev_nat_id, denied);
                return Verdict::Drop;
            }
            let Some((backend_id, b)) = lb::select_backend(svc, flow.saddr, now) else {
                event(EV_DROP_INCONSISTENT);
                return Verdict::Drop;
            };
            let Some(e) = start_flow(flow, svc, backend_id, &b, &cfg, now) else {
                return Verdict::Drop;
            };
            event(EV_NEW_FLOW);
            (e, true)
        }
    };
    let delta = Delta {
        new_flow,
        ..Delta::packet(bytes)
    };
    stats::count_service(svc.rev_nat_id, delta);
    stats::count_backend(e.backend_id, delta);
    if nat::dnat(ctx, flow, &e).is_err() {
        event(EV_DROP_REWRITE);
        return Verdict::Drop;
    }
    Verdict::Translated
}

/// Whether the packet `flow` of service `svc` keeps following the conntrack entry `e`.
#[inline(always)]
fn follows(e: &CtEntry, flow: &Flow, svc: &ServiceValue, now: u64, t: &CtTimeouts) -> bool {
    if e.rev_nat_id != svc.rev_nat_id {
        return false;
    }
    if ct::opens(flow) && e.state & CT_ST_CLOSING != 0 {
        return false;
    }
    if !ct::flow_alive(e, flow.proto, now, ct::reply_key_of(e, flow.proto), t) {
        return false;
    }
    // A live TCP connection stays with its backend even after it left the service
    // (terminating, or gone): another backend could only reset it, and netfilter's
    // conntrack keeps it too. A UDP flow moves on once its backend is no longer a serving
    // endpoint anywhere (the agent also removes flows of endpoints that left their own
    // service, as kube-proxy's conntrack cleanup does).
    if flow.proto == PROTO_TCP {
        return true;
    }
    matches!(lb::backend(e.backend_id), Some(b) if b.addr == e.backend_addr && b.port == e.backend_port)
}

/// Creates the conntrack entries of a new flow of `flow` to backend `backend_id` (`b`) of
/// `svc`, masqueraded if it hairpins, else SNATed if its frontend asks for it, and with
/// a new source port if another flow holds its reply tuple; None (counted) when the
/// entries could not be created.
#[inline(always)]
fn start_flow(
    flow: &Flow,
    svc: &ServiceValue,
    backend_id: u32,
    b: &Backend,
    cfg: &Config,
    now: u64,
) -> Option<CtEntry> {
    let mut e = ct::entry(flow, svc.rev_nat_id, backend_id, b, now);
    // Hairpin: the client is its own backend. Its reply would go straight back to
    // itself, so the source becomes the masquerade address (the port is kept).
    let hairpin = b.addr == flow.saddr && cfg.masq_addr != 0;
    if hairpin {
        e.masq_addr = cfg.masq_addr;
        e.flags |= CT_F_MASQ;
    }
    if !hairpin && snat::wanted(svc, flow, b, cfg) {
        e.masq_addr = cfg.snat_addr;
    } else {
        match ct::create(flow, &e, now, &cfg.ct_timeouts) {
            Ok(()) => {
                if hairpin {
                    event(EV_MASQ);
                }
                return Some(e);
            }
            Err(CreateError::Full) => {
                event(EV_DROP_CT_FULL);
                return None;
            }
            // Same client address and port, same backend, another frontend: a new
            // source port (the address kept) keeps the two flows' replies apart.
            Err(CreateError::Clash) => {
                if !hairpin {
                    e.masq_addr = flow.saddr;
                }
            }
        }
    }
    // One call site: the port allocation loop is the program's largest part.
    snat_outcome(snat::create(flow, &mut e, cfg, now), e)
}

/// The new flow `e` if its SNAT (or port remap) got entries; None, counted, if not.
#[inline(always)]
fn snat_outcome(result: Result<(), SnatError>, e: CtEntry) -> Option<CtEntry> {
    match result {
        Ok(()) => {
            event(EV_SNAT);
            Some(e)
        }
        Err(SnatError::PortExhausted) => {
            event(EV_DROP_SNAT_PORT_EXHAUSTED);
            None
        }
        Err(SnatError::CtFull) => {
            event(EV_DROP_CT_FULL);
            None
        }
    }
}

/// A packet that is not to a frontend (ingress hooks) or any packet (TC egress): a reply
/// of a translated flow gets its frontend (and client address and port, if masqueraded
/// or SNATed) back; anything else passes untouched.
#[inline(always)]
fn reply<C: Packet>(ctx: &C, flow: &Flow) -> Verdict {
    let key = ct::reply_key(flow);
    let Some((table, p)) = ct::find(&key) else {
        return Verdict::Pass;
    };
    // SAFETY: map value pointer, copied at once.
    let e = unsafe { *p };
    let now = now();
    let t = snat::config().map(|c| c.ct_timeouts).unwrap_or_default();
    let service = ct::service_key_of(&e, flow.proto);
    if !ct::flow_alive(&e, flow.proto, now, service, &t) {
        return Verdict::Pass;
    }
    if ct::answers_new_direct_connection(&e, flow) {
        // Forget the closed flow, so the rest of the new connection passes untouched too.
        ct::remove(table, &key);
        ct::remove(table, &service);
        return Verdict::Pass;
    }
    // SAFETY: `p` comes from the lookup above.
    unsafe { ct::touch(p, flow, now) };
    ct::repair(table, service, &e);
    if ct::closes(flow) {
        ct::note_close(service, flow);
    }
    if flow.proto == PROTO_UDP {
        // SAFETY: as above.
        unsafe { ct::note_udp(p, service, true, now) };
    }
    event(EV_REPLY_NAT);
    if nat::rev_nat(ctx, flow, &e).is_err() {
        event(EV_DROP_REWRITE);
        return Verdict::Drop;
    }
    Verdict::Translated
}
