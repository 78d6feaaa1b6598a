//! The two-node cluster ([`kproxy_testbed::two_node`]): host1 and host2 on a bridged
//! LAN, external clients on it, a `kproxy run` on each node. Every scenario runs against
//! `--mode ebpf` and `--mode iptables` with the same assertions; iptables mode is
//! kube-proxy's own rules, the oracle.

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use kproxy::ebpf::DatapathMaps;
use kproxy_testbed::{
    cgroup::{TestCgroup, probe_field},
    cluster::{Mode, TRIES, at, both, http_backends, udp_backends},
    hello::{
        LineClient, http_get, http_get_hostname, http_get_hostname_and_peer, requests_during, udp_ask,
        udp_socket,
    },
    manifests::{External, Port},
    netns::{NetNs, veth_pair},
    topology::enable_forwarding,
    two_node::{EXTERNAL_CLIENTS, LB_IP, PODS, ServiceSpec, TwoNodeCluster, node_addr},
};

const HELLO_PORT: u16 = 30811;
const LOCAL_PORT: u16 = 30812;
const LOCAL_HEALTH: u16 = 30912;
const LOCAL_A_PORT: u16 = 30813;
const LOCAL_A_HEALTH: u16 = 30913;
const LB_NODE_PORT: u16 = 30814;
const EMPTY_NODE_PORT: u16 = 30815;
const EMPTY_IP: Ipv4Addr = Ipv4Addr::new(10, 104, 81, 244);
/// kube-proxy's proxy health server (`healthzBindAddress`).
const HEALTHZ_PORT: u16 = 10256;

/// The seed's hello-app-service: hello-a on host1, hello-b on host2.
fn hello() -> ServiceSpec {
    ServiceSpec::hello(
        "hello-app-service",
        Ipv4Addr::new(10, 104, 81, 240),
        HELLO_PORT,
        &["hello-a", "hello-b"],
    )
}

/// `externalTrafficPolicy: Local`, a pod on each node.
fn local() -> ServiceSpec {
    ServiceSpec::hello(
        "hello-local",
        Ipv4Addr::new(10, 104, 81, 241),
        LOCAL_PORT,
        &["hello-a", "hello-b"],
    )
    .local(LOCAL_HEALTH)
}

/// `externalTrafficPolicy: Local`, a pod on host1 only.
fn local_a() -> ServiceSpec {
    ServiceSpec::hello(
        "hello-local-a",
        Ipv4Addr::new(10, 104, 81, 242),
        LOCAL_A_PORT,
        &["hello-a"],
    )
    .local(LOCAL_A_HEALTH)
}

fn one(name: &str) -> BTreeSet<String> {
    [name.to_string()].into()
}

/// Asserts that neither TCP nor UDP from `ns` (at `local`) to `target` is answered.
fn assert_not_served(ns: &NetNs, local: Ipv4Addr, target: SocketAddr, what: &str) {
    let tcp = http_get_hostname(ns, target);
    assert!(tcp.is_err(), "{what}: TCP to {target} was served by {tcp:?}");
    let udp = udp_ask(&udp_socket(ns, at(local, 0)), target);
    assert!(udp.is_err(), "{what}: UDP to {target} was answered: {udp:?}");
}

fn pods_reach_clusterip_backends_on_both_nodes(mode: Mode) {
    let c = TwoNodeCluster::start(mode, vec![hello()]);
    let service = at(Ipv4Addr::new(10, 104, 81, 240), 80);
    for client in ["client-1", "client-2"] {
        let ip = PODS.iter().find(|p| p.0 == client).expect("client pod").2;
        assert_eq!(
            http_backends(c.pod(client), service),
            both(),
            "TCP via ClusterIP from {client}"
        );
        assert_eq!(
            udp_backends(c.pod(client), ip, service),
            both(),
            "UDP via ClusterIP from {client}"
        );
    }
}

