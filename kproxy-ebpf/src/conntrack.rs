//! Conntrack of translated flows: keys of both directions, the two tables, freshness,
//! TCP and UDP state, repair of a flow that lost one entry.
//!
//! A flow starts in `CT_ANY` and a TCP flow moves to `CT_TCP` once its handshake has
//! completed both ways ([`promote`]): UDP churn and SYN floods only ever compete with
//! each other for room. Lookups of a TCP tuple try `CT_TCP` first.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::LruHashMap};
use kproxy_common::{
    Backend, CtEntry, CtKey,
    conntrack::{
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_MASQ, CT_ST_CLOSING, CT_ST_ESTABLISHED, CT_ST_FIN, CT_ST_PEER_FIN,
        CT_ST_REPLIED, CT_ST_SEEN_REPLY, CtTimeouts, UDP_STREAM_AFTER_NS,
    },
    lb::PROTO_TCP,
    stats::EV_CT_REPAIRED,
};

use crate::{
    hdr::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    maps::{CT_ANY, CT_TCP},
    parse::Flow,
    stats::event,
};

/// The table a flow's entries are in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `CT_TCP`: TCP flows past their handshake.
    Tcp,
    /// `CT_ANY`: UDP flows, and TCP flows in their handshake.
    Any,
}

impl Table {
    #[inline(always)]
    fn map(self) -> &'static LruHashMap<CtKey, CtEntry> {
        match self {
            Table::Tcp => &CT_TCP,
            Table::Any => &CT_ANY,
        }
    }
}

/// The entry at `key` and the table it is in (`CT_TCP` first for a TCP tuple).
#[inline(always)]
pub fn find(key: &CtKey) -> Option<(Table, *mut CtEntry)> {
    if key.proto == PROTO_TCP
        && let Some(p) = CT_TCP.get_ptr_mut(key)
    {
        return Some((Table::Tcp, p));
    }
    CT_ANY.get_ptr_mut(key).map(|p| (Table::Any, p))
}

