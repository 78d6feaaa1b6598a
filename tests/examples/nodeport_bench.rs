//! NodePort forwarding on this machine: kproxy's XDP and TC programs against kube-proxy's
//! iptables rules (rendered by kproxy's own exporter). Prints figures, asserts nothing;
//! run it as root after `cargo xtask build`:
//!
//! ```text
//! KPROXY_EBPF_OBJECT=$PWD/target/bpfel-unknown-none/release/kproxy \
//!     cargo run --release -p kproxy-testbed --example nodeport_bench [-- SECONDS ROUNDS SERVICES]
//! ```
//!
//! 1. Per packet: BPF_PROG_TEST_RUN of one NodePort packet through each program (the
//!    kernel's own timing, one run per call so every run sees the original frame): an
//!    established flow, a new flow, and traffic that is not for a service. XDP runs on an
//!    interface whose FIB knows the backend, so its figure includes the route lookup and
//!    the redirect.
//! 2. Connections per second: the seed topology (external client → node → two pods),
//!    sequential one-request TCP connections to the NodePort from two client threads
//!    for SECONDS (default 2), ROUNDS times (default 3, modes rotated each round; the
//!    median is printed), with SERVICES NodePort services programmed (default 1000: the
//!    hello-app plus fillers with the same two pods; iptables walks its rules for each
//!    new connection, kproxy looks up a hash). Modes: iptables (nft and legacy), TC
//!    ingress on every interface, XDP on the external link (native, to the stack), XDP
//!    redirecting to the pod veths (generic mode; native mode with GRO on in the pods).
//!
//! The machine is shared: compare modes within one run, as ratios.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use aya::programs::Program;
use kproxy::{
    bpf::{BackendId, Datapath, Frontend, Protocol, ServiceOptions},
    config::ProxyConfig,
    iptables::{self, RenderOptions, Runtime, jumps},
    model::{self, IpFamily, NodeInfo},
    netfilter::{self, Backend},
    programs,
};
use kproxy_testbed::{
    forwarding::{ExternalPath, FibNs, attach, event, seed_node_port},
    manifests::{CLUSTER_CIDR, NODE_NAME, NODE_PORT, TARGET_PORT, proxy_config, write_model},
    netns::{NetNs, unique_name},
    packet::{ACK, SYN, tcp, udp},
    pins::PinDir,
    prog_test_run,
    topology::{NODE_IP, Topology},
};

const POD_A: Ipv4Addr = Ipv4Addr::new(172, 16, 166, 130);
const POD_B: Ipv4Addr = Ipv4Addr::new(172, 16, 192, 89);
/// Test runs per per-packet figure.
const RUNS: u32 = 20_000;
/// Client threads in the connection loop.
const CLIENTS: usize = 2;
/// Hard caps on the connection loop, whatever SECONDS says.
const MAX_CONNECTIONS: u64 = 200_000;
const MAX_SECONDS: u64 = 10;
/// Filler NodePorts take 30000.. (skipping the hello-app's): at most the default range.
const MAX_SERVICES: usize = 2700;

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
        .min(MAX_SECONDS);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3).clamp(1, 9);
    let services: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
        .clamp(1, MAX_SERVICES);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    per_packet();
    connection_rate(Duration::from_secs(seconds), rounds, services);
}

// ---- 1. per packet ----

