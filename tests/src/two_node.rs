//! The seed's real cluster: two nodes, host1 and host2, joined by a bridged LAN with
//! external clients on it, each node set up as real nodes are and running its own
//! `kproxy run`. Every namespace here is created by the test and deleted on drop.
//!
//! Layout (all addresses inside namespaces this module creates):
//! - `lan`: a namespace holding only the bridge `br0`; every node and external client
//!   has one veth port on it. Nothing of it is in the root namespace.
//! - host1 [`HOST_IPS`]`[0]` = 192.168.77.10/24, host2 192.168.77.11/24 on their LAN
//!   link (`kpe…`, so the agents attach to it); external clients [`EXTERNAL_CLIENTS`]
//!   192.168.77.100 and .101 (complete checksums: tx offload off), which route the
//!   LoadBalancer IP [`LB_IP`] via host1.
//! - pods, Calico-style ([`Pod::wire`]): a `kpv…` veth per pod owning 169.254.1.1 on the
//!   node, a /32 route to the pod through it, the pod's default route via 169.254.1.1;
//!   host1's pods in 172.16.166.0/24, host2's in 172.16.192.0/24 (both in
//!   [`CLUSTER_CIDR`]), each node routing the other's /24 via the other's LAN address.
//! - each node: a default route via [`NOWHERE`] (an address no namespace owns: nothing
//!   leaves), `ip_forward=1`, `rp_filter=2` (all, default and every interface), and the
//!   CNI's `-t nat POSTROUTING -s CLUSTER_CIDR ! -d CLUSTER_CIDR -j MASQUERADE`.
//! - servers: the hello-app in every `hello-…` pod on [`TARGET_PORT`], and a
//!   host-network one on each node's own address (named after the node), standing for
//!   the API server and hostNetwork pods.
//! - agents: one `kproxy run` per node (`--node-ip` its LAN address), its own pin path
//!   and KubeProxyConfiguration (`hostnameOverride: host1|host2`), the same model file,
//!   whose EndpointSlices carry each endpoint's `nodeName`.

use std::{
    cell::Cell,
    fs,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use crate::{
    agent::{Agent, run_kproxy},
    apiserver::{FakeApiServer, kubeconfig, node_json},
    cgroup::TestCgroup,
    cluster::{CLIENT, Mode, POD_A, POD_B, SYNC_TIMEOUT, at, run_args_from},
    hello::HelloServer,
    manifests::{
        CLUSTER_CIDR, External, HELLO_PORTS, Port, Service, TARGET_PORT, proxy_config, write_services,
    },
    netns::{NetNs, unique_name},
    pins::PinDir,
    tempdir::TempDir,
    topology::{EXTERNAL_CLIENT_IP, EXTERNAL_IFACE_PREFIX, NODE_IP, Pod, enable_forwarding},
};

/// The nodes' names (`hostnameOverride`, EndpointSlice `nodeName`).
pub const NODE_NAMES: [&str; 2] = ["host1", "host2"];
/// The nodes' LAN addresses.
/// host1 is the seed topology's node address.
pub const HOST_IPS: [Ipv4Addr; 2] = [NODE_IP, Ipv4Addr::new(192, 168, 77, 11)];
/// Each node's pod /24.
/// Each node's pod /24 (holding the seed's pod addresses: 172.16.166.130 on host1,
/// 172.16.192.89 on host2).
pub const POD_CIDRS: [&str; 2] = ["172.16.166.0/24", "172.16.192.0/24"];
/// The external clients on the LAN.
pub const EXTERNAL_CLIENTS: [Ipv4Addr; 2] = [EXTERNAL_CLIENT_IP, Ipv4Addr::new(192, 168, 77, 101)];
/// The nodes' default gateway: on the LAN, owned by nobody.
pub const NOWHERE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);
/// The LoadBalancer IP the external clients route via host1.
pub const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 10);

/// The pods: name, node index, address. `hello-…` pods run the hello-app.
pub const PODS: [(&str, usize, Ipv4Addr); 4] = [
    ("hello-a", 0, POD_A),
    ("hello-b", 1, POD_B),
    ("client-1", 0, CLIENT),
    ("client-2", 1, Ipv4Addr::new(172, 16, 192, 90)),
];

