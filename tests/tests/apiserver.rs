//! The fake API server against the real client: kube 5's `Api` and `watcher` (what the
//! agent's reflectors run on) list, page, watch, resume, re-list and fail against it as
//! they would against kube-apiserver, and raw requests see the wire format.
//!
//! No root needed except for `listen_in_serves_inside_a_namespace`.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    pin::pin,
    sync::mpsc::{self, Receiver},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};
use kproxy_testbed::{
    apiserver::{FakeApiServer, TOKEN, kubeconfig, node_json},
    manifests,
    netns::NetNs,
    tempdir::TempDir,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, WatchEvent, WatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::{Value, json};

/// How long any one expected thing may take (the watcher's first backoff is under 1 s).
const WAIT: Duration = Duration::from_secs(5);

/// A server on the root namespace's loopback and a kube client from its kubeconfig.
struct Bed {
    server: FakeApiServer,
    addr: SocketAddr,
    client: Client,
    runtime: tokio::runtime::Runtime,
    _dir: TempDir,
}

impl Bed {
    fn new() -> Bed {
        let server = FakeApiServer::new();
        let addr = server.listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let dir = TempDir::new("api");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(client_from(&kubeconfig(addr, dir.path())));
        Bed {
            server,
            addr,
            client,
            runtime,
            _dir: dir,
        }
    }

    fn services(&self) -> Api<Service> {
        Api::all(self.client.clone())
    }

    /// Runs kube's `watcher` (with its default backoff, as a reflector would) on a
    /// task, its events as text on the returned channel.
    fn watcher<K>(&self, api: Api<K>, config: watcher::Config) -> Receiver<String>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.runtime.spawn(async move {
            let mut stream = pin!(watcher(api, config).default_backoff());
            while let Some(item) = stream.next().await {
                let text = match item {
                    Ok(watcher::Event::Init) => "init".to_string(),
                    Ok(watcher::Event::InitApply(o)) => format!("init-apply {}", o.name_any()),
                    Ok(watcher::Event::InitDone) => "init-done".to_string(),
                    Ok(watcher::Event::Apply(o)) => format!("apply {}", o.name_any()),
                    Ok(watcher::Event::Delete(o)) => format!("delete {}", o.name_any()),
                    Err(e) => format!("error {e}"),
                };
                if tx.send(text).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// A raw watch (kube's `Api::watch`) of services from `rv`: `TYPE name rv`, or
    /// `BOOKMARK rv`, or `ERROR code reason`.
    fn raw_watch(&self, params: WatchParams, rv: &str) -> Receiver<String> {
        let api = self.services();
        let rv = rv.to_string();
        let (tx, rx) = mpsc::channel();
        self.runtime.spawn(async move {
            let stream = match api.watch(&params, &rv).await {
                Ok(stream) => stream,
                Err(e) => {
                    let _ = tx.send(format!("failed {e}"));
                    return;
                }
            };
            let mut stream = pin!(stream);
            while let Some(item) = stream.next().await {
                let text = match item {
                    Ok(WatchEvent::Added(s)) => format!("ADDED {} {}", s.name_any(), rv_of(&s)),
                    Ok(WatchEvent::Modified(s)) => format!("MODIFIED {} {}", s.name_any(), rv_of(&s)),
                    Ok(WatchEvent::Deleted(s)) => format!("DELETED {} {}", s.name_any(), rv_of(&s)),
                    Ok(WatchEvent::Bookmark(b)) => format!("BOOKMARK {}", b.metadata.resource_version),
                    Ok(WatchEvent::Error(e)) => format!("ERROR {} {}", e.code, e.reason),
                    Err(e) => format!("broken {e}"),
                };
                if tx.send(text).is_err() {
                    break;
                }
            }
            let _ = tx.send("end".to_string());
        });
        rx
    }
}

async fn client_from(path: &std::path::Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read the kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .expect("a client config from the kubeconfig");
    Client::try_from(config).expect("a kube client")
}

fn rv_of(object: &impl kube::Resource) -> String {
    object.resource_version().unwrap_or_default()
}

/// The next event within [`WAIT`].
fn next(rx: &Receiver<String>) -> String {
    rx.recv_timeout(WAIT).expect("an event within the wait")
}

/// The next events, skipping errors (the watcher reports each failed attempt), must be
/// `expected`.
fn expect_events(rx: &Receiver<String>, expected: &[&str]) {
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let event = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("waited for {expected:?}, saw {seen:?}"));
        if !event.starts_with("error ") {
            seen.push(event);
        }
    }
    assert_eq!(seen, expected);
}

/// A ClusterIP Service with `labels`, and headless when `cluster_ip` is `None`.
fn service(name: &str, cluster_ip: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
        },
    })
}

