//! Katran-style BPF_PROG_TEST_RUN fixtures for the datapath: each case seeds the maps,
//! runs packets through an entry point, and checks the verdict, the exact output bytes
//! (expected packets are built by etherparse, so their checksums are right by
//! construction; every output is also checked by an independent checksum sum) and the
//! conntrack/counter side effects. Every case loads into its own pin directory.
//!
//! The table runs against both entry points, `kproxy_tc_ingress` and `kproxy_xdp`: they
//! share the datapath (TC rewrites through the kernel's checksum helpers, XDP by RFC 1624
//! by hand), so every case must give the same bytes and side effects; verdicts are each
//! hook's own codes for the same outcome. With no XDP redirect targets seeded, XDP hands
//! what it translated to the stack (XDP_PASS); the redirect path has its own cases at the
//! end, in a namespace with a route and a neighbour to the backend.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    panic::{AssertUnwindSafe, catch_unwind},
    time::Duration,
};

use aya::programs::Program;
use kproxy::{
    bpf::{BackendId, DatapathMaps, Frontend, Protocol, ServiceId, ServiceOptions, ktime_now_ns},
    programs,
};
use kproxy_common::{
    CtEntry, CtKey,
    conntrack::{CT_DIR_REPLY, CT_DIR_SERVICE, CT_ST_CLOSING, CT_ST_ESTABLISHED},
    service::{PROTO_TCP, PROTO_UDP, be_addr, be_port},
};
use kproxy_testbed::{
    forwarding::{FibNs, event},
    packet::{
        ACK, FIN_ACK, SYN, SYN_ACK, arp, as_fragment, assert_checksums_valid, fix_ipv4_checksum, tcp, tcp6,
        udp, with_ipv4_options,
    },
    pins::PinDir,
    prog_test_run,
};

/// An entry point under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Tc,
    Xdp,
}

const HOOKS: [Hook; 2] = [Hook::Tc, Hook::Xdp];

/// What the program decides, independent of the hook's return codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// On to the stack (translated or untouched): TC_ACT_OK / XDP_PASS.
    Pass,
    /// TC_ACT_SHOT / XDP_DROP.
    Drop,
    /// XDP only: sent to the next hop's interface (XDP_REDIRECT).
    Redirect,
}
use Verdict::{Drop as DROP, Pass as PASS};

impl Hook {
    fn program(self) -> &'static str {
        match self {
            Hook::Tc => programs::TC_INGRESS_PROGRAM,
            Hook::Xdp => programs::XDP_PROGRAM,
        }
    }

    /// The hook's return code for `v`.
    fn code(self, v: Verdict) -> u32 {
        const TC_ACT_OK: u32 = 0;
        const TC_ACT_SHOT: u32 = 2;
        const XDP_DROP: u32 = 1;
        const XDP_PASS: u32 = 2;
        const XDP_REDIRECT: u32 = 4;
        match (self, v) {
            (Hook::Tc, Verdict::Pass) => TC_ACT_OK,
            (Hook::Tc, Verdict::Drop) => TC_ACT_SHOT,
            (Hook::Tc, Verdict::Redirect) => unreachable!("TC never redirects"),
            (Hook::Xdp, Verdict::Pass) => XDP_PASS,
            (Hook::Xdp, Verdict::Drop) => XDP_DROP,
            (Hook::Xdp, Verdict::Redirect) => XDP_REDIRECT,
        }
    }
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

// The cast of the fixtures.
const CLIENT: [u8; 4] = [10, 0, 1, 5];
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
const B1: [u8; 4] = [10, 0, 2, 7];
const B2: [u8; 4] = [10, 0, 2, 8];
const NODE_IP: [u8; 4] = [192, 168, 50, 1];
const NOT_NODE_IP: [u8; 4] = [192, 168, 50, 99];
const EXTERNAL_CLIENT: [u8; 4] = [198, 51, 100, 20];
const EXTERNAL_IP: [u8; 4] = [203, 0, 113, 10];
const MASQ: [u8; 4] = [169, 254, 42, 1];
const ID1: BackendId = BackendId(1);
const ID2: BackendId = BackendId(2);

fn cluster_tcp() -> Frontend {
    Frontend::Address {
        addr: sa(CLUSTER_IP, 80),
        proto: Protocol::Tcp,
    }
}

fn cluster_udp() -> Frontend {
    Frontend::Address {
        addr: sa(CLUSTER_IP, 53),
        proto: Protocol::Udp,
    }
}

fn node_port() -> Frontend {
    Frontend::NodePort {
        port: 30080,
        proto: Protocol::Tcp,
    }
}

