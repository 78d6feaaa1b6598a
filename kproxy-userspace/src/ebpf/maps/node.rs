//! Node-wide maps: the addresses NodePorts answer on, the masquerade (hairpin) source,
//! the SNAT settings, the interfaces XDP may redirect to, and the reject replies'
//! rate-limit buckets.

use std::{collections::BTreeSet, net::Ipv4Addr, ops::RangeInclusive};

use aya::maps::{MapError, PerCpuValues, xdp::XdpMapError};
use kproxy_common::{
    Config, NodeAddr, RateBucket,
    byteorder::{addr_octets, be_addr},
    conntrack::CtTimeouts,
    map_names as names,
    node::{CFG_F_LOCALHOST_NODE_PORTS, SNAT_PORT_MAX_DEFAULT, SNAT_PORT_MIN_DEFAULT},
};

use super::{DatapathMaps, MapOp, MapsError, removed, stale_keys};

/// What the datapath needs to SNAT the flows its frontends ask it to (the config map).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnatSettings {
    /// The source SNATed flows get (the node's IP); None: no SNAT at all.
    pub node_addr: Option<Ipv4Addr>,
    /// The cluster CIDR (network, prefix length): sources outside it are SNATed to
    /// frontends with [`super::Masquerade::OffCluster`].
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
    /// The source ports SNAT allocates from.
    pub ports: RangeInclusive<u16>,
}

impl Default for SnatSettings {
    fn default() -> Self {
        SnatSettings {
            node_addr: None,
            cluster_cidr: None,
            ports: SNAT_PORT_MIN_DEFAULT..=SNAT_PORT_MAX_DEFAULT,
        }
    }
}

