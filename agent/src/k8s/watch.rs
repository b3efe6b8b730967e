//! Reflectors: the agent's cached view of the cluster.
//!
//! One kube-runtime `watcher` + reflector per kind (see [`super::API_ACCESS`] for the exact
//! list): Routes, Services, EndpointSlices (full objects), this node's Pods (field selector
//! `spec.nodeName=<node>`), and the metadata only of Namespaces (labels), ReplicaSets and Jobs
//! (owner references) and Nodes (names: the status entries of deleted nodes are pruned, see
//! [`super::gc`]). `managedFields` are dropped before caching.
//!
//! The agent waits for every store but the Nodes store before its first round (the dataplane
//! does not depend on Nodes); the pruning waits for the Nodes store's own first list.
//!
//! Outages and relists: a store starts empty and becomes *ready* after its first complete list
//! ([`Reflectors::wait_ready`]); the agent computes nothing before every store is ready, so an
//! empty-because-not-yet-listed store never clears the maps. After that, kube-runtime's
//! reflector replaces a store's content atomically at the end of a relist (it buffers the
//! `Init…InitDone` events), so a store is always a complete snapshot — the last one — never a
//! half-listed or empty one, however long the API server is away. Errors are retried with the
//! watcher's default exponential backoff (800 ms doubling to 30 s, reset after 120 s of success)
//! and recorded in [`Health`] (an error stays recorded until the stream delivers an event
//! again).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::desired::Snapshot;
use crate::config::route::Route;
use kube::core::PartialObjectMeta;

/// The reflector stores.
#[derive(Clone)]
pub struct Stores {
    pub routes: Store<Route>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub pods: Store<Pod>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub replicasets: Store<PartialObjectMeta<ReplicaSet>>,
    pub jobs: Store<PartialObjectMeta<Job>>,
    /// Node metadata (not part of [`Stores::snapshot`]: only the status pruning uses it).
    pub nodes: Store<PartialObjectMeta<Node>>,
}

impl Stores {
    /// Copies of the stores' contents.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            routes: self.routes.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            pods: self.pods.state(),
            namespaces: self.namespaces.state(),
            replicasets: self.replicasets.state(),
            jobs: self.jobs.state(),
        }
    }
}

/// The state of one watch stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamHealth {
    /// A complete list has been received at least once (the store is ready).
    pub synced: bool,
    /// A relist is under way (the store still holds the previous complete list).
    pub relisting: bool,
    /// The last item of the stream was an error.
    pub in_error: bool,
    /// Errors so far.
    pub errors: u64,
    pub last_error: Option<String>,
}

/// The state of every watch stream, by stream name (`routes`, `pods`, …).
#[derive(Debug, Default)]
pub struct Health {
    streams: Mutex<BTreeMap<&'static str, StreamHealth>>,
}

impl Health {
    /// A copy of every stream's state.
    pub fn get(&self) -> BTreeMap<&'static str, StreamHealth> {
        self.streams.lock().expect("health lock").clone()
    }

    /// Every stream has listed once.
    pub fn all_synced(&self) -> bool {
        let s = self.streams.lock().expect("health lock");
        !s.is_empty() && s.values().all(|h| h.synced)
    }

    /// Stream `name` has listed once.
    pub fn synced(&self, name: &str) -> bool {
        self.streams
            .lock()
            .expect("health lock")
            .get(name)
            .is_some_and(|h| h.synced)
    }

    /// Some stream the dataplane depends on ended in an error (the API server is
    /// unreachable or refusing). The Nodes stream is not one: it only feeds the clean-up of
    /// deleted nodes' status entries ([`Health::in_error`] guards that), so a cluster whose
    /// RBAC does not grant it yet keeps writing status.
    pub fn degraded(&self) -> bool {
        self.streams
            .lock()
            .expect("health lock")
            .iter()
            .any(|(name, h)| h.in_error && *name != NODES)
    }

    /// Whether the last item of stream `name` was an error.
    pub fn in_error(&self, name: &str) -> bool {
        self.streams
            .lock()
            .expect("health lock")
            .get(name)
            .is_some_and(|h| h.in_error)
    }

    fn register(&self, name: &'static str) {
        self.streams
            .lock()
            .expect("health lock")
            .entry(name)
            .or_default();
    }

    fn event<K>(&self, name: &'static str, ev: &watcher::Event<K>) {
        let mut s = self.streams.lock().expect("health lock");
        let h = s.entry(name).or_default();
        h.in_error = false;
        match ev {
            watcher::Event::Init => h.relisting = true,
            watcher::Event::InitDone => {
                h.relisting = false;
                h.synced = true;
            }
            _ => {}
        }
    }

    fn error(&self, name: &'static str, e: &watcher::Error) {
        let mut s = self.streams.lock().expect("health lock");
        let h = s.entry(name).or_default();
        h.in_error = true;
        h.errors += 1;
        h.last_error = Some(e.to_string());
    }
}

