//! Prometheus `/metrics`, served by the health servers' runtime on `metricsBindAddress`.
//!
//! kube-proxy's families (`pkg/proxy/metrics`) are set by the agent's sync loop after
//! each successful sync, from the model it applied; kproxy's own eBPF families are read
//! from the pinned maps when scraped, on the runtime's thread: a scrape never holds the
//! sync loop, whose map handles it does not share.
//!
//! Label bounds: `traffic_policy` (2 values), `table` (2), `map` (the datapath's maps),
//! `event`/`reason` (the datapath's fixed event list); `service` is one series per
//! service port of the model (`namespace/name:port`), capped at [`MAX_SERVICE_SERIES`]:
//! the rest are summed into `service="other"`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, atomic::AtomicU64},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use log::warn;
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    ebpf::{DatapathMaps, Frontend, MapsError},
    error_chain,
    model::{Endpoint, Model, ServicePort, ServicePortName},
};

/// At most this many `service` label values per family; the rest go to "other".
pub const MAX_SERVICE_SERIES: usize = 1000;
const OTHER_SERVICES: &str = "other";

type Labels = Vec<(&'static str, String)>;

fn label(key: &'static str, value: impl Into<String>) -> Labels {
    vec![(key, value.into())]
}

/// kube-proxy's network programming buckets: 0.25 s and 0.5 s, then every second to
/// 59 s, every 5 s to 115 s, every 30 s to 5 minutes.
fn network_programming_buckets() -> Vec<f64> {
    let linear = |start: f64, step: f64, count: u32| (0..count).map(move |i| start + step * f64::from(i));
    linear(0.25, 0.25, 2)
        .chain(linear(1.0, 1.0, 59))
        .chain(linear(60.0, 5.0, 12))
        .chain(linear(120.0, 30.0, 7))
        .collect()
}

/// Every metric the agent exports, registered once.
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    network_programming: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    endpoint_changes: Counter,
    service_changes: Counter,
    no_local_endpoints: Family<Labels, Gauge>,
    iptables_rules: Family<Labels, Gauge>,
    ebpf: Option<EbpfMetrics>,
    /// One scrape at a time: the eBPF families are refreshed, then encoded.
    scrape: Mutex<()>,
}

/// kproxy's eBPF families and where their values come from.
struct EbpfMetrics {
    pin_dir: PathBuf,
    /// The service port of each frontend, as last synced.
    services: Mutex<Arc<BTreeMap<Frontend, String>>>,
    map_entries: Family<Labels, Gauge>,
    map_capacity: Family<Labels, Gauge>,
    conntrack_entries: Family<Labels, Gauge>,
    events: Family<Labels, Counter>,
    drops: Family<Labels, Counter>,
    service_packets: Family<Labels, Counter>,
    service_new_flows: Family<Labels, Counter>,
}

