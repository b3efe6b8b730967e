//! Standalone mode: `veer run --routes <file|dir> [--services <file|dir>]` on a node without
//! Kubernetes. Sources are files; the reconcile core is the one every mode uses.
//!
//! The loop is level-triggered: any change of a watched path (Route files, Service files, the
//! CNI result cache, the netns directory) wakes it on the leading edge ([`crate::wake`]: 5 ms
//! after a quiet period; in bursts at most one round per twice a round's duration, at least 20 ms
//! apart), and it also runs every
//! `resync` interval.
//! Each round reloads the sources, recompiles, writes the rule difference, and makes the managed
//! pods match the CNI cache. A bad Route file keeps its last good version in force; the other
//! files still apply.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use notify::{RecursiveMode, Watcher};
use serde::Serialize;

use crate::{
    cli::index::{self as rule_index, RuleIndex},
    config::{Compiled, RouteSet, ServiceIndex, cni, compile_all_pods, load, services},
    dataplane::{Dataplane, DataplaneError},
    debug::{DebugControl, DebugState, unix_now},
    metrics::Metrics,
    reconcile::{PodFailure, PodState, ReconcileError, Reconciler},
    wake::{COALESCE, MIN_INTERVAL, OwnFiles, interval_after, next_round_at},
};

/// Settings of standalone mode.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    /// Route file or directory.
    pub routes: PathBuf,
    /// Service/EndpointSlice file or directory.
    pub services: Option<PathBuf>,
    /// CNI result cache directory (`/var/lib/cni/results`).
    pub cni_dir: PathBuf,
    /// Network namespace directory (`/var/run/netns`), watched for removals.
    pub netns_dir: PathBuf,
    /// veer's bpffs directory.
    pub bpffs_root: PathBuf,
    /// Status file written after every round (read by `veer status`).
    pub status_file: Option<PathBuf>,
    /// Full resync interval.
    pub resync: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (see [`crate::metrics`]).
    pub metrics: Option<SocketAddr>,
}

/// Errors that stop the agent (everything else is reported and retried).
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("watching files")]
    Watch(#[from] notify::Error),
}

/// What the last round saw and did: written to the status file.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub mode: &'static str,
    pub round: u64,
    pub ready: bool,
    pub last_round_ms: u128,
    pub slots: Vec<(String, u16)>,
    pub rules: usize,
    pub routes: Vec<String>,
    pub load_errors: Vec<String>,
    pub compile_error: Option<String>,
    pub issues: Vec<String>,
    pub conflicts: Vec<String>,
    pub pods: Vec<&'a PodState>,
    pub pod_failures: &'a [PodFailure],
    pub cni_errors: Vec<String>,
    /// The rule index beside this file (provenance of every trie entry, read by the CLI).
    pub rule_index: Option<PathBuf>,
    /// The eBPF debug events in force (`veer debug`).
    pub debug_events: Option<DebugState>,
}

fn load_routes(set: &mut RouteSet, path: &Path) -> Vec<String> {
    if path.is_dir() {
        match load::load_dir(path) {
            Ok(results) => set
                .update_dir(results)
                .iter()
                .map(ToString::to_string)
                .collect(),
            Err(e) => vec![e.to_string()],
        }
    } else {
        match set.update_file(path.to_path_buf(), load::load_file(path)) {
            Ok(()) => Vec::new(),
            Err(es) => es.iter().map(ToString::to_string).collect(),
        }
    }
}

fn load_services(path: Option<&Path>, errors: &mut Vec<String>) -> ServiceIndex {
    let mut index = ServiceIndex::new();
    let Some(path) = path else { return index };
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| load::is_config_file(p))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    for f in files {
        match services::load_file(&f) {
            Ok(objs) => index.insert(&objs),
            Err(es) => errors.extend(es.iter().map(ToString::to_string)),
        }
    }
    index
}

