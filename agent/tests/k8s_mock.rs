//! Kubernetes mode against a fake API server (kube's `Client` over a `tower_test` mock
//! service; no cluster, no BPF).
//!
//! The fake serves lists and watches of every kind the agent reflects, keeps a change log with
//! resource versions, parks watch requests until something changes (so a watch response holds
//! the events after the requested version, like a real watch that ends), applies Route status
//! patches with list-map merge semantics, accepts Events, and can fail lists or break watches
//! (`410 Gone`) on demand. Every request it sees is recorded, and each test checks that the
//! agent only made requests `veer_agent::k8s::API_ACCESS` (and so the ClusterRole) allows.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;
use veer_agent::config::PodSandbox;
use veer_agent::config::compile::Compiled;
use veer_agent::k8s::apply::{ApplyError, NodeDataplane, PodOutcome};
use veer_agent::k8s::desired::{Desired, RulesetIds, desired_from_stores};
use veer_agent::k8s::status::{field_manager, patch_status};
use veer_agent::k8s::watch::Reflectors;
use veer_agent::k8s::{K8sConfig, allowed, crd::RouteStatus, run_with};

const NODE: &str = "n1";

// ---------------------------------------------------------------------------------------------
// The fake API server.

type Handle = mock::Handle<Request<Body>, Response<Body>>;
type Responder = mock::SendResponse<Response<Body>>;

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: Option<String>,
    body: Value,
}

struct Parked {
    since: u64,
    selector: Option<String>,
    respond: Responder,
}

#[derive(Default)]
struct Kind {
    objects: BTreeMap<String, Value>,
    log: Vec<(u64, &'static str, Value)>,
    parked: Vec<Parked>,
    fail_lists: bool,
    /// The next watch (or the open ones) ends with 410 Gone.
    expire: bool,
}

#[derive(Default)]
struct State {
    rv: u64,
    kinds: BTreeMap<String, Kind>,
    requests: Vec<Recorded>,
    /// Behave like an apiserver with the original CRD installed: status fields other than
    /// `status.status` are pruned.
    prune_status: bool,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<State>>);

/// (group, version, namespace, resource, name, subresource) of an API path.
struct ApiPath {
    group: String,
    namespace: Option<String>,
    resource: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<ApiPath> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _v, rest @ ..] => ("", rest),
        ["apis", g, _v, rest @ ..] => (*g, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, tail @ ..] => (Some(ns.to_string()), [&[*r][..], tail].concat()),
        r => (None, r.to_vec()),
    };
    Some(ApiPath {
        group: group.to_string(),
        namespace,
        resource: rest.first()?.to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn key_of(obj: &Value) -> String {
    let m = &obj["metadata"];
    match m["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", m["name"].as_str().unwrap()),
        None => m["name"].as_str().unwrap().to_string(),
    }
}

/// Whether `obj` matches a field selector like `spec.nodeName=n1`.
fn matches_selector(obj: &Value, selector: Option<&str>) -> bool {
    selector.is_none_or(|sel| {
        sel.split(',').filter(|s| !s.is_empty()).all(|term| {
            let (path, want) = term.split_once('=').unwrap();
            let ptr = format!("/{}", path.replace('.', "/"));
            obj.pointer(&ptr).and_then(Value::as_str) == Some(want)
        })
    })
}

fn response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "code": code, "reason": reason, "message": message})
}

fn gone() -> Response<Body> {
    watch_response(&[(
        "ERROR",
        status_body(410, "Expired", "too old resource version"),
    )])
}

