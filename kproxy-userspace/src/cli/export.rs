//! `kproxy export iptables` and `kproxy bench render`: the CLI over the model loader
//! and the iptables renderer.

use std::{net::IpAddr, path::PathBuf, time::Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use kproxy::{
    config::ProxyConfig,
    iptables::{self, RenderOptions, Runtime, Table, jumps, list::ProtocolColumn},
    model::{self, Cidr, IpFamily, NodeInfo, parse_ip_sloppy},
};

#[derive(Subcommand)]
pub enum Export {
    /// The iptables state upstream kube-proxy (iptables mode) would program.
    Iptables(IptablesArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// The iptables-restore payload of a full sync.
    Restore,
    /// What iptables-save prints once it is loaded.
    Save,
    /// What `iptables -n -L` prints.
    List,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolNames {
    /// Protocol names (iptables ≤ 1.8.8, ≥ 1.8.11; the seed article).
    Names,
    /// Protocol numbers (iptables 1.8.9 and 1.8.10).
    Numbers,
}

#[derive(Args)]
pub struct IptablesArgs {
    /// A YAML file (any number of documents) or a directory of *.yaml/*.yml; repeatable.
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// A KubeProxyConfiguration file (default: kube-proxy's defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "restore")]
    format: Format,
    /// Only this table (list: default nat, or the table holding --chain).
    #[arg(long)]
    table: Option<Table>,
    /// Only this chain (list only).
    #[arg(long)]
    chain: Option<String>,
    /// The proxier's IP family: IPv4 or IPv6.
    #[arg(long, default_value = "IPv4")]
    ip_family: IpFamily,
    /// The node name when the configuration has no hostnameOverride (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's primary IP.
    #[arg(long)]
    node_ip: Option<String>,
    /// The node's local addresses (matched against nodePortAddresses).
    #[arg(long, value_delimiter = ',')]
    node_addresses: Vec<String>,
    /// The node's pod CIDRs (detectLocalMode NodeCIDR).
    #[arg(long, value_delimiter = ',')]
    pod_cidrs: Vec<String>,
    /// iptables supports MASQUERADE --random-fully.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    random_fully: bool,
    /// net.netfilter.nf_conntrack_tcp_be_liberal is set.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    tcp_be_liberal: bool,
    /// nfacct counters that exist: ct_state_invalid_dropped_pkts, localhost_nps_accepted_pkts.
    #[arg(long, value_delimiter = ',')]
    nfacct_counters: Vec<String>,
    /// How `list` prints the prot column.
    #[arg(long, value_enum, default_value = "names")]
    list_protocols: ProtocolNames,
}

fn parse_ip(text: &str, flag: &str) -> anyhow::Result<IpAddr> {
    parse_ip_sloppy(text.trim()).with_context(|| format!("{flag}: {text:?} is not an IP address"))
}

impl IptablesArgs {
    fn node(&self, config: &ProxyConfig) -> anyhow::Result<NodeInfo> {
        let name = match (&config.hostname_override, &self.node_name) {
            (Some(name), _) => name.clone(),
            (None, Some(name)) => name.to_lowercase(),
            (None, None) => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("read the host name (or pass --node-name)")?
                .trim()
                .to_lowercase(),
        };
        let mut node = NodeInfo::new(&name, self.ip_family);
        node.node_ip = self
            .node_ip
            .as_deref()
            .map(|ip| parse_ip(ip, "--node-ip"))
            .transpose()?;
        for text in &self.node_addresses {
            node.addresses.push(parse_ip(text, "--node-addresses")?);
        }
        for text in &self.pod_cidrs {
            node.pod_cidrs.push(
                Cidr::parse_sloppy(text.trim())
                    .with_context(|| format!("--pod-cidrs: {text:?} is not a CIDR"))?,
            );
        }
        Ok(node)
    }

    fn runtime(&self) -> anyhow::Result<Runtime> {
        let mut runtime = Runtime {
            random_fully: self.random_fully,
            tcp_be_liberal: self.tcp_be_liberal,
            ..Runtime::default()
        };
        for name in &self.nfacct_counters {
            match name.trim() {
                iptables::NFACCT_INVALID_DROPPED => runtime.nfacct_invalid_dropped = true,
                iptables::NFACCT_LOCALHOST_NODEPORTS => runtime.nfacct_localhost_nodeports = true,
                other => bail!("--nfacct-counters: unknown counter {other:?}"),
            }
        }
        Ok(runtime)
    }
}

impl Export {
    pub fn run(self) -> anyhow::Result<()> {
        let Export::Iptables(args) = self;
        if args.chain.is_some() && !matches!(args.format, Format::List) {
            bail!("--chain applies to --format list");
        }
        let config = ProxyConfig::load(args.config.as_deref())?;
        let node = args.node(&config)?;
        let model = model::load(&args.models, &config, &node)?;
        let options = RenderOptions::new(&config, &node, args.runtime()?)?;
        let ruleset = iptables::render(&model, &options);
        let jumps = jumps::jump_rules(&options);
        let text = match args.format {
            Format::Restore => iptables::restore::payload(&ruleset, args.table),
            Format::Save => iptables::save::save(&ruleset, &jumps, args.table),
            Format::List => {
                let style = match args.list_protocols {
                    ProtocolNames::Names => ProtocolColumn::Names,
                    ProtocolNames::Numbers => ProtocolColumn::Numbers,
                };
                let table = match (args.table, &args.chain) {
                    (Some(table), _) => table,
                    // The table holding the chain, nat first (as the seed lists KUBE-SERVICES).
                    (None, Some(chain)) if ruleset.nat.chains.contains(chain) => Table::Nat,
                    (None, Some(chain)) if ruleset.filter.chains.contains(chain) => Table::Filter,
                    (None, _) => Table::Nat,
                };
                iptables::list::list(&ruleset, &jumps, table, args.chain.as_deref(), style)?
            }
        };
        print!("{text}");
        Ok(())
    }
}

#[derive(Subcommand)]
pub enum Bench {
    /// Time rendering a generated model (ClusterIP+NodePort services, ready endpoints).
    Render {
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        #[arg(long, default_value_t = 2)]
        endpoints: usize,
        /// Repetitions; the best time of each stage is reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

impl Bench {
    pub fn run(self) -> anyhow::Result<()> {
        let Bench::Render {
            services,
            endpoints,
            runs,
        } = self;
        let model = model::synthetic(services, endpoints);
        let config = ProxyConfig {
            cluster_cidrs: vec![Cidr::parse_sloppy("10.128.0.0/9").context("literal CIDR")?],
            ..ProxyConfig::default()
        };
        let node = NodeInfo::new("node-0", IpFamily::V4);
        let options = RenderOptions::new(&config, &node, Runtime::default())?;
        let jumps = jumps::jump_rules(&options);
        let mut best = [f64::MAX; 3];
        let mut sizes = (0, 0, 0);
        for _ in 0..runs.max(1) {
            let start = Instant::now();
            let ruleset = iptables::render(&model, &options);
            let rendered = start.elapsed().as_secs_f64();
            let payload = iptables::restore::payload(&ruleset, None);
            let restored = start.elapsed().as_secs_f64();
            let saved = iptables::save::save(&ruleset, &jumps, None);
            let total = start.elapsed().as_secs_f64();
            for (slot, value) in best
                .iter_mut()
                .zip([rendered, restored - rendered, total - restored])
            {
                *slot = slot.min(value);
            }
            sizes = (
                ruleset.filter.rules.len() + ruleset.nat.rules.len(),
                payload.len(),
                saved.len(),
            );
        }
        println!(
            "model: {services} services x {endpoints} endpoints; {} rules, restore payload {} bytes, save {} bytes",
            sizes.0, sizes.1, sizes.2
        );
        println!("render (model -> rules):      {:>8.1} ms", best[0] * 1e3);
        println!("restore payload (rules -> text): {:>5.1} ms", best[1] * 1e3);
        println!("save view (rules -> text):    {:>8.1} ms", best[2] * 1e3);
        println!(
            "render + restore payload:     {:>8.1} ms",
            (best[0] + best[1]) * 1e3
        );
        Ok(())
    }
}
