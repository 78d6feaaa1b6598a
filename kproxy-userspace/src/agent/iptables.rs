//! The iptables datapath under the agent: what kube-proxy in iptables mode does on a
//! full sync — the renderer's restore payload through `iptables-restore --noflush`,
//! then the jump rules from the built-in chains ensured one by one.

use super::{AgentError, AgentOptions, Datapath};
use crate::{
    config::{ConfigError, ProxyConfig},
    iptables::{self, RenderOptions, Runtime, jumps, restore},
    model::{Model, NodeInfo},
    netfilter::{self, Backend, NetfilterError},
    state::Applied,
};

#[derive(Debug, thiserror::Error)]
pub enum IptablesModeError {
    #[error(transparent)]
    Netfilter(#[from] NetfilterError),
    #[error("render options: {0}")]
    Options(#[from] ConfigError),
}

pub struct IptablesMode {
    backend: Backend,
}

impl IptablesMode {
    pub fn new(opts: &AgentOptions) -> Self {
        IptablesMode {
            backend: opts.iptables_backend,
        }
    }
}

impl Datapath for IptablesMode {
    fn sync(&mut self, model: &Model, node: &NodeInfo, config: &ProxyConfig) -> Result<String, AgentError> {
        let options =
            RenderOptions::new(config, node, Runtime::default()).map_err(IptablesModeError::from)?;
        let ruleset = iptables::render(model, &options);
        let payload = restore::payload(&ruleset, None);
        netfilter::restore(self.backend, &payload).map_err(IptablesModeError::from)?;
        let jump_rules = jumps::jump_rules(&options);
        for jump in &jump_rules {
            let args = restore::rule_args(&jump.rule);
            netfilter::ensure_rule(self.backend, jump.table.name(), &jump.rule.chain, &args)
                .map_err(IptablesModeError::from)?;
        }
        Ok(format!(
            "iptables ({:?}): {} filter + {} nat rules restored, {} jumps ensured",
            self.backend,
            ruleset.filter.rules.len(),
            ruleset.nat.rules.len(),
            jump_rules.len()
        ))
    }

    fn describe(&self, applied: &mut Applied) {
        applied.mode = "iptables".into();
        applied.iptables_backend = Some(format!("{:?}", self.backend).to_lowercase());
    }
}
