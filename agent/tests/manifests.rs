//! The deployment manifests (`manifests/`), checked without a cluster: every file parses into
//! the Kubernetes types its `kind` names, the ClusterRole grants exactly what the agent uses
//! (`veer_agent::k8s::API_ACCESS`), and the DaemonSet mounts and capabilities are what the
//! agent needs (and no more).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde_json::Value;
use veer_agent::k8s::{API_ACCESS, crd::Route};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every document of every file: (file name, document).
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
        for d in docs.into_iter().filter(|d| !d.is_null()) {
            out.push((name.clone(), d));
        }
    }
    out
}

fn of_kind<T: DeserializeOwned>(kind: &str) -> Vec<T> {
    documents()
        .into_iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(f, d)| serde_json::from_value(d).unwrap_or_else(|e| panic!("{f}: {kind}: {e}")))
        .collect()
}

fn one<T: DeserializeOwned>(kind: &str) -> T {
    let mut v = of_kind::<T>(kind);
    assert_eq!(v.len(), 1, "exactly one {kind}");
    v.remove(0)
}

#[test]
fn every_document_has_a_known_kind_and_api_version_and_parses() {
    let known: BTreeMap<&str, &str> = [
        ("Namespace", "v1"),
        ("ServiceAccount", "v1"),
        ("ClusterRole", "rbac.authorization.k8s.io/v1"),
        ("ClusterRoleBinding", "rbac.authorization.k8s.io/v1"),
        ("DaemonSet", "apps/v1"),
        ("CustomResourceDefinition", "apiextensions.k8s.io/v1"),
        ("Route", "k8s.ovn.org/v1"),
        ("Kustomization", "kustomize.config.k8s.io/v1beta1"),
    ]
    .into();
    let mut seen = BTreeSet::new();
    for (f, d) in documents() {
        let kind = d["kind"].as_str().unwrap_or_else(|| panic!("{f}: no kind"));
        let api = d["apiVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("{f}: no apiVersion"));
        assert_eq!(known.get(kind), Some(&api), "{f}: {api} {kind}");
        seen.insert(kind.to_string());
    }
    assert_eq!(seen.len(), known.len(), "every kind present: {seen:?}");
    // Each parses as its Kubernetes type.
    one::<Namespace>("Namespace");
    one::<ServiceAccount>("ServiceAccount");
    one::<ClusterRole>("ClusterRole");
    one::<ClusterRoleBinding>("ClusterRoleBinding");
    one::<DaemonSet>("DaemonSet");
    one::<CustomResourceDefinition>("CustomResourceDefinition");
    assert!(!of_kind::<Route>("Route").is_empty());
}

#[test]
fn kustomization_lists_every_deployable_file() {
    let k = documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "Kustomization")
        .unwrap()
        .1;
    let listed: BTreeSet<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    for f in &listed {
        assert!(Path::new(&dir().join(f)).exists(), "{f} listed but missing");
    }
    // Everything but the kustomization itself and the example Route is deployed.
    let deployable: BTreeSet<String> = documents()
        .into_iter()
        .filter(|(_, d)| d["kind"] != "Kustomization" && d["kind"] != "Route")
        .map(|(f, _)| f)
        .collect();
    assert_eq!(listed, deployable);
}

#[test]
fn namespaced_objects_share_the_namespace_and_names_line_up() {
    let ns = one::<Namespace>("Namespace").metadata.name.unwrap();
    let sa = one::<ServiceAccount>("ServiceAccount");
    let ds = one::<DaemonSet>("DaemonSet");
    let role = one::<ClusterRole>("ClusterRole");
    let binding = one::<ClusterRoleBinding>("ClusterRoleBinding");
    assert_eq!(sa.metadata.namespace.as_ref(), Some(&ns));
    assert_eq!(ds.metadata.namespace.as_ref(), Some(&ns));
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace.as_ref(), Some(&ns));
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name, sa.metadata.name);
}

