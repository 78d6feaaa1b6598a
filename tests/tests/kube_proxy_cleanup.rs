//! `kproxy cleanup --kube-proxy-rules` against the state a kube-proxy leaves on a node,
//! inside a namespace of the test's own, for each iptables backend: kube-proxy's exact
//! iptables-mode rules for IPv4 and IPv6, kubelet's chains, a CNI's chain and rules, and
//! kube-proxy's nftables-mode tables beside a foreign table. Everything kube-proxy's
//! `--cleanup` removes must go; everything else must stay.

use std::path::{Path, PathBuf};

use kproxy::{
    config::ProxyConfig,
    iptables::{self, RenderOptions, Runtime, jumps},
    manifests,
    model::{IpFamily, NodeInfo},
};
use kproxy_testbed::{agent::run_kproxy, netns::NetNs};

/// kubelet's chains: kube-proxy creates some of them too, but never removes them.
const KUBELET_CHAINS: &[&str] = &["KUBE-FIREWALL", "KUBE-MARK-DROP", "KUBE-KUBELET-CANARY"];

/// A CNI's state, and kubelet's (for either family): must survive the cleanup unchanged.
const FOREIGN_NAT: &str = "*nat
:CNI-HOSTPORT-DNAT - [0:0]
:KUBE-MARK-DROP - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x1/0x1
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
COMMIT
*filter
:CNI-FORWARD - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A FORWARD -j CNI-FORWARD
-A CNI-FORWARD -m comment --comment \"cni forward\" -j ACCEPT
COMMIT
*mangle
:KUBE-PROXY-CANARY - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
";

/// The foreign rules above as iptables-save prints them.
const FOREIGN_RULES: &[(&str, &str)] = &[
    (
        "nat",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
    ),
    (
        "nat",
        "-A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x1/0x1",
    ),
    ("nat", "-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000"),
    ("filter", "-A FORWARD -j CNI-FORWARD"),
    (
        "filter",
        "-A CNI-FORWARD -m comment --comment \"cni forward\" -j ACCEPT",
    ),
];

/// kube-proxy's nftables mode (a trimmed table of the same name) and another table.
const NFT_STATE: &str = "
table ip kube-proxy {
    chain nat-prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 10.96.0.1 tcp dport 443 dnat to 10.0.0.1:6443
    }
}
table ip6 kube-proxy {
    chain filter-forward {
        type filter hook forward priority -110; policy accept;
    }
}
table inet cni-foreign {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ip saddr 10.244.0.0/16 accept
    }
}
";

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

/// kube-proxy's full-sync payload and its jumps from the built-in chains for one family.
fn kube_proxy_state(model: &str, config: &str, family: IpFamily) -> (String, String) {
    let config = ProxyConfig::load(Some(&repo(config))).expect("config");
    let node = NodeInfo::upstream_test_node(family);
    let model = manifests::load(&[repo(model)], &config, &node).expect("model");
    // nfacct objects do not exist in a fresh namespace: render without them.
    let options = RenderOptions::new(&config, &node, Runtime::default()).expect("options");
    let ruleset = iptables::render(&model, &options);
    (
        iptables::restore::payload(&ruleset, None),
        jumps::restore_payload(&jumps::jump_rules(&options)),
    )
}