fn watch_response(events: &[(&'static str, Value)]) -> Response<Body> {
    let mut body = Vec::new();
    for (t, o) in events {
        body.extend(serde_json::to_vec(&json!({"type": t, "object": o})).unwrap());
        body.push(b'\n');
    }
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

impl FakeApi {
    /// A client talking to a new fake server (served on the current runtime).
    fn start() -> (Self, Client) {
        let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api = FakeApi::default();
        tokio::spawn(api.clone().serve(handle));
        (api, Client::new(svc, "default"))
    }

    async fn serve(self, mut handle: Handle) {
        while let Some((req, respond)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let rec = Recorded {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: query(&parts.uri),
                content_type: parts
                    .headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string()),
                body,
            };
            self.handle(rec, respond);
        }
    }

    fn handle(&self, rec: Recorded, respond: Responder) {
        let mut st = self.0.lock().unwrap();
        st.requests.push(rec.clone());
        let Some(p) = parse_path(&rec.path) else {
            respond.send_response(response(404, &status_body(404, "NotFound", "no such path")));
            return;
        };
        let rv = st.rv;
        match (rec.method.as_str(), &p.name, &p.sub) {
            ("GET", None, None) => {
                let selector = rec.query.get("fieldSelector").cloned();
                let kind = st.kinds.entry(p.resource.clone()).or_default();
                if rec.query.get("watch").map(String::as_str) == Some("true") {
                    let since: u64 = rec.query["resourceVersion"].parse().unwrap();
                    let parked = Parked {
                        since,
                        selector,
                        respond,
                    };
                    if kind.expire {
                        kind.expire = false;
                        parked.respond.send_response(gone());
                    } else if let Some(p) = kind.try_serve(parked) {
                        kind.parked.push(p);
                    }
                } else if kind.fail_lists {
                    respond.send_response(response(
                        500,
                        &status_body(500, "InternalError", "etcd is away"),
                    ));
                } else {
                    let items: Vec<&Value> = kind
                        .objects
                        .values()
                        .filter(|o| matches_selector(o, selector.as_deref()))
                        .collect();
                    respond.send_response(response(
                        200,
                        &json!({"apiVersion": "v1", "kind": "List",
                                "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
                    ));
                }
            }
            ("PATCH", Some(name), Some(sub)) if sub == "status" => {
                let key = name.clone();
                let Some(mut obj) = st
                    .kinds
                    .get(&p.resource)
                    .and_then(|k| k.objects.get(&key))
                    .cloned()
                else {
                    respond.send_response(response(404, &status_body(404, "NotFound", "gone")));
                    return;
                };
                merge_status(&mut obj["status"], &rec.body["status"]);
                if st.prune_status {
                    obj["status"] = json!({"status": obj["status"]["status"]});
                }
                drop(st);
                let obj = self.put(&p.resource, obj);
                respond.send_response(response(200, &obj));
            }
            ("POST", None, None) if p.resource == "events" => {
                let mut ev = rec.body.clone();
                ev["metadata"]["resourceVersion"] = json!("1");
                respond.send_response(response(201, &ev));
            }
            _ => respond.send_response(response(405, &status_body(405, "MethodNotAllowed", ""))),
        }
    }

    /// Adds or replaces an object (as a watch `ADDED`/`MODIFIED`). Returns it as stored.
    fn put(&self, resource: &str, mut obj: Value) -> Value {
        let mut st = self.0.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&obj);
        let kind = st.kinds.entry(resource.to_string()).or_default();
        let t = if kind.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        kind.objects.insert(key, obj.clone());
        kind.log.push((rv, t, obj.clone()));
        kind.wake();
        obj
    }

    /// Deletes an object (a watch `DELETED`).
    fn delete(&self, resource: &str, key: &str) {
        let mut st = self.0.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let kind = st.kinds.get_mut(resource).unwrap();
        let mut obj = kind.objects.remove(key).unwrap();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        kind.log.push((rv, "DELETED", obj));
        kind.wake();
    }

    /// Ends the open watch of `resource` (or the next one) with `410 Gone`: the client must
    /// relist.
    fn expire_watches(&self, resource: &str) {
        let mut st = self.0.lock().unwrap();
        let kind = st.kinds.entry(resource.to_string()).or_default();
        kind.expire = kind.parked.is_empty();
        for p in kind.parked.drain(..) {
            p.respond.send_response(gone());
        }
    }

    fn fail_lists(&self, resource: &str, fail: bool) {
        self.0
            .lock()
            .unwrap()
            .kinds
            .entry(resource.to_string())
            .or_default()
            .fail_lists = fail;
    }

    fn requests(&self) -> Vec<Recorded> {
        self.0.lock().unwrap().requests.clone()
    }

    fn object(&self, resource: &str, key: &str) -> Option<Value> {
        self.0
            .lock()
            .unwrap()
            .kinds
            .get(resource)
            .and_then(|k| k.objects.get(key).cloned())
    }

    /// Every request so far is allowed by `API_ACCESS`.
    fn assert_requests_allowed(&self) {
        for r in self.requests() {
            let p = parse_path(&r.path).unwrap();
            let resource = match &p.sub {
                Some(s) => format!("{}/{s}", p.resource),
                None => p.resource.clone(),
            };
            let verb = match (r.method.as_str(), &p.name) {
                ("GET", None) if r.query.get("watch").map(String::as_str) == Some("true") => {
                    "watch"
                }
                ("GET", None) => "list",
                ("GET", Some(_)) => "get",
                ("PATCH", _) => "patch",
                ("POST", _) => "create",
                (m, _) => panic!("unexpected method {m}"),
            };
            assert!(
                allowed(&p.group, &resource, verb),
                "{} {} ({verb} {}/{resource}) is not in API_ACCESS",
                r.method,
                r.path,
                p.group
            );
            let _ = &p.namespace;
        }
    }
}

impl Kind {
    /// Serves a parked watch if events after its version exist; gives it back otherwise.
    fn try_serve(&self, p: Parked) -> Option<Parked> {
        let events: Vec<(&'static str, Value)> = self
            .log
            .iter()
            .filter(|(rv, _, o)| *rv > p.since && matches_selector(o, p.selector.as_deref()))
            .map(|(_, t, o)| (*t, o.clone()))
            .collect();
        if events.is_empty() {
            return Some(p);
        }
        p.respond.send_response(watch_response(&events));
        None
    }

    fn wake(&mut self) {
        let parked = std::mem::take(&mut self.parked);
        for p in parked {
            if let Some(p) = self.try_serve(p) {
                self.parked.push(p);
            }
        }
    }
}

/// Server-side apply of a status, as the apiserver does it for this schema: scalars replaced,
/// `conditions` merged by `type`, `nodes` merged by `node`.
fn merge_status(cur: &mut Value, applied: &Value) {
    if !cur.is_object() {
        *cur = json!({});
    }
    for (k, v) in applied.as_object().unwrap() {
        let key = match k.as_str() {
            "conditions" => "type",
            "nodes" => "node",
            _ => {
                cur[k] = v.clone();
                continue;
            }
        };
        let mut list: Vec<Value> = cur[k].as_array().cloned().unwrap_or_default();
        for item in v.as_array().unwrap() {
            match list.iter_mut().find(|x| x[key] == item[key]) {
                Some(x) => *x = item.clone(),
                None => list.push(item.clone()),
            }
        }
        cur[k] = Value::Array(list);
    }
}

// ---------------------------------------------------------------------------------------------
// Objects.

fn demo_route() -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/seed/route-demo.yaml"),
    )
    .unwrap();
    let mut v: Value = serde_saphyr::from_str(&text).unwrap();
    v["metadata"]["generation"] = json!(1);
    v
}

fn route(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route",
           "metadata": {"name": name, "generation": 1}, "spec": spec})
}