fn external_policy_local_serves_local_pods_with_the_client_address(mode: Mode) {
    let c = TwoNodeCluster::start(mode, vec![local(), local_a()]);
    let client = EXTERNAL_CLIENTS[0];
    for (i, local_pod) in [(0, "hello-a"), (1, "hello-b")] {
        let target = node_addr(i, LOCAL_PORT);
        for _ in 0..TRIES {
            let (name, peer) = http_get_hostname_and_peer(c.external(0), target)
                .unwrap_or_else(|e| panic!("eTP=Local via {target}: {e}"));
            assert_eq!(name, local_pod, "eTP=Local via {target} must stay on the node");
            assert_eq!(
                peer.ip(),
                std::net::IpAddr::V4(client),
                "eTP=Local: the pod must see the client's own address"
            );
        }
        assert_eq!(
            udp_backends(c.external(0), client, target),
            one(local_pod),
            "UDP, eTP=Local via {target}"
        );
    }
    assert_eq!(
        http_backends(c.external(0), node_addr(0, LOCAL_A_PORT)),
        one("hello-a")
    );
    assert_not_served(
        c.external(0),
        client,
        node_addr(1, LOCAL_A_PORT),
        "eTP=Local on host2, which has no local endpoint",
    );
    // kube-proxy's short-circuit: a pod reaches an eTP=Local frontend through every
    // endpoint, so a pod on host2 is served there by host1's pod.
    let pod = PODS.iter().find(|p| p.0 == "client-2").expect("client pod").2;
    let target = node_addr(1, LOCAL_A_PORT);
    assert_eq!(
        http_backends(c.pod("client-2"), target),
        one("hello-a"),
        "TCP from a pod on host2 via {target}"
    );
    assert_eq!(
        udp_backends(c.pod("client-2"), pod, target),
        one("hello-a"),
        "UDP from a pod on host2 via {target}"
    );
    // And node-local traffic: a process on host2 itself ("route LOCAL traffic ... to
    // cluster endpoints"; the socket programs in eBPF mode).
    assert_eq!(
        host_http_backends(&c, 1, target),
        one("hello-a"),
        "TCP from a process on host2 via {target}"
    );
}

/// External clients reach both pods through either node's NodePort (the remote one
/// through SNAT), over TCP and UDP, with replies from the address they dialled.
fn nodeport_on_either_node_reaches_pods_on_both(mode: Mode) {
    let c = TwoNodeCluster::start(mode, vec![hello()]);
    for i in 0..2 {
        let node = c.node(i);
        assert_eq!(
            http_get_hostname(c.external(0), node_addr(i, 8080)).as_deref(),
            Ok(node.name),
            "the host-network server on {}",
            node.name
        );
        let target = node_addr(i, HELLO_PORT);
        assert_eq!(
            http_backends(c.external(0), target),
            both(),
            "TCP via the NodePort of {}",
            node.name
        );
        assert_eq!(
            udp_backends(c.external(0), EXTERNAL_CLIENTS[0], target),
            both(),
            "UDP via the NodePort of {}",
            node.name
        );
    }
}

/// Graceful termination (a rolling update): a long-lived TCP connection through the
/// ClusterIP to an endpoint that turns terminating keeps exchanging data, while new
/// connections go to the ready endpoint only (kube-proxy leaves terminating endpoints out
/// of new flows while a ready one exists; netfilter keeps established flows).
fn terminating_endpoint_keeps_its_connections(mode: Mode) {
    let mut c = TwoNodeCluster::start(mode, vec![hello()]);
    let service = at(Ipv4Addr::new(10, 104, 81, 240), 80);
    // A connection on hello-b, the remote pod (each try has p = 1/2; 2^-30 to miss).
    let mut conn = (0..TRIES)
        .map(|_| LineClient::connect(c.pod("client-1"), service).expect("TCP connection"))
        .find_map(|mut conn| (conn.ask().ok()? == "hello-b").then_some(conn))
        .expect("a connection to hello-b");
    c.set_terminating("hello-app-service", &["hello-b"]);
    for _ in 0..10 {
        assert_eq!(
            conn.ask().as_deref(),
            Ok("hello-b"),
            "the connection to the terminating endpoint must go on"
        );
    }
    assert_eq!(
        http_backends(c.pod("client-1"), service),
        one("hello-a"),
        "new connections go to the ready endpoint only"
    );
    assert_eq!(
        conn.ask().as_deref(),
        Ok("hello-b"),
        "and the old one still works"
    );
}