/// Backends 1 (10.0.2.7:8080) and 2 (10.0.2.8:8080).
fn seed_backends(m: &mut DatapathMaps) {
    m.upsert_backend(ID1, sa(B1, 8080)).unwrap();
    m.upsert_backend(ID2, sa(B2, 8080)).unwrap();
}

fn seed_service(m: &mut DatapathMaps, f: Frontend, backends: &[BackendId]) -> ServiceId {
    m.upsert_service(f, backends, ServiceOptions::default()).unwrap()
}

fn ct_key(src: SocketAddrV4, dst: SocketAddrV4, proto: u8, dir: u8) -> CtKey {
    CtKey {
        saddr: be_addr(src.ip().octets()),
        daddr: be_addr(dst.ip().octets()),
        sport: be_port(src.port()),
        dport: be_port(dst.port()),
        proto,
        dir,
        _pad: [0; 2],
    }
}

/// Seeds both conntrack entries of an established TCP flow client → frontend → backend.
fn seed_flow(
    m: &mut DatapathMaps,
    svc: ServiceId,
    client: SocketAddrV4,
    frontend: SocketAddrV4,
    (bid, backend): (BackendId, SocketAddrV4),
    proto: u8,
    age: Duration,
) {
    let now = ktime_now_ns() - age.as_nanos() as u64;
    let e = CtEntry {
        last_seen_ns: now,
        created_ns: now,
        backend_id: bid.0,
        rev_nat_id: svc.0,
        frontend_addr: be_addr(frontend.ip().octets()),
        backend_addr: be_addr(backend.ip().octets()),
        client_addr: be_addr(client.ip().octets()),
        masq_addr: 0,
        frontend_port: be_port(frontend.port()),
        backend_port: be_port(backend.port()),
        client_port: be_port(client.port()),
        masq_port: be_port(client.port()),
        state: if proto == PROTO_TCP { CT_ST_ESTABLISHED } else { 0 },
        flags: 0,
        _pad: [0; 6],
    };
    m.conntrack_insert(ct_key(client, frontend, proto, CT_DIR_SERVICE), e)
        .unwrap();
    m.conntrack_insert(ct_key(backend, client, proto, CT_DIR_REPLY), e)
        .unwrap();
}

/// What the output packet must be.
enum Expect {
    /// Byte-identical to the input.
    Unchanged,
    /// Exactly these bytes.
    Exactly(Vec<u8>),
}

/// One packet through the program.
struct Step {
    input: Vec<u8>,
    verdict: Verdict,
    output: Expect,
}

type Seed = Box<dyn Fn(&mut DatapathMaps)>;
type Check = Box<dyn Fn(&DatapathMaps, &[Vec<u8>])>;

/// A fixture: map seeds, packets in order, then side-effect checks (given the outputs).
struct Case {
    name: &'static str,
    seed: Seed,
    steps: Vec<Step>,
    check: Check,
}

fn step(input: Vec<u8>, verdict: Verdict, output: Expect) -> Step {
    Step {
        input,
        verdict,
        output,
    }
}

/// Runs `input` through `program` once: (return code, output frame).
fn test_run(program: &Program, input: &[u8], ingress_ifindex: Option<u32>) -> Result<(u32, Vec<u8>), String> {
    prog_test_run::run(program, input, ingress_ifindex).map(|o| (o.code, o.frame))
}

/// Runs `steps` through `hook`'s program, checking each verdict and output; returns the
/// outputs.
fn run_steps(
    program: &Program,
    hook: Hook,
    steps: &[Step],
    ingress_ifindex: Option<u32>,
) -> Result<Vec<Vec<u8>>, String> {
    let mut outputs = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let (code, out) =
            test_run(program, &s.input, ingress_ifindex).map_err(|e| format!("step {i}: {e}"))?;
        if code != hook.code(s.verdict) {
            return Err(format!(
                "step {i}: return code {code} (expected {} = {:?})",
                hook.code(s.verdict),
                s.verdict
            ));
        }
        let ok = match &s.output {
            Expect::Unchanged => out == s.input,
            Expect::Exactly(p) => out == *p,
        };
        if !ok {
            let want = match &s.output {
                Expect::Unchanged => &s.input,
                Expect::Exactly(p) => p,
            };
            return Err(format!(
                "step {i}: output differs\n  got      {out:02x?}\n  expected {want:02x?}\n  input    {:02x?}",
                s.input
            ));
        }
        if !matches!(s.output, Expect::Unchanged) {
            catch_unwind(|| assert_checksums_valid(&out)).map_err(|_| format!("step {i}: bad checksum"))?;
        }
        outputs.push(out);
    }
    Ok(outputs)
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "side-effect check panicked".into())
}

