//! The input layer against the fixtures in `tests/fixtures/` (repo root): the original seed
//! data (verbatim copies of `shared/seed/`), Route files in every supported form, a Services
//! file in `kubectl get -o yaml` form, and a CNI results directory.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use veer_agent::config::compile::{Compiled, compile_all_pods, diff};
use veer_agent::config::load::{self, LoadError, RouteSet};
use veer_agent::config::route::{NamespacedName, RouteSpec, Target};
use veer_agent::config::services::{self, ServiceIndex};
use veer_agent::config::{cni, route};
use veer_agent::lpm::RefRules;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures").join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(fixture(rel)).unwrap()
}

fn index() -> ServiceIndex {
    let objs = services::load_file(&fixture("services/services.yaml")).unwrap();
    ServiceIndex::from_objects([&objs])
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn seed_copies_are_identical_to_shared_seed_when_it_exists() {
    let shared = repo().join("../shared/seed");
    let copies = fixture("seed");
    let Ok(dir) = std::fs::read_dir(&shared) else {
        eprintln!(
            "{} not present; only the copies are checked",
            shared.display()
        );
        assert!(copies.join("route-demo.yaml").is_file());
        return;
    };
    let mut names: Vec<_> = dir.map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert!(!names.is_empty());
    for name in names {
        let original = std::fs::read(shared.join(&name)).unwrap();
        let copy = std::fs::read(copies.join(&name))
            .unwrap_or_else(|e| panic!("tests/fixtures/seed/{name:?}: {e}"));
        assert!(
            original == copy,
            "tests/fixtures/seed/{name:?} differs from shared/seed"
        );
    }
}

#[test]
fn original_demo_route_parses_unchanged() {
    let f = load::load_file(&fixture("seed/route-demo.yaml")).unwrap();
    assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    assert_eq!(f.routes.len(), 1);
    let r = &f.routes[0];
    assert_eq!((r.name.as_str(), r.shorthand), ("demo", false));
    assert_eq!(r.spec.route.len(), 2);
    assert_eq!(r.spec.svc.len(), 3);
    assert!(r.spec.svc.iter().all(|s| s.via.is_none()));
    let got: Vec<(String, Target, String)> = r
        .rules
        .iter()
        .map(|x| (x.path.clone(), x.target.clone(), x.dev.clone()))
        .collect();
    let svc = |ns: &str, n: &str| {
        Target::Service(NamespacedName {
            namespace: ns.into(),
            name: n.into(),
        })
    };
    assert_eq!(
        got,
        [
            (
                "spec.route[0]".into(),
                Target::Cidr(net("172.16.10.0/24")),
                "eth1".into()
            ),
            (
                "spec.route[1]".into(),
                Target::Cidr(net("172.16.11.0/24")),
                "eth0".into()
            ),
            ("spec.svc[0]".into(), svc("default", "nginx"), "eth1".into()),
            (
                "spec.svc[1]".into(),
                svc("kube-system", "nginx1"),
                "eth0".into()
            ),
            (
                "spec.svc[2]".into(),
                svc("kube-system", "nginx2"),
                "eth0".into()
            ),
        ]
    );
}

#[test]
fn demo_with_services_steers_like_the_original_route_table() {
    let f = load::load_file(&fixture("seed/route-demo.yaml")).unwrap();
    let c = compile_all_pods(&f.routes, &index(), &Compiled::default()).unwrap();
    assert!(c.issues.is_empty() && c.conflicts.is_empty(), "{c:?}");
    let mut model = RefRules::new();
    for e in c.entries.values() {
        model.insert(e.ruleset, e.dst, e.value);
    }
    let dev = |addr: &str| {
        let slot = model.lookup(1, addr.parse().unwrap())?.value.slot;
        c.slots.by_slot()[usize::from(slot)].map(String::from)
    };
    assert_eq!(
        dev("10.86.205.109").as_deref(),
        Some("eth1"),
        "default/nginx"
    );
    assert_eq!(
        dev("10.86.69.17").as_deref(),
        Some("eth0"),
        "kube-system/nginx1"
    );
    assert_eq!(
        dev("fd00:86::45:11").as_deref(),
        Some("eth0"),
        "nginx1, second family"
    );
    assert_eq!(
        dev("10.124.0.21").as_deref(),
        Some("eth0"),
        "headless nginx2, ready"
    );
    assert_eq!(dev("10.124.1.9"), None, "not-ready endpoint left out");
    assert_eq!(dev("172.16.10.5").as_deref(), Some("eth1"));
    assert_eq!(dev("172.16.11.5").as_deref(), Some("eth0"));
    assert_eq!(dev("8.8.8.8"), None, "no rule: the pod's own routing");
}

#[test]
fn seed_crd_accepts_nothing_that_route_spec_rejects_structurally() {
    // Every property of the seed CRD's spec exists in RouteSpec's schema with the same type,
    // and RouteSpec requires a subset of what the seed CRD requires.
    let crd: serde_json::Value = serde_saphyr::from_str(&read("seed/route-crd.yaml")).unwrap();
    let seed = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let ours = schemars::generate::SchemaSettings::openapi3()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<RouteSpec>();
    let ours = serde_json::to_value(ours).unwrap();
    fn check(seed: &serde_json::Value, ours: &serde_json::Value, path: &str) {
        assert_eq!(seed["type"], ours["type"], "{path}: type");
        let required = |v: &serde_json::Value| -> Vec<String> {
            v["required"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        for r in required(ours) {
            assert!(
                required(seed).contains(&r),
                "{path}: {r} required by veer only"
            );
        }
        if let Some(props) = seed["properties"].as_object() {
            for (k, v) in props {
                check(v, &ours["properties"][k], &format!("{path}.{k}"));
            }
        }
        if seed.get("items").is_some() {
            check(&seed["items"], &ours["items"], &format!("{path}[]"));
        }
        if let Some(ap) = seed.get("additionalProperties") {
            check(ap, &ours["additionalProperties"], &format!("{path}{{}}"));
        }
    }
    check(seed, &ours, "spec");
    // The demo's svc[] entries have no via, which the seed YAML alone would require.
    let demo: serde_json::Value = serde_saphyr::from_str(&read("seed/route-demo.yaml")).unwrap();
    serde_json::from_value::<RouteSpec>(demo["spec"].clone()).unwrap();
}

#[test]
fn route_spec_deserializes_objects_the_seed_crd_accepts() {
    // Minimal (required fields only, as the seed CRD wants them) and maximal objects.
    for spec in [
        r#"{"route": [], "svc": []}"#,
        r#"{"route": [{"dst": "10.0.0.0/8", "dev": "eth1", "via": "10.124.0.1"}],
            "svc": [{"namespace": "a", "name": "b", "dev": "eth0", "via": "10.0.0.1"}],
            "feature_gate": {"x": "y"}}"#,
    ] {
        let s: RouteSpec = serde_json::from_str(spec).unwrap();
        s.check().unwrap();
    }
}

#[test]
fn shorthand_json_array_becomes_a_route_named_after_the_file() {
    let f = load::load_file(&fixture("routes.d/10-shorthand.json")).unwrap();
    let r = &f.routes[0];
    assert_eq!((r.name.as_str(), r.shorthand), ("10-shorthand.json", true));
    assert_eq!(r.rules.len(), 3);
    assert_eq!(r.rules[1].target, Target::Cidr(net("172.16.0.0/16")));
    assert_eq!(
        r.rules[1].via,
        Some("10.124.2.1".parse::<IpAddr>().unwrap())
    );
    assert_eq!(r.rules[2].path, "document 1 [2]");
}

#[test]
fn shorthand_single_object_json_is_one_rule() {
    let f = load::load_str(
        Path::new("one.json"),
        r#"{"svc": "default/nginx1", "dev": "eth0"}"#,
    )
    .unwrap();
    assert_eq!(f.routes[0].rules.len(), 1);
    assert_eq!(f.routes[0].rules[0].path, "document 1");
}

#[test]
fn shorthand_yaml_documents_and_lists_join_one_route() {
    let f = load::load_file(&fixture("routes.d/20-shorthand.yaml")).unwrap();
    assert_eq!(f.routes.len(), 1);
    let paths: Vec<&str> = f.routes[0].rules.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["document 1", "document 2", "document 3 [0]"]);
}

#[test]
fn kubectl_list_output_loads_every_item_and_ignores_server_fields() {
    let f = load::load_file(&fixture("routes.d/30-list.yaml")).unwrap();
    let names: Vec<&str> = f.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["list-a", "list-b"]);
    assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    assert_eq!(f.routes[1].spec.priority, 10);
}