/// The value of query parameter `name` in a logged request.
fn param<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    let query = request.split_once('?')?.1;
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

fn count(requests: &[String], predicate: impl Fn(&str) -> bool) -> usize {
    requests.iter().filter(|r| predicate(r)).count()
}

fn is_services_list(request: &&str) -> bool {
    request.starts_with("GET /api/v1/services?") && !request.contains("watch=")
}

fn is_services_watch(request: &&str) -> bool {
    request.starts_with("GET /api/v1/services?") && request.contains("watch=true")
}

/// One request over a fresh connection, as written on the wire: status and body.
fn raw_get(addr: SocketAddr, path: &str, token: bool) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let auth = if token {
        format!("Authorization: Bearer {TOKEN}\r\n")
    } else {
        String::new()
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, body.to_string())
}

#[test]
fn lists_page_one_consistent_snapshot_with_bare_items() {
    let bed = Bed::new();
    for name in ["a", "b", "c"] {
        let pods = [Ipv4Addr::new(172, 16, 0, 10)];
        let model = manifests::Service {
            name: name.into(),
            ..manifests::Service::hello_app(&pods)
        };
        bed.server.apply_yaml(&model.yaml());
    }
    bed.server
        .apply(node_json("host1", Ipv4Addr::new(192, 168, 77, 1), Some("zone-a")));
    let listed_at = bed.server.resource_version().to_string();

    // Paging with limit=1: three pages at the first page's version, even though a
    // fourth service appears between them.
    let api = bed.services();
    let (names, versions) = bed.runtime.block_on(async {
        let mut names = Vec::new();
        let mut versions = Vec::new();
        let mut params = ListParams::default().limit(1);
        loop {
            let page = api.list(&params).await.expect("list a page");
            names.extend(page.items.iter().map(ResourceExt::name_any));
            versions.push(page.metadata.resource_version.clone().unwrap_or_default());
            if names.len() == 1 {
                bed.server.apply(service("d", "10.96.0.4", json!({})));
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break (names, versions),
            }
        }
    });
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(versions, [listed_at.as_str(); 3]);

    // A fresh list sees the fourth; slices and nodes have lists of their own.
    let all = bed.runtime.block_on(async {
        let services = api.list(&ListParams::default()).await.unwrap();
        let slices = Api::<EndpointSlice>::namespaced(bed.client.clone(), "default")
            .list(&ListParams::default())
            .await
            .unwrap();
        let nodes = Api::<Node>::all(bed.client.clone())
            .list(&ListParams::default())
            .await
            .unwrap();
        (services, slices, nodes)
    });
    assert_eq!(all.0.items.len(), 4);
    assert_eq!(
        all.1.items[0]
            .labels()
            .get("kubernetes.io/service-name")
            .map(String::as_str),
        Some("a")
    );
    assert_eq!(all.2.items[0].name_any(), "host1");

    // On the wire: the list's kind and version, items without theirs.
    let (status, body) = raw_get(bed.addr, "/api/v1/services?limit=2", true);
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (list["kind"].as_str(), list["apiVersion"].as_str()),
        (Some("ServiceList"), Some("v1"))
    );
    assert_eq!(list["metadata"]["remainingItemCount"], 2);
    let item = &list["items"][0];
    assert!(
        item.get("kind").is_none() && item.get("apiVersion").is_none(),
        "{item}"
    );
    assert!(item["metadata"]["uid"].is_string() && item["metadata"]["creationTimestamp"].is_string());
}

