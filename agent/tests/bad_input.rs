//! Bad input: bounded random-input tests of every parser that reads something the agent does not
//! control — Route files (CR form and shorthand, `config::load::load_str`), Service and
//! EndpointSlice files (`config::services::load_str`) and CNI result cache files
//! (`config::cni::parse`). Whatever the bytes, a parser returns `Ok` or errors with a message;
//! it never panics, and whatever it accepts compiles without panicking.
//!
//! Inputs are arbitrary text, and the repository's fixtures mutated (bytes replaced, inserted,
//! deleted, lines duplicated or cut). Bounded for the normal suite (`PROPTEST_CASES`, default
//! 256 per test here); the open-ended version is the cargo-fuzz targets in `fuzz/` (see
//! docs/reliability.md).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use veer_agent::config::{
    Compiled, RouteSet, cni, compile_all_pods, load,
    services::{self, ServiceIndex},
};

fn fixture(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const SHORTHAND: &str = r#"[
  {"route": "172.16.10.0/24", "dev": "eth1"},
  {"route": "fd00:172:16:10::/64", "dev": "net1"},
  {"svc": "default/nginx", "dev": "eth1"},
  {"route": "0.0.0.0/0", "dev": "eth0"}
]
"#;

/// One edit of a text.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, String),
    Delete(usize, usize),
    DupLine(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                Just("\n".to_string()),
                Just(": ".to_string()),
                Just("- ".to_string()),
                Just("{".to_string()),
                Just("[".to_string()),
                Just("\"".to_string()),
                Just("/129".to_string()),
                Just("::".to_string()),
                Just("&a *a".to_string()),
                Just("!!binary".to_string()),
                Just("\t".to_string()),
                "\\PC{0,12}",
            ]
        )
            .prop_map(|(i, s)| Edit::Insert(i, s)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::DupLine),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// Applies edits to the bytes of `text` (the result may be invalid UTF-8; callers that need
/// text use it lossily).
fn mutate(text: &str, edits: &[Edit]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for e in edits {
        let n = b.len().max(1);
        match e {
            Edit::Replace(i, v) => {
                if !b.is_empty() {
                    let i = i % b.len();
                    b[i] = *v;
                }
            }
            Edit::Insert(i, s) => {
                let i = i % (b.len() + 1);
                b.splice(i..i, s.bytes());
            }
            Edit::Delete(i, k) => {
                let i = i % n;
                let end = (i + k).min(b.len());
                if i < end {
                    b.drain(i..end);
                }
            }
            Edit::DupLine(i) => {
                let lines: Vec<&[u8]> = b.split(|c| *c == b'\n').collect();
                let l = lines[i % lines.len()].to_vec();
                let mut out = Vec::with_capacity(b.len() + l.len() + 1);
                for (k, line) in lines.iter().enumerate() {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                    if k == i % lines.len() {
                        out.extend_from_slice(&l);
                        out.push(b'\n');
                    }
                }
                b = out;
            }
            Edit::Truncate(i) => b.truncate(i % n),
        }
    }
    b
}

/// A Route file through the loader, and what it accepts through the compiler.
fn route_file(text: &str) {
    let file = PathBuf::from("/fuzz/routes.yaml");
    let result = load::load_str(&file, text);
    if let Err(errors) = &result {
        assert!(!errors.is_empty(), "Err without an error");
        for e in errors {
            assert!(!e.to_string().is_empty(), "empty error message");
        }
    }
    let mut set = RouteSet::new();
    let _ = set.update_file(file, result);
    let _ = compile_all_pods(set.routes(), &ServiceIndex::new(), &Compiled::default());
}

fn services_file(text: &str) {
    match services::load_str(Path::new("/fuzz/services.yaml"), text) {
        Ok(objs) => {
            let mut index = ServiceIndex::new();
            index.insert(&objs);
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "Err without an error");
            for e in errors {
                assert!(!e.to_string().is_empty(), "empty error message");
            }
        }
    }
}

fn cni_file(bytes: &[u8]) {
    if let Err(e) = cni::parse(Path::new("/fuzz/cni-loopback-x-lo"), bytes) {
        assert!(!e.to_string().is_empty(), "empty error message");
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn route_loader_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        route_file(&text);
    }

    #[test]
    fn route_loader_never_panics_on_mutated_route_crs(edits in prop::collection::vec(edit(), 1..8)) {
        let b = mutate(&fixture("seed/route-demo.yaml"), &edits);
        route_file(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn route_loader_never_panics_on_mutated_shorthand(edits in prop::collection::vec(edit(), 1..8)) {
        let b = mutate(SHORTHAND, &edits);
        route_file(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn services_loader_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        services_file(&text);
    }

    #[test]
    fn services_loader_never_panics_on_mutated_service_lists(edits in prop::collection::vec(edit(), 1..8)) {
        let b = mutate(&fixture("services/services.yaml"), &edits);
        services_file(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn cni_parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        cni_file(&bytes);
    }

    #[test]
    fn cni_parser_never_panics_on_mutated_cache_files(edits in prop::collection::vec(edit(), 1..8)) {
        let b = mutate(&fixture("seed/cni-loopback-result.json"), &edits);
        cni_file(&b);
    }
}
