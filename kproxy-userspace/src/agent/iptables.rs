//! The iptables datapath under the agent: what kube-proxy in iptables mode does on a
//! full sync — the renderer's restore payload through `iptables-restore --noflush`,
//! then the jump rules from the built-in chains ensured one by one, then the conntrack
//! entries of UDP flows to former endpoints deleted; and, once, the `route_localnet`
//! sysctl localhost NodePorts need (kube-proxy's `NewProxier`).

use log::{debug, info, warn};

use super::{AgentError, AgentOptions, Proxier, metrics::Metrics};
use crate::{
    config::{ConfigError, ProxyConfig},
    error_chain,
    iptables::{self, Flavor, NetfilterError, RenderOptions, Runtime, conntrack, jumps, netfilter, restore},
    model::{Model, NodeInfo, UdpServing},
    record::{Applied, Mode},
};

#[derive(Debug, thiserror::Error)]
pub enum IptablesProxierError {
    #[error(transparent)]
    Netfilter(#[from] NetfilterError),
    #[error("render options")]
    Options(#[from] ConfigError),
}

/// kube-proxy's iptables mode.
pub struct IptablesProxier {
    flavor: Flavor,
    /// `route_localnet` was ensured (kube-proxy does it once, when the proxier starts).
    route_localnet_ensured: bool,
    /// Rules restored by the last sync: (filter, nat).
    rules: (usize, usize),
}

impl IptablesProxier {
    pub fn new(opts: &AgentOptions) -> Self {
        IptablesProxier {
            flavor: opts.iptables_backend,
            route_localnet_ensured: false,
            rules: (0, 0),
        }
    }
}

impl Proxier for IptablesProxier {
    fn sync(&mut self, model: &Model, node: &NodeInfo, config: &ProxyConfig) -> Result<String, AgentError> {
        let options =
            RenderOptions::new(config, node, Runtime::default()).map_err(IptablesProxierError::from)?;
        if options.localhost_node_ports && !self.route_localnet_ensured {
            info!(
                "Setting route_localnet=1 to allow node-ports on localhost; to change this either disable \
                 iptables.localhostNodePorts (--iptables-localhost-nodeports) or set nodePortAddresses \
                 (--nodeport-addresses) to filter loopback addresses (ipFamily IPv4)"
            );
            if netfilter::ensure_route_localnet().map_err(IptablesProxierError::from)? {
                debug!("Set sysctl {} to 1", netfilter::ROUTE_LOCALNET);
            }
            self.route_localnet_ensured = true;
        }
        let ruleset = iptables::render(model, &options);
        let payload = restore::payload(&ruleset, None);
        netfilter::restore(self.flavor, &payload).map_err(IptablesProxierError::from)?;
        let jump_rules = jumps::jump_rules(&options);
        for jump in &jump_rules {
            let args = restore::rule_args(&jump.rule);
            netfilter::ensure_rule(self.flavor, jump.table.name(), &jump.rule.chain, &args)
                .map_err(IptablesProxierError::from)?;
        }
        self.rules = (ruleset.filter.rules.len(), ruleset.nat.rules.len());
        // kube-proxy's conntrack cleanup: failing it leaves stale UDP flows, not the rules.
        match conntrack::remove_stale_udp(&UdpServing::new(model)) {
            Ok(0) => {}
            Ok(n) => info!("removed {n} conntrack entries of UDP flows to former endpoints"),
            Err(err) => warn!("conntrack cleanup of stale UDP flows: {}", error_chain(&err)),
        }
        Ok(format!(
            "iptables ({:?}): {} filter + {} nat rules restored, {} jumps ensured",
            self.flavor,
            ruleset.filter.rules.len(),
            ruleset.nat.rules.len(),
            jump_rules.len()
        ))
    }

    fn report(&self, metrics: &Metrics) {
        metrics.iptables_rules(self.rules.0, self.rules.1);
    }

    fn describe(&self, applied: &mut Applied) {
        applied.mode = Mode::Iptables;
        applied.iptables_backend = Some(self.flavor);
    }
}
