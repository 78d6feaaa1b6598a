//! What the node knows about itself: its name and addresses.

use std::net::IpAddr;

use nix::ifaddrs::getifaddrs;

use super::AgentError;
use crate::{
    config::ProxyConfig,
    model::{IpFamily, NodeInfo},
};

/// The node's IPv4 addresses (every interface of this network namespace).
fn local_addresses() -> Result<Vec<IpAddr>, AgentError> {
    let mut addrs: Vec<IpAddr> = getifaddrs()
        .map_err(|source| AgentError::Node {
            call: "getifaddrs",
            source,
        })?
        .filter_map(|ifa| {
            ifa.address
                .and_then(|a| a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// The node's facts: name from `hostnameOverride` or the hostname, its addresses, and
/// its primary IP (`node_ip`, else the first address that is neither loopback nor
/// link-local: the datapath SNATs to it, and a link-local gateway address such as
/// Calico's 169.254.1.1 on every pod veth is reachable from no other node).
pub fn node_info(config: &ProxyConfig, node_ip: Option<IpAddr>) -> Result<NodeInfo, AgentError> {
    let name = match &config.hostname_override {
        Some(name) => name.clone(),
        None => nix::unistd::gethostname()
            .map_err(|source| AgentError::Node {
                call: "gethostname",
                source,
            })?
            .to_string_lossy()
            .into_owned(),
    };
    let addresses = local_addresses()?;
    let routable = |a: &&IpAddr| match a {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
    };
    let node_ip = node_ip
        .or_else(|| addresses.iter().find(routable).copied())
        .or_else(|| addresses.iter().find(|a| !a.is_loopback()).copied());
    Ok(NodeInfo::new(&name, IpFamily::V4)
        .with_node_ip(node_ip)
        .with_addresses(addresses))
}
