//! `kproxy inspect` and `kproxy explain` against the real agent (eBPF mode) on the
//! hello-app node: after real traffic, the maps are shown beside kube-proxy's chains
//! with non-zero counters, flows are labelled, drift is found, and packets are explained
//! the same way by both views.

use std::{collections::BTreeSet, net::SocketAddrV4, process::Output};

use kproxy::{
    ebpf::DatapathMaps,
    iptables::chain_name::endpoint_chain,
    model::{Protocol, ServicePortName},
};
use kproxy_common::map_names;
use kproxy_testbed::{
    cluster::{
        CLIENT, Cluster, Mode, POD_A, POD_B, both, cluster_ip, http_backends, node_port, udp_backends,
    },
    hello::{LineClient, udp_ask, udp_socket},
    manifests::TARGET_PORT,
    topology::EXTERNAL_CLIENT_IP,
};
use serde_json::Value;

/// kube-proxy's name for hello-app's TCP port's service chain (upstream-verified in
/// `chain_name`'s tests).
const HTTP_SVC: &str = "KUBE-SVC-DQZ6JMTZL3UFWMRX";
const HTTP_EXT: &str = "KUBE-EXT-DQZ6JMTZL3UFWMRX";
const HTTP: &str = "default/hello-app-service:http";
const UDP: &str = "default/hello-app-service:udp";

fn port_name(port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName {
        namespace: "default".into(),
        name: "hello-app-service".into(),
        port: port.into(),
        protocol,
    }
}

fn backend(ip: std::net::Ipv4Addr) -> String {
    SocketAddrV4::new(ip, TARGET_PORT).to_string()
}

fn sep(port: &str, protocol: Protocol, ip: std::net::Ipv4Addr) -> String {
    endpoint_chain(&port_name(port, protocol), &backend(ip))
}

fn stdout(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

fn json(out: &Output, what: &str) -> Value {
    let text = stdout(out, what);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}):\n{text}"))
}

/// The element of the array `value[list]` whose `field` is `wanted`.
fn element<'a>(value: &'a Value, list: &str, field: &str, wanted: &str) -> &'a Value {
    value[list]
        .as_array()
        .unwrap_or_else(|| panic!("no array {list} in {value:#}"))
        .iter()
        .find(|item| item[field] == wanted)
        .unwrap_or_else(|| panic!("no {field} {wanted} in {list} of {value:#}"))
}

fn service<'a>(report: &'a Value, name: &str) -> &'a Value {
    element(report, "services", "service", name)
}

fn frontend<'a>(service: &'a Value, key: &str) -> &'a Value {
    element(service, "frontends", "frontend", key)
}

