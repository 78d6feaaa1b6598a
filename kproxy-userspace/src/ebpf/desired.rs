//! Model → what the BPF maps should hold: the same endpoint choices kube-proxy's rules
//! make, per frontend.
//!
//! Per service port (IPv4, TCP/UDP):
//! - ClusterIP:port uses the internal policy's endpoints (node-local ones with
//!   `internalTrafficPolicy: Local`, else the cluster set);
//! - NodePort, externalIPs and LoadBalancer IPs use the external policy's endpoints
//!   (node-local ones with `externalTrafficPolicy: Local`, else the cluster set);
//! - no usable endpoint: the frontend stays with zero backends, and the datapath
//!   rejects its packets, as kube-proxy's REJECT rules do.
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

use super::maps::{Frontend, FrontendOptions, Masquerade};
use crate::{
    config::{ConfigError, LocalTraffic, NodePortAddresses, ProxyConfig},
    model::{Endpoint, Model, NodeInfo, Protocol, ServicePort},
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

/// The frontends of one service port and the maps' state for each.
pub fn port_frontends(port: &ServicePort, policy: &MasqueradePolicy, out: &mut DesiredState) {
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
    let options = FrontendOptions {
        client_ip_affinity: port
            .session_affinity
            .map(|a| Duration::from_secs(a.timeout_seconds.into())),
        masquerade: Masquerade::Never,
    };
    let internal_options = FrontendOptions {
        masquerade: policy.cluster_ip(),
        ..options
    };
    let external_options = FrontendOptions {
        masquerade: if port.external_policy_local {
            Masquerade::Never
        } else {
            Masquerade::Always
        },
        ..options
    };
    let state = |backends: &Vec<SocketAddrV4>, options: FrontendOptions| FrontendState {
        backends: backends.clone(),
        options,
        service: service.clone(),
    };

    out.frontends.insert(
        Frontend::Address {
            addr: SocketAddrV4::new(cluster_ip, port.port),
            proto,
        },
        state(&internal, internal_options),
    );
    if port.node_port != 0 {
        out.frontends.insert(
            Frontend::NodePort {
                port: port.node_port,
                proto,
            },
            state(&external, external_options),
        );
    }
    for ip in port.external_ips.iter().filter_map(|ip| v4(*ip)) {
        out.frontends.insert(
            Frontend::Address {
                addr: SocketAddrV4::new(ip, port.port),
                proto,
            },
            state(&external, external_options),
        );
    }
    if !port.load_balancer_source_ranges.is_empty() && !port.load_balancer_ips.is_empty() {
        // Serving them without the source check would open the service to everyone.
        out.unsupported.push(format!(
            "{service}: loadBalancerSourceRanges are not enforced by the eBPF datapath yet; \
             its LoadBalancer IPs are left unserved"
        ));
        return;
    }
    for ip in port.load_balancer_ips.iter().filter_map(|ip| v4(*ip)) {
        out.frontends.insert(
            Frontend::Address {
                addr: SocketAddrV4::new(ip, port.port),
                proto,
            },
            state(&external, external_options),
        );
    }
}

/// What the maps should hold for `model` under the masquerade `policy`.
pub fn desired_state(model: &Model, policy: &MasqueradePolicy) -> DesiredState {
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
        port_frontends(port, policy, &mut out);
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
        let desired = desired_state(&model(SERVICE), &MasqueradePolicy::default());
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
        let all = parse(&format!("{kind}masqueradeAll: true\n"));
        let by_iface = parse(&format!(
            "{kind}detectLocalMode: InterfaceNamePrefix\ndetectLocal: {{interfaceNamePrefix: veth}}\n"
        ));
        assert_eq!(by_iface.interface_detector.as_deref(), Some("veth+"));
        let vip = Frontend::Address {
            addr: sock("10.96.0.10:80"),
            proto: Protocol::Tcp,
        };
        let cluster_ip = |p: &MasqueradePolicy, yaml: &str| {
            desired_state(&model(yaml), p)
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
            let desired = desired_state(&model(yaml), &all);
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
        assert!(desired_state(&model(SERVICE), &by_iface).unsupported[0].contains("veth+"));
    }

    #[test]
    fn source_ranges_leave_load_balancer_ips_unserved() {
        let yaml = SERVICE.replace(
            "  sessionAffinity: ClientIP\n",
            "  loadBalancerSourceRanges: [203.0.113.0/24]\n",
        );
        let desired = desired_state(&model(&yaml), &MasqueradePolicy::default());
        assert!(!desired.frontends.keys().any(|f| *f
            == Frontend::Address {
                addr: sock("198.51.100.9:80"),
                proto: Protocol::Tcp
            }));
        assert!(
            desired
                .unsupported
                .iter()
                .any(|u| u.contains("loadBalancerSourceRanges"))
        );
    }
}
