//! The exporter against kube-proxy's expectations: whole restore payloads for fixture
//! models (`tests/fixtures/*/`), then single rules across configuration matrices.

use std::path::{Path, PathBuf};

use kproxy::{
    config::ProxyConfig,
    iptables::{self, RenderOptions, Runtime, jumps, list::ProtocolColumn},
    manifests,
    model::{self, IpFamily, Model, NodeInfo},
};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

struct Setup {
    config: ProxyConfig,
    node: NodeInfo,
    model: Model,
}

fn setup(model_path: &str, config_text: &str, family: IpFamily) -> Setup {
    let config = ProxyConfig::parse(config_text, "inline config").expect("config parses");
    let node = NodeInfo::upstream_test_node(family);
    let model = manifests::load(&[repo_path(model_path)], &config, &node).expect("model loads");
    Setup { config, node, model }
}

fn restore(setup: &Setup, runtime: Runtime) -> String {
    let options = RenderOptions::new(&setup.config, &setup.node, runtime).expect("options");
    iptables::restore::payload(&iptables::render(&setup.model, &options), None)
}

/// What kube-proxy's test fake reports: nfacct counters present, no --random-fully.
fn upstream_fake_runtime() -> Runtime {
    Runtime {
        random_fully: false,
        tcp_be_liberal: false,
        nfacct_invalid_dropped: true,
        nfacct_localhost_nodeports: true,
    }
}

#[test]
fn whole_payloads_match_the_expected_text() {
    struct Case {
        fixture: &'static str,
        family: IpFamily,
        runtime: Runtime,
        /// kube-proxy's tests inject the mark as "0x4000"; the real proxier formats it
        /// with %#08x.
        upstream_mark_spelling: bool,
    }
    let cases = [
        Case {
            fixture: "overall",
            family: IpFamily::V4,
            runtime: upstream_fake_runtime(),
            upstream_mark_spelling: true,
        },
        Case {
            fixture: "policies",
            family: IpFamily::V4,
            runtime: Runtime {
                random_fully: false,
                ..Runtime::default()
            },
            upstream_mark_spelling: false,
        },
        Case {
            fixture: "ipv6",
            family: IpFamily::V6,
            runtime: Runtime::default(),
            upstream_mark_spelling: false,
        },
    ];
    for case in cases {
        let dir = format!("tests/fixtures/{}", case.fixture);
        let config = std::fs::read_to_string(repo_path(&format!("{dir}/config.yaml"))).unwrap();
        let setup = setup(&format!("{dir}/model.yaml"), &config, case.family);
        let mut expected = std::fs::read_to_string(repo_path(&format!("{dir}/expected.restore"))).unwrap();
        if case.upstream_mark_spelling {
            expected = expected.replace("0x4000", "0x00004000");
        }
        let got = restore(&setup, case.runtime);
        assert!(
            got.lines().count() > 10,
            "{}: suspiciously short payload",
            case.fixture
        );
        assert_eq!(got, expected, "{}: restore payload differs", case.fixture);
    }
}

/// The seed article's `iptables -n -t nat -L KUBE-SVC-YG6ZEOBCLVGD3AJB`.
#[test]
fn seed_article_service_chain() {
    let config = std::fs::read_to_string(repo_path("../examples/kube-proxy-config.yaml")).unwrap();
    let setup = setup("../examples/hello-app.yaml", &config, IpFamily::V4);
    let options = RenderOptions::new(&setup.config, &setup.node, Runtime::default()).unwrap();
    let ruleset = iptables::render(&setup.model, &options);
    let jumps = jumps::jump_rules(&options);
    let listing = iptables::list::list(
        &ruleset,
        &jumps,
        iptables::Table::Nat,
        Some("KUBE-SVC-YG6ZEOBCLVGD3AJB"),
        ProtocolColumn::Names,
    )
    .unwrap();
    let expected = "\
Chain KUBE-SVC-YG6ZEOBCLVGD3AJB (2 references)
target     prot opt source               destination         
KUBE-MARK-MASQ  tcp  -- !172.16.0.0/16        10.104.81.240        /* default/hello-app-service cluster IP */ tcp dpt:80
KUBE-SEP-7I3URQ2O437FVP5U  all  --  0.0.0.0/0            0.0.0.0/0            /* default/hello-app-service -> 172.16.166.130:8080 */ statistic mode random probability 0.50000000000
KUBE-SEP-PSPHHDAXPY5YRT7B  all  --  0.0.0.0/0            0.0.0.0/0            /* default/hello-app-service -> 172.16.192.89:8080 */
";
    assert_eq!(listing, expected);
    let sep = iptables::list::list(
        &ruleset,
        &jumps,
        iptables::Table::Nat,
        Some("KUBE-SEP-PSPHHDAXPY5YRT7B"),
        ProtocolColumn::Names,
    )
    .unwrap();
    assert!(
        sep.contains(
            "DNAT       tcp  --  0.0.0.0/0            0.0.0.0/0            /* default/hello-app-service */ tcp to:172.16.192.89:8080"
        ),
        "{sep}"
    );
}

