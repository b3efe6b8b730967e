//! Renders the JSON lines the reliability tests write (`target/reliability/*.jsonl`, one per
//! test, see `tests/tests/reliability.rs`) as the results table of `docs/reliability.md`,
//! replacing what stands between the `<!-- reliability:begin -->` and
//! `<!-- reliability:end -->` markers.
//!
//! ```sh
//! cargo run -p veer-tests --bin reliability-report [-- <jsonl dir> <doc>]
//! ```

use std::{fs, path::PathBuf, process::ExitCode};

use veer_tests::agent::Json;

const BEGIN: &str = "<!-- reliability:begin -->";
const END: &str = "<!-- reliability:end -->";

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = std::env::args_os().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/reliability"));
    let doc = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("docs/reliability.md"));
    let mut rows: Vec<Json> = Vec::new();
    let Ok(rd) = fs::read_dir(&dir) else {
        eprintln!(
            "no results in {}: run the reliability tests first",
            dir.display()
        );
        return ExitCode::FAILURE;
    };
    for e in rd.flatten() {
        if e.path().extension().is_some_and(|x| x == "jsonl") {
            for line in fs::read_to_string(e.path()).unwrap_or_default().lines() {
                match Json::parse(line) {
                    Ok(j) => rows.push(j),
                    Err(err) => eprintln!("{}: {err}", e.path().display()),
                }
            }
        }
    }
    rows.sort_by(|a, b| {
        let k = |j: &Json| {
            (
                j.get("scenario").as_str().unwrap_or("").to_string(),
                j.get("test").as_str().unwrap_or("").to_string(),
            )
        };
        k(a).cmp(&k(b))
    });
    let mut t = String::new();
    t.push_str(BEGIN);
    t.push_str(
        "\n\n| scenario | test (mode, time) | what was measured | result |\n|---|---|---|---|\n",
    );
    for r in &rows {
        let s = |k: &str| r.get(k).as_str().unwrap_or("").to_string();
        let list = |k: &str| {
            r.get(k)
                .items()
                .iter()
                .filter_map(Json::as_str)
                .map(cell)
                .collect::<Vec<_>>()
        };
        let secs = match r.get("seconds") {
            Json::Num(n) => format!("{n:.1} s"),
            _ => String::new(),
        };
        let findings = list("findings");
        let mut result = format!("**{}**", s("result"));
        for f in &findings {
            result.push_str(&format!("<br>finding: {f}"));
        }
        t.push_str(&format!(
            "| {} | `{}` ({}, {secs}) | {} | {} |\n",
            cell(&s("scenario")),
            s("test"),
            s("mode"),
            list("measured").join("<br>"),
            result
        ));
    }
    t.push('\n');
    t.push_str(END);
    let text = fs::read_to_string(&doc).unwrap_or_default();
    let new = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{t}{}", &text[..b], &text[e + END.len()..]),
        _ => format!("{text}\n{t}\n"),
    };
    if let Err(e) = fs::write(&doc, new) {
        eprintln!("writing {}: {e}", doc.display());
        return ExitCode::FAILURE;
    }
    println!("{} results → {}", rows.len(), doc.display());
    ExitCode::SUCCESS
}