/// A node: its namespace, LAN link and pods.
pub struct Node {
    pub name: &'static str,
    pub ip: Ipv4Addr,
    pub lan_iface: String,
    pub pods: Vec<Pod>,
    /// Declared last so it is deleted after its pods.
    pub ns: NetNs,
}

/// The namespaces of the two-node bed (no agents): see the module documentation.
pub struct Bed {
    pub nodes: Vec<Node>,
    pub externals: Vec<NetNs>,
    lan: NetNs,
}

impl Bed {
    /// The bed with `pods` (name, node index, address).
    pub fn new(pods: &[(&str, usize, Ipv4Addr)]) -> Self {
        let lan = NetNs::new("lan");
        lan.disable_ipv6();
        lan.ip(&["link", "add", "br0", "type", "bridge"]);
        lan.ip(&["link", "set", "br0", "up"]);
        let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(&lan, i)).collect();
        for &(name, node, ip) in pods {
            let pod = Pod::wire(&nodes[node].ns, name, ip);
            nodes[node].pods.push(pod);
        }
        for node in &nodes {
            node.set_rp_filter_everywhere();
        }
        let externals = EXTERNAL_CLIENTS
            .iter()
            .map(|ip| {
                let ext = NetNs::new("ext");
                ext.disable_ipv6();
                lan_port(&lan, &ext, "eth0", *ip);
                // Frames with complete checksums, as from a wire (see `Topology::new`).
                ext.ethtool(&["-K", "eth0", "tx", "off"]);
                ext.ip(&[
                    "route",
                    "add",
                    &format!("{LB_IP}/32"),
                    "via",
                    &HOST_IPS[0].to_string(),
                ]);
                ext
            })
            .collect();
        Bed {
            nodes,
            externals,
            lan,
        }
    }

    /// Puts `member` (a namespace the test made, such as a router) on the LAN: its
    /// `member_if` with `ip`/24.
    pub fn join_lan(&self, member: &NetNs, member_if: &str, ip: Ipv4Addr) {
        lan_port(&self.lan, member, member_if, ip);
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> &Pod {
        self.nodes
            .iter()
            .flat_map(|n| &n.pods)
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }
}

impl Node {
    /// Node `i` on `lan`, without pods.
    fn new(lan: &NetNs, i: usize) -> Self {
        let ns = NetNs::new("node");
        ns.disable_ipv6();
        enable_forwarding(&ns);
        for conf in ["all", "default"] {
            ns.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "2");
        }
        let lan_iface = unique_name(EXTERNAL_IFACE_PREFIX);
        lan_port(lan, &ns, &lan_iface, HOST_IPS[i]);
        let other = 1 - i;
        ns.ip(&[
            "route",
            "add",
            POD_CIDRS[other],
            "via",
            &HOST_IPS[other].to_string(),
        ]);
        ns.ip(&["route", "add", "default", "via", &NOWHERE.to_string()]);
        ns.exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                CLUSTER_CIDR,
                "!",
                "-d",
                CLUSTER_CIDR,
                "-j",
                "MASQUERADE",
            ],
        );
        Node {
            name: NODE_NAMES[i],
            ip: HOST_IPS[i],
            lan_iface,
            pods: Vec::new(),
            ns,
        }
    }

    /// `kproxy run` on this node (`--node-ip` its LAN address): [`crate::cluster::run_args`] of `mode`
    /// with the model and configuration files, pinning under `pins`, socket-LB on
    /// `cgroup`.
    pub fn start_agent(&self, mode: Mode, model: &Path, config: &Path, pins: &Path, cgroup: &Path) -> Agent {
        Agent::start(&self.ns, &self.agent_args(mode, model, config, pins, cgroup))
    }

    /// As [`Node::start_agent`], the model from `source` (`--model PATH` or
    /// `--kubeconfig PATH`).
    fn start_agent_from(
        &self,
        mode: Mode,
        source: &[String],
        config: &Path,
        pins: &Path,
        cgroup: &Path,
    ) -> Agent {
        let mut args = run_args_from(mode, source, config, pins, cgroup);
        args.extend(["--node-ip".into(), self.ip.to_string()]);
        Agent::start(&self.ns, &args)
    }

    /// The arguments of [`Node::start_agent`]'s `kproxy`.
    pub fn agent_args(
        &self,
        mode: Mode,
        model: &Path,
        config: &Path,
        pins: &Path,
        cgroup: &Path,
    ) -> Vec<String> {
        let source = ["--model".to_string(), model.display().to_string()];
        let mut args = run_args_from(mode, &source, config, pins, cgroup);
        args.extend(["--node-ip".into(), self.ip.to_string()]);
        args
    }

    /// `rp_filter=2` on every interface that exists now (later ones take `default`).
    fn set_rp_filter_everywhere(&self) {
        let ifaces = std::iter::once("lo")
            .chain([self.lan_iface.as_str()])
            .chain(self.pods.iter().map(|p| p.host_iface.as_str()));
        for iface in ifaces {
            self.ns.sysctl(&format!("net.ipv4.conf.{iface}.rp_filter"), "2");
        }
    }
}

