//! Kubernetes manifests for the suites and the demo: the seed's hello-app Service
//! (ClusterIP 10.104.81.240, port 80 → 8080, NodePort 30811, TCP and UDP) and an
//! EndpointSlice listing whichever pods a test wants, written as real YAML.

use std::{fmt::Write as _, fs, net::Ipv4Addr, path::Path};

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

/// The hello-app Service, with a TCP and a UDP port (both 80 → 8080, NodePort 30811).
pub fn hello_service() -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: hello-app-service
  namespace: default
spec:
  type: NodePort
  selector:
    app: hello-app
  clusterIP: {CLUSTER_IP}
  clusterIPs: [{CLUSTER_IP}]
  ports:
  - name: http
    protocol: TCP
    port: {SERVICE_PORT}
    targetPort: {TARGET_PORT}
    nodePort: {NODE_PORT}
  - name: udp
    protocol: UDP
    port: {SERVICE_PORT}
    targetPort: {TARGET_PORT}
    nodePort: {NODE_PORT}
"
    )
}

/// An EndpointSlice of hello-app-service with one ready endpoint per pod IP, all on
/// this node.
pub fn hello_endpoints(pods: &[Ipv4Addr]) -> String {
    let mut out = String::from(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hello-app-service-abc12
  namespace: default
  labels:
    kubernetes.io/service-name: hello-app-service
addressType: IPv4
ports:
- name: http
  protocol: TCP
  port: 8080
- name: udp
  protocol: UDP
  port: 8080
endpoints:
",
    );
    for ip in pods {
        let _ = write!(
            out,
            "- addresses: [\"{ip}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: {NODE_NAME}\n"
        );
    }
    if pods.is_empty() {
        out = out.replace("endpoints:\n", "endpoints: []\n");
    }
    out
}

/// The KubeProxyConfiguration the suites run with: this node's name and the pod CIDR.
pub fn proxy_config() -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
hostnameOverride: {NODE_NAME}
clusterCIDR: 172.16.0.0/16
"
    )
}

/// Writes the Service and an EndpointSlice for `pods` to `path` as one multi-document
/// file, atomically (write then rename), as an operator replacing the file would.
pub fn write_model(path: &Path, pods: &[Ipv4Addr]) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{}---\n{}", hello_service(), hello_endpoints(pods))).expect("write model");
    fs::rename(&tmp, path).expect("rename model into place");
}
