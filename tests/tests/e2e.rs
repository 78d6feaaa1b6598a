//! End-to-end: the real `kproxy run` on a node namespace routing between pod
//! namespaces and an external client, with real TCP and UDP. Every scenario runs
//! against both datapaths (`--mode ebpf` and `--mode iptables`), and eBPF once more with
//! XDP on the external link (`--xdp-iface`), with the same assertions: the views of one
//! model must behave the same. XDP's own scenarios check that it did the work.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use aya::programs::{ProgramInfo, links::PinnedLink, loaded_programs};
use kproxy::{
    attach::{Hook, LinkPins},
    bpf::DatapathMaps,
    iface::Iface,
};
use kproxy_tests::{
    agent::{Agent, run_kproxy},
    forwarding::event,
    hello::{HelloServer, LineClient, http_get_hostname, udp_ask, udp_socket},
    manifests::{CLUSTER_IP, NODE_PORT, SERVICE_PORT, TARGET_PORT, proxy_config, write_model},
    netns::NetNs,
    pins::PinDir,
    tempdir::TempDir,
    topology::{EXTERNAL_CLIENT_IP, EXTERNAL_IFACE_PREFIX, NODE_IP, Topology},
};

const POD_A: Ipv4Addr = Ipv4Addr::new(172, 16, 166, 130);
const POD_B: Ipv4Addr = Ipv4Addr::new(172, 16, 192, 89);
const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 166, 140);
/// Requests per check: with two backends chosen at random, missing one has p = 2^-29.
const TRIES: usize = 30;
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn cluster_ip() -> SocketAddr {
    at(CLUSTER_IP, SERVICE_PORT)
}

fn node_port() -> SocketAddr {
    at(NODE_IP, NODE_PORT)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Ebpf,
    /// eBPF with XDP on the external link too.
    EbpfXdp,
    Iptables,
}

/// One node with hello-a, hello-b and a client pod, their servers, the model files and a
/// running agent. Field order is drop order: agent first, then pins, servers, namespaces.
struct Cluster {
    agent: Agent,
    pins: PinDir,
    model: PathBuf,
    _dir: TempDir,
    syncs: usize,
    _servers: Vec<HelloServer>,
    topo: Topology,
}

impl Cluster {
    fn start(mode: Mode, endpoints: &[Ipv4Addr]) -> Self {
        let topo = Topology::new(&[("hello-a", POD_A), ("hello-b", POD_B), ("client", CLIENT)]);
        let servers = ["hello-a", "hello-b"]
            .iter()
            .map(|n| HelloServer::start(&topo.pod(n).ns, at(topo.pod(n).ip, TARGET_PORT), n))
            .collect();
        let dir = TempDir::new("e2e");
        let model = dir.path().join("hello-app.yaml");
        write_model(&model, endpoints);
        std::fs::write(dir.path().join("config.yaml"), proxy_config()).expect("config");
        let pins = PinDir::new("e2e");
        let agent = start_agent(&topo, mode, dir.path(), &pins);
        let mut cluster = Cluster {
            agent,
            pins,
            model,
            _dir: dir,
            syncs: 0,
            _servers: servers,
            topo,
        };
        cluster.wait_sync();
        cluster
    }

    fn wait_sync(&mut self) {
        self.syncs += 1;
        self.agent.wait_for_log("sync #", self.syncs, SYNC_TIMEOUT);
    }

    fn client(&self) -> &NetNs {
        &self.topo.pod("client").ns
    }

    /// Replaces the model file (by rename) and waits for the agent to apply it.
    fn set_endpoints(&mut self, endpoints: &[Ipv4Addr]) {
        write_model(&self.model, endpoints);
        self.wait_sync();
    }

    fn cleanup_args(&self) -> Vec<String> {
        vec![
            "cleanup".to_string(),
            "--pin-path".into(),
            self.pins.path().display().to_string(),
        ]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agent.stop();
        let args = self.cleanup_args();
        let _ = run_kproxy(
            &self.topo.node,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
}

fn start_agent(topo: &Topology, mode: Mode, dir: &std::path::Path, pins: &PinDir) -> Agent {
    let model = dir.join("hello-app.yaml").display().to_string();
    let config = dir.join("config.yaml").display().to_string();
    let pin_path = pins.path().display().to_string();
    let mode_arg = match mode {
        Mode::Ebpf | Mode::EbpfXdp => "ebpf",
        Mode::Iptables => "iptables",
    };
    let xdp_pattern = format!("{EXTERNAL_IFACE_PREFIX}*");
    let mut args = vec![
        "run",
        "--model",
        &model,
        "--config",
        &config,
        "--mode",
        mode_arg,
        "--pin-path",
        &pin_path,
    ];
    let patterns = topo.iface_patterns();
    for p in &patterns {
        args.extend(["--iface", p.as_str()]);
    }
    if mode == Mode::EbpfXdp {
        args.extend(["--xdp-iface", xdp_pattern.as_str()]);
    }
    Agent::start(&topo.node, &args)
}

/// The pods that answered `TRIES` HTTP requests from `ns` to `target`.
fn http_backends(ns: &NetNs, target: SocketAddr) -> BTreeSet<String> {
    (0..TRIES)
        .map(|_| http_get_hostname(ns, target).unwrap_or_else(|e| panic!("HTTP to {target}: {e}")))
        .collect()
}

/// The pods that answered `TRIES` UDP flows (a new source port each) from `ns`, asserting
/// every answer came from the address dialled.
fn udp_backends(ns: &NetNs, local: Ipv4Addr, target: SocketAddr) -> BTreeSet<String> {
    (0..TRIES)
        .map(|_| {
            let socket = udp_socket(ns, at(local, 0));
            let (name, from) = udp_ask(&socket, target).unwrap_or_else(|e| panic!("UDP to {target}: {e}"));
            assert_eq!(
                from, target,
                "UDP reply must come from the address the client dialled"
            );
            name
        })
        .collect()
}

fn both() -> BTreeSet<String> {
    ["hello-a", "hello-b"].map(String::from).into()
}

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
    let mut c = Cluster::start(mode, &[POD_A]);
    // A pod created after the agent started: its veth must be picked up by the scan.
    const LATE: Ipv4Addr = Ipv4Addr::new(172, 16, 166, 150);
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
    c.agent = start_agent(&c.topo, mode, c._dir.path(), &c.pins);
    c.syncs = 0;
    c.wait_sync();
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
    broken_model_keeps_last_good_state,
    hairpin_pod_reaches_itself_through_its_service,
    datapath_outlives_agent_until_cleanup,
    new_pod_interfaces_are_attached,
    restarted_agent_keeps_established_flows,
);
