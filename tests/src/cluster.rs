//! The seed's hello-app on one node with the real agent: pods hello-a and hello-b
//! serving HTTP and UDP, a client pod, an external client, the model and configuration
//! files, and `kproxy run` in the node namespace. Shared by the end-to-end and
//! inspection suites.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use crate::{
    agent::{Agent, run_kproxy},
    apiserver::{FakeApiServer, Reserved, kubeconfig, node_json},
    cgroup::TestCgroup,
    hello::{HelloServer, http_get_hostname, udp_ask, udp_socket},
    manifests::{
        CLUSTER_CIDR, CLUSTER_IP, NODE_NAME, NODE_PORT, SERVICE_PORT, Service, TARGET_PORT, proxy_config,
        write_model,
    },
    netns::NetNs,
    pins::PinDir,
    tempdir::TempDir,
    topology::{EXTERNAL_IFACE_PREFIX, NODE_IP, Topology},
};

pub const POD_A: Ipv4Addr = Ipv4Addr::new(172, 16, 166, 130);
pub const POD_B: Ipv4Addr = Ipv4Addr::new(172, 16, 192, 89);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 166, 140);
/// Requests per check: with two backends chosen at random, missing one has p = 2^-29.
pub const TRIES: usize = 30;
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(10);

pub fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

pub fn cluster_ip() -> SocketAddr {
    at(CLUSTER_IP, SERVICE_PORT)
}

pub fn node_port() -> SocketAddr {
    at(NODE_IP, NODE_PORT)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Ebpf,
    /// eBPF with XDP on the external link too (`--xdp-iface kpe*`).
    EbpfXdp,
    Iptables,
}

/// One node with hello-a, hello-b and a client pod, their servers, the model files and a
/// running agent. Field order is drop order: agent first, then its cgroup, pins, servers,
/// namespaces.
pub struct Cluster {
    pub agent: Agent,
    /// Cluster mode: the API server the agent watches (it listens on the node's
    /// loopback), and its port while it is still down.
    pub api: Option<FakeApiServer>,
    api_down: Option<Reserved>,
    /// `--model PATH` or `--kubeconfig PATH`.
    source: Vec<String>,
    /// The agent's `--cgroup` (socket-LB): the test's own, empty unless a test puts a
    /// probe there.
    pub cgroup: TestCgroup,
    mode: Mode,
    pub pins: PinDir,
    pub model: PathBuf,
    dir: TempDir,
    syncs: usize,
    _servers: Vec<HelloServer>,
    pub topo: Topology,
}

impl Cluster {
    pub fn start(mode: Mode, endpoints: &[Ipv4Addr]) -> Self {
        Self::start_from(mode, endpoints, Feed::Files)
    }

    /// As [`Cluster::start`], the model coming from an API server (cluster mode) that
    /// holds the hello-app Service, its EndpointSlice and the Node; with `up` false the
    /// server's port refuses connections until [`Cluster::bring_api_up`], and the agent
    /// has not synced.
    pub fn start_with_api(mode: Mode, endpoints: &[Ipv4Addr], up: bool) -> Self {
        Self::start_from(mode, endpoints, Feed::Api { up })
    }

