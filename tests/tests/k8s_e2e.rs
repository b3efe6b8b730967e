//! Kubernetes mode end to end, without a cluster: the real agent loop
//! (`veer_agent::k8s::run_with`) and the real reconcile core on real pinned maps, fed by the
//! fake API server of `veer_agent::k8s::testing`, steering a real pod of the seed topology
//! (its own network namespaces, servers that report the source address they saw). Root only;
//! everything is removed afterwards, also when a test fails.
//!
//! What only this layer shows: a label change moves a pod between rulesets (or out of every
//! Route's selection) while an established steered connection runs, and that connection keeps
//! its path and source address until it ends; new connections follow the new selection.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use veer_agent::{
    dataplane::Dataplane,
    k8s::{
        K8sConfig,
        testing::{FakeApi, namespace, node, pod, route},
    },
    reconcile::Reconciler,
};
use veer_tests::{
    agent::{AGENT_TIMEOUT, cni_loopback},
    privileged::require_root,
    topology::{Exchanger, Pod, STEERED4, Topology, TopologyOpts, UNSTEERED4},
};

const NODE: &str = "e2e-node";

/// The agent loop in process on a thread of its own, its directories, the fake API server.
/// Field order is drop order: the loop stops before the directories go.
struct K8sAgent {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    api: FakeApi,
    status_file: PathBuf,
    root: PathBuf,
    tmp: PathBuf,
}

