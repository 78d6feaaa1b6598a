//! An in-process Kubernetes API server for the cluster-mode suites: the real protocol
//! (JSON over HTTP/1.1 as kube-apiserver sends it) for Services, EndpointSlices and
//! Nodes, so the agent's kube-rs reflectors run unmodified against it.
//!
//! What it models, as the real server does:
//! - LIST with label and field selectors, `limit`/`continue` paging over one consistent
//!   snapshot, `metadata.resourceVersion` from one global counter (etcd's revision);
//!   items carry no `kind`/`apiVersion`.
//! - WATCH (`?watch=true`) from a resourceVersion: newline-separated JSON events in a
//!   chunked body, an object leaving a label selector as DELETED and entering as ADDED,
//!   bookmarks on request, `timeoutSeconds`; a version older than the retained history
//!   is an ERROR event (410, reason `Expired`) inside a 200 stream, as the watch cache
//!   answers it.
//! - Failures a test switches on: 403 per resource and verb, the server down
//!   (connections refused and cut), watches dropped mid-stream or closed, history
//!   expired, a port that refuses connections until it is first served.
//!
//! State sits behind one mutex; watch subscriptions are registered under it together
//! with their backlog, so no change falls between the backlog and the live events.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    convert::Infallible,
    error::Error,
    fmt::Write as _,
    fs::File,
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Frame, Incoming},
    header::{AUTHORIZATION, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use nix::sched::{CloneFlags, setns};
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::{mpsc, watch},
    time::Sleep,
};

use crate::netns::NetNs;

/// The bearer token the kubeconfig from [`kubeconfig`] carries; any other is 401.
pub const TOKEN: &str = "kproxy-test-token";
/// The user RBAC messages name, as the DaemonSet's service account would appear.
const USER: &str = "system:serviceaccount:kube-system:kproxy";

type BoxError = Box<dyn Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// The three resources served, with how the API spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    const ALL: [Resource; 3] = [Resource::Services, Resource::EndpointSlices, Resource::Nodes];

    /// The plural (the URL's and RBAC's name).
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io",
            _ => "",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    /// The URL prefix the resource's paths start with.
    fn prefix(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1",
            _ => "/api/v1",
        }
    }

    fn namespaced(self) -> bool {
        self != Resource::Nodes
    }

    fn from_kind(kind: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }

    fn from_plural(plural: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.plural() == plural)
    }
}

/// Where an object is stored: resource, namespace (empty for nodes), name.
type Key = (Resource, String, String);

/// One write, as the watch cache keeps it: the object before and after.
#[derive(Debug)]
struct Change {
    rv: u64,
    key: Key,
    before: Option<Value>,
    after: Option<Value>,
}

/// What an open watch is sent.
enum Message {
    Change(Arc<Change>),
    Bookmark(u64),
    /// End the stream cleanly, as the server does at `timeoutSeconds`.
    Close,
}

struct Subscription {
    id: u64,
    resource: Resource,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Message>,
}

