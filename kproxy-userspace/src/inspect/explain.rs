//! `kproxy explain`: what happens to one new packet, in both views.
//!
//! The iptables view is [`crate::iptables::simulate`] over the rules rendered for the
//! recorded model. The BPF view follows the datapath's lookups in the live maps. Both
//! end in a [`Verdict`] that must agree.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use serde::Serialize;

use super::{InspectError, Inspection};
pub use crate::iptables::simulate::{IptablesPath, Probe, RuleChoice, Verdict};
use crate::{
    ebpf::{CtDirection, DatapathMaps, Frontend, Masquerade, SourceRange},
    iptables::{chain_name::endpoint_chain, simulate::simulate},
    model::Protocol,
};
use kproxy_common::map_names::{
    AFFINITY, BACKENDS, CT_ANY, CT_TCP, NODE_ADDRS, REVNAT, SERVICES, SLOTS, SOURCE_RANGES,
};

/// One backend the datapath can choose.
#[derive(Clone, Debug, Serialize)]
pub struct MapChoice {
    pub slot: usize,
    pub backend_id: u32,
    pub backend: SocketAddrV4,
    /// The KUBE-SEP-… chain kube-proxy would use for it.
    pub chain: Option<String>,
    pub probability: f64,
    /// The source the backend sees when the client is the backend itself (hairpin).
    pub masquerade: Option<Ipv4Addr>,
}

/// The lookups the datapath does.
#[derive(Clone, Debug, Serialize)]
pub struct BpfPath {
    pub trace: Vec<String>,
    /// The frontend matched (services map key).
    pub frontend: Option<String>,
    pub service_id: Option<u32>,
    pub choices: Vec<MapChoice>,
    /// Replies are rewritten to come from this address.
    pub rev_nat: Option<SocketAddrV4>,
    pub verdict: Verdict,
}

/// Both views of one packet.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub packet: String,
    /// The service port the destination belongs to, if any.
    pub service: Option<String>,
    pub iptables: IptablesPath,
    /// None when the agent ran in iptables mode.
    pub bpf: Option<BpfPath>,
    /// Both views reach the same verdict.
    pub agree: Option<bool>,
}

impl Inspection {
    /// Explains what happens to `probe` in both views.
    pub fn explain(&self, probe: &Probe) -> Result<Explanation, InspectError> {
        let local: Vec<Ipv4Addr> = self
            .node
            .addresses
            .iter()
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        let iptables = simulate(&self.ruleset, &self.jumps, probe, &local);
        let bpf = match &self.maps {
            Some(maps) => Some(self.bpf_path(maps, probe, &local)?),
            None => None,
        };
        let agree = bpf.as_ref().map(|b| b.verdict == iptables.verdict);
        let service = self
            .model
            .service_ports
            .iter()
            .find(|p| {
                let dst = IpAddr::V4(*probe.dst.ip());
                p.name.protocol == probe.protocol
                    && ((p.port == probe.dst.port()
                        && (p.cluster_ip == dst
                            || p.external_ips.contains(&dst)
                            || p.load_balancer_ips.contains(&dst)))
                        || (p.node_port == probe.dst.port() && local.contains(probe.dst.ip())))
            })
            .map(|p| p.name.to_string());
        Ok(Explanation {
            packet: format!("{} {} -> {}", probe.protocol.lower(), probe.src, probe.dst),
            service,
            iptables,
            bpf,
            agree,
        })
    }

