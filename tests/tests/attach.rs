//! Pinned links: the datapath outlives the agent, a restarted agent swaps its new
//! programs into the same links (one program per hook, never two, never none), and
//! sweeping removes the pins of vanished interfaces or, on cleanup, all of them.

use aya::programs::{SchedClassifier, TcAttachType};
use kproxy::{
    attach::{Attached, Hook, LinkPins},
    bpf::Datapath,
    iface::{self, Iface},
    programs,
};
use kproxy_tests::{
    netns::{NetNs, unique_name, veth_pair},
    pins::PinDir,
};

/// IDs of the programs on TC ingress of `iface` (current namespace).
fn tc_programs(iface: &str) -> Vec<u32> {
    let (_, progs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress).expect("query_tcx");
    progs.iter().map(|p| p.id()).collect()
}

/// Loads a fresh copy of the programs and attaches TC ingress to `iface` through `pins`.
fn agent_attach(pin_dir: &PinDir, pins: &LinkPins, iface: &Iface) -> (Datapath, Attached, u32) {
    let mut datapath = pin_dir.load();
    let tc: &mut SchedClassifier = datapath
        .ebpf
        .program_mut(programs::TC_INGRESS_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    let outcome = pins.attach_tc(tc, iface).expect("attach");
    let id = tc.info().expect("info").id();
    (datapath, outcome, id)
}

#[test]
fn pinned_tc_link_survives_agent_and_is_adopted_then_swept() {
    let (a, b) = (NetNs::new("ata"), NetNs::new("atb"));
    let (a_if, b_if) = (unique_name("a"), unique_name("b"));
    veth_pair(&a, &a_if, "10.202.0.1/24", &b, &b_if, "10.202.0.2/24");
    let pin_dir = PinDir::new("att");

    b.run(|| {
        let iface = iface::matching(std::slice::from_ref(&b_if))
            .expect("list")
            .pop()
            .expect("veth present");
        let pins = LinkPins::new(pin_dir.path()).expect("link dir");

        let (first, outcome, first_id) = agent_attach(&pin_dir, &pins, &iface);
        assert_eq!(outcome, Attached::New);
        assert!(pins.is_pinned(Hook::TcIngress, &iface));
        drop(first); // the agent exits
        assert_eq!(
            tc_programs(&b_if),
            vec![first_id],
            "datapath must keep serving without the agent"
        );

        let (second, outcome, second_id) = agent_attach(&pin_dir, &pins, &iface);
        assert_eq!(outcome, Attached::Adopted);
        assert_ne!(first_id, second_id);
        assert_eq!(
            tc_programs(&b_if),
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
        assert!(tc_programs(&b_if).is_empty(), "cleanup detaches");
    });
}

#[test]
fn sweep_drops_pins_of_vanished_interfaces() {
    let (a, b) = (NetNs::new("swa"), NetNs::new("swb"));
    let (a_if, b_if) = (unique_name("a"), unique_name("b"));
    veth_pair(&a, &a_if, "10.203.0.1/24", &b, &b_if, "10.203.0.2/24");
    let pin_dir = PinDir::new("swp");
    b.run(|| {
        let iface = iface::matching(std::slice::from_ref(&b_if))
            .expect("list")
            .pop()
            .expect("veth present");
        let pins = LinkPins::new(pin_dir.path()).expect("link dir");
        let (_ebpf, outcome, _) = agent_attach(&pin_dir, &pins, &iface);
        assert_eq!(outcome, Attached::New);
        b.ip(&["link", "del", &b_if]);
        let present = iface::list().expect("list");
        let removed = pins.sweep(&present, false).expect("sweep");
        assert_eq!(
            removed,
            vec![format!("tc_ingress_{}_{}", iface.name, iface.index)]
        );
    });
}
