//! Kubernetes manifests → k8s-openapi objects → the [`crate::model`].
//!
//! A path is a YAML file with any number of `---` documents or a directory whose
//! `*.yaml`/`*.yml` files are read in name order. `Service` (v1), `EndpointSlice`
//! (discovery.k8s.io/v1) and `Node` (v1) documents are parsed with the k8s-openapi
//! types (the Node named as this node gives the model its zone, so labs and tests can
//! exercise topology hints); a `List`
//! (any `*List` kind) is unpacked; other kinds are skipped with a debug log, so the
//! manifests a user `kubectl apply`s can be pointed at directly.
//!
//! ```no_run
//! # use std::path::PathBuf;
//! use kproxy::{config::ProxyConfig, manifests, model::{IpFamily, NodeInfo}};
//! let config = ProxyConfig::default();
//! let node = NodeInfo::new("host1", IpFamily::V4);
//! let model = manifests::load(&[PathBuf::from("examples/hello-app.yaml")], &config, &node)?;
//! for port in &model.service_ports {
//!     let sets = port.categorize(&model.topology);
//!     println!("{} -> {} cluster endpoints", port.name, sets.cluster.len());
//! }
//! # Ok::<(), kproxy::manifests::ManifestError>(())
//! ```

mod endpoint_slice;
mod service;

use std::{
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    config::ProxyConfig,
    model::{IpFamily, Model, NodeInfo, Topology},
};

/// The Node label naming the node's zone (`v1.LabelTopologyZone`).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {document}: not valid YAML: {message}")]
    Yaml {
        path: PathBuf,
        document: usize,
        message: String,
    },
    #[error("{path}: {kind} {object}: field {field}: {message}")]
    Field {
        path: PathBuf,
        kind: &'static str,
        object: String,
        field: String,
        message: String,
    },
    #[error("{path}: no such file or directory")]
    Missing { path: PathBuf },
}

/// A parsed object and the file it came from (for error messages).
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    pub path: PathBuf,
    pub object: T,
}

/// Every Service, EndpointSlice and Node found under `paths`, in reading order.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Sourced<Service>>,
    pub endpoint_slices: Vec<Sourced<EndpointSlice>>,
    /// Only the one named as this node matters (its zone label).
    pub nodes: Vec<Sourced<Node>>,
}

/// A Node's zone: its `topology.kubernetes.io/zone` label, `None` when absent or empty
/// (kube-proxy reads a missing label as "" and then applies no zone hints).
pub fn zone_of(node: &Node) -> Option<String> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(ZONE_LABEL))
        .filter(|zone| !zone.is_empty())
        .cloned()
}

/// Reads `paths` (files or directories of `*.yaml`/`*.yml`) into the model for `node`'s
/// IP family; `config` supplies the node name override and the node-hints gate. The
/// model's zone is that of this node's Node object in `paths`, else `node.zone`. A
/// broken file is an error naming the file, the object and the field; no partial model
/// is returned.
pub fn load(paths: &[PathBuf], config: &ProxyConfig, node: &NodeInfo) -> Result<Model, ManifestError> {
    let node_name = config.hostname_override.as_deref().unwrap_or(&node.name);
    let objects = read_objects(paths)?;
    let mut model = build_model(&objects, node.family, node_name)?;
    if model.topology.zone.is_none() {
        model.topology.zone.clone_from(&node.zone);
    }
    model.topology.prefer_same_node = config.prefer_same_traffic_distribution();
    Ok(model)
}

/// Reads every path; fails on the first broken file.
pub fn read_objects(paths: &[PathBuf]) -> Result<Objects, ManifestError> {
    let mut objects = Objects::default();
    for path in paths {
        for file in yaml_files(path)? {
            read_file(&file, &mut objects)?;
        }
    }
    Ok(objects)
}

/// Builds the model for `family` from `objects`; `node_name` decides which endpoints are
/// local, and the Node of that name in `objects` (if any) gives the model's zone. The
/// node-hints gate is at its default (on); [`load`] applies the configuration's.
pub fn build_model(objects: &Objects, family: IpFamily, node_name: &str) -> Result<Model, ManifestError> {
    assemble(objects, family, node_name, None)
}

