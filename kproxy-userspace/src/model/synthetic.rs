//! Generated models for benchmarks: many ClusterIP+NodePort services, each with a few
//! ready endpoints spread over two nodes.

use std::net::{IpAddr, Ipv4Addr};

use super::{Endpoint, IpFamily, Model, Protocol, ServicePort, ServicePortName, Topology};

/// `services` services `ns-N/svc-N` (one TCP port 80, NodePort from 30000 upward,
/// wrapping), each with `endpoints_per_service` ready endpoints (every other one local).
pub fn synthetic(services: usize, endpoints_per_service: usize) -> Model {
    let mut next_endpoint: u32 = 0;
    let mut service_ports: Vec<ServicePort> = (0..services)
        .map(|i| {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let mut endpoints: Vec<Endpoint> = (0..endpoints_per_service)
                .map(|e| {
                    next_endpoint = next_endpoint.wrapping_add(1);
                    Endpoint {
                        ip: IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + next_endpoint)),
                        port: 8080,
                        ready: true,
                        serving: true,
                        terminating: false,
                        is_local: e % 2 == 0,
                        zone_hints: vec![],
                        node_hints: vec![],
                    }
                })
                .collect();
            endpoints.sort_by_key(Endpoint::address);
            ServicePort {
                name: ServicePortName {
                    namespace: format!("ns-{i}"),
                    name: format!("svc-{i}"),
                    port: String::new(),
                    protocol: Protocol::Tcp,
                },
                cluster_ip: IpAddr::V4(Ipv4Addr::from(0xac1e_0000 + index)),
                port: 80,
                node_port: 30000 + u16::try_from(i % 2768).unwrap_or(0),
                external_ips: vec![],
                load_balancer_ips: vec![],
                load_balancer_source_ranges: vec![],
                session_affinity: None,
                external_policy_local: false,
                internal_policy_local: false,
                health_check_node_port: 0,
                endpoints,
            }
        })
        .collect();
    service_ports.sort_by_cached_key(|p| p.name.service());
    Model {
        family: IpFamily::V4,
        topology: Topology::default(),
        service_ports,
    }
}