fn run_case(case: &Case, hook: Hook) -> Result<(), String> {
    let pins = PinDir::new("fx");
    let mut dp = pins.load();
    (case.seed)(&mut dp.maps);
    let program = dp.ebpf.program(hook.program()).expect("program");
    let outputs = run_steps(program, hook, &case.steps, None)?;
    catch_unwind(AssertUnwindSafe(|| (case.check)(&dp.maps, &outputs))).map_err(panic_text)?;
    if hook == Hook::Xdp {
        // Without redirect targets, everything XDP translated went to the stack.
        let translated = case
            .steps
            .iter()
            .filter(|s| s.verdict == PASS && matches!(s.output, Expect::Exactly(_)))
            .count() as u64;
        let passed = event(&dp.maps, "xdp_pass_translated");
        if passed != translated || event(&dp.maps, "xdp_redirect") != 0 {
            return Err(format!(
                "xdp_pass_translated {passed} (expected {translated}), xdp_redirect {}",
                event(&dp.maps, "xdp_redirect")
            ));
        }
    }
    Ok(())
}

fn none() -> Check {
    Box::new(|_, _| {})
}

fn no_conntrack() -> Check {
    Box::new(|m, _| assert!(m.conntrack().unwrap().is_empty(), "conntrack must stay empty"))
}

