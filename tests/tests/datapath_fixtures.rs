//! Katran-style BPF_PROG_TEST_RUN fixtures for the datapath: a table of cases, each
//! seeding the maps, running packets through an entry point, and checking the verdict,
//! the exact output bytes (expected packets are built by etherparse, so their checksums
//! are right by construction; every output is also checked by an independent checksum
//! sum) and the conntrack/counter side effects. The harness that runs them is
//! `kproxy_testbed::fixture`; every case loads into its own pin directory.
//!
//! The table runs against both entry points, `kproxy_tc_ingress` and `kproxy_xdp`: they
//! share the datapath (TC rewrites through the kernel's checksum helpers, XDP by RFC 1624
//! by hand), so every case must give the same bytes and side effects; verdicts are each
//! hook's own codes for the same outcome. With no XDP redirect targets seeded, XDP hands
//! what it translated to the stack (XDP_PASS); the redirect path has its own cases at the
//! end, in a namespace with a route and a neighbour to the backend. `kproxy_tc_egress`
//! (the reply path alone) has its own table, `egress_cases`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use kproxy::{
    ebpf::{
        BackendId, DatapathMaps, Frontend, FrontendId, FrontendOptions, Masquerade, SnatSettings, SourceRange,
    },
    model::Protocol,
};
use kproxy_common::{
    CtEntry, CtKey, RateBucket,
    byteorder::{be_addr, be_port},
    conntrack::{
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_MASQ, CT_F_SNAT, CT_ST_CLOSING, CT_ST_ESTABLISHED, CT_ST_FIN,
        CT_ST_PEER_FIN, CT_ST_REPLIED, CT_ST_SEEN_REPLY,
    },
    lb::{PROTO_TCP, PROTO_UDP},
};
use kproxy_testbed::{
    fixture::{
        Case, Check, Expect, Flow, HOOKS, Hook, Seed, Verdict,
        Verdict::{Drop as DROP, Pass as PASS, Reject as REJECT},
        ct_key, handshake, no_conntrack, none, run_steps, run_table, run_table_on, sa, seed_flow,
        seed_service, step, test_run, untouched,
    },
    forwarding::{FibNs, event},
    packet::{
        ACK, FIN_ACK,
        IcmpError::{FragNeeded, PortUnreachable, TimeExceeded},
        SYN, SYN_ACK, arp, as_fragment, assert_checksums_valid, fix_ipv4_checksum, icmp_error,
        port_unreachable, tcp, tcp6, udp, with_ipv4_options,
    },
    pins::PinDir,
};

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
const LB_IP: [u8; 4] = [192, 0, 2, 50];
const DENIED_CLIENT: [u8; 4] = [203, 0, 113, 99];
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

