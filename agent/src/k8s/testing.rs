//! A fake Kubernetes API server for the mock-API tests (`agent/tests/k8s_mock.rs`) and the
//! watch-latency benchmark (`veer-bench`, part F): kube's `Client` over a `tower_test` mock
//! service, no cluster. Only with the `testing` cargo feature.
//!
//! The fake serves lists and watches of every kind the agent reflects, keeps a change log with
//! resource versions, parks watch requests until something changes (so a watch response holds
//! the events after the requested version, like a real watch that ends), applies Route status
//! patches (server-side apply with list-map merge semantics, and RFC 6902 JSON patches, whose
//! failed `test` answers `422` like the apiserver), accepts Events, and can fail lists or break
//! watches (`410 Gone`) on demand. Every request it sees is recorded
//! ([`FakeApi::requests`]); [`FakeApi::assert_requests_allowed`] checks them against
//! [`super::API_ACCESS`] (and so the ClusterRole). [`FakeApi::sent_at`] tells when an event was
//! first sent on a watch (the benchmark's start time).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;
type Responder = mock::SendResponse<Response<Body>>;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Value,
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
    /// Lists are held (unanswered) until released.
    hold_lists: bool,
    held: Vec<(Option<String>, Responder)>,
    /// The next watch (or the open ones) ends with 410 Gone.
    expire: bool,
    /// When each logged version was first sent on a watch.
    sent: BTreeMap<u64, Instant>,
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

/// The fake API server's state (cheap to clone: shared).
#[derive(Clone, Default)]
pub struct FakeApi(Arc<Mutex<State>>);

/// (group, namespace, resource, name, subresource) of an API path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    pub group: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// Splits `/api/v1/…` and `/apis/<group>/<version>/…` paths.
pub fn parse_path(path: &str) -> Option<ApiPath> {
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

/// Decodes `%XX` escapes and `+` of a query value.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| u8::from_str_radix(&s[i + 1..i + 3], 16).ok())
            .flatten();
        if let Some(v) = hex {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn key_of(obj: &Value) -> String {
    let m = &obj["metadata"];
    let name = m["name"].as_str().expect("objects have metadata.name");
    match m["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Whether `obj` matches a field selector like `spec.nodeName=n1`.
fn matches_selector(obj: &Value, selector: Option<&str>) -> bool {
    selector.is_none_or(|sel| {
        sel.split(',').filter(|s| !s.is_empty()).all(|term| {
            let Some((path, want)) = term.split_once('=') else {
                return false;
            };
            let ptr = format!("/{}", path.replace('.', "/"));
            obj.pointer(&ptr).and_then(Value::as_str) == Some(want)
        })
    })
}

fn response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("JSON")))
        .expect("response")
}

/// A `Status` object as the apiserver answers errors.
pub fn status_body(code: u16, reason: &str, message: &str) -> Value {
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
        body.extend(serde_json::to_vec(&json!({"type": t, "object": o})).expect("JSON"));
        body.push(b'\n');
    }
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("response")
}

