//! Kubernetes mode against a fake API server (`veer_agent::k8s::testing`: kube's `Client` over
//! a `tower_test` mock service; no cluster, no BPF). Each test checks that the agent only made
//! requests `veer_agent::k8s::API_ACCESS` (and so the ClusterRole) allows.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use veer_agent::config::compile::Compiled;
use veer_agent::k8s::desired::{Desired, RulesetIds, desired_from_stores};
use veer_agent::k8s::gc::prune_status;
use veer_agent::k8s::status::{field_manager, patch_status};
use veer_agent::k8s::testing::{FakeApi, Recorded, namespace, node, pod, route, service};
use veer_agent::k8s::watch::Reflectors;
use veer_agent::k8s::{K8sConfig, crd::RouteStatus, run_with};
use veer_agent::node::testing::{DpRecord, FakeDp, write_cni_result};
use veer_agent::report::StatusFile;

const NODE: &str = "n1";

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
        api.add_kind(k);
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
    cfg.node.cni_dir = cni_dir.clone();
    cfg.node.netns_dir = netns_dir;
    cfg.node.status_file = Some(tmp.path().join("status.json"));
    cfg.node.resync = Duration::from_millis(300);
    cfg.node.coalesce = Duration::from_millis(20);

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
    let (report, _) = StatusFile::load(cfg.node.status_file.as_ref().unwrap()).unwrap();
    assert_eq!(report.mode, veer_agent::report::Mode::Kubernetes);
    assert_eq!(report.invalid_routes, ["bad"]);

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
    api.set_prune_status(true);
    seed_cluster(&api);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = K8sConfig::new(NODE, tmp.path().join("bpf"));
    cfg.node.cni_dir = tmp.path().join("cni");
    cfg.node.netns_dir = tmp.path().join("netns");
    cfg.node.resync = Duration::from_millis(100);
    cfg.node.coalesce = Duration::from_millis(10);
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
    cfg.node.cni_dir = tmp.path().join("cni");
    cfg.node.netns_dir = tmp.path().join("netns");
    std::fs::create_dir_all(&cfg.node.cni_dir).unwrap();
    write_cni_result(&cfg.node.cni_dir, "default", "web-1", "uid-web-1");
    write_cni_result(&cfg.node.cni_dir, "default", "db-1", "uid-db-1");
    cfg.node.resync = Duration::from_millis(50);
    cfg.node.coalesce = Duration::from_millis(10);
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
        [cfg.node.bpffs_root.clone()],
        "removed once, under the agent's bpffs root"
    );
    stop.store(true, Ordering::Relaxed);
    agent.await.unwrap().unwrap();
    api.assert_requests_allowed();
}

// ---------------------------------------------------------------------------------------------
// Status entries of deleted nodes.

