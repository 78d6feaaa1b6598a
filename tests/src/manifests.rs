//! Kubernetes manifests for the suites, the demo and the bench, written as real YAML:
//! a [`Service`] with its EndpointSlice (the seed's hello-app, or the bench's numbered
//! services, however many), files of them replaced as an operator would, and the
//! KubeProxyConfiguration.

use std::{fs, io, net::Ipv4Addr, path::Path};

/// The seed's ClusterIP.
pub const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 104, 81, 240);
/// The Service port.
pub const SERVICE_PORT: u16 = 80;
/// The NodePort (TCP and UDP).
pub const NODE_PORT: u16 = 30811;
/// The pods' container port.
pub const TARGET_PORT: u16 = 8080;
/// The node name the agent runs as (`hostnameOverride`).
pub const NODE_NAME: &str = "host1";
/// A node name that is not the agent's: endpoints there are remote.
pub const OTHER_NODE_NAME: &str = "host2";
/// The seed cluster's pod network (`clusterCIDR`).
pub const CLUSTER_CIDR: &str = "172.16.0.0/16";

/// One port of a Service, and the same port on its EndpointSlice.
#[derive(Clone, Copy, Debug)]
pub struct Port {
    pub name: &'static str,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    pub port: u16,
    pub target_port: u16,
    pub node_port: u16,
}

impl Port {
    pub const fn tcp(name: &'static str, port: u16, target_port: u16, node_port: u16) -> Self {
        Port {
            name,
            protocol: "TCP",
            port,
            target_port,
            node_port,
        }
    }

    pub const fn udp(name: &'static str, port: u16, target_port: u16, node_port: u16) -> Self {
        Port {
            protocol: "UDP",
            ..Port::tcp(name, port, target_port, node_port)
        }
    }
}

/// The hello-app's ports: TCP and UDP, both 80 → 8080 and NodePort 30811.
pub const HELLO_PORTS: [Port; 2] = [
    Port::tcp("http", SERVICE_PORT, TARGET_PORT, NODE_PORT),
    Port::udp("udp", SERVICE_PORT, TARGET_PORT, NODE_PORT),
];

/// A NodePort Service (a LoadBalancer one with [`External`] set) and its one
/// EndpointSlice, every endpoint ready and on `node_name` (or on its entry of
/// `endpoint_nodes`).
#[derive(Clone, Debug)]
pub struct Service<'a> {
    pub namespace: &'a str,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<Port>,
    pub endpoints: &'a [Ipv4Addr],
    pub node_name: &'a str,
    /// The node of each endpoint, in order, where they differ (empty: all on `node_name`).
    pub endpoint_nodes: &'a [&'a str],
    /// Endpoints that are terminating but still serving (a pod in its grace period:
    /// `ready: false, serving: true, terminating: true`).
    pub terminating: &'a [Ipv4Addr],
    pub external: External<'a>,
}

/// How a Service is reached from outside beyond its NodePort: any of these makes it a
/// LoadBalancer Service (the API allocates `healthCheckNodePort` only to those).
#[derive(Clone, Debug, Default)]
pub struct External<'a> {
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    pub health_check_node_port: Option<u16>,
    /// `status.loadBalancer.ingress[0].ip`.
    pub load_balancer_ip: Option<Ipv4Addr>,
    pub source_ranges: &'a [&'a str],
}

