//! `kproxy explain`: what happens to one new packet, in both views.
//!
//! The iptables view walks kube-proxy's rules as the exporter renders them (built-in
//! chains with their jump rules in kernel order, then kube-proxy's chains), matching
//! each typed rule against the packet: nat PREROUTING (OUTPUT for a packet the node
//! sends), filter FORWARD/INPUT/OUTPUT, nat POSTROUTING. Random rules branch: every
//! endpoint is followed with its share. The BPF view follows the datapath's lookups in
//! the live maps. Both end in a [`Verdict`] that must agree.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
};

use serde::Serialize;

use super::{InspectError, Inspection};
use crate::{
    bpf::{CtDirection, DatapathMaps, Frontend, Protocol as BpfProtocol},
    iptables::{
        Table,
        chain_name::endpoint_chain,
        kernel::KernelTable,
        restore::rule_line,
        rule::{AddrTypeSide, Part, Rule, Target},
    },
    model::Protocol,
};

/// The packet to explain: the first packet of a new flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub protocol: Protocol,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// The interface it arrives on (for `detectLocalMode: InterfaceNamePrefix`/`BridgeInterface`).
    pub in_iface: Option<String>,
}

/// What happens to the packet, comparable across the two views.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Verdict {
    /// Translated to one of these backends.
    Dnat { backends: BTreeSet<SocketAddrV4> },
    /// Rejected or dropped: the service has no usable endpoint.
    Refused,
    /// Not a service: passes untranslated.
    Untouched,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Dnat { backends } => {
                let list: Vec<String> = backends.iter().map(ToString::to_string).collect();
                write!(f, "DNAT to one of {{{}}}", list.join(", "))
            }
            Verdict::Refused => f.write_str("refused (no usable endpoint)"),
            Verdict::Untouched => f.write_str("not a service: passes untranslated"),
        }
    }
}

/// One endpoint the iptables rules can choose.
#[derive(Clone, Debug, Serialize)]
pub struct RuleChoice {
    pub backend: SocketAddrV4,
    /// The KUBE-SEP-… chain that DNATs to it.
    pub chain: String,
    /// Share of new flows.
    pub probability: f64,
    /// KUBE-POSTROUTING masquerades the flow (the KUBE-MARK-MASQ mark was set).
    pub masquerade: bool,
}

/// The walk through kube-proxy's rules.
#[derive(Clone, Debug, Serialize)]
pub struct IptablesPath {
    /// Every rule looked at, indented by chain depth, with the outcome.
    pub trace: Vec<String>,
    /// The chains the packet traversed, in order.
    pub chains: Vec<String>,
    pub choices: Vec<RuleChoice>,
    pub verdict: Verdict,
}

/// One backend the datapath can choose.
#[derive(Clone, Debug, Serialize)]
pub struct MapChoice {
    pub slot: usize,
    pub backend_id: u32,
    pub backend: SocketAddrV4,
    /// The KUBE-SEP-… chain kube-proxy would use for it.
    pub chain: Option<String>,
    pub probability: f64,
    /// The source the backend sees when the client is the backend itself (hairpin).
    pub masquerade: Option<Ipv4Addr>,
}

/// The lookups the datapath does.
#[derive(Clone, Debug, Serialize)]
pub struct BpfPath {
    pub trace: Vec<String>,
    /// The frontend matched (services map key).
    pub frontend: Option<String>,
    pub service_id: Option<u32>,
    pub choices: Vec<MapChoice>,
    /// Replies are rewritten to come from this address.
    pub rev_nat: Option<SocketAddrV4>,
    pub verdict: Verdict,
}

/// Both views of one packet.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub packet: String,
    /// The service port the destination belongs to, if any.
    pub service: Option<String>,
    pub iptables: IptablesPath,
    /// None when the agent ran in iptables mode.
    pub bpf: Option<BpfPath>,
    /// Both views reach the same verdict.
    pub agree: Option<bool>,
}

/// A packet's state while it traverses the rules.
#[derive(Clone, Debug)]
struct Flow {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    mark: u32,
    dnat: bool,
    masquerade: bool,
}