#[test]
fn multi_document_yaml_loads_each_route_and_warns_on_unknown_gates() {
    let f = load::load_file(&fixture("routes.d/40-multi.yaml")).unwrap();
    let names: Vec<&str> = f.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["multi-a", "multi-b"]);
    assert_eq!(
        f.routes[1].origin.document, 2,
        "empty documents do not count"
    );
    let w: Vec<String> = f.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        [format!(
            "{}: document 2 (Route \"multi-b\"): spec.feature_gate.someGate: unknown feature gate, ignored",
            fixture("routes.d/40-multi.yaml").display()
        )]
    );
}

#[test]
fn load_dir_reads_sorted_config_files_and_isolates_a_bad_file() {
    let dir = fixture("routes.d");
    let results = load::load_dir(&dir).unwrap();
    let names: Vec<String> = results
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "10-shorthand.json",
            "20-shorthand.yaml",
            "30-list.yaml",
            "40-multi.yaml",
            "50-bad.yaml"
        ]
    );
    let errs: Vec<String> = results[4]
        .1
        .as_ref()
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errs,
        [format!(
            "{}: document 1 (Route \"bad\"): spec.route[1].dst: \"172.16.10.0/33\" is not a CIDR",
            dir.join("50-bad.yaml").display()
        )]
    );
    assert!(results[..4].iter().all(|(_, r)| r.is_ok()));
}