fn lb_tcp() -> Frontend {
    Frontend::Address {
        addr: sa(LB_IP, 443),
        proto: Protocol::Tcp,
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

/// Backends 1 and 2, and the TCP ClusterIP over `backends`.
fn cluster_tcp_on(backends: &'static [BackendId]) -> Seed {
    Box::new(|m| {
        seed_backends(m);
        seed_service(m, cluster_tcp(), backends);
    })
}

/// Backends 1 and 2, the node's address, and the TCP NodePort over `backends`.
fn node_port_on(backends: &'static [BackendId]) -> Seed {
    Box::new(|m| {
        seed_backends(m);
        m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
        seed_service(m, node_port(), backends);
    })
}

/// The UDP ClusterIP (port 53) over backend 1 listening on 5353.
fn dns_on_b1() -> Seed {
    Box::new(|m| {
        m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
        seed_service(m, cluster_udp(), &[ID1]);
    })
}

/// The UDP ClusterIP (port 53) over backend 1 on 5353 (and backend 2, if `two`), and
/// `client`'s flow on backend 1, last seen `age` ago, with `state` bits on both entries.
fn dns_flow(m: &mut DatapathMaps, client: SocketAddrV4, two: bool, age: Duration, state: u8) {
    m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
    m.upsert_backend(ID2, sa(B2, 5353)).unwrap();
    let svc = seed_service(m, cluster_udp(), if two { &[ID1, ID2] } else { &[ID1] });
    let dns = sa(CLUSTER_IP, 53);
    seed_flow(m, svc, client, dns, (ID1, sa(B1, 5353)), PROTO_UDP, age);
    for (key, mut e) in m.conntrack_entries().unwrap() {
        e.state |= state;
        m.conntrack_insert(key, e).unwrap();
    }
}

/// Both backends behind the TCP ClusterIP and `client`'s established flow on backend 2.
fn flow_on_b2(m: &mut DatapathMaps, client: SocketAddrV4) {
    seed_backends(m);
    let svc = seed_service(m, cluster_tcp(), &[ID1, ID2]);
    let (vip, b2) = (sa(CLUSTER_IP, 80), sa(B2, 8080));
    seed_flow(m, svc, client, vip, (ID2, b2), PROTO_TCP, Duration::ZERO);
}

fn cases() -> Vec<Case> {
    let client = sa(CLIENT, 40000);
    let vip = sa(CLUSTER_IP, 80);
    let b1 = sa(B1, 8080);
    let b2 = sa(B2, 8080);
    let payload = b"GET / HTTP/1.1\r\n\r\n";
    let to_b1 = Flow::new(client, vip, b1);
    let ext = sa(EXTERNAL_CLIENT, 5555);
    let dns = Flow::new(client, sa(CLUSTER_IP, 53), sa(B1, 5353));
    vec![
        Case {
            name: "ClusterIP TCP SYN: DNAT to the only backend, conntrack both ways, counters",
            seed: cluster_tcp_on(&[ID1]),
            steps: vec![to_b1.request(SYN, b"")],
            check: Box::new(move |m, out| {
                let svc = m.frontend_id(cluster_tcp()).unwrap().unwrap();
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
                let c = m.frontend_counters(svc).unwrap();
                assert_eq!((c.packets, c.bytes, c.new_flows), (1, out[0].len() as u64, 1));
                assert_eq!(m.backend_counters(ID1).unwrap().packets, 1);
                assert_eq!(event(m, "new_flow"), 1);
            }),
        },
        Case {
            name: "established flow follows its conntrack entry to backend 2 (16 packets)",
            seed: Box::new(move |m| {
                flow_on_b2(m, client);
            }),
            steps: vec![Flow::new(client, vip, b2).request(ACK, payload); 16],
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
            steps: vec![to_b1.reply(SYN_ACK, b"")],
            check: Box::new(|m, _| assert_eq!(event(m, "reply_nat"), 1)),
        },
        Case {
            name: "one FIN half-closes a TCP flow (the other side goes on sending), not closes it",
            seed: cluster_tcp_on(&[ID1]),
            steps: [
                handshake(&to_b1),
                vec![
                    to_b1.request(ACK, payload),
                    to_b1.request(FIN_ACK, b""),
                    to_b1.reply(ACK, b"still sending"),
                ],
            ]
            .concat(),
            check: Box::new(move |m, _| {
                let service = m
                    .conntrack_get(&ct_key(client, vip, PROTO_TCP, CT_DIR_SERVICE))
                    .unwrap()
                    .expect("entry");
                let reply = m
                    .conntrack_get(&ct_key(b1, client, PROTO_TCP, CT_DIR_REPLY))
                    .unwrap()
                    .expect("entry");
                assert_eq!(service.state & (CT_ST_FIN | CT_ST_CLOSING), CT_ST_FIN);
                assert_eq!(reply.state & (CT_ST_PEER_FIN | CT_ST_CLOSING), CT_ST_PEER_FIN);
            }),
        },
        Case {
            name: "full TCP exchange: SYN, SYN-ACK, ACK, FIN both ways close both entries",
            seed: cluster_tcp_on(&[ID1]),
            steps: [
                handshake(&to_b1),
                vec![
                    to_b1.request(ACK, payload),
                    to_b1.request(FIN_ACK, b""),
                    to_b1.reply(FIN_ACK, b""),
                ],
            ]
            .concat(),
            check: Box::new(move |m, _| {
                for key in [
                    ct_key(client, vip, PROTO_TCP, CT_DIR_SERVICE),
                    ct_key(b1, client, PROTO_TCP, CT_DIR_REPLY),
                ] {
                    let e = m.conntrack_get(&key).unwrap().expect("entry");
                    assert_ne!(e.state & CT_ST_ESTABLISHED, 0, "established: {key:?}");
                    assert_ne!(e.state & CT_ST_CLOSING, 0, "closed after a FIN each way: {key:?}");
                }
            }),
        },
        Case {
            name: "a half-closed flow an hour old minus a minute still translates (CLOSE_WAIT, not 10 s)",
            seed: Box::new(move |m| {
                seed_backends(m);
                let svc = seed_service(m, cluster_tcp(), &[ID1]);
                seed_flow(m, svc, client, vip, (ID1, b1), PROTO_TCP, Duration::from_mins(59));
                for (key, mut e) in m.conntrack_entries().unwrap() {
                    e.state |= if key.dir == CT_DIR_SERVICE {
                        CT_ST_FIN
                    } else {
                        CT_ST_PEER_FIN
                    };
                    m.conntrack_insert(key, e).unwrap();
                }
            }),
            steps: vec![to_b1.reply(ACK, b"late data"), to_b1.request(ACK, b"")],
            check: Box::new(|m, _| assert_eq!(event(m, "reselect"), 0)),
        },
        Case {
            name: "a direct connection reusing a closed service flow's tuple passes untouched",
            seed: cluster_tcp_on(&[ID1]),
            steps: [
                handshake(&to_b1),
                vec![
                    to_b1.request(FIN_ACK, b""),
                    to_b1.reply(FIN_ACK, b""),
                    // The same client port now talks to the pod itself, not the service.
                    untouched(tcp(client, b1, SYN, b"")),
                    untouched(tcp(b1, client, SYN_ACK, b"")),
                    untouched(tcp(b1, client, ACK, payload)),
                ],
            ]
            .concat(),
            check: no_conntrack(),
        },
        Case {
            name: "NodePort on a node address: DNAT; the reply leaves from that node address",
            seed: node_port_on(&[ID1]),
            steps: handshake(&Flow::new(ext, sa(NODE_IP, 30080), b1)),
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
            steps: {
                let f = Flow::new(ext, sa(NODE_IP, 30053), sa(B1, 5353));
                vec![f.udp_request(b"query"), f.udp_reply(b"answer")]
            },
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
            seed: node_port_on(&[ID1]),
            steps: vec![untouched(tcp(ext, sa(NOT_NODE_IP, 30080), SYN, b""))],
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
            steps: vec![Flow::new(sa(EXTERNAL_CLIENT, 6000), sa(EXTERNAL_IP, 443), b2).request(SYN, b"")],
            check: none(),
        },
        Case {
            name: "UDP: DNAT with a valid checksum, reply reverse-NATed",
            seed: dns_on_b1(),
            steps: vec![dns.udp_request(b"query"), dns.udp_reply(b"answer")],
            check: Box::new(move |m, _| {
                m.conntrack_get(&ct_key(client, sa(CLUSTER_IP, 53), PROTO_UDP, CT_DIR_SERVICE))
                    .unwrap()
                    .expect("UDP entry");
            }),
        },
        Case {
            name: "UDP with a zero checksum: DNAT keeps it zero",
            seed: dns_on_b1(),
            steps: vec![step(
                zero_udp_checksum(udp(client, sa(CLUSTER_IP, 53), b"query")),
                PASS,
                Expect::Exactly(zero_udp_checksum(udp(client, sa(B1, 5353), b"query"))),
            )],
            check: none(),
        },
        Case {
            name: "no service at the destination: untouched, no conntrack",
            seed: cluster_tcp_on(&[ID1]),
            steps: vec![
                untouched(tcp(client, sa([10, 96, 0, 99], 80), SYN, b"")),
                untouched(tcp(client, sa(CLUSTER_IP, 81), SYN, b"")),
                untouched(udp(client, vip, b"udp to a tcp frontend")),
                untouched(tcp(b1, sa([10, 0, 1, 9], 1234), SYN_ACK, b"")),
            ],
            check: no_conntrack(),
        },
        Case {
            name: "short and malformed packets, IP options, an unknown fragment, ARP, IPv6: untouched",
            seed: Box::new(|m| {
                seed_backends(m);
                seed_service(m, cluster_tcp(), &[ID1]);
                seed_service(m, cluster_udp(), &[ID1]);
            }),
            steps: vec![
                // IPv4 header only (the kernel's test run refuses shorter IPv4 frames).
                untouched(tcp(client, vip, SYN, b"")[..34].to_vec()),
                // IPv4 header, TCP header cut after 10 bytes.
                untouched(tcp(client, vip, SYN, b"")[..44].to_vec()),
                untouched(with_ipv4_options(&tcp(client, vip, SYN, b""))),
                // A later fragment whose first was not seen, to no frontend's address
                // (`fragment_fixtures`).
                untouched(as_fragment(
                    &udp(client, sa([10, 96, 0, 99], 53), b"later"),
                    false,
                    8,
                )),
                untouched(arp(CLIENT, CLUSTER_IP)),
                untouched(tcp6(
                    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
                    [0xfd; 16],
                    40000,
                    80,
                )),
            ],
            check: Box::new(|m, _| {
                assert!(m.conntrack().unwrap().is_empty(), "conntrack must stay empty");
                assert_eq!(event(m, "pass_unhandled"), 1, "options");
                assert_eq!(event(m, "frag_unknown"), 1);
            }),
        },
        Case {
            name: "service without endpoints: a TCP SYN is answered with ICMP port unreachable, a stray ACK dropped",
            seed: Box::new(|m| {
                seed_service(m, cluster_tcp(), &[]);
            }),
            steps: {
                let syn = tcp(client, vip, SYN, b"");
                vec![
                    step(syn.clone(), REJECT, Expect::Exactly(port_unreachable(&syn, 20))),
                    step(tcp(client, vip, ACK, payload), DROP, Expect::Unchanged),
                ]
            },
            check: Box::new(|m, out| {
                assert!(m.conntrack().unwrap().is_empty());
                let svc = m.frontend_id(cluster_tcp()).unwrap().unwrap();
                let c = m.frontend_counters(svc).unwrap();
                // TC answered (an ICMP frame came out); XDP left the SYN to TC.
                let answered = u64::from(out[0][23] == 1);
                assert_eq!((c.rejects, c.no_backend_drops), (answered, 1));
                assert_eq!((event(m, "reject"), event(m, "drop_no_backend")), (answered, 1));
            }),
        },
        Case {
            name: "service without endpoints: a UDP datagram is answered with ICMP port unreachable",
            seed: Box::new(|m| {
                seed_service(m, cluster_udp(), &[]);
            }),
            steps: {
                let query = udp(client, sa(CLUSTER_IP, 53), b"query");
                vec![step(
                    query.clone(),
                    REJECT,
                    Expect::Exactly(port_unreachable(&query, 8)),
                )]
            },
            check: Box::new(|m, out| {
                let svc = m.frontend_id(cluster_udp()).unwrap().unwrap();
                let answered = u64::from(out[0][23] == 1);
                assert_eq!(m.frontend_counters(svc).unwrap().rejects, answered);
                assert_eq!(event(m, "drop_no_backend"), 0);
            }),
        },
        Case {
            name: "externalTrafficPolicy Local without local endpoints: dropped, no ICMP (kube-proxy DROPs)",
            seed: Box::new(|m| {
                m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
                let local_only = FrontendOptions {
                    drop_without_backends: true,
                    ..FrontendOptions::default()
                };
                m.upsert_frontend(node_port(), &[], local_only).unwrap();
            }),
            steps: vec![
                step(tcp(ext, sa(NODE_IP, 30080), SYN, b""), DROP, Expect::Unchanged),
                step(tcp(ext, sa(NODE_IP, 30080), SYN, b""), DROP, Expect::Unchanged),
            ],
            check: Box::new(|m, _| {
                let svc = m.frontend_id(node_port()).unwrap().unwrap();
                let c = m.frontend_counters(svc).unwrap();
                assert_eq!((c.no_backend_drops, c.rejects), (2, 0));
                assert_eq!(event(m, "reject"), 0);
            }),
        },
        Case {
            name: "externalTrafficPolicy Local: a pod reaches the NodePort through the ClusterIP's backends (kube-proxy's short-circuit), an external client is dropped",
            seed: Box::new(|m| {
                seed_backends(m);
                m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
                m.set_snat(&snat_settings(61000..=65535)).unwrap();
                seed_service(m, cluster_tcp(), &[ID2]);
                let local_only = FrontendOptions {
                    drop_without_backends: true,
                    cluster_frontend: Some(sa(CLUSTER_IP, 80)),
                    ..FrontendOptions::default()
                };
                m.upsert_frontend(node_port(), &[], local_only).unwrap();
            }),
            steps: {
                let pod = Flow::new(sa(CLIENT, 40000), sa(NODE_IP, 30080), sa(B2, 8080));
                vec![
                    pod.request(SYN, b""),
                    pod.reply(SYN_ACK, b""),
                    step(tcp(ext, sa(NODE_IP, 30080), SYN, b""), DROP, Expect::Unchanged),
                ]
            },
            check: Box::new(|m, _| {
                let cluster = m.frontend_id(cluster_tcp()).unwrap().unwrap();
                let node_port = m.frontend_id(node_port()).unwrap().unwrap();
                assert_eq!(m.frontend_counters(cluster).unwrap().new_flows, 1);
                let c = m.frontend_counters(node_port).unwrap();
                assert_eq!((c.new_flows, c.no_backend_drops), (0, 1));
            }),
        },
        Case {
            name: "loadBalancerSourceRanges: a source inside is translated, one outside dropped and counted",
            seed: Box::new(|m| {
                seed_backends(m);
                let ranged = FrontendOptions {
                    source_ranges: vec![SourceRange::new(Ipv4Addr::new(198, 51, 100, 0), 24)],
                    ..FrontendOptions::default()
                };
                m.upsert_frontend(lb_tcp(), &[ID2], ranged).unwrap();
            }),
            steps: vec![
                Flow::new(ext, sa(LB_IP, 443), b2).request(SYN, b""),
                step(
                    tcp(sa(DENIED_CLIENT, 6000), sa(LB_IP, 443), SYN, b""),
                    DROP,
                    Expect::Unchanged,
                ),
            ],
            check: Box::new(move |m, _| {
                let svc = m.frontend_id(lb_tcp()).unwrap().unwrap();
                let c = m.frontend_counters(svc).unwrap();
                assert_eq!((c.new_flows, c.source_range_drops), (1, 1));
                assert_eq!(event(m, "drop_source_range"), 1);
                assert_eq!(m.conntrack().unwrap().len(), 2, "only the allowed flow");
                let entry = &m.frontends().unwrap()[0];
                assert_eq!(entry.options.source_ranges.len(), 1, "read back from the trie");
            }),
        },
        Case {
            name: "removed backend: an established TCP flow keeps it (graceful termination, as netfilter's conntrack does)",
            seed: Box::new(move |m| {
                flow_on_b2(m, client);
                seed_service(m, cluster_tcp(), &[ID1]);
                m.remove_backend(ID2).unwrap();
            }),
            steps: {
                let to_b2 = Flow::new(client, vip, b2);
                vec![to_b2.request(ACK, payload), to_b2.reply(ACK, b"ok")]
            },
            check: Box::new(move |m, _| {
                let fwd = m
                    .conntrack_get(&ct_key(client, vip, PROTO_TCP, CT_DIR_SERVICE))
                    .unwrap()
                    .unwrap();
                assert_eq!(fwd.backend_id, 2);
                assert_eq!(event(m, "reselect"), 0);
            }),
        },
        Case {
            name: "removed backend: its UDP flow reselects a live backend (old reply entry removed)",
            seed: Box::new(move |m| {
                m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
                m.upsert_backend(ID2, sa(B2, 5353)).unwrap();
                let svc = seed_service(m, cluster_udp(), &[ID1, ID2]);
                seed_flow(
                    m,
                    svc,
                    client,
                    sa(CLUSTER_IP, 53),
                    (ID2, sa(B2, 5353)),
                    PROTO_UDP,
                    Duration::ZERO,
                );
                seed_service(m, cluster_udp(), &[ID1]);
                m.remove_backend(ID2).unwrap();
            }),
            steps: vec![dns.udp_request(b"again")],
            check: Box::new(move |m, _| {
                let dns_vip = sa(CLUSTER_IP, 53);
                let fwd = m
                    .conntrack_get(&ct_key(client, dns_vip, PROTO_UDP, CT_DIR_SERVICE))
                    .unwrap()
                    .unwrap();
                assert_eq!(fwd.backend_id, 1);
                assert!(
                    m.conntrack_get(&ct_key(sa(B2, 5353), client, PROTO_UDP, CT_DIR_REPLY))
                        .unwrap()
                        .is_none()
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
                    Duration::from_mins(2),
                );
            }),
            steps: vec![dns.udp_request(b"again")],
            check: Box::new(|m, _| assert_eq!(event(m, "reselect"), 1)),
        },
        Case {
            name: "reply tuples that clash: one client port to two frontends on one backend; the second flow's source port is remapped, replies come from each one's frontend",
            seed: Box::new(|m| {
                seed_backends(m);
                m.set_snat(&snat_settings(61000..=61000)).unwrap();
                seed_service(m, cluster_tcp(), &[ID1]);
                seed_service(m, lb_tcp(), &[ID1]);
            }),
            steps: {
                let first = Flow::new(client, vip, b1);
                let second = Flow::new(client, sa(LB_IP, 443), b1).masqueraded(sa(CLIENT, 61000));
                vec![
                    first.request(SYN, b""),
                    second.request(SYN, b""),
                    first.reply(SYN_ACK, b""),
                    second.reply(SYN_ACK, b""),
                ]
            },
            check: Box::new(|m, _| {
                assert_eq!(m.conntrack().unwrap().len(), 4, "two flows, two entries each");
                assert_eq!(event(m, "snat"), 1, "the second flow's port remapped");
            }),
        },
        Case {
            name: "a replied UDP flow idle 90 s keeps its backend (stream timeout 120 s; unreplied: 30 s)",
            seed: Box::new(move |m| dns_flow(m, client, true, Duration::from_secs(90), CT_ST_REPLIED)),
            steps: vec![dns.udp_request(b"again")],
            check: Box::new(|m, _| assert_eq!(event(m, "reselect"), 0)),
        },
        Case {
            name: "hairpin: a pod reaching itself is masqueraded; the reply is un-masqueraded",
            seed: Box::new(|m| {
                seed_backends(m);
                m.set_masquerade_address(Some(Ipv4Addr::from(MASQ))).unwrap();
                seed_service(m, cluster_tcp(), &[ID1]);
            }),
            steps: handshake(&Flow::new(sa(B1, 40000), vip, b1).masqueraded(sa(MASQ, 40000))),
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
    run_table(&cases());
}

/// A second TCP ClusterIP (10.96.0.11:80) over backend 1 alone: the target of the floods.
fn flood_target() -> Frontend {
    Frontend::Address {
        addr: sa([10, 96, 0, 11], 80),
        proto: Protocol::Tcp,
    }
}

/// Backend 3: 10.0.2.7:5353, behind the UDP ClusterIP.
const ID3: BackendId = BackendId(3);

/// Conntrack's two tables, repair and UDP streams.
fn conntrack_cases() -> Vec<Case> {
    let client = sa(CLIENT, 40000);
    let vip = sa(CLUSTER_IP, 80);
    let (b1, b2) = (sa(B1, 8080), sa(B2, 8080));
    let to_b1 = Flow::new(client, vip, b1);
    let to_b2 = Flow::new(client, vip, b2);
    let dns = Flow::new(client, sa(CLUSTER_IP, 53), sa(B1, 5353));
    let flood = 2_500u16;
    vec![
        Case {
            name: "a TCP flow stays in the handshake table until both sides have answered, then moves",
            seed: cluster_tcp_on(&[ID1]),
            steps: vec![to_b1.request(SYN, b""), to_b1.reply(SYN_ACK, b"")],
            check: Box::new(|m, _| assert_eq!(m.conntrack_counts(), (0, 2), "(established TCP, other)")),
        },
        Case {
            name: "the client's ACK completing the handshake moves the flow to the established-TCP table",
            seed: cluster_tcp_on(&[ID1]),
            steps: [handshake(&to_b1), vec![to_b1.request(ACK, b"")]].concat(),
            check: Box::new(|m, _| assert_eq!(m.conntrack_counts(), (2, 0), "(established TCP, other)")),
        },
        Case {
            name: "a flow whose reply entry was evicted is repaired by the client's next packet",
            seed: Box::new(move |m| {
                flow_on_b2(m, client);
                m.conntrack_remove(&ct_key(b2, client, PROTO_TCP, CT_DIR_REPLY))
                    .unwrap();
            }),
            steps: vec![to_b2.request(ACK, b"ping"), to_b2.reply(ACK, b"pong")],
            check: Box::new(|m, _| {
                assert_eq!(event(m, "ct_repaired"), 1);
                assert_eq!((event(m, "reselect"), event(m, "new_flow")), (0, 0));
                assert_eq!(event(m, "reply_nat"), 1);
                assert_eq!(m.conntrack_counts(), (2, 0));
            }),
        },
        Case {
            name: "a flow whose service entry was evicted is repaired by a reply and keeps its backend",
            seed: Box::new(move |m| {
                flow_on_b2(m, client);
                m.conntrack_remove(&ct_key(client, vip, PROTO_TCP, CT_DIR_SERVICE))
                    .unwrap();
            }),
            steps: vec![to_b2.reply(ACK, b"push"), to_b2.request(ACK, b"ack")],
            check: Box::new(|m, _| {
                assert_eq!(event(m, "ct_repaired"), 1);
                assert_eq!((event(m, "reselect"), event(m, "new_flow")), (0, 0));
                assert_eq!(m.backend_counters(ID2).unwrap().packets, 1);
            }),
        },
        Case {
            name: "floods of new UDP flows and of SYNs evict no established TCP flow",
            seed: Box::new(move |m| {
                flow_on_b2(m, client);
                m.upsert_backend(ID3, sa(B1, 5353)).unwrap();
                seed_service(m, cluster_udp(), &[ID3]);
                seed_service(m, flood_target(), &[ID1]);
            }),
            steps: (0..flood)
                .flat_map(|i| {
                    let other = sa([10, 0, 3, 9], 10_000 + i);
                    [
                        Flow::new(other, sa(CLUSTER_IP, 53), sa(B1, 5353)).udp_request(b"q"),
                        Flow::new(other, sa([10, 96, 0, 11], 80), b1).request(SYN, b""),
                    ]
                })
                .chain([to_b2.request(ACK, b"still here")])
                .collect(),
            check: Box::new(move |m, _| {
                assert_eq!(event(m, "new_flow"), 2 * u64::from(flood));
                assert_eq!(event(m, "reselect"), 0);
                assert_eq!(m.backend_counters(ID2).unwrap().packets, 1);
                let (tcp, other) = m.conntrack_counts();
                assert_eq!(tcp, 2, "the established flow, alone in its table");
                // 4 entries per flood round into a table of 2048: the LRU evicted.
                assert!(
                    other < 4 * usize::from(flood),
                    "{other} entries: nothing was evicted?"
                );
            }),
        },
        Case {
            name: "a UDP exchange (a query and its answer) keeps the unreplied timeout, not the stream one",
            seed: dns_on_b1(),
            steps: vec![dns.udp_request(b"q"), dns.udp_reply(b"a")],
            check: Box::new(|m, _| {
                for (_, e) in m.conntrack_entries().unwrap() {
                    assert_eq!(e.state & (CT_ST_SEEN_REPLY | CT_ST_REPLIED), CT_ST_SEEN_REPLY);
                }
            }),
        },
        Case {
            name: "a replied UDP flow idle 40 s chooses again (unreplied timeout 30 s, as netfilter)",
            seed: Box::new(move |m| dns_flow(m, client, false, Duration::from_secs(40), CT_ST_SEEN_REPLY)),
            steps: vec![dns.udp_request(b"again")],
            check: Box::new(|m, _| assert_eq!(event(m, "reselect"), 1)),
        },
        Case {
            name: "a UDP flow answered more than 2 s after it began is a stream (both entries)",
            seed: Box::new(move |m| dns_flow(m, client, false, Duration::from_secs(3), 0)),
            steps: vec![dns.udp_reply(b"late answer")],
            check: Box::new(|m, _| {
                let entries = m.conntrack_entries().unwrap();
                assert_eq!(entries.len(), 2);
                for (_, e) in entries {
                    assert_ne!(e.state & CT_ST_REPLIED, 0, "stream");
                }
            }),
        },
    ]
}

#[test]
fn conntrack_fixtures() {
    run_table(&conntrack_cases());
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

/// TC's replies are rate-limited per CPU: with this CPU's bucket empty (its last refill
/// in the future), a SYN to a service without endpoints is dropped and counted instead
/// of answered; once refilled, it is answered again.
#[test]
fn reject_rate_limit_suppresses_replies() {
    let pins = PinDir::new("rl");
    let mut dp = pins.load();
    seed_service(&mut dp.maps, cluster_tcp(), &[]);
    let empty = RateBucket {
        credit_ns: 0,
        last_ns: u64::MAX,
    };
    dp.maps.set_reject_buckets(empty).unwrap();
    let syn = tcp(sa(CLIENT, 40000), sa(CLUSTER_IP, 80), SYN, b"");
    let program = dp.ebpf.program(Hook::Tc.program()).unwrap();
    let limited = vec![step(syn.clone(), DROP, Expect::Unchanged); 3];
    run_steps(program, Hook::Tc, &limited, None).unwrap();
    let svc = dp.maps.frontend_id(cluster_tcp()).unwrap().unwrap();
    let c = dp.maps.frontend_counters(svc).unwrap();
    assert_eq!((c.rejects, c.no_backend_drops), (0, 3));
    assert_eq!(event(&dp.maps, "reject_rate_limited"), 3);
    dp.maps.set_reject_buckets(RateBucket::default()).unwrap();
    let program = dp.ebpf.program(Hook::Tc.program()).unwrap();
    let answered = vec![step(
        syn.clone(),
        REJECT,
        Expect::Exactly(port_unreachable(&syn, 20)),
    )];
    run_steps(program, Hook::Tc, &answered, None).unwrap();
    assert_eq!(dp.maps.frontend_counters(svc).unwrap().rejects, 1);
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
            .upsert_frontend(
                cluster_tcp(),
                &[ID1, ID2],
                FrontendOptions {
                    client_ip_affinity: Some(Duration::from_hours(3)),
                    ..FrontendOptions::default()
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

/// After a sync, UDP flows to an endpoint that left their service are removed even
/// while the address still serves another service (kube-proxy's conntrack cleanup),
/// TCP flows are kept, and affinity entries that lead to a former endpoint go.
#[test]
fn stale_udp_flows_and_affinity_are_removed_after_their_endpoint_left() {
    use kproxy::model::{Endpoint, Model, ServicePort, ServicePortName, UdpServing};

    let pins = PinDir::new("stl");
    let mut dp = pins.load();
    let m = &mut dp.maps;
    m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
    m.upsert_backend(ID2, sa(B2, 5353)).unwrap();
    let affinity = FrontendOptions {
        client_ip_affinity: Some(Duration::from_hours(3)),
        ..FrontendOptions::default()
    };
    let dns = m
        .upsert_frontend(cluster_udp(), &[ID2], affinity.clone())
        .unwrap();
    let web = m
        .upsert_frontend(cluster_tcp(), &[ID2], affinity.clone())
        .unwrap();
    let (client, dns_vip, web_vip) = (sa(CLIENT, 40000), sa(CLUSTER_IP, 53), sa(CLUSTER_IP, 80));
    seed_flow(
        m,
        dns,
        client,
        dns_vip,
        (ID2, sa(B2, 5353)),
        PROTO_UDP,
        Duration::ZERO,
    );
    seed_flow(
        m,
        web,
        client,
        web_vip,
        (ID2, sa(B2, 5353)),
        PROTO_TCP,
        Duration::ZERO,
    );
    // A datagram and a SYN through the program: each frontend's affinity entry for the
    // client leads to backend 2 (the only one), and the datagram starts a second UDP flow.
    let program = dp.ebpf.program(HOOKS[0].program()).unwrap();
    test_run(program, &udp(sa(CLIENT, 41000), dns_vip, b"q"), None).unwrap();
    test_run(program, &tcp(sa(CLIENT, 41001), web_vip, SYN, b""), None).unwrap();
    assert_eq!(dp.maps.affinity_len(), 2);
    let m = &mut dp.maps;
    // Backend 2 leaves the DNS service; it still serves the TCP one.
    m.upsert_frontend(cluster_udp(), &[ID1], affinity).unwrap();
    let endpoint = |ip: [u8; 4]| Endpoint {
        ip: Ipv4Addr::from(ip).into(),
        port: 5353,
        ready: true,
        serving: true,
        terminating: false,
        is_local: false,
        zone_hints: vec![],
        node_hints: vec![],
    };
    let model = Model {
        service_ports: vec![ServicePort {
            endpoints: vec![endpoint(B1)],
            ..ServicePort::new(
                ServicePortName {
                    namespace: "kube-system".into(),
                    name: "dns".into(),
                    port: "dns".into(),
                    protocol: Protocol::Udp,
                },
                Ipv4Addr::from(CLUSTER_IP).into(),
                53,
            )
        }],
        ..Model::default()
    };
    let before = m.conntrack().unwrap().len();
    let removed = m.remove_stale_udp_flows(&UdpServing::new(&model)).unwrap();
    assert_eq!(removed, 4, "both entries of both UDP flows to backend 2");
    assert_eq!(m.conntrack().unwrap().len(), before - 4);
    assert!(
        m.conntrack_get(&ct_key(client, web_vip, PROTO_TCP, CT_DIR_SERVICE))
            .unwrap()
            .is_some(),
        "the TCP flow stays"
    );
    assert_eq!(
        m.remove_stale_affinity().unwrap(),
        1,
        "the DNS entry, to backend 2"
    );
    assert_eq!(
        m.affinity_len(),
        1,
        "the TCP frontend's entry leads to a current backend"
    );
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
    let all = m.frontends().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].backends, vec![ID2]);
    assert_eq!(m.prune_orphan_slots().unwrap(), 0, "old slots were removed");
    let err = m
        .upsert_frontend(cluster_tcp(), &[BackendId(99)], FrontendOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("upsert backends before"), "{err}");
    m.remove_frontend(cluster_tcp()).unwrap();
    assert!(m.frontends().unwrap().is_empty());
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
    assert_eq!(dp.maps.frontend_id(cluster_tcp()).unwrap(), Some(id));
    let other = seed_service(&mut dp.maps, cluster_udp(), &[ID2]);
    assert_ne!(other, id, "a new frontend never reuses a live id");
    assert_eq!(dp.maps.backends().unwrap().len(), 2);
}

/// Creates and pins at `path` an LRU hash map of conntrack's layout (the earlier agents'
/// single table), through bpf(2) directly: no program of this object declares it.
fn pin_retired_conntrack(path: &std::path::Path) -> aya::maps::HashMap<aya::maps::MapData, CtKey, CtEntry> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    /// bpf(2)'s attribute union, large enough for both commands used.
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        words: [u32; 32],
    }
    let bpf = |cmd: libc::c_long, attr: &mut Attr| {
        // SAFETY: `attr` is a zeroed bpf_attr-sized buffer holding the command's fields.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<Attr>()) }
    };
    let mut create = Attr::default();
    // map_type BPF_MAP_TYPE_LRU_HASH, key_size, value_size, max_entries.
    create.words[..4].copy_from_slice(&[9, size_of::<CtKey>() as u32, size_of::<CtEntry>() as u32, 64]);
    let fd = bpf(0, &mut create); // BPF_MAP_CREATE
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut pin = Attr::default();
    let ptr = name.as_ptr() as u64;
    pin.words[0] = ptr as u32;
    pin.words[1] = (ptr >> 32) as u32;
    pin.words[2] = fd as u32;
    let rc = bpf(6, &mut pin); // BPF_OBJ_PIN
    assert_eq!(
        rc,
        0,
        "BPF_OBJ_PIN {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is ours; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
    let map = aya::maps::MapData::from_pin(path)
        .and_then(aya::maps::Map::from_map_data)
        .expect("open the pinned map");
    map.try_into().expect("a conntrack-layout hash map")
}

/// An upgrade from an agent with one conntrack table: its flows are copied into the two
/// tables (an established TCP flow into the TCP one, a UDP flow into the other) and keep
/// their backends; the old pin is removed.
#[test]
fn an_upgrade_keeps_the_flows_of_the_single_conntrack_table() {
    let pins = PinDir::new("upg");
    let mut dp = pins.load();
    let client = sa(CLIENT, 40000);
    flow_on_b2(&mut dp.maps, client);
    dp.maps.upsert_backend(ID3, sa(B1, 5353)).unwrap();
    let dns = seed_service(&mut dp.maps, cluster_udp(), &[ID3]);
    seed_flow(
        &mut dp.maps,
        dns,
        client,
        sa(CLUSTER_IP, 53),
        (ID3, sa(B1, 5353)),
        PROTO_UDP,
        Duration::ZERO,
    );
    let flows = dp.maps.conntrack_entries().unwrap();
    assert_eq!(flows.len(), 4);
    let retired = pins.path().join(kproxy_common::map_names::RETIRED_CONNTRACK);
    let mut old = pin_retired_conntrack(&retired);
    for (key, entry) in &flows {
        old.insert(key, entry, 0).unwrap();
        dp.maps.conntrack_remove(key).unwrap();
    }
    assert_eq!(dp.maps.conntrack_counts(), (0, 0));

    assert_eq!(dp.maps.adopt_retired_conntrack(pins.path()).unwrap(), 4);
    assert_eq!(dp.maps.conntrack_counts(), (2, 2), "(established TCP, other)");
    assert_eq!(
        kproxy::ebpf::unpin_retired(pins.path()).unwrap(),
        [kproxy_common::map_names::RETIRED_CONNTRACK]
    );
    assert!(!retired.exists());
    let program = dp.ebpf.program(Hook::Tc.program()).expect("program");
    let steps = [
        Flow::new(client, sa(CLUSTER_IP, 80), sa(B2, 8080)).request(ACK, b"after the upgrade"),
        Flow::new(client, sa(CLUSTER_IP, 53), sa(B1, 5353)).udp_request(b"q"),
    ];
    run_steps(program, Hook::Tc, &steps, None).unwrap();
    assert_eq!((event(&dp.maps, "ct_hit"), event(&dp.maps, "new_flow")), (2, 0));
}

// ---- SNAT: the flows kube-proxy masquerades get the node's address and a port ----

/// The cluster CIDR of the SNAT cases: CLIENT and the backends are pods, EXTERNAL_CLIENT
/// is not.
const CLUSTER_CIDR: ([u8; 4], u8) = ([10, 0, 0, 0], 16);
/// First port of the SNAT ranges of the cases (narrow ranges make the choice certain).
const NAT_PORT: u16 = 61000;

/// The SNAT settings of the cases: the node's address, the cluster CIDR, `ports`.
fn snat_settings(ports: std::ops::RangeInclusive<u16>) -> SnatSettings {
    SnatSettings {
        node_addr: Some(Ipv4Addr::from(NODE_IP)),
        cluster_cidr: Some((Ipv4Addr::from(CLUSTER_CIDR.0), CLUSTER_CIDR.1)),
        ports,
    }
}

fn snat_options(masquerade: Masquerade) -> FrontendOptions {
    FrontendOptions {
        masquerade,
        ..FrontendOptions::default()
    }
}

/// Backends 1 and 2, the node's address, SNAT over `ports`, and `frontend` over backend 1
/// with `masquerade`.
fn snat_on(frontend: Frontend, masquerade: Masquerade, ports: std::ops::RangeInclusive<u16>) -> Seed {
    Box::new(move |m| {
        seed_backends(m);
        m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
        m.set_snat(&snat_settings(ports.clone())).unwrap();
        m.upsert_frontend(frontend, &[ID1], snat_options(masquerade))
            .unwrap();
    })
}

fn node_port_udp() -> Frontend {
    Frontend::NodePort {
        port: 30053,
        proto: Protocol::Udp,
    }
}

/// Seeds both entries of a SNATed flow `client` → `frontend` → backend 1 (10.0.2.7:8080)
/// that holds NODE_IP:`nat_port`, last seen `age` ago.
fn seed_snat_flow(
    m: &mut DatapathMaps,
    svc: FrontendId,
    client: SocketAddrV4,
    frontend: SocketAddrV4,
    (proto, nat_port): (u8, u16),
    age: Duration,
) {
    let b1 = sa(B1, 8080);
    seed_flow(m, svc, client, frontend, (ID1, b1), proto, age);
    m.conntrack_remove(&ct_key(b1, client, proto, CT_DIR_REPLY))
        .unwrap();
    let service = ct_key(client, frontend, proto, CT_DIR_SERVICE);
    let mut e = m.conntrack_get(&service).unwrap().expect("seeded");
    e.masq_addr = be_addr(NODE_IP);
    e.masq_port = be_port(nat_port);
    e.flags = CT_F_MASQ | CT_F_SNAT;
    m.conntrack_insert(service, e).unwrap();
    m.conntrack_insert(ct_key(b1, sa(NODE_IP, nat_port), proto, CT_DIR_REPLY), e)
        .unwrap();
}

/// The NodePort seeded with SNAT over `ports` and a live flow of OTHER_CLIENT on
/// NODE_IP:NAT_PORT.
fn node_port_with_port_taken(ports: std::ops::RangeInclusive<u16>) -> Seed {
    Box::new(move |m| {
        (snat_on(node_port(), Masquerade::Always, ports.clone()))(m);
        let svc = m.frontend_id(node_port()).unwrap().unwrap();
        let other = sa(OTHER_CLIENT, 7777);
        seed_snat_flow(
            m,
            svc,
            other,
            sa(NODE_IP, 30080),
            (PROTO_TCP, NAT_PORT),
            Duration::ZERO,
        );
    })
}

/// Another external client, holding a SNAT port in the collision cases.
const OTHER_CLIENT: [u8; 4] = [198, 51, 100, 30];

/// Asserts every conntrack entry of `client`'s flow is SNATed to NODE_IP:`port`.
fn assert_snat_to(m: &DatapathMaps, client: SocketAddrV4, port: u16) {
    let mine: Vec<_> = m
        .conntrack()
        .unwrap()
        .into_iter()
        .filter(|f| f.client == client)
        .collect();
    assert_eq!(mine.len(), 2, "both entries of {client}'s flow");
    assert!(
        mine.iter().all(|f| f.masquerade == Some(sa(NODE_IP, port))),
        "{client} SNATed to {NODE_IP:?}:{port}: {mine:?}"
    );
}

fn snat_cases() -> Vec<Case> {
    let ext = sa(EXTERNAL_CLIENT, 5555);
    let np = sa(NODE_IP, 30080);
    let b1 = sa(B1, 8080);
    let vip = sa(CLUSTER_IP, 80);
    let pod = sa(CLIENT, 40000);
    let one_port = NAT_PORT..=NAT_PORT;
    let snated =
        |client, frontend, backend, port| Flow::new(client, frontend, backend).masqueraded(sa(NODE_IP, port));
    let payload = b"GET / HTTP/1.1\r\n\r\n";
    let host_backend = sa(NODE_IP, 8080);
    vec![
        Case {
            name: "NodePort eTP=Cluster to a backend at the node's own address (host network): DNAT only, no SNAT",
            seed: Box::new(move |m| {
                m.upsert_backend(ID1, host_backend).unwrap();
                m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
                m.set_snat(&snat_settings(NAT_PORT..=NAT_PORT)).unwrap();
                m.upsert_frontend(node_port(), &[ID1], snat_options(Masquerade::Always))
                    .unwrap();
            }),
            steps: handshake(&Flow::new(ext, np, host_backend)),
            check: Box::new(move |m, _| {
                assert_eq!(event(m, "snat"), 0);
                assert_eq!(event(m, "new_flow"), 1);
                assert!(
                    m.conntrack().unwrap().iter().all(|f| f.masquerade.is_none()),
                    "the host-network backend sees the client's own address"
                );
            }),
        },
        Case {
            name: "NodePort eTP=Cluster: SNAT to the node address and a port of the range; replies un-SNATed and un-DNATed",
            seed: snat_on(node_port(), Masquerade::Always, one_port.clone()),
            steps: {
                let f = snated(ext, np, b1, NAT_PORT);
                [
                    handshake(&f),
                    vec![f.request(ACK, payload), f.reply(ACK, b"200 OK")],
                ]
                .concat()
            },
            check: Box::new(move |m, _| {
                assert_snat_to(m, ext, NAT_PORT);
                assert_eq!(event(m, "snat"), 1);
                assert_eq!(event(m, "new_flow"), 1);
                assert_eq!(event(m, "reply_nat"), 2);
                assert_eq!(event(m, "masquerade"), 0, "SNAT is not hairpin masquerade");
            }),
        },
        Case {
            name: "NodePort UDP eTP=Cluster: SNAT with a valid checksum; the reply goes back to the client's port",
            seed: Box::new(move |m| {
                m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
                m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
                m.set_snat(&snat_settings(NAT_PORT..=NAT_PORT)).unwrap();
                m.upsert_frontend(node_port_udp(), &[ID1], snat_options(Masquerade::Always))
                    .unwrap();
            }),
            steps: {
                let f = snated(ext, sa(NODE_IP, 30053), sa(B1, 5353), NAT_PORT);
                vec![
                    f.udp_request(b"query"),
                    f.udp_reply(b"answer"),
                    f.udp_request(b"again"),
                ]
            },
            check: Box::new(move |m, _| {
                assert_snat_to(m, ext, NAT_PORT);
                assert_eq!((event(m, "snat"), event(m, "ct_hit")), (1, 1));
            }),
        },
        Case {
            name: "SNAT port collision: a live flow holds the first port, the new flow gets the other one",
            seed: node_port_with_port_taken(NAT_PORT..=NAT_PORT + 1),
            steps: handshake(&snated(ext, np, b1, NAT_PORT + 1)),
            check: Box::new(move |m, _| {
                assert_snat_to(m, ext, NAT_PORT + 1);
                assert_snat_to(m, sa(OTHER_CLIENT, 7777), NAT_PORT);
                assert_eq!(m.conntrack().unwrap().len(), 4);
            }),
        },
        Case {
            name: "SNAT range full: the new flow is dropped and counted, the holder keeps its port",
            seed: node_port_with_port_taken(NAT_PORT..=NAT_PORT),
            steps: vec![
                step(tcp(ext, np, SYN, b""), DROP, Expect::Unchanged),
                // The holder's replies still go back to it.
                snated(sa(OTHER_CLIENT, 7777), np, b1, NAT_PORT).reply(ACK, b"still mine"),
            ],
            check: Box::new(move |m, _| {
                assert_eq!(event(m, "snat_port_exhausted"), 1);
                assert_eq!((event(m, "snat"), event(m, "new_flow")), (0, 0));
                assert_eq!(m.conntrack().unwrap().len(), 2, "no entry for the dropped flow");
                assert_snat_to(m, sa(OTHER_CLIENT, 7777), NAT_PORT);
            }),
        },
        Case {
            name: "SNAT reclaims a port whose flow is dead (and that flow's service entry)",
            seed: Box::new(move |m| {
                (snat_on(node_port(), Masquerade::Always, NAT_PORT..=NAT_PORT))(m);
                let svc = m.frontend_id(node_port()).unwrap().unwrap();
                let old = (PROTO_TCP, NAT_PORT);
                seed_snat_flow(m, svc, sa(OTHER_CLIENT, 7777), np, old, Duration::from_mins(1));
                // Closed a minute ago: past the 10 s closing timeout.
                for (key, mut e) in m.conntrack_entries().unwrap() {
                    e.state |= CT_ST_CLOSING;
                    m.conntrack_insert(key, e).unwrap();
                }
            }),
            steps: handshake(&snated(ext, np, b1, NAT_PORT)),
            check: Box::new(move |m, _| {
                assert_snat_to(m, ext, NAT_PORT);
                assert_eq!(m.conntrack().unwrap().len(), 2, "the dead flow is gone");
            }),
        },
        Case {
            name: "NodePort eTP=Local: no SNAT, the backend sees the client's address",
            seed: snat_on(node_port(), Masquerade::Never, one_port.clone()),
            steps: handshake(&Flow::new(ext, np, b1)),
            check: Box::new(move |m, _| {
                assert_eq!(event(m, "snat"), 0);
                assert!(m.conntrack().unwrap().iter().all(|f| f.masquerade.is_none()));
            }),
        },
        Case {
            name: "ClusterIP from outside the cluster CIDR: SNAT; from a pod: DNAT only",
            seed: snat_on(cluster_tcp(), Masquerade::OffCluster, one_port.clone()),
            steps: [
                handshake(&snated(ext, vip, b1, NAT_PORT)),
                handshake(&Flow::new(pod, vip, b1)),
            ]
            .concat(),
            check: Box::new(move |m, _| {
                assert_snat_to(m, ext, NAT_PORT);
                assert_eq!(event(m, "snat"), 1);
                assert_eq!(event(m, "new_flow"), 2);
                let from_pod = m.conntrack().unwrap().into_iter().filter(|f| f.client == pod);
                assert!(from_pod.map(|f| f.masquerade).all(|m| m.is_none()));
            }),
        },
        Case {
            name: "ClusterIP with masqueradeAll: a pod's flow is SNATed too",
            seed: snat_on(cluster_tcp(), Masquerade::Always, one_port.clone()),
            steps: handshake(&snated(pod, vip, b1, NAT_PORT)),
            check: Box::new(move |m, _| assert_snat_to(m, pod, NAT_PORT)),
        },
        Case {
            name: "hairpin on a SNAT frontend: masqueraded to the hairpin address (port kept), not SNATed",
            seed: Box::new(move |m| {
                (snat_on(cluster_tcp(), Masquerade::Always, NAT_PORT..=NAT_PORT))(m);
                m.set_masquerade_address(Some(Ipv4Addr::from(MASQ))).unwrap();
            }),
            steps: handshake(&Flow::new(sa(B1, 40000), vip, b1).masqueraded(sa(MASQ, 40000))),
            check: Box::new(|m, _| {
                assert_eq!((event(m, "masquerade"), event(m, "snat")), (1, 0));
                assert_eq!(
                    m.snat().unwrap(),
                    snat_settings(NAT_PORT..=NAT_PORT),
                    "settings kept"
                );
            }),
        },
        Case {
            name: "SNAT frontend without a node address configured: DNAT only",
            seed: Box::new(|m| {
                (snat_on(node_port(), Masquerade::Always, NAT_PORT..=NAT_PORT))(m);
                m.set_snat(&SnatSettings::default()).unwrap();
            }),
            steps: handshake(&Flow::new(
                sa(EXTERNAL_CLIENT, 5555),
                sa(NODE_IP, 30080),
                sa(B1, 8080),
            )),
            check: Box::new(|m, _| assert_eq!(event(m, "snat"), 0)),
        },
    ]
}

#[test]
fn snat_fixtures() {
    run_table(&snat_cases());
}

/// TC egress (`kproxy_tc_egress`): the reply path alone. A reply that reached no ingress
/// hook as a reply (generated on the node, or de-masqueraded by netfilter) is
/// reverse-translated; a packet to a frontend is never DNATed; a reply ingress already
/// translated, and anything unrelated, passes untouched.
fn egress_cases() -> Vec<Case> {
    let client = sa(CLIENT, 40000);
    let vip = sa(CLUSTER_IP, 80);
    let b1 = sa(B1, 8080);
    let to_b1 = Flow::new(client, vip, b1);
    let dns = Flow::new(client, sa(CLUSTER_IP, 53), sa(B1, 5353));
    let ext = sa(EXTERNAL_CLIENT, 5555);
    let node_port_addr = sa(NODE_IP, 30080);
    let host_backend = sa(NODE_IP, 8080);
    let host_flow = Flow::new(ext, node_port_addr, host_backend);
    vec![
        Case {
            name: "egress: a reply of a translated TCP flow is reverse-NATed (SYN-ACK, data, FIN)",
            seed: Box::new(move |m| {
                seed_backends(m);
                let svc = seed_service(m, cluster_tcp(), &[ID1]);
                seed_flow(m, svc, client, vip, (ID1, b1), PROTO_TCP, Duration::ZERO);
            }),
            steps: vec![
                to_b1.reply(SYN_ACK, b""),
                to_b1.reply(ACK, b"hello"),
                to_b1.reply(FIN_ACK, b""),
            ],
            check: Box::new(move |m, _| {
                assert_eq!(event(m, "reply_nat"), 3);
                assert_eq!(event(m, "new_flow"), 0);
                let e = m
                    .conntrack_get(&ct_key(client, vip, PROTO_TCP, CT_DIR_SERVICE))
                    .unwrap()
                    .expect("service entry");
                assert_ne!(
                    e.state & CT_ST_PEER_FIN,
                    0,
                    "a FIN on egress half-closes the flow too"
                );
            }),
        },
        Case {
            name: "egress: a UDP reply is reverse-NATed with a valid checksum",
            seed: Box::new(move |m| {
                m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
                let svc = seed_service(m, cluster_udp(), &[ID1]);
                seed_flow(
                    m,
                    svc,
                    client,
                    sa(CLUSTER_IP, 53),
                    (ID1, sa(B1, 5353)),
                    PROTO_UDP,
                    Duration::ZERO,
                );
            }),
            steps: vec![dns.udp_reply(b"answer")],
            check: Box::new(|m, _| assert_eq!(event(m, "reply_nat"), 1)),
        },
        Case {
            name: "egress: a host-network backend's NodePort reply (generated on the node) leaves from the NodePort",
            seed: Box::new(move |m| {
                m.upsert_backend(ID1, host_backend).unwrap();
                m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
                let svc = seed_service(m, node_port(), &[ID1]);
                seed_flow(
                    m,
                    svc,
                    ext,
                    node_port_addr,
                    (ID1, host_backend),
                    PROTO_TCP,
                    Duration::ZERO,
                );
            }),
            steps: vec![host_flow.reply(SYN_ACK, b""), host_flow.reply(ACK, b"page")],
            check: Box::new(|m, _| assert_eq!(event(m, "reply_nat"), 2)),
        },
        Case {
            name: "egress: a packet to a frontend is not DNATed, and starts no flow",
            seed: Box::new(|m| {
                seed_backends(m);
                seed_service(m, cluster_tcp(), &[ID1]);
                m.set_node_addresses(&[Ipv4Addr::from(NODE_IP)]).unwrap();
                seed_service(m, node_port(), &[ID1]);
            }),
            steps: vec![
                untouched(tcp(client, vip, SYN, b"")),
                untouched(udp(client, sa(CLUSTER_IP, 53), b"q")),
                untouched(tcp(ext, node_port_addr, SYN, b"")),
            ],
            check: Box::new(|m, _| {
                assert!(m.conntrack().unwrap().is_empty(), "conntrack must stay empty");
                assert_eq!(event(m, "new_flow"), 0);
            }),
        },
        Case {
            name: "egress: a reply ingress already translated, and unrelated packets, pass untouched",
            seed: Box::new(move |m| {
                seed_backends(m);
                let svc = seed_service(m, cluster_tcp(), &[ID1]);
                seed_flow(m, svc, client, vip, (ID1, b1), PROTO_TCP, Duration::ZERO);
            }),
            steps: vec![
                untouched(tcp(vip, client, SYN_ACK, b"")),
                untouched(tcp(b1, sa(CLIENT, 40001), ACK, b"")),
                untouched(tcp(sa(B2, 8080), client, ACK, b"")),
                untouched(udp(b1, client, b"x")),
                untouched(arp(CLIENT, B1)),
            ],
            check: Box::new(|m, _| {
                assert_eq!(event(m, "reply_nat"), 0);
                assert_eq!(m.conntrack().unwrap().len(), 2);
            }),
        },
    ]
}

#[test]
fn egress_fixtures() {
    run_table_on(&egress_cases(), &[Hook::TcEgress]);
}

/// With the default range, 128 flows of one client (distinct source ports) to one
/// backend through a NodePort each get their own port in the range, and each reply
/// goes back to its own client port.
#[test]
fn snat_ports_are_distinct_and_in_range() {
    let range = SnatSettings::default().ports;
    for hook in HOOKS {
        let pins = PinDir::new("snp");
        let mut dp = pins.load();
        (snat_on(node_port(), Masquerade::Always, range.clone()))(&mut dp.maps);
        let program = dp.ebpf.program(hook.program()).unwrap();
        let np = sa(NODE_IP, 30080);
        let mut ports = std::collections::BTreeSet::new();
        for cport in 20000..20128 {
            let client = sa(EXTERNAL_CLIENT, cport);
            let (code, out) = test_run(program, &tcp(client, np, SYN, b""), None).unwrap();
            assert_eq!(code, hook.code(PASS), "{hook:?}");
            assert_checksums_valid(&out);
            let nat_port = u16::from_be_bytes([out[34], out[35]]);
            assert!(
                range.contains(&nat_port),
                "[{hook:?}] port {nat_port} outside {range:?}"
            );
            assert_eq!(
                out,
                tcp(sa(NODE_IP, nat_port), sa(B1, 8080), SYN, b""),
                "[{hook:?}]"
            );
            assert!(ports.insert(nat_port), "[{hook:?}] port {nat_port} given twice");
            let reply = tcp(sa(B1, 8080), sa(NODE_IP, nat_port), SYN_ACK, b"");
            let (code, back) = test_run(program, &reply, None).unwrap();
            assert_eq!(code, hook.code(PASS), "{hook:?}");
            assert_eq!(
                back,
                tcp(np, client, SYN_ACK, b""),
                "[{hook:?}] reply of {client}"
            );
        }
        assert_eq!(event(&dp.maps, "snat"), 128);
    }
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
            Flow::new(ext, np2, b2).request(SYN, b""),
            untouched(tcp(ext, sa(NOT_NODE_IP, 30080), SYN, b"")),
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
        let passed = vec![Flow::new(ext, np, b1).request(ACK, b"again")];
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

// ---- ICMP errors about translated flows (`icmp_error`): translated with their flow ----

/// A router on the backends' side and one on the external clients' side.
const POD_ROUTER: [u8; 4] = [10, 0, 2, 1];
const EXT_ROUTER: [u8; 4] = [198, 51, 100, 1];

/// The UDP ClusterIP (53 → backend 1's 5353) with `client`'s flow on it, seen 10 s ago.
fn dns_flow_of(client: SocketAddrV4) -> Seed {
    Box::new(move |m| {
        (dns_on_b1())(m);
        let svc = m.frontend_id(cluster_udp()).unwrap().unwrap();
        let (vip, b1) = (sa(CLUSTER_IP, 53), sa(B1, 5353));
        seed_flow(m, svc, client, vip, (ID1, b1), PROTO_UDP, Duration::from_secs(10));
    })
}

/// The TCP ClusterIP over backend 1 with `client`'s flow on it, seen 10 s ago.
fn web_flow_of(client: SocketAddrV4) -> Seed {
    Box::new(move |m| {
        seed_backends(m);
        let svc = seed_service(m, cluster_tcp(), &[ID1]);
        let (vip, b1) = (sa(CLUSTER_IP, 80), sa(B1, 8080));
        seed_flow(m, svc, client, vip, (ID1, b1), PROTO_TCP, Duration::from_secs(10));
    })
}

/// The NodePort SNATed over NAT_PORT with `client`'s flow on it, seen 10 s ago.
fn snated_node_port_flow_of(client: SocketAddrV4) -> Seed {
    Box::new(move |m| {
        (snat_on(node_port(), Masquerade::Always, NAT_PORT..=NAT_PORT))(m);
        let svc = m.frontend_id(node_port()).unwrap().unwrap();
        let np = sa(NODE_IP, 30080);
        seed_snat_flow(m, svc, client, np, (PROTO_TCP, NAT_PORT), Duration::from_secs(10));
    })
}

/// One error translated, counted, and no conntrack entry refreshed by it (netfilter
/// does not refresh a flow on a RELATED packet).
fn translated_once() -> Check {
    Box::new(|m, _| {
        assert_eq!(event(m, "icmp_error_nat"), 1);
        let now = kproxy::ebpf::ktime_now_ns();
        for f in m.conntrack().unwrap() {
            let age = now.saturating_sub(f.last_seen_ns);
            assert!(age >= 9_000_000_000, "{f:?} refreshed by an ICMP error");
        }
    })
}

/// Nothing translated.
fn no_error_translated() -> Check {
    Box::new(|m, _| assert_eq!(event(m, "icmp_error_nat"), 0))
}

/// Errors travelling toward the client, about a packet the client side sent through
/// the translation: the same bytes at TC ingress (from the backend's veth) and at TC
/// egress (errors the node sends itself about a packet it forwarded).
fn icmp_to_client_cases() -> Vec<Case> {
    let client = sa(CLIENT, 40000);
    let vip = sa(CLUSTER_IP, 80);
    let b1 = sa(B1, 8080);
    let dns_vip = sa(CLUSTER_IP, 53);
    let dns_b1 = sa(B1, 5353);
    let ext = sa(EXTERNAL_CLIENT, 5555);
    let np = sa(NODE_IP, 30080);
    let snat = sa(NODE_IP, NAT_PORT);
    let query = b"\x12\x34 query";
    let payload = [0x5au8; 200];
    vec![
        Case {
            name: "icmp: the backend's port unreachable about a ClusterIP datagram comes from the ClusterIP about client -> ClusterIP",
            seed: dns_flow_of(client),
            steps: vec![step(
                icmp_error(B1, CLIENT, PortUnreachable, &udp(client, dns_b1, query), None),
                PASS,
                Expect::Exactly(icmp_error(
                    CLUSTER_IP,
                    CLIENT,
                    PortUnreachable,
                    &udp(client, dns_vip, query),
                    None,
                )),
            )],
            check: translated_once(),
        },
        Case {
            name: "icmp: a quoted UDP checksum of zero stays zero",
            seed: dns_flow_of(client),
            steps: vec![step(
                icmp_error(
                    B1,
                    CLIENT,
                    PortUnreachable,
                    &zero_udp_checksum(udp(client, dns_b1, query)),
                    None,
                ),
                PASS,
                Expect::Exactly(icmp_error(
                    CLUSTER_IP,
                    CLIENT,
                    PortUnreachable,
                    &zero_udp_checksum(udp(client, dns_vip, query)),
                    None,
                )),
            )],
            check: translated_once(),
        },
        Case {
            name: "icmp: a router's time exceeded quoting 8 bytes of TCP comes from the ClusterIP",
            seed: web_flow_of(client),
            steps: vec![step(
                icmp_error(
                    POD_ROUTER,
                    CLIENT,
                    TimeExceeded,
                    &tcp(client, b1, ACK, &payload),
                    Some(8),
                ),
                PASS,
                Expect::Exactly(icmp_error(
                    CLUSTER_IP,
                    CLIENT,
                    TimeExceeded,
                    &tcp(client, vip, ACK, &payload),
                    Some(8),
                )),
            )],
            check: translated_once(),
        },
        Case {
            name: "icmp: frag-needed about a SNATed NodePort segment goes to the external client, quote un-SNATed (TCP checksum too)",
            seed: snated_node_port_flow_of(ext),
            steps: vec![step(
                icmp_error(
                    POD_ROUTER,
                    NODE_IP,
                    FragNeeded(1280),
                    &tcp(snat, b1, ACK, &payload),
                    None,
                ),
                PASS,
                Expect::Exactly(icmp_error(
                    NODE_IP,
                    EXTERNAL_CLIENT,
                    FragNeeded(1280),
                    &tcp(ext, np, ACK, &payload),
                    None,
                )),
            )],
            check: translated_once(),
        },
        Case {
            name: "icmp: errors about unknown flows, other ICMP, and unparsable quotes pass untouched",
            seed: web_flow_of(client),
            steps: vec![
                untouched(icmp_error(
                    B1,
                    CLIENT,
                    PortUnreachable,
                    &tcp(client, sa(B2, 8080), SYN, b""),
                    None,
                )),
                untouched(icmp_error(
                    B1,
                    CLIENT,
                    PortUnreachable,
                    &tcp(sa(CLIENT, 40001), b1, SYN, b""),
                    None,
                )),
                untouched(icmp_error(
                    B1,
                    CLIENT,
                    PortUnreachable,
                    &udp(client, b1, b"x"),
                    None,
                )),
                untouched(icmp_error(
                    B1,
                    CLIENT,
                    PortUnreachable,
                    &tcp(client, b1, SYN, b""),
                    Some(4),
                )),
                untouched(icmp_error(
                    B1,
                    CLIENT,
                    PortUnreachable,
                    &as_fragment(&tcp(client, b1, ACK, &payload), false, 64),
                    None,
                )),
                untouched(with_ipv4_options(&icmp_error(
                    B1,
                    CLIENT,
                    PortUnreachable,
                    &tcp(client, b1, SYN, b""),
                    None,
                ))),
                untouched(echo_request(CLIENT, B1)),
            ],
            check: no_error_translated(),
        },
        Case {
            name: "icmp: an error about a flow that expired passes untouched",
            seed: Box::new(move |m| {
                (dns_on_b1())(m);
                let svc = m.frontend_id(cluster_udp()).unwrap().unwrap();
                seed_flow(
                    m,
                    svc,
                    client,
                    dns_vip,
                    (ID1, dns_b1),
                    PROTO_UDP,
                    Duration::from_mins(10),
                );
            }),
            steps: vec![untouched(icmp_error(
                B1,
                CLIENT,
                PortUnreachable,
                &udp(client, dns_b1, query),
                None,
            ))],
            check: no_error_translated(),
        },
    ]
}

/// Errors travelling toward the backend, about a reverse-translated reply (TC ingress
/// only: the node's own errors about a reply it forwarded go to the frontend address).
fn icmp_to_backend_cases() -> Vec<Case> {
    let client = sa(CLIENT, 40000);
    let b1 = sa(B1, 8080);
    let dns_vip = sa(CLUSTER_IP, 53);
    let dns_b1 = sa(B1, 5353);
    let ext = sa(EXTERNAL_CLIENT, 5555);
    let np = sa(NODE_IP, 30080);
    let snat = sa(NODE_IP, NAT_PORT);
    let page = [0xa5u8; 1000];
    vec![
        Case {
            name: "icmp: the client's router's frag-needed to node:NodePort about a reply goes to the backend, about backend -> SNAT address",
            seed: snated_node_port_flow_of(ext),
            steps: vec![step(
                icmp_error(
                    EXT_ROUTER,
                    NODE_IP,
                    FragNeeded(1280),
                    &tcp(np, ext, ACK, &page),
                    Some(8),
                ),
                PASS,
                Expect::Exactly(icmp_error(
                    NODE_IP,
                    B1,
                    FragNeeded(1280),
                    &tcp(b1, snat, ACK, &page),
                    Some(8),
                )),
            )],
            check: translated_once(),
        },
        Case {
            name: "icmp: a client's port unreachable about a ClusterIP reply goes to the backend, about backend -> client",
            seed: dns_flow_of(client),
            steps: vec![step(
                icmp_error(
                    CLIENT,
                    CLUSTER_IP,
                    PortUnreachable,
                    &udp(dns_vip, client, b"late answer"),
                    None,
                ),
                PASS,
                Expect::Exactly(icmp_error(
                    CLIENT,
                    B1,
                    PortUnreachable,
                    &udp(dns_b1, client, b"late answer"),
                    None,
                )),
            )],
            check: translated_once(),
        },
    ]
}

/// An ICMP echo request (not an error: never translated).
fn echo_request(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .icmpv4_echo_request(7, 1);
    let mut out = Vec::with_capacity(b.size(8));
    b.write(&mut out, b"pingpong").unwrap();
    out
}

#[test]
fn icmp_error_fixtures() {
    run_table_on(&icmp_to_client_cases(), &[Hook::Tc, Hook::TcEgress]);
    run_table_on(&icmp_to_backend_cases(), &[Hook::Tc]);
}

/// XDP leaves ICMP errors to TC (attached wherever XDP is); TC egress leaves errors
/// toward backends alone (the reply-only hook never translates toward a backend).
#[test]
fn icmp_errors_pass_xdp_and_egress_toward_backends() {
    let untouched_all = |cases: Vec<Case>| -> Vec<Case> {
        cases
            .into_iter()
            .map(|c| Case {
                steps: c.steps.into_iter().map(|s| untouched(s.input)).collect(),
                check: no_error_translated(),
                ..c
            })
            .collect()
    };
    run_table_on(&untouched_all(icmp_to_client_cases()), &[Hook::Xdp]);
    run_table_on(
        &untouched_all(icmp_to_backend_cases()),
        &[Hook::Xdp, Hook::TcEgress],
    );
}

/// Each error is translated once: what TC ingress translated passes TC egress (and TC
/// ingress again) untouched.
#[test]
fn icmp_errors_are_translated_once() {
    for case in icmp_to_client_cases().into_iter().chain(icmp_to_backend_cases()) {
        if !matches!(case.steps[0].output, Expect::Exactly(_)) {
            continue;
        }
        let pins = PinDir::new("fx1");
        let mut dp = pins.load();
        (case.seed)(&mut dp.maps);
        let ingress = dp.ebpf.program(Hook::Tc.program()).expect("program");
        let out =
            run_steps(ingress, Hook::Tc, &case.steps, None).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let again = [untouched(out[0].clone())];
        run_steps(ingress, Hook::Tc, &again, None)
            .unwrap_or_else(|e| panic!("{}: ingress again: {e}", case.name));
        let egress = dp.ebpf.program(Hook::TcEgress.program()).expect("program");
        run_steps(egress, Hook::TcEgress, &again, None)
            .unwrap_or_else(|e| panic!("{}: egress: {e}", case.name));
        assert_eq!(event(&dp.maps, "icmp_error_nat"), 1, "{}", case.name);
        println!("ok   {}", case.name);
    }
}
