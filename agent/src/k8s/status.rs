//! Route status and Events.
//!
//! Each node agent writes `routes/<name>/status` by **server-side apply** with its own field
//! manager, `veer-agent/<node>` ([`field_manager`]), `force=true`. The applied configuration
//! holds:
//! - `status.status` and `status.conditions` (`Accepted`, `FeatureGatesKnown`): functions of the
//!   spec only, so every node applies the same values and they share ownership without
//!   conflict. `lastTransitionTime` is carried over from the object when the condition's status
//!   is unchanged, so the value converges too;
//! - `status.nodes`: **only this node's entry**. `nodes` is a list-map keyed by `node`, so the
//!   entry belongs to this node's manager alone and other nodes' entries are untouched (the
//!   entries of deleted nodes are removed by [`super::gc`]).
//!
//! A patch is sent only when the object's status differs from what this node would apply
//! ([`needs_patch`]), so steady state costs no writes. Events (`InvalidSpec`,
//! `UnknownFeatureGate`, both `Warning`) are published once per change of a Route's problems
//! ([`EventMemory`]), not every round.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::crd::{
    COND_ACCEPTED, COND_FEATURE_GATES, MAX_ISSUES, MAX_SKIPPED, NodeStatus, REASON_ALL_KNOWN,
    REASON_INVALID_SPEC, REASON_UNKNOWN_FEATURE_GATE, REASON_VALID, RouteCondition,
    STATUS_ACCEPTED, STATUS_INVALID, SkippedPod,
};
use super::desired::{Assignment, Desired, RouteCheck};
use crate::config::compile::{Compiled, Issue};
use crate::config::route::{API_VERSION, KIND, Route, RouteStatus};
use crate::report::PodReport;

/// Prefix of the per-node field manager.
pub const FIELD_MANAGER_PREFIX: &str = "veer-agent/";

/// The field manager of `node`'s agent: `veer-agent/<node>`.
pub fn field_manager(node: &str) -> String {
    format!("{FIELD_MANAGER_PREFIX}{node}")
}

/// What this node knows about the last apply round, for the status of every Route.
#[derive(Debug, Clone, Copy)]
pub struct RoundView<'a> {
    pub node: &'a str,
    pub desired: &'a Desired,
    pub assignment: &'a Assignment,
    /// The compilation of this round (`None` when it failed: see `round_error`).
    pub compiled: Option<&'a Compiled>,
    /// Outcomes by pod UID.
    pub outcomes: &'a BTreeMap<String, PodReport>,
    /// Why this round's rules were not applied, if they were not.
    pub round_error: Option<&'a str>,
}

fn limit(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn condition(
    current: Option<&RouteStatus>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &str,
) -> RouteCondition {
    let status = if ok { "True" } else { "False" };
    let since = current
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    RouteCondition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: limit(message, 1024),
        last_transition_time: Some(since),
        observed_generation: generation,
    }
}

/// The shared part of the status: `status` and `conditions`, from the spec check alone.
pub fn shared_status(
    current: Option<&RouteStatus>,
    check: &RouteCheck,
    now: &str,
) -> (String, Vec<RouteCondition>) {
    let gen_ = check.generation;
    let accepted = if check.is_valid() {
        condition(
            current,
            COND_ACCEPTED,
            true,
            REASON_VALID,
            "the spec is valid; its rules apply to the pods it selects".into(),
            gen_,
            now,
        )
    } else {
        let errs: Vec<String> = check.errors.iter().map(ToString::to_string).collect();
        condition(
            current,
            COND_ACCEPTED,
            false,
            REASON_INVALID_SPEC,
            format!("not applied: {}", errs.join("; ")),
            gen_,
            now,
        )
    };
    let gates = if check.warnings.is_empty() {
        condition(
            current,
            COND_FEATURE_GATES,
            true,
            REASON_ALL_KNOWN,
            String::new(),
            gen_,
            now,
        )
    } else {
        let keys: Vec<&str> = check
            .warnings
            .iter()
            .map(|w| w.path.trim_start_matches("spec.feature_gate."))
            .collect();
        condition(
            current,
            COND_FEATURE_GATES,
            false,
            REASON_UNKNOWN_FEATURE_GATE,
            format!("unknown feature gates ignored: {}", keys.join(", ")),
            gen_,
            now,
        )
    };
    let status = if check.is_valid() {
        STATUS_ACCEPTED
    } else {
        STATUS_INVALID
    };
    (status.to_string(), vec![accepted, gates])
}

