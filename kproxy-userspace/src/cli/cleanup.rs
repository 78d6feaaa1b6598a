//! `kproxy cleanup`: removes everything an agent installed.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use kproxy::{
    ebpf::{
        self, DEFAULT_PIN_DIR,
        attach::{LinkPins, iface},
    },
    iptables::{Flavor, netfilter},
    record,
};
use log::{info, warn};

#[derive(Args)]
pub struct Cleanup {
    /// bpffs directory the agent pinned under.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_path: PathBuf,
    /// Only this iptables backend (default: both nft and legacy).
    #[arg(long, value_enum)]
    iptables_backend: Option<Flavor>,
    /// Instead of kproxy's state, remove what a kube-proxy left, as `kube-proxy
    /// --cleanup` does: its iptables chains and jumps (IPv4 and IPv6; kubelet's chains
    /// stay) and its nftables tables `ip kube-proxy` and `ip6 kube-proxy`. kproxy's own
    /// pins and links are not touched, but kproxy's iptables-mode rules are kube-proxy's
    /// and go too.
    #[arg(long, conflicts_with = "pin_path")]
    kube_proxy_rules: bool,
}

impl Cleanup {
    pub fn run(self) -> anyhow::Result<()> {
        if self.kube_proxy_rules {
            return self.kube_proxy_leftovers();
        }
        let links_dir = self.pin_path.join("links");
        if links_dir.exists() {
            let pins = LinkPins::new(&self.pin_path)?;
            let removed = pins.sweep(&iface::list()?, true)?;
            info!("removed {} link pins (programs detached)", removed.len());
            std::fs::remove_dir(&links_dir).with_context(|| format!("remove {}", links_dir.display()))?;
        }
        ebpf::unpin_all(&self.pin_path)?;
        record::remove(&self.pin_path)?;
        for flavor in self.flavors() {
            if !netfilter::available(flavor) {
                continue;
            }
            let chains = netfilter::cleanup(flavor)?;
            if chains > 0 {
                info!("removed {chains} KUBE-* chains and their jumps ({flavor:?})");
            }
        }
        info!("cleanup of {} done", self.pin_path.display());
        Ok(())
    }

    fn flavors(&self) -> Vec<Flavor> {
        match self.iptables_backend {
            Some(only) => vec![only],
            None => vec![Flavor::Nft, Flavor::Legacy],
        }
    }

    fn kube_proxy_leftovers(&self) -> anyhow::Result<()> {
        for flavor in self.flavors() {
            if !netfilter::available(flavor) {
                continue;
            }
            let done = netfilter::cleanup_kube_proxy(flavor)?;
            for family in &done.skipped_families {
                info!("{family} iptables ({flavor:?}) not usable here: skipped");
            }
            info!(
                "removed {} of kube-proxy's iptables chains and their jumps ({flavor:?})",
                done.chains
            );
        }
        if netfilter::nft_available() {
            for table in netfilter::cleanup_kube_proxy_nft()? {
                info!("removed kube-proxy's nftables table {table}");
            }
        } else {
            warn!("nft is not installed: kube-proxy's nftables tables (if any) were not checked");
        }
        Ok(())
    }
}
