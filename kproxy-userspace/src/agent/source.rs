//! Where the agent's model comes from: model files (`--model`, watched for edits) or
//! the API server (cluster mode). Either way the loop asks two things: has something
//! changed, and what is the model now.

use std::{path::PathBuf, time::SystemTime};

use log::{info, warn};

use super::{AgentError, watch::ModelWatcher};
use crate::{
    cluster::{self, ClusterOptions, ClusterSource},
    config::ProxyConfig,
    error_chain, manifests,
    model::{Model, NodeInfo},
};

/// `kproxy run`'s choice of source.
#[derive(Clone, Debug)]
pub enum ModelSourceOptions {
    /// `--model PATH…`.
    Files(Vec<PathBuf>),
    /// `--kubeconfig PATH`, or the in-cluster configuration when `None`.
    Cluster {
        kubeconfig: Option<PathBuf>,
        service_proxy_name: Option<String>,
    },
}

/// The model at one moment, with what the agent needs beside it.
pub struct Loaded {
    pub model: Model,
    /// The node facts, refined by the Node object in cluster mode.
    pub node: NodeInfo,
    /// Cluster mode: when the endpoint changes now applied were made (network
    /// programming latency).
    pub trigger_times: Vec<SystemTime>,
    /// Cluster mode: the objects as one YAML document, recorded for `kproxy inspect`.
    pub document: Option<String>,
}

pub enum ModelSource {
    Files {
        paths: Vec<PathBuf>,
        watcher: ModelWatcher,
    },
    Cluster {
        source: ClusterSource,
        /// `--node-ip` was given: the Node object's address does not replace it.
        node_ip_given: bool,
        /// Trigger times taken by `poll`, handed out by the next `load`.
        trigger_times: Vec<SystemTime>,
        /// The Node object was missing at the last load (logged once).
        node_missing: bool,
    },
}

impl ModelSource {
    /// Opens the source: for cluster mode, builds the client and starts the watchers
    /// for the node named `node_name`.
    pub fn start(
        options: &ModelSourceOptions,
        node_name: &str,
        node_ip_given: bool,
    ) -> Result<Self, AgentError> {
        Ok(match options {
            ModelSourceOptions::Files(paths) => ModelSource::Files {
                paths: paths.clone(),
                watcher: ModelWatcher::new(paths.clone()),
            },
            ModelSourceOptions::Cluster {
                kubeconfig,
                service_proxy_name,
            } => {
                let options = ClusterOptions {
                    kubeconfig: kubeconfig.clone(),
                    node_name: node_name.to_string(),
                    service_proxy_name: service_proxy_name.clone(),
                };
                info!(
                    "cluster mode: watching Services and EndpointSlices ({}) and Node {node_name} on {}",
                    options.label_selector(),
                    kubeconfig
                        .as_ref()
                        .map_or("the in-cluster API server".into(), |p| format!(
                            "the API server of {}",
                            p.display()
                        ))
                );
                ModelSource::Cluster {
                    source: ClusterSource::start(&options)?,
                    node_ip_given,
                    trigger_times: Vec::new(),
                    node_missing: false,
                }
            }
        })
    }

    /// Whether a change waits to be loaded (the files changed, or the API server sent
    /// one; in cluster mode nothing is reported before the first lists are complete).
    pub fn poll(&mut self) -> bool {
        match self {
            ModelSource::Files { watcher, .. } => watcher.poll(),
            ModelSource::Cluster {
                source,
                trigger_times,
                ..
            } => match source.take_changes() {
                Some(changes) => {
                    trigger_times.extend(changes.trigger_times);
                    true
                }
                None => false,
            },
        }
    }

    /// Whether a model can be loaded at all (cluster mode: the first lists are in).
    pub fn ready(&self) -> bool {
        match self {
            ModelSource::Files { .. } => true,
            ModelSource::Cluster { source, .. } => source.listed(),
        }
    }

    /// The model now. Files: a broken file fails the load (the last good state stays).
    /// Cluster: a broken object is left out and logged; the rest is applied.
    pub fn load(&mut self, config: &ProxyConfig, node: NodeInfo) -> Result<Loaded, AgentError> {
        match self {
            ModelSource::Files { paths, .. } => Ok(Loaded {
                model: manifests::load(paths, config, &node)?,
                node,
                trigger_times: Vec::new(),
                document: None,
            }),
            ModelSource::Cluster {
                source,
                node_ip_given,
                trigger_times,
                node_missing,
            } => {
                let snapshot = source.snapshot();
                let mut node = node;
                match &snapshot.node {
                    Some(object) => {
                        *node_missing = false;
                        node = node
                            .with_pod_cidrs(cluster::node_pod_cidrs(object))
                            .with_zone(manifests::zone_of(object));
                        if !*node_ip_given && let Some(ip) = cluster::node_address(object, node.family) {
                            node = node.with_node_ip(Some(ip));
                        }
                    }
                    None if !*node_missing => {
                        *node_missing = true;
                        warn!(
                            "the API server has no Node {}: node facts come from the local interfaces",
                            node.name
                        );
                    }
                    None => {}
                }
                let (mut model, skipped) =
                    manifests::build_model_skipping(&snapshot.objects, node.family, &node.name);
                // Topology hints follow the watched Node's zone and the configured gate.
                model.topology.zone.clone_from(&node.zone);
                model.topology.prefer_same_node = config.prefer_same_traffic_distribution();
                for err in &skipped {
                    warn!("object left out of the model: {}", error_chain(err));
                }
                Ok(Loaded {
                    model,
                    node,
                    trigger_times: std::mem::take(trigger_times),
                    document: Some(cluster::snapshot_document(&snapshot)),
                })
            }
        }
    }
}
