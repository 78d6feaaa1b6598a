//! The eBPF datapath under the agent: programs loaded with their maps pinned under the
//! pin path, TC ingress and egress attached to every interface matching `--iface` and XDP to every
//! one matching `--xdp-iface` (rescanned as pods come and go), and the maps kept in step
//! with the model by [`MapSync`].
//!
//! XDP runs in native (driver) mode where the device supports it, generic (skb) mode
//! otherwise. Its redirect targets are the interfaces the agent attached to that accept
//! the redirected frames: any of them while every XDP link is generic, else only those
//! whose driver takes frames from native XDP (a veth: while its peer has XDP or GRO).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use kproxy_common::conntrack::CtTimeouts;
use log::{debug, info, warn};

use super::{AgentError, AgentOptions, Proxier, SocketLbCgroup, metrics::Metrics};
use crate::{
    config::{ConntrackConfig, ProxyConfig},
    ebpf::{
        Drift, Frontend, LoadOptions, Loaded, LoaderError, MapSync, MapsError, MasqueradePolicy,
        SOCK_PROGRAMS, SnatSettings,
        attach::{
            self, AttachError, CgroupError, CgroupLinks, Iface, IfaceError, LinkPins, cgroup, iface,
            xdp::{self as xdp_attach, XdpAttachMode},
        },
        desired_state, node_port_addresses, verify,
    },
    error_chain,
    model::{Model, NodeInfo, UdpServing},
    record::{Applied, Mode},
};

