//! The first program pair: XDP and TC ingress programs that count packets per
//! interface (and TC egress, under its own hook id). Proves the whole pipeline: build, verifier, BPF_PROG_TEST_RUN, attach.

use std::{net::UdpSocket, time::Duration};

use aya::{
    Ebpf, TestRun as _, TestRunOptions,
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode},
};
use kproxy::ebpf::{self, maps::counters::iface_counters};
use kproxy_common::{
    IfaceCounters,
    stats::{HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP},
};
use kproxy_testbed::{
    netns::{NetNs, unique_name, veth_pair},
    packet::udp4,
    pins::PinDir,
};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
/// The loopback device's ifindex: test runs without a context run on it.
const LO_IFINDEX: u32 = 1;

/// Loads every program with the datapath maps pinned under `pins` (never shared).
fn load_all(pins: &PinDir) -> Ebpf {
    pins.load().ebpf
}

fn read_counters(ebpf: &Ebpf, ifindex: u32, hook: u32) -> IfaceCounters {
    iface_counters(ebpf, ifindex, hook).expect("read counters")
}

#[test]
fn programs_pass_the_verifier() {
    let pins = PinDir::new("ver");
    let ebpf = load_all(&pins);
    for name in ebpf::ALL_PROGRAMS {
        let info = ebpf.program(name).expect("program").info().expect("program info");
        let insns = info
            .verified_instruction_count()
            .expect("verified instruction count");
        assert!(insns > 0, "{name}: verifier reported {insns} instructions");
        println!("{name}: {insns} verified instructions");
    }
}

#[test]
fn xdp_test_run_passes_and_counts() {
    let ns = NetNs::new("xtr");
    let pins = PinDir::new("cnt");
    ns.run(|| {
        let ebpf = load_all(&pins);
        let frame = udp4(([10, 0, 0, 1], 4000), ([10, 0, 0, 2], 53), b"kproxy");
        let mut out = vec![0u8; frame.len() + 256];
        let xdp: &Xdp = ebpf.program(ebpf::XDP_PROGRAM).unwrap().try_into().unwrap();
        for _ in 0..3 {
            let result = xdp
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut out),
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            assert_eq!(result.return_value, XDP_PASS);
            assert_eq!(
                &out[..result.data_size_out as usize],
                &frame[..],
                "packet must pass unchanged"
            );
        }
        let c = read_counters(&ebpf, LO_IFINDEX, HOOK_XDP);
        assert_eq!(
            c,
            IfaceCounters {
                packets: 3,
                bytes: 3 * frame.len() as u64
            }
        );
        assert_eq!(
            read_counters(&ebpf, LO_IFINDEX, HOOK_TC_INGRESS),
            IfaceCounters::default()
        );
    });
}

#[test]
fn tc_test_run_passes_and_counts() {
    let ns = NetNs::new("ttr");
    let pins = PinDir::new("cnt");
    ns.run(|| {
        let ebpf = load_all(&pins);
        let frame = udp4(([10, 0, 0, 1], 4000), ([10, 0, 0, 2], 53), b"kproxy tc");
        let mut out = vec![0u8; frame.len() + 256];
        let tc: &SchedClassifier = ebpf
            .program(ebpf::TC_INGRESS_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        let result = tc
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(result.return_value, TC_ACT_OK);
        assert_eq!(
            &out[..result.data_size_out as usize],
            &frame[..],
            "packet must pass unchanged"
        );
        let c = read_counters(&ebpf, LO_IFINDEX, HOOK_TC_INGRESS);
        assert_eq!(
            c,
            IfaceCounters {
                packets: 1,
                bytes: frame.len() as u64
            }
        );
        assert_eq!(
            read_counters(&ebpf, LO_IFINDEX, HOOK_XDP),
            IfaceCounters::default()
        );
    });
}

#[test]
fn tc_egress_test_run_passes_and_counts_under_its_own_hook() {
    let ns = NetNs::new("etr");
    let pins = PinDir::new("ecnt");
    ns.run(|| {
        let ebpf = load_all(&pins);
        let frame = udp4(([10, 0, 0, 1], 4000), ([10, 0, 0, 2], 53), b"kproxy");
        let mut out = vec![0u8; frame.len() + 256];
        let tc: &SchedClassifier = ebpf.program(ebpf::TC_EGRESS_PROGRAM).unwrap().try_into().unwrap();
        for _ in 0..2 {
            let result = tc
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut out),
                    ..Default::default()
                })
                .expect("BPF_PROG_TEST_RUN");
            assert_eq!(result.return_value, TC_ACT_OK);
            assert_eq!(&out[..result.data_size_out as usize], &frame[..], "unchanged");
        }
        let c = read_counters(&ebpf, LO_IFINDEX, HOOK_TC_EGRESS);
        assert_eq!(
            c,
            IfaceCounters {
                packets: 2,
                bytes: 2 * frame.len() as u64
            }
        );
        assert_eq!(
            read_counters(&ebpf, LO_IFINDEX, HOOK_TC_INGRESS),
            IfaceCounters::default()
        );
    });
}

