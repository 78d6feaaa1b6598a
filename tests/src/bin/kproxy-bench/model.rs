//! The benchmark's service model, written as real Service and EndpointSlice YAML for
//! `kproxy run`: N NodePort services `bench/svc-00000…`, each with the same two
//! endpoints (the backend pods), distinct ClusterIPs and NodePorts.
//!
//! Names are zero-padded so the model's byte order is numeric order: service 0 is the
//! first rule of KUBE-SERVICES and KUBE-NODEPORTS, service N-1 the last.

use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, ensure};

/// The backend pods every service load-balances over.
pub const BACKEND_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub const BACKEND_B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
/// The pod the ClusterIP client runs in.
pub const CLIENT_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 2);
/// The pod the direct (pod-to-pod, no service) client runs in: a bystander that never
/// uses a service, so no service flow's conntrack entry can match its packets.
pub const BYSTANDER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 4, 2);
/// The pod network (kube-proxy's clusterCIDR: traffic from elsewhere is masqueraded).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_PORT: u16 = 80;
pub const TARGET_PORT: u16 = 8080;
const FIRST_CLUSTER_IP: u32 = u32::from_be_bytes([10, 96, 0, 10]);
const FIRST_NODE_PORT: u16 = 30000;
/// NodePorts run from 30000 upward and must stay below 65536.
pub const MAX_SERVICES: usize = 35_000;
/// The node name the agent runs as.
pub const NODE_NAME: &str = "bench-node";
/// kproxy reads at most 1024 YAML documents per file: services go in files of this many.
const SERVICES_PER_FILE: usize = 250;

pub fn cluster_ip(service: usize) -> Ipv4Addr {
    Ipv4Addr::from(FIRST_CLUSTER_IP + service as u32)
}

pub fn node_port(service: usize) -> u16 {
    FIRST_NODE_PORT + service as u16
}

/// The service whose endpoints the one-service change edits (as the baseline did).
pub fn changed_service(services: usize) -> usize {
    services / 2
}

/// The model directory's contents for `services` services; with `changed`, the middle
/// service has lost its second endpoint.
pub struct BenchModel {
    pub dir: PathBuf,
    pub services: usize,
}

impl BenchModel {
    /// Writes the whole model under `dir` (created).
    pub fn write(dir: &Path, services: usize) -> anyhow::Result<Self> {
        ensure!(
            (1..=MAX_SERVICES).contains(&services),
            "--services must be 1..={MAX_SERVICES}, got {services}"
        );
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let model = BenchModel {
            dir: dir.to_path_buf(),
            services,
        };
        for file in 0..services.div_ceil(SERVICES_PER_FILE) {
            model.write_file(file, false)?;
        }
        Ok(model)
    }

    /// Rewrites (by rename, as an operator would) the file holding the changed service.
    pub fn set_changed(&self, changed: bool) -> anyhow::Result<()> {
        self.write_file(changed_service(self.services) / SERVICES_PER_FILE, changed)
    }

    fn write_file(&self, file: usize, changed: bool) -> anyhow::Result<()> {
        let first = file * SERVICES_PER_FILE;
        let last = (first + SERVICES_PER_FILE).min(self.services);
        let mut text = String::new();
        for service in first..last {
            let one_endpoint = changed && service == changed_service(self.services);
            text.push_str(&service_yaml(service, one_endpoint));
        }
        let path = self.dir.join(format!("services-{file:04}.yaml"));
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("rename into {}", path.display()))
    }
}

/// One Service and its EndpointSlice, as two YAML documents.
fn service_yaml(service: usize, one_endpoint: bool) -> String {
    let name = format!("svc-{service:05}");
    let ip = cluster_ip(service);
    let np = node_port(service);
    let mut text = format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: bench}}
spec:
  type: NodePort
  clusterIP: {ip}
  clusterIPs: [{ip}]
  ports:
  - {{name: http, protocol: TCP, port: {SERVICE_PORT}, targetPort: {TARGET_PORT}, nodePort: {np}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-bench
  namespace: bench
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, protocol: TCP, port: {TARGET_PORT}}}]
endpoints:
"
    );
    let backends: &[Ipv4Addr] = if one_endpoint {
        &[BACKEND_A]
    } else {
        &[BACKEND_A, BACKEND_B]
    };
    for backend in backends {
        let _ = writeln!(
            text,
            "- {{addresses: [\"{backend}\"], conditions: {{ready: true, serving: true, terminating: false}}, nodeName: {NODE_NAME}}}"
        );
    }
    text
}

/// The KubeProxyConfiguration: the node's name and the pod network.
pub fn proxy_config() -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
hostnameOverride: {NODE_NAME}
clusterCIDR: {CLUSTER_CIDR}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_numbered_in_rule_order_and_the_change_drops_one_endpoint() {
        assert_eq!(cluster_ip(0), Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(cluster_ip(9999), Ipv4Addr::new(10, 96, 39, 25));
        assert_eq!(node_port(9999), 39999);
        assert!(service_yaml(7, false).contains("name: svc-00007"));
        assert_eq!(service_yaml(7, false).matches("addresses:").count(), 2);
        assert_eq!(service_yaml(7, true).matches("addresses:").count(), 1);
    }
}