fn service(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": spec})
}

fn pod(ns: &str, name: &str, node: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
           "status": {"phase": "Running"}})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

/// The demo's Services, a headless one with endpoints, two pods on this node (one labelled
/// `app: web`) and one elsewhere, and their namespaces.
fn seed_cluster(api: &FakeApi) {
    api.put("routes", demo_route());
    api.put(
        "services",
        service(
            "default",
            "nginx",
            json!({"clusterIP": "10.86.69.17", "clusterIPs": ["10.86.69.17", "fd00:86::17"]}),
        ),
    );
    api.put(
        "services",
        service(
            "kube-system",
            "nginx1",
            json!({"clusterIP": "10.86.205.109"}),
        ),
    );
    api.put(
        "services",
        service(
            "kube-system",
            "nginx2",
            json!({"clusterIP": "None", "clusterIPs": ["None"]}),
        ),
    );
    api.put(
        "endpointslices",
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "nginx2-x", "namespace": "kube-system",
                            "labels": {"kubernetes.io/service-name": "nginx2"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.124.0.9"]}, {"addresses": ["10.124.0.5"]}]}),
    );
    api.put("pods", pod("default", "web-1", NODE, json!({"app": "web"})));
    api.put("pods", pod("default", "db-1", NODE, json!({"app": "db"})));
    api.put("pods", pod("default", "web-2", "n2", json!({"app": "web"})));
    for ns in ["default", "kube-system"] {
        api.put("namespaces", namespace(ns));
    }
    // Kinds with no objects still answer lists.
    for k in ["replicasets", "jobs"] {
        api.0.lock().unwrap().kinds.entry(k.into()).or_default();
    }
}

fn web_route() -> Value {
    route(
        "web",
        json!({"route": [{"dst": "192.168.2.0/24", "dev": "eth0"},
                         {"dst": "172.16.10.0/24", "dev": "eth0"}],
               "podSelector": {"matchLabels": {"app": "web"}}, "priority": 10}),
    )
}

// ---------------------------------------------------------------------------------------------
// Helpers.

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready(refl: &Reflectors) {
    tokio::time::timeout(Duration::from_secs(20), refl.wait_ready())
        .await
        .expect("stores ready in time")
        .unwrap();
}

/// Entries as (ruleset, dst, slot, route).
fn entries(c: &Compiled) -> BTreeSet<(u32, String, u16, String)> {
    c.entries
        .values()
        .map(|e| {
            (
                e.ruleset,
                e.dst.to_string(),
                e.value.slot,
                e.from.route.clone(),
            )
        })
        .collect()
}

fn desired(refl: &Reflectors) -> Desired {
    desired_from_stores(&refl.snapshot(), NODE, &RulesetIds::new())
}

fn ruleset_of(d: &Desired, pod: &str) -> u32 {
    d.pods[&format!("uid-{pod}")].ruleset.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn routes_services_and_pods_become_entries() {
    let (api, client) = FakeApi::start();
    seed_cluster(&api);
    api.put("routes", web_route());
    let refl = Reflectors::start(client, NODE);
    ready(&refl).await;

    let d = desired(&refl);
    assert_eq!(d.pods.len(), 2, "only this node's pods (field selector)");
    let (web, db) = (ruleset_of(&d, "web-1"), ruleset_of(&d, "db-1"));
    assert_ne!(web, db);
    let c = d.compile(&Compiled::default()).unwrap();
    assert_eq!(c.slots.get("eth0"), Some(0));
    assert_eq!(c.slots.get("eth1"), Some(1));
    let demo_for = |rs: u32| {
        [
            ("172.16.10.0/24", 1),
            ("172.16.11.0/24", 0),
            ("10.86.69.17/32", 1),
            ("fd00:86::17/128", 1),
            ("10.86.205.109/32", 0),
            ("10.124.0.5/32", 0),
            ("10.124.0.9/32", 0),
        ]
        .map(|(dst, slot)| (rs, dst.to_string(), slot, "demo".to_string()))
    };
    let mut want: BTreeSet<_> = demo_for(db).into();
    want.extend(demo_for(web));
    // "web" (priority 10) wins 172.16.10.0/24 for web pods and adds 192.168.2.0/24.
    want.remove(&(web, "172.16.10.0/24".into(), 1, "demo".into()));
    want.insert((web, "172.16.10.0/24".into(), 0, "web".into()));
    want.insert((web, "192.168.2.0/24".into(), 0, "web".into()));
    assert_eq!(entries(&c), want);
    assert_eq!(c.conflicts.len(), 1);

    // A Route added through the watch.
    api.put(
        "routes",
        route(
            "extra",
            json!({"route": [{"dst": "10.9.0.0/16", "dev": "eth1"}]}),
        ),
    );
    eventually("the new Route in the store", || {
        refl.stores.routes.state().len() == 3
    })
    .await;
    let d2 = desired_from_stores(&refl.snapshot(), NODE, &d.ruleset_ids);
    let c2 = d2.compile(&c).unwrap();
    let (web2, db2) = (ruleset_of(&d2, "web-1"), ruleset_of(&d2, "db-1"));
    for rs in [web2, db2] {
        assert!(entries(&c2).contains(&(rs, "10.9.0.0/16".into(), 1, "extra".into())));
    }
    // A Service gaining an address through the watch.
    api.put(
        "endpointslices",
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "nginx2-y", "namespace": "kube-system",
                            "labels": {"kubernetes.io/service-name": "nginx2"}},
               "addressType": "IPv4", "endpoints": [{"addresses": ["10.124.0.11"]}]}),
    );
    eventually("the new slice", || refl.stores.slices.state().len() == 2).await;
    let d3 = desired_from_stores(&refl.snapshot(), NODE, &d2.ruleset_ids);
    let c3 = d3.compile(&c2).unwrap();
    assert!(entries(&c3).contains(&(db2, "10.124.0.11/32".into(), 0, "demo".into())));

    // Deleting a Route removes exactly its entries.
    api.delete("routes", "web");
    eventually("the Route gone", || refl.stores.routes.state().len() == 2).await;
    let d4 = desired_from_stores(&refl.snapshot(), NODE, &d3.ruleset_ids);
    let c4 = d4.compile(&c3).unwrap();
    assert_eq!(
        ruleset_of(&d4, "web-1"),
        ruleset_of(&d4, "db-1"),
        "same Routes now"
    );
    let rs = ruleset_of(&d4, "db-1");
    assert_eq!(rs, db2, "the remaining ruleset keeps its id");
    let without_web: BTreeSet<_> = entries(&c3).into_iter().filter(|e| e.0 == db2).collect();
    assert_eq!(entries(&c4), without_web);
    assert!(entries(&c4).iter().all(|e| e.3 != "web"));
    // Rule ids of the remaining rules are unchanged.
    for (id, n) in &c4.rule_ids {
        assert_eq!(c3.rule_ids.get(id), Some(n));
    }

    api.assert_requests_allowed();
    let pods_lists: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/pods")
        .collect();
    assert!(
        pods_lists
            .iter()
            .all(|r| r.query.get("fieldSelector").map(String::as_str) == Some("spec.nodeName=n1")),
        "pods are watched for this node only"
    );
}