/// Deletes the entry at `key` from `table`.
#[inline(always)]
pub fn remove(table: Table, key: &CtKey) {
    let _ = table.map().remove(key);
}

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
    e.service_key(proto)
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
    match find(&other_dir) {
        // SAFETY: map value pointer, read at once.
        Some((_, o)) => is_fresh(unsafe { &*o }, proto, now, t),
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
    if let Some((_, o)) = find(&key) {
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

/// UDP, a packet of the flow at `e` (a reply if `reply`): records that the flow has seen
/// a reply, and makes it a stream once it has and is still active 2 s after it began
/// (netfilter's SEEN_REPLY and ASSURED), on both entries (`other`: the other direction).
///
/// # Safety
/// As [`touch`].
#[inline(always)]
pub unsafe fn note_udp(e: *mut CtEntry, other: CtKey, reply: bool, now: u64) {
    // SAFETY: see the function's contract.
    let (state, created) = unsafe { ((*e).state, (*e).created_ns) };
    if state & CT_ST_REPLIED != 0 || (!reply && state & CT_ST_SEEN_REPLY == 0) {
        return;
    }
    let mut add = CT_ST_SEEN_REPLY;
    if now.saturating_sub(created) > UDP_STREAM_AFTER_NS {
        add |= CT_ST_REPLIED;
    }
    if state | add == state {
        return;
    }
    // SAFETY: see the function's contract.
    unsafe { (*e).state |= add };
    if let Some((_, o)) = find(&other) {
        // SAFETY: a live map value pointer.
        unsafe { (*o).state |= add };
    }
}

/// Puts back the entry `key` of the other direction of the flow `e` (found in `table`)
/// if it is missing: evicted, it would break the flow (replies untranslated, or the
/// client's next packet sent to another backend). A key another flow took meanwhile is
/// left to it.
#[inline(always)]
pub fn repair(table: Table, key: CtKey, e: &CtEntry) {
    if find(&key).is_some() {
        return;
    }
    if table.map().insert(key, e, BPF_NOEXIST as u64).is_ok() {
        event(EV_CT_REPAIRED);
    }
}

/// Moves the TCP flow whose service entry `service` (at `e`, in `CT_ANY`) was just
/// touched to `CT_TCP` once its handshake has completed both ways: the backend's SYN-ACK
/// (its reply entry is established) and the client's ACK (`e` is). A SYN that is never
/// answered never leaves `CT_ANY`.
///
/// # Safety
/// As [`touch`]. Values are copied map to map, never through the stack.
#[inline(always)]
pub unsafe fn promote(service: &CtKey, e: *const CtEntry) {
    // SAFETY: see the function's contract.
    let e = unsafe { &*e };
    if e.state & CT_ST_ESTABLISHED == 0 {
        return;
    }
    let reply = reply_key_of(e, PROTO_TCP);
    let Some(r) = CT_ANY.get_ptr(reply) else {
        return;
    };
    // SAFETY: a live map value pointer.
    let r = unsafe { &*r };
    if r.state & CT_ST_ESTABLISHED == 0 {
        return;
    }
    // Reply entry first, as at creation; a failure leaves the flow where it is.
    if CT_TCP.insert(reply, r, 0).is_err() {
        return;
    }
    if CT_TCP.insert(service, e, 0).is_err() {
        let _ = CT_TCP.remove(reply);
        return;
    }
    let _ = CT_ANY.remove(service);
    let _ = CT_ANY.remove(reply);
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

/// Inserts both entries of the new flow `e` of `flow` (in `CT_ANY`), unless another
/// live flow holds its reply tuple (a dead one's entries are reclaimed, an earlier flow
/// of this very client tuple is replaced).
#[inline(always)]
pub fn create(flow: &Flow, e: &CtEntry, now: u64, t: &CtTimeouts) -> Result<(), CreateError> {
    // Reply entry first: a reply can only follow the forwarded packet.
    claim(reply_key_of(e, flow.proto), e, Some(flow), now, t)?;
    insert_service(flow, e).map_err(|CtFull| CreateError::Full)
}

/// Inserts the reply entry `e` of a new flow at `key` in `CT_ANY` if no other live flow
/// holds `key` in either table: a dead flow's entries are reclaimed, and with `own`, an
/// earlier flow of that client tuple is replaced.
#[inline(always)]
pub fn claim(
    key: CtKey,
    e: &CtEntry,
    own: Option<&Flow>,
    now: u64,
    t: &CtTimeouts,
) -> Result<(), CreateError> {
    if let Some((table, p)) = find(&key)
        // SAFETY: a live map value pointer.
        && !free(table, key, unsafe { &*p }, own, now, t)
    {
        return Err(CreateError::Clash);
    }
    match CT_ANY.insert(key, e, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        // Another CPU claimed it in between (or a flow mid-move holds it in both tables).
        Err(EEXIST) => Err(CreateError::Clash),
        Err(_) => Err(CreateError::Full),
    }
}

/// Inserts the service-direction entry of the new flow `e` (its reply entry is in).
#[inline(always)]
pub fn insert_service(flow: &Flow, e: &CtEntry) -> Result<(), CtFull> {
    CT_ANY.insert(service_key(flow), e, 0).map_err(|_| CtFull)
}

/// Whether the reply tuple `key`, held in `table` by `old`, can be taken: `old` is the
/// entry of a dead flow (the LRU map keeps dead entries until it needs room), or with
/// `own`, of an earlier flow of `own`'s client tuple. Such entries are removed (with that
/// flow's service entry if it still leads to `key`).
#[inline(always)]
fn free(table: Table, key: CtKey, old: &CtEntry, own: Option<&Flow>, now: u64, t: &CtTimeouts) -> bool {
    let service = service_key_of(old, key.proto);
    let earlier = matches!(own, Some(f) if service_key(f) == service);
    if !earlier && flow_alive(old, key.proto, now, service, t) {
        return false;
    }
    let map = table.map();
    if let Some(s) = map.get_ptr(service) {
        // SAFETY: map value pointer, read at once. A newer flow of the same client tuple
        // keeps its entry.
        if reply_key_of(unsafe { &*s }, key.proto) == key {
            let _ = map.remove(service);
        }
    }
    let _ = map.remove(key);
    true
}
