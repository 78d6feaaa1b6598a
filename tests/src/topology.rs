//! The seed article's cluster on one machine: a node namespace that routes between
//! pod namespaces (one veth each, host side named `kpv…`) and an external client
//! (veth `kpe…` on the node). Used by the end-to-end suites, the demo and the bench.
//!
//! Addressing, all inside namespaces this module creates:
//! - pods: their pod IP as /32 on `eth0`, default route via [`POD_GATEWAY`], which
//!   every host-side veth owns (as Calico does), so the node answers their ARP;
//! - node: a /32 route per pod via its veth, forwarding on, [`NODE_IP`] on the
//!   external link; the external client is [`EXTERNAL_CLIENT_IP`] on that link, and
//!   sends with checksum offload off (complete checksums, as from a wire).

use std::net::Ipv4Addr;

use crate::netns::{NetNs, unique_name};

/// The link-local gateway address of every pod (owned by each host-side veth).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The node's address on the external link (where NodePorts are reached).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 10);
/// The external client's address.
pub const EXTERNAL_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
/// Prefix of host-side pod veth names (`--iface 'kpv*'`).
pub const POD_IFACE_PREFIX: &str = "kpv";
/// Prefix of the node's external interface name.
pub const EXTERNAL_IFACE_PREFIX: &str = "kpe";

/// A pod: its namespace, address and the host-side veth in the node namespace.
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub host_iface: String,
    pub ns: NetNs,
}

impl Pod {
    /// A new pod namespace `name` with address `ip`, wired to `node` as Calico does: a
    /// `kpv…` veth owning [`POD_GATEWAY`] on the node, a /32 route to the pod through it,
    /// and the pod's default route via the gateway.
    pub fn wire(node: &NetNs, name: &str, ip: Ipv4Addr) -> Pod {
        let ns = NetNs::new("pod");
        let host_iface = unique_name(POD_IFACE_PREFIX);
        wire(
            node,
            &host_iface,
            &format!("{POD_GATEWAY}/32"),
            &ns,
            &format!("{ip}/32"),
        );
        node.ip(&["route", "add", &format!("{ip}/32"), "dev", &host_iface]);
        ns.ip(&[
            "route",
            "add",
            &format!("{POD_GATEWAY}"),
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &POD_GATEWAY.to_string(),
            "dev",
            "eth0",
        ]);
        Pod {
            name: name.to_string(),
            ip,
            host_iface,
            ns,
        }
    }
}

/// A node with pods and an external client; every namespace is deleted on drop.
pub struct Topology {
    pub pods: Vec<Pod>,
    pub external: NetNs,
    pub node_external_iface: String,
    /// Declared last so it is deleted after the pods (their veths die with either end).
    pub node: NetNs,
}

impl Topology {
    /// Builds a node with one pod per `(name, ip)` and the external client.
    pub fn new(pods: &[(&str, Ipv4Addr)]) -> Self {
        let node = NetNs::new("node");
        enable_forwarding(&node);
        let external = NetNs::new("ext");
        let node_external_iface = unique_name(EXTERNAL_IFACE_PREFIX);
        wire(
            &node,
            &node_external_iface,
            &format!("{NODE_IP}/24"),
            &external,
            &format!("{EXTERNAL_CLIENT_IP}/24"),
        );
        // The external client stands for hosts beyond a wire: its frames carry complete
        // checksums, as a NIC delivers them. With offload on, a local sender leaves a
        // partial (pseudo-header) checksum that only the skb's metadata explains, which
        // an XDP program cannot see.
        external.ethtool(&["-K", "eth0", "tx", "off"]);

        let mut topology = Topology {
            pods: Vec::new(),
            external,
            node_external_iface,
            node,
        };
        for (name, ip) in pods {
            topology.add_pod(name, *ip);
        }
        topology
    }

    /// Adds a pod namespace wired to the node (also usable while an agent runs: a
    /// new `kpv…` interface appears).
    pub fn add_pod(&mut self, name: &str, ip: Ipv4Addr) -> &Pod {
        self.pods.push(Pod::wire(&self.node, name, ip));
        self.pods.last().expect("just pushed")
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The glob patterns an agent on this node attaches to: pod veths and the external link.
    pub fn iface_patterns() -> Vec<String> {
        vec![
            format!("{POD_IFACE_PREFIX}*"),
            format!("{EXTERNAL_IFACE_PREFIX}*"),
        ]
    }
}

/// Joins `node` (interface `node_iface`, address `node_addr`) to `ns` (interface
/// `eth0`, address `ns_addr`) with a veth pair, both ends up.
pub fn wire(node: &NetNs, node_iface: &str, node_addr: &str, ns: &NetNs, ns_addr: &str) {
    node.ip(&[
        "link",
        "add",
        node_iface,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ]);
    node.ip(&["addr", "add", node_addr, "dev", node_iface]);
    node.ip(&["link", "set", node_iface, "up"]);
    ns.ip(&["addr", "add", ns_addr, "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
}

/// Switches IPv4 forwarding on in `node`.
pub fn enable_forwarding(node: &NetNs) {
    node.sysctl("net.ipv4.ip_forward", "1");
}