fn cases() -> Vec<Case> {
    let client = sa(CLIENT, 40000);
    let vip = sa(CLUSTER_IP, 80);
    let b1 = sa(B1, 8080);
    let b2 = sa(B2, 8080);
    let payload = b"GET / HTTP/1.1\r\n\r\n";
    vec![
        Case {
            name: "ClusterIP TCP SYN: DNAT to the only backend, conntrack both ways, counters",
            seed: Box::new(|m| {
                seed_backends(m);
                seed_service(m, cluster_tcp(), &[ID1]);
            }),
            steps: vec![step(
                tcp(client, vip, SYN, b""),
                PASS,
                Expect::Exactly(tcp(client, b1, SYN, b"")),
            )],
            check: Box::new(move |m, out| {
                let svc = m.service_id(cluster_tcp()).unwrap().unwrap();
                let fwd = m
                    .conntrack_get(&ct_key(client, vip, PROTO_TCP, CT_DIR_SERVICE))
                    .unwrap()
                    .expect("service-direction entry");
                assert_eq!((fwd.backend_id, fwd.rev_nat_id), (1, svc.0));
                assert_eq!(fwd.state & CT_ST_ESTABLISHED, 0, "a SYN is not established");
                m.conntrack_get(&ct_key(b1, client, PROTO_TCP, CT_DIR_REPLY))
                    .unwrap()
                    .expect("reply-direction entry");
                assert_eq!(m.conntrack().unwrap().len(), 2);
                let c = m.service_counters(svc).unwrap();
                assert_eq!((c.packets, c.bytes, c.new_flows), (1, out[0].len() as u64, 1));
                assert_eq!(m.backend_counters(ID1).unwrap().packets, 1);
                assert_eq!(event(m, "new_flow"), 1);
            }),
        },
        Case {
            name: "established flow follows its conntrack entry to backend 2 (16 packets)",
            seed: Box::new(move |m| {
                seed_backends(m);
                let svc = seed_service(m, cluster_tcp(), &[ID1, ID2]);
                seed_flow(m, svc, client, vip, (ID2, b2), PROTO_TCP, Duration::ZERO);
            }),
            steps: (0..16)
                .map(|_| {
                    step(
                        tcp(client, vip, ACK, payload),
                        PASS,
                        Expect::Exactly(tcp(client, b2, ACK, payload)),
                    )
                })
                .collect(),
            check: Box::new(|m, _| {
                assert_eq!(event(m, "ct_hit"), 16);
                assert_eq!(event(m, "new_flow"), 0);
                assert_eq!(m.backend_counters(ID2).unwrap().packets, 16);
                assert_eq!(m.backend_counters(ID1).unwrap().packets, 0);
            }),
        },
        Case {
            name: "reply from the backend: source back to the ClusterIP",
            seed: Box::new(move |m| {
                seed_backends(m);
                let svc = seed_service(m, cluster_tcp(), &[ID1]);
                seed_flow(m, svc, client, vip, (ID1, b1), PROTO_TCP, Duration::ZERO);
            }),
            steps: vec![step(
                tcp(b1, client, SYN_ACK, b""),
                PASS,
                Expect::Exactly(tcp(vip, client, SYN_ACK, b"")),
            )],
            check: Box::new(|m, _| assert_eq!(event(m, "reply_nat"), 1)),
        },
        Case {
            name: "full TCP exchange: SYN, SYN-ACK, ACK, FIN both ways shorten both entries",
            seed: Box::new(|m| {
                seed_backends(m);
                seed_service(m, cluster_tcp(), &[ID1]);
            }),
            steps: vec![
                step(
                    tcp(client, vip, SYN, b""),
                    PASS,
                    Expect::Exactly(tcp(client, b1, SYN, b"")),
                ),
                step(
                    tcp(b1, client, SYN_ACK, b""),
                    PASS,
                    Expect::Exactly(tcp(vip, client, SYN_ACK, b"")),
                ),
                step(
                    tcp(client, vip, ACK, payload),
                    PASS,
                    Expect::Exactly(tcp(client, b1, ACK, payload)),
                ),
                step(
                    tcp(client, vip, FIN_ACK, b""),
                    PASS,
                    Expect::Exactly(tcp(client, b1, FIN_ACK, b"")),
                ),
            ],
            check: Box::new(move |m, _| {
                for key in [
                    ct_key(client, vip, PROTO_TCP, CT_DIR_SERVICE),
                    ct_key(b1, client, PROTO_TCP, CT_DIR_REPLY),
                ] {
                    let e = m.conntrack_get(&key).unwrap().expect("entry");
                    assert_ne!(e.state & CT_ST_ESTABLISHED, 0, "established: {key:?}");
                    assert_ne!(e.state & CT_ST_CLOSING, 0, "closing after FIN: {key:?}");
                }
            }),
        },
        Case {
            name: "a direct connection reusing a closed service flow's tuple passes untouched",
            seed: Box::new(|m| {
                seed_backends(m);
                seed_service(m, cluster_tcp(), &[ID1]);
            }),
            steps: vec![
                step(
                    tcp(client, vip, SYN, b""),
                    PASS,
                    Expect::Exactly(tcp(client, b1, SYN, b"")),
                ),
                step(
                    tcp(b1, client, SYN_ACK, b""),
                    PASS,
                    Expect::Exactly(tcp(vip, client, SYN_ACK, b"")),
                ),
                step(
                    tcp(client, vip, FIN_ACK, b""),
                    PASS,
                    Expect::Exactly(tcp(client, b1, FIN_ACK, b"")),
                ),
                // The same client port now talks to the pod itself, not the service.
                step(tcp(client, b1, SYN, b""), PASS, Expect::Unchanged),
                step(tcp(b1, client, SYN_ACK, b""), PASS, Expect::Unchanged),
                step(tcp(b1, client, ACK, payload), PASS, Expect::Unchanged),
            ],
            check: no_conntrack(),
        },
        Case {
            name: "NodePort on a node address: DNAT; the reply leaves from that node address",
            seed: Box::new(|m| {
                seed_backends(m);
                m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
                seed_service(m, node_port(), &[ID1]);
            }),
            steps: vec![
                step(
                    tcp(sa(EXTERNAL_CLIENT, 5555), sa(NODE_IP, 30080), SYN, b""),
                    PASS,
                    Expect::Exactly(tcp(sa(EXTERNAL_CLIENT, 5555), b1, SYN, b"")),
                ),
                step(
                    tcp(b1, sa(EXTERNAL_CLIENT, 5555), SYN_ACK, b""),
                    PASS,
                    Expect::Exactly(tcp(sa(NODE_IP, 30080), sa(EXTERNAL_CLIENT, 5555), SYN_ACK, b"")),
                ),
            ],
            check: Box::new(|m, _| {
                let flows = m.conntrack().unwrap();
                assert_eq!(flows.len(), 2);
                assert!(flows.iter().all(|f| f.frontend == sa(NODE_IP, 30080)));
            }),
        },
        Case {
            name: "NodePort UDP on a node address: DNAT with a valid checksum; the reply leaves from the NodePort",
            seed: Box::new(|m| {
                m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
                m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
                seed_service(
                    m,
                    Frontend::NodePort {
                        port: 30053,
                        proto: Protocol::Udp,
                    },
                    &[ID1],
                );
            }),
            steps: vec![
                step(
                    udp(sa(EXTERNAL_CLIENT, 5555), sa(NODE_IP, 30053), b"query"),
                    PASS,
                    Expect::Exactly(udp(sa(EXTERNAL_CLIENT, 5555), sa(B1, 5353), b"query")),
                ),
                step(
                    udp(sa(B1, 5353), sa(EXTERNAL_CLIENT, 5555), b"answer"),
                    PASS,
                    Expect::Exactly(udp(sa(NODE_IP, 30053), sa(EXTERNAL_CLIENT, 5555), b"answer")),
                ),
            ],
            check: Box::new(|m, _| {
                let flows = m.conntrack().unwrap();
                assert_eq!(flows.len(), 2);
                assert!(
                    flows
                        .iter()
                        .all(|f| f.proto == PROTO_UDP && f.frontend == sa(NODE_IP, 30053))
                );
            }),
        },
        Case {
            name: "NodePort port on an address that is not the node's: untouched",
            seed: Box::new(|m| {
                seed_backends(m);
                m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
                seed_service(m, node_port(), &[ID1]);
            }),
            steps: vec![step(
                tcp(sa(EXTERNAL_CLIENT, 5555), sa(NOT_NODE_IP, 30080), SYN, b""),
                PASS,
                Expect::Unchanged,
            )],
            check: no_conntrack(),
        },
        Case {
            name: "externalIP / LoadBalancer IP frontend: DNAT",
            seed: Box::new(|m| {
                seed_backends(m);
                seed_service(
                    m,
                    Frontend::Address {
                        addr: sa(EXTERNAL_IP, 443),
                        proto: Protocol::Tcp,
                    },
                    &[ID2],
                );
            }),
            steps: vec![step(
                tcp(sa(EXTERNAL_CLIENT, 6000), sa(EXTERNAL_IP, 443), SYN, b""),
                PASS,
                Expect::Exactly(tcp(sa(EXTERNAL_CLIENT, 6000), b2, SYN, b"")),
            )],
            check: none(),
        },
        Case {
            name: "UDP: DNAT with a valid checksum, reply reverse-NATed",
            seed: Box::new(|m| {
                m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
                seed_service(m, cluster_udp(), &[ID1]);
            }),
            steps: vec![
                step(
                    udp(client, sa(CLUSTER_IP, 53), b"query"),
                    PASS,
                    Expect::Exactly(udp(client, sa(B1, 5353), b"query")),
                ),
                step(
                    udp(sa(B1, 5353), client, b"answer"),
                    PASS,
                    Expect::Exactly(udp(sa(CLUSTER_IP, 53), client, b"answer")),
                ),
            ],
            check: Box::new(move |m, _| {
                m.conntrack_get(&ct_key(client, sa(CLUSTER_IP, 53), PROTO_UDP, CT_DIR_SERVICE))
                    .unwrap()
                    .expect("UDP entry");
            }),
        },
        Case {
            name: "UDP with a zero checksum: DNAT keeps it zero",
            seed: Box::new(|m| {
                m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
                seed_service(m, cluster_udp(), &[ID1]);
            }),
            steps: vec![step(
                zero_udp_checksum(udp(client, sa(CLUSTER_IP, 53), b"query")),
                PASS,
                Expect::Exactly(zero_udp_checksum(udp(client, sa(B1, 5353), b"query"))),
            )],
            check: none(),
        },
        Case {
            name: "no service at the destination: untouched, no conntrack",
            seed: Box::new(|m| {
                seed_backends(m);
                seed_service(m, cluster_tcp(), &[ID1]);
            }),
            steps: vec![
                step(
                    tcp(client, sa([10, 96, 0, 99], 80), SYN, b""),
                    PASS,
                    Expect::Unchanged,
                ),
                step(tcp(client, sa(CLUSTER_IP, 81), SYN, b""), PASS, Expect::Unchanged),
                step(
                    udp(client, vip, b"udp to a tcp frontend"),
                    PASS,
                    Expect::Unchanged,
                ),
                step(
                    tcp(b1, sa([10, 0, 1, 9], 1234), SYN_ACK, b""),
                    PASS,
                    Expect::Unchanged,
                ),
            ],
            check: no_conntrack(),
        },
        Case {
            name: "short and malformed packets, IP options, fragments, ARP, IPv6: untouched",
            seed: Box::new(|m| {
                seed_backends(m);
                seed_service(m, cluster_tcp(), &[ID1]);
                seed_service(m, cluster_udp(), &[ID1]);
            }),
            steps: vec![
                // IPv4 header only (the kernel's test run refuses shorter IPv4 frames).
                step(tcp(client, vip, SYN, b"")[..34].to_vec(), PASS, Expect::Unchanged),
                // IPv4 header, TCP header cut after 10 bytes.
                step(tcp(client, vip, SYN, b"")[..44].to_vec(), PASS, Expect::Unchanged),
                step(
                    with_ipv4_options(&tcp(client, vip, SYN, b"")),
                    PASS,
                    Expect::Unchanged,
                ),
                step(
                    as_fragment(&udp(client, sa(CLUSTER_IP, 53), b"first"), true, 0),
                    PASS,
                    Expect::Unchanged,
                ),
                step(
                    as_fragment(&udp(client, sa(CLUSTER_IP, 53), b"later"), false, 8),
                    PASS,
                    Expect::Unchanged,
                ),
                step(arp(CLIENT, CLUSTER_IP), PASS, Expect::Unchanged),
                step(
                    tcp6(
                        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
                        [0xfd; 16],
                        40000,
                        80,
                    ),
                    PASS,
                    Expect::Unchanged,
                ),
            ],
            check: Box::new(|m, _| {
                assert!(m.conntrack().unwrap().is_empty(), "conntrack must stay empty");
                assert_eq!(event(m, "pass_unhandled"), 3, "options and two fragments");
            }),
        },
        Case {
            name: "service without backends: dropped and counted, no conntrack",
            seed: Box::new(|m| {
                seed_service(m, cluster_tcp(), &[]);
            }),
            steps: vec![step(tcp(client, vip, SYN, b""), DROP, Expect::Unchanged)],
            check: Box::new(|m, _| {
                assert!(m.conntrack().unwrap().is_empty());
                let svc = m.service_id(cluster_tcp()).unwrap().unwrap();
                assert_eq!(m.service_counters(svc).unwrap().no_backend_drops, 1);
                assert_eq!(event(m, "drop_no_backend"), 1);
            }),
        },
        Case {
            name: "removed backend: its flow reselects a live backend (old reply entry removed)",
            seed: Box::new(move |m| {
                seed_backends(m);
                let svc = seed_service(m, cluster_tcp(), &[ID1, ID2]);
                seed_flow(m, svc, client, vip, (ID2, b2), PROTO_TCP, Duration::ZERO);
                seed_service(m, cluster_tcp(), &[ID1]);
                m.remove_backend(ID2).unwrap();
            }),
            steps: vec![step(
                tcp(client, vip, ACK, payload),
                PASS,
                Expect::Exactly(tcp(client, b1, ACK, payload)),
            )],
            check: Box::new(move |m, _| {
                let fwd = m
                    .conntrack_get(&ct_key(client, vip, PROTO_TCP, CT_DIR_SERVICE))
                    .unwrap()
                    .unwrap();
                assert_eq!(fwd.backend_id, 1);
                assert!(
                    m.conntrack_get(&ct_key(b2, client, PROTO_TCP, CT_DIR_REPLY))
                        .unwrap()
                        .is_none()
                );
                assert!(
                    m.conntrack_get(&ct_key(b1, client, PROTO_TCP, CT_DIR_REPLY))
                        .unwrap()
                        .is_some()
                );
                assert_eq!(event(m, "reselect"), 1);
            }),
        },
        Case {
            name: "expired UDP entry: the flow chooses again (backend 2 still exists, not in the service)",
            seed: Box::new(move |m| {
                m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
                m.upsert_backend(ID2, sa(B2, 5353)).unwrap();
                let svc = seed_service(m, cluster_udp(), &[ID1]);
                seed_flow(
                    m,
                    svc,
                    client,
                    sa(CLUSTER_IP, 53),
                    (ID2, sa(B2, 5353)),
                    PROTO_UDP,
                    Duration::from_secs(120),
                );
            }),
            steps: vec![step(
                udp(client, sa(CLUSTER_IP, 53), b"again"),
                PASS,
                Expect::Exactly(udp(client, sa(B1, 5353), b"again")),
            )],
            check: Box::new(|m, _| assert_eq!(event(m, "reselect"), 1)),
        },
        Case {
            name: "hairpin: a pod reaching itself is masqueraded; the reply is un-masqueraded",
            seed: Box::new(|m| {
                seed_backends(m);
                m.set_masquerade_address(Some(Ipv4Addr::from(MASQ))).unwrap();
                seed_service(m, cluster_tcp(), &[ID1]);
            }),
            steps: vec![
                step(
                    tcp(sa(B1, 40000), vip, SYN, b""),
                    PASS,
                    Expect::Exactly(tcp(sa(MASQ, 40000), b1, SYN, b"")),
                ),
                step(
                    tcp(b1, sa(MASQ, 40000), SYN_ACK, b""),
                    PASS,
                    Expect::Exactly(tcp(vip, sa(B1, 40000), SYN_ACK, b"")),
                ),
            ],
            check: Box::new(|m, _| {
                assert_eq!(event(m, "masquerade"), 1);
                let flows = m.conntrack().unwrap();
                assert!(flows.iter().all(|f| f.masquerade == Some(sa(MASQ, 40000))));
            }),
        },
    ]
}