#[test]
fn route_set_keeps_the_last_good_version_of_a_file_that_turns_bad() {
    let path = PathBuf::from("/etc/veer/routes/r.yaml");
    let good = "route: 10.0.0.0/8\ndev: eth1\n";
    let bad = "route: 10.0.0.0/88\ndev: eth1\n";
    let mut set = RouteSet::new();
    let errors = set.update_dir(vec![(path.clone(), load::load_str(&path, good))]);
    assert!(errors.is_empty());
    let errors = set.update_dir(vec![(path.clone(), load::load_str(&path, bad))]);
    assert!(matches!(&errors[..], [LoadError::Invalid { path, .. }] if path == "route"));
    let kept: Vec<_> = set
        .routes()
        .flat_map(|r| &r.rules)
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(kept, [Target::Cidr(net("10.0.0.0/8"))]);
    set.update_dir(vec![]);
    assert_eq!(set.routes().count(), 0, "a deleted file is dropped");
}

#[test]
fn whole_directory_compiles_with_conflicts_and_issues_reported() {
    let mut set = RouteSet::new();
    let errors = set.update_dir(load::load_dir(&fixture("routes.d")).unwrap());
    assert_eq!(errors.len(), 1, "only 50-bad.yaml");
    let c = compile_all_pods(set.routes(), &index(), &Compiled::default()).unwrap();
    let slots: Vec<(&str, u16)> = c.slots.iter().collect();
    assert_eq!(slots, [("eth0", 0), ("eth1", 1)]);
    // list-b (priority 10) beats list-a on 10.200.0.0/16.
    let e = &c.entries[&(1, net("10.200.0.0/16"))];
    assert_eq!((e.from.route.as_str(), e.value.slot), ("list-b", 0));
    let issues: Vec<String> = c.issues.iter().map(ToString::to_string).collect();
    assert_eq!(
        issues,
        [
            r#"Route "20-shorthand.yaml" document 1 (Service kube-system/kube-dns): Service kube-system/kube-dns not found"#
        ]
    );
    assert_eq!(c.conflicts.len(), 1);
    assert!(diff(&c, &compile_all_pods(set.routes(), &index(), &c).unwrap()).is_empty());
}