/// Puts `member` on the LAN: a veth whose `member_if` end in `member` has `ip`/24 and
/// whose other end is a port of `lan`'s bridge.
fn lan_port(lan: &NetNs, member: &NetNs, member_if: &str, ip: Ipv4Addr) {
    let port = unique_name("lp");
    lan.ip(&[
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        member_if,
        "netns",
        member.name(),
    ]);
    lan.ip(&["link", "set", &port, "master", "br0", "up"]);
    member.ip(&["addr", "add", &format!("{ip}/24"), "dev", member_if]);
    member.ip(&["link", "set", member_if, "up"]);
}

/// A Service of the two-node model, its endpoints named by pod (each on its pod's node)
/// or by node (`host1`, `host2`: that node's host-network server, `nodeName` that node).
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: &'static str,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<Port>,
    pub endpoints: Vec<&'static str>,
    /// Those of `endpoints` that are terminating but still serving (grace period).
    pub terminating: Vec<&'static str>,
    pub external: External<'static>,
}

impl ServiceSpec {
    /// The hello-app's ports (TCP and UDP 80 → 8080) on NodePort `node_port`, served by
    /// the pods named.
    pub fn hello(name: &'static str, cluster_ip: Ipv4Addr, node_port: u16, pods: &[&'static str]) -> Self {
        ServiceSpec {
            name,
            cluster_ip,
            ports: HELLO_PORTS.iter().map(|p| Port { node_port, ..*p }).collect(),
            endpoints: pods.to_vec(),
            terminating: Vec::new(),
            external: External::default(),
        }
    }

    /// `externalTrafficPolicy: Local` with `healthCheckNodePort` (a LoadBalancer Service).
    #[must_use]
    pub fn local(mut self, health_check_node_port: u16) -> Self {
        self.external.local = true;
        self.external.health_check_node_port = Some(health_check_node_port);
        self
    }

    /// A LoadBalancer Service with ingress IP `ip`, open to `source_ranges` (all if empty).
    #[must_use]
    pub fn load_balancer(mut self, ip: Ipv4Addr, source_ranges: &'static [&'static str]) -> Self {
        self.external.load_balancer_ip = Some(ip);
        self.external.source_ranges = source_ranges;
        self
    }
}

/// The bed with hello servers, the model and a `kproxy run` per node. Field order is
/// drop order: agents first, then their cgroups, pins, the files, the servers, the
/// namespaces.
pub struct TwoNodeCluster {
    agents: Vec<Agent>,
    /// Cluster mode ([`fed_by_api_server`]): the API server both agents watch, on each
    /// node's loopback; the model file is not written.
    api: Option<FakeApiServer>,
    /// Each node's agent's `--cgroup` (socket-LB), one per node.
    cgroups: Vec<TestCgroup>,
    pub mode: Mode,
    pins: Vec<PinDir>,
    model: PathBuf,
    services: Vec<ServiceSpec>,
    dir: TempDir,
    _servers: Vec<HelloServer>,
    pub bed: Bed,
}