/// The chain names an `iptables-save` listing declares.
fn chains(saved: &str) -> Vec<&str> {
    saved
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

fn cleans_up_kube_proxy_leftovers(backend: &str) {
    let ns = NetNs::new("kpc");
    let prefixes = [("iptables", IpFamily::V4), ("ip6tables", IpFamily::V6)];
    for (prefix, family) in prefixes {
        let (model, config) = match family {
            IpFamily::V4 => ("examples/hello-app.yaml", "examples/kube-proxy-config.yaml"),
            IpFamily::V6 => (
                "kproxy-userspace/tests/fixtures/ipv6/model.yaml",
                "kproxy-userspace/tests/fixtures/ipv6/config.yaml",
            ),
        };
        let (payload, jump_payload) = kube_proxy_state(model, config, family);
        let restore = format!("{prefix}-{backend}-restore");
        ns.exec_with_input(&restore, &["--noflush"], &payload);
        ns.exec_with_input(&restore, &["--noflush"], &jump_payload);
        // kube-proxy's canaries, then a CNI's and kubelet's state.
        ns.exec_with_input(
            &restore,
            &["--noflush"],
            "*nat\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n*filter\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n",
        );
        ns.exec_with_input(&restore, &["--noflush"], FOREIGN_NAT);
    }
    ns.exec_with_input("nft", &["-f", "-"], NFT_STATE);

    let save = |prefix: &str, table: &str| {
        ns.exec_with_input(&format!("{prefix}-{backend}-save"), &["-t", table], "")
    };
    // The test means something only if kube-proxy's state is there to begin with.
    for (prefix, _) in prefixes {
        let nat = save(prefix, "nat");
        for needle in [
            ":KUBE-SERVICES",
            ":KUBE-SEP-",
            ":KUBE-SVC-",
            ":KUBE-PROXY-CANARY",
            "-j KUBE-POSTROUTING",
        ] {
            assert!(
                nat.contains(needle),
                "{prefix} nat before cleanup lacks {needle}:\n{nat}"
            );
        }
        let filter = save(prefix, "filter");
        assert!(filter.contains("-j KUBE-FORWARD"), "{prefix} filter:\n{filter}");
    }

    for run in ["first", "second"] {
        let out = run_kproxy(
            &ns,
            &["cleanup", "--kube-proxy-rules", "--iptables-backend", backend],
        );
        assert!(
            out.status.success(),
            "{run} cleanup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    for (prefix, _) in prefixes {
        for table in ["nat", "filter", "mangle"] {
            let saved = save(prefix, table);
            for chain in chains(&saved) {
                assert!(
                    !chain.starts_with("KUBE-") || KUBELET_CHAINS.contains(&chain),
                    "{prefix} {table}: kube-proxy's {chain} is left:\n{saved}"
                );
            }
            for line in saved.lines().filter(|l| l.starts_with("-A ")) {
                let target = line.split(" -j ").nth(1).unwrap_or_default();
                assert!(
                    !target.starts_with("KUBE-") || KUBELET_CHAINS.iter().any(|k| target.starts_with(k)),
                    "{prefix} {table}: a jump to kube-proxy's chains is left: {line}"
                );
                assert!(
                    !line.contains("--comment \"kubernetes "),
                    "{prefix} {table}: kube-proxy's rule is left: {line}"
                );
            }
            for (t, rule) in FOREIGN_RULES.iter().filter(|(t, _)| *t == table) {
                assert!(
                    saved.lines().any(|l| l == *rule),
                    "{prefix} {t}: foreign rule {rule:?} was removed:\n{saved}"
                );
            }
        }
        // kubelet's chains stay (KUBE-FIREWALL is kube-proxy's copy of kubelet's, IPv4
        // only here: the IPv4 configuration turns localhost NodePorts on).
        let nat = save(prefix, "nat");
        assert!(chains(&nat).contains(&"KUBE-MARK-DROP"), "{prefix} nat:\n{nat}");
        assert!(
            chains(&nat).contains(&"KUBE-KUBELET-CANARY"),
            "{prefix} nat:\n{nat}"
        );
        let mangle = save(prefix, "mangle");
        assert!(
            chains(&mangle).contains(&"KUBE-KUBELET-CANARY"),
            "{prefix} mangle:\n{mangle}"
        );
    }
    let filter = save("iptables", "filter");
    assert!(chains(&filter).contains(&"KUBE-FIREWALL"), "filter:\n{filter}");

    let tables = ns.exec_with_input("nft", &["list", "tables"], "");
    assert!(
        !tables.contains("kube-proxy"),
        "kube-proxy's nftables tables are left:\n{tables}"
    );
    assert!(
        tables.lines().any(|l| l == "table inet cni-foreign"),
        "the foreign nftables table was removed:\n{tables}"
    );
}

#[test]
fn removes_kube_proxy_leftovers_nft_backend() {
    cleans_up_kube_proxy_leftovers("nft");
}

#[test]
fn removes_kube_proxy_leftovers_legacy_backend() {
    cleans_up_kube_proxy_leftovers("legacy");
}
