//! Kubernetes mode: `veer run --kubernetes --node-name <node>`, one agent per node (DaemonSet).
//!
//! - [`crd`]: the `Route` CRD generated from the Rust types (`veer-crdgen`,
//!   `manifests/crd.yaml`) and the status types;
//! - [`watch`]: reflectors for Routes, Services, EndpointSlices, this node's Pods, and the
//!   metadata of Namespaces, ReplicaSets, Jobs and Nodes;
//! - [`select`]: which pods a Route applies to (a pure function);
//! - [`desired`]: the desired state from the stores (a pure function): compiler inputs,
//!   rulesets and the ruleset of every pod;
//! - [`status`]: Route status by server-side apply (one entry per node) and Events;
//! - [`gc`]: removing the status entries of deleted nodes (JSON patch guarded by `test`);
//! - `testing` (cargo feature `testing`): a fake API server for the mock-API tests and the
//!   watch-latency benchmark.
//!
//! The loop ([`run`], [`run_with`]) is level-triggered: any relevant change (or the resync
//! interval, or a change in the CNI result cache) starts a round — at once after a quiet period
//! (a 5 ms coalescing window), during bursts at most one per twice the duration of a round, at
//! least 20 ms apart ([`crate::wake`]) — that
//! recomputes the whole
//! desired state from the stores, compiles it against what is applied, writes the difference,
//! and brings the managed pods (CNI sandboxes matched to API pods by UID) in line. Nothing is
//! computed before every store has listed once; after that the stores are always complete
//! snapshots (see [`watch`]), so an API outage keeps the last known state in force. Rules are
//! never cleared because the API server is away; the pinned datapath keeps running when the
//! agent itself stops. No finalizers: deleting a Route removes its entries on the next round.
//! Maps a layout migration moved aside (`<NAME>_stale`) are removed after the first round in
//! which the rules were applied and every pod was set up, as in standalone mode.

pub mod crd;
pub mod desired;
pub mod gc;
pub mod select;
pub mod status;
#[cfg(feature = "testing")]
pub mod testing;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::PodSandbox;
use crate::config::compile::{CompileError, Compiled};
use crate::dataplane::{Dataplane, DataplaneError};
use crate::node::{Done, NodeConfig, NodeDataplane, NodeError, Source, Wake};
use crate::reconcile::{ReconcileError, Reconciler};
use crate::report::{Mode, PodReport, StatusFile};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};

use crd::RouteStatus;
use desired::{Assignment, Desired, RulesetIds, Snapshot, desired_from_stores};
use status::{EventMemory, RoundView};
use watch::Reflectors;

/// Longest wait for one status write or Event.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Name of the agent as a reporting controller (Events) and field manager prefix.
pub const CONTROLLER: &str = "veer-agent";

/// One (API group, resource, verbs) the agent uses. `manifests/rbac.yaml` must grant exactly
/// these (checked by `agent/tests/manifests.rs`; the mock API server test checks that every
/// request the agent makes is covered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiAccess {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

const LIST_WATCH: &[&str] = &["list", "watch"];

/// Every API access of the agent: the reflectors list and watch, the status is applied and the
/// entries of deleted nodes are removed (`patch`), Events are created and patched (series) by
/// kube's event recorder.
pub const API_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "k8s.ovn.org",
        resource: "routes",
        verbs: LIST_WATCH,
    },
    ApiAccess {
        group: "k8s.ovn.org",
        resource: "routes/status",
        verbs: &["patch"],
    },
    ApiAccess {
        group: "",
        resource: "services",
        verbs: LIST_WATCH,
    },
    ApiAccess {
        group: "",
        resource: "pods",
        verbs: LIST_WATCH,
    },
    ApiAccess {
        group: "",
        resource: "namespaces",
        verbs: LIST_WATCH,
    },
    ApiAccess {
        group: "",
        resource: "nodes",
        verbs: LIST_WATCH,
    },
    ApiAccess {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: LIST_WATCH,
    },
    ApiAccess {
        group: "apps",
        resource: "replicasets",
        verbs: LIST_WATCH,
    },
    ApiAccess {
        group: "batch",
        resource: "jobs",
        verbs: LIST_WATCH,
    },
    ApiAccess {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
];

/// Whether [`API_ACCESS`] allows `verb` on `group`/`resource`.
pub fn allowed(group: &str, resource: &str, verb: &str) -> bool {
    API_ACCESS
        .iter()
        .any(|a| a.group == group && a.resource == resource && a.verbs.contains(&verb))
}