/// The KUBE-SVC masquerade rule and the KUBE-EXT pod short-circuit across
/// masqueradeAll and detectLocalMode.
#[test]
fn masquerade_matrix() {
    let base = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nhostnameOverride: test-node\n";
    let cip = r#"-m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80"#;
    let pod = r#"-m comment --comment "pod traffic for ns2/svc2:p80 external destinations""#;
    let cases: [(&str, Option<String>, Option<String>); 5] = [
        ("", None, None),
        (
            "clusterCIDR: 10.0.0.0/8\n",
            Some(format!(
                "-A KUBE-SVC-GNZBNJ2PO5MGZ6GT {cip} ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"
            )),
            Some(format!(
                "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT {pod} -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT"
            )),
        ),
        (
            "clusterCIDR: 10.0.0.0/8\niptables: {masqueradeAll: true}\n",
            Some(format!("-A KUBE-SVC-GNZBNJ2PO5MGZ6GT {cip} -j KUBE-MARK-MASQ")),
            Some(format!(
                "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT {pod} -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT"
            )),
        ),
        (
            "detectLocalMode: BridgeInterface\ndetectLocal: {bridgeInterface: cbr0}\n",
            Some(format!(
                "-A KUBE-SVC-GNZBNJ2PO5MGZ6GT {cip} ! -i cbr0 -j KUBE-MARK-MASQ"
            )),
            Some(format!(
                "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT {pod} -i cbr0 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT"
            )),
        ),
        (
            "detectLocalMode: InterfaceNamePrefix\ndetectLocal: {interfaceNamePrefix: veth}\n",
            Some(format!(
                "-A KUBE-SVC-GNZBNJ2PO5MGZ6GT {cip} ! -i veth+ -j KUBE-MARK-MASQ"
            )),
            Some(format!(
                "-A KUBE-EXT-GNZBNJ2PO5MGZ6GT {pod} -i veth+ -j KUBE-SVC-GNZBNJ2PO5MGZ6GT"
            )),
        ),
    ];
    for (extra, masq, short_circuit) in cases {
        let setup = setup(
            "tests/fixtures/overall/model.yaml",
            &format!("{base}{extra}"),
            IpFamily::V4,
        );
        let payload = restore(&setup, Runtime::default());
        let masq_lines: Vec<&str> = payload
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SVC-GNZBNJ2PO5MGZ6GT") && l.ends_with("-j KUBE-MARK-MASQ"))
            .collect();
        assert_eq!(masq_lines, masq.as_slice(), "masquerade rule with {extra:?}");
        let pod_lines: Vec<&str> = payload
            .lines()
            .filter(|l| l.contains("pod traffic for ns2/svc2"))
            .collect();
        assert_eq!(
            pod_lines,
            short_circuit.as_slice(),
            "pod short-circuit with {extra:?}"
        );
    }
}

