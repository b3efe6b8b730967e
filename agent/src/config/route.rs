//! The `Route` custom resource (`routes.k8s.ovn.org/v1`, cluster-scoped) and its validation.
//!
//! [`RouteSpec`] is the spec struct: the CRD will be generated from it (kube's `CustomResource`
//! derive + schemars), so it keeps the original field names exactly — `route[]{dst,dev,via}`,
//! `svc[]{namespace,name,dev,via}`, `feature_gate` — and `status.status`. Compared with the
//! original CRD (`tests/fixtures/seed/route-crd.yaml`) nothing is tightened: `route` and `svc`
//! default to empty and `via` is optional everywhere (the original Go type; the seed YAML marks
//! `svc[].via` required, which would reject the original demo). The selection fields
//! (`podSelector`, `namespaces`, …) and `priority` are veer additions, all optional.
//!
//! The CRD types keep addresses as strings, as the API stores them; [`RouteSpec::check`] turns a
//! spec into [`CheckedRule`]s (parsed CIDRs and addresses) or field-level [`FieldError`]s.
//!
//! Validation rules (the `check_*` functions):
//! - `dst` is a CIDR (`172.16.0.0/16`, `fd00::/64`) or a bare address (a host route, `/32` or
//!   `/128`, as `ip route` reads it). Host bits are **rejected**, not normalised:
//!   `10.0.0.1/8` could mean `10.0.0.0/8` or `10.0.0.1/32`, and guessing wrong moves traffic of
//!   the wrong hosts; the message names the network (`did you mean "10.0.0.0/8"?`).
//! - `dev` is a Linux interface name, as the kernel's `dev_valid_name` accepts: 1–15 bytes, not
//!   `.` or `..`, no `/`, `:` or whitespace.
//! - `via` is an IP address of the same family as `dst`, unicast (not unspecified, not
//!   multicast, not 255.255.255.255). An empty string means "no via" (the Go type's
//!   `omitempty`). For `svc` rules the family is checked per Service IP by the compiler.
//! - `svc[].namespace` and `svc[].name` are DNS-1123 labels (every Service name is one).
//! - selection fields: namespaces are DNS-1123 labels, pod and workload names DNS-1123
//!   subdomains, selector requirements consistent (`In`/`NotIn` need values, `Exists`/
//!   `DoesNotExist` take none).
//!
//! Unknown `feature_gate` keys are not errors: [`RouteSpec::check`] returns them as warnings.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the Route CRD.
pub const GROUP: &str = "k8s.ovn.org";
/// API version of the Route CRD.
pub const VERSION: &str = "v1";
/// `apiVersion` of a Route object.
pub const API_VERSION: &str = "k8s.ovn.org/v1";
/// `kind` of a Route object.
pub const KIND: &str = "Route";

/// `feature_gate` keys this agent understands. None yet: every key is reported as a warning
/// (and otherwise ignored), so a gate written for another implementation is visible.
pub const KNOWN_FEATURE_GATES: &[&str] = &[];