/// How a chain ends.
#[derive(Clone, Debug)]
enum Exit {
    /// Fell off its end or RETURNed: the caller goes on.
    Continue,
    Accept,
    Drop,
    Reject,
    /// DNAT, per branch of the random spread: (share, flow after DNAT, KUBE-SEP chain).
    Dnat(Vec<(f64, Flow, String)>),
    Masquerade,
}

/// Dispatch chains hold one rule per service: only their matching rule is shown.
const DISPATCH_CHAINS: [&str; 3] = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-EXTERNAL-SERVICES"];
/// Deeper than kube-proxy's rules ever nest (a guard against loops).
const MAX_DEPTH: usize = 12;

struct Walker<'a> {
    probe: &'a Probe,
    local: &'a [Ipv4Addr],
    filter: KernelTable<'a>,
    nat: KernelTable<'a>,
    trace: Vec<String>,
    chains: Vec<String>,
    tracing: bool,
}

impl<'a> Walker<'a> {
    fn is_local(&self, ip: Ipv4Addr) -> bool {
        ip.is_loopback() || self.local.contains(&ip)
    }

    fn note(&mut self, depth: usize, text: String) {
        if self.tracing {
            self.trace.push(format!("{}{text}", "  ".repeat(depth)));
        }
    }

    /// Why `rule` does not match `flow` (None: it matches), and its random probability.
    fn mismatch(&self, rule: &Rule, flow: &Flow) -> (Option<String>, Option<f64>) {
        let mut probability = None;
        for part in &rule.parts {
            let fail = match part {
                Part::Comment(_) | Part::Nfacct(_) | Part::RecentSet { .. } => None,
                Part::Protocol(p) => (*p != self.probe.protocol).then(|| format!("not {}", p.lower())),
                Part::Source { negated, address } => {
                    let inside = address.cidr().contains(&IpAddr::V4(*flow.src.ip()));
                    (inside == *negated).then(|| {
                        let rel = if inside { "in" } else { "not in" };
                        format!("source {} {rel} {}", flow.src.ip(), address.cidr())
                    })
                }
                Part::Destination { negated, address } => {
                    let inside = address.cidr().contains(&IpAddr::V4(*flow.dst.ip()));
                    (inside == *negated).then(|| {
                        let rel = if inside { "is" } else { "is not" };
                        format!("destination {} {rel} {}", flow.dst.ip(), address.cidr())
                    })
                }
                Part::InInterface { negated, name } => {
                    let on = self
                        .probe
                        .in_iface
                        .as_deref()
                        .is_some_and(|i| match name.strip_suffix('+') {
                            Some(prefix) => i.starts_with(prefix),
                            None => i == name,
                        });
                    (on == *negated).then(|| match &self.probe.in_iface {
                        Some(i) => format!("interface {i} vs {name}"),
                        None => format!("arriving interface unknown (not {name}; see --in-iface)"),
                    })
                }
                Part::DestinationPort(port) => (flow.dst.port() != *port)
                    .then(|| format!("destination port {} is not {port}", flow.dst.port())),
                Part::AddrTypeLocal(side) => {
                    let (what, ip) = match side {
                        AddrTypeSide::Source => ("source", *flow.src.ip()),
                        AddrTypeSide::Destination => ("destination", *flow.dst.ip()),
                    };
                    (!self.is_local(ip)).then(|| format!("{what} {ip} is not a node address"))
                }
                Part::RandomProbability(p) => {
                    probability = p.parse::<f64>().ok();
                    None
                }
                Part::RecentCheck { name, .. } => {
                    Some(format!("no affinity entry in {name} for a new client"))
                }
                Part::Mark { negated, mark } => {
                    let set = flow.mark & mark == *mark;
                    (set == *negated)
                        .then(|| format!("mark {mark:#x} {}", if set { "set" } else { "not set" }))
                }
                Part::ConnState { negated, states } => {
                    let matched = states
                        .split(',')
                        .any(|s| s == "NEW" || (s == "DNAT" && flow.dnat));
                    (matched == *negated).then(|| format!("a new connection is not {states}"))
                }
            };
            if fail.is_some() {
                return (fail, None);
            }
        }
        (None, probability)
    }

