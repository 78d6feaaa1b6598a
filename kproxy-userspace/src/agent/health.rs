//! kube-proxy's health servers, run by the agent in every mode on a small tokio runtime
//! of its own (the agent loop stays synchronous):
//!
//! - the proxy health server: `/healthz` and `/livez` on `healthzBindAddress`, 200 while
//!   the datapath keeps up with the model, 503 once a model change has waited longer
//!   than the health timeout (twice the sync period) without a successful sync, or the
//!   last successful sync is older than that (the agent resyncs every sync period, so
//!   only failing syncs get there);
//! - one service health server per Service with a `healthCheckNodePort` (LoadBalancer,
//!   `externalTrafficPolicy: Local`), on that port of the `nodePortAddresses`, telling
//!   load balancers whether this node has ready endpoints of the Service: 200 with the
//!   count, 503 when there are none (or the proxy is unhealthy).
//!
//! Semantics follow kube-proxy's `pkg/proxy/healthcheck`: the proxy counts as healthy
//! until its first sync, and the count is of distinct ready local endpoint IPs across
//! the Service's ports (terminating endpoints never count).

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use log::{debug, error, info, warn};
use serde::Serialize;
use tokio::{runtime::Runtime, task::AbortHandle};

use super::metrics::Metrics;
use crate::{
    config::{NodePortAddresses, ProxyConfig},
    error_chain,
    model::{IpFamily, Model, NodeInfo, ServicePortName},
};

/// How long the proxy health server waits before binding again (kube-proxy's retry).
const BIND_RETRY: Duration = Duration::from_secs(5);
/// Go's zero `time.Time` as JSON: `lastUpdated` before the first sync.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("start the health servers' tokio runtime")]
    Runtime(#[source] std::io::Error),
    #[error("health check of {service}: listen on {address}")]
    Listen {
        service: ServiceName,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("healthz bind address {0}")]
    Flag(String),
    #[error("metrics bind address {0}")]
    MetricsFlag(String),
}

/// `--healthz-bind-address` or `--metrics-bind-address`: overrides the configuration
/// file's `healthzBindAddress` or `metricsBindAddress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthzBind {
    /// `""` or `0`, as kube-proxy's flag: no proxy health server.
    Disabled,
    At(SocketAddr),
}

impl HealthzBind {
    /// Parses the flag's value.
    pub fn parse(text: &str) -> Result<Self, HealthError> {
        match crate::config::parse_healthz_flag(text).map_err(HealthError::Flag)? {
            Some(address) => Ok(HealthzBind::At(address)),
            None => Ok(HealthzBind::Disabled),
        }
    }

    /// Parses `--metrics-bind-address` (a bare IP gets kube-proxy's metrics port).
    pub fn parse_metrics(text: &str) -> Result<Self, HealthError> {
        match crate::config::parse_metrics_flag(text).map_err(HealthError::MetricsFlag)? {
            Some(address) => Ok(HealthzBind::At(address)),
            None => Ok(HealthzBind::Disabled),
        }
    }

    pub fn address(self) -> Option<SocketAddr> {
        match self {
            HealthzBind::Disabled => None,
            HealthzBind::At(address) => Some(address),
        }
    }
}

/// A Service's `namespace/name` (kube-proxy keys health checks by Service, not port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    fn of(port: &ServicePortName) -> Self {
        ServiceName {
            namespace: port.namespace.clone(),
            name: port.name.clone(),
        }
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// When the datapath last caught up with the model, and since when a change waits.
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    state: Mutex<SyncTimes>,
}

#[derive(Debug, Default)]
struct SyncTimes {
    last_updated: Option<(IpFamily, SystemTime)>,
    oldest_queued: Option<SystemTime>,
}

/// The proxy's health at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthReport {
    pub healthy: bool,
    pub last_updated: Option<(IpFamily, SystemTime)>,
    pub current_time: SystemTime,
}