#[tokio::test]
async fn a_watch_error_does_not_clear_the_desired_state() {
    let (api, client) = FakeApi::start();
    seed_cluster(&api);
    let refl = Reflectors::start(client, NODE);
    ready(&refl).await;
    let before = desired(&refl);
    let c_before = before.compile(&Compiled::default()).unwrap();
    assert!(!c_before.entries.is_empty());

    // The API server loses its watch cache and cannot list: every watch ends with 410 and
    // every relist fails. Meanwhile a Route is deleted (the agent cannot know yet).
    for k in ["routes", "pods", "services"] {
        api.fail_lists(k, true);
        api.expire_watches(k);
    }
    api.delete("routes", "demo");
    eventually("failed relists", || {
        let h = refl.health.get();
        ["routes", "pods", "services"]
            .iter()
            .all(|k| h[k].errors >= 2)
    })
    .await;
    assert!(refl.health.all_synced());
    let during = desired(&refl);
    assert_eq!(
        during.pods.keys().collect::<Vec<_>>(),
        before.pods.keys().collect::<Vec<_>>()
    );
    let c_during = during.compile(&c_before).unwrap();
    assert_eq!(
        entries(&c_during),
        entries(&c_before),
        "last known state kept"
    );

    // The API server is back: the relist replaces the stores and the deletion shows.
    for k in ["routes", "pods", "services"] {
        api.fail_lists(k, false);
    }
    eventually("the relist", || refl.stores.routes.state().is_empty()).await;
    eventually("healthy streams", || !refl.health.degraded()).await;
    let after = desired(&refl);
    assert!(after.compile(&c_during).unwrap().entries.is_empty());
    assert_eq!(after.pods.len(), 2);
    api.assert_requests_allowed();
}

