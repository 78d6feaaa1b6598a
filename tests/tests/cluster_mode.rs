//! Cluster mode end to end: the real `kproxy run --kubeconfig …` in the seed topology's
//! node namespace, fed by the test bed's in-process API server (the Kubernetes API's
//! HTTP protocol: list, watch, bookmarks, 410, 403, drops) listening on the node's
//! loopback. Every scenario runs in eBPF and iptables mode with the same assertions.

use std::{
    net::Ipv4Addr,
    time::{Duration, SystemTime},
};

use kproxy_testbed::{
    cluster::{Cluster, Mode, POD_A, POD_B, SYNC_TIMEOUT, at, both, cluster_ip, http_backends, node_port},
    hello::tcp_connect_failure,
    http::http_get,
    manifests::{SERVICE_PORT, Service},
};
use serde_json::json;

/// How long the scenarios wait for the watchers to reconnect or re-list (kube-rs backs
/// off from 800 ms, doubling).
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// LIST requests (not watches) so far for `resource`'s path.
fn lists(c: &Cluster, resource: &str) -> usize {
    c.api()
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains(&format!("/{resource}")) && !r.contains("watch="))
        .count()
}

fn is_watch_of(request: &str, resource: &str) -> bool {
    request.contains(&format!("/{resource}?"))
        && (request.contains("watch=true") || request.contains("watch=1"))
}

/// The agent serves what the API server lists, and follows its changes: endpoints
/// changed, a service deleted, added again.
fn serves_and_follows_the_api_server(mode: Mode) {
    let mut c = Cluster::start_with_api(mode, &[POD_A, POD_B], true);
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        both(),
        "ClusterIP from a pod"
    );
    assert_eq!(
        http_backends(&c.topo.external, node_port()),
        both(),
        "NodePort from outside"
    );

    c.set_endpoints(&[POD_B]);
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        ["hello-b".to_string()].into(),
        "endpoints follow the EndpointSlice"
    );

    assert!(c.api().delete("Service", "default", "hello-app-service"));
    c.wait_sync();
    let failure = tcp_connect_failure(c.client(), cluster_ip());
    assert!(failure.is_some(), "a deleted service is not served");

    c.set_endpoints(&[POD_A, POD_B]);
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        both(),
        "the service is back"
    );
    // What inspect reads: the API server's objects recorded as a model file.
    let inspect = c.kproxy(&["inspect", "--format", "json"]);
    let report = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        inspect.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    assert!(
        report.contains("hello-app-service"),
        "inspect shows the service: {report}"
    );
}

/// A watch the API server drops is resumed from its resourceVersion: no new LIST, no
/// sync for nothing, and the next change arrives as one sync.
fn a_dropped_watch_resumes_without_a_resync(mode: Mode) {
    let mut c = Cluster::start_with_api(mode, &[POD_A, POD_B], true);
    assert!(
        c.api().wait_for_open_watches(3, RECONNECT_TIMEOUT),
        "three watches open"
    );
    let (services, slices) = (lists(&c, "services"), lists(&c, "endpointslices"));
    let before = c.api().requests().len();
    c.api().drop_watches();
    let resumed = c.api().wait_for_requests(
        |requests| {
            let new = &requests[before.min(requests.len())..];
            ["services", "endpointslices", "nodes"].iter().all(|r| {
                new.iter()
                    .any(|q| is_watch_of(q, r) && q.contains("resourceVersion="))
            })
        },
        RECONNECT_TIMEOUT,
    );
    assert!(resumed, "every watch resumed: {:#?}", c.api().requests());
    assert_eq!(lists(&c, "services"), services, "no re-list of services");
    assert_eq!(
        lists(&c, "endpointslices"),
        slices,
        "no re-list of endpointslices"
    );

    c.set_endpoints(&[POD_A]);
    assert_eq!(
        c.agent.log().matches("sync #").count(),
        2,
        "one sync at start, one for the change: the resumed watch synced nothing"
    );
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        ["hello-a".to_string()].into()
    );
}

/// A change made while the agent could not watch, whose history then expired: the
/// resumed watch gets 410 Gone, the watcher re-lists, and the datapath converges.
fn an_expired_watch_relists_and_converges(mode: Mode) {
    let mut c = Cluster::start_with_api(mode, &[POD_A, POD_B], true);
    assert!(c.api().wait_for_open_watches(3, RECONNECT_TIMEOUT));
    let slices = lists(&c, "endpointslices");
    c.api().set_unavailable(true);
    c.api().drop_watches();
    c.api().apply_yaml(&Service::hello_app(&[POD_B]).yaml());
    c.api().expire_history();
    c.api().set_unavailable(false);
    c.wait_sync();
    assert!(
        lists(&c, "endpointslices") > slices,
        "410 Gone made the watcher re-list: {:#?}",
        c.api().requests()
    );
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        ["hello-b".to_string()].into(),
        "the change made while away is applied"
    );
}

