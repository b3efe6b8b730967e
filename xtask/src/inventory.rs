//! The program inventory: scans the Rust sources of everything that spawns programs (`tests/`,
//! `xtask/`, `agent/`, `fuzz/`) for the external programs they run and checks each against the
//! declared list (`programs.rs`), so a forgotten tool is caught by the test suite rather than by
//! the next new machine.
//!
//! What counts as spawning `X` (string literals only; whitespace and comments ignored):
//! `Command::new("X")`, the harness wrappers `command("X")`, `netns_exec(<ns>, "X")`,
//! `run("X", …)`, `must("X", …)`, `sh("X", …)`, and an argument list `"netns", "exec", <ns>, "X"`.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Directories (under the repository root) whose `.rs` files are scanned.
pub const SCANNED: &[&str] = &["tests", "xtask", "agent", "common", "fuzz"];

/// One spawn site: the program and where (`path:line`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    pub program: String,
    pub at: String,
}

/// Source text with comments and the whitespace outside string literals removed, and for each
/// kept byte its 1-based line.
struct Compact {
    text: Vec<u8>,
    line: Vec<usize>,
}

fn compact(src: &str) -> Compact {
    let b = src.as_bytes();
    let (mut text, mut line) = (Vec::with_capacity(b.len()), Vec::with_capacity(b.len()));
    let mut ln = 1;
    let mut i = 0;
    let mut push = |c: u8, ln: usize| {
        text.push(c);
        line.push(ln);
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                ln += 1;
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    ln += usize::from(b[i] == b'\n');
                    i += 1;
                }
                i += 2;
            }
            // A char literal holding a quote would otherwise open a string.
            b'\'' if b.get(i + 1) == Some(&b'"') && b.get(i + 2) == Some(&b'\'') => {
                i += 3;
            }
            b'\'' if b[i..].starts_with(b"'\\\"'") => {
                i += 4;
            }
            // Raw strings: r"…", r#"…"#, br"…".
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0
                    || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
                    || b[i - 1] == b'b') =>
            {
                let mut j = i + 1;
                while b.get(j) == Some(&b'#') {
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    push(c, ln);
                    i += 1;
                    continue;
                }
                let hashes = j - i - 1;
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat_n(b'#', hashes));
                j += 1;
                // Raw strings are kept out of the compact text: no spawn pattern uses one.
                while j < b.len() && !b[j..].starts_with(&close) {
                    ln += usize::from(b[j] == b'\n');
                    j += 1;
                }
                i = j + close.len();
            }
            b'"' => {
                push(c, ln);
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        push(b[i], ln);
                        i += 1;
                    }
                    ln += usize::from(b[i] == b'\n');
                    push(b[i], ln);
                    i += 1;
                }
                if i < b.len() {
                    push(b'"', ln);
                    i += 1;
                }
            }
            c if c.is_ascii_whitespace() => i += 1,
            c => {
                push(c, ln);
                i += 1;
            }
        }
    }
    Compact { text, line }
}

/// The string literal starting at `at` (which must be `"`), if it looks like a program name.
fn program_literal(t: &[u8], at: usize) -> Option<String> {
    if t.get(at) != Some(&b'"') {
        return None;
    }
    let end = at + 1 + t[at + 1..].iter().position(|&c| c == b'"')?;
    let s = std::str::from_utf8(&t[at + 1..end]).ok()?;
    let name_like = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'+'));
    name_like.then(|| s.to_string())
}

