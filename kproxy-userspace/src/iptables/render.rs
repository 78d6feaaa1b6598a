//! The model → the rules kube-proxy (iptables mode) writes on a full sync.
//!
//! Rules are generated per service port in kube-proxy's order, then arranged the way
//! kube-proxy's own tests normalise a payload: chains KUBE-NODEPORTS, KUBE-SERVICES,
//! then the rest in byte order, each chain's rules together. Services are visited by
//! `namespace/name`, so KUBE-SERVICES and KUBE-NODEPORTS come out already sorted by
//! service name, ports in spec order, the nodeports rule last.

use std::net::{IpAddr, Ipv4Addr};

use super::{
    Ruleset,
    chain_name::{ServiceChains, endpoint_chain},
    rule::{AddrTypeSide, Address, Part, Rule, Table, TableRules, Target},
};
use crate::{
    config::{ConfigError, LocalTraffic, NodePortAddresses, ProxyConfig},
    model::{Cidr, Endpoint, IpFamily, Model, NodeInfo, ServicePort, Topology},
};

const SERVICES: &str = "KUBE-SERVICES";
const EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const NODE_PORTS: &str = "KUBE-NODEPORTS";
const FORWARD: &str = "KUBE-FORWARD";
const PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
const FIREWALL: &str = "KUBE-FIREWALL";
const POSTROUTING: &str = "KUBE-POSTROUTING";
const MARK_MASQ: &str = "KUBE-MARK-MASQ";

/// Above this many endpoints kube-proxy drops the comments of endpoint rules.
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// nfacct counter kube-proxy attaches to the conntrack INVALID drop rule.
pub const NFACCT_INVALID_DROPPED: &str = "ct_state_invalid_dropped_pkts";
/// nfacct counter kube-proxy attaches to localhost NodePort rules.
pub const NFACCT_LOCALHOST_NODEPORTS: &str = "localhost_nps_accepted_pkts";

/// Facts about the host's iptables and kernel that kube-proxy probes at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runtime {
    /// iptables supports `MASQUERADE --random-fully` (iptables ≥ 1.6.2).
    pub random_fully: bool,
    /// `net.netfilter.nf_conntrack_tcp_be_liberal` is set (no INVALID drop rule).
    pub tcp_be_liberal: bool,
    /// The `ct_state_invalid_dropped_pkts` nfacct object exists.
    pub nfacct_invalid_dropped: bool,
    /// The `localhost_nps_accepted_pkts` nfacct object exists.
    pub nfacct_localhost_nodeports: bool,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            random_fully: true,
            tcp_be_liberal: false,
            nfacct_invalid_dropped: false,
            nfacct_localhost_nodeports: false,
        }
    }
}

/// Everything besides the model that shapes the rules, resolved for one node and family.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderOptions {
    pub family: IpFamily,
    pub masquerade_mark: u32,
    pub masquerade_all: bool,
    pub local_traffic: LocalTraffic,
    pub node_port_addresses: NodePortAddresses,
    pub localhost_node_ports: bool,
    pub node_ip: Option<IpAddr>,
    pub runtime: Runtime,
}

impl RenderOptions {
    pub fn new(config: &ProxyConfig, node: &NodeInfo, runtime: Runtime) -> Result<Self, ConfigError> {
        Ok(RenderOptions {
            family: node.family,
            masquerade_mark: config.masquerade_mark(),
            masquerade_all: config.masquerade_all,
            local_traffic: config.local_traffic(node)?,
            node_port_addresses: config.node_port_addresses(node),
            localhost_node_ports: config.localhost_node_ports(node),
            node_ip: node.node_ip,
            runtime,
        })
    }
}

/// Renders the full-sync rules for `model`.
pub fn render(model: &Model, options: &RenderOptions) -> Ruleset {
    let mut out = Builder::new(options, model.total_endpoints() > LARGE_CLUSTER_ENDPOINTS);
    out.fixed_chains();
    for port in &model.service_ports {
        out.service_port(port, &model.topology);
    }
    out.fixed_rules();
    Ruleset {
        family: options.family,
        filter: arrange(out.filter),
        nat: arrange(out.nat),
    }
}

