//! kube-proxy's configuration file (`KubeProxyConfiguration`,
//! kubeproxy.config.k8s.io/v1alpha1): the settings that shape the service rules.
//! A missing file means kube-proxy's defaults.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use serde::Deserialize;

use crate::model::{Cidr, IpFamily, NodeInfo, parse_ip_sloppy};

/// kube-proxy's health server port (`ports.ProxyHealthzPort`).
pub const DEFAULT_HEALTHZ_PORT: u16 = 10256;
/// kube-proxy's `healthzBindAddress` default: every IPv4 address, port 10256.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_HEALTHZ_PORT);
/// kube-proxy's `iptables.syncPeriod` default.
/// kube-proxy's metrics port (`ports.ProxyStatusPort`).
pub const DEFAULT_METRICS_PORT: u16 = 10249;
/// kube-proxy's `metricsBindAddress` default: loopback, port 10249.
pub const DEFAULT_METRICS_BIND_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_METRICS_PORT);
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
/// kube-proxy's `iptables.minSyncPeriod` default.
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);

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
        field: &'static str,
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

/// The configuration settings kproxy honours, with kube-proxy's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
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
    /// `iptables.minSyncPeriod`: the least time between two syncs (a burst of changes
    /// becomes one sync).
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

/// The file as written: every field optional, unknown fields ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    api_version: Option<String>,
    kind: Option<String>,
    hostname_override: Option<String>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    detect_local_mode: Option<String>,
    detect_local: Option<RawDetectLocal>,
    masquerade_all: Option<bool>,
    iptables: Option<RawIptables>,
    node_port_addresses: Option<Vec<String>>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    conntrack: Option<RawConntrack>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConntrack {
    max_per_core: Option<i64>,
    min: Option<i64>,
    tcp_established_timeout: Option<String>,
    tcp_close_wait_timeout: Option<String>,
    tcp_be_liberal: Option<bool>,
    udp_timeout: Option<String>,
    udp_stream_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDetectLocal {
    bridge_interface: Option<String>,
    interface_name_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIptables {
    masquerade_all: Option<bool>,
    masquerade_bit: Option<i64>,
    localhost_node_ports: Option<bool>,
    sync_period: Option<String>,
    min_sync_period: Option<String>,
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
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        let field_error = |field, message: String| ConfigError::Field {
            path: origin.into(),
            field,
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
        let mut config = ProxyConfig {
            hostname_override: raw
                .hostname_override
                .filter(|h| !h.trim().is_empty())
                .map(|h| h.trim().to_lowercase()),
            ..ProxyConfig::default()
        };
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
        let iptables = raw.iptables.unwrap_or_default();
        config.masquerade_all =
            raw.masquerade_all.unwrap_or(false) || iptables.masquerade_all.unwrap_or(false);
        if let Some(bit) = iptables.masquerade_bit {
            config.masquerade_bit = u8::try_from(bit)
                .ok()
                .filter(|b| *b <= 31)
                .ok_or_else(|| field_error("iptables.masqueradeBit", format!("{bit} is not in 0..=31")))?;
        }
        config.localhost_node_ports = iptables.localhost_node_ports.unwrap_or(true);
        if let Some(text) = iptables.sync_period.as_deref() {
            config.sync_period = parse_positive_duration(text).ok_or_else(|| {
                field_error(
                    "iptables.syncPeriod",
                    format!("{text:?} is not a duration greater than 0"),
                )
            })?;
        }
        if let Some(text) = iptables.min_sync_period.as_deref() {
            config.min_sync_period = parse_duration(text).ok_or_else(|| {
                field_error(
                    "iptables.minSyncPeriod",
                    format!("{text:?} is not a duration of 0 or more"),
                )
            })?;
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
        let count = |field: &'static str, value: Option<i64>, default: u32| {
            value.map_or(Ok(default), |v| {
                u32::try_from(v).map_err(|_| field_error(field, format!("{v} is not a count >= 0")))
            })
        };
        let duration = |field: &'static str, value: Option<String>, default: Duration| {
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

/// A Go duration (`30s`, `1m30s`, `500ms`) greater than zero.
fn parse_positive_duration(text: &str) -> Option<Duration> {
    parse_duration(text).filter(|d| !d.is_zero())
}

/// A Go-style duration (`24h0m0s`, `90s`) of zero or more.
fn parse_duration(text: &str) -> Option<Duration> {
    let signed: jiff::SignedDuration = text.trim().parse().ok()?;
    Duration::try_from(signed).ok()
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
            ("iptables: {syncPeriod: 0s}", "iptables.syncPeriod"),
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
}