#[test]
fn cluster_role_grants_exactly_what_the_agent_uses() {
    let role = one::<ClusterRole>("ClusterRole");
    let mut granted = BTreeSet::new();
    for r in role.rules.unwrap() {
        assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
        for g in r.api_groups.unwrap_or_default() {
            for res in r.resources.clone().unwrap_or_default() {
                for v in &r.verbs {
                    assert_ne!(v, "*", "no wildcard verbs");
                    assert_ne!(res, "*", "no wildcard resources");
                    granted.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = API_ACCESS
        .iter()
        .flat_map(|a| {
            a.verbs
                .iter()
                .map(|v| (a.group.to_string(), a.resource.to_string(), v.to_string()))
        })
        .collect();
    let missing: Vec<_> = wanted.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&wanted).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "manifests/rbac.yaml vs veer_agent::k8s::API_ACCESS: missing {missing:?}, extra {extra:?}"
    );
}

#[test]
fn daemonset_mounts_and_capabilities() {
    let ds = one::<DaemonSet>("DaemonSet");
    let pod = ds.spec.template.spec.unwrap();
    assert_ne!(pod.host_pid, Some(true));
    let all_volumes = pod.volumes.unwrap();
    // The only non-host volume: a small in-memory emptyDir for the status file and rule index
    // (the root filesystem is read-only).
    let scratch: Vec<_> = all_volumes
        .iter()
        .filter(|v| v.host_path.is_none())
        .collect();
    assert_eq!(scratch.len(), 1, "one emptyDir besides the host paths");
    let run = scratch[0].empty_dir.as_ref().expect("an emptyDir");
    assert_eq!(run.medium.as_deref(), Some("Memory"));
    let volumes: BTreeMap<String, String> = all_volumes
        .iter()
        .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
        .collect();
    let c = pod
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .expect("an agent container");

    let mounts: BTreeMap<String, _> = c
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .map(|m| (m.mount_path.clone(), m))
        .collect();
    let host = |path: &str| volumes[&mounts[path].name].clone();
    // Pinned maps and links.
    assert_eq!(host("/sys/fs/bpf"), "/sys/fs/bpf");
    assert_ne!(mounts["/sys/fs/bpf"].read_only, Some(true));
    // Pod network namespaces: new ones must show up after the agent started.
    assert_eq!(host("/var/run/netns"), "/var/run/netns");
    assert_eq!(
        mounts["/var/run/netns"].mount_propagation.as_deref(),
        Some("HostToContainer")
    );
    // The CNI result cache is only read.
    assert_eq!(host("/var/lib/cni/results"), "/var/lib/cni/results");
    assert_eq!(mounts["/var/lib/cni/results"].read_only, Some(true));
    // The status directory lives in the emptyDir, writable.
    assert_eq!(mounts["/run/veer"].name, scratch[0].name);
    assert_ne!(mounts["/run/veer"].read_only, Some(true));
    assert_eq!(mounts.len(), 4, "no other mounts: {:?}", mounts.keys());

    let sc = c.security_context.clone().unwrap();
    assert_ne!(
        sc.privileged,
        Some(true),
        "explicit capabilities, not privileged"
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let add: BTreeSet<String> = caps.add.unwrap().into_iter().collect();
    let want: BTreeSet<String> = ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN"]
        .map(String::from)
        .into();
    assert_eq!(add, want);

    // Kubernetes mode, with the node name from the downward API.
    let args = c.args.clone().unwrap();
    assert!(args.iter().any(|a| a == "--kubernetes"), "{args:?}");
    assert!(
        args.iter().any(|a| a == "--node-name=$(NODE_NAME)"),
        "{args:?}"
    );
    let env = c.env.clone().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    assert_eq!(
        node.value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName")
    );
}

#[test]
fn the_daemonset_log_filter_lets_the_debug_events_through() {
    let ds = one::<DaemonSet>("DaemonSet");
    let pod = ds.spec.template.spec.unwrap();
    let c = pod.containers.iter().find(|c| c.name == "agent").unwrap();
    // Unset, the agent's default (`info,veer_ebpf=debug`) applies; set, it replaces it, and
    // `veer debug on` would show nothing unless it names the events' target at debug or finer.
    if let Some(filter) = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "RUST_LOG")
        .and_then(|e| e.value.as_deref())
    {
        let level = filter
            .split(',')
            .find_map(|d| d.trim().strip_prefix("veer_ebpf="));
        assert!(
            matches!(level, Some("debug" | "trace")),
            "RUST_LOG={filter:?} hides the debug events (target veer_ebpf)"
        );
    }
}

#[test]
fn example_route_is_the_seed_demo() {
    let demo: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/seed/route-demo.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let example = documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "Route")
        .unwrap()
        .1;
    assert_eq!(example, demo);
}

// ---- manifests/monitoring/ and manifests/cleanup/ (optional, not in the default kustomization)

/// The PromQL tokenizer shared with the root test against a running agent
/// (`tests/tests/e2e_cli.rs`, which uses it as `veer_tests::promql`).
#[path = "../../tests/src/promql.rs"]
#[allow(dead_code)]
mod promql;

/// The single document of `manifests/<rel>`.
fn doc_at(rel: &str) -> Value {
    let p = dir().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"))
}

fn dashboard() -> Value {
    let p = dir().join("monitoring/veer-dashboard.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()))
}

/// The YAML files of `manifests/<sub>` (not recursive) except the kustomization.
fn yaml_files(sub: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir().join(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// A Prometheus duration (`5m`, `2h`, `30s`, `1h30m`).
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u) && !(*u == "m" && rest.starts_with("ms")));
        let Some(u) = unit else { return false };
        rest = &rest[u.len()..];
        any = true;
    }
    any
}

