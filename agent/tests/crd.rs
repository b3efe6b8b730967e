//! The Route CRD: `manifests/crd.yaml` is what the Rust types generate, the schema is
//! structural, and it accepts what it must (the seed demo, every object the original CRD
//! accepts) and rejects malformed Routes.
//!
//! Validation uses the `jsonschema` crate on the generated `openAPIV3Schema`, after turning
//! the two OpenAPI-only spellings the generator uses into JSON Schema: `nullable: true`
//! becomes a `null` alternative of `type`, and `x-kubernetes-*` keys are dropped (the
//! apiserver's own checks for those — list-map keys required and scalar — are checked
//! structurally here). JSON Schema does everything else the apiserver's OpenAPI validation
//! does for this schema (types, `required`, `enum`, `additionalProperties`, `minimum`); what it
//! does not do — pruning unknown fields and defaulting — only ever makes the apiserver *more*
//! accepting, so "valid here" implies "accepted by the apiserver".

use std::path::PathBuf;
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};
use veer_agent::k8s::crd;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn yaml_file(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// OpenAPI v3 (Kubernetes flavour) → JSON Schema.
fn to_json_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            let nullable = m.get("nullable") == Some(&Value::Bool(true));
            for (k, v) in m {
                if k == "nullable" || k.starts_with("x-kubernetes-") {
                    continue;
                }
                // `properties` and `additionalProperties` hold schemas by name: recurse into
                // each value but keep the names.
                let v = match k.as_str() {
                    "properties" => Value::Object(
                        v.as_object()
                            .unwrap()
                            .iter()
                            .map(|(n, s)| (n.clone(), to_json_schema(s)))
                            .collect(),
                    ),
                    "default" | "enum" | "required" => v.clone(),
                    _ => to_json_schema(v),
                };
                out.insert(k.clone(), v);
            }
            if nullable && let Some(Value::String(t)) = out.get("type").cloned() {
                out.insert("type".into(), json!([t, "null"]));
                if let Some(Value::Array(e)) = out.get_mut("enum") {
                    e.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

fn validator_for(openapi: &Value) -> jsonschema::Validator {
    jsonschema::validator_for(&to_json_schema(openapi)).unwrap()
}

fn generated() -> jsonschema::Validator {
    validator_for(&crd::openapi_schema())
}

fn seed() -> jsonschema::Validator {
    let crd = yaml_file("tests/fixtures/seed/route-crd.yaml");
    validator_for(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
}

fn errors(v: &jsonschema::Validator, obj: &Value) -> Vec<String> {
    v.iter_errors(obj)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn manifests_crd_yaml_matches_the_rust_types() {
    let committed = std::fs::read_to_string(repo("manifests/crd.yaml")).unwrap();
    assert!(
        committed == crd::crd_yaml(),
        "manifests/crd.yaml is out of date: run \
         `cargo run -p veer-agent --bin veer-crdgen > manifests/crd.yaml`"
    );
    // And it is a CRD Kubernetes can read.
    let parsed: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_json::from_value(yaml_file("manifests/crd.yaml")).unwrap();
    assert_eq!(parsed, crd::crd());
}

#[test]
fn crd_keeps_the_original_identity() {
    let seed = yaml_file("tests/fixtures/seed/route-crd.yaml");
    let ours = serde_json::to_value(crd::crd()).unwrap();
    assert_eq!(ours["metadata"]["name"], seed["metadata"]["name"]);
    for k in ["group", "scope"] {
        assert_eq!(ours["spec"][k], seed["spec"][k], "{k}");
    }
    for k in ["kind", "plural", "singular"] {
        assert_eq!(ours["spec"]["names"][k], seed["spec"]["names"][k], "{k}");
    }
    let (o, s) = (&ours["spec"]["versions"][0], &seed["spec"]["versions"][0]);
    for k in [
        "name",
        "served",
        "storage",
        "additionalPrinterColumns",
        "subresources",
    ] {
        assert_eq!(o[k], s[k], "{k}");
    }
}

/// Walks every schema node, checking the rules of a structural schema that matter here.
fn check_structural(path: &str, s: &Value, problems: &mut Vec<String>) {
    let m = s.as_object().unwrap();
    for bad in [
        "$ref",
        "definitions",
        "$defs",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
    ] {
        if m.contains_key(bad) {
            problems.push(format!("{path}: has {bad}"));
        }
    }
    if !m.contains_key("type") && !m.contains_key("x-kubernetes-preserve-unknown-fields") {
        problems.push(format!("{path}: no type"));
    }
    if m.contains_key("properties") && m.contains_key("additionalProperties") {
        problems.push(format!("{path}: properties and additionalProperties"));
    }
    if m.get("x-kubernetes-list-type") == Some(&json!("map")) {
        let keys = m["x-kubernetes-list-map-keys"].as_array().unwrap();
        let item = &m["items"];
        for k in keys {
            let k = k.as_str().unwrap();
            if !item["required"].as_array().unwrap().contains(&json!(k)) {
                problems.push(format!("{path}: list-map key {k} is not required"));
            }
            let t = &item["properties"][k]["type"];
            if !["string", "integer", "boolean"].contains(&t.as_str().unwrap_or("")) {
                problems.push(format!("{path}: list-map key {k} is not a scalar"));
            }
        }
    }
    if let Some(p) = m.get("properties").and_then(Value::as_object) {
        for (k, v) in p {
            check_structural(&format!("{path}.{k}"), v, problems);
        }
    }
    if let Some(i) = m.get("items") {
        check_structural(&format!("{path}[]"), i, problems);
    }
    if let Some(a @ Value::Object(_)) = m.get("additionalProperties") {
        check_structural(&format!("{path}{{}}"), a, problems);
    }
}

#[test]
fn schema_is_structural() {
    let mut problems = vec![];
    check_structural("", &crd::openapi_schema(), &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn seed_demo_and_example_are_valid() {
    let v = generated();
    for f in [
        "tests/fixtures/seed/route-demo.yaml",
        "manifests/route-example.yaml",
    ] {
        let obj = yaml_file(f);
        assert_eq!(errors(&v, &obj), Vec::<String>::new(), "{f}");
        // And they deserialize into the Rust type.
        let _: crd::Route = serde_json::from_value(obj).unwrap();
    }
    // The seed CRD itself rejects its demo (it marks svc[].via required); ours follows the Go
    // type, where `via` is optional.
    assert!(!seed().is_valid(&yaml_file("tests/fixtures/seed/route-demo.yaml")));
}

fn route(spec: Value) -> Value {
    json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route", "metadata": {"name": "r"}, "spec": spec})
}

#[test]
fn good_routes_are_accepted() {
    let v = generated();
    let good = [
        json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route", "metadata": {"name": "r"}}),
        route(json!({})),
        route(json!({"route": [], "svc": []})),
        route(json!({"route": [{"dst": "10.0.0.0/8", "dev": "eth1", "via": "10.124.2.1"}]})),
        route(json!({"route": [{"dst": "10.0.0.0/8", "dev": "eth1", "via": ""}]})),
        route(
            json!({"svc": [{"namespace": "a", "name": "b", "dev": "eth0", "via": "169.254.1.1"}]}),
        ),
        route(json!({"feature_gate": {"anything": "goes"}})),
        route(
            json!({"route": [{"dst": "x", "dev": "eth1", "unknownField": 1}], "unknownTop": true}),
        ),
        route(json!({
            "podSelector": {"matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]},
                                     {"key": "x", "operator": "Exists"}]},
            "namespaceSelector": {"matchLabels": {"team": "a"}},
            "namespaces": ["a"], "pods": [{"namespace": "a", "name": "p"}],
            "workloads": [{"kind": "Deployment", "namespace": "a", "name": "web"},
                          {"kind": "CronJob", "namespace": "a", "name": "backup"}],
            "exclude": {"namespaces": ["kube-system"], "pods": [{"namespace": "a", "name": "q"}],
                        "podSelector": {"matchLabels": {"veer": "off"}}},
            "priority": -5
        })),
        json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route", "metadata": {"name": "r"},
               "spec": {}, "status": {"status": "Accepted",
               "conditions": [{"type": "Accepted", "status": "True", "reason": "Valid",
                               "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 2}],
               "nodes": [{"node": "n1", "selected": 2, "applied": 1,
                          "skipped": [{"pod": "a/p", "reason": "no eth1"}]}]}}),
        // An old object: status written by the original implementation.
        json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route", "metadata": {"name": "r"},
               "spec": {"route": [], "svc": []}, "status": {"status": "success"}}),
    ];
    for (i, obj) in good.iter().enumerate() {
        assert_eq!(errors(&v, obj), Vec::<String>::new(), "good[{i}] {obj}");
    }
}

#[test]
fn bad_routes_are_rejected() {
    let v = generated();
    let bad = [
        ("dst missing", route(json!({"route": [{"dev": "eth1"}]}))),
        (
            "dev missing",
            route(json!({"route": [{"dst": "10.0.0.0/8"}]})),
        ),
        (
            "dst not a string",
            route(json!({"route": [{"dst": 10, "dev": "eth1"}]})),
        ),
        (
            "route not a list",
            route(json!({"route": {"dst": "10.0.0.0/8", "dev": "eth1"}})),
        ),
        (
            "svc name missing",
            route(json!({"svc": [{"namespace": "a", "dev": "eth0"}]})),
        ),
        (
            "svc namespace missing",
            route(json!({"svc": [{"name": "a", "dev": "eth0"}]})),
        ),
        (
            "svc dev missing",
            route(json!({"svc": [{"namespace": "a", "name": "b"}]})),
        ),
        (
            "via not a string",
            route(json!({"svc": [{"namespace": "a", "name": "b", "dev": "eth0", "via": 1}]})),
        ),
        (
            "feature gate not a string",
            route(json!({"feature_gate": {"x": true}})),
        ),
        (
            "unknown operator",
            route(
                json!({"podSelector": {"matchExpressions": [{"key": "k", "operator": "Maybe"}]}}),
            ),
        ),
        (
            "unknown workload kind",
            route(json!({"workloads": [{"kind": "Pod", "namespace": "a", "name": "p"}]})),
        ),
        (
            "workload name missing",
            route(json!({"workloads": [{"kind": "Job", "namespace": "a"}]})),
        ),
        (
            "priority not an integer",
            route(json!({"priority": "high"})),
        ),
        ("namespaces not strings", route(json!({"namespaces": [1]}))),
        ("spec not an object", route(json!([]))),
        (
            "node entry without node",
            json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route",
            "metadata": {"name": "r"}, "spec": {}, "status": {"nodes": [{"selected": 1}]}}),
        ),
        (
            "negative count",
            json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route",
            "metadata": {"name": "r"}, "spec": {}, "status": {"nodes": [{"node": "n", "selected": -1}]}}),
        ),
        (
            "condition without type",
            json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route",
            "metadata": {"name": "r"}, "spec": {}, "status": {"conditions": [{"status": "True"}]}}),
        ),
    ];
    for (what, obj) in bad {
        assert!(!v.is_valid(&obj), "{what} was accepted: {obj}");
    }
}

