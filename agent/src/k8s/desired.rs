//! The desired state of this node, computed from the reflector stores by a pure function,
//! [`desired_from_stores`]: the compiler's inputs (valid Routes, the Service index, the
//! rulesets) and the ruleset of every pod of the node.
//!
//! Rulesets: pods are grouped by the set of valid Routes that select them ([`super::select`]);
//! each distinct non-empty set is one [`Ruleset`]. Ids are **sticky** ([`RulesetIds`]): a set
//! keeps the id it had in the previous round, and a new set takes the lowest id ≥ 1 that the
//! previous round did not use (then any free one), so adding a Route that selects other pods
//! never renumbers existing rulesets (no rewrite of their trie entries or pods). A pod that no
//! Route selects gets no ruleset: it is not managed at all (no programs attached).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sEndpointSlice;
use kube::core::PartialObjectMeta;

use crate::config::PodSandbox;
use crate::config::compile::{self, CompileError, Compiled, Ruleset};
use crate::config::load::{LoadedRoute, Origin};
use crate::config::route::{
    FieldError, FieldWarning, KNOWN_FEATURE_GATES, NamespacedName, Route, RouteSpec,
};
use crate::config::services::{EndpointSlice, SERVICE_NAME_LABEL, Service, ServiceIndex};

use super::select::{Owners, PodView, controllers, select};

/// Copies of the reflector stores' contents at one instant (see [`super::watch::Stores`]).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub routes: Vec<Arc<Route>>,
    pub services: Vec<Arc<K8sService>>,
    pub slices: Vec<Arc<K8sEndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
    pub namespaces: Vec<Arc<PartialObjectMeta<Namespace>>>,
    pub replicasets: Vec<Arc<PartialObjectMeta<ReplicaSet>>>,
    pub jobs: Vec<Arc<PartialObjectMeta<Job>>>,
}

/// Ruleset ids by set of Route names.
pub type RulesetIds = BTreeMap<BTreeSet<String>, u32>;

/// The validation result of one Route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCheck {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Field errors: the Route is not applied when there is any.
    pub errors: Vec<FieldError>,
    /// Warnings (unknown feature gates).
    pub warnings: Vec<FieldWarning>,
}

impl RouteCheck {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// One pod of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDesire {
    pub view: PodView,
    /// Valid Routes selecting the pod.
    pub routes: BTreeSet<String>,
    /// Its ruleset (`None` when no Route selects it).
    pub ruleset: Option<u32>,
}

/// What this node should look like.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    /// Valid Routes, by name.
    pub routes: Vec<LoadedRoute>,
    /// Every Route's validation result, by name.
    pub checks: BTreeMap<String, RouteCheck>,
    pub services: ServiceIndex,
    /// Problems converting Services and EndpointSlices (bad addresses), for the log.
    pub service_warnings: Vec<String>,
    /// Rulesets in id order.
    pub rulesets: Vec<Ruleset>,
    /// The ids, to pass as `prev` next round.
    pub ruleset_ids: RulesetIds,
    /// Pods of this node, by UID.
    pub pods: BTreeMap<String, PodDesire>,
}

/// The pods to hand to the dataplane, and what could not be matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Sandboxes of selected pods, with their ruleset.
    pub pods: Vec<(PodSandbox, u32)>,
    /// UIDs of selected pods that have no sandbox in the CNI cache (yet).
    pub without_sandbox: BTreeSet<String>,
    /// Sandboxes whose pod is not known from the API (yet): not managed this round.
    pub unknown: Vec<PodSandbox>,
    /// Sandboxes of known pods no Route selects: a managed one drains its steered flows
    /// ([`DRAIN_RULESET`](crate::reconcile::DRAIN_RULESET)) before it is released.
    pub unselected: Vec<PodSandbox>,
}

impl Desired {
    /// Compiles the valid Routes for the rulesets; `prev` is what is applied now (for sticky
    /// slots and rule ids).
    pub fn compile(&self, prev: &Compiled) -> Result<Compiled, CompileError> {
        compile::compile(&self.routes, &self.rulesets, &self.services, prev)
    }

