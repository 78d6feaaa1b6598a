//! Socket-LB: the cgroup connect4/sendmsg4/recvmsg4/getpeername4 programs with real
//! sockets. Host processes are `kproxy-probe` children moved into the agent's `--cgroup`
//! (a [`TestCgroup`] of the test's own) and run in the node namespace the agent serves.
//! Run serially (`--test-threads=1`) like the other privileged suites.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use kproxy::ebpf::{DatapathMaps, SOCK_PROGRAMS};
use kproxy_testbed::{
    agent::{Agent, run_kproxy},
    cgroup::{TestCgroup, probe_field, probe_outside},
    cluster::{Cluster, Mode, POD_A, POD_B, SYNC_TIMEOUT, TRIES, at, both, cluster_ip, run_args},
    manifests::{NODE_PORT, Service, write_documents},
    pins::PinDir,
    topology::NODE_IP,
};

fn names(out: &str) -> BTreeSet<String> {
    probe_field(out, "name").into_iter().collect()
}

/// The socket-LB event counters of the agent's datapath: (translated, refused, reversed).
fn sock_events(c: &Cluster) -> (u64, u64, u64) {
    let maps = DatapathMaps::open_pinned(c.pins.path()).expect("open the agent's maps");
    let events = maps.events().expect("events");
    let get = |name: &str| events.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
    (get("sock_xlate"), get("sock_refused"), get("sock_revnat"))
}

/// The cgroup link pins under the agent's pin directory.
fn cgroup_pins(c: &Cluster) -> Vec<PathBuf> {
    let mut pins: Vec<PathBuf> = std::fs::read_dir(c.pins.path().join("links"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("cgroup_"))
                })
                .collect()
        })
        .unwrap_or_default();
    pins.sort();
    pins
}

