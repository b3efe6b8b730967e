//! Kubernetes mode end to end, without a cluster: the real agent loop
//! (`veer_agent::k8s::run_with`) and the real reconcile core on real pinned maps, fed by the
//! fake API server of `veer_agent::k8s::testing`, steering a real pod of the seed topology
//! (its own network namespaces, servers that report the source address they saw). Root only;
//! everything is removed afterwards, also when a test fails.
//!
//! What only this layer shows: a label change moves a pod between rulesets (or out of every
//! Route's selection) while an established steered connection runs, and that connection keeps
//! its path and source address until it ends; new connections follow the new selection. And
//! the operator's view is the same in both modes: every read-only CLI command reads a
//! Kubernetes-mode agent as it reads a standalone one, and the metrics carry the same labels.

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
    metrics::Metrics,
    reconcile::Reconciler,
};
use veer_tests::{
    agent::{AGENT_TIMEOUT, Agent, cni_loopback, route_cr, veer_bin},
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
    /// The metrics the loop records into (not served: read with `encode`).
    metrics: Arc<Metrics>,
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
        // Before the CNI result file, so the pod's attach latency is measured.
        let metrics = Metrics::new(&root);
        let container = format!("{:0>64}", std::process::id());
        fs::write(
            tmp.join("cni").join(format!("cni-loopback-{container}-lo")),
            cni_loopback(&container, "default", "web-0", "uid-web-0", &p.path()),
        )
        .expect("write the CNI result file");
        let mut cfg = K8sConfig::new(NODE, &root);
        cfg.node.cni_dir = tmp.join("cni");
        cfg.node.netns_dir = tmp.join("netns");
        cfg.node.status_file = Some(tmp.join("status.json"));
        cfg.node.resync = Duration::from_millis(500);
        cfg.node.metrics = Some(metrics.clone());
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
                let dp = Dataplane::load_pinned(&cfg.node.bpffs_root).expect("load the dataplane");
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
            metrics,
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

/// Runs the `veer` CLI against the pins under `root` and the status file `status_file`:
/// `args` is a `-o json` command; returns its parsed output.
fn cli(root: &Path, status_file: &Path, args: &[&str]) -> Value {
    let mut c = std::process::Command::new(veer_bin());
    c.arg("--bpffs-root").arg(root).args(args);
    if args[0] != "stats" {
        c.arg("--status-file").arg(status_file);
    }
    let out = c.output().expect("run veer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "veer {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("veer {args:?}: {e}\n{stdout}"))
}

/// The read-only commands, each with `-o json`, by name.
fn read_only_commands(root: &Path, status_file: &Path) -> Vec<(&'static str, Value)> {
    let dst = STEERED4.to_string();
    let trace = [
        "trace",
        "--pod",
        "default/web-0",
        "--dst",
        &dst,
        "--proto",
        "tcp",
        "-o",
        "json",
    ];
    vec![
        ("status", cli(root, status_file, &["status", "-o", "json"])),
        ("maps", cli(root, status_file, &["maps", "-o", "json"])),
        ("flows", cli(root, status_file, &["flows", "-o", "json"])),
        ("trace", cli(root, status_file, &trace)),
        ("stats", cli(root, status_file, &["stats", "-o", "json"])),
    ]
}

/// Where `a` and `b` differ in shape: an object's keys, a value's JSON type, an array's
/// elements (compared by their first). A null matches anything (an absent optional value).
fn shape_differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Null, _) | (_, Value::Null) => {}
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => shape_differences(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k}: only in Kubernetes mode")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{path}.{k}: only in standalone mode"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            if let (Some(v), Some(w)) = (x.first(), y.first()) {
                shape_differences(&format!("{path}[0]"), v, w, out);
            }
        }
        (Value::Bool(_), Value::Bool(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_)) => {}
        _ => out.push(format!("{path}: {a} vs {b}")),
    }
}

