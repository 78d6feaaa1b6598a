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
//!
//! Which new flows are SNATed to the node (kube-proxy's KUBE-MARK-MASQ rules, per
//! frontend, [`MasqueradePolicy`]):
//! - NodePort, externalIPs, LoadBalancer IPs with `externalTrafficPolicy: Cluster`: all
//!   (KUBE-EXT's unconditional masquerade); with `Local`: none, the backend sees the client;
//! - ClusterIP: all with `masqueradeAll`, else those from outside the cluster CIDR when
//!   local traffic is detected by CIDR (`! -s CIDR -j KUBE-MARK-MASQ`), else none;
//! - hairpin flows (a pod reaching itself) are masqueraded by the datapath on its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use super::maps::{Frontend, FrontendOptions, Masquerade, SourceRange};
use crate::{
    config::{ConfigError, LocalTraffic, NodePortAddresses, ProxyConfig},
    model::{Endpoint, Model, NodeInfo, Protocol, ServicePort, Topology},
};

/// Which ClusterIP flows kube-proxy masquerades, from the configuration (external
/// frontends depend on their traffic policy only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasqueradePolicy {
    /// `masqueradeAll`: every ClusterIP flow.
    pub all: bool,
    /// The IPv4 cluster CIDR (network, prefix length) of the local-traffic detector:
    /// ClusterIP flows from outside it.
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
    /// An interface-based detector (`detectLocalMode` BridgeInterface or
    /// InterfaceNamePrefix): the datapath cannot apply it, so it is reported unsupported.
    pub interface_detector: Option<String>,
}

impl MasqueradePolicy {
    /// The policy of `config` on `node` (its local-traffic detector, `masqueradeAll`).
    pub fn new(config: &ProxyConfig, node: &NodeInfo) -> Result<Self, ConfigError> {
        let mut policy = MasqueradePolicy {
            all: config.masquerade_all,
            ..MasqueradePolicy::default()
        };
        match config.local_traffic(node)? {
            LocalTraffic::Unknown => {}
            LocalTraffic::SourceCidr(cidr) => {
                policy.cluster_cidr = v4(cidr.network()).map(|net| (net, cidr.prefix()));
            }
            LocalTraffic::Interface(name) => policy.interface_detector = Some(name),
            LocalTraffic::InterfacePrefix(prefix) => policy.interface_detector = Some(format!("{prefix}+")),
        }
        Ok(policy)
    }

    /// What a ClusterIP frontend SNATs.
    fn cluster_ip(&self) -> Masquerade {
        if self.all {
            Masquerade::Always
        } else if self.cluster_cidr.is_some() {
            Masquerade::OffCluster
        } else {
            Masquerade::Never
        }
    }
}

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
    /// Serving endpoints, in slots or not (a terminating one new flows skip): kept in
    /// the backends map so their UDP flows go on, as kube-proxy keeps the conntrack
    /// entries of serving endpoints (TCP flows keep their backend regardless).
    pub serving: BTreeSet<SocketAddrV4>,
    /// What the model asks for that the eBPF datapath does not do, one line each.
    pub unsupported: Vec<String>,
}

