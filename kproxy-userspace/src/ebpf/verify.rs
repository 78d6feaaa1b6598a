//! Drift: every difference between the live maps and what the agent should have written
//! for its model ([`super::desired_state`]) and node addresses.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::{self, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
};

use super::{
    desired::DesiredState,
    maps::{BackendId, DatapathMaps, Frontend, FrontendId, FrontendOptions, MapsError},
};

/// One difference between the maps and the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// The model has this frontend; the services map does not.
    MissingFrontend { frontend: Frontend, service: String },
    /// The services map has a frontend the model does not.
    ExtraFrontend { frontend: Frontend, id: FrontendId },
    /// The frontend leads to other backends than the model's (slot order ignored).
    StaleBackends {
        frontend: Frontend,
        service: String,
        want: Vec<SocketAddrV4>,
        have: Vec<SocketAddrV4>,
    },
    /// Affinity, the no-backend verdict or the accepted source ranges differ.
    StaleOptions {
        frontend: Frontend,
        service: String,
        want: FrontendOptions,
        have: FrontendOptions,
    },
    /// The service value declares more slots than the slots map holds.
    MissingSlots {
        frontend: Frontend,
        declared: u16,
        present: usize,
    },
    /// A slot names a backend id the backends map does not hold.
    DanglingSlot {
        frontend: Frontend,
        slot: usize,
        backend: BackendId,
    },
    /// No reverse-NAT entry for the frontend's id: replies would leave untranslated.
    MissingRevNat { frontend: Frontend, id: FrontendId },
    /// The reverse-NAT entry names another address.
    StaleRevNat {
        frontend: Frontend,
        id: FrontendId,
        want: SocketAddrV4,
        have: SocketAddrV4,
    },
    /// A backend the model uses is not in the backends map.
    MissingBackend { backend: SocketAddrV4 },
    /// The backends map holds an endpoint no frontend of the model uses.
    ExtraBackend { id: BackendId, backend: SocketAddrV4 },
    /// NodePorts should answer on this address; the node-address map lacks it.
    MissingNodeAddress(Ipv4Addr),
    /// The node-address map holds an address NodePorts should not answer on.
    ExtraNodeAddress(Ipv4Addr),
}

impl Drift {
    /// `missing`, `extra` or `stale`.
    pub fn kind(&self) -> &'static str {
        match self {
            Drift::MissingFrontend { .. }
            | Drift::MissingSlots { .. }
            | Drift::DanglingSlot { .. }
            | Drift::MissingRevNat { .. }
            | Drift::MissingBackend { .. }
            | Drift::MissingNodeAddress(_) => "missing",
            Drift::ExtraFrontend { .. } | Drift::ExtraBackend { .. } | Drift::ExtraNodeAddress(_) => "extra",
            Drift::StaleBackends { .. } | Drift::StaleOptions { .. } | Drift::StaleRevNat { .. } => "stale",
        }
    }

    /// The map the difference is in.
    pub fn map(&self) -> &'static str {
        use kproxy_common::map_names as names;
        match self {
            Drift::StaleOptions { want, have, .. } if want.source_ranges != have.source_ranges => {
                names::SOURCE_RANGES
            }
            Drift::MissingFrontend { .. } | Drift::ExtraFrontend { .. } | Drift::StaleOptions { .. } => {
                names::SERVICES
            }
            Drift::StaleBackends { .. } | Drift::MissingSlots { .. } | Drift::DanglingSlot { .. } => {
                names::SLOTS
            }
            Drift::MissingRevNat { .. } | Drift::StaleRevNat { .. } => names::REVNAT,
            Drift::MissingBackend { .. } | Drift::ExtraBackend { .. } => names::BACKENDS,
            Drift::MissingNodeAddress(_) | Drift::ExtraNodeAddress(_) => names::NODE_ADDRS,
        }
    }
}

fn list(addrs: &[SocketAddrV4]) -> String {
    let items: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

fn options(o: &FrontendOptions) -> String {
    let mut out = match o.client_ip_affinity {
        Some(t) => format!("ClientIP affinity {}s", t.as_secs()),
        None => "no affinity".into(),
    };
    let _ = write!(out, ", {}", o.masquerade);
    if o.drop_without_backends {
        out.push_str(", drop without backends");
    }
    if !o.source_ranges.is_empty() {
        let ranges: Vec<String> = o.source_ranges.iter().map(ToString::to_string).collect();
        let _ = write!(out, ", sources [{}]", ranges.join(", "));
    }
    if let Some(cluster) = o.cluster_frontend {
        let _ = write!(out, ", pods and the node via {cluster}");
    }
    out
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::MissingFrontend { frontend, service } => {
                write!(f, "frontend {frontend} of {service} is not in the maps")
            }
            Drift::ExtraFrontend { frontend, id } => {
                write!(f, "frontend {frontend} (service id {}) is not in the model", id.0)
            }
            Drift::StaleBackends {
                frontend,
                service,
                want,
                have,
            } => write!(
                f,
                "frontend {frontend} of {service} leads to {} instead of {}",
                list(have),
                list(want)
            ),
            Drift::StaleOptions {
                frontend,
                service,
                want,
                have,
            } => write!(
                f,
                "frontend {frontend} of {service} has {} instead of {}",
                options(have),
                options(want)
            ),
            Drift::MissingSlots {
                frontend,
                declared,
                present,
            } => write!(
                f,
                "frontend {frontend} declares {declared} backend slots, {present} exist"
            ),
            Drift::DanglingSlot {
                frontend,
                slot,
                backend,
            } => write!(
                f,
                "frontend {frontend} slot {slot} names backend {backend}, which is not in the backends map"
            ),
            Drift::MissingRevNat { frontend, id } => {
                write!(
                    f,
                    "frontend {frontend} (service id {}) has no reverse-NAT entry",
                    id.0
                )
            }
            Drift::StaleRevNat {
                frontend,
                id,
                want,
                have,
            } => write!(
                f,
                "frontend {frontend} (service id {}) reverse-NATs to {have} instead of {want}",
                id.0
            ),
            Drift::MissingBackend { backend } => write!(f, "backend {backend} is not in the backends map"),
            Drift::ExtraBackend { id, backend } => {
                write!(f, "backend {id} ({backend}) is used by no frontend of the model")
            }
            Drift::MissingNodeAddress(ip) => write!(f, "node address {ip} is not in the node-address map"),
            Drift::ExtraNodeAddress(ip) => {
                write!(f, "node address {ip} is in the node-address map but not expected")
            }
        }
    }
}

