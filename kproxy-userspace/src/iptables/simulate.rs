//! A walk of one packet through kube-proxy's rules as the exporter renders them
//! (built-in chains with their jump rules in kernel order, then kube-proxy's chains),
//! matching each typed rule against the packet: nat PREROUTING (OUTPUT for a packet the
//! node sends), filter FORWARD/INPUT/OUTPUT, nat POSTROUTING. Random rules branch: every
//! endpoint is followed with its share. `kproxy explain` sets it beside the BPF maps.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
};

use serde::Serialize;

use super::{
    Ruleset, Table,
    jumps::JumpRule,
    kernel::KernelTable,
    restore::rule_line,
    rule::{AddrTypeSide, Part, Rule, Target},
};
use crate::model::Protocol;

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

/// Walks the first packet of a new flow, `probe`, through `ruleset` and the `jumps` from
/// the built-in chains, on a node whose addresses are `local`.
pub fn simulate(ruleset: &Ruleset, jumps: &[JumpRule], probe: &Probe, local: &[Ipv4Addr]) -> IptablesPath {
    let mut walker = Walker {
        probe,
        local,
        filter: KernelTable::new(ruleset, jumps, Table::Filter),
        nat: KernelTable::new(ruleset, jumps, Table::Nat),
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
