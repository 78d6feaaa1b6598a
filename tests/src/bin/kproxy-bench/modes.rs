//! The datapaths the bench compares, and how the agent runs each.

use std::{fmt, str::FromStr};

use anyhow::bail;
use kproxy_testbed::cluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// No proxy at all: only the direct path, the physical limit.
    None,
    /// kube-proxy's rules through iptables-nft (what `iptables` is on Debian).
    Iptables,
    /// kube-proxy's rules through iptables-legacy.
    IptablesLegacy,
    /// kproxy's eBPF datapath at TC ingress.
    Tc,
    /// kproxy's eBPF datapath with XDP on the external interface (`--xdp-iface`): native
    /// mode, and the pod veths cannot take natively redirected frames, so what XDP
    /// translates goes through the stack.
    Xdp,
    /// As `xdp`, with GRO on inside the pods: their veths then take native redirects,
    /// so XDP sends NodePort traffic straight to the backend's veth.
    XdpRedirect,
    /// As `xdp`, on an external link native XDP refuses (its peer's MTU is above what a
    /// veth runs native XDP with), as on a NIC without native XDP: the agent falls back
    /// to generic (skb) mode, which redirects into any interface.
    XdpGeneric,
}

pub const ALL: [Mode; 7] = [
    Mode::None,
    Mode::Iptables,
    Mode::IptablesLegacy,
    Mode::Tc,
    Mode::Xdp,
    Mode::XdpRedirect,
    Mode::XdpGeneric,
];

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Iptables => "iptables",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::Tc => "tc",
            Mode::Xdp => "xdp",
            Mode::XdpRedirect => "xdp-redirect",
            Mode::XdpGeneric => "xdp-generic",
        }
    }

    pub fn is_ebpf(self) -> bool {
        matches!(self, Mode::Tc) || self.has_xdp()
    }

    pub fn has_xdp(self) -> bool {
        matches!(self, Mode::Xdp | Mode::XdpRedirect | Mode::XdpGeneric)
    }

    /// The XDP variants beside `xdp` differ only in how XDP forwards external traffic:
    /// they are measured on the NodePort paths alone.
    pub fn external_only(self) -> bool {
        matches!(self, Mode::XdpRedirect | Mode::XdpGeneric)
    }

    /// The agent's datapath for this mode and the `kproxy run` arguments it adds
    /// (`None`: no agent).
    pub fn agent(self) -> Option<(cluster::Mode, &'static [&'static str])> {
        match self {
            Mode::None => None,
            Mode::Iptables => Some((cluster::Mode::Iptables, &["--iptables-backend", "nft"])),
            Mode::IptablesLegacy => Some((cluster::Mode::Iptables, &["--iptables-backend", "legacy"])),
            Mode::Tc => Some((cluster::Mode::Ebpf, &[])),
            Mode::Xdp | Mode::XdpRedirect | Mode::XdpGeneric => Some((cluster::Mode::EbpfXdp, &[])),
        }
    }
}

impl serde::Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        match ALL.iter().find(|m| m.name() == text) {
            Some(mode) => Ok(*mode),
            None => bail!(
                "unknown mode {text:?} (one of: {})",
                ALL.map(Mode::name).join(", ")
            ),
        }
    }
}
