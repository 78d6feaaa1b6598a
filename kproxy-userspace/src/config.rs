//! kube-proxy's configuration file (`KubeProxyConfiguration`,
//! kubeproxy.config.k8s.io/v1alpha1): the settings that shape the service rules.
//! A missing file means kube-proxy's defaults.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::model::{Cidr, IpFamily, NodeInfo, parse_ip_sloppy};

/// kube-proxy's health server port (`ports.ProxyHealthzPort`).
pub const DEFAULT_HEALTHZ_PORT: u16 = 10256;
/// kube-proxy's `healthzBindAddress` default: every IPv4 address, port 10256.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_HEALTHZ_PORT);
/// kube-proxy's metrics port (`ports.ProxyStatusPort`).
pub const DEFAULT_METRICS_PORT: u16 = 10249;
/// kube-proxy's `metricsBindAddress` default: loopback, port 10249.
pub const DEFAULT_METRICS_BIND_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_METRICS_PORT);
/// kube-proxy's `iptables.syncPeriod` default.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
/// kube-proxy's `iptables.minSyncPeriod` default.
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
/// The feature gate for `trafficDistribution: PreferSameNode` node hints: alpha (off) in
/// 1.33, beta (on) in 1.34, GA and locked on in 1.35.
pub const PREFER_SAME_TRAFFIC_DISTRIBUTION: &str = "PreferSameTrafficDistribution";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: field {field}: {message}")]
    Field {
        path: String,
        /// The field's path (`iptables.masqueradeBit`).
        field: String,
        message: String,
    },
    #[error("detectLocalMode {mode}: {message}")]
    LocalDetection { mode: &'static str, message: String },
}

/// How kube-proxy tells pod traffic from other traffic (`detectLocalMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DetectLocalMode {
    #[default]
    ClusterCidr,
    NodeCidr,
    BridgeInterface,
    InterfaceNamePrefix,
}

impl DetectLocalMode {
    fn api_name(self) -> &'static str {
        match self {
            DetectLocalMode::ClusterCidr => "ClusterCIDR",
            DetectLocalMode::NodeCidr => "NodeCIDR",
            DetectLocalMode::BridgeInterface => "BridgeInterface",
            DetectLocalMode::InterfaceNamePrefix => "InterfaceNamePrefix",
        }
    }
}

/// `mode`, for the modes kproxy implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// `iptables`: kube-proxy's own rules.
    Iptables,
    /// `ebpf`: kproxy's datapath (kproxy's value; kube-proxy has no such mode).
    Ebpf,
}

/// The configuration settings kproxy honours, with kube-proxy's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// `mode`; `None` when unset or empty (the agent's own default applies).
    pub mode: Option<ProxyMode>,
    /// `featureGates` as written (kube-proxy's defaults apply to absent gates).
    pub feature_gates: BTreeMap<String, bool>,
    /// `clientConnection.kubeconfig`; `None` when empty.
    pub kubeconfig: Option<PathBuf>,
    /// `bindAddress`: the node's primary IP, when set to a specific address.
    pub bind_address: Option<IpAddr>,
    /// The node name; overrides the host name.
    pub hostname_override: Option<String>,
    /// `clusterCIDR`: pod networks, at most one per family.
    pub cluster_cidrs: Vec<Cidr>,
    pub detect_local_mode: DetectLocalMode,
    pub bridge_interface: String,
    pub interface_name_prefix: String,
    pub masquerade_all: bool,
    /// `iptables.masqueradeBit`: the mark bit for traffic needing SNAT.
    pub masquerade_bit: u8,
    /// `iptables.localhostNodePorts`: NodePorts also answer on 127.0.0.0/8 (IPv4).
    pub localhost_node_ports: bool,
    /// `nodePortAddresses`: empty = every local address.
    pub node_port_addresses: Vec<NodePortAddress>,
    /// `healthzBindAddress`: where `/healthz` and `/livez` are served; `None` = disabled.
    pub healthz_bind_address: Option<SocketAddr>,
    /// `metricsBindAddress`: where Prometheus `/metrics` is served; `None` = disabled.
    pub metrics_bind_address: Option<SocketAddr>,
    /// `iptables.syncPeriod`: kube-proxy resyncs this often, and calls itself unhealthy
    /// when a queued update waits twice as long.
    pub sync_period: Duration,
    /// `iptables.minSyncPeriod`: at least this long between two syncs, so a burst of
    /// changes becomes one sync (zero in the file means the 1s default, as upstream).
    pub min_sync_period: Duration,
    /// `conntrack`: the kernel conntrack table's size and timeouts.
    pub conntrack: ConntrackConfig,
}

/// The `conntrack` section: what kube-proxy sets on the kernel's conntrack at startup
/// (a zero leaves the kernel's value), and what sizes and times kproxy's own table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// `maxPerCore`: flows per CPU (0: leave `nf_conntrack_max` alone).
    pub max_per_core: u32,
    /// `min`: the table holds at least this many flows.
    pub min: u32,
    /// `tcpEstablishedTimeout`: idle lifetime of an established TCP flow.
    pub tcp_established_timeout: Duration,
    /// `tcpCloseWaitTimeout`: idle lifetime of a TCP flow in CLOSE_WAIT.
    pub tcp_close_wait_timeout: Duration,
    /// `tcpBeLiberal`: accept out-of-window TCP packets instead of marking them INVALID.
    pub tcp_be_liberal: bool,
    /// `udpTimeout`: idle lifetime of a UDP flow seen in one direction (0: the kernel's).
    pub udp_timeout: Duration,
    /// `udpStreamTimeout`: idle lifetime of a UDP flow seen in both (0: the kernel's).
    pub udp_stream_timeout: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            max_per_core: 32_768,
            min: 131_072,
            tcp_established_timeout: Duration::from_hours(24),
            tcp_close_wait_timeout: Duration::from_hours(1),
            tcp_be_liberal: false,
            udp_timeout: Duration::ZERO,
            udp_stream_timeout: Duration::ZERO,
        }
    }
}

