//! Node-wide state the agent writes: the node's addresses (NodePort frontends answer on
//! them) and the settings of the single `KPROXY_CONFIG_V4` entry.

/// Value of `KPROXY_NODE_ADDRS_V1`, keyed by a node address (network order): NodePort
/// frontends match packets to these addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAddr {
    /// Reserved (0).
    pub flags: u32,
}
const _: () = assert!(size_of::<NodeAddr>() == 4);

/// First port of the default SNAT range: just above Linux's default ephemeral range
/// (`ip_local_port_range` 32768–60999), so SNATed flows never take a port the node's own
/// connections use.
pub const SNAT_PORT_MIN_DEFAULT: u16 = 61_000;
/// Last port of the default SNAT range.
pub const SNAT_PORT_MAX_DEFAULT: u16 = 65_535;
/// Ports a new SNAT flow tries (each at random in the range) before it is dropped as
/// `snat_port_exhausted` (Cilium's `SNAT_COLLISION_RETRIES`).
pub const SNAT_RETRIES: u32 = 32;

/// Config flag: the socket programs also serve NodePorts on 127.0.0.1 (kube-proxy's
/// `localhostNodePorts`).
pub const CFG_F_LOCALHOST_NODE_PORTS: u32 = 1 << 0;

/// Node-wide settings the agent writes at runtime (the single entry of `KPROXY_CONFIG_V4`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Source address for masqueraded (hairpin) flows, network order; 0 = no masquerade.
    /// Must not be an address the node owns (a packet arriving with a local source is a
    /// martian), e.g. a link-local 169.254.x.y routed nowhere: replies come back to the
    /// node by the pod's default route and are translated before routing.
    pub masq_addr: u32,
    /// `CFG_F_*` bits.
    pub flags: u32,
    /// SNAT source (the node's IP), network order; 0 = no SNAT.
    pub snat_addr: u32,
    /// Cluster CIDR network, network order: sources outside it are SNATed to frontends
    /// with `SVC_F_SNAT_OFF_CLUSTER`.
    pub cluster_net: u32,
    /// Cluster CIDR mask, network order.
    pub cluster_mask: u32,
    /// SNAT ports, inclusive, host order (no port when `min` is 0 or above `max`).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// Socket-LB: the network namespace cookie (`SO_NETNS_COOKIE`) of the agent; the
    /// socket programs translate sockets of that namespace only. 0 = socket-LB off.
    pub netns_cookie: u64,
    /// Idle timeouts of the conntrack map's entries.
    pub ct_timeouts: crate::conntrack::CtTimeouts,
}
const _: () = assert!(size_of::<Config>() == 64);
const _: () = assert!(core::mem::offset_of!(Config, netns_cookie) == 24);

// SAFETY: repr(C), u32, u16 and u64 fields only, no padding, sizes asserted above.
unsafe_impl_pod!(NodeAddr, Config);
