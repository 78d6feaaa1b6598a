//! Pinned links: the datapath outlives the agent, a restarted agent swaps its new
//! programs into the same links (one program per hook, never two, never none), and
//! sweeping removes the pins of vanished interfaces or, on cleanup, all of them.

use aya::programs::{SchedClassifier, TcAttachType};
use kproxy::ebpf::{
    self, Loaded,
    attach::{Attached, Hook, Iface, LinkPins, iface},
};
use kproxy_testbed::{
    netns::{NetNs, unique_name, veth_pair},
    pins::PinDir,
};

/// IDs of the programs on TC ingress of `iface` (current namespace).
fn tc_programs(iface: &str) -> Vec<u32> {
    let (_, progs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress).expect("query_tcx");
    progs.iter().map(aya::programs::ProgramInfo::id).collect()
}

/// Loads a fresh copy of the programs and attaches TC ingress to `iface` through `pins`.
fn agent_attach(pin_dir: &PinDir, pins: &LinkPins, iface: &Iface) -> (Loaded, Attached, u32) {
    let mut datapath = pin_dir.load();
    let tc: &mut SchedClassifier = datapath
        .ebpf
        .program_mut(ebpf::TC_INGRESS_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    let outcome = pins.attach_tc(tc, iface).expect("attach");
    let id = tc.info().expect("info").id();
    (datapath, outcome, id)
}

/// Two namespaces joined by a veth on `subnet` (`a.b.c`), and a pin directory.
struct VethNodes {
    _a: NetNs,
    b: NetNs,
    b_if: String,
    pin_dir: PinDir,
}

fn veth_nodes(tag: &str, subnet: &str) -> VethNodes {
    let (a, b) = (NetNs::new(tag), NetNs::new(tag));
    let (a_if, b_if) = (unique_name("a"), unique_name("b"));
    veth_pair(
        &a,
        &a_if,
        &format!("{subnet}.1/24"),
        &b,
        &b_if,
        &format!("{subnet}.2/24"),
    );
    VethNodes {
        _a: a,
        b,
        b_if,
        pin_dir: PinDir::new(tag),
    }
}

/// Inside `b`'s namespace: its veth end and the link pins under the pin directory.
fn veth_and_pins(t: &VethNodes) -> (Iface, LinkPins) {
    let iface = iface::matching(std::slice::from_ref(&t.b_if))
        .expect("list")
        .pop()
        .expect("veth present");
    (iface, LinkPins::new(t.pin_dir.path()).expect("link dir"))
}

#[test]
fn pinned_tc_link_survives_agent_and_is_adopted_then_swept() {
    let t = veth_nodes("att", "10.202.0");
    let (b, b_if, pin_dir) = (&t.b, &t.b_if, &t.pin_dir);
    b.run(|| {
        let (iface, pins) = veth_and_pins(&t);

        let (first, outcome, first_id) = agent_attach(pin_dir, &pins, &iface);
        assert_eq!(outcome, Attached::New);
        assert!(pins.is_pinned(Hook::TcIngress, &iface));
        drop(first); // the agent exits
        assert_eq!(
            tc_programs(b_if),
            vec![first_id],
            "datapath must keep serving without the agent"
        );

        let (second, outcome, second_id) = agent_attach(pin_dir, &pins, &iface);
        assert_eq!(outcome, Attached::Adopted);
        assert_ne!(first_id, second_id);
        assert_eq!(
            tc_programs(b_if),
            vec![second_id],
            "the new program replaces the old one in place"
        );
        drop(second);

        assert!(
            pins.sweep(std::slice::from_ref(&iface), false)
                .expect("sweep")
                .is_empty(),
            "live pin kept"
        );
        assert_eq!(pins.sweep(&[], true).expect("sweep all").len(), 1);
        assert!(tc_programs(b_if).is_empty(), "cleanup detaches");
    });
}

#[test]
fn sweep_drops_pins_of_vanished_interfaces() {
    let t = veth_nodes("swp", "10.203.0");
    let (b, b_if, pin_dir) = (&t.b, &t.b_if, &t.pin_dir);
    b.run(|| {
        let (iface, pins) = veth_and_pins(&t);
        let (_ebpf, outcome, _) = agent_attach(pin_dir, &pins, &iface);
        assert_eq!(outcome, Attached::New);
        b.ip(&["link", "del", b_if]);
        let present = iface::list().expect("list");
        let removed = pins.sweep(&present, false).expect("sweep");
        assert_eq!(
            removed,
            vec![format!("tc_ingress_{}_{}", iface.name, iface.index)]
        );
    });
}

/// IDs of the programs on TC egress of `iface` (current namespace).
fn tc_egress_programs(iface: &str) -> Vec<u32> {
    let (_, progs) = SchedClassifier::query_tcx(iface, TcAttachType::Egress).expect("query_tcx");
    progs.iter().map(aya::programs::ProgramInfo::id).collect()
}

/// Loads a fresh copy of the programs and attaches TC egress to `iface` through `pins`.
fn agent_attach_egress(pin_dir: &PinDir, pins: &LinkPins, iface: &Iface) -> (Loaded, Attached, u32) {
    let mut datapath = pin_dir.load();
    let tc: &mut SchedClassifier = datapath
        .ebpf
        .program_mut(ebpf::TC_EGRESS_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    let outcome = pins.attach_tc_egress(tc, iface).expect("attach egress");
    let id = tc.info().expect("info").id();
    (datapath, outcome, id)
}

#[test]
fn pinned_tc_egress_link_is_adopted_beside_ingress_then_cleaned_up() {
    let t = veth_nodes("egr", "10.204.0");
    let (b, b_if, pin_dir) = (&t.b, &t.b_if, &t.pin_dir);
    b.run(|| {
        let (iface, pins) = veth_and_pins(&t);
        let (ingress, outcome, ingress_id) = agent_attach(pin_dir, &pins, &iface);
        assert_eq!(outcome, Attached::New);
        let (first, outcome, first_id) = agent_attach_egress(pin_dir, &pins, &iface);
        assert_eq!(outcome, Attached::New);
        assert!(pins.is_pinned(Hook::TcEgress, &iface));
        drop((ingress, first));
        assert_eq!(tc_egress_programs(b_if), vec![first_id], "egress keeps serving");
        assert_eq!(tc_programs(b_if), vec![ingress_id], "ingress untouched by egress");

        let (second, outcome, second_id) = agent_attach_egress(pin_dir, &pins, &iface);
        assert_eq!(outcome, Attached::Adopted);
        assert_ne!(first_id, second_id);
        assert_eq!(tc_egress_programs(b_if), vec![second_id], "swapped in place");
        drop(second);

        assert!(
            pins.sweep(std::slice::from_ref(&iface), false)
                .expect("sweep")
                .is_empty(),
            "live pins kept"
        );
        assert_eq!(pins.sweep(&[], true).expect("sweep all").len(), 2);
        assert!(tc_egress_programs(b_if).is_empty(), "cleanup detaches egress");
        assert!(tc_programs(b_if).is_empty(), "cleanup detaches ingress");
    });
}