#[test]
fn watches_stream_changes_in_order_with_their_types() {
    let bed = Bed::new();
    bed.server.apply(service("a", "10.96.0.1", json!({})));
    let from = bed.server.resource_version().to_string();
    let rx = bed.raw_watch(WatchParams::default().timeout(60), &from);
    assert!(bed.server.wait_for_open_watches(1, WAIT));

    let added = bed.server.apply(service("b", "10.96.0.2", json!({})));
    let modified = bed
        .server
        .apply(service("b", "10.96.0.2", json!({"tier": "web"})));
    // A node change moves the version but is no service event.
    bed.server
        .apply(node_json("host1", Ipv4Addr::new(192, 168, 77, 1), None));
    bed.server.delete("Service", "default", "a");
    let deleted_at = bed.server.resource_version();

    let rv = |o: &Value| o["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    assert_eq!(next(&rx), format!("ADDED b {}", rv(&added)));
    assert_eq!(next(&rx), format!("MODIFIED b {}", rv(&modified)));
    // DELETED carries the last state at the version of the delete.
    assert_eq!(next(&rx), format!("DELETED a {deleted_at}"));
    assert_eq!(added["metadata"]["uid"], modified["metadata"]["uid"]);

    // A watch from an older version replays the retained history from there.
    let replay = bed.raw_watch(WatchParams::default(), &from);
    assert_eq!(next(&replay), format!("ADDED b {}", rv(&added)));
}

#[test]
fn label_selectors_filter_lists_and_move_objects_in_and_out_of_watches() {
    let bed = Bed::new();
    // kube-proxy's own selector.
    let selector = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
    bed.server.apply(service("plain", "10.96.0.1", json!({})));
    bed.server.apply(service(
        "other-proxy",
        "10.96.0.2",
        json!({"service.kubernetes.io/service-proxy-name": "other"}),
    ));
    bed.server.apply(service(
        "headless",
        "None",
        json!({"service.kubernetes.io/headless": ""}),
    ));
    let listed = bed
        .runtime
        .block_on(bed.services().list(&ListParams::default().labels(selector)))
        .unwrap();
    let names: Vec<_> = listed.items.iter().map(ResourceExt::name_any).collect();
    assert_eq!(names, ["plain"]);

    let from = listed.metadata.resource_version.unwrap();
    let rx = bed.raw_watch(WatchParams::default().labels(selector), &from);
    assert!(bed.server.wait_for_open_watches(1, WAIT));
    // Labelled for another proxy: leaves the selection (DELETED); unlabelled: back (ADDED).
    bed.server.apply(service(
        "plain",
        "10.96.0.1",
        json!({"service.kubernetes.io/service-proxy-name": "other"}),
    ));
    bed.server.apply(service("other-proxy", "10.96.0.2", json!({})));
    bed.server
        .apply(service("plain", "10.96.0.1", json!({"tier": "web"})));
    let events: Vec<String> = (0..3)
        .map(|_| next(&rx).rsplit_once(' ').unwrap().0.to_string())
        .collect();
    assert_eq!(events, ["DELETED plain", "ADDED other-proxy", "ADDED plain"]);

    // Equality terms and a field selector (the agent watches its own Node by name).
    bed.server
        .apply(node_json("host1", Ipv4Addr::new(192, 168, 77, 1), None));
    bed.server
        .apply(node_json("host2", Ipv4Addr::new(192, 168, 77, 2), None));
    let nodes = Api::<Node>::all(bed.client.clone());
    let (by_field, by_label) = bed.runtime.block_on(async {
        let by_field = nodes
            .list(&ListParams::default().fields("metadata.name=host2"))
            .await
            .unwrap();
        let by_label = nodes
            .list(&ListParams::default().labels("kubernetes.io/hostname!=host2"))
            .await
            .unwrap();
        (by_field, by_label)
    });
    assert_eq!(
        by_field
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        ["host2"]
    );
    assert_eq!(
        by_label
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        ["host1"]
    );
}

#[test]
fn bookmarks_reach_watches_and_move_where_a_watcher_resumes() {
    let bed = Bed::new();
    bed.server.apply(service("a", "10.96.0.1", json!({})));
    let rx = bed.raw_watch(WatchParams::default(), "0");
    // From version 0: the current objects first, as ADDED.
    assert!(next(&rx).starts_with("ADDED a "));
    assert!(bed.server.wait_for_open_watches(1, WAIT));
    bed.server.bookmark();
    assert_eq!(next(&rx), format!("BOOKMARK {}", bed.server.resource_version()));

    // kube's watcher asks for bookmarks and resumes from the last one it saw.
    let bed = Bed::new();
    bed.server.apply(service("a", "10.96.0.1", json!({})));
    let events = bed.watcher(bed.services(), watcher::Config::default());
    expect_events(&events, &["init", "init-apply a", "init-done"]);
    assert!(bed.server.wait_for_open_watches(1, WAIT));
    let watch = bed
        .server
        .requests()
        .into_iter()
        .find(|r| is_services_watch(&r.as_str()))
        .unwrap();
    assert!(watch.contains("allowWatchBookmarks=true"), "{watch}");
    // Other resources move the version; a bookmark tells the watcher so.
    bed.server
        .apply(node_json("host1", Ipv4Addr::new(192, 168, 77, 1), None));
    let marked = bed.server.resource_version();
    bed.server.bookmark();
    // Cleanly, so the bookmark is delivered before the stream ends.
    bed.server.close_watches();
    let marked = marked.to_string();
    let resumed = bed.server.wait_for_request(
        |r| is_services_watch(&r) && param(r, "resourceVersion") == Some(&marked),
        WAIT,
    );
    assert!(
        resumed.is_some(),
        "no watch resumed at the bookmark's {marked}: {:#?}",
        bed.server.requests()
    );
}

#[test]
fn a_dropped_watch_resumes_from_the_last_version_without_a_list() {
    let bed = Bed::new();
    bed.server.apply(service("a", "10.96.0.1", json!({})));
    let events = bed.watcher(bed.services(), watcher::Config::default());
    expect_events(&events, &["init", "init-apply a", "init-done"]);
    assert!(bed.server.wait_for_open_watches(1, WAIT));
    let b = bed.server.apply(service("b", "10.96.0.2", json!({})));
    expect_events(&events, &["apply b"]);

    bed.server.drop_watches();
    // Changed while no watch is open: the resumed watch replays it.
    bed.server.delete("Service", "default", "a");
    let last = b["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    assert!(
        bed.server
            .wait_for_requests(|r| count(r, |r| is_services_watch(&r)) == 2, WAIT),
        "no second watch: {:#?}",
        bed.server.requests()
    );
    expect_events(&events, &["delete a"]);
    let requests = bed.server.requests();
    let watches: Vec<_> = requests
        .iter()
        .filter(|r| is_services_watch(&r.as_str()))
        .collect();
    assert_eq!(
        param(watches[1], "resourceVersion"),
        Some(last.as_str()),
        "{watches:#?}"
    );
    assert_eq!(count(&requests, |r| is_services_list(&r)), 1, "{requests:#?}");
}

#[test]
fn an_expired_version_is_410_in_the_stream_and_the_watcher_lists_again() {
    let bed = Bed::new();
    bed.server.apply(service("a", "10.96.0.1", json!({})));
    let old = bed.server.resource_version();
    bed.server.expire_history();

    // On the wire, as the watch cache answers it: 200, then one ERROR event.
    let (status, body) = raw_get(
        bed.addr,
        &format!("/api/v1/services?watch=true&resourceVersion={old}"),
        true,
    );
    assert_eq!(status, 200, "{body}");
    let event: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(event["type"], "ERROR");
    assert_eq!(
        (
            event["object"]["code"].as_u64(),
            event["object"]["reason"].as_str()
        ),
        (Some(410), Some("Expired"))
    );
    assert!(
        event["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version")
    );

    // kube's watcher: down while things change, history gone, back up → 410 → list.
    let events = bed.watcher(bed.services(), watcher::Config::default());
    expect_events(&events, &["init", "init-apply a", "init-done"]);
    assert!(bed.server.wait_for_open_watches(1, WAIT));
    bed.server.set_unavailable(true);
    bed.server.delete("Service", "default", "a");
    bed.server.apply(service("b", "10.96.0.2", json!({})));
    bed.server.expire_history();
    bed.server.set_unavailable(false);
    expect_events(&events, &["init", "init-apply b", "init-done"]);
    let requests = bed.server.requests();
    assert_eq!(count(&requests, |r| is_services_list(&r)), 2, "{requests:#?}");

    // A continue token from before the expiry is 410 as an HTTP status (a list).
    bed.server.apply(service("c", "10.96.0.3", json!({})));
    let (_, body) = raw_get(bed.addr, "/api/v1/services?limit=1", true);
    let page: Value = serde_json::from_str(&body).unwrap();
    bed.server.apply(service("d", "10.96.0.4", json!({})));
    bed.server.expire_history();
    let token = page["metadata"]["continue"].as_str().expect("a continue token");
    let (status, body) = raw_get(
        bed.addr,
        &format!("/api/v1/services?limit=1&continue={token}"),
        true,
    );
    assert_eq!(status, 410, "{body}");
}

#[test]
fn a_denied_verb_is_403_naming_resource_and_verb() {
    let bed = Bed::new();
    bed.server.deny("services", "list");
    let error = bed
        .runtime
        .block_on(bed.services().list(&ListParams::default()))
        .unwrap_err();
    let kube::Error::Api(status) = error else {
        panic!("not an API error: {error}");
    };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "services is forbidden: User \"system:serviceaccount:kube-system:kproxy\" cannot list resource \"services\" in API group \"\" at the cluster scope"
    );

    bed.server.allow("services", "list");
    bed.server.deny("endpointslices", "watch");
    let slices = Api::<EndpointSlice>::namespaced(bed.client.clone(), "kube-system");
    let events = bed.watcher(slices, watcher::Config::default());
    expect_events(&events, &["init", "init-done"]);
    let error = next(&events);
    assert!(
        error.contains("cannot watch resource \"endpointslices\" in API group \"discovery.k8s.io\" in the namespace \"kube-system\""),
        "{error}"
    );
}

