//! Facts from this node's Node object.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use crate::model::{Cidr, IpFamily, parse_ip_sloppy};

/// The node's primary IP of `family` as kube-proxy picks it from the Node object: the
/// first `InternalIP`, else the first `ExternalIP`.
pub fn node_address(node: &Node, family: IpFamily) -> Option<IpAddr> {
    let addresses = node.status.as_ref()?.addresses.as_ref()?;
    ["InternalIP", "ExternalIP"].iter().find_map(|kind| {
        addresses
            .iter()
            .filter(|a| a.type_ == *kind)
            .filter_map(|a| parse_ip_sloppy(&a.address))
            .find(|ip| family.contains(ip))
    })
}

/// The node's `spec.podCIDRs` (`spec.podCIDR` on older objects): the pod networks of
/// `detectLocalMode: NodeCIDR`.
pub fn node_pod_cidrs(node: &Node) -> Vec<Cidr> {
    let Some(spec) = &node.spec else {
        return Vec::new();
    };
    let texts: Vec<&String> = match &spec.pod_cidrs {
        Some(cidrs) if !cidrs.is_empty() => cidrs.iter().collect(),
        _ => spec.pod_cidr.iter().collect(),
    };
    texts.into_iter().filter_map(|t| Cidr::parse_sloppy(t)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).expect("a Node")
    }

    #[test]
    fn internal_ip_first_then_external() {
        let n = node(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
            "status": {"addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
                {"type": "InternalIP", "address": "fd00::7"},
                {"type": "InternalIP", "address": "10.0.0.7"},
            ]}
        }));
        assert_eq!(node_address(&n, IpFamily::V4), Some("10.0.0.7".parse().unwrap()));
        assert_eq!(node_address(&n, IpFamily::V6), Some("fd00::7".parse().unwrap()));
        let cidrs: Vec<String> = node_pod_cidrs(&n).iter().map(ToString::to_string).collect();
        assert_eq!(cidrs, ["10.244.1.0/24", "fd00:1::/64"]);
        let bare = node(serde_json::json!({"metadata": {"name": "n2"},
            "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.8"}]}}));
        assert_eq!(
            node_address(&bare, IpFamily::V4),
            Some("203.0.113.8".parse().unwrap())
        );
    }
}
