//! End-to-end: the real `kproxy run` on a node namespace routing between pod
//! namespaces and an external client, with real TCP and UDP. Every scenario runs
//! against both datapaths (`--mode ebpf` and `--mode iptables`), and eBPF once more with
//! XDP on the external link (`--xdp-iface`), with the same assertions: the views of one
//! model must behave the same. XDP's own scenario checks that it did the work.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use aya::programs::{ProgramInfo, links::PinnedLink, loaded_programs};
use kproxy::ebpf::{
    DatapathMaps,
    attach::{Hook, Iface, LinkPins},
};
use kproxy_testbed::{
    agent::run_kproxy,
    cluster::{
        CLIENT, Cluster, Mode, POD_A, POD_B, SYNC_TIMEOUT, TRIES, at, both, cluster_ip, http_backends,
        node_port, udp_backends,
    },
    forwarding::event,
    hello::{
        HelloServer, LineClient, http_get_hostname, requests_during, tcp_connect_failure, udp_ask, udp_echo,
        udp_exchange_failure, udp_socket,
    },
    manifests::{TARGET_PORT, write_model},
    topology::EXTERNAL_CLIENT_IP,
};

fn clusterip_and_nodeport_reach_both_backends(mode: Mode) {
    let c = Cluster::start(mode, &[POD_A, POD_B]);
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        both(),
        "TCP via ClusterIP from a pod"
    );
    assert_eq!(
        udp_backends(c.client(), CLIENT, cluster_ip()),
        both(),
        "UDP via ClusterIP from a pod"
    );
    assert_eq!(
        http_backends(&c.topo.external, node_port()),
        both(),
        "TCP via NodePort from outside"
    );
    assert_eq!(
        udp_backends(&c.topo.external, EXTERNAL_CLIENT_IP, node_port()),
        both(),
        "UDP via NodePort"
    );
    if mode != Mode::Iptables {
        // externalTrafficPolicy Cluster: kube-proxy masquerades NodePort traffic, and so
        // does the datapath (to the node's address and a port it allocates); pod traffic
        // to the ClusterIP is not (no clusterCIDR configured).
        let maps = DatapathMaps::open_pinned(c.pins.path()).expect("open the agent's maps");
        assert!(event(&maps, "snat") > 0, "NodePort flows were SNATed");
        assert_eq!(event(&maps, "snat_port_exhausted"), 0);
    }
}

fn flows_stay_on_their_backend(mode: Mode) {
    let c = Cluster::start(mode, &[POD_A, POD_B]);
    for target in [cluster_ip(), node_port()] {
        let ns = if target == cluster_ip() {
            c.client()
        } else {
            &c.topo.external
        };
        let mut conn = LineClient::connect(ns, target).expect("long TCP connection");
        let first = conn.ask().expect("first answer");
        for _ in 0..100 {
            assert_eq!(
                conn.ask().as_deref(),
                Ok(first.as_str()),
                "TCP flow to {target} changed backend"
            );
        }
        let local = if target == cluster_ip() {
            CLIENT
        } else {
            EXTERNAL_CLIENT_IP
        };
        let socket = udp_socket(ns, at(local, 0));
        let (first, _) = udp_ask(&socket, target).expect("first UDP answer");
        for _ in 0..100 {
            assert_eq!(
                udp_ask(&socket, target),
                Ok((first.clone(), target)),
                "UDP flow to {target} moved"
            );
        }
    }
}

/// When an endpoint leaves its service (a rolling update), a TCP connection to it keeps
/// going (netfilter's conntrack keeps it; another backend could only reset it), and a
/// UDP flow (one client socket) moves to a current endpoint at its next datagram
/// (kube-proxy deletes the stale conntrack entries after the sync).
fn flows_when_their_endpoint_leaves(mode: Mode) {
    let mut c = Cluster::start(mode, &[POD_A, POD_B]);
    let socket = udp_socket(c.client(), at(CLIENT, 0));
    let (leaving, _) = udp_ask(&socket, cluster_ip()).expect("first UDP answer");
    let (staying_ip, staying) = if leaving == "hello-a" {
        (POD_B, "hello-b")
    } else {
        (POD_A, "hello-a")
    };
    // A TCP connection on the leaving endpoint too (each has p = 1/2; 2^-30 to miss).
    let mut conn = (0..TRIES)
        .map(|_| LineClient::connect(c.client(), cluster_ip()).expect("TCP connection"))
        .find_map(|mut conn| (conn.ask().ok()? == leaving).then_some(conn))
        .expect("a TCP connection to the endpoint that will leave");
    c.set_endpoints(&[staying_ip]);
    for _ in 0..10 {
        assert_eq!(
            conn.ask().as_deref(),
            Ok(leaving.as_str()),
            "the TCP connection must stay on its endpoint"
        );
        assert_eq!(
            udp_ask(&socket, cluster_ip()),
            Ok((staying.to_string(), cluster_ip())),
            "the UDP flow must move to the remaining endpoint"
        );
    }
}