/// The KUBE-SERVICES tail rule(s) and localhost NodePorts under nodePortAddresses.
#[test]
fn node_port_addresses_and_localhost() {
    let tail = r#"-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain""#;
    let localhost_rule =
        "-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3003";
    let cases = [
        // (config lines, expected tail rules, KUBE-FIREWALL present, localhost NodePort rule present)
        (
            "",
            vec![format!("{tail} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")],
            true,
            true,
        ),
        (
            "iptables: {localhostNodePorts: false}\n",
            vec![format!(
                "{tail} -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"
            )],
            false,
            false,
        ),
        (
            "nodePortAddresses: [0.0.0.0/0]\n",
            vec![format!("{tail} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")],
            true,
            true,
        ),
        (
            "nodePortAddresses: [192.168.0.0/16]\n",
            vec![
                format!("{tail} -d 192.168.0.2 -j KUBE-NODEPORTS"),
                format!("{tail} -d 192.168.1.7 -j KUBE-NODEPORTS"),
            ],
            false,
            false,
        ),
        (
            "nodePortAddresses: [192.168.0.0/24, 127.0.0.1/32]\n",
            vec![
                format!("{tail} -d 127.0.0.1 -j KUBE-NODEPORTS"),
                format!("{tail} -d 192.168.0.2 -j KUBE-NODEPORTS"),
            ],
            true,
            true,
        ),
        (
            "nodePortAddresses: [primary]\n",
            vec![format!("{tail} -d 192.168.0.2 -j KUBE-NODEPORTS")],
            false,
            false,
        ),
    ];
    let base = "kind: KubeProxyConfiguration\nhostnameOverride: test-node\n";
    for (extra, expected_tail, firewall, localhost) in cases {
        let mut setup = setup(
            "tests/fixtures/overall/model.yaml",
            &format!("{base}{extra}"),
            IpFamily::V4,
        );
        setup.node.addresses = ["192.168.0.2", "192.168.1.7", "10.9.9.9", "127.0.0.1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let payload = restore(&setup, upstream_fake_runtime());
        let tails: Vec<&str> = payload.lines().filter(|l| l.starts_with(tail)).collect();
        assert_eq!(tails, expected_tail, "tail rules with {extra:?}");
        assert_eq!(
            payload.contains("-A KUBE-FIREWALL "),
            firewall,
            "KUBE-FIREWALL with {extra:?}"
        );
        assert_eq!(
            payload.contains(localhost_rule),
            localhost,
            "localhost NodePort with {extra:?}"
        );
    }
}

/// Above 1000 endpoints the endpoint rules lose their comments; nothing else does.
#[test]
fn large_cluster_mode_drops_endpoint_comments() {
    let node = NodeInfo::new("node-0", IpFamily::V4);
    let options = RenderOptions::new(&ProxyConfig::default(), &node, Runtime::default()).unwrap();
    for (services, large) in [(500, false), (501, true)] {
        let model = model::synthetic(services, 2);
        assert_eq!(model.total_endpoints() > 1000, large);
        let payload = iptables::restore::payload(&iptables::render(&model, &options), None);
        let sep_rules: Vec<&str> = payload
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SEP-"))
            .collect();
        let svc_to_sep: Vec<&str> = payload
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains("-j KUBE-SEP-"))
            .collect();
        assert_eq!(sep_rules.len(), services * 4);
        assert_eq!(svc_to_sep.len(), services * 2);
        for line in sep_rules.iter().chain(&svc_to_sep) {
            assert_eq!(!line.contains("--comment"), large, "{line}");
        }
        let cluster_ip_rules = payload
            .lines()
            .filter(|l| l.contains(" cluster IP\" -m tcp"))
            .count();
        assert_eq!(cluster_ip_rules, services, "KUBE-SERVICES keeps its comments");
    }
}