    /// Matches CNI sandboxes to pods by UID.
    pub fn assign(&self, sandboxes: &[PodSandbox]) -> Assignment {
        let mut out = Assignment::default();
        let mut seen = BTreeSet::new();
        for s in sandboxes {
            match self.pods.get(&s.uid) {
                Some(p) => {
                    seen.insert(s.uid.as_str());
                    match p.ruleset {
                        Some(rs) => out.pods.push((s.clone(), rs)),
                        None => out.unselected.push(s.clone()),
                    }
                }
                None => out.unknown.push(s.clone()),
            }
        }
        out.without_sandbox = self
            .pods
            .iter()
            .filter(|(uid, p)| p.ruleset.is_some() && !seen.contains(uid.as_str()))
            .map(|(uid, _)| uid.clone())
            .collect();
        out
    }

    /// Names of the valid Routes selecting the pod with `uid`.
    pub fn routes_of(&self, uid: &str) -> Option<&BTreeSet<String>> {
        self.pods.get(uid).map(|p| &p.routes)
    }
}

/// The `Origin` a Route from the API is given (the compiler breaks name ties by origin; API
/// names are unique).
pub fn api_origin(name: &str) -> Origin {
    Origin {
        file: PathBuf::from(format!("routes.k8s.ovn.org/{name}")),
        document: 1,
    }
}

/// Validates a Route from the API.
pub fn check_route(r: &Route) -> (RouteCheck, Option<LoadedRoute>) {
    let name = r.metadata.name.clone().unwrap_or_default();
    let generation = r.metadata.generation;
    match r.spec.check() {
        Ok(c) => (
            RouteCheck {
                generation,
                errors: vec![],
                warnings: c.warnings,
            },
            Some(LoadedRoute {
                origin: api_origin(&name),
                name,
                spec: r.spec.clone(),
                shorthand: false,
                rules: c.rules,
            }),
        ),
        Err(errors) => {
            let warnings = feature_gate_warnings(&r.spec);
            (
                RouteCheck {
                    generation,
                    errors,
                    warnings,
                },
                None,
            )
        }
    }
}

/// The warnings [`RouteSpec::check`] gives for unknown feature gates (also wanted when the
/// spec has errors).
fn feature_gate_warnings(spec: &RouteSpec) -> Vec<FieldWarning> {
    spec.feature_gate
        .keys()
        .filter(|k| !KNOWN_FEATURE_GATES.contains(&k.as_str()))
        .map(|k| FieldWarning {
            path: format!("spec.feature_gate.{k}"),
            message: "unknown feature gate, ignored".into(),
        })
        .collect()
}

/// A Kubernetes Service as the index keeps it; bad addresses are skipped and reported.
pub fn service_of(s: &K8sService, warnings: &mut Vec<String>) -> Service {
    let ns = s
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let id = NamespacedName {
        namespace: ns,
        name: s.metadata.name.clone().unwrap_or_default(),
    };
    let spec = s.spec.clone().unwrap_or_default();
    let raw: Vec<String> = match spec.cluster_ips.filter(|v| !v.is_empty()) {
        Some(v) => v,
        None => spec.cluster_ip.into_iter().collect(),
    };
    let headless = raw.iter().any(|s| s == "None");
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    if !headless {
        for a in raw.iter().filter(|a| !a.is_empty()) {
            match a.parse::<IpAddr>() {
                Ok(ip) if !cluster_ips.contains(&ip) => cluster_ips.push(ip),
                Ok(_) => {}
                Err(_) => warnings.push(format!(
                    "Service {id}: cluster IP {a:?} is not an IP address"
                )),
            }
        }
    }
    Service {
        id,
        cluster_ips,
        headless,
        external_name: spec
            .external_name
            .filter(|_| spec.type_.as_deref() == Some("ExternalName")),
    }
}

/// A Kubernetes EndpointSlice as the index keeps it; `None` for slices of no Service and FQDN
/// slices.
pub fn slice_of(s: &K8sEndpointSlice, warnings: &mut Vec<String>) -> Option<EndpointSlice> {
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))?
        .clone();
    if s.address_type == "FQDN" {
        return None;
    }
    let id = NamespacedName {
        namespace: s
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: s.metadata.name.clone().unwrap_or_default(),
    };
    let mut addresses = Vec::new();
    for e in s.endpoints.iter().flatten() {
        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        for a in &e.addresses {
            match a.parse::<IpAddr>() {
                Ok(ip) => addresses.push((ip, ready)),
                Err(_) => warnings.push(format!(
                    "EndpointSlice {id}: address {a:?} is not an IP address"
                )),
            }
        }
    }
    Some(EndpointSlice {
        id,
        service,
        addresses,
    })
}