#[derive(Default)]
struct State {
    /// The last resourceVersion handed out (etcd's revision).
    rv: u64,
    /// Watches and continue tokens at or below this version are answered 410.
    expired_through: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Arc<Change>>,
    watches: Vec<Subscription>,
    next_watch: u64,
    denied: HashSet<(Resource, String)>,
    unavailable: bool,
    /// Listening sockets and connections open (each while its task runs).
    open_sockets: usize,
    requests: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every request, every watch opened or closed, every listener closed.
    changed: Condvar,
    /// True while the server is down: accept loops and connections end on it.
    down: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding it leaves nothing half-written worth hiding.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A bound port that is not listening yet: connections to it are refused (as to an API
/// server that is down) until [`FakeApiServer::serve`] starts accepting on it.
pub struct Reserved {
    socket: TcpSocket,
    addr: SocketAddr,
    /// The network namespace it was bound in, to bind there again after a downtime.
    netns: Arc<File>,
}

impl Reserved {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The API server: one state, served on any number of listeners (the root namespace's
/// and test namespaces' loopbacks) by a tokio runtime of its own.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Every served address with its namespace.
    served: Mutex<Vec<(SocketAddr, Arc<File>)>>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApiServer {
    /// An empty server, not yet listening anywhere.
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()
            .expect("the API server's tokio runtime");
        FakeApiServer {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                down: watch::Sender::new(false),
            }),
            runtime: Some(runtime),
            served: Mutex::new(Vec::new()),
        }
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime lives until drop")
    }

    /// Binds `addr` in the calling thread's network namespace without listening.
    pub fn reserve(addr: SocketAddr) -> Reserved {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .expect("TCP socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = socket.local_addr().expect("bound address");
        let netns = File::open("/proc/thread-self/ns/net").expect("this thread's network namespace");
        Reserved {
            socket,
            addr,
            netns: Arc::new(netns),
        }
    }

    /// Binds `addr` again in `netns` (after a downtime closed its listener).
    fn rebind(addr: SocketAddr, netns: &File) -> Reserved {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(netns, CloneFlags::CLONE_NEWNET).expect("setns into the listener's namespace");
                    Self::reserve(addr)
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Binds `127.0.0.1:0` inside `ns` without listening; the socket stays in `ns`.
    pub fn reserve_in(ns: &NetNs) -> Reserved {
        ns.run(|| Self::reserve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))))
    }

    /// Starts accepting on `reserved`; returns its address.
    pub fn serve(&self, reserved: Reserved) -> SocketAddr {
        let addr = reserved.addr;
        self.served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((addr, reserved.netns.clone()));
        if !*self.shared.down.borrow() {
            self.accept(reserved);
        }
        addr
    }