    fn table(&self, table: Table) -> &KernelTable<'a> {
        match table {
            Table::Filter => &self.filter,
            Table::Nat => &self.nat,
        }
    }

    /// Walks `chain` of `table`.
    fn walk(&mut self, table: Table, chain: &str, flow: &mut Flow, depth: usize) -> Exit {
        let Some(rules) = self
            .table(table)
            .chains
            .iter()
            .find(|c| c.name == chain)
            .map(|c| c.rules.clone())
        else {
            return Exit::Continue;
        };
        if depth > MAX_DEPTH {
            return Exit::Continue;
        }
        if self.tracing {
            self.chains.push(chain.to_string());
        }
        self.note(depth, format!("{table} {chain}"));
        let dispatch = DISPATCH_CHAINS.contains(&chain);
        let mut skipped = 0;
        let mut branches: Vec<(f64, Flow, String)> = Vec::new();
        let mut remaining = 1.0;
        for rule in rules {
            let (mismatch, probability) = self.mismatch(rule, flow);
            if let Some(why) = mismatch {
                if dispatch {
                    skipped += 1;
                } else {
                    self.note(depth + 1, format!("{}   [no: {why}]", rule_line(rule)));
                }
                continue;
            }
            if skipped > 0 {
                self.note(depth + 1, format!("({skipped} rules for other destinations)"));
                skipped = 0;
            }
            let share = remaining * probability.unwrap_or(1.0);
            match probability {
                Some(_) => self.note(
                    depth + 1,
                    format!(
                        "{}   [random: {:.1}% of new flows]",
                        rule_line(rule),
                        share * 100.0
                    ),
                ),
                None => self.note(depth + 1, format!("{}   [match]", rule_line(rule))),
            }
            if probability.is_some() {
                let mut branch = flow.clone();
                if let Some(Exit::Dnat(found)) = self.follow(table, rule, &mut branch, depth + 2) {
                    branches.extend(found.into_iter().map(|(s, f, c)| (s * share, f, c)));
                }
                remaining -= share;
                continue;
            }
            match self.follow(table, rule, flow, depth + 2) {
                None => {}
                Some(Exit::Dnat(found)) => {
                    branches.extend(found.into_iter().map(|(s, f, c)| (s * share, f, c)));
                    return Exit::Dnat(branches);
                }
                Some(exit) => return exit,
            }
        }
        if skipped > 0 {
            self.note(depth + 1, format!("({skipped} rules for other destinations)"));
        }
        if branches.is_empty() {
            Exit::Continue
        } else {
            Exit::Dnat(branches)
        }
    }

    /// Applies `rule`'s target; Some(exit) ends the current chain.
    fn follow(&mut self, table: Table, rule: &Rule, flow: &mut Flow, depth: usize) -> Option<Exit> {
        match &rule.target {
            Target::None => None,
            Target::Chain(chain) => match self.walk(table, chain, flow, depth) {
                Exit::Continue => None,
                exit => Some(exit),
            },
            Target::Accept => Some(Exit::Accept),
            Target::Drop => Some(Exit::Drop),
            Target::Reject => Some(Exit::Reject),
            Target::Return => Some(Exit::Continue),
            Target::Dnat(to) => {
                let to: SocketAddrV4 = to.parse().ok()?;
                flow.dst = to;
                flow.dnat = true;
                Some(Exit::Dnat(vec![(1.0, flow.clone(), rule.chain.clone())]))
            }
            Target::MarkOr(mark) => {
                flow.mark |= mark;
                None
            }
            Target::MarkXor(mark) => {
                flow.mark ^= mark;
                None
            }
            Target::Masquerade { .. } => {
                flow.masquerade = true;
                Some(Exit::Masquerade)
            }
        }
    }

    /// The filter and POSTROUTING hooks for a flow after nat: Some(masquerade) when it
    /// is let through, None when refused.
    fn after_nat(&mut self, flow: &mut Flow, from_node: bool) -> Option<bool> {
        let hook = if from_node {
            "OUTPUT"
        } else if self.is_local(*flow.dst.ip()) {
            "INPUT"
        } else {
            "FORWARD"
        };
        match self.walk(Table::Filter, hook, flow, 0) {
            Exit::Drop | Exit::Reject => return None,
            _ => {}
        }
        if hook == "INPUT" {
            return Some(false);
        }
        self.walk(Table::Nat, "POSTROUTING", flow, 0);
        Some(flow.masquerade)
    }
}

