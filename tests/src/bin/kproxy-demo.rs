//! `cargo xtask demo`: the seed article's cluster on one machine, served by kproxy.
//!
//! A node namespace routes between the two hello-app pods, a client pod and an external
//! client; `kproxy run` programs the hello-app Service from `examples/` (eBPF or
//! iptables mode); requests go through the ClusterIP and the NodePort; the split between
//! the pods is printed, then the datapath's state beside the iptables chains kube-proxy
//! would write. With `--xdp` (eBPF mode) the node's external link runs the XDP program
//! too (`kproxy run --xdp-iface`), and the demo shows the mode the agent chose and what
//! XDP translated. With `--two-nodes` it builds the seed as it is, on the two-node bed
//! ([`kproxy_testbed::two_node`]): pod A on host1, pod B on host2, an agent per node; the
//! NodePort is tried on both nodes and each node's datapath is shown. It waits for Ctrl-C (or exits at once with `--once`) and removes
//! everything it created, also when it fails half-way.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail};
use kproxy::{agent::signals, ebpf::DatapathMaps};
use kproxy_testbed::{
    agent::{Agent, run_kproxy},
    cgroup::TestCgroup,
    cluster::{self, Mode},
    hello::{HelloServer, http_get_hostname},
    netns::NetNs,
    tempdir::TempDir,
    topology::{NODE_IP, Topology},
    two_node::{self, Bed},
};

const POD_A: (&str, Ipv4Addr) = ("hello-app-58d97c88d4-h7s2n", Ipv4Addr::new(172, 16, 166, 130));
const POD_B: (&str, Ipv4Addr) = ("hello-app-58d97c88d4-pkh8c", Ipv4Addr::new(172, 16, 192, 89));
const CLIENT: (&str, Ipv4Addr) = ("client", Ipv4Addr::new(172, 16, 166, 140));
const CLUSTER_IP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 104, 81, 240), 80);
const NODE_PORT: u16 = 30811;
/// How the split names requests that got no answer.
const NO_ANSWER: &str = "(no answer)";
const SERVICE_CHAIN: &str = "KUBE-SVC-YG6ZEOBCLVGD3AJB";

struct Options {
    mode: Mode,
    /// The seed as it is (pod A on host1, pod B on host2) instead of one node.
    two_nodes: bool,
    once: bool,
    requests: usize,
    examples: PathBuf,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut mode = "ebpf".to_string();
    let mut xdp = false;
    let mut opts = Options {
        mode: Mode::Ebpf,
        two_nodes: false,
        once: false,
        requests: 20,
        examples: PathBuf::from("examples"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => mode = args.next().context("--mode needs ebpf or iptables")?,
            "--once" => opts.once = true,
            "--two-nodes" => opts.two_nodes = true,
            "--xdp" => xdp = true,
            "--requests" => opts.requests = args.next().context("--requests needs a number")?.parse()?,
            "--examples" => opts.examples = args.next().context("--examples needs a directory")?.into(),
            other => bail!(
                "unknown argument {other:?} (use --mode ebpf|iptables, --xdp, --two-nodes, --once, --requests N, --examples DIR)"
            ),
        }
    }
    // TC only on the external link by default; with --xdp, XDP in front of it.
    opts.mode = match (mode.as_str(), xdp) {
        ("ebpf", false) => Mode::Ebpf,
        ("ebpf", true) => Mode::EbpfXdp,
        ("iptables", false) => Mode::Iptables,
        ("iptables", true) => bail!("--xdp needs --mode ebpf"),
        _ => bail!("--mode must be ebpf or iptables, not {mode:?}"),
    };
    Ok(opts)
}

fn main() {
    if let Err(err) = run() {
        eprintln!("demo failed: {err:#}");
        std::process::exit(1);
    }
}

/// Removes the datapath when the demo ends, however it ends.
struct CleanupOnDrop<'a> {
    node: &'a NetNs,
    pin_path: String,
}

