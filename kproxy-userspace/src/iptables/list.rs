//! What `iptables -n -t TABLE -L [CHAIN]` prints for the loaded state (the layout of
//! iptables' non-verbose listing: fixed-width columns, then each match's and the
//! target's own text).

use std::fmt::Write as _;

use super::{
    IptablesError, Ruleset,
    jumps::JumpRule,
    kernel::{KernelChain, KernelTable},
    rule::{AddrTypeSide, Address, Part, Rule, Table, Target},
    save::{kernel_probability, recent_mask, reject_with},
};
use crate::model::IpFamily;

/// How the `prot` column names protocols: iptables 1.8.9 and 1.8.10 print numbers
/// with `-n`; older and newer releases print names (as the seed article shows).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProtocolColumn {
    #[default]
    Names,
    Numbers,
}

impl ProtocolColumn {
    /// The style the given `iptables --version` output uses.
    pub fn for_version(version_output: &str) -> Self {
        let numbers = ["v1.8.9", "v1.8.10"]
            .iter()
            .any(|v| version_output.split_whitespace().any(|word| word == *v));
        if numbers {
            ProtocolColumn::Numbers
        } else {
            ProtocolColumn::Names
        }
    }
}

const HEADER: &str = "target     prot opt source               destination         ";

/// A source/destination column: any = `0.0.0.0/0`, a host without `/32`.
fn address_column(address: Option<&Address>, family: IpFamily) -> String {
    let cidr = address.map_or(family.any(), Address::cidr);
    if cidr.is_host() {
        cidr.network().to_string()
    } else {
        cidr.to_string()
    }
}

fn write_rule(out: &mut String, rule: &Rule, family: IpFamily, style: ProtocolColumn) {
    let protocol = match (rule.protocol(), style) {
        (Some(p), ProtocolColumn::Names) => p.lower().to_string(),
        (Some(p), ProtocolColumn::Numbers) => p.number().to_string(),
        (None, ProtocolColumn::Names) => "all".into(),
        (None, ProtocolColumn::Numbers) => "0".into(),
    };
    let column = |want_source: bool| {
        let found = rule.parts.iter().find_map(|p| match (p, want_source) {
            (Part::Source { negated, address }, true) | (Part::Destination { negated, address }, false) => {
                Some((*negated, address))
            }
            _ => None,
        });
        let text = address_column(found.map(|f| f.1), family);
        let mark = if found.is_some_and(|f| f.0) { '!' } else { ' ' };
        (mark, text)
    };
    let (src_neg, src) = column(true);
    let (dst_neg, dst) = column(false);
    let _ = write!(
        out,
        "{:<9}  {protocol:<5}-- {src_neg}{src:<19} {dst_neg}{dst:<19} ",
        rule.target.name()
    );
    let neg = |negated: bool| if negated { "! " } else { "" };
    for part in &rule.parts {
        let _ = match part {
            Part::Comment(text) => write!(out, " /* {text} */"),
            Part::Protocol(protocol) => {
                let _ = write!(out, " {}", protocol.lower());
                match rule.destination_port() {
                    Some(port) => write!(out, " dpt:{port}"),
                    None => Ok(()),
                }
            }
            Part::AddrTypeLocal(AddrTypeSide::Source) => write!(out, " ADDRTYPE match src-type LOCAL"),
            Part::AddrTypeLocal(AddrTypeSide::Destination) => write!(out, " ADDRTYPE match dst-type LOCAL"),
            Part::RandomProbability(p) => write!(
                out,
                " statistic mode random probability {}",
                kernel_probability(p)
            ),
            Part::RecentCheck { name, seconds } => write!(
                out,
                " recent: CHECK seconds: {seconds} reap name: {name} side: source mask: {}",
                recent_mask(family)
            ),
            Part::RecentSet { name } => {
                write!(
                    out,
                    " recent: SET name: {name} side: source mask: {}",
                    recent_mask(family)
                )
            }
            Part::Mark { negated, mark } => write!(out, " mark match {}{mark:#x}/{mark:#x}", neg(*negated)),
            Part::ConnState { negated, states } => write!(out, " {}ctstate {states}", neg(*negated)),
            Part::Nfacct(name) => write!(out, " nfacct-name  {name}"),
            Part::Source { .. }
            | Part::Destination { .. }
            | Part::InInterface { .. }
            | Part::DestinationPort(_) => Ok(()),
        };
    }
    let _ = match &rule.target {
        Target::Dnat(to) => write!(out, " to:{to}"),
        Target::MarkOr(mark) => write!(out, " MARK or {mark:#x}"),
        Target::MarkXor(mark) => write!(out, " MARK xor {mark:#x}"),
        Target::Masquerade { random_fully: true } => write!(out, " random-fully"),
        Target::Reject => write!(out, " reject-with {}", reject_with(family)),
        _ => Ok(()),
    };
    out.push('\n');
}

fn write_chain(
    out: &mut String,
    chain: &KernelChain<'_>,
    references: usize,
    family: IpFamily,
    style: ProtocolColumn,
) {
    if chain.builtin {
        let _ = writeln!(out, "Chain {} (policy ACCEPT)", chain.name);
    } else {
        let _ = writeln!(out, "Chain {} ({references} references)", chain.name);
    }
    let _ = writeln!(out, "{HEADER}");
    for rule in &chain.rules {
        write_rule(out, rule, family, style);
    }
}

/// `iptables -n -t TABLE -L [CHAIN]`: one chain, or every chain separated by blank lines.
pub fn list(
    ruleset: &Ruleset,
    jumps: &[JumpRule],
    table: Table,
    chain: Option<&str>,
    style: ProtocolColumn,
) -> Result<String, IptablesError> {
    let kernel = KernelTable::new(ruleset, jumps, table);
    let references = kernel.references();
    let chosen: Vec<&KernelChain<'_>> = kernel
        .chains
        .iter()
        .filter(|c| chain.is_none_or(|name| c.name == name))
        .collect();
    if let (Some(name), true) = (chain, chosen.is_empty()) {
        return Err(IptablesError::UnknownChain {
            table,
            chain: name.to_string(),
        });
    }
    let mut out = String::new();
    for (i, c) in chosen.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let count = references.get(c.name).copied().unwrap_or(0);
        write_chain(&mut out, c, count, ruleset.family, style);
    }
    Ok(out)
}
