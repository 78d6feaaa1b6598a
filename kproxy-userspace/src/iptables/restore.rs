//! The `iptables-restore` payload in kube-proxy's own spelling: arguments in the
//! order kube-proxy writes them, bare host IPs, comments with spaces in double quotes,
//! the mark as Go's `%#08x` (`0x00004000`), probabilities with 10 decimals.

use std::fmt::Write as _;

use super::{
    Ruleset,
    rule::{AddrTypeSide, Address, Part, Rule, Table, Target},
};

/// The mark as kube-proxy formats it (`fmt.Sprintf("%#08x", mark)`).
pub fn mark_hex(mark: u32) -> String {
    format!("0x{mark:08x}")
}

fn address_text(address: &Address) -> String {
    match address {
        Address::Host(ip) => ip.to_string(),
        Address::Network(cidr) => cidr.to_string(),
    }
}

/// Calls `token` with each argument of `rule` after `-A CHAIN`, unquoted.
fn for_each_token(rule: &Rule, mut token: impl FnMut(&str)) {
    let negatable = |negated: bool, flag: &str, value: &str, token: &mut dyn FnMut(&str)| {
        if negated {
            token("!");
        }
        token(flag);
        token(value);
    };
    for part in &rule.parts {
        match part {
            Part::Comment(text) => {
                token("-m");
                token("comment");
                token("--comment");
                token(text);
            }
            Part::Protocol(protocol) => {
                token("-m");
                token(protocol.lower());
                token("-p");
                token(protocol.lower());
            }
            Part::Source { negated, address } => {
                negatable(*negated, "-s", &address_text(address), &mut token);
            }
            Part::Destination { negated, address } => {
                negatable(*negated, "-d", &address_text(address), &mut token);
            }
            Part::InInterface { negated, name } => negatable(*negated, "-i", name, &mut token),
            Part::DestinationPort(port) => {
                token("--dport");
                token(&port.to_string());
            }
            Part::AddrTypeLocal(side) => {
                token("-m");
                token("addrtype");
                token(match side {
                    AddrTypeSide::Source => "--src-type",
                    AddrTypeSide::Destination => "--dst-type",
                });
                token("LOCAL");
            }
            Part::RandomProbability(p) => {
                for t in ["-m", "statistic", "--mode", "random", "--probability", p] {
                    token(t);
                }
            }
            Part::RecentCheck { name, seconds } => {
                for t in [
                    "-m",
                    "recent",
                    "--name",
                    name,
                    "--rcheck",
                    "--seconds",
                    &seconds.to_string(),
                    "--reap",
                ] {
                    token(t);
                }
            }
            Part::RecentSet { name } => {
                for t in ["-m", "recent", "--name", name, "--set"] {
                    token(t);
                }
            }
            Part::Mark { negated, mark } => {
                token("-m");
                token("mark");
                let hex = mark_hex(*mark);
                negatable(*negated, "--mark", &format!("{hex}/{hex}"), &mut token);
            }
            Part::ConnState { negated, states } => {
                token("-m");
                token("conntrack");
                negatable(*negated, "--ctstate", states, &mut token);
            }
            Part::Nfacct(name) => {
                for t in ["-m", "nfacct", "--nfacct-name", name] {
                    token(t);
                }
            }
        }
    }
    let jump = |token: &mut dyn FnMut(&str), tokens: &[&str]| {
        token("-j");
        for t in tokens {
            token(t);
        }
    };
    match &rule.target {
        Target::None => {}
        Target::Chain(chain) => jump(&mut token, &[chain]),
        Target::Accept => jump(&mut token, &["ACCEPT"]),
        Target::Drop => jump(&mut token, &["DROP"]),
        Target::Reject => jump(&mut token, &["REJECT"]),
        Target::Return => jump(&mut token, &["RETURN"]),
        Target::Dnat(to) => jump(&mut token, &["DNAT", "--to-destination", to]),
        Target::MarkOr(mark) => jump(&mut token, &["MARK", "--or-mark", &mark_hex(*mark)]),
        Target::MarkXor(mark) => jump(&mut token, &["MARK", "--xor-mark", &mark_hex(*mark)]),
        Target::Masquerade { random_fully: true } => jump(&mut token, &["MASQUERADE", "--random-fully"]),
        Target::Masquerade { random_fully: false } => jump(&mut token, &["MASQUERADE"]),
    }
}

/// The rule's arguments after `-A CHAIN` as an argument vector (for `iptables -C`/`-I`).
pub fn rule_args(rule: &Rule) -> Vec<String> {
    let mut args = Vec::new();
    for_each_token(rule, |t| args.push(t.to_string()));
    args
}

/// Appends the rule's arguments as restore text: tokens with spaces in double quotes.
pub(crate) fn write_args(out: &mut String, rule: &Rule) {
    for_each_token(rule, |t| {
        out.push(' ');
        if t.contains(' ') {
            out.push('"');
            out.push_str(t);
            out.push('"');
        } else {
            out.push_str(t);
        }
    });
}

/// `-A CHAIN args` as the payload spells it (for showing single rules).
pub fn rule_line(rule: &Rule) -> String {
    let mut out = format!("-A {}", rule.chain);
    write_args(&mut out, rule);
    out
}

/// One table of the payload: `*table`, chain lines, `-A` lines, `COMMIT`.
fn write_table(out: &mut String, ruleset: &Ruleset, table: Table) {
    let rules = ruleset.table(table);
    let _ = writeln!(out, "*{table}");
    for chain in &rules.chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for rule in &rules.rules {
        out.push_str("-A ");
        out.push_str(&rule.chain);
        write_args(out, rule);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
}

/// The full-sync payload kube-proxy hands to `iptables-restore --noflush --counters`:
/// `*filter … COMMIT` then `*nat … COMMIT`, or only `table`.
pub fn payload(ruleset: &Ruleset, table: Option<Table>) -> String {
    let mut out = String::with_capacity(256 * (ruleset.filter.rules.len() + ruleset.nat.rules.len()));
    for t in [Table::Filter, Table::Nat] {
        if table.is_none_or(|only| only == t) {
            write_table(&mut out, ruleset, t);
        }
    }
    out
}