/// The API server is down when the agent starts: it retries, syncs nothing, and serves
/// once the server answers.
fn api_down_at_start_serves_once_up(mode: Mode) {
    let mut c = Cluster::start_with_api(mode, &[POD_A, POD_B], false);
    c.agent.wait_for_log("list/watch services", 1, RECONNECT_TIMEOUT);
    assert!(
        !c.agent.log().contains("sync #"),
        "nothing synced before the first lists"
    );
    c.bring_api_up();
    assert_eq!(http_backends(c.client(), cluster_ip()), both());
}

/// A missing permission is an error naming the resource and the verb, retried until
/// the permission is granted; nothing is synced from a partial view.
fn forbidden_names_resource_and_verb(mode: Mode) {
    let mut c = Cluster::start_with_api(mode, &[POD_A, POD_B], false);
    c.api().deny("endpointslices", "list");
    c.bring_api_up_without_sync();
    c.agent
        .wait_for_log("cannot list resource \"endpointslices\"", 1, RECONNECT_TIMEOUT);
    let log = c.agent.log();
    assert!(
        log.contains("list/watch endpointslices"),
        "the error names the watch: {log}"
    );
    assert!(!log.contains("sync #"), "no sync without the endpoint slices");
    c.api().allow("endpointslices", "list");
    c.wait_sync();
    assert_eq!(http_backends(c.client(), cluster_ip()), both());
}

/// kube-proxy's object filters: a service labelled for another proxy and a headless
/// service are not served; an unlabelled one beside them is.
fn label_filtered_and_headless_services_are_not_served(mode: Mode) {
    let mut c = Cluster::start_with_api(mode, &[POD_A, POD_B], true);
    let other_ip = Ipv4Addr::new(10, 96, 0, 77);
    let other = Service {
        name: "other-proxy".into(),
        cluster_ip: other_ip,
        ..Service::hello_app(&[POD_A])
    };
    for mut object in documents(&other.yaml()) {
        object["metadata"]["labels"]["service.kubernetes.io/service-proxy-name"] = json!("other");
        c.api().apply(object);
    }
    c.api().apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "headless", "namespace": "default"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"name": "http", "port": 80}]}
    }));
    let third = Service {
        name: "third".into(),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 78),
        ..Service::hello_app(&[POD_B])
    };
    c.api().apply_yaml(&third.yaml());
    c.agent.wait_for_log(
        "sync #",
        c.agent.log().matches("sync #").count() + 1,
        SYNC_TIMEOUT,
    );
    let last = c
        .agent
        .log()
        .lines()
        .rfind(|l| l.contains("sync #"))
        .unwrap_or_default()
        .to_string();
    assert!(last.contains(": 2 services"), "hello-app and third only: {last}");
    assert_eq!(
        http_backends(c.client(), at(Ipv4Addr::new(10, 96, 0, 78), SERVICE_PORT)),
        ["hello-b".to_string()].into()
    );
    assert!(
        tcp_connect_failure(c.client(), at(other_ip, SERVICE_PORT)).is_some(),
        "another proxy's service is left alone"
    );
}

/// kube-proxy's network programming latency: from the EndpointSlice's
/// `last-change-trigger-time` to the sync that applied it.
fn network_programming_latency_is_measured(mode: Mode) {
    let mut c = Cluster::start_with_api(mode, &[POD_A, POD_B], true);
    let trigger = jiff::Timestamp::try_from(SystemTime::now())
        .expect("now")
        .to_string();
    for mut object in documents(&Service::hello_app(&[POD_A]).yaml()) {
        if object["kind"] == "EndpointSlice" {
            object["metadata"]["annotations"] =
                json!({"endpoints.kubernetes.io/last-change-trigger-time": trigger});
        }
        c.api().apply(object);
    }
    c.wait_sync();
    let metrics = http_get(&c.topo.node, at(Ipv4Addr::LOCALHOST, 10249), "/metrics").expect("GET /metrics");
    let count = metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix("kubeproxy_network_programming_duration_seconds_count "))
        .unwrap_or_else(|| panic!("no network programming histogram:\n{}", metrics.body));
    assert_eq!(count.trim(), "1", "one EndpointSlice change with a trigger time");
}

/// The YAML documents of `text` as JSON objects.
fn documents(text: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(text).expect("test YAML")
}

kproxy_testbed::every_mode!(
    serves_and_follows_the_api_server,
    a_dropped_watch_resumes_without_a_resync,
    an_expired_watch_relists_and_converges,
    api_down_at_start_serves_once_up,
    forbidden_names_resource_and_verb,
    label_filtered_and_headless_services_are_not_served,
    network_programming_latency_is_measured,
);