impl DatapathMaps {
    /// Sets every CPU's reject-reply token bucket to `bucket` (tests: an empty bucket
    /// whose last refill lies in the future suppresses every reply).
    pub fn set_reject_buckets(&mut self, bucket: RateBucket) -> Result<(), MapsError> {
        let io = |e| MapOp::Insert.on(names::REJECT_RATE)(MapError::IoError(e));
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io(e))?;
        let values = PerCpuValues::try_from(vec![bucket; cpus]).map_err(io)?;
        self.reject_rate
            .set(0, values, 0)
            .map_err(MapOp::Insert.on(names::REJECT_RATE))
    }

    /// Sets the addresses NodePort frontends answer on (adds new ones before removing
    /// stale ones).
    pub fn set_node_addresses(&mut self, addrs: &[Ipv4Addr]) -> Result<(), MapsError> {
        let want: BTreeSet<u32> = addrs.iter().map(|a| be_addr(a.octets())).collect();
        for &a in &want {
            self.node_addrs
                .insert(a, NodeAddr { flags: 0 }, 0)
                .map_err(MapOp::Insert.on(names::NODE_ADDRS))?;
        }
        for key in stale_keys(self.node_addrs.keys(), &want, names::NODE_ADDRS)? {
            removed(self.node_addrs.remove(&key), names::NODE_ADDRS)?;
        }
        Ok(())
    }

    /// The node addresses NodePort frontends answer on.
    pub fn node_addresses(&self) -> Result<Vec<Ipv4Addr>, MapsError> {
        let mut out = Vec::new();
        for key in self.node_addrs.keys() {
            out.push(Ipv4Addr::from(addr_octets(
                key.map_err(MapOp::Iterate.on(names::NODE_ADDRS))?,
            )));
        }
        out.sort();
        Ok(out)
    }

    /// Sets the source address of hairpin flows (a pod reaching itself through a
    /// service); None disables masquerade (such flows then fail, as their replies skip
    /// the reverse translation). Use an address the node does not own (e.g. 169.254.x.y):
    /// the translation happens before routing, where a local source is a martian.
    pub fn set_masquerade_address(&mut self, addr: Option<Ipv4Addr>) -> Result<(), MapsError> {
        let value = Config {
            masq_addr: addr.map_or(0, |a| be_addr(a.octets())),
            ..self.config_value()?
        };
        self.config
            .set(0, value, 0)
            .map_err(MapOp::Insert.on(names::CONFIG))
    }

    /// Sets what SNAT needs: the node's address, the cluster CIDR and the port range.
    pub fn set_snat(&mut self, snat: &SnatSettings) -> Result<(), MapsError> {
        let (net, prefix) = snat.cluster_cidr.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
        let value = Config {
            snat_addr: snat.node_addr.map_or(0, |a| be_addr(a.octets())),
            cluster_net: be_addr((u32::from(net) & mask).to_be_bytes()),
            cluster_mask: be_addr(mask.to_be_bytes()),
            snat_port_min: *snat.ports.start(),
            snat_port_max: *snat.ports.end(),
            ..self.config_value()?
        };
        self.config
            .set(0, value, 0)
            .map_err(MapOp::Insert.on(names::CONFIG))
    }

    /// The SNAT settings as the config map holds them.
    pub fn snat(&self) -> Result<SnatSettings, MapsError> {
        let c = self.config_value()?;
        let mask = u32::from_be_bytes(addr_octets(c.cluster_mask));
        Ok(SnatSettings {
            node_addr: (c.snat_addr != 0).then(|| Ipv4Addr::from(addr_octets(c.snat_addr))),
            cluster_cidr: (mask != 0).then(|| {
                (
                    Ipv4Addr::from(addr_octets(c.cluster_net)),
                    mask.leading_ones() as u8,
                )
            }),
            ports: c.snat_port_min..=c.snat_port_max,
        })
    }

    /// Sets socket-LB: the agent's network namespace cookie (the socket programs
    /// translate sockets of that namespace only; None turns them off) and whether they
    /// serve NodePorts on 127.0.0.1 (kube-proxy's `localhostNodePorts`).
    pub fn set_socket_lb(
        &mut self,
        netns_cookie: Option<u64>,
        localhost_node_ports: bool,
    ) -> Result<(), MapsError> {
        let old = self.config_value()?;
        let flags = if localhost_node_ports {
            old.flags | CFG_F_LOCALHOST_NODE_PORTS
        } else {
            old.flags & !CFG_F_LOCALHOST_NODE_PORTS
        };
        let value = Config {
            netns_cookie: netns_cookie.unwrap_or(0),
            flags,
            ..old
        };
        self.config
            .set(0, value, 0)
            .map_err(MapOp::Insert.on(names::CONFIG))
    }

    /// Socket-LB as the config map holds it: the netns cookie (None: off) and whether
    /// NodePorts on 127.0.0.1 are served.
    pub fn socket_lb(&self) -> Result<(Option<u64>, bool), MapsError> {
        let c = self.config_value()?;
        Ok((
            (c.netns_cookie != 0).then_some(c.netns_cookie),
            c.flags & CFG_F_LOCALHOST_NODE_PORTS != 0,
        ))
    }

    /// Sets the conntrack entries' idle timeouts.
    pub fn set_ct_timeouts(&mut self, timeouts: CtTimeouts) -> Result<(), MapsError> {
        let value = Config {
            ct_timeouts: timeouts,
            ..self.config_value()?
        };
        self.config
            .set(0, value, 0)
            .map_err(MapOp::Insert.on(names::CONFIG))
    }

    /// The conntrack entries' idle timeouts (zeros: the defaults).
    pub fn ct_timeouts(&self) -> Result<CtTimeouts, MapsError> {
        Ok(self.config_value()?.ct_timeouts)
    }

    fn config_value(&self) -> Result<Config, MapsError> {
        self.config.get(&0, 0).map_err(MapOp::Lookup.on(names::CONFIG))
    }

    /// The masquerade (hairpin) source address, if set.
    pub fn masquerade_address(&self) -> Result<Option<Ipv4Addr>, MapsError> {
        let value = self.config_value()?;
        Ok((value.masq_addr != 0).then(|| Ipv4Addr::from(addr_octets(value.masq_addr))))
    }

    /// Sets the interfaces (ifindexes in the caller's network namespace) the XDP program
    /// may redirect translated packets to; it hands packets routed anywhere else to the
    /// stack. List only interfaces that accept redirected frames from the XDP mode in use:
    /// in native mode a veth does only if its peer runs XDP or has GRO on, and a frame
    /// redirected to one that does not is lost. Adds new ones before removing stale ones.
    pub fn set_xdp_targets(&mut self, ifindexes: &[u32]) -> Result<(), MapsError> {
        let want: BTreeSet<u32> = ifindexes.iter().copied().collect();
        for &i in &want {
            self.xdp_targets.insert(i, i, None, 0).map_err(|e| match e {
                XdpMapError::MapError(e) => MapOp::Insert.on(names::XDP_TARGETS)(e),
                other @ XdpMapError::ChainedProgramNotSupported => MapsError::XdpTarget(other),
            })?;
        }
        for key in stale_keys(self.xdp_targets.keys(), &want, names::XDP_TARGETS)? {
            removed(self.xdp_targets.remove(key), names::XDP_TARGETS)?;
        }
        Ok(())
    }

    /// The interfaces XDP may redirect to (ifindexes), sorted.
    pub fn xdp_targets(&self) -> Result<Vec<u32>, MapsError> {
        let mut out = self
            .xdp_targets
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(MapOp::Iterate.on(names::XDP_TARGETS))?;
        out.sort_unstable();
        Ok(out)
    }
}
