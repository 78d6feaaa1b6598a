//! Model → what the BPF maps should hold: the same endpoint choices kube-proxy's rules
//! make, per frontend.
//!
//! Per service port (IPv4, TCP/UDP):
//! - ClusterIP:port uses the internal policy's endpoints (node-local ones with
//!   `internalTrafficPolicy: Local`, else the cluster set);
//! - NodePort, externalIPs and LoadBalancer IPs use the external policy's endpoints
//!   (node-local ones with `externalTrafficPolicy: Local`, else the cluster set);
//! - no usable endpoint: the frontend stays with zero backends; the datapath answers
//!   with ICMP port unreachable where kube-proxy REJECTs (the service has no endpoints)
//!   and drops where it DROPs (endpoints exist, none local under a policy Local);
//! - LoadBalancer IPs with `loadBalancerSourceRanges` accept new flows from those
//!   ranges only (kube-proxy's KUBE-FW chain), and from the LoadBalancer IPs themselves
//!   when a range holds the node's IP (the node reaching its own VIP).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use super::maps::{Frontend, FrontendOptions, SourceRange};
use crate::{
    config::{NodePortAddresses, ProxyConfig},
    model::{Endpoint, Model, NodeInfo, Protocol, ServicePort},
};

/// One frontend as it should be: its backends in slot order and its options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendState {
    pub backends: Vec<SocketAddrV4>,
    pub options: FrontendOptions,
    /// The service port it belongs to (`namespace/name:port`), for logs and inspection.
    pub service: String,
}

/// Everything the maps should hold for one model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub frontends: BTreeMap<Frontend, FrontendState>,
    /// What the model asks for that the eBPF datapath does not do, one line each.
    pub unsupported: Vec<String>,
}

impl DesiredState {
    /// Every backend some frontend uses.
    pub fn backends(&self) -> BTreeSet<SocketAddrV4> {
        self.frontends
            .values()
            .flat_map(|f| f.backends.iter().copied())
            .collect()
    }
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}

fn backends_of(endpoints: &[&Endpoint]) -> Vec<SocketAddrV4> {
    endpoints
        .iter()
        .filter_map(|e| v4(e.ip).map(|ip| SocketAddrV4::new(ip, e.port)))
        .collect()
}

/// The sources a LoadBalancer IP of `port` accepts (empty: every source), as kube-proxy's
/// firewall chain lists them.
fn source_ranges(port: &ServicePort, node_ip: Option<IpAddr>) -> Vec<SourceRange> {
    let ranges = &port.load_balancer_source_ranges;
    let mut out: Vec<SourceRange> = ranges
        .iter()
        .filter_map(|r| v4(r.network()).map(|a| SourceRange::new(a, r.prefix())))
        .collect();
    if node_ip.is_some_and(|ip| ranges.iter().any(|r| r.contains(&ip))) {
        let vips = port.load_balancer_ips.iter().filter_map(|ip| v4(*ip));
        out.extend(vips.map(|a| SourceRange::new(a, 32)));
    }
    out.sort();
    out.dedup();
    out
}

/// The frontends of one service port and the maps' state for each (`node_ip`: the
/// node's primary IP, for the source-range exception).
pub fn port_frontends(port: &ServicePort, node_ip: Option<IpAddr>, out: &mut DesiredState) {
    let service = port.name.to_string();
    let proto = port.name.protocol;
    if proto == Protocol::Sctp {
        out.unsupported
            .push(format!("{service}: SCTP is not handled by the eBPF datapath"));
        return;
    }
    let Some(cluster_ip) = v4(port.cluster_ip) else {
        out.unsupported
            .push(format!("{service}: IPv6 is not handled by the eBPF datapath"));
        return;
    };
    let sets = port.categorize();
    let internal = backends_of(if port.internal_policy_local {
        &sets.local
    } else {
        &sets.cluster
    });
    let external = backends_of(if port.external_policy_local {
        &sets.local
    } else {
        &sets.cluster
    });
    let client_ip_affinity = port
        .session_affinity
        .map(|a| Duration::from_secs(a.timeout_seconds.into()));
    // Without usable backends: kube-proxy REJECTs when the service has no endpoints at
    // all, and DROPs when a policy Local leaves this node none ("no local endpoints").
    let state = |backends: &Vec<SocketAddrV4>, source_ranges: Vec<SourceRange>| FrontendState {
        backends: backends.clone(),
        options: FrontendOptions {
            client_ip_affinity,
            drop_without_backends: backends.is_empty() && sets.has_any,
            source_ranges,
        },
        service: service.clone(),
    };

    out.frontends.insert(
        Frontend::Address {
            addr: SocketAddrV4::new(cluster_ip, port.port),
            proto,
        },
        state(&internal, vec![]),
    );
    if port.node_port != 0 {
        out.frontends.insert(
            Frontend::NodePort {
                port: port.node_port,
                proto,
            },
            state(&external, vec![]),
        );
    }
    for ip in port.external_ips.iter().filter_map(|ip| v4(*ip)) {
        out.frontends.insert(
            Frontend::Address {
                addr: SocketAddrV4::new(ip, port.port),
                proto,
            },
            state(&external, vec![]),
        );
    }
    let ranges = source_ranges(port, node_ip);
    for ip in port.load_balancer_ips.iter().filter_map(|ip| v4(*ip)) {
        out.frontends.insert(
            Frontend::Address {
                addr: SocketAddrV4::new(ip, port.port),
                proto,
            },
            state(&external, ranges.clone()),
        );
    }
}

/// What the maps should hold for `model` on the node whose primary IP is `node_ip`.
pub fn desired_state(model: &Model, node_ip: Option<IpAddr>) -> DesiredState {
    let mut out = DesiredState::default();
    for port in &model.service_ports {
        port_frontends(port, node_ip, &mut out);
    }
    out
}

