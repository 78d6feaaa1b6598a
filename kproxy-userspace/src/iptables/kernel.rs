//! The tables as the kernel holds them after a full sync on a pristine node: built-in
//! chains (hook order) holding the jump rules, then kube-proxy's chains sorted by name
//! (libiptc and iptables-nft both list user chains in `strcmp` order).

use std::collections::HashMap;

use super::{
    Ruleset,
    jumps::JumpRule,
    rule::{Rule, Table},
};

/// One chain with its rules in kernel order.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelChain<'a> {
    pub name: &'a str,
    pub builtin: bool,
    pub rules: Vec<&'a Rule>,
}

/// One table's chains in listing order.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTable<'a> {
    pub table: Table,
    pub chains: Vec<KernelChain<'a>>,
}

impl<'a> KernelTable<'a> {
    pub fn new(ruleset: &'a Ruleset, jumps: &'a [JumpRule], table: Table) -> Self {
        let mut chains: Vec<KernelChain<'a>> = table
            .builtin_chains()
            .iter()
            .map(|name| KernelChain {
                name,
                builtin: true,
                rules: Vec::new(),
            })
            .collect();
        // Each jump is inserted at position 1, so later ones end up first.
        for jump in jumps.iter().filter(|j| j.table == table) {
            if let Some(chain) = chains.iter_mut().find(|c| c.name == jump.rule.chain) {
                chain.rules.insert(0, &jump.rule);
            }
        }
        let rules = ruleset.table(table);
        let mut by_chain: HashMap<&str, Vec<&Rule>> = HashMap::new();
        for rule in &rules.rules {
            by_chain.entry(rule.chain.as_str()).or_default().push(rule);
        }
        let mut names: Vec<&str> = rules.chains.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        chains.extend(names.into_iter().map(|name| KernelChain {
            name,
            builtin: false,
            rules: by_chain.remove(name).unwrap_or_default(),
        }));
        KernelTable { table, chains }
    }

    /// How many rules of the table jump to `chain` (`iptables -L`'s "references").
    pub fn references(&self) -> HashMap<&'a str, usize> {
        let mut counts = HashMap::new();
        for chain in &self.chains {
            for rule in &chain.rules {
                if let super::rule::Target::Chain(target) = &rule.target {
                    *counts.entry(target.as_str()).or_insert(0) += 1;
                }
            }
        }
        counts
    }
}
