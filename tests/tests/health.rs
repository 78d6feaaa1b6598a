//! kube-proxy's health servers under the real `kproxy run`, in both datapaths: `/healthz`
//! and `/livez` on the default `healthzBindAddress` (0.0.0.0:10256), and the health check
//! port of a LoadBalancer Service with `externalTrafficPolicy: Local`, which answers with
//! the node's ready endpoints of it (200, or 503 when there are none), opens and closes
//! as the model adds and removes the Service, and fails alone when its port is taken;
//! both turn 503 when a model change waits longer than twice `iptables.syncPeriod`.
//! Every request comes from the test's external client to the node's address, but
//! `/metrics`, scraped on its default `metricsBindAddress` (127.0.0.1:10249) inside the
//! node and read with a Prometheus text-format parser.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    thread,
    time::{Duration, Instant},
};

use kproxy_testbed::{
    agent::Agent,
    cluster::{Cluster, Mode, POD_A, POD_B, SYNC_TIMEOUT, at, run_args},
    hello::http_get_hostname,
    http::{HttpAnswer, http_get},
    manifests::{
        CLUSTER_CIDR, CLUSTER_IP, External, NODE_NAME, OTHER_NODE_NAME, Port, SERVICE_PORT, Service,
        TARGET_PORT, proxy_config, write_documents, write_model,
    },
    tempdir::TempDir,
    topology::NODE_IP,
};

const HEALTHZ_PORT: u16 = 10256;
const METRICS_PORT: u16 = 10249;
const HEALTH_CHECK_PORT: u16 = 32100;
/// The health check port of a second Service, held by another listener on the node.
const TAKEN_HEALTH_CHECK_PORT: u16 = 32101;
const ENDPOINTS: [Ipv4Addr; 2] = [POD_A, POD_B];

/// A LoadBalancer Service (externalTrafficPolicy Local) over both pods, all on `node_name`.
fn local_load_balancer(
    name: &str,
    last_octet: u8,
    node_port: u16,
    node_name: &'static str,
) -> Service<'static> {
    Service {
        namespace: "default",
        name: name.into(),
        cluster_ip: Ipv4Addr::new(10, 104, 81, last_octet),
        ports: vec![Port::tcp("http", SERVICE_PORT, TARGET_PORT, node_port)],
        endpoints: &ENDPOINTS,
        node_name,
        endpoint_nodes: &[],
        terminating: &[],
        external: External::default(),
    }
}

/// The hello-app plus two local-traffic LoadBalancers whose pods are on `node_name`.
fn write_load_balancers(c: &Cluster, node_name: &'static str) {
    let documents = [
        Service::hello_app(&ENDPOINTS).yaml(),
        local_load_balancer("hello-lb", 241, 30812, node_name).local_load_balancer_yaml(HEALTH_CHECK_PORT),
        local_load_balancer("hello-lb-taken", 242, 30813, node_name)
            .local_load_balancer_yaml(TAKEN_HEALTH_CHECK_PORT),
    ]
    .concat();
    write_documents(&c.model, &documents).expect("write the model");
}

fn get(c: &Cluster, port: u16, path: &str) -> Result<HttpAnswer, String> {
    http_get(&c.topo.external, at(NODE_IP, port), path)
}

