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
mod source;
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
pub use self::source::ModelSourceOptions;
use self::source::{Loaded, ModelSource};
pub use crate::record::Mode;
use crate::{
    cluster::ClusterError,
    config::{ConfigError, ProxyConfig},
    error_chain,
    iptables::Flavor,
    manifests::ManifestError,
    model::{Model, NodeInfo},
    record::{self, Applied},
};

/// How often the loop wakes: a model change is applied within about two of these (the
/// file watcher waits for a file to settle), or at `minSyncPeriod` after the last sync.
const TICK: Duration = Duration::from_millis(100);
/// How often interfaces are rescanned for new matches (pods come and go).
const IFACE_SCAN: Duration = Duration::from_millis(500);

/// Everything `kproxy run` is told.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Model files, or the API server.
    pub source: ModelSourceOptions,
    pub config: Option<PathBuf>,
    /// `--hostname-override`, over the configuration's `hostnameOverride`.
    pub hostname_override: Option<String>,
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
    #[error("cluster mode")]
    Cluster(#[from] ClusterError),
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
    // reported by the first sync): health servers, conntrack setup, map sizes, pacing.
    let start_config = load_config(opts).unwrap_or_default();
    let metrics = Arc::new(Metrics::new(
        (opts.mode == Mode::Ebpf).then(|| opts.pin_path.clone()),
        opts.mode == Mode::Iptables,
    ));
    let health = start_health_servers(opts, &start_config, &metrics)?;
    conntrack::apply(&start_config.conntrack);
    let node_name = node_info(&start_config, opts.node_ip)?.name;
    // kube-proxy's precedence: --kubeconfig, then clientConnection.kubeconfig, then the
    // in-cluster configuration.
    let source_options = match &opts.source {
        ModelSourceOptions::Cluster {
            kubeconfig: None,
            service_proxy_name,
        } => ModelSourceOptions::Cluster {
            kubeconfig: start_config.kubeconfig.clone(),
            service_proxy_name: service_proxy_name.clone(),
        },
        given => given.clone(),
    };
    let mut source = ModelSource::start(&source_options, &node_name, opts.node_ip.is_some())?;
    let mut proxier: Box<dyn Proxier> = match opts.mode {
        Mode::Ebpf => Box::new(ebpf::EbpfProxier::start(opts, &start_config)?),
        Mode::Iptables => Box::new(iptables::IptablesProxier::new(opts)),
    };
    let mut last_scan = Instant::now();
    proxier.scan_interfaces()?;
    let mut state = SyncState {
        syncs: 0,
        health,
        metrics,
        applied: None,
    };
    let pacing = SyncPacing {
        min_period: start_config.min_sync_period,
        period: start_config.sync_period,
    };
    // Files are read at once; the API server's objects once its first lists are in.
    let mut pending = source.ready();
    let mut last_sync: Option<Instant> = None;
    let mut synced = false;
    loop {
        if signals::stopped(stop) || (opts.once && synced) {
            break;
        }
        if source.poll() {
            if !pending {
                state.health.queued_update();
            }
            pending = true;
        }
        match pacing.due(pending, last_sync, source.ready()) {
            Some(kind) => {
                pending = false;
                last_sync = Some(Instant::now());
                synced |= sync_once(opts, &mut source, proxier.as_mut(), &mut state, kind);
            }
            None => thread::sleep(TICK),
        }
        proxier.tick();
        if last_scan.elapsed() >= IFACE_SCAN {
            if let Err(err) = proxier.scan_interfaces() {
                warn!("{}", error_chain(&err));
            }
            last_scan = Instant::now();
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

/// kube-proxy's sync pacing (its `BoundedFrequencyRunner`): a change is applied at once
/// unless the last sync was less than `minSyncPeriod` ago, so a burst of changes becomes
/// one sync; and every `syncPeriod` the whole state is synced again.
struct SyncPacing {
    min_period: Duration,
    period: Duration,
}

/// Why a sync runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncKind {
    /// The model changed (or it is the first).
    Change,
    /// `syncPeriod` passed without a change.
    Periodic,
}

impl SyncPacing {
    fn due(&self, pending: bool, last: Option<Instant>, ready: bool) -> Option<SyncKind> {
        let since = last.map(|t| t.elapsed());
        if pending && since.is_none_or(|since| since >= self.min_period) {
            Some(SyncKind::Change)
        } else if ready && since.is_some_and(|since| since >= self.period) {
            Some(SyncKind::Periodic)
        } else {
            None
        }
    }
}

/// The configuration file with the command line's overrides.
fn load_config(opts: &AgentOptions) -> Result<ProxyConfig, AgentError> {
    let mut config = ProxyConfig::load(opts.config.as_deref())?;
    if let Some(name) = &opts.hostname_override {
        config.hostname_override = Some(name.clone());
    }
    Ok(config)
}

/// Loads the model and applies it; on any failure logs it and keeps the last state.
fn sync_once(
    opts: &AgentOptions,
    source: &mut ModelSource,
    proxier: &mut dyn Proxier,
    state: &mut SyncState,
    kind: SyncKind,
) -> bool {
    let started = Instant::now();
    let loaded = (|| {
        let config = load_config(opts)?;
        let node = node_info(&config, opts.node_ip)?;
        let loaded = source.load(&config, node)?;
        Ok::<_, AgentError>((config, loaded))
    })();
    let (
        config,
        Loaded {
            model,
            node,
            trigger_times,
            document,
        },
    ) = match loaded {
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
            if kind == SyncKind::Change {
                state.syncs += 1;
            }
            let syncs = state.syncs;
            let now = SystemTime::now();
            state
                .metrics
                .synced(programming_time, now, state.applied.as_ref(), &model);
            state.metrics.network_programmed(now, &trigger_times);
            proxier.report(&state.metrics);
            // Health checks open before the sync is reported: whoever waits for the
            // "sync #N" line finds them listening.
            state.health.synced(&model, &node, &config);
            let ports = model.service_ports.len();
            let services: std::collections::BTreeSet<String> =
                model.service_ports.iter().map(|p| p.name.service()).collect();
            let line = format!(
                "{} services, {ports} ports, {} endpoints; {summary}; {:.1} ms (datapath {programming_ms:.1} ms)",
                services.len(),
                model.total_endpoints(),
                started.elapsed().as_secs_f64() * 1000.0
            );
            match kind {
                SyncKind::Change => info!("sync #{syncs}: {line}"),
                // Not "sync #N": scripts and tests count those to follow changes.
                SyncKind::Periodic => log::debug!("periodic resync: {line}"),
            }
            record_state(opts, proxier, &node, syncs, document.as_deref());
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

fn record_state(
    opts: &AgentOptions,
    proxier: &dyn Proxier,
    node: &NodeInfo,
    sync: u64,
    cluster_document: Option<&str>,
) {
    let model_paths = match (&opts.source, cluster_document) {
        (ModelSourceOptions::Files(paths), _) => paths.clone(),
        (ModelSourceOptions::Cluster { .. }, Some(document)) => {
            // The API server's objects, as a model file the record copies.
            let path = record::cluster_snapshot_path(&opts.pin_path);
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, document));
            if let Err(err) = written {
                warn!(
                    "write {}: {err} (`kproxy inspect` will show an older model)",
                    path.display()
                );
                return;
            }
            vec![path]
        }
        (ModelSourceOptions::Cluster { .. }, None) => Vec::new(),
    };
    let mut applied = Applied {
        node_name: node.name.clone(),
        node_ip: node.node_ip,
        node_addresses: node.addresses.clone(),
        model_paths,
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