fn u64_at(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {value:#}"))
}

/// The backends of a frontend's map entry: address → (KUBE-SEP chain, packets).
fn slots(frontend: &Value) -> Vec<(String, String, u64)> {
    frontend["map"]["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("no map entry in {frontend:#}"))
        .iter()
        .map(|b| {
            (
                b["address"].as_str().expect("address").to_string(),
                b["chain"].as_str().expect("chain").to_string(),
                u64_at(b, "/counters/packets"),
            )
        })
        .collect()
}

#[test]
fn inspect_shows_backends_chains_and_counters_after_traffic() {
    let c = Cluster::start(Mode::Ebpf, &[POD_A, POD_B]);
    assert_eq!(http_backends(c.client(), cluster_ip()), both());
    assert_eq!(udp_backends(c.client(), CLIENT, cluster_ip()), both());
    assert_eq!(http_backends(&c.topo.external, node_port()), both());

    let report = json(&c.kproxy(&["inspect", "-o", "json"]), "inspect -o json");
    assert_eq!(report["schema"], 1);
    assert_eq!(report["agent"]["mode"], "ebpf");
    let http = service(&report, HTTP);
    assert_eq!(http["chains"]["cluster"], HTTP_SVC);
    assert_eq!(http["chains"]["external"], HTTP_EXT);
    assert_eq!(
        http["chains"]["local"],
        Value::Null,
        "no KUBE-SVL for cluster policies"
    );
    assert!(
        http["rules"].as_array().unwrap().iter().any(|r| r
            .as_str()
            .unwrap()
            .starts_with("nat: -A KUBE-SERVICES")
            && r.as_str().unwrap().ends_with(&format!("-j {HTTP_SVC}"))),
        "{http:#}"
    );

    let cluster = frontend(http, "10.104.81.240:80/tcp");
    assert_eq!(cluster["kind"], "cluster_ip");
    assert_eq!(cluster["iptables_target"], HTTP_SVC);
    assert_eq!(cluster["map"]["rev_nat"], "10.104.81.240:80");
    let expected: BTreeSet<(String, String)> = [POD_A, POD_B]
        .map(|ip| (backend(ip), sep("http", Protocol::Tcp, ip)))
        .into();
    let got = slots(cluster);
    assert_eq!(
        got.iter()
            .map(|(a, c, _)| (a.clone(), c.clone()))
            .collect::<BTreeSet<_>>(),
        expected,
        "both backends, each with the KUBE-SEP chain kube-proxy would use"
    );
    assert!(got.iter().all(|(_, _, packets)| *packets > 0), "{got:?}");
    assert!(u64_at(cluster, "/map/counters/packets") > 0);
    assert!(u64_at(cluster, "/map/counters/new_flows") >= 30);
    assert!(u64_at(cluster, "/map/counters/bytes") > u64_at(cluster, "/map/counters/packets"));

    let nodeport = frontend(http, "nodeport *:30811/tcp");
    assert_eq!(nodeport["kind"], "node_port");
    assert_eq!(nodeport["iptables_target"], HTTP_EXT);
    assert_eq!(nodeport["map"]["rev_nat"], "0.0.0.0:30811");
    assert!(u64_at(nodeport, "/map/counters/packets") > 0);
    assert_eq!(slots(nodeport).len(), 2);

    let udp = service(&report, UDP);
    let udp_cluster = frontend(udp, "10.104.81.240:80/udp");
    assert!(u64_at(udp_cluster, "/map/counters/new_flows") >= 30);
    // UDP entries live 60 s: every flow just made is live.
    assert!(
        u64_at(udp_cluster, "/map/conntrack_flows") >= 30,
        "{udp_cluster:#}"
    );
    assert_eq!(
        u64_at(udp, "/counters/packets"),
        u64_at(udp_cluster, "/map/counters/packets")
            + u64_at(frontend(udp, "nodeport *:30811/udp"), "/map/counters/packets")
    );

    let table = stdout(&c.kproxy(&["inspect", "--service", HTTP]), "inspect");
    for needle in [
        HTTP,
        HTTP_SVC,
        HTTP_EXT,
        "10.104.81.240:80/tcp",
        "rev-nat 10.104.81.240:80",
    ] {
        assert!(table.contains(needle), "table lacks {needle}:\n{table}");
    }
    assert!(!table.contains(UDP), "--service selects one port:\n{table}");
}

#[test]
fn inspect_conntrack_labels_flows_with_service_and_endpoint_chain() {
    let c = Cluster::start(Mode::Ebpf, &[POD_A, POD_B]);
    let mut line = LineClient::connect(c.client(), cluster_ip()).expect("TCP connection");
    let tcp_pod = line.ask().expect("answer");
    let socket = udp_socket(c.client(), kproxy_testbed::cluster::at(CLIENT, 0));
    let (udp_pod, _) = udp_ask(&socket, node_port()).expect("UDP answer");
    let udp_client = socket.local_addr().expect("local address").to_string();
    let pod_ip = |name: &str| if name == "hello-a" { POD_A } else { POD_B };

    let flows = json(
        &c.kproxy(&["inspect", "conntrack", "-o", "json"]),
        "inspect conntrack",
    );
    let flows = flows.as_array().expect("flow array");
    let tcp = flows
        .iter()
        .find(|f| f["protocol"] == "tcp" && f["state"] == "established")
        .unwrap_or_else(|| panic!("no established TCP flow in {flows:#?}"));
    assert_eq!(tcp["frontend"], "10.104.81.240:80");
    assert_eq!(
        tcp["backend"],
        backend(pod_ip(&tcp_pod)),
        "the backend that answered"
    );
    assert_eq!(tcp["service"], HTTP);
    assert_eq!(tcp["backend_chain"], sep("http", Protocol::Tcp, pod_ip(&tcp_pod)));
    assert!(tcp["client"].as_str().unwrap().starts_with("172.16.166.140:"));

    let udp = flows
        .iter()
        .find(|f| f["protocol"] == "udp" && f["client"] == udp_client.as_str())
        .unwrap_or_else(|| panic!("no UDP flow from {udp_client} in {flows:#?}"));
    assert_eq!(
        udp["frontend"],
        node_port().to_string(),
        "NodePort flows keep the node address used"
    );
    assert_eq!(udp["backend"], backend(pod_ip(&udp_pod)));
    assert_eq!(udp["service"], UDP);
    assert_eq!(udp["backend_chain"], sep("udp", Protocol::Udp, pod_ip(&udp_pod)));

    let table = stdout(&c.kproxy(&["inspect", "conntrack"]), "inspect conntrack");
    assert!(table.contains(&udp_client) && table.contains(UDP), "{table}");
    drop(line);
}

/// `inspect --verify`: exit status and the drift entries of the JSON report.
fn verify(c: &Cluster) -> (Option<i32>, Vec<(String, String, String)>) {
    let out = c.kproxy(&["inspect", "--verify", "-o", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let drift = report["drift"]
        .as_array()
        .expect("drift array")
        .iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().expect("string").to_string();
            (s("kind"), s("map"), s("message"))
        })
        .collect();
    (out.status.code(), drift)
}

#[test]
fn verify_is_clean_then_reports_a_backend_deleted_behind_the_agent() {
    let mut c = Cluster::start(Mode::Ebpf, &[POD_A, POD_B]);
    assert_eq!(verify(&c), (Some(0), vec![]), "fresh sync: no drift");
    let table = stdout(&c.kproxy(&["inspect", "--verify"]), "inspect --verify");
    assert!(table.contains("no drift"), "{table}");

    let pod_a = SocketAddrV4::new(POD_A, TARGET_PORT);
    let mut maps = DatapathMaps::open_pinned(c.pins.path()).expect("open pinned maps");
    let (id, _) = maps
        .backends()
        .expect("backends")
        .into_iter()
        .find(|(_, addr)| *addr == pod_a)
        .expect("pod A is a backend");
    maps.remove_backend(id).expect("remove backend");

    let (status, drift) = verify(&c);
    assert_eq!(status, Some(1), "drift exits 1: {drift:#?}");
    let missing: Vec<_> = drift.iter().filter(|d| d.1 == map_names::BACKENDS).collect();
    assert_eq!(missing.len(), 1, "{drift:#?}");
    assert_eq!(missing[0].0, "missing");
    assert!(missing[0].2.contains(&pod_a.to_string()));
    // Every frontend (ClusterIP and NodePort, TCP and UDP) has a slot naming it.
    let dangling: BTreeSet<&str> = drift
        .iter()
        .filter(|d| d.1 == map_names::SLOTS && d.2.contains(&format!("backend {id}")))
        .map(|d| d.2.split(' ').nth(1).expect("frontend"))
        .collect();
    assert_eq!(
        dangling,
        ["10.104.81.240:80/tcp", "10.104.81.240:80/udp", "nodeport"].into(),
        "{drift:#?}"
    );
    assert_eq!(
        drift.len(),
        5,
        "one missing backend, four dangling slots: {drift:#?}"
    );

    // The agent runs the same check after its next sync and logs what it finds.
    c.set_endpoints(&[POD_B, POD_A]);
    let log = c.agent.log();
    assert!(
        log.contains(&format!("drift: backend {pod_a} is not in the backends map")),
        "{log}"
    );
    assert!(log.contains("drift repaired"), "{log}");
    assert_eq!(
        verify(&c),
        (Some(0), vec![]),
        "the agent repairs the drift it finds"
    );
}

/// `kproxy explain -o json` for a TCP packet.
fn explain(c: &Cluster, src: &str, dst: &str) -> Value {
    json(
        &c.kproxy(&[
            "explain", "--proto", "tcp", "--src", src, "--dst", dst, "-o", "json",
        ]),
        "explain",
    )
}

fn chains(e: &Value) -> Vec<String> {
    e["iptables"]["chains"]
        .as_array()
        .expect("chains")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

fn dnat_to(e: &Value, view: &str) -> BTreeSet<String> {
    assert_eq!(e[view]["verdict"]["action"], "dnat", "{e:#}");
    e[view]["verdict"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn explain_gives_the_same_verdict_in_both_views() {
    let mut c = Cluster::start(Mode::Ebpf, &[POD_A, POD_B]);
    let two: BTreeSet<String> = [backend(POD_A), backend(POD_B)].into();
    let seps = [
        sep("http", Protocol::Tcp, POD_A),
        sep("http", Protocol::Tcp, POD_B),
    ];

    let e = explain(&c, "172.16.166.140", "10.104.81.240:80");
    assert_eq!(e["agree"], true, "{e:#}");
    assert_eq!(e["service"], HTTP);
    assert_eq!(dnat_to(&e, "iptables"), two);
    assert_eq!(dnat_to(&e, "bpf"), two);
    let path = chains(&e);
    assert_eq!(path[..3], ["PREROUTING", "KUBE-SERVICES", HTTP_SVC], "{path:?}");
    assert!(seps.iter().all(|s| path.contains(s)), "{path:?}");
    assert_eq!(e["bpf"]["frontend"], "10.104.81.240:80/tcp");
    assert_eq!(e["bpf"]["rev_nat"], "10.104.81.240:80");
    let bpf_chains: BTreeSet<&str> = e["bpf"]["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chain"].as_str().unwrap())
        .collect();
    assert_eq!(bpf_chains, seps.iter().map(String::as_str).collect());

    let external = EXTERNAL_CLIENT_IP.to_string();
    let e = explain(&c, &external, &node_port().to_string());
    assert_eq!(e["agree"], true, "{e:#}");
    assert_eq!(dnat_to(&e, "bpf"), two);
    let path = chains(&e);
    assert_eq!(
        path[..4],
        ["PREROUTING", "KUBE-SERVICES", "KUBE-NODEPORTS", HTTP_EXT],
        "{path:?}"
    );
    assert!(
        e["iptables"]["choices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["masquerade"] == true),
        "NodePort traffic is masqueraded by kube-proxy: {e:#}"
    );
    assert_eq!(e["bpf"]["frontend"], "nodeport *:30811/tcp");

    let e = explain(&c, "172.16.166.140", "10.104.81.241:80");
    assert_eq!(e["agree"], true, "{e:#}");
    assert_eq!(e["iptables"]["verdict"]["action"], "untouched");
    assert_eq!(e["bpf"]["verdict"]["action"], "untouched");
    assert!(!chains(&e).iter().any(|c| c.starts_with("KUBE-SVC-")));
    assert_eq!(e["service"], Value::Null);

    let text = stdout(
        &c.kproxy(&[
            "explain",
            "--proto",
            "tcp",
            "--src",
            "172.16.166.140:40000",
            "--dst",
            "10.104.81.240:80",
        ]),
        "explain",
    );
    for needle in [
        HTTP_SVC,
        seps[0].as_str(),
        &format!("{}[10.104.81.240:80/tcp]", map_names::SERVICES),
        "both views agree",
    ] {
        assert!(text.contains(needle), "explain lacks {needle}:\n{text}");
    }

    // No endpoints: kube-proxy REJECTs in the filter table, the datapath drops.
    c.set_endpoints(&[]);
    let e = explain(&c, "172.16.166.140", "10.104.81.240:80");
    assert_eq!(e["agree"], true, "{e:#}");
    assert_eq!(e["iptables"]["verdict"]["action"], "refused");
    assert_eq!(e["bpf"]["verdict"]["action"], "refused");
    assert!(
        !chains(&e).contains(&HTTP_SVC.to_string()),
        "no KUBE-SVC without endpoints"
    );
    assert!(
        e["iptables"]["trace"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("-j REJECT   [match]")),
        "{e:#}"
    );
    assert_eq!(e["bpf"]["frontend"], "10.104.81.240:80/tcp");
    let e = explain(&c, &external, &node_port().to_string());
    assert_eq!(e["agree"], true, "{e:#}");
    assert_eq!(e["iptables"]["verdict"]["action"], "refused");
}

#[test]
fn inspect_in_iptables_mode_shows_the_rules_without_maps() {
    let c = Cluster::start(Mode::Iptables, &[POD_A, POD_B]);
    let report = json(&c.kproxy(&["inspect", "-o", "json"]), "inspect -o json");
    assert_eq!(report["agent"]["mode"], "iptables");
    let http = service(&report, HTTP);
    assert_eq!(http["chains"]["cluster"], HTTP_SVC);
    assert_eq!(frontend(http, "10.104.81.240:80/tcp")["map"], Value::Null);
    let table = stdout(&c.kproxy(&["inspect"]), "inspect");
    assert!(
        table.contains("BPF maps: none (the agent runs in iptables mode)"),
        "{table}"
    );
    let e = explain(&c, "172.16.166.140", "10.104.81.240:80");
    assert_eq!(e["bpf"], Value::Null);
    assert_eq!(dnat_to(&e, "iptables"), [backend(POD_A), backend(POD_B)].into());
}

/// The per-frontend data of issue 11 round-trips: a LoadBalancer with
/// `loadBalancerSourceRanges` and `externalTrafficPolicy: Local` whose only endpoint is
/// on another node is written with its source ranges and the drop flag (kube-proxy DROPs
/// there), the agent calls nothing unsupported, and `inspect --verify` stays clean.
#[test]
fn verify_is_clean_with_source_ranges_and_drop_flags() {
    use kproxy_testbed::manifests::Service;
    let mut c = Cluster::start(Mode::Ebpf, &[POD_A]);
    let yaml = Service::hello_app(&[POD_A])
        .yaml()
        .replace(
            "  type: NodePort\n",
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  \
             loadBalancerSourceRanges: [192.168.77.0/24]\n",
        )
        .replace(
            "---\napiVersion: discovery",
            "status:\n  loadBalancer:\n    ingress: [{ip: 192.0.2.50}]\n---\napiVersion: discovery",
        )
        .replace("nodeName: host1", "nodeName: host2");
    let tmp = c.model.with_extension("tmp");
    std::fs::write(&tmp, yaml).expect("write model");
    std::fs::rename(&tmp, &c.model).expect("replace model");
    c.wait_sync();
    assert_eq!(
        verify(&c),
        (Some(0), vec![]),
        "no drift with source ranges and flags"
    );
    let maps = DatapathMaps::open_pinned(c.pins.path()).expect("open pinned maps");
    let frontends = maps.frontends().expect("frontends");
    let lb: Vec<_> = frontends
        .iter()
        .filter(|f| f.frontend.to_string().starts_with("192.0.2.50:80/"))
        .collect();
    assert_eq!(lb.len(), 2, "TCP and UDP on the LoadBalancer IP: {frontends:#?}");
    for f in &lb {
        let ranges: Vec<String> = f.options.source_ranges.iter().map(ToString::to_string).collect();
        // The node's IP (192.168.77.10) is inside the range, so the LoadBalancer IP itself
        // is an allowed source too (kube-proxy's firewall chain lets the node reach it).
        assert_eq!(ranges, ["192.0.2.50/32", "192.168.77.0/24"], "{f:#?}");
        assert!(f.backends.is_empty() && f.options.drop_without_backends, "{f:#?}");
    }
    let cluster = frontends
        .iter()
        .find(|f| f.frontend.to_string() == "10.104.81.240:80/tcp")
        .expect("ClusterIP frontend");
    assert_eq!(
        cluster.backends.len(),
        1,
        "the cluster policy still uses the remote pod"
    );
    let log = c.agent.log();
    assert!(
        !log.contains("SourceRanges") && !log.contains("not handled"),
        "{log}"
    );
}