    /// Listens on `reserved` and runs its accept loop until the server goes down.
    fn accept(&self, reserved: Reserved) {
        let Reserved { socket, addr, .. } = reserved;
        // Registering with the reactor needs the runtime's context.
        let listener: TcpListener = {
            let _guard = self.runtime().enter();
            socket
                .listen(128)
                .unwrap_or_else(|e| panic!("listen on {addr}: {e}"))
        };
        let open = Open::count(&self.shared);
        let shared = self.shared.clone();
        self.runtime().spawn(async move {
            // Declared after the guard so it closes before the guard counts it closed.
            let _open = open;
            let listener = listener;
            let mut down = shared.down.subscribe();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    // Dropping the listener: connections are refused from now on.
                    _ = down.wait_for(|down| *down) => return,
                };
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                let open = Open::count(&shared);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _open = open;
                    let mut down = shared.down.subscribe();
                    let service = service_fn(|request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, &request)) }
                    });
                    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    // A client going away mid-watch is an error here and nothing to report;
                    // going down closes the connection, kept-alive ones too.
                    tokio::select! {
                        _ = connection => {}
                        _ = down.wait_for(|down| *down) => {}
                    }
                });
            }
        });
    }

    /// Serves on `addr` in the calling thread's namespace (port 0: any free port).
    pub fn listen(&self, addr: SocketAddr) -> SocketAddr {
        self.serve(Self::reserve(addr))
    }

    /// Serves on `127.0.0.1:PORT` inside `ns`, for agents running there.
    pub fn listen_in(&self, ns: &NetNs) -> SocketAddr {
        self.serve(Self::reserve_in(ns))
    }

    /// Creates or replaces `object` (its `kind` picks the resource; a namespaced one
    /// without a namespace goes to `default`) under a new resourceVersion, and sends
    /// ADDED or MODIFIED to the watches it matches. Returns the object as stored.
    pub fn apply(&self, mut object: Value) -> Value {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let resource = Resource::from_kind(&kind).unwrap_or_else(|| panic!("cannot store kind {kind:?}"));
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{kind} without metadata.name"))
            .to_string();
        let namespace = if resource.namespaced() {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            object["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        object["apiVersion"] = json!(resource.api_version());
        let key = (resource, namespace, name);
        let mut state = self.shared.lock();
        let before = state.objects.get(&key).cloned();
        let rv = state.rv + 1;
        let metadata = &mut object["metadata"];
        // A replacement keeps the identity the first create gave it.
        let (uid, created) = match &before {
            Some(old) => (
                old["metadata"]["uid"].clone(),
                old["metadata"]["creationTimestamp"].clone(),
            ),
            None => (json!(uid(rv)), json!(now())),
        };
        metadata["uid"] = uid;
        metadata["creationTimestamp"] = created;
        metadata["resourceVersion"] = json!(rv.to_string());
        state.objects.insert(key.clone(), object.clone());
        record(&mut state, key, before, Some(object.clone()));
        object
    }

    /// Applies every document of a multi-document YAML text.
    pub fn apply_yaml(&self, yaml: &str) {
        for object in objects(yaml) {
            self.apply(object);
        }
    }

    /// Deletes `kind` `namespace`/`name` (namespace ignored for nodes), sending DELETED
    /// to the watches it matched; false when there was no such object.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let resource = Resource::from_kind(kind).unwrap_or_else(|| panic!("no kind {kind:?}"));
        let namespace = if resource.namespaced() { namespace } else { "" };
        let key = (resource, namespace.to_string(), name.to_string());
        let mut state = self.shared.lock();
        let Some(before) = state.objects.remove(&key) else {
            return false;
        };
        record(&mut state, key, Some(before), None);
        true
    }

    /// The current resourceVersion (the last one handed out).
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Sends a BOOKMARK at the current resourceVersion to every open watch that asked
    /// for bookmarks.
    pub fn bookmark(&self) {
        let state = self.shared.lock();
        for watch in state.watches.iter().filter(|w| w.bookmarks) {
            let _ = watch.tx.send(Message::Bookmark(state.rv));
        }
    }

    /// Ends every open watch cleanly after what was sent to it (the chunked body's
    /// terminator), as the server does at a watch's `timeoutSeconds`.
    pub fn close_watches(&self) {
        let mut state = self.shared.lock();
        for watch in state.watches.drain(..) {
            let _ = watch.tx.send(Message::Close);
        }
        self.shared.changed.notify_all();
    }

    /// Cuts every open watch mid-stream (the connection ends without the chunked body's
    /// terminator), as a restarted API server or a dropped connection would; events
    /// still in flight may be lost, as they would be.
    pub fn drop_watches(&self) {
        let mut state = self.shared.lock();
        state.watches.clear();
        self.shared.changed.notify_all();
    }

    /// Compacts the history: a watch from any version handed out so far, or a
    /// continue token from before now, is answered 410 Expired. The counter moves on
    /// (as etcd's revision does with other writes), so a fresh LIST gives a version
    /// that can be watched from.
    pub fn expire_history(&self) {
        let mut state = self.shared.lock();
        state.expired_through = state.rv;
        state.rv += 1;
        state.history.clear();
    }

    /// Makes `verb` (`list`, `watch`, `get`) on `resource` (`services`, `endpointslices`,
    /// `nodes`) answer 403 Forbidden.
    pub fn deny(&self, resource: &str, verb: &str) {
        let resource = Resource::from_plural(resource).unwrap_or_else(|| panic!("no resource {resource:?}"));
        self.shared.lock().denied.insert((resource, verb.to_string()));
    }

    /// Undoes [`deny`](Self::deny).
    pub fn allow(&self, resource: &str, verb: &str) {
        let resource = Resource::from_plural(resource).unwrap_or_else(|| panic!("no resource {resource:?}"));
        self.shared.lock().denied.remove(&(resource, verb.to_string()));
    }

    /// Takes the server down (true) or up (false). Down is what a client sees of a
    /// stopped kube-apiserver: every listener closed (connections refused), every open
    /// connection and watch cut. Up binds the same addresses again in their namespaces.
    /// (Not 503: kube 5's client retries 503 itself, up to 15 times with backoff.)
    pub fn set_unavailable(&self, unavailable: bool) {
        {
            let mut state = self.shared.lock();
            state.unavailable = unavailable;
            if unavailable {
                state.watches.clear();
            }
        }
        self.shared.down.send_replace(unavailable);
        if unavailable {
            // Refused and cut from the moment this returns: wait for every socket to close.
            let closed = self.wait_until(Duration::from_secs(10), |state| state.open_sockets == 0);
            assert!(closed, "the listeners and connections did not close");
        } else {
            let served = self
                .served
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            for (addr, netns) in served {
                self.accept(Self::rebind(addr, &netns));
            }
        }
    }

    /// Every request so far, in order, as `METHOD path?query` (the query as sent).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Waits up to `timeout` for a request matching `predicate` (among all so far),
    /// and returns it.
    pub fn wait_for_request(&self, predicate: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let mut found = None;
        self.wait_until(timeout, |state| {
            found = state.requests.iter().find(|r| predicate(r)).cloned();
            found.is_some()
        });
        found
    }

    /// Waits up to `timeout` until `predicate` holds for the request log; false if it
    /// never did.
    pub fn wait_for_requests(&self, predicate: impl Fn(&[String]) -> bool, timeout: Duration) -> bool {
        self.wait_until(timeout, |state| predicate(&state.requests))
    }

    /// How many watch streams are open now.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().watches.len()
    }

    /// Waits up to `timeout` until exactly `count` watch streams are open.
    pub fn wait_for_open_watches(&self, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |state| state.watches.len() == count)
    }

    fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if done(&state) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        // Also safe when dropped inside a test's own async runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Counts a listener or connection open until its task ends (also when the runtime