#[tokio::test]
async fn status_patch_is_a_forced_server_side_apply_per_node() {
    let (api, client) = FakeApi::start();
    api.put("routes", demo_route());
    let status: RouteStatus = serde_json::from_value(json!({
        "status": "Accepted",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Valid",
                        "lastTransitionTime": "2025-01-01T00:00:00Z"}],
        "nodes": [{"node": NODE, "selected": 2, "applied": 1,
                   "skipped": [{"pod": "default/db-1", "reason": "eth1: no such interface"}]}]
    }))
    .unwrap();
    let back = patch_status(&client, NODE, "demo", &status).await.unwrap();
    assert_eq!(back.status.as_ref(), Some(&status));

    let reqs = api.requests();
    let r = reqs.iter().find(|r| r.method == "PATCH").unwrap();
    assert_eq!(r.path, "/apis/k8s.ovn.org/v1/routes/demo/status");
    assert_eq!(
        r.query.get("fieldManager").map(String::as_str),
        Some("veer-agent/n1")
    );
    assert_eq!(r.query.get("force").map(String::as_str), Some("true"));
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(
        r.body,
        json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route", "metadata": {"name": "demo"},
               "status": serde_json::to_value(&status).unwrap()})
    );
    assert_eq!(field_manager(NODE), "veer-agent/n1");

    // A second node applies its own entry; the first node's entry stays (list-map by node).
    let mut other = status.clone();
    other.nodes[0].node = "n2".into();
    other.nodes[0].skipped.clear();
    let back = patch_status(&client, "n2", "demo", &other).await.unwrap();
    let nodes: Vec<&str> = back
        .status
        .as_ref()
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.node.as_str())
        .collect();
    assert_eq!(nodes, ["n1", "n2"]);
    api.assert_requests_allowed();
}

// ---------------------------------------------------------------------------------------------
// The whole loop, with a dataplane double.

#[derive(Default)]
struct DpRecord {
    rounds: Vec<(Compiled, Vec<(PodSandbox, u32)>)>,
    orphan_sweeps: usize,
    /// The bpffs root of every `remove_stale_pins` call.
    stale_removals: Vec<PathBuf>,
    /// Pods (by name) whose setup fails.
    failing: BTreeSet<String>,
}

struct FakeDp {
    applied: Compiled,
    record: Arc<Mutex<DpRecord>>,
}