#[test]
fn cni_seed_cache_file_yields_the_pod_and_its_netns() {
    let p = fixture("seed/cni-loopback-result.json");
    let pod = cni::parse(&p, &std::fs::read(&p).unwrap()).unwrap();
    assert_eq!(pod.namespace, "kube-system");
    assert_eq!(pod.name, "calico-kube-controllers-7f7bf765bb-whl8g");
    assert_eq!(pod.uid, "174eecc3-58fa-42d1-8501-7f9004a28b76");
    assert_eq!(
        pod.container_id,
        "501bfc5a143cef8f0ed14c68112bbb321eae430e2ff3ec40357e226608c1a5cd"
    );
    assert_eq!(
        pod.netns,
        Path::new("/var/run/netns/cni-219052a8-dc07-14ad-2249-d380a989e501")
    );
}

#[test]
fn cni_scan_reads_only_lo_files_and_reports_bad_ones() {
    let dir = fixture("cni/results");
    let (pods, errors) = cni::scan_dir(&dir);
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].name, "calico-kube-controllers-7f7bf765bb-whl8g");
    assert_eq!(errors.len(), 1);
    let msg = errors[0].to_string();
    let prefix = format!(
        "{}: not a CNI cache file: ",
        dir.join("cni-loopback-deadbeef-lo").display()
    );
    assert!(msg.starts_with(&prefix), "{msg}");
    let (none, errors) = cni::scan_dir(&dir.join("missing"));
    assert!(none.is_empty() && errors.len() == 1);
}

#[test]
fn route_constants_match_the_seed_crd() {
    let crd: serde_json::Value = serde_saphyr::from_str(&read("seed/route-crd.yaml")).unwrap();
    assert_eq!(crd["spec"]["group"], route::GROUP);
    assert_eq!(crd["spec"]["names"]["kind"], route::KIND);
    assert_eq!(crd["spec"]["versions"][0]["name"], route::VERSION);
    assert_eq!(
        route::API_VERSION,
        format!("{}/{}", route::GROUP, route::VERSION)
    );
}

/// The class of a load error: an exhaustive match, so a new class does not compile until
/// [`every_route_validation_error_class_has_its_exact_message`] covers it.
fn class(e: &LoadError) -> String {
    match e {
        LoadError::Io { .. } => "io".into(),
        LoadError::Syntax { .. } => "syntax".into(),
        LoadError::Shape { .. } => "shape".into(),
        LoadError::WrongKind { .. } => "wrong_kind".into(),
        LoadError::DuplicateName { .. } => "duplicate_name".into(),
        LoadError::Invalid { problem, .. } => format!(
            "invalid/{}",
            match problem {
                route::Problem::NotCidr => "not_cidr",
                route::Problem::HostBits { .. } => "host_bits",
                route::Problem::InterfaceName(_) => "interface_name",
                route::Problem::NotIp => "not_ip",
                route::Problem::ViaFamily { .. } => "via_family",
                route::Problem::ViaNotUnicast => "via_not_unicast",
                route::Problem::NotLabel { .. } => "not_label",
                route::Problem::NotSubdomain { .. } => "not_subdomain",
                route::Problem::NotServiceRef => "not_service_ref",
                route::Problem::SelectorValues { .. } => "selector_values",
            }
        ),
    }
}

