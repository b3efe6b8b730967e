//! The node loop: one loop for both modes.
//!
//! A round reads the [`Source`] (Route and Service files, or the Kubernetes stores) and the CNI
//! result cache, compiles the desired node state against what is in force (sticky slots and
//! rule ids), hands rules and pods to the [`NodeDataplane`] in one apply, lets the source
//! finish its part of the report (and, in Kubernetes mode, write Route status), and hands the
//! report to the [`Publisher`] (status file, rule index, metrics). Rounds are level-triggered:
//! every round recomputes everything from the sources, so a missed event costs at most one
//! resync interval. A change wakes the loop ([`Wake`]): files the source names, the CNI cache,
//! the netns directory, a managed pod's own network ([`crate::podwatch`]), the Kubernetes
//! watches; the wake-up rule ([`crate::wake`]: leading edge after a quiet period, at most one
//! round per twice a round's duration in bursts) is applied here only.
//!
//! When the rules cannot be compiled or written the previous ones stay in force and the pods
//! are still brought in line with them, so a bad Route never stops a new pod from being set up.

pub mod dataplane;

use std::{
    collections::BTreeSet,
    future::Future,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::FutureExt;
use tokio::sync::Notify;

use crate::{
    config::{
        PodSandbox, cni,
        compile::{CompileError, Compiled},
    },
    debug::{DebugControl, unix_now},
    metrics::Metrics,
    report::{Mode, PodFailure, PodReport, Publisher, Round, StatusFile},
    wake::{OwnFiles, interval_after, next_round_at},
};
pub use dataplane::{Applied, ApplyError, NodeDataplane};
#[cfg(feature = "testing")]
pub mod testing;

/// Settings of the node loop (both modes).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// CNI result cache directory (`/var/lib/cni/results`).
    pub cni_dir: PathBuf,
    /// Network namespace directory (`/var/run/netns`), watched for removals.
    pub netns_dir: PathBuf,
    /// veer's bpffs directory.
    pub bpffs_root: PathBuf,
    /// Status file written after every round (read by `veer status`), the rule index beside it.
    pub status_file: Option<PathBuf>,
    /// Where the round, attach, pod and source-error metrics go (served by the caller: see
    /// [`Metrics::start`]).
    pub metrics: Option<Arc<Metrics>>,
    /// Full resync interval.
    pub resync: Duration,
    /// How long the round for a change waits for the changes that come with it.
    pub coalesce: Duration,
    /// The least time between the starts of two rounds.
    pub min_interval: Duration,
}

impl NodeConfig {
    /// The usual host paths (`/var/lib/cni/results`, `/var/run/netns`), no status file or
    /// metrics, the default wake-up timing ([`crate::wake`]).
    pub fn new(bpffs_root: PathBuf, resync: Duration) -> Self {
        Self {
            cni_dir: cni::RESULTS_DIR.into(),
            netns_dir: "/var/run/netns".into(),
            bpffs_root,
            status_file: None,
            metrics: None,
            resync,
            coalesce: crate::wake::COALESCE,
            min_interval: crate::wake::MIN_INTERVAL,
        }
    }
}

/// Errors that stop the loop (everything else is reported and retried).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the dataplane task failed: {0}")]
    Task(String),
}

/// What a round did, for the source to finish its part of the report.
pub struct Done<'a> {
    /// This round's compilation (none: it failed, the previous one stays in force).
    pub compiled: Option<&'a Compiled>,
    /// Every pod the dataplane was given, managed or failed.
    pub pods: &'a [PodReport],
    /// Why the rules were not compiled or written this round.
    pub rules_error: Option<&'a str>,
}

/// Where a mode's inputs come from (see the module documentation).
pub trait Source: Send {
    /// What one round read: kept from [`read`](Self::read) to [`finish`](Self::finish).
    type Inputs: Send + Sync;

    fn mode(&self) -> Mode;

    /// Paths whose changes start a round, besides the CNI cache and the netns directory.
    fn watched(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Reads this round's inputs. `sandboxes` are the CNI result cache's pods.
    fn read(&mut self, sandboxes: &[PodSandbox]) -> Self::Inputs;

    /// Compiles the inputs against `prev` (the compilation in force: sticky slots and ids).
    fn compile(&self, inputs: &Self::Inputs, prev: &Compiled) -> Result<Compiled, CompileError>;

    /// The pods to manage, each with its ruleset.
    fn pods(&self, inputs: &Self::Inputs) -> Vec<(PodSandbox, u32)>;

    /// Warnings worth logging when they change (not every round): Service problems, etc.
    fn warnings(&self, _inputs: &Self::Inputs) -> Vec<String> {
        Vec::new()
    }

    /// Fills the source's part of the report (its pods view, Routes, errors) and does its own
    /// side effects (Route status). Returns its error counts by source name (metrics).
    fn finish(
        &mut self,
        inputs: Self::Inputs,
        done: &Done<'_>,
        report: &mut StatusFile,
    ) -> impl Future<Output = Vec<(&'static str, usize)>> + Send;
}

/// Wakes the node loop: clone it into anything that sees a change.
#[derive(Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    pub fn new() -> Self {
        Self::default()
    }

