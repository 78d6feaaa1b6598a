//! The test topology itself routes: without any proxy, a pod reaches every other pod
//! (TCP and UDP) through the node, and the external client reaches the node's address.
//! If this fails, every e2e suite would.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use kproxy_testbed::{
    hello::{HelloServer, LineClient, http_get_hostname, udp_ask, udp_socket},
    topology::{NODE_IP, Topology},
};

const POD_A: Ipv4Addr = Ipv4Addr::new(172, 16, 166, 130);
const POD_B: Ipv4Addr = Ipv4Addr::new(172, 16, 192, 89);
const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 16, 166, 140);

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

#[test]
fn pods_reach_each_other_and_external_client_reaches_the_node() {
    let topo = Topology::new(&[("hello-a", POD_A), ("hello-b", POD_B), ("client", CLIENT)]);
    let _servers: Vec<_> = ["hello-a", "hello-b"]
        .iter()
        .map(|n| HelloServer::start(&topo.pod(n).ns, at(topo.pod(n).ip, 8080), n))
        .collect();
    let _node_server = HelloServer::start(&topo.node, at(NODE_IP, 8080), "node");

    let client = &topo.pod("client").ns;
    let socket = udp_socket(client, at(CLIENT, 0));
    for name in ["hello-a", "hello-b"] {
        let target = at(topo.pod(name).ip, 8080);
        assert_eq!(http_get_hostname(client, target).as_deref(), Ok(name));
        assert_eq!(udp_ask(&socket, target), Ok((name.to_string(), target)));
        let mut long = LineClient::connect(client, target).expect("long connection");
        for _ in 0..5 {
            assert_eq!(long.ask().as_deref(), Ok(name));
        }
    }
    assert_eq!(
        http_get_hostname(&topo.external, at(NODE_IP, 8080)).as_deref(),
        Ok("node")
    );
}
