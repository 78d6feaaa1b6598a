//! The manifests in `deploy/`, checked without a cluster (`kubectl apply --dry-run` is
//! not to be had here): every document parses into its k8s-openapi type and serializes
//! back to the same JSON (k8s-openapi ignores unknown fields, so a misspelt one would
//! otherwise pass), and the facts the deployment depends on hold — the agent's flags
//! exist, its configuration loads, its role grants exactly what it uses.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Container, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kproxy::config::ProxyConfig;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every non-empty document of every `*.yaml` / `*.yml` file in `deploy/`, with its origin.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("read deploy/")
        .map(|e| e.expect("deploy/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
        for (i, doc) in docs.into_iter().enumerate().filter(|(_, d)| !d.is_null()) {
            out.push((format!("{} document {}", file.display(), i + 1), doc));
        }
    }
    out
}

/// `value` without null members (k8s-openapi leaves unset fields out when it serializes).
fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// Parses `doc` as `T` and checks that serializing it gives `doc` back: a field the type
/// does not know (a typo, a wrong level) is dropped on the way and fails here.
fn typed<T: DeserializeOwned + Serialize>(origin: &str, doc: &Value) -> T {
    let object: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let back = without_nulls(serde_json::to_value(&object).expect("serialize"));
    if let Some(at) = first_difference(&without_nulls(doc.clone()), &back, String::new()) {
        panic!("{origin}: {at} does not round-trip through its k8s-openapi type (misspelt or misplaced?)");
    }
    object
}

/// The JSON pointer of the first place `written` and `parsed` differ.
fn first_difference(written: &Value, parsed: &Value, at: String) -> Option<String> {
    match (written, parsed) {
        (Value::Object(w), Value::Object(p)) => {
            w.keys().chain(p.keys()).find_map(|k| match (w.get(k), p.get(k)) {
                (Some(a), Some(b)) => first_difference(a, b, format!("{at}/{k}")),
                _ => Some(format!("{at}/{k}")),
            })
        }
        (Value::Array(w), Value::Array(p)) if w.len() == p.len() => w
            .iter()
            .zip(p)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, format!("{at}/{i}"))),
        _ => (written != parsed).then_some(at),
    }
}

/// The objects of `deploy/`, each kind at most once.
#[derive(Default)]
struct Deploy {
    service_account: Option<ServiceAccount>,
    cluster_role: Option<ClusterRole>,
    binding: Option<ClusterRoleBinding>,
    config_map: Option<ConfigMap>,
    daemon_set: Option<DaemonSet>,
}

fn set_once<T>(slot: &mut Option<T>, value: T, origin: &str) {
    assert!(slot.is_none(), "{origin}: a second object of this kind");
    *slot = Some(value);
}

fn load() -> Deploy {
    let mut deploy = Deploy::default();
    for (origin, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "ServiceAccount" => set_once(&mut deploy.service_account, typed(&origin, &doc), &origin),
            "ClusterRole" => set_once(&mut deploy.cluster_role, typed(&origin, &doc), &origin),
            "ClusterRoleBinding" => set_once(&mut deploy.binding, typed(&origin, &doc), &origin),
            "ConfigMap" => set_once(&mut deploy.config_map, typed(&origin, &doc), &origin),
            "DaemonSet" => set_once(&mut deploy.daemon_set, typed(&origin, &doc), &origin),
            other => panic!("{origin}: kind {other:?} is not expected in deploy/"),
        }
    }
    deploy
}

/// The `--flags` in the `kproxy SUBCOMMAND` command line `command`.
fn flags(command: &[String]) -> Vec<&str> {
    command
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap_or_default())
        .collect()
}

/// What the built agent prints for `kproxy SUBCOMMAND --help`.
fn help(subcommand: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args([subcommand, "--help"])
        .output()
        .expect("run kproxy --help");
    assert!(out.status.success(), "kproxy {subcommand} --help failed");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// Whether `--flag` is an option in `help` (followed by a space, `=` or a line end).
fn help_knows(help: &str, flag: &str) -> bool {
    help.lines().any(|line| {
        line.split(|c: char| c.is_whitespace() || c == ',')
            .any(|word| word == flag)
    })
}

fn pod_containers(ds: &DaemonSet) -> (Vec<Container>, Vec<Container>) {
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("DaemonSet pod spec");
    (pod.init_containers.unwrap_or_default(), pod.containers)
}

#[test]
fn every_manifest_round_trips_through_its_type() {
    let deploy = load();
    assert!(deploy.service_account.is_some(), "no ServiceAccount");
    assert!(deploy.cluster_role.is_some(), "no ClusterRole");
    assert!(deploy.binding.is_some(), "no ClusterRoleBinding");
    assert!(deploy.config_map.is_some(), "no ConfigMap");
    assert!(deploy.daemon_set.is_some(), "no DaemonSet");
}

#[test]
fn the_typo_check_catches_an_unknown_field() {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "kproxy", "namespce": "kube-system"},
    });
    let caught = std::panic::catch_unwind(|| typed::<ServiceAccount>("typo", &doc));
    assert!(caught.is_err(), "a misspelt field passed the round trip");
}

#[test]
fn the_agent_knows_every_flag_of_the_daemon_set() {
    let ds = load().daemon_set.expect("DaemonSet");
    let (init, containers) = pod_containers(&ds);
    let mut checked = 0;
    for container in init.iter().chain(&containers) {
        let command = container.command.clone().unwrap_or_default();
        let command: Vec<String> = command
            .into_iter()
            .chain(container.args.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            command.first().map(String::as_str),
            Some("kproxy"),
            "{}: runs kproxy",
            container.name
        );
        let subcommand = command.get(1).expect("a subcommand");
        let help = help(subcommand);
        for flag in flags(&command) {
            assert!(
                help_knows(&help, flag),
                "{}: `kproxy {subcommand}` has no {flag}:\n{help}",
                container.name
            );
            checked += 1;
        }
    }
    assert!(checked > 5, "only {checked} flags checked");
}