/// RouteSpec defines which destinations leave the selected pods by which interface.
#[derive(
    CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "k8s.ovn.org",
    version = "v1",
    kind = "Route",
    plural = "routes",
    singular = "route",
    shortname = "route",
    status = "RouteStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Route is the Schema for the routes API: which destinations leave the selected pods by which interface.",
    printcolumn(name = "Route Status", type_ = "string", json_path = ".status.status")
)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// CIDR rules: destinations in `dst` leave by `dev`.
    #[serde(default)]
    pub route: Vec<RouteRule>,
    /// Service rules: the Service's cluster IPs (or a headless Service's endpoints) leave by
    /// `dev`.
    #[serde(default)]
    pub svc: Vec<SvcRule>,
    /// Free-form switches; keys this agent does not know are reported and ignored.
    #[serde(
        default,
        rename = "feature_gate",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub feature_gate: BTreeMap<String, String>,
    /// Only pods whose labels match (with the other selection fields: all must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Only pods in namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Only pods in these namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Only these pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<NamespacedName>,
    /// Only pods owned by these workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadRef>,
    /// Pods never affected, whatever the fields above select.
    #[serde(default, skip_serializing_if = "Exclude::is_empty")]
    pub exclude: Exclude,
    /// Wins over Routes of lower priority when two Routes name the same destination.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// RouteRule defines custom route info.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct RouteRule {
    /// destination CIDR
    pub dst: String,
    /// interface name inside the pod
    pub dev: String,
    /// gateway address
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// SvcRule defines svc info.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SvcRule {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// interface name inside the pod
    pub dev: String,
    /// gateway address
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// RouteStatus defines the observed state of Route. `status` and `conditions` depend on the
/// spec only; `nodes` has one entry per node agent, each written by that node alone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct RouteStatus {
    /// Human-readable state, shown as the "Route Status" printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Conditions of the Route (`Accepted`, `FeatureGatesKnown`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<crate::k8s::crd::RouteCondition>,
    /// What each node agent selected and applied; one entry per node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<crate::k8s::crd::NodeStatus>,
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions` must all match).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Operator of a [`LabelSelectorRequirement`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy the selector (the empty selector matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let got = labels.get(&e.key);
                match e.operator {
                    SelectorOperator::In => got.is_some_and(|v| e.values.contains(v)),
                    SelectorOperator::NotIn => got.is_none_or(|v| !e.values.contains(v)),
                    SelectorOperator::Exists => got.is_some(),
                    SelectorOperator::DoesNotExist => got.is_none(),
                }
            })
    }
}

/// A namespaced object (pod, Service) by name.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A workload whose pods a Route selects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct WorkloadRef {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

/// Kinds of [`WorkloadRef`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    DaemonSet,
    StatefulSet,
    Job,
    CronJob,
}

/// Pods a Route never applies to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Exclude {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<NamespacedName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

impl Exclude {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.namespaces.is_empty() && self.pod_selector.is_none()
    }
}

impl RouteSpec {
    /// Whether the Route narrows the pods it applies to (any selection or exclusion field
    /// set). A Route without selection applies to every pod that has the named interfaces.
    pub fn has_selection(&self) -> bool {
        self.pod_selector.is_some()
            || self.namespace_selector.is_some()
            || !self.namespaces.is_empty()
            || !self.pods.is_empty()
            || !self.workloads.is_empty()
            || !self.exclude.is_empty()
    }

    /// Validates the spec. On success: the rules in declaration order (`route[]` first, then
    /// `svc[]`), with paths like `spec.route[1]`, and warnings (unknown feature gates). On
    /// failure: every field error found, with paths relative to the object (`spec.…`).
    pub fn check(&self) -> Result<Checked, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        for (i, r) in self.route.iter().enumerate() {
            let path = format!("spec.route[{i}]");
            if let Some(rule) =
                check_route_rule(&path, &r.dst, &r.dev, r.via.as_deref(), &mut errors)
            {
                rules.push(rule);
            }
        }
        for (i, s) in self.svc.iter().enumerate() {
            let path = format!("spec.svc[{i}]");
            if let Some(rule) = check_svc_rule(
                &path,
                &s.namespace,
                &s.name,
                &s.dev,
                s.via.as_deref(),
                &mut errors,
            ) {
                rules.push(rule);
            }
        }
        self.check_selection(&mut errors);
        let warnings = self
            .feature_gate
            .keys()
            .filter(|k| !KNOWN_FEATURE_GATES.contains(&k.as_str()))
            .map(|k| FieldWarning {
                path: format!("spec.feature_gate.{k}"),
                message: "unknown feature gate, ignored".into(),
            })
            .collect();
        if errors.is_empty() {
            Ok(Checked { rules, warnings })
        } else {
            Err(errors)
        }
    }

    fn check_selection(&self, errors: &mut Vec<FieldError>) {
        let mut push = |path: String, value: &str, r: Result<(), Problem>| {
            if let Err(problem) = r {
                errors.push(FieldError {
                    path,
                    value: value.to_string(),
                    problem,
                });
            }
        };
        for (field, list) in [
            ("spec.namespaces", &self.namespaces),
            ("spec.exclude.namespaces", &self.exclude.namespaces),
        ] {
            for (i, ns) in list.iter().enumerate() {
                push(format!("{field}[{i}]"), ns, check_namespace(ns));
            }
        }
        for (field, list) in [
            ("spec.pods", &self.pods),
            ("spec.exclude.pods", &self.exclude.pods),
        ] {
            for (i, p) in list.iter().enumerate() {
                push(
                    format!("{field}[{i}].namespace"),
                    &p.namespace,
                    check_namespace(&p.namespace),
                );
                push(
                    format!("{field}[{i}].name"),
                    &p.name,
                    check_object_name(&p.name),
                );
            }
        }
        for (i, w) in self.workloads.iter().enumerate() {
            push(
                format!("spec.workloads[{i}].namespace"),
                &w.namespace,
                check_namespace(&w.namespace),
            );
            push(
                format!("spec.workloads[{i}].name"),
                &w.name,
                check_object_name(&w.name),
            );
        }
        for (field, sel) in [
            ("spec.podSelector", &self.pod_selector),
            ("spec.namespaceSelector", &self.namespace_selector),
            ("spec.exclude.podSelector", &self.exclude.pod_selector),
        ] {
            for (i, e) in sel
                .iter()
                .flat_map(|s| s.match_expressions.iter().enumerate())
            {
                let needs_values =
                    matches!(e.operator, SelectorOperator::In | SelectorOperator::NotIn);
                if needs_values == e.values.is_empty() {
                    push(
                        format!("{field}.matchExpressions[{i}].values"),
                        &e.values.join(","),
                        Err(Problem::SelectorValues {
                            operator: e.operator,
                        }),
                    );
                }
            }
        }
    }
}

/// What a spec means once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub rules: Vec<CheckedRule>,
    pub warnings: Vec<FieldWarning>,
}

/// One validated rule of a Route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckedRule {
    /// Where the rule was written: `spec.route[1]`, `spec.svc[0]`, or for shorthand entries
    /// the document (and array index) in the file, e.g. `document 1 [3]`.
    pub path: String,
    /// What is steered.
    pub target: Target,
    /// Interface name inside the pod.
    pub dev: String,
    /// Explicit next hop.
    pub via: Option<IpAddr>,
}

/// What a rule steers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A destination prefix (host bits zero).
    Cidr(IpNet),
    /// The addresses of a Service.
    Service(NamespacedName),
}

/// A validation error of one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.route[1].dst`.
    pub path: String,
    /// The value as written.
    pub value: String,
    /// What is wrong with it.
    pub problem: Problem,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?} {}", self.path, self.value, self.problem)
    }
}