/// Settings of Kubernetes mode.
#[derive(Debug, Clone)]
pub struct K8sConfig {
    /// This node's name (`spec.nodeName` of its pods; the downward API gives it).
    pub node_name: String,
    /// The node loop's settings (paths, status file, metrics, resync and wake-up timing).
    pub node: NodeConfig,
    /// How long a status entry of a node that no longer exists stays before this agent's turn
    /// to remove it comes (see [`gc`]).
    pub node_gc_grace: Duration,
}

impl K8sConfig {
    /// Defaults for a node: the usual host paths, resync every 30 s, rounds 5 ms after a change
    /// and at most every 20 ms (or twice a round's duration), 30 s grace before removing the
    /// status entries of deleted nodes.
    pub fn new(node_name: impl Into<String>, bpffs_root: impl Into<PathBuf>) -> Self {
        Self {
            node_name: node_name.into(),
            node: NodeConfig::new(bpffs_root.into(), Duration::from_secs(30)),
            node_gc_grace: Duration::from_secs(30),
        }
    }
}

/// Errors that stop the agent (everything else is reported and retried).
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("no node name: pass --node-name (the DaemonSet sets it from spec.nodeName)")]
    NoNodeName,
    #[error("connecting to the Kubernetes API")]
    Client(#[from] kube::Error),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("a reflector stopped before its first list")]
    ReflectorStopped,
    #[error("the dataplane task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Connects to the API server (in-cluster or kubeconfig), loads the pinned dataplane and runs
/// until `stop` is set.
pub async fn run(cfg: K8sConfig, stop: Arc<AtomicBool>) -> Result<(), K8sError> {
    if cfg.node_name.is_empty() {
        return Err(K8sError::NoNodeName);
    }
    let client = Client::try_default().await?;
    let dp = Dataplane::load_pinned(&cfg.node.bpffs_root)?;
    let rec = Reconciler::new(dp)?;
    run_with(client, cfg, rec, stop).await
}

/// [`run`] on a new multi-threaded tokio runtime, for a synchronous `main`.
pub fn run_blocking(cfg: K8sConfig, stop: Arc<AtomicBool>) -> Result<(), K8sError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| K8sError::Task(e.to_string()))?
        .block_on(run(cfg, stop))
}

fn now_rfc3339() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    t.round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(t)
        .to_string()
}

/// The agent loop with a given client and dataplane (tests use a mock API server and a
/// dataplane double). Returns when `stop` is set.
pub async fn run_with<D: NodeDataplane>(
    client: Client,
    cfg: K8sConfig,
    dp: D,
    stop: Arc<AtomicBool>,
) -> Result<(), K8sError> {
    let node = cfg.node_name.clone();
    let refl = Reflectors::start(client.clone(), &node);
    let wake = Wake::from_notify(refl.changed.clone());
    tracing::info!(%node, "waiting for the first list of every watched kind");
    {
        let ready = refl.wait_ready();
        let mut ready = std::pin::pin!(ready);
        loop {
            tokio::select! {
                r = &mut ready => { r.map_err(|_| K8sError::ReflectorStopped)?; break; }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                }
            }
        }
    }
    tracing::info!(%node, "caches synced; reconciling");
    let source = ApiSource::new(client, node, refl, cfg.node_gc_grace);
    crate::node::run(source, dp, cfg.node, wake, stop).await?;
    Ok(())
}

/// The Kubernetes API as a [`Source`]: the reflectors' stores in, Route status and Events out.
pub struct ApiSource {
    node: String,
    client: Client,
    recorder: Recorder,
    refl: Reflectors,
    ruleset_ids: RulesetIds,
    events: EventMemory,
    gc: gc::NodeGc,
    /// Per Route: the status this node last applied (without transition times) and the status
    /// the server answered with. When the object still shows that answer and this node would
    /// apply the same again, it does not: an apiserver that prunes fields (an older CRD
    /// installed) would otherwise get a patch every round.
    written: BTreeMap<String, (RouteStatus, Option<RouteStatus>)>,
}

/// One round's reading of the stores.
pub struct ApiInputs {
    snap: Snapshot,
    desired: Desired,
    assignment: Assignment,
}

impl ApiSource {
    pub fn new(client: Client, node: String, refl: Reflectors, node_gc_grace: Duration) -> Self {
        Self {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: CONTROLLER.into(),
                    instance: Some(node.clone()),
                },
            ),
            client,
            node,
            refl,
            ruleset_ids: RulesetIds::new(),
            events: EventMemory::default(),
            gc: gc::NodeGc::new(node_gc_grace),
            written: BTreeMap::new(),
        }
    }
}

