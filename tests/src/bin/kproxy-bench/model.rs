//! The benchmark's service model, written as real Service and EndpointSlice YAML for
//! `kproxy run` by the test bed's manifest writer: N NodePort services
//! `bench/svc-00000…`, each with the same two endpoints (the backend pods), distinct
//! ClusterIPs and NodePorts.
//!
//! Names are zero-padded so the model's byte order is numeric order: service 0 is the
//! first rule of KUBE-SERVICES and KUBE-NODEPORTS, service N-1 the last.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, ensure};
use kproxy_testbed::manifests::{self, External, Port, Service};

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
        let services: Vec<Service> = (first..last)
            .map(|service| bench_service(service, changed && service == changed_service(self.services)))
            .collect();
        let path = self.dir.join(format!("services-{file:04}.yaml"));
        manifests::write_services(&path, &services).with_context(|| format!("write {}", path.display()))
    }
}

/// Service number `service` (one TCP port), served by both backends or, with
/// `one_endpoint`, only the first.
fn bench_service(service: usize, one_endpoint: bool) -> Service<'static> {
    static BOTH: [Ipv4Addr; 2] = [BACKEND_A, BACKEND_B];
    Service {
        namespace: "bench",
        name: format!("svc-{service:05}"),
        cluster_ip: cluster_ip(service),
        ports: vec![Port::tcp("http", SERVICE_PORT, TARGET_PORT, node_port(service))],
        endpoints: if one_endpoint { &BOTH[..1] } else { &BOTH },
        node_name: NODE_NAME,
        endpoint_nodes: &[],
        terminating: &[],
        external: External::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_numbered_in_rule_order_and_the_change_drops_one_endpoint() {
        assert_eq!(cluster_ip(0), Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(cluster_ip(9999), Ipv4Addr::new(10, 96, 39, 25));
        assert_eq!(node_port(9999), 39999);
        let yaml = |one_endpoint| bench_service(7, one_endpoint).yaml();
        assert!(yaml(false).contains("name: svc-00007"));
        assert!(yaml(false).contains("nodePort: 30007"));
        assert_eq!(yaml(false).matches("addresses:").count(), 2);
        assert_eq!(yaml(true).matches("addresses:").count(), 1);
    }
}