/// (link id, program id) of each pinned link.
fn link_ids(pins: &[PathBuf]) -> Vec<(u32, u32)> {
    pins.iter()
        .map(|p| {
            let link =
                FdLink::from(PinnedLink::from_pin(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
            let info = link.info().expect("link info");
            (info.id(), info.program_id())
        })
        .collect()
}

#[test]
fn the_socket_programs_pass_the_verifier() {
    let pins = PinDir::new("sock");
    let loaded = pins.load();
    for (name, insns) in loaded.instruction_counts() {
        if SOCK_PROGRAMS.contains(&name) {
            assert!(insns > 0, "{name}: no verified instruction count");
            println!("{name}: {insns} verified instructions");
        }
    }
}

/// connect4 + getpeername4 (TCP) and sendmsg4 + recvmsg4 (UDP): a host process reaches
/// both pods through the ClusterIP and sees the ClusterIP as its peer and the replies'
/// source; NodePorts on the node's address and on 127.0.0.1 too.
#[test]
fn host_processes_in_the_cgroup_reach_services() {
    let c = Cluster::start(Mode::Ebpf, &[POD_A, POD_B]);
    let node = &c.topo.node;
    let service = cluster_ip().to_string();
    let tries = TRIES.to_string();
    let out = c
        .cgroup
        .probe(node, &["tcp-get", &service, &tries])
        .unwrap_or_else(|e| panic!("TCP via the ClusterIP: {e}"));
    assert_eq!(names(&out), both(), "TCP via the ClusterIP:\n{out}");
    assert!(
        probe_field(&out, "peer").iter().all(|p| *p == service),
        "getpeername must show the ClusterIP:\n{out}"
    );
    let out = c
        .cgroup
        .probe(node, &["udp-ask", &service, &tries])
        .unwrap_or_else(|e| panic!("UDP via the ClusterIP: {e}"));
    assert_eq!(names(&out), both(), "UDP via the ClusterIP:\n{out}");
    assert!(
        probe_field(&out, "from").iter().all(|p| *p == service),
        "UDP replies must come from the ClusterIP:\n{out}"
    );
    for addr in [
        at(NODE_IP, NODE_PORT),
        SocketAddr::from(([127, 0, 0, 1], NODE_PORT)),
    ] {
        let out = c
            .cgroup
            .probe(node, &["tcp-get", &addr.to_string(), &tries])
            .unwrap_or_else(|e| panic!("TCP via the NodePort {addr}: {e}"));
        assert_eq!(names(&out), both(), "TCP via the NodePort {addr}:\n{out}");
    }
    let (xlate, refused, revnat) = sock_events(&c);
    assert!(xlate >= 4 * TRIES as u64, "sock_xlate {xlate}");
    assert_eq!(refused, 0);
    assert!(revnat >= 2 * TRIES as u64, "sock_revnat {revnat}");
    // One flow per translated connect/sendmsg on the service's counters.
    let maps = DatapathMaps::open_pinned(c.pins.path()).expect("maps");
    let (cookie, localhost) = maps.socket_lb().expect("config");
    assert!(
        cookie.is_some() && localhost,
        "config: cookie {cookie:?}, localhost {localhost}"
    );
    let flows: u64 = maps
        .frontends()
        .expect("frontends")
        .iter()
        .map(|f| maps.frontend_counters(f.id).expect("counters").new_flows)
        .sum();
    assert!(flows >= 4 * TRIES as u64, "new flows {flows}");
    // `kproxy inspect` names the socket events.
    let out = c.kproxy(&["inspect", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    for name in ["sock_xlate", "sock_refused", "sock_revnat"] {
        assert!(
            report["events"][name].is_u64(),
            "inspect has no event {name}: {}",
            report["events"]
        );
    }
    assert_eq!(report["events"]["sock_xlate"].as_u64(), Some(xlate));
}

/// A service without endpoints: connect() and sendto() fail with ECONNREFUSED at once.
#[test]
fn a_service_without_endpoints_is_refused_at_once() {
    let c = Cluster::start(Mode::Ebpf, &[]);
    let service = cluster_ip().to_string();
    let out = c
        .cgroup
        .probe(&c.topo.node, &["connect", &service])
        .expect("probe");
    assert_eq!(probe_field(&out, "error"), ["ConnectionRefused"], "{out}");
    let ms: u64 = probe_field(&out, "ms")[0].parse().expect("ms");
    assert!(ms < 1000, "refused after {ms} ms");
    let err = c
        .cgroup
        .probe(&c.topo.node, &["udp-ask", &service])
        .expect_err("UDP to a service without endpoints");
    assert!(err.contains("Connection refused"), "{err}");
    let (xlate, refused, _) = sock_events(&c);
    assert_eq!((xlate, refused), (0, 2));
}

/// Only sockets of the agent's namespace in the agent's cgroup are translated: a
/// process in a pod's namespace (same cgroup) and one outside the cgroup (node
/// namespace) leave the socket counters alone.
#[test]
fn other_namespaces_and_other_cgroups_are_left_alone() {
    let c = Cluster::start(Mode::Ebpf, &[POD_A, POD_B]);
    let service = cluster_ip().to_string();
    // The pod's traffic is translated by TC, not by the socket programs.
    let out = c
        .cgroup
        .probe(c.client(), &["tcp-get", &service, "4"])
        .unwrap_or_else(|e| panic!("TCP from a pod: {e}"));
    assert_eq!(probe_field(&out, "name").len(), 4, "{out}");
    assert_eq!(sock_events(&c), (0, 0, 0), "a pod's socket was translated");
    let out = probe_outside(&c.topo.node, &["connect", &service]).expect("probe outside the cgroup");
    assert!(
        !out.starts_with("ok"),
        "outside the cgroup, connect went through: {out}"
    );
    assert_eq!(
        sock_events(&c),
        (0, 0, 0),
        "a socket outside the cgroup was translated"
    );
    // Another cgroup of the test's own: untouched as well.
    let other = TestCgroup::new("oth");
    let out = other.probe(&c.topo.node, &["connect", &service]).expect("probe");
    assert!(
        !out.starts_with("ok"),
        "in another cgroup, connect went through: {out}"
    );
    assert_eq!(sock_events(&c), (0, 0, 0));
}

/// A restarted agent adopts the pinned cgroup links (same link ids, new programs);
/// `kproxy cleanup` detaches and removes them, and the rewrite stops.
#[test]
fn restart_adopts_the_cgroup_links_and_cleanup_removes_them() {
    let mut c = Cluster::start(Mode::Ebpf, &[POD_A, POD_B]);
    let pins = cgroup_pins(&c);
    assert_eq!(pins.len(), SOCK_PROGRAMS.len(), "{pins:?}");
    let before = link_ids(&pins);
    assert!(c.agent.stop(), "the agent must exit cleanly");
    c.restart_agent();
    assert_eq!(cgroup_pins(&c), pins);
    let after = link_ids(&pins);
    for ((link_a, prog_a), (link_b, prog_b)) in before.iter().zip(&after) {
        assert_eq!(link_a, link_b, "the link must be adopted, not recreated");
        assert_ne!(prog_a, prog_b, "the new agent's program must run in the link");
    }
    let service = cluster_ip().to_string();
    let out = c
        .cgroup
        .probe(&c.topo.node, &["connect", &service])
        .expect("probe");
    assert_eq!(out.trim(), format!("ok peer={service}"));

    assert!(c.agent.stop(), "the agent must exit cleanly");
    let args = c.cleanup_args();
    let out = run_kproxy(&c.topo.node, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(cgroup_pins(&c).is_empty(), "cleanup left cgroup link pins");
    let out = c
        .cgroup
        .probe(&c.topo.node, &["connect", &service])
        .expect("probe");
    assert!(
        !out.starts_with("ok"),
        "after cleanup, connect was still translated: {out}"
    );
}

/// Moving the agent to another `--cgroup` detaches and removes the first cgroup's links
/// (the rewrite stops there and starts in the new one); `--cgroup ""` turns socket-LB
/// off: no cgroup links, no netns cookie in the config.
#[test]
fn another_cgroup_replaces_the_links_and_an_empty_one_turns_socket_lb_off() {
    let mut c = Cluster::start(Mode::Ebpf, &[POD_A, POD_B]);
    let service = cluster_ip().to_string();
    let first = cgroup_pins(&c);
    assert!(c.agent.stop(), "the agent must exit cleanly");
    let second = TestCgroup::new("snd");
    let dir = c.model.parent().expect("model dir").to_path_buf();
    let args = run_args(
        Mode::Ebpf,
        &c.model,
        &dir.join("config.yaml"),
        c.pins.path(),
        second.path(),
    );
    c.agent = Agent::start(&c.topo.node, &args);
    c.agent.wait_for_log("sync #", 1, SYNC_TIMEOUT);
    let moved = cgroup_pins(&c);
    assert_eq!(moved.len(), SOCK_PROGRAMS.len(), "{moved:?}");
    assert!(
        moved.iter().all(|p| !first.contains(p)),
        "old pins left: {moved:?}"
    );
    let out = second.probe(&c.topo.node, &["connect", &service]).expect("probe");
    assert_eq!(out.trim(), format!("ok peer={service}"), "in the new cgroup");
    let out = c
        .cgroup
        .probe(&c.topo.node, &["connect", &service])
        .expect("probe");
    assert!(
        !out.starts_with("ok"),
        "the old cgroup is still translated: {out}"
    );

    assert!(c.agent.stop(), "the agent must exit cleanly");
    let mut args = args;
    let at_cgroup = args.iter().position(|a| a == "--cgroup").expect("--cgroup");
    args[at_cgroup + 1] = String::new();
    c.agent = Agent::start(&c.topo.node, &args);
    c.agent.wait_for_log("sync #", 1, SYNC_TIMEOUT);
    assert!(cgroup_pins(&c).is_empty(), "socket-LB off left cgroup links");
    let maps = DatapathMaps::open_pinned(c.pins.path()).expect("maps");
    assert_eq!(
        maps.socket_lb().expect("config").0,
        None,
        "netns cookie with socket-LB off"
    );
    let out = second.probe(&c.topo.node, &["connect", &service]).expect("probe");
    assert!(!out.starts_with("ok"), "socket-LB off, still translated: {out}");
}

/// `sessionAffinity: ClientIP`: the socket programs choose through the TC path's own
/// selection, with the node's address as the client, so every connect of the node's
/// processes lands on one pod.
#[test]
fn client_ip_affinity_keeps_host_processes_on_one_pod() {
    let mut c = Cluster::start(Mode::Ebpf, &[POD_A, POD_B]);
    let yaml = Service::hello_app(&[POD_A, POD_B]).yaml();
    let with_affinity = yaml.replacen(
        "  type: NodePort\n",
        "  type: NodePort\n  sessionAffinity: ClientIP\n",
        1,
    );
    assert_ne!(yaml, with_affinity, "the Service YAML changed shape");
    write_documents(&c.model, &with_affinity).expect("write the model");
    c.wait_sync();
    let out = c
        .cgroup
        .probe(
            &c.topo.node,
            &["tcp-get", &cluster_ip().to_string(), &TRIES.to_string()],
        )
        .unwrap_or_else(|e| panic!("TCP via the ClusterIP: {e}"));
    assert_eq!(probe_field(&out, "name").len(), TRIES, "{out}");
    assert_eq!(
        names(&out).len(),
        1,
        "ClientIP affinity must keep one pod:\n{out}"
    );
}