impl ProxyHealth {
    pub fn new(timeout: Duration) -> Self {
        ProxyHealth {
            timeout,
            state: Mutex::new(SyncTimes::default()),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, SyncTimes> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A model change was seen and is not applied yet (kube-proxy's `QueuedUpdate`).
    pub fn queued_update(&self, now: SystemTime) {
        self.times().oldest_queued.get_or_insert(now);
    }

    /// The datapath now reflects the model (kube-proxy's `Updated`).
    pub fn updated(&self, family: IpFamily, now: SystemTime) {
        let mut times = self.times();
        times.oldest_queued = None;
        times.last_updated = Some((family, now));
    }

    /// Unhealthy when a change has waited the timeout since the last sync, or the last
    /// sync is older than the timeout (the periodic resyncs fail); healthy while
    /// starting up (no sync yet), as kube-proxy.
    pub fn report(&self, now: SystemTime) -> HealthReport {
        let times = self.times();
        let late = |since: SystemTime| now.duration_since(since).unwrap_or_default() >= self.timeout;
        let healthy = match times.last_updated {
            None => true,
            Some((_, updated)) => !late(updated) && !times.oldest_queued.is_some_and(late),
        };
        HealthReport {
            healthy,
            last_updated: times.last_updated,
            current_time: now,
        }
    }
}

/// A timestamp as Go's `time.Time` marshals to JSON (RFC 3339, trailing zeros cut).
fn go_time(time: Option<SystemTime>) -> String {
    time.and_then(|t| jiff::Timestamp::try_from(t).ok())
        .map_or_else(|| GO_ZERO_TIME.to_string(), |t| t.to_string())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxierStatus {
    last_updated: String,
    healthy: bool,
}

/// kube-proxy's `ProxyHealth` JSON, fields in its order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxyHealthBody {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, ProxierStatus>,
}

/// What the proxy health server answers for `path`: `/healthz` adds `nodeEligible`
/// (always true here: the agent has no Node object that could be deleted or tainted),
/// `/livez` does not; when healthy, `lastUpdated` is the current time, as kube-proxy
/// keeps it for old clients.
fn proxy_health_answer(report: &HealthReport, path: &str) -> (StatusCode, String) {
    let node_eligible = match path {
        "/healthz" => Some(true),
        "/livez" => None,
        _ => return (StatusCode::NOT_FOUND, "404 page not found\n".into()),
    };
    let status = report
        .last_updated
        .iter()
        .map(|(family, at)| {
            let proxier = ProxierStatus {
                last_updated: go_time(Some(*at)),
                healthy: report.healthy,
            };
            (family.api_name(), proxier)
        })
        .collect();
    let last_updated = if report.healthy {
        Some(report.current_time)
    } else {
        report.last_updated.map(|(_, at)| at)
    };
    let body = ProxyHealthBody {
        last_updated: go_time(last_updated),
        current_time: go_time(Some(report.current_time)),
        node_eligible,
        healthy: report.healthy,
        status,
    };
    let code = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, serde_json::to_string(&body).unwrap_or_default())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceHealthBody<'a> {
    service: &'a ServiceName,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

/// What a Service's health check port answers: 200 when the node has ready endpoints of
/// it and the proxy is healthy, else 503; the body tab-indented, as kube-proxy prints it.
fn service_health_answer(
    service: &ServiceName,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> (StatusCode, String) {
    let body = ServiceHealthBody {
        service,
        local_endpoints,
        service_proxy_healthy: proxy_healthy,
    };
    let mut text = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(
        &mut text,
        serde_json::ser::PrettyFormatter::with_indent(b"\t"),
    );
    let _ = body.serialize(&mut serializer);
    let code = if local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, String::from_utf8(text).unwrap_or_default())
}

/// Per Service with a health check port: its distinct ready local endpoint IPs, over all
/// its ports (kube-proxy's `LocalReadyEndpoints`); 0 for a Service with none.
fn local_ready_endpoints(model: &Model) -> BTreeMap<ServiceName, usize> {
    let mut ips: BTreeMap<ServiceName, BTreeSet<IpAddr>> = BTreeMap::new();
    for port in model
        .service_ports
        .iter()
        .filter(|p| p.health_check_node_port != 0)
    {
        let local = ips.entry(ServiceName::of(&port.name)).or_default();
        local.extend(
            port.endpoints
                .iter()
                .filter(|e| e.is_local && e.ready)
                .map(|e| e.ip),
        );
    }
    ips.into_iter()
        .map(|(service, ips)| (service, ips.len()))
        .collect()
}

/// The health check port of each Service that has one.
fn health_check_ports(model: &Model) -> BTreeMap<ServiceName, u16> {
    model
        .service_ports
        .iter()
        .filter(|p| p.health_check_node_port != 0)
        .map(|p| (ServiceName::of(&p.name), p.health_check_node_port))
        .collect()
}

/// Where service health checks listen: every address of the family when
/// `nodePortAddresses` matches all, else the node addresses it selects.
fn health_check_addresses(config: &ProxyConfig, node: &NodeInfo) -> Vec<IpAddr> {
    match config.node_port_addresses(node) {
        NodePortAddresses::All => vec![match node.family {
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }],
        NodePortAddresses::Only(ips) => ips,
    }
}

fn json_response(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    let content_type = if code == StatusCode::NOT_FOUND {
        "text/plain; charset=utf-8"
    } else {
        "application/json"
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

/// Serves HTTP/1 on `listener`, answering every request with `answer(path)`, until the
/// task is aborted (which drops the listener and every open connection).
async fn serve<F>(listener: tokio::net::TcpListener, answer: F)
where
    F: Fn(&str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                debug!("health server accept: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let answer = answer.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = answer(request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!("health server connection: {err}");
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Serves `answer` on `address` for the agent's life: the first bind happens now, before
/// the agent's first sync, so the server is listening by the time anyone is told the
/// agent synced; a failed bind is logged and retried, as kube-proxy does.
fn keep_serving<F>(runtime: &Runtime, address: SocketAddr, what: &'static str, answer: F)
where
    F: Fn(&str) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let first = {
        let _runtime = runtime.enter();
        std::net::TcpListener::bind(address)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
    };
    runtime.spawn(async move {
        let mut attempt = Some(first);
        loop {
            let bound = match attempt.take() {
                Some(first) => first,
                None => tokio::net::TcpListener::bind(address).await,
            };
            match bound {
                Ok(listener) => {
                    info!("{what} on http://{address}");
                    serve(listener, answer.clone()).await;
                }
                Err(err) => {
                    warn!("{what}: listen on {address} failed, retrying in {BIND_RETRY:?}: {err}");
                    tokio::time::sleep(BIND_RETRY).await;
                }
            }
        }
    });
}

/// One Service's open health check: its port and the servers on each address.
struct OpenHealthCheck {
    port: u16,
    servers: Vec<AbortHandle>,
}

impl Drop for OpenHealthCheck {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

/// The health servers of one agent, on their own runtime.
pub struct HealthServers {
    runtime: Runtime,
    proxy: Arc<ProxyHealth>,
    /// Local ready endpoints per open Service, read by its servers on every request.
    local_endpoints: Arc<RwLock<BTreeMap<ServiceName, usize>>>,
    open: BTreeMap<ServiceName, OpenHealthCheck>,
}

impl HealthServers {
    /// Starts the runtime and, unless `healthz` is `None`, the proxy health server
    /// (a failed bind is logged and retried, as kube-proxy does).
    pub fn start(
        healthz: Option<SocketAddr>,
        metrics: Option<(SocketAddr, Arc<Metrics>)>,
        timeout: Duration,
    ) -> Result<Self, HealthError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kproxy-health")
            .enable_io()
            .enable_time()
            .build()
            .map_err(HealthError::Runtime)?;
        let proxy = Arc::new(ProxyHealth::new(timeout));
        if let Some(address) = healthz {
            let health = proxy.clone();
            let answer = move |path: &str| {
                let (code, body) = proxy_health_answer(&health.report(SystemTime::now()), path);
                json_response(code, body)
            };
            keep_serving(&runtime, address, "proxy health: /healthz and /livez", answer);
        } else {
            info!("proxy health server disabled");
        }
        if let Some((address, metrics)) = metrics {
            let answer = move |path: &str| {
                if path != "/metrics" {
                    return json_response(StatusCode::NOT_FOUND, "404 page not found\n".into());
                }
                // A scrape reads the datapath's maps: the runtime's other tasks (health
                // answers) move to another thread meanwhile.
                let text = tokio::task::block_in_place(|| metrics.scrape());
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            };
            keep_serving(&runtime, address, "metrics: /metrics", answer);
        } else {
            info!("metrics server disabled");
        }
        Ok(HealthServers {
            runtime,
            proxy,
            local_endpoints: Arc::default(),
            open: BTreeMap::new(),
        })
    }

    /// A model change was seen: the proxy turns unhealthy if no sync follows in time.
    pub fn queued_update(&self) {
        self.proxy.queued_update(SystemTime::now());
    }

    /// After a successful sync of `model`: the proxy is up to date, health checks open
    /// for new Services and close for removed ones (or moved ports), and every open one
    /// answers with the new counts. A health check that cannot listen is logged and
    /// tried again on the next sync; the others keep serving.
    pub fn synced(&mut self, model: &Model, node: &NodeInfo, config: &ProxyConfig) {
        self.proxy.updated(node.family, SystemTime::now());
        let wanted = health_check_ports(model);
        self.open.retain(|service, open| {
            let keep = wanted.get(service) == Some(&open.port);
            if !keep {
                info!("health check of {service}: closed port {}", open.port);
            }
            keep
        });
        *self
            .local_endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner) = local_ready_endpoints(model);
        let addresses = health_check_addresses(config, node);
        for (service, port) in wanted {
            if self.open.contains_key(&service) {
                continue;
            }
            match self.listen(&service, port, &addresses) {
                Ok(open) => {
                    info!("health check of {service}: listening on port {port}");
                    self.open.insert(service, open);
                }
                Err(err) => error!("{}", error_chain(&err)),
            }
        }
    }

    /// Listens on `port` of every address (all or none: a partly open check is closed).
    fn listen(
        &self,
        service: &ServiceName,
        port: u16,
        addresses: &[IpAddr],
    ) -> Result<OpenHealthCheck, HealthError> {
        let _runtime = self.runtime.enter();
        let mut open = OpenHealthCheck {
            port,
            servers: Vec::new(),
        };
        for ip in addresses {
            let address = SocketAddr::new(*ip, port);
            let listen_error = |source| HealthError::Listen {
                service: service.clone(),
                address,
                source,
            };
            let listener = std::net::TcpListener::bind(address)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(listen_error)?;
            let (counts, proxy, service) =
                (self.local_endpoints.clone(), self.proxy.clone(), service.clone());
            let answer = move |_path: &str| {
                let count = counts
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&service)
                    .copied()
                    .unwrap_or(0);
                let healthy = proxy.report(SystemTime::now()).healthy;
                let (code, body) = service_health_answer(&service, count, healthy);
                let mut response = json_response(code, body);
                response
                    .headers_mut()
                    .insert("x-load-balancing-endpoint-weight", HeaderValue::from(count));
                response
            };
            open.servers
                .push(self.runtime.spawn(serve(listener, answer)).abort_handle());
        }
        Ok(open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Protocol, ServicePort, Topology};

    fn at(seconds: u64, nanos: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos)
    }

    #[test]
    fn proxy_is_healthy_until_its_last_sync_is_late() {
        let health = ProxyHealth::new(Duration::from_mins(1));
        health.queued_update(at(100, 0));
        assert!(health.report(at(1000, 0)).healthy, "healthy while starting up");
        health.updated(IpFamily::V4, at(1000, 0));
        health.queued_update(at(1010, 0));
        assert!(
            health.report(at(1059, 0)).healthy,
            "synced 59 s ago: not late yet"
        );
        let late = health.report(at(1060, 0));
        assert!(!late.healthy, "a change waits and no sync came for the timeout");
        assert_eq!(late.last_updated, Some((IpFamily::V4, at(1000, 0))));
        health.updated(IpFamily::V4, at(1071, 0));
        assert!(health.report(at(1130, 0)).healthy, "synced, nothing queued");
        assert!(
            !health.report(at(1131, 0)).healthy,
            "no sync for the timeout: the periodic resyncs fail"
        );
    }

    #[test]
    fn healthz_and_livez_answer_kube_proxys_json() {
        let healthy = HealthReport {
            healthy: true,
            last_updated: Some((IpFamily::V4, at(1_700_000_000, 0))),
            current_time: at(1_700_000_005, 500_000_000),
        };
        let (code, body) = proxy_health_answer(&healthy, "/healthz");
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            body,
            r#"{"lastUpdated":"2023-11-14T22:13:25.5Z","currentTime":"2023-11-14T22:13:25.5Z","nodeEligible":true,"healthy":true,"status":{"IPv4":{"lastUpdated":"2023-11-14T22:13:20Z","healthy":true}}}"#
        );
        let late = HealthReport {
            healthy: false,
            ..healthy
        };
        let (code, body) = proxy_health_answer(&late, "/livez");
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            r#"{"lastUpdated":"2023-11-14T22:13:20Z","currentTime":"2023-11-14T22:13:25.5Z","healthy":false,"status":{"IPv4":{"lastUpdated":"2023-11-14T22:13:20Z","healthy":false}}}"#
        );
        let starting = HealthReport {
            healthy: true,
            last_updated: None,
            current_time: at(0, 0),
        };
        let (_, body) = proxy_health_answer(&starting, "/livez");
        assert_eq!(
            body,
            r#"{"lastUpdated":"1970-01-01T00:00:00Z","currentTime":"1970-01-01T00:00:00Z","healthy":true}"#
        );
        assert_eq!(
            proxy_health_answer(&starting, "/metrics").0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(go_time(None), GO_ZERO_TIME);
    }

    #[test]
    fn service_health_counts_and_prints_as_kube_proxy() {
        let service = ServiceName {
            namespace: "default".into(),
            name: "web".into(),
        };
        let (code, body) = service_health_answer(&service, 2, true);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        assert_eq!(
            service_health_answer(&service, 0, true).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            service_health_answer(&service, 3, false).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    fn endpoint(ip: &str, port: u16, ready: bool, local: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port,
            ready,
            serving: true,
            terminating: !ready,
            is_local: local,
            zone_hints: vec![],
            node_hints: vec![],
        }
    }

    fn service_port(
        name: &str,
        port: &str,
        health_check_node_port: u16,
        endpoints: Vec<Endpoint>,
    ) -> ServicePort {
        ServicePort {
            name: ServicePortName {
                namespace: "ns".into(),
                name: name.into(),
                port: port.into(),
                protocol: Protocol::Tcp,
            },
            cluster_ip: "10.96.0.1".parse().unwrap(),
            port: 80,
            node_port: 30000,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            session_affinity: None,
            external_policy_local: health_check_node_port != 0,
            internal_policy_local: false,
            health_check_node_port,
            endpoints,
        }
    }

    #[test]
    fn local_endpoints_are_distinct_ready_local_ips_per_service() {
        let model = Model {
            family: IpFamily::V4,
            topology: Topology::default(),
            service_ports: vec![
                service_port(
                    "lb",
                    "http",
                    32000,
                    vec![
                        endpoint("10.0.0.1", 80, true, true),
                        endpoint("10.0.0.2", 80, true, false),
                        endpoint("10.0.0.3", 80, false, true),
                    ],
                ),
                service_port(
                    "lb",
                    "https",
                    32000,
                    vec![
                        endpoint("10.0.0.1", 443, true, true),
                        endpoint("10.0.0.4", 443, true, true),
                    ],
                ),
                service_port("lb-empty", "", 32001, vec![endpoint("10.0.0.5", 80, true, false)]),
                service_port("cluster", "", 0, vec![endpoint("10.0.0.6", 80, true, true)]),
            ],
        };
        let name = |n: &str| ServiceName {
            namespace: "ns".into(),
            name: n.into(),
        };
        assert_eq!(
            local_ready_endpoints(&model),
            BTreeMap::from([(name("lb"), 2), (name("lb-empty"), 0)])
        );
        assert_eq!(
            health_check_ports(&model),
            BTreeMap::from([(name("lb"), 32000), (name("lb-empty"), 32001)])
        );
    }

    #[test]
    fn health_checks_listen_where_node_ports_do() {
        let mut node = NodeInfo::new("n", IpFamily::V4);
        node.addresses = vec!["192.168.0.7".parse().unwrap(), "10.1.1.1".parse().unwrap()];
        let all = ProxyConfig::default();
        assert_eq!(
            health_check_addresses(&all, &node),
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        );
        let some = ProxyConfig::parse("nodePortAddresses: [192.168.0.0/24]", "t").unwrap();
        assert_eq!(
            health_check_addresses(&some, &node),
            vec!["192.168.0.7".parse::<IpAddr>().unwrap()]
        );
    }
}
