//! The service model: every Service port kube-proxy would proxy on this node, with its
//! endpoints, read from real Kubernetes objects. Both the BPF datapath and the iptables
//! exporter consume it, so it holds facts only (no iptables text).
//!
//! The manifest reader builds it from Service and EndpointSlice YAML (`manifests::load`);
//! the writers read it. This module imports nothing else of the crate.
//!
//! # Endpoint categorisation
//!
//! [`ServicePort::categorize`] is kube-proxy's `CategorizeEndpoints`: which endpoints
//! serve cluster-policy traffic, which serve local-policy traffic, which need a
//! per-endpoint chain/entry at all, and whether the service has usable endpoints. It
//! follows the EndpointSlice's topology hints as kube-proxy does, given the model's
//! [`Topology`] (this node's name and zone).

mod categorize;
mod ip;
mod node;
mod stale;
mod synthetic;

use std::{fmt, net::IpAddr};

pub use categorize::EndpointSets;
pub use ip::{Cidr, IpFamily, join_host_port, parse_ip_sloppy};
pub use node::{NodeInfo, Topology};
pub use stale::UdpServing;
pub use synthetic::synthetic;

/// The services and endpoints one kube-proxy instance (one IP family) proxies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub family: IpFamily,
    /// This node as topology-aware routing sees it (name, zone, gate): the input of
    /// every [`ServicePort::categorize`].
    pub topology: Topology,
    /// Ordered by `namespace/name` (byte order), then by the Service's `spec.ports` order.
    pub service_ports: Vec<ServicePort>,
}

impl Model {
    /// All endpoints of all service ports, usable or not: kube-proxy's measure for
    /// "large cluster" mode.
    pub fn total_endpoints(&self) -> usize {
        self.service_ports.iter().map(|p| p.endpoints.len()).sum()
    }
}

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`).
    pub fn from_api(text: &str) -> Option<Self> {
        match text {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Lower case, as kube-proxy hashes and matches it.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The protocol with IP protocol number `n`, if a service can use it.
    pub fn from_number(n: u8) -> Option<Self> {
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .find(|p| p.number() == n)
    }
}

impl fmt::Display for Protocol {
    /// Lower case (`tcp`), as frontends and rules print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.lower())
    }
}

/// The stable identity of a service port: kube-proxy's `ServicePortName`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// `spec.ports[].name`, empty for a Service's single unnamed port.
    pub port: String,
    pub protocol: Protocol,
}

impl ServicePortName {
    /// `namespace/name`: the service this port belongs to (and the model's sort key).
    pub fn service(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for ServicePortName {
    /// `namespace/name` or `namespace/name:port` (kube-proxy's `svcPortNameString`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// ClientIP session affinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionAffinity {
    pub timeout_seconds: u32,
}

/// One `spec.ports[]` entry of a Service, for one IP family, with its endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub cluster_ip: IpAddr,
    pub port: u16,
    /// 0 when the port has none.
    pub node_port: u16,
    /// `spec.externalIPs` of this family, canonical.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` of this family (not `ipMode: Proxy`).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` of this family, as networks.
    pub load_balancer_source_ranges: Vec<Cidr>,
    pub session_affinity: Option<SessionAffinity>,
    /// `externalTrafficPolicy: Local` on an externally reachable Service type.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// Only for LoadBalancer services with external policy Local; 0 otherwise.
    pub health_check_node_port: u16,
    /// Sorted by `ip:port` string (byte order), as kube-proxy sorts them.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// Port `port` of `name` on `cluster_ip`, nothing else: no NodePort, external
    /// addresses, affinity or endpoints, both traffic policies Cluster.
    pub fn new(name: ServicePortName, cluster_ip: IpAddr, port: u16) -> Self {
        ServicePort {
            name,
            cluster_ip,
            port,
            node_port: 0,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            session_affinity: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: 0,
            endpoints: Vec::new(),
        }
    }

    /// Reachable from outside the cluster: a NodePort, a LoadBalancer IP or an external IP.
    pub fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.load_balancer_ips.is_empty() || !self.external_ips.is_empty()
    }

    /// Some traffic to this port follows the cluster-wide policy.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// Some traffic to this port follows the node-local policy.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }

    /// kube-proxy's endpoint categorisation for this port on the node `topology`
    /// describes (pass the model's [`Model::topology`]).
    pub fn categorize(&self, topology: &Topology) -> EndpointSets<'_> {
        categorize::categorize(self, topology)
    }
}

/// One endpoint (the first address of an EndpointSlice endpoint) for a service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// The EndpointSlice port (the DNAT destination port).
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (`nodeName` equals the node's name).
    pub is_local: bool,
    /// `hints.forZones[].name`: the zones this endpoint should serve.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`: the nodes this endpoint should serve.
    pub node_hints: Vec<String>,
}

impl Endpoint {
    /// `ip:port` (`[ip]:port` for IPv6), kube-proxy's endpoint string.
    pub fn address(&self) -> String {
        join_host_port(&self.ip, self.port)
    }
}