/// Sticky ruleset ids (see the module docs).
pub fn allocate_rulesets(sets: &BTreeSet<BTreeSet<String>>, prev: &RulesetIds) -> RulesetIds {
    let mut out = RulesetIds::new();
    let mut used = BTreeSet::new();
    for s in sets {
        if let Some(&id) = prev.get(s) {
            out.insert(s.clone(), id);
            used.insert(id);
        }
    }
    let prev_used: BTreeSet<u32> = prev.values().copied().collect();
    let mut fresh = (1..u32::MAX).filter(|n| !prev_used.contains(n));
    let mut reuse = prev_used.iter().copied();
    for s in sets {
        if out.contains_key(s) {
            continue;
        }
        let id = fresh
            .by_ref()
            .find(|n| !used.contains(n))
            .or_else(|| reuse.by_ref().find(|n| !used.contains(n)))
            .expect("fewer than 2^32 rulesets");
        used.insert(id);
        out.insert(s.clone(), id);
    }
    out
}

/// The desired state from the stores (see the module docs). `node` is this node's name (pods
/// of other nodes are ignored); `prev` the ruleset ids of the previous round.
pub fn desired_from_stores(snap: &Snapshot, node: &str, prev: &RulesetIds) -> Desired {
    let mut d = Desired::default();

    let mut routes: Vec<&Route> = snap.routes.iter().map(AsRef::as_ref).collect();
    routes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for r in routes {
        let (check, loaded) = check_route(r);
        if let Some(l) = loaded {
            d.routes.push(l);
        }
        d.checks
            .insert(r.metadata.name.clone().unwrap_or_default(), check);
    }

    for s in &snap.services {
        d.services
            .insert_service(service_of(s, &mut d.service_warnings));
    }
    for s in &snap.slices {
        if let Some(s) = slice_of(s, &mut d.service_warnings) {
            d.services.insert_slice(s);
        }
    }

    let ns_labels: BTreeMap<&str, BTreeMap<String, String>> = snap
        .namespaces
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.as_deref()?;
            Some((name, n.metadata.labels.clone().unwrap_or_default()))
        })
        .collect();
    let mut owners = Owners::default();
    let key = |m: &kube::core::ObjectMeta| NamespacedName {
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
    };
    for rs in &snap.replicasets {
        owners.replicasets.insert(
            key(&rs.metadata),
            controllers(rs.metadata.owner_references.as_deref()),
        );
    }
    for j in &snap.jobs {
        owners.jobs.insert(
            key(&j.metadata),
            controllers(j.metadata.owner_references.as_deref()),
        );
    }

    let mut pods: Vec<PodDesire> = Vec::new();
    for p in &snap.pods {
        let on_node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| n == node);
        if !on_node {
            continue;
        }
        let view = PodView::from_pod(p);
        if view.uid.is_empty() {
            continue;
        }
        let workloads = owners.workloads(&view);
        let labels = ns_labels.get(view.namespace.as_str());
        let routes: BTreeSet<String> = d
            .routes
            .iter()
            .filter(|r| select(&r.spec, &view, labels, &workloads))
            .map(|r| r.name.clone())
            .collect();
        pods.push(PodDesire {
            view,
            routes,
            ruleset: None,
        });
    }

    let sets: BTreeSet<BTreeSet<String>> = pods
        .iter()
        .filter(|p| !p.routes.is_empty())
        .map(|p| p.routes.clone())
        .collect();
    d.ruleset_ids = allocate_rulesets(&sets, prev);
    let mut rulesets: Vec<Ruleset> = d
        .ruleset_ids
        .iter()
        .map(|(routes, &id)| Ruleset {
            id,
            routes: routes.clone(),
        })
        .collect();
    rulesets.sort_by_key(|r| r.id);
    d.rulesets = rulesets;
    for mut p in pods {
        p.ruleset = d.ruleset_ids.get(&p.routes).copied();
        d.pods.insert(p.view.uid.clone(), p);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ruleset_ids_are_sticky_and_fresh_ids_avoid_just_freed_ones() {
        let a = set(&["a"]);
        let ab = set(&["a", "b"]);
        let b = set(&["b"]);
        let first = allocate_rulesets(&[a.clone(), ab.clone()].into(), &RulesetIds::new());
        assert_eq!(first[&a], 1);
        assert_eq!(first[&ab], 2);
        // {a} goes, {b} comes: {a,b} keeps 2, {b} takes 3 (not the just-freed 1).
        let second = allocate_rulesets(&[ab.clone(), b.clone()].into(), &first);
        assert_eq!(second[&ab], 2);
        assert_eq!(second[&b], 3);
        // Stable when nothing changes.
        assert_eq!(allocate_rulesets(&[ab, b].into(), &second), second);
    }

    fn k8s_service(v: serde_json::Value) -> K8sService {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn services_convert_like_service_files() {
        let mut w = vec![];
        let s = service_of(
            &k8s_service(json!({"metadata": {"name": "n", "namespace": "default"},
                "spec": {"clusterIP": "10.86.69.17", "clusterIPs": ["10.86.69.17", "fd00:86::17"]}})),
            &mut w,
        );
        assert_eq!(
            s.cluster_ips,
            [
                "10.86.69.17".parse::<IpAddr>().unwrap(),
                "fd00:86::17".parse().unwrap()
            ]
        );
        let h = service_of(
            &k8s_service(json!({"metadata": {"name": "h", "namespace": "a"},
                "spec": {"clusterIP": "None", "clusterIPs": ["None"]}})),
            &mut w,
        );
        assert!(h.headless && h.cluster_ips.is_empty());
        let e = service_of(
            &k8s_service(json!({"metadata": {"name": "e", "namespace": "a"},
                "spec": {"type": "ExternalName", "externalName": "example.com"}})),
            &mut w,
        );
        assert_eq!(e.external_name.as_deref(), Some("example.com"));
        let bad = service_of(
            &k8s_service(json!({"metadata": {"name": "b", "namespace": "a"},
                "spec": {"clusterIP": "10.0.0.x"}})),
            &mut w,
        );
        assert!(bad.cluster_ips.is_empty());
        assert_eq!(
            w,
            ["Service a/b: cluster IP \"10.0.0.x\" is not an IP address"]
        );
    }

    #[test]
    fn slices_convert_with_readiness() {
        let mut w = vec![];
        let s: K8sEndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "h-1", "namespace": "a",
                "labels": {"kubernetes.io/service-name": "h"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}}]
        }))
        .unwrap();
        let s = slice_of(&s, &mut w).unwrap();
        assert_eq!(s.service, "h");
        assert_eq!(
            s.addresses,
            [
                ("10.0.0.1".parse().unwrap(), true),
                ("10.0.0.2".parse().unwrap(), false)
            ]
        );
        let orphan: K8sEndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "a"}, "addressType": "IPv4", "endpoints": []
        }))
        .unwrap();
        assert!(slice_of(&orphan, &mut w).is_none());
    }

    fn route(name: &str, spec: serde_json::Value) -> Arc<Route> {
        Arc::new(
            serde_json::from_value(json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route",
                "metadata": {"name": name, "generation": 1}, "spec": spec}))
            .unwrap(),
        )
    }

    fn pod(ns: &str, name: &str, node: &str, labels: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                    "labels": labels},
                "spec": {"nodeName": node, "containers": []},
                "status": {"phase": "Running"}
            }))
            .unwrap(),
        )
    }

    fn sandbox(uid: &str) -> PodSandbox {
        PodSandbox {
            namespace: "default".into(),
            name: uid.into(),
            uid: uid.into(),
            container_id: format!("c-{uid}"),
            netns: format!("/var/run/netns/{uid}").into(),
            file: format!("/var/lib/cni/results/{uid}-lo").into(),
        }
    }

    #[test]
    fn pods_are_grouped_by_their_set_of_routes() {
        let snap = Snapshot {
            routes: vec![
                route(
                    "all",
                    json!({"route": [{"dst": "10.1.0.0/16", "dev": "eth1"}]}),
                ),
                route(
                    "web",
                    json!({"route": [{"dst": "10.2.0.0/16", "dev": "eth1"}],
                        "podSelector": {"matchLabels": {"app": "web"}}}),
                ),
                route(
                    "bad",
                    json!({"route": [{"dst": "10.0.0.1/8", "dev": "eth1"}]}),
                ),
            ],
            pods: vec![
                pod("default", "w1", "n1", json!({"app": "web"})),
                pod("default", "w2", "n1", json!({"app": "web"})),
                pod("default", "db", "n1", json!({"app": "db"})),
                pod("default", "far", "n2", json!({"app": "web"})),
            ],
            ..Default::default()
        };
        let d = desired_from_stores(&snap, "n1", &RulesetIds::new());
        assert_eq!(
            d.routes.iter().map(|r| &r.name).collect::<Vec<_>>(),
            ["all", "web"]
        );
        assert!(!d.checks["bad"].is_valid());
        assert_eq!(d.pods.len(), 3, "pods of other nodes are ignored");
        assert_eq!(d.pods["uid-w1"].routes, set(&["all", "web"]));
        assert_eq!(d.pods["uid-w1"].ruleset, d.pods["uid-w2"].ruleset);
        assert_eq!(d.pods["uid-db"].routes, set(&["all"]));
        assert_ne!(d.pods["uid-db"].ruleset, d.pods["uid-w1"].ruleset);
        assert_eq!(d.rulesets.len(), 2);

        let c = d.compile(&Compiled::default()).unwrap();
        let rs_web = d.pods["uid-w1"].ruleset.unwrap();
        let rs_db = d.pods["uid-db"].ruleset.unwrap();
        let has = |rs: u32, dst: &str| c.entries.contains_key(&(rs, dst.parse().unwrap()));
        assert!(has(rs_web, "10.1.0.0/16") && has(rs_web, "10.2.0.0/16"));
        assert!(has(rs_db, "10.1.0.0/16") && !has(rs_db, "10.2.0.0/16"));

        let a = d.assign(&[sandbox("uid-w1"), sandbox("uid-db"), sandbox("uid-ghost")]);
        assert_eq!(
            a.pods,
            [(sandbox("uid-w1"), rs_web), (sandbox("uid-db"), rs_db)]
        );
        assert_eq!(a.without_sandbox, set(&["uid-w2"]));
        assert_eq!(a.unknown, [sandbox("uid-ghost")]);

        // Next round with the same input keeps the ids.
        let d2 = desired_from_stores(&snap, "n1", &d.ruleset_ids);
        assert_eq!(d2.ruleset_ids, d.ruleset_ids);
    }

    #[test]
    fn pods_no_route_selects_get_no_ruleset() {
        let snap = Snapshot {
            routes: vec![route(
                "web",
                json!({"route": [{"dst": "10.2.0.0/16", "dev": "eth1"}], "namespaces": ["web"]}),
            )],
            pods: vec![pod("default", "p", "n1", json!({}))],
            ..Default::default()
        };
        let d = desired_from_stores(&snap, "n1", &RulesetIds::new());
        assert_eq!(d.pods["uid-p"].ruleset, None);
        assert!(d.rulesets.is_empty());
        let a = d.assign(&[sandbox("uid-p")]);
        assert!(a.pods.is_empty() && a.unknown.is_empty() && a.without_sandbox.is_empty());
    }

    #[test]
    fn namespaces_and_owners_come_from_their_stores() {
        let ns: PartialObjectMeta<Namespace> = serde_json::from_value(json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "team-a", "labels": {"team": "a"}}
        }))
        .unwrap();
        let rs: PartialObjectMeta<ReplicaSet> = serde_json::from_value(json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "web-1", "namespace": "team-a", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d",
                 "controller": true}]}
        }))
        .unwrap();
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1-x", "namespace": "team-a", "uid": "u", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "r",
                 "controller": true}]},
            "spec": {"nodeName": "n1", "containers": []}
        }))
        .unwrap();
        let snap = Snapshot {
            routes: vec![
                route(
                    "by-ns",
                    json!({"namespaceSelector": {"matchLabels": {"team": "a"}}}),
                ),
                route(
                    "by-deploy",
                    json!({"workloads": [{"kind": "Deployment", "namespace": "team-a", "name": "web"}]}),
                ),
                route(
                    "by-other",
                    json!({"namespaceSelector": {"matchLabels": {"team": "b"}}}),
                ),
            ],
            pods: vec![Arc::new(p)],
            namespaces: vec![Arc::new(ns)],
            replicasets: vec![Arc::new(rs)],
            ..Default::default()
        };
        let d = desired_from_stores(&snap, "n1", &RulesetIds::new());
        assert_eq!(d.pods["u"].routes, set(&["by-deploy", "by-ns"]));
    }

    #[test]
    fn feature_gate_warnings_are_kept_for_valid_and_invalid_routes() {
        let ok = route("ok", json!({"feature_gate": {"x": "y"}}));
        let (c, l) = check_route(&ok);
        assert!(c.is_valid() && l.is_some());
        assert_eq!(c.warnings.len(), 1);
        let bad = route(
            "bad",
            json!({"feature_gate": {"x": "y"}, "route": [{"dst": "x", "dev": "eth1"}]}),
        );
        let (c, l) = check_route(&bad);
        assert!(!c.is_valid() && l.is_none());
        assert_eq!(c.warnings.len(), 1);
    }
}