/// A rolling update's churn: the endpoint set is rewritten five times a second for 20 s
/// (both pods, hello-a only, both, hello-b only) while a pod opens connections through
/// the ClusterIP and an external client through the other node's NodePort (SNAT to the
/// pod on host1), about 50 a second each. No connection fails: a flow whose endpoint
/// leaves keeps it until it ends, as netfilter's conntrack does under kube-proxy.
fn endpoint_churn_fails_no_connection(mode: Mode) {
    const CHURN: Duration = Duration::from_secs(20);
    const SERVICE: &str = "hello-app-service";
    let mut c = TwoNodeCluster::start(mode, vec![hello()]);
    let sets: [&[&'static str]; 4] = [
        &["hello-a", "hello-b"],
        &["hello-a"],
        &["hello-a", "hello-b"],
        &["hello-b"],
    ];
    let start = Instant::now();
    let (failures, requests) = thread::scope(|scope| {
        let cluster = &c;
        scope.spawn(move || {
            let mut n = 0;
            while start.elapsed() < CHURN {
                cluster.write_endpoints(SERVICE, sets[n % sets.len()]);
                n += 1;
                thread::sleep(Duration::from_millis(200));
            }
        });
        let clients = [
            (cluster.pod("client-1"), at(Ipv4Addr::new(10, 104, 81, 240), 80)),
            (cluster.external(0), node_addr(1, HELLO_PORT)),
        ];
        requests_during(&clients, start, CHURN)
    });
    // Let the syncs of the last churn writes finish (the agents poll the file every
    // 100 ms), so the settled state's sync is the one `set_endpoints` waits for.
    thread::sleep(Duration::from_secs(1));
    c.set_endpoints(SERVICE, &["hello-a", "hello-b"]);
    eprintln!("{mode:?}: {requests} requests during {CHURN:?} of endpoint churn");
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(requests > 100, "only {requests} requests in {CHURN:?}");
    assert_eq!(
        http_backends(c.pod("client-1"), at(Ipv4Addr::new(10, 104, 81, 240), 80)),
        both(),
        "both endpoints serve once the churn settles"
    );
}

/// The health-check node port's answer on node `i`: status and the JSON body.
fn health(c: &TwoNodeCluster, i: usize, port: u16, path: &str) -> (u16, serde_json::Value) {
    let (status, body) =
        http_get(c.external(0), node_addr(i, port), path).unwrap_or_else(|e| panic!("health check: {e}"));
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    (status, json)
}

/// The agent's health servers: kube-proxy's JSON on healthCheckNodePort, 200 where
/// the node has a local endpoint and 503 where it has none; `/healthz` and `/livez`.
fn health_check_node_ports_answer_per_node(mode: Mode) {
    let mut c = TwoNodeCluster::start(mode, vec![local_a()]);
    let expect = |local: u64| {
        serde_json::json!({
            "service": {"namespace": "default", "name": "hello-local-a"},
            "localEndpoints": local,
            "serviceProxyHealthy": true,
        })
    };
    assert_eq!(health(&c, 0, LOCAL_A_HEALTH, "/"), (200, expect(1)), "host1");
    assert_eq!(health(&c, 1, LOCAL_A_HEALTH, "/"), (503, expect(0)), "host2");
    c.set_endpoints("hello-local-a", &["hello-a", "hello-b"]);
    assert_eq!(
        health(&c, 1, LOCAL_A_HEALTH, "/"),
        (200, expect(1)),
        "host2 with a local endpoint"
    );
    for i in 0..2 {
        for path in ["/healthz", "/livez"] {
            let (status, _) = http_get(c.external(0), node_addr(i, HEALTHZ_PORT), path)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(status, 200, "{path} on node {i}");
        }
    }
}

/// A LoadBalancer IP open to the first external client only.
fn load_balancer() -> ServiceSpec {
    ServiceSpec::hello(
        "hello-lb",
        Ipv4Addr::new(10, 104, 81, 243),
        LB_NODE_PORT,
        &["hello-a", "hello-b"],
    )
    .load_balancer(LB_IP, &["192.168.77.100/32"])
}

/// A LoadBalancer IP (routed by the external clients via host1) with
/// `loadBalancerSourceRanges`: the client inside them is served by both pods (the remote
/// one through SNAT), the other client is not.
fn load_balancer_source_ranges_admit_only_their_clients(mode: Mode) {
    let c = TwoNodeCluster::start(mode, vec![load_balancer()]);
    let target = at(LB_IP, 80);
    assert_eq!(
        http_backends(c.external(0), target),
        both(),
        "TCP from the allowed client"
    );
    assert_eq!(
        udp_backends(c.external(0), EXTERNAL_CLIENTS[0], target),
        both(),
        "UDP from the allowed client"
    );
    assert_not_served(
        c.external(1),
        EXTERNAL_CLIENTS[1],
        target,
        "a client outside loadBalancerSourceRanges",
    );
}

/// A service without endpoints is refused at once (ICMP port unreachable, kube-proxy's
/// REJECT): TCP connect and UDP from a pod fail with "connection refused" in under a
/// second, instead of timing out.
fn service_without_endpoints_refuses_at_once(mode: Mode) {
    let c = TwoNodeCluster::start(
        mode,
        vec![ServiceSpec::hello("no-endpoints", EMPTY_IP, EMPTY_NODE_PORT, &[])],
    );
    let target = at(EMPTY_IP, 80);
    let pod = c.pod("client-1");
    refused_at_once(&format!("TCP connect to {target}"), || {
        pod.run(|| TcpStream::connect_timeout(&target, Duration::from_secs(1)))
    });
    refused_at_once(&format!("UDP to {target}"), || {
        pod.run(|| -> std::io::Result<usize> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(1)))?;
            socket.connect(target)?;
            socket.send(b"who?")?;
            socket.recv(&mut [0; 64])
        })
    });
}

