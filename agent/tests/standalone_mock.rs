//! Standalone mode's loop without BPF or root: the real node loop and file source
//! (`veer_agent::standalone::run_with`) on a dataplane double, with Route files and a CNI result
//! cache in a temporary directory. The same double drives the Kubernetes loop's tests
//! (`k8s_mock.rs`): both modes run one loop.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use veer_agent::{
    config::compile::ALL_PODS_RULESET,
    metrics::Metrics,
    node::{
        NodeConfig,
        testing::{DpRecord, FakeDp, write_cni_result},
    },
    report::{Mode, StatusFile},
    standalone::{StandaloneConfig, StandaloneError, run_with},
};

/// The loop on a thread of its own, its directory and the double's record.
struct Running {
    record: Arc<Mutex<DpRecord>>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), StandaloneError>>>,
    cfg: StandaloneConfig,
    _tmp: tempfile::TempDir,
}

impl Running {
    /// Starts the loop with `routes` as the Route file; `resync` long, so only a change of a
    /// watched file starts a round after the first.
    fn start(routes: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["routes", "cni", "netns", "run"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let node = NodeConfig {
            cni_dir: tmp.path().join("cni"),
            netns_dir: tmp.path().join("netns"),
            status_file: Some(tmp.path().join("run/status.json")),
            metrics: Some(Metrics::new(&tmp.path().join("bpf"))),
            ..NodeConfig::new(tmp.path().join("bpf"), Duration::from_secs(600))
        };
        let cfg = StandaloneConfig {
            routes: tmp.path().join("routes/routes.yaml"),
            services: None,
            node,
        };
        std::fs::write(&cfg.routes, routes).unwrap();
        let (dp, record) = FakeDp::new();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (cfg.clone(), stop.clone());
        let thread = std::thread::spawn(move || run_with(c, dp, s));
        Self {
            record,
            metrics: cfg.node.metrics.clone().unwrap(),
            stop,
            thread: Some(thread),
            cfg,
            _tmp: tmp,
        }
    }

    fn rounds(&self) -> usize {
        self.record.lock().unwrap().rounds.len()
    }

    fn status(&self) -> Option<StatusFile> {
        StatusFile::load(self.cfg.node.status_file.as_ref().unwrap())
            .ok()
            .map(|(s, _)| s)
    }

    /// Waits until `cond` holds of the double's record and the status file (20 s at most).
    fn eventually(&self, what: &str, cond: impl Fn(&DpRecord, Option<&StatusFile>) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = self.status();
            if cond(&self.record.lock().unwrap(), st.as_ref()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status {st:#?}"
            );
            assert!(
                !self.thread.as_ref().unwrap().is_finished(),
                "the loop stopped"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write_routes(&self, text: &str) {
        let tmp = self.cfg.routes.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.cfg.routes).unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let r = t.join().expect("the loop panicked");
            if !std::thread::panicking() {
                r.expect("the loop failed");
            }
        }
    }
}

/// The prefixes the last round applied, in the all-pods ruleset.
fn last_prefixes(r: &DpRecord) -> Vec<String> {
    r.rounds
        .last()
        .map(|(c, _)| {
            c.entries
                .keys()
                .filter(|(rs, _)| *rs == ALL_PODS_RULESET)
                .map(|(_, n)| n.to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn shorthand(cidr: &str, dev: &str) -> String {
    format!(r#"[{{"route": "{cidr}", "dev": "{dev}"}}]"#)
}

#[test]
fn route_files_and_the_cni_cache_become_one_apply_and_one_report_per_round() {
    let run = Running::start(&shorthand("172.16.0.0/16", "eth1"));
    write_cni_result(&run.cfg.node.cni_dir, "default", "web-1", "uid-web-1");
    run.eventually("web-1 given to the dataplane with the rule", |r, _| {
        last_prefixes(r) == ["172.16.0.0/16"]
            && r.rounds.last().is_some_and(|(_, pods)| {
                pods.iter()
                    .any(|(s, rs)| s.name == "web-1" && *rs == ALL_PODS_RULESET)
            })
    });
    run.eventually("the report lists web-1 with its interfaces", |_, s| {
        s.is_some_and(|s| {
            s.mode == Mode::Standalone
                && s.rules == 1
                && s.pods.iter().any(|p| {
                    p.pod == "default/web-1"
                        && p.interfaces.len() == 2
                        && p.routes.len() == 1
                        && p.netns.is_some()
                })
                && s.rule_index.as_deref().is_some_and(Path::exists)
        })
    });
    let text = run.metrics.encode();
    assert!(
        text.lines().any(|l| l == "veer_pods_managed 1"),
        "pods managed in the metrics:\n{text}"
    );
    assert!(
        text.contains("veer_reconcile_rounds_total"),
        "round metrics:\n{text}"
    );
    // The first round swept orphans once.
    assert_eq!(run.record.lock().unwrap().orphan_sweeps, 1);
}

#[test]
fn a_changed_route_file_starts_a_round_without_waiting_for_the_resync() {
    let run = Running::start(&shorthand("172.16.0.0/16", "eth1"));
    run.eventually("the first rule applied", |r, _| {
        last_prefixes(r) == ["172.16.0.0/16"]
    });
    // The resync is 10 minutes away: only the file watch can start this round.
    run.write_routes(&shorthand("10.99.0.0/16", "eth1"));
    run.eventually("the new rule applied", |r, _| {
        last_prefixes(r) == ["10.99.0.0/16"]
    });
}

#[test]
fn a_bad_route_file_keeps_its_last_good_version_in_force_and_is_reported() {
    let run = Running::start(&shorthand("172.16.0.0/16", "eth1"));
    run.eventually("the first rule applied", |r, _| {
        last_prefixes(r) == ["172.16.0.0/16"]
    });
    let before = run.rounds();
    run.write_routes(r#"[{"route": "172.16.0.0/33", "dev": "eth1"}]"#);
    run.eventually("the rejection reported", |_, s| {
        s.is_some_and(|s| {
            s.load_errors
                .iter()
                .any(|e| e.contains("routes.yaml") && e.contains("172.16.0.0/33"))
        })
    });
    let r = run.record.lock().unwrap();
    assert!(r.rounds.len() > before);
    assert_eq!(
        last_prefixes(&r),
        ["172.16.0.0/16"],
        "the last good version stays in force"
    );
}

#[test]
fn a_pod_that_fails_to_be_set_up_is_reported_and_retried() {
    let run = Running::start(&shorthand("172.16.0.0/16", "eth1"));
    run.record.lock().unwrap().failing.insert("web-2".into());
    write_cni_result(&run.cfg.node.cni_dir, "default", "web-2", "uid-web-2");
    run.eventually("the failure reported", |_, s| {
        s.is_some_and(|s| {
            s.pod_failures.iter().any(|f| f.name == "web-2")
                && !s.pods.iter().any(|p| p.pod == "default/web-2")
        })
    });
    run.record.lock().unwrap().failing.clear();
    // A change of the CNI cache wakes the loop; the retried pod is managed.
    write_cni_result(&run.cfg.node.cni_dir, "default", "other", "uid-other");
    run.eventually("the pod managed after the retry", |_, s| {
        s.is_some_and(|s| s.pod_failures.is_empty() && s.managed().count() == 2)
    });
}