#[test]
fn monitoring_manifests_parse_with_their_kinds_and_api_versions() {
    let k = doc_at("monitoring/kustomization.yaml");
    assert_eq!(k["kind"], "Kustomization");
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(
        strings(&k["resources"]),
        yaml_files("monitoring"),
        "monitoring/kustomization.yaml lists every YAML file beside it"
    );
    let want: BTreeMap<&str, (&str, &str)> = [
        (
            "podmonitor.yaml",
            ("PodMonitor", "monitoring.coreos.com/v1"),
        ),
        (
            "prometheusrule.yaml",
            ("PrometheusRule", "monitoring.coreos.com/v1"),
        ),
    ]
    .into();
    assert_eq!(
        want.keys().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        yaml_files("monitoring")
    );
    let ns = one::<Namespace>("Namespace").metadata.name.unwrap();
    for (file, (kind, api)) in &want {
        let d = doc_at(&format!("monitoring/{file}"));
        assert_eq!(d["kind"], *kind, "{file}");
        assert_eq!(d["apiVersion"], *api, "{file}");
        assert_eq!(d["metadata"]["namespace"], ns.as_str(), "{file}");
    }
    // The dashboard ConfigMap, generated from the JSON file, carries the sidecar's label.
    let gens = k["configMapGenerator"]
        .as_array()
        .expect("configMapGenerator");
    assert_eq!(gens.len(), 1);
    let g = &gens[0];
    assert_eq!(
        strings(&g["files"]),
        ["veer-dashboard.json".to_string()].into()
    );
    assert_eq!(g["options"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(g["options"]["disableNameSuffixHash"], true);
    assert_eq!(g["namespace"], ns.as_str());
    dashboard();

    // The PodMonitor selects the agent pods, on the port the DaemonSet names, and adds the
    // `node` label the alerts and the dashboard group by.
    let pm = doc_at("monitoring/podmonitor.yaml");
    let ds = one::<DaemonSet>("DaemonSet");
    let pod_labels = ds.spec.template.metadata.unwrap().labels.unwrap();
    let sel = pm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    assert!(!sel.is_empty());
    for (k, v) in sel {
        assert_eq!(pod_labels.get(k).map(String::as_str), v.as_str(), "{k}");
    }
    assert_eq!(
        strings(&pm["spec"]["namespaceSelector"]["matchNames"]),
        [ns].into()
    );
    let pod = ds.spec.template.spec.unwrap();
    let agent = pod.containers.iter().find(|c| c.name == "agent").unwrap();
    let ports = agent.ports.clone().unwrap();
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == ep["port"].as_str() && p.container_port == 9464),
        "PodMonitor port {} vs {ports:?}",
        ep["port"]
    );
    assert_eq!(ep["path"], "/metrics");
    assert!(
        ep["relabelings"].as_array().unwrap().iter().any(|r| {
            r["targetLabel"] == "node"
                && r["sourceLabels"] == serde_json::json!(["__meta_kubernetes_pod_node_name"])
        }),
        "the PodMonitor sets the node label"
    );
}

