//! How a node forwards external (NodePort) traffic, for the suites and the bench: TC
//! only, or XDP in front (to the stack, or redirecting to the pod veths), set up on a
//! [`Topology`] with the programs of a loaded [`Datapath`]; and a small namespace whose
//! FIB knows a backend, for XDP test runs that redirect.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use kproxy::{
    ebpf::{self, BackendId, DatapathMaps, Frontend, FrontendOptions, Loaded},
    model::Protocol,
};

use crate::{netns::NetNs, topology::Topology};

/// The path external traffic takes through the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalPath {
    /// TC ingress on the external link too; no XDP.
    Tc,
    /// Native XDP on the external link, no redirect targets: translated, then the stack.
    XdpToStack,
    /// Generic (skb) XDP, the pod veths as redirect targets.
    XdpGenericRedirect,
    /// Native XDP, the pod veths as redirect targets, GRO on inside the pods (a veth
    /// accepts natively redirected frames only when its peer has NAPI).
    XdpNativeRedirect,
}

/// Event counter `name` of the datapath (panics if there is none of that name).
pub fn event(maps: &DatapathMaps, name: &str) -> u64 {
    maps.events()
        .expect("read events")
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no event {name}"))
        .1
}

/// Seeds NodePort `port` (TCP and UDP) on `node_ip` to `backends` (ids 1, 2, …).
pub fn seed_node_port(maps: &mut DatapathMaps, node_ip: Ipv4Addr, port: u16, backends: &[SocketAddrV4]) {
    let ids: Vec<BackendId> = (1..=backends.len() as u32).map(BackendId).collect();
    for (&id, &addr) in ids.iter().zip(backends) {
        maps.upsert_backend(id, addr).expect("upsert backend");
    }
    maps.set_node_addresses(&[node_ip]).expect("node addresses");
    for proto in [Protocol::Tcp, Protocol::Udp] {
        maps.upsert_frontend(
            Frontend::NodePort { port, proto },
            &ids,
            FrontendOptions::default(),
        )
        .expect("upsert NodePort");
    }
}

/// Attaches `dp`'s programs on `topo`'s node for `path`: TC ingress on every pod veth
/// (replies are reverse-translated there), and TC or XDP on the external link. The
/// links live as long as `dp`.
pub fn attach(topo: &Topology, dp: &mut Loaded, path: ExternalPath) {
    if path == ExternalPath::XdpNativeRedirect {
        for pod in &topo.pods {
            pod.ns.ethtool(&["-K", "eth0", "gro", "on"]);
        }
    }
    let external = topo.node_external_iface.clone();
    let pods: Vec<String> = topo.pods.iter().map(|p| p.host_iface.clone()).collect();
    topo.node.run(|| {
        let tc: &mut SchedClassifier = dp
            .ebpf
            .program_mut(ebpf::TC_INGRESS_PROGRAM)
            .expect("TC program")
            .try_into()
            .expect("a TC program");
        let mut tc_ifaces = pods.clone();
        if path == ExternalPath::Tc {
            tc_ifaces.push(external.clone());
        }
        for iface in &tc_ifaces {
            tc.attach(iface, TcAttachType::Ingress)
                .unwrap_or_else(|e| panic!("attach TC ingress to {iface}: {e}"));
        }
        for iface in &pods {
            // A NodePort reply leaves TC with the node's address as its source, which the
            // stack drops as a martian unless the interface accepts local sources (the
            // agent sets the same).
            let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
            std::fs::write(&path, "1").unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
        let mode = match path {
            ExternalPath::Tc => return,
            ExternalPath::XdpGenericRedirect => XdpMode::Skb,
            ExternalPath::XdpToStack | ExternalPath::XdpNativeRedirect => XdpMode::Driver,
        };
        let xdp: &mut Xdp = dp
            .ebpf
            .program_mut(ebpf::XDP_PROGRAM)
            .expect("XDP program")
            .try_into()
            .expect("an XDP program");
        xdp.attach(&external, mode)
            .unwrap_or_else(|e| panic!("attach XDP ({mode:?}) to {external}: {e}"));
        if path != ExternalPath::XdpToStack {
            // Ifindexes resolve in the caller's namespace: the node's.
            let targets: Vec<u32> = pods
                .iter()
                .map(|i| nix::net::if_::if_nametoindex(i.as_str()).expect("pod veth ifindex"))
                .collect();
            dp.maps.set_xdp_targets(&targets).expect("set XDP targets");
        }
    });
}

/// A namespace standing for a node whose FIB knows a backend: frames arrive on `in0`
/// ([`FibNs::NODE_IP`]), [`FibNs::BACKEND`] is reached through `out0` (MAC
/// [`FibNs::OUT_MAC`]) with a permanent neighbour entry ([`FibNs::BACKEND_MAC`]);
/// forwarding is on. Run test runs inside with [`NetNs::run`].
pub struct FibNs {
    pub ns: NetNs,
    /// Ifindexes of `in0` and `out0` inside the namespace.
    pub in0: u32,
    pub out0: u32,
}

impl FibNs {
    pub const NODE_IP: [u8; 4] = [192, 168, 50, 1];
    /// On `out0`'s subnet (10.0.2.0/24), with a neighbour entry.
    pub const BACKEND: [u8; 4] = [10, 0, 2, 7];
    pub const BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 0xaa, 7];
    pub const OUT_MAC: [u8; 6] = [2, 0, 0, 0, 0xbb, 1];

    pub fn new(tag: &str) -> Self {
        let ns = NetNs::new(tag);
        let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
        ns.ip(&["link", "add", "in0", "type", "veth", "peer", "name", "in1"]);
        let out_mac = mac(Self::OUT_MAC);
        ns.ip(&[
            "link", "add", "out0", "address", &out_mac, "type", "veth", "peer", "name", "out1",
        ]);
        for link in ["in0", "in1", "out0", "out1"] {
            ns.ip(&["link", "set", link, "up"]);
        }
        let node = format!("{}/24", Ipv4Addr::from(Self::NODE_IP));
        ns.ip(&["addr", "add", &node, "dev", "in0"]);
        ns.ip(&["addr", "add", "10.0.2.1/24", "dev", "out0"]);
        let (backend, backend_mac) = (Ipv4Addr::from(Self::BACKEND).to_string(), mac(Self::BACKEND_MAC));
        ns.ip(&[
            "neigh",
            "add",
            &backend,
            "lladdr",
            &backend_mac,
            "dev",
            "out0",
            "nud",
            "permanent",
        ]);
        ns.run(|| {
            // /proc/sys/net belongs to the namespace of the thread that opens it.
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("forwarding on");
        });
        let (in0, out0) = (ns.ifindex("in0"), ns.ifindex("out0"));
        FibNs { ns, in0, out0 }
    }
}
