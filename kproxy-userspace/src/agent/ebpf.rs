//! The eBPF datapath under the agent: programs loaded with their maps pinned under the
//! pin path, TC ingress attached to every interface matching `--iface` (rescanned as
//! pods come and go), and the maps kept in step with the model by [`MapSync`].

use std::{collections::BTreeSet, net::Ipv4Addr};

use aya::programs::SchedClassifier;
use log::{debug, info, warn};

use super::{AgentError, AgentOptions, Datapath};
use crate::{
    attach::{AttachError, LinkPins},
    bpf::{self, LoadOptions, LoaderError, MapsError},
    config::{NodePortAddresses, ProxyConfig},
    iface::{self, Iface, IfaceError},
    model::{Model, NodeInfo},
    programs,
    state::Applied,
    sync::{MapSync, desired_state},
};

#[derive(Debug, thiserror::Error)]
pub enum EbpfModeError {
    #[error(transparent)]
    Load(#[from] LoaderError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("write {path}: {source}")]
    Sysctl { path: String, source: std::io::Error },
    #[error("program {0} is not a TC classifier in the eBPF object")]
    ProgramType(&'static str),
}

pub struct EbpfMode {
    datapath: bpf::Datapath,
    /// Drains the programs' aya-log ring buffer; must outlive the programs' use of it.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pins: LinkPins,
    sync: MapSync,
    patterns: Vec<String>,
    attached: BTreeSet<Iface>,
    masquerade: Ipv4Addr,
    /// The last unsupported-feature notes logged, so each is logged once per change.
    unsupported: Vec<String>,
}

impl EbpfMode {
    /// Loads (or adopts) the pinned datapath under the pin path.
    pub fn start(opts: &AgentOptions) -> Result<Self, EbpfModeError> {
        let mut datapath = bpf::Datapath::load(&LoadOptions {
            pin_dir: opts.pin_path.clone(),
            conntrack_max: None,
        })?;
        let logger = match aya_log::EbpfLogger::init(&mut datapath.ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                debug!("no program log buffer: {err}");
                None
            }
        };
        let pruned = datapath.maps.prune_orphan_slots()?;
        let sync = MapSync::adopt(&datapath.maps)?;
        let adopted = datapath.maps.services()?.len();
        for (name, insns) in datapath.instruction_counts() {
            debug!("{name}: {insns} verified instructions");
        }
        info!(
            "eBPF datapath loaded, maps pinned under {} ({adopted} frontends adopted, {pruned} orphan slots pruned)",
            opts.pin_path.display()
        );
        Ok(EbpfMode {
            datapath,
            logger,
            pins: LinkPins::new(&opts.pin_path)?,
            sync,
            patterns: opts.ifaces.clone(),
            attached: BTreeSet::new(),
            masquerade: opts.masquerade_address,
            unsupported: Vec::new(),
        })
    }
}

/// The TC ingress program of the loaded object.
fn tc_program(ebpf: &mut aya::Ebpf) -> Result<&mut SchedClassifier, EbpfModeError> {
    let name = programs::TC_INGRESS_PROGRAM;
    ebpf.program_mut(name)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(EbpfModeError::ProgramType(name))
}

/// Lets `iface` accept packets whose source is a node address. The TC program
/// reverse-translates NodePort replies at ingress, before routing, so a reply arriving
/// from a pod carries the node's address as source; the kernel drops such packets as
/// martians unless `accept_local` is set on the interface they arrive on.
fn accept_local_source(iface: &str) -> Result<(), EbpfModeError> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    std::fs::write(&path, "1").map_err(|source| EbpfModeError::Sysctl { path, source })
}

/// The IPv4 addresses NodePorts answer on.
fn node_port_addresses(config: &ProxyConfig, node: &NodeInfo) -> Vec<Ipv4Addr> {
    let chosen = match config.node_port_addresses(node) {
        NodePortAddresses::All => node.addresses.clone(),
        NodePortAddresses::Only(addrs) => addrs,
    };
    chosen
        .into_iter()
        .filter_map(|a| match a {
            std::net::IpAddr::V4(v4) if !v4.is_loopback() => Some(v4),
            _ => None,
        })
        .collect()
}

impl Datapath for EbpfMode {
    fn sync(&mut self, model: &Model, node: &NodeInfo, config: &ProxyConfig) -> Result<String, AgentError> {
        let maps = &mut self.datapath.maps;
        let addrs = node_port_addresses(config, node);
        maps.set_node_addresses(&addrs).map_err(EbpfModeError::from)?;
        maps.set_masquerade_address(Some(self.masquerade))
            .map_err(EbpfModeError::from)?;
        let desired = desired_state(model);
        if desired.unsupported != self.unsupported {
            for note in &desired.unsupported {
                warn!("{note}");
            }
            self.unsupported = desired.unsupported.clone();
        }
        let s = self.sync.apply(maps, &desired).map_err(EbpfModeError::from)?;
        Ok(format!(
            "maps: {} frontends (+{} ~{} -{}), {} backends (+{} -{}), {} NodePort addresses",
            s.frontends,
            s.frontends_added,
            s.frontends_updated,
            s.frontends_removed,
            s.backends,
            s.backends_added,
            s.backends_removed,
            addrs.len()
        ))
    }

    fn scan_interfaces(&mut self) -> Result<(), AgentError> {
        let present = iface::list().map_err(EbpfModeError::from)?;
        let wanted = iface::matching(&self.patterns).map_err(EbpfModeError::from)?;
        for found in &wanted {
            if self.attached.contains(found) {
                continue;
            }
            let program = tc_program(&mut self.datapath.ebpf)?;
            let how = self.pins.attach_tc(program, found).map_err(EbpfModeError::from)?;
            info!("tc ingress on {} (ifindex {}): {how:?}", found.name, found.index);
            accept_local_source(&found.name)?;
            self.attached.insert(found.clone());
        }
        self.attached.retain(|i| present.contains(i));
        for gone in self.pins.sweep(&present, false).map_err(EbpfModeError::from)? {
            info!("interface gone, link pin {gone} removed");
        }
        Ok(())
    }

    fn tick(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }

    fn describe(&self, applied: &mut Applied) {
        applied.mode = "ebpf".into();
        applied.masquerade_address = Some(self.masquerade.into());
    }
}