/// shuts down).
struct Open(Arc<Shared>);

impl Open {
    fn count(shared: &Arc<Shared>) -> Open {
        shared.lock().open_sockets += 1;
        Open(shared.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.lock().open_sockets -= 1;
        self.0.changed.notify_all();
    }
}

/// Writes `dir/kubeconfig` naming `http://ADDR` as the cluster, with [`TOKEN`] as the
/// user's bearer token, and returns its path.
pub fn kubeconfig(addr: SocketAddr, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kproxy-test
  cluster:
    server: http://{addr}
users:
- name: kproxy
  user:
    token: {TOKEN}
contexts:
- name: kproxy-test
  context:
    cluster: kproxy-test
    user: kproxy
current-context: kproxy-test
"
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// The objects of a multi-document YAML text (the [`manifests`](crate::manifests)
/// builders' output), to change before [`FakeApiServer::apply`] where a test needs
/// what the builders do not write (labels, `clusterIP: None`).
pub fn objects(yaml: &str) -> Vec<Value> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("YAML ({e}):\n{yaml}"));
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

/// `object` with `labels` added to its metadata.
pub fn with_labels(mut object: Value, labels: &[(&str, &str)]) -> Value {
    for (key, value) in labels {
        object["metadata"]["labels"][*key] = json!(value);
    }
    object
}

/// A Node object named `name` with `internal_ip` and, if any, the zone label.
pub fn node_json(name: &str, internal_ip: Ipv4Addr, zone: Option<&str>) -> Value {
    let mut labels = json!({"kubernetes.io/hostname": name});
    if let Some(zone) = zone {
        labels["topology.kubernetes.io/zone"] = json!(zone);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": [
            {"type": "InternalIP", "address": internal_ip.to_string()},
            {"type": "Hostname", "address": name},
        ]},
    })
}

/// Stores a write in the history and sends it to the watches of its resource.
fn record(state: &mut State, key: Key, before: Option<Value>, after: Option<Value>) {
    state.rv += 1;
    let change = Arc::new(Change {
        rv: state.rv,
        key,
        before,
        after,
    });
    state.history.push(change.clone());
    // A watch whose stream is gone is forgotten here too.
    state
        .watches
        .retain(|w| w.resource != change.key.0 || w.tx.send(Message::Change(change.clone())).is_ok());
}

fn uid(rv: u64) -> String {
    format!("{:08x}-0000-4000-8000-{rv:012x}", std::process::id())
}

