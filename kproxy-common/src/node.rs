//! Node-wide state the agent writes: the node's addresses (NodePort frontends answer on
//! them) and the settings of the single `KPROXY_CONFIG_V1` entry.

/// Value of `KPROXY_NODE_ADDRS_V1`, keyed by a node address (network order): NodePort
/// frontends match packets to these addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAddr {
    /// Reserved (0).
    pub flags: u32,
}
const _: () = assert!(size_of::<NodeAddr>() == 4);

/// Node-wide settings the agent writes at runtime (the single entry of `KPROXY_CONFIG_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Source address for masqueraded (hairpin) flows, network order; 0 = no masquerade.
    /// Must not be an address the node owns (a packet arriving with a local source is a
    /// martian), e.g. a link-local 169.254.x.y routed nowhere: replies come back to the
    /// node by the pod's default route and are translated before routing.
    pub masq_addr: u32,
    /// Reserved (0).
    pub flags: u32,
}
const _: () = assert!(size_of::<Config>() == 8);

// SAFETY: repr(C), u32 fields only, no padding, sizes asserted above.
unsafe_impl_pod!(NodeAddr, Config);