/// Asserts that `attempt` fails with "connection refused" in under a second.
fn refused_at_once<T>(what: &str, attempt: impl FnOnce() -> std::io::Result<T>) {
    let start = Instant::now();
    let result = attempt().map(|_| ()).map_err(|e| e.kind());
    let took = start.elapsed();
    assert_eq!(result, Err(ErrorKind::ConnectionRefused), "{what}");
    assert!(took < Duration::from_secs(1), "{what}: refused after {took:?}");
}

/// Connections per external client in the SNAT scenario, and workers per client. All go
/// to one backend, so each takes one of the 4536 default SNAT ports for the 120 s a
/// closed flow keeps its tuple (the backend may hold it in TIME_WAIT): 2 x 1000 stays
/// well inside the range, where 32 random tries find a free port (near exhaustion a SYN
/// is dropped and retransmitted; a full range is the fixtures' case).
const SNAT_CONNECTIONS: usize = 1000;
const SNAT_WORKERS: usize = 8;

/// SNAT ports never collide: 2 external clients x 1000 connections through host1's
/// NodePort to the remote pod all succeed. Bounded: a worker stops at its first failure
/// or after 40 s; the duration is printed.
fn snat_ports_never_collide(mode: Mode) {
    let mut c = TwoNodeCluster::start(mode, vec![hello()]);
    c.set_endpoints("hello-app-service", &["hello-b"]);
    let target = node_addr(0, HELLO_PORT);
    let deadline = Duration::from_secs(40);
    let start = Instant::now();
    let failures: Vec<String> = thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .flat_map(|client| (0..SNAT_WORKERS).map(move |w| (client, w)))
            .map(|(client, w)| {
                let ns = c.external(client);
                scope.spawn(move || {
                    for n in 0..SNAT_CONNECTIONS / SNAT_WORKERS {
                        if start.elapsed() > deadline {
                            return Some(format!("client {client} worker {w}: past {deadline:?} at {n}"));
                        }
                        match http_get_hostname(ns, target) {
                            Ok(name) if name == "hello-b" => {}
                            other => {
                                return Some(format!(
                                    "client {client} worker {w}, connection {n}: {other:?}"
                                ));
                            }
                        }
                    }
                    None
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| w.join().expect("worker"))
            .collect()
    });
    let took = start.elapsed();
    eprintln!(
        "{mode:?}: 2 clients x {SNAT_CONNECTIONS} connections via {target} to the remote pod in {took:?}"
    );
    assert!(failures.is_empty(), "after {took:?}: {failures:#?}");
}

const HOST1_NET_IP: Ipv4Addr = Ipv4Addr::new(10, 104, 81, 245);
const HOST2_NET_IP: Ipv4Addr = Ipv4Addr::new(10, 104, 81, 246);
const HOST1_NET_PORT: u16 = 30816;
const HOST2_NET_PORT: u16 = 30817;

/// Services whose only endpoint is a node's host-network server (the API server's
/// case): `host1-net` on host1's, `host2-net` on host2's.
fn host_network() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec::hello("host1-net", HOST1_NET_IP, HOST1_NET_PORT, &["host1"]),
        ServiceSpec::hello("host2-net", HOST2_NET_IP, HOST2_NET_PORT, &["host2"]),
    ]
}