impl NodeDataplane for FakeDp {
    fn applied(&self) -> &Compiled {
        &self.applied
    }

    fn apply(
        &mut self,
        compiled: Compiled,
        pods: &[(PodSandbox, u32)],
    ) -> Result<Vec<PodOutcome>, ApplyError> {
        self.applied = compiled.clone();
        let mut rec = self.record.lock().unwrap();
        rec.rounds.push((compiled, pods.to_vec()));
        // Every pod has eth0; only web pods have eth1.
        Ok(pods
            .iter()
            .map(|(s, _)| {
                if rec.failing.contains(&s.name) {
                    return PodOutcome {
                        namespace: s.namespace.clone(),
                        name: s.name.clone(),
                        uid: s.uid.clone(),
                        failure: Some("entering the namespace: gone".into()),
                        ..Default::default()
                    };
                }
                let eth1 = s.name.starts_with("web");
                PodOutcome {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    uid: s.uid.clone(),
                    managed: if eth1 {
                        vec!["eth0".into(), "eth1".into()]
                    } else {
                        vec!["eth0".into()]
                    },
                    skipped: if eth1 {
                        vec![]
                    } else {
                        vec![("eth1".into(), "the pod has no interface eth1".into())]
                    },
                    failure: None,
                }
            })
            .collect())
    }

    fn remove_orphans(&mut self) {
        self.record.lock().unwrap().orphan_sweeps += 1;
    }

    fn remove_stale_pins(&mut self, bpffs_root: &Path) -> usize {
        self.record
            .lock()
            .unwrap()
            .stale_removals
            .push(bpffs_root.to_path_buf());
        1
    }
}

fn write_cni_result(dir: &Path, ns: &str, name: &str, uid: &str) {
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/seed/cni-loopback-result.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut v = seed.clone();
    let id = format!("{:0>64}", uid.replace('-', ""));
    v["containerId"] = json!(id);
    v["cniArgs"] = json!([
        ["K8S_POD_NAMESPACE", ns],
        ["K8S_POD_NAME", name],
        ["K8S_POD_UID", uid]
    ]);
    v["result"]["interfaces"][0]["sandbox"] = json!(format!("/var/run/netns/cni-{name}"));
    std::fs::write(
        dir.join(format!("cni-loopback-{id}-lo")),
        serde_json::to_vec(&v).unwrap(),
    )
    .unwrap();
}

fn patches_of<'a>(reqs: &'a [Recorded], route: &str) -> Vec<&'a Recorded> {
    let path = format!("/apis/k8s.ovn.org/v1/routes/{route}/status");
    reqs.iter()
        .filter(|r| r.method == "PATCH" && r.path == path)
        .collect()
}