fn sa(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

/// Mean in-kernel ns per run of `frame(i)` through `program`, over `RUNS` runs.
fn mean_ns(program: &Program, frame: impl Fn(u32) -> Vec<u8>, ingress_ifindex: Option<u32>) -> f64 {
    let mut total = Duration::ZERO;
    for i in 0..RUNS {
        total += prog_test_run::run(program, &frame(i), ingress_ifindex)
            .expect("BPF_PROG_TEST_RUN")
            .duration;
    }
    total.as_nanos() as f64 / RUNS as f64
}

fn per_packet() {
    // NodePort traffic arrives on in0 and the backend is reachable through out0 with a
    // known neighbour, so XDP's FIB lookup succeeds and it redirects.
    let fib = FibNs::new("bpk");
    let (ns, in0, out0) = (&fib.ns, fib.in0, fib.out0);
    let pins = PinDir::new("bpk");
    println!("\nper packet (BPF_PROG_TEST_RUN, mean of {RUNS} runs, ns/packet):");
    println!("  {:<34} {:>10} {:>10}", "NodePort packet", "XDP", "TC ingress");
    ns.run(|| {
        let mut dp = pins.load();
        dp.maps
            .upsert_backend(BackendId(1), sa(FibNs::BACKEND, 8080))
            .unwrap();
        dp.maps
            .set_node_addresses(&[Ipv4Addr::from(FibNs::NODE_IP)])
            .unwrap();
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let f = Frontend::NodePort { port: 30080, proto };
            dp.maps
                .upsert_service(f, &[BackendId(1)], ServiceOptions::default())
                .unwrap();
        }
        dp.maps.set_xdp_targets(&[out0]).unwrap();
        let np = sa(FibNs::NODE_IP, 30080);
        let client = |port: u16| sa([198, 51, 100, 20], port);
        type Frame = Box<dyn Fn(u32) -> Vec<u8>>;
        let cases: [(&str, Frame, Frame); 4] = [
            (
                "TCP, established flow",
                Box::new(move |_| tcp(client(5555), np, ACK, b"GET / HTTP/1.1\r\n\r\n")),
                Box::new(move |_| tcp(client(5556), np, ACK, b"GET / HTTP/1.1\r\n\r\n")),
            ),
            (
                "UDP, established flow",
                Box::new(move |_| udp(client(5555), np, b"hello")),
                Box::new(move |_| udp(client(5556), np, b"hello")),
            ),
            (
                "TCP SYN, new flow each",
                Box::new(move |i| tcp(client(10_000 + (i % 50_000) as u16), np, SYN, b"")),
                Box::new(move |i| tcp(sa([198, 51, 100, 21], 10_000 + (i % 50_000) as u16), np, SYN, b"")),
            ),
            (
                "not for a service (passes)",
                Box::new(move |_| tcp(client(5555), sa(FibNs::NODE_IP, 22), SYN, b"")),
                Box::new(move |_| tcp(client(5555), sa(FibNs::NODE_IP, 22), SYN, b"")),
            ),
        ];
        for (name, xdp_frame, tc_frame) in &cases {
            let xdp = dp.ebpf.program(programs::XDP_PROGRAM).unwrap();
            let x = mean_ns(xdp, xdp_frame, Some(in0));
            let tc = dp.ebpf.program(programs::TC_INGRESS_PROGRAM).unwrap();
            let t = mean_ns(tc, tc_frame, None);
            println!("  {name:<34} {x:>10.0} {t:>10.0}");
        }
        println!(
            "  (XDP redirected {} packets; conntrack reused {} times, {} new flows)",
            event(&dp.maps, "xdp_redirect"),
            event(&dp.maps, "ct_hit"),
            event(&dp.maps, "new_flow")
        );
    });
}

// ---- 2. connections per second ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    IptablesNft,
    IptablesLegacy,
    Kproxy(ExternalPath),
}

const MODES: [Mode; 6] = [
    Mode::IptablesNft,
    Mode::IptablesLegacy,
    Mode::Kproxy(ExternalPath::Tc),
    Mode::Kproxy(ExternalPath::XdpToStack),
    Mode::Kproxy(ExternalPath::XdpGenericRedirect),
    Mode::Kproxy(ExternalPath::XdpNativeRedirect),
];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::IptablesNft => "iptables (nft), kube-proxy rules",
            Mode::IptablesLegacy => "iptables (legacy), kube-proxy rules",
            Mode::Kproxy(ExternalPath::Tc) => "kproxy TC ingress only",
            Mode::Kproxy(ExternalPath::XdpToStack) => "kproxy XDP native, to the stack",
            Mode::Kproxy(ExternalPath::XdpGenericRedirect) => "kproxy XDP generic, redirect",
            Mode::Kproxy(ExternalPath::XdpNativeRedirect) => "kproxy XDP native, redirect (GRO)",
        }
    }
}

/// An HTTP server answering each connection inline (blocking accept, no polling), so the
/// loop measures forwarding, not the server.
struct FastServer {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    ns_name: String,
    thread: Option<thread::JoinHandle<()>>,
}

impl FastServer {
    fn start(ns: &NetNs, addr: SocketAddr) -> Self {
        let listener = ns.run(|| TcpListener::bind(addr).expect("bind bench server"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    continue;
                };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                if matches!(conn.read(&mut buf), Ok(n) if n > 0) {
                    let _ = conn.write_all(response);
                }
            }
        });
        FastServer {
            stop,
            addr,
            ns_name: ns.name().to_string(),
            thread: Some(thread),
        }
    }
}