/// A broken document fails the whole load, naming file, object and field.
#[test]
fn broken_documents_name_file_object_and_field() {
    let service = |spec: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n{spec}")
    };
    let cases = [
        (service("  clusterIP: 10.0.0.1\n  ports: [{port: eighty}]\n"), "Service shop/web", "spec.ports[0].port"),
        (service("  clusterIP: 10.0.0.1\n  ports: [{port: 80, protocol: ICMP}]\n"), "Service shop/web", "spec.ports[0].protocol"),
        (service("  clusterIP: 10.0.0.999\n  ports: [{port: 80}]\n"), "Service shop/web", "spec.clusterIP"),
        (service("  clusterIP: 10.0.0.1\n  ports: [{port: 80, nodePort: 70000}]\n"), "Service shop/web", "spec.ports[0].nodePort"),
        (
            service("  clusterIP: 10.0.0.1\n  externalTrafficPolicy: Nearby\n  ports: [{port: 80}]\n"),
            "Service shop/web",
            "spec.externalTrafficPolicy",
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: [{addresses: [10.1.2.300]}]\nports: [{name: '', port: 80}]\n".to_string(),
            "EndpointSlice shop/web-1",
            "endpoints[0].addresses[0]",
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: shop}\naddressType: IPv4\nendpoints: {addresses: [10.1.2.3]}\n".to_string(),
            "EndpointSlice shop/web-1",
            "endpoints",
        ),
    ];
    let dir = std::env::temp_dir().join(format!("kproxy-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read_to_string(repo_path("../examples/hello-app.yaml")).unwrap();
    for (i, (document, object, field)) in cases.iter().enumerate() {
        // A good document first: the load must still fail as a whole.
        let file = dir.join(format!("case-{i}.yaml"));
        std::fs::write(&file, format!("{good}\n---\n{document}")).unwrap();
        let node = NodeInfo::new("n", IpFamily::V4);
        let err = manifests::load(std::slice::from_ref(&file), &ProxyConfig::default(), &node)
            .expect_err(document)
            .to_string();
        assert!(err.starts_with(&file.display().to_string()), "{err}");
        assert!(err.contains(object), "{err} lacks {object}");
        assert!(
            err.contains(&format!("field {field}:")),
            "{err} lacks field {field}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Directories are read by name, other kinds skipped, duplicates resolved.
#[test]
fn directories_lists_and_duplicate_endpoints() {
    let node = NodeInfo::new("host1", IpFamily::V4);
    let model = manifests::load(&[repo_path("../examples")], &ProxyConfig::default(), &node).unwrap();
    assert_eq!(model.service_ports.len(), 1);
    let port = &model.service_ports[0];
    assert_eq!(port.name.to_string(), "default/hello-app-service");
    assert_eq!((port.port, port.node_port), (80, 30811));
    let endpoints: Vec<(String, bool)> = port.endpoints.iter().map(|e| (e.address(), e.is_local)).collect();
    assert_eq!(
        endpoints,
        [
            ("172.16.166.130:8080".to_string(), true),
            ("172.16.192.89:8080".to_string(), false)
        ]
    );
}

/// Per-endpoint jumps of `service`'s KUBE-SVC (cluster policy) or KUBE-SVL (local
/// policy) chain in a restore payload, as `("SVC", "10.180.0.1:80")`.
fn endpoint_jumps(payload: &str, service: &str) -> Vec<(String, String)> {
    let marker = format!("--comment \"{service} -> ");
    payload
        .lines()
        .filter(|l| l.contains("-j KUBE-SEP-"))
        .filter_map(|line| {
            let chain = line.strip_prefix("-A KUBE-")?.get(..3)?;
            let endpoint = line.split_once(&marker)?.1.split('"').next()?;
            Some((chain.to_string(), endpoint.to_string()))
        })
        .collect()
}

/// Zone hints through the exporter: with this node's Node object (zone-a) among the
/// model files, KUBE-SVC jumps only to the endpoints hinted for zone-a, as kube-proxy's
/// `CategorizeEndpoints` picks them; the external-Local chain still uses the local
/// endpoint of zone-b (traffic policy Local ignores hints), which therefore keeps its
/// KUBE-SEP chain. Without the Node object (no zone known) every endpoint is used.
#[test]
fn zone_hints_narrow_the_cluster_chain_to_this_nodes_zone() {
    let config = "kind: KubeProxyConfiguration\nhostnameOverride: test-node\nclusterCIDR: 10.0.0.0/8\n";
    let config = ProxyConfig::parse(config, "inline config").unwrap();
    let node = NodeInfo::upstream_test_node(IpFamily::V4);
    let payload = |paths: &[&str]| {
        let paths: Vec<PathBuf> = paths.iter().map(|p| repo_path(p)).collect();
        let model = manifests::load(&paths, &config, &node).expect("model loads");
        let setup = Setup {
            config: config.clone(),
            node: node.clone(),
            model,
        };
        restore(&setup, Runtime::default())
    };
    let jumps = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter().map(|(c, e)| (c.to_string(), e.to_string())).collect()
    };
    let service = "tests/fixtures/topology/service.yaml";

    let zoned = payload(&[service, "tests/fixtures/topology/node.yaml"]);
    assert_eq!(
        endpoint_jumps(&zoned, "ns1/svc1:p80"),
        jumps(&[("SVC", "10.180.0.1:80"), ("SVC", "10.180.0.3:80")]),
        "{zoned}"
    );
    assert!(
        !zoned.contains("10.180.0.2"),
        "the zone-b endpoint has no chain at all: {zoned}"
    );
    assert_eq!(
        endpoint_jumps(&zoned, "ns2/svc2:p80"),
        jumps(&[("SVC", "10.180.1.1:80"), ("SVL", "10.180.1.2:80")]),
        "{zoned}"
    );
    // Two-endpoint chains split 50/50 as kube-proxy's do, over the zone's endpoints.
    assert!(
        zoned.contains(
            "\"ns1/svc1:p80 -> 10.180.0.1:80\" -m statistic --mode random --probability 0.5000000000 "
        ),
        "{zoned}"
    );

    let unzoned = payload(&[service]);
    assert_eq!(
        endpoint_jumps(&unzoned, "ns1/svc1:p80"),
        jumps(&[
            ("SVC", "10.180.0.1:80"),
            ("SVC", "10.180.0.2:80"),
            ("SVC", "10.180.0.3:80")
        ]),
        "{unzoned}"
    );
    assert_eq!(
        endpoint_jumps(&unzoned, "ns2/svc2:p80"),
        jumps(&[
            ("SVC", "10.180.1.1:80"),
            ("SVC", "10.180.1.2:80"),
            ("SVL", "10.180.1.2:80")
        ]),
        "{unzoned}"
    );

    // The zone can also come from the node's facts (cluster mode's watched Node).
    let from_facts = {
        let node = NodeInfo::upstream_test_node(IpFamily::V4).with_zone(Some("zone-b".into()));
        let model = manifests::load(&[repo_path(service)], &config, &node).unwrap();
        restore(
            &Setup {
                config: config.clone(),
                node,
                model,
            },
            Runtime::default(),
        )
    };
    assert_eq!(
        endpoint_jumps(&from_facts, "ns1/svc1:p80"),
        jumps(&[("SVC", "10.180.0.2:80")]),
        "{from_facts}"
    );
}