impl Metrics {
    /// The registry; with `ebpf_pins`, kproxy's datapath families read from the maps
    /// pinned there.
    pub fn new(ebpf_pins: Option<PathBuf>, iptables: bool) -> Self {
        let mut registry = Registry::default();
        // kube-proxy's buckets: 1 ms doubling to about 16 s.
        let sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            sync_duration.clone(),
        );
        let network_programming = Histogram::new(network_programming_buckets());
        registry.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            network_programming.clone(),
        );
        let last_sync = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            last_sync.clone(),
        );
        // prometheus-client appends `_total` to counters.
        let endpoint_changes = Counter::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes (services whose endpoints changed, per sync)",
            endpoint_changes.clone(),
        );
        let service_changes = Counter::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes (services whose spec changed, per sync)",
            service_changes.clone(),
        );
        let no_local_endpoints = Family::<Labels, Gauge>::default();
        registry.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            no_local_endpoints.clone(),
        );
        let iptables_rules = Family::<Labels, Gauge>::default();
        if iptables {
            registry.register(
                "kubeproxy_sync_proxy_rules_iptables_total",
                "Total number of iptables rules owned by kube-proxy",
                iptables_rules.clone(),
            );
        }
        let ebpf = ebpf_pins.map(|pin_dir| EbpfMetrics::register(&mut registry, pin_dir));
        Metrics {
            registry,
            sync_duration,
            network_programming,
            last_sync,
            endpoint_changes,
            service_changes,
            no_local_endpoints,
            iptables_rules,
            ebpf,
            scrape: Mutex::new(()),
        }
    }

    /// After a successful sync of `model` that took `duration` to program, at `now`;
    /// `previous` is the model the sync before applied (None on the first).
    pub fn synced(&self, duration: Duration, now: SystemTime, previous: Option<&Model>, model: &Model) {
        self.sync_duration.observe(duration.as_secs_f64());
        self.last_sync
            .set(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64());
        let changes = changes(previous, model);
        self.service_changes.inc_by(changes.services as u64);
        self.endpoint_changes.inc_by(changes.endpoints as u64);
        let (internal, external) = no_local_endpoints(model);
        self.no_local_endpoints
            .get_or_create(&label("traffic_policy", "internal"))
            .set(internal as i64);
        self.no_local_endpoints
            .get_or_create(&label("traffic_policy", "external"))
            .set(external as i64);
    }

    /// After a successful sync at `now` that applied EndpointSlice changes made at
    /// `trigger_times` (their `last-change-trigger-time`): one observation each.
    pub fn network_programmed(&self, now: SystemTime, trigger_times: &[SystemTime]) {
        for &trigger in trigger_times {
            let latency = now.duration_since(trigger).unwrap_or_default();
            self.network_programming.observe(latency.as_secs_f64());
        }
    }

    /// iptables mode: the rules restored per table by the last sync.
    pub fn iptables_rules(&self, filter: usize, nat: usize) {
        for (table, rules) in [("filter", filter), ("nat", nat)] {
            self.iptables_rules
                .get_or_create(&label("table", table))
                .set(rules as i64);
        }
    }

    /// eBPF mode: the service port of each frontend, as just synced.
    pub fn frontend_services(&self, services: Arc<BTreeMap<Frontend, String>>) {
        if let Some(ebpf) = &self.ebpf {
            *ebpf.services.lock().unwrap_or_else(PoisonError::into_inner) = services;
        }
    }

    /// The text exposition (OpenMetrics), with the eBPF families read now.
    pub fn scrape(&self) -> String {
        let _one = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ebpf) = &self.ebpf
            && let Err(err) = ebpf.refresh()
        {
            // The families keep their last values; kube-proxy's are still worth serving.
            warn!("metrics: {}", error_chain(&err));
        }
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

impl EbpfMetrics {
    fn register(registry: &mut Registry, pin_dir: PathBuf) -> Self {
        let metrics = EbpfMetrics {
            pin_dir,
            services: Mutex::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            conntrack_entries: Family::default(),
            events: Family::default(),
            drops: Family::default(),
            service_packets: Family::default(),
            service_new_flows: Family::default(),
        };
        registry.register(
            "kproxy_bpf_map_entries",
            "Entries in each keyed datapath map",
            metrics.map_entries.clone(),
        );
        registry.register(
            "kproxy_bpf_map_capacity",
            "max_entries of each datapath map",
            metrics.map_capacity.clone(),
        );
        registry.register(
            "kproxy_conntrack_entries",
            "Conntrack entries by table: tcp (established TCP) and any (UDP and TCP handshakes)",
            metrics.conntrack_entries.clone(),
        );
        registry.register(
            "kproxy_datapath_events",
            "Datapath events other than drops, summed over CPUs",
            metrics.events.clone(),
        );
        registry.register(
            "kproxy_datapath_drops",
            "Packets the datapath dropped, by reason, summed over CPUs",
            metrics.drops.clone(),
        );
        registry.register(
            "kproxy_service_packets",
            "Packets to each service port's frontends (service=\"namespace/name:port\")",
            metrics.service_packets.clone(),
        );
        registry.register(
            "kproxy_service_new_flows",
            "Flows created to each service port's frontends",
            metrics.service_new_flows.clone(),
        );
        metrics
    }