/// From client-1 on host1, the ClusterIP of `service` (whose endpoint is `node`'s
/// host-network server) answers over TCP and UDP, with replies from the ClusterIP.
fn assert_host_network_clusterip(c: &TwoNodeCluster, service: Ipv4Addr, node: &str) {
    let client = PODS.iter().find(|p| p.0 == "client-1").expect("client pod").2;
    let service = at(service, 80);
    assert_eq!(
        http_backends(c.pod("client-1"), service),
        one(node),
        "TCP via ClusterIP {service} to {node}'s host network"
    );
    assert_eq!(
        udp_backends(c.pod("client-1"), client, service),
        one(node),
        "UDP via ClusterIP {service} to {node}'s host network"
    );
}

/// Checksum offload off on host1's side of `iface`: what leaves through it gets its
/// checksum completed in software after TC egress, and the receiver verifies it. (With
/// offload on, a CHECKSUM_PARTIAL packet crosses the veth unverified, so a wrong
/// rewrite of a locally generated packet's checksum would go unnoticed.)
fn complete_checksums_on(c: &TwoNodeCluster, iface: &str) {
    c.node(0).ns.ethtool(&["-K", iface, "tx", "off"]);
}

/// A pod reaches a ClusterIP whose endpoint is its own node's host-network server: the
/// reply is generated on the node and leaves through the pod's veth.
fn pod_reaches_its_own_nodes_host_network_through_clusterip(mode: Mode) {
    let c = TwoNodeCluster::start(mode, host_network());
    complete_checksums_on(&c, &c.bed.pod("client-1").host_iface);
    assert_host_network_clusterip(&c, HOST1_NET_IP, "host1");
}

/// A pod reaches a ClusterIP whose endpoint is the other node's host-network server: the
/// request leaves through the CNI's MASQUERADE, the reply is de-masqueraded by netfilter.
fn pod_reaches_the_other_nodes_host_network_through_clusterip(mode: Mode) {
    let c = TwoNodeCluster::start(mode, host_network());
    complete_checksums_on(&c, &c.bed.pod("client-1").host_iface);
    assert_host_network_clusterip(&c, HOST2_NET_IP, "host2");
}

/// An external client reaches host1's NodePort of a service whose endpoint is host1's
/// host-network server: the reply is generated on host1 and leaves through its LAN link.
fn nodeport_to_a_local_host_network_endpoint_answers(mode: Mode) {
    let c = TwoNodeCluster::start(mode, host_network());
    complete_checksums_on(&c, &c.node(0).lan_iface);
    let target = node_addr(0, HOST1_NET_PORT);
    assert_eq!(
        http_backends(c.external(0), target),
        one("host1"),
        "TCP via {target}"
    );
    assert_eq!(
        udp_backends(c.external(0), EXTERNAL_CLIENTS[0], target),
        one("host1"),
        "UDP via {target}"
    );
}

/// The pods (or nodes) that answered `TRIES` HTTP GETs to `target` from a host process
/// of node `i` in its agent's `--cgroup`; every peer getpeername showed must be `target`.
fn host_http_backends(c: &TwoNodeCluster, i: usize, target: SocketAddr) -> BTreeSet<String> {
    let out = c
        .cgroup(i)
        .probe(
            &c.node(i).ns,
            &["tcp-get", &target.to_string(), &TRIES.to_string()],
        )
        .unwrap_or_else(|e| panic!("TCP to {target} from host{}: {e}", i + 1));
    for peer in probe_field(&out, "peer") {
        assert_eq!(peer, target.to_string(), "getpeername on host{}", i + 1);
    }
    probe_field(&out, "name").into_iter().collect()
}