impl Inspection {
    /// Explains what happens to `probe` in both views.
    pub fn explain(&self, probe: &Probe) -> Result<Explanation, InspectError> {
        let local: Vec<Ipv4Addr> = self
            .node
            .addresses
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let iptables = self.iptables_path(probe, &local);
        let bpf = match &self.maps {
            Some(maps) => Some(self.bpf_path(maps, probe, &local)?),
            None => None,
        };
        let agree = bpf.as_ref().map(|b| b.verdict == iptables.verdict);
        let service = self
            .model
            .service_ports
            .iter()
            .find(|p| {
                let dst = IpAddr::V4(*probe.dst.ip());
                p.name.protocol == probe.protocol
                    && ((p.port == probe.dst.port()
                        && (p.cluster_ip == dst
                            || p.external_ips.contains(&dst)
                            || p.load_balancer_ips.contains(&dst)))
                        || (p.node_port == probe.dst.port() && local.contains(probe.dst.ip())))
            })
            .map(|p| p.name.to_string());
        Ok(Explanation {
            packet: format!("{} {} -> {}", probe.protocol.lower(), probe.src, probe.dst),
            service,
            iptables,
            bpf,
            agree,
        })
    }

    fn iptables_path(&self, probe: &Probe, local: &[Ipv4Addr]) -> IptablesPath {
        let mut walker = Walker {
            probe,
            local,
            filter: KernelTable::new(&self.ruleset, &self.jumps, Table::Filter),
            nat: KernelTable::new(&self.ruleset, &self.jumps, Table::Nat),
            trace: Vec::new(),
            chains: Vec::new(),
            tracing: true,
        };
        let from_node = local.contains(probe.src.ip());
        let mut flow = Flow {
            src: probe.src,
            dst: probe.dst,
            mark: 0,
            dnat: false,
            masquerade: false,
        };
        let nat_hook = if from_node { "OUTPUT" } else { "PREROUTING" };
        let branches = match walker.walk(Table::Nat, nat_hook, &mut flow, 0) {
            Exit::Dnat(branches) => branches,
            _ => Vec::new(),
        };
        let mut choices = Vec::new();
        let verdict = if branches.is_empty() {
            match walker.after_nat(&mut flow, from_node) {
                Some(_) => Verdict::Untouched,
                None => Verdict::Refused,
            }
        } else {
            let mut refused = false;
            for (i, (share, mut branch, chain)) in branches.into_iter().enumerate() {
                // The filter and POSTROUTING walk is traced for the first endpoint only:
                // kube-proxy's rules there do not depend on the endpoint.
                walker.tracing = i == 0;
                match walker.after_nat(&mut branch, from_node) {
                    Some(masquerade) => choices.push(RuleChoice {
                        backend: branch.dst,
                        chain,
                        probability: share,
                        masquerade,
                    }),
                    None => refused = true,
                }
            }
            if refused && choices.is_empty() {
                Verdict::Refused
            } else {
                Verdict::Dnat {
                    backends: choices.iter().map(|c| c.backend).collect(),
                }
            }
        };
        IptablesPath {
            trace: walker.trace,
            chains: walker.chains,
            choices,
            verdict,
        }
    }

