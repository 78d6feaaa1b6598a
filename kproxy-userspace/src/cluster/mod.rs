//! Source 2: the model's objects from the Kubernetes API server (cluster mode).
//!
//! Three kube-rs reflectors follow Services, EndpointSlices and this node's Node (list,
//! then watch from the list's resourceVersion with bookmarks; a `410 Gone` re-lists;
//! errors retry with exponential backoff), with kube-proxy's object filters:
//!
//! - Services and EndpointSlices are listed with kube-proxy's label selector
//!   `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`
//!   (`service.kubernetes.io/service-proxy-name=NAME` with `--service-proxy-name`);
//! - headless and ExternalName services yield no service ports (the model's rule);
//! - slices belong to the service their `kubernetes.io/service-name` label names,
//!   whoever manages them (`endpointslice.kubernetes.io/managed-by` is not looked at).
//!
//! The agent polls [`ClusterSource::take_changes`] from its loop; until all three initial
//! lists are done there is no snapshot, and while the API server is unreachable the
//! stores keep the last state they had, so the datapath keeps serving it.

mod node;
mod watch;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::reflector::Store;

pub use self::node::{node_address, node_pod_cidrs};
use crate::manifests::{Objects, Sourced};

/// kube-proxy's label for services another proxy serves.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label the EndpointSlice controller puts on a headless service's slices.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The annotation the EndpointSlice controller stamps with the time of the change that
/// caused the slice's update (kube-proxy's network programming latency starts there).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// What `kproxy run` is told about the cluster source.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `--kubeconfig`; `None`: the in-cluster configuration (service-account token,
    /// `KUBERNETES_SERVICE_HOST`).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: its Node object is watched, and endpoints on it are local.
    pub node_name: String,
    /// `--service-proxy-name`: serve only services labelled with it instead of only
    /// unlabelled ones.
    pub service_proxy_name: Option<String>,
}

impl ClusterOptions {
    /// kube-proxy's label selector for Services and EndpointSlices.
    pub fn label_selector(&self) -> String {
        match &self.service_proxy_name {
            Some(name) => format!("{SERVICE_PROXY_NAME_LABEL}={name},!{HEADLESS_LABEL}"),
            None => format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("read kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no --model or --kubeconfig given, and no in-cluster configuration \
         (KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT and the service-account token)"
    )]
    InCluster(#[source] kube::config::InClusterError),
    #[error("build the Kubernetes API client")]
    Client(#[source] kube::Error),
    #[error("start the API watchers' runtime: `{call}` failed")]
    Runtime {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What changed since the agent last took a snapshot.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// `last-change-trigger-time`s of the EndpointSlice updates since then (only those
    /// after the source started, as kube-proxy counts them).
    pub trigger_times: Vec<SystemTime>,
}

/// The objects at one moment: what the model is built from.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub objects: Objects,
    /// This node's Node object, if the API server has one by that name.
    pub node: Option<Arc<Node>>,
}

/// Where objects from the API server say they came from in error messages.
pub const API_SOURCE: &str = "API server";

/// The stores and change flags the watchers write and the agent reads.
#[derive(Default)]
struct Pending {
    /// Initial list done: services, endpoint slices, node.
    listed: [bool; 3],
    changed: bool,
    trigger_times: Vec<SystemTime>,
}

/// The Kubernetes API as the model's source: watchers on a runtime of their own.
pub struct ClusterSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    pending: Arc<Mutex<Pending>>,
    /// Dropping it stops the watchers.
    _runtime: tokio::runtime::Runtime,
}

impl ClusterSource {
    /// Builds the client and starts the three watchers; returns at once (the first
    /// lists arrive in the background, see [`ClusterSource::take_changes`]).
    pub fn start(options: &ClusterOptions) -> Result<Self, ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kproxy-api")
            .enable_all()
            .build()
            .map_err(|source| ClusterError::Runtime {
                call: "tokio runtime build",
                source,
            })?;
        let client = runtime.block_on(watch::client(options))?;
        let pending = Arc::new(Mutex::new(Pending::default()));
        let stores = {
            let _entered = runtime.enter();
            watch::spawn_all(client, options, &pending, SystemTime::now())
        };
        Ok(ClusterSource {
            services: stores.services,
            slices: stores.slices,
            nodes: stores.nodes,
            pending,
            _runtime: runtime,
        })
    }

    /// The changes since the last call, once all three initial lists are in; `None`
    /// while they are not, or when nothing changed.
    pub fn take_changes(&self) -> Option<Changes> {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !pending.listed.iter().all(|&done| done) || !pending.changed {
            return None;
        }
        pending.changed = false;
        Some(Changes {
            trigger_times: std::mem::take(&mut pending.trigger_times),
        })
    }

    /// Whether all three initial lists are in (a snapshot is complete).
    pub fn listed(&self) -> bool {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.listed.iter().all(|&done| done)
    }

    /// The objects in the stores now, in a fixed order (namespace, name).
    pub fn snapshot(&self) -> Snapshot {
        let path = PathBuf::from(API_SOURCE);
        let mut services: Vec<Service> = self.services.state().iter().map(|s| (**s).clone()).collect();
        services.sort_by(|a, b| key(&a.metadata).cmp(&key(&b.metadata)));
        let mut slices: Vec<EndpointSlice> = self.slices.state().iter().map(|s| (**s).clone()).collect();
        slices.sort_by(|a, b| key(&a.metadata).cmp(&key(&b.metadata)));
        Snapshot {
            objects: Objects {
                services: services.into_iter().map(|o| sourced(&path, o)).collect(),
                endpoint_slices: slices.into_iter().map(|o| sourced(&path, o)).collect(),
                // This node's Node travels as `node` below; the agent gives the model its zone.
                nodes: Vec::new(),
            },
            node: self.nodes.state().first().cloned(),
        }
    }
}

fn sourced<T>(path: &std::path::Path, object: T) -> Sourced<T> {
    Sourced {
        path: path.to_path_buf(),
        object,
    }
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// The objects of `snapshot` as one YAML `List` document (JSON is YAML): what the agent
/// records for `kproxy inspect`, which reads it as it reads model files.
pub fn snapshot_document(snapshot: &Snapshot) -> String {
    let items: Vec<serde_json::Value> = snapshot
        .objects
        .services
        .iter()
        .map(|s| serde_json::to_value(&s.object))
        .chain(
            snapshot
                .objects
                .endpoint_slices
                .iter()
                .map(|s| serde_json::to_value(&s.object)),
        )
        .chain(snapshot.node.iter().map(|n| serde_json::to_value(&**n)))
        .filter_map(Result::ok)
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    serde_json::to_string_pretty(&list).expect("a JSON value serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selector_is_kube_proxys() {
        let mut options = ClusterOptions {
            kubeconfig: None,
            node_name: "n1".into(),
            service_proxy_name: None,
        };
        assert_eq!(
            options.label_selector(),
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        );
        options.service_proxy_name = Some("kproxy".into());
        assert_eq!(
            options.label_selector(),
            "service.kubernetes.io/service-proxy-name=kproxy,!service.kubernetes.io/headless"
        );
    }
}
