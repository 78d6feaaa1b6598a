//! `cargo xtask demo`: the seed article's cluster on one machine, served by kproxy.
//!
//! A node namespace routes between the two hello-app pods, a client pod and an external
//! client; `kproxy run` programs the hello-app Service from `examples/` (eBPF or
//! iptables mode); requests go through the ClusterIP and the NodePort; the split between
//! the pods is printed, then the datapath's state beside the iptables chains kube-proxy
//! would write. With `--xdp` (eBPF mode) the node's external link runs the XDP program
//! too (`kproxy run --xdp-iface`), and the demo shows the mode the agent chose and what
//! XDP translated. It waits for Ctrl-C (or exits at once with `--once`) and removes
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
    cluster::{self, Mode},
    hello::{HelloServer, http_get_hostname},
    netns::NetNs,
    topology::{NODE_IP, Topology},
};

const POD_A: (&str, Ipv4Addr) = ("hello-app-58d97c88d4-h7s2n", Ipv4Addr::new(172, 16, 166, 130));
const POD_B: (&str, Ipv4Addr) = ("hello-app-58d97c88d4-pkh8c", Ipv4Addr::new(172, 16, 192, 89));
const CLIENT: (&str, Ipv4Addr) = ("client", Ipv4Addr::new(172, 16, 166, 140));
const CLUSTER_IP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 104, 81, 240), 80);
const NODE_PORT: u16 = 30811;
const SERVICE_CHAIN: &str = "KUBE-SVC-YG6ZEOBCLVGD3AJB";

struct Options {
    mode: Mode,
    once: bool,
    requests: usize,
    examples: PathBuf,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut mode = "ebpf".to_string();
    let mut xdp = false;
    let mut opts = Options {
        mode: Mode::Ebpf,
        once: false,
        requests: 20,
        examples: PathBuf::from("examples"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mode" => mode = args.next().context("--mode needs ebpf or iptables")?,
            "--once" => opts.once = true,
            "--xdp" => xdp = true,
            "--requests" => opts.requests = args.next().context("--requests needs a number")?.parse()?,
            "--examples" => opts.examples = args.next().context("--examples needs a directory")?.into(),
            other => bail!(
                "unknown argument {other:?} (use --mode ebpf|iptables, --xdp, --once, --requests N, --examples DIR)"
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

    println!("== Building the seed's cluster: a node, two hello-app pods, a client pod, an external client");
    let topo = Topology::new(&[POD_A, POD_B, CLIENT]);
    let _servers: Vec<HelloServer> = [POD_A, POD_B]
        .iter()
        .map(|(name, ip)| {
            HelloServer::start(
                &topo.pod(name).ns,
                SocketAddr::V4(SocketAddrV4::new(*ip, 8080)),
                name,
            )
        })
        .collect();
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
    let _cleanup = CleanupOnDrop {
        node: &topo.node,
        pin_path: pin_path.clone(),
    };
    let (model_s, config_s) = (model.display().to_string(), config.display().to_string());
    let args = cluster::run_args(opts.mode, &model, &config, Path::new(&pin_path));
    println!("\n== kproxy {}", args.join(" "));
    let mut agent = Agent::start(&topo.node, &args);
    agent.wait_for_log("sync #1", 1, Duration::from_secs(15));
    for line in agent
        .log()
        .lines()
        .filter(|l| l.contains("sync #1") || l.contains("xdp on "))
    {
        println!("   {}", line.trim());
    }

    let cluster_ip = SocketAddr::V4(CLUSTER_IP);
    let node_port = SocketAddr::V4(SocketAddrV4::new(NODE_IP, NODE_PORT));
    println!(
        "\n== {} requests from the client pod to the ClusterIP {cluster_ip}",
        opts.requests
    );
    print_split(&tally(&topo.pod(CLIENT.0).ns, cluster_ip, opts.requests)?);
    println!(
        "\n== {} requests from the external client to the NodePort {node_port}",
        opts.requests
    );
    print_split(&tally(&topo.external, node_port, opts.requests)?);
    if opts.mode == Mode::EbpfXdp {
        let maps = DatapathMaps::open_pinned(Path::new(&pin_path))?;
        let events = maps.events()?;
        let count = |name: &str| events.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
        println!(
            "   XDP on {} translated {} packets: {} sent straight to a pod veth, {} through the stack",
            topo.node_external_iface,
            count("xdp_redirect") + count("xdp_pass_translated"),
            count("xdp_redirect"),
            count("xdp_pass_translated")
        );
    }

    println!("\n== What kube-proxy (iptables mode) would program: kproxy export iptables --format list");
    let export = kproxy_out(&[
        "export", "iptables", "--model", &model_s, "--config", &config_s, "--format", "list",
    ])?;
    for chain in export
        .split("\n\n")
        .filter(|c| c.contains(SERVICE_CHAIN) || c.starts_with("Chain KUBE-SEP-"))
    {
        println!("{}\n", chain.trim_end());
    }
    if opts.mode == Mode::Iptables {
        println!("== What kproxy programmed: the live chain in the node's nat table");
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", topo.node.name()))
            .args(["iptables", "-t", "nat", "-n", "-v", "-L", SERVICE_CHAIN])
            .output()
            .context("run iptables -L in the node namespace")?;
        println!("{}", String::from_utf8_lossy(&out.stdout));
    } else {
        println!("== What kproxy programmed: kproxy inspect --pin-path {pin_path}");
        println!("{}", kproxy_out(&["inspect", "--pin-path", &pin_path])?);
    }

    if !opts.once {
        println!("\nThe cluster keeps running; press Ctrl-C to remove it.");
        while !signals::stopped(stop) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("\n== Removing the agent, the datapath and the namespaces");
    agent.stop();
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

fn tally(ns: &NetNs, target: SocketAddr, requests: usize) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut split = BTreeMap::new();
    for _ in 0..requests {
        let pod = http_get_hostname(ns, target).map_err(|e| anyhow::anyhow!("request to {target}: {e}"))?;
        *split.entry(pod).or_insert(0) += 1;
    }
    Ok(split)
}

fn print_split(split: &BTreeMap<String, usize>) {
    let total: usize = split.values().sum();
    for (pod, n) in split {
        println!("   {pod:<28} {n:>3}  {}", "#".repeat(*n * 40 / total.max(1)));
    }
}
