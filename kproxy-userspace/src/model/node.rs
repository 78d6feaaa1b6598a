//! What this node knows about itself at run time (not in any Service or EndpointSlice),
//! and what topology-aware routing needs of it.

use std::net::IpAddr;

use super::{Cidr, IpFamily};

/// The node's facts: which endpoints are local, which addresses NodePorts answer on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    /// The node's name: endpoints with this `nodeName` are local.
    pub name: String,
    pub family: IpFamily,
    /// The node's primary IP (LoadBalancer source-range checks, `nodePortAddresses: [primary]`).
    pub node_ip: Option<IpAddr>,
    /// Every local address of the node (matched against `nodePortAddresses` CIDRs).
    pub addresses: Vec<IpAddr>,
    /// The node's `spec.podCIDRs` (for `detectLocalMode: NodeCIDR`).
    pub pod_cidrs: Vec<Cidr>,
    /// The Node object's `topology.kubernetes.io/zone` label, when known (cluster mode
    /// reads the watched Node). The model's [`Topology`] uses it unless the model files
    /// hold this node's Node object.
    pub zone: Option<String>,
}

/// What kube-proxy's topology-aware routing knows of this node: the node name and zone
/// label `CategorizeEndpoints` is given, and its feature gate. The model carries it, so
/// both writers (and inspect, re-reading the recorded model) route by the same facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The node's name: node hints (`hints.forNodes`) name it.
    pub node_name: String,
    /// The node's `topology.kubernetes.io/zone` label: zone hints (`hints.forZones`) name it.
    pub zone: Option<String>,
    /// Follow node hints at all: the `PreferSameTrafficDistribution` gate (on by default
    /// since 1.34, GA in 1.35).
    pub prefer_same_node: bool,
}

impl Default for Topology {
    /// No node name, no zone: no hint ever matches. The gate at its default (on).
    fn default() -> Self {
        Topology {
            node_name: String::new(),
            zone: None,
            prefer_same_node: true,
        }
    }
}

impl NodeInfo {
    /// A node with a name and a family and no addresses yet; the `with_*` methods add
    /// what the caller knows (the agent reads them from the host, the exporter from
    /// flags, inspect from the agent's record).
    pub fn new(name: &str, family: IpFamily) -> Self {
        NodeInfo {
            name: name.to_string(),
            family,
            ..NodeInfo::default()
        }
    }

    /// The node kube-proxy's own proxier tests use (`test-node`, primary IP 192.168.0.2 or
    /// fd00::2), so renderings of fixtures compare byte for byte with upstream's expected
    /// output.
    pub fn upstream_test_node(family: IpFamily) -> Self {
        let node_ip: IpAddr = match family {
            IpFamily::V4 => [192, 168, 0, 2].into(),
            IpFamily::V6 => [0xfd00, 0, 0, 0, 0, 0, 0, 2].into(),
        };
        NodeInfo::new("test-node", family).with_node_ip(Some(node_ip))
    }

    /// With a primary IP.
    pub fn with_node_ip(mut self, node_ip: Option<IpAddr>) -> Self {
        self.node_ip = node_ip;
        self
    }

    /// With the node's local addresses.
    pub fn with_addresses(mut self, addresses: Vec<IpAddr>) -> Self {
        self.addresses = addresses;
        self
    }

    /// With the node's zone label.
    pub fn with_zone(mut self, zone: Option<String>) -> Self {
        self.zone = zone;
        self
    }

    /// With the node's pod CIDRs.
    pub fn with_pod_cidrs(mut self, pod_cidrs: Vec<Cidr>) -> Self {
        self.pod_cidrs = pod_cidrs;
        self
    }
}