#[test]
fn attached_to_veth_counts_real_packets() {
    const DATAGRAMS: u64 = 20;
    /// Ethernet, IPv4 and UDP headers and the 8-byte payload (veths pad nothing).
    const FRAME_BYTES: u64 = 14 + 20 + 8 + 8;
    let client = NetNs::new("cli");
    let node = NetNs::new("node");
    // A quiet link, so the programs see the datagrams and nothing else: no IPv6 (its
    // neighbour discovery, MLD and router solicitations go on for seconds after the
    // link comes up) and a permanent neighbour entry for the node (no ARP).
    client.disable_ipv6();
    node.disable_ipv6();
    let (client_if, node_if) = (unique_name("c"), unique_name("n"));
    veth_pair(
        &client,
        &client_if,
        "10.201.0.1/24",
        &node,
        &node_if,
        "10.201.0.2/24",
    );
    let node_mac = node.mac(&node_if);
    client.ip(&[
        "neigh",
        "add",
        "10.201.0.2",
        "lladdr",
        &node_mac,
        "dev",
        &client_if,
        "nud",
        "permanent",
    ]);
    let node_ifindex = node.ifindex(&node_if);

    let pins = PinDir::new("veth");
    let mut ebpf = load_all(&pins);
    node.run(|| {
        let xdp: &mut Xdp = ebpf.program_mut(ebpf::XDP_PROGRAM).unwrap().try_into().unwrap();
        xdp.attach(&node_if, XdpMode::default())
            .expect("attach XDP (native) to veth");
        let tc: &mut SchedClassifier = ebpf
            .program_mut(ebpf::TC_INGRESS_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        tc.attach(&node_if, TcAttachType::Ingress)
            .expect("attach TC ingress (tcx) to veth");
    });
    let counts = || {
        (
            read_counters(&ebpf, node_ifindex, HOOK_XDP),
            read_counters(&ebpf, node_ifindex, HOOK_TC_INGRESS),
        )
    };
    assert_eq!(
        counts(),
        Default::default(),
        "the link must be quiet before traffic"
    );

    // The node takes every datagram, so both programs have run on each by the time it
    // has them all, and it answers none (no ICMP port unreachable, so no ARP either).
    let receiver = node.run(|| UdpSocket::bind("10.201.0.2:9").expect("bind in node namespace"));
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("receive timeout");
    client.run(|| {
        let socket = UdpSocket::bind("10.201.0.1:0").expect("bind in client namespace");
        for i in 0..DATAGRAMS {
            socket
                .send_to(&i.to_be_bytes(), "10.201.0.2:9")
                .expect("send datagram");
        }
    });
    let mut buf = [0u8; 64];
    for i in 0..DATAGRAMS {
        receiver
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {DATAGRAMS} did not arrive: {e}"));
    }

    let (xdp, tc) = counts();
    println!("veth {node_if}: xdp {xdp:?}, tc {tc:?}");
    let sent = IfaceCounters {
        packets: DATAGRAMS,
        bytes: DATAGRAMS * FRAME_BYTES,
    };
    assert_eq!(xdp, sent, "XDP must count exactly the datagrams sent");
    assert_eq!(tc, sent, "TC ingress must count exactly what XDP passed");
}