/// The issues of the round that concern Route `name`.
fn issues_of(name: &str, compiled: &Compiled) -> Vec<String> {
    let mut out = BTreeSet::new();
    for i in &compiled.issues {
        match i {
            Issue::Unresolved { from, reason } if from.route == name => {
                out.insert(format!("{}: {reason}", from.path));
            }
            Issue::ViaFamily { from, ip, via } if from.route == name => {
                out.insert(format!(
                    "{}: address {ip} skipped: via {via} is of the other family",
                    from.path
                ));
            }
            Issue::OutOfRuleIds { from } if from.route == name => {
                out.insert(format!("{}: no rule id left; no counters", from.path));
            }
            _ => {}
        }
    }
    for c in &compiled.conflicts {
        for l in c.losers.iter().filter(|l| l.route == name) {
            out.insert(format!(
                "{} {}: overridden by Route {:?} {}",
                l.path, c.dst, c.winner.route, c.winner.path
            ));
        }
    }
    out.into_iter().take(MAX_ISSUES).collect()
}

/// This node's entry for Route `name`.
pub fn node_status(name: &str, check: &RouteCheck, round: &RoundView<'_>) -> NodeStatus {
    let mut st = NodeStatus {
        node: round.node.to_string(),
        observed_generation: check.generation,
        ..Default::default()
    };
    if !check.is_valid() {
        return st;
    }
    let devs: BTreeSet<&str> = round
        .desired
        .routes
        .iter()
        .find(|r| r.name == name)
        .map(|r| r.rules.iter().map(|x| x.dev.as_str()).collect())
        .unwrap_or_default();
    let mut selected: Vec<_> = round
        .desired
        .pods
        .iter()
        .filter(|(_, p)| p.routes.contains(name))
        .collect();
    selected.sort_by_key(|(_, p)| p.view.key());
    st.selected = selected.len() as i64;
    let mut skipped = Vec::new();
    for (uid, p) in selected {
        let pod = p.view.key().to_string();
        let mut skip = |reason: String| {
            skipped.push(SkippedPod {
                pod: pod.clone(),
                reason,
            })
        };
        if let Some(e) = round.round_error {
            skip(format!("rules not applied on this node: {e}"));
            continue;
        }
        if round.assignment.without_sandbox.contains(uid) {
            skip("no network namespace in the CNI result cache yet".into());
            continue;
        }
        let Some(o) = round.outcomes.get(uid) else {
            skip("not set up yet".into());
            continue;
        };
        if let Some(f) = &o.failure {
            skip(format!("setup failed (retried): {f}"));
            continue;
        }
        let mut any = false;
        for dev in &devs {
            if o.interfaces.iter().any(|i| &i.name == dev) {
                any = true;
            } else {
                let why = o
                    .skipped
                    .iter()
                    .find(|s| &s.iface == dev)
                    .map(|s| s.reason.clone())
                    .unwrap_or_else(|| format!("interface {dev} is not managed"));
                skip(format!("{dev}: {why}"));
            }
        }
        if any || devs.is_empty() {
            st.applied += 1;
        }
    }
    skipped.truncate(MAX_SKIPPED);
    st.skipped = skipped;
    if let Some(c) = round.compiled {
        st.issues = issues_of(name, c);
    }
    st
}

/// The status this node applies to `route` (shared part + its own node entry).
pub fn route_status(
    route: &Route,
    check: &RouteCheck,
    round: &RoundView<'_>,
    now: &str,
) -> RouteStatus {
    let (status, conditions) = shared_status(route.status.as_ref(), check, now);
    RouteStatus {
        status: Some(status),
        conditions,
        nodes: vec![node_status(&route.name_any(), check, round)],
    }
}

/// Whether the object's `current` status differs from `mine` (this node's applied
/// configuration) in a field this node owns.
pub fn needs_patch(current: Option<&RouteStatus>, mine: &RouteStatus) -> bool {
    let Some(cur) = current else { return true };
    if cur.status != mine.status {
        return true;
    }
    for c in &mine.conditions {
        if cur.conditions.iter().find(|x| x.type_ == c.type_) != Some(c) {
            return true;
        }
    }
    mine.nodes
        .iter()
        .any(|n| cur.nodes.iter().find(|x| x.node == n.node) != Some(n))
}

/// `status` without the conditions' transition times (which are "now" whenever the object
/// does not carry them).
pub fn without_times(status: &RouteStatus) -> RouteStatus {
    let mut s = status.clone();
    for c in &mut s.conditions {
        c.last_transition_time = None;
    }
    s
}

