//! The per-service-port view: kube-proxy's chains and rules for the port, beside the map
//! entries that implement each of its frontends, with counters and conntrack counts.
//! The structs are the `-o json` schema (see [`super::json`]), so fields only get added.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddrV4},
};

use serde::Serialize;

use super::{InspectError, Inspection, port_desired};
use crate::{
    ebpf::{
        BackendId, CtDirection, DatapathMaps, Frontend, FrontendEntry, FrontendId, FrontendState,
        ktime_now_ns,
    },
    iptables::{
        Table,
        chain_name::{ServiceChains, endpoint_chain},
        restore::rule_line,
        rule::{Address, Part, Rule, Target},
    },
    model::ServicePort,
    record::Mode,
};

/// Packets and bytes the datapath translated, summed over CPUs (the maps' own counters,
/// printed as they are).
pub type Counters = kproxy_common::FlowCounters;

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Version of this JSON schema.
    pub schema: u32,
    pub pin_path: String,
    pub agent: AgentFacts,
    pub services: Vec<ServiceReport>,
    /// What the model asks for that the eBPF datapath does not do.
    pub unsupported: Vec<String>,
    /// The datapath's global event counters (ebpf mode).
    pub events: BTreeMap<String, u64>,
}

/// What the agent recorded at its last sync, and the node-wide map entries.
#[derive(Clone, Debug, Serialize)]
pub struct AgentFacts {
    pub mode: Mode,
    pub node_name: String,
    pub sync: u64,
    pub applied_at_unix: u64,
    /// The node-address map: NodePort frontends answer on these.
    pub node_addresses: Vec<String>,
    /// The masquerade (hairpin) source in the config map.
    pub masquerade_address: Option<String>,
}

/// One service port: its chains and rules, and its frontends' map entries.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceReport {
    /// `namespace/name[:port]`, kube-proxy's service port name.
    pub service: String,
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: String,
    pub chains: Chains,
    /// The rules kube-proxy writes for this port (restore spelling, `table: -A …`).
    pub rules: Vec<String>,
    pub frontends: Vec<FrontendReport>,
    /// Sum over the frontends' map counters.
    pub counters: Counters,
    /// Live (unexpired) flows to any of the frontends.
    pub conntrack_flows: usize,
}

/// The port's kube-proxy chains that exist for the current endpoints.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Chains {
    /// KUBE-SVC-…
    pub cluster: Option<String>,
    /// KUBE-SVL-…
    pub local: Option<String>,
    /// KUBE-EXT-…
    pub external: Option<String>,
    /// KUBE-FW-…
    pub firewall: Option<String>,
    /// KUBE-SEP-… per reachable endpoint.
    pub endpoints: Vec<EndpointChain>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EndpointChain {
    pub endpoint: String,
    pub chain: String,
}

/// One frontend: the iptables rule that catches its packets, and its map entries.
#[derive(Clone, Debug, Serialize)]
pub struct FrontendReport {
    /// `cluster_ip`, `node_port`, `external_ip` or `load_balancer_ip`.
    pub kind: &'static str,
    /// As the services map key reads: `10.104.81.240:80/tcp`, `nodeport *:30811/tcp`.
    pub frontend: String,
    /// The rule in KUBE-SERVICES / KUBE-NODEPORTS (or the filter REJECT) for it.
    pub iptables_rule: Option<String>,
    /// Where that rule sends the packet (a chain, REJECT, DROP).
    pub iptables_target: Option<String>,
    /// The backends the model gives it.
    pub expected_backends: Vec<String>,
    /// Its services-map entry; None when the maps lack it (see `--verify`).
    pub map: Option<MapEntry>,
}

/// A frontend's entries in the services, slots, backends and reverse-NAT maps.
#[derive(Clone, Debug, Serialize)]
pub struct MapEntry {
    pub service_id: u32,
    pub affinity_timeout_s: Option<u64>,
    /// Slots the service value declares (0 = the datapath drops the frontend's packets).
    pub slot_count: u16,
    pub backends: Vec<BackendReport>,
    /// The reverse-NAT entry: replies are rewritten to come from it (0.0.0.0:port for a
    /// NodePort: the node address the client used).
    pub rev_nat: Option<String>,
    pub counters: Counters,
    pub conntrack_flows: usize,
}

/// One slot of a frontend.
#[derive(Clone, Debug, Serialize)]
pub struct BackendReport {
    pub slot: usize,
    pub backend_id: u32,
    /// None when the backend id is not in the backends map.
    pub address: Option<String>,
    /// kube-proxy's KUBE-SEP-… chain for this endpoint of this service port.
    pub chain: Option<String>,
    /// Counters of the backend entry (shared by every frontend using this endpoint).
    pub counters: Counters,
}