    fn start_from(mode: Mode, endpoints: &[Ipv4Addr], feed: Feed) -> Self {
        let topo = Topology::new(&[("hello-a", POD_A), ("hello-b", POD_B), ("client", CLIENT)]);
        let servers = ["hello-a", "hello-b"]
            .iter()
            .map(|n| HelloServer::start(&topo.pod(n).ns, at(topo.pod(n).ip, TARGET_PORT), n))
            .collect();
        let dir = TempDir::new("hac");
        let model = dir.path().join("hello-app.yaml");
        std::fs::write(
            dir.path().join("config.yaml"),
            proxy_config(NODE_NAME, CLUSTER_CIDR),
        )
        .expect("config");
        let (source, api, api_down) = match feed {
            Feed::Files => {
                write_model(&model, endpoints);
                (
                    vec!["--model".to_string(), model.display().to_string()],
                    None,
                    None,
                )
            }
            Feed::Api { up } => {
                let api = FakeApiServer::new();
                api.apply_yaml(&Service::hello_app(endpoints).yaml());
                api.apply(node_json(NODE_NAME, NODE_IP, None));
                let reserved = FakeApiServer::reserve_in(&topo.node);
                let config = kubeconfig(reserved.addr(), dir.path());
                let down = if up {
                    api.serve(reserved);
                    None
                } else {
                    Some(reserved)
                };
                (
                    vec!["--kubeconfig".to_string(), config.display().to_string()],
                    Some(api),
                    down,
                )
            }
        };
        let pins = PinDir::new("hac");
        let cgroup = TestCgroup::new("hac");
        let agent = start_agent(&topo, mode, &source, dir.path(), &pins, &cgroup);
        let up = api_down.is_none();
        let mut cluster = Cluster {
            agent,
            api,
            api_down,
            source,
            cgroup,
            mode,
            pins,
            model,
            dir,
            syncs: 0,
            _servers: servers,
            topo,
        };
        if up {
            cluster.wait_sync();
        }
        cluster
    }

    /// The API server (cluster mode only).
    pub fn api(&self) -> &FakeApiServer {
        self.api.as_ref().expect("a cluster started with an API server")
    }

    /// Starts serving on the API server's port (started down) and waits for the first sync.
    pub fn bring_api_up(&mut self) {
        self.bring_api_up_without_sync();
        self.wait_sync();
    }

    /// Starts serving on the API server's port (started down).
    pub fn bring_api_up_without_sync(&mut self) {
        let reserved = self.api_down.take().expect("the API server was started down");
        self.api().serve(reserved);
    }

    pub fn wait_sync(&mut self) {
        self.syncs += 1;
        self.agent.wait_for_log("sync #", self.syncs, SYNC_TIMEOUT);
    }

    /// Starts a new agent on the same pins and model (the old one must have stopped)
    /// and waits for its first sync.
    pub fn restart_agent(&mut self) {
        self.agent = self.start_second_agent();
        self.syncs = 0;
        self.wait_sync();
    }

    /// Starts another agent with this one's arguments (same pins, model and cgroup)
    /// without waiting for it: a DaemonSet rolling update with surge.
    pub fn start_second_agent(&self) -> Agent {
        start_agent(
            &self.topo,
            self.mode,
            &self.source,
            self.dir.path(),
            &self.pins,
            &self.cgroup,
        )
    }

    pub fn client(&self) -> &NetNs {
        &self.topo.pod("client").ns
    }

    /// Replaces the model file (by rename), or the EndpointSlice on the API server, and
    /// waits for the agent to apply it.
    pub fn set_endpoints(&mut self, endpoints: &[Ipv4Addr]) {
        match &self.api {
            Some(api) => api.apply_yaml(&Service::hello_app(endpoints).yaml()),
            None => write_model(&self.model, endpoints),
        }
        self.wait_sync();
    }

    pub fn cleanup_args(&self) -> Vec<String> {
        vec![
            "cleanup".to_string(),
            "--pin-path".into(),
            self.pins.path().display().to_string(),
        ]
    }