/// What the operator reads about the pod and its rule: the same in both modes.
fn provenance(outputs: &[(&str, Value)]) -> Value {
    let get = |name: &str| &outputs.iter().find(|(n, _)| *n == name).expect(name).1;
    let status = get("status");
    let pod = status["pods"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["pod"] == "default/web-0"))
        .unwrap_or_else(|| panic!("veer status lists default/web-0: {status:#}"));
    let ifaces: Vec<&Value> = pod["interfaces"]
        .as_array()
        .map(|i| i.iter().map(|i| &i["name"]).collect())
        .unwrap_or_default();
    let rules: Vec<Value> = get("maps")["rules"]
        .as_array()
        .expect("maps rules")
        .iter()
        .map(|r| json!([r["prefix"], r["route"], r["entry"], r["dev"]]))
        .collect();
    let t = get("trace");
    json!({
        "pod": pod["pod"],
        "pod_has_cookie": pod["netns_cookie"].is_u64(),
        "pod_routes": pod["routes"],
        "interfaces": ifaces,
        "routes": status["routes"].as_array().map(|r| r.iter().map(|r| json!([r["name"], r["applied"]])).collect::<Vec<_>>()),
        "rules": rules,
        "trace": [t["verdict"], t["matched"]["prefix"], t["matched"]["route"], t["out_interface"]["name"]],
        // The steered connection's outgoing entry: its pod and interface.
        "steered_flow": get("flows")
            .as_array()
            .expect("flows")
            .iter()
            .find(|f| f["direction"] == "out" && f["dst"] == STEERED4.to_string())
            .map(|f| json!([f["pod"], f["dev"], f["kind"]])),
    })
}

/// One sample of `name` with every label in `labels` (`(key, value)`), from OpenMetrics text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (lbl, value) = match rest.strip_prefix('{') {
            Some(r) => r.rsplit_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| lbl.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

#[test]
fn the_cli_and_the_metrics_read_a_kubernetes_agent_as_they_read_a_standalone_one() {
    const T: &str = "the_cli_and_the_metrics_read_a_kubernetes_agent_as_they_read_a_standalone_one";
    if !require_root(T) {
        return;
    }
    let topo = Topology::build(TopologyOpts::default());
    let p = topo.pod0();

    let (k8s, k8s_metrics) = {
        let agent = K8sAgent::start(p, json!({"app": "web"}), &[steering_route("steer", "web")]);
        agent.wait_pod("pod managed with eth0 and eth1", |q| {
            q["interfaces"].as_array().is_some_and(|m| m.len() == 2)
        });
        let stream = steered_stream(p);
        let out = read_only_commands(&agent.root, &agent.status_file);
        drop(stream);
        (out, agent.metrics.encode())
    };

    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("its address")
    };
    let mut agent = Agent::new().with_metrics_address(metrics_addr);
    agent.write_routes(&route_cr("steer", &[("172.16.10.0/24", "eth1")], &[]));
    agent.add_pod("default", "web-0", &p.path());
    agent.start();
    agent.wait_pod_managed(&p.path(), &["eth0", "eth1"]);
    let stream = steered_stream(p);
    let standalone = read_only_commands(&agent.bpffs_root, &agent.status_file);
    drop(stream);
    let standalone_metrics = scrape(metrics_addr);

    let mut diffs = Vec::new();
    for ((name, a), (_, b)) in k8s.iter().zip(&standalone) {
        shape_differences(name, a, b, &mut diffs);
    }
    assert!(
        diffs.is_empty(),
        "the CLI's JSON differs between the modes:\n{}",
        diffs.join("\n")
    );
    let (pk, ps) = (provenance(&k8s), provenance(&standalone));
    assert_eq!(pk, ps, "pod and rule provenance differ between the modes");
    assert_eq!(pk["trace"][0], "steer", "{pk:#}");
    assert_eq!(pk["pod_has_cookie"], true, "{pk:#}");
    assert_eq!(pk["steered_flow"][0], "default/web-0", "{pk:#}");

    // Per-rule counters labelled from the rule index, round and attach metrics recorded.
    for (mode, text) in [
        ("Kubernetes", &k8s_metrics),
        ("standalone", &standalone_metrics),
    ] {
        let labels = [
            ("route", "steer"),
            ("entry", "spec.route[0]"),
            ("dev", "eth1"),
        ];
        let packets = sample(text, "veer_rule_packets_total", &labels);
        assert!(
            packets.is_some_and(|n| n > 0.0),
            "veer_rule_packets_total{labels:?} in {mode} mode: {packets:?}\n{text}"
        );
        for name in [
            "veer_reconcile_rounds_total",
            "veer_reconcile_duration_seconds_count",
            "veer_pod_attach_latency_seconds_count",
            "veer_pods_managed",
        ] {
            let v = sample(text, name, &[]);
            assert!(v.is_some_and(|n| n > 0.0), "{name} in {mode} mode: {v:?}");
        }
    }
}

/// The agent's `/metrics` (HTTP/1.0), waiting for the endpoint to come up.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + AGENT_TIMEOUT;
    loop {
        let got = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(
            |mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            },
        );
        match got {
            Ok(t) => {
                return t
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_string())
                    .unwrap_or(t);
            }
            Err(e) => assert!(Instant::now() < deadline, "scraping {addr}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