/// The socket-LB event counters of node `i`'s agent: (translated, refused, reversed).
fn sock_events(c: &TwoNodeCluster, i: usize) -> (u64, u64, u64) {
    let maps = DatapathMaps::open_pinned(c.pin_dir(i)).expect("open the agent's maps");
    let events = maps.events().expect("events");
    let get = |name: &str| events.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
    (get("sock_xlate"), get("sock_refused"), get("sock_revnat"))
}

/// Host processes (kubelet probes, curl on the node, hostNetwork pods): a process on
/// host1 in the agent's `--cgroup` reaches the ClusterIP over TCP and UDP (both pods,
/// UDP replies from the ClusterIP), the NodePort on host1's address and on 127.0.0.1
/// (`localhostNodePorts`, checked last), a ClusterIP served by host1's own host-network server, and
/// is refused at once by a service without endpoints.
fn host_processes_reach_services(mode: Mode) {
    let c = TwoNodeCluster::start(
        mode,
        vec![
            hello(),
            host_network()[0].clone(),
            ServiceSpec::hello("no-endpoints", EMPTY_IP, EMPTY_NODE_PORT, &[]),
        ],
    );
    let host1 = &c.node(0).ns;
    let service = at(Ipv4Addr::new(10, 104, 81, 240), 80);
    assert_eq!(
        host_http_backends(&c, 0, service),
        both(),
        "TCP via the ClusterIP"
    );
    let out = c
        .cgroup(0)
        .probe(host1, &["udp-ask", &service.to_string(), &TRIES.to_string()])
        .unwrap_or_else(|e| panic!("UDP to {service} from host1: {e}"));
    assert_eq!(
        probe_field(&out, "name").into_iter().collect::<BTreeSet<_>>(),
        both(),
        "UDP via the ClusterIP"
    );
    for from in probe_field(&out, "from") {
        assert_eq!(
            from,
            service.to_string(),
            "UDP replies must come from the ClusterIP"
        );
    }
    assert_eq!(
        host_http_backends(&c, 0, node_addr(0, HELLO_PORT)),
        both(),
        "TCP via host1's own NodePort"
    );
    assert_eq!(
        host_http_backends(&c, 0, at(HOST1_NET_IP, 80)),
        one("host1"),
        "a ClusterIP served by host1's host-network server"
    );
    let target = at(EMPTY_IP, 80);
    let out = c
        .cgroup(0)
        .probe(host1, &["connect", &target.to_string()])
        .expect("probe");
    assert_eq!(
        probe_field(&out, "error"),
        ["ConnectionRefused"],
        "TCP connect to {target} from host1: {out}"
    );
    let ms: u64 = probe_field(&out, "ms")[0].parse().expect("ms");
    assert!(ms < 1000, "TCP connect to {target}: refused after {ms} ms");

    if mode == Mode::Ebpf {
        // eBPF only: the socket programs did it, and they leave alone a process in
        // another cgroup and one in a pod's namespace (inside the cgroup).
        let (xlate, refused, revnat) = sock_events(&c, 0);
        assert!(xlate >= 4 * TRIES as u64, "sock_xlate {xlate}");
        assert_eq!(refused, 1, "sock_refused");
        assert!(revnat >= 2 * TRIES as u64, "sock_revnat {revnat}");
        let before = sock_events(&c, 0);
        let other = TestCgroup::new("oth");
        // Whatever becomes of it elsewhere (the node routes it nowhere): the socket
        // programs must not touch it.
        other
            .probe(host1, &["connect", &service.to_string()])
            .expect("probe in another cgroup");
        assert_eq!(
            sock_events(&c, 0),
            before,
            "a process of another cgroup was translated"
        );
        let out = c
            .cgroup(0)
            .probe(c.pod("client-1"), &["tcp-get", &service.to_string(), "4"])
            .unwrap_or_else(|e| panic!("TCP from a pod's namespace: {e}"));
        assert_eq!(probe_field(&out, "name").len(), 4, "{out}");
        assert_eq!(
            sock_events(&c, 0),
            before,
            "a socket of a pod's namespace was translated"
        );
    }
}