impl Source for ApiSource {
    type Inputs = ApiInputs;

    fn mode(&self) -> Mode {
        Mode::Kubernetes
    }

    fn read(&mut self, sandboxes: &[PodSandbox]) -> ApiInputs {
        let snap = self.refl.snapshot();
        let desired = desired_from_stores(&snap, &self.node, &self.ruleset_ids);
        self.ruleset_ids = desired.ruleset_ids.clone();
        let assignment = desired.assign(sandboxes);
        ApiInputs {
            snap,
            desired,
            assignment,
        }
    }

    fn compile(&self, inputs: &ApiInputs, prev: &Compiled) -> Result<Compiled, CompileError> {
        inputs.desired.compile(prev)
    }

    fn pods(&self, inputs: &ApiInputs) -> Vec<(PodSandbox, u32)> {
        // Unselected pods go along in the drain ruleset: a managed one keeps its programs until
        // its steered flows end (established connections keep their path).
        let a = &inputs.assignment;
        a.pods
            .iter()
            .cloned()
            .chain(
                a.unselected
                    .iter()
                    .map(|s| (s.clone(), crate::reconcile::DRAIN_RULESET)),
            )
            .collect()
    }

    fn warnings(&self, inputs: &ApiInputs) -> Vec<String> {
        inputs
            .desired
            .service_warnings
            .iter()
            .map(|w| format!("service: {w}"))
            .collect()
    }

    async fn finish(
        &mut self,
        inputs: ApiInputs,
        done: &Done<'_>,
        report: &mut StatusFile,
    ) -> Vec<(&'static str, usize)> {
        let ApiInputs {
            snap,
            desired,
            assignment,
        } = inputs;
        let outcomes: BTreeMap<String, PodReport> = done
            .pods
            .iter()
            .map(|o| (o.uid.clone(), o.clone()))
            .collect();
        let node = self.node.clone();
        let round = RoundView {
            node: &node,
            desired: &desired,
            assignment: &assignment,
            compiled: done.compiled,
            outcomes: &outcomes,
            round_error: done.rules_error,
        };
        // While a watch is failing the API server is likely unreachable: writing status would
        // only wait for timeouts. The next healthy round writes it.
        let health = self.refl.health.clone();
        if !health.degraded() {
            self.publish_status(&snap.routes, &round).await;
            if health.synced(watch::NODES) && !health.in_error(watch::NODES) {
                self.prune_deleted_nodes(&snap.routes).await;
            }
        }
        self.report(&health, &desired, &outcomes, report);
        vec![
            ("routes", report.invalid_routes.len()),
            ("services", desired.service_warnings.len()),
            ("watch", report.watch_errors.len()),
        ]
    }
}

