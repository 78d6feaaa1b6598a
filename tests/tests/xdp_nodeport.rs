//! NodePort traffic from an external client through the XDP program, with real sockets:
//! the seed topology's node runs `kproxy_xdp` on its external link and TC ingress on the
//! pod veths (for the replies' reverse NAT). TCP and UDP reach both backends, UDP
//! replies come from the NodePort, and the XDP program's own counters show that it
//! translated the traffic. The external client sends complete checksums (as from a
//! wire) and the pods verify them, so the hand-made RFC 1624 updates are checked by the
//! kernel here too. Three ways to forward what XDP translated, and TC only as baseline:
//! - native XDP, no redirect targets: every translated packet goes to the stack;
//! - generic (skb) XDP, the pod veths as targets: redirected straight to them;
//! - native XDP, the pod veths as targets, GRO on inside the pods (a veth accepts
//!   natively redirected frames only when its peer has NAPI: an XDP program or GRO).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
};

use kproxy_common::stats::HOOK_XDP;
use kproxy_testbed::{
    forwarding::{ExternalPath, attach, event, seed_node_port},
    hello::{HelloServer, http_get_hostname, udp_ask, udp_socket},
    manifests::{NODE_PORT, TARGET_PORT},
    pins::PinDir,
    topology::{EXTERNAL_CLIENT_IP, NODE_IP, Topology},
};

const POD_A: Ipv4Addr = Ipv4Addr::new(172, 16, 166, 130);
const POD_B: Ipv4Addr = Ipv4Addr::new(172, 16, 192, 89);
/// Requests per protocol: with two backends chosen at random, missing one has p = 2^-29.
const TRIES: usize = 30;

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn nodeport_through(path: ExternalPath) {
    let topo = Topology::new(&[("hello-a", POD_A), ("hello-b", POD_B)]);
    let _servers: Vec<HelloServer> = ["hello-a", "hello-b"]
        .iter()
        .map(|n| HelloServer::start(&topo.pod(n).ns, at(topo.pod(n).ip, TARGET_PORT), n))
        .collect();
    let pins = PinDir::new("xnp");
    let mut dp = pins.load();
    let backends = [POD_A, POD_B].map(|ip| SocketAddrV4::new(ip, TARGET_PORT));
    seed_node_port(&mut dp.maps, NODE_IP, NODE_PORT, &backends);
    attach(&topo, &mut dp, path);

    let node_port = at(NODE_IP, NODE_PORT);
    let diagnose = |what: String| -> ! {
        let events: Vec<_> = dp
            .maps
            .events()
            .unwrap()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect();
        panic!("{what} ({path:?}); datapath events so far: {events:?}")
    };
    let tcp: BTreeSet<String> = (0..TRIES)
        .map(|_| {
            http_get_hostname(&topo.external, node_port).unwrap_or_else(|e| diagnose(format!("HTTP: {e}")))
        })
        .collect();
    let udp: BTreeSet<String> = (0..TRIES)
        .map(|_| {
            let socket = udp_socket(&topo.external, at(EXTERNAL_CLIENT_IP, 0));
            let (name, from) = udp_ask(&socket, node_port).unwrap_or_else(|e| diagnose(format!("UDP: {e}")));
            assert_eq!(from, node_port, "UDP reply must come from the NodePort");
            name
        })
        .collect();
    let both: BTreeSet<String> = ["hello-a", "hello-b"].map(String::from).into();
    assert_eq!(tcp, both, "TCP via NodePort ({path:?})");
    assert_eq!(udp, both, "UDP via NodePort ({path:?})");

    let ifindex = topo.node.ifindex(&topo.node_external_iface);
    let seen = dp.iface_counters(ifindex, HOOK_XDP).unwrap();
    let (redirected, passed) = (
        event(&dp.maps, "xdp_redirect"),
        event(&dp.maps, "xdp_pass_translated"),
    );
    println!(
        "{path:?}: XDP saw {} packets on {}; translated {} (redirected {redirected}, to the stack {passed})",
        seen.packets,
        topo.node_external_iface,
        redirected + passed
    );
    assert_eq!(event(&dp.maps, "drop_rewrite"), 0);
    // Each HTTP exchange sends at least SYN, request and ACK/FIN from the client; each
    // UDP flow one datagram. With XDP on the link, it translates every one of them.
    let at_least = 4 * TRIES as u64;
    let (ran, translated) = match path {
        ExternalPath::Tc => (0, 0),
        _ => (at_least, at_least),
    };
    assert!(seen.packets >= ran, "XDP ran on {} packets", seen.packets);
    assert!(
        redirected + passed >= translated,
        "XDP translated {} packets",
        redirected + passed
    );
    match path {
        ExternalPath::Tc => assert_eq!(
            (seen.packets, redirected + passed),
            (0, 0),
            "no XDP on the link, TC translated"
        ),
        ExternalPath::XdpToStack => assert_eq!(redirected, 0, "no targets, no redirects"),
        // The first packets to each backend wait for neighbour resolution in the stack.
        ExternalPath::XdpGenericRedirect | ExternalPath::XdpNativeRedirect => assert!(
            redirected > passed,
            "most translated packets must be redirected: {redirected} vs {passed}"
        ),
    }
}

#[test]
fn native_xdp_translates_nodeport_traffic_and_passes_it_to_the_stack() {
    nodeport_through(ExternalPath::XdpToStack);
}

#[test]
fn generic_xdp_redirects_nodeport_traffic_to_the_pod_veths() {
    nodeport_through(ExternalPath::XdpGenericRedirect);
}

#[test]
fn native_xdp_redirects_nodeport_traffic_to_pod_veths_with_gro() {
    nodeport_through(ExternalPath::XdpNativeRedirect);
}

/// The same traffic with TC on the external link and no XDP: the baseline the XDP paths
/// must match.
#[test]
fn tc_only_translates_nodeport_traffic() {
    nodeport_through(ExternalPath::Tc);
}
