//! A v1 Service → its service ports, with the API defaults and kube-proxy's filters.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::{ManifestError, Sourced, field_error, object_name};
use crate::model::{
    Cidr, IpFamily, Protocol, ServicePort, ServicePortName, SessionAffinity, parse_ip_sloppy,
};

/// The API default for `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// The service ports kube-proxy would proxy for `family`; none for ExternalName and
/// headless services or a service without a cluster IP of that family.
pub(super) fn service_ports(
    sourced: &Sourced<Service>,
    family: IpFamily,
) -> Result<Vec<ServicePort>, ManifestError> {
    let service = &sourced.object;
    let (namespace, name) = object_name(&service.metadata);
    let object = format!("{namespace}/{name}");
    let error =
        |field: String, message: String| field_error(&sourced.path, "Service", &object, field, message);
    let Some(spec) = &service.spec else {
        log::debug!(
            "{}: Service {object} has no spec; skipped",
            sourced.path.display()
        );
        return Ok(Vec::new());
    };
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&service_type) {
        return Err(error(
            "spec.type".into(),
            format!("unknown service type {service_type:?}"),
        ));
    }
    if service_type == "ExternalName" {
        log::debug!(
            "{}: Service {object} is ExternalName; skipped",
            sourced.path.display()
        );
        return Ok(Vec::new());
    }
    let Some(cluster_ip) = cluster_ip_of_family(spec, family, &error)? else {
        log::debug!(
            "{}: Service {object} has no {} cluster IP (headless or not of this family); skipped",
            sourced.path.display(),
            family.api_name()
        );
        return Ok(Vec::new());
    };

    let external_ips: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|text| usable_ip(text, family))
        .collect();
    let load_balancer_ips: Vec<IpAddr> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        // With ipMode Proxy the load balancer itself proxies; kube-proxy leaves the VIP alone.
        .filter(|ingress| ingress.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|ingress| usable_ip(ingress.ip.as_deref().unwrap_or(""), family))
        .collect();
    let load_balancer_source_ranges: Vec<Cidr> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|text| Cidr::parse_sloppy(text.trim()).filter(|c| c.family() == family))
        .collect();

    let externally_reachable_type = service_type == "LoadBalancer"
        || service_type == "NodePort"
        || (service_type == "ClusterIP" && spec.external_ips.as_ref().is_some_and(|ips| !ips.is_empty()));
    // Validated on every type (as the API does), honoured only where traffic comes from outside.
    let external_policy_local = policy_is_local(
        spec.external_traffic_policy.as_deref(),
        "externalTrafficPolicy",
        &error,
    )? && externally_reachable_type;
    let internal_policy_local = policy_is_local(
        spec.internal_traffic_policy.as_deref(),
        "internalTrafficPolicy",
        &error,
    )?;
    let health_check_node_port = if service_type == "LoadBalancer" && external_policy_local {
        port_number(
            spec.health_check_node_port.unwrap_or(0),
            "spec.healthCheckNodePort",
            &error,
        )?
    } else {
        0
    };
    let session_affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            let timeout_seconds = match timeout {
                None => DEFAULT_AFFINITY_TIMEOUT,
                Some(t) => u32::try_from(t)
                    .ok()
                    .filter(|t| (1..=86400).contains(t))
                    .ok_or_else(|| {
                        error(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                            format!("{t} is not in 1..=86400"),
                        )
                    })?,
            };
            Some(SessionAffinity { timeout_seconds })
        }
        Some(other) => {
            return Err(error(
                "spec.sessionAffinity".into(),
                format!("unknown affinity {other:?} (None or ClientIP)"),
            ));
        }
    };

    let mut ports = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let field = |name: &str| format!("spec.ports[{i}].{name}");
        let protocol_text = port.protocol.as_deref().unwrap_or("TCP");
        let protocol = Protocol::from_api(protocol_text).ok_or_else(|| {
            error(
                field("protocol"),
                format!("unknown protocol {protocol_text:?} (TCP, UDP or SCTP)"),
            )
        })?;
        let number = port_number(port.port, &field("port"), &error)?;
        if number == 0 {
            return Err(error(field("port"), "must be in 1..=65535".into()));
        }
        ports.push(ServicePort {
            name: ServicePortName {
                namespace: namespace.clone(),
                name: name.clone(),
                port: port.name.clone().unwrap_or_default(),
                protocol,
            },
            cluster_ip,
            port: number,
            node_port: port_number(port.node_port.unwrap_or(0), &field("nodePort"), &error)?,
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
            session_affinity,
            external_policy_local,
            internal_policy_local,
            health_check_node_port,
            endpoints: Vec::new(),
        });
    }
    Ok(ports)
}

type FieldError<'a> = dyn Fn(String, String) -> ManifestError + 'a;

/// The first of `spec.clusterIPs` (or `spec.clusterIP`) of `family`; `None` for headless
/// (`None`), unassigned (empty) or other-family services.
fn cluster_ip_of_family(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    family: IpFamily,
    error: &FieldError<'_>,
) -> Result<Option<IpAddr>, ManifestError> {
    let (field, candidates): (&str, Vec<&String>) = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ("spec.clusterIPs", ips.iter().collect()),
        _ => ("spec.clusterIP", spec.cluster_ip.iter().collect()),
    };
    let Some(first) = candidates.first() else {
        return Ok(None);
    };
    if first.is_empty() || first.as_str() == "None" {
        return Ok(None);
    }
    for (i, text) in candidates.iter().enumerate() {
        let ip = parse_ip_sloppy(text).ok_or_else(|| {
            let at = if field == "spec.clusterIPs" {
                format!("{field}[{i}]")
            } else {
                field.to_string()
            };
            error(at, format!("{text:?} is not an IP address"))
        })?;
        if family.contains(&ip) {
            return Ok(Some(ip));
        }
    }
    Ok(None)
}

/// An address kube-proxy would use for `family`; invalid ones are dropped as kube-proxy does.
fn usable_ip(text: &str, family: IpFamily) -> Option<IpAddr> {
    match parse_ip_sloppy(text) {
        Some(ip) if family.contains(&ip) => Some(ip),
        Some(_) => None,
        None => {
            if !text.is_empty() {
                log::debug!("ignoring invalid IP {text:?}");
            }
            None
        }
    }
}

fn policy_is_local(value: Option<&str>, name: &str, error: &FieldError<'_>) -> Result<bool, ManifestError> {
    match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(error(
            format!("spec.{name}"),
            format!("unknown policy {other:?} (Cluster or Local)"),
        )),
    }
}

fn port_number(value: i32, field: &str, error: &FieldError<'_>) -> Result<u16, ManifestError> {
    u16::try_from(value).map_err(|_| error(field.to_string(), format!("{value} is not in 0..=65535")))
}
