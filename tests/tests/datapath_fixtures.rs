//! Katran-style BPF_PROG_TEST_RUN fixtures for the TC datapath: each case seeds the maps,
//! runs packets through `kproxy_tc_ingress`, and checks the verdict, the exact output
//! bytes (expected packets are built by etherparse, so their checksums are right by
//! construction; every output is also checked by an independent checksum sum) and the
//! conntrack/counter side effects. Every case loads into its own pin directory.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    panic::{AssertUnwindSafe, catch_unwind},
    time::Duration,
};

use aya::{TestRun as _, TestRunOptions, programs::SchedClassifier};
use kproxy::{
    bpf::{BackendId, DatapathMaps, Frontend, Protocol, ServiceId, ServiceOptions, ktime_now_ns},
    programs,
};
use kproxy_common::{
    CtEntry, CtKey,
    conntrack::{CT_DIR_REPLY, CT_DIR_SERVICE, CT_ST_CLOSING, CT_ST_ESTABLISHED},
    service::{PROTO_TCP, PROTO_UDP, be_addr, be_port},
};
use kproxy_tests::{
    packet::{
        ACK, FIN_ACK, SYN, SYN_ACK, arp, as_fragment, assert_checksums_valid, tcp, tcp6, udp,
        with_ipv4_options,
    },
    pins::PinDir,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

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

fn event(m: &DatapathMaps, name: &str) -> u64 {
    m.events()
        .unwrap()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no event {name}"))
        .1
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
    verdict: u32,
    output: Expect,
}

type Hook = Box<dyn Fn(&mut DatapathMaps)>;
type Check = Box<dyn Fn(&DatapathMaps, &[Vec<u8>])>;

/// A fixture: map seeds, packets in order, then side-effect checks (given the outputs).
struct Case {
    name: &'static str,
    seed: Hook,
    steps: Vec<Step>,
    check: Check,
}

fn step(input: Vec<u8>, verdict: u32, output: Expect) -> Step {
    Step {
        input,
        verdict,
        output,
    }
}

/// Runs `input` through the TC program once: (verdict, output frame).
fn test_run(tc: &SchedClassifier, input: &[u8]) -> Result<(u32, Vec<u8>), String> {
    let mut out = vec![0u8; input.len() + 256];
    let r = tc
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .map_err(|e| format!("BPF_PROG_TEST_RUN: {e:?}"))?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

fn run_case(case: &Case) -> Result<(), String> {
    let pins = PinDir::new("fx");
    let mut dp = pins.load();
    (case.seed)(&mut dp.maps);
    let tc: &SchedClassifier = dp
        .ebpf
        .program(programs::TC_INGRESS_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    let mut outputs = Vec::new();
    for (i, s) in case.steps.iter().enumerate() {
        let (verdict, out) = test_run(tc, &s.input).map_err(|e| format!("step {i}: {e}"))?;
        if verdict != s.verdict {
            return Err(format!("step {i}: verdict {verdict} (expected {})", s.verdict));
        }
        let ok = match &s.output {
            Expect::Unchanged => out == s.input,
            Expect::Exactly(p) => out == *p,
        };
        if !ok {
            return Err(format!(
                "step {i}: output differs\n  got      {out:02x?}\n  input    {:02x?}",
                s.input
            ));
        }
        if !matches!(s.output, Expect::Unchanged) {
            catch_unwind(|| assert_checksums_valid(&out)).map_err(|_| format!("step {i}: bad checksum"))?;
        }
        outputs.push(out);
    }
    catch_unwind(AssertUnwindSafe(|| (case.check)(&dp.maps, &outputs))).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "side-effect check panicked".into())
    })
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
                TC_ACT_OK,
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
                        TC_ACT_OK,
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
                TC_ACT_OK,
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
                    TC_ACT_OK,
                    Expect::Exactly(tcp(client, b1, SYN, b"")),
                ),
                step(
                    tcp(b1, client, SYN_ACK, b""),
                    TC_ACT_OK,
                    Expect::Exactly(tcp(vip, client, SYN_ACK, b"")),
                ),
                step(
                    tcp(client, vip, ACK, payload),
                    TC_ACT_OK,
                    Expect::Exactly(tcp(client, b1, ACK, payload)),
                ),
                step(
                    tcp(client, vip, FIN_ACK, b""),
                    TC_ACT_OK,
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
            name: "NodePort on a node address: DNAT; the reply leaves from that node address",
            seed: Box::new(|m| {
                seed_backends(m);
                m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
                seed_service(m, node_port(), &[ID1]);
            }),
            steps: vec![
                step(
                    tcp(sa(EXTERNAL_CLIENT, 5555), sa(NODE_IP, 30080), SYN, b""),
                    TC_ACT_OK,
                    Expect::Exactly(tcp(sa(EXTERNAL_CLIENT, 5555), b1, SYN, b"")),
                ),
                step(
                    tcp(b1, sa(EXTERNAL_CLIENT, 5555), SYN_ACK, b""),
                    TC_ACT_OK,
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
            name: "NodePort port on an address that is not the node's: untouched",
            seed: Box::new(|m| {
                seed_backends(m);
                m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
                seed_service(m, node_port(), &[ID1]);
            }),
            steps: vec![step(
                tcp(sa(EXTERNAL_CLIENT, 5555), sa(NOT_NODE_IP, 30080), SYN, b""),
                TC_ACT_OK,
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
                TC_ACT_OK,
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
                    TC_ACT_OK,
                    Expect::Exactly(udp(client, sa(B1, 5353), b"query")),
                ),
                step(
                    udp(sa(B1, 5353), client, b"answer"),
                    TC_ACT_OK,
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
                TC_ACT_OK,
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
                    TC_ACT_OK,
                    Expect::Unchanged,
                ),
                step(
                    tcp(client, sa(CLUSTER_IP, 81), SYN, b""),
                    TC_ACT_OK,
                    Expect::Unchanged,
                ),
                step(
                    udp(client, vip, b"udp to a tcp frontend"),
                    TC_ACT_OK,
                    Expect::Unchanged,
                ),
                step(
                    tcp(b1, sa([10, 0, 1, 9], 1234), SYN_ACK, b""),
                    TC_ACT_OK,
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
                step(
                    tcp(client, vip, SYN, b"")[..34].to_vec(),
                    TC_ACT_OK,
                    Expect::Unchanged,
                ),
                // IPv4 header, TCP header cut after 10 bytes.
                step(
                    tcp(client, vip, SYN, b"")[..44].to_vec(),
                    TC_ACT_OK,
                    Expect::Unchanged,
                ),
                step(
                    with_ipv4_options(&tcp(client, vip, SYN, b"")),
                    TC_ACT_OK,
                    Expect::Unchanged,
                ),
                step(
                    as_fragment(&udp(client, sa(CLUSTER_IP, 53), b"first"), true, 0),
                    TC_ACT_OK,
                    Expect::Unchanged,
                ),
                step(
                    as_fragment(&udp(client, sa(CLUSTER_IP, 53), b"later"), false, 8),
                    TC_ACT_OK,
                    Expect::Unchanged,
                ),
                step(arp(CLIENT, CLUSTER_IP), TC_ACT_OK, Expect::Unchanged),
                step(
                    tcp6(
                        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
                        [0xfd; 16],
                        40000,
                        80,
                    ),
                    TC_ACT_OK,
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
            steps: vec![step(tcp(client, vip, SYN, b""), TC_ACT_SHOT, Expect::Unchanged)],
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
                TC_ACT_OK,
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
                TC_ACT_OK,
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
                    TC_ACT_OK,
                    Expect::Exactly(tcp(sa(MASQ, 40000), b1, SYN, b"")),
                ),
                step(
                    tcp(b1, sa(MASQ, 40000), SYN_ACK, b""),
                    TC_ACT_OK,
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
    for case in &all {
        match run_case(case) {
            Ok(()) => println!("ok   {}", case.name),
            Err(e) => {
                println!("FAIL {}: {e}", case.name);
                failures.push(format!("{}: {e}", case.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

/// With two backends the choice is random: each new flow's output is one of the two valid
/// packets, its conntrack entry names the backend it went to, and both are used.
#[test]
fn random_choice_between_two_backends() {
    let pins = PinDir::new("rnd");
    let mut dp = pins.load();
    seed_backends(&mut dp.maps);
    seed_service(&mut dp.maps, cluster_tcp(), &[ID1, ID2]);
    let tc: &SchedClassifier = dp
        .ebpf
        .program(programs::TC_INGRESS_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    let vip = sa(CLUSTER_IP, 80);
    let mut seen = [0u32; 2];
    for port in 41000..41064 {
        let client = sa(CLIENT, port);
        let input = tcp(client, vip, SYN, b"");
        let (verdict, out) = test_run(tc, &input).unwrap();
        assert_eq!(verdict, TC_ACT_OK);
        assert_checksums_valid(&out);
        let chosen = if out == tcp(client, sa(B1, 8080), SYN, b"") {
            1
        } else if out == tcp(client, sa(B2, 8080), SYN, b"") {
            2
        } else {
            panic!("port {port}: output is neither backend: {out:02x?}");
        };
        seen[chosen as usize - 1] += 1;
        let e = dp
            .maps
            .conntrack_get(&ct_key(client, vip, PROTO_TCP, CT_DIR_SERVICE))
            .unwrap()
            .expect("entry");
        assert_eq!(
            e.backend_id, chosen,
            "port {port}: conntrack disagrees with the packet"
        );
    }
    println!("backend 1: {} flows, backend 2: {} flows", seen[0], seen[1]);
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "64 flows all went to one backend: {seen:?}"
    );
}

/// ClientIP affinity: every new connection of one client goes to the backend its first
/// connection got.
#[test]
fn client_ip_affinity_sticks() {
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
    let tc: &SchedClassifier = dp
        .ebpf
        .program(programs::TC_INGRESS_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    let vip = sa(CLUSTER_IP, 80);
    let mut first = None;
    for port in 42000..42032 {
        let input = tcp(sa(CLIENT, port), vip, SYN, b"");
        let (_, out) = test_run(tc, &input).unwrap();
        let dst = [out[30], out[31], out[32], out[33]];
        assert!(dst == B1 || dst == B2);
        assert_eq!(
            *first.get_or_insert(dst),
            dst,
            "port {port} left the affinity backend"
        );
    }
    assert_eq!(dp.maps.affinity_len(), 1);
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