impl TwoNodeCluster {
    /// Builds the bed, writes `services`, starts both agents in `mode` and waits for
    /// their first sync.
    pub fn start(mode: Mode, services: Vec<ServiceSpec>) -> Self {
        let bed = Bed::new(&PODS);
        let pods = PODS
            .iter()
            .filter(|(name, ..)| name.starts_with("hello-"))
            .map(|(name, ..)| {
                let pod = bed.pod(name);
                HelloServer::start(&pod.ns, at(pod.ip, TARGET_PORT), name)
            });
        let host_network = bed
            .nodes
            .iter()
            .map(|n| HelloServer::start(&n.ns, at(n.ip, TARGET_PORT), n.name));
        let servers = pods.chain(host_network).collect();
        let dir = TempDir::new("2n");
        let model = dir.path().join("model.yaml");
        let api = FED_BY_API_SERVER.with(Cell::get).then(FakeApiServer::new);
        let mut cluster = TwoNodeCluster {
            agents: Vec::new(),
            api,
            cgroups: Vec::new(),
            mode,
            pins: Vec::new(),
            model,
            services,
            dir,
            _servers: servers,
            bed,
        };
        cluster.write_model();
        for node in &cluster.bed.nodes {
            let config = cluster.dir.path().join(format!("config-{}.yaml", node.name));
            fs::write(&config, proxy_config(node.name, CLUSTER_CIDR)).expect("write proxy config");
            let source = match &cluster.api {
                None => vec!["--model".to_string(), cluster.model.display().to_string()],
                Some(api) => {
                    api.apply(node_json(node.name, node.ip, None));
                    let dir = cluster.dir.path().join(node.name);
                    fs::create_dir_all(&dir).expect("kubeconfig directory");
                    let config = kubeconfig(api.listen_in(&node.ns), &dir);
                    vec!["--kubeconfig".to_string(), config.display().to_string()]
                }
            };
            let pins = PinDir::new("2n");
            let cgroup = TestCgroup::new("2n");
            cluster
                .agents
                .push(node.start_agent_from(mode, &source, &config, pins.path(), cgroup.path()));
            cluster.pins.push(pins);
            cluster.cgroups.push(cgroup);
        }
        for agent in &mut cluster.agents {
            agent.wait_for_log("sync #", 1, SYNC_TIMEOUT);
        }
        cluster
    }

    /// Node `i` (0: host1, 1: host2).
    pub fn node(&self, i: usize) -> &Node {
        &self.bed.nodes[i]
    }

    /// External client `i`.
    pub fn external(&self, i: usize) -> &NetNs {
        &self.bed.externals[i]
    }

    /// The namespace of the pod called `name`.
    pub fn pod(&self, name: &str) -> &NetNs {
        &self.bed.pod(name).ns
    }

    /// The agent of node `i`.
    pub fn agent(&self, i: usize) -> &Agent {
        &self.agents[i]
    }

    /// The `--cgroup` of node `i`'s agent: host processes there get socket-LB.
    pub fn cgroup(&self, i: usize) -> &TestCgroup {
        &self.cgroups[i]
    }

    /// Node `i`'s pin directory.
    pub fn pin_dir(&self, i: usize) -> &Path {
        self.pins[i].path()
    }