#[test]
fn an_unavailable_server_refuses_then_the_watcher_catches_up() {
    let bed = Bed::new();
    bed.server.apply(service("a", "10.96.0.1", json!({})));
    let events = bed.watcher(bed.services(), watcher::Config::default());
    expect_events(&events, &["init", "init-apply a", "init-done"]);
    assert!(bed.server.wait_for_open_watches(1, WAIT));

    bed.server.set_unavailable(true);
    assert_eq!(bed.server.open_watches(), 0);
    let refused = TcpStream::connect(bed.addr).expect_err("down: nothing listens");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let error = bed
        .runtime
        .block_on(bed.services().list(&ListParams::default()))
        .unwrap_err();
    assert!(
        !matches!(error, kube::Error::Api(_)),
        "not a connection error: {error}"
    );
    // The watcher reports its failed attempt, and the change waits for it.
    assert!(next(&events).starts_with("error "));
    bed.server.apply(service("b", "10.96.0.2", json!({})));
    bed.server.set_unavailable(false);
    expect_events(&events, &["apply b"]);
    let requests = bed.server.requests();
    assert_eq!(count(&requests, |r| is_services_list(&r)), 1, "{requests:#?}");
}

#[test]
fn a_reserved_port_refuses_connections_until_served() {
    let server = FakeApiServer::new();
    let reserved = FakeApiServer::reserve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let addr = reserved.addr();
    let error = TcpStream::connect(addr).expect_err("nothing listens yet");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);

    let dir = TempDir::new("api");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(client_from(&kubeconfig(addr, dir.path())));
    let api = Api::<Service>::all(client);
    assert!(runtime.block_on(api.list(&ListParams::default())).is_err());
    // Listening starts before serve returns.
    assert_eq!(server.serve(reserved), addr);
    let listed = runtime
        .block_on(api.list(&ListParams::default()))
        .expect("served now");
    assert!(listed.items.is_empty());
}

