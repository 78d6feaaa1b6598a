//! The client and the three watchers: list, watch, re-list on `410 Gone`, back off on
//! errors, and flag each change for the agent.

use std::{
    fmt::Debug,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher::{self, Event},
    },
};
use log::{info, warn};
use serde::de::DeserializeOwned;

use super::{ClusterError, ClusterOptions, Pending, TRIGGER_TIME_ANNOTATION};
use crate::error_chain;

/// The client for `--kubeconfig`, or the in-cluster one.
pub(super) async fn client(options: &ClusterOptions) -> Result<Client, ClusterError> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig_err = |source| ClusterError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_err)?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_err)?
        }
        None => Config::incluster().map_err(ClusterError::InCluster)?,
    };
    Client::try_from(config).map_err(ClusterError::Client)
}

pub(super) struct Stores {
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub nodes: Store<Node>,
}

/// Which initial list a watcher completes (an index into `Pending::listed`).
#[derive(Clone, Copy)]
enum Watched {
    Services = 0,
    EndpointSlices = 1,
    Node = 2,
}

impl Watched {
    /// The resource and verbs, as an RBAC error would name them.
    fn describe(self) -> &'static str {
        match self {
            Watched::Services => "list/watch services",
            Watched::EndpointSlices => "list/watch endpointslices.discovery.k8s.io",
            Watched::Node => "list/watch nodes",
        }
    }
}

/// Starts the watchers on the current runtime.
pub(super) fn spawn_all(
    client: Client,
    options: &ClusterOptions,
    pending: &Arc<Mutex<Pending>>,
    started: SystemTime,
) -> Stores {
    let selector = options.label_selector();
    let services = follow(
        Api::<Service>::all(client.clone()),
        watcher::Config::default().labels(&selector),
        Watched::Services,
        pending.clone(),
        |_| None,
    );
    let slices = follow(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default().labels(&selector),
        Watched::EndpointSlices,
        pending.clone(),
        move |slice: &EndpointSlice| trigger_time(slice).filter(|t| *t > started),
    );
    let nodes = follow(
        Api::<Node>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={}", options.node_name)),
        Watched::Node,
        pending.clone(),
        |_| None,
    );
    Stores {
        services,
        slices,
        nodes,
    }
}

/// One reflector: its store, and a task feeding it that flags every change (and
/// collects trigger times with `trigger`).
fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    watched: Watched,
    pending: Arc<Mutex<Pending>>,
    trigger: impl Fn(&K) -> Option<SystemTime> + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher::watcher(api, config).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event,
                Err(err) => {
                    // The store keeps the last good state; the backoff paces retries.
                    warn!(
                        "{}: {}; retrying, the last state received stays in force",
                        watched.describe(),
                        error_chain(&err)
                    );
                    failing = true;
                    continue;
                }
            };
            if failing {
                info!("{}: the API server answers again", watched.describe());
                failing = false;
            }
            let mut pending = pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match &event {
                Event::Init => {}
                Event::InitApply(object) | Event::Apply(object) => {
                    pending.trigger_times.extend(trigger(object));
                    pending.changed |= matches!(event, Event::Apply(_));
                }
                Event::Delete(_) => pending.changed = true,
                Event::InitDone => {
                    // The store was replaced with the (re-)listed objects.
                    pending.listed[watched as usize] = true;
                    pending.changed = true;
                }
            }
        }
    });
    reader
}

/// The slice's `last-change-trigger-time` annotation, if it parses.
fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    let timestamp: jiff::Timestamp = text.parse().ok()?;
    Some(SystemTime::from(timestamp))
}