/// A non-fatal remark about one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldWarning {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// What is wrong with a value. The `Display` text follows the quoted value:
/// `"172.16.10.0/33" is not a CIDR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("is not a CIDR")]
    NotCidr,
    #[error("has host bits set (did you mean \"{network}\"?)")]
    HostBits { network: IpNet },
    #[error("is not a valid interface name: {0}")]
    InterfaceName(&'static str),
    #[error("is not an IP address")]
    NotIp,
    #[error("is an {via} address, but dst is {dst}")]
    ViaFamily { via: Family, dst: Family },
    #[error("is not a unicast address")]
    ViaNotUnicast,
    #[error(
        "is not a valid {what} (DNS-1123 label: at most 63 characters of a-z, 0-9 and '-', \
         starting and ending with a letter or digit)"
    )]
    NotLabel { what: &'static str },
    #[error(
        "is not a valid {what} (DNS-1123 subdomain: at most 253 characters, dot-separated \
         DNS-1123 labels)"
    )]
    NotSubdomain { what: &'static str },
    #[error("is not \"namespace/name\"")]
    NotServiceRef,
    #[error(
        "does not fit operator {operator:?} (In and NotIn need values, Exists and DoesNotExist take none)"
    )]
    SelectorValues { operator: SelectorOperator },
}