impl DesiredState {
    /// Every backend the maps hold: those some frontend uses, and serving endpoints.
    pub fn backends(&self) -> BTreeSet<SocketAddrV4> {
        self.frontends
            .values()
            .flat_map(|f| f.backends.iter().copied())
            .chain(self.serving.iter().copied())
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

/// The frontends of one service port and the maps' state for each, under the masquerade
/// `policy` (`node_ip`: the node's primary IP, for the source-range exception), on the
/// node `topology` describes (the model's).
pub fn port_frontends(
    port: &ServicePort,
    topology: &Topology,
    policy: &MasqueradePolicy,
    node_ip: Option<IpAddr>,
    out: &mut DesiredState,
) {
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
    let sets = port.categorize(topology);
    let serving: Vec<&Endpoint> = port.endpoints.iter().filter(|e| e.serving).collect();
    out.serving.extend(backends_of(&serving));
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
    let external_masquerade = if port.external_policy_local {
        Masquerade::Never
    } else {
        Masquerade::Always
    };
    // Without usable backends: kube-proxy REJECTs when the service has no endpoints at
    // all, and DROPs when a policy Local leaves this node none ("no local endpoints").
    let cluster_frontend = SocketAddrV4::new(cluster_ip, port.port);
    // kube-proxy's short-circuit for eTP=Local: pods and the node's own processes reach
    // external frontends through the cluster's endpoints, not only the node's.
    let short_circuit = port.external_policy_local.then_some(cluster_frontend);
    let state = |backends: &Vec<SocketAddrV4>,
                 masquerade: Masquerade,
                 source_ranges: Vec<SourceRange>,
                 cluster_frontend: Option<SocketAddrV4>| {
        FrontendState {
            backends: backends.clone(),
            options: FrontendOptions {
                client_ip_affinity,
                masquerade,
                drop_without_backends: backends.is_empty() && sets.has_any,
                source_ranges,
                cluster_frontend,
            },
            service: service.clone(),
        }
    };

    out.frontends.insert(
        Frontend::Address {
            addr: cluster_frontend,
            proto,
        },
        state(&internal, policy.cluster_ip(), vec![], None),
    );
    if port.node_port != 0 {
        out.frontends.insert(
            Frontend::NodePort {
                port: port.node_port,
                proto,
            },
            state(&external, external_masquerade, vec![], short_circuit),
        );
    }
    for ip in port.external_ips.iter().filter_map(|ip| v4(*ip)) {
        out.frontends.insert(
            Frontend::Address {
                addr: SocketAddrV4::new(ip, port.port),
                proto,
            },
            state(&external, external_masquerade, vec![], short_circuit),
        );
    }
    let ranges = source_ranges(port, node_ip);
    for ip in port.load_balancer_ips.iter().filter_map(|ip| v4(*ip)) {
        out.frontends.insert(
            Frontend::Address {
                addr: SocketAddrV4::new(ip, port.port),
                proto,
            },
            state(&external, external_masquerade, ranges.clone(), short_circuit),
        );
    }
}

/// What the maps should hold for `model` under the masquerade `policy`, on the node whose
/// primary IP is `node_ip`.
pub fn desired_state(model: &Model, policy: &MasqueradePolicy, node_ip: Option<IpAddr>) -> DesiredState {
    let mut out = DesiredState::default();
    if let Some(detector) = &policy.interface_detector
        && !model.service_ports.is_empty()
    {
        out.unsupported.push(format!(
            "local traffic detected by interface ({detector}): the eBPF datapath does not SNAT \
             ClusterIP traffic from outside the cluster (set clusterCIDR with detectLocalMode ClusterCIDR)"
        ));
    }
    for port in &model.service_ports {
        port_frontends(port, &model.topology, policy, node_ip, &mut out);
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
        // Unit tests run in parallel: one directory per call.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kproxy-desired-test-{}-{call}", std::process::id()));
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
        let desired = desired_state(&model(SERVICE), &MasqueradePolicy::default(), None);
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
        assert_eq!(cluster.options.cluster_frontend, None);
        // eTP=Local: pods and the node's processes reach every external frontend through
        // the ClusterIP's backends (kube-proxy's short-circuit).
        for external in [
            Frontend::NodePort {
                port: 30080,
                proto: tcp,
            },
            Frontend::Address {
                addr: sock("192.0.2.7:80"),
                proto: tcp,
            },
            Frontend::Address {
                addr: sock("198.51.100.9:80"),
                proto: tcp,
            },
        ] {
            assert_eq!(
                get(external).options.cluster_frontend,
                Some(sock("10.96.0.10:80")),
                "{external}"
            );
        }
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

    /// kube-proxy's KUBE-MARK-MASQ cases, per frontend: external frontends by their
    /// traffic policy, the ClusterIP by `masqueradeAll` and the cluster CIDR.
    #[test]
    fn masquerade_follows_kube_proxys_mark_masq_rules() {
        let node = NodeInfo::new("node-a", crate::model::IpFamily::V4);
        let parse = |text: &str| {
            let config = ProxyConfig::parse(text, "t").unwrap();
            MasqueradePolicy::new(&config, &node).unwrap()
        };
        let kind = "kind: KubeProxyConfiguration\n";
        let by_cidr = parse(&format!("{kind}clusterCIDR: 10.244.0.0/16\n"));
        assert_eq!(by_cidr.cluster_cidr, Some((Ipv4Addr::new(10, 244, 0, 0), 16)));
        let all = parse(&format!("{kind}iptables: {{masqueradeAll: true}}\n"));
        let by_iface = parse(&format!(
            "{kind}detectLocalMode: InterfaceNamePrefix\ndetectLocal: {{interfaceNamePrefix: veth}}\n"
        ));
        assert_eq!(by_iface.interface_detector.as_deref(), Some("veth+"));
        let vip = Frontend::Address {
            addr: sock("10.96.0.10:80"),
            proto: Protocol::Tcp,
        };
        let cluster_ip = |p: &MasqueradePolicy, yaml: &str| {
            desired_state(&model(yaml), p, None)
                .frontends
                .get(&vip)
                .unwrap()
                .options
                .masquerade
        };
        assert_eq!(
            cluster_ip(&MasqueradePolicy::default(), SERVICE),
            Masquerade::Never
        );
        assert_eq!(cluster_ip(&by_cidr, SERVICE), Masquerade::OffCluster);
        assert_eq!(cluster_ip(&all, SERVICE), Masquerade::Always);
        let external = |yaml: &str| {
            let desired = desired_state(&model(yaml), &all, None);
            desired
                .frontends
                .iter()
                .filter(|(f, _)| **f != vip)
                .map(|(_, s)| s.options.masquerade)
                .collect::<Vec<_>>()
        };
        // eTP=Local: the backend sees the client, even with masqueradeAll.
        assert_eq!(external(SERVICE), vec![Masquerade::Never; 3]);
        let cluster = SERVICE.replace("externalTrafficPolicy: Local", "externalTrafficPolicy: Cluster");
        assert_eq!(external(&cluster), vec![Masquerade::Always; 3]);
        assert!(desired_state(&model(SERVICE), &by_iface, None).unsupported[0].contains("veth+"));
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
            let desired = desired_state(
                &model(&yaml),
                &MasqueradePolicy::default(),
                node_ip.map(|ip| ip.parse().unwrap()),
            );
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
        let desired = desired_state(&model(&remote_only), &MasqueradePolicy::default(), None);
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
        let desired = desired_state(&model(&none), &MasqueradePolicy::default(), None);
        assert!(desired.frontends.values().all(|s| s.backends.is_empty()));
        assert!(
            desired
                .frontends
                .values()
                .all(|s| !s.options.drop_without_backends)
        );
    }

    /// Zone hints reach the eBPF writer through the same categorisation: the ClusterIP's
    /// slots hold only the endpoints hinted for this node's zone (the Node object in the
    /// model files), while both stay in the backends map as serving endpoints.
    #[test]
    fn zone_hints_pick_the_cluster_ip_backends() {
        let yaml = |zone: &str| {
            format!(
                "apiVersion: v1
kind: Node
metadata: {{name: node-a, labels: {{topology.kubernetes.io/zone: {zone}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: zoned, namespace: shop}}
spec:
  clusterIP: 10.96.0.20
  ports: [{{name: http, protocol: TCP, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: zoned-1, namespace: shop, labels: {{kubernetes.io/service-name: zoned}}}}
addressType: IPv4
ports: [{{name: http, protocol: TCP, port: 8080}}]
endpoints:
- {{addresses: [10.2.0.1], nodeName: node-b, hints: {{forZones: [{{name: zone-a}}]}}}}
- {{addresses: [10.2.0.2], nodeName: node-c, hints: {{forZones: [{{name: zone-b}}]}}}}
"
            )
        };
        let node = NodeInfo::new("node-a", crate::model::IpFamily::V4);
        let policy = MasqueradePolicy::new(&ProxyConfig::default(), &node).unwrap();
        let vip = Frontend::Address {
            addr: sock("10.96.0.20:80"),
            proto: Protocol::Tcp,
        };
        for (zone, backend) in [("zone-a", "10.2.0.1:8080"), ("zone-b", "10.2.0.2:8080")] {
            let state = desired_state(&model(&yaml(zone)), &policy, None);
            assert_eq!(state.frontends[&vip].backends, vec![sock(backend)], "{zone}");
            assert_eq!(state.serving.len(), 2, "{zone}");
        }
    }
}
