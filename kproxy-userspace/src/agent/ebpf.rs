//! The eBPF datapath under the agent: programs loaded with their maps pinned under the
//! pin path, TC ingress attached to every interface matching `--iface` and XDP to every
//! one matching `--xdp-iface` (rescanned as pods come and go), and the maps kept in step
//! with the model by [`MapSync`].
//!
//! XDP runs in native (driver) mode where the device supports it, generic (skb) mode
//! otherwise. Its redirect targets are the interfaces the agent attached to that accept
//! the redirected frames: any of them while every XDP link is generic, else only those
//! whose driver takes frames from native XDP (a veth: while its peer has XDP or GRO).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use aya::programs::{SchedClassifier, Xdp, XdpMode};
use log::{debug, info, warn};

use super::{AgentError, AgentOptions, Datapath};
use crate::{
    attach::{AttachError, Attached, LinkPins},
    bpf::{self, LoadOptions, LoaderError, MapsError},
    config::ProxyConfig,
    iface::{self, Iface, IfaceError},
    inspect::{Drift, verify},
    model::{Model, NodeInfo},
    programs,
    state::Applied,
    sync::{MapSync, desired_state, node_port_addresses},
    xdp_features::{self, XDP_ACT_BASIC, XdpFeaturesError},
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
    #[error("program {0} is missing or of another type in the eBPF object")]
    ProgramType(&'static str),
    #[error("attach XDP to {iface}: native mode: {native}; generic mode: {generic}")]
    XdpAttach {
        iface: String,
        native: String,
        generic: Box<AttachError>,
    },
    #[error(transparent)]
    XdpFeatures(#[from] XdpFeaturesError),
}

/// How the XDP program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum XdpAttachMode {
    Native,
    Generic,
}

pub struct EbpfMode {
    datapath: bpf::Datapath,
    /// Drains the programs' aya-log ring buffer; must outlive the programs' use of it.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pins: LinkPins,
    sync: MapSync,
    patterns: Vec<String>,
    attached: BTreeSet<Iface>,
    xdp_patterns: Vec<String>,
    xdp_attached: BTreeMap<Iface, XdpAttachMode>,
    /// The redirect targets last written (ifindexes).
    xdp_targets: Vec<u32>,
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
            xdp_patterns: opts.xdp_ifaces.clone(),
            xdp_attached: BTreeMap::new(),
            xdp_targets: Vec::new(),
            masquerade: opts.masquerade_address,
            unsupported: Vec::new(),
        })
    }
}

impl EbpfMode {
    /// Attaches XDP to new `--xdp-iface` matches and rewrites the redirect targets when
    /// they change.
    fn scan_xdp(&mut self, present: &[Iface]) -> Result<(), EbpfModeError> {
        if self.xdp_patterns.is_empty() {
            return Ok(());
        }
        for found in iface::matching(&self.xdp_patterns)? {
            if self.xdp_attached.contains_key(&found) {
                continue;
            }
            let program = xdp_program(&mut self.datapath.ebpf)?;
            let (how, mode, why) = attach_xdp(&self.pins, program, &found)?;
            info!("xdp on {} (ifindex {}): {why}, {how:?}", found.name, found.index);
            self.xdp_attached.insert(found, mode);
        }
        self.xdp_attached.retain(|i, _| present.contains(i));
        let all_generic = self.xdp_attached.values().all(|m| *m == XdpAttachMode::Generic);
        let mut targets = Vec::new();
        let candidates: BTreeSet<&Iface> = self.attached.iter().chain(self.xdp_attached.keys()).collect();
        for iface in candidates {
            // Generic XDP redirects through the stack's transmit path: any device takes it.
            if all_generic || xdp_features::accepts_native_redirects(iface.index)? {
                targets.push(iface.index);
            }
        }
        if self.xdp_attached.is_empty() {
            targets.clear();
        }
        targets.sort();
        if targets != self.xdp_targets {
            self.datapath.maps.set_xdp_targets(&targets)?;
            let names: Vec<&str> = present
                .iter()
                .filter(|i| targets.contains(&i.index))
                .map(|i| i.name.as_str())
                .collect();
            info!(
                "xdp redirect targets: {names:?} (translated packets routed elsewhere go through the stack)"
            );
            self.xdp_targets = targets;
        }
        Ok(())
    }
}