impl External<'_> {
    fn is_load_balancer(&self) -> bool {
        self.local || self.health_check_node_port.is_some() || self.load_balancer_ip.is_some()
    }

    /// The lines this adds to the Service's `spec` and its `status`.
    fn spec_and_status(&self) -> (String, String) {
        let spec = [
            self.local.then(|| "  externalTrafficPolicy: Local\n".to_string()),
            self.health_check_node_port
                .map(|port| format!("  healthCheckNodePort: {port}\n")),
            (!self.source_ranges.is_empty()).then(|| {
                format!(
                    "  loadBalancerSourceRanges: [{}]\n",
                    self.source_ranges.join(", ")
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        let status = self
            .load_balancer_ip
            .map(|ip| format!("status: {{loadBalancer: {{ingress: [{{ip: {ip}}}]}}}}\n"))
            .unwrap_or_default();
        (spec, status)
    }
}

impl Service<'_> {
    /// The seed's hello-app-service with an endpoint per pod in `pods`.
    pub fn hello_app(pods: &[Ipv4Addr]) -> Service<'_> {
        Service {
            namespace: "default",
            name: "hello-app-service".into(),
            cluster_ip: CLUSTER_IP,
            ports: HELLO_PORTS.to_vec(),
            endpoints: pods,
            node_name: NODE_NAME,
            endpoint_nodes: &[],
            terminating: &[],
            external: External::default(),
        }
    }

    /// As a LoadBalancer Service with `externalTrafficPolicy: Local`, whose node-local
    /// endpoints kube-proxy reports on `health_check_node_port`.
    pub fn local_load_balancer_yaml(&self, health_check_node_port: u16) -> String {
        Service {
            external: External {
                local: true,
                health_check_node_port: Some(health_check_node_port),
                ..self.external.clone()
            },
            ..self.clone()
        }
        .yaml()
    }

    /// The Service and its EndpointSlice, as two YAML documents each opened by `---`.
    pub fn yaml(&self) -> String {
        let Service {
            namespace,
            name,
            cluster_ip: ip,
            node_name,
            ..
        } = self;
        let each_port = |line: fn(&Port) -> String| self.ports.iter().map(line).collect::<String>();
        let service_ports = each_port(|p| {
            format!(
                "  - {{name: {}, protocol: {}, port: {}, targetPort: {}, nodePort: {}}}\n",
                p.name, p.protocol, p.port, p.target_port, p.node_port
            )
        });
        let slice_ports = each_port(|p| {
            format!(
                "- {{name: {}, protocol: {}, port: {}}}\n",
                p.name, p.protocol, p.target_port
            )
        });
        // No endpoints must be spelled `[]`: a bare `endpoints:` reads as null.
        let endpoints: String = if self.endpoints.is_empty() {
            " []\n".into()
        } else {
            let each = self.endpoints.iter().enumerate().map(|(i, ip)| {
                let node = self.endpoint_nodes.get(i).unwrap_or(node_name);
                let conditions = if self.terminating.contains(ip) {
                    "conditions: {ready: false, serving: true, terminating: true}"
                } else {
                    "conditions: {ready: true, serving: true, terminating: false}"
                };
                format!("- {{addresses: [\"{ip}\"], {conditions}, nodeName: {node}}}\n")
            });
            std::iter::once("\n".to_string()).chain(each).collect()
        };
        let kind = if self.external.is_load_balancer() {
            "LoadBalancer"
        } else {
            "NodePort"
        };
        let (external, status) = self.external.spec_and_status();
        format!(
            "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  type: {kind}
  clusterIP: {ip}
  clusterIPs: [{ip}]
{external}  ports:
{service_ports}{status}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abc12
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports:
{slice_ports}endpoints:{endpoints}"
        )
    }
}

/// Writes `services` to `path` as one multi-document file, atomically (write, then
/// rename), as an operator replacing the file would: the agent's watcher never reads
/// half a file.
pub fn write_services(path: &Path, services: &[Service]) -> io::Result<()> {
    let text: String = services.iter().map(Service::yaml).collect();
    write_documents(path, &text)
}

/// Writes `documents` to `path` atomically, as [`write_services`] does.
pub fn write_documents(path: &Path, documents: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, documents)?;
    fs::rename(&tmp, path)
}

/// Writes the hello-app Service with an endpoint per pod in `pods` to `path`.
pub fn write_model(path: &Path, pods: &[Ipv4Addr]) {
    write_services(path, &[Service::hello_app(pods)]).expect("write the hello-app model");
}

/// The KubeProxyConfiguration of a node called `node_name` in a cluster whose pods are
/// in `cluster_cidr` (traffic from outside it is masqueraded).
pub fn proxy_config(node_name: &str, cluster_cidr: &str) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
hostnameOverride: {node_name}
clusterCIDR: {cluster_cidr}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_app_has_both_ports_and_one_endpoint_per_pod() {
        let pods = [Ipv4Addr::new(172, 16, 166, 130), Ipv4Addr::new(172, 16, 192, 89)];
        let yaml = Service::hello_app(&pods).yaml();
        assert_eq!(yaml.matches("---\n").count(), 2, "{yaml}");
        assert!(yaml.contains("nodePort: 30811"), "{yaml}");
        assert_eq!(yaml.matches("protocol: UDP").count(), 2, "{yaml}");
        assert_eq!(yaml.matches("addresses:").count(), 2, "{yaml}");
        let empty = Service::hello_app(&[]).yaml();
        assert!(empty.ends_with("endpoints: []\n"), "{empty}");
    }

    /// kproxy's own loader reads a LoadBalancer Service with eTP=Local, its health-check
    /// port, source ranges and per-endpoint nodes as written.
    #[test]
    fn load_balancer_local_reads_back_through_the_loader() {
        use kproxy::{
            config::ProxyConfig,
            model::{IpFamily, NodeInfo},
        };

        let pods = [Ipv4Addr::new(172, 16, 166, 130), Ipv4Addr::new(172, 16, 192, 89)];
        let service = Service {
            endpoint_nodes: &["host1", "host2"],
            external: External {
                local: true,
                health_check_node_port: Some(30912),
                load_balancer_ip: Some(Ipv4Addr::new(192, 168, 200, 10)),
                source_ranges: &["192.168.77.100/32"],
            },
            ..Service::hello_app(&pods)
        };
        let dir = crate::tempdir::TempDir::new("mft");
        let path = dir.path().join("model.yaml");
        write_services(&path, &[service]).expect("write");
        let node = NodeInfo::new("host2", IpFamily::V4);
        let model = kproxy::manifests::load(&[path], &ProxyConfig::default(), &node).expect("load");
        let port = &model.service_ports[0];
        assert!(port.external_policy_local);
        assert_eq!(port.health_check_node_port, 30912);
        assert_eq!(
            port.load_balancer_ips,
            ["192.168.200.10".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(port.load_balancer_source_ranges.len(), 1);
        let local: Vec<_> = port
            .endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.is_local))
            .collect();
        assert_eq!(
            local,
            [("172.16.166.130".into(), false), ("172.16.192.89".into(), true)]
        );
    }
}