#[test]
fn every_alert_has_a_parsable_expr_a_for_a_severity_a_summary_and_a_description() {
    let rule = doc_at("monitoring/prometheusrule.yaml");
    let mut names = BTreeSet::new();
    let mut n = 0;
    for g in rule["spec"]["groups"].as_array().unwrap() {
        assert!(g["name"].as_str().is_some_and(|s| !s.is_empty()));
        for r in g["rules"].as_array().unwrap() {
            let alert = r["alert"].as_str().expect("alerting rules only");
            assert!(names.insert(alert.to_string()), "duplicate alert {alert}");
            let expr = r["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{alert}: empty expr");
            let refs = promql::refs(expr).unwrap_or_else(|e| panic!("{alert}: {e}"));
            assert!(!refs.selectors.is_empty(), "{alert}: no metric in {expr}");
            let f = r["for"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert}: no for:"));
            assert!(is_duration(f), "{alert}: for: {f}");
            assert!(
                matches!(
                    r["labels"]["severity"].as_str(),
                    Some("critical" | "warning" | "info")
                ),
                "{alert}: severity"
            );
            for a in ["summary", "description"] {
                assert!(
                    r["annotations"][a].as_str().is_some_and(|s| s.len() > 10),
                    "{alert}: annotation {a}"
                );
            }
            n += 1;
        }
    }
    // What docs/operations.md promises an alert for.
    for a in [
        "VeerDatapathDrops",
        "VeerDatapathErrors",
        "VeerFlowTablePressure",
        "VeerFlowsEvicted",
        "VeerRuleTablePressure",
        "VeerAgentNotReady",
        "VeerAgentStalled",
        "VeerMapsUnreadable",
        "VeerSourceErrors",
        "VeerDebugEventsLeftOn",
    ] {
        assert!(names.contains(a), "no alert {a}: {names:?}");
    }
    assert_eq!(n, names.len());
}

#[test]
fn the_dashboard_is_valid_json_with_a_query_in_every_panel() {
    let d = dashboard();
    assert_eq!(d["uid"], "veer-agent");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap().to_string();
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let e = t["expr"].as_str().unwrap_or("");
            assert!(!e.trim().is_empty(), "{title}: empty expr");
            promql::refs(e).unwrap_or_else(|err| panic!("{title}: {err}"));
        }
        titles.insert(title);
    }
    // The panels the issue asks for.
    for want in [
        "Steered packets by route, entry and dev",
        "Steered bytes by route, entry and dev",
        "Datapath outcomes by class",
        "Datapath outcomes by reason",
        "Flow entries by kind",
        "Map pressure",
        "Reconcile duration",
        "Pod attach latency",
        "Pods managed",
        "Source errors",
    ] {
        assert!(titles.contains(want), "no panel {want:?}: {titles:?}");
    }
    let vars = promql::dashboard_variable_queries(&d);
    assert!(!vars.is_empty());
    for v in vars {
        assert!(
            promql::grafana_label_values(&v.expr).is_some(),
            "{}: {}",
            v.origin,
            v.expr
        );
    }
}

/// Sample names of the metrics table of docs/operations.md ("Metrics, health, logs"):
/// counters are listed with `_total`; a histogram `x` is served as `x_bucket`, `x_sum`,
/// `x_count`.
fn documented_metric_samples() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(dir().join("../docs/operations.md")).unwrap();
    let table = doc
        .split_once("| metric | type | labels |")
        .expect("the metrics table")
        .1;
    let mut out = BTreeSet::new();
    for line in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, ty) = (cells[1], cells[2]);
        for n in names.split('`').filter(|s| s.starts_with("veer_")) {
            out.insert(n.to_string());
            if ty == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{n}{s}"));
                }
            }
        }
    }
    assert!(out.len() > 15, "{out:?}");
    out
}

