//! Conntrack of translated flows: keys of both directions, freshness, TCP state.

use aya_ebpf::bindings::BPF_NOEXIST;
use kproxy_common::{
    Backend, CtEntry, CtKey,
    conntrack::{
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_MASQ, CT_ST_CLOSING, CT_ST_ESTABLISHED, CT_ST_FIN, CT_ST_PEER_FIN,
        CT_ST_REPLIED, CtTimeouts,
    },
    lb::PROTO_TCP,
};

use crate::{
    hdr::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::CONNTRACK,
    parse::Flow,
};

/// The conntrack map refused an entry (an LRU map evicts, so this is rare).
pub struct CtFull;

/// Why a new flow's entries were not created.
pub enum CreateError {
    /// The map refused an entry.
    Full,
    /// Another live flow holds the reply tuple: the same client address and port
    /// reaching the same backend through another frontend. Its source port must be
    /// remapped (netfilter does the same), or the replies would be told apart by nobody.
    Clash,
}

/// `-EEXIST` from a map update with `BPF_NOEXIST`: the key is taken.
const EEXIST: i32 = -17;

/// The service-direction key of `flow` (client → frontend, before DNAT).
#[inline(always)]
pub fn service_key(flow: &Flow) -> CtKey {
    CtKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
        proto: flow.proto,
        dir: CT_DIR_SERVICE,
        _pad: [0; 2],
    }
}

/// The reply-direction key of `flow` as it arrives (backend → client or masquerade).
#[inline(always)]
pub fn reply_key(flow: &Flow) -> CtKey {
    CtKey {
        dir: CT_DIR_REPLY,
        ..service_key(flow)
    }
}

/// The key of the replies of the flow `e` (protocol `proto`).
#[inline(always)]
pub fn reply_key_of(e: &CtEntry, proto: u8) -> CtKey {
    CtKey {
        saddr: e.backend_addr,
        daddr: if e.flags & CT_F_MASQ != 0 {
            e.masq_addr
        } else {
            e.client_addr
        },
        sport: e.backend_port,
        dport: e.masq_port,
        proto,
        dir: CT_DIR_REPLY,
        _pad: [0; 2],
    }
}

/// The key of the client's packets of the flow `e`.
#[inline(always)]
pub fn service_key_of(e: &CtEntry, proto: u8) -> CtKey {
    CtKey {
        saddr: e.client_addr,
        daddr: e.frontend_addr,
        sport: e.client_port,
        dport: e.frontend_port,
        proto,
        dir: CT_DIR_SERVICE,
        _pad: [0; 2],
    }
}

/// Whether `e` was seen within its idle timeout `t` (a timestamp in the future counts
/// as fresh).
#[inline(always)]
pub fn is_fresh(e: &CtEntry, proto: u8, now: u64, t: &CtTimeouts) -> bool {
    now.saturating_sub(e.last_seen_ns) <= t.timeout_ns(proto, e.state)
}

/// Whether the flow of `e` is alive: either direction seen within its timeout (so a flow
/// whose client is quiet but whose server keeps sending keeps its backend).
#[inline(always)]
pub fn flow_alive(e: &CtEntry, proto: u8, now: u64, other_dir: CtKey, t: &CtTimeouts) -> bool {
    if is_fresh(e, proto, now, t) {
        return true;
    }
    match CONNTRACK.get_ptr(other_dir) {
        // SAFETY: map value pointer, read at once.
        Some(o) => is_fresh(unsafe { &*o }, proto, now, t),
        None => false,
    }
}