/// Runs until `stop` is set. Returns only on a fatal error or stop; the datapath (pinned maps
/// and links) keeps working after the agent exits.
pub fn run(cfg: StandaloneConfig, stop: Arc<AtomicBool>) -> Result<(), StandaloneError> {
    // Metrics are not worth stopping the agent for: a bind failure is logged (and `/healthz`
    // probes then fail visibly).
    let metrics = cfg.metrics.and_then(|addr| {
        let m = Metrics::new(&cfg.bpffs_root);
        match m.serve(addr) {
            Ok(_) => Some(m),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot serve metrics; continuing without them");
                None
            }
        }
    });
    let dp = Dataplane::load_pinned(&cfg.bpffs_root)?;
    let mut rec = Reconciler::new(dp)?;
    // `veer debug on|off` writes a request beside the status file.
    let mut debug = cfg.status_file.as_deref().map(DebugControl::new);
    let (tx, rx) = mpsc::channel::<()>();
    // A managed pod's own network changes (an interface that appears after its CNI result
    // file, a dynamic attachment, an address change) wake the loop like a file change.
    let pod_tx = tx.clone();
    rec.follow_pods(Box::new(move || {
        let _ = pod_tx.send(());
    }));
    let own = OwnFiles::of_status(cfg.status_file.as_deref());
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Reads are no change (the agent opens every watched file each round, and the inotify
        // backend reports opens), nor are the agent's own writes: waking on either would loop.
        if ev.is_ok_and(|ev| own.wakes(&ev)) {
            let _ = tx.send(());
        }
    })?;
    // Watch a file's directory (editors replace files by rename).
    let watch_dir = |p: &Path| -> PathBuf {
        if p.is_dir() {
            p.to_path_buf()
        } else {
            p.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| ".".into())
        }
    };
    for p in [
        Some(&cfg.routes),
        cfg.services.as_ref(),
        Some(&cfg.cni_dir),
        Some(&cfg.netns_dir),
    ]
    .into_iter()
    .flatten()
    {
        let d = watch_dir(p);
        if let Err(e) = watcher.watch(&d, RecursiveMode::NonRecursive) {
            tracing::warn!(path = %d.display(), error = %e, "cannot watch; relying on periodic resync");
        }
    }

    let mut routes = RouteSet::new();
    let mut round = 0u64;
    let mut first = true;
    let mut stale_pending = true;
    let mut reported: Vec<String> = Vec::new();
    let mut applied_index: Option<Arc<RuleIndex>> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        round += 1;
        if let Some(d) = &mut debug {
            d.sync(&mut rec, unix_now());
        }
        let load_errors = load_routes(&mut routes, &cfg.routes);
        for e in &load_errors {
            tracing::error!(error = %e, "Route file rejected; its last good version stays in force");
        }
        let mut svc_errors = Vec::new();
        let index = load_services(cfg.services.as_deref(), &mut svc_errors);
        for e in &svc_errors {
            tracing::error!(error = %e, "Service file rejected");
        }
        let mut compile_error = None;
        match rec.compile_sticky(|prev| compile_all_pods(routes.routes(), &index, prev)) {
            Ok(c) => {
                // Logged when they change, not every round (the status file always has them).
                let now: Vec<String> = c
                    .issues
                    .iter()
                    .map(|i| format!("issue: {i}"))
                    .chain(c.conflicts.iter().map(|c| format!("conflict: {c}")))
                    .collect();
                if now != reported {
                    for i in &c.issues {
                        tracing::warn!(issue = %i, "rule not applied as written");
                    }
                    for c in &c.conflicts {
                        tracing::warn!(conflict = %c, "conflicting rules");
                    }
                    reported = now;
                }
                if let Err(e) = rec.apply_rules(c) {
                    tracing::error!(error = %e, "rules not applied; previous rules stay in force");
                    compile_error = Some(e.to_string());
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "Routes cannot be compiled; previous rules stay in force");
                compile_error = Some(e.to_string());
            }
        }
        let (sandboxes, cni_errors) = cni::scan_dir(&cfg.cni_dir);
        let before: std::collections::BTreeSet<PathBuf> =
            rec.pods().map(|p| p.netns.clone()).collect();
        rec.sync_pods(&sandboxes);
        if first {
            rec.remove_orphans();
            first = false;
        }
        // Maps a layout migration moved aside are dropped once every pod runs the new programs
        // (a pod that failed keeps the old map alive through its programs until it is retried).
        if stale_pending && rec.failures.is_empty() {
            crate::dataplane::remove_stale_pins(&cfg.bpffs_root);
            stale_pending = false;
        }
        let elapsed = started.elapsed();
        let new_index = RuleIndex::from_compiled(rec.applied());
        let index_changed = applied_index.as_deref() != Some(&new_index);
        if index_changed {
            applied_index = Some(Arc::new(new_index));
        }
        let rules = applied_index.as_ref().expect("set above");
        if let Some(m) = &metrics {
            let managed: std::collections::BTreeSet<&Path> =
                rec.pods().map(|p| p.netns.as_path()).collect();
            for s in &sandboxes {
                if !before.contains(&s.netns) && managed.contains(s.netns.as_path()) {
                    m.observe_attached(&s.file);
                }
            }
            m.observe_round(elapsed, managed.len());
            m.source_errors("routes", load_errors.len());
            m.source_errors("services", svc_errors.len());
            m.source_errors("cni", cni_errors.len());
            m.source_errors("compile", usize::from(compile_error.is_some()));
            if index_changed {
                m.set_rule_index(rules.clone());
            }
            m.set_ready();
        }
        if let Some(path) = &cfg.status_file {
            write_status(
                path,
                &rec,
                (rules, index_changed),
                round,
                elapsed,
                load_errors.into_iter().chain(svc_errors).collect(),
                compile_error,
                routes_names(&routes),
                cni_errors.iter().map(ToString::to_string).collect(),
                debug.as_ref().map(|d| d.state().clone()),
            );
        }
        tracing::debug!(round, ms = elapsed.as_millis(), "reconciled");
        // Wait for a change or the resync interval (checking `stop` often); coalesce bursts.
        let deadline = Instant::now() + cfg.resync;
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            // A debug switch is applied at once; the round after it reports it.
            if let Some(d) = &mut debug
                && d.sync(&mut rec, unix_now())
            {
                break;
            }
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            match rx.recv_timeout(slice) {
                Ok(()) => {
                    // Leading edge (see `crate::wake`): events until the round starts join it.
                    let at = next_round_at(
                        Instant::now(),
                        started,
                        COALESCE,
                        interval_after(elapsed, MIN_INTERVAL),
                    );
                    while rx
                        .recv_timeout(at.saturating_duration_since(Instant::now()))
                        .is_ok()
                    {}
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() >= deadline => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }
    Ok(())
}

