//! `kproxy export iptables`: the CLI over the manifest reader and the iptables renderer.

use std::{net::IpAddr, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use kproxy::{
    config::ProxyConfig,
    iptables::{self, RenderOptions, Runtime, Table, jumps, list::ProtocolColumn},
    manifests,
    model::{Cidr, IpFamily, NodeInfo, parse_ip_sloppy},
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
    /// nfacct counters that exist: ct_state_invalid_dropped_pkts, localhost_nps_accepted_pkts
    /// (`""`: none, the default).
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
        let node_ip = self
            .node_ip
            .as_deref()
            .map(|ip| parse_ip(ip, "--node-ip"))
            .transpose()?;
        let addresses = self
            .node_addresses
            .iter()
            .map(|text| parse_ip(text, "--node-addresses"))
            .collect::<anyhow::Result<_>>()?;
        let pod_cidrs = self
            .pod_cidrs
            .iter()
            .map(|text| {
                Cidr::parse_sloppy(text.trim())
                    .with_context(|| format!("--pod-cidrs: {text:?} is not a CIDR"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(NodeInfo::new(&name, self.ip_family)
            .with_node_ip(node_ip)
            .with_addresses(addresses)
            .with_pod_cidrs(pod_cidrs))
    }

    fn runtime(&self) -> anyhow::Result<Runtime> {
        let mut runtime = Runtime {
            random_fully: self.random_fully,
            tcp_be_liberal: self.tcp_be_liberal,
            ..Runtime::default()
        };
        // `--nfacct-counters ""` says "none": empty names are skipped.
        for name in self
            .nfacct_counters
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
        {
            match name {
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
        let model = manifests::load(&args.models, &config, &node)?;
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: IptablesArgs,
    }

    fn runtime(extra: &[&str]) -> anyhow::Result<Runtime> {
        let argv = ["export", "--model", "m.yaml"].iter().chain(extra);
        Cli::try_parse_from(argv)?.args.runtime()
    }

    #[test]
    fn nfacct_counters_empty_means_none_and_unknown_names_are_refused() {
        let none = runtime(&["--nfacct-counters", ""]).unwrap();
        assert!(!none.nfacct_invalid_dropped && !none.nfacct_localhost_nodeports);
        assert_eq!(none, runtime(&[]).unwrap());
        let both = runtime(&[
            "--nfacct-counters",
            "ct_state_invalid_dropped_pkts,localhost_nps_accepted_pkts",
        ])
        .unwrap();
        assert!(both.nfacct_invalid_dropped && both.nfacct_localhost_nodeports);
        let err = runtime(&["--nfacct-counters", "nope"]).unwrap_err();
        assert!(err.to_string().contains("unknown counter \"nope\""), "{err}");
    }
}
