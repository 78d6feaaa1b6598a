//! Which UDP flows outlived their endpoint: kube-proxy's conntrack cleanup rule
//! (`pkg/proxy/conntrack`), shared by both writers. UDP has no connection to end, so a
//! flow pinned to an endpoint that stopped serving its service would go on forever;
//! TCP flows are left alone (they end, and moving them could only reset them).

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use super::{Model, Protocol};

/// The serving endpoint addresses of every UDP service port that has any, by each
/// address:port the service answers on and by NodePort.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpServing {
    by_frontend: HashMap<SocketAddr, BTreeSet<IpAddr>>,
    by_node_port: HashMap<u16, BTreeSet<IpAddr>>,
}

impl UdpServing {
    /// The rule for `model`. Traffic policies, topology and terminating state do not
    /// count (as in kube-proxy): only whether an endpoint serves at all.
    pub fn new(model: &Model) -> Self {
        let mut out = UdpServing::default();
        for port in &model.service_ports {
            if port.name.protocol != Protocol::Udp {
                continue;
            }
            let serving: BTreeSet<IpAddr> = port
                .endpoints
                .iter()
                .filter(|e| e.serving)
                .map(|e| e.ip)
                .collect();
            // Without serving endpoints there is nothing to move flows to.
            if serving.is_empty() {
                continue;
            }
            let addresses = std::iter::once(port.cluster_ip)
                .chain(port.load_balancer_ips.iter().copied())
                .chain(port.external_ips.iter().copied());
            for ip in addresses {
                out.by_frontend
                    .insert(SocketAddr::new(ip, port.port), serving.clone());
            }
            if port.node_port != 0 {
                out.by_node_port.insert(port.node_port, serving);
            }
        }
        out
    }

    /// Whether a UDP flow the client sent to `dst`, whose replies come from
    /// `reply_src`, is stale: `dst` is a service address (or any address on a NodePort)
    /// whose serving endpoints do not include `reply_src`. A flow sent to a service
    /// that had no endpoints (its replies come from the service address itself) is stale
    /// too once the service has some.
    pub fn is_stale(&self, dst: SocketAddr, reply_src: IpAddr) -> bool {
        let outside = |set: Option<&BTreeSet<IpAddr>>| set.is_some_and(|s| !s.contains(&reply_src));
        outside(self.by_frontend.get(&dst)) || outside(self.by_node_port.get(&dst.port()))
    }

    /// Whether no UDP service has serving endpoints (nothing can be stale).
    pub fn is_empty(&self) -> bool {
        self.by_frontend.is_empty() && self.by_node_port.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ServicePort, ServicePortName};

    fn endpoint(ip: &str, serving: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 5353,
            ready: serving,
            serving,
            terminating: !serving,
            is_local: false,
            zone_hints: vec![],
            node_hints: vec![],
        }
    }

    fn dns(protocol: Protocol, endpoints: Vec<Endpoint>) -> ServicePort {
        let name = ServicePortName {
            namespace: "kube-system".into(),
            name: "dns".into(),
            port: "dns".into(),
            protocol,
        };
        ServicePort {
            node_port: 30053,
            external_ips: vec!["192.0.2.7".parse().unwrap()],
            endpoints,
            ..ServicePort::new(name, "10.96.0.10".parse().unwrap(), 53)
        }
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn flows_to_endpoints_that_stopped_serving_are_stale() {
        let model = Model {
            service_ports: vec![dns(
                Protocol::Udp,
                vec![endpoint("10.1.0.2", true), endpoint("10.1.0.3", false)],
            )],
            ..Model::default()
        };
        let rule = UdpServing::new(&model);
        for dst in ["10.96.0.10:53", "192.0.2.7:53", "192.168.1.5:30053"] {
            assert!(!rule.is_stale(at(dst), ip("10.1.0.2")), "{dst}: serving");
            assert!(rule.is_stale(at(dst), ip("10.1.0.3")), "{dst}: not serving");
            assert!(rule.is_stale(at(dst), ip("10.1.0.9")), "{dst}: gone");
        }
        // Sent while the service had no endpoints: untranslated, replies from itself.
        assert!(rule.is_stale(at("10.96.0.10:53"), ip("10.96.0.10")));
        assert!(
            !rule.is_stale(at("10.96.0.10:54"), ip("10.1.0.9")),
            "another port"
        );
    }

    #[test]
    fn tcp_and_services_without_serving_endpoints_are_left_alone() {
        let model = Model {
            service_ports: vec![
                dns(Protocol::Tcp, vec![endpoint("10.1.0.2", true)]),
                ServicePort {
                    cluster_ip: "10.96.0.11".parse().unwrap(),
                    node_port: 0,
                    external_ips: vec![],
                    ..dns(Protocol::Udp, vec![endpoint("10.1.0.3", false)])
                },
            ],
            ..Model::default()
        };
        let rule = UdpServing::new(&model);
        assert!(rule.is_empty());
        assert!(!rule.is_stale(at("10.96.0.10:53"), ip("10.1.0.9")));
        assert!(!rule.is_stale(at("10.96.0.11:53"), ip("10.1.0.3")));
    }
}