    /// From an existing `Notify` (the Kubernetes reflectors' change signal).
    pub fn from_notify(n: Arc<Notify>) -> Self {
        Self(n)
    }

    /// Wakes the loop (a round starts by the wake-up rule).
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Watches `paths` (a file's directory: editors replace files by rename), waking `wake` on any
/// change but reads and the agent's own writes.
fn watch_paths(paths: &[PathBuf], own: OwnFiles, wake: Wake) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Reads are no change (every round opens every watched file, and the inotify backend
        // reports opens), nor are the agent's own writes: waking on either would loop.
        if ev.is_ok_and(|ev| own.wakes(&ev)) {
            wake.wake();
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch files; relying on periodic resync"))
    .ok()?;
    let dirs: BTreeSet<PathBuf> = paths
        .iter()
        .map(|p| {
            if p.is_dir() {
                p.clone()
            } else {
                p.parent()
                    .map(Path::to_path_buf)
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or_else(|| ".".into())
            }
        })
        .collect();
    for d in dirs {
        if let Err(e) = w.watch(&d, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(path = %d.display(), error = %e, "cannot watch; relying on periodic resync");
        }
    }
    Some(w)
}

/// The node loop (see the module documentation); returns when `stop` is set.
pub async fn run<S: Source, D: NodeDataplane>(
    mut source: S,
    mut dp: D,
    cfg: NodeConfig,
    wake: Wake,
    stop: Arc<AtomicBool>,
) -> Result<(), NodeError> {
    let mode = source.mode();
    let mut watched = source.watched();
    watched.extend([cfg.cni_dir.clone(), cfg.netns_dir.clone()]);
    let _watcher = watch_paths(
        &watched,
        OwnFiles::of_status(cfg.status_file.as_deref()),
        wake.clone(),
    );
    // A managed pod's own network changes (an interface that appears after its CNI result
    // file, a dynamic attachment, an address change) wake the loop like a file change.
    let pods_changed = wake.clone();
    dp.follow_pods(Box::new(move || pods_changed.wake()));

    let mut node = Node {
        dp: Some(dp),
        publisher: Publisher::new(cfg.status_file.clone(), cfg.metrics.clone()),
        debug: cfg.status_file.as_deref().map(DebugControl::new),
        cfg,
        round: 0,
        first: true,
        stale_pending: true,
        reported: Vec::new(),
    };
    while !stop.load(Ordering::Relaxed) {
        let started = tokio::time::Instant::now();
        // Every change so far is in this round's inputs: drop its pending wake-up (a change
        // arriving from here on wakes the loop again after the round).
        let _ = wake.0.notified().now_or_never();
        node.sync_debug().await?;
        node.round(&mut source, mode).await?;
        let took = started.elapsed();
        tracing::debug!(round = node.round, ms = took.as_millis(), "reconciled");
        let resync_at = started + node.cfg.resync;
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::select! {
                _ = wake.0.notified() => {
                    // Leading edge (see `crate::wake`): changes until the round starts join it.
                    let at = next_round_at(
                        tokio::time::Instant::now(),
                        started,
                        node.cfg.coalesce,
                        interval_after(took, node.cfg.min_interval),
                    );
                    tokio::time::sleep_until(at).await;
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    // A debug switch is applied at once; the round after it reports it.
                    if node.sync_debug().await? { break; }
                    if tokio::time::Instant::now() >= resync_at { break; }
                }
            }
        }
    }
    Ok(())
}

struct Node<D> {
    /// `None` only while a blocking apply runs.
    dp: Option<D>,
    publisher: Publisher,
    /// `veer debug on|off` requests, read beside the status file.
    debug: Option<DebugControl>,
    cfg: NodeConfig,
    round: u64,
    first: bool,
    /// `<NAME>_stale` pins of a layout migration may still exist: removed after the first
    /// round in which every pod was set up ([`NodeDataplane::remove_stale_pins`]).
    stale_pending: bool,
    /// Warnings, issues and conflicts last logged.
    reported: Vec<String>,
}

impl<D: NodeDataplane> Node<D> {
    fn dp(&self) -> &D {
        self.dp.as_ref().expect("dataplane present between rounds")
    }

    /// Applies a `veer debug` request (off the async threads: switching loads an object and
    /// enters every pod's namespace). Returns whether what is in force changed.
    async fn sync_debug(&mut self) -> Result<bool, NodeError> {
        let Some(mut debug) = self.debug.take() else {
            return Ok(false);
        };
        let mut dp = self.dp.take().expect("dataplane present between rounds");
        let joined = tokio::task::spawn_blocking(move || {
            let changed = debug.sync(&mut dp, unix_now());
            (dp, debug, changed)
        })
        .await;
        let (dp, debug, changed) = joined.map_err(|e| NodeError::Task(e.to_string()))?;
        self.dp = Some(dp);
        self.debug = Some(debug);
        Ok(changed)
    }

    /// Logs what is wrong with the inputs when it changed (the status file always has it).
    fn log_changes(&mut self, warnings: Vec<String>, compiled: Option<&Compiled>) {
        let issues = compiled.iter().flat_map(|c| {
            c.issues
                .iter()
                .map(|i| format!("issue: {i}"))
                .chain(c.conflicts.iter().map(|c| format!("conflict: {c}")))
        });
        let now: Vec<String> = warnings.into_iter().chain(issues).collect();
        if now != self.reported {
            for w in now.iter().filter(|w| !self.reported.contains(w)) {
                tracing::warn!(problem = %w, "rule not applied as written");
            }
            self.reported = now;
        }
    }

    async fn round<S: Source>(&mut self, source: &mut S, mode: Mode) -> Result<(), NodeError> {
        let started = std::time::Instant::now();
        self.round += 1;
        let (sandboxes, cni_errors) = cni::scan_dir(&self.cfg.cni_dir);
        for e in &cni_errors {
            tracing::debug!(error = %e, "CNI cache file skipped");
        }
        let inputs = source.read(&sandboxes);
        let (compiled, mut rules_error) = match self
            .dp()
            .compile_sticky(&|prev| source.compile(&inputs, prev))
        {
            Ok(c) => (Some(c), None),
            Err(e) => {
                tracing::error!(error = %e, "Routes cannot be compiled; previous rules stay in force");
                (None, Some(e.to_string()))
            }
        };
        self.log_changes(source.warnings(&inputs), compiled.as_ref());
        // Without a new compilation the one in force is applied again (no map write): the pods
        // still follow the CNI cache.
        let to_apply = compiled
            .clone()
            .unwrap_or_else(|| self.dp().applied().clone());
        let pods = source.pods(&inputs);
        let mut dp = self.dp.take().expect("dataplane present between rounds");
        let (first, stale_pending) = (self.first, self.stale_pending);
        let root = self.cfg.bpffs_root.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let applied = dp.apply(to_apply, &pods);
            if first && applied.rules_error.is_none() {
                dp.remove_orphans();
            }
            // Maps a layout migration moved aside are dropped once every pod runs the new
            // programs (a pod that failed keeps the old maps alive through its programs until
            // it is retried).
            let clean =
                applied.rules_error.is_none() && applied.pods.iter().all(|p| p.failure.is_none());
            if stale_pending && clean {
                dp.remove_stale_pins(&root);
            }
            (dp, applied, clean)
        })
        .await;
        let (dp, applied, clean) = joined.map_err(|e| NodeError::Task(e.to_string()))?;
        self.dp = Some(dp);
        if clean {
            self.stale_pending = false;
        }
        if let Some(e) = &applied.rules_error {
            tracing::error!(error = %crate::error_chain(e), "rules not applied; previous rules stay in force, retrying next round");
            rules_error.get_or_insert_with(|| crate::error_chain(e));
        } else {
            self.first = false;
        }

        let mut report = StatusFile::new(mode, self.round).with_applied(self.dp().applied());
        report.compile_error = rules_error.clone();
        report.cni_errors = cni_errors.iter().map(ToString::to_string).collect();
        report.debug_events = self.debug.as_ref().map(|d| d.state().clone());
        report.pod_failures = applied
            .pods
            .iter()
            .filter_map(|p| {
                let (namespace, name) = p.namespace_name();
                Some(PodFailure {
                    namespace: namespace.into(),
                    name: name.into(),
                    netns: p.netns.clone().unwrap_or_default(),
                    error: p.failure.clone()?,
                })
            })
            .collect();
        report.pods = applied
            .pods
            .iter()
            .filter(|p| p.failure.is_none())
            .cloned()
            .collect();
        let done = Done {
            compiled: compiled.as_ref(),
            pods: &applied.pods,
            rules_error: rules_error.as_deref(),
        };
        let mut source_errors = source.finish(inputs, &done, &mut report).await;
        source_errors.push(("cni", cni_errors.len()));
        source_errors.push(("compile", usize::from(rules_error.is_some())));
        let dp = self.dp.as_ref().expect("dataplane present between rounds");
        self.publisher.publish(Round {
            report,
            applied: dp.applied(),
            elapsed: started.elapsed(),
            source_errors,
            sandboxes: &sandboxes,
        });
        Ok(())
    }
}