/// The address a frontend's replies must come from (0.0.0.0 for NodePorts: the node
/// address the client used, kept in conntrack).
fn rev_nat_of(frontend: Frontend) -> SocketAddrV4 {
    match frontend {
        Frontend::Address { addr, .. } => addr,
        Frontend::NodePort { port, .. } => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
    }
}

fn sorted(mut addrs: Vec<SocketAddrV4>) -> Vec<SocketAddrV4> {
    addrs.sort();
    addrs
}

/// Every difference between `maps` and `desired` plus `node_addresses` (what the agent
/// should have written), in map order: frontends, backends, node addresses.
pub fn verify(
    maps: &DatapathMaps,
    desired: &DesiredState,
    node_addresses: &[Ipv4Addr],
) -> Result<Vec<Drift>, MapsError> {
    let mut drift = Vec::new();
    let backends: BTreeMap<BackendId, SocketAddrV4> = maps.backends()?.into_iter().collect();
    let live: BTreeMap<Frontend, _> = maps.frontends()?.into_iter().map(|s| (s.frontend, s)).collect();

    for (frontend, want) in &desired.frontends {
        let Some(have) = live.get(frontend) else {
            drift.push(Drift::MissingFrontend {
                frontend: *frontend,
                service: want.service.clone(),
            });
            continue;
        };
        let mut complete = have.backends.len() == have.slot_count as usize;
        if !complete {
            drift.push(Drift::MissingSlots {
                frontend: *frontend,
                declared: have.slot_count,
                present: have.backends.len(),
            });
        }
        let mut resolved = Vec::with_capacity(have.backends.len());
        for (slot, id) in have.backends.iter().enumerate() {
            if let Some(addr) = backends.get(id) {
                resolved.push(*addr);
            } else {
                complete = false;
                drift.push(Drift::DanglingSlot {
                    frontend: *frontend,
                    slot,
                    backend: *id,
                });
            }
        }
        // A broken slot set is reported once, above, not again as stale backends.
        let (want_set, have_set) = (sorted(want.backends.clone()), sorted(resolved));
        if complete && want_set != have_set {
            drift.push(Drift::StaleBackends {
                frontend: *frontend,
                service: want.service.clone(),
                want: want_set,
                have: have_set,
            });
        }
        if want.options != have.options {
            drift.push(Drift::StaleOptions {
                frontend: *frontend,
                service: want.service.clone(),
                want: want.options.clone(),
                have: have.options.clone(),
            });
        }
        let want_rev = rev_nat_of(*frontend);
        match maps.rev_nat(have.id)? {
            None => drift.push(Drift::MissingRevNat {
                frontend: *frontend,
                id: have.id,
            }),
            Some(rev) if rev != want_rev => drift.push(Drift::StaleRevNat {
                frontend: *frontend,
                id: have.id,
                want: want_rev,
                have: rev,
            }),
            Some(_) => {}
        }
    }
    for (frontend, have) in &live {
        if !desired.frontends.contains_key(frontend) {
            drift.push(Drift::ExtraFrontend {
                frontend: *frontend,
                id: have.id,
            });
        }
    }

    let wanted = desired.backends();
    let present: BTreeSet<SocketAddrV4> = backends.values().copied().collect();
    for backend in wanted.difference(&present) {
        drift.push(Drift::MissingBackend { backend: *backend });
    }
    for (id, backend) in &backends {
        if !wanted.contains(backend) {
            drift.push(Drift::ExtraBackend {
                id: *id,
                backend: *backend,
            });
        }
    }

    let want_addrs: BTreeSet<Ipv4Addr> = node_addresses.iter().copied().collect();
    let have_addrs: BTreeSet<Ipv4Addr> = maps.node_addresses()?.into_iter().collect();
    drift.extend(
        want_addrs
            .difference(&have_addrs)
            .map(|a| Drift::MissingNodeAddress(*a)),
    );
    drift.extend(
        have_addrs
            .difference(&want_addrs)
            .map(|a| Drift::ExtraNodeAddress(*a)),
    );
    Ok(drift)
}