/// Asks until the answer has `status` (the agent updates its servers just after it logs
/// the sync), panicking with the last answer after `SYNC_TIMEOUT`.
fn get_until(c: &Cluster, port: u16, path: &str, status: u16) -> HttpAnswer {
    let deadline = Instant::now() + SYNC_TIMEOUT;
    loop {
        let answer = get(c, port, path);
        match answer {
            Ok(answer) if answer.status == status => return answer,
            other if Instant::now() >= deadline => panic!("port {port} never answered {status}: {other:?}"),
            _ => thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn assert_json_headers(answer: &HttpAnswer) {
    assert_eq!(answer.header("content-type"), "application/json", "{answer:?}");
    assert_eq!(answer.header("x-content-type-options"), "nosniff", "{answer:?}");
}

fn proxy_health_answers_after_the_first_sync(mode: Mode) {
    let c = Cluster::start(mode, &ENDPOINTS);
    let healthz = get(&c, HEALTHZ_PORT, "/healthz").expect("GET /healthz");
    assert_eq!(healthz.status, 200, "{healthz:?}");
    assert_json_headers(&healthz);
    let json = healthz.json();
    assert_eq!(json["healthy"], true, "{json}");
    assert_eq!(json["nodeEligible"], true, "{json}");
    assert_eq!(json["status"]["IPv4"]["healthy"], true, "{json}");
    for field in ["lastUpdated", "currentTime"] {
        assert!(
            json[field].as_str().is_some_and(|t| t.ends_with('Z')),
            "{field}: {json}"
        );
    }
    let livez = get(&c, HEALTHZ_PORT, "/livez").expect("GET /livez");
    assert_eq!(livez.status, 200, "{livez:?}");
    assert_json_headers(&livez);
    assert!(livez.json().get("nodeEligible").is_none(), "{livez:?}");
    let other = get(&c, HEALTHZ_PORT, "/metrics").expect("GET /metrics");
    assert_eq!(other.status, 404, "{other:?}");
}

fn health_check_port_reports_local_endpoints(mode: Mode) {
    let mut c = Cluster::start(mode, &ENDPOINTS);
    let taken = c
        .topo
        .node
        .run(|| TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], TAKEN_HEALTH_CHECK_PORT))))
        .expect("hold the second health check port");

    write_load_balancers(&c, NODE_NAME);
    c.wait_sync();
    c.agent.wait_for_log(
        &format!("health check of default/hello-lb: listening on port {HEALTH_CHECK_PORT}"),
        1,
        SYNC_TIMEOUT,
    );
    c.agent.wait_for_log(
        &format!("health check of default/hello-lb-taken: listen on 0.0.0.0:{TAKEN_HEALTH_CHECK_PORT}: "),
        1,
        SYNC_TIMEOUT,
    );
    let log = c.agent.log();
    assert!(log.contains("in use"), "a failed listen names the error:\n{log}");
    let healthy = get_until(&c, HEALTH_CHECK_PORT, "/", 200);
    assert_json_headers(&healthy);
    assert_eq!(
        healthy.header("x-load-balancing-endpoint-weight"),
        "2",
        "{healthy:?}"
    );
    let json = healthy.json();
    assert_eq!(json["service"]["namespace"], "default", "{json}");
    assert_eq!(json["service"]["name"], "hello-lb", "{json}");
    assert_eq!(json["localEndpoints"], 2, "{json}");
    assert_eq!(json["serviceProxyHealthy"], true, "{json}");

    write_load_balancers(&c, OTHER_NODE_NAME);
    c.wait_sync();
    let unhealthy = get_until(&c, HEALTH_CHECK_PORT, "/", 503);
    assert_json_headers(&unhealthy);
    assert_eq!(
        unhealthy.header("x-load-balancing-endpoint-weight"),
        "0",
        "{unhealthy:?}"
    );
    assert_eq!(unhealthy.json()["localEndpoints"], 0, "{unhealthy:?}");

    drop(taken);
    write_model(&c.model, &ENDPOINTS);
    c.wait_sync();
    c.agent.wait_for_log(
        &format!("health check of default/hello-lb: closed port {HEALTH_CHECK_PORT}"),
        1,
        SYNC_TIMEOUT,
    );
    let closed = get(&c, HEALTH_CHECK_PORT, "/");
    assert!(
        closed.as_ref().is_err_and(|e| e.contains("refused")),
        "the removed Service's port still answers: {closed:?}"
    );
    let healthz = get(&c, HEALTHZ_PORT, "/healthz").expect("GET /healthz");
    assert_eq!(healthz.status, 200, "{healthz:?}");
}

