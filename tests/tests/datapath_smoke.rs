//! End-to-end smoke test of the TC datapath with real sockets: a client namespace and a
//! backend namespace routed through a "node" namespace whose veths run
//! `kproxy_tc_ingress`. A UDP datagram and a TCP connection to a ClusterIP reach the backend; replies
//! come back from the ClusterIP (the client's sockets are connected to it, so they would
//! not accept a reply from the backend's own address).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use kproxy::{
    ebpf::{self, BackendId, Frontend, FrontendOptions},
    model::Protocol,
};
use kproxy_testbed::{
    netns::{NetNs, unique_name, veth_pair},
    pins::PinDir,
};

fn sysctl(ns: &NetNs, setting: &str) {
    let ok = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sysctl", "-qw", setting])
        .status()
        .expect("run sysctl")
        .success();
    assert!(ok, "sysctl {setting} in {}", ns.name());
}

#[test]
fn udp_and_tcp_to_cluster_ip_reach_backend_and_replies_come_from_cluster_ip() {
    let client = NetNs::new("scl");
    let node = NetNs::new("snd");
    let backend = NetNs::new("sbe");
    let (c_if, nc_if) = (unique_name("c"), unique_name("nc"));
    let (b_if, nb_if) = (unique_name("b"), unique_name("nb"));
    veth_pair(&client, &c_if, "10.210.1.2/24", &node, &nc_if, "10.210.1.1/24");
    veth_pair(&backend, &b_if, "10.210.2.2/24", &node, &nb_if, "10.210.2.1/24");
    client.ip(&["route", "add", "default", "via", "10.210.1.1"]);
    backend.ip(&["route", "add", "default", "via", "10.210.2.1"]);
    sysctl(&node, "net.ipv4.ip_forward=1");

    let pins = PinDir::new("smk");
    let mut dp = pins.load();
    dp.maps
        .upsert_backend(BackendId(1), "10.210.2.2:8080".parse().unwrap())
        .unwrap();
    let frontend = Frontend::Address {
        addr: "10.96.5.5:80".parse().unwrap(),
        proto: Protocol::Udp,
    };
    let svc = dp
        .maps
        .upsert_frontend(frontend, &[BackendId(1)], FrontendOptions::default())
        .unwrap();
    let tcp_frontend = Frontend::Address {
        addr: "10.96.5.5:80".parse().unwrap(),
        proto: Protocol::Tcp,
    };
    let tcp_svc = dp
        .maps
        .upsert_frontend(tcp_frontend, &[BackendId(1)], FrontendOptions::default())
        .unwrap();
    node.run(|| {
        let tc: &mut SchedClassifier = dp
            .ebpf
            .program_mut(ebpf::TC_INGRESS_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        for iface in [&nc_if, &nb_if] {
            tc.attach(iface, TcAttachType::Ingress)
                .unwrap_or_else(|e| panic!("attach TC ingress to {iface}: {e}"));
        }
    });

    let server = backend.run(|| UdpSocket::bind("10.210.2.2:8080").expect("bind backend"));
    server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        // Bounded: at most 5 datagrams or one 2 s silence.
        let mut seen = Vec::new();
        for _ in 0..5 {
            let Ok((n, from)) = server.recv_from(&mut buf) else {
                break;
            };
            seen.push(from);
            let _ = server.send_to(&buf[..n], from);
        }
        seen
    });

    let reply = client.run(|| {
        let s = UdpSocket::bind("10.210.1.2:0").expect("bind client");
        s.connect("10.96.5.5:80").expect("connect to ClusterIP");
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 64];
        // Bounded retries: the first datagram may wait for neighbour resolution.
        for _ in 0..5 {
            s.send(b"ping kproxy").expect("send");
            if let Ok(n) = s.recv(&mut buf) {
                return Some(buf[..n].to_vec());
            }
        }
        None
    });
    let seen = echo.join().expect("echo thread");
    assert_eq!(
        reply.as_deref(),
        Some(&b"ping kproxy"[..]),
        "no reply from the ClusterIP"
    );
    assert!(
        seen.iter()
            .all(|from| *from == SocketAddrV4::new(Ipv4Addr::new(10, 210, 1, 2), from.port()).into()),
        "the backend must see the client's own address: {seen:?}"
    );
    let c = dp.maps.frontend_counters(svc).unwrap();
    assert!(c.packets >= 1 && c.new_flows == 1, "service counters {c:?}");

    // TCP: connect to the ClusterIP, the backend echoes one message and closes.
    let listener = backend.run(|| TcpListener::bind("10.210.2.2:8080").expect("bind TCP backend"));
    listener.set_nonblocking(true).unwrap();
    let tcp_echo = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut conn, from)) => {
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut buf = [0u8; 64];
                    let n = conn.read(&mut buf).unwrap_or(0);
                    let _ = conn.write_all(&buf[..n]);
                    return Some(from);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        None
    });
    let echoed = client.run(|| {
        let mut s = TcpStream::connect_timeout(&"10.96.5.5:80".parse().unwrap(), Duration::from_secs(3))
            .expect("TCP connect to the ClusterIP");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"hello over tcp").unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).expect("read echo");
        buf[..n].to_vec()
    });
    let from = tcp_echo.join().expect("tcp echo thread");
    assert_eq!(echoed, b"hello over tcp");
    assert_eq!(from.map(|f| f.ip().to_string()), Some("10.210.1.2".to_string()));
    let c = dp.maps.frontend_counters(tcp_svc).unwrap();
    assert!(c.packets >= 3 && c.new_flows == 1, "TCP service counters {c:?}");
}