/// Live service-direction conntrack entries per service id.
fn live_flows(maps: &DatapathMaps) -> Result<HashMap<FrontendId, usize>, InspectError> {
    let now = ktime_now_ns();
    let timeouts = maps.ct_timeouts()?;
    let mut out = HashMap::new();
    for flow in maps.conntrack()? {
        if flow.direction == CtDirection::Service && !super::conntrack::expired(&flow, now, &timeouts) {
            *out.entry(flow.frontend_id).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// Whether `rule` belongs to service port `name` by its comment (`name`, `name …`).
fn commented_for(rule: &Rule, name: &str) -> bool {
    rule.comment()
        .is_some_and(|c| c == name || c.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')))
}

fn table_line(table: Table, rule: &Rule) -> String {
    format!("{table}: {}", rule_line(rule))
}

fn target_text(target: &Target) -> String {
    match target {
        Target::Chain(chain) => chain.clone(),
        Target::Dnat(to) => format!("DNAT {to}"),
        other => other.name().to_string(),
    }
}

fn kind_of(port: &ServicePort, frontend: Frontend) -> &'static str {
    match frontend {
        Frontend::NodePort { .. } => "node_port",
        Frontend::Address { addr, .. } if IpAddr::V4(*addr.ip()) == port.cluster_ip => "cluster_ip",
        Frontend::Address { addr, .. } if port.external_ips.contains(&IpAddr::V4(*addr.ip())) => {
            "external_ip"
        }
        Frontend::Address { .. } => "load_balancer_ip",
    }
}

/// The rule of a fixed chain that catches packets to `frontend` of `port`.
fn entry_rule<'a>(
    inspection: &'a Inspection,
    port: &ServicePort,
    frontend: Frontend,
) -> Option<(Table, &'a Rule)> {
    let name = port.name.to_string();
    let (ip, dport) = match frontend {
        Frontend::Address { addr, .. } => (Some(IpAddr::V4(*addr.ip())), addr.port()),
        Frontend::NodePort { port, .. } => (None, port),
    };
    let fits = |rule: &Rule| {
        let destination = rule.parts.iter().find_map(|p| match p {
            Part::Destination {
                negated: false,
                address,
            } => Some(*address),
            _ => None,
        });
        let to_ip = match (ip, destination) {
            (Some(ip), Some(Address::Host(d))) => ip == d,
            // NodePort rules name no host (loopback NodePort rules name 127.0.0.0/8).
            (None, None) => true,
            _ => false,
        };
        commented_for(rule, &name)
            && rule.protocol() == Some(port.name.protocol)
            && rule.destination_port() == Some(dport)
            && to_ip
    };
    [
        (Table::Nat, "KUBE-SERVICES"),
        (Table::Nat, "KUBE-NODEPORTS"),
        (Table::Filter, "KUBE-SERVICES"),
        (Table::Filter, "KUBE-EXTERNAL-SERVICES"),
    ]
    .into_iter()
    .find_map(|(table, chain)| {
        inspection
            .ruleset
            .table(table)
            .rules_of(chain)
            .find(|r| fits(r))
            .map(|r| (table, r))
    })
}

impl Inspection {
    /// The report of every service port, or of `only` (`ns/name` or `ns/name:port`).
    pub fn report(&self, only: Option<&str>) -> Result<Report, InspectError> {
        let ports = self.ports(only)?;
        let applied = &self.recorded.applied;
        let (live, flows, node_addresses, masquerade, events) = match &self.maps {
            Some(maps) => {
                let live: BTreeMap<Frontend, FrontendEntry> =
                    maps.frontends()?.into_iter().map(|s| (s.frontend, s)).collect();
                let events = maps
                    .events()?
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), v))
                    .collect();
                (
                    live,
                    live_flows(maps)?,
                    maps.node_addresses()?.iter().map(ToString::to_string).collect(),
                    maps.masquerade_address()?.map(|a| a.to_string()),
                    events,
                )
            }
            None => Default::default(),
        };
        let backends: BTreeMap<BackendId, SocketAddrV4> = match &self.maps {
            Some(maps) => maps.backends()?.into_iter().collect(),
            None => BTreeMap::new(),
        };
        let mut services = Vec::with_capacity(ports.len());
        for port in ports {
            services.push(self.service_report(port, &live, &backends, &flows)?);
        }
        Ok(Report {
            schema: super::json::SCHEMA,
            pin_path: self.pin_path.display().to_string(),
            agent: AgentFacts {
                mode: applied.mode,
                node_name: applied.node_name.clone(),
                sync: applied.sync,
                applied_at_unix: applied.applied_at_unix,
                node_addresses,
                masquerade_address: masquerade,
            },
            services,
            unsupported: self.desired().unsupported,
            events,
        })
    }

    fn service_report(
        &self,
        port: &ServicePort,
        live: &BTreeMap<Frontend, FrontendEntry>,
        backends: &BTreeMap<BackendId, SocketAddrV4>,
        flows: &HashMap<FrontendId, usize>,
    ) -> Result<ServiceReport, InspectError> {
        let name = port.name.to_string();
        let names = ServiceChains::of(&port.name);
        let nat = &self.ruleset.nat;
        let declared = |chain: &String| nat.chains.contains(chain).then(|| chain.clone());
        let endpoints: Vec<EndpointChain> = port
            .categorize(&self.model.topology)
            .reachable
            .iter()
            .map(|e| EndpointChain {
                endpoint: e.address(),
                chain: endpoint_chain(&port.name, &e.address()),
            })
            .collect();
        let mut own: Vec<&str> = vec![&names.cluster, &names.local, &names.external, &names.firewall];
        own.extend(endpoints.iter().map(|e| e.chain.as_str()));
        let mut rules = Vec::new();
        for table in [Table::Nat, Table::Filter] {
            for rule in &self.ruleset.table(table).rules {
                if own.contains(&rule.chain.as_str()) || commented_for(rule, &name) {
                    rules.push(table_line(table, rule));
                }
            }
        }
        let sep_of = |addr: &SocketAddrV4| endpoint_chain(&port.name, &addr.to_string());

        let mut desired: Vec<(Frontend, FrontendState)> =
            port_desired(&self.model, port, &self.masquerade, self.node.node_ip)
                .frontends
                .into_iter()
                .collect();
        // ClusterIP first, then external IPs and LoadBalancer IPs, NodePort last.
        let rank = |f: &Frontend| match kind_of(port, *f) {
            "cluster_ip" => 0,
            "external_ip" => 1,
            "load_balancer_ip" => 2,
            _ => 3,
        };
        desired.sort_by_key(|(f, _)| (rank(f), *f));
        let mut frontends = Vec::with_capacity(desired.len());
        let mut total = Counters::default();
        let mut total_flows = 0;
        for (frontend, state) in desired {
            let entry = entry_rule(self, port, frontend);
            let map = match (live.get(&frontend), &self.maps) {
                (Some(svc), Some(maps)) => {
                    let mut slots = Vec::with_capacity(svc.backends.len());
                    for (slot, id) in svc.backends.iter().enumerate() {
                        let address = backends.get(id);
                        slots.push(BackendReport {
                            slot,
                            backend_id: id.0,
                            address: address.map(ToString::to_string),
                            chain: address.map(sep_of),
                            counters: maps.backend_counters(*id)?,
                        });
                    }
                    let counters: Counters = maps.frontend_counters(svc.id)?;
                    let conntrack_flows = flows.get(&svc.id).copied().unwrap_or(0);
                    total += counters;
                    total_flows += conntrack_flows;
                    Some(MapEntry {
                        service_id: svc.id.0,
                        affinity_timeout_s: svc.options.client_ip_affinity.map(|t| t.as_secs()),
                        slot_count: svc.slot_count,
                        backends: slots,
                        rev_nat: maps.rev_nat(svc.id)?.map(|a| a.to_string()),
                        counters,
                        conntrack_flows,
                    })
                }
                _ => None,
            };
            frontends.push(FrontendReport {
                kind: kind_of(port, frontend),
                frontend: frontend.to_string(),
                iptables_rule: entry.map(|(table, rule)| table_line(table, rule)),
                iptables_target: entry.map(|(_, rule)| target_text(&rule.target)),
                expected_backends: state.backends.iter().map(ToString::to_string).collect(),
                map,
            });
        }
        Ok(ServiceReport {
            service: name,
            namespace: port.name.namespace.clone(),
            name: port.name.name.clone(),
            port_name: port.name.port.clone(),
            protocol: port.name.protocol.lower().to_string(),
            chains: Chains {
                cluster: declared(&names.cluster),
                local: declared(&names.local),
                external: declared(&names.external),
                firewall: declared(&names.firewall),
                endpoints,
            },
            rules,
            frontends,
            counters: total,
            conntrack_flows: total_flows,
        })
    }
}