impl K8sAgent {
    /// Starts the loop with `pod` known to the API server (labels `labels`) and in the CNI
    /// cache, and `routes` in the API server.
    fn start(p: &Pod, labels: Value, routes: &[Value]) -> Self {
        let tag = format!("veer-k8se2e-{}-{}", std::process::id(), p.index);
        let root = Path::new("/sys/fs/bpf").join(&tag);
        let tmp = std::env::temp_dir().join(&tag);
        let _ = fs::remove_dir_all(&root);
        let _ = fs::remove_dir_all(&tmp);
        for d in ["cni", "netns"] {
            fs::create_dir_all(tmp.join(d)).expect("create directories");
        }
        let container = format!("{:0>64}", std::process::id());
        fs::write(
            tmp.join("cni").join(format!("cni-loopback-{container}-lo")),
            cni_loopback(&container, "default", "web-0", "uid-web-0", &p.path()),
        )
        .expect("write the CNI result file");
        let mut cfg = K8sConfig::new(NODE, &root);
        cfg.cni_dir = tmp.join("cni");
        cfg.netns_dir = tmp.join("netns");
        cfg.status_file = Some(tmp.join("status.json"));
        cfg.resync = Duration::from_millis(500);
        let status_file = tmp.join("status.json");

        let (api_tx, api_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let labels2 = labels.clone();
        let routes: Vec<Value> = routes.to_vec();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let (api, client) = FakeApi::start();
                api.put("namespaces", namespace("default"));
                api.put("nodes", node(NODE));
                api.put("pods", pod("default", "web-0", NODE, labels2));
                for r in routes {
                    api.put("routes", r);
                }
                for k in ["services", "endpointslices", "replicasets", "jobs"] {
                    api.add_kind(k);
                }
                api_tx.send(api).expect("hand over the fake API server");
                let dp = Dataplane::load_pinned(&cfg.bpffs_root).expect("load the dataplane");
                let rec = Reconciler::new(dp).expect("open the maps");
                if let Err(e) = veer_agent::k8s::run_with(client, cfg, rec, stop2).await {
                    panic!("agent loop failed: {e}");
                }
            });
        });
        let api = api_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the fake API server starts");
        Self {
            stop,
            thread: Some(thread),
            api,
            status_file,
            root,
            tmp,
        }
    }

    fn status(&self) -> Option<Value> {
        serde_json::from_slice(&fs::read(&self.status_file).ok()?).ok()
    }

    /// Waits until the status file's pod entry satisfies `pred`; returns it.
    fn wait_pod(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + AGENT_TIMEOUT;
        loop {
            let st = self.status();
            if let Some(p) = st
                .as_ref()
                .and_then(|s| s["pods"].as_array()?.first().cloned())
                .filter(|p| pred(p))
            {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not reached; status {st:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pod's labels changed in the API server.
    fn relabel(&self, labels: Value) {
        self.api.put("pods", pod("default", "web-0", NODE, labels));
    }
}

impl Drop for K8sAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Detaches the pinned links and drops the maps.
        let _ = fs::remove_dir_all(&self.root);
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// A Route steering the seed's `172.16.10.0/24` by `eth1` for pods labelled `app=<app>`.
fn steering_route(name: &str, app: &str) -> Value {
    route(
        name,
        json!({"podSelector": {"matchLabels": {"app": app}},
               "route": [{"dst": "172.16.10.0/24", "dev": "eth1"}]}),
    )
}

/// A Route for pods labelled `app=<app>` that steers something else (the pod stays managed,
/// in another ruleset, which does not cover `STEERED4`).
fn other_route(name: &str, app: &str) -> Value {
    route(
        name,
        json!({"podSelector": {"matchLabels": {"app": app}},
               "route": [{"dst": "172.16.99.0/24", "dev": "eth1"}]}),
    )
}

/// Starts an established connection to [`STEERED4`] and checks it is steered by `eth1`.
fn steered_stream(p: &Pod) -> Exchanger {
    let s = p.echo(STEERED4.into()).expect("connect to the echo server");
    assert_eq!(
        p.iface_of(s.seen),
        Some("eth1"),
        "the stream must start steered (source {})",
        s.seen
    );
    Exchanger::start(vec![("stream to 172.16.10.7 (by eth1)".into(), s)])
}

/// Round trips go on for a while; the stream is intact.
fn assert_stream_survives(x: Exchanger) {
    let before = x.counts()[0];
    std::thread::sleep(Duration::from_millis(600));
    let (counts, errors) = x.finish();
    assert!(
        errors.is_empty(),
        "established steered connection broken: {errors:?}"
    );
    assert!(
        counts[0] > before + 10,
        "no round trips after the change: {before} → {}",
        counts[0]
    );
}

fn ruleset(pod: &Value) -> Option<u64> {
    pod["ruleset"].as_u64()
}

/// The seed topology's pod, labelled `app=web`, managed (eth0 and eth1) by the Kubernetes loop
/// with `routes`. Field order is drop order: the agent before the namespaces.
struct Env {
    agent: K8sAgent,
    topo: Topology,
    /// The pod's entry in the agent's status file once managed.
    managed: Value,
}

impl Env {
    fn start(routes: &[Value]) -> Self {
        let topo = Topology::build(TopologyOpts::default());
        let agent = K8sAgent::start(topo.pod0(), json!({"app": "web"}), routes);
        let managed = agent.wait_pod("pod managed with eth0 and eth1", |p| {
            p["interfaces"].as_array().is_some_and(|m| m.len() == 2)
        });
        Self {
            agent,
            topo,
            managed,
        }
    }

    fn pod(&self) -> &Pod {
        self.topo.pod0()
    }
}

#[test]
fn a_route_steers_the_pods_it_selects_by_label() {
    if !require_root("a_route_steers_the_pods_it_selects_by_label") {
        return;
    }
    let env = Env::start(&[steering_route("web", "web"), other_route("db", "db")]);
    let p = env.pod();
    assert_eq!(p.tcp(STEERED4.into()).unwrap(), IpAddr::from(p.ovn4));
    assert_eq!(p.tcp(UNSTEERED4.into()).unwrap(), IpAddr::from(p.v4));
}

#[test]
fn a_pod_moved_to_another_ruleset_keeps_its_established_steered_connection() {
    if !require_root("a_pod_moved_to_another_ruleset_keeps_its_established_steered_connection") {
        return;
    }
    let env = Env::start(&[steering_route("web", "web"), other_route("db", "db")]);
    let p = env.pod();
    let stream = steered_stream(p);

    // Now the pod follows Route "db" only: another ruleset, which does not cover 172.16.10.0/24.
    env.agent.relabel(json!({"app": "db"}));
    let after = env.agent.wait_pod("pod in the db ruleset", |q| {
        ruleset(q).is_some() && ruleset(q) != ruleset(&env.managed) && q["routes"] == json!(["db"])
    });
    assert_eq!(after["interfaces"].as_array().map(Vec::len), Some(2));
    assert_stream_survives(stream);
    // New connections follow the new selection: the kernel's path.
    assert_eq!(p.tcp(STEERED4.into()).unwrap(), IpAddr::from(p.v4));
}

#[test]
fn a_pod_no_route_selects_any_more_keeps_its_established_steered_connection_then_is_released() {
    if !require_root(
        "a_pod_no_route_selects_any_more_keeps_its_established_steered_connection_then_is_released",
    ) {
        return;
    }
    let env = Env::start(&[steering_route("web", "web")]);
    let p = env.pod();
    let stream = steered_stream(p);

    env.agent.relabel(json!({"app": "none"}));
    env.agent
        .wait_pod("pod unselected, draining", |q| q["routes"] == json!([]));
    assert_stream_survives(stream);
    // Not steered any more: a new connection takes the kernel's path.
    assert_eq!(p.tcp(STEERED4.into()).unwrap(), IpAddr::from(p.v4));
    // The steered stream closed; once its flow entry is gone the pod is released.
    env.agent.wait_pod("pod released", |q| {
        q["interfaces"].as_array().is_none_or(Vec::is_empty)
    });
}
