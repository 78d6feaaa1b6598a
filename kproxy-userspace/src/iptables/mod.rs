//! The exact iptables state upstream kube-proxy (iptables mode, ~1.32–1.34) programs for
//! a [`crate::model::Model`], in three renderings:
//!
//! - [`restore::payload`]: the `iptables-restore --noflush` payload of a full sync;
//! - [`save::save`]: what `iptables-save` prints once that payload and the jump rules
//!   from the built-in chains ([`jumps::jump_rules`]) are loaded on a pristine node;
//! - [`list::list`]: what `iptables -n -L` prints for the same state.
//!
//! [`netfilter`] applies them with the system's binaries (the agent's iptables mode);
//! [`simulate`] walks a packet through them (`kproxy explain`).
//!
//! ```no_run
//! use kproxy::{config::ProxyConfig, iptables, manifests, model::{IpFamily, NodeInfo}};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ProxyConfig::default();
//! let node = NodeInfo::new("host1", IpFamily::V4);
//! let model = manifests::load(&["examples".into()], &config, &node)?;
//! let options = iptables::RenderOptions::new(&config, &node, iptables::Runtime::default())?;
//! let ruleset = iptables::render(&model, &options);
//! let payload = iptables::restore::payload(&ruleset, None); // for iptables-restore --noflush
//! let jumps = iptables::jumps::jump_rules(&options); // then ensure these (iptables -C / -I 1)
//! # let _ = (payload, jumps); Ok(()) }
//! ```

pub mod chain_name;
pub mod conntrack;
pub mod jumps;
pub mod kernel;
pub mod list;
pub mod netfilter;
mod render;
pub mod restore;
pub mod rule;
pub mod save;
pub mod simulate;

pub use netfilter::{Flavor, NetfilterError};
pub use render::{NFACCT_INVALID_DROPPED, NFACCT_LOCALHOST_NODEPORTS, RenderOptions, Runtime, render};
pub use rule::{Table, TableRules};

use crate::model::IpFamily;

/// The rules of both tables for one IP family.
#[derive(Clone, Debug, PartialEq)]
pub struct Ruleset {
    pub family: IpFamily,
    pub filter: TableRules,
    pub nat: TableRules,
}

impl Ruleset {
    pub fn table(&self, table: Table) -> &TableRules {
        match table {
            Table::Filter => &self.filter,
            Table::Nat => &self.nat,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("no chain {chain} in table {table}")]
    UnknownChain { table: Table, chain: String },
}