/// RFC 3339 in whole seconds, as `metav1.Time` is written.
fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    jiff::Timestamp::from_second(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

// ---- requests ----

/// What a request's path names.
struct Target {
    resource: Resource,
    /// The namespace of a namespaced path (`/namespaces/NS/...`).
    namespace: Option<String>,
    /// A single object (`.../NAME`).
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let resource_path = |prefix: &str| path.strip_prefix(prefix)?.strip_prefix('/');
    let (rest, group_prefix) = resource_path("/api/v1")
        .map(|r| (r, "/api/v1"))
        .or_else(|| resource_path("/apis/discovery.k8s.io/v1").map(|r| (r, "/apis/discovery.k8s.io/v1")))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (namespace, parts) = match parts.as_slice() {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        all => (None, all),
    };
    let (plural, name) = match parts {
        [plural] => (*plural, None),
        [plural, name] => (*plural, Some(name.to_string())),
        _ => return None,
    };
    let resource = Resource::from_plural(plural)?;
    let fits = resource.prefix() == group_prefix && (resource.namespaced() || namespace.is_none());
    fits.then_some(Target {
        resource,
        namespace,
        name,
    })
}

/// The query's parameters, percent-decoded (`+` is a space, as form encoding has it).
fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(shared: &Arc<Shared>, request: &Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let mut state = shared.lock();
    state
        .requests
        .push(format!("{} {}", request.method(), request.uri()));
    shared.changed.notify_all();
    if state.unavailable {
        // Only in the moment the connections are being cut.
        return status_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        );
    }
    let authorized = request
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    if !authorized {
        return status_response(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-kproxy-test", "platform": "linux/amd64"}),
        );
    }
    let Some(target) = parse_path(&path) else {
        return status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    if request.method() != hyper::Method::GET {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!(
                "the server does not allow this method on the requested resource ({})",
                request.method()
            ),
        );
    }
    let params = parse_query(&query);
    let watch = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (&target.name, watch) {
        (_, true) => "watch",
        (Some(_), false) => "get",
        (None, false) => "list",
    };
    if state.denied.contains(&(target.resource, verb.to_string())) {
        return forbidden(&target, verb);
    }
    let filter = match Filter::new(&target, &params) {
        Ok(filter) => filter,
        Err(message) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    match (verb, &target.name) {
        ("get", Some(name)) => get(&state, &target, name),
        ("watch", _) => watch_response(shared, &mut state, filter, &params),
        _ => list(&state, &filter, &params),
    }
}

fn forbidden(target: &Target, verb: &str) -> Response<Body> {
    let resource = target.resource.plural();
    let group = target.resource.group();
    let scope = match &target.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let named = target
        .name
        .as_ref()
        .map(|n| format!(" {n:?}"))
        .unwrap_or_default();
    let message = format!(
        "{resource}{named} is forbidden: User \"{USER}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
    );
    let mut body = status_body(403, "Forbidden", &message);
    body["details"] = json!({"kind": resource});
    if let Some(name) = &target.name {
        body["details"]["name"] = json!(name);
    }
    if !group.is_empty() {
        body["details"]["group"] = json!(group);
    }
    json_response(StatusCode::FORBIDDEN, &body)
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn status_response(status: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(status, &status_body(status.as_u16(), reason, message))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("a valid response")
}

fn get(state: &State, target: &Target, name: &str) -> Response<Body> {
    let key = (
        target.resource,
        target.namespace.clone().unwrap_or_default(),
        name.to_string(),
    );
    if let Some(object) = state.objects.get(&key) {
        return json_response(StatusCode::OK, object);
    }
    let plural = target.resource.plural();
    let mut body = status_body(404, "NotFound", &format!("{plural} {name:?} not found"));
    body["details"] = json!({"name": name, "kind": plural});
    json_response(StatusCode::NOT_FOUND, &body)
}

// ---- selectors ----

/// Which objects a request sees: resource, namespace, label and field selectors.
struct Filter {
    resource: Resource,
    namespace: Option<String>,
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

/// One comma-separated term of a selector.
#[derive(Debug, PartialEq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
}

impl Requirement {
    fn holds(&self, value_of: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Requirement::Exists(k) => value_of(k).is_some(),
            Requirement::NotExists(k) => value_of(k).is_none(),
            Requirement::Equals(k, v) => value_of(k).as_deref() == Some(v),
            // As in Kubernetes: a missing label is "not equal".
            Requirement::NotEquals(k, v) => value_of(k).as_deref() != Some(v),
        }
    }
}

/// Parses an equality-based selector (`k`, `!k`, `k=v`, `k==v`, `k!=v`, ANDed by
/// commas); set-based terms (`in`, `notin`) are not supported and are an error.
fn parse_selector(text: &str) -> Result<Vec<Requirement>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|term| {
            if term.contains('(') {
                return Err(format!("unsupported set-based selector term {term:?}"));
            }
            let requirement = if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = term.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(term.into())
            };
            Ok(requirement)
        })
        .collect()
}