/// IP address family, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// Validates a `dst`: a CIDR without host bits, or a bare address (host route).
pub fn check_dst(s: &str) -> Result<IpNet, Problem> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => return Err(Problem::NotCidr),
        },
    };
    if net.trunc() != net {
        return Err(Problem::HostBits {
            network: net.trunc(),
        });
    }
    Ok(net)
}

/// Validates a `dev` as the kernel's `dev_valid_name` does.
pub fn check_dev(s: &str) -> Result<(), Problem> {
    let reason = if s.is_empty() {
        "it is empty"
    } else if s.len() > 15 {
        "it is longer than 15 bytes"
    } else if s == "." || s == ".." {
        "it is \".\" or \"..\""
    } else if s.contains('/') {
        "it contains '/'"
    } else if s.contains(':') {
        "it contains ':'"
    } else if s.chars().any(|c| c.is_whitespace() || c == '\0') {
        "it contains whitespace"
    } else {
        return Ok(());
    };
    Err(Problem::InterfaceName(reason))
}

/// Validates a `via`; `family` is the family of `dst` when known.
pub fn check_via(s: &str, family: Option<Family>) -> Result<IpAddr, Problem> {
    let addr: IpAddr = s.parse().map_err(|_| Problem::NotIp)?;
    let unicast = match addr {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    };
    if !unicast {
        return Err(Problem::ViaNotUnicast);
    }
    if let Some(dst) = family
        && Family::of(&addr) != dst
    {
        return Err(Problem::ViaFamily {
            via: Family::of(&addr),
            dst,
        });
    }
    Ok(addr)
}

/// Whether `s` is a DNS-1123 label.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is a DNS-1123 subdomain.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Validates a namespace name.
pub fn check_namespace(s: &str) -> Result<(), Problem> {
    if is_dns1123_label(s) {
        Ok(())
    } else {
        Err(Problem::NotLabel { what: "namespace" })
    }
}

/// Validates a Service name.
pub fn check_service_name(s: &str) -> Result<(), Problem> {
    if is_dns1123_label(s) {
        Ok(())
    } else {
        Err(Problem::NotLabel {
            what: "Service name",
        })
    }
}

/// Validates an object name (Route, pod, workload).
pub fn check_object_name(s: &str) -> Result<(), Problem> {
    if is_dns1123_subdomain(s) {
        Ok(())
    } else {
        Err(Problem::NotSubdomain { what: "name" })
    }
}

fn field_err(errors: &mut Vec<FieldError>, path: String, value: &str, problem: Problem) {
    errors.push(FieldError {
        path,
        value: value.to_string(),
        problem,
    });
}

/// `via: ""` means no via (the original Go type's `omitempty`).
fn nonempty(via: Option<&str>) -> Option<&str> {
    via.filter(|v| !v.is_empty())
}