#[test]
fn the_agent_runs_as_kube_proxy_would() {
    let ds = load().daemon_set.expect("DaemonSet");
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    assert_eq!(pod.service_account_name.as_deref(), Some("kproxy"));
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "tolerates every taint"
    );
    let strategy = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.clone())
        .expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy.rolling_update.and_then(|r| r.max_unavailable),
        Some(IntOrString::Int(1))
    );

    let (init, containers) = pod_containers(&ds);
    let agent = containers
        .iter()
        .find(|c| c.name == "kproxy")
        .expect("the kproxy container");
    for c in init.iter().chain(&containers) {
        let privileged = c.security_context.as_ref().and_then(|s| s.privileged);
        assert_eq!(privileged, Some(true), "{}: privileged", c.name);
    }
    let command = agent.command.clone().expect("command");
    let value_of = |flag: &str| {
        let at = command
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        command[at + 1].clone()
    };
    assert_eq!(&command[..2], ["kproxy", "run"]);
    assert_eq!(value_of("--mode"), "ebpf");
    assert_eq!(value_of("--hostname-override"), "$(NODE_NAME)");
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(
        node_name.as_deref(),
        Some("spec.nodeName"),
        "NODE_NAME from the downward API"
    );

    // Each path the agent is given is a mount of the right volume.
    let volumes = pod.volumes.clone().unwrap_or_default();
    let mount_of = |path: &str| {
        agent
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| Path::new(path).starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .unwrap_or_else(|| panic!("{path} is on no volume mount"))
            .clone()
    };
    let host_path = |mount: &str| {
        let name = mount_of(mount).name;
        volumes
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.host_path.as_ref())
            .map(|h| h.path.clone())
    };
    assert_eq!(
        host_path(&value_of("--cgroup")).as_deref(),
        Some("/sys/fs/cgroup")
    );
    let bpffs = mount_of("/sys/fs/bpf/kproxy");
    assert_eq!(bpffs.mount_propagation.as_deref(), Some("Bidirectional"));
    assert_eq!(host_path("/sys/fs/bpf").as_deref(), Some("/sys/fs/bpf"));
    assert_eq!(host_path("/run/kproxy").as_deref(), Some("/run/kproxy"));
    assert_eq!(host_path("/lib/modules").as_deref(), Some("/lib/modules"));
    assert_eq!(
        host_path("/run/xtables.lock").as_deref(),
        Some("/run/xtables.lock")
    );
    let config = mount_of(&value_of("--config"));
    let config_volume = volumes
        .iter()
        .find(|v| v.name == config.name)
        .expect("config volume");
    assert_eq!(
        config_volume.config_map.as_ref().map(|c| c.name.as_str()),
        Some("kproxy"),
        "--config comes from the ConfigMap"
    );

    // The probes ask the health server the configuration binds.
    let probe = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
        let get = p.and_then(|p| p.http_get.clone()).expect("an httpGet probe");
        (get.path.unwrap_or_default(), get.port)
    };
    assert_eq!(
        probe(agent.liveness_probe.as_ref()),
        ("/livez".to_string(), IntOrString::Int(10256))
    );
    assert_eq!(
        probe(agent.readiness_probe.as_ref()),
        ("/healthz".to_string(), IntOrString::Int(10256))
    );
}

#[test]
fn the_config_map_loads_as_the_agent_reads_it() {
    let cm = load().config_map.expect("ConfigMap");
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.conf"))
        .expect("config.conf");
    let config = ProxyConfig::parse(text, "deploy ConfigMap kproxy").expect("the agent accepts it");
    assert_eq!(
        config.metrics_bind_address,
        Some("127.0.0.1:10249".parse().unwrap())
    );
    assert_eq!(
        config.healthz_bind_address,
        Some("0.0.0.0:10256".parse().unwrap())
    );
    let doc: Value = serde_saphyr::from_str(text).expect("YAML");
    assert_eq!(doc["apiVersion"], "kubeproxy.config.k8s.io/v1alpha1");
    assert_eq!(doc["kind"], "KubeProxyConfiguration");
}

#[test]
fn the_role_grants_exactly_what_the_agent_uses() {
    let deploy = load();
    let role = deploy.cluster_role.expect("ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    granted.insert((group.as_str(), resource.as_str(), verb.as_str()));
                }
            }
        }
    }
    let mut wanted = BTreeSet::new();
    for (group, resource) in [
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        for verb in ["list", "watch"] {
            wanted.insert((group, resource, verb));
        }
    }
    for group in ["", "events.k8s.io"] {
        for verb in ["create", "patch", "update"] {
            wanted.insert((group, "events", verb));
        }
    }
    assert_eq!(granted, wanted);

    let binding = deploy.binding.expect("ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(binding.role_ref.name.as_str()),
        role.metadata.name.as_deref()
    );
    let subjects = binding.subjects.unwrap_or_default();
    let account = deploy.service_account.expect("ServiceAccount");
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(s.name.as_str()) == account.metadata.name.as_deref()
            && s.namespace == account.metadata.namespace),
        "the binding names the ServiceAccount: {subjects:?}"
    );
    assert_eq!(account.metadata.namespace.as_deref(), Some("kube-system"));
}
