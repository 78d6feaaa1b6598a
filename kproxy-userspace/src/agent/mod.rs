//! `kproxy run`: the agent. It loads the model, programs one datapath from it (eBPF
//! maps and programs, or kube-proxy's iptables rules), then watches the model files
//! and the interfaces and keeps the datapath in step, until SIGINT/SIGTERM.
//!
//! On exit it leaves the datapath serving (pinned programs, links and maps, or the
//! rules), as kube-proxy does; a restarted agent adopts that state, and `kproxy
//! cleanup` removes it. A model that fails to load is reported and the last good
//! state stays in force.

mod conntrack;
mod ebpf;
mod health;
mod iptables;
mod metrics;
mod node;
mod pin_lock;
pub mod signals;
mod watch;

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use log::{error, info, warn};

use self::health::HealthServers;
pub use self::health::{HealthError, HealthzBind};
use self::metrics::Metrics;
pub use self::node::node_info;
use self::watch::ModelWatcher;
pub use crate::record::Mode;
use crate::{
    config::{ConfigError, ProxyConfig},
    error_chain,
    iptables::Flavor,
    manifests::{self, ManifestError},
    model::{Model, NodeInfo},
    record::{self, Applied},
};

/// How often the loop wakes: model changes are applied within about two of these
/// (the watcher waits for a file to settle), well inside a second.
const TICK: Duration = Duration::from_millis(100);
/// How often interfaces are rescanned for new matches (pods come and go).
const IFACE_SCAN: Duration = Duration::from_millis(500);

/// Everything `kproxy run` is told.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub models: Vec<PathBuf>,
    pub config: Option<PathBuf>,
    pub mode: Mode,
    /// Interface name globs the TC program is attached to.
    pub ifaces: Vec<String>,
    /// Interface name globs the XDP program is attached to (external interfaces).
    pub xdp_ifaces: Vec<String>,
    pub pin_path: PathBuf,
    pub iptables_backend: Flavor,
    /// The node's primary IP; default: its first non-loopback IPv4 address.
    pub node_ip: Option<std::net::IpAddr>,
    /// Source address of masqueraded (hairpin) flows in eBPF mode.
    pub masquerade_address: Ipv4Addr,
    /// Source ports the eBPF datapath allocates to SNATed flows.
    pub snat_ports: std::ops::RangeInclusive<u16>,
    /// Stop after the first sync (for scripts and tests): the datapath stays.
    pub once: bool,
    /// `--healthz-bind-address`, over the configuration's `healthzBindAddress`.
    pub healthz_bind_address: Option<HealthzBind>,
    /// `--metrics-bind-address`, over the configuration's `metricsBindAddress`.
    pub metrics_bind_address: Option<HealthzBind>,
    /// `--cgroup`: where the socket-LB programs attach (eBPF mode).
    pub cgroup: SocketLbCgroup,
}