impl Drop for CleanupOnDrop<'_> {
    fn drop(&mut self) {
        let out = run_kproxy(self.node, &["cleanup", "--pin-path", &self.pin_path]);
        if !out.status.success() {
            eprintln!("kproxy cleanup: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn run() -> anyhow::Result<()> {
    let opts = parse_args()?;
    let stop = signals::install().context("sigaction")?;
    let model = opts.examples.join("hello-app.yaml");
    let config = opts.examples.join("kube-proxy-config.yaml");
    anyhow::ensure!(
        model.exists(),
        "{} not found (run from the repository root)",
        model.display()
    );
    if opts.two_nodes {
        two_nodes(&opts, &model, &config)?;
    } else {
        one_node(&opts, &model, &config)?;
    }
    if !opts.once {
        println!("\nThe cluster keeps running; press Ctrl-C to remove it.");
        while !signals::stopped(stop) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("\n== Removing the agents, the datapath and the namespaces");
    Ok(())
}

/// The seed on one node: both pods behind the node that receives the traffic.
fn one_node(opts: &Options, model: &Path, config: &Path) -> anyhow::Result<()> {
    println!("== Building the seed's cluster: a node, two hello-app pods, a client pod, an external client");
    let topo = Topology::new(&[POD_A, POD_B, CLIENT]);
    let _servers = hello_servers(|name| &topo.pod(name).ns);
    for pod in &topo.pods {
        println!(
            "   pod {:<28} {:<16} (veth {} on the node)",
            pod.name, pod.ip, pod.host_iface
        );
    }
    println!(
        "   node {NODE_IP} on {}, external client on the same link",
        topo.node_external_iface
    );

    let pin_path = format!("/sys/fs/bpf/kproxy-demo-{}", std::process::id());
    // The socket-LB programs' cgroup: the demo's own (dropped after the cleanup below).
    let cgroup = TestCgroup::new("demo");
    let _cleanup = CleanupOnDrop {
        node: &topo.node,
        pin_path: pin_path.clone(),
    };
    let args = cluster::run_args(opts.mode, model, config, Path::new(&pin_path), cgroup.path());
    println!("\n== kproxy {}", args.join(" "));
    let mut agent = Agent::start(&topo.node, &args);
    print_first_sync(&mut agent);

    show_split(
        opts,
        "the client pod",
        &topo.pod(CLIENT.0).ns,
        SocketAddr::V4(CLUSTER_IP),
    );
    let node_port = SocketAddr::V4(SocketAddrV4::new(NODE_IP, NODE_PORT));
    show_split(opts, "the external client", &topo.external, node_port);
    show_xdp(opts, &topo.node_external_iface, &pin_path)?;
    show_export(model, config)?;
    show_programmed(opts, "", &topo.node, &pin_path)?;
    agent.stop();
    Ok(())
}

/// The seed as it is: pod A on host1, pod B on host2, an agent on each node.
fn two_nodes(opts: &Options, model: &Path, config: &Path) -> anyhow::Result<()> {
    println!(
        "== Building the seed's cluster: host1 and host2 on a LAN, pod A on host1, pod B on host2, a client pod, an external client"
    );
    let bed = Bed::new(&[
        (POD_A.0, 0, POD_A.1),
        (POD_B.0, 1, POD_B.1),
        (CLIENT.0, 0, CLIENT.1),
    ]);
    let _servers = hello_servers(|name| &bed.pod(name).ns);
    for node in &bed.nodes {
        println!("   node {} {} on {}", node.name, node.ip, node.lan_iface);
        for pod in &node.pods {
            println!(
                "     pod {:<28} {:<16} (veth {})",
                pod.name, pod.ip, pod.host_iface
            );
        }
    }
    println!("   external client {} on the LAN", two_node::EXTERNAL_CLIENTS[0]);

    let dir = TempDir::new("demo");
    let seed_config =
        std::fs::read_to_string(config).with_context(|| format!("read {}", config.display()))?;
    anyhow::ensure!(
        seed_config.contains("hostnameOverride: host1"),
        "{} does not name host1",
        config.display()
    );
    // One socket-LB cgroup per node, the demo's own (dropped after the cleanups).
    let cgroups: Vec<TestCgroup> = bed.nodes.iter().map(|_| TestCgroup::new("demo")).collect();
    let mut cleanups = Vec::new();
    let mut agents = Vec::new();
    let mut pin_paths = Vec::new();
    for (node, cgroup) in bed.nodes.iter().zip(&cgroups) {
        let config = dir.path().join(format!("kube-proxy-config-{}.yaml", node.name));
        std::fs::write(
            &config,
            seed_config.replace(
                "hostnameOverride: host1",
                &format!("hostnameOverride: {}", node.name),
            ),
        )?;
        let pin_path = format!("/sys/fs/bpf/kproxy-demo-{}-{}", std::process::id(), node.name);
        cleanups.push(CleanupOnDrop {
            node: &node.ns,
            pin_path: pin_path.clone(),
        });
        let args = node.agent_args(opts.mode, model, &config, Path::new(&pin_path), cgroup.path());
        println!("\n== on {}: kproxy {}", node.name, args.join(" "));
        let mut agent = Agent::start(&node.ns, &args);
        print_first_sync(&mut agent);
        agents.push(agent);
        pin_paths.push(pin_path);
    }

    show_split(
        opts,
        "the client pod on host1",
        &bed.pod(CLIENT.0).ns,
        SocketAddr::V4(CLUSTER_IP),
    );
    for node in &bed.nodes {
        let node_port = SocketAddr::V4(SocketAddrV4::new(node.ip, NODE_PORT));
        show_split(opts, "the external client", &bed.externals[0], node_port);
    }
    for (node, pin_path) in bed.nodes.iter().zip(&pin_paths) {
        show_xdp(opts, &node.lan_iface, pin_path)?;
    }
    show_export(model, config)?;
    for (node, pin_path) in bed.nodes.iter().zip(&pin_paths) {
        show_programmed(opts, &format!(" on {}", node.name), &node.ns, pin_path)?;
    }
    for agent in &mut agents {
        agent.stop();
    }
    Ok(())
}

/// The hello-app in both pods, each in the namespace `ns_of` its name.
fn hello_servers<'a>(ns_of: impl Fn(&str) -> &'a NetNs) -> Vec<HelloServer> {
    [POD_A, POD_B]
        .iter()
        .map(|(name, ip)| HelloServer::start(ns_of(name), SocketAddr::V4(SocketAddrV4::new(*ip, 8080)), name))
        .collect()
}

/// Waits for the agent's first sync and prints it (and the XDP mode it chose).
fn print_first_sync(agent: &mut Agent) {
    agent.wait_for_log("sync #1", 1, Duration::from_secs(15));
    for line in agent
        .log()
        .lines()
        .filter(|l| l.contains("sync #1") || l.contains("xdp on "))
    {
        println!("   {}", line.trim());
    }
}

/// Sends the requests from `who` (in `ns`) to `target` and prints the split.
fn show_split(opts: &Options, who: &str, ns: &NetNs, target: SocketAddr) {
    let kind = if target == SocketAddr::V4(CLUSTER_IP) {
        "ClusterIP"
    } else {
        "NodePort"
    };
    println!(
        "\n== {} requests from {who} to the {kind} {target}",
        opts.requests
    );
    print_split(&tally(ns, target, opts.requests));
}

/// With XDP, what the program on `iface` translated.
fn show_xdp(opts: &Options, iface: &str, pin_path: &str) -> anyhow::Result<()> {
    if opts.mode != Mode::EbpfXdp {
        return Ok(());
    }
    let maps = DatapathMaps::open_pinned(Path::new(pin_path))?;
    let events = maps.events()?;
    let count = |name: &str| events.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
    println!(
        "   XDP on {iface} translated {} packets: {} sent straight to a pod veth, {} through the stack",
        count("xdp_redirect") + count("xdp_pass_translated"),
        count("xdp_redirect"),
        count("xdp_pass_translated")
    );
    Ok(())
}

/// The service's chains as kube-proxy would program them.
fn show_export(model: &Path, config: &Path) -> anyhow::Result<()> {
    println!("\n== What kube-proxy (iptables mode) would program: kproxy export iptables --format list");
    let (model, config) = (model.display().to_string(), config.display().to_string());
    let export = kproxy_out(&[
        "export", "iptables", "--model", &model, "--config", &config, "--format", "list",
    ])?;
    for chain in export
        .split("\n\n")
        .filter(|c| c.contains(SERVICE_CHAIN) || c.starts_with("Chain KUBE-SEP-"))
    {
        println!("{}\n", chain.trim_end());
    }
    Ok(())
}

/// What the agent in `node` programmed: the live chain, or `kproxy inspect`.
fn show_programmed(opts: &Options, on: &str, node: &NetNs, pin_path: &str) -> anyhow::Result<()> {
    if opts.mode == Mode::Iptables {
        println!("== What kproxy programmed{on}: the live chain in the node's nat table");
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.name()))
            .args(["iptables", "-t", "nat", "-n", "-v", "-L", SERVICE_CHAIN])
            .output()
            .context("run iptables -L in the node namespace")?;
        println!("{}", String::from_utf8_lossy(&out.stdout));
    } else {
        println!("== What kproxy programmed{on}: kproxy inspect --pin-path {pin_path}");
        println!("{}", kproxy_out(&["inspect", "--pin-path", pin_path])?);
    }
    Ok(())
}

/// `kproxy ARGS` (pure commands, no namespace needed) → stdout.
fn kproxy_out(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(kproxy_testbed::agent::kproxy_bin())
        .args(args)
        .output()
        .context("run kproxy")?;
    anyhow::ensure!(
        out.status.success(),
        "kproxy {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Who answered `requests` HTTP requests from `ns` to `target`; unanswered ones are
/// counted as [`NO_ANSWER`] (the first error beside it).
fn tally(ns: &NetNs, target: SocketAddr, requests: usize) -> BTreeMap<String, usize> {
    let mut split = BTreeMap::new();
    let mut first_error = None;
    for _ in 0..requests {
        let pod = http_get_hostname(ns, target).unwrap_or_else(|e| {
            first_error.get_or_insert(e);
            NO_ANSWER.to_string()
        });
        *split.entry(pod).or_insert(0) += 1;
    }
    if let Some(e) = first_error {
        println!("   {NO_ANSWER}: {e}");
    }
    split
}

fn print_split(split: &BTreeMap<String, usize>) {
    let total: usize = split.values().sum();
    for (pod, n) in split {
        println!("   {pod:<28} {n:>3}  {}", "#".repeat(*n * 40 / total.max(1)));
    }
}