/// Every spawn site in one source text (`path` only labels the results).
pub fn scan_source(path: &str, src: &str) -> Vec<Spawn> {
    let Compact { text: t, line } = compact(src);
    let mut out = Vec::new();
    let mut found = |at: usize, lit: usize| {
        if let Some(program) = program_literal(&t, lit) {
            out.push(Spawn {
                program,
                at: format!("{path}:{}", line[at]),
            });
        }
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    for i in 0..t.len() {
        let rest = &t[i..];
        if rest.starts_with(b"Command::new(") {
            found(i, i + b"Command::new(".len());
            continue;
        }
        // Free-function wrappers: not a method call, not part of a longer name.
        let free = i == 0 || !(ident(t[i - 1]) || t[i - 1] == b'.');
        if free {
            for f in [&b"command("[..], b"run(", b"must(", b"sh("] {
                if rest.starts_with(f) {
                    found(i, i + f.len());
                }
            }
        }
        // `netns_exec(<ns>, "X")` and `"netns", "exec", <ns>, "X"`: the literal after one
        // argument.
        let after_arg = |from: usize| {
            let mut depth = 0i32;
            let mut j = from;
            while j < t.len() {
                match t[j] {
                    b'(' | b'[' | b'{' => depth += 1,
                    b')' | b']' | b'}' if depth == 0 => return None,
                    b')' | b']' | b'}' => depth -= 1,
                    b',' if depth == 0 => return Some(j + 1),
                    b'"' => {
                        j += 1;
                        while j < t.len() && t[j] != b'"' {
                            j += 1 + usize::from(t[j] == b'\\');
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        };
        let start = if free && rest.starts_with(b"netns_exec(") {
            Some(b"netns_exec(".len())
        } else if rest.starts_with(b"\"netns\",\"exec\",") {
            Some(b"\"netns\",\"exec\",".len())
        } else {
            None
        };
        if let Some(lit) = start.and_then(|n| after_arg(i + n)) {
            found(i, lit);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            if name != "target" && name != "corpus" && name != "artifacts" {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every spawn site in the scanned directories of the repository at `root`.
pub fn scan_repo(root: &Path) -> Vec<Spawn> {
    let mut files = Vec::new();
    for d in SCANNED {
        rust_files(&root.join(d), &mut files);
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Ok(src) = fs::read_to_string(&f) else {
            continue;
        };
        let rel = f.strip_prefix(root).unwrap_or(&f).display().to_string();
        out.extend(scan_source(&rel, &src));
    }
    out
}

/// Spawn sites whose program is not in `declared`: `Err` names each program with its sites.
pub fn check(spawns: &[Spawn], declared: &[&str]) -> Result<(), String> {
    let mut missing: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for s in spawns {
        if !declared.contains(&s.program.as_str()) {
            missing.entry(&s.program).or_default().push(&s.at);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(missing
        .iter()
        .map(|(p, at)| {
            format!(
                "`{p}` is spawned ({}) but missing from xtask/src/programs.rs: add it with its \
                 source so `cargo xtask setup` installs it",
                at.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::programs::PROGRAMS;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn declared() -> Vec<&'static str> {
        PROGRAMS.iter().map(|p| p.name).collect()
    }

    fn names(spawns: &[Spawn]) -> Vec<&str> {
        spawns.iter().map(|s| s.program.as_str()).collect()
    }

    #[test]
    fn every_spawned_program_is_in_the_declared_list() {
        let spawns = scan_repo(&repo());
        // The scan sees the programs the suites are known to run: a scanner that found nothing
        // would pass vacuously.
        for p in ["ip", "bpftool", "nft", "iperf3", "ping", "zcat", "apt-get"] {
            assert!(
                names(&spawns).contains(&p),
                "the scan no longer finds `{p}`: {spawns:?}"
            );
        }
        if let Err(e) = check(&spawns, &declared()) {
            panic!("{e}");
        }
    }

    #[test]
    fn a_program_removed_from_the_list_is_named_with_its_sites() {
        let spawns = scan_repo(&repo());
        let without: Vec<&str> = declared().into_iter().filter(|p| *p != "iperf3").collect();
        let err = check(&spawns, &without).expect_err("iperf3 is spawned by the bench");
        assert!(err.contains("`iperf3` is spawned ("), "{err}");
        assert!(err.contains("tests/src/bench/traffic.rs:"), "{err}");
        assert_eq!(err.lines().count(), 1, "only iperf3 is missing: {err}");
    }

    #[test]
    fn scanner_reads_every_spawn_form_and_ignores_comments() {
        let src = r##"
            // Command::new("commented")
            /* run("blockcommented", &[]) */
            let a = Command::new("alpha").arg("x");
            let b = std::process::Command::new(
                "beta",
            );
            programs::command("gamma");
            netns_exec(&ns, "delta").arg("-s");
            must("epsilon", &["a"]);
            ns.run("not-a-program");
            cargo().args(["run", "--quiet"]);
            c.args([
                "netns",
                "exec",
                &self.gw,
                "zeta",
                "-f",
            ]);
            let q = '"'; Command::new("eta");
            let r = r#"Command::new("raw")"#;
            Command::new(prog);
        "##;
        let found = scan_source("x.rs", src);
        assert_eq!(
            names(&found),
            ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"],
            "{found:?}"
        );
        assert_eq!(found[1].at, "x.rs:5", "the line where the call starts");
    }
}