#[derive(Debug, thiserror::Error)]
pub enum EbpfProxierError {
    #[error(transparent)]
    Load(#[from] LoaderError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// kproxy's own datapath: the loaded programs, their links, and the maps kept in step.
pub struct EbpfProxier {
    loaded: Loaded,
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
    snat_ports: std::ops::RangeInclusive<u16>,
    /// The last unsupported-feature notes logged, so each is logged once per change.
    unsupported: Vec<String>,
    /// Socket-LB: the agent's netns cookie the socket programs serve; None: off.
    netns_cookie: Option<u64>,
    /// The service port of each frontend last synced, for `/metrics`.
    frontend_services: Arc<BTreeMap<Frontend, String>>,
}

impl EbpfProxier {
    /// Loads (or adopts) the pinned datapath under the pin path.
    pub fn start(opts: &AgentOptions, config: &ProxyConfig) -> Result<Self, EbpfProxierError> {
        // Sized as kube-proxy sizes the kernel's table (two entries per flow); an
        // adopted map keeps its size.
        let mut loaded = Loaded::load(&LoadOptions {
            pin_dir: opts.pin_path.clone(),
            conntrack_max: config
                .conntrack
                .max_flows(super::conntrack::cpus())
                .map(|flows| flows.saturating_mul(2)),
        })?;
        let logger = match aya_log::EbpfLogger::init(&mut loaded.ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                debug!("no program log buffer: {err}");
                None
            }
        };
        let pruned = loaded.maps.prune_orphan_slots()?;
        let sync = MapSync::adopt(&loaded.maps)?;
        let adopted = loaded.maps.frontends()?.len();
        for (name, insns) in loaded.instruction_counts() {
            debug!("{name}: {insns} verified instructions");
        }
        info!(
            "eBPF datapath loaded, maps pinned under {} ({adopted} frontends adopted, {pruned} orphan slots pruned)",
            opts.pin_path.display()
        );
        let kept = loaded.maps.adopt_retired_conntrack(&opts.pin_path)?;
        if kept > 0 {
            info!(
                "{kept} conntrack entries of the earlier single table copied into the TCP and other tables"
            );
        }
        for name in crate::ebpf::unpin_retired(&opts.pin_path)? {
            info!("map {name} of an earlier layout unpinned (no program uses it)");
        }
        warn_if_ephemeral(&opts.snat_ports);
        let netns_cookie = attach_socket_lb(&mut loaded, opts)?;
        Ok(EbpfProxier {
            loaded,
            logger,
            pins: LinkPins::new(&opts.pin_path)?,
            sync,
            patterns: opts.ifaces.clone(),
            attached: BTreeSet::new(),
            xdp_patterns: opts.xdp_ifaces.clone(),
            xdp_attached: BTreeMap::new(),
            xdp_targets: Vec::new(),
            masquerade: opts.masquerade_address,
            snat_ports: opts.snat_ports.clone(),
            unsupported: Vec::new(),
            netns_cookie,
            frontend_services: Arc::default(),
        })
    }
}

/// Attaches the socket-LB programs to the `--cgroup` (adopting the links pinned there),
/// detaching those a previous agent left on another cgroup. Returns the netns cookie
/// the programs are to serve, None with socket-LB off.
fn attach_socket_lb(loaded: &mut Loaded, opts: &AgentOptions) -> Result<Option<u64>, EbpfProxierError> {
    let path = match &opts.cgroup {
        SocketLbCgroup::Off => None,
        SocketLbCgroup::Path(p) => Some(p.clone()),
        SocketLbCgroup::Root => {
            let root = cgroup::cgroup2_root()?;
            if root.is_none() {
                warn!(
                    "no cgroup2 mount in /proc/mounts: socket-level load balancing is off (host processes reach services only through the TC path)"
                );
            }
            root
        }
    };
    let Some(path) = path else {
        for gone in cgroup::sweep_all(&opts.pin_path)? {
            info!("socket-LB off, cgroup link pin {gone} detached and removed");
        }
        return Ok(None);
    };
    let links = CgroupLinks::new(&opts.pin_path, &path)?;
    for name in SOCK_PROGRAMS {
        let program = loaded.sock_program(name)?;
        let attach = name.trim_start_matches("kproxy_sock_");
        let how = links.attach(program, attach)?;
        info!("socket-LB {attach} on cgroup {}: {how:?}", path.display());
    }
    for gone in links.sweep_others()? {
        info!("cgroup link pin {gone} of another cgroup detached and removed");
    }
    Ok(Some(cgroup::netns_cookie()?))
}

impl EbpfProxier {
    /// Attaches XDP to new `--xdp-iface` matches and rewrites the redirect targets when
    /// they change.
    fn scan_xdp(&mut self, present: &[Iface]) -> Result<(), EbpfProxierError> {
        if self.xdp_patterns.is_empty() {
            return Ok(());
        }
        for found in iface::matching(&self.xdp_patterns)? {
            if self.xdp_attached.contains_key(&found) {
                continue;
            }
            let program = self.loaded.xdp_program()?;
            let (how, mode, why) = xdp_attach::attach(&self.pins, program, &found)?;
            info!("xdp on {} (ifindex {}): {why}, {how:?}", found.name, found.index);
            self.xdp_attached.insert(found, mode);
        }
        self.xdp_attached.retain(|i, _| present.contains(i));
        let all_generic = self.xdp_attached.values().all(|m| *m == XdpAttachMode::Generic);
        let mut targets = Vec::new();
        let candidates: BTreeSet<&Iface> = self.attached.iter().chain(self.xdp_attached.keys()).collect();
        for iface in candidates {
            if xdp_attach::accepts_redirects(iface, all_generic)? {
                targets.push(iface.index);
            }
        }
        if self.xdp_attached.is_empty() {
            targets.clear();
        }
        targets.sort_unstable();
        if targets != self.xdp_targets {
            self.loaded.maps.set_xdp_targets(&targets)?;
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

/// kproxy's conntrack timeouts under `config`: those kube-proxy sets on the kernel's
/// conntrack (TCP established and CLOSE_WAIT, UDP), netfilter's defaults for the rest.
fn ct_timeouts(config: &ConntrackConfig) -> CtTimeouts {
    let secs = |d: std::time::Duration, default: u32| {
        if d.is_zero() {
            default
        } else {
            u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)
        }
    };
    let d = CtTimeouts::DEFAULT;
    CtTimeouts {
        tcp_established: secs(config.tcp_established_timeout, d.tcp_established),
        tcp_close_wait: secs(config.tcp_close_wait_timeout, d.tcp_close_wait),
        udp: secs(config.udp_timeout, d.udp),
        udp_stream: secs(config.udp_stream_timeout, d.udp_stream),
        ..d
    }
}

/// Warns when the SNAT ports overlap the node's own ephemeral ports: a connection of the
/// node to a backend could then share a reply tuple with a SNATed flow.
fn warn_if_ephemeral(snat: &std::ops::RangeInclusive<u16>) {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";
    let Ok(text) = std::fs::read_to_string(PATH) else {
        return;
    };
    let mut bounds = text.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    if let (Some(lo), Some(hi)) = (bounds.next(), bounds.next())
        && lo <= *snat.end()
        && *snat.start() <= hi
    {
        warn!(
            "--snat-ports {}-{} overlap {PATH} ({lo}-{hi}): the node's own connections may take SNAT ports",
            snat.start(),
            snat.end()
        );
    }
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

impl Proxier for EbpfProxier {
    fn sync(&mut self, model: &Model, node: &NodeInfo, config: &ProxyConfig) -> Result<String, AgentError> {
        let maps = &mut self.loaded.maps;
        let addrs = node_port_addresses(config, node);
        maps.set_node_addresses(&addrs).map_err(EbpfProxierError::from)?;
        maps.set_masquerade_address(Some(self.masquerade))
            .map_err(EbpfProxierError::from)?;
        let policy = MasqueradePolicy::new(config, node)?;
        let snat = SnatSettings {
            node_addr: node.node_ip.and_then(|ip| match ip {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            }),
            cluster_cidr: policy.cluster_cidr,
            ports: self.snat_ports.clone(),
        };
        maps.set_snat(&snat).map_err(EbpfProxierError::from)?;
        maps.set_ct_timeouts(ct_timeouts(&config.conntrack))
            .map_err(EbpfProxierError::from)?;
        maps.set_socket_lb(self.netns_cookie, config.localhost_node_ports(node))
            .map_err(EbpfProxierError::from)?;
        let desired = desired_state(model, &policy, node.node_ip);
        if desired.unsupported != self.unsupported {
            for note in &desired.unsupported {
                warn!("{note}");
            }
            self.unsupported.clone_from(&desired.unsupported);
        }
        let s = self.sync.apply(maps, &desired).map_err(EbpfProxierError::from)?;
        self.frontend_services = Arc::new(
            desired
                .frontends
                .iter()
                .map(|(frontend, state)| (*frontend, state.service.clone()))
                .collect(),
        );
        match verify(maps, &desired, &addrs) {
            Ok(drift) if drift.is_empty() => {}
            Ok(drift) => {
                // Something changed the maps behind our back: trust the maps, not our
                // memory of them, and write the difference again.
                log_drift(&drift);
                self.sync = MapSync::adopt(maps).map_err(EbpfProxierError::from)?;
                let fixed = self.sync.apply(maps, &desired).map_err(EbpfProxierError::from)?;
                info!("drift repaired: {} map changes from the model", fixed.changes());
            }
            Err(err) => warn!(
                "drift check (kproxy inspect --verify) failed: {}",
                error_chain(&err)
            ),
        }
        // kube-proxy's conntrack cleanup, and affinity that would lead to a former endpoint.
        let stale_udp = maps
            .remove_stale_udp_flows(&UdpServing::new(model))
            .map_err(EbpfProxierError::from)?;
        let stale_affinity = maps.remove_stale_affinity().map_err(EbpfProxierError::from)?;
        if stale_udp + stale_affinity > 0 {
            info!(
                "removed {stale_udp} conntrack entries of UDP flows to former endpoints, \
                 {stale_affinity} affinity entries"
            );
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
        let present = iface::list().map_err(EbpfProxierError::from)?;
        let wanted = iface::matching(&self.patterns).map_err(EbpfProxierError::from)?;
        for found in &wanted {
            if self.attached.contains(found) {
                continue;
            }
            // Egress first: a flow DNATed at ingress finds its reverse NAT in place.
            let program = self.loaded.tc_egress_program().map_err(EbpfProxierError::from)?;
            let how =
                attach::tc::attach_egress(&self.pins, program, found).map_err(EbpfProxierError::from)?;
            info!("tc egress on {} (ifindex {}): {how:?}", found.name, found.index);
            let program = self.loaded.tc_program().map_err(EbpfProxierError::from)?;
            let how = attach::tc::attach(&self.pins, program, found).map_err(EbpfProxierError::from)?;
            info!("tc ingress on {} (ifindex {}): {how:?}", found.name, found.index);
            self.attached.insert(found.clone());
        }
        self.attached.retain(|i| present.contains(i));
        self.scan_xdp(&present)?;
        for gone in self.pins.sweep(&present, false).map_err(EbpfProxierError::from)? {
            info!("interface gone, link pin {gone} removed");
        }
        Ok(())
    }

    fn tick(&mut self) {
        if let Some(logger) = self.logger.as_mut() {
            logger.flush();
        }
    }

    fn report(&self, metrics: &Metrics) {
        metrics.frontend_services(self.frontend_services.clone());
    }

    fn describe(&self, applied: &mut Applied) {
        applied.mode = Mode::Ebpf;
        applied.masquerade_address = Some(self.masquerade.into());
    }
}