impl ApiSource {
    async fn publish_status(&mut self, routes: &[Arc<crd::Route>], round: &RoundView<'_>) {
        let now = now_rfc3339();
        let names: BTreeSet<String> = routes.iter().map(|r| r.name_any()).collect();
        self.events.retain(&names);
        self.written.retain(|k, _| names.contains(k));
        for r in routes {
            let name = r.name_any();
            let Some(check) = round.desired.checks.get(&name) else {
                continue;
            };
            for (reason, note) in self.events.due(&name, check) {
                tracing::warn!(route = %name, %reason, %note, "Route problem");
                let publish = status::publish(&self.recorder, r, reason, note);
                match tokio::time::timeout(API_TIMEOUT, publish).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(route = %name, error = %e, "cannot publish Event"),
                    Err(_) => tracing::warn!(route = %name, "publishing an Event timed out"),
                }
            }
            let mine = status::route_status(r, check, round, &now);
            if !status::needs_patch(r.status.as_ref(), &mine) {
                continue;
            }
            let fingerprint = status::without_times(&mine);
            if self.written.get(&name) == Some(&(fingerprint.clone(), r.status.clone())) {
                continue;
            }
            let patch = status::patch_status(&self.client, round.node, &name, &mine);
            let Ok(result) = tokio::time::timeout(API_TIMEOUT, patch).await else {
                tracing::warn!(route = %name, "writing Route status timed out; retrying next round");
                continue;
            };
            match result {
                Ok(back) => {
                    tracing::debug!(route = %name, "status applied");
                    self.written
                        .insert(name.clone(), (fingerprint, back.status));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(route = %name, error = %e, "cannot write Route status; retrying next round")
                }
            }
        }
    }

    /// Removes the status entries of nodes that no longer exist (see [`gc`]). Call only with
    /// a listed Nodes store and healthy watches.
    async fn prune_deleted_nodes(&mut self, routes: &[Arc<crd::Route>]) {
        let live: BTreeSet<String> = self
            .refl
            .stores
            .nodes
            .state()
            .iter()
            .map(|n| n.name_any())
            .collect();
        if !live.contains(&self.node) {
            // A store without this agent's own Node is no evidence about the others.
            tracing::debug!("this node is not in the Nodes store yet; not pruning status entries");
            return;
        }
        let names: Vec<String> = routes.iter().map(|r| r.name_any()).collect();
        let due = self.gc.due(
            Instant::now(),
            &self.node,
            &live,
            names
                .iter()
                .zip(routes)
                .map(|(n, r)| (n.as_str(), r.status.as_ref())),
        );
        for p in due {
            let dead: Vec<&str> = p.entries.iter().map(|(_, n)| n.as_str()).collect();
            let call = gc::prune_status(&self.client, &self.node, &p.route, &p.entries);
            match tokio::time::timeout(API_TIMEOUT, call).await {
                Ok(Ok(_)) => {
                    tracing::info!(route = %p.route, nodes = ?dead, "status entries of deleted nodes removed")
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 422 => {
                    tracing::debug!(route = %p.route, nodes = ?dead, "status entries moved or already removed; deciding again next round")
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 404 => {}
                Ok(Err(e)) => {
                    tracing::warn!(route = %p.route, error = %e, "cannot remove status entries of deleted nodes; retrying next round")
                }
                Err(_) => {
                    tracing::warn!(route = %p.route, "removing status entries of deleted nodes timed out; retrying next round")
                }
            }
        }
    }

    /// The Kubernetes part of the round report: every pod of this node the API knows (with what
    /// the dataplane did), the Routes and rulesets, the watches' health.
    fn report(
        &self,
        health: &watch::Health,
        desired: &Desired,
        outcomes: &BTreeMap<String, PodReport>,
        r: &mut StatusFile,
    ) {
        r.node = Some(self.node.clone());
        r.ready = !health.degraded();
        r.routes = desired.routes.iter().map(|r| r.name.clone()).collect();
        r.invalid_routes = desired
            .checks
            .iter()
            .filter(|(_, c)| !c.is_valid())
            .map(|(n, _)| n.clone())
            .collect();
        r.rulesets = desired
            .rulesets
            .iter()
            .map(|r| (r.id, r.routes.iter().cloned().collect()))
            .collect();
        r.pods = desired
            .pods
            .iter()
            .map(|(uid, p)| {
                let mut report = outcomes.get(uid).cloned().unwrap_or_else(|| PodReport {
                    pod: p.view.key().to_string(),
                    uid: uid.clone(),
                    ..PodReport::default()
                });
                report.ruleset = p.ruleset;
                report.routes = p.routes.iter().cloned().collect();
                report
            })
            .collect();
        r.watch_errors = health
            .get()
            .into_iter()
            .filter(|(_, h)| h.in_error)
            .map(|(k, h)| (k.to_string(), h.last_error.unwrap_or_default()))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::Resource;

    fn gr<K: Resource<DynamicType = ()>>() -> (String, String) {
        (K::group(&()).to_string(), K::plural(&()).to_string())
    }

    #[test]
    fn api_access_lists_every_watched_kind_with_list_and_watch() {
        let watched = [
            gr::<crd::Route>(),
            gr::<Service>(),
            gr::<EndpointSlice>(),
            gr::<Pod>(),
            gr::<Namespace>(),
            gr::<Node>(),
            gr::<ReplicaSet>(),
            gr::<Job>(),
        ];
        for (g, r) in &watched {
            assert!(allowed(g, r, "list") && allowed(g, r, "watch"), "{g}/{r}");
        }
        let lw: BTreeSet<(String, String)> = API_ACCESS
            .iter()
            .filter(|a| a.verbs == LIST_WATCH)
            .map(|a| (a.group.to_string(), a.resource.to_string()))
            .collect();
        assert_eq!(lw, watched.into_iter().collect());
        assert!(allowed("k8s.ovn.org", "routes/status", "patch"));
        assert!(
            !allowed("k8s.ovn.org", "routes", "patch"),
            "never writes specs"
        );
        assert!(allowed("events.k8s.io", "events", "create"));
        assert!(!allowed("", "nodes", "patch"), "never writes Nodes");
    }

    #[test]
    fn timestamps_are_rfc3339_seconds() {
        let t = now_rfc3339();
        assert!(t.ends_with('Z') && t.len() == 20, "{t}");
    }
}
