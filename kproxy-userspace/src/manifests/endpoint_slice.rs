//! discovery.k8s.io/v1 EndpointSlices → endpoints per service port, the way kube-proxy's
//! endpoint-slice cache builds them.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{ManifestError, Sourced, field_error, object_name};
use crate::model::{Endpoint, IpFamily, Protocol, ServicePortName, parse_ip_sloppy};

/// The label naming the Service a slice belongs to.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Endpoints per service port, deduplicated and sorted by `ip:port` string. A broken
/// slice fails the whole, or with `skipped` is left out and its error pushed there.
pub(super) fn collect_endpoints(
    slices: &[Sourced<EndpointSlice>],
    family: IpFamily,
    node_name: &str,
    mut skipped: Option<&mut Vec<ManifestError>>,
) -> Result<HashMap<ServicePortName, Vec<Endpoint>>, ManifestError> {
    // Slices in a fixed order (namespace, service, slice name) so duplicates resolve
    // the same way on every run.
    let mut ordered: Vec<(String, String, String, &Sourced<EndpointSlice>)> = Vec::new();
    for sourced in slices {
        let (namespace, slice_name) = object_name(&sourced.object.metadata);
        let service = sourced
            .object
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL));
        let Some(service) = service else {
            log::debug!(
                "{}: EndpointSlice {namespace}/{slice_name} has no {SERVICE_NAME_LABEL} label; skipped",
                sourced.path.display()
            );
            continue;
        };
        ordered.push((namespace, service.clone(), slice_name, sourced));
    }
    ordered.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));

    let mut by_port: HashMap<ServicePortName, BTreeMap<String, Endpoint>> = HashMap::new();
    for (namespace, service, slice_name, sourced) in ordered {
        let entries = match slice_entries(&namespace, &service, &slice_name, sourced, family, node_name) {
            Ok(entries) => entries,
            Err(err) => match skipped.as_deref_mut() {
                Some(skipped) => {
                    skipped.push(err);
                    continue;
                }
                None => return Err(err),
            },
        };
        for (name, candidate) in entries {
            let set = by_port.entry(name).or_default();
            let address = candidate.address();
            // Duplicates: the first one stays unless a later one is not terminating.
            if !set.contains_key(&address) || !candidate.terminating {
                set.insert(address, candidate);
            }
        }
    }
    Ok(by_port
        .into_iter()
        .map(|(name, set)| (name, set.into_values().collect()))
        .collect())
}

/// One slice's endpoints per service port, in its own order; a broken field fails the
/// slice as a whole (nothing of it is used).
fn slice_entries(
    namespace: &str,
    service: &str,
    slice_name: &str,
    sourced: &Sourced<EndpointSlice>,
    family: IpFamily,
    node_name: &str,
) -> Result<Vec<(ServicePortName, Endpoint)>, ManifestError> {
    let slice = &sourced.object;
    let object = format!("{namespace}/{slice_name}");
    let error =
        |field: String, message: String| field_error(&sourced.path, "EndpointSlice", &object, field, message);
    let mut entries = Vec::new();
    if slice.address_type != family.api_name() {
        return Ok(entries);
    }
    for (p, port) in slice.ports.iter().flatten().enumerate() {
        // kube-proxy ignores slice ports without a name (unnamed ports have "") or number.
        let (Some(port_name), Some(number)) = (&port.name, port.port) else {
            continue;
        };
        let number = u16::try_from(number).map_err(|_| {
            error(
                format!("ports[{p}].port"),
                format!("{number} is not in 0..=65535"),
            )
        })?;
        if number == 0 {
            continue;
        }
        let protocol_text = port.protocol.as_deref().unwrap_or("TCP");
        let protocol = Protocol::from_api(protocol_text).ok_or_else(|| {
            error(
                format!("ports[{p}].protocol"),
                format!("unknown protocol {protocol_text:?} (TCP, UDP or SCTP)"),
            )
        })?;
        let name = ServicePortName {
            namespace: namespace.to_string(),
            name: service.to_string(),
            port: port_name.clone(),
            protocol,
        };
        for (e, endpoint) in slice.endpoints.iter().enumerate() {
            // kube-proxy uses only the first address.
            let Some(text) = endpoint.addresses.first() else {
                continue;
            };
            let ip = parse_ip_sloppy(text).ok_or_else(|| {
                error(
                    format!("endpoints[{e}].addresses[0]"),
                    format!("{text:?} is not an IP address"),
                )
            })?;
            if !family.contains(&ip) {
                continue;
            }
            let conditions = endpoint.conditions.as_ref();
            let hints = endpoint.hints.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            entries.push((
                name.clone(),
                Endpoint {
                    ip,
                    port: number,
                    ready,
                    serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                    terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                    is_local: endpoint.node_name.as_deref() == Some(node_name),
                    zone_hints: hints
                        .and_then(|h| h.for_zones.as_ref())
                        .map(|zones| zones.iter().map(|z| z.name.clone()).collect())
                        .unwrap_or_default(),
                    node_hints: hints
                        .and_then(|h| h.for_nodes.as_ref())
                        .map(|nodes| nodes.iter().map(|n| n.name.clone()).collect())
                        .unwrap_or_default(),
                },
            ));
        }
    }
    Ok(entries)
}
