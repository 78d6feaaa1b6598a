//! BPF_PROG_TEST_RUN fixtures for IPv4 fragments (issue 13 item 5): every fragment of a
//! datagram gets the translation of its first fragment, whose ports the datapath keeps by
//! (source, destination, IP id, protocol). Expected fragments are cut from the datagram
//! etherparse builds already translated, so the first fragment's L4 checksum must be the
//! whole translated datagram's; the outputs are also reassembled and their checksums
//! summed independently (`kproxy_testbed::packet`). Runs against TC ingress and XDP (the
//! same datapath), and the reply cases against TC egress.

use std::time::Duration;

use kproxy::{
    ebpf::{BackendId, DatapathMaps, Frontend},
    model::Protocol,
};
use kproxy_common::lb::PROTO_UDP;
use kproxy_testbed::{
    fixture::{
        Case, Expect, Hook, Seed, Step,
        Verdict::{Drop as DROP, Pass as PASS, Reject as REJECT},
        run_table, run_table_on, sa, seed_flow, seed_service, step, untouched,
    },
    forwarding::event,
    packet::{assert_checksums_valid, fix_ipv4_checksum, fragments, port_unreachable, reassemble, udp},
};

const CLIENT: [u8; 4] = [10, 0, 1, 5];
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
const OTHER_IP: [u8; 4] = [10, 96, 0, 99];
const B1: [u8; 4] = [10, 0, 2, 7];
const ID1: BackendId = BackendId(1);
/// IP ids of the request and the reply datagrams.
const REQ_ID: u16 = 0x1234;
const REPLY_ID: u16 = 0x4321;
/// IP payload per fragment: three fragments for a 100-byte UDP payload (108 bytes).
const CHUNK: usize = 40;

fn cluster_udp() -> Frontend {
    cluster_udp_port(53)
}

fn cluster_udp_port(port: u16) -> Frontend {
    Frontend::Address {
        addr: sa(CLUSTER_IP, port),
        proto: Protocol::Udp,
    }
}

/// The UDP ClusterIP 10.96.0.10:53 over backend 1 (10.0.2.7:5353).
fn dns_on_b1() -> Seed {
    Box::new(|m| {
        m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
        seed_service(m, cluster_udp(), &[ID1]);
    })
}

/// 100 bytes that are not all alike (so a misplaced fragment would show).
fn payload(seed: u8) -> Vec<u8> {
    (0..100u8).map(|i| i.wrapping_mul(7).wrapping_add(seed)).collect()
}

/// Steps: each fragment of `input` passed on as the same fragment of `output`.
fn translated_fragments(input: &[u8], output: &[u8], id: u16) -> Vec<Step> {
    let ins = fragments(input, id, CHUNK);
    let outs = fragments(output, id, CHUNK);
    assert_eq!(ins.len(), 3);
    ins.into_iter()
        .zip(outs)
        .map(|(i, o)| step(i, PASS, Expect::Exactly(o)))
        .collect()
}

/// `outputs` reassemble to a datagram with valid checksums, equal to `whole`.
fn assert_reassembles(outputs: &[Vec<u8>], whole: &[u8]) {
    let datagram = reassemble(outputs);
    assert_checksums_valid(&datagram);
    // Fragments carry an IP id and no DF; etherparse's whole datagram has id 0 and DF.
    let mut want = whole.to_vec();
    want[18..20].copy_from_slice(&datagram[18..20]);
    want[20..22].copy_from_slice(&[0, 0]);
    fix_ipv4_checksum(&mut want);
    assert_eq!(datagram, want, "the reassembled datagram");
}

fn events(m: &DatapathMaps, frag_nat: u64, frag_unknown: u64) {
    assert_eq!(event(m, "frag_nat"), frag_nat, "frag_nat");
    assert_eq!(event(m, "frag_unknown"), frag_unknown, "frag_unknown");
}