fn zero_udp_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    frame[40] = 0;
    frame[41] = 0;
    frame
}

#[test]
fn fixtures() {
    let mut failures = Vec::new();
    let all = cases();
    for hook in HOOKS {
        for case in &all {
            match run_case(case, hook) {
                Ok(()) => println!("ok   [{hook:?}] {}", case.name),
                Err(e) => {
                    println!("FAIL [{hook:?}] {}: {e}", case.name);
                    failures.push(format!("[{hook:?}] {}: {e}", case.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixture runs failed:\n{}",
        failures.len(),
        all.len() * HOOKS.len(),
        failures.join("\n")
    );
}

/// With two backends the choice is random: each new flow's output is one of the two valid
/// packets, its conntrack entry names the backend it went to, and both are used.
#[test]
fn random_choice_between_two_backends() {
    for hook in HOOKS {
        let pins = PinDir::new("rnd");
        let mut dp = pins.load();
        seed_backends(&mut dp.maps);
        seed_service(&mut dp.maps, cluster_tcp(), &[ID1, ID2]);
        let program = dp.ebpf.program(hook.program()).unwrap();
        let vip = sa(CLUSTER_IP, 80);
        let mut seen = [0u32; 2];
        for port in 41000..41064 {
            let client = sa(CLIENT, port);
            let input = tcp(client, vip, SYN, b"");
            let (code, out) = test_run(program, &input, None).unwrap();
            assert_eq!(code, hook.code(PASS), "{hook:?}");
            assert_checksums_valid(&out);
            let chosen = if out == tcp(client, sa(B1, 8080), SYN, b"") {
                1
            } else if out == tcp(client, sa(B2, 8080), SYN, b"") {
                2
            } else {
                panic!("[{hook:?}] port {port}: output is neither backend: {out:02x?}");
            };
            seen[chosen as usize - 1] += 1;
            let e = dp
                .maps
                .conntrack_get(&ct_key(client, vip, PROTO_TCP, CT_DIR_SERVICE))
                .unwrap()
                .expect("entry");
            assert_eq!(
                e.backend_id, chosen,
                "[{hook:?}] port {port}: conntrack disagrees with the packet"
            );
        }
        println!(
            "[{hook:?}] backend 1: {} flows, backend 2: {} flows",
            seen[0], seen[1]
        );
        assert!(
            seen[0] > 0 && seen[1] > 0,
            "[{hook:?}] 64 flows all went to one backend: {seen:?}"
        );
    }
}

/// ClientIP affinity: every new connection of one client goes to the backend its first
/// connection got.
#[test]
fn client_ip_affinity_sticks() {
    for hook in HOOKS {
        let pins = PinDir::new("aff");
        let mut dp = pins.load();
        seed_backends(&mut dp.maps);
        dp.maps
            .upsert_service(
                cluster_tcp(),
                &[ID1, ID2],
                ServiceOptions {
                    client_ip_affinity: Some(Duration::from_secs(10800)),
                },
            )
            .unwrap();
        let program = dp.ebpf.program(hook.program()).unwrap();
        let vip = sa(CLUSTER_IP, 80);
        let mut first = None;
        for port in 42000..42032 {
            let input = tcp(sa(CLIENT, port), vip, SYN, b"");
            let (_, out) = test_run(program, &input, None).unwrap();
            let dst = [out[30], out[31], out[32], out[33]];
            assert!(dst == B1 || dst == B2);
            assert_eq!(
                *first.get_or_insert(dst),
                dst,
                "[{hook:?}] port {port} left the affinity backend"
            );
        }
        assert_eq!(dp.maps.affinity_len(), 1);
    }
}

/// Make before break: replacing a service's backends never leaves a lookup window with
/// a missing slot, and the maps read back what was written.
#[test]
fn service_updates_read_back_and_flip_slot_bases() {
    let pins = PinDir::new("upd");
    let mut dp = pins.load();
    seed_backends(&mut dp.maps);
    let m = &mut dp.maps;
    let id = seed_service(m, cluster_tcp(), &[ID1]);
    assert_eq!(seed_service(m, cluster_tcp(), &[ID1, ID2]), id, "ids are stable");
    assert_eq!(seed_service(m, cluster_tcp(), &[ID2]), id);
    let all = m.services().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].backends, vec![ID2]);
    assert_eq!(m.prune_orphan_slots().unwrap(), 0, "old slots were removed");
    let err = m
        .upsert_service(cluster_tcp(), &[BackendId(99)], ServiceOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("upsert backends before"), "{err}");
    m.remove_service(cluster_tcp()).unwrap();
    assert!(m.services().unwrap().is_empty());
    m.set_node_addresses(&[Ipv4Addr::from(NODE_IP), Ipv4Addr::from(NOT_NODE_IP)])
        .unwrap();
    m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
    assert_eq!(m.node_addresses().unwrap(), vec![Ipv4Addr::from(NODE_IP)]);
}

/// A second load over the same pin directory adopts the maps: services and conntrack
/// survive an agent restart.
#[test]
fn restart_adopts_pinned_maps() {
    let pins = PinDir::new("rst");
    let id = {
        let mut dp = pins.load();
        seed_backends(&mut dp.maps);
        seed_service(&mut dp.maps, cluster_tcp(), &[ID1])
    };
    let mut dp = pins.load();
    assert_eq!(dp.maps.service_id(cluster_tcp()).unwrap(), Some(id));
    let other = seed_service(&mut dp.maps, cluster_udp(), &[ID2]);
    assert_ne!(other, id, "a new frontend never reuses a live id");
    assert_eq!(dp.maps.backends().unwrap().len(), 2);
}

// ---- XDP: translated packets go straight to their next hop when the FIB knows it ----

/// `frame` as a router sends it on: the next hop's MACs, TTL one less, IPv4 checksum
/// summed again from scratch.
fn forwarded(mut frame: Vec<u8>, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame[22] -= 1;
    fix_ipv4_checksum(&mut frame);
    frame
}

fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    frame[22] = ttl;
    fix_ipv4_checksum(&mut frame);
    frame
}

/// In a namespace where the node receives on `in0` (NODE_IP, forwarding on) and reaches
/// both backends through `out0`, with a neighbour entry for backend 1 only: XDP redirects
/// to a target interface with the next hop's MACs and TTL - 1; it hands the frame to the
/// stack, translated but otherwise untouched, when the TTL would expire, the neighbour
/// is unknown, or the interface is not a target; what is not ours stays untouched.
#[test]
fn xdp_redirects_to_the_next_hop_when_the_fib_knows_it() {
    let fib = FibNs::new("fib");
    assert_eq!((FibNs::NODE_IP, FibNs::BACKEND), (NODE_IP, B1));
    let (ns, in0, out0) = (&fib.ns, fib.in0, fib.out0);
    let (b1_mac, out_mac) = (FibNs::BACKEND_MAC, FibNs::OUT_MAC);
    let pins = PinDir::new("fib");
    let result = ns.run(|| {
        let mut dp = pins.load();
        let m = &mut dp.maps;
        seed_backends(m);
        m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
        seed_service(m, node_port(), &[ID1]);
        let np2 = Frontend::NodePort {
            port: 30081,
            proto: Protocol::Tcp,
        };
        seed_service(m, np2, &[ID2]);
        m.set_xdp_targets(&[out0]).unwrap();
        assert_eq!(m.xdp_targets().unwrap(), vec![out0]);
        let ext = sa(EXTERNAL_CLIENT, 5555);
        let (b1, b2) = (sa(B1, 8080), sa(B2, 8080));
        let (np, np2) = (sa(NODE_IP, 30080), sa(NODE_IP, 30081));
        let program = dp.ebpf.program(Hook::Xdp.program()).unwrap();
        let redirected = vec![
            step(
                tcp(ext, np, SYN, b""),
                Verdict::Redirect,
                Expect::Exactly(forwarded(tcp(ext, b1, SYN, b""), b1_mac, out_mac)),
            ),
            step(
                tcp(ext, np, ACK, b"hello"),
                Verdict::Redirect,
                Expect::Exactly(forwarded(tcp(ext, b1, ACK, b"hello"), b1_mac, out_mac)),
            ),
            step(
                with_ttl(tcp(ext, np, ACK, b""), 1),
                PASS,
                Expect::Exactly(with_ttl(tcp(ext, b1, ACK, b""), 1)),
            ),
            step(
                tcp(ext, np2, SYN, b""),
                PASS,
                Expect::Exactly(tcp(ext, b2, SYN, b"")),
            ),
            step(
                tcp(ext, sa(NOT_NODE_IP, 30080), SYN, b""),
                PASS,
                Expect::Unchanged,
            ),
        ];
        run_steps(program, Hook::Xdp, &redirected, Some(in0))?;
        let counts = (
            event(&dp.maps, "xdp_redirect"),
            event(&dp.maps, "xdp_pass_translated"),
        );
        if counts != (2, 2) {
            return Err(format!(
                "(xdp_redirect, xdp_pass_translated) = {counts:?}, expected (2, 2)"
            ));
        }
        // The same flow once out0 is no longer a target: translated, MACs untouched.
        dp.maps.set_xdp_targets(&[]).unwrap();
        let program = dp.ebpf.program(Hook::Xdp.program()).unwrap();
        let passed = vec![step(
            tcp(ext, np, ACK, b"again"),
            PASS,
            Expect::Exactly(tcp(ext, b1, ACK, b"again")),
        )];
        run_steps(program, Hook::Xdp, &passed, Some(in0))?;
        if event(&dp.maps, "xdp_redirect") != 2 || event(&dp.maps, "ct_hit") != 3 {
            return Err("a packet to a non-target was redirected, or the flow was not followed".into());
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