    /// Reads the pinned maps into the families (on the scraping thread).
    fn refresh(&self) -> Result<(), MapsError> {
        let maps = DatapathMaps::open_pinned(&self.pin_dir)?;
        for size in maps.map_sizes()? {
            let map = label("map", size.map);
            self.map_capacity.get_or_create(&map).set(size.capacity as i64);
            if let Some(entries) = size.entries {
                self.map_entries.get_or_create(&map).set(entries as i64);
            }
            let table = match size.map {
                kproxy_common::map_names::CT_TCP => Some("tcp"),
                kproxy_common::map_names::CT_ANY => Some("any"),
                _ => None,
            };
            if let Some(table) = table {
                self.conntrack_entries
                    .get_or_create(&label("table", table))
                    .set(size.entries.unwrap_or(0) as i64);
            }
        }
        for (name, value) in maps.events()? {
            let (family, labels) = match name.strip_prefix("drop_") {
                Some(reason) => (&self.drops, label("reason", reason)),
                None => (&self.events, label("event", name)),
            };
            set_counter(family, &labels, value);
        }
        let services = self
            .services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut totals: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for entry in maps.frontends()? {
            let Some(service) = services.get(&entry.frontend) else {
                continue;
            };
            let counters = maps.frontend_counters(entry.id)?;
            let total = totals.entry(service.as_str()).or_default();
            total.0 += counters.packets;
            total.1 += counters.new_flows;
        }
        // Series of services gone since the last scrape go with them.
        self.service_packets.clear();
        self.service_new_flows.clear();
        for (service, (packets, flows)) in capped(totals, MAX_SERVICE_SERIES) {
            let labels = label("service", service);
            set_counter(&self.service_packets, &labels, packets);
            set_counter(&self.service_new_flows, &labels, flows);
        }
        Ok(())
    }
}

/// At most `max` series: the first `max` services in byte order, the counts of the
/// rest summed into one "other" series.
fn capped(totals: BTreeMap<&str, (u64, u64)>, max: usize) -> Vec<(String, (u64, u64))> {
    let mut series: Vec<(String, (u64, u64))> = Vec::with_capacity(totals.len().min(max + 1));
    let mut other: Option<(u64, u64)> = None;
    for (i, (service, counts)) in totals.into_iter().enumerate() {
        if i < max {
            series.push((service.to_string(), counts));
        } else {
            let sum = other.get_or_insert_default();
            sum.0 += counts.0;
            sum.1 += counts.1;
        }
    }
    series.extend(other.map(|sum| (OTHER_SERVICES.to_string(), sum)));
    series
}

/// A counter kept by the datapath: its value is copied, not counted here.
fn set_counter(family: &Family<Labels, Counter>, labels: &Labels, value: u64) {
    family
        .get_or_create(labels)
        .inner()
        .store(value, std::sync::atomic::Ordering::Relaxed);
}

/// How many Services changed between two models (kube-proxy counts changes per Service).
#[derive(Debug, Default, PartialEq, Eq)]
struct Changes {
    /// Services added, removed, or whose ports or policies changed.
    services: usize,
    /// Services whose endpoints changed (including added and removed ones with endpoints).
    endpoints: usize,
}

fn changes(previous: Option<&Model>, model: &Model) -> Changes {
    let empty = Model {
        family: model.family,
        topology: model.topology.clone(),
        service_ports: Vec::new(),
    };
    let before = group(previous.unwrap_or(&empty));
    let after = group(model);
    let spec = |ports: Option<&Vec<&ServicePort>>| -> Vec<ServicePort> {
        ports
            .into_iter()
            .flatten()
            .map(|p| ServicePort {
                endpoints: Vec::new(),
                ..(*p).clone()
            })
            .collect()
    };
    let mut changes = Changes::default();
    for name in before.keys().chain(after.keys()).collect::<BTreeSet<_>>() {
        let (old, new) = (before.get(name), after.get(name));
        changes.services += usize::from(spec(old) != spec(new));
        changes.endpoints += usize::from(endpoint_lists(old) != endpoint_lists(new));
    }
    changes
}

/// The endpoints of a Service's ports; ports without endpoints are left out, so a
/// Service added or removed with none changes no endpoints.
fn endpoint_lists<'a>(ports: Option<&Vec<&'a ServicePort>>) -> Vec<(&'a ServicePortName, &'a Vec<Endpoint>)> {
    ports
        .into_iter()
        .flatten()
        .filter(|p| !p.endpoints.is_empty())
        .map(|p| (&p.name, &p.endpoints))
        .collect()
}

/// The model's service ports by Service (`namespace/name`), in model order.
fn group(model: &Model) -> BTreeMap<String, Vec<&ServicePort>> {
    let mut out: BTreeMap<String, Vec<&ServicePort>> = BTreeMap::new();
    for port in &model.service_ports {
        out.entry(port.name.service()).or_default().push(port);
    }
    out
}