/// A UDP ClusterIP whose endpoints have no socket on its target port.
const SILENT_IP: Ipv4Addr = Ipv4Addr::new(10, 104, 81, 247);
const SILENT_NODE_PORT: u16 = 30818;
/// A port nothing listens on in the pods.
const SILENT_TARGET_PORT: u16 = 5399;

/// `udp-silent`: UDP 53 → [`SILENT_TARGET_PORT`] on `endpoint`.
fn silent_udp(endpoint: &'static str) -> ServiceSpec {
    ServiceSpec {
        name: "udp-silent",
        cluster_ip: SILENT_IP,
        ports: vec![Port::udp("dns", 53, SILENT_TARGET_PORT, SILENT_NODE_PORT)],
        endpoints: vec![endpoint],
        terminating: Vec::new(),
        external: External::default(),
    }
}

/// A UDP client to a service whose endpoint stops listening gets "connection refused"
/// through the ClusterIP: the endpoint's port unreachable (about client → endpoint) comes
/// back as one about client → ClusterIP, which the client's connected socket reports.
/// Endpoint on the other node, then on the client's own node; bounded by a 3 s read
/// timeout each.
fn udp_to_an_endpoint_without_listener_is_refused(mode: Mode) {
    let mut c = TwoNodeCluster::start(mode, vec![silent_udp("hello-b")]);
    let target = at(SILENT_IP, 53);
    for endpoint in ["hello-b", "hello-a"] {
        c.set_endpoints("udp-silent", &[endpoint]);
        let start = Instant::now();
        let result = c.pod("client-1").run(|| -> std::io::Result<usize> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(3)))?;
            socket.connect(target)?;
            socket.send(b"anyone there?")?;
            socket.recv(&mut [0; 64])
        });
        assert_eq!(
            result.map_err(|e| e.kind()),
            Err(ErrorKind::ConnectionRefused),
            "UDP to {target} served by {endpoint} without a listener, after {:?}",
            start.elapsed()
        );
    }
    if mode == Mode::Ebpf {
        assert!(
            icmp_errors_translated(&c, 0) >= 2,
            "host1's datapath translated both errors"
        );
    }
}

/// The `icmp_error_nat` counter of node `i`'s agent.
fn icmp_errors_translated(c: &TwoNodeCluster, i: usize) -> u64 {
    let maps = DatapathMaps::open_pinned(c.pin_dir(i)).expect("open the agent's maps");
    let events = maps.events().expect("events");
    events
        .iter()
        .find(|(n, _)| *n == "icmp_error_nat")
        .map_or(0, |(_, v)| *v)
}

const BULK_IP: Ipv4Addr = Ipv4Addr::new(10, 104, 81, 248);
const BULK_NODE_PORT: u16 = 30819;
const BULK_TARGET_PORT: u16 = 9090;
/// What the bulk server sends every connection.
const BULK_BYTES: usize = 1 << 20;
/// The router between the narrow link's client and the LAN.
const ROUTER_LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 120);
const NARROW_NET: &str = "10.77.1.0/24";
const NARROW_ROUTER: &str = "10.77.1.1";
const NARROW_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
/// The MTU of the router's link toward the client.
const NARROW_MTU: &str = "1280";

/// `bulk`: TCP 80 → [`BULK_TARGET_PORT`] on hello-b (host2), NodePort [`BULK_NODE_PORT`].
fn bulk() -> ServiceSpec {
    ServiceSpec {
        name: "bulk",
        cluster_ip: BULK_IP,
        ports: vec![Port::tcp("bulk", 80, BULK_TARGET_PORT, BULK_NODE_PORT)],
        endpoints: vec!["hello-b"],
        terminating: Vec::new(),
        external: External::default(),
    }
}