    fn bpf_path(
        &self,
        maps: &DatapathMaps,
        probe: &Probe,
        local: &[Ipv4Addr],
    ) -> Result<BpfPath, InspectError> {
        let mut trace = Vec::new();
        let mut path = BpfPath {
            trace: Vec::new(),
            frontend: None,
            service_id: None,
            choices: Vec::new(),
            rev_nat: None,
            verdict: Verdict::Untouched,
        };
        if local.contains(probe.src.ip()) {
            trace.push(format!(
                "{} is a node address: packets the node sends itself reach no TC ingress hook, \
                 so the datapath never sees them",
                probe.src.ip()
            ));
            path.trace = trace;
            return Ok(path);
        }
        let proto = probe.protocol;
        if proto == Protocol::Sctp {
            trace.push("SCTP: not parsed by the datapath, passes untouched".into());
            path.trace = trace;
            return Ok(path);
        }
        let services = maps.frontends()?;
        let find = |f: Frontend| services.iter().find(|s| s.frontend == f);
        let exact = Frontend::Address {
            addr: probe.dst,
            proto,
        };
        let mut found = find(exact);
        trace.push(format!(
            "{SERVICES}[{exact}] -> {}",
            found.map_or("miss".to_string(), |s| format!("service id {}", s.id.0))
        ));
        if found.is_none() {
            let node_addrs = maps.node_addresses()?;
            let is_node = node_addrs.contains(probe.dst.ip());
            trace.push(format!(
                "{NODE_ADDRS}[{}] -> {}",
                probe.dst.ip(),
                if is_node { "node address" } else { "miss" }
            ));
            if is_node {
                let node_port = Frontend::NodePort {
                    port: probe.dst.port(),
                    proto,
                };
                found = find(node_port);
                trace.push(format!(
                    "{SERVICES}[{node_port}] -> {}",
                    found.map_or("miss".to_string(), |s| format!("service id {}", s.id.0))
                ));
            }
        }
        let Some(svc) = found else {
            trace.push(format!(
                "not a frontend: the packet passes untouched (a reply of a tracked flow would be \
                 reverse-translated through its {CT_TCP} or {CT_ANY} reply entry)"
            ));
            path.trace = trace;
            return Ok(path);
        };
        path.frontend = Some(svc.frontend.to_string());
        path.service_id = Some(svc.id.0);
        // Source ranges gate first (kube-proxy's KUBE-FW precedes KUBE-EXT).
        let (ranges, ranged_id) = (svc.options.source_ranges.clone(), svc.id.0);
        let from_pod = maps
            .snat()?
            .cluster_cidr
            .is_some_and(|(net, prefix)| SourceRange::new(net, prefix).contains(*probe.src.ip()));
        let svc = match svc.options.cluster_frontend {
            Some(cluster) if from_pod => {
                let switched = find(Frontend::Address { addr: cluster, proto });
                trace.push(format!(
                    "a pod's flow to an externalTrafficPolicy Local frontend: served by the ClusterIP \
                     {cluster}'s backends ({})",
                    switched.map_or("missing".to_string(), |s| format!("service id {}", s.id.0))
                ));
                switched.unwrap_or(svc)
            }
            _ => svc,
        };
        if svc.slot_count == 0 {
            trace.push(if svc.options.drop_without_backends {
                "0 backend slots, drop flag: the datapath drops the packet (kube-proxy DROPs: no \
                 local endpoints) and counts it in no_backend_drops"
                    .into()
            } else {
                "0 backend slots: TC answers a UDP datagram or TCP SYN with ICMP port unreachable \
                 (kube-proxy's REJECT; counted in rejects) and drops other TCP segments"
                    .into()
            });
            path.verdict = Verdict::Refused;
            path.trace = trace;
            return Ok(path);
        }
        if !ranges.is_empty() {
            let src = *probe.src.ip();
            let allowed = ranges.iter().any(|r| r.contains(src));
            trace.push(format!(
                "{SOURCE_RANGES}[{}, {src}] -> {}",
                ranged_id,
                if allowed {
                    "inside loadBalancerSourceRanges"
                } else {
                    "miss: a new flow is dropped (counted in source_range_drops)"
                }
            ));
            if !allowed {
                path.verdict = Verdict::Refused;
                path.trace = trace;
                return Ok(path);
            }
        }
        if let Some(timeout) = svc.options.client_ip_affinity {
            trace.push(format!(
                "ClientIP affinity ({}s): {AFFINITY}[{}, {}] picks the client's last backend if recent",
                timeout.as_secs(),
                probe.src.ip(),
                svc.id.0
            ));
        }
        if svc.options.masquerade != Masquerade::Never {
            let snat = maps.snat()?;
            let to = snat.node_addr.map_or_else(
                || "nothing (no node address configured)".to_string(),
                |a| a.to_string(),
            );
            trace.push(format!(
                "{}: new flows leave from {to}, ports {}-{} (hairpin flows excepted)",
                svc.options.masquerade,
                snat.ports.start(),
                snat.ports.end()
            ));
        }
        if let Some(flow) = maps.conntrack()?.into_iter().find(|f| {
            f.direction == CtDirection::Service
                && f.src == probe.src
                && f.dst == probe.dst
                && f.proto == probe.protocol.number()
                && f.frontend_id == svc.id
        }) {
            let table = if flow.proto == kproxy_common::lb::PROTO_TCP && flow.established {
                CT_TCP
            } else {
                CT_ANY
            };
            trace.push(format!(
                "{table}[{} -> {}] -> an existing flow: stays on backend {}",
                probe.src, probe.dst, flow.backend
            ));
        }
        let port = self
            .frontend_index()
            .get(&svc.frontend)
            .map(|(p, _)| (*p).clone());
        let by_id: std::collections::HashMap<_, _> = maps.backends()?.into_iter().collect();
        let masq = maps.masquerade_address()?;
        let share = 1.0 / f64::from(svc.slot_count);
        for (slot, id) in svc.backends.iter().enumerate() {
            let Some(backend) = by_id.get(id).copied() else {
                trace.push(format!(
                    "{SLOTS}[{}, {slot}] -> backend {id}: not in {BACKENDS} (flows choosing it are dropped)",
                    svc.id.0
                ));
                continue;
            };
            let chain = port
                .as_ref()
                .map(|p| endpoint_chain(&p.name, &backend.to_string()));
            trace.push(format!(
                "{SLOTS}[{}, {slot}] -> backend {id} -> {BACKENDS}[{id}] = {backend}{}   [random: {:.1}%]",
                svc.id.0,
                chain.as_ref().map(|c| format!(" ({c})")).unwrap_or_default(),
                share * 100.0
            ));
            let hairpin = backend.ip() == probe.src.ip();
            if hairpin {
                trace.push(match masq {
                    Some(m) => format!("  hairpin: the client is this backend; source rewritten to {m}"),
                    None => "  hairpin: the client is this backend, and no masquerade address is set".into(),
                });
            }
            path.choices.push(MapChoice {
                slot,
                backend_id: id.0,
                backend,
                chain,
                probability: share,
                masquerade: masq.filter(|_| hairpin),
            });
        }
        let rev = maps.rev_nat(svc.id)?;
        path.rev_nat = rev.map(|r| if r.ip().is_unspecified() { probe.dst } else { r });
        trace.push(match rev {
            Some(r) if r.ip().is_unspecified() => format!(
                "{REVNAT}[{}] = *:{}: replies are rewritten to come from {} (the node address used)",
                svc.id.0,
                r.port(),
                probe.dst
            ),
            Some(r) => format!(
                "{REVNAT}[{}] = {r}: replies are rewritten to come from it",
                svc.id.0
            ),
            None => format!("{REVNAT}[{}] -> miss: replies would leave untranslated", svc.id.0),
        });
        path.verdict = if path.choices.is_empty() {
            Verdict::Refused
        } else {
            Verdict::Dnat {
                backends: path.choices.iter().map(|c| c.backend).collect(),
            }
        };
        path.trace = trace;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        path::{Path, PathBuf},
    };