/// The IPv4 addresses NodePort frontends answer on (the node-address map): the node's
/// addresses `nodePortAddresses` selects, loopback excluded (the datapath sees no
/// loopback traffic).
pub fn node_port_addresses(config: &ProxyConfig, node: &NodeInfo) -> Vec<Ipv4Addr> {
    let chosen = match config.node_port_addresses(node) {
        NodePortAddresses::All => node.addresses.clone(),
        NodePortAddresses::Only(addrs) => addrs,
    };
    let mut out: Vec<Ipv4Addr> = chosen
        .into_iter()
        .filter_map(v4)
        .filter(|a| !a.is_loopback())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::ProxyConfig, manifests, model::NodeInfo};

    fn model(yaml: &str) -> Model {
        let dir = std::env::temp_dir().join(format!(
            "kproxy-desired-test-{}-{}",
            std::process::id(),
            yaml.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.yaml");
        std::fs::write(&path, yaml).unwrap();
        let node = NodeInfo::new("node-a", crate::model::IpFamily::V4);
        let m = manifests::load(&[path], &ProxyConfig::default(), &node)
            .unwrap_or_else(|e: manifests::ManifestError| panic!("{e}"));
        std::fs::remove_dir_all(&dir).unwrap();
        m
    }

    const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalIPs: [192.0.2.7]
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, protocol: SCTP, port: 53, targetPort: 53}
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.9}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: SCTP, port: 53}]
endpoints:
- {addresses: [10.1.0.2], conditions: {ready: true}, nodeName: node-a}
- {addresses: [10.1.0.3], conditions: {ready: true}, nodeName: node-b}
- {addresses: [10.1.0.4], conditions: {ready: false}, nodeName: node-a}
";

    fn sock(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn policies_pick_the_backends_kube_proxy_would() {
        let desired = desired_state(&model(SERVICE), None);
        let tcp = Protocol::Tcp;
        let get = |f: Frontend| desired.frontends.get(&f).unwrap_or_else(|| panic!("no {f}"));
        let cluster = get(Frontend::Address {
            addr: sock("10.96.0.10:80"),
            proto: tcp,
        });
        assert_eq!(
            cluster.backends,
            vec![sock("10.1.0.2:8080"), sock("10.1.0.3:8080")]
        );
        assert_eq!(cluster.options.client_ip_affinity, Some(Duration::from_hours(3)));
        assert_eq!(cluster.service, "shop/web:http");
        let local_only = vec![sock("10.1.0.2:8080")];
        assert_eq!(
            get(Frontend::NodePort {
                port: 30080,
                proto: tcp
            })
            .backends,
            local_only
        );
        assert_eq!(
            get(Frontend::Address {
                addr: sock("192.0.2.7:80"),
                proto: tcp
            })
            .backends,
            local_only
        );
        assert_eq!(
            get(Frontend::Address {
                addr: sock("198.51.100.9:80"),
                proto: tcp
            })
            .backends,
            local_only
        );
        assert_eq!(desired.frontends.len(), 4);
        assert_eq!(
            desired.unsupported,
            vec!["shop/web:dns: SCTP is not handled by the eBPF datapath".to_string()]
        );
    }

    #[test]
    fn source_ranges_guard_load_balancer_ips_only() {
        let yaml = SERVICE.replace(
            "  sessionAffinity: ClientIP\n",
            "  loadBalancerSourceRanges: [203.0.113.0/24, 192.0.2.128/25]\n",
        );
        let lb = Frontend::Address {
            addr: sock("198.51.100.9:80"),
            proto: Protocol::Tcp,
        };
        let ranges = |node_ip: Option<&str>| {
            let desired = desired_state(&model(&yaml), node_ip.map(|ip| ip.parse().unwrap()));
            assert!(desired.unsupported.iter().all(|u| !u.contains("SourceRanges")));
            let others = desired.frontends.iter().filter(|(f, _)| **f != lb);
            assert!(
                others
                    .into_iter()
                    .all(|(_, s)| s.options.source_ranges.is_empty())
            );
            let served: Vec<String> = desired.frontends[&lb]
                .options
                .source_ranges
                .iter()
                .map(ToString::to_string)
                .collect();
            served
        };
        assert_eq!(ranges(None), ["192.0.2.128/25", "203.0.113.0/24"]);
        // A node inside a range reaches its own VIP with the VIP as source (kube-proxy's
        // allowFromNode).
        assert_eq!(
            ranges(Some("203.0.113.77")),
            ["192.0.2.128/25", "198.51.100.9/32", "203.0.113.0/24"]
        );
    }

    #[test]
    fn without_usable_endpoints_drop_only_where_kube_proxy_drops() {
        // Policy Local, the only ready endpoint on another node: DROP ("no local endpoints").
        let remote_only = SERVICE.replace("nodeName: node-a}", "nodeName: node-c}");
        let desired = desired_state(&model(&remote_only), None);
        let np = Frontend::NodePort {
            port: 30080,
            proto: Protocol::Tcp,
        };
        assert!(desired.frontends[&np].backends.is_empty());
        assert!(desired.frontends[&np].options.drop_without_backends);
        let cluster = Frontend::Address {
            addr: sock("10.96.0.10:80"),
            proto: Protocol::Tcp,
        };
        assert!(!desired.frontends[&cluster].options.drop_without_backends);
        // No endpoints at all: REJECT everywhere.
        let none = SERVICE.replace("ready: true", "ready: false");
        let desired = desired_state(&model(&none), None);
        assert!(desired.frontends.values().all(|s| s.backends.is_empty()));
        assert!(
            desired
                .frontends
                .values()
                .all(|s| !s.options.drop_without_backends)
        );
    }
}