/// kube-proxy's test normalisation: KUBE-NODEPORTS, KUBE-SERVICES, then byte order;
/// rules grouped by chain (a stable sort keeps each chain's own order).
fn arrange(mut table: TableRules) -> TableRules {
    fn rank(chain: &str) -> (u8, &str) {
        match chain {
            NODE_PORTS => (0, ""),
            SERVICES => (1, ""),
            other => (2, other),
        }
    }
    table.chains.sort_by(|a, b| rank(a).cmp(&rank(b)));
    table.chains.dedup();
    table.rules.sort_by(|a, b| rank(&a.chain).cmp(&rank(&b.chain)));
    table
}

fn loopback_v4() -> Cidr {
    Cidr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8)
}

struct Builder<'a> {
    options: &'a RenderOptions,
    large_cluster: bool,
    filter: TableRules,
    nat: TableRules,
    /// `1/n` as kube-proxy prints it, indexed by n.
    probabilities: Vec<String>,
}

impl<'a> Builder<'a> {
    fn new(options: &'a RenderOptions, large_cluster: bool) -> Self {
        Builder {
            options,
            large_cluster,
            filter: TableRules::default(),
            nat: TableRules::default(),
            probabilities: Vec::new(),
        }
    }

    fn declare(&mut self, table: Table, chain: &str) {
        self.table(table).chains.push(chain.to_string());
    }

    fn table(&mut self, table: Table) -> &mut TableRules {
        match table {
            Table::Filter => &mut self.filter,
            Table::Nat => &mut self.nat,
        }
    }

    fn add(&mut self, table: Table, chain: &str, parts: Vec<Part>, target: Target) {
        self.table(table).rules.push(Rule::new(chain, parts, target));
    }

    /// A nat rule of `chain` that jumps to the chain `to` (most of kube-proxy's rules).
    fn jump(&mut self, chain: &str, parts: Vec<Part>, to: &str) {
        self.add(Table::Nat, chain, parts, Target::Chain(to.to_string()));
    }

    fn probability(&mut self, n: usize) -> String {
        while self.probabilities.len() <= n {
            let k = self.probabilities.len();
            self.probabilities.push(format!("{:.10}", 1.0 / k as f64));
        }
        self.probabilities[n].clone()
    }

    /// The endpoint-rule comment, absent in large-cluster mode.
    fn endpoint_comment(&self, text: impl FnOnce() -> String) -> Vec<Part> {
        if self.large_cluster {
            Vec::new()
        } else {
            vec![Part::Comment(text())]
        }
    }

    fn local_detector(&self, local: bool) -> Option<Part> {
        let negated = !local;
        match &self.options.local_traffic {
            LocalTraffic::Unknown => None,
            LocalTraffic::SourceCidr(cidr) => Some(Part::Source {
                negated,
                address: Address::Network(*cidr),
            }),
            LocalTraffic::Interface(name) => Some(Part::InInterface {
                negated,
                name: name.clone(),
            }),
            LocalTraffic::InterfacePrefix(prefix) => Some(Part::InInterface {
                negated,
                name: format!("{prefix}+"),
            }),
        }
    }

    fn fixed_chains(&mut self) {
        for chain in [SERVICES, EXTERNAL_SERVICES, FORWARD, NODE_PORTS, PROXY_FIREWALL] {
            self.declare(Table::Filter, chain);
        }
        if self.options.localhost_node_ports {
            self.declare(Table::Filter, FIREWALL);
        }
        for chain in [SERVICES, NODE_PORTS, POSTROUTING, MARK_MASQ] {
            self.declare(Table::Nat, chain);
        }
    }

    fn fixed_rules(&mut self) {
        let mark = self.options.masquerade_mark;
        let runtime = self.options.runtime;
        if self.options.localhost_node_ports {
            let loopback = Address::Network(loopback_v4());
            self.add(
                Table::Filter,
                FIREWALL,
                vec![
                    Part::Comment("block incoming localnet connections".into()),
                    Part::Destination {
                        negated: false,
                        address: loopback,
                    },
                    Part::Source {
                        negated: true,
                        address: loopback,
                    },
                    Part::ConnState {
                        negated: true,
                        states: "RELATED,ESTABLISHED,DNAT",
                    },
                ],
                Target::Drop,
            );
        }
        if !runtime.tcp_be_liberal {
            let mut parts = vec![Part::ConnState {
                negated: false,
                states: "INVALID",
            }];
            if runtime.nfacct_invalid_dropped {
                parts.push(Part::Nfacct(NFACCT_INVALID_DROPPED));
            }
            self.add(Table::Filter, FORWARD, parts, Target::Drop);
        }
        self.add(
            Table::Filter,
            FORWARD,
            vec![
                Part::Comment("kubernetes forwarding rules".into()),
                Part::Mark { negated: false, mark },
            ],
            Target::Accept,
        );
        self.add(
            Table::Filter,
            FORWARD,
            vec![
                Part::Comment("kubernetes forwarding conntrack rule".into()),
                Part::ConnState {
                    negated: false,
                    states: "RELATED,ESTABLISHED",
                },
            ],
            Target::Accept,
        );

        self.add(
            Table::Nat,
            POSTROUTING,
            vec![Part::Mark { negated: true, mark }],
            Target::Return,
        );
        self.add(Table::Nat, POSTROUTING, vec![], Target::MarkXor(mark));
        self.add(
            Table::Nat,
            POSTROUTING,
            vec![Part::Comment("kubernetes service traffic requiring SNAT".into())],
            Target::Masquerade {
                random_fully: runtime.random_fully,
            },
        );
        self.add(Table::Nat, MARK_MASQ, vec![], Target::MarkOr(mark));
        self.node_ports_tail();
    }

