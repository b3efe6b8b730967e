//! Kubernetes mode against a real API server (`veer_tests::apiserver`: etcd and kube-apiserver
//! built from the pinned `tests/go/` module, on loopback, with RBAC and the default admission
//! plugins), where the other Kubernetes layers only meet the in-process fake
//! (`veer_agent::k8s::testing`). No root needed: the agent's dataplane is the double
//! `veer_agent::node::testing::FakeDp`.
//!
//! What only this layer shows: `manifests/` is accepted by a real server (schema, admission);
//! the ClusterRole lets the DaemonSet's ServiceAccount do exactly what
//! `veer_agent::k8s::API_ACCESS` lists and nothing more (the real RBAC authorizer decides); the
//! agent, authenticated by a real ServiceAccount token, writes the Route status through the
//! status subresource by server-side apply under its own field manager (the server's
//! `managedFields` say so), leaves the spec alone, and its Events pass the real Event validation.
//! Every request the agent made is read back from the server's audit log.

use std::{
    collections::BTreeSet,
    fmt::Debug,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        authentication::v1::{TokenRequest, TokenRequestSpec},
        authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        },
        core::v1::{Namespace, Node, Pod, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Resource,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use veer_agent::{
    k8s::{API_ACCESS, K8sConfig, run_with},
    node::testing::{FakeDp, write_cni_result},
    report::{Mode, StatusFile},
};
use veer_tests::apiserver::{ApiServer, require_daemons};

const NODE: &str = "apiserver-node";
const AGENT_NS: &str = "veer-system";
const AGENT_SA: &str = "veer-agent";
/// How the ServiceAccount appears in the audit log.
const AGENT_USER: &str = "system:serviceaccount:veer-system:veer-agent";
/// Longest wait for the agent to reach a state on the server.
const TIMEOUT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The routes.k8s.ovn.org resource, for objects the tests write as JSON.
fn routes(c: &Client) -> Api<kube::api::DynamicObject> {
    let ar = kube::api::ApiResource {
        group: "k8s.ovn.org".into(),
        version: "v1".into(),
        api_version: "k8s.ovn.org/v1".into(),
        kind: "Route".into(),
        plural: "routes".into(),
    };
    Api::all_with(c.clone(), &ar)
}

async fn ssa<K>(api: Api<K>, doc: &Value)
where
    K: Resource + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    let name = doc["metadata"]["name"].as_str().expect("metadata.name");
    api.patch(
        name,
        &PatchParams::apply("veer-tests").force(),
        &Patch::Apply(doc),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {} {name}: {e}", doc["kind"]));
}

/// Applies every resource of `manifests/kustomization.yaml`, in its order, as the admin (what
/// `kubectl apply -k manifests/` does, by server-side apply), and waits until the Route CRD is
/// established.
async fn apply_manifests(admin: &Client) {
    let kust: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo().join("manifests/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let files: Vec<&str> = kust["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(files.contains(&"rbac.yaml") && files.contains(&"crd.yaml"));
    for file in files {
        let text = std::fs::read_to_string(repo().join("manifests").join(file)).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for doc in docs.iter().filter(|d| !d.is_null()) {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or("default");
            let c = admin.clone();
            match doc["kind"].as_str().unwrap() {
                "Namespace" => ssa(Api::<Namespace>::all(c), doc).await,
                "CustomResourceDefinition" => {
                    ssa(Api::<CustomResourceDefinition>::all(c), doc).await
                }
                "ServiceAccount" => ssa(Api::<ServiceAccount>::namespaced(c, ns), doc).await,
                "ClusterRole" => ssa(Api::<ClusterRole>::all(c), doc).await,
                "ClusterRoleBinding" => ssa(Api::<ClusterRoleBinding>::all(c), doc).await,
                "DaemonSet" => ssa(Api::<DaemonSet>::namespaced(c, ns), doc).await,
                other => panic!("{file}: no test support for applying a {other}"),
            }
        }
    }
    let crds = Api::<CustomResourceDefinition>::all(admin.clone());
    eventually("the Route CRD is established", || async {
        crds.get("routes.k8s.ovn.org")
            .await
            .ok()
            .is_some_and(|crd| {
                crd.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    })
    .await;
}

/// Polls `cond` every 100 ms until it holds; panics after [`TIMEOUT`].
async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A token for the DaemonSet's ServiceAccount (TokenRequest API) and a client using it.
async fn agent_client(server: &ApiServer, admin: &Client) -> Client {
    let tr = Api::<ServiceAccount>::namespaced(admin.clone(), AGENT_NS)
        .create_token_request(
            AGENT_SA,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("TokenRequest for the agent's ServiceAccount");
    let token = tr.status.and_then(|s| s.token).expect("token issued");
    server.client_with_token("veer-agent", &token).await
}

/// Whether the client's identity may `verb` `group`/`resource[/subresource]` in every
/// namespace, as the real authorizer decides (SelfSubjectAccessReview).
async fn may(c: &Client, group: &str, resource: &str, verb: &str) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                verb: Some(verb.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(c.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview")
        .status
        .expect("review status")
        .allowed
}

/// The collection path of `group`/`resource` (every group the agent reads serves `v1`).
fn collection(group: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("/api/v1/{resource}")
    } else {
        format!("/apis/{group}/v1/{resource}")
    }
}

/// The HTTP status of a raw request (`200` on success).
async fn status_of(c: &Client, req: http::Request<Vec<u8>>) -> u16 {
    match c.request_text(req).await {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("request failed without an HTTP status: {e}"),
    }
}

const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// `tests/fixtures/seed/route-demo.yaml` as JSON.
fn demo_route() -> Value {
    serde_saphyr::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/seed/route-demo.yaml")).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_apiserver_listens_on_loopback_only() {
    if !require_daemons("the_test_apiserver_listens_on_loopback_only") {
        return;
    }
    let server = ApiServer::start().await;
    for (name, pid) in server.pids() {
        let socks = veer_tests::apiserver::listening_sockets(pid);
        assert!(!socks.is_empty(), "{name} (pid {pid}) listens on nothing?");
        for s in &socks {
            assert!(
                s.ip().is_loopback(),
                "{name} listens on {s}, not on loopback (all: {socks:?})"
            );
        }
    }
    // The admin client reaches it over TLS trusting only the generated CA.
    let v = server.admin().await.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "37"), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_service_account_may_do_exactly_what_api_access_lists() {
    if !require_daemons("the_agent_service_account_may_do_exactly_what_api_access_lists") {
        return;
    }
    let server = ApiServer::start().await;
    let admin = server.admin().await;
    apply_manifests(&admin).await;
    ssa(routes(&admin), &demo_route()).await;
    let sa = agent_client(&server, &admin).await;

    // The authorizer's view: every verb on every resource the agent uses is allowed exactly
    // when API_ACCESS lists it.
    let mut wrong = Vec::new();
    for a in API_ACCESS {
        for verb in VERBS {
            let listed = a.verbs.contains(verb);
            if may(&sa, a.group, a.resource, verb).await != listed {
                wrong.push(format!(
                    "{verb} {}/{}: {}",
                    a.group,
                    a.resource,
                    if listed {
                        "listed but forbidden"
                    } else {
                        "allowed but not listed"
                    }
                ));
            }
        }
    }
    // Nothing else the agent has no business with.
    for (group, resource, verb) in [
        ("", "secrets", "get"),
        ("", "secrets", "list"),
        ("", "configmaps", "list"),
        ("", "nodes/status", "patch"),
        ("", "pods/status", "patch"),
        ("", "serviceaccounts/token", "create"),
        ("apps", "daemonsets", "list"),
        ("k8s.ovn.org", "routes", "get"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("rbac.authorization.k8s.io", "clusterroles", "escalate"),
    ] {
        if may(&sa, group, resource, verb).await {
            wrong.push(format!("{verb} {group}/{resource}: allowed but not listed"));
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC is not API_ACCESS:\n  {}",
        wrong.join("\n  ")
    );

    // Doing it: every listed list and watch succeeds for the ServiceAccount.
    for a in API_ACCESS {
        let path = collection(a.group, a.resource);
        if a.verbs.contains(&"list") {
            let req = http::Request::get(format!("{path}?limit=1"))
                .body(vec![])
                .unwrap();
            assert_eq!(status_of(&sa, req).await, 200, "list {path}");
        }
        if a.verbs.contains(&"watch") {
            let req = http::Request::get(format!("{path}?watch=true&timeoutSeconds=1"))
                .body(vec![])
                .unwrap();
            assert_eq!(status_of(&sa, req).await, 200, "watch {path}");
        }
    }
    // And what is not listed is refused: a Route's spec, Nodes, Secrets.
    let spec_patch = http::Request::patch("/apis/k8s.ovn.org/v1/routes/demo")
        .header("Content-Type", "application/merge-patch+json")
        .body(br#"{"spec":{"priority":1}}"#.to_vec())
        .unwrap();
    assert_eq!(
        status_of(&sa, spec_patch).await,
        403,
        "patch a Route's spec"
    );
    let err = Api::<Node>::all(sa.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "not-yours"}})).unwrap(),
        )
        .await
        .expect_err("create a Node");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
    let req = http::Request::get("/api/v1/namespaces/veer-system/secrets")
        .body(vec![])
        .unwrap();
    assert_eq!(status_of(&sa, req).await, 403, "list Secrets");
    // The spec the ServiceAccount tried to change is as applied.
    let demo = routes(&admin).get("demo").await.unwrap();
    assert_eq!(demo.data["spec"], demo_route()["spec"]);
}

/// The objects of one node: its Node, the `default` ServiceAccount the ServiceAccount admission
/// plugin wants (no controller-manager runs to create it), a pod `web-0` bound to the node, the
/// Service the demo Route names, the demo Route and a Route the agent must report as invalid.
/// Returns the pod's UID.
async fn seed_node(admin: &Client) -> String {
    Api::<Node>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NODE}})).unwrap(),
        )
        .await
        .expect("create the Node");
    Api::<ServiceAccount>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
        )
        .await
        .expect("create the default ServiceAccount");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "image": "registry.invalid/web:1"}]}
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("create the pod");
    Api::<Service>::namespaced(admin.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "nginx", "namespace": "default"},
                "spec": {"ports": [{"port": 80}]}
            }))
            .unwrap(),
        )
        .await
        .expect("create the Service");
    ssa(routes(admin), &demo_route()).await;
    // Valid for the schema, invalid for the agent: host bits set, an unknown feature gate.
    ssa(
        routes(admin),
        &json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route", "metadata": {"name": "bad"},
                "spec": {"route": [{"dst": "10.0.0.1/8", "dev": "eth1"}],
                         "feature_gate": {"turbo": "on"}}}),
    )
    .await;
    pod.metadata.uid.expect("the server assigns a UID")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_as_its_service_account_writes_route_status_by_ssa_and_events() {
    if !require_daemons("the_agent_as_its_service_account_writes_route_status_by_ssa_and_events") {
        return;
    }
    let server = ApiServer::start().await;
    let admin = server.admin().await;
    apply_manifests(&admin).await;
    let uid = seed_node(&admin).await;
    let before = routes(&admin).get("demo").await.unwrap();
    let sa = agent_client(&server, &admin).await;

    let tmp = tempfile::tempdir().unwrap();
    let cni_dir = tmp.path().join("cni");
    let netns_dir = tmp.path().join("netns");
    std::fs::create_dir_all(&cni_dir).unwrap();
    std::fs::create_dir_all(&netns_dir).unwrap();
    write_cni_result(&cni_dir, "default", "web-0", &uid);
    let mut cfg = K8sConfig::new(NODE, tmp.path().join("bpf"));
    cfg.node.cni_dir = cni_dir;
    cfg.node.netns_dir = netns_dir;
    let status_file = tmp.path().join("status.json");
    cfg.node.status_file = Some(status_file.clone());
    cfg.node.resync = Duration::from_millis(500);
    let (dp, record) = FakeDp::new();
    let stop = Arc::new(AtomicBool::new(false));
    let agent = tokio::spawn(run_with(sa, cfg, dp, stop.clone()));

    let api = routes(&admin);
    eventually(
        "the agent reports web-0 applied in the demo Route's status",
        || async {
            let r = api.get("demo").await.unwrap();
            r.data["status"]["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|e| e["node"] == NODE && e["applied"] == 1))
        },
    )
    .await;
    eventually("the agent reports the bad Route invalid", || async {
        api.get("bad").await.unwrap().data["status"]["status"] == "Invalid"
    })
    .await;
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), "default");
    eventually("two Events about the bad Route", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad"))
            .count()
            >= 2
    })
    .await;

    let demo = api.get("demo").await.unwrap();
    // Status: this node's entry; the shared Accepted condition for the current generation.
    let st = &demo.data["status"];
    let node = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == NODE)
        .unwrap();
    assert_eq!(
        (node["selected"].as_i64(), node["applied"].as_i64()),
        (Some(1), Some(1)),
        "{st:#}"
    );
    assert_eq!(st["status"], "Accepted", "{st:#}");
    let accepted = st["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Accepted")
        .expect("Accepted condition");
    assert_eq!(accepted["status"], "True");
    assert_eq!(
        accepted["observedGeneration"].as_i64(),
        demo.metadata.generation
    );

    // The spec is untouched: same spec, same generation; the status subresource was written by
    // server-side apply under the agent's own field manager, which owns nothing else.
    assert_eq!(demo.data["spec"], before.data["spec"]);
    assert_eq!(demo.metadata.generation, before.metadata.generation);
    let manager = format!("veer-agent/{NODE}");
    let managed = demo.metadata.managed_fields.clone().unwrap_or_default();
    let mine: Vec<_> = managed
        .iter()
        .filter(|m| m.manager.as_deref() == Some(manager.as_str()))
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "one managedFields entry of {manager}: {managed:#?}"
    );
    let m = mine[0];
    assert_eq!(m.operation.as_deref(), Some("Apply"), "{m:#?}");
    assert_eq!(m.subresource.as_deref(), Some("status"), "{m:#?}");
    let owned: BTreeSet<&String> = m
        .fields_v1
        .as_ref()
        .and_then(|f| f.0.as_object())
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(owned, BTreeSet::from([&"f:status".to_string()]), "{m:#?}");

    // The Events passed the real validation: Warning, about the Route, from this node's agent.
    let evs = events.list(&ListParams::default()).await.unwrap().items;
    let bad: Vec<_> = evs
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad"))
        .collect();
    let reasons: BTreeSet<&str> = bad.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert_eq!(
        reasons,
        BTreeSet::from(["InvalidSpec", "UnknownFeatureGate"])
    );
    for e in &bad {
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reporting_controller.as_deref(), Some("veer-agent"));
        assert_eq!(e.reporting_instance.as_deref(), Some(NODE));
        assert_eq!(e.regarding.as_ref().unwrap().kind.as_deref(), Some("Route"));
    }

    // The agent's status file: the pod (by its real UID) managed with the demo Route.
    let (report, _) = StatusFile::load(&status_file).expect("the agent's status file");
    assert_eq!(report.mode, Mode::Kubernetes);
    assert_eq!(report.node.as_deref(), Some(NODE));
    assert_eq!(report.invalid_routes, ["bad"]);
    let pod = report
        .pods
        .iter()
        .find(|p| p.pod == "default/web-0")
        .unwrap_or_else(|| panic!("web-0 not in the status file: {:#?}", report.pods));
    assert_eq!(pod.uid, uid);
    assert_eq!(pod.routes, ["demo"], "{pod:#?}");
    let rs = pod.ruleset.expect("a ruleset");
    assert_eq!(report.rulesets[&rs], ["demo"]);
    // And the dataplane got the pod with that ruleset.
    {
        let rec = record.lock().unwrap();
        let (_, pods) = rec.rounds.last().expect("a round");
        assert!(
            pods.iter().any(|(s, r)| s.uid == uid && *r == rs),
            "{pods:?}"
        );
    }

    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("the agent stops")
        .unwrap()
        .expect("the agent loop ends without error");

    // Every request the agent made, as the server's audit log recorded it: all succeeded, and
    // all are covered by API_ACCESS.
    let audit = server.audit_events();
    let agent_reqs: Vec<&Value> = audit
        .iter()
        // A watch is audited when it starts (ResponseStarted) and when it ends.
        .filter(|e| e["user"]["username"] == AGENT_USER)
        .collect();
    assert!(!agent_reqs.is_empty(), "no audit events of {AGENT_USER}");
    let mut bad_reqs = Vec::new();
    let mut used = BTreeSet::new();
    for e in &agent_reqs {
        let o = &e["objectRef"];
        let group = o["apiGroup"].as_str().unwrap_or("");
        let resource = match o["subresource"].as_str() {
            Some(sub) => format!("{}/{sub}", o["resource"].as_str().unwrap_or("")),
            None => o["resource"].as_str().unwrap_or("").to_string(),
        };
        let verb = e["verb"].as_str().unwrap_or("");
        let code = e["responseStatus"]["code"].as_i64().unwrap_or(0);
        // The TokenRequest and access reviews of this test are not the agent's.
        if resource == "selfsubjectaccessreviews" {
            continue;
        }
        used.insert(format!("{verb} {group}/{resource}"));
        if !veer_agent::k8s::allowed(group, &resource, verb) || code >= 400 {
            bad_reqs.push(format!(
                "{verb} {group}/{resource} {} → {code}",
                e["requestURI"]
            ));
        }
    }
    assert!(
        bad_reqs.is_empty(),
        "agent requests outside API_ACCESS or refused:\n  {}",
        bad_reqs.join("\n  ")
    );
    for a in API_ACCESS.iter().filter(|a| a.verbs.contains(&"list")) {
        for verb in ["list", "watch"] {
            let want = format!("{verb} {}/{}", a.group, a.resource);
            assert!(used.contains(&want), "the agent never did {want}: {used:?}");
        }
    }
    for want in [
        "patch k8s.ovn.org/routes/status",
        "create events.k8s.io/events",
    ] {
        assert!(used.contains(want), "the agent never did {want}: {used:?}");
    }
}