fn routes_names(r: &RouteSet) -> Vec<String> {
    r.routes().map(|r| r.name.clone()).collect()
}

#[allow(clippy::too_many_arguments)]
fn write_status(
    path: &Path,
    rec: &Reconciler,
    (index, index_changed): (&RuleIndex, bool),
    round: u64,
    elapsed: Duration,
    load_errors: Vec<String>,
    compile_error: Option<String>,
    routes: Vec<String>,
    cni_errors: Vec<String>,
    debug_events: Option<DebugState>,
) {
    let c: &Compiled = rec.applied();
    let status = Status {
        mode: "standalone",
        round,
        ready: true,
        last_round_ms: elapsed.as_millis(),
        slots: c.slots.iter().map(|(n, s)| (n.to_string(), s)).collect(),
        rules: c.entries.len(),
        routes,
        load_errors,
        compile_error,
        issues: c.issues.iter().map(ToString::to_string).collect(),
        conflicts: c.conflicts.iter().map(ToString::to_string).collect(),
        pods: rec.pods().collect(),
        pod_failures: &rec.failures,
        cni_errors,
        rule_index: None,
        debug_events,
    };
    // The index first, so the status file never names an index older than itself.
    let index_path = rule_index::path_for_status(path);
    let mut status = status;
    if !index_changed && index_path.exists() {
        status.rule_index = Some(index_path);
    } else {
        match index.write_atomic(&index_path) {
            Ok(()) => status.rule_index = Some(index_path),
            Err(e) => {
                tracing::warn!(path = %index_path.display(), error = %e, "cannot write the rule index")
            }
        }
    }
    let tmp = path.with_extension("tmp");
    let ok = path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .is_ok()
        && serde_json::to_vec_pretty(&status)
            .ok()
            .is_some_and(|b| std::fs::write(&tmp, b).is_ok())
        && std::fs::rename(&tmp, path).is_ok();
    if !ok {
        tracing::warn!(path = %path.display(), "cannot write the status file");
    }
}