/// Running reflectors: their stores, health, and a notification on every change.
pub struct Reflectors {
    pub stores: Stores,
    pub health: Arc<Health>,
    /// Notified on every change an agent round may care about (coalesced by [`Notify`]).
    pub changed: Arc<Notify>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Reflectors {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Whether an event of a Route stream should wake the agent: not for status-only changes
/// (the agents' own status writes), which leave `metadata.generation` alone.
fn route_trigger(seen: &mut BTreeMap<String, Option<i64>>, ev: &watcher::Event<Route>) -> bool {
    match ev {
        watcher::Event::Apply(r) | watcher::Event::InitApply(r) => {
            let prev = seen.insert(r.name_any(), r.metadata.generation);
            !matches!(ev, watcher::Event::Apply(_)) || prev != Some(r.metadata.generation)
        }
        watcher::Event::Delete(r) => {
            seen.remove(&r.name_any());
            true
        }
        watcher::Event::Init | watcher::Event::InitDone => true,
    }
}

/// The name of the Nodes stream in [`Health`].
pub const NODES: &str = "nodes";

/// Whether an event of the Nodes stream should wake the agent: deletions and the end of a
/// (re)list (which may reveal deletions) only. Nodes change all the time (status, heartbeats);
/// the agent's dataplane does not depend on them.
fn node_trigger<K>(ev: &watcher::Event<K>) -> bool {
    matches!(ev, watcher::Event::Delete(_) | watcher::Event::InitDone)
}

fn drive<K, S>(
    name: &'static str,
    stream: S,
    writer: Writer<K>,
    health: Arc<Health>,
    changed: Arc<Notify>,
    mut trigger: impl FnMut(&watcher::Event<K>) -> bool + Send + 'static,
) -> JoinHandle<()>
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    health.register(name);
    let stream = stream
        .modify(|o| o.managed_fields_mut().clear())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    health.event(name, &ev);
                    if trigger(&ev) {
                        changed.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = name, error = %e, "watch failed; retrying with backoff, the last complete state stays in force");
                    health.error(name, &e);
                    changed.notify_one();
                }
            }
        }
    })
}

fn full<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(api, cfg)
}

impl Reflectors {
    /// Starts every reflector on the current tokio runtime. `node` selects the Pods.
    pub fn start(client: Client, node: &str) -> Self {
        let health = Arc::new(Health::default());
        let changed = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        let all = watcher::Config::default;

        let (routes, w) = reflector::store::<Route>();
        let mut seen = BTreeMap::new();
        tasks.push(drive(
            "routes",
            full(Api::<Route>::all(client.clone()), all()),
            w,
            health.clone(),
            changed.clone(),
            move |ev| route_trigger(&mut seen, ev),
        ));
        let (services, w) = reflector::store::<Service>();
        tasks.push(drive(
            "services",
            full(Api::<Service>::all(client.clone()), all()),
            w,
            health.clone(),
            changed.clone(),
            |_| true,
        ));
        let (slices, w) = reflector::store::<EndpointSlice>();
        tasks.push(drive(
            "endpointslices",
            full(Api::<EndpointSlice>::all(client.clone()), all()),
            w,
            health.clone(),
            changed.clone(),
            |_| true,
        ));
        let (pods, w) = reflector::store::<Pod>();
        tasks.push(drive(
            "pods",
            full(
                Api::<Pod>::all(client.clone()),
                all().fields(&format!("spec.nodeName={node}")),
            ),
            w,
            health.clone(),
            changed.clone(),
            |_| true,
        ));
        let (namespaces, w) = reflector::store::<PartialObjectMeta<Namespace>>();
        tasks.push(drive(
            "namespaces",
            full(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                all(),
            ),
            w,
            health.clone(),
            changed.clone(),
            |_| true,
        ));
        let (replicasets, w) = reflector::store::<PartialObjectMeta<ReplicaSet>>();
        tasks.push(drive(
            "replicasets",
            full(
                Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
                all(),
            ),
            w,
            health.clone(),
            changed.clone(),
            |_| true,
        ));
        let (jobs, w) = reflector::store::<PartialObjectMeta<Job>>();
        tasks.push(drive(
            "jobs",
            full(Api::<PartialObjectMeta<Job>>::all(client.clone()), all()),
            w,
            health.clone(),
            changed.clone(),
            |_| true,
        ));
        let (nodes, w) = reflector::store::<PartialObjectMeta<Node>>();
        tasks.push(drive(
            NODES,
            full(Api::<PartialObjectMeta<Node>>::all(client), all()),
            w,
            health.clone(),
            changed.clone(),
            node_trigger,
        ));

        Self {
            stores: Stores {
                routes,
                services,
                slices,
                pods,
                namespaces,
                replicasets,
                jobs,
                nodes,
            },
            health,
            changed,
            tasks,
        }
    }

