//! Which pods a Route applies to: [`select`], a pure function of the Route, the pod, its
//! namespace's labels and its owning workloads.
//!
//! Rules (every field that is set must match; an unset field matches everything):
//! - a pod that is not [`PodView::eligible`] (hostNetwork, or finished: `Succeeded`/`Failed`)
//!   is never selected: it has no network namespace of its own to steer;
//! - `exclude` wins over everything: a pod in `exclude.namespaces`, named in `exclude.pods`, or
//!   matching `exclude.podSelector` is not selected;
//! - `podSelector`: the pod's labels match;
//! - `namespaceSelector`: the namespace's labels match; a namespace the agent has not seen is
//!   not selected (its labels are unknown);
//! - `namespaces`: the pod's namespace is listed;
//! - `pods`: the pod (`namespace/name`) is listed;
//! - `workloads`: a workload owning the pod is listed. Ownership follows `ownerReferences`
//!   (controllers only) through [`Owners`]: ReplicaSet → Deployment, Job → CronJob; a
//!   DaemonSet or StatefulSet owns its pods directly. A pod of a bare ReplicaSet or Job is
//!   owned by no listed kind.
//!
//! Pods lacking an interface a rule names are selected; the dataplane skips those rules for
//! them (reported per pod in the Route status).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::config::route::{NamespacedName, RouteSpec, WorkloadKind, WorkloadRef};

