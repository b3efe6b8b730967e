//! Part F: Kubernetes mode, watch event → rule in the pinned trie.
//!
//! The real agent loop (`veer_agent::k8s::run_with`) with the real `Reconciler` on real pinned
//! maps (a bpffs root of its own, `veer-bk<pid>`), against the fake API server of
//! `veer_agent::k8s::testing` (in process, no network, no cluster). One lean pod (the
//! namespaces of [`super::fanout::Lean`], `eth0` and `eth1`) has a CNI result file the agent
//! finds; one Route selects it and names a Service. Each event is either a Route change (a new
//! `/24` for `eth1`, new generation) or a Service change (a new cluster IP, a `/32` for `eth1`);
//! the latency is from the moment the fake API server sends the watch event (the response
//! carrying it is handed to the client) to the moment the entry is visible in the pinned LPM
//! trie (polled every 50 µs by exact-key lookup). Events are 150 ms apart, longer than the
//! loop's minimum interval between rounds, so each is an isolated change: the case the aim is
//! about.

use std::{
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ipnet::{IpNet, Ipv4Net};
use serde_json::{Value, json};
use veer_agent::{
    dataplane::Dataplane,
    k8s::{
        K8sConfig,
        testing::{FakeApi, namespace, node, pod, route, service},
    },
    maps::{Maps, rule4_key},
    reconcile::Reconciler,
};
use veer_common::paths;

use super::{Aim, J, Section, fanout::Lean, quantile};
use crate::agent::{self, cni_loopback};

const NODE: &str = "bench-node";
const PREFIX: &str = "veer-bk";

/// Settings of part F.
pub struct K8sOpts {
    /// Events measured (half Route changes, half Service changes).
    pub events: usize,
    /// Quiet time between events.
    pub gap: Duration,
}

impl K8sOpts {
    pub fn new(quick: bool) -> Self {
        Self {
            events: if quick { 10 } else { 50 },
            gap: Duration::from_millis(150),
        }
    }
}

/// The bpffs root and temporary directory of one run; removed on drop (also on panic) and,
/// when a killed run left them, by the next run.
struct Dirs {
    root: PathBuf,
    tmp: PathBuf,
}

fn pid_alive(pid: &str) -> bool {
    Path::new("/proc").join(pid).exists()
}

impl Dirs {
    fn new() -> Self {
        for base in [Path::new(paths::BPFFS), &std::env::temp_dir()] {
            for e in fs::read_dir(base).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name
                    .strip_prefix(PREFIX)
                    .is_some_and(|pid| !pid.is_empty() && !pid_alive(pid))
                {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let tag = format!("{PREFIX}{}", std::process::id());
        let d = Self {
            root: Path::new(paths::BPFFS).join(&tag),
            tmp: std::env::temp_dir().join(&tag),
        };
        let _ = fs::remove_dir_all(&d.root);
        let _ = fs::remove_dir_all(&d.tmp);
        for sub in ["cni", "netns"] {
            fs::create_dir_all(d.tmp.join(sub)).expect("create the bench directories");
        }
        d
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// One event: what changed and the entry that must appear.
#[derive(Clone, Copy)]
enum Change {
    Route,
    Service,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::Route => "route",
            Change::Service => "service",
        }
    }
}

fn bench_route(generation: i64, extra: Option<Ipv4Net>) -> Value {
    // One rule per interface on documentation prefixes keeps both interfaces managed.
    let mut rules = vec![
        json!({"dst": "192.0.2.0/25", "dev": "eth0"}),
        json!({"dst": "192.0.2.128/25", "dev": "eth1"}),
    ];
    if let Some(n) = extra {
        rules.push(json!({"dst": n.to_string(), "dev": "eth1"}));
    }
    let mut r = route(
        "bench",
        json!({"route": rules, "svc": [{"namespace": "bench", "name": "svc", "dev": "eth1"}]}),
    );
    r["metadata"]["generation"] = json!(generation);
    r
}

fn resource_version(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("the fake sets resourceVersion")
}

/// Waits until `net` of `ruleset` is in the pinned IPv4 trie; returns when it was seen.
fn wait_entry(maps: &Maps, ruleset: u32, net: Ipv4Net, limit: Duration) -> Option<Instant> {
    let key = rule4_key(ruleset, net);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if maps.rules4.get(&key, 0).is_ok() {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    None
}

/// Latencies in ms per change kind.
struct Measured {
    route: Vec<f64>,
    service: Vec<f64>,
    rounds: u64,
}

fn measure(o: &K8sOpts) -> Measured {
    let dirs = Dirs::new();
    let lean = Lean::build(1);
    let netns = Path::new("/var/run/netns").join(&lean.pods[0].ns);
    let uid = "uid-pod-0";
    let container_id = format!("{:0>64}", std::process::id());
    fs::write(
        dirs.tmp
            .join("cni")
            .join(format!("cni-loopback-{container_id}-lo")),
        cni_loopback(&container_id, "bench", "pod-0", uid, &netns),
    )
    .expect("write the CNI result file");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let (api, client) = FakeApi::start();
        api.put("namespaces", namespace("bench"));
        api.put("nodes", node(NODE));
        api.put("pods", pod("bench", "pod-0", NODE, json!({"app": "bench"})));
        api.put(
            "services",
            service("bench", "svc", json!({"clusterIP": "10.96.0.1"})),
        );
        api.put("routes", bench_route(1, None));
        for k in ["endpointslices", "replicasets", "jobs"] {
            api.add_kind(k);
        }

        let mut cfg = K8sConfig::new(NODE, &dirs.root);
        cfg.node.cni_dir = dirs.tmp.join("cni");
        cfg.node.netns_dir = dirs.tmp.join("netns");
        cfg.node.status_file = Some(dirs.tmp.join("status.json"));
        let dp = Dataplane::load_pinned(&dirs.root).expect("load the dataplane");
        let rec = Reconciler::new(dp).expect("reconciler");
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(veer_agent::k8s::run_with(client, cfg, rec, stop.clone()));

        // The first round: the pod is set up and the Route's rules are in the trie.
        let maps = Maps::open_pinned(&dirs.root).expect("open the pinned maps");
        let eth1_base: Ipv4Net = "192.0.2.128/25".parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let ruleset = loop {
            let found = agent::rules(&maps)
                .keys()
                .find(|(_, n)| *n == IpNet::V4(eth1_base))
                .map(|(rs, _)| *rs);
            if let Some(rs) = found {
                break rs;
            }
            assert!(
                Instant::now() < deadline && !task.is_finished(),
                "the agent did not apply the Route"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tokio::time::sleep(o.gap).await;

        let mut m = Measured {
            route: Vec::new(),
            service: Vec::new(),
            rounds: 0,
        };
        for i in 0..o.events {
            let change = if i % 2 == 0 {
                Change::Route
            } else {
                Change::Service
            };
            let (resource, obj, net) = match change {
                Change::Route => {
                    let net = Ipv4Net::new(Ipv4Addr::new(198, 19, i as u8, 0), 24).unwrap();
                    ("routes", bench_route(i as i64 + 2, Some(net)), net)
                }
                Change::Service => {
                    let ip = Ipv4Addr::new(10, 96, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
                    (
                        "services",
                        service("bench", "svc", json!({"clusterIP": ip.to_string()})),
                        Ipv4Net::new(ip, 32).unwrap(),
                    )
                }
            };
            let rv = resource_version(&api.put(resource, obj));
            let maps_ref = &maps;
            let seen = tokio::task::block_in_place(|| {
                wait_entry(maps_ref, ruleset, net, Duration::from_secs(10))
            })
            .unwrap_or_else(|| panic!("event {i} ({}) not applied in 10 s", change.name()));
            let sent = api
                .sent_at(resource, rv)
                .expect("the event was sent before it was applied");
            let ms = seen.saturating_duration_since(sent).as_secs_f64() * 1e3;
            match change {
                Change::Route => m.route.push(ms),
                Change::Service => m.service.push(ms),
            }
            tokio::time::sleep(o.gap).await;
        }
        m.rounds = fs::read(dirs.tmp.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["round"].as_u64())
            .unwrap_or(0);
        stop.store(true, Ordering::Relaxed);
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("the agent loop did not stop cleanly: {other:?}"),
        }
        m
    })
}

/// p50, p99 and max of `v` (ms).
fn dist(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    (
        quantile(&mut s, 0.5),
        quantile(&mut s, 0.99),
        quantile(&mut s, 1.0),
    )
}

/// Runs part F.
pub fn run(o: &K8sOpts) -> Section {
    let m = measure(o);
    let all: Vec<f64> = m.route.iter().chain(&m.service).copied().collect();
    let rows = [
        ("Route change", &m.route),
        ("Service change", &m.service),
        ("all", &all),
    ];
    let mut md = String::new();
    writeln!(
        md,
        "## F. Kubernetes: watch event → rule in the pinned trie\n\n\
         The agent loop of `veer run --kubernetes` (`veer_agent::k8s::run_with`, in the \
         harness's process and build profile) with the real reconciler on real pinned maps, \
         against the in-process fake API server of `veer_agent::k8s::testing`; one lean pod (as \
         in D) whose CNI result file the agent reads, one Route selecting it and naming a \
         Service. {} events, alternately a Route change (a new /24 for `eth1`, new generation) \
         and a Service change (a new cluster IP, a /32 for `eth1`), {} ms apart (isolated \
         changes). Latency = from the fake server handing the watch response with the event to \
         the client, to the entry being visible in the pinned LPM trie (exact-key lookups every \
         50 µs). The loop starts a round 5 ms after a change that follows a quiet period (during \
         bursts at most one round per twice a round's duration, at least 20 ms apart). The \
         agent ran {} rounds in all.\n",
        o.events,
        o.gap.as_millis(),
        m.rounds
    )
    .unwrap();
    writeln!(md, "| change | events | p50 ms | p99 ms | max ms |").unwrap();
    writeln!(md, "|---|---:|---:|---:|---:|").unwrap();
    let mut json_rows = Vec::new();
    for (name, v) in rows {
        let (p50, p99, max) = dist(v);
        writeln!(
            md,
            "| {name} | {} | {p50:.1} | {p99:.1} | {max:.1} |",
            v.len()
        )
        .unwrap();
        json_rows.push(J::obj([
            ("change", J::s(name)),
            ("events", J::N(v.len() as f64)),
            ("p50_ms", J::N(p50)),
            ("p99_ms", J::N(p99)),
            ("max_ms", J::N(max)),
            ("samples_ms", J::A(v.iter().map(|x| J::N(*x)).collect())),
        ]));
    }
    let (p50, p99, max) = dist(&all);
    let aims = vec![
        Aim::new(
            "watch event → rule in the pinned trie ≤ 1 s",
            format!("max {max:.1} ms over {} events", all.len()),
            max <= 1000.0,
            "not broken down: a round recomputes the whole desired state and re-syncs every pod",
        ),
        Aim::new(
            "watch event → rule in the pinned trie: aim 100 ms",
            format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
            p99 <= 100.0,
            "not broken down: a round recomputes the whole desired state and re-syncs every pod",
        ),
    ];
    let json = J::obj([
        ("events", J::N(o.events as f64)),
        ("gap_ms", J::N(o.gap.as_millis() as f64)),
        ("agent_rounds", J::N(m.rounds as f64)),
        ("rows", J::A(json_rows)),
    ]);
    Section {
        key: "k8s_watch",
        md,
        json,
        plots: Vec::new(),
        aims,
    }
}
