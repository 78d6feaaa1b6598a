//! Socket-level load balancing (Cilium's socket-LB): cgroup programs translate a host
//! process's `connect()` and `sendmsg()` to a frontend into the backend's address
//! before any packet exists, so host processes reach services without conntrack or
//! per-packet NAT, and `recvmsg()`/`getpeername()` show the frontend again.
//!
//! Only sockets of the agent's network namespace are translated (the config's netns
//! cookie; 0 = off). Anything else, and anything that goes wrong, passes untouched
//! (fail open). A frontend without endpoints fails connect/sendmsg with ECONNREFUSED
//! (kube-proxy's REJECT); one whose backends the traffic policy excludes
//! (`SVC_F_DROP_NO_BACKEND`) is left untouched: the socket goes where it dialled.
//!
//! The frontend lookup and the backend choice are the TC path's own ([`lb`]), with the
//! node's address as the client (ClientIP affinity, source ranges).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_set_retval},
    programs::SockAddrContext,
};
use kproxy_common::{
    Config, ServiceValue, SockRevNat, SockRevNatKey,
    lb::{PROTO_TCP, PROTO_UDP, SVC_F_DROP_NO_BACKEND},
    node::CFG_F_LOCALHOST_NODE_PORTS,
    stats::{EV_DROP_INCONSISTENT, EV_SOCK_REFUSED, EV_SOCK_REVNAT, EV_SOCK_XLATE},
};

use crate::{
    ctx::L4Csum,
    lb,
    maps::{CONFIG, SOCK_REVNAT},
    parse::Flow,
    stats::{self, Delta, event},
};

/// A cgroup sock_addr program's verdict: go on with the call.
pub const SOCK_PASS: i32 = 1;
/// A cgroup sock_addr program's verdict: fail the call (with the errno set by
/// `bpf_set_retval`, EPERM without it).
const SOCK_FAIL: i32 = 0;
/// `-ECONNREFUSED`, the error a refused connect/sendmsg returns.
const ECONNREFUSED: i32 = -111;
/// 127.0.0.1 as the maps hold addresses (network order).
const LOCALHOST: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// The config, if socket-LB is on and the socket belongs to the agent's netns.
#[inline(always)]
fn config_for(ctx: &SockAddrContext) -> Option<Config> {
    let cfg = *CONFIG.get(0)?;
    if cfg.netns_cookie == 0 {
        return None;
    }
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    (cookie == cfg.netns_cookie).then_some(cfg)
}

/// The socket's protocol, if TCP or UDP.
#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: the context pointer is valid for the program's run.
    let proto = unsafe { (*ctx.sock_addr).protocol };
    if proto == PROTO_TCP as u32 || proto == PROTO_UDP as u32 {
        Some(proto as u8)
    } else {
        None
    }
}

/// The frontend `daddr:dport` (`proto`) names, as the TC path looks it up, or a NodePort
/// dialled on 127.0.0.1 where `localhostNodePorts` allow it.
#[inline(always)]
fn frontend(cfg: &Config, daddr: u32, dport: u16, proto: u8) -> Option<ServiceValue> {
    let flow = Flow {
        saddr: cfg.snat_addr,
        daddr,
        sport: 0,
        dport,
        proto,
        tcp_flags: 0,
        l4: L4Csum { off: 0, udp: false },
    };
    if let Some(svc) = lb::lookup_service(&flow) {
        return Some(svc);
    }
    if daddr == LOCALHOST && cfg.flags & CFG_F_LOCALHOST_NODE_PORTS != 0 {
        return lb::lookup_node_port(dport, proto);
    }
    None
}

/// connect4 and sendmsg4: a socket dialling a frontend is sent to one of its backends.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext) -> i32 {
    let Some(cfg) = config_for(ctx) else {
        return SOCK_PASS;
    };
    let Some(proto) = protocol(ctx) else {
        return SOCK_PASS;
    };
    // SAFETY: the context pointer is valid for the program's run.
    let (daddr, dport) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port as u16) };
    let Some(dialled) = frontend(&cfg, daddr, dport, proto) else {
        return SOCK_PASS;
    };
    // kube-proxy's short-circuit: the node's own traffic to an externalTrafficPolicy
    // Local frontend is served by all endpoints (its ClusterIP's), not the node's only.
    let svc = lb::cluster_frontend(&dialled, proto).unwrap_or(dialled);
    if svc.count == 0 {
        if svc.flags & SVC_F_DROP_NO_BACKEND != 0 {
            return SOCK_PASS;
        }
        event(EV_SOCK_REFUSED);
        let refused = Delta {
            reject: true,
            ..Delta::packet(0)
        };
        stats::count_service(svc.rev_nat_id, refused);
        // SAFETY: helper with a plain integer argument.
        unsafe { bpf_set_retval(ECONNREFUSED) };
        return SOCK_FAIL;
    }
    // Source ranges are the dialled frontend's (KUBE-FW precedes the short-circuit).
    if !lb::source_allowed(&dialled, cfg.snat_addr) {
        return SOCK_PASS;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some((backend_id, b)) = lb::select_backend(&svc, cfg.snat_addr, now) else {
        event(EV_DROP_INCONSISTENT);
        return SOCK_PASS;
    };
    let key = SockRevNatKey {
        // SAFETY: the helper takes the program's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: b.addr,
        port: b.port,
        _pad: 0,
    };
    let value = SockRevNat {
        addr: daddr,
        port: dport,
        _pad: 0,
        rev_nat_id: svc.rev_nat_id,
    };
    // Best effort: without it, replies and getpeername show the backend.
    let _ = SOCK_REVNAT.insert(key, value, 0);
    // SAFETY: the context pointer is valid for the program's run; the verifier lets
    // connect4 and sendmsg4 write these fields.
    unsafe {
        (*ctx.sock_addr).user_ip4 = b.addr;
        (*ctx.sock_addr).user_port = b.port as u32;
    }
    let delta = Delta {
        new_flow: true,
        ..Delta::packet(0)
    };
    stats::count_service(svc.rev_nat_id, delta);
    stats::count_backend(backend_id, delta);
    event(EV_SOCK_XLATE);
    SOCK_PASS
}

/// recvmsg4 and getpeername4: a backend's address a translated socket sees becomes the
/// frontend it dialled.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    if config_for(ctx).is_none() {
        return SOCK_PASS;
    }
    // SAFETY: the context pointer is valid for the program's run.
    let (addr, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port as u16) };
    let key = SockRevNatKey {
        // SAFETY: the helper takes the program's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr,
        port,
        _pad: 0,
    };
    let Some(front) = SOCK_REVNAT.get_ptr(key) else {
        return SOCK_PASS;
    };
    // SAFETY: map value pointer, copied at once.
    let front = unsafe { *front };
    // SAFETY: as above; the verifier lets recvmsg4 and getpeername4 write these fields.
    unsafe {
        (*ctx.sock_addr).user_ip4 = front.addr;
        (*ctx.sock_addr).user_port = front.port as u32;
    }
    event(EV_SOCK_REVNAT);
    SOCK_PASS
}