impl ConntrackConfig {
    /// kube-proxy's `nf_conntrack_max` for a node with `cpus` CPUs: `maxPerCore` per
    /// CPU, at least `min`; None when `maxPerCore` is 0 (leave it).
    pub fn max_flows(&self, cpus: u32) -> Option<u32> {
        (self.max_per_core > 0).then(|| self.max_per_core.saturating_mul(cpus).max(self.min))
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            mode: None,
            feature_gates: BTreeMap::new(),
            kubeconfig: None,
            bind_address: None,
            hostname_override: None,
            cluster_cidrs: Vec::new(),
            detect_local_mode: DetectLocalMode::ClusterCidr,
            bridge_interface: String::new(),
            interface_name_prefix: String::new(),
            masquerade_all: false,
            masquerade_bit: 14,
            localhost_node_ports: true,
            node_port_addresses: Vec::new(),
            healthz_bind_address: Some(DEFAULT_HEALTHZ_BIND_ADDRESS),
            metrics_bind_address: Some(DEFAULT_METRICS_BIND_ADDRESS),
            sync_period: DEFAULT_SYNC_PERIOD,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
            conntrack: ConntrackConfig::default(),
        }
    }
}

/// One `nodePortAddresses` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePortAddress {
    Cidr(Cidr),
    /// `primary`: the node's primary IPs.
    Primary,
}

/// How pod traffic is recognised (kube-proxy's `LocalTrafficDetector`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalTraffic {
    /// No detector: no masquerade of off-cluster traffic, no pod short-circuit.
    Unknown,
    /// Source address in the pod network.
    SourceCidr(Cidr),
    /// Arrives on this interface.
    Interface(String),
    /// Arrives on an interface whose name starts with this prefix.
    InterfacePrefix(String),
}

/// The node addresses NodePorts answer on, for one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local address (`nodePortAddresses` empty or containing `0.0.0.0/0`/`::/0`).
    All,
    /// These node addresses only (sorted).
    Only(Vec<IpAddr>),
}

/// The file as written: every field of kubeproxy.config.k8s.io/v1alpha1
/// `KubeProxyConfiguration` (Kubernetes 1.33–1.35), each optional (`null` is unset, as
/// kube-proxy's pointers are). Every struct denies unknown fields, so a typo anywhere is
/// an error naming its path. Fields kproxy does not act on are typed (a value of the
/// wrong type is still an error) and then ignored; each says so.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// The ignored fields are read only for their types to be checked.
#[allow(dead_code)]
struct RawConfig {
    api_version: Option<String>,
    kind: Option<String>,
    /// Only `PreferSameTrafficDistribution` changes what kproxy does; any name is
    /// accepted (kproxy does not carry kube-proxy's list of gates).
    feature_gates: Option<BTreeMap<String, bool>>,
    client_connection: Option<RawClientConnection>,
    /// Ignored: kproxy logs through `RUST_LOG`.
    logging: Option<RawLogging>,
    hostname_override: Option<String>,
    bind_address: Option<String>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    /// Ignored: kproxy always fails when a server cannot bind.
    bind_address_hard_fail: Option<bool>,
    /// Ignored: no pprof handlers.
    enable_profiling: Option<bool>,
    /// Ignored: kproxy hides no metrics.
    show_hidden_metrics_for_version: Option<String>,
    mode: Option<String>,
    iptables: Option<RawIptables>,
    /// Ignored (kproxy has no IPVS mode); durations are still checked.
    ipvs: Option<RawIpvs>,
    /// Ignored until kproxy has an nftables writer; durations and the bit are still checked.
    nftables: Option<RawNftables>,
    /// Ignored: Windows only.
    winkernel: Option<RawWinkernel>,
    detect_local_mode: Option<String>,
    detect_local: Option<RawDetectLocal>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    node_port_addresses: Option<Vec<String>>,
    /// Ignored (the container runtime sets the agent's OOM score); the range is checked.
    oom_score_adj: Option<i32>,
    conntrack: Option<RawConntrack>,
    /// Ignored: the API watches have no periodic resync; must still be a duration.
    config_sync_period: Option<String>,
    /// Ignored: unused by kube-proxy too since the userspace proxy went away.
    port_range: Option<String>,
    /// Ignored: Windows only.
    windows_run_as_service: Option<bool>,
}

/// `clientConnection` (component-base's `ClientConnectionConfiguration`): only the
/// kubeconfig path is kept.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// The ignored fields are read only for their types to be checked.
#[allow(dead_code)]
struct RawClientConnection {
    kubeconfig: Option<String>,
    accept_content_types: Option<String>,
    content_type: Option<String>,
    qps: Option<f32>,
    burst: Option<i32>,
}