impl FakeApi {
    /// A client talking to a new fake server (served on the current tokio runtime).
    pub fn start() -> (Self, Client) {
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
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body,
            };
            self.handle(rec, respond);
        }
    }

    fn handle(&self, rec: Recorded, respond: Responder) {
        let mut st = self.0.lock().expect("fake API lock");
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
                    let since: u64 = rec
                        .query
                        .get("resourceVersion")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
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
                } else if kind.hold_lists {
                    kind.held.push((selector, respond));
                } else {
                    respond.send_response(kind.list(rv, selector.as_deref()));
                }
            }
            ("PATCH", Some(name), Some(sub)) if sub == "status" => {
                let Some(mut obj) = st
                    .kinds
                    .get(&p.resource)
                    .and_then(|k| k.objects.get(name))
                    .cloned()
                else {
                    respond.send_response(response(404, &status_body(404, "NotFound", "gone")));
                    return;
                };
                match rec.content_type.as_deref() {
                    Some("application/apply-patch+yaml") => {
                        merge_status(&mut obj["status"], &rec.body["status"]);
                    }
                    Some("application/json-patch+json") => {
                        let patch: Result<json_patch::Patch, _> =
                            serde_json::from_value(rec.body.clone());
                        let applied = patch.map_err(|e| e.to_string()).and_then(|pa| {
                            json_patch::patch(&mut obj, &pa).map_err(|e| e.to_string())
                        });
                        if let Err(e) = applied {
                            respond.send_response(response(
                                422,
                                &status_body(422, "Invalid", &format!("the patch failed: {e}")),
                            ));
                            return;
                        }
                    }
                    other => {
                        respond.send_response(response(
                            415,
                            &status_body(
                                415,
                                "UnsupportedMediaType",
                                &format!("the fake does not take {other:?} patches"),
                            ),
                        ));
                        return;
                    }
                }
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

    /// Adds or replaces an object (as a watch `ADDED`/`MODIFIED`). Returns it as stored (with
    /// its new `metadata.resourceVersion`).
    pub fn put(&self, resource: &str, mut obj: Value) -> Value {
        let mut st = self.0.lock().expect("fake API lock");
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

    /// Deletes an object (a watch `DELETED`). `key` is `name` or `namespace/name`.
    pub fn delete(&self, resource: &str, key: &str) {
        let mut st = self.0.lock().expect("fake API lock");
        st.rv += 1;
        let rv = st.rv;
        let kind = st.kinds.entry(resource.to_string()).or_default();
        let Some(mut obj) = kind.objects.remove(key) else {
            panic!("the fake holds no {resource} {key}");
        };
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        kind.log.push((rv, "DELETED", obj));
        kind.wake();
    }

    /// Makes `resource` exist with no objects (its lists answer an empty list).
    pub fn add_kind(&self, resource: &str) {
        self.0
            .lock()
            .expect("fake API lock")
            .kinds
            .entry(resource.to_string())
            .or_default();
    }

    /// Ends the open watch of `resource` (or the next one) with `410 Gone`: the client must
    /// relist.
    pub fn expire_watches(&self, resource: &str) {
        let mut st = self.0.lock().expect("fake API lock");
        let kind = st.kinds.entry(resource.to_string()).or_default();
        kind.expire = kind.parked.is_empty();
        for p in kind.parked.drain(..) {
            p.respond.send_response(gone());
        }
    }

    /// Makes lists of `resource` fail with `500` (or succeed again).
    pub fn fail_lists(&self, resource: &str, fail: bool) {
        self.0
            .lock()
            .expect("fake API lock")
            .kinds
            .entry(resource.to_string())
            .or_default()
            .fail_lists = fail;
    }

    /// Holds lists of `resource` unanswered (a slow apiserver), or answers the held ones and
    /// stops holding.
    pub fn hold_lists(&self, resource: &str, hold: bool) {
        let mut st = self.0.lock().expect("fake API lock");
        let rv = st.rv;
        let kind = st.kinds.entry(resource.to_string()).or_default();
        kind.hold_lists = hold;
        if !hold {
            for (selector, respond) in std::mem::take(&mut kind.held) {
                respond.send_response(kind.list(rv, selector.as_deref()));
            }
        }
    }

    /// Behave like an apiserver with an old CRD: status fields other than `status.status` are
    /// pruned on write.
    pub fn set_prune_status(&self, prune: bool) {
        self.0.lock().expect("fake API lock").prune_status = prune;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.0.lock().expect("fake API lock").requests.clone()
    }

    /// The stored object `key` (`name` or `namespace/name`) of `resource`.
    pub fn object(&self, resource: &str, key: &str) -> Option<Value> {
        self.0
            .lock()
            .expect("fake API lock")
            .kinds
            .get(resource)
            .and_then(|k| k.objects.get(key).cloned())
    }

    /// When the change with resource version `rv` of `resource` was first sent on a watch.
    pub fn sent_at(&self, resource: &str, rv: u64) -> Option<Instant> {
        self.0
            .lock()
            .expect("fake API lock")
            .kinds
            .get(resource)
            .and_then(|k| k.sent.get(&rv).copied())
    }

    /// Panics unless every request so far is allowed by [`super::API_ACCESS`].
    pub fn assert_requests_allowed(&self) {
        for r in self.requests() {
            let p = parse_path(&r.path).expect("requests have API paths");
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
                super::allowed(&p.group, &resource, verb),
                "{} {} ({verb} {}/{resource}) is not in API_ACCESS",
                r.method,
                r.path,
                p.group
            );
        }
    }
}