    /// Runs `kproxy ARGS --pin-path <this agent's>` in the node namespace.
    pub fn kproxy(&self, args: &[&str]) -> Output {
        let pin_path = self.pins.path().display().to_string();
        let mut all = args.to_vec();
        all.extend(["--pin-path", &pin_path]);
        run_kproxy(&self.topo.node, &all)
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

/// Where a [`Cluster`]'s agent reads the model.
enum Feed {
    Files,
    Api { up: bool },
}

fn start_agent(
    topo: &Topology,
    mode: Mode,
    source: &[String],
    dir: &Path,
    pins: &PinDir,
    cgroup: &TestCgroup,
) -> Agent {
    let args = run_args_from(mode, source, &dir.join("config.yaml"), pins.path(), cgroup.path());
    Agent::start(&topo.node, &args)
}

/// `kproxy run` on a [`Topology`]'s node: `mode`'s datapath, TC on the pod veths and the
/// external link (XDP in front of the latter with [`Mode::EbpfXdp`]), from the model
/// and configuration files given, with its maps and links pinned under `pins` and the
/// socket-LB programs on `cgroup` (a cgroup the caller created: never one holding other
/// processes, see [`crate::cgroup::TestCgroup`]).
pub fn run_args(mode: Mode, model: &Path, config: &Path, pins: &Path, cgroup: &Path) -> Vec<String> {
    let source = ["--model".to_string(), model.display().to_string()];
    run_args_from(mode, &source, config, pins, cgroup)
}

/// As [`run_args`], with the model from `source` (`--model PATH` or `--kubeconfig PATH`).
pub fn run_args_from(
    mode: Mode,
    source: &[String],
    config: &Path,
    pins: &Path,
    cgroup: &Path,
) -> Vec<String> {
    let mode_arg = match mode {
        Mode::Ebpf | Mode::EbpfXdp => "ebpf",
        Mode::Iptables => "iptables",
    };
    let path = |p: &Path| p.display().to_string();
    let mut args = vec!["run".to_string()];
    args.extend_from_slice(source);
    args.extend([
        "--config".into(),
        path(config),
        "--mode".into(),
        mode_arg.into(),
        "--pin-path".into(),
        path(pins),
        "--cgroup".into(),
        path(cgroup),
    ]);
    for pattern in Topology::iface_patterns() {
        args.extend(["--iface".into(), pattern]);
    }
    if mode == Mode::EbpfXdp {
        args.extend(["--xdp-iface".into(), format!("{EXTERNAL_IFACE_PREFIX}*")]);
    }
    args
}

/// The pods that answered `TRIES` HTTP requests from `ns` to `target`.
pub fn http_backends(ns: &NetNs, target: SocketAddr) -> BTreeSet<String> {
    (0..TRIES)
        .map(|_| http_get_hostname(ns, target).unwrap_or_else(|e| panic!("HTTP to {target}: {e}")))
        .collect()
}

/// The pods that answered `TRIES` UDP flows from `ns`, asserting every answer came from
/// the address dialled. Every socket stays bound until the last answer, so each flow has
/// its own source port: a port freed earlier can be handed out again, and the same
/// 5-tuple would follow the earlier flow's conntrack entry instead of starting a flow.
pub fn udp_backends(ns: &NetNs, local: Ipv4Addr, target: SocketAddr) -> BTreeSet<String> {
    let sockets: Vec<UdpSocket> = (0..TRIES).map(|_| udp_socket(ns, at(local, 0))).collect();
    sockets
        .iter()
        .map(|socket| {
            let (name, from) = udp_ask(socket, target).unwrap_or_else(|e| panic!("UDP to {target}: {e}"));
            assert_eq!(
                from, target,
                "UDP reply must come from the address the client dialled"
            );
            name
        })
        .collect()
}

/// Both pods' names.
pub fn both() -> BTreeSet<String> {
    ["hello-a", "hello-b"].map(String::from).into()
}

/// One `#[test]` per scenario and mode, eBPF and iptables, with the same assertions: each
/// scenario is a `fn(Mode)` beside the macro call (`super::` of the generated modules).
#[macro_export]
macro_rules! every_mode {
    ($($scenario:ident),* $(,)?) => {
        mod ebpf {
            $(#[test] fn $scenario() { super::$scenario($crate::cluster::Mode::Ebpf) })*
        }
        mod iptables {
            $(#[test] fn $scenario() { super::$scenario($crate::cluster::Mode::Iptables) })*
        }
    };
}