#[tokio::test]
async fn the_agent_loop_applies_rules_and_reports_status() {
    let (api, client) = FakeApi::start();
    seed_cluster(&api);
    api.put("routes", web_route());
    api.put(
        "routes",
        route(
            "bad",
            json!({"route": [{"dst": "10.0.0.1/8", "dev": "eth1"}], "feature_gate": {"turbo": "on"}}),
        ),
    );
    let tmp = tempfile::tempdir().unwrap();
    let cni_dir = tmp.path().join("cni");
    let netns_dir = tmp.path().join("netns");
    std::fs::create_dir_all(&cni_dir).unwrap();
    std::fs::create_dir_all(&netns_dir).unwrap();
    write_cni_result(&cni_dir, "default", "web-1", "uid-web-1");
    write_cni_result(&cni_dir, "default", "db-1", "uid-db-1");
    let mut cfg = K8sConfig::new(NODE, tmp.path().join("bpf"));
    cfg.cni_dir = cni_dir.clone();
    cfg.netns_dir = netns_dir;
    cfg.status_file = Some(tmp.path().join("status.json"));
    cfg.resync = Duration::from_millis(300);
    cfg.debounce = Duration::from_millis(20);

    let record = Arc::new(Mutex::new(DpRecord::default()));
    let dp = FakeDp {
        applied: Compiled::default(),
        record: record.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let agent = tokio::spawn(run_with(client, cfg.clone(), dp, stop.clone()));

    eventually("status of every Route", || {
        let reqs = api.requests();
        ["demo", "web", "bad"]
            .iter()
            .all(|r| !patches_of(&reqs, r).is_empty())
    })
    .await;

    // The dataplane got both pods with their rulesets, and the rules of both Routes.
    {
        let rec = record.lock().unwrap();
        let (compiled, pods) = rec.rounds.last().unwrap();
        let by_name: BTreeMap<&str, u32> =
            pods.iter().map(|(s, rs)| (s.name.as_str(), *rs)).collect();
        assert_eq!(by_name.len(), 2);
        assert_ne!(by_name["web-1"], by_name["db-1"]);
        assert_eq!(pods[0].0.netns, Path::new("/var/run/netns/cni-db-1"));
        let routes: BTreeSet<&str> = compiled
            .entries
            .values()
            .map(|e| e.from.route.as_str())
            .collect();
        assert_eq!(routes, ["demo", "web"].into());
        let nginx: IpAddr = "10.86.69.17".parse().unwrap();
        assert!(
            compiled
                .entries
                .contains_key(&(by_name["db-1"], nginx.into()))
        );
        assert_eq!(
            rec.orphan_sweeps, 1,
            "orphans swept after the first apply only"
        );
    }

    // Status: per-node entries and shared conditions.
    let demo = api.object("routes", "demo").unwrap();
    let st: RouteStatus = serde_json::from_value(demo["status"].clone()).unwrap();
    assert_eq!(st.status.as_deref(), Some("Accepted"));
    assert_eq!(st.conditions[0].type_, "Accepted");
    assert_eq!(st.conditions[0].status, "True");
    assert_eq!(st.conditions[0].observed_generation, Some(1));
    let n = &st.nodes[0];
    assert_eq!((n.node.as_str(), n.selected, n.applied), (NODE, 2, 2));
    assert_eq!(n.skipped.len(), 1);
    assert_eq!(n.skipped[0].pod, "default/db-1");
    assert_eq!(n.skipped[0].reason, "eth1: the pod has no interface eth1");

    let web = api.object("routes", "web").unwrap();
    let st: RouteStatus = serde_json::from_value(web["status"].clone()).unwrap();
    assert_eq!((st.nodes[0].selected, st.nodes[0].applied), (1, 1));
    assert!(st.nodes[0].skipped.is_empty());
    assert_eq!(
        st.nodes[0].issues,
        Vec::<String>::new(),
        "web wins its conflict"
    );
    let demo_issues = &serde_json::from_value::<RouteStatus>(demo["status"].clone())
        .unwrap()
        .nodes[0]
        .issues;
    assert!(
        demo_issues
            .iter()
            .any(|i| i.contains("overridden by Route \"web\"")),
        "{demo_issues:?}"
    );

    let bad = api.object("routes", "bad").unwrap();
    let st: RouteStatus = serde_json::from_value(bad["status"].clone()).unwrap();
    assert_eq!(st.status.as_deref(), Some("Invalid"));
    let acc = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .unwrap();
    assert_eq!(
        (acc.status.as_str(), acc.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(acc.message.contains("has host bits set"), "{}", acc.message);
    let gates = st
        .conditions
        .iter()
        .find(|c| c.type_ == "FeatureGatesKnown")
        .unwrap();
    assert_eq!(
        (gates.status.as_str(), gates.reason.as_str()),
        ("False", "UnknownFeatureGate")
    );
    assert_eq!(gates.message, "unknown feature gates ignored: turbo");

    // Events for the invalid Route (once each).
    let reqs = api.requests();
    let events: Vec<&Recorded> = reqs
        .iter()
        .filter(|r| {
            r.method == "POST" && r.path == "/apis/events.k8s.io/v1/namespaces/default/events"
        })
        .collect();
    let reasons: BTreeSet<&str> = events
        .iter()
        .map(|e| e.body["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["InvalidSpec", "UnknownFeatureGate"].into());
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e.body["regarding"]["name"], "bad");
        assert_eq!(e.body["regarding"]["kind"], "Route");
        assert_eq!(e.body["reportingInstance"], NODE);
        assert_eq!(e.body["type"], "Warning");
    }

    // Steady state: more rounds (resync) write nothing.
    let patches_before = api.requests().iter().filter(|r| r.method != "GET").count();
    let rounds_before = record.lock().unwrap().rounds.len();
    eventually("two more rounds", || {
        record.lock().unwrap().rounds.len() >= rounds_before + 2
    })
    .await;
    let patches_after = api.requests().iter().filter(|r| r.method != "GET").count();
    assert_eq!(
        patches_before, patches_after,
        "no writes when nothing changed"
    );

    // A pod whose sandbox appears later is picked up; its Route status follows.
    api.put("pods", pod("default", "web-3", NODE, json!({"app": "web"})));
    eventually("web-3 reported without sandbox", || {
        api.object("routes", "web").unwrap()["status"]["nodes"][0]["skipped"][0]["reason"]
            == "no network namespace in the CNI result cache yet"
    })
    .await;
    write_cni_result(&cni_dir, "default", "web-3", "uid-web-3");
    eventually("web-3 applied", || {
        api.object("routes", "web").unwrap()["status"]["nodes"][0]["applied"] == 2
    })
    .await;

    // The status file says what happened.
    let report: Value =
        serde_json::from_slice(&std::fs::read(cfg.status_file.as_ref().unwrap()).unwrap()).unwrap();
    assert_eq!(report["mode"], "kubernetes");
    assert_eq!(report["invalid_routes"], json!(["bad"]));

    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("the agent stops")
        .unwrap()
        .unwrap();
    api.assert_requests_allowed();
}

#[tokio::test]
async fn an_apiserver_that_prunes_the_status_gets_no_patch_storm() {
    let (api, client) = FakeApi::start();
    api.0.lock().unwrap().prune_status = true;
    seed_cluster(&api);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = K8sConfig::new(NODE, tmp.path().join("bpf"));
    cfg.cni_dir = tmp.path().join("cni");
    cfg.netns_dir = tmp.path().join("netns");
    cfg.resync = Duration::from_millis(100);
    cfg.debounce = Duration::from_millis(10);
    let record = Arc::new(Mutex::new(DpRecord::default()));
    let dp = FakeDp {
        applied: Compiled::default(),
        record: record.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let agent = tokio::spawn(run_with(client, cfg, dp, stop.clone()));
    eventually("five rounds", || record.lock().unwrap().rounds.len() >= 5).await;
    let reqs = api.requests();
    assert_eq!(
        patches_of(&reqs, "demo").len(),
        1,
        "one patch, not one per round"
    );
    assert_eq!(
        api.object("routes", "demo").unwrap()["status"],
        json!({"status": "Accepted"})
    );
    stop.store(true, Ordering::Relaxed);
    agent.await.unwrap().unwrap();
}

#[tokio::test]
async fn stale_pins_are_removed_once_after_the_first_round_without_pod_failures() {
    let (api, client) = FakeApi::start();
    seed_cluster(&api);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = K8sConfig::new(NODE, tmp.path().join("bpf"));
    cfg.cni_dir = tmp.path().join("cni");
    cfg.netns_dir = tmp.path().join("netns");
    std::fs::create_dir_all(&cfg.cni_dir).unwrap();
    write_cni_result(&cfg.cni_dir, "default", "web-1", "uid-web-1");
    write_cni_result(&cfg.cni_dir, "default", "db-1", "uid-db-1");
    cfg.resync = Duration::from_millis(50);
    cfg.debounce = Duration::from_millis(10);
    let record = Arc::new(Mutex::new(DpRecord {
        failing: ["db-1".to_string()].into(),
        ..Default::default()
    }));
    let dp = FakeDp {
        applied: Compiled::default(),
        record: record.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let agent = tokio::spawn(run_with(client, cfg.clone(), dp, stop.clone()));

    eventually("three rounds", || record.lock().unwrap().rounds.len() >= 3).await;
    {
        let rec = record.lock().unwrap();
        assert_eq!(
            rec.rounds.last().unwrap().1.len(),
            2,
            "both pods handed over"
        );
        assert!(
            rec.stale_removals.is_empty(),
            "kept while a pod failed (its old programs may use the old maps)"
        );
    }
    // The pod is set up on its retry: the stale pins go, once.
    record.lock().unwrap().failing.clear();
    eventually("stale pins removed", || {
        !record.lock().unwrap().stale_removals.is_empty()
    })
    .await;
    let rounds = record.lock().unwrap().rounds.len();
    eventually("three more rounds", || {
        record.lock().unwrap().rounds.len() >= rounds + 3
    })
    .await;
    // A pod failing again later changes nothing.
    record.lock().unwrap().failing.insert("web-1".into());
    let rounds = record.lock().unwrap().rounds.len();
    eventually("two more rounds", || {
        record.lock().unwrap().rounds.len() >= rounds + 2
    })
    .await;
    assert_eq!(
        record.lock().unwrap().stale_removals,
        [cfg.bpffs_root.clone()],
        "removed once, under the agent's bpffs root"
    );
    stop.store(true, Ordering::Relaxed);
    agent.await.unwrap().unwrap();
    api.assert_requests_allowed();
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("veer-agent%2Fn1"), "veer-agent/n1");
    assert_eq!(percent_decode("spec.nodeName%3Dn1"), "spec.nodeName=n1");
}