fn cases() -> Vec<Case> {
    let client = sa(CLIENT, 40000);
    let vip = sa(CLUSTER_IP, 53);
    let b1 = sa(B1, 5353);
    let (query, answer) = (payload(1), payload(2));
    let request = udp(client, vip, &query);
    let reply = udp(b1, client, &answer);
    let request_at_b1 = udp(client, b1, &query);
    let reply_from_vip = udp(vip, client, &answer);
    vec![
        Case {
            name: "fragments of a UDP datagram to a ClusterIP all get its DNAT, the reply's all its reverse NAT",
            seed: dns_on_b1(),
            steps: [
                translated_fragments(&request, &request_at_b1, REQ_ID),
                translated_fragments(&reply, &reply_from_vip, REPLY_ID),
            ]
            .concat(),
            check: Box::new(move |m, outputs| {
                assert_reassembles(&outputs[..3], &request_at_b1);
                assert_reassembles(&outputs[3..], &reply_from_vip);
                events(m, 4, 0);
                assert_eq!(event(m, "new_flow"), 1, "one flow, made by the first fragment");
                assert_eq!(event(m, "reply_nat"), 1, "the reply's first fragment");
                assert_eq!(event(m, "pass_unhandled"), 0);
            }),
        },
        Case {
            name: "a later fragment whose first was not seen: counted; dropped to a frontend's address, else passed",
            seed: dns_on_b1(),
            steps: vec![
                step(
                    fragments(&request, REQ_ID, CHUNK)[1].clone(),
                    DROP,
                    Expect::Unchanged,
                ),
                // Another port of the frontend's address: its ports are unknown too.
                step(
                    fragments(&udp(client, sa(CLUSTER_IP, 9999), &query), REQ_ID + 1, CHUNK)[2].clone(),
                    DROP,
                    Expect::Unchanged,
                ),
                untouched(fragments(&udp(client, sa(OTHER_IP, 53), &query), REQ_ID, CHUNK)[2].clone()),
            ],
            check: Box::new(|m, _| {
                events(m, 0, 3);
                assert!(m.conntrack().unwrap().is_empty(), "no flow from a later fragment");
            }),
        },
        Case {
            name: "the frontend's address is forgotten with its last frontend: an unknown later fragment passes",
            seed: Box::new(|m| {
                m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
                seed_service(m, cluster_udp(), &[ID1]);
                seed_service(m, cluster_udp_port(54), &[ID1]);
                m.remove_frontend(cluster_udp()).unwrap();
                m.remove_frontend(cluster_udp_port(54)).unwrap();
                seed_service(m, cluster_udp(), &[ID1]);
                m.remove_frontend(cluster_udp()).unwrap();
            }),
            steps: vec![untouched(fragments(&request, REQ_ID, CHUNK)[1].clone())],
            check: Box::new(|m, _| events(m, 0, 1)),
        },
        Case {
            name: "the frontend's address stays while another frontend uses it",
            seed: Box::new(|m| {
                m.upsert_backend(ID1, sa(B1, 5353)).unwrap();
                seed_service(m, cluster_udp(), &[ID1]);
                seed_service(m, cluster_udp_port(54), &[ID1]);
                m.remove_frontend(cluster_udp()).unwrap();
            }),
            steps: vec![step(
                fragments(&request, REQ_ID, CHUNK)[1].clone(),
                DROP,
                Expect::Unchanged,
            )],
            check: Box::new(|m, _| events(m, 0, 1)),
        },
        Case {
            name: "fragments of a datagram to no service pass untouched, first and later",
            seed: dns_on_b1(),
            steps: fragments(&udp(client, sa(OTHER_IP, 53), &query), REQ_ID, CHUNK)
                .into_iter()
                .map(untouched)
                .collect(),
            check: Box::new(|m, _| {
                events(m, 0, 0);
                assert!(m.conntrack().unwrap().is_empty());
            }),
        },
        Case {
            name: "fragments to a ClusterIP without endpoints: the first is answered, the later ones dropped",
            seed: Box::new(|m| {
                seed_service(m, cluster_udp(), &[]);
            }),
            steps: {
                let frags = fragments(&request, REQ_ID, CHUNK);
                vec![
                    step(
                        frags[0].clone(),
                        REJECT,
                        Expect::Exactly(port_unreachable(&frags[0], 8)),
                    ),
                    step(frags[1].clone(), DROP, Expect::Unchanged),
                    step(frags[2].clone(), DROP, Expect::Unchanged),
                ]
            },
            check: Box::new(|m, _| events(m, 0, 0)),
        },
    ]
}

#[test]
fn fragment_fixtures() {
    run_table(&cases());
}

/// TC egress (the reply path alone): a fragmented reply of a translated flow.
fn egress_cases() -> Vec<Case> {
    let client = sa(CLIENT, 40000);
    let vip = sa(CLUSTER_IP, 53);
    let b1 = sa(B1, 5353);
    let answer = payload(3);
    let reply = udp(b1, client, &answer);
    let reply_from_vip = udp(vip, client, &answer);
    vec![Case {
        name: "egress: the fragments of a reply all get its reverse NAT",
        seed: Box::new(move |m| {
            m.upsert_backend(ID1, b1).unwrap();
            let svc = seed_service(m, cluster_udp(), &[ID1]);
            seed_flow(m, svc, client, vip, (ID1, b1), PROTO_UDP, Duration::ZERO);
        }),
        steps: translated_fragments(&reply, &reply_from_vip, REPLY_ID),
        check: Box::new(move |m, outputs| {
            assert_reassembles(outputs, &reply_from_vip);
            events(m, 2, 0);
        }),
    }]
}

#[test]
fn egress_fragment_fixtures() {
    run_table_on(&egress_cases(), &[Hook::TcEgress]);
}