    /// Waits until every store has received its first complete list. Fails only when a
    /// reflector task has ended (which it does not do on its own).
    pub async fn wait_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        let s = &self.stores;
        s.routes.wait_until_ready().await?;
        s.services.wait_until_ready().await?;
        s.slices.wait_until_ready().await?;
        s.pods.wait_until_ready().await?;
        s.namespaces.wait_until_ready().await?;
        s.replicasets.wait_until_ready().await?;
        s.jobs.wait_until_ready().await?;
        Ok(())
    }

    /// Copies of the stores' contents.
    pub fn snapshot(&self) -> Snapshot {
        self.stores.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, generation: i64) -> Route {
        let mut r = Route::new(name, Default::default());
        r.metadata.generation = Some(generation);
        r
    }

    #[test]
    fn status_only_route_changes_do_not_wake_the_agent() {
        let mut seen = BTreeMap::new();
        let mut t = |ev: watcher::Event<Route>| route_trigger(&mut seen, &ev);
        assert!(t(watcher::Event::Init));
        assert!(t(watcher::Event::InitApply(route("a", 1))));
        assert!(t(watcher::Event::InitDone));
        assert!(!t(watcher::Event::Apply(route("a", 1))), "status write");
        assert!(t(watcher::Event::Apply(route("a", 2))), "spec change");
        assert!(t(watcher::Event::Apply(route("b", 1))), "new Route");
        assert!(t(watcher::Event::Delete(route("b", 1))));
        assert!(t(watcher::Event::Apply(route("b", 1))), "re-created");
    }

    #[test]
    fn only_node_deletions_and_relists_wake_the_agent() {
        let n = || PartialObjectMeta::<Node>::default();
        assert!(!node_trigger(&watcher::Event::Apply(n())));
        assert!(!node_trigger(&watcher::Event::InitApply(n())));
        assert!(!node_trigger(&watcher::Event::<Node>::Init));
        assert!(node_trigger(&watcher::Event::Delete(n())));
        assert!(node_trigger(&watcher::Event::<Node>::InitDone));
    }

    #[test]
    fn health_tracks_sync_and_errors() {
        let h = Health::default();
        h.register("pods");
        assert!(!h.all_synced() && !h.synced("pods"));
        h.event::<Pod>("pods", &watcher::Event::Init);
        h.event::<Pod>("pods", &watcher::Event::InitDone);
        assert!(h.all_synced() && !h.degraded() && h.synced("pods"));
        assert!(!h.synced("nodes"), "unknown stream");
        h.error("pods", &watcher::Error::NoResourceVersion);
        assert!(h.degraded() && h.all_synced());
        assert_eq!(h.get()["pods"].errors, 1);
        h.event::<Pod>("pods", &watcher::Event::Init);
        assert!(!h.degraded() && h.get()["pods"].relisting);
        // A failing Nodes watch (e.g. RBAC not updated yet) does not degrade the agent.
        h.register(NODES);
        h.error(NODES, &watcher::Error::NoResourceVersion);
        assert!(!h.degraded() && h.in_error(NODES) && !h.in_error("pods"));
    }
}
