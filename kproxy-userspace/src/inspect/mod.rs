//! `kproxy inspect` and `kproxy explain`: the live BPF maps beside the iptables rules
//! kube-proxy would program for the same model.
//!
//! Both sides come from one place each: the iptables side from the exporter
//! ([`crate::iptables::render`]) run on the model the agent last applied (recorded by
//! [`crate::record`]), the BPF side from the pinned maps and
//! [`crate::ebpf::desired_state`] of that model. Nothing here re-derives chain names,
//! rules or endpoint choices.
//!
//! - [`Inspection::open`] gathers the record, the model, the rendered rules and the maps;
//! - [`report`] builds the per-service-port view ([`table`] and [`json`] print it);
//! - [`conntrack`] decodes the flows, labelled with service and `KUBE-SEP-…` names;
//! - [`crate::ebpf::verify`] lists every difference between the maps and the model (the
//!   agent runs it after each sync; `--verify` prints it);
//! - [`explain`] walks one packet through the rules and through the maps.

pub mod conntrack;
pub mod explain;
pub mod json;
pub mod report;
pub mod table;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use crate::{
    config::{ConfigError, ProxyConfig},
    ebpf::{self, DatapathMaps, DesiredState, Frontend, FrontendState, MapsError, MasqueradePolicy},
    iptables::{self, RenderOptions, Ruleset, Runtime, jumps::JumpRule},
    manifests::{self, ManifestError},
    model::{IpFamily, Model, NodeInfo, ServicePort},
    record::{self, Mode, RecordError, Recorded},
};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    State(#[from] RecordError),
    #[error("the recorded configuration")]
    Config(#[from] ConfigError),
    #[error("the recorded model in {}", dir.display())]
    Model {
        dir: PathBuf,
        #[source]
        source: Box<ManifestError>,
    },
    #[error("no pinned maps under {}: the agent ran in {mode} mode, which uses none", pin_path.display())]
    NoMaps { pin_path: PathBuf, mode: Mode },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("no service port {0} in the recorded model")]
    UnknownService(String),
}

/// Everything inspection reads: the agent's record, its model and rules, the live maps.
pub struct Inspection {
    pub pin_path: PathBuf,
    pub recorded: Recorded,
    pub node: NodeInfo,
    pub config: ProxyConfig,
    pub model: Model,
    pub render_options: RenderOptions,
    /// Which flows the datapath SNATs (the same policy the agent derived).
    pub masquerade: MasqueradePolicy,
    pub ruleset: Ruleset,
    pub jumps: Vec<JumpRule>,
    /// None when the agent ran in iptables mode (no maps are pinned).
    pub maps: Option<DatapathMaps>,
}

impl Inspection {
    /// Reads the record of the agent pinning under `pin_path`, its model and configuration,
    /// renders kube-proxy's rules for them and opens the pinned maps.
    pub fn open(pin_path: &Path) -> Result<Self, InspectError> {
        let recorded = record::load(pin_path)?;
        let maps = match DatapathMaps::open_pinned(pin_path) {
            Ok(maps) => Some(maps),
            Err(_) if recorded.applied.mode == Mode::Iptables => None,
            Err(source) => return Err(source.into()),
        };
        Self::new(pin_path, recorded, maps)
    }

    /// An inspection of `recorded` beside `maps` (None: iptables mode).
    pub fn new(
        pin_path: &Path,
        recorded: Recorded,
        maps: Option<DatapathMaps>,
    ) -> Result<Self, InspectError> {
        let applied = &recorded.applied;
        let config = ProxyConfig::load(recorded.config.as_deref())?;
        let family = applied.node_ip.map_or(IpFamily::V4, |ip| IpFamily::of(&ip));
        let node = NodeInfo::new(&applied.node_name, family)
            .with_node_ip(applied.node_ip)
            .with_addresses(applied.node_addresses.clone());
        let model =
            manifests::load(std::slice::from_ref(&recorded.model_dir), &config, &node).map_err(|source| {
                InspectError::Model {
                    dir: recorded.model_dir.clone(),
                    source: Box::new(source),
                }
            })?;
        let render_options = RenderOptions::new(&config, &node, Runtime::default())?;
        let masquerade = MasqueradePolicy::new(&config, &node)?;
        let ruleset = iptables::render(&model, &render_options);
        let jumps = iptables::jumps::jump_rules(&render_options);
        Ok(Inspection {
            pin_path: pin_path.to_path_buf(),
            recorded,
            node,
            config,
            model,
            render_options,
            masquerade,
            ruleset,
            jumps,
            maps,
        })
    }

    /// The live maps, or why there are none.
    pub fn maps(&self) -> Result<&DatapathMaps, InspectError> {
        self.maps.as_ref().ok_or_else(|| InspectError::NoMaps {
            pin_path: self.pin_path.clone(),
            mode: self.recorded.applied.mode,
        })
    }

    /// What the agent wrote to the maps for the recorded model.
    pub fn desired(&self) -> DesiredState {
        ebpf::desired_state(&self.model, &self.masquerade, self.node.node_ip)
    }

    /// The node addresses NodePort frontends should answer on (IPv4: the datapath's family).
    pub fn expected_node_addresses(&self) -> Vec<Ipv4Addr> {
        ebpf::node_port_addresses(&self.config, &self.node)
    }

    /// The service port named `ns/name[:port]`, or every port.
    pub fn ports(&self, only: Option<&str>) -> Result<Vec<&ServicePort>, InspectError> {
        let ports: Vec<&ServicePort> = self
            .model
            .service_ports
            .iter()
            .filter(|p| only.is_none_or(|s| matches_service(p, s)))
            .collect();
        match only {
            Some(s) if ports.is_empty() => Err(InspectError::UnknownService(s.to_string())),
            _ => Ok(ports),
        }
    }

    /// Every frontend of the model with the service port it belongs to.
    pub fn frontend_index(&self) -> BTreeMap<Frontend, (&ServicePort, FrontendState)> {
        let mut index = BTreeMap::new();
        for port in &self.model.service_ports {
            for (frontend, state) in
                port_desired(&self.model, port, &self.masquerade, self.node.node_ip).frontends
            {
                index.insert(frontend, (port, state));
            }
        }
        index
    }
}

/// `ns/name` selects every port of the service, `ns/name:port` one.
fn matches_service(port: &ServicePort, selector: &str) -> bool {
    selector == port.name.service() || selector == port.name.to_string()
}

/// The desired state of one service port of `model` alone (the same definition the
/// agent uses, with the model's topology).
pub fn port_desired(
    model: &Model,
    port: &ServicePort,
    policy: &MasqueradePolicy,
    node_ip: Option<IpAddr>,
) -> DesiredState {
    ebpf::desired_state(
        &Model {
            family: model.family,
            topology: model.topology.clone(),
            service_ports: vec![port.clone()],
        },
        policy,
        node_ip,
    )
}
