//! Applying kube-proxy-style state and removing it again, with both iptables
//! backends, inside a namespace of the test's own.

use kproxy::iptables::{Flavor, netfilter};
use kproxy_testbed::netns::NetNs;

const PAYLOAD: &str = "*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-TEST - [0:0]
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j KUBE-SVC-TEST
-A KUBE-SVC-TEST -p tcp -j DNAT --to-destination 10.244.0.5:53
COMMIT
";

fn ensure_portal_jump(flavor: Flavor) {
    let args = [
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        "KUBE-SERVICES",
    ]
    .map(String::from);
    netfilter::ensure_rule(flavor, "nat", "PREROUTING", &args).expect("ensure jump");
}

fn apply_then_cleanup(flavor: Flavor) {
    let ns = NetNs::new("nf");
    ns.run(|| {
        netfilter::restore(flavor, PAYLOAD).expect("restore");
        ensure_portal_jump(flavor);
        ensure_portal_jump(flavor);
        let saved = netfilter::save(flavor, "nat").expect("save");
        assert_eq!(
            saved.matches("-j KUBE-SERVICES").count(),
            1,
            "jump ensured once:\n{saved}"
        );
        assert!(saved.contains("--to-destination 10.244.0.5:53"), "{saved}");

        assert_eq!(netfilter::cleanup(flavor).expect("cleanup"), 2);
        let saved = netfilter::save(flavor, "nat").expect("save");
        assert!(!saved.contains("KUBE-"), "cleanup left kube state:\n{saved}");
        assert_eq!(netfilter::cleanup(flavor).expect("cleanup again"), 0);
    });
}

#[test]
fn nft_backend_applies_and_cleans_up() {
    apply_then_cleanup(Flavor::Nft);
}

#[test]
fn legacy_backend_applies_and_cleans_up() {
    apply_then_cleanup(Flavor::Legacy);
}