/// Service ports with a Local traffic policy and no local endpoints to use: (internal,
/// external), as kube-proxy counts them on each sync.
fn no_local_endpoints(model: &Model) -> (usize, usize) {
    let mut internal = 0;
    let mut external = 0;
    for port in &model.service_ports {
        // Local endpoints kube-proxy would use: ready ones, or serving terminating ones.
        let has_local = port
            .endpoints
            .iter()
            .any(|e| e.is_local && (e.ready || e.serving));
        if has_local {
            continue;
        }
        internal += usize::from(port.internal_policy_local);
        external += usize::from(port.external_policy_local);
    }
    (internal, external)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpFamily, Protocol, Topology};

    fn port(name: &str, port: &str, endpoints: &[(&str, bool)]) -> ServicePort {
        let mut p = ServicePort::new(
            ServicePortName {
                namespace: "ns".into(),
                name: name.into(),
                port: port.into(),
                protocol: Protocol::Tcp,
            },
            "10.96.0.1".parse().unwrap(),
            80,
        );
        p.endpoints = endpoints
            .iter()
            .map(|(ip, local)| Endpoint {
                ip: ip.parse().unwrap(),
                port: 8080,
                ready: true,
                serving: true,
                terminating: false,
                is_local: *local,
                zone_hints: vec![],
                node_hints: vec![],
            })
            .collect();
        p
    }

    fn model(ports: Vec<ServicePort>) -> Model {
        Model {
            family: IpFamily::V4,
            topology: Topology::default(),
            service_ports: ports,
        }
    }

    #[test]
    fn changes_count_services_and_their_endpoints() {
        let first = model(vec![
            port("a", "http", &[("10.0.0.1", true)]),
            port("a", "https", &[("10.0.0.1", true)]),
            port("b", "", &[]),
        ]);
        assert_eq!(
            changes(None, &first),
            Changes {
                services: 2,
                endpoints: 1
            },
            "everything is new on the first sync; b has no endpoints"
        );
        assert_eq!(changes(Some(&first), &first), Changes::default());
        let mut second = first.clone();
        second.service_ports[1].endpoints.clear();
        second.service_ports[2].port = 81;
        second.service_ports.push(port("c", "", &[("10.0.0.3", false)]));
        assert_eq!(
            changes(Some(&first), &second),
            Changes {
                services: 2,
                endpoints: 2
            },
            "b's spec, c added; a's and c's endpoints"
        );
    }

    #[test]
    fn no_local_endpoints_by_traffic_policy() {
        let mut internal = port("i", "", &[("10.0.0.1", false)]);
        internal.internal_policy_local = true;
        let mut external = port("e", "", &[]);
        external.external_policy_local = true;
        let mut served = port("s", "", &[("10.0.0.2", true)]);
        served.internal_policy_local = true;
        served.external_policy_local = true;
        let cluster = port("c", "", &[]);
        assert_eq!(
            no_local_endpoints(&model(vec![internal, external, served, cluster])),
            (1, 1)
        );
    }

    #[test]
    fn service_series_are_capped_with_the_rest_as_other() {
        let totals = BTreeMap::from([("ns/c:p", (5, 1)), ("ns/a:p", (1, 1)), ("ns/b:p", (2, 0))]);
        assert_eq!(
            capped(totals.clone(), 3),
            vec![
                ("ns/a:p".to_string(), (1, 1)),
                ("ns/b:p".to_string(), (2, 0)),
                ("ns/c:p".to_string(), (5, 1)),
            ]
        );
        assert_eq!(
            capped(totals, 1),
            vec![("ns/a:p".to_string(), (1, 1)), ("other".to_string(), (7, 1))]
        );
    }

    #[test]
    fn kube_proxy_families_encode_with_their_names() {
        let metrics = Metrics::new(None, true);
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let m = model(vec![port("a", "http", &[("10.0.0.1", true)])]);
        metrics.synced(Duration::from_millis(3), now, None, &m);
        metrics.iptables_rules(4, 9);
        let text = metrics.scrape();
        for line in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds 1700000000.0",
            "kubeproxy_sync_proxy_rules_service_changes_total 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 1",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\"} 0",
            "kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"} 9",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let ebpf_less = Metrics::new(None, false).scrape();
        assert!(!ebpf_less.contains("iptables_total"), "{ebpf_less}");
        assert!(!ebpf_less.contains("kproxy_"), "{ebpf_less}");
    }
}