    /// The last KUBE-SERVICES rule(s): hand node-local destinations to KUBE-NODEPORTS.
    fn node_ports_tail(&mut self) {
        let comment = || {
            Part::Comment(
                "kubernetes service nodeports; NOTE: this must be the last rule in this chain".into(),
            )
        };
        let jump = || Target::Chain(NODE_PORTS.into());
        match self.options.node_port_addresses.clone() {
            NodePortAddresses::All => {
                let mut parts = vec![comment(), Part::AddrTypeLocal(AddrTypeSide::Destination)];
                let refused_loopback = match self.options.family {
                    IpFamily::V6 => Some(Cidr::host("::1".parse().expect("valid literal"))),
                    IpFamily::V4 if !self.options.localhost_node_ports => Some(loopback_v4()),
                    IpFamily::V4 => None,
                };
                if let Some(cidr) = refused_loopback {
                    parts.push(Part::Destination {
                        negated: true,
                        address: Address::Network(cidr),
                    });
                }
                self.add(Table::Nat, SERVICES, parts, jump());
            }
            NodePortAddresses::Only(ips) => {
                for ip in ips {
                    let loopback_refused = ip.is_loopback()
                        && (self.options.family == IpFamily::V6 || !self.options.localhost_node_ports);
                    if loopback_refused {
                        log::warn!(
                            "nodePortAddresses includes {ip}, but localhost NodePorts are off; skipped"
                        );
                        continue;
                    }
                    let parts = vec![
                        comment(),
                        Part::Destination {
                            negated: false,
                            address: Address::Host(ip),
                        },
                    ];
                    self.add(Table::Nat, SERVICES, parts, jump());
                }
            }
        }
    }