/// `logging` (component-base's `LoggingConfiguration`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// The ignored fields are read only for their types to be checked.
#[allow(dead_code)]
struct RawLogging {
    format: Option<String>,
    /// Nanoseconds or a duration string: kept as written.
    flush_frequency: Option<serde_json::Value>,
    verbosity: Option<u32>,
    vmodule: Option<Vec<RawVModule>>,
    options: Option<RawLoggingOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// The ignored fields are read only for their types to be checked.
#[allow(dead_code)]
struct RawVModule {
    file_path: Option<String>,
    verbosity: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// The ignored fields are read only for their types to be checked.
#[allow(dead_code)]
struct RawLoggingOptions {
    text: Option<RawLogOutput>,
    json: Option<RawLogOutput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// The ignored fields are read only for their types to be checked.
#[allow(dead_code)]
struct RawLogOutput {
    split_stream: Option<bool>,
    /// A resource quantity (`"0"`, `1Mi`, or a number): kept as written.
    info_buffer_size: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConntrack {
    max_per_core: Option<i32>,
    min: Option<i32>,
    tcp_established_timeout: Option<String>,
    tcp_close_wait_timeout: Option<String>,
    tcp_be_liberal: Option<bool>,
    udp_timeout: Option<String>,
    udp_stream_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawDetectLocal {
    bridge_interface: Option<String>,
    interface_name_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// The ignored fields are read only for their types to be checked.
#[allow(dead_code)]
struct RawIptables {
    masquerade_all: Option<bool>,
    masquerade_bit: Option<i32>,
    localhost_node_ports: Option<bool>,
    /// Ignored: newer than 1.35 (SNAT to the node's InternalIP); accepted so the file a
    /// newer kubeadm writes (`snatNodeInternalIP: null`) still loads.
    #[serde(rename = "snatNodeInternalIP")]
    snat_node_internal_ip: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// The ignored fields are read only for their types to be checked.
#[allow(dead_code)]
struct RawIpvs {
    sync_period: Option<String>,
    min_sync_period: Option<String>,
    scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    strict_arp: Option<bool>,
    tcp_timeout: Option<String>,
    tcp_fin_timeout: Option<String>,
    udp_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// The ignored fields are read only for their types to be checked.
#[allow(dead_code)]
struct RawNftables {
    masquerade_bit: Option<i32>,
    masquerade_all: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
// The ignored fields are read only for their types to be checked.
#[allow(dead_code)]
struct RawWinkernel {
    network_name: Option<String>,
    source_vip: Option<String>,
    #[serde(rename = "enableDSR")]
    enable_dsr: Option<bool>,
    root_hns_endpoint_name: Option<String>,
    forward_health_check_vip: Option<bool>,
}

impl ProxyConfig {
    /// Reads the file at `path`; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(ProxyConfig::default());
        };
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses a `KubeProxyConfiguration` document; `origin` names it in errors.
    ///
    /// Strict, as kube-proxy's first decoding attempt is: an unknown or duplicate field
    /// is an error naming it. (kube-proxy then retries a v1alpha1 file leniently and only
    /// logs the strict error; kproxy stops at the first attempt, so a typo never passes
    /// silently.) Zero durations and unset values get kube-proxy's defaults.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        // Through a JSON value, as kube-proxy converts YAML to JSON before decoding;
        // serde_path_to_error then names the path of a bad or unknown field.
        let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        let value = match value {
            serde_json::Value::Null => serde_json::Value::Object(serde_json::Map::default()),
            value => value,
        };
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let message = e.inner().to_string();
            // serde lists every expected field after an unknown one: the name is enough.
            let message = match message.split_once(", expected") {
                Some((head, _)) if message.starts_with("unknown field") => head.to_string(),
                _ => message,
            };
            ConfigError::Field {
                path: origin.into(),
                field: e.path().to_string(),
                message,
            }
        })?;
        let field_error = |field: &str, message: String| ConfigError::Field {
            path: origin.into(),
            field: field.into(),
            message,
        };
        if let Some(kind) = raw.kind.as_deref().filter(|k| *k != "KubeProxyConfiguration") {
            return Err(field_error(
                "kind",
                format!("{kind:?} is not KubeProxyConfiguration"),
            ));
        }
        if let Some(api) = raw
            .api_version
            .as_deref()
            .filter(|a| *a != "kubeproxy.config.k8s.io/v1alpha1")
        {
            return Err(field_error(
                "apiVersion",
                format!("{api:?} is not kubeproxy.config.k8s.io/v1alpha1"),
            ));
        }
        // A duration field: unset or zero gives `default` (kube-proxy's defaulting runs
        // before its validation), negative or unparsable is an error.
        let defaulted = |field: &str, value: Option<&str>, default: Duration| match value {
            None => Ok(default),
            Some(text) => match parse_duration(text) {
                Some(d) if d.is_zero() => Ok(default),
                Some(d) => Ok(d),
                None => Err(field_error(field, format!("{text:?} is not a duration >= 0"))),
            },
        };
        let mut config = ProxyConfig {
            hostname_override: raw
                .hostname_override
                .filter(|h| !h.trim().is_empty())
                .map(|h| h.trim().to_lowercase()),
            feature_gates: raw.feature_gates.unwrap_or_default(),
            ..ProxyConfig::default()
        };
        config.mode = match raw.mode.as_deref().unwrap_or("") {
            "" => None,
            "iptables" => Some(ProxyMode::Iptables),
            "ebpf" => Some(ProxyMode::Ebpf),
            other @ ("ipvs" | "nftables" | "kernelspace") => {
                return Err(field_error(
                    "mode",
                    format!("kube-proxy's {other:?} mode is not one kproxy implements (iptables or ebpf)"),
                ));
            }
            other => {
                return Err(field_error(
                    "mode",
                    format!("unknown mode {other:?} (iptables or ebpf)"),
                ));
            }
        };
        if let Some(client) = raw.client_connection {
            if let Some(burst) = client.burst.filter(|b| *b < 0) {
                return Err(field_error(
                    "clientConnection.burst",
                    format!("{burst} is not >= 0"),
                ));
            }
            config.kubeconfig = client.kubeconfig.filter(|k| !k.is_empty()).map(PathBuf::from);
        }
        if let Some(text) = raw.bind_address.as_deref().filter(|t| !t.is_empty()) {
            let ip = parse_ip_sloppy(text)
                .ok_or_else(|| field_error("bindAddress", format!("{text:?} is not an IP address")))?;
            // kube-proxy: an unspecified address means "find the node IP", not an override.
            config.bind_address = (!ip.is_unspecified()).then_some(ip);
            if ip.is_ipv6() {
                config.healthz_bind_address = Some(SocketAddr::new(
                    Ipv6Addr::UNSPECIFIED.into(),
                    DEFAULT_HEALTHZ_PORT,
                ));
                config.metrics_bind_address =
                    Some(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), DEFAULT_METRICS_PORT));
            }
        }
        if let Some(adj) = raw.oom_score_adj.filter(|a| !(-1000..=1000).contains(a)) {
            return Err(field_error(
                "oomScoreAdj",
                format!("{adj} is not in -1000..=1000"),
            ));
        }
        defaulted(
            "configSyncPeriod",
            raw.config_sync_period.as_deref(),
            Duration::from_mins(15),
        )?;
        for text in raw
            .cluster_cidr
            .iter()
            .flat_map(|c| c.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            let cidr = Cidr::parse_sloppy(text)
                .ok_or_else(|| field_error("clusterCIDR", format!("{text:?} is not a CIDR")))?;
            config.cluster_cidrs.push(cidr);
        }
        config.detect_local_mode = match raw.detect_local_mode.as_deref().unwrap_or("") {
            "" | "ClusterCIDR" => DetectLocalMode::ClusterCidr,
            "NodeCIDR" => DetectLocalMode::NodeCidr,
            "BridgeInterface" => DetectLocalMode::BridgeInterface,
            "InterfaceNamePrefix" => DetectLocalMode::InterfaceNamePrefix,
            other => return Err(field_error("detectLocalMode", format!("unknown mode {other:?}"))),
        };
        let detect = raw.detect_local.unwrap_or_default();
        config.bridge_interface = detect.bridge_interface.unwrap_or_default();
        config.interface_name_prefix = detect.interface_name_prefix.unwrap_or_default();
        let masquerade_bit = |field: &str, bit: i32| {
            u8::try_from(bit)
                .ok()
                .filter(|b| *b <= 31)
                .ok_or_else(|| field_error(field, format!("{bit} is not in 0..=31")))
        };
        let iptables = raw.iptables.unwrap_or_default();
        config.masquerade_all = iptables.masquerade_all.unwrap_or(false);
        if let Some(bit) = iptables.masquerade_bit {
            config.masquerade_bit = masquerade_bit("iptables.masqueradeBit", bit)?;
        }
        config.localhost_node_ports = iptables.localhost_node_ports.unwrap_or(true);
        config.sync_period = defaulted(
            "iptables.syncPeriod",
            iptables.sync_period.as_deref(),
            DEFAULT_SYNC_PERIOD,
        )?;
        config.min_sync_period = defaulted(
            "iptables.minSyncPeriod",
            iptables.min_sync_period.as_deref(),
            DEFAULT_MIN_SYNC_PERIOD,
        )?;
        // The sections of other modes: only checked.
        let nftables = raw.nftables.unwrap_or_default();
        if let Some(bit) = nftables.masquerade_bit {
            masquerade_bit("nftables.masqueradeBit", bit)?;
        }
        let ipvs = raw.ipvs.unwrap_or_default();
        for (field, value) in [
            ("nftables.syncPeriod", &nftables.sync_period),
            ("nftables.minSyncPeriod", &nftables.min_sync_period),
            ("ipvs.syncPeriod", &ipvs.sync_period),
            ("ipvs.minSyncPeriod", &ipvs.min_sync_period),
            ("ipvs.tcpTimeout", &ipvs.tcp_timeout),
            ("ipvs.tcpFinTimeout", &ipvs.tcp_fin_timeout),
            ("ipvs.udpTimeout", &ipvs.udp_timeout),
        ] {
            defaulted(field, value.as_deref(), Duration::ZERO)?;
        }
        // As kube-proxy's defaulting: empty means the default, not disabled (only the
        // command-line flag disables the server).
        if let Some(text) = raw.healthz_bind_address.as_deref().filter(|t| !t.is_empty()) {
            config.healthz_bind_address =
                Some(parse_bind_address(text).map_err(|message| field_error("healthzBindAddress", message))?);
        }
        if let Some(text) = raw.metrics_bind_address.as_deref().filter(|t| !t.is_empty()) {
            config.metrics_bind_address = Some(
                parse_bind_address_with(text, DEFAULT_METRICS_PORT)
                    .map_err(|message| field_error("metricsBindAddress", message))?,
            );
        }
        for text in raw.node_port_addresses.iter().flatten() {
            let entry = if text == "primary" {
                NodePortAddress::Primary
            } else {
                NodePortAddress::Cidr(
                    Cidr::parse_sloppy(text)
                        .ok_or_else(|| field_error("nodePortAddresses", format!("{text:?} is not a CIDR")))?,
                )
            };
            config.node_port_addresses.push(entry);
        }
        let ct = raw.conntrack.unwrap_or_default();
        let count = |field: &str, value: Option<i32>, default: u32| {
            value.map_or(Ok(default), |v| {
                u32::try_from(v).map_err(|_| field_error(field, format!("{v} is not a count >= 0")))
            })
        };
        // Conntrack timeouts keep an explicit zero: it means "leave the kernel's value".
        let duration = |field: &str, value: Option<String>, default: Duration| {
            value.map_or(Ok(default), |text| {
                parse_duration(&text)
                    .ok_or_else(|| field_error(field, format!("{text:?} is not a duration >= 0")))
            })
        };
        let defaults = ConntrackConfig::default();
        config.conntrack = ConntrackConfig {
            max_per_core: count("conntrack.maxPerCore", ct.max_per_core, defaults.max_per_core)?,
            min: count("conntrack.min", ct.min, defaults.min)?,
            tcp_established_timeout: duration(
                "conntrack.tcpEstablishedTimeout",
                ct.tcp_established_timeout,
                defaults.tcp_established_timeout,
            )?,
            tcp_close_wait_timeout: duration(
                "conntrack.tcpCloseWaitTimeout",
                ct.tcp_close_wait_timeout,
                defaults.tcp_close_wait_timeout,
            )?,
            tcp_be_liberal: ct.tcp_be_liberal.unwrap_or(defaults.tcp_be_liberal),
            udp_timeout: duration("conntrack.udpTimeout", ct.udp_timeout, defaults.udp_timeout)?,
            udp_stream_timeout: duration(
                "conntrack.udpStreamTimeout",
                ct.udp_stream_timeout,
                defaults.udp_stream_timeout,
            )?,
        };
        Ok(config)
    }