/// Builds the model as [`build_model`] does, but leaves out each object that fails and
/// returns its error beside the model: in cluster mode one broken object must not hold
/// back every other service's changes (kube-proxy, too, skips what it cannot use).
pub fn build_model_skipping(
    objects: &Objects,
    family: IpFamily,
    node_name: &str,
) -> (Model, Vec<ManifestError>) {
    let mut skipped = Vec::new();
    let model = assemble(objects, family, node_name, Some(&mut skipped))
        .expect("with a list to put them in, object errors are skipped");
    (model, skipped)
}

fn assemble(
    objects: &Objects,
    family: IpFamily,
    node_name: &str,
    mut skipped: Option<&mut Vec<ManifestError>>,
) -> Result<Model, ManifestError> {
    let mut service_ports = Vec::new();
    for service in &objects.services {
        match service::service_ports(service, family) {
            Ok(ports) => service_ports.extend(ports),
            Err(err) => match skipped.as_deref_mut() {
                Some(skipped) => skipped.push(err),
                None => return Err(err),
            },
        }
    }
    let endpoints = endpoint_slice::collect_endpoints(&objects.endpoint_slices, family, node_name, skipped)?;
    for port in &mut service_ports {
        if let Some(list) = endpoints.get(&port.name) {
            port.endpoints = list.clone();
        }
    }
    // kube-proxy's test normalisation orders services by "namespace/name"; ports keep
    // their spec order (the sort is stable).
    service_ports.sort_by_cached_key(|p| p.name.service());
    // The last Node of this name wins, as a later `kubectl apply` would.
    let zone = objects
        .nodes
        .iter()
        .rev()
        .find(|n| n.object.metadata.name.as_deref() == Some(node_name))
        .and_then(|n| zone_of(&n.object));
    Ok(Model {
        family,
        topology: Topology {
            node_name: node_name.to_string(),
            zone,
            ..Topology::default()
        },
        service_ports,
    })
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let meta = fs::metadata(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ManifestError::Missing { path: path.into() },
        _ => ManifestError::Read {
            path: path.into(),
            source,
        },
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let read_err = |source| ManifestError::Read {
        path: path.into(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(read_err)? {
        let file = entry.map_err(read_err)?.path();
        let is_yaml = file.extension().is_some_and(|ext| ext == "yaml" || ext == "yml");
        if is_yaml && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

fn read_file(path: &Path, objects: &mut Objects) -> Result<(), ManifestError> {
    let text = fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.into(),
        source,
    })?;
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| ManifestError::Yaml {
        path: path.into(),
        document: 0,
        message: e.to_string(),
    })?;
    for (index, document) in documents.into_iter().enumerate() {
        add_document(path, index + 1, document, objects)?;
    }
    Ok(())
}

fn add_document(
    path: &Path,
    index: usize,
    document: Value,
    objects: &mut Objects,
) -> Result<(), ManifestError> {
    if document.is_null() {
        return Ok(());
    }
    let Some(map) = document.as_object() else {
        return Err(ManifestError::Yaml {
            path: path.into(),
            document: index,
            message: "not a mapping (expected a Kubernetes object)".into(),
        });
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    match (api_version, kind) {
        ("v1", "Service") => {
            let object = parse_object::<Service>(path, "Service", document)?;
            objects.services.push(Sourced {
                path: path.into(),
                object,
            });
        }
        ("v1", "Node") => {
            let object = parse_object::<Node>(path, "Node", document)?;
            objects.nodes.push(Sourced {
                path: path.into(),
                object,
            });
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let object = parse_object::<EndpointSlice>(path, "EndpointSlice", document)?;
            objects.endpoint_slices.push(Sourced {
                path: path.into(),
                object,
            });
        }
        (_, list) if list.ends_with("List") => {
            let items = match map.get("items") {
                Some(Value::Array(items)) => items.clone(),
                Some(Value::Null) | None => Vec::new(),
                Some(_) => {
                    return Err(ManifestError::Field {
                        path: path.into(),
                        kind: "List",
                        object: format!("document {index}"),
                        field: "items".into(),
                        message: "not a list".into(),
                    });
                }
            };
            for item in items {
                add_document(path, index, item, objects)?;
            }
        }
        _ => log::debug!(
            "{}: document {index}: skipping {api_version} {kind}",
            path.display()
        ),
    }
    Ok(())
}

/// `namespace/name` of a raw object, for errors raised before it is typed; the bare
/// name of a Node (cluster-scoped).
fn raw_object_name(document: &Value, kind: &str) -> String {
    let meta = document.get("metadata");
    let field = |name| meta.and_then(|m| m.get(name)).and_then(Value::as_str);
    let name = field("name").unwrap_or("<unnamed>");
    if kind == "Node" {
        return name.to_string();
    }
    format!("{}/{name}", field("namespace").unwrap_or("default"))
}

fn parse_object<T: DeserializeOwned>(
    path: &Path,
    kind: &'static str,
    document: Value,
) -> Result<T, ManifestError> {
    let object = raw_object_name(&document, kind);
    serde_path_to_error::deserialize(document).map_err(|e| ManifestError::Field {
        path: path.into(),
        kind,
        object,
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// The error for a field of a typed object.
pub(crate) fn field_error(
    path: &Path,
    kind: &'static str,
    object: &str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> ManifestError {
    ManifestError::Field {
        path: path.into(),
        kind,
        object: object.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

/// `namespace/name` of typed object metadata (namespace defaults to `default`, as
/// `kubectl apply` does).
pub(crate) fn object_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn node(labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    #[test]
    fn zone_of_reads_the_zone_label_only() {
        assert_eq!(zone_of(&node(&[(ZONE_LABEL, "zone-a")])), Some("zone-a".into()));
        assert_eq!(zone_of(&node(&[(ZONE_LABEL, "")])), None, "empty is no zone");
        assert_eq!(
            zone_of(&node(&[("failure-domain.beta.kubernetes.io/zone", "zone-a")])),
            None,
            "kube-proxy reads only topology.kubernetes.io/zone"
        );
        assert_eq!(zone_of(&Node::default()), None);
    }

    #[test]
    fn a_broken_node_is_named_without_a_namespace() {
        let document: Value = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-a", "labels": ["not", "a", "map"]},
        });
        let mut objects = Objects::default();
        let err = add_document(Path::new("nodes.yaml"), 1, document, &mut objects).unwrap_err();
        assert_eq!(
            err.to_string(),
            "nodes.yaml: Node node-a: field metadata.labels: invalid type: sequence, expected a map"
        );
    }

    /// `load` gives the model this node's topology: the name after `hostnameOverride`,
    /// the zone of the Node of that name (else the node facts'), the configured gate.
    #[test]
    fn load_fills_the_models_topology() {
        let fixture = |name: &str| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/topology")
                .join(name)
        };
        let both = [fixture("service.yaml"), fixture("node.yaml")];
        let facts = NodeInfo::new("host", IpFamily::V4).with_zone(Some("zone-z".into()));
        let config = |text: &str| ProxyConfig::parse(text, "t").unwrap();

        let model = load(&both, &config("hostnameOverride: node-b1"), &facts).unwrap();
        assert_eq!(
            model.topology,
            Topology {
                node_name: "node-b1".into(),
                zone: Some("zone-b".into()),
                prefer_same_node: true,
            }
        );
        // No Node of this name among the files: the node facts' zone.
        let model = load(&both, &config(""), &facts).unwrap();
        assert_eq!(model.topology.zone.as_deref(), Some("zone-z"));
        let gate_off = config("featureGates: {PreferSameTrafficDistribution: false}");
        assert!(!load(&both, &gate_off, &facts).unwrap().topology.prefer_same_node);
    }
}