    use super::*;
    use crate::record::{Applied, Mode, Recorded};

    const HELLO_SVC: &str = "KUBE-SVC-YG6ZEOBCLVGD3AJB";
    const HELLO_EXT: &str = "KUBE-EXT-YG6ZEOBCLVGD3AJB";
    const SEP_A: &str = "KUBE-SEP-7I3URQ2O437FVP5U";
    const SEP_B: &str = "KUBE-SEP-PSPHHDAXPY5YRT7B";

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    /// The seed's host1 in iptables mode (no maps), model and config from `examples/`.
    fn inspection(model_dir: PathBuf) -> Inspection {
        let recorded = Recorded {
            applied: Applied {
                mode: Mode::Iptables,
                node_name: "host1".into(),
                node_addresses: vec!["192.168.77.10".parse().unwrap()],
                ..Applied::default()
            },
            model_dir,
            config: Some(examples().join("kube-proxy-config.yaml")),
        };
        Inspection::new(Path::new("/nonexistent"), recorded, None).unwrap()
    }

    fn explain(inspection: &Inspection, src: &str, dst: &str) -> Explanation {
        let probe = Probe {
            protocol: Protocol::Tcp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            in_iface: None,
        };
        inspection.explain(&probe).unwrap()
    }

    fn sock(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn both() -> BTreeSet<SocketAddrV4> {
        [sock("172.16.166.130:8080"), sock("172.16.192.89:8080")].into()
    }

    /// (backend, chain, probability, masquerade) of every choice.
    fn choices(e: &Explanation) -> Vec<(SocketAddrV4, &str, f64, bool)> {
        e.iptables
            .choices
            .iter()
            .map(|c| (c.backend, c.chain.as_str(), c.probability, c.masquerade))
            .collect()
    }

    #[test]
    fn cluster_ip_from_a_pod_spreads_over_both_endpoints_without_masquerade() {
        let e = explain(&inspection(examples()), "172.16.166.140:5555", "10.104.81.240:80");
        assert_eq!(e.iptables.verdict, Verdict::Dnat { backends: both() });
        assert_eq!(
            choices(&e),
            vec![
                (sock("172.16.166.130:8080"), SEP_A, 0.5, false),
                (sock("172.16.192.89:8080"), SEP_B, 0.5, false),
            ]
        );
        let nat_path: Vec<&str> = e.iptables.chains.iter().map(String::as_str).take(5).collect();
        assert_eq!(nat_path, ["PREROUTING", "KUBE-SERVICES", HELLO_SVC, SEP_A, SEP_B]);
        assert!(!e.iptables.chains.iter().any(|c| c == "KUBE-NODEPORTS"));
        assert_eq!(e.service.as_deref(), Some("default/hello-app-service"));
        assert_eq!(
            (e.bpf.is_none(), e.agree),
            (true, None),
            "no maps in iptables mode"
        );
    }

    #[test]
    fn cluster_ip_from_outside_the_pod_network_is_masqueraded() {
        let e = explain(&inspection(examples()), "192.168.77.100:5555", "10.104.81.240:80");
        assert_eq!(e.iptables.verdict, Verdict::Dnat { backends: both() });
        assert!(
            e.iptables.choices.iter().all(|c| c.masquerade),
            "{:#?}",
            e.iptables
        );
        assert!(
            e.iptables
                .trace
                .iter()
                .any(|l| l.contains("-j KUBE-MARK-MASQ   [match]"))
        );
    }

    #[test]
    fn node_port_goes_through_the_external_chain_and_masquerades() {
        let e = explain(
            &inspection(examples()),
            "192.168.77.100:5555",
            "192.168.77.10:30811",
        );
        assert_eq!(e.iptables.verdict, Verdict::Dnat { backends: both() });
        let nat_path: Vec<&str> = e.iptables.chains.iter().map(String::as_str).take(7).collect();
        assert_eq!(
            nat_path,
            [
                "PREROUTING",
                "KUBE-SERVICES",
                "KUBE-NODEPORTS",
                HELLO_EXT,
                "KUBE-MARK-MASQ",
                HELLO_SVC,
                SEP_A
            ]
        );
        assert!(e.iptables.choices.iter().all(|c| c.masquerade));
        assert_eq!(e.service.as_deref(), Some("default/hello-app-service"));
    }

    #[test]
    fn hairpin_masquerades_only_the_flow_back_to_the_client_itself() {
        let e = explain(&inspection(examples()), "172.16.166.130:5555", "10.104.81.240:80");
        assert_eq!(
            choices(&e),
            vec![
                (sock("172.16.166.130:8080"), SEP_A, 0.5, true),
                (sock("172.16.192.89:8080"), SEP_B, 0.5, false),
            ]
        );
    }

    #[test]
    fn other_addresses_pass_untouched() {
        let e = explain(&inspection(examples()), "172.16.166.140:5555", "10.104.81.241:80");
        assert_eq!(e.iptables.verdict, Verdict::Untouched);
        assert!(e.iptables.choices.is_empty());
        assert!(!e.iptables.chains.iter().any(|c| c.starts_with("KUBE-SVC-")));
        assert_eq!(e.service, None);
        // Same address, wrong port: not the service either.
        let e = explain(&inspection(examples()), "172.16.166.140:5555", "10.104.81.240:81");
        assert_eq!(e.iptables.verdict, Verdict::Untouched);
    }

    #[test]
    fn a_service_without_endpoints_is_rejected_by_the_filter_table() {
        let dir = std::env::temp_dir().join(format!("kproxy-explain-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = std::fs::read_to_string(examples().join("hello-app.yaml")).unwrap();
        let cut = yaml.find("endpoints:\n").unwrap();
        std::fs::write(
            dir.join("hello-app.yaml"),
            format!("{}endpoints: []\n", &yaml[..cut]),
        )
        .unwrap();
        let inspection = inspection(dir.clone());
        std::fs::remove_dir_all(&dir).unwrap();

        let e = explain(&inspection, "172.16.166.140:5555", "10.104.81.240:80");
        assert_eq!(e.iptables.verdict, Verdict::Refused);
        assert!(
            e.iptables
                .trace
                .iter()
                .any(|l| l.contains("has no endpoints") && l.contains("-j REJECT   [match]")),
            "{:#?}",
            e.iptables.trace
        );
        let e = explain(&inspection, "192.168.77.100:5555", "192.168.77.10:30811");
        assert_eq!(e.iptables.verdict, Verdict::Refused);
        assert!(e.iptables.chains.iter().any(|c| c == "KUBE-EXTERNAL-SERVICES"));
    }
}