impl Drop for FastServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept with one last connection from inside its namespace.
        let (addr, path) = (self.addr, format!("/run/netns/{}", self.ns_name));
        let _ = thread::spawn(move || {
            if let Ok(f) = std::fs::File::open(&path)
                && nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
            {
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
            }
        })
        .join();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sysctl(ns: &NetNs, path: &str, value: &str) {
    ns.run(|| std::fs::write(path, value).unwrap_or_else(|e| panic!("write {path}: {e}")));
}

/// One connection: connect, request, read to EOF.
fn one_request(target: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET / HTTP/1.1\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 256];
    let mut got = 0;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got += n;
    }
    got > 0
}

/// Connections per second from `CLIENTS` threads in `ns` to `target` for `duration`
/// (after a short warm-up), and the number of failed connections.
fn rate(ns: &NetNs, target: SocketAddr, duration: Duration) -> (f64, u64) {
    ns.run(|| {
        for _ in 0..100 {
            one_request(target);
        }
    });
    let path = format!("/run/netns/{}", ns.name());
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let path = path.clone();
            thread::spawn(move || {
                let f = std::fs::File::open(&path).expect("open netns");
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let (mut ok, mut failed) = (0u64, 0u64);
                let deadline = Instant::now() + duration;
                while Instant::now() < deadline && ok + failed < MAX_CONNECTIONS / CLIENTS as u64 {
                    if one_request(target) {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for t in threads {
        let (o, f) = t.join().expect("client thread");
        ok += o;
        failed += f;
    }
    (ok as f64 / start.elapsed().as_secs_f64(), failed)
}

/// The NodePorts of the `services - 1` filler services (the hello-app's is skipped).
fn filler_ports(services: usize) -> impl Iterator<Item = u16> {
    (30000..).filter(|&p| p != NODE_PORT).take(services - 1)
}

/// Services and EndpointSlices for the filler NodePorts, each served by both pods, in
/// files of at most 250 services (the YAML reader caps documents per file).
fn filler_manifests(services: usize) -> Vec<String> {
    let mut files = Vec::new();
    let mut out = String::new();
    for (i, port) in filler_ports(services).enumerate() {
        if i > 0 && i % 250 == 0 {
            files.push(std::mem::take(&mut out));
        }
        let ip = Ipv4Addr::new(10, 96, 100 + (i / 250) as u8, 1 + (i % 250) as u8);
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: bench-filler-{i:04}, namespace: default}}\n\
             spec:\n  type: NodePort\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  ports:\n  \
             - {{name: http, protocol: TCP, port: 80, targetPort: {TARGET_PORT}, nodePort: {port}}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: bench-filler-{i:04}-abc\n  \
             namespace: default\n  labels: {{kubernetes.io/service-name: bench-filler-{i:04}}}\n\
             addressType: IPv4\nports:\n- {{name: http, protocol: TCP, port: {TARGET_PORT}}}\nendpoints:\n"
        );
        for pod in [POD_A, POD_B] {
            let _ = write!(
                out,
                "- addresses: [\"{pod}\"]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  \
                 nodeName: {NODE_NAME}\n"
            );
        }
        out.push_str("---\n");
    }
    files.push(out);
    files
}

/// The hello-app's and the fillers' kube-proxy rules, as kproxy's exporter renders them
/// for this node; prints where the hello-app's NodePort rule sits.
fn kube_proxy_rules(dir: &std::path::Path, services: usize) -> (String, String) {
    let model_path = dir.join("hello-app.yaml");
    write_model(&model_path, &[POD_A, POD_B]);
    let fillers = dir.join("fillers");
    let _ = std::fs::remove_dir_all(&fillers);
    std::fs::create_dir_all(&fillers).expect("fillers dir");
    for (n, text) in filler_manifests(services).iter().enumerate() {
        std::fs::write(fillers.join(format!("fillers-{n}.yaml")), text).expect("write fillers");
    }
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, proxy_config(NODE_NAME, CLUSTER_CIDR)).expect("write config");
    let config = ProxyConfig::load(Some(&config_path)).expect("config");
    let mut node = NodeInfo::new(NODE_NAME, IpFamily::V4);
    node.node_ip = Some(NODE_IP.into());
    node.addresses.push(NODE_IP.into());
    let model = model::load(&[model_path, fillers], &config, &node).expect("model");
    let options = RenderOptions::new(&config, &node, Runtime::default()).expect("render options");
    let ruleset = iptables::render(&model, &options);
    let payload = iptables::restore::payload(&ruleset, None);
    let nodeports: Vec<&str> = payload
        .lines()
        .filter(|l| l.starts_with("-A KUBE-NODEPORTS") && l.contains("--dport"))
        .collect();
    let at = nodeports
        .iter()
        .position(|l| l.contains(&format!("--dport {NODE_PORT} ")));
    println!(
        "    (iptables: {} rules; the hello-app's TCP NodePort is rule {} of {} in KUBE-NODEPORTS, \
         after every KUBE-SERVICES rule)",
        payload.lines().filter(|l| l.starts_with("-A ")).count(),
        at.map_or("?".to_string(), |i| (i + 1).to_string()),
        nodeports.len()
    );
    (payload, jumps::restore_payload(&jumps::jump_rules(&options)))
}

/// Builds a fresh topology, sets `mode` up on its node, and measures.
fn measure(mode: Mode, duration: Duration, dir: &std::path::Path, services: usize) -> (f64, u64) {
    let topo = Topology::new(&[("a", POD_A), ("b", POD_B)]);
    // TIME_WAIT sockets on the servers would collide with reused client ports.
    for pod in &topo.pods {
        sysctl(&pod.ns, "/proc/sys/net/ipv4/tcp_max_tw_buckets", "0");
    }
    sysctl(&topo.external, "/proc/sys/net/ipv4/tcp_max_tw_buckets", "0");
    sysctl(
        &topo.external,
        "/proc/sys/net/ipv4/ip_local_port_range",
        "1024 65535",
    );
    let _servers: Vec<FastServer> = topo
        .pods
        .iter()
        .map(|p| FastServer::start(&p.ns, SocketAddr::V4(SocketAddrV4::new(p.ip, TARGET_PORT))))
        .collect();
    let pins = PinDir::new("bcr");
    let mut dp: Option<Datapath> = None;
    match mode {
        Mode::IptablesNft | Mode::IptablesLegacy => {
            let backend = if mode == Mode::IptablesNft {
                Backend::Nft
            } else {
                Backend::Legacy
            };
            let (payload, jumps) = kube_proxy_rules(dir, services);
            topo.node.run(|| {
                netfilter::restore(backend, &payload).expect("iptables-restore");
                netfilter::restore(backend, &jumps).expect("iptables-restore the jumps");
            });
        }
        Mode::Kproxy(path) => {
            let mut d = pins.load();
            let backends = [POD_A, POD_B].map(|ip| SocketAddrV4::new(ip, TARGET_PORT));
            seed_node_port(&mut d.maps, NODE_IP, NODE_PORT, &backends);
            for port in filler_ports(services) {
                let f = Frontend::NodePort {
                    port,
                    proto: Protocol::Tcp,
                };
                d.maps
                    .upsert_service(f, &[BackendId(1), BackendId(2)], ServiceOptions::default())
                    .expect("filler NodePort");
            }
            attach(&topo, &mut d, path);
            dp = Some(d);
        }
    }
    let target = SocketAddr::V4(SocketAddrV4::new(NODE_IP, NODE_PORT));
    let result = rate(&topo.external, target, duration);
    if let Some(d) = &dp {
        let (redirected, passed) = (
            event(&d.maps, "xdp_redirect"),
            event(&d.maps, "xdp_pass_translated"),
        );
        if redirected + passed > 0 {
            println!(
                "    ({}: XDP redirected {redirected}, passed {passed} translated packets)",
                mode.label()
            );
        }
    }
    result
}

fn connection_rate(duration: Duration, rounds: usize, services: usize) {
    let dir = std::env::temp_dir().join(format!("kproxy-bench-{}", unique_name("bch")));
    std::fs::create_dir_all(&dir).expect("bench dir");
    println!(
        "\nNodePort connections per second ({services} NodePort services; external client → node → 2 pods; \
         {CLIENTS} client threads, one request per connection, {}s x {rounds} rounds, median [min-max]):",
        duration.as_secs()
    );
    let mut results: Vec<(Mode, Vec<f64>, u64)> = MODES.iter().map(|&m| (m, Vec::new(), 0)).collect();
    for round in 0..rounds {
        for k in 0..MODES.len() {
            let i = (k + round) % MODES.len();
            let (r, failed) = measure(MODES[i], duration, &dir, services);
            results[i].1.push(r);
            results[i].2 += failed;
        }
    }
    for (mode, mut rates, failed) in results {
        rates.sort_by(f64::total_cmp);
        println!(
            "  {:<38} {:>8.0} [{:.0}-{:.0}] conn/s{}",
            mode.label(),
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1],
            if failed > 0 {
                format!(" ({failed} failed)")
            } else {
                String::new()
            }
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _: PathBuf = dir;
}