/// Validates one CIDR rule written at `path` (errors name `path.dst`, `path.dev`, `path.via`).
pub fn check_route_rule(
    path: &str,
    dst: &str,
    dev: &str,
    via: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<CheckedRule> {
    let before = errors.len();
    let net = check_dst(dst)
        .map_err(|p| field_err(errors, format!("{path}.dst"), dst, p))
        .ok();
    if let Err(p) = check_dev(dev) {
        field_err(errors, format!("{path}.dev"), dev, p);
    }
    let via = match nonempty(via) {
        None => None,
        Some(v) => {
            let family = net.map(|n| Family::of(&n.addr()));
            check_via(v, family)
                .map_err(|p| field_err(errors, format!("{path}.via"), v, p))
                .ok()
        }
    };
    (errors.len() == before).then(|| CheckedRule {
        path: path.to_string(),
        target: Target::Cidr(net.expect("checked")),
        dev: dev.to_string(),
        via,
    })
}

/// Validates one Service rule written at `path`.
pub fn check_svc_rule(
    path: &str,
    namespace: &str,
    name: &str,
    dev: &str,
    via: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<CheckedRule> {
    let before = errors.len();
    if let Err(p) = check_namespace(namespace) {
        field_err(errors, format!("{path}.namespace"), namespace, p);
    }
    if let Err(p) = check_service_name(name) {
        field_err(errors, format!("{path}.name"), name, p);
    }
    if let Err(p) = check_dev(dev) {
        field_err(errors, format!("{path}.dev"), dev, p);
    }
    let via = nonempty(via).and_then(|v| {
        check_via(v, None)
            .map_err(|p| field_err(errors, format!("{path}.via"), v, p))
            .ok()
    });
    (errors.len() == before).then(|| CheckedRule {
        path: path.to_string(),
        target: Target::Service(NamespacedName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
        dev: dev.to_string(),
        via,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> RouteSpec {
        serde_json::from_str(json).unwrap()
    }

    fn errors(json: &str) -> Vec<String> {
        spec(json)
            .check()
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn empty_spec_defaults_route_and_svc_to_empty() {
        let s = spec("{}");
        assert!(s.route.is_empty() && s.svc.is_empty() && !s.has_selection());
        assert_eq!(s.check().unwrap().rules, vec![]);
    }

    #[test]
    fn serialization_keeps_original_field_names_and_skips_empty_additions() {
        let s = spec(
            r#"{"route":[{"dst":"10.0.0.0/8","dev":"eth1"}],"svc":[],"feature_gate":{"a":"b"}}"#,
        );
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"route":[{"dst":"10.0.0.0/8","dev":"eth1"}],"svc":[],"feature_gate":{"a":"b"}}"#
        );
    }

    #[test]
    fn selection_fields_use_camel_case_names() {
        let s = spec(
            r#"{"podSelector":{"matchLabels":{"app":"x"},"matchExpressions":[{"key":"t","operator":"Exists"}]},
                "namespaceSelector":{},"namespaces":["a"],"pods":[{"namespace":"a","name":"p"}],
                "workloads":[{"kind":"CronJob","namespace":"a","name":"w"}],
                "exclude":{"pods":[],"namespaces":["kube-system"],"podSelector":{"matchLabels":{"x":"y"}}},
                "priority":-3}"#,
        );
        assert!(s.has_selection());
        assert_eq!(s.priority, -3);
        assert_eq!(s.workloads[0].kind, WorkloadKind::CronJob);
        assert_eq!(s.exclude.namespaces, ["kube-system"]);
        assert!(s.check().is_ok());
    }

    #[test]
    fn unknown_feature_gates_are_warnings() {
        let c = spec(r#"{"feature_gate":{"fancy":"on"}}"#).check().unwrap();
        assert_eq!(
            c.warnings[0].to_string(),
            "spec.feature_gate.fancy: unknown feature gate, ignored"
        );
    }

    #[test]
    fn dst_accepts_cidrs_and_bare_addresses_and_rejects_host_bits() {
        assert_eq!(
            check_dst("172.16.0.0/16"),
            Ok("172.16.0.0/16".parse().unwrap())
        );
        assert_eq!(check_dst("10.0.0.1"), Ok("10.0.0.1/32".parse().unwrap()));
        assert_eq!(check_dst("fd00::/64"), Ok("fd00::/64".parse().unwrap()));
        assert_eq!(
            check_dst("10.0.0.1/8").unwrap_err().to_string(),
            "has host bits set (did you mean \"10.0.0.0/8\"?)"
        );
        assert_eq!(check_dst("172.16.10.0/33"), Err(Problem::NotCidr));
        assert_eq!(check_dst(" 10.0.0.0/8"), Err(Problem::NotCidr));
    }

    #[test]
    fn dev_follows_kernel_dev_valid_name() {
        for ok in ["eth0", "net1", "a", "123456789012345", "veth-x.10"] {
            assert_eq!(check_dev(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "it is empty"),
            ("1234567890123456", "it is longer than 15 bytes"),
            (".", "it is \".\" or \"..\""),
            ("a/b", "it contains '/'"),
            ("eth0:1", "it contains ':'"),
            ("eth 0", "it contains whitespace"),
            ("eth\t0", "it contains whitespace"),
        ] {
            assert_eq!(check_dev(bad), Err(Problem::InterfaceName(why)), "{bad:?}");
        }
    }

    #[test]
    fn via_must_be_unicast_of_dst_family() {
        assert!(check_via("10.0.0.1", Some(Family::V4)).is_ok());
        assert!(check_via("fe80::1", Some(Family::V6)).is_ok());
        assert_eq!(check_via("10.0.0", None), Err(Problem::NotIp));
        assert_eq!(check_via("0.0.0.0", None), Err(Problem::ViaNotUnicast));
        assert_eq!(check_via("ff02::1", None), Err(Problem::ViaNotUnicast));
        assert_eq!(
            check_via("fd00::1", Some(Family::V4))
                .unwrap_err()
                .to_string(),
            "is an IPv6 address, but dst is IPv4"
        );
    }

    #[test]
    fn dns_names_follow_dns1123() {
        assert!(is_dns1123_label("kube-system") && is_dns1123_label("0a"));
        assert!(!is_dns1123_label("Default") && !is_dns1123_label("-a") && !is_dns1123_label("a-"));
        assert!(!is_dns1123_label(&"a".repeat(64)) && !is_dns1123_label("a.b"));
        assert!(is_dns1123_subdomain("a.b-c.d") && !is_dns1123_subdomain("a..b"));
    }

    #[test]
    fn check_reports_every_bad_field_with_its_path() {
        let e = errors(
            r#"{"route":[{"dst":"10.0.0.0/8","dev":"eth1"},{"dst":"10.0.0.0/8","dev":"eth1","via":"fd00::1"}],
                "svc":[{"namespace":"Default","name":"nginx","dev":"eth0:1"}]}"#,
        );
        assert_eq!(
            e,
            [
                "spec.route[1].via: \"fd00::1\" is an IPv6 address, but dst is IPv4",
                "spec.svc[0].namespace: \"Default\" is not a valid namespace (DNS-1123 label: at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit)",
                "spec.svc[0].dev: \"eth0:1\" is not a valid interface name: it contains ':'",
            ]
        );
    }

    #[test]
    fn selection_fields_are_validated() {
        let e = errors(
            r#"{"namespaces":["ok","Bad"],"pods":[{"namespace":"a","name":"p_1"}],
                "podSelector":{"matchExpressions":[{"key":"k","operator":"In"}]},
                "exclude":{"podSelector":{"matchExpressions":[{"key":"k","operator":"Exists","values":["v"]}]}}}"#,
        );
        assert_eq!(
            e,
            [
                "spec.namespaces[1]: \"Bad\" is not a valid namespace (DNS-1123 label: at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit)",
                "spec.pods[0].name: \"p_1\" is not a valid name (DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels)",
                "spec.podSelector.matchExpressions[0].values: \"\" does not fit operator In (In and NotIn need values, Exists and DoesNotExist take none)",
                "spec.exclude.podSelector.matchExpressions[0].values: \"v\" does not fit operator Exists (In and NotIn need values, Exists and DoesNotExist take none)",
            ]
        );
    }

    #[test]
    fn empty_via_means_no_via() {
        let c = spec(r#"{"route":[{"dst":"10.0.0.0/8","dev":"eth1","via":""}]}"#)
            .check()
            .unwrap();
        assert_eq!(c.rules[0].via, None);
    }

    #[test]
    fn label_selector_matches_like_kubernetes() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        let sel = |j: &str| {
            serde_json::from_str::<LabelSelector>(j)
                .unwrap()
                .matches(&labels)
        };
        assert!(sel("{}"));
        assert!(sel(r#"{"matchLabels":{"app":"web"}}"#));
        assert!(!sel(r#"{"matchLabels":{"app":"db"}}"#));
        assert!(sel(
            r#"{"matchExpressions":[{"key":"app","operator":"In","values":["web","x"]}]}"#
        ));
        assert!(sel(
            r#"{"matchExpressions":[{"key":"tier","operator":"NotIn","values":["x"]}]}"#
        ));
        assert!(!sel(
            r#"{"matchExpressions":[{"key":"app","operator":"DoesNotExist"}]}"#
        ));
        assert!(sel(
            r#"{"matchExpressions":[{"key":"app","operator":"Exists"}]}"#
        ));
    }
}