/// The TC ingress program of the loaded object.
fn tc_program(ebpf: &mut aya::Ebpf) -> Result<&mut SchedClassifier, EbpfModeError> {
    let name = programs::TC_INGRESS_PROGRAM;
    ebpf.program_mut(name)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(EbpfModeError::ProgramType(name))
}

/// The XDP program of the loaded object.
fn xdp_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, EbpfModeError> {
    let name = programs::XDP_PROGRAM;
    ebpf.program_mut(name)
        .and_then(|p| <&mut Xdp>::try_from(p).ok())
        .ok_or(EbpfModeError::ProgramType(name))
}

/// Attaches (or adopts) XDP on `iface`: native mode if its driver supports it, generic
/// mode otherwise or if native fails. An adopted link keeps the mode it was attached
/// in, which this policy chose from the same driver: its mode is inferred the same way.
fn attach_xdp(
    pins: &LinkPins,
    program: &mut Xdp,
    iface: &Iface,
) -> Result<(Attached, XdpAttachMode, String), EbpfModeError> {
    let native_ok = xdp_features::xdp_features(iface.index)? & XDP_ACT_BASIC != 0;
    let native_err = if native_ok {
        match pins.attach_xdp(program, iface, XdpMode::Driver) {
            Ok(how) => {
                return Ok((how, XdpAttachMode::Native, "native (driver) mode".into()));
            }
            Err(e) => e.to_string(),
        }
    } else {
        "the driver has no native XDP".to_string()
    };
    match pins.attach_xdp(program, iface, XdpMode::Skb) {
        Ok(how) => Ok((
            how,
            XdpAttachMode::Generic,
            format!("generic (skb) mode ({native_err})"),
        )),
        Err(generic) => Err(EbpfModeError::XdpAttach {
            iface: iface.name.clone(),
            native: native_err,
            generic: Box::new(generic),
        }),
    }
}

/// Lets `iface` accept packets whose source is a node address. The TC program
/// reverse-translates NodePort replies at ingress, before routing, so a reply arriving
/// from a pod carries the node's address as source; the kernel drops such packets as
/// martians unless `accept_local` is set on the interface they arrive on.
fn accept_local_source(iface: &str) -> Result<(), EbpfModeError> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    std::fs::write(&path, "1").map_err(|source| EbpfModeError::Sysctl { path, source })
}

/// Logs what `kproxy inspect --verify` would report right after a sync (nothing, unless
/// something else writes to the maps or the sync has a bug).
fn log_drift(drift: &[Drift]) {
    const SHOWN: usize = 10;
    for d in drift.iter().take(SHOWN) {
        warn!("drift: {} ({} in {})", d, d.kind(), d.map());
    }
    if drift.len() > SHOWN {
        warn!(
            "drift: {} more differences (kproxy inspect --verify lists them)",
            drift.len() - SHOWN
        );
    }
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
        match verify(maps, &desired, &addrs) {
            Ok(drift) if drift.is_empty() => {}
            Ok(drift) => {
                // Something changed the maps behind our back: trust the maps, not our
                // memory of them, and write the difference again.
                log_drift(&drift);
                self.sync = MapSync::adopt(maps).map_err(EbpfModeError::from)?;
                let fixed = self.sync.apply(maps, &desired).map_err(EbpfModeError::from)?;
                info!("drift repaired: {} map changes from the model", fixed.changes());
            }
            Err(err) => warn!("drift check (kproxy inspect --verify) failed: {err}"),
        }
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
        self.scan_xdp(&present)?;
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
