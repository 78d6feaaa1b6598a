//! The exporter against the real iptables binaries, inside a network namespace each
//! test creates: the `restore` payload and the jump rules load with iptables-restore
//! (nft and legacy backends), and iptables-save / `iptables -n -L` then print exactly
//! the `save` / `list` renderings (up to header comments and counters).

use std::path::{Path, PathBuf};

use kproxy::{
    config::ProxyConfig,
    iptables::{self, RenderOptions, Runtime, Table, jumps, list::ProtocolColumn},
    manifests,
    model::{IpFamily, NodeInfo},
};
use kproxy_testbed::netns::NetNs;

/// One iptables backend's binaries for one family.
struct Backend {
    name: &'static str,
    restore: &'static str,
    save: &'static str,
    list: &'static str,
}

fn backends(family: IpFamily) -> [Backend; 2] {
    match family {
        IpFamily::V4 => [
            Backend {
                name: "nft",
                restore: "iptables-nft-restore",
                save: "iptables-nft-save",
                list: "iptables-nft",
            },
            Backend {
                name: "legacy",
                restore: "iptables-legacy-restore",
                save: "iptables-legacy-save",
                list: "iptables-legacy",
            },
        ],
        IpFamily::V6 => [
            Backend {
                name: "nft",
                restore: "ip6tables-nft-restore",
                save: "ip6tables-nft-save",
                list: "ip6tables-nft",
            },
            Backend {
                name: "legacy",
                restore: "ip6tables-legacy-restore",
                save: "ip6tables-legacy-save",
                list: "ip6tables-legacy",
            },
        ],
    }
}

/// Drops `#` header lines and zeroes chain counters.
fn normalise_save(text: &str) -> String {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(at)) => format!("{} [0:0]\n", &line[..at]),
            _ => format!("{line}\n"),
        })
        .collect()
}

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn round_trip(model_path: &str, config_path: &str, family: IpFamily) {
    let config = ProxyConfig::load(Some(&repo(config_path))).expect("config");
    let node = NodeInfo::upstream_test_node(family);
    let model = manifests::load(&[repo(model_path)], &config, &node).expect("model");
    // nfacct objects do not exist in a fresh namespace: render without them.
    let options = RenderOptions::new(&config, &node, Runtime::default()).expect("options");
    let ruleset = iptables::render(&model, &options);
    let jumps = jumps::jump_rules(&options);
    let payload = iptables::restore::payload(&ruleset, None);
    let jump_payload = jumps::restore_payload(&jumps);
    assert!(
        payload.lines().any(|l| l.starts_with("-A KUBE-SEP-")),
        "{model_path}: no endpoint rules"
    );

    for backend in backends(family) {
        let what = format!("{model_path} ({family:?}, {})", backend.name);
        let ns = NetNs::new("ipt");
        ns.exec_with_input(backend.restore, &["--noflush"], &payload);
        ns.exec_with_input(backend.restore, &["--noflush"], &jump_payload);
        let version = ns.exec_with_input(backend.list, &["--version"], "");
        let style = ProtocolColumn::for_version(&version);
        for table in [Table::Filter, Table::Nat] {
            let real = ns.exec_with_input(backend.save, &["-t", table.name()], "");
            let ours = iptables::save::save(&ruleset, &jumps, Some(table));
            assert_eq!(
                normalise_save(&ours),
                normalise_save(&real),
                "{what}: iptables-save -t {table} differs"
            );
            let real = ns.exec_with_input(backend.list, &["-n", "-t", table.name(), "-L"], "");
            let ours = iptables::list::list(&ruleset, &jumps, table, None, style).expect("list");
            assert_eq!(ours, real, "{what}: iptables -n -t {table} -L differs");
        }
        // One chain, as the seed article lists it.
        let chain = ruleset
            .nat
            .chains
            .iter()
            .find(|c| c.starts_with("KUBE-SVC-"))
            .expect("a KUBE-SVC chain");
        let real = ns.exec_with_input(backend.list, &["-n", "-t", "nat", "-L", chain], "");
        let ours =
            iptables::list::list(&ruleset, &jumps, Table::Nat, Some(chain), style).expect("list chain");
        assert_eq!(ours, real, "{what}: iptables -n -t nat -L {chain} differs");
    }
}

#[test]
fn seed_example_round_trips() {
    round_trip(
        "examples/hello-app.yaml",
        "examples/kube-proxy-config.yaml",
        IpFamily::V4,
    );
}

#[test]
fn upstream_overall_case_round_trips() {
    round_trip(
        "kproxy-userspace/tests/fixtures/overall/model.yaml",
        "kproxy-userspace/tests/fixtures/overall/config.yaml",
        IpFamily::V4,
    );
}

#[test]
fn policies_case_round_trips() {
    round_trip(
        "kproxy-userspace/tests/fixtures/policies/model.yaml",
        "kproxy-userspace/tests/fixtures/policies/config.yaml",
        IpFamily::V4,
    );
}

#[test]
fn ipv6_case_round_trips() {
    round_trip(
        "kproxy-userspace/tests/fixtures/ipv6/model.yaml",
        "kproxy-userspace/tests/fixtures/ipv6/config.yaml",
        IpFamily::V6,
    );
}
