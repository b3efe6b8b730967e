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
