//! The `Route` CRD (`routes.k8s.ovn.org/v1`, cluster-scoped), generated from the Rust types.
//!
//! The spec type is [`RouteSpec`] (in [`crate::config::route`], where kube's `CustomResource`
//! derive turns it into the [`Route`] object type); this module holds the status element types
//! and the generator that `veer-crdgen` prints into `manifests/crd.yaml`.
//!
//! Compared with the original CRD (`tests/fixtures/seed/route-crd.yaml`) the schema only
//! relaxes: `spec.route`, `spec.svc` and `svc[].via` are optional, and the veer additions
//! (`podSelector`, `namespaces`, …, `priority`, and the status `conditions` and `nodes`) are
//! optional. Every object the original CRD accepts is accepted (the tests check it).
//!
//! Status ownership: `status.nodes` is a list-map keyed by `node`
//! (`x-kubernetes-list-type: map`), so each node agent, applying with its own field manager
//! (`veer-agent/<node>`), owns exactly its own entry. `status.status` and `status.conditions`
//! are computed from the spec alone and so are the same on every node: agents share them
//! without fighting.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON,
};
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::config::route::{Route, RouteSpec, RouteStatus};

/// Condition type: the spec is valid and its rules are in force.
pub const COND_ACCEPTED: &str = "Accepted";
/// Condition type: every `feature_gate` key is known to this agent.
pub const COND_FEATURE_GATES: &str = "FeatureGatesKnown";

/// Reason of `Accepted=True`.
pub const REASON_VALID: &str = "Valid";
/// Reason of `Accepted=False`.
pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
/// Reason of `FeatureGatesKnown=True`.
pub const REASON_ALL_KNOWN: &str = "AllKnown";
/// Reason of `FeatureGatesKnown=False`.
pub const REASON_UNKNOWN_FEATURE_GATE: &str = "UnknownFeatureGate";

/// `status.status` of a valid Route.
pub const STATUS_ACCEPTED: &str = "Accepted";
/// `status.status` of an invalid Route.
pub const STATUS_INVALID: &str = "Invalid";

/// A condition of a Route (the usual Kubernetes condition fields).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteCondition {
    /// Condition type (`Accepted`, `FeatureGatesKnown`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason in CamelCase.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Human-readable details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: Option<String>,
    /// `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// What one node agent did with a Route.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Node name (the list-map key: each node agent owns its entry).
    pub node: String,
    /// Pods on the node that the Route selects.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub selected: i64,
    /// Selected pods where the Route's rules are in force (on at least one interface).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub applied: i64,
    /// Selected pods (or interfaces of them) the Route is not applied to, and why; at most 20
    /// entries (the first by pod name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedPod>,
    /// Problems with the Route's rules on this node (unresolvable Services, lost conflicts);
    /// at most 10 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<String>,
    /// `metadata.generation` this entry was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A selected pod the Route is not (fully) applied to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SkippedPod {
    /// `namespace/name`.
    pub pod: String,
    /// Why.
    pub reason: String,
}

/// Most `skipped` entries kept per node (the schema description says so too).
pub const MAX_SKIPPED: usize = 20;
/// Most `issues` entries kept per node (the schema description says so too).
pub const MAX_ISSUES: usize = 10;

/// The CRD as Kubernetes takes it.
///
/// One change to what the derive gives: `spec` is not required at the top level (the original
/// CRD did not require it) and defaults to `{}`, so an object without `spec` is accepted and
/// always read back with one (and so deserialises as a [`Route`]).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = Route::crd();
    for v in &mut crd.spec.versions {
        if let Some(root) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            if let Some(req) = root.required.as_mut() {
                req.retain(|f| f != "spec");
            }
            if root.required.as_ref().is_some_and(Vec::is_empty) {
                root.required = None;
            }
            if let Some(spec) = root.properties.as_mut().and_then(|p| p.get_mut("spec")) {
                spec.default = Some(JSON(serde_json::json!({})));
            }
        }
    }
    crd
}

/// The CRD as YAML, stable from run to run (keys sorted), with a header saying where it comes
/// from. This is the content of `manifests/crd.yaml`.
pub fn crd_yaml() -> String {
    let value = sorted(serde_json::to_value(crd()).expect("a CRD serialises"));
    let body = serde_saphyr::to_string(&value).expect("a JSON value serialises as YAML");
    format!(
        "# Generated by `cargo run -p veer-agent --bin veer-crdgen > manifests/crd.yaml` from the Rust\n\
         # types (agent/src/config/route.rs, agent/src/k8s/crd.rs). Do not edit by hand.\n{body}"
    )
}

/// A copy of `v` whose objects have their keys in byte order, whatever map type serde_json was
/// built with.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut pairs: Vec<(String, Value)> = m.into_iter().collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(pairs.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// `spec.versions[0].schema.openAPIV3Schema` of [`crd`], as JSON.
pub fn openapi_schema() -> serde_json::Value {
    let crd = crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the derived CRD has a schema");
    serde_json::to_value(schema).expect("a schema serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_scope_and_printer_column() {
        let c = crd();
        assert_eq!(c.metadata.name.as_deref(), Some("routes.k8s.ovn.org"));
        assert_eq!(c.spec.group, "k8s.ovn.org");
        assert_eq!(c.spec.scope, "Cluster");
        assert_eq!(c.spec.names.kind, "Route");
        assert_eq!(c.spec.names.plural, "routes");
        assert_eq!(c.spec.names.short_names, Some(vec!["route".to_string()]));
        let v = &c.spec.versions[0];
        assert_eq!(v.name, "v1");
        assert!(v.served && v.storage);
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let col = &v.additional_printer_columns.as_ref().unwrap()[0];
        assert_eq!(
            (
                col.name.as_str(),
                col.json_path.as_str(),
                col.type_.as_str()
            ),
            ("Route Status", ".status.status", "string")
        );
    }

    #[test]
    fn status_lists_are_list_maps() {
        let s = openapi_schema();
        let status = &s["properties"]["status"]["properties"];
        assert_eq!(status["nodes"]["x-kubernetes-list-type"], "map");
        assert_eq!(
            status["nodes"]["x-kubernetes-list-map-keys"],
            serde_json::json!(["node"])
        );
        assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
        // List-map keys must be required.
        let node_item = &status["nodes"]["items"];
        assert!(
            node_item["required"]
                .as_array()
                .unwrap()
                .contains(&"node".into())
        );
    }

    #[test]
    fn yaml_is_stable() {
        assert_eq!(crd_yaml(), crd_yaml());
    }
}