    fn service_port(&mut self, port: &ServicePort, topology: &Topology) {
        let name = port.name.to_string();
        let protocol = port.name.protocol;
        let chains = ServiceChains::of(&port.name);
        let sets = port.categorize(topology);
        let has_endpoints = sets.has_any;
        let uses_cluster_chain = !sets.cluster.is_empty() && port.uses_cluster_endpoints();
        let uses_local_chain = !sets.local.is_empty() && port.uses_local_endpoints();
        let internal_chain = if port.internal_policy_local {
            &chains.local
        } else {
            &chains.cluster
        };
        let external_policy_chain = if port.external_policy_local {
            &chains.local
        } else {
            &chains.cluster
        };
        let has_internal = has_endpoints && (!port.internal_policy_local || !sets.local.is_empty());
        let has_external = has_endpoints && (!port.external_policy_local || !sets.local.is_empty());
        let uses_external_chain = has_endpoints && port.externally_accessible();
        let uses_firewall_chain = has_endpoints
            && !port.load_balancer_ips.is_empty()
            && !port.load_balancer_source_ranges.is_empty();
        let load_balancer_chain = if uses_firewall_chain {
            &chains.firewall
        } else {
            &chains.external
        };
        let verdict = |reachable: bool| {
            if !has_endpoints {
                (format!("{name} has no endpoints"), Target::Reject)
            } else if !reachable {
                (format!("{name} has no local endpoints"), Target::Drop)
            } else {
                (String::new(), Target::None)
            }
        };
        let (internal_comment, internal_verdict) = verdict(has_internal);
        let (external_comment, external_verdict) = verdict(has_external);
        // `-m comment --comment C -m P -p P -d IP --dport PORT`
        let to_port = |comment: String, ip: IpAddr, dport: u16| {
            vec![
                Part::Comment(comment),
                Part::Protocol(protocol),
                Part::Destination {
                    negated: false,
                    address: Address::Host(ip),
                },
                Part::DestinationPort(dport),
            ]
        };

        // Cluster IP.
        if has_internal {
            let parts = to_port(format!("{name} cluster IP"), port.cluster_ip, port.port);
            let masquerade = if self.options.masquerade_all {
                Some(parts.clone())
            } else {
                self.local_detector(false).map(|not_local| {
                    let mut masq = parts.clone();
                    masq.push(not_local);
                    masq
                })
            };
            if let Some(masq) = masquerade {
                self.jump(internal_chain, masq, MARK_MASQ);
            }
            self.jump(SERVICES, parts, internal_chain);
        } else {
            let parts = to_port(internal_comment, port.cluster_ip, port.port);
            self.add(Table::Filter, SERVICES, parts, internal_verdict);
        }

        for ip in &port.external_ips {
            if has_endpoints {
                let parts = to_port(format!("{name} external IP"), *ip, port.port);
                self.jump(SERVICES, parts, &chains.external);
            }
            if !has_external {
                let parts = to_port(external_comment.clone(), *ip, port.port);
                self.add(Table::Filter, EXTERNAL_SERVICES, parts, external_verdict.clone());
            }
        }

        for ip in &port.load_balancer_ips {
            if has_endpoints {
                let parts = to_port(format!("{name} loadbalancer IP"), *ip, port.port);
                self.jump(SERVICES, parts, load_balancer_chain);
            }
            if uses_firewall_chain {
                let comment = format!("{name} traffic not accepted by {}", chains.firewall);
                self.add(
                    Table::Filter,
                    PROXY_FIREWALL,
                    to_port(comment, *ip, port.port),
                    Target::Drop,
                );
            }
        }
        if !has_external {
            for ip in &port.load_balancer_ips {
                let parts = to_port(external_comment.clone(), *ip, port.port);
                self.add(Table::Filter, EXTERNAL_SERVICES, parts, external_verdict.clone());
            }
        }

        if port.node_port != 0 {
            if has_endpoints {
                if self.options.localhost_node_ports && self.options.runtime.nfacct_localhost_nodeports {
                    let parts = vec![
                        Part::Comment(name.clone()),
                        Part::Protocol(protocol),
                        Part::Destination {
                            negated: false,
                            address: Address::Network(loopback_v4()),
                        },
                        Part::DestinationPort(port.node_port),
                        Part::Nfacct(NFACCT_LOCALHOST_NODEPORTS),
                    ];
                    self.jump(NODE_PORTS, parts, &chains.external);
                }
                let parts = vec![
                    Part::Comment(name.clone()),
                    Part::Protocol(protocol),
                    Part::DestinationPort(port.node_port),
                ];
                self.jump(NODE_PORTS, parts, &chains.external);
            }
            if !has_external {
                let parts = vec![
                    Part::Comment(external_comment.clone()),
                    Part::AddrTypeLocal(AddrTypeSide::Destination),
                    Part::Protocol(protocol),
                    Part::DestinationPort(port.node_port),
                ];
                self.add(Table::Filter, EXTERNAL_SERVICES, parts, external_verdict.clone());
            }
        }

        if port.health_check_node_port != 0 {
            let parts = vec![
                Part::Comment(format!("{name} health check node port")),
                Part::Protocol(crate::model::Protocol::Tcp),
                Part::DestinationPort(port.health_check_node_port),
            ];
            self.add(Table::Filter, NODE_PORTS, parts, Target::Accept);
        }

        if uses_cluster_chain {
            self.declare(Table::Nat, &chains.cluster);
        }
        if uses_local_chain {
            self.declare(Table::Nat, &chains.local);
        }
        if uses_external_chain {
            self.external_chain(
                &name,
                &chains,
                external_policy_chain,
                port.external_policy_local,
                has_external,
            );
        }
        if uses_firewall_chain {
            self.firewall_chain(&name, port, &chains);
        }
        if uses_cluster_chain {
            self.endpoint_jumps(&name, port, &chains.cluster, &sets.cluster);
        }
        if uses_local_chain {
            self.endpoint_jumps(&name, port, &chains.local, &sets.local);
        }
        for endpoint in &sets.reachable {
            self.endpoint_chain(&name, port, endpoint);
        }
    }