/// Endpoint churn under load (a rolling update, sped up): the endpoint set is rewritten
/// five times a second for 20 s (both pods, hello-a only, both, hello-b only, ...) while
/// a pod and an external client open new connections through the ClusterIP and the
/// NodePort; none fails, as none does under kube-proxy. Bounded: each client stops at
/// its first failure, after 20 s, or after 2500 requests.
fn endpoint_churn_fails_no_connection(mode: Mode) {
    const CHURN: Duration = Duration::from_secs(20);
    let c = Cluster::start(mode, &[POD_A, POD_B]);
    let start = std::time::Instant::now();
    let sets: [&[Ipv4Addr]; 4] = [&[POD_A, POD_B], &[POD_A], &[POD_A, POD_B], &[POD_B]];
    let (failures, requests) = std::thread::scope(|scope| {
        let model = &c.model;
        scope.spawn(move || {
            let mut n = 0;
            while start.elapsed() < CHURN {
                write_model(model, sets[n % sets.len()]);
                n += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            write_model(model, &[POD_A, POD_B]);
        });
        requests_during(
            &[(c.client(), cluster_ip()), (&c.topo.external, node_port())],
            start,
            CHURN,
        )
    });
    eprintln!("{mode:?}: {requests} requests during {CHURN:?} of endpoint churn");
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(requests > 100, "only {requests} requests in {CHURN:?}");
}

/// kube-proxy's conntrack setup: the node's conntrack timeouts are the configuration's
/// defaults (established TCP 24 h, CLOSE_WAIT 1 h) in every mode.
fn conntrack_timeouts_as_kube_proxy_sets_them(mode: Mode) {
    let c = Cluster::start(mode, &[POD_A]);
    let read = |name: &str| {
        let path = format!("/proc/sys/net/netfilter/{name}");
        c.topo
            .node
            .run(|| std::fs::read_to_string(&path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(read("nf_conntrack_tcp_timeout_established"), "86400");
    assert_eq!(read("nf_conntrack_tcp_timeout_close_wait"), "3600");
}

fn endpoints_follow_the_model_file(mode: Mode) {
    let mut c = Cluster::start(mode, &[POD_A, POD_B]);
    c.set_endpoints(&[POD_A]);
    let only_a: BTreeSet<String> = ["hello-a".to_string()].into();
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        only_a,
        "removed endpoint still used"
    );
    assert_eq!(udp_backends(c.client(), CLIENT, cluster_ip()), only_a);
    c.set_endpoints(&[POD_A, POD_B]);
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        both(),
        "added endpoint not used"
    );
}

fn broken_model_keeps_last_good_state(mode: Mode) {
    let mut c = Cluster::start(mode, &[POD_A, POD_B]);
    std::fs::write(
        &c.model,
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken\n",
    )
    .expect("write");
    c.agent
        .wait_for_log(&c.model.display().to_string(), 1, SYNC_TIMEOUT);
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        both(),
        "a broken file must not tear down the datapath"
    );
    c.set_endpoints(&[POD_B]);
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        ["hello-b".to_string()].into()
    );
}