impl Kind {
    fn list(&self, rv: u64, selector: Option<&str>) -> Response<Body> {
        let items: Vec<&Value> = self
            .objects
            .values()
            .filter(|o| matches_selector(o, selector))
            .collect();
        response(
            200,
            &json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        )
    }

    /// Serves a parked watch if events after its version exist; gives it back otherwise.
    fn try_serve(&mut self, p: Parked) -> Option<Parked> {
        let events: Vec<(u64, &'static str, Value)> = self
            .log
            .iter()
            .filter(|(rv, _, o)| *rv > p.since && matches_selector(o, p.selector.as_deref()))
            .map(|(rv, t, o)| (*rv, *t, o.clone()))
            .collect();
        if events.is_empty() {
            return Some(p);
        }
        let body: Vec<(&'static str, Value)> =
            events.iter().map(|(_, t, o)| (*t, o.clone())).collect();
        let now = Instant::now();
        for (rv, _, _) in &events {
            self.sent.entry(*rv).or_insert(now);
        }
        p.respond.send_response(watch_response(&body));
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
    let Some(fields) = applied.as_object() else {
        return;
    };
    for (k, v) in fields {
        let key = match k.as_str() {
            "conditions" => "type",
            "nodes" => "node",
            _ => {
                cur[k] = v.clone();
                continue;
            }
        };
        let mut list: Vec<Value> = cur[k].as_array().cloned().unwrap_or_default();
        for item in v.as_array().into_iter().flatten() {
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

/// A Route (generation 1).
pub fn route(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route",
           "metadata": {"name": name, "generation": 1}, "spec": spec})
}

/// A Service.
pub fn service(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": spec})
}

/// A running Pod on `node` with UID `uid-<name>`.
pub fn pod(ns: &str, name: &str, node: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
           "status": {"phase": "Running"}})
}

/// A Namespace with its `kubernetes.io/metadata.name` label.
pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

/// A Node.
pub fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("veer-agent%2Fn1"), "veer-agent/n1");
        assert_eq!(percent_decode("spec.nodeName%3Dn1"), "spec.nodeName=n1");
        assert_eq!(percent_decode("a+b%zz"), "a b%zz");
    }

    #[test]
    fn paths_split_into_group_resource_name_subresource() {
        let p = parse_path("/apis/k8s.ovn.org/v1/routes/demo/status").unwrap();
        assert_eq!(
            (
                p.group.as_str(),
                p.resource.as_str(),
                p.name.as_deref(),
                p.sub.as_deref()
            ),
            ("k8s.ovn.org", "routes", Some("demo"), Some("status"))
        );
        let p = parse_path("/api/v1/namespaces/default/events").unwrap();
        assert_eq!(
            (p.group.as_str(), p.namespace.as_deref()),
            ("", Some("default"))
        );
        assert_eq!(p.resource, "events");
        assert!(parse_path("/healthz").is_none());
    }

    #[test]
    fn status_apply_merges_list_maps_by_key() {
        let mut cur = json!({"nodes": [{"node": "a", "x": 1}, {"node": "b", "x": 2}]});
        merge_status(
            &mut cur,
            &json!({"status": "Accepted", "nodes": [{"node": "b", "x": 3}]}),
        );
        assert_eq!(
            cur,
            json!({"status": "Accepted", "nodes": [{"node": "a", "x": 1}, {"node": "b", "x": 3}]})
        );
    }
}