/// The loop of node `NODE` with a dataplane double (no pods on disk), its status file, a
/// 100 ms resync and no grace before pruning.
struct Running {
    record: Arc<Mutex<DpRecord>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<(), veer_agent::k8s::K8sError>>,
    status_file: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Running {
    fn start(client: kube::Client) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = K8sConfig::new(NODE, tmp.path().join("bpf"));
        cfg.node.cni_dir = tmp.path().join("cni");
        cfg.node.netns_dir = tmp.path().join("netns");
        cfg.node.status_file = Some(tmp.path().join("status.json"));
        cfg.node.resync = Duration::from_millis(100);
        cfg.node.coalesce = Duration::from_millis(10);
        cfg.node_gc_grace = Duration::ZERO;
        let record = Arc::new(Mutex::new(DpRecord::default()));
        let dp = FakeDp {
            applied: Compiled::default(),
            record: record.clone(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_with(client, cfg.clone(), dp, stop.clone()));
        Self {
            record,
            stop,
            task,
            status_file: cfg.node.status_file.unwrap(),
            _tmp: tmp,
        }
    }

    fn rounds(&self) -> usize {
        self.record.lock().unwrap().rounds.len()
    }

    async fn more_rounds(&self, n: usize) {
        let from = self.rounds();
        eventually("more rounds", || self.rounds() >= from + n).await;
    }

    fn degraded(&self) -> bool {
        StatusFile::load(&self.status_file).is_ok_and(|(s, _)| !s.ready)
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap().unwrap();
    }
}

fn status_nodes(api: &FakeApi, route: &str) -> Vec<String> {
    api.object("routes", route).unwrap()["status"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| n["node"].as_str().unwrap().to_string())
        .collect()
}

fn json_patches(api: &FakeApi) -> Vec<Recorded> {
    api.requests()
        .into_iter()
        .filter(|r| {
            r.method == "PATCH" && r.content_type.as_deref() == Some("application/json-patch+json")
        })
        .collect()
}

/// The seed cluster, Nodes `n1`..`n3`, and the demo Route with entries of n2, n3 and of two
/// deleted nodes; the web Route with an entry of n2 only.
fn seed_with_node_entries(api: &FakeApi) {
    seed_cluster(api);
    for n in [NODE, "n2", "n3"] {
        api.put("nodes", node(n));
    }
    let mut demo = demo_route();
    demo["status"] = json!({"nodes": [
        {"node": "n2", "selected": 1, "applied": 1},
        {"node": "gone-a", "selected": 4},
        {"node": "n3", "selected": 2, "applied": 2},
        {"node": "gone-b"},
    ]});
    api.put("routes", demo);
    let mut web = web_route();
    web["status"] = json!({"nodes": [{"node": "n2", "selected": 3}]});
    api.put("routes", web);
}

#[tokio::test]
async fn status_entries_of_deleted_nodes_are_removed_by_a_guarded_json_patch() {
    let (api, client) = FakeApi::start();
    seed_with_node_entries(&api);
    let agent = Running::start(client);

    eventually("entries of deleted nodes removed", || {
        status_nodes(&api, "demo") == ["n2", "n3", NODE]
    })
    .await;
    let jp = json_patches(&api);
    assert_eq!(jp[0].path, "/apis/k8s.ovn.org/v1/routes/demo/status");
    assert_eq!(
        jp[0].body,
        json!([
            {"op": "test", "path": "/status/nodes/3/node", "value": "gone-b"},
            {"op": "remove", "path": "/status/nodes/3"},
            {"op": "test", "path": "/status/nodes/1/node", "value": "gone-a"},
            {"op": "remove", "path": "/status/nodes/1"},
        ]),
        "each removal guarded by a test of its index and node, highest index first"
    );
    assert_eq!(
        jp[0].query.get("fieldManager").map(String::as_str),
        Some("veer-agent/n1")
    );

    // Later rounds: entries of existing nodes are never touched.
    agent.more_rounds(3).await;
    for r in json_patches(&api) {
        let ops = r.body.as_array().unwrap();
        assert!(
            ops.iter()
                .filter(|o| o["op"] == "test")
                .all(|o| o["value"] == "gone-a" || o["value"] == "gone-b"),
            "{ops:?}"
        );
        assert!(ops.iter().all(|o| o["op"] == "test" || o["op"] == "remove"));
    }
    let demo = api.object("routes", "demo").unwrap();
    assert_eq!(demo["status"]["nodes"][0]["selected"], 1);
    assert_eq!(demo["status"]["nodes"][1]["applied"], 2);
    assert_eq!(status_nodes(&api, "web"), ["n2", NODE]);
    assert_eq!(
        api.object("routes", "web").unwrap()["status"]["nodes"][0]["selected"],
        3
    );

    // A node deleted while a watch is failing keeps its entry until the watches are healthy.
    api.fail_lists("routes", true);
    api.expire_watches("routes");
    eventually("a degraded round", || agent.degraded()).await;
    let patches = json_patches(&api).len();
    api.delete("nodes", "n3");
    agent.more_rounds(3).await;
    assert!(agent.degraded());
    assert_eq!(
        json_patches(&api).len(),
        patches,
        "nothing pruned while degraded"
    );
    assert_eq!(status_nodes(&api, "demo"), ["n2", "n3", NODE]);
    api.fail_lists("routes", false);
    eventually("n3's entry removed once healthy", || {
        status_nodes(&api, "demo") == ["n2", NODE]
    })
    .await;
    assert_eq!(status_nodes(&api, "web"), ["n2", NODE]);
    agent.stop().await;
    api.assert_requests_allowed();
}

#[tokio::test]
async fn nothing_is_pruned_before_the_node_store_listed() {
    let (api, client) = FakeApi::start();
    seed_with_node_entries(&api);
    api.hold_lists("nodes", true);
    let agent = Running::start(client);

    // The dataplane and the node's own status do not wait for the Nodes store.
    eventually("own entry written", || {
        status_nodes(&api, "demo").contains(&NODE.to_string())
    })
    .await;
    agent.more_rounds(3).await;
    assert!(!agent.degraded());
    assert!(
        json_patches(&api).is_empty(),
        "no Node list yet: no evidence"
    );
    assert_eq!(
        status_nodes(&api, "demo"),
        ["n2", "gone-a", "n3", "gone-b", NODE]
    );

    api.hold_lists("nodes", false);
    eventually("pruned after the list", || {
        status_nodes(&api, "demo") == ["n2", "n3", NODE]
    })
    .await;
    agent.stop().await;
    api.assert_requests_allowed();
}

#[tokio::test]
async fn a_prune_patch_for_entries_that_moved_is_refused_and_changes_nothing() {
    let (api, client) = FakeApi::start();
    let mut demo = demo_route();
    demo["status"] = json!({"nodes": [{"node": "gone"}, {"node": "n2"}]});
    api.put("routes", demo);
    // Another agent already pruned and the list moved: index 1 now holds n2.
    let err = prune_status(&client, NODE, "demo", &[(1, "gone".into())])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );
    assert_eq!(status_nodes(&api, "demo"), ["gone", "n2"]);
    let back = prune_status(&client, NODE, "demo", &[(0, "gone".into())])
        .await
        .unwrap();
    let nodes: Vec<&str> = back
        .status
        .as_ref()
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.node.as_str())
        .collect();
    assert_eq!(nodes, ["n2"]);
    assert_eq!(status_nodes(&api, "demo"), ["n2"]);
    api.assert_requests_allowed();
}

