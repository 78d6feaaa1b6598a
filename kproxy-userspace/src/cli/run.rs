//! `kproxy run`: the agent's command line.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use clap::Args;
use kproxy::{
    agent::{self, AgentOptions, HealthzBind, Mode, ModelSourceOptions, SocketLbCgroup},
    ebpf::DEFAULT_PIN_DIR,
    iptables::Flavor,
};

/// Default source address of masqueraded (hairpin) flows: link-local, owned by no node,
/// so the kernel accepts the rewritten packets and pods route the replies to the node.
const DEFAULT_MASQUERADE_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);

#[derive(Args)]
pub struct Run {
    /// Service/EndpointSlice YAML files or directories (repeatable); watched for changes.
    /// Without --model or --kubeconfig the model comes from the API server through the
    /// in-cluster configuration (a DaemonSet's service account).
    #[arg(long = "model", value_name = "PATH", conflicts_with = "kubeconfig")]
    models: Vec<PathBuf>,
    /// Watch Services, EndpointSlices and this node's Node on the API server this
    /// kubeconfig names (cluster mode).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The node's name (over the configuration's hostnameOverride and the host name): its
    /// Node object is watched and endpoints with this nodeName are local.
    #[arg(long, value_name = "NAME")]
    hostname_override: Option<String>,
    /// Cluster mode: serve only the services labelled
    /// `service.kubernetes.io/service-proxy-name=NAME` (default: only services without
    /// that label, as kube-proxy).
    #[arg(long, value_name = "NAME")]
    service_proxy_name: Option<String>,
    /// A KubeProxyConfiguration file (missing: kube-proxy's defaults).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Interfaces (names or globs such as 'veth*') to attach TC ingress to; interfaces
    /// that appear later and match are attached too.
    #[arg(long = "iface", value_name = "PATTERN")]
    ifaces: Vec<String>,
    /// External interfaces (names or globs) to run the XDP program on as well: NodePort,
    /// externalIP and LoadBalancer traffic is translated there before the kernel
    /// allocates an skb, and sent straight to the backend's interface when the route is
    /// known. Native mode where the driver supports it, generic otherwise (logged).
    /// Without it, external interfaces listed in --iface use TC only. Use it where
    /// frames come off a wire: XDP cannot see that a frame from a local sender carries
    /// only a partial (offloaded) checksum.
    #[arg(long = "xdp-iface", value_name = "PATTERN")]
    xdp_ifaces: Vec<String>,
    /// Which datapath to program.
    #[arg(long, value_enum, default_value = "ebpf")]
    mode: Mode,
    /// bpffs directory for the pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_path: PathBuf,
    /// iptables implementation for --mode iptables.
    #[arg(long, value_enum, default_value = "system")]
    iptables_backend: Flavor,
    /// The node's primary IP, the source of SNATed flows (default: its first IPv4 address
    /// that is neither loopback nor link-local).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// Source address for hairpin flows in eBPF mode (must not be a node address).
    #[arg(long, default_value_t = DEFAULT_MASQUERADE_ADDRESS)]
    masquerade_address: Ipv4Addr,
    /// Source ports eBPF mode allocates to the flows it SNATs to the node (MIN-MAX). Keep
    /// them outside `net.ipv4.ip_local_port_range`: the node's own connections to a
    /// backend must not use them.
    #[arg(long, default_value = "61000-65535", value_parser = parse_port_range)]
    snat_ports: std::ops::RangeInclusive<u16>,
    /// Exit after the first successful sync, leaving the datapath in place.
    #[arg(long)]
    once: bool,
    /// IP:PORT for /healthz and /livez, over the configuration's healthzBindAddress
    /// (default 0.0.0.0:10256); "" or 0 disables the server.
    #[arg(long, value_name = "IP:PORT", value_parser = HealthzBind::parse)]
    healthz_bind_address: Option<HealthzBind>,
    /// IP:PORT for Prometheus /metrics, over the configuration's metricsBindAddress
    /// (default 127.0.0.1:10249); "" or 0 disables the server.
    #[arg(long, value_name = "IP:PORT", value_parser = HealthzBind::parse_metrics)]
    metrics_bind_address: Option<HealthzBind>,
    /// Socket-level load balancing in eBPF mode: the cgroup v2 directory whose processes'
    /// connect()/sendmsg() to services are translated to a backend (default: the root of
    /// the cgroup2 mount, i.e. every process of the node; "" turns socket-LB off).
    // An OsString: clap's path parser refuses the empty value.
    #[arg(long, value_name = "PATH", value_parser = clap::builder::OsStringValueParser::new())]
    cgroup: Option<std::ffi::OsString>,
}

impl Run {
    pub fn run(self) -> anyhow::Result<()> {
        if self.mode == Mode::Ebpf && self.ifaces.is_empty() {
            anyhow::bail!(
                "--mode ebpf needs at least one --iface PATTERN to attach to (e.g. --iface 'veth*' --iface eth0)"
            );
        }
        if !self.models.is_empty() && self.service_proxy_name.is_some() {
            anyhow::bail!(
                "--service-proxy-name filters the API server's services: it needs cluster mode, not --model"
            );
        }
        if self.mode == Mode::Iptables && !self.xdp_ifaces.is_empty() {
            anyhow::bail!("--xdp-iface needs --mode ebpf");
        }
        let opts = AgentOptions {
            source: if self.models.is_empty() {
                ModelSourceOptions::Cluster {
                    kubeconfig: self.kubeconfig,
                    service_proxy_name: self.service_proxy_name,
                }
            } else {
                ModelSourceOptions::Files(self.models)
            },
            hostname_override: self.hostname_override,
            config: self.config,
            mode: self.mode,
            ifaces: self.ifaces,
            xdp_ifaces: self.xdp_ifaces,
            pin_path: self.pin_path,
            iptables_backend: self.iptables_backend,
            node_ip: self.node_ip,
            masquerade_address: self.masquerade_address,
            snat_ports: self.snat_ports,
            once: self.once,
            healthz_bind_address: self.healthz_bind_address,
            metrics_bind_address: self.metrics_bind_address,
            cgroup: match self.cgroup {
                None => SocketLbCgroup::Root,
                Some(p) if p.is_empty() => SocketLbCgroup::Off,
                Some(p) => SocketLbCgroup::Path(PathBuf::from(p)),
            },
        };
        Ok(agent::run(&opts)?)
    }
}

/// `MIN-MAX`, both ports, MIN ≥ 1 and MIN ≤ MAX.
fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (min, max) = text.split_once('-').ok_or("expected MIN-MAX")?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p:?}: {e}"));
    let (min, max) = (port(min)?, port(max)?);
    if min == 0 || min > max {
        return Err(format!("{min}-{max}: need 1 <= MIN <= MAX"));
    }
    Ok(min..=max)
}