/// A TCP server in `ns` on `addr` that sends [`BULK_BYTES`] to every connection, then
/// closes it; stopped when dropped.
struct BulkServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl BulkServer {
    fn start(ns: &NetNs, addr: SocketAddr) -> Self {
        let listener = ns.run(|| TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")));
        listener.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_write_timeout(Some(Duration::from_secs(30)));
                        let _ = conn.write_all(&vec![0x42; BULK_BYTES]);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        BulkServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A path with a small MTU between nodes still completes a large NodePort transfer (PMTU
/// discovery through the translation): a client with MTU 1500 (MSS 1460) behind a
/// router whose link toward it has MTU 1280 downloads 1 MiB from host1's NodePort,
/// served by hello-b on host2 (SNATed). The router's frag-needed goes to host1's address
/// about host1:NodePort → client; only if it reaches hello-b as one about hello-b →
/// host1:SNAT port does hello-b lower its path MTU; otherwise its full-size segments are
/// dropped at the router forever. Bounded: 5 s per read, 30 s in all.
fn large_nodeport_transfer_through_a_small_mtu_hop(mode: Mode) {
    let c = TwoNodeCluster::start(mode, vec![bulk()]);
    let _server = BulkServer::start(c.pod("hello-b"), at(PODS[1].2, BULK_TARGET_PORT));
    let router = NetNs::new("rtr");
    router.disable_ipv6();
    enable_forwarding(&router);
    c.bed.join_lan(&router, "lan0", ROUTER_LAN_IP);
    let client = NetNs::new("pmc");
    client.disable_ipv6();
    veth_pair(
        &router,
        "narrow",
        &format!("{NARROW_ROUTER}/24"),
        &client,
        "eth0",
        &format!("{NARROW_CLIENT}/24"),
    );
    router.ip(&["link", "set", "narrow", "mtu", NARROW_MTU]);
    client.ip(&["route", "add", "default", "via", NARROW_ROUTER]);
    c.node(0)
        .ns
        .ip(&["route", "add", NARROW_NET, "via", &ROUTER_LAN_IP.to_string()]);
    let target = node_addr(0, BULK_NODE_PORT);
    let start = Instant::now();
    let received = client.run(|| -> Result<usize, String> {
        let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .map_err(|e| format!("connect: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        while start.elapsed() < Duration::from_secs(30) {
            match conn.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n,
                Err(e) => return Err(format!("after {total} bytes: {e}")),
            }
        }
        Err(format!("only {total} bytes in 30 s"))
    });
    assert_eq!(
        received,
        Ok(BULK_BYTES),
        "1 MiB from {target} through a {NARROW_MTU}-byte hop, after {:?}",
        start.elapsed()
    );
    if mode == Mode::Ebpf {
        assert!(
            icmp_errors_translated(&c, 0) >= 1,
            "host1's datapath translated the frag-needed"
        );
    }
}

kproxy_testbed::every_mode!(
    terminating_endpoint_keeps_its_connections,
    endpoint_churn_fails_no_connection,
    pod_reaches_its_own_nodes_host_network_through_clusterip,
    pod_reaches_the_other_nodes_host_network_through_clusterip,
    nodeport_to_a_local_host_network_endpoint_answers,
    host_processes_reach_services,
    pods_reach_clusterip_backends_on_both_nodes,
    external_policy_local_serves_local_pods_with_the_client_address,
    health_check_node_ports_answer_per_node,
    nodeport_on_either_node_reaches_pods_on_both,
    snat_ports_never_collide,
    load_balancer_source_ranges_admit_only_their_clients,
    service_without_endpoints_refuses_at_once,
    udp_to_an_endpoint_without_listener_is_refused,
    large_nodeport_transfer_through_a_small_mtu_hop,
);

/// The hello-app scenarios again with both agents fed by one in-process API server
/// (cluster mode) instead of a model file.
macro_rules! fed_by_api_server {
    ($($scenario:ident),* $(,)?) => {
        mod api_ebpf {
            $(#[test] fn $scenario() {
                kproxy_testbed::two_node::fed_by_api_server(|| super::$scenario(super::Mode::Ebpf))
            })*
        }
        mod api_iptables {
            $(#[test] fn $scenario() {
                kproxy_testbed::two_node::fed_by_api_server(|| super::$scenario(super::Mode::Iptables))
            })*
        }
    };
}

fed_by_api_server!(
    pods_reach_clusterip_backends_on_both_nodes,
    nodeport_on_either_node_reaches_pods_on_both,
    terminating_endpoint_keeps_its_connections,
    external_policy_local_serves_local_pods_with_the_client_address,
    service_without_endpoints_refuses_at_once,
);