    /// Serves `service` with the pods named, and waits for both agents to apply it.
    pub fn set_endpoints(&mut self, service: &str, pods: &[&'static str]) {
        self.spec_mut(service).endpoints = pods.to_vec();
        self.apply();
    }

    /// Marks the endpoints `pods` of `service` terminating (still serving, not ready), as
    /// a rolling update does during their grace period; waits for both agents.
    pub fn set_terminating(&mut self, service: &str, pods: &[&'static str]) {
        self.spec_mut(service).terminating = pods.to_vec();
        self.apply();
    }

    fn spec_mut(&mut self, service: &str) -> &mut ServiceSpec {
        self.services
            .iter_mut()
            .find(|s| s.name == service)
            .unwrap_or_else(|| panic!("no service {service}"))
    }

    /// Adds `service` to the model, and waits for both agents to apply it.
    pub fn add_service(&mut self, service: ServiceSpec) {
        self.services.push(service);
        self.apply();
    }

    /// Runs `kproxy ARGS --pin-path <node i's>` in node `i`'s namespace.
    pub fn kproxy(&self, i: usize, args: &[&str]) -> std::process::Output {
        let pin_path = self.pins[i].path().display().to_string();
        let mut all = args.to_vec();
        all.extend(["--pin-path", &pin_path]);
        run_kproxy(&self.bed.nodes[i].ns, &all)
    }

    /// Rewrites the model file and waits for one more sync of each agent.
    fn apply(&mut self) {
        let before: Vec<usize> = self
            .agents
            .iter()
            .map(|a| a.log().matches("sync #").count())
            .collect();
        self.write_model();
        for (agent, n) in self.agents.iter_mut().zip(before) {
            agent.wait_for_log("sync #", n + 1, SYNC_TIMEOUT);
        }
    }

    /// Writes the model with `service` served by `pods`, without waiting for the agents
    /// and without changing the cluster's own record of it: for churn beside traffic
    /// (`set_endpoints` restores a settled state).
    pub fn write_endpoints(&self, service: &str, pods: &[&'static str]) {
        let mut services = self.services.clone();
        if let Some(s) = services.iter_mut().find(|s| s.name == service) {
            s.endpoints = pods.to_vec();
        } else {
            panic!("no service {service}");
        }
        self.write_services(&services);
    }

    fn write_model(&self) {
        self.write_services(&self.services);
    }

    fn write_services(&self, specs: &[ServiceSpec]) {
        let resolved: Vec<(Vec<Ipv4Addr>, Vec<&str>)> = specs
            .iter()
            .map(|s| s.endpoints.iter().map(|name| endpoint(name)).unzip())
            .collect();
        let terminating: Vec<Vec<Ipv4Addr>> = specs
            .iter()
            .map(|s| s.terminating.iter().map(|name| endpoint(name).0).collect())
            .collect();
        let services: Vec<Service> = specs
            .iter()
            .zip(resolved.iter().zip(&terminating))
            .map(|(s, ((ips, nodes), terminating_ips))| Service {
                namespace: "default",
                name: s.name.to_string(),
                cluster_ip: s.cluster_ip,
                ports: s.ports.clone(),
                endpoints: ips,
                node_name: NODE_NAMES[0],
                endpoint_nodes: nodes,
                terminating: terminating_ips,
                external: s.external.clone(),
            })
            .collect();
        match &self.api {
            Some(api) => api.apply_yaml(&services.iter().map(Service::yaml).collect::<String>()),
            None => write_services(&self.model, &services).expect("write the two-node model"),
        }
    }
}

impl Drop for TwoNodeCluster {
    fn drop(&mut self) {
        for (i, agent) in self.agents.iter_mut().enumerate() {
            agent.stop();
            let pin_path = self.pins[i].path().display().to_string();
            let _ = run_kproxy(&self.bed.nodes[i].ns, &["cleanup", "--pin-path", &pin_path]);
        }
    }
}

/// The address and node of the endpoint `name`: a pod, or a node's host-network server.
fn endpoint(name: &str) -> (Ipv4Addr, &'static str) {
    if let Some(i) = NODE_NAMES.iter().position(|n| *n == name) {
        return (HOST_IPS[i], NODE_NAMES[i]);
    }
    let (_, node, ip) = PODS
        .iter()
        .find(|(pod, ..)| *pod == name)
        .unwrap_or_else(|| panic!("no pod or node {name}"));
    (*ip, NODE_NAMES[*node])
}

thread_local! {
    /// Set by [`fed_by_api_server`] for the test's thread.
    static FED_BY_API_SERVER: Cell<bool> = const { Cell::new(false) };
}

/// Runs `scenario` with every [`TwoNodeCluster`] it starts fed by one in-process API
/// server (cluster mode, `--kubeconfig`) instead of a model file: the same scenario,
/// the other source.
pub fn fed_by_api_server<T>(scenario: impl FnOnce() -> T) -> T {
    FED_BY_API_SERVER.with(|fed| fed.set(true));
    let result = scenario();
    FED_BY_API_SERVER.with(|fed| fed.set(false));
    result
}

/// `ip:port` of node `i`.
pub fn node_addr(i: usize, port: u16) -> SocketAddr {
    at(HOST_IPS[i], port)
}
