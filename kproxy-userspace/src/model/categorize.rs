//! kube-proxy's `CategorizeEndpoints`: which endpoints each traffic policy uses.
//!
//! Topology hints narrow the cluster set as kube-proxy's `topologyModeFromHints` does:
//! node hints (`trafficDistribution: PreferSameNode`) when the gate is on, every ready
//! endpoint has one and one names this node; else zone hints when every ready endpoint
//! has one and one names this node's zone (so a node without a zone label, or a
//! [`Topology`] without a zone, never filters). Local traffic policies ignore hints.

use super::{Endpoint, ServicePort, Topology};

/// Which hints narrow the cluster set (kube-proxy's topology mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopologyMode {
    /// No hints apply: every endpoint.
    All,
    /// Endpoints hinted for this node.
    SameNode,
    /// Endpoints hinted for this node's zone.
    SameZone,
}

/// The topology mode the ready endpoints' hints select for this node.
fn topology_mode(endpoints: &[Endpoint], topology: &Topology) -> TopologyMode {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return TopologyMode::All;
    }
    let names = |hints: &[String], name: &str| hints.iter().any(|h| h == name);
    if topology.prefer_same_node
        && ready.iter().all(|e| !e.node_hints.is_empty())
        && ready.iter().any(|e| names(&e.node_hints, &topology.node_name))
    {
        return TopologyMode::SameNode;
    }
    if let Some(zone) = topology.zone.as_deref()
        && ready.iter().all(|e| !e.zone_hints.is_empty())
        && ready.iter().any(|e| names(&e.zone_hints, zone))
    {
        return TopologyMode::SameZone;
    }
    TopologyMode::All
}

/// Whether `mode` lets this node use `endpoint` (no fallback here: the mode already
/// guarantees some ready endpoint passes).
fn available(endpoint: &Endpoint, mode: TopologyMode, topology: &Topology) -> bool {
    match mode {
        TopologyMode::All => true,
        TopologyMode::SameNode => endpoint.node_hints.contains(&topology.node_name),
        TopologyMode::SameZone => topology
            .zone
            .as_ref()
            .is_some_and(|zone| endpoint.zone_hints.contains(zone)),
    }
}

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

