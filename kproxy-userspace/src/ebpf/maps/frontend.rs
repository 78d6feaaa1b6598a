//! The frontend codecs: what a client addresses (`Frontend`), the ids the agent gives
//! frontends and backends, and their conversion to the maps' network-order keys.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use kproxy_common::{
    RevNat, ServiceKey,
    byteorder::{addr_octets, be_addr, be_port, host_port},
    lb::{SCOPE_EXACT, SCOPE_NODE_PORT, SVC_F_SNAT, SVC_F_SNAT_OFF_CLUSTER},
};

use crate::model::Protocol;

/// What a client addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frontend {
    /// A ClusterIP, externalIP or LoadBalancer IP with its port.
    Address { addr: SocketAddrV4, proto: Protocol },
    /// A NodePort: this port on every node address (`DatapathMaps::set_node_addresses`).
    NodePort { port: u16, proto: Protocol },
}

impl Frontend {
    /// The services map key.
    pub(super) fn key(self) -> ServiceKey {
        match self {
            Frontend::Address { addr, proto } => ServiceKey {
                addr: be_addr(addr.ip().octets()),
                port: be_port(addr.port()),
                proto: proto.number(),
                scope: SCOPE_EXACT,
            },
            Frontend::NodePort { port, proto } => ServiceKey {
                addr: 0,
                port: be_port(port),
                proto: proto.number(),
                scope: SCOPE_NODE_PORT,
            },
        }
    }

    /// The frontend a services map key stands for (None: a key this agent never writes).
    pub(super) fn from_key(key: ServiceKey) -> Option<Self> {
        let proto = Protocol::from_number(key.proto)?;
        match key.scope {
            SCOPE_EXACT => Some(Frontend::Address {
                addr: sock(key.addr, key.port),
                proto,
            }),
            SCOPE_NODE_PORT => Some(Frontend::NodePort {
                port: host_port(key.port),
                proto,
            }),
            _ => None,
        }
    }

    /// The reverse-NAT value: the address replies are rewritten to come from.
    pub(super) fn rev_nat(self) -> RevNat {
        let key = self.key();
        RevNat {
            addr: key.addr,
            port: key.port,
            _pad: 0,
        }
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frontend::Address { addr, proto } => write!(f, "{addr}/{proto}"),
            Frontend::NodePort { port, proto } => write!(f, "nodeport *:{port}/{proto}"),
        }
    }
}

/// The agent's handle on a backend endpoint (any non-zero number it picks, stable while
/// the endpoint exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A frontend's id in the maps: its reverse-NAT id, the key of its slots, affinity and
/// counters, and what conntrack entries record. Allocated by
/// `DatapathMaps::upsert_frontend` and kept across updates and agent restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendId(pub u32);

/// Which new flows of a frontend the datapath SNATs to the node's address and an
/// allocated port (kube-proxy's KUBE-MARK-MASQ rules for that frontend).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Masquerade {
    /// None (hairpin flows aside).
    #[default]
    Never,
    /// Every one (`SVC_F_SNAT`).
    Always,
    /// Those whose source is outside the cluster CIDR (`SVC_F_SNAT_OFF_CLUSTER`).
    OffCluster,
}

impl Masquerade {
    /// The service-value flag bits.
    pub(super) fn flags(self) -> u16 {
        match self {
            Masquerade::Never => 0,
            Masquerade::Always => SVC_F_SNAT,
            Masquerade::OffCluster => SVC_F_SNAT_OFF_CLUSTER,
        }
    }

    /// From the service-value flag bits (`SVC_F_SNAT` wins).
    pub(super) fn from_flags(flags: u16) -> Self {
        if flags & SVC_F_SNAT != 0 {
            Masquerade::Always
        } else if flags & SVC_F_SNAT_OFF_CLUSTER != 0 {
            Masquerade::OffCluster
        } else {
            Masquerade::Never
        }
    }
}

impl fmt::Display for Masquerade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Masquerade::Never => "no SNAT",
            Masquerade::Always => "SNAT",
            Masquerade::OffCluster => "SNAT from outside the cluster CIDR",
        })
    }
}

/// Per-frontend options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendOptions {
    /// `sessionAffinity: ClientIP` with this timeout (kube-proxy default 10800 s).
    pub client_ip_affinity: Option<Duration>,
    /// Which new flows are SNATed to the node.
    pub masquerade: Masquerade,
    /// Without backends, drop instead of answering ICMP port unreachable: kube-proxy's
    /// "has no local endpoints" DROP (a traffic policy Local, endpoints elsewhere only).
    pub drop_without_backends: bool,
    /// The sources new flows are accepted from (`loadBalancerSourceRanges`, sorted);
    /// empty = every source.
    pub source_ranges: Vec<SourceRange>,
    /// The ClusterIP frontend (same protocol) whose backends serve pods and the node's
    /// own processes here instead: kube-proxy's `externalTrafficPolicy: Local`
    /// short-circuit. Set on external frontends of such services only.
    pub cluster_frontend: Option<SocketAddrV4>,
}

/// An IPv4 source prefix a frontend accepts (host bits clear).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl SourceRange {
    /// `addr/prefix` with the host bits cleared (`prefix` at most 32).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        SourceRange {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        }
    }

    /// Whether `ip` is inside the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        SourceRange::new(ip, self.prefix) == *self
    }
}

impl fmt::Display for SourceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendEntry {
    pub frontend: Frontend,
    pub id: FrontendId,
    /// Backends in slot order (stops at the first missing slot).
    pub backends: Vec<BackendId>,
    /// How many slots the service value declares (more than `backends` when slots are
    /// missing: inspection reports it).
    pub slot_count: u16,
    pub options: FrontendOptions,
}

/// A network-order address and port from a map, as a socket address.
pub(super) fn sock(addr: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(addr_octets(addr)), host_port(port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges_clear_host_bits_and_contain_their_addresses() {
        let r = SourceRange::new(Ipv4Addr::new(203, 0, 113, 77), 24);
        assert_eq!(r.to_string(), "203.0.113.0/24");
        assert!(r.contains(Ipv4Addr::new(203, 0, 113, 1)));
        assert!(!r.contains(Ipv4Addr::new(203, 0, 114, 1)));
        let all = SourceRange::new(Ipv4Addr::new(10, 1, 2, 3), 0);
        assert_eq!(all.to_string(), "0.0.0.0/0");
        assert!(all.contains(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(SourceRange::new(Ipv4Addr::new(10, 1, 2, 3), 40).prefix, 32);
    }
}