#[test]
fn the_alerts_and_the_dashboard_use_only_documented_metrics() {
    let documented = documented_metric_samples();
    let rule = doc_at("monitoring/prometheusrule.yaml");
    let d = dashboard();
    let mut exprs = promql::rule_exprs(&rule);
    exprs.extend(promql::dashboard_exprs(&d));
    for v in promql::dashboard_variable_queries(&d) {
        let (sel, _) = promql::grafana_label_values(&v.expr).unwrap();
        exprs.push(promql::Expr {
            origin: v.origin,
            expr: sel.to_string(),
        });
    }
    let mut bad = Vec::new();
    for e in &exprs {
        for s in promql::refs(&e.expr).unwrap().selectors {
            // `up` is recorded by Prometheus for every target.
            if s.metric != "up" && !documented.contains(&s.metric) {
                bad.push(format!("{}: {}", e.origin, s.metric));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "not in the metrics table of docs/operations.md:\n{}",
        bad.join("\n")
    );
}

/// Applies a JSON 6902 patch (the `add`, `replace`, `remove` operations the manifests use).
fn json_patch(doc: &mut Value, ops: &Value) {
    for op in ops.as_array().unwrap() {
        let path = op["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        let target = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("patch path {path}: no {parent}"));
        match (op["op"].as_str().unwrap(), target) {
            ("add", Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            ("add", Value::Object(o)) => {
                o.insert(last.into(), op["value"].clone());
            }
            ("replace", t) => {
                let slot = match t {
                    Value::Array(a) => a.get_mut(last.parse::<usize>().unwrap()),
                    Value::Object(o) => o.get_mut(last),
                    _ => None,
                }
                .unwrap_or_else(|| panic!("replace {path}: nothing there"));
                *slot = op["value"].clone();
            }
            ("remove", Value::Object(o)) => {
                assert!(o.remove(last).is_some(), "remove {path}: nothing there");
            }
            (other, _) => panic!("unsupported op {other} at {path}"),
        }
    }
}

#[test]
fn the_expose_metrics_component_binds_the_node_address_and_probes_it_there() {
    let k = doc_at("monitoring/expose-metrics/kustomization.yaml");
    assert_eq!(k["kind"], "Component");
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1alpha1");
    let patches = k["patches"].as_array().unwrap();
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0]["target"]["kind"], "DaemonSet");
    let ds_doc = documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "DaemonSet")
        .unwrap()
        .1;
    assert_eq!(patches[0]["target"]["name"], ds_doc["metadata"]["name"]);
    let ops = doc_at(&format!(
        "monitoring/expose-metrics/{}",
        patches[0]["path"].as_str().unwrap()
    ));
    // The replaced argument is the base's metrics address (the patch addresses it by index).
    let args = &ds_doc["spec"]["template"]["spec"]["containers"][0]["args"];
    for op in ops.as_array().unwrap() {
        if op["op"] == "replace" {
            let i: usize = op["path"]
                .as_str()
                .unwrap()
                .rsplit_once('/')
                .unwrap()
                .1
                .parse()
                .unwrap();
            assert_eq!(args[i], "--metrics-address=127.0.0.1:9464", "patch {op}");
        }
    }
    let mut patched = ds_doc.clone();
    json_patch(&mut patched, &ops);
    let ds: DaemonSet = serde_json::from_value(patched).expect("the patched DaemonSet parses");
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    let c = pod.containers.iter().find(|c| c.name == "agent").unwrap();
    let addrs: Vec<&String> = c
        .args
        .iter()
        .flatten()
        .filter(|a| a.starts_with("--metrics-address"))
        .collect();
    assert_eq!(addrs, ["--metrics-address=$(HOST_IP):9464"]);
    let host_ip = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "HOST_IP")
        .expect("HOST_IP env");
    assert_eq!(
        host_ip
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("status.hostIP")
    );
    for (what, probe) in [
        ("liveness", c.liveness_probe.as_ref()),
        ("readiness", c.readiness_probe.as_ref()),
    ] {
        let get = probe.and_then(|p| p.http_get.as_ref()).expect(what);
        assert_eq!(
            get.host, None,
            "{what} probe: the kubelet probes the pod (node) address"
        );
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9464),
            "{what}"
        );
    }
}

#[test]
fn the_cleanup_daemonset_runs_veer_cleanup_on_every_node_with_bpffs() {
    let k = doc_at("cleanup/kustomization.yaml");
    assert_eq!(k["kind"], "Kustomization");
    assert_eq!(strings(&k["resources"]), yaml_files("cleanup"));
    let ns: Namespace = serde_json::from_value(doc_at("cleanup/namespace.yaml")).unwrap();
    let ds: DaemonSet = serde_json::from_value(doc_at("cleanup/daemonset.yaml")).unwrap();
    assert_eq!(ds.metadata.namespace, ns.metadata.name);
    let agent_ds = one::<DaemonSet>("DaemonSet");
    let agent_pod = agent_ds.spec.template.spec.unwrap();
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(
        pod.tolerations, agent_pod.tolerations,
        "every node the agent ran on"
    );
    let c = &pod.containers[0];
    assert_eq!(c.image, agent_pod.containers[0].image, "the agent's image");
    let script = c.args.clone().unwrap().join(" ");
    assert!(script.starts_with("veer cleanup &&"), "{script}");
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/sys/fs/bpf")
        .expect("bpffs mount");
    assert_ne!(m.read_only, Some(true));
    let v = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == m.name)
        .unwrap();
    assert_eq!(v.host_path.as_ref().unwrap().path, "/sys/fs/bpf");
}