    fn external_chain(
        &mut self,
        name: &str,
        chains: &ServiceChains,
        policy_chain: &str,
        policy_local: bool,
        has_external: bool,
    ) {
        let ext = chains.external.as_str();
        self.declare(Table::Nat, ext);
        if policy_local {
            // Pods reaching an external address are treated like in-cluster clients.
            if let Some(from_pod) = self.local_detector(true) {
                let comment = Part::Comment(format!("pod traffic for {name} external destinations"));
                self.jump(ext, vec![comment, from_pod], &chains.cluster);
            }
            // The node itself: its source is the VIP's local address, so masquerade.
            let from_node = Part::AddrTypeLocal(AddrTypeSide::Source);
            let comment = Part::Comment(format!(
                "masquerade LOCAL traffic for {name} external destinations"
            ));
            self.jump(ext, vec![comment, from_node.clone()], MARK_MASQ);
            let comment = Part::Comment(format!("route LOCAL traffic for {name} external destinations"));
            self.jump(ext, vec![comment, from_node], &chains.cluster);
        } else {
            let comment = Part::Comment(format!("masquerade traffic for {name} external destinations"));
            self.jump(ext, vec![comment], MARK_MASQ);
        }
        if has_external {
            self.jump(ext, vec![], policy_chain);
        }
    }

    fn firewall_chain(&mut self, name: &str, port: &ServicePort, chains: &ServiceChains) {
        let fw = chains.firewall.as_str();
        self.declare(Table::Nat, fw);
        let comment = format!("{name} loadbalancer IP");
        let allowed = |address: Address| {
            vec![
                Part::Comment(comment.clone()),
                Part::Source {
                    negated: false,
                    address,
                },
            ]
        };
        let mut allow_from_node = false;
        for range in &port.load_balancer_source_ranges {
            self.jump(fw, allowed(Address::Network(*range)), &chains.external);
            allow_from_node |= self.options.node_ip.is_some_and(|ip| range.contains(&ip));
        }
        // A node reaching its own VIP arrives with the VIP as source.
        if allow_from_node {
            for ip in &port.load_balancer_ips {
                self.jump(fw, allowed(Address::Host(*ip)), &chains.external);
            }
        }
        let comment = Part::Comment(format!(
            "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"
        ));
        self.add(Table::Nat, fw, vec![comment], Target::None);
    }

    /// The KUBE-SVC/KUBE-SVL rules: affinity checks, then the random spread.
    fn endpoint_jumps(&mut self, name: &str, port: &ServicePort, chain: &str, endpoints: &[&Endpoint]) {
        let chain_names: Vec<(String, String)> = endpoints
            .iter()
            .map(|e| {
                let address = e.address();
                (endpoint_chain(&port.name, &address), address)
            })
            .collect();
        if let Some(affinity) = port.session_affinity {
            for (sep, address) in &chain_names {
                let mut parts = self.endpoint_comment(|| format!("{name} -> {address}"));
                parts.push(Part::RecentCheck {
                    name: sep.clone(),
                    seconds: affinity.timeout_seconds,
                });
                self.jump(chain, parts, sep);
            }
        }
        let count = chain_names.len();
        for (i, (sep, address)) in chain_names.into_iter().enumerate() {
            let mut parts = self.endpoint_comment(|| format!("{name} -> {address}"));
            if i + 1 < count {
                parts.push(Part::RandomProbability(self.probability(count - i)));
            }
            self.jump(chain, parts, &sep);
        }
    }

    /// KUBE-SEP: hairpin masquerade, then DNAT.
    fn endpoint_chain(&mut self, name: &str, port: &ServicePort, endpoint: &Endpoint) {
        let address = endpoint.address();
        let sep = endpoint_chain(&port.name, &address);
        self.declare(Table::Nat, &sep);
        let mut hairpin = self.endpoint_comment(|| name.to_string());
        hairpin.push(Part::Source {
            negated: false,
            address: Address::Host(endpoint.ip),
        });
        self.jump(&sep, hairpin, MARK_MASQ);
        let mut dnat = self.endpoint_comment(|| name.to_string());
        if port.session_affinity.is_some() {
            dnat.push(Part::RecentSet { name: sep.clone() });
        }
        dnat.push(Part::Protocol(port.name.protocol));
        self.add(Table::Nat, &sep, dnat, Target::Dnat(address));
    }
}