    fn bpf_path(
        &self,
        maps: &DatapathMaps,
        probe: &Probe,
        local: &[Ipv4Addr],
    ) -> Result<BpfPath, InspectError> {
        let mut trace = Vec::new();
        let mut path = BpfPath {
            trace: Vec::new(),
            frontend: None,
            service_id: None,
            choices: Vec::new(),
            rev_nat: None,
            verdict: Verdict::Untouched,
        };
        if local.contains(probe.src.ip()) {
            trace.push(format!(
                "{} is a node address: packets the node sends itself reach no TC ingress hook, \
                 so the datapath never sees them",
                probe.src.ip()
            ));
            path.trace = trace;
            return Ok(path);
        }
        let proto = match probe.protocol {
            Protocol::Tcp => BpfProtocol::Tcp,
            Protocol::Udp => BpfProtocol::Udp,
            Protocol::Sctp => {
                trace.push("SCTP: not parsed by the datapath, passes untouched".into());
                path.trace = trace;
                return Ok(path);
            }
        };
        let services = maps.services()?;
        let find = |f: Frontend| services.iter().find(|s| s.frontend == f);
        let exact = Frontend::Address {
            addr: probe.dst,
            proto,
        };
        let mut found = find(exact);
        trace.push(format!(
            "KPROXY_SERVICES_V1[{exact}] -> {}",
            found.map_or("miss".to_string(), |s| format!("service id {}", s.id.0))
        ));
        if found.is_none() {
            let node_addrs = maps.node_addresses()?;
            let is_node = node_addrs.contains(probe.dst.ip());
            trace.push(format!(
                "KPROXY_NODE_ADDRS_V1[{}] -> {}",
                probe.dst.ip(),
                if is_node { "node address" } else { "miss" }
            ));
            if is_node {
                let node_port = Frontend::NodePort {
                    port: probe.dst.port(),
                    proto,
                };
                found = find(node_port);
                trace.push(format!(
                    "KPROXY_SERVICES_V1[{node_port}] -> {}",
                    found.map_or("miss".to_string(), |s| format!("service id {}", s.id.0))
                ));
            }
        }
        let Some(svc) = found else {
            trace.push(
                "not a frontend: the packet passes untouched (a reply of a tracked flow would be \
                 reverse-translated through its KPROXY_CT_V1 reply entry)"
                    .into(),
            );
            path.trace = trace;
            return Ok(path);
        };
        path.frontend = Some(svc.frontend.to_string());
        path.service_id = Some(svc.id.0);
        if svc.slot_count == 0 {
            trace.push(
                "0 backend slots: the datapath drops the packet and counts it in no_backend_drops \
                 (kube-proxy REJECTs it)"
                    .into(),
            );
            path.verdict = Verdict::Refused;
            path.trace = trace;
            return Ok(path);
        }
        if let Some(timeout) = svc.options.client_ip_affinity {
            trace.push(format!(
                "ClientIP affinity ({}s): KPROXY_AFFINITY_V1[{}, {}] picks the client's last backend if recent",
                timeout.as_secs(),
                probe.src.ip(),
                svc.id.0
            ));
        }
        if let Some(flow) = maps.conntrack()?.into_iter().find(|f| {
            f.direction == CtDirection::Service
                && f.src == probe.src
                && f.dst == probe.dst
                && f.proto == probe.protocol.number()
                && f.service_id == svc.id
        }) {
            trace.push(format!(
                "KPROXY_CT_V1[{} -> {}] -> an existing flow: stays on backend {}",
                probe.src, probe.dst, flow.backend
            ));
        }
        let port = self
            .frontend_index()
            .get(&svc.frontend)
            .map(|(p, _)| (*p).clone());
        let by_id: std::collections::HashMap<_, _> = maps.backends()?.into_iter().collect();
        let masq = maps.masquerade_address()?;
        let share = 1.0 / f64::from(svc.slot_count);
        for (slot, id) in svc.backends.iter().enumerate() {
            let Some(backend) = by_id.get(id).copied() else {
                trace.push(format!(
                    "KPROXY_SLOTS_V1[{}, {slot}] -> backend {id}: not in KPROXY_BACKENDS_V1 (flows choosing it are dropped)",
                    svc.id.0
                ));
                continue;
            };
            let chain = port
                .as_ref()
                .map(|p| endpoint_chain(&p.name, &backend.to_string()));
            trace.push(format!(
                "KPROXY_SLOTS_V1[{}, {slot}] -> backend {id} -> KPROXY_BACKENDS_V1[{id}] = {backend}{}   [random: {:.1}%]",
                svc.id.0,
                chain.as_ref().map(|c| format!(" ({c})")).unwrap_or_default(),
                share * 100.0
            ));
            let hairpin = backend.ip() == probe.src.ip();
            if hairpin {
                trace.push(match masq {
                    Some(m) => format!("  hairpin: the client is this backend; source rewritten to {m}"),
                    None => "  hairpin: the client is this backend, and no masquerade address is set".into(),
                });
            }
            path.choices.push(MapChoice {
                slot,
                backend_id: id.0,
                backend,
                chain,
                probability: share,
                masquerade: masq.filter(|_| hairpin),
            });
        }
        let rev = maps.rev_nat(svc.id)?;
        path.rev_nat = rev.map(|r| if r.ip().is_unspecified() { probe.dst } else { r });
        trace.push(match rev {
            Some(r) if r.ip().is_unspecified() => format!(
                "KPROXY_REVNAT_V1[{}] = *:{}: replies are rewritten to come from {} (the node address used)",
                svc.id.0,
                r.port(),
                probe.dst
            ),
            Some(r) => format!(
                "KPROXY_REVNAT_V1[{}] = {r}: replies are rewritten to come from it",
                svc.id.0
            ),
            None => format!(
                "KPROXY_REVNAT_V1[{}] -> miss: replies would leave untranslated",
                svc.id.0
            ),
        });
        path.verdict = if path.choices.is_empty() {
            Verdict::Refused
        } else {
            Verdict::Dnat {
                backends: path.choices.iter().map(|c| c.backend).collect(),
            }
        };
        path.trace = trace;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::state::{Applied, Recorded};

    const HELLO_SVC: &str = "KUBE-SVC-YG6ZEOBCLVGD3AJB";
    const HELLO_EXT: &str = "KUBE-EXT-YG6ZEOBCLVGD3AJB";
    const SEP_A: &str = "KUBE-SEP-7I3URQ2O437FVP5U";
    const SEP_B: &str = "KUBE-SEP-PSPHHDAXPY5YRT7B";

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    /// The seed's host1 in iptables mode (no maps), model and config from `examples/`.
    fn inspection(model_dir: PathBuf) -> Inspection {
        let recorded = Recorded {
            applied: Applied {
                mode: "iptables".into(),
                node_name: "host1".into(),
                node_addresses: vec!["192.168.77.10".parse().unwrap()],
                ..Applied::default()
            },
            model_dir,
            config: Some(examples().join("kube-proxy-config.yaml")),
        };
        Inspection::new(Path::new("/nonexistent"), recorded, None).unwrap()
    }

    fn explain(inspection: &Inspection, src: &str, dst: &str) -> Explanation {
        let probe = Probe {
            protocol: Protocol::Tcp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            in_iface: None,
        };
        inspection.explain(&probe).unwrap()
    }

    fn sock(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn both() -> BTreeSet<SocketAddrV4> {
        [sock("172.16.166.130:8080"), sock("172.16.192.89:8080")].into()
    }

    /// (backend, chain, probability, masquerade) of every choice.
    fn choices(e: &Explanation) -> Vec<(SocketAddrV4, &str, f64, bool)> {
        e.iptables
            .choices
            .iter()
            .map(|c| (c.backend, c.chain.as_str(), c.probability, c.masquerade))
            .collect()
    }

    #[test]
    fn cluster_ip_from_a_pod_spreads_over_both_endpoints_without_masquerade() {
        let e = explain(&inspection(examples()), "172.16.166.140:5555", "10.104.81.240:80");
        assert_eq!(e.iptables.verdict, Verdict::Dnat { backends: both() });
        assert_eq!(
            choices(&e),
            vec![
                (sock("172.16.166.130:8080"), SEP_A, 0.5, false),
                (sock("172.16.192.89:8080"), SEP_B, 0.5, false),
            ]
        );
        let nat_path: Vec<&str> = e.iptables.chains.iter().map(String::as_str).take(5).collect();
        assert_eq!(nat_path, ["PREROUTING", "KUBE-SERVICES", HELLO_SVC, SEP_A, SEP_B]);
        assert!(!e.iptables.chains.iter().any(|c| c == "KUBE-NODEPORTS"));
        assert_eq!(e.service.as_deref(), Some("default/hello-app-service"));
        assert_eq!(
            (e.bpf.is_none(), e.agree),
            (true, None),
            "no maps in iptables mode"
        );
    }

    #[test]
    fn cluster_ip_from_outside_the_pod_network_is_masqueraded() {
        let e = explain(&inspection(examples()), "192.168.77.100:5555", "10.104.81.240:80");
        assert_eq!(e.iptables.verdict, Verdict::Dnat { backends: both() });
        assert!(
            e.iptables.choices.iter().all(|c| c.masquerade),
            "{:#?}",
            e.iptables
        );
        assert!(
            e.iptables
                .trace
                .iter()
                .any(|l| l.contains("-j KUBE-MARK-MASQ   [match]"))
        );
    }

    #[test]
    fn node_port_goes_through_the_external_chain_and_masquerades() {
        let e = explain(
            &inspection(examples()),
            "192.168.77.100:5555",
            "192.168.77.10:30811",
        );
        assert_eq!(e.iptables.verdict, Verdict::Dnat { backends: both() });
        let nat_path: Vec<&str> = e.iptables.chains.iter().map(String::as_str).take(7).collect();
        assert_eq!(
            nat_path,
            [
                "PREROUTING",
                "KUBE-SERVICES",
                "KUBE-NODEPORTS",
                HELLO_EXT,
                "KUBE-MARK-MASQ",
                HELLO_SVC,
                SEP_A
            ]
        );
        assert!(e.iptables.choices.iter().all(|c| c.masquerade));
        assert_eq!(e.service.as_deref(), Some("default/hello-app-service"));
    }

    #[test]
    fn hairpin_masquerades_only_the_flow_back_to_the_client_itself() {
        let e = explain(&inspection(examples()), "172.16.166.130:5555", "10.104.81.240:80");
        assert_eq!(
            choices(&e),
            vec![
                (sock("172.16.166.130:8080"), SEP_A, 0.5, true),
                (sock("172.16.192.89:8080"), SEP_B, 0.5, false),
            ]
        );
    }

    #[test]
    fn other_addresses_pass_untouched() {
        let e = explain(&inspection(examples()), "172.16.166.140:5555", "10.104.81.241:80");
        assert_eq!(e.iptables.verdict, Verdict::Untouched);
        assert!(e.iptables.choices.is_empty());
        assert!(!e.iptables.chains.iter().any(|c| c.starts_with("KUBE-SVC-")));
        assert_eq!(e.service, None);
        // Same address, wrong port: not the service either.
        let e = explain(&inspection(examples()), "172.16.166.140:5555", "10.104.81.240:81");
        assert_eq!(e.iptables.verdict, Verdict::Untouched);
    }

    #[test]
    fn a_service_without_endpoints_is_rejected_by_the_filter_table() {
        let dir = std::env::temp_dir().join(format!("kproxy-explain-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = std::fs::read_to_string(examples().join("hello-app.yaml")).unwrap();
        let cut = yaml.find("endpoints:\n").unwrap();
        std::fs::write(
            dir.join("hello-app.yaml"),
            format!("{}endpoints: []\n", &yaml[..cut]),
        )
        .unwrap();
        let inspection = inspection(dir.clone());
        std::fs::remove_dir_all(&dir).unwrap();

        let e = explain(&inspection, "172.16.166.140:5555", "10.104.81.240:80");
        assert_eq!(e.iptables.verdict, Verdict::Refused);
        assert!(
            e.iptables
                .trace
                .iter()
                .any(|l| l.contains("has no endpoints") && l.contains("-j REJECT   [match]")),
            "{:#?}",
            e.iptables.trace
        );
        let e = explain(&inspection, "192.168.77.100:5555", "192.168.77.10:30811");
        assert_eq!(e.iptables.verdict, Verdict::Refused);
        assert!(e.iptables.chains.iter().any(|c| c == "KUBE-EXTERNAL-SERVICES"));
    }
}