/// Where the socket-LB programs attach (`kproxy run --cgroup`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SocketLbCgroup {
    /// The root of the cgroup v2 mount (every process of the node); off, with a warning,
    /// if none is mounted.
    #[default]
    Root,
    /// Socket-LB off (`--cgroup ""`).
    Off,
    /// This cgroup v2 directory.
    Path(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Model(#[from] ManifestError),
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfProxierError),
    #[error(transparent)]
    Iptables(#[from] iptables::IptablesProxierError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error(transparent)]
    PinLock(#[from] pin_lock::PinLockError),
    #[error("install signal handlers: `sigaction` failed")]
    Signals(#[source] nix::Error),
    #[error("read the node's name and addresses: `{call}` failed")]
    Node {
        call: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// One writer the agent keeps in step with the model (kube-proxy's word: a proxier).
trait Proxier {
    /// Applies `model`; returns a one-line summary of what changed.
    fn sync(&mut self, model: &Model, node: &NodeInfo, config: &ProxyConfig) -> Result<String, AgentError>;
    /// Attaches to interfaces that appeared since the last call (eBPF only).
    fn scan_interfaces(&mut self) -> Result<(), AgentError> {
        Ok(())
    }
    /// Periodic housekeeping (eBPF: drains the programs' log buffer).
    fn tick(&mut self) {}
    /// After a successful sync: the writer's own facts for `/metrics`.
    fn report(&self, _metrics: &Metrics) {}
    /// Facts for the state record.
    fn describe(&self, applied: &mut Applied);
}

/// Runs the agent until SIGINT/SIGTERM (or after one sync with `once`).
pub fn run(opts: &AgentOptions) -> Result<(), AgentError> {
    let stop = signals::install().map_err(AgentError::Signals)?;
    // The maps and links under the pin path are one agent's at a time.
    let _pin_lock = match opts.mode {
        Mode::Ebpf => match pin_lock::acquire(&opts.pin_path, stop)? {
            Some(lock) => Some(lock),
            None => return Ok(()),
        },
        Mode::Iptables => None,
    };
    // Read once at start as kube-proxy reads its configuration (a broken file is
    // reported by the first sync): health servers, conntrack setup, map sizes.
    let start_config = ProxyConfig::load(opts.config.as_deref()).unwrap_or_default();
    let metrics = Arc::new(Metrics::new(
        (opts.mode == Mode::Ebpf).then(|| opts.pin_path.clone()),
        opts.mode == Mode::Iptables,
    ));
    let health = start_health_servers(opts, &start_config, &metrics)?;
    conntrack::apply(&start_config.conntrack);
    let mut proxier: Box<dyn Proxier> = match opts.mode {
        Mode::Ebpf => Box::new(ebpf::EbpfProxier::start(opts, &start_config)?),
        Mode::Iptables => Box::new(iptables::IptablesProxier::new(opts)),
    };
    let mut watcher = ModelWatcher::new(opts.models.clone());
    let mut last_scan = Instant::now();
    proxier.scan_interfaces()?;
    let mut state = SyncState {
        syncs: 0,
        health,
        metrics,
        applied: None,
    };
    let mut synced = sync_once(opts, proxier.as_mut(), &mut state);
    loop {
        if signals::stopped(stop) || (opts.once && synced) {
            break;
        }
        thread::sleep(TICK);
        proxier.tick();
        if last_scan.elapsed() >= IFACE_SCAN {
            if let Err(err) = proxier.scan_interfaces() {
                warn!("{}", error_chain(&err));
            }
            last_scan = Instant::now();
        }
        if watcher.poll() {
            state.health.queued_update();
            synced |= sync_once(opts, proxier.as_mut(), &mut state);
        }
    }
    proxier.tick();
    info!(
        "stopping; the datapath stays in place (`kproxy cleanup --pin-path {}` removes it)",
        opts.pin_path.display()
    );
    Ok(())
}

/// The health and metrics servers, with the bind addresses and timeout read once at
/// start as kube-proxy reads its configuration (a broken file is reported by the first
/// sync).
fn start_health_servers(
    opts: &AgentOptions,
    config: &ProxyConfig,
    metrics: &Arc<Metrics>,
) -> Result<HealthServers, AgentError> {
    let healthz = opts
        .healthz_bind_address
        .map_or(config.healthz_bind_address, HealthzBind::address);
    let metrics_at = opts
        .metrics_bind_address
        .map_or(config.metrics_bind_address, HealthzBind::address);
    Ok(HealthServers::start(
        healthz,
        metrics_at.map(|address| (address, metrics.clone())),
        config.health_timeout(),
    )?)
}

/// What the loop keeps from one sync to the next.
struct SyncState {
    syncs: u64,
    health: HealthServers,
    metrics: Arc<Metrics>,
    /// The model the last successful sync applied (changes are counted against it).
    applied: Option<Model>,
}

/// Loads the model and applies it; on any failure logs it and keeps the last state.
fn sync_once(opts: &AgentOptions, proxier: &mut dyn Proxier, state: &mut SyncState) -> bool {
    let started = Instant::now();
    let loaded = (|| {
        let config = ProxyConfig::load(opts.config.as_deref())?;
        let node = node_info(&config, opts.node_ip)?;
        let model = manifests::load(&opts.models, &config, &node)?;
        Ok::<_, AgentError>((config, node, model))
    })();
    let (config, node, model) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => {
            error!(
                "model not applied, keeping the last good state: {}",
                error_chain(&err)
            );
            return false;
        }
    };
    // Timed apart from reading the model: the bench compares what each datapath takes
    // to program (iptables-restore or map writes), not YAML parsing.
    let programming = Instant::now();
    let synced = proxier.sync(&model, &node, &config);
    let programming_time = programming.elapsed();
    let programming_ms = programming_time.as_secs_f64() * 1000.0;
    match synced {
        Ok(summary) => {
            state.syncs += 1;
            let syncs = state.syncs;
            state.metrics.synced(
                programming_time,
                SystemTime::now(),
                state.applied.as_ref(),
                &model,
            );
            proxier.report(&state.metrics);
            // Health checks open before the sync is reported: whoever waits for the
            // "sync #N" line finds them listening.
            state.health.synced(&model, &node, &config);
            let ports = model.service_ports.len();
            let services: std::collections::BTreeSet<String> =
                model.service_ports.iter().map(|p| p.name.service()).collect();
            info!(
                "sync #{syncs}: {} services, {ports} ports, {} endpoints; {summary}; {:.1} ms (datapath {programming_ms:.1} ms)",
                services.len(),
                model.total_endpoints(),
                started.elapsed().as_secs_f64() * 1000.0
            );
            record_state(opts, proxier, &node, syncs);
            state.applied = Some(model);
            true
        }
        Err(err) => {
            error!(
                "sync failed, the datapath may be partly updated; retrying on the next change: {}",
                error_chain(&err)
            );
            false
        }
    }
}

fn record_state(opts: &AgentOptions, proxier: &dyn Proxier, node: &NodeInfo, sync: u64) {
    let mut applied = Applied {
        node_name: node.name.clone(),
        node_ip: node.node_ip,
        node_addresses: node.addresses.clone(),
        model_paths: opts.models.clone(),
        sync,
        applied_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..Applied::default()
    };
    proxier.describe(&mut applied);
    if let Err(err) = record::record(&opts.pin_path, &applied, opts.config.as_deref()) {
        warn!(
            "{} (`kproxy inspect` will show an older model)",
            error_chain(&err)
        );
    }
}
