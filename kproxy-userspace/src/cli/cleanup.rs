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
use log::info;

#[derive(Args)]
pub struct Cleanup {
    /// bpffs directory the agent pinned under.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_path: PathBuf,
    /// Only this iptables backend (default: both nft and legacy).
    #[arg(long, value_enum)]
    iptables_backend: Option<Flavor>,
}

impl Cleanup {
    pub fn run(self) -> anyhow::Result<()> {
        let links_dir = self.pin_path.join("links");
        if links_dir.exists() {
            let pins = LinkPins::new(&self.pin_path)?;
            let removed = pins.sweep(&iface::list()?, true)?;
            info!("removed {} link pins (programs detached)", removed.len());
            std::fs::remove_dir(&links_dir).with_context(|| format!("remove {}", links_dir.display()))?;
        }
        ebpf::unpin_all(&self.pin_path)?;
        record::remove(&self.pin_path)?;
        let flavors = match self.iptables_backend {
            Some(only) => vec![only],
            None => vec![Flavor::Nft, Flavor::Legacy],
        };
        for flavor in flavors {
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
}
