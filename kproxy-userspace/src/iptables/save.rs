//! What `iptables-save` prints once the payload and the jump rules are loaded: the
//! kernel's spelling (generic matches first, `/32` on hosts, quoted comments,
//! `--set-xmark`, 11-decimal probabilities, the `recent` defaults spelled out).
//! Identical for the nft and legacy backends except the version header.

use std::fmt::Write as _;

use super::{
    Ruleset,
    jumps::JumpRule,
    kernel::KernelTable,
    rule::{AddrTypeSide, Address, Part, Rule, Table, Target},
};
use crate::model::IpFamily;

/// The address as the kernel stores it: always `net/len`.
fn address_text(address: &Address) -> String {
    address.cidr().to_string()
}

/// `--comment` as iptables-save quotes it: bare only for `[A-Za-z0-9_-]+`.
fn quote_comment(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return text.to_string();
    }
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\'' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// The probability as xt_statistic stores it (`lround(p * 2^31)`) and prints it (`%.11f`).
pub(crate) fn kernel_probability(text: &str) -> String {
    const SCALE: f64 = 2_147_483_648.0;
    let p: f64 = text.parse().unwrap_or(0.0);
    let stored = (p * SCALE).round();
    format!("{:.11}", stored / SCALE)
}

/// The `recent` match's default source mask.
pub(crate) fn recent_mask(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "255.255.255.255",
        IpFamily::V6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    }
}

pub(crate) fn reject_with(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "icmp-port-unreachable",
        IpFamily::V6 => "icmp6-port-unreachable",
    }
}

fn write_rule(out: &mut String, rule: &Rule, family: IpFamily) {
    let _ = write!(out, "-A {}", rule.chain);
    // Generic matches first, in the kernel's fixed order.
    let neg = |negated: bool| if negated { "! " } else { "" };
    for part in &rule.parts {
        if let Part::Source { negated, address } = part {
            let _ = write!(out, " {}-s {}", neg(*negated), address_text(address));
        }
    }
    for part in &rule.parts {
        if let Part::Destination { negated, address } = part {
            let _ = write!(out, " {}-d {}", neg(*negated), address_text(address));
        }
    }
    for part in &rule.parts {
        if let Part::InInterface { negated, name } = part {
            let _ = write!(out, " {}-i {name}", neg(*negated));
        }
    }
    if let Some(protocol) = rule.protocol() {
        let _ = write!(out, " -p {}", protocol.lower());
    }
    // Then the matches in the order they were given.
    for part in &rule.parts {
        let _ = match part {
            Part::Comment(text) => write!(out, " -m comment --comment {}", quote_comment(text)),
            Part::Protocol(protocol) => {
                let _ = write!(out, " -m {}", protocol.lower());
                match rule.destination_port() {
                    Some(port) => write!(out, " --dport {port}"),
                    None => Ok(()),
                }
            }
            Part::AddrTypeLocal(AddrTypeSide::Source) => write!(out, " -m addrtype --src-type LOCAL"),
            Part::AddrTypeLocal(AddrTypeSide::Destination) => write!(out, " -m addrtype --dst-type LOCAL"),
            Part::RandomProbability(p) => {
                write!(
                    out,
                    " -m statistic --mode random --probability {}",
                    kernel_probability(p)
                )
            }
            Part::RecentCheck { name, seconds } => write!(
                out,
                " -m recent --rcheck --seconds {seconds} --reap --name {name} --mask {} --rsource",
                recent_mask(family)
            ),
            Part::RecentSet { name } => write!(
                out,
                " -m recent --set --name {name} --mask {} --rsource",
                recent_mask(family)
            ),
            Part::Mark { negated, mark } => {
                write!(out, " -m mark {}--mark {mark:#x}/{mark:#x}", neg(*negated))
            }
            Part::ConnState { negated, states } => {
                write!(out, " -m conntrack {}--ctstate {states}", neg(*negated))
            }
            Part::Nfacct(name) => write!(out, " -m nfacct --nfacct-name  {name}"),
            Part::Source { .. }
            | Part::Destination { .. }
            | Part::InInterface { .. }
            | Part::DestinationPort(_) => Ok(()),
        };
    }
    let _ = match &rule.target {
        Target::None => Ok(()),
        Target::Reject => write!(out, " -j REJECT --reject-with {}", reject_with(family)),
        Target::Dnat(to) => write!(out, " -j DNAT --to-destination {to}"),
        Target::MarkOr(mark) => write!(out, " -j MARK --set-xmark {mark:#x}/{mark:#x}"),
        Target::MarkXor(mark) => write!(out, " -j MARK --set-xmark {mark:#x}/0x0"),
        Target::Masquerade { random_fully: true } => write!(out, " -j MASQUERADE --random-fully"),
        other => write!(out, " -j {}", other.name()),
    };
    out.push('\n');
}

fn write_table(out: &mut String, kernel: &KernelTable<'_>, family: IpFamily) {
    let _ = writeln!(out, "# Generated by kproxy export iptables --format save");
    let _ = writeln!(out, "*{}", kernel.table);
    for chain in &kernel.chains {
        let policy = if chain.builtin { "ACCEPT" } else { "-" };
        let _ = writeln!(out, ":{} {policy} [0:0]", chain.name);
    }
    for chain in &kernel.chains {
        for rule in &chain.rules {
            write_rule(out, rule, family);
        }
    }
    out.push_str("COMMIT\n# Completed\n");
}

/// `iptables-save [-t table]` after a full sync on a pristine node.
pub fn save(ruleset: &Ruleset, jumps: &[JumpRule], table: Option<Table>) -> String {
    let mut out = String::new();
    for t in [Table::Filter, Table::Nat] {
        if table.is_none_or(|only| only == t) {
            write_table(&mut out, &KernelTable::new(ruleset, jumps, t), ruleset.family);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_round_like_xt_statistic() {
        let cases = [
            (2, "0.50000000000"),
            (3, "0.33333333349"),
            (4, "0.25000000000"),
            (5, "0.20000000019"),
            (6, "0.16666666651"),
            (7, "0.14285714272"),
            (8, "0.12500000000"),
            (9, "0.11111111101"),
            (10, "0.10000000009"),
        ];
        for (n, expected) in cases {
            let restore_text = format!("{:.10}", 1.0 / f64::from(n));
            assert_eq!(kernel_probability(&restore_text), expected, "1/{n}");
        }
    }

    #[test]
    fn comments_are_quoted_unless_plain() {
        let cases = [
            ("abc_d-9", "abc_d-9"),
            ("ns1/svc1:p80", "\"ns1/svc1:p80\""),
            ("a b", "\"a b\""),
            ("x'y\"z\\", "\"x\\'y\\\"z\\\\\""),
        ];
        for (text, expected) in cases {
            assert_eq!(quote_comment(text), expected);
        }
    }
}