    /// How long a queued update may wait before the proxy reports itself unhealthy
    /// (kube-proxy passes twice the sync period to its health server).
    pub fn health_timeout(&self) -> Duration {
        2 * self.sync_period
    }

    /// Whether node hints (`trafficDistribution: PreferSameNode`) are followed: the
    /// `PreferSameTrafficDistribution` gate, on unless `featureGates` turns it off (its
    /// default since 1.34).
    pub fn prefer_same_traffic_distribution(&self) -> bool {
        self.feature_gates
            .get(PREFER_SAME_TRAFFIC_DISTRIBUTION)
            .copied()
            .unwrap_or(true)
    }

    /// The masquerade mark value (`1 << masqueradeBit`).
    pub fn masquerade_mark(&self) -> u32 {
        1 << self.masquerade_bit
    }

    /// The pod-traffic detector for `node`'s family.
    pub fn local_traffic(&self, node: &NodeInfo) -> Result<LocalTraffic, ConfigError> {
        let mode = self.detect_local_mode;
        let fail = |message: &str| ConfigError::LocalDetection {
            mode: mode.api_name(),
            message: message.into(),
        };
        Ok(match mode {
            DetectLocalMode::ClusterCidr => {
                match self.cluster_cidrs.iter().find(|c| c.family() == node.family) {
                    Some(cidr) => LocalTraffic::SourceCidr(*cidr),
                    None => LocalTraffic::Unknown,
                }
            }
            DetectLocalMode::NodeCidr => match node.pod_cidrs.iter().find(|c| c.family() == node.family) {
                Some(cidr) => LocalTraffic::SourceCidr(*cidr),
                None => return Err(fail("the node has no pod CIDR of this family (--pod-cidrs)")),
            },
            DetectLocalMode::BridgeInterface if self.bridge_interface.is_empty() => {
                return Err(fail("detectLocal.bridgeInterface is empty"));
            }
            DetectLocalMode::BridgeInterface => LocalTraffic::Interface(self.bridge_interface.clone()),
            DetectLocalMode::InterfaceNamePrefix if self.interface_name_prefix.is_empty() => {
                return Err(fail("detectLocal.interfaceNamePrefix is empty"));
            }
            DetectLocalMode::InterfaceNamePrefix => {
                LocalTraffic::InterfacePrefix(self.interface_name_prefix.clone())
            }
        })
    }