/// A backend on another node (it stands in the external namespace, at an address of the
/// cluster CIDR the node routes to over the LAN, as to a remote pod /24): without SNAT
/// it would answer the external client directly and the flow would break; with it, the
/// replies come back to the node and leave from the NodePort. The node filters reverse
/// paths loosely (`rp_filter=2`, as systemd sets it).
fn nodeport_reaches_a_remote_backend_through_snat(mode: Mode) {
    const REMOTE: Ipv4Addr = Ipv4Addr::new(172, 16, 200, 5);
    let c = Cluster::start(mode, &[REMOTE]);
    let ext = &c.topo.external;
    ext.ip(&["addr", "add", &format!("{REMOTE}/32"), "dev", "lo"]);
    let gateway = EXTERNAL_CLIENT_IP.to_string();
    c.topo
        .node
        .ip(&["route", "add", &format!("{REMOTE}/32"), "via", &gateway]);
    c.topo.node.run(|| {
        for conf in ["all", "default", c.topo.node_external_iface.as_str()] {
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{conf}/rp_filter"), "2").expect("rp_filter");
        }
    });
    let _remote = HelloServer::start(ext, at(REMOTE, TARGET_PORT), "remote");
    let remote: BTreeSet<String> = ["remote".to_string()].into();
    assert_eq!(http_backends(ext, node_port()), remote, "TCP via NodePort");
    assert_eq!(
        udp_backends(ext, EXTERNAL_CLIENT_IP, node_port()),
        remote,
        "UDP via NodePort"
    );
    if mode != Mode::Iptables {
        let maps = DatapathMaps::open_pinned(c.pins.path()).expect("open the agent's maps");
        assert!(event(&maps, "snat") >= 2 * TRIES as u64, "every flow SNATed");
    }
}

fn hairpin_pod_reaches_itself_through_its_service(mode: Mode) {
    let c = Cluster::start(mode, &[POD_A]);
    let pod_a = &c.topo.pod("hello-a").ns;
    for _ in 0..5 {
        assert_eq!(http_get_hostname(pod_a, cluster_ip()).as_deref(), Ok("hello-a"));
    }
    let socket = udp_socket(pod_a, at(POD_A, 0));
    assert_eq!(
        udp_ask(&socket, cluster_ip()),
        Ok(("hello-a".to_string(), cluster_ip()))
    );
}

fn datapath_outlives_agent_until_cleanup(mode: Mode) {
    let mut c = Cluster::start(mode, &[POD_A, POD_B]);
    assert!(c.agent.stop(), "agent must exit cleanly on SIGTERM");
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        both(),
        "datapath must keep serving"
    );
    assert_eq!(http_backends(&c.topo.external, node_port()), both());
    let args = c.cleanup_args();
    let out = run_kproxy(&c.topo.node, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "kproxy cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        http_get_hostname(c.client(), cluster_ip()).is_err(),
        "ClusterIP still answers after cleanup"
    );
    assert!(
        http_get_hostname(&c.topo.external, node_port()).is_err(),
        "NodePort still answers after cleanup"
    );
}

fn new_pod_interfaces_are_attached(mode: Mode) {
    // A pod created after the agent started: its veth must be picked up by the scan.
    const LATE: Ipv4Addr = Ipv4Addr::new(172, 16, 166, 150);
    let mut c = Cluster::start(mode, &[POD_A]);
    let late_ns = &c.topo.add_pod("late", LATE).ns;
    let answer = (0..50)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            http_get_hostname(late_ns, cluster_ip()).ok()
        })
        .expect("a pod created after the agent never reached the ClusterIP");
    assert_eq!(answer, "hello-a");
    c.set_endpoints(&[POD_A, POD_B]);
    assert_eq!(http_backends(&c.topo.pod("late").ns, cluster_ip()), both());
}

fn restarted_agent_keeps_established_flows(mode: Mode) {
    let mut c = Cluster::start(mode, &[POD_A, POD_B]);
    let mut conn = LineClient::connect(c.client(), cluster_ip()).expect("long TCP connection");
    let first = conn.ask().expect("first answer");
    assert!(c.agent.stop(), "agent must exit cleanly");
    assert_eq!(
        conn.ask().as_deref(),
        Ok(first.as_str()),
        "flow broke while no agent ran"
    );
    c.restart_agent();
    for _ in 0..20 {
        assert_eq!(
            conn.ask().as_deref(),
            Ok(first.as_str()),
            "restart moved or dropped an established flow"
        );
    }
    assert_eq!(
        http_backends(c.client(), cluster_ip()),
        both(),
        "new flows after the restart"
    );
}

