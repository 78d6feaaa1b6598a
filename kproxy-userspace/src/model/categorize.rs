//! kube-proxy's `CategorizeEndpoints`: which endpoints each traffic policy uses.
//!
//! Topology hints never narrow the cluster set here: kube-proxy applies them only when
//! it knows the node's zone label, and the model has no Node object.

use super::{Endpoint, ServicePort};

/// The endpoint sets of one service port.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointSets<'a> {
    /// Endpoints for cluster-policy traffic: the ready ones, or else the serving and
    /// terminating ones. Empty when the port uses no cluster policy.
    pub cluster: Vec<&'a Endpoint>,
    /// Endpoints for local-policy traffic: local and ready, or else local, serving and
    /// terminating. Empty when the port uses no local policy.
    pub local: Vec<&'a Endpoint>,
    /// Every endpoint either set uses (each needs a per-endpoint chain or map entry),
    /// in `ip:port` order.
    pub reachable: Vec<&'a Endpoint>,
    /// Some endpoint anywhere is ready, or serving and terminating.
    pub has_any: bool,
}

/// The endpoints `preferred` selects or, when there are none, those `fallback` selects.
fn usable_fallback(
    endpoints: &[Endpoint],
    preferred: impl Fn(&Endpoint) -> bool,
    fallback: impl Fn(&Endpoint) -> bool,
) -> Vec<&Endpoint> {
    let chosen: Vec<&Endpoint> = endpoints.iter().filter(|e| preferred(e)).collect();
    if !chosen.is_empty() {
        return chosen;
    }
    endpoints.iter().filter(|e| fallback(e)).collect()
}

pub(super) fn categorize(port: &ServicePort) -> EndpointSets<'_> {
    let endpoints = &port.endpoints;
    let mut sets = EndpointSets::default();
    if port.uses_cluster_endpoints() {
        sets.cluster = usable_fallback(endpoints, |e| e.ready, |e| e.serving && e.terminating);
        sets.has_any = !sets.cluster.is_empty();
    }
    if !port.uses_local_endpoints() {
        sets.reachable = sets.cluster.clone();
        return sets;
    }

    let usable = |e: &Endpoint| e.ready || (e.serving && e.terminating);
    sets.has_any |= endpoints.iter().any(usable);
    let has_local_ready = endpoints.iter().any(|e| e.is_local && e.ready);
    sets.local = usable_fallback(
        endpoints,
        |e| e.is_local && e.ready,
        |e| e.is_local && e.serving && e.terminating,
    );

    if !port.uses_cluster_endpoints() {
        sets.reachable = sets.local.clone();
    } else if has_local_ready || sets.local.is_empty() {
        // The local set is then ready endpoints only, all of them in the cluster set.
        sets.reachable = sets.cluster.clone();
    } else {
        // Local terminating endpoints may be missing from the cluster set: merge.
        sets.reachable = endpoints
            .iter()
            .filter(|e| sets.cluster.contains(e) || sets.local.contains(e))
            .collect();
    }
    sets
}

#[cfg(test)]
mod tests {
    use crate::model::{Protocol, ServicePort, ServicePortName};

    use super::*;

    /// Endpoint `10.0.0.N:80` with flags from a compact spec: r=ready, s=serving,
    /// t=terminating, l=local.
    fn ep(n: u8, flags: &str) -> Endpoint {
        Endpoint {
            ip: format!("10.0.0.{n}").parse().unwrap(),
            port: 80,
            ready: flags.contains('r'),
            serving: flags.contains('s'),
            terminating: flags.contains('t'),
            is_local: flags.contains('l'),
        }
    }

    fn port(itp_local: bool, etp_local: bool, node_port: u16, endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            name: ServicePortName {
                namespace: "ns".into(),
                name: "svc".into(),
                port: String::new(),
                protocol: Protocol::Tcp,
            },
            cluster_ip: "172.30.0.1".parse().unwrap(),
            port: 80,
            node_port,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            session_affinity: None,
            external_policy_local: etp_local,
            internal_policy_local: itp_local,
            health_check_node_port: 0,
            endpoints,
        }
    }

    fn ids(list: &[&Endpoint]) -> Vec<u8> {
        list.iter()
            .map(|e| match e.ip {
                std::net::IpAddr::V4(v4) => v4.octets()[3],
                std::net::IpAddr::V6(_) => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn categorisation_matches_kube_proxy() {
        struct Case {
            what: &'static str,
            itp_local: bool,
            etp_local: bool,
            node_port: u16,
            endpoints: Vec<Endpoint>,
            cluster: Vec<u8>,
            local: Vec<u8>,
            reachable: Vec<u8>,
            has_any: bool,
        }
        let cases = [
            Case {
                what: "cluster policy uses ready endpoints only",
                itp_local: false,
                etp_local: false,
                node_port: 0,
                endpoints: vec![ep(1, "rs"), ep(2, "st"), ep(3, "")],
                cluster: vec![1],
                local: vec![],
                reachable: vec![1],
                has_any: true,
            },
            Case {
                what: "no ready endpoints: fall back to serving terminating ones",
                itp_local: false,
                etp_local: false,
                node_port: 0,
                endpoints: vec![ep(1, "st"), ep(2, "t"), ep(3, "st")],
                cluster: vec![1, 3],
                local: vec![],
                reachable: vec![1, 3],
                has_any: true,
            },
            Case {
                what: "nothing usable",
                itp_local: false,
                etp_local: false,
                node_port: 0,
                endpoints: vec![ep(1, "s"), ep(2, "t")],
                cluster: vec![],
                local: vec![],
                reachable: vec![],
                has_any: false,
            },
            Case {
                what: "internal Local with only remote endpoints",
                itp_local: true,
                etp_local: false,
                node_port: 0,
                endpoints: vec![ep(1, "rs"), ep(2, "rs")],
                cluster: vec![],
                local: vec![],
                reachable: vec![],
                has_any: true,
            },
            Case {
                what: "internal Local picks local ready endpoints",
                itp_local: true,
                etp_local: false,
                node_port: 0,
                endpoints: vec![ep(1, "rsl"), ep(2, "rs"), ep(3, "stl")],
                cluster: vec![],
                local: vec![1],
                reachable: vec![1],
                has_any: true,
            },
            Case {
                what: "external Local merges remote ready and local terminating",
                itp_local: false,
                etp_local: true,
                node_port: 30001,
                endpoints: vec![ep(1, "rs"), ep(2, "stl"), ep(3, "rs")],
                cluster: vec![1, 3],
                local: vec![2],
                reachable: vec![1, 2, 3],
                has_any: true,
            },
            Case {
                what: "external Local without a node port is not local at all",
                itp_local: false,
                etp_local: true,
                node_port: 0,
                endpoints: vec![ep(1, "rs"), ep(2, "rsl")],
                cluster: vec![1, 2],
                local: vec![],
                reachable: vec![1, 2],
                has_any: true,
            },
        ];
        for case in cases {
            let p = port(case.itp_local, case.etp_local, case.node_port, case.endpoints);
            let sets = p.categorize();
            assert_eq!(ids(&sets.cluster), case.cluster, "{}: cluster", case.what);
            assert_eq!(ids(&sets.local), case.local, "{}: local", case.what);
            assert_eq!(ids(&sets.reachable), case.reachable, "{}: reachable", case.what);
            assert_eq!(sets.has_any, case.has_any, "{}: has_any", case.what);
        }
    }
}
