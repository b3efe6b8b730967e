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
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use notify::{RecursiveMode, Watcher};

use crate::{
    config::{
        RouteSet, ServiceIndex, cni, compile::ALL_PODS_RULESET, compile_all_pods, load, services,
    },
    dataplane::{Dataplane, DataplaneError},
    debug::{DebugControl, unix_now},
    metrics::Metrics,
    reconcile::{ReconcileError, Reconciler},
    report::{Mode, Publisher, Round, StatusFile},
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
    /// Where the round, attach, pod and source-error metrics go (served by the caller: see
    /// [`Metrics::start`]).
    pub metrics: Option<Arc<Metrics>>,
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
    let mut publisher = Publisher::new(cfg.status_file.clone(), cfg.metrics.clone());
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
        let route_names: Vec<String> = routes.routes().map(|r| r.name.clone()).collect();
        let mut report = StatusFile::new(Mode::Standalone, round).with_applied(rec.applied());
        // Every Route applies to every pod: one ruleset.
        report.rulesets = [(ALL_PODS_RULESET, route_names.clone())].into();
        report.pods = rec
            .reports(&sandboxes)
            .into_iter()
            .filter(|p| p.failure.is_none())
            .map(|mut p| {
                p.routes = route_names.clone();
                p
            })
            .collect();
        report.pod_failures = rec.failures.clone();
        report.routes = route_names;
        report.load_errors = load_errors.iter().chain(&svc_errors).cloned().collect();
        report.compile_error = compile_error.clone();
        report.cni_errors = cni_errors.iter().map(ToString::to_string).collect();
        report.debug_events = debug.as_ref().map(|d| d.state().clone());
        publisher.publish(Round {
            report,
            applied: rec.applied(),
            elapsed,
            source_errors: vec![
                ("routes", load_errors.len()),
                ("services", svc_errors.len()),
                ("cni", cni_errors.len()),
                ("compile", usize::from(compile_error.is_some())),
            ],
            sandboxes: &sandboxes,
        });
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