/// A service without endpoints: kube-proxy REJECTs, so a TCP connect and a UDP exchange
/// fail with "connection refused" at once (ICMP port unreachable), from a pod to the
/// ClusterIP and from outside to the NodePort (through XDP first, in that mode).
fn no_endpoints_refuses_at_once(mode: Mode) {
    let c = Cluster::start(mode, &[]);
    // A real node has a default route: without one, the stack answers "network
    // unreachable" for the ClusterIP before kube-proxy's filter rules see the packet.
    c.topo
        .node
        .ip(&["route", "add", "default", "via", "192.168.77.254"]);
    let refused = |what: &str, failure: Option<(std::io::ErrorKind, Duration)>| {
        let (kind, took) = failure.unwrap_or_else(|| panic!("{what}: answered without endpoints"));
        println!("[{mode:?}] {what}: {kind:?} after {took:?}");
        assert_eq!(kind, std::io::ErrorKind::ConnectionRefused, "{what}");
        assert!(
            took < Duration::from_secs(1),
            "{what}: refused only after {took:?}"
        );
    };
    for (ns, local, target) in [
        (c.client(), CLIENT, cluster_ip()),
        (&c.topo.external, EXTERNAL_CLIENT_IP, node_port()),
    ] {
        refused(&format!("TCP to {target}"), tcp_connect_failure(ns, target));
        refused(
            &format!("UDP to {target}"),
            udp_exchange_failure(ns, at(local, 0), target),
        );
    }
    if mode != Mode::Iptables {
        // The datapath answered, not the node's stack (which refuses a NodePort too).
        let maps = DatapathMaps::open_pinned(c.pins.path()).expect("open the agent's maps");
        assert_eq!(
            event(&maps, "reject"),
            4,
            "TCP and UDP to the ClusterIP and the NodePort"
        );
    }
}

/// A UDP datagram larger than the MTU (4000 bytes; the kernel fragments it) to the
/// ClusterIP from a pod and to the NodePort from outside, echoed by a backend (fragmented
/// too): every fragment gets its datagram's translation, so the client's connected
/// socket receives the whole echo from the address it dialled. kube-proxy's netfilter
/// reassembles before NAT; the datapath translates each fragment (`frag`).
fn fragmented_udp_datagrams_are_translated_both_ways(mode: Mode) {
    const DATAGRAMS: usize = 5;
    let c = Cluster::start(mode, &[POD_A, POD_B]);
    let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 251) as u8).collect();
    for (ns, local, target) in [
        (c.client(), CLIENT, cluster_ip()),
        (&c.topo.external, EXTERNAL_CLIENT_IP, node_port()),
    ] {
        let socket = udp_socket(ns, at(local, 0));
        socket.connect(target).expect("connect the UDP socket");
        for i in 0..DATAGRAMS {
            let (name, echoed) =
                udp_echo(&socket, &payload).unwrap_or_else(|e| panic!("datagram {i} to {target}: {e}"));
            assert!(
                name == "hello-a" || name == "hello-b",
                "datagram {i} to {target}: echoed by {name:?}"
            );
            assert!(
                echoed == payload,
                "datagram {i} to {target}: {} bytes echoed, not the 4000 sent",
                echoed.len()
            );
        }
    }
    if mode != Mode::Iptables {
        // Three fragments a datagram at MTU 1500: two later ones each way.
        let maps = DatapathMaps::open_pinned(c.pins.path()).expect("open the agent's maps");
        let later = 2 * 2 * 2 * DATAGRAMS as u64;
        assert!(
            event(&maps, "frag_nat") >= later,
            "frag_nat {}",
            event(&maps, "frag_nat")
        );
        assert_eq!(event(&maps, "frag_unknown"), 0);
    }
}

/// The XDP program's run count on the external link, from the link the agent pinned
/// (the kernel counts while `enable_stats` is held).
fn xdp_run_count(c: &Cluster) -> u64 {
    let name = c.topo.node_external_iface.clone();
    let index = c.topo.node.ifindex(&name);
    let path = LinkPins::new(c.pins.path())
        .expect("link pin dir")
        .path(Hook::Xdp, &Iface { name, index });
    let link = PinnedLink::from_pin(&path).unwrap_or_else(|e| panic!("XDP link pin {}: {e}", path.display()));
    let id = aya::programs::links::FdLink::from(link)
        .info()
        .expect("link info")
        .program_id();
    let info: ProgramInfo = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .expect("the linked program is loaded");
    info.run_count()
}