/// An agent with `iptables.syncPeriod: 1s` (health timeout 2 s) replaces the cluster's:
/// a broken model file leaves a change queued, and once it has waited 2 s `/healthz`
/// and the health check port answer 503 (the latter still counting its endpoints);
/// a good file brings both back.
fn late_change_makes_the_proxy_unhealthy(mode: Mode) {
    let mut c = Cluster::start(mode, &ENDPOINTS);
    assert!(c.agent.stop(), "the cluster's agent must exit cleanly");
    write_load_balancers(&c, NODE_NAME);
    let dir = TempDir::new("hlth");
    let config = dir.path().join("config.yaml");
    let text = proxy_config(NODE_NAME, CLUSTER_CIDR) + "iptables: {syncPeriod: 1s}\n";
    std::fs::write(&config, text).expect("write the configuration");
    c.agent = Agent::start(
        &c.topo.node,
        &run_args(mode, &c.model, &config, c.pins.path(), c.cgroup.path()),
    );
    c.agent.wait_for_log("sync #1", 1, SYNC_TIMEOUT);
    assert_eq!(
        get_until(&c, HEALTHZ_PORT, "/healthz", 200).json()["healthy"],
        true
    );
    get_until(&c, HEALTH_CHECK_PORT, "/", 200);

    std::fs::write(
        &c.model,
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken\n",
    )
    .expect("write");
    c.agent.wait_for_log("model not applied", 1, SYNC_TIMEOUT);
    let healthz = get_until(&c, HEALTHZ_PORT, "/healthz", 503);
    assert_json_headers(&healthz);
    let json = healthz.json();
    assert_eq!(json["healthy"], false, "{json}");
    assert_eq!(json["status"]["IPv4"]["healthy"], false, "{json}");
    assert_eq!(
        json["lastUpdated"], json["status"]["IPv4"]["lastUpdated"],
        "unhealthy: lastUpdated is the last sync, not now: {json}"
    );
    assert_eq!(get(&c, HEALTHZ_PORT, "/livez").expect("GET /livez").status, 503);
    let check = get(&c, HEALTH_CHECK_PORT, "/").expect("GET the health check port");
    assert_eq!(check.status, 503, "{check:?}");
    assert_eq!(check.json()["serviceProxyHealthy"], false, "{check:?}");
    assert_eq!(check.json()["localEndpoints"], 2, "{check:?}");

    write_load_balancers(&c, NODE_NAME);
    c.agent.wait_for_log("sync #2", 1, SYNC_TIMEOUT);
    get_until(&c, HEALTHZ_PORT, "/healthz", 200);
    get_until(&c, HEALTH_CHECK_PORT, "/", 200);
}

/// `/metrics` on the node's loopback, parsed as Prometheus parses it.
fn scrape(c: &Cluster) -> prometheus_parse::Scrape {
    let answer =
        http_get(&c.topo.node, at(Ipv4Addr::LOCALHOST, METRICS_PORT), "/metrics").expect("GET /metrics");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer
            .header("content-type")
            .starts_with("application/openmetrics-text"),
        "{answer:?}"
    );
    let lines = answer.body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("parse /metrics")
}

/// The value of `metric` with `label` (a histogram: its count), if the scrape has it.
fn value(scrape: &prometheus_parse::Scrape, metric: &str, label: Option<(&str, &str)>) -> Option<f64> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .find_map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
            Value::Histogram(buckets) => buckets.last().map(|b| b.count),
            Value::Summary(_) => None,
        })
}

fn must(scrape: &prometheus_parse::Scrape, metric: &str, label: Option<(&str, &str)>) -> f64 {
    value(scrape, metric, label)
        .unwrap_or_else(|| panic!("no {metric} {label:?} in /metrics: {:#?}", scrape.samples))
}