impl Filter {
    fn new(target: &Target, params: &BTreeMap<String, String>) -> Result<Filter, String> {
        let labels = parse_selector(params.get("labelSelector").map_or("", String::as_str))?;
        let fields = parse_selector(params.get("fieldSelector").map_or("", String::as_str))?;
        for field in &fields {
            let (Requirement::Equals(k, _) | Requirement::NotEquals(k, _)) = field else {
                return Err(format!(
                    "invalid field selector term {field:?}: needs an operator"
                ));
            };
            if k != "metadata.name" && k != "metadata.namespace" {
                return Err(format!("field label not supported: {k}"));
            }
        }
        Ok(Filter {
            resource: target.resource,
            namespace: target.namespace.clone(),
            labels,
            fields,
        })
    }

    fn matches(&self, key: &Key, object: &Value) -> bool {
        if key.0 != self.resource || self.namespace.as_ref().is_some_and(|ns| *ns != key.1) {
            return false;
        }
        let labels = &object["metadata"]["labels"];
        let label = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_string);
        let field = |k: &str| match k {
            "metadata.name" => Some(key.2.clone()),
            "metadata.namespace" => Some(key.1.clone()),
            _ => None,
        };
        self.labels.iter().all(|r| r.holds(label)) && self.fields.iter().all(|r| r.holds(field))
    }

    /// The event `change` is for this watch, as the watch cache decides it: by whether
    /// the object matched before and matches after.
    fn event(&self, change: &Change) -> Option<Value> {
        let matched = |o: &Option<Value>| o.as_ref().is_some_and(|o| self.matches(&change.key, o));
        let (kind, object) = match (matched(&change.before), matched(&change.after)) {
            (false, true) => ("ADDED", change.after.clone()?),
            (true, true) => ("MODIFIED", change.after.clone()?),
            (true, false) => {
                // The last state it had, at the version of the change that removed it.
                let mut last = change.before.clone()?;
                last["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                ("DELETED", last)
            }
            (false, false) => return None,
        };
        Some(json!({"type": kind, "object": with_type(self.resource, object)}))
    }
}

fn with_type(resource: Resource, mut object: Value) -> Value {
    object["kind"] = json!(resource.kind());
    object["apiVersion"] = json!(resource.api_version());
    object
}

// ---- list ----

/// The state of the resource's objects at `rv`, undoing the retained history after
/// it; None when part of that history is expired.
fn snapshot_at(state: &State, resource: Resource, rv: u64) -> Option<BTreeMap<Key, Value>> {
    if rv < state.expired_through {
        return None;
    }
    let mut objects: BTreeMap<Key, Value> = state
        .objects
        .iter()
        .filter(|(k, _)| k.0 == resource)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for change in state.history.iter().rev().take_while(|c| c.rv > rv) {
        if change.key.0 != resource {
            continue;
        }
        match &change.before {
            Some(before) => objects.insert(change.key.clone(), before.clone()),
            None => objects.remove(&change.key),
        };
    }
    Some(objects)
}

/// The continue token: opaque to clients (base-16 JSON here, base64 JSON in the real
/// server), naming the list's version and the last key returned.
fn encode_continue(rv: u64, last: &Key) -> String {
    let text = json!({"rv": rv, "ns": last.1, "name": last.2}).to_string();
    text.bytes().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn decode_continue(token: &str) -> Option<(u64, String, String)> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let value: Value = serde_json::from_slice(&bytes?).ok()?;
    Some((
        value["rv"].as_u64()?,
        value["ns"].as_str()?.to_string(),
        value["name"].as_str()?.to_string(),
    ))
}