#[tokio::test]
async fn a_burst_of_events_costs_few_rounds_and_the_last_state_is_applied() {
    const N: usize = 50;
    let (api, client) = FakeApi::start();
    seed_cluster(&api);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = K8sConfig::new(NODE, tmp.path().join("bpf"));
    cfg.node.cni_dir = tmp.path().join("cni");
    cfg.node.netns_dir = tmp.path().join("netns");
    std::fs::create_dir_all(&cfg.node.cni_dir).unwrap();
    write_cni_result(&cfg.node.cni_dir, "default", "db-1", "uid-db-1");
    // The default coalescing window and minimum interval between rounds.
    cfg.node.resync = Duration::from_secs(3600);
    let record = Arc::new(Mutex::new(DpRecord::default()));
    let dp = FakeDp {
        applied: Compiled::default(),
        record: record.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let agent = tokio::spawn(run_with(client, cfg, dp, stop.clone()));
    let rounds = || record.lock().unwrap().rounds.len();
    eventually("the first round", || rounds() >= 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rounds();

    // N changes of Service default/nginx (which the demo Route steers by eth1).
    let ip = |i: usize| format!("10.86.{}.{}", 100 + i / 200, 1 + i % 200);
    // A millisecond apart: each change is delivered (the fake serves the watch, the reflector
    // updates its store and wakes the loop) and a round could run before the next.
    for i in 0..N {
        api.put(
            "services",
            service("default", "nginx", json!({"clusterIP": ip(i)})),
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let last: IpAddr = ip(N - 1).parse().unwrap();
    let has_last = |c: &Compiled| c.entries.keys().any(|(_, net)| net.addr() == last);
    eventually("the last address applied", || {
        has_last(&record.lock().unwrap().rounds.last().unwrap().0)
    })
    .await;
    // Level-triggered: once the last state is in, later rounds (if any) change nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let rec = record.lock().unwrap();
        let during = rec.rounds.len() - before;
        assert!(during >= 1);
        assert!(
            during <= N / 5,
            "{N} events cost {during} rounds: bursts are coalesced"
        );
        assert!(has_last(&rec.rounds.last().unwrap().0));
    }
    stop.store(true, Ordering::Relaxed);
    agent.await.unwrap().unwrap();
    api.assert_requests_allowed();
}

// ---------------------------------------------------------------------------------------------
// `veer debug` in Kubernetes mode.

#[tokio::test]
async fn the_loop_switches_debug_events_on_request_and_reports_them_in_its_status() {
    use veer_agent::debug::{DebugRequest, request_path, unix_now};
    let (api, client) = FakeApi::start();
    seed_cluster(&api);
    let run = Running::start(client);
    run.more_rounds(1).await;
    let debug_on = |path: &Path| {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| v["debug_events"]["on"].clone())
    };
    assert_eq!(debug_on(&run.status_file), Some(json!(false)));
    let req = request_path(&run.status_file);
    DebugRequest::on(unix_now(), Some(Duration::from_secs(600)))
        .write(&req)
        .unwrap();
    eventually("debug on in the status file", || {
        debug_on(&run.status_file) == Some(json!(true))
    })
    .await;
    DebugRequest::off(unix_now()).write(&req).unwrap();
    eventually("debug off in the status file", || {
        debug_on(&run.status_file) == Some(json!(false))
    })
    .await;
    assert_eq!(
        run.record.lock().unwrap().debug_switches,
        [true, false],
        "one switch per change, none while the request holds"
    );
    run.stop().await;
}

#[tokio::test]
async fn a_failing_node_watch_only_stops_pruning_never_the_status() {
    let (api, client) = FakeApi::start();
    seed_with_node_entries(&api);
    // As with a ClusterRole not yet updated to grant nodes list/watch.
    api.fail_lists("nodes", true);
    let agent = Running::start(client);
    eventually("own entry written", || {
        status_nodes(&api, "demo").contains(&NODE.to_string())
    })
    .await;
    agent.more_rounds(3).await;
    assert!(
        !agent.degraded(),
        "the Nodes watch is not one the dataplane needs"
    );
    assert!(json_patches(&api).is_empty(), "no Node list: no pruning");
    api.fail_lists("nodes", false);
    eventually("pruned once the Nodes list works", || {
        status_nodes(&api, "demo") == ["n2", "n3", NODE]
    })
    .await;
    agent.stop().await;
    api.assert_requests_allowed();
}