/// The server-side apply body for `routes/<name>/status`.
pub fn status_patch_body(name: &str, status: &RouteStatus) -> serde_json::Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "status": status,
    })
}

/// Applies `status` to `routes/<name>/status` as `node`'s field manager (forced).
pub async fn patch_status(
    client: &Client,
    node: &str,
    name: &str,
    status: &RouteStatus,
) -> Result<Route, kube::Error> {
    let api: Api<Route> = Api::all(client.clone());
    let pp = PatchParams::apply(&field_manager(node)).force();
    api.patch_status(name, &pp, &Patch::Apply(status_patch_body(name, status)))
        .await
}

/// The Events a Route's check calls for: (reason, note).
pub fn events_for(check: &RouteCheck) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !check.is_valid() {
        let errs: Vec<String> = check.errors.iter().map(ToString::to_string).collect();
        out.push((
            REASON_INVALID_SPEC,
            limit(format!("Route not applied: {}", errs.join("; ")), 1024),
        ));
    }
    if !check.warnings.is_empty() {
        let w: Vec<String> = check.warnings.iter().map(ToString::to_string).collect();
        out.push((REASON_UNKNOWN_FEATURE_GATE, limit(w.join("; "), 1024)));
    }
    out
}

/// What was last published per Route, so each problem is published once per change.
#[derive(Debug, Default)]
pub struct EventMemory {
    published: BTreeMap<String, Vec<(&'static str, String)>>,
}

impl EventMemory {
    /// The events to publish for Route `name` now (and remembers them). Routes not in
    /// `present` are forgotten (a re-created Route is reported again).
    pub fn due(&mut self, name: &str, check: &RouteCheck) -> Vec<(&'static str, String)> {
        let now = events_for(check);
        let prev = self.published.insert(name.to_string(), now.clone());
        now.into_iter()
            .filter(|e| !prev.as_ref().is_some_and(|p| p.contains(e)))
            .collect()
    }