/// NodePort traffic from outside through `--xdp-iface`: the agent attaches natively and
/// says so; XDP translates TCP and UDP (both backends, replies from the NodePort),
/// handing them to the stack while the pod veths cannot take native redirects; once GRO
/// is on in the pods, the agent makes their veths redirect targets and XDP sends the
/// packets straight to them.
fn xdp_iface_serves_nodeport_and_redirects_once_pods_have_gro() {
    let mut c = Cluster::start(Mode::EbpfXdp, &[POD_A, POD_B]);
    let kpe = c.topo.node_external_iface.clone();
    c.agent.wait_for_log(&format!("xdp on {kpe}"), 1, SYNC_TIMEOUT);
    let log = c.agent.log();
    assert!(
        log.contains("native (driver) mode"),
        "veths run XDP natively; the agent must say which mode:\n{log}"
    );
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run stats");
    let maps = DatapathMaps::open_pinned(c.pins.path()).expect("open the agent's maps");
    let runs = xdp_run_count(&c);
    assert_eq!(
        http_backends(&c.topo.external, node_port()),
        both(),
        "TCP via NodePort"
    );
    assert_eq!(
        udp_backends(&c.topo.external, EXTERNAL_CLIENT_IP, node_port()),
        both(),
        "UDP via NodePort"
    );
    // Each HTTP exchange sends at least SYN, request and FIN from the client.
    let at_least = 4 * TRIES as u64;
    let ran = xdp_run_count(&c) - runs;
    assert!(ran >= at_least, "the XDP program ran {ran} times");
    let to_stack = event(&maps, "xdp_pass_translated");
    assert!(to_stack >= at_least, "XDP translated only {to_stack} packets");
    assert_eq!(
        event(&maps, "xdp_redirect"),
        0,
        "no veth can take native redirects yet"
    );

    for pod in &c.topo.pods {
        pod.ns.ethtool(&["-K", "eth0", "gro", "on"]);
    }
    let pod_a_veth = c.topo.pod("hello-a").host_iface.clone();
    // The agent rescans every 500 ms and logs the targets when they change.
    c.agent.wait_for_log("xdp redirect targets", 1, SYNC_TIMEOUT);
    assert!(
        c.agent
            .log()
            .lines()
            .any(|l| l.contains("xdp redirect targets") && l.contains(&pod_a_veth)),
        "the pod veths must become redirect targets:\n{}",
        c.agent.log()
    );
    assert_eq!(
        http_backends(&c.topo.external, node_port()),
        both(),
        "TCP, redirected"
    );
    assert_eq!(
        udp_backends(&c.topo.external, EXTERNAL_CLIENT_IP, node_port()),
        both(),
        "UDP, redirected"
    );
    let redirected = event(&maps, "xdp_redirect");
    assert!(redirected >= at_least, "XDP redirected only {redirected} packets");
}

/// One agent per pin path: a second agent started on the first one's pins (a DaemonSet
/// rolling update with surge) waits, writing nothing, until the first exits; then it
/// takes over and the service keeps answering.
#[test]
fn a_second_agent_on_one_pin_path_waits_for_the_first() {
    let mut c = Cluster::start(Mode::Ebpf, &[POD_A, POD_B]);
    let mut second = c.start_second_agent();
    second.wait_for_log("waiting for it to exit", 1, SYNC_TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !second.log().contains("sync #"),
        "the second agent synced while the first held the pins:\n{}",
        second.log()
    );
    assert!(!second.exited(), "the second agent must wait, not exit");
    c.agent.stop();
    second.wait_for_log("taking over", 1, SYNC_TIMEOUT);
    second.wait_for_log("sync #", 1, SYNC_TIMEOUT);
    assert_eq!(http_backends(c.client(), cluster_ip()), both());
    c.agent = second;
}

/// One `#[test]` per scenario and mode.
macro_rules! every_mode {
    ($($scenario:ident),* $(,)?) => {
        mod ebpf {
            $(#[test] fn $scenario() { super::$scenario(super::Mode::Ebpf) })*
        }
        mod ebpf_xdp {
            $(#[test] fn $scenario() { super::$scenario(super::Mode::EbpfXdp) })*
            #[test]
            fn xdp_iface_serves_nodeport_and_redirects_once_pods_have_gro() {
                super::xdp_iface_serves_nodeport_and_redirects_once_pods_have_gro()
            }
        }
        mod iptables {
            $(#[test] fn $scenario() { super::$scenario(super::Mode::Iptables) })*
        }
    };
}

every_mode!(
    clusterip_and_nodeport_reach_both_backends,
    flows_stay_on_their_backend,
    endpoints_follow_the_model_file,
    flows_when_their_endpoint_leaves,
    conntrack_timeouts_as_kube_proxy_sets_them,
    endpoint_churn_fails_no_connection,
    broken_model_keeps_last_good_state,
    hairpin_pod_reaches_itself_through_its_service,
    nodeport_reaches_a_remote_backend_through_snat,
    datapath_outlives_agent_until_cleanup,
    new_pod_interfaces_are_attached,
    restarted_agent_keeps_established_flows,
    no_endpoints_refuses_at_once,
    fragmented_udp_datagrams_are_translated_both_ways,
);
