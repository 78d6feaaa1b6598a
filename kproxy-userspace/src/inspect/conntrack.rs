//! `kproxy inspect conntrack`: the datapath's flows decoded, like `conntrack -L`,
//! labelled with the service port and the `KUBE-SEP-…` chain kube-proxy would have used.

use std::collections::BTreeMap;

use kproxy_common::conntrack::CtTimeouts;

use serde::Serialize;

use super::{InspectError, Inspection};
use crate::{
    ebpf::{CtDirection, CtFlow, Frontend, FrontendId, ktime_now_ns},
    iptables::chain_name::endpoint_chain,
};

/// Whether the entry has been idle longer than its timeout under `timeouts` (the
/// datapath replaces it on the next packet; until then it stays in the map).
pub fn expired(flow: &CtFlow, now_ns: u64, timeouts: &CtTimeouts) -> bool {
    now_ns.saturating_sub(flow.last_seen_ns) > timeouts.timeout_ns(flow.proto, flow.state)
}

/// One flow (its client → frontend entry; the reply entry carries the same data).
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    pub protocol: String,
    pub client: String,
    /// The address the client used (for NodePort: the node address).
    pub frontend: String,
    pub backend: String,
    /// The source the backend sees, when masqueraded (hairpin).
    pub masquerade: Option<String>,
    /// `new`, `established`, `closing` or `expired`.
    pub state: &'static str,
    pub age_s: f64,
    pub idle_s: f64,
    pub service_id: u32,
    pub backend_id: u32,
    /// The service port of the flow's frontend, when it is still in the maps and model.
    pub service: Option<String>,
    /// kube-proxy's KUBE-SEP-… chain for the backend.
    pub backend_chain: Option<String>,
}

fn protocol_name(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        n => n.to_string(),
    }
}

fn seconds(ns: u64) -> f64 {
    (ns as f64 / 1e8).round() / 10.0
}

impl Inspection {
    /// Every flow in the conntrack map, oldest first.
    pub fn conntrack(&self) -> Result<Vec<FlowReport>, InspectError> {
        let maps = self.maps()?;
        let frontends: BTreeMap<FrontendId, Frontend> = maps
            .frontends()?
            .into_iter()
            .map(|s| (s.id, s.frontend))
            .collect();
        let index = self.frontend_index();
        let now = ktime_now_ns();
        let timeouts = maps.ct_timeouts()?;
        let mut flows: Vec<CtFlow> = maps
            .conntrack()?
            .into_iter()
            .filter(|f| f.direction == CtDirection::Service)
            .collect();
        flows.sort_by_key(|f| (f.created_ns, f.src));
        Ok(flows
            .iter()
            .map(|flow| {
                let port = frontends
                    .get(&flow.frontend_id)
                    .and_then(|f| index.get(f))
                    .map(|(port, _)| *port);
                let state = if expired(flow, now, &timeouts) {
                    "expired"
                } else if flow.closing {
                    "closing"
                } else if flow.half_closed {
                    "half-closed"
                } else if flow.established {
                    "established"
                } else {
                    "new"
                };
                FlowReport {
                    protocol: protocol_name(flow.proto),
                    client: flow.client.to_string(),
                    frontend: flow.frontend.to_string(),
                    backend: flow.backend.to_string(),
                    masquerade: flow.masquerade.map(|m| m.to_string()),
                    state,
                    age_s: seconds(now.saturating_sub(flow.created_ns)),
                    idle_s: seconds(now.saturating_sub(flow.last_seen_ns)),
                    service_id: flow.frontend_id.0,
                    backend_id: flow.backend_id.0,
                    service: port.map(|p| p.name.to_string()),
                    backend_chain: port.map(|p| endpoint_chain(&p.name, &flow.backend.to_string())),
                }
            })
            .collect())
    }
}