/// Any JSON value, small.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..3).prop_map(|n| json!(n)),
        "[a-z0-9./]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field value: mostly a string, sometimes anything.
fn field() -> impl Strategy<Value = Value> {
    prop_oneof![
        9 => "[a-z0-9./:]{0,10}".prop_map(Value::String),
        1 => any_value(),
    ]
}

/// An object with each of `keys` present most of the time (values from [`field`]), and
/// sometimes an unknown key.
fn object_of(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(prop::option::weighted(0.9, field()), keys.len()),
        prop::option::weighted(0.2, ("[A-Z][a-z]{0,4}", any_value())),
    )
        .prop_map(move |(fields, extra)| {
            let mut m = serde_json::Map::new();
            for (k, v) in keys.iter().zip(fields) {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            if let Some((k, v)) = extra {
                m.insert(k, v);
            }
            Value::Object(m)
        })
}

/// Objects in the vocabulary of the original CRD (its fields, plus noise).
fn seed_vocabulary() -> impl Strategy<Value = Value> {
    let list = |keys: &'static [&'static str]| {
        prop_oneof![
            9 => prop::collection::vec(object_of(keys), 0..3).prop_map(Value::Array),
            1 => any_value(),
        ]
    };
    let gates = prop_oneof![
        3 => prop::collection::btree_map("[a-z_]{1,5}", field(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => any_value(),
    ];
    (
        prop::option::weighted(0.9, list(&["dst", "dev", "via"])),
        prop::option::weighted(0.9, list(&["namespace", "name", "dev", "via"])),
        prop::option::of(gates),
        prop::option::of(field()),
    )
        .prop_map(|(route, svc, gates, status)| {
            let mut spec = serde_json::Map::new();
            if let Some(r) = route {
                spec.insert("route".into(), r);
            }
            if let Some(s) = svc {
                spec.insert("svc".into(), s);
            }
            if let Some(g) = gates {
                spec.insert("feature_gate".into(), g);
            }
            let mut obj = json!({"apiVersion": "k8s.ovn.org/v1", "kind": "Route",
                                 "metadata": {"name": "r"}, "spec": spec});
            if let Some(s) = status {
                obj["status"] = json!({"status": s});
            }
            obj
        })
}

static SEED: LazyLock<jsonschema::Validator> = LazyLock::new(seed);
static GENERATED: LazyLock<jsonschema::Validator> = LazyLock::new(generated);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the original CRD accepts, the generated one accepts.
    #[test]
    fn everything_the_seed_crd_accepts_is_accepted(obj in seed_vocabulary()) {
        let (seed, ours) = (&*SEED, &*GENERATED);
        if seed.is_valid(&obj) {
            prop_assert!(ours.is_valid(&obj), "{obj}: {:?}", errors(ours, &obj));
        }
    }
}

#[test]
fn the_property_test_sees_accepted_objects() {
    // Guard against a generator that only produces rejected objects (a vacuous property).
    let s = seed();
    let obj = route(
        json!({"route": [{"dst": "a", "dev": "b"}], "svc": [{"namespace": "a",
        "name": "b", "dev": "c", "via": "d"}], "feature_gate": {"x": "y"}}),
    );
    assert!(s.is_valid(&obj));
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strat = seed_vocabulary();
    let accepted = (0..500)
        .filter(|_| s.is_valid(&strat.new_tree(&mut runner).unwrap().current()))
        .count();
    assert!(
        accepted > 50,
        "only {accepted} of 500 generated objects are seed-valid"
    );
}
