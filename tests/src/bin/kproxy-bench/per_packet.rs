//! The programs' own cost per packet, as the kernel times BPF_PROG_TEST_RUN: one
//! NodePort frame per run (so every run sees the original frame), through the TC
//! program, or through XDP arriving on an interface whose FIB knows the backend (so
//! XDP's figure includes the route lookup and the redirect), with the N services'
//! NodePorts in the maps. No topology and no agent: the maps are seeded directly.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use anyhow::Context as _;
use aya::programs::Program;
use kproxy::{
    ebpf::{self, BackendId, Frontend, FrontendOptions},
    model::Protocol,
};
use kproxy_testbed::{
    forwarding::{FibNs, seed_node_port},
    packet::{ACK, SYN, tcp, udp},
    pins::PinDir,
    prog_test_run,
};

use crate::{model, modes::Mode, report::Metric};

/// The kinds of frame measured, each with its figure.
pub const KINDS: [Metric; 4] = [
    Metric::TestRunTcpEstablishedNs,
    Metric::TestRunUdpEstablishedNs,
    Metric::TestRunTcpNewFlowNs,
    Metric::TestRunNotServiceNs,
];

fn sa(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

/// Frame number `run` of `kind`, to the last service's NodePort: an established flow
/// repeats one frame, a new flow changes the client port every run (64 000 apart
/// before they repeat, far more than the test conntrack table holds).
fn frame(kind: Metric, node_port: u16, run: u32) -> Vec<u8> {
    let client = |port: u16| sa([198, 51, 100, 20], port);
    let np = sa(FibNs::NODE_IP, node_port);
    let request = b"GET / HTTP/1.1\r\n\r\n";
    match kind {
        Metric::TestRunTcpEstablishedNs => tcp(client(5555), np, ACK, request),
        Metric::TestRunUdpEstablishedNs => udp(client(5555), np, b"hello"),
        Metric::TestRunTcpNewFlowNs => tcp(client(1024 + (run % 64_000) as u16), np, SYN, b""),
        _ => tcp(client(5555), sa(FibNs::NODE_IP, 22), SYN, b""),
    }
}

/// Mean in-kernel ns per run over `runs` runs of `kind` through `program`.
fn mean_ns(
    program: &Program,
    kind: Metric,
    node_port: u16,
    runs: u32,
    ingress: Option<u32>,
) -> anyhow::Result<f64> {
    let mut total = Duration::ZERO;
    for run in 0..runs {
        let input = frame(kind, node_port, run);
        let out = prog_test_run::run(program, &input, ingress)
            .map_err(anyhow::Error::msg)
            .context("BPF_PROG_TEST_RUN")?;
        total += out.duration;
    }
    Ok(total.as_nanos() as f64 / f64::from(runs.max(1)))
}

/// One figure per kind in [`KINDS`] for `mode`'s program (TC or XDP) with `services`
/// NodePort services, each the mean of `runs` runs.
pub fn measure(mode: Mode, services: usize, runs: u32) -> anyhow::Result<Vec<(Metric, f64)>> {
    let (program_name, xdp) = match mode {
        Mode::Tc => (ebpf::TC_INGRESS_PROGRAM, false),
        Mode::Xdp => (ebpf::XDP_PROGRAM, true),
        other => anyhow::bail!("no per-packet figure for mode {other}"),
    };
    let fib = FibNs::new("bpk");
    let pins = PinDir::new("bpk");
    let last = model::node_port(services - 1);
    fib.ns.run(|| {
        let mut dp = pins.load();
        let backend = sa(FibNs::BACKEND, model::TARGET_PORT);
        // The measured NodePort (TCP and UDP) is the last service's; the others fill the
        // map as the N-service model does.
        seed_node_port(&mut dp.maps, Ipv4Addr::from(FibNs::NODE_IP), last, &[backend]);
        for service in 0..services - 1 {
            let frontend = Frontend::NodePort {
                port: model::node_port(service),
                proto: Protocol::Tcp,
            };
            dp.maps
                .upsert_frontend(frontend, &[BackendId(1)], FrontendOptions::default())
                .context("seed a NodePort service")?;
        }
        let ingress = xdp.then_some(fib.in0);
        if xdp {
            dp.maps.set_xdp_targets(&[fib.out0]).context("set XDP targets")?;
        }
        let program = dp.ebpf.program(program_name).context("the program")?;
        KINDS
            .iter()
            .map(|&kind| Ok((kind, mean_ns(program, kind, last, runs, ingress)?)))
            .collect()
    })
}