/// kube-proxy's families after two syncs (the second adds two LoadBalancers with
/// `externalTrafficPolicy: Local` whose pods are all on the other node), and in eBPF
/// mode kproxy's map, conntrack, event and per-service families after traffic.
fn metrics_follow_syncs_and_traffic(mode: Mode) {
    let mut c = Cluster::start(mode, &ENDPOINTS);
    write_load_balancers(&c, OTHER_NODE_NAME);
    c.wait_sync();
    for _ in 0..3 {
        http_get_hostname(c.client(), at(CLUSTER_IP, SERVICE_PORT)).expect("GET the ClusterIP");
    }
    let m = scrape(&c);
    let syncs = must(&m, "kubeproxy_sync_proxy_rules_duration_seconds", None);
    let count = value(&m, "kubeproxy_sync_proxy_rules_duration_seconds_count", None).unwrap_or(syncs);
    assert!(count >= 2.0, "two syncs timed: {count}");
    let last = must(&m, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(last <= now && now - last < 60.0, "last sync at {last}, now {now}");
    assert!(
        must(&m, "kubeproxy_sync_proxy_rules_service_changes_total", None) >= 3.0,
        "hello-app, then two LoadBalancers"
    );
    assert!(must(&m, "kubeproxy_sync_proxy_rules_endpoint_changes_total", None) >= 3.0);
    let no_local = |policy| {
        must(
            &m,
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            Some(("traffic_policy", policy)),
        ) as u64
    };
    assert_eq!(no_local("external"), 2, "both LoadBalancers' pods are elsewhere");
    assert_eq!(no_local("internal"), 0);
    match mode {
        Mode::Iptables => {
            for table in ["filter", "nat"] {
                let rules = must(
                    &m,
                    "kubeproxy_sync_proxy_rules_iptables_total",
                    Some(("table", table)),
                );
                assert!(rules > 0.0, "{table}: {rules} rules");
            }
            assert!(value(&m, "kproxy_bpf_map_entries", None).is_none());
        }
        Mode::Ebpf | Mode::EbpfXdp => {
            assert!(value(&m, "kubeproxy_sync_proxy_rules_iptables_total", None).is_none());
            let services = Some(("map", kproxy_common::map_names::SERVICES));
            assert!(must(&m, "kproxy_bpf_map_capacity", services) > 0.0);
            assert!(must(&m, "kproxy_bpf_map_entries", services) > 0.0);
            let events = Some(("map", kproxy_common::map_names::EVENTS));
            assert!(must(&m, "kproxy_bpf_map_capacity", events) > 0.0);
            assert!(
                value(&m, "kproxy_bpf_map_entries", events).is_none(),
                "an array's entries are its capacity: not exported"
            );
            let conntrack = must(&m, "kproxy_conntrack_entries", Some(("table", "tcp")))
                + must(&m, "kproxy_conntrack_entries", Some(("table", "any")));
            assert!(conntrack > 0.0, "three connections tracked");
            must(&m, "kproxy_datapath_drops_total", Some(("reason", "no_backend")));
            assert!(must(&m, "kproxy_datapath_events_total", Some(("event", "new_flow"))) >= 3.0);
            let http = Some(("service", "default/hello-app-service:http"));
            assert!(must(&m, "kproxy_service_packets_total", http) > 0.0);
            assert!(must(&m, "kproxy_service_new_flows_total", http) >= 3.0);
        }
    }
    let other = http_get(&c.topo.node, at(Ipv4Addr::LOCALHOST, METRICS_PORT), "/healthz")
        .expect("GET /healthz on the metrics port");
    assert_eq!(other.status, 404, "{other:?}");
}

kproxy_testbed::every_mode!(
    proxy_health_answers_after_the_first_sync,
    health_check_port_reports_local_endpoints,
    late_change_makes_the_proxy_unhealthy,
    metrics_follow_syncs_and_traffic,
);