#[test]
fn every_route_validation_error_class_has_its_exact_message() {
    let cr = |spec: &str| {
        format!("apiVersion: k8s.ovn.org/v1\nkind: Route\nmetadata: {{name: r}}\nspec:\n{spec}")
    };
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "syntax",
            "a.yaml",
            "route: [".into(),
            "a.yaml: not valid YAML: ",
        ),
        (
            "syntax",
            "a.json",
            "{\"route\": ".into(),
            "a.json: not valid JSON: ",
        ),
        (
            "shape",
            "r.yaml",
            cr("  route: [{dst: 10.0.0.0/8}]\n"),
            r#"r.yaml: document 1 (Route "r"): spec.route[0].dev: required field is missing"#,
        ),
        (
            "wrong_kind",
            "r.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n".into(),
            r#"r.yaml: document 1: apiVersion "v1", kind "Service" is not a Route (apiVersion "k8s.ovn.org/v1", kind "Route")"#,
        ),
        (
            "duplicate_name",
            "r.yaml",
            format!("{}---\n{}", cr("  route: []\n"), cr("  route: []\n")),
            r#"r.yaml: document 2 (Route "r"): a Route named "r" is already defined in document 1"#,
        ),
        (
            "invalid/not_cidr",
            "r.yaml",
            cr("  route: [{dst: 10.0.0.0/33, dev: eth1}]\n"),
            r#"r.yaml: document 1 (Route "r"): spec.route[0].dst: "10.0.0.0/33" is not a CIDR"#,
        ),
        (
            "invalid/host_bits",
            "r.yaml",
            cr("  route: [{dst: 10.0.0.1/8, dev: eth1}]\n"),
            r#"r.yaml: document 1 (Route "r"): spec.route[0].dst: "10.0.0.1/8" has host bits set (did you mean "10.0.0.0/8"?)"#,
        ),
        (
            "invalid/interface_name",
            "r.yaml",
            cr("  route: [{dst: 10.0.0.0/8, dev: \"eth 1\"}]\n"),
            r#"r.yaml: document 1 (Route "r"): spec.route[0].dev: "eth 1" is not a valid interface name: it contains whitespace"#,
        ),
        (
            "invalid/not_ip",
            "r.yaml",
            cr("  route: [{dst: 10.0.0.0/8, dev: eth1, via: 10.0.0.256}]\n"),
            r#"r.yaml: document 1 (Route "r"): spec.route[0].via: "10.0.0.256" is not an IP address"#,
        ),
        (
            "invalid/via_family",
            "r.yaml",
            cr("  route: [{dst: 10.0.0.0/8, dev: eth1, via: \"fd00::1\"}]\n"),
            r#"r.yaml: document 1 (Route "r"): spec.route[0].via: "fd00::1" is an IPv6 address, but dst is IPv4"#,
        ),
        (
            "invalid/via_not_unicast",
            "r.yaml",
            cr("  route: [{dst: 10.0.0.0/8, dev: eth1, via: 224.0.0.1}]\n"),
            r#"r.yaml: document 1 (Route "r"): spec.route[0].via: "224.0.0.1" is not a unicast address"#,
        ),
        (
            "invalid/not_label",
            "r.yaml",
            cr("  svc: [{namespace: Default, name: nginx, dev: eth1}]\n"),
            r#"r.yaml: document 1 (Route "r"): spec.svc[0].namespace: "Default" is not a valid namespace (DNS-1123 label: at most 63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit)"#,
        ),
        (
            "invalid/not_subdomain",
            "r.yaml",
            cr("  pods: [{namespace: default, name: p_1}]\n  route: []\n"),
            r#"r.yaml: document 1 (Route "r"): spec.pods[0].name: "p_1" is not a valid name (DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels)"#,
        ),
        (
            "invalid/not_service_ref",
            "s.json",
            r#"{"svc": "nginx", "dev": "eth1"}"#.into(),
            r#"s.json: document 1: svc: "nginx" is not "namespace/name""#,
        ),
        (
            "invalid/selector_values",
            "r.yaml",
            cr(
                "  podSelector: {matchExpressions: [{key: app, operator: In, values: []}]}\n  route: []\n",
            ),
            r#"r.yaml: document 1 (Route "r"): spec.podSelector.matchExpressions[0].values: "" does not fit operator In (In and NotIn need values, Exists and DoesNotExist take none)"#,
        ),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (want_class, file, text, want) in &cases {
        let errors = load::load_str(Path::new(file), text)
            .err()
            .unwrap_or_else(|| panic!("{want_class}: accepted:\n{text}"));
        assert_eq!(errors.len(), 1, "{want_class}: {errors:?}");
        let e = &errors[0];
        assert_eq!(&class(e), want_class, "{e}");
        let msg = e.to_string();
        if *want_class == "syntax" {
            // The parser's own words follow; the part veer writes is exact.
            assert!(msg.starts_with(want), "{want_class}: {msg}");
        } else {
            assert_eq!(&msg, want, "{want_class}");
        }
        seen.insert(want_class.to_string());
    }
    // Reading a missing file (the one class load_str cannot produce).
    let e = load::load_file(Path::new("/nonexistent/veer/r.yaml")).unwrap_err();
    assert_eq!(class(&e[0]), "io");
    assert_eq!(
        e[0].to_string(),
        "/nonexistent/veer/r.yaml: No such file or directory (os error 2)"
    );
    seen.insert("io".into());
    // Five error kinds, ten kinds of invalid value: every arm of `class`.
    assert_eq!(seen.len(), 15, "every class is covered: {seen:?}");
}