/// Whether `flags` close a TCP flow.
#[inline(always)]
pub fn closes(flow: &Flow) -> bool {
    flow.proto == PROTO_TCP && flow.tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// Whether `flow` opens a new TCP connection (SYN without ACK).
#[inline(always)]
pub fn opens(flow: &Flow) -> bool {
    flow.proto == PROTO_TCP && flow.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether `flow`, seen in the reply direction of the closed flow `e`, answers a new
/// connection instead: a SYN-ACK for a tuple whose translated flow has closed. A new
/// connection through the service would have reopened the entry with its SYN, so this
/// one went to the backend directly and is not ours to translate.
#[inline(always)]
pub fn answers_new_direct_connection(e: &CtEntry, flow: &Flow) -> bool {
    flow.proto == PROTO_TCP && flow.tcp_flags & TCP_SYN != 0 && e.state & CT_ST_CLOSING != 0
}

#[inline(always)]
fn state_after(state: u8, flow: &Flow) -> u8 {
    if flow.proto != PROTO_TCP {
        return state;
    }
    let mut s = state;
    if flow.tcp_flags & TCP_ACK != 0 {
        s |= CT_ST_ESTABLISHED;
    }
    if flow.tcp_flags & TCP_RST != 0 {
        s |= CT_ST_CLOSING;
    }
    if flow.tcp_flags & TCP_FIN != 0 {
        s |= CT_ST_FIN;
        if s & CT_ST_PEER_FIN != 0 {
            s |= CT_ST_CLOSING;
        }
    }
    s
}

/// Records a packet of `flow` on the entry at `e`.
///
/// # Safety
/// `e` must be a conntrack value pointer from a lookup in this program run (concurrent
/// writers on other CPUs race benignly: timestamps and monotonic state bits).
#[inline(always)]
pub unsafe fn touch(e: *mut CtEntry, flow: &Flow, now: u64) {
    // SAFETY: see the function's contract.
    unsafe {
        (*e).last_seen_ns = now;
        (*e).state = state_after((*e).state, flow);
    }
}

/// Tells the entry `key` of the other direction that `flow` (a FIN or RST, [`closes`])
/// went this way: a RST closes the flow; a FIN half-closes it, and closes it once both
/// sides have sent one.
#[inline(always)]
pub fn note_close(key: CtKey, flow: &Flow) {
    if let Some(o) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a live map value pointer.
        unsafe {
            let mut s = (*o).state;
            if flow.tcp_flags & TCP_RST != 0 {
                s |= CT_ST_CLOSING;
            } else {
                s |= CT_ST_PEER_FIN;
                if s & CT_ST_FIN != 0 {
                    s |= CT_ST_CLOSING;
                }
            }
            (*o).state = s;
        }
    }
}

/// Marks both entries of a UDP flow replied to, once (netfilter's ASSURED): the reply
/// entry at `e` and the service entry `service`.
///
/// # Safety
/// As [`touch`].
#[inline(always)]
pub unsafe fn mark_replied(e: *mut CtEntry, service: CtKey) {
    // SAFETY: see the function's contract.
    unsafe {
        if (*e).state & CT_ST_REPLIED != 0 {
            return;
        }
        (*e).state |= CT_ST_REPLIED;
    }
    if let Some(o) = CONNTRACK.get_ptr_mut(service) {
        // SAFETY: a live map value pointer.
        unsafe { (*o).state |= CT_ST_REPLIED };
    }
}

/// The entry of a new flow of `flow` to backend `backend_id` (`b`) of service
/// `rev_nat_id`, not masqueraded (the backend sees the client's address and port).
#[inline(always)]
pub fn entry(flow: &Flow, rev_nat_id: u32, backend_id: u32, b: &Backend, now: u64) -> CtEntry {
    CtEntry {
        last_seen_ns: now,
        created_ns: now,
        backend_id,
        rev_nat_id,
        frontend_addr: flow.daddr,
        backend_addr: b.addr,
        client_addr: flow.saddr,
        masq_addr: 0,
        frontend_port: flow.dport,
        backend_port: b.port,
        client_port: flow.sport,
        masq_port: flow.sport,
        state: state_after(0, flow),
        flags: 0,
        _pad: [0; 6],
    }
}

/// Inserts both entries of the new flow `e` of `flow`, unless another live flow holds
/// its reply tuple (a dead one's entries are reclaimed, a stale one of this very client
/// tuple is replaced).
#[inline(always)]
pub fn create(flow: &Flow, e: &CtEntry, now: u64, t: &CtTimeouts) -> Result<(), CreateError> {
    // Reply entry first: a reply can only follow the forwarded packet.
    let key = reply_key_of(e, flow.proto);
    match CONNTRACK.insert(key, *e, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(EEXIST) => {
            if !held_by(key, flow) && !reclaim(key, flow.proto, now, t) {
                return Err(CreateError::Clash);
            }
            CONNTRACK.insert(key, *e, 0).map_err(|_| CreateError::Full)?;
        }
        Err(_) => return Err(CreateError::Full),
    }
    insert_service(flow, e).map_err(|CtFull| CreateError::Full)
}

/// Whether the reply entry `key` belongs to a flow of `flow`'s own client tuple (left
/// by an earlier flow of the same tuple: replaced, not a clash).
#[inline(always)]
fn held_by(key: CtKey, flow: &Flow) -> bool {
    match CONNTRACK.get_ptr(key) {
        // SAFETY: map value pointer, read at once.
        Some(p) => service_key_of(unsafe { &*p }, flow.proto) == service_key(flow),
        None => true,
    }
}

/// Inserts the service-direction entry of the new flow `e` (its reply entry is in).
#[inline(always)]
pub fn insert_service(flow: &Flow, e: &CtEntry) -> Result<(), CtFull> {
    CONNTRACK.insert(service_key(flow), *e, 0).map_err(|_| CtFull)
}

/// Frees the reply entry `key` if its flow is dead (the LRU map keeps dead entries until
/// it needs room), with its flow's service entry if that still leads to `key`; true if
/// `key` is free now.
#[inline(always)]
pub fn reclaim(key: CtKey, proto: u8, now: u64, t: &CtTimeouts) -> bool {
    let Some(p) = CONNTRACK.get_ptr(key) else {
        return true;
    };
    // SAFETY: map value pointer, copied at once.
    let old = unsafe { *p };
    let service = service_key_of(&old, proto);
    if flow_alive(&old, proto, now, service, t) {
        return false;
    }
    if let Some(s) = CONNTRACK.get_ptr(service) {
        // SAFETY: map value pointer, read at once. A newer flow of the same client tuple
        // keeps its entry.
        if reply_key_of(unsafe { &*s }, proto) == key {
            let _ = CONNTRACK.remove(service);
        }
    }
    let _ = CONNTRACK.remove(key);
    true
}