/// The part of a Pod selection looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub host_network: bool,
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`), if known.
    pub phase: Option<String>,
    /// Controller owner references: (kind, name).
    pub owners: Vec<(String, String)>,
}

impl PodView {
    /// The view of a Kubernetes Pod.
    pub fn from_pod(p: &Pod) -> Self {
        let m = &p.metadata;
        Self {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            labels: m.labels.clone().unwrap_or_default(),
            host_network: p
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false),
            phase: p.status.as_ref().and_then(|s| s.phase.clone()),
            owners: controllers(m.owner_references.as_deref()),
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> NamespacedName {
        NamespacedName {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Why the pod can never be selected, if it cannot.
    pub fn ineligible(&self) -> Option<&'static str> {
        if self.host_network {
            Some("hostNetwork pod: it shares the node's network namespace")
        } else if matches!(self.phase.as_deref(), Some("Succeeded" | "Failed")) {
            Some("pod has finished")
        } else {
            None
        }
    }

    /// Whether the pod has a network namespace of its own that may be steered.
    pub fn eligible(&self) -> bool {
        self.ineligible().is_none()
    }
}

/// The controller owner references of an object, as (kind, name). Objects with no reference
/// marked `controller: true` fall back to all references (some tools omit the flag).
pub fn controllers(refs: Option<&[OwnerReference]>) -> Vec<(String, String)> {
    let refs = refs.unwrap_or_default();
    let ctl: Vec<&OwnerReference> = refs.iter().filter(|r| r.controller == Some(true)).collect();
    let chosen: Vec<&OwnerReference> = if ctl.is_empty() {
        refs.iter().collect()
    } else {
        ctl
    };
    chosen
        .into_iter()
        .map(|r| (r.kind.clone(), r.name.clone()))
        .collect()
}

/// Owners of ReplicaSets and Jobs, for resolving a pod to its workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    /// (namespace, ReplicaSet) → its controller owners (kind, name).
    pub replicasets: BTreeMap<NamespacedName, Vec<(String, String)>>,
    /// (namespace, Job) → its controller owners (kind, name).
    pub jobs: BTreeMap<NamespacedName, Vec<(String, String)>>,
}

impl Owners {
    /// The workloads owning `pod` (each at most once, in a stable order).
    pub fn workloads(&self, pod: &PodView) -> Vec<WorkloadRef> {
        let mut out = BTreeSet::new();
        let ns = &pod.namespace;
        let key = |name: &str| NamespacedName {
            namespace: ns.clone(),
            name: name.to_string(),
        };
        for (kind, name) in &pod.owners {
            let direct = match kind.as_str() {
                "DaemonSet" => Some(WorkloadKind::DaemonSet),
                "StatefulSet" => Some(WorkloadKind::StatefulSet),
                "Job" => Some(WorkloadKind::Job),
                _ => None,
            };
            if let Some(k) = direct {
                out.insert((kind_order(k), name.clone()));
            }
            let up = match kind.as_str() {
                "ReplicaSet" => self.replicasets.get(&key(name)),
                "Job" => self.jobs.get(&key(name)),
                _ => None,
            };
            for (up_kind, up_name) in up.into_iter().flatten() {
                let k = match (kind.as_str(), up_kind.as_str()) {
                    ("ReplicaSet", "Deployment") => Some(WorkloadKind::Deployment),
                    ("Job", "CronJob") => Some(WorkloadKind::CronJob),
                    _ => None,
                };
                if let Some(k) = k {
                    out.insert((kind_order(k), up_name.clone()));
                }
            }
        }
        out.into_iter()
            .map(|(k, name)| WorkloadRef {
                kind: KINDS[k],
                namespace: ns.clone(),
                name,
            })
            .collect()
    }
}

const KINDS: [WorkloadKind; 5] = [
    WorkloadKind::Deployment,
    WorkloadKind::DaemonSet,
    WorkloadKind::StatefulSet,
    WorkloadKind::Job,
    WorkloadKind::CronJob,
];

fn kind_order(k: WorkloadKind) -> usize {
    KINDS
        .iter()
        .position(|x| *x == k)
        .expect("every kind is listed")
}

/// Whether `route` applies to `pod` (see the module docs). `namespace_labels` are the labels
/// of the pod's namespace (`None`: namespace not known); `owners` the pod's workloads
/// ([`Owners::workloads`]).
pub fn select(
    route: &RouteSpec,
    pod: &PodView,
    namespace_labels: Option<&BTreeMap<String, String>>,
    owners: &[WorkloadRef],
) -> bool {
    if !pod.eligible() {
        return false;
    }
    let ex = &route.exclude;
    if ex.namespaces.contains(&pod.namespace)
        || ex
            .pods
            .iter()
            .any(|p| p.namespace == pod.namespace && p.name == pod.name)
        || ex
            .pod_selector
            .as_ref()
            .is_some_and(|s| s.matches(&pod.labels))
    {
        return false;
    }
    if let Some(s) = &route.pod_selector
        && !s.matches(&pod.labels)
    {
        return false;
    }
    if let Some(s) = &route.namespace_selector {
        match namespace_labels {
            Some(l) if s.matches(l) => {}
            _ => return false,
        }
    }
    if !route.namespaces.is_empty() && !route.namespaces.contains(&pod.namespace) {
        return false;
    }
    if !route.pods.is_empty()
        && !route
            .pods
            .iter()
            .any(|p| p.namespace == pod.namespace && p.name == pod.name)
    {
        return false;
    }
    if !route.workloads.is_empty() && !route.workloads.iter().any(|w| owners.contains(w)) {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::route::{
        Exclude, LabelSelector, LabelSelectorRequirement, SelectorOperator,
    };

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(ns: &str, name: &str, l: &[(&str, &str)]) -> PodView {
        PodView {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: labels(l),
            phase: Some("Running".into()),
            ..Default::default()
        }
    }

    fn nn(ns: &str, name: &str) -> NamespacedName {
        NamespacedName {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn sel(l: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: labels(l),
            match_expressions: vec![],
        }
    }

    fn wl(kind: WorkloadKind, ns: &str, name: &str) -> WorkloadRef {
        WorkloadRef {
            kind,
            namespace: ns.into(),
            name: name.into(),
        }
    }

    const WEB: &[(&str, &str)] = &[("app", "web")];

    fn yes(route: &RouteSpec, p: &PodView) -> bool {
        select(route, p, Some(&labels(&[("team", "a")])), &[])
    }

    #[test]
    fn no_selection_selects_every_eligible_pod() {
        let r = RouteSpec::default();
        assert!(yes(&r, &pod("default", "a", &[])));
        assert!(select(&r, &pod("x", "a", &[]), None, &[]));
    }

    #[test]
    fn host_network_pods_are_never_selected() {
        let mut p = pod("default", "a", WEB);
        p.host_network = true;
        let r = RouteSpec {
            pods: vec![nn("default", "a")],
            pod_selector: Some(sel(WEB)),
            ..Default::default()
        };
        assert!(!yes(&r, &p));
        assert!(!yes(&RouteSpec::default(), &p));
        assert!(p.ineligible().unwrap().contains("hostNetwork"));
    }

    #[test]
    fn finished_pods_are_never_selected() {
        for phase in ["Succeeded", "Failed"] {
            let mut p = pod("default", "a", &[]);
            p.phase = Some(phase.into());
            assert!(!yes(&RouteSpec::default(), &p), "{phase}");
        }
        let mut p = pod("default", "a", &[]);
        p.phase = Some("Pending".into());
        assert!(yes(&RouteSpec::default(), &p));
        p.phase = None;
        assert!(yes(&RouteSpec::default(), &p));
    }

    #[test]
    fn pod_selector_matches_labels() {
        let r = RouteSpec {
            pod_selector: Some(sel(WEB)),
            ..Default::default()
        };
        assert!(yes(&r, &pod("default", "a", WEB)));
        assert!(!yes(&r, &pod("default", "a", &[("app", "db")])));
        assert!(!yes(&r, &pod("default", "a", &[])));
        let expr = RouteSpec {
            pod_selector: Some(LabelSelector {
                match_labels: BTreeMap::new(),
                match_expressions: vec![LabelSelectorRequirement {
                    key: "app".into(),
                    operator: SelectorOperator::NotIn,
                    values: vec!["db".into()],
                }],
            }),
            ..Default::default()
        };
        assert!(yes(&expr, &pod("default", "a", WEB)));
        assert!(yes(&expr, &pod("default", "a", &[])));
        assert!(!yes(&expr, &pod("default", "a", &[("app", "db")])));
        // The empty selector matches everything.
        let empty = RouteSpec {
            pod_selector: Some(LabelSelector::default()),
            ..Default::default()
        };
        assert!(yes(&empty, &pod("default", "a", &[])));
    }

    #[test]
    fn namespace_selector_matches_namespace_labels_and_unknown_namespaces_are_out() {
        let r = RouteSpec {
            namespace_selector: Some(sel(&[("team", "a")])),
            ..Default::default()
        };
        let p = pod("default", "a", &[]);
        assert!(select(&r, &p, Some(&labels(&[("team", "a")])), &[]));
        assert!(!select(&r, &p, Some(&labels(&[("team", "b")])), &[]));
        assert!(!select(&r, &p, None, &[]));
        let any = RouteSpec {
            namespace_selector: Some(LabelSelector::default()),
            ..Default::default()
        };
        assert!(select(&any, &p, Some(&BTreeMap::new()), &[]));
        assert!(!select(&any, &p, None, &[]));
    }

    #[test]
    fn namespaces_lists_namespaces() {
        let r = RouteSpec {
            namespaces: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        assert!(yes(&r, &pod("a", "p", &[])));
        assert!(yes(&r, &pod("b", "p", &[])));
        assert!(!yes(&r, &pod("c", "p", &[])));
    }

    #[test]
    fn pods_lists_pods_by_namespace_and_name() {
        let r = RouteSpec {
            pods: vec![nn("a", "p1")],
            ..Default::default()
        };
        assert!(yes(&r, &pod("a", "p1", &[])));
        assert!(!yes(&r, &pod("b", "p1", &[])));
        assert!(!yes(&r, &pod("a", "p2", &[])));
    }

    #[test]
    fn workloads_match_owning_workloads() {
        let r = RouteSpec {
            workloads: vec![wl(WorkloadKind::Deployment, "a", "web")],
            ..Default::default()
        };
        let p = pod("a", "web-1", &[]);
        let t = |owners: &[WorkloadRef]| select(&r, &p, None, owners);
        assert!(t(&[wl(WorkloadKind::Deployment, "a", "web")]));
        assert!(!t(&[wl(WorkloadKind::StatefulSet, "a", "web")]));
        assert!(!t(&[wl(WorkloadKind::Deployment, "b", "web")]));
        assert!(!t(&[]));
    }

    #[test]
    fn all_set_fields_must_match() {
        let r = RouteSpec {
            namespaces: vec!["a".into()],
            pod_selector: Some(sel(WEB)),
            ..Default::default()
        };
        assert!(yes(&r, &pod("a", "p", WEB)));
        assert!(!yes(&r, &pod("b", "p", WEB)));
        assert!(!yes(&r, &pod("a", "p", &[])));
        let r = RouteSpec {
            pods: vec![nn("a", "p")],
            workloads: vec![wl(WorkloadKind::DaemonSet, "a", "ds")],
            ..Default::default()
        };
        let p = pod("a", "p", &[]);
        assert!(!select(&r, &p, None, &[]));
        assert!(select(
            &r,
            &p,
            None,
            &[wl(WorkloadKind::DaemonSet, "a", "ds")]
        ));
    }

    #[test]
    fn exclusions_win() {
        let base = |exclude: Exclude| RouteSpec {
            pod_selector: Some(sel(WEB)),
            exclude,
            ..Default::default()
        };
        let p = pod("a", "p", WEB);
        assert!(yes(&base(Exclude::default()), &p));
        let ns = base(Exclude {
            namespaces: vec!["a".into()],
            ..Default::default()
        });
        assert!(!yes(&ns, &p));
        assert!(yes(&ns, &pod("b", "p", WEB)));
        let pods = base(Exclude {
            pods: vec![nn("a", "p")],
            ..Default::default()
        });
        assert!(!yes(&pods, &p));
        assert!(yes(&pods, &pod("a", "q", WEB)));
        assert!(yes(&pods, &pod("b", "p", WEB)));
        let ps = base(Exclude {
            pod_selector: Some(sel(&[("veer", "off")])),
            ..Default::default()
        });
        assert!(!yes(
            &ps,
            &pod("a", "p", &[("app", "web"), ("veer", "off")])
        ));
        assert!(yes(&ps, &p));
        // Exclusion alone narrows "every pod".
        let only = RouteSpec {
            exclude: Exclude {
                namespaces: vec!["kube-system".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(!yes(&only, &pod("kube-system", "p", &[])));
        assert!(yes(&only, &pod("default", "p", &[])));
        // Exclusion wins over an explicit listing.
        let listed = RouteSpec {
            pods: vec![nn("a", "p")],
            exclude: Exclude {
                pods: vec![nn("a", "p")],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(!yes(&listed, &p));
    }

    fn owner(kind: &str, name: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            controller,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn controllers_prefer_controller_references() {
        let refs = [
            owner("ConfigMap", "c", None),
            owner("ReplicaSet", "rs", Some(true)),
        ];
        assert_eq!(
            controllers(Some(&refs)),
            [("ReplicaSet".to_string(), "rs".to_string())]
        );
        assert_eq!(controllers(Some(&refs[..1])).len(), 1);
        assert!(controllers(None).is_empty());
    }

    #[test]
    fn owners_resolve_deployments_and_cronjobs() {
        let mut o = Owners::default();
        o.replicasets.insert(
            nn("a", "web-5d8f"),
            vec![("Deployment".into(), "web".into())],
        );
        o.replicasets.insert(nn("a", "bare"), vec![]);
        o.jobs.insert(
            nn("a", "backup-2900"),
            vec![("CronJob".into(), "backup".into())],
        );
        let mut p = pod("a", "x", &[]);
        p.owners = vec![("ReplicaSet".into(), "web-5d8f".into())];
        assert_eq!(o.workloads(&p), [wl(WorkloadKind::Deployment, "a", "web")]);
        p.owners = vec![("ReplicaSet".into(), "bare".into())];
        assert!(o.workloads(&p).is_empty());
        p.owners = vec![("ReplicaSet".into(), "unknown".into())];
        assert!(o.workloads(&p).is_empty());
        p.owners = vec![("Job".into(), "backup-2900".into())];
        assert_eq!(
            o.workloads(&p),
            [
                wl(WorkloadKind::Job, "a", "backup-2900"),
                wl(WorkloadKind::CronJob, "a", "backup")
            ]
        );
        p.owners = vec![
            ("DaemonSet".into(), "ds".into()),
            ("StatefulSet".into(), "db".into()),
        ];
        assert_eq!(
            o.workloads(&p),
            [
                wl(WorkloadKind::DaemonSet, "a", "ds"),
                wl(WorkloadKind::StatefulSet, "a", "db")
            ]
        );
        // Workload refs stay in the pod's namespace.
        let r = RouteSpec {
            workloads: vec![wl(WorkloadKind::CronJob, "a", "backup")],
            ..Default::default()
        };
        p.owners = vec![("Job".into(), "backup-2900".into())];
        assert!(select(&r, &p, None, &o.workloads(&p)));
    }

    #[test]
    fn pod_view_reads_a_pod() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "a", "uid": "u1", "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                    "uid": "x", "controller": true}]},
            "spec": {"hostNetwork": true, "containers": []},
            "status": {"phase": "Running"}
        }))
        .unwrap();
        let v = PodView::from_pod(&p);
        assert_eq!(v.key(), nn("a", "p"));
        assert_eq!(v.uid, "u1");
        assert!(v.host_network && !v.eligible());
        assert_eq!(v.labels, labels(WEB));
        assert_eq!(v.owners, [("ReplicaSet".to_string(), "rs".to_string())]);
    }
}