fn list(state: &State, filter: &Filter, params: &BTreeMap<String, String>) -> Response<Body> {
    let resource = filter.resource;
    let (rv, after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match decode_continue(token) {
            Some((rv, ns, name)) => (rv, Some((resource, ns, name))),
            None => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "continue key is not valid: incorrect encoded start resourceVersion",
                );
            }
        },
        None => (state.rv, None),
    };
    let Some(objects) = snapshot_at(state, resource, rv) else {
        return status_response(
            StatusCode::GONE,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
        );
    };
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0)
        .unwrap_or(usize::MAX);
    let matching: Vec<(&Key, &Value)> = objects
        .iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
        .filter(|(k, v)| filter.matches(k, v))
        .collect();
    let page = &matching[..matching.len().min(limit)];
    // List items carry no kind/apiVersion: the list's own say what they are.
    let items: Vec<Value> = page
        .iter()
        .map(|(_, v)| {
            let mut item = (*v).clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("kind");
                map.remove("apiVersion");
            }
            item
        })
        .collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if matching.len() > page.len()
        && let Some((last, _)) = page.last()
    {
        metadata["continue"] = json!(encode_continue(rv, last));
        metadata["remainingItemCount"] = json!(matching.len() - page.len());
    }
    json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", resource.kind()),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

// ---- watch ----

fn line(event: &Value) -> Bytes {
    let mut text = event.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn watch_response(
    shared: &Arc<Shared>,
    state: &mut State,
    filter: Filter,
    params: &BTreeMap<String, String>,
) -> Response<Body> {
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let requested = params.get("resourceVersion").map_or("", String::as_str);
    let mut pending = VecDeque::new();
    if requested.is_empty() || requested == "0" {
        // "Any" or "most recent": the current objects first, as synthetic ADDED events.
        for (_, object) in state.objects.iter().filter(|(k, v)| filter.matches(k, v)) {
            pending.push_back(line(
                &json!({"type": "ADDED", "object": with_type(filter.resource, object.clone())}),
            ));
        }
        if bookmarks && params.get("sendInitialEvents").is_some_and(|s| s == "true") {
            pending.push_back(line(&bookmark_event(
                filter.resource,
                state.rv,
                Some(json!({"k8s.io/initial-events-end": "true"})),
            )));
        }
    } else {
        let Ok(from) = requested.parse::<u64>() else {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("invalid resource version: {requested}"),
            );
        };
        if from <= state.expired_through {
            // The watch cache answers this inside the stream, not as an HTTP status.
            let message = format!("too old resource version: {from} ({})", state.expired_through + 1);
            let event = json!({"type": "ERROR", "object": status_body(410, "Expired", &message)});
            return Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(line(&event)).map_err(|never| match never {}).boxed())
                .expect("a valid response");
        }
        for change in state
            .history
            .iter()
            .filter(|c| c.rv > from && c.key.0 == filter.resource)
        {
            if let Some(event) = filter.event(change) {
                pending.push_back(line(&event));
            }
        }
    }
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|&t| t > 0);
    let (tx, rx) = mpsc::unbounded_channel();
    state.next_watch += 1;
    let id = state.next_watch;
    state.watches.push(Subscription {
        id,
        resource: filter.resource,
        bookmarks,
        tx,
    });
    shared.changed.notify_all();
    let body = WatchBody {
        shared: shared.clone(),
        id,
        rx,
        filter,
        pending,
        deadline: timeout.map(|t| Box::pin(tokio::time::sleep(Duration::from_secs(t)))),
    };
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(body.boxed())
        .expect("a valid response")
}

fn bookmark_event(resource: Resource, rv: u64, annotations: Option<Value>) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(annotations) = annotations {
        metadata["annotations"] = annotations;
    }
    json!({"type": "BOOKMARK", "object": {
        "kind": resource.kind(),
        "apiVersion": resource.api_version(),
        "metadata": metadata,
    }})
}

