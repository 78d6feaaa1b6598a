//! The datapaths the bench compares, and the `kproxy run` arguments for each.

use std::{fmt, str::FromStr};

use anyhow::bail;

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
    /// kproxy's eBPF datapath with XDP on the external interface (`--xdp-iface`).
    Xdp,
}

pub const ALL: [Mode; 5] = [
    Mode::None,
    Mode::Iptables,
    Mode::IptablesLegacy,
    Mode::Tc,
    Mode::Xdp,
];

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Iptables => "iptables",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::Tc => "tc",
            Mode::Xdp => "xdp",
        }
    }

    pub fn is_ebpf(self) -> bool {
        matches!(self, Mode::Tc | Mode::Xdp)
    }

    /// `kproxy run` arguments selecting this datapath on a node whose pod veths match
    /// `pod_ifaces` and whose external link matches `external_ifaces` (`None` for no agent).
    pub fn agent_args(self, pod_ifaces: &str, external_ifaces: &str) -> Option<Vec<String>> {
        let ebpf = [
            "--mode",
            "ebpf",
            "--iface",
            pod_ifaces,
            "--iface",
            external_ifaces,
        ];
        let args: Vec<&str> = match self {
            Mode::None => return None,
            Mode::Iptables => vec!["--mode", "iptables", "--iptables-backend", "nft"],
            Mode::IptablesLegacy => vec!["--mode", "iptables", "--iptables-backend", "legacy"],
            Mode::Tc => ebpf.to_vec(),
            Mode::Xdp => [ebpf.as_slice(), &["--xdp-iface", external_ifaces]].concat(),
        };
        Some(args.into_iter().map(String::from).collect())
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