pub(super) fn categorize<'a>(port: &'a ServicePort, topology: &Topology) -> EndpointSets<'a> {
    let endpoints = &port.endpoints;
    let mut sets = EndpointSets::default();
    let mut mode = TopologyMode::All;
    if port.uses_cluster_endpoints() {
        mode = topology_mode(endpoints, topology);
        // Topology narrows the ready endpoints only: a mode is chosen only when some
        // ready endpoint passes it, so the terminating fallback means none is ready.
        sets.cluster = usable_fallback(
            endpoints,
            |e| e.ready && available(e, mode, topology),
            |e| e.serving && e.terminating,
        );
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
    } else if mode == TopologyMode::All && (has_local_ready || sets.local.is_empty()) {
        // The local set is then ready endpoints only, all of them in the cluster set.
        sets.reachable = sets.cluster.clone();
    } else {
        // Local endpoints may be terminating or outside the topology, so missing from
        // the cluster set: merge.
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
            zone_hints: vec![],
            node_hints: vec![],
        }
    }

    /// `ep` with zone hints (`a` for zone-a, ...) and node hints (node names).
    fn hinted(n: u8, flags: &str, zones: &str, nodes: &[&str]) -> Endpoint {
        Endpoint {
            zone_hints: zones.chars().map(|z| format!("zone-{z}")).collect(),
            node_hints: nodes.iter().map(ToString::to_string).collect(),
            ..ep(n, flags)
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
            let sets = p.categorize(&Topology::default());
            assert_eq!(ids(&sets.cluster), case.cluster, "{}: cluster", case.what);
            assert_eq!(ids(&sets.local), case.local, "{}: local", case.what);
            assert_eq!(ids(&sets.reachable), case.reachable, "{}: reachable", case.what);
            assert_eq!(sets.has_any, case.has_any, "{}: has_any", case.what);
        }
    }

    /// kube-proxy's topology cases (`TestCategorizeEndpoints` in pkg/proxy's
    /// topology_test.go, the hint cases, plus node hints), on node `test-node`.
    #[test]
    fn topology_hints_as_kube_proxy_follows_them() {
        struct Case {
            what: &'static str,
            zone: Option<&'static str>,
            prefer_same_node: bool,
            itp_local: bool,
            etp_local: bool,
            node_port: u16,
            endpoints: Vec<Endpoint>,
            cluster: Vec<u8>,
            local: Vec<u8>,
            reachable: Vec<u8>,
        }
        let four_zones = || {
            vec![
                hinted(3, "rs", "a", &[]),
                hinted(4, "rs", "b", &[]),
                hinted(5, "rs", "c", &[]),
                hinted(6, "rs", "a", &[]),
            ]
        };
        let case = |what, zone, endpoints, cluster: Vec<u8>| Case {
            what,
            zone,
            prefer_same_node: true,
            itp_local: false,
            etp_local: false,
            node_port: 0,
            endpoints,
            reachable: cluster.clone(),
            cluster,
            local: vec![],
        };
        let same_node = || {
            vec![
                hinted(1, "rs", "a", &["test-node"]),
                hinted(2, "rs", "a", &["node-2"]),
                hinted(3, "rs", "b", &["node-3"]),
            ]
        };
        let cases = [
            case(
                "zone hints: this zone's endpoints",
                Some("zone-a"),
                four_zones(),
                vec![3, 6],
            ),
            case(
                "node without a zone label: no filtering",
                None,
                vec![hinted(3, "rs", "a", &[])],
                vec![3],
            ),
            case(
                "no endpoint for this zone: no filtering",
                Some("zone-b"),
                vec![hinted(3, "rs", "a", &[])],
                vec![3],
            ),
            case(
                "an unready endpoint of this zone is left out",
                Some("zone-a"),
                vec![
                    hinted(3, "rs", "a", &[]),
                    hinted(4, "rs", "b", &[]),
                    hinted(5, "rs", "c", &[]),
                    hinted(6, "s", "a", &[]),
                ],
                vec![3],
            ),
            case(
                "only unready endpoints in this zone: no filtering",
                Some("zone-a"),
                vec![
                    hinted(3, "s", "a", &[]),
                    hinted(4, "rs", "b", &[]),
                    hinted(5, "rs", "c", &[]),
                    hinted(6, "s", "a", &[]),
                ],
                vec![4, 5],
            ),
            case(
                "a ready endpoint without hints: no filtering",
                Some("zone-a"),
                vec![
                    hinted(3, "rs", "a", &[]),
                    hinted(4, "rs", "b", &[]),
                    hinted(5, "rs", "", &[]),
                    hinted(6, "rs", "a", &[]),
                ],
                vec![3, 4, 5, 6],
            ),
            case(
                "several zones per endpoint: any naming this zone",
                Some("zone-c"),
                vec![
                    hinted(3, "rs", "abc", &[]),
                    hinted(4, "rs", "bc", &[]),
                    hinted(5, "rs", "bd", &[]),
                    hinted(6, "rs", "c", &[]),
                ],
                vec![3, 4, 6],
            ),
            case(
                "no ready endpoint: terminating fallback ignores hints",
                Some("zone-a"),
                vec![hinted(1, "st", "a", &[]), hinted(2, "st", "b", &[])],
                vec![1, 2],
            ),
            case(
                "node hints: this node's endpoints",
                Some("zone-a"),
                same_node(),
                vec![1],
            ),
            Case {
                prefer_same_node: false,
                ..case(
                    "PreferSameTrafficDistribution off: zone hints instead",
                    Some("zone-a"),
                    same_node(),
                    vec![1, 2],
                )
            },
            case(
                "a ready endpoint without node hints: zone hints instead",
                Some("zone-a"),
                vec![
                    hinted(1, "rs", "a", &["test-node"]),
                    hinted(2, "rs", "a", &[]),
                    hinted(3, "rs", "b", &["node-3"]),
                ],
                vec![1, 2],
            ),
            case(
                "no endpoint for this node: zone hints instead",
                Some("zone-a"),
                vec![
                    hinted(1, "rs", "a", &["node-1"]),
                    hinted(2, "rs", "b", &["node-2"]),
                ],
                vec![1],
            ),
            Case {
                etp_local: true,
                node_port: 30001,
                local: vec![3, 4],
                reachable: vec![3, 4, 6],
                ..case(
                    "external Local ignores topology for local endpoints",
                    Some("zone-a"),
                    vec![
                        hinted(3, "rsl", "a", &[]),
                        hinted(4, "rsl", "b", &[]),
                        hinted(5, "rs", "c", &[]),
                        hinted(6, "rs", "a", &[]),
                    ],
                    vec![3, 6],
                )
            },
            Case {
                itp_local: true,
                node_port: 30001,
                local: vec![3, 4],
                reachable: vec![3, 4, 6],
                ..case(
                    "internal Local ignores topology for local endpoints",
                    Some("zone-a"),
                    vec![
                        hinted(3, "rsl", "a", &[]),
                        hinted(4, "rsl", "b", &[]),
                        hinted(5, "rs", "c", &[]),
                        hinted(6, "rs", "a", &[]),
                    ],
                    vec![3, 6],
                )
            },
            Case {
                etp_local: true,
                node_port: 30001,
                local: vec![0, 1],
                reachable: vec![0, 1, 2],
                ..case(
                    "topology and locality disagree: the reachable set merges both",
                    Some("zone-a"),
                    vec![
                        hinted(0, "rsl", "a", &[]),
                        hinted(1, "rsl", "b", &[]),
                        hinted(2, "rs", "a", &[]),
                        hinted(3, "rs", "b", &[]),
                    ],
                    vec![0, 2],
                )
            },
            Case {
                itp_local: true,
                local: vec![4],
                reachable: vec![4],
                ..case(
                    "internal Local only: hints play no part",
                    Some("zone-a"),
                    vec![hinted(3, "rs", "a", &[]), hinted(4, "rsl", "b", &[])],
                    vec![],
                )
            },
        ];
        for case in cases {
            let topology = Topology {
                node_name: "test-node".into(),
                zone: case.zone.map(String::from),
                prefer_same_node: case.prefer_same_node,
            };
            let p = port(case.itp_local, case.etp_local, case.node_port, case.endpoints);
            let sets = p.categorize(&topology);
            assert_eq!(ids(&sets.cluster), case.cluster, "{}: cluster", case.what);
            assert_eq!(ids(&sets.local), case.local, "{}: local", case.what);
            assert_eq!(ids(&sets.reachable), case.reachable, "{}: reachable", case.what);
            assert!(sets.has_any, "{}: has_any", case.what);
        }
    }
}