    /// The `nodePortAddresses` CIDRs of `family` (the primary IP counts as a host CIDR).
    fn node_port_cidrs(&self, node: &NodeInfo) -> Vec<Cidr> {
        self.node_port_addresses
            .iter()
            .filter_map(|entry| match entry {
                NodePortAddress::Cidr(cidr) => Some(*cidr),
                NodePortAddress::Primary => node.node_ip.map(Cidr::host),
            })
            .filter(|cidr| cidr.family() == node.family)
            .collect()
    }

    /// Which node addresses NodePorts answer on.
    pub fn node_port_addresses(&self, node: &NodeInfo) -> NodePortAddresses {
        let cidrs = self.node_port_cidrs(node);
        if cidrs.is_empty() || cidrs.iter().any(|c| c.prefix() == 0) {
            return NodePortAddresses::All;
        }
        let mut ips: Vec<IpAddr> = node
            .addresses
            .iter()
            .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
            .copied()
            .collect();
        ips.sort();
        ips.dedup();
        NodePortAddresses::Only(ips)
    }

    /// Whether NodePorts answer on 127.0.0.0/8: IPv4 only, and only when
    /// `nodePortAddresses` includes the loopback network (kube-proxy forces it off otherwise).
    pub fn localhost_node_ports(&self, node: &NodeInfo) -> bool {
        if !self.localhost_node_ports || node.family != IpFamily::V4 {
            return false;
        }
        let cidrs = self.node_port_cidrs(node);
        let loopback: IpAddr = [127, 0, 0, 0].into();
        cidrs.is_empty()
            || cidrs
                .iter()
                .any(|c| c.contains(&loopback) || c.network().is_loopback())
    }
}

/// Parses `--healthz-bind-address`: `""` or `0` disables the server (`None`), anything
/// else is read as the file's `healthzBindAddress` is.
pub fn parse_healthz_flag(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "" | "0" => Ok(None),
        text => parse_bind_address(text).map(Some),
    }
}

/// Parses `--metrics-bind-address`: `""` or `0` disables the server (`None`), anything
/// else is read as the file's `metricsBindAddress` is.
pub fn parse_metrics_flag(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "" | "0" => Ok(None),
        text => parse_bind_address_with(text, DEFAULT_METRICS_PORT).map(Some),
    }
}

/// `IP:port`, or a bare IP that gets kube-proxy's health port; the port must be 1..=65535
/// (kube-proxy's `validateHostPort`).
fn parse_bind_address(text: &str) -> Result<SocketAddr, String> {
    parse_bind_address_with(text, DEFAULT_HEALTHZ_PORT)
}

/// `IP:port`, or a bare IP that gets `default_port`.
fn parse_bind_address_with(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Some(ip) = parse_ip_sloppy(text) {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} must be IP:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip = parse_ip_sloppy(host).ok_or_else(|| format!("{host:?} must be a valid IP"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{port:?} must be a valid port"))?;
    Ok(SocketAddr::new(ip, port))
}

/// A Go duration (`24h0m0s`, `1.5h`, `300ms`, `0`) of zero or more, in Go's
/// `time.ParseDuration` syntax only: kube-proxy's `metav1.Duration` rejects anything
/// else (`1 minute`, ISO 8601), so kproxy does too.
fn parse_duration(text: &str) -> Option<Duration> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        rest = tail;
        let per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return None;
        }
        let parse = |digits: &str| {
            if digits.is_empty() {
                Some(0)
            } else {
                digits.parse::<u128>().ok()
            }
        };
        nanos = nanos.checked_add(parse(whole)?.checked_mul(per_unit)?)?;
        // Go truncates the fraction to whole nanoseconds; so does this.
        let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
        nanos = nanos.checked_add(parse(fraction)?.checked_mul(per_unit)? / scale)?;
    }
    if negative && nanos != 0 {
        return None;
    }
    Some(Duration::from_nanos(u64::try_from(nanos).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kube_proxys() {
        let config = ProxyConfig::parse("kind: KubeProxyConfiguration\n", "t").unwrap();
        assert_eq!(config, ProxyConfig::default());
        assert_eq!(config.masquerade_mark(), 0x4000);
        let node = NodeInfo::new("n", IpFamily::V4);
        assert_eq!(config.local_traffic(&node).unwrap(), LocalTraffic::Unknown);
        assert_eq!(config.node_port_addresses(&node), NodePortAddresses::All);
        assert!(config.localhost_node_ports(&node));
        assert!(!config.localhost_node_ports(&NodeInfo::new("n", IpFamily::V6)));
        assert_eq!(
            config.healthz_bind_address,
            Some("0.0.0.0:10256".parse().unwrap())
        );
        assert_eq!(config.health_timeout(), Duration::from_mins(1));
    }

    #[test]
    fn conntrack_section_as_kube_proxy_reads_it() {
        let defaults = ProxyConfig::default().conntrack;
        assert_eq!(defaults.max_flows(2), Some(131_072), "min wins on 2 CPUs");
        assert_eq!(defaults.max_flows(8), Some(262_144));
        let config = ProxyConfig::parse(
            "conntrack:\n  maxPerCore: 0\n  tcpEstablishedTimeout: 2h0m0s\n  tcpCloseWaitTimeout: 0s\n  \
             tcpBeLiberal: true\n  udpTimeout: 30s\n  udpStreamTimeout: 2m\n",
            "t",
        )
        .unwrap()
        .conntrack;
        assert_eq!(config.max_flows(2), None);
        assert_eq!(config.tcp_established_timeout, Duration::from_hours(2));
        assert_eq!(config.tcp_close_wait_timeout, Duration::ZERO);
        assert!(config.tcp_be_liberal);
        assert_eq!(config.udp_timeout, Duration::from_secs(30));
        assert_eq!(config.udp_stream_timeout, Duration::from_mins(2));
        let err = ProxyConfig::parse("conntrack: {udpTimeout: soon}\n", "f.yaml").unwrap_err();
        assert!(err.to_string().contains("conntrack.udpTimeout"), "{err}");
        let err = ProxyConfig::parse("conntrack: {min: -1}\n", "f.yaml").unwrap_err();
        assert!(err.to_string().contains("conntrack.min"), "{err}");
    }

    #[test]
    fn healthz_bind_address_and_sync_period_as_kube_proxy_defaults_them() {
        let read = |text: &str| ProxyConfig::parse(text, "t").unwrap();
        assert_eq!(
            read("iptables: {syncPeriod: 0s}").sync_period,
            DEFAULT_SYNC_PERIOD
        );
        let addr = |text: &str| Some(text.parse::<SocketAddr>().unwrap());
        assert_eq!(
            read("healthzBindAddress: \"\"").healthz_bind_address,
            addr("0.0.0.0:10256")
        );
        assert_eq!(
            read("healthzBindAddress: 127.0.0.1").healthz_bind_address,
            addr("127.0.0.1:10256")
        );
        assert_eq!(
            read("healthzBindAddress: \"::\"").healthz_bind_address,
            addr("[::]:10256")
        );
        assert_eq!(
            read("healthzBindAddress: \"[::1]:99\"").healthz_bind_address,
            addr("[::1]:99")
        );
        assert_eq!(
            read("healthzBindAddress: 10.0.0.1:8080").healthz_bind_address,
            addr("10.0.0.1:8080")
        );
        assert_eq!(read("").metrics_bind_address, addr("127.0.0.1:10249"));
        assert_eq!(
            read("metricsBindAddress: 0.0.0.0").metrics_bind_address,
            addr("0.0.0.0:10249")
        );
        assert_eq!(
            read("metricsBindAddress: 10.0.0.1:9100").metrics_bind_address,
            addr("10.0.0.1:9100")
        );
        let err = ProxyConfig::parse("metricsBindAddress: nowhere:1", "f.yaml").unwrap_err();
        assert!(err.to_string().contains("metricsBindAddress"), "{err}");
        assert_eq!(parse_metrics_flag("0"), Ok(None));
        assert_eq!(parse_metrics_flag("127.0.0.1"), Ok(addr("127.0.0.1:10249")));
        assert_eq!(
            read("iptables: {syncPeriod: 1m30s}").health_timeout(),
            Duration::from_mins(3)
        );
        assert_eq!(
            read("iptables: {syncPeriod: 500ms}").sync_period,
            Duration::from_millis(500)
        );
        assert_eq!(parse_healthz_flag(""), Ok(None));
        assert_eq!(parse_healthz_flag("0"), Ok(None));
        assert_eq!(parse_healthz_flag("0.0.0.0:1234"), Ok(addr("0.0.0.0:1234")));
        assert!(parse_healthz_flag("0.0.0.0:0").is_err());
    }

    #[test]
    fn honoured_fields_are_read() {
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
hostnameOverride: Host1
clusterCIDR: 10.0.0.0/8,fd00:10::/64
detectLocalMode: InterfaceNamePrefix
detectLocal:
  interfaceNamePrefix: veth
iptables:
  masqueradeAll: true
  masqueradeBit: 10
  localhostNodePorts: false
nodePortAddresses: [192.168.0.0/24, 127.0.0.0/8]
";
        let config = ProxyConfig::parse(text, "t").unwrap();
        assert_eq!(config.hostname_override.as_deref(), Some("host1"));
        assert_eq!(config.cluster_cidrs.len(), 2);
        assert!(config.masquerade_all);
        assert_eq!(config.masquerade_mark(), 0x400);
        let mut node = NodeInfo::new("n", IpFamily::V4);
        node.addresses = vec![
            "192.168.0.7".parse().unwrap(),
            "10.1.1.1".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
        ];
        assert_eq!(
            config.local_traffic(&node).unwrap(),
            LocalTraffic::InterfacePrefix("veth".into())
        );
        assert_eq!(
            config.node_port_addresses(&node),
            NodePortAddresses::Only(vec!["127.0.0.1".parse().unwrap(), "192.168.0.7".parse().unwrap()])
        );
        assert!(!config.localhost_node_ports(&node));
    }

    #[test]
    fn bad_values_are_rejected_with_the_field() {
        let cases = [
            ("iptables: {masqueradeBit: 40}", "iptables.masqueradeBit"),
            ("clusterCIDR: 10.0.0.0/40", "clusterCIDR"),
            ("detectLocalMode: Magic", "detectLocalMode"),
            ("nodePortAddresses: [nonsense]", "nodePortAddresses"),
            ("kind: Deployment", "kind"),
            ("healthzBindAddress: localhost:10256", "healthzBindAddress"),
            ("healthzBindAddress: 0.0.0.0:70000", "healthzBindAddress"),
            ("iptables: {syncPeriod: -1s}", "iptables.syncPeriod"),
            ("iptables: {syncPeriod: soon}", "iptables.syncPeriod"),
        ];
        for (text, field) in cases {
            let err = ProxyConfig::parse(text, "cfg.yaml").unwrap_err().to_string();
            assert!(
                err.contains(field) && err.starts_with("cfg.yaml"),
                "{text}: {err}"
            );
        }
    }

    /// What `kubeadm init` (1.33) writes into the kube-proxy ConfigMap's
    /// `config.conf`: every section, most values unset, zero or null.
    const KUBEADM_CONFIG: &str = r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

    #[test]
    fn kubeadms_configuration_loads_with_kube_proxys_defaults() {
        let config = ProxyConfig::parse(KUBEADM_CONFIG, "config.conf").unwrap();
        let expected = ProxyConfig {
            kubeconfig: Some("/var/lib/kube-proxy/kubeconfig.conf".into()),
            cluster_cidrs: vec![Cidr::parse_sloppy("10.244.0.0/16").unwrap()],
            ..ProxyConfig::default()
        };
        assert_eq!(config, expected);
        assert_eq!(config.min_sync_period, Duration::from_secs(1));
        assert_eq!(config.mode, None);
        assert!(config.prefer_same_traffic_distribution());
        // Every ignored section with values set loads too.
        let set = "mode: iptables
featureGates: {PreferSameTrafficDistribution: false, SomeGate: true}
clientConnection: {kubeconfig: /k, acceptContentTypes: a, contentType: b, qps: 5.5, burst: 10}
logging:
  format: json
  flushFrequency: 5s
  verbosity: 4
  vmodule: [{filePath: proxier.go, verbosity: 6}]
  options: {json: {splitStream: true, infoBufferSize: 1Mi}, text: {splitStream: false}}
bindAddress: 10.0.0.5
bindAddressHardFail: true
enableProfiling: true
showHiddenMetricsForVersion: \"1.32\"
iptables: {minSyncPeriod: 250ms, syncPeriod: 1m, snatNodeInternalIP: null}
ipvs: {scheduler: rr, excludeCIDRs: [10.0.0.0/8], strictARP: true, tcpTimeout: 1m, tcpFinTimeout: 1m, udpTimeout: 1m, syncPeriod: 1m, minSyncPeriod: 1s}
nftables: {masqueradeAll: true, masqueradeBit: 5, syncPeriod: 1m, minSyncPeriod: 1s}
winkernel: {networkName: net1, sourceVip: 1.2.3.4, enableDSR: true, rootHnsEndpointName: hns, forwardHealthCheckVip: true}
oomScoreAdj: -999
configSyncPeriod: 15m
portRange: \"\"
windowsRunAsService: false
";
        let config = ProxyConfig::parse(set, "t").unwrap();
        assert_eq!(config.mode, Some(ProxyMode::Iptables));
        assert!(!config.prefer_same_traffic_distribution());
        assert_eq!(config.min_sync_period, Duration::from_millis(250));
        assert_eq!(config.sync_period, Duration::from_mins(1));
        assert_eq!(config.bind_address, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(config.kubeconfig.as_deref(), Some(Path::new("/k")));
        assert!(
            !config.masquerade_all,
            "nftables.masqueradeAll is not iptables mode's"
        );
        assert_eq!(
            ProxyConfig::parse("mode: ebpf", "t").unwrap().mode,
            Some(ProxyMode::Ebpf)
        );
        // An IPv6 bindAddress moves the default servers to IPv6, as upstream's defaults.
        let v6 = ProxyConfig::parse("bindAddress: \"fd00::5\"", "t").unwrap();
        assert_eq!(v6.healthz_bind_address, Some("[::]:10256".parse().unwrap()));
        assert_eq!(v6.metrics_bind_address, Some("[::1]:10249".parse().unwrap()));
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let cases = [
            ("fooBar: 1", "fooBar"),
            ("iptables: {fooBar: 1}", "iptables.fooBar"),
            (
                "logging: {options: {json: {fooBar: 1}}}",
                "logging.options.json.fooBar",
            ),
            ("logging: {vmodule: [{fooBar: 1}]}", "logging.vmodule[0].fooBar"),
            ("conntrack: {maxPerCpu: 1}", "conntrack.maxPerCpu"),
            // Not a v1alpha1 field: masqueradeAll lives under iptables.
            ("masqueradeAll: true", "masqueradeAll"),
            // Field names are case-sensitive, as kube-proxy's strict decoder is.
            ("HostnameOverride: x", "HostnameOverride"),
        ];
        for (text, path) in cases {
            let err = ProxyConfig::parse(text, "cfg.yaml").unwrap_err();
            let name = path.rsplit(['.', ']']).next().unwrap();
            let ConfigError::Field { field, message, .. } = &err else {
                panic!("{text}: {err}");
            };
            assert_eq!(field, path, "{text}: {err}");
            assert_eq!(message, &format!("unknown field `{name}`"), "{text}: {err}");
            assert!(err.to_string().starts_with("cfg.yaml: field "), "{err}");
        }
    }

    #[test]
    fn duplicate_fields_are_rejected_with_their_name() {
        for (text, name) in [
            ("mode: iptables\nmode: ebpf\n", "mode"),
            ("iptables:\n  syncPeriod: 1s\n  syncPeriod: 2s\n", "syncPeriod"),
        ] {
            let err = ProxyConfig::parse(text, "cfg.yaml").unwrap_err().to_string();
            assert!(
                err.starts_with("cfg.yaml") && err.contains("duplicate") && err.contains(name),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn invalid_values_are_rejected_with_the_field() {
        let cases = [
            ("conntrack: {maxPerCore: -1}", "conntrack.maxPerCore"),
            ("conntrack: {maxPerCore: lots}", "conntrack.maxPerCore"),
            ("conntrack: {min: 4294967296}", "conntrack.min"),
            (
                "conntrack: {tcpEstablishedTimeout: -1s}",
                "conntrack.tcpEstablishedTimeout",
            ),
            ("iptables: {minSyncPeriod: soon}", "iptables.minSyncPeriod"),
            ("iptables: {masqueradeBit: 32}", "iptables.masqueradeBit"),
            ("iptables: {masqueradeBit: -1}", "iptables.masqueradeBit"),
            ("iptables: {masqueradeAll: maybe}", "iptables.masqueradeAll"),
            ("nftables: {masqueradeBit: 32}", "nftables.masqueradeBit"),
            ("ipvs: {tcpTimeout: 1 minute}", "ipvs.tcpTimeout"),
            ("configSyncPeriod: -5m", "configSyncPeriod"),
            ("mode: ipvs", "mode"),
            ("mode: userspace", "mode"),
            ("oomScoreAdj: -1001", "oomScoreAdj"),
            ("bindAddress: node1", "bindAddress"),
            ("clientConnection: {burst: -1}", "clientConnection.burst"),
            (
                "featureGates: {PreferSameTrafficDistribution: yes please}",
                "featureGates.PreferSameTrafficDistribution",
            ),
            ("apiVersion: kubeproxy.config.k8s.io/v1alpha2", "apiVersion"),
            ("kind: KubeletConfiguration", "kind"),
        ];
        for (text, field) in cases {
            let err = ProxyConfig::parse(text, "cfg.yaml").expect_err(text);
            let ConfigError::Field { field: got, .. } = &err else {
                panic!("{text}: {err}");
            };
            assert_eq!(got, field, "{text}: {err}");
        }
    }

    #[test]
    fn durations_are_read_as_go_parses_them() {
        let ok = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("-0s", Duration::ZERO),
            ("24h0m0s", Duration::from_hours(24)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5h", Duration::from_mins(90)),
            (".5s", Duration::from_millis(500)),
            ("300ms", Duration::from_millis(300)),
            ("2us", Duration::from_micros(2)),
            ("2\u{b5}s", Duration::from_micros(2)),
            ("7ns", Duration::from_nanos(7)),
            ("+1s", Duration::from_secs(1)),
        ];
        for (text, expected) in ok {
            assert_eq!(parse_duration(text), Some(expected), "{text}");
        }
        for text in [
            "", "1", "1 minute", "PT1M", "1d", "-1s", "1m 30s", ".s", "1.2.3s", " 1s",
        ] {
            assert_eq!(parse_duration(text), None, "{text:?}");
        }
    }
}
