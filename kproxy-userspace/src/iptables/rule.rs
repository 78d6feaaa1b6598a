//! The in-memory rule: the parts of one `-A CHAIN …` line in the order kube-proxy
//! writes them, typed, so each formatter can spell them its own way.

use std::{fmt, net::IpAddr};

use crate::model::{Cidr, Protocol};

/// The two tables kube-proxy writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Filter,
    Nat,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }

    /// Built-in chains in the kernel's hook order (as `iptables-save` lists them).
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            Table::Filter => &["INPUT", "FORWARD", "OUTPUT"],
            Table::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        }
    }
}

impl std::str::FromStr for Table {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "filter" => Ok(Table::Filter),
            "nat" => Ok(Table::Nat),
            other => Err(format!("unknown table {other:?} (filter or nat)")),
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A source or destination address: kube-proxy writes a host as a bare IP and a
/// network as `net/len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Address {
    Host(IpAddr),
    Network(Cidr),
}

impl Address {
    /// The network this address matches.
    pub fn cidr(&self) -> Cidr {
        match self {
            Address::Host(ip) => Cidr::host(*ip),
            Address::Network(cidr) => *cidr,
        }
    }
}

/// Which address `-m addrtype` tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrTypeSide {
    Source,
    Destination,
}

/// One piece of a rule, in kube-proxy's argument order.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    /// `-m comment --comment TEXT`.
    Comment(String),
    /// `-m PROTO -p PROTO`: both the generic protocol and the protocol match.
    Protocol(Protocol),
    Source {
        negated: bool,
        address: Address,
    },
    Destination {
        negated: bool,
        address: Address,
    },
    InInterface {
        negated: bool,
        name: String,
    },
    /// `--dport N`, an option of the protocol match.
    DestinationPort(u16),
    /// `-m addrtype --src-type|--dst-type LOCAL`.
    AddrTypeLocal(AddrTypeSide),
    /// `-m statistic --mode random --probability 1/n` (kube-proxy's 10-decimal string).
    RandomProbability(String),
    /// `-m recent --name NAME --rcheck --seconds S --reap`.
    RecentCheck {
        name: String,
        seconds: u32,
    },
    /// `-m recent --name NAME --set`.
    RecentSet {
        name: String,
    },
    /// `-m mark [!] --mark M/M`.
    Mark {
        negated: bool,
        mark: u32,
    },
    /// `-m conntrack [!] --ctstate STATES`.
    ConnState {
        negated: bool,
        states: &'static str,
    },
    /// `-m nfacct --nfacct-name NAME`.
    Nfacct(&'static str),
}

/// What a rule does.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// No `-j`: the rule only counts (the KUBE-FW "other traffic" rule).
    None,
    /// Jump to a kube-proxy chain.
    Chain(String),
    Accept,
    Drop,
    Reject,
    Return,
    /// DNAT to `ip:port`.
    Dnat(String),
    MarkOr(u32),
    MarkXor(u32),
    Masquerade {
        random_fully: bool,
    },
}

impl Target {
    /// The name `iptables -L` shows in the target column.
    pub fn name(&self) -> &str {
        match self {
            Target::None => "",
            Target::Chain(chain) => chain,
            Target::Accept => "ACCEPT",
            Target::Drop => "DROP",
            Target::Reject => "REJECT",
            Target::Return => "RETURN",
            Target::Dnat(_) => "DNAT",
            Target::MarkOr(_) | Target::MarkXor(_) => "MARK",
            Target::Masquerade { .. } => "MASQUERADE",
        }
    }
}

/// One rule appended to a chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub chain: String,
    pub parts: Vec<Part>,
    pub target: Target,
}

impl Rule {
    pub fn new(chain: &str, parts: Vec<Part>, target: Target) -> Self {
        Rule {
            chain: chain.to_string(),
            parts,
            target,
        }
    }

    /// The rule's comment, if any.
    pub fn comment(&self) -> Option<&str> {
        self.parts.iter().find_map(|p| match p {
            Part::Comment(text) => Some(text.as_str()),
            _ => None,
        })
    }

    /// The protocol, if the rule matches one.
    pub fn protocol(&self) -> Option<Protocol> {
        self.parts.iter().find_map(|p| match p {
            Part::Protocol(proto) => Some(*proto),
            _ => None,
        })
    }

    /// The destination port option, if any.
    pub fn destination_port(&self) -> Option<u16> {
        self.parts.iter().find_map(|p| match p {
            Part::DestinationPort(port) => Some(*port),
            _ => None,
        })
    }
}

/// The chains and rules of one table, chains in declaration order and rules grouped by
/// chain in the same order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableRules {
    pub chains: Vec<String>,
    pub rules: Vec<Rule>,
}

impl TableRules {
    /// The rules of `chain`, in order.
    pub fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }
}