/// An open watch's body: its backlog, then each change as it is recorded; ends
/// cleanly at `timeoutSeconds`, abruptly (an error, so hyper cuts the connection) when
/// the server forgets the subscription.
struct WatchBody {
    shared: Arc<Shared>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Message>,
    filter: Filter,
    pending: VecDeque<Bytes>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl hyper::body::Body for WatchBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if let Some(deadline) = &mut this.deadline
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Message::Change(change))) => {
                    if let Some(event) = this.filter.event(&change) {
                        this.pending.push_back(line(&event));
                    }
                }
                Poll::Ready(Some(Message::Bookmark(rv))) => {
                    this.pending
                        .push_back(line(&bookmark_event(this.filter.resource, rv, None)));
                }
                Poll::Ready(Some(Message::Close)) => return Poll::Ready(None),
                Poll::Ready(None) => return Poll::Ready(Some(Err("watch dropped by the test".into()))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for WatchBody {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.watches.retain(|w| w.id != self.id);
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_as_kubernetes_spells_them() {
        use Requirement::*;
        let parsed = parse_selector("a, !b,c=1,d==2,e!=3").unwrap();
        assert_eq!(
            parsed,
            [
                Exists("a".into()),
                NotExists("b".into()),
                Equals("c".into(), "1".into()),
                Equals("d".into(), "2".into()),
                NotEquals("e".into(), "3".into()),
            ]
        );
        assert!(parse_selector("env in (a,b)").is_err());
        assert!(parse_selector("").unwrap().is_empty());
    }

    #[test]
    fn not_equals_matches_a_missing_label() {
        let target = Target {
            resource: Resource::Services,
            namespace: None,
            name: None,
        };
        let params = parse_query("labelSelector=tier%21%3Dweb");
        let filter = Filter::new(&target, &params).unwrap();
        let key = (Resource::Services, "default".to_string(), "a".to_string());
        assert!(filter.matches(&key, &json!({"metadata": {}})));
        assert!(filter.matches(&key, &json!({"metadata": {"labels": {"tier": "db"}}})));
        assert!(!filter.matches(&key, &json!({"metadata": {"labels": {"tier": "web"}}})));
    }

    #[test]
    fn paths_name_resource_namespace_and_object() {
        let t = parse_path("/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices").unwrap();
        assert_eq!(
            (t.resource, t.namespace.as_deref(), t.name),
            (Resource::EndpointSlices, Some("kube-system"), None)
        );
        let t = parse_path("/api/v1/nodes/host1").unwrap();
        assert_eq!((t.resource, t.name.as_deref()), (Resource::Nodes, Some("host1")));
        // Wrong group, or a namespaced path for a cluster-scoped resource.
        assert!(parse_path("/api/v1/endpointslices").is_none());
        assert!(parse_path("/api/v1/namespaces/default/nodes").is_none());
        assert!(parse_path("/api/v1/pods").is_none());
    }

    #[test]
    fn the_manifest_builders_output_reads_as_objects() {
        let pods = [Ipv4Addr::new(172, 16, 0, 10)];
        let yaml = crate::manifests::Service::hello_app(&pods).yaml();
        let objects = objects(&yaml);
        let kinds: Vec<_> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Service", "EndpointSlice"]);
        let labelled = with_labels(objects[0].clone(), &[("service.kubernetes.io/headless", "")]);
        assert_eq!(
            labelled["metadata"]["labels"]["service.kubernetes.io/headless"],
            ""
        );
        assert_eq!(labelled["metadata"]["name"], "hello-app-service");
    }

    #[test]
    fn continue_tokens_round_trip() {
        let key = (Resource::Services, "default".to_string(), "a b".to_string());
        let token = encode_continue(42, &key);
        assert_eq!(
            decode_continue(&token),
            Some((42, "default".into(), "a b".into()))
        );
        assert_eq!(decode_continue("zz"), None);
    }

    #[test]
    fn percent_decoding_handles_escapes_and_plus() {
        assert_eq!(percent_decode("%21a%2Fb%3Dc+d"), "!a/b=c d");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