#[test]
fn raw_requests_see_auth_and_unknown_paths_as_the_api_server_answers() {
    let bed = Bed::new();
    let (status, body) = raw_get(bed.addr, "/api/v1/services", false);
    assert_eq!(status, 401, "{body}");
    let (status, body) = raw_get(bed.addr, "/api/v1/pods", true);
    assert_eq!(status, 404, "{body}");
    let status_object: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status_object["kind"].as_str(), status_object["reason"].as_str()),
        (Some("Status"), Some("NotFound"))
    );
    let (status, body) = raw_get(bed.addr, "/api/v1/services?labelSelector=env+in+(a,b)", true);
    assert_eq!(status, 400, "{body}");
    bed.server
        .apply(node_json("host1", Ipv4Addr::new(192, 168, 77, 1), Some("zone-a")));
    let node = bed
        .runtime
        .block_on(Api::<Node>::all(bed.client.clone()).get("host1"))
        .unwrap();
    assert_eq!(node.labels()["topology.kubernetes.io/zone"], "zone-a");
}

/// Needs root: a namespace of its own.
#[test]
fn listen_in_serves_inside_a_namespace() {
    let ns = NetNs::new("api");
    let server = FakeApiServer::new();
    let addr = server.listen_in(&ns);
    server.apply(node_json("host1", Ipv4Addr::new(192, 168, 77, 1), None));
    let (status, body) = ns.run(|| raw_get(addr, "/api/v1/nodes", true));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"host1\""), "{body}");
    // Down and up again: the listener comes back in the namespace, on the same port.
    server.set_unavailable(true);
    let refused = ns.run(|| TcpStream::connect(addr).expect_err("down"));
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    server.set_unavailable(false);
    let (status, body) = ns.run(|| raw_get(addr, "/api/v1/nodes/host1", true));
    assert_eq!(status, 200, "{body}");
}
