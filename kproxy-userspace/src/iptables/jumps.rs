//! The rules kube-proxy keeps in the built-in chains, jumping to its own chains. They
//! are not part of the restore payload: on every full sync kube-proxy checks each one
//! (`iptables -C`) and, when missing, inserts it at position 1, in this order.

use std::fmt::Write as _;

use super::{
    RenderOptions,
    restore::write_args,
    rule::{Part, Rule, Table, Target},
};

/// One rule in a built-in chain (`rule.chain` is the built-in chain).
#[derive(Clone, Debug, PartialEq)]
pub struct JumpRule {
    pub table: Table,
    pub rule: Rule,
}

/// The jump rules in the order kube-proxy ensures them.
pub fn jump_rules(options: &RenderOptions) -> Vec<JumpRule> {
    let new_only = || Part::ConnState {
        negated: false,
        states: "NEW",
    };
    // (table, built-in chain, target chain, comment, match NEW connections only)
    let mut specs: Vec<(Table, &str, &str, &str, bool)> = vec![
        (
            Table::Filter,
            "INPUT",
            "KUBE-EXTERNAL-SERVICES",
            "kubernetes externally-visible service portals",
            true,
        ),
        (
            Table::Filter,
            "FORWARD",
            "KUBE-EXTERNAL-SERVICES",
            "kubernetes externally-visible service portals",
            true,
        ),
        (
            Table::Filter,
            "INPUT",
            "KUBE-NODEPORTS",
            "kubernetes health check service ports",
            false,
        ),
        (
            Table::Filter,
            "FORWARD",
            "KUBE-SERVICES",
            "kubernetes service portals",
            true,
        ),
        (
            Table::Filter,
            "OUTPUT",
            "KUBE-SERVICES",
            "kubernetes service portals",
            true,
        ),
        (
            Table::Filter,
            "FORWARD",
            "KUBE-FORWARD",
            "kubernetes forwarding rules",
            false,
        ),
        (
            Table::Filter,
            "INPUT",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            true,
        ),
        (
            Table::Filter,
            "OUTPUT",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            true,
        ),
        (
            Table::Filter,
            "FORWARD",
            "KUBE-PROXY-FIREWALL",
            "kubernetes load balancer firewall",
            true,
        ),
        (
            Table::Nat,
            "OUTPUT",
            "KUBE-SERVICES",
            "kubernetes service portals",
            false,
        ),
        (
            Table::Nat,
            "PREROUTING",
            "KUBE-SERVICES",
            "kubernetes service portals",
            false,
        ),
        (
            Table::Nat,
            "POSTROUTING",
            "KUBE-POSTROUTING",
            "kubernetes postrouting rules",
            false,
        ),
    ];
    if options.localhost_node_ports {
        // The jumps kubelet also installs, without a comment.
        specs.push((Table::Filter, "INPUT", "KUBE-FIREWALL", "", false));
        specs.push((Table::Filter, "OUTPUT", "KUBE-FIREWALL", "", false));
    }
    specs
        .into_iter()
        .map(|(table, builtin, target, comment, new_only_match)| {
            let mut parts = Vec::new();
            if new_only_match {
                parts.push(new_only());
            }
            if !comment.is_empty() {
                parts.push(Part::Comment(comment.to_string()));
            }
            JumpRule {
                table,
                rule: Rule::new(builtin, parts, Target::Chain(target.to_string())),
            }
        })
        .collect()
}

/// An `iptables-restore --noflush` payload inserting every jump at position 1, for a
/// node that has none of them yet; load it after the full-sync payload (the jumps
/// need kube-proxy's chains to exist).
pub fn restore_payload(jumps: &[JumpRule]) -> String {
    let mut out = String::new();
    for table in [Table::Filter, Table::Nat] {
        let _ = writeln!(out, "*{table}");
        for jump in jumps.iter().filter(|j| j.table == table) {
            out.push_str("-I ");
            out.push_str(&jump.rule.chain);
            out.push_str(" 1");
            write_args(&mut out, &jump.rule);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}
