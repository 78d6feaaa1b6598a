//! Load balancing: which frontend a packet addresses, and which backend serves a new flow.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use aya_ebpf::maps::lpm_trie::Key;
use kproxy_common::{
    AffinityKey, AffinityValue, Backend, Config, ServiceKey, ServiceValue, SlotKey, SourceRangeKey,
    lb::{SCOPE_EXACT, SCOPE_NODE_PORT, SOURCE_RANGE_ID_BITS, SVC_F_AFFINITY, SVC_F_SOURCE_RANGES},
};

use crate::{
    maps::{AFFINITY, BACKENDS, NODE_ADDRS, SERVICES, SLOTS, SOURCE_RANGES},
    parse::Flow,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The service of the frontend `flow` is sent to: an exact frontend (ClusterIP,
/// externalIP, LoadBalancer IP), else a NodePort frontend if the destination is one of
/// the node's addresses.
#[inline(always)]
pub fn lookup_service(flow: &Flow) -> Option<ServiceValue> {
    let exact = ServiceKey {
        addr: flow.daddr,
        port: flow.dport,
        proto: flow.proto,
        scope: SCOPE_EXACT,
    };
    if let Some(v) = SERVICES.get_ptr(exact) {
        // SAFETY: a map value pointer, valid for this program run; copied at once.
        return Some(unsafe { *v });
    }
    NODE_ADDRS.get_ptr(flow.daddr)?;
    let node_port = ServiceKey {
        addr: 0,
        port: flow.dport,
        proto: flow.proto,
        scope: SCOPE_NODE_PORT,
    };
    // SAFETY: as above.
    SERVICES.get_ptr(node_port).map(|v| unsafe { *v })
}

/// The service whose backends serve a flow from `saddr` to the frontend `svc`: for a
/// pod (a source in the cluster CIDR of `cfg`), the ClusterIP frontend `svc` names, as
/// kube-proxy's `externalTrafficPolicy: Local` short-circuit sends pod traffic to all
/// endpoints; else `svc` itself.
#[inline(always)]
pub fn serving(svc: &ServiceValue, saddr: u32, proto: u8, cfg: &Config) -> ServiceValue {
    let from_pod = cfg.cluster_mask != 0 && saddr & cfg.cluster_mask == cfg.cluster_net;
    if from_pod && let Some(cluster) = cluster_frontend(svc, proto) {
        return cluster;
    }
    *svc
}

/// The ClusterIP frontend that serves pods and the node's own processes in place of
/// `svc` (protocol `proto`), if `svc` names one and it exists.
#[inline(always)]
pub fn cluster_frontend(svc: &ServiceValue, proto: u8) -> Option<ServiceValue> {
    if svc.cluster_addr == 0 {
        return None;
    }
    let key = ServiceKey {
        addr: svc.cluster_addr,
        port: svc.cluster_port,
        proto,
        scope: SCOPE_EXACT,
    };
    // SAFETY: a map value pointer, valid for this program run; copied at once.
    SERVICES.get_ptr(key).map(|v| unsafe { *v })
}

/// Whether `svc` serves new flows from `saddr`: always, unless its
/// `loadBalancerSourceRanges` apply and none holds the source (kube-proxy's KUBE-FW).
#[inline(always)]
pub fn source_allowed(svc: &ServiceValue, saddr: u32) -> bool {
    if svc.flags & SVC_F_SOURCE_RANGES == 0 {
        return true;
    }
    let key = Key::new(
        SOURCE_RANGE_ID_BITS + 32,
        SourceRangeKey {
            rev_nat_id: svc.rev_nat_id,
            addr: saddr,
        },
    );
    SOURCE_RANGES.get(key).is_some()
}

/// Backend `id`, if it still exists.
#[inline(always)]
pub fn backend(id: u32) -> Option<Backend> {
    // SAFETY: a map value pointer, valid for this program run; copied at once.
    BACKENDS.get_ptr(id).map(|b| unsafe { *b })
}

/// Chooses the backend of a new flow of `svc` from `client`: the client's affinity
/// backend if the service has ClientIP affinity and it is recent and alive, else one of
/// the service's `count` slots uniformly at random. None if the maps are inconsistent
/// (a slot or backend missing).
#[inline(always)]
pub fn select_backend(svc: &ServiceValue, client: u32, now: u64) -> Option<(u32, Backend)> {
    let affinity = svc.flags & SVC_F_AFFINITY != 0;
    let akey = AffinityKey {
        client_addr: client,
        rev_nat_id: svc.rev_nat_id,
    };
    if affinity && let Some(a) = AFFINITY.get_ptr(akey) {
        // SAFETY: map value pointer, copied at once.
        let a = unsafe { *a };
        let timeout = svc.affinity_timeout_s as u64 * NS_PER_SEC;
        if now.saturating_sub(a.last_used_ns) <= timeout
            && let Some(b) = backend(a.backend_id)
        {
            remember(akey, a.backend_id, now);
            return Some((a.backend_id, b));
        }
    }
    let count = svc.count as u32;
    if count == 0 {
        return None;
    }
    // SAFETY: helper without arguments.
    let index = unsafe { bpf_get_prandom_u32() } % count;
    let slot = SlotKey {
        rev_nat_id: svc.rev_nat_id,
        slot: svc.slot_base + index,
    };
    // SAFETY: map value pointer, copied at once.
    let id = unsafe { *SLOTS.get_ptr(slot)? };
    let b = backend(id)?;
    if affinity {
        remember(akey, id, now);
    }
    Some((id, b))
}

#[inline(always)]
fn remember(key: AffinityKey, backend_id: u32, now: u64) {
    let value = AffinityValue {
        last_used_ns: now,
        backend_id,
        _pad: 0,
    };
    let _ = AFFINITY.insert(key, value, 0);
}

/// The NodePort frontend of `port`/`proto`, whatever the address (socket-LB: a NodePort
/// dialled on 127.0.0.1, kube-proxy's `localhostNodePorts`).
#[inline(always)]
pub fn lookup_node_port(port: u16, proto: u8) -> Option<ServiceValue> {
    let key = ServiceKey {
        addr: 0,
        port,
        proto,
        scope: SCOPE_NODE_PORT,
    };
    // SAFETY: a map value pointer, valid for this program run; copied at once.
    SERVICES.get_ptr(key).map(|v| unsafe { *v })
}