    pub fn retain(&mut self, present: &BTreeSet<String>) {
        self.published.retain(|k, _| present.contains(k));
    }
}

/// Publishes a Warning Event about `route`.
pub async fn publish(
    recorder: &Recorder,
    route: &Route,
    reason: &str,
    note: String,
) -> Result<(), kube::Error> {
    recorder
        .publish(
            &Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(note),
                action: "Validate".into(),
                secondary: None,
            },
            &route.object_ref(&()),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::route::FieldWarning;
    use crate::k8s::desired::{RulesetIds, Snapshot, desired_from_stores};
    use crate::report::{PodIface, Skipped};
    use std::sync::Arc;

    fn check(valid: bool, gates: &[&str]) -> RouteCheck {
        RouteCheck {
            generation: Some(3),
            errors: if valid {
                vec![]
            } else {
                vec![crate::config::route::FieldError {
                    path: "spec.route[0].dst".into(),
                    value: "x".into(),
                    problem: crate::config::route::Problem::NotCidr,
                }]
            },
            warnings: gates
                .iter()
                .map(|g| FieldWarning {
                    path: format!("spec.feature_gate.{g}"),
                    message: "unknown feature gate, ignored".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn shared_status_reflects_the_spec_and_keeps_transition_times() {
        let (s, c) = shared_status(None, &check(true, &[]), "T1");
        assert_eq!(s, "Accepted");
        assert_eq!(c[0].type_, "Accepted");
        assert_eq!(c[0].status, "True");
        assert_eq!(c[0].last_transition_time.as_deref(), Some("T1"));
        assert_eq!(c[1].reason, "AllKnown");
        let cur = RouteStatus {
            status: Some(s),
            conditions: c,
            nodes: vec![],
        };
        // Unchanged: times carried over.
        let (_, c2) = shared_status(Some(&cur), &check(true, &[]), "T2");
        assert_eq!(c2, cur.conditions);
        // Changed: new time.
        let (s3, c3) = shared_status(Some(&cur), &check(false, &["fancy", "x"]), "T3");
        assert_eq!(s3, "Invalid");
        assert_eq!(c3[0].status, "False");
        assert_eq!(c3[0].reason, "InvalidSpec");
        assert!(c3[0].message.contains("spec.route[0].dst"));
        assert_eq!(c3[0].last_transition_time.as_deref(), Some("T3"));
        assert_eq!(c3[1].reason, "UnknownFeatureGate");
        assert_eq!(c3[1].message, "unknown feature gates ignored: fancy, x");
        assert_eq!(c3[1].observed_generation, Some(3));
    }

    #[test]
    fn needs_patch_compares_only_what_this_node_owns() {
        let mine = RouteStatus {
            status: Some("Accepted".into()),
            conditions: shared_status(None, &check(true, &[]), "T").1,
            nodes: vec![NodeStatus {
                node: "n1".into(),
                selected: 1,
                applied: 1,
                ..Default::default()
            }],
        };
        assert!(needs_patch(None, &mine));
        let mut cur = mine.clone();
        cur.nodes.push(NodeStatus {
            node: "n2".into(),
            selected: 7,
            ..Default::default()
        });
        assert!(
            !needs_patch(Some(&cur), &mine),
            "other nodes' entries are theirs"
        );
        cur.nodes[0].applied = 0;
        assert!(needs_patch(Some(&cur), &mine));
        let mut cur = mine.clone();
        cur.status = Some("x".into());
        assert!(needs_patch(Some(&cur), &mine));
    }

    #[test]
    fn patch_body_is_an_apply_configuration() {
        let st = RouteStatus {
            status: Some("Accepted".into()),
            ..Default::default()
        };
        assert_eq!(
            status_patch_body("demo", &st),
            json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route", "metadata": {"name": "demo"},
                   "status": {"status": "Accepted"}})
        );
        assert_eq!(field_manager("node-1"), "veer-agent/node-1");
    }

    #[test]
    fn events_are_published_once_per_change() {
        let mut m = EventMemory::default();
        let bad = check(false, &["g"]);
        assert_eq!(m.due("r", &bad).len(), 2);
        assert!(m.due("r", &bad).is_empty());
        assert!(m.due("r", &check(true, &[])).is_empty());
        assert_eq!(m.due("r", &bad).len(), 2, "problem came back");
        m.retain(&BTreeSet::new());
        assert_eq!(m.due("r", &bad).len(), 2, "forgotten after deletion");
    }

    fn route(name: &str, spec: serde_json::Value) -> Arc<Route> {
        Arc::new(
            serde_json::from_value(json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route",
                "metadata": {"name": name, "generation": 1}, "spec": spec}))
            .unwrap(),
        )
    }

    #[test]
    fn node_status_counts_selected_applied_and_skipped() {
        let pod = |name: &str| {
            Arc::new(
                serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(json!({
                    "metadata": {"name": name, "namespace": "default", "uid": name},
                    "spec": {"nodeName": "n1", "containers": []}
                }))
                .unwrap(),
            )
        };
        let snap = Snapshot {
            routes: vec![route(
                "r",
                json!({"route": [{"dst": "10.0.0.0/8", "dev": "eth1"},
                                  {"dst": "10.1.0.0/16", "dev": "net1"}],
                       "svc": [{"namespace": "default", "name": "nope", "dev": "eth1"}]}),
            )],
            pods: vec![pod("a"), pod("b"), pod("c"), pod("d")],
            ..Default::default()
        };
        let d = desired_from_stores(&snap, "n1", &RulesetIds::new());
        let compiled = d.compile(&Compiled::default()).unwrap();
        let assignment = Assignment {
            without_sandbox: ["d".to_string()].into(),
            ..Default::default()
        };
        let outcome = |uid: &str, managed: &[&str], failure: Option<&str>| PodReport {
            uid: uid.into(),
            interfaces: managed
                .iter()
                .map(|s| PodIface {
                    name: s.to_string(),
                    ifindex: None,
                    slot: None,
                })
                .collect(),
            skipped: vec![Skipped {
                iface: "net1".into(),
                reason: "the pod has no interface net1".into(),
            }],
            failure: failure.map(String::from),
            ..Default::default()
        };
        let outcomes: BTreeMap<String, PodReport> = [
            ("a".to_string(), outcome("a", &["eth1", "net1"], None)),
            ("b".to_string(), outcome("b", &["eth1"], None)),
            ("c".to_string(), outcome("c", &[], Some("netns gone"))),
        ]
        .into();
        let round = RoundView {
            node: "n1",
            desired: &d,
            assignment: &assignment,
            compiled: Some(&compiled),
            outcomes: &outcomes,
            round_error: None,
        };
        let st = node_status("r", &d.checks["r"], &round);
        assert_eq!((st.selected, st.applied), (4, 2));
        let skipped: Vec<String> = st
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.pod, s.reason))
            .collect();
        assert_eq!(
            skipped,
            [
                "default/b: net1: the pod has no interface net1",
                "default/c: setup failed (retried): netns gone",
                "default/d: no network namespace in the CNI result cache yet",
            ]
        );
        assert_eq!(st.issues, ["spec.svc[0]: Service default/nope not found"]);
    }
}
