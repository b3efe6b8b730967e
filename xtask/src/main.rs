//! `cargo xtask`: everything needed to go from a fresh clone to a tested veer.
//!
//! - `setup`      install what is missing (idempotent) and check the kernel
//! - `build-ebpf` build the eBPF object (BTF kept)
//! - `build`      eBPF object + agent
//! - `test`       every test layer (setup first); under `CI=true` nothing may be skipped
//! - `demo`       the main job: veer steering the seed's example in its own namespaces (root)
//! - `bench`      benchmarks (`--quick` is the smoke test the suite runs)
//! - `fuzz`       cargo-fuzz targets of the input parsers (`test` runs each for 20 s)

#[cfg(test)]
mod inventory;
mod programs;
mod setup;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, set up, test and demo veer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (the pinned eBPF nightly with rust-src, LLVM 22, bpf-linker,
    /// cargo-fuzz, every program in xtask/src/programs.rs), check each is runnable, mount bpffs
    /// and check kernel features. Idempotent; says what it did.
    Setup,
    /// Build the eBPF object (target/ebpf/bpfel-unknown-none/<profile>/veer-ebpf) and its
    /// debug-log variant (target/ebpf-debug/…).
    BuildEbpf {
        /// Build the release profile (what the agent embeds).
        #[arg(long)]
        release: bool,
    },
    /// Build the eBPF object and the agent (`veer`).
    Build {
        /// Build the agent in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Run every test layer: fmt, clippy, unit, ELF, real API server, cargo-fuzz (20 s per target),
    /// BPF_PROG_TEST_RUN (root), netns end-to-end (root). Runs setup first.
    Test {
        /// Do not run setup first.
        #[arg(long)]
        no_setup: bool,
        /// Run the long versions of the reliability scenarios (`VEER_SOAK=1`; CI does not).
        #[arg(long)]
        soak: bool,
    },
    /// Run the cargo-fuzz targets of the input parsers (`fuzz/`), each for a bounded time, with
    /// the committed fixtures as seeds; fails on any crash, leak or slow unit. Runs setup first.
    Fuzz {
        /// Only this target (route_loader, services_loader, cni_parser); all when absent.
        #[arg(long)]
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        secs: u32,
        /// Do not run setup first.
        #[arg(long)]
        no_setup: bool,
    },
    /// Regenerate manifests/crd.yaml from the Rust types (`agent/src/k8s/crd.rs`).
    Crdgen,
    /// The main job (root): the seed's example route table steered by the real agent in
    /// namespaces of its own, printed as a table before and after moving the default route.
    /// Runs setup, builds the eBPF object and `veer`, runs `veer-demo`.
    Demo {
        /// Do not run setup first.
        #[arg(long)]
        no_setup: bool,
        /// Name of the pod's OVN interface (never assumed; `eth1` as in the seed).
        #[arg(long, default_value = "eth1")]
        second: String,
    },
    /// Benchmarks (root). The full run regenerates docs/benchmarks.md; `--quick` is a smoke run
    /// of the harness (the test suite runs it) and writes only target/bench/.
    Bench {
        /// Few sizes and rounds: checks the harness works, not the numbers.
        #[arg(long)]
        quick: bool,
    },
}

/// The repository root (the parent of xtask/).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Path of the eBPF object for a profile.
pub fn ebpf_object(release: bool) -> PathBuf {
    root()
        .join("target/ebpf/bpfel-unknown-none")
        .join(if release { "release" } else { "debug" })
        .join("veer-ebpf")
}

/// Path of the debug-log variant of the eBPF object for a profile (built with
/// `--features debug-log`; the agent embeds it next to the default one and loads it only when
/// debug events are switched on).
pub fn ebpf_debug_object(release: bool) -> PathBuf {
    root()
        .join("target/ebpf-debug/bpfel-unknown-none")
        .join(if release { "release" } else { "debug" })
        .join("veer-ebpf")
}

/// Runs a command, echoing it, failing with its exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// The pinned nightly the eBPF and fuzz crates build with: the `channel` of
/// `ebpf/rust-toolchain.toml` (a dated nightly whose LLVM matches the llvm-22 bpf-linker).
pub fn ebpf_toolchain() -> Result<String> {
    let file = root().join("ebpf/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    toolchain_channel(&text)
        .with_context(|| format!("{}: no `channel = \"…\"` line", file.display()))
}

/// The `channel = "…"` of a rust-toolchain.toml.
fn toolchain_channel(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l
            .trim()
            .strip_prefix("channel")?
            .trim()
            .strip_prefix('=')?
            .trim();
        Some(v.trim_matches('"').to_string())
    })
}

/// Cargo of the pinned nightly toolchain, with the environment of the outer (stable) cargo
/// removed so the inner build does not inherit it.
fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    let channel = ebpf_toolchain().expect("ebpf/rust-toolchain.toml names the pinned nightly");
    c.arg(format!("+{channel}"));
    // What the outer cargo sets for this build script/package; CARGO_HOME and user settings stay.
    for (k, _) in std::env::vars() {
        let outer = k == "CARGO"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
            || k.starts_with("RUSTUP_TOOLCHAIN")
            || k == "RUSTC"
            || k == "RUSTC_WRAPPER";
        if outer {
            c.env_remove(k);
        }
    }
    c
}

/// The eBPF builds: the default object (no logging code) and the debug-log variant, each as
/// (target directory under the root, extra cargo arguments).
const EBPF_VARIANTS: [(&str, &[&str]); 2] = [
    ("target/ebpf", &[]),
    ("target/ebpf-debug", &["--features", "debug-log"]),
];

fn build_ebpf(release: bool) -> Result<()> {
    for (dir, extra) in EBPF_VARIANTS {
        let mut c = nightly_cargo();
        c.current_dir(root().join("ebpf"))
            .args([
                "build",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .args(extra)
            .arg("--target-dir")
            .arg(root().join(dir))
            // BTF for maps and programs: `bpftool map dump` prints field names, libbpf loads it.
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Cdebuginfo=2\x1f-Clink-arg=--btf",
            );
        if release {
            c.arg("--release");
        }
        run(&mut c)?;
    }
    eprintln!("eBPF object: {}", ebpf_object(release).display());
    eprintln!(
        "eBPF object (debug-log): {}",
        ebpf_debug_object(release).display()
    );
    Ok(())
}

fn build(release: bool) -> Result<()> {
    build_ebpf(true)?;
    let mut c = cargo();
    c.args(["build", "--package", "veer-agent"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn test(no_setup: bool, soak: bool) -> Result<()> {
    if !no_setup {
        setup::setup()?;
    }
    let r = root();
    eprintln!("== layer: formatting");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(nightly_cargo()
        .current_dir(r.join("ebpf"))
        .args(["fmt", "--", "--check"]))?;

    eprintln!("== layer: eBPF build (release, BTF)");
    build_ebpf(true)?;

    eprintln!("== layer: clippy -D warnings");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    for (dir, extra) in EBPF_VARIANTS {
        run(nightly_cargo()
            .current_dir(r.join("ebpf"))
            .args([
                "clippy",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
            ])
            .args(extra)
            .arg("--target-dir")
            .arg(r.join(dir))
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Cdebuginfo=2\x1f-Clink-arg=--btf",
            )
            .args(["--", "-D", "warnings"]))?;
    }

    eprintln!("== layer: host unit tests");
    run(cargo().args([
        "test",
        "--package",
        "veer-common",
        "--package",
        "veer-agent",
        "--package",
        "xtask",
    ]))?;

    eprintln!("== layer: ELF checks (unprivileged)");
    run(cargo().args(["test", "--package", "veer-tests", "--test", "elf"]))?;

    eprintln!(
        "== layer: Kubernetes mode against a real API server (etcd and kube-apiserver from tests/go, loopback, unprivileged)"
    );
    run(cargo().args(["test", "--package", "veer-tests", "--lib", "apiserver::"]))?;
    run(cargo()
        .args(["test", "--package", "veer-tests", "--test", "k8s_apiserver"])
        // Under CI=true the tests fail (not skip) when setup has not built the daemons.
        .args(["--", "--test-threads=1"]))?;

    eprintln!("== layer: cargo-fuzz targets, {FUZZ_TEST_SECS} s each");
    fuzz(None, FUZZ_TEST_SECS)?;

    let privileged = setup::is_root();
    if !privileged {
        if ci() {
            bail!(
                "the privileged layers (BPF_PROG_TEST_RUN, netns end-to-end) need root and \
                 CI=true forbids skipping them: run `sudo -E cargo xtask test`"
            );
        }
        eprintln!("!! not root: SKIPPING the privileged layers (test_run, netns)");
        return Ok(());
    }
    eprintln!("== layer: BPF_PROG_TEST_RUN (root)");
    run(cargo()
        .args([
            "test",
            "--package",
            "veer-tests",
            "--test",
            "test_run",
            "--test",
            "lpm_property",
            "--test",
            "debug_log",
            "--test",
            "cli",
        ])
        .args(["--", "--test-threads=2"]))?;

    eprintln!("== building the agent binary for the end-to-end layers");
    build_agent_bin()?;
    eprintln!("== layer: netns end-to-end (root)");
    run(cargo()
        .args(["test", "--package", "veer-tests", "--test", "netns"])
        .args(["--", "--test-threads=1"]))?;
    eprintln!(
        "== layer: agent end-to-end: the real `veer` binary, and the Kubernetes loop in process (root)"
    );
    run(cargo()
        .args([
            "test",
            "--package",
            "veer-tests",
            "--test",
            "e2e",
            "--test",
            "e2e_cli",
            "--test",
            "k8s_e2e",
        ])
        .env("VEER_BIN", agent_bin())
        .args(["--", "--test-threads=1"]))?;
    eprintln!(
        "== layer: reliability scenarios and frame fuzzing (root{})",
        if soak { ", soak" } else { "" }
    );
    run(cargo()
        .args(["test", "--package", "veer-tests"])
        .args(["--test", "reliability", "--test", "frames_fuzz"])
        .env("VEER_BIN", agent_bin())
        .env("VEER_SOAK", if soak { "1" } else { "0" })
        .args(["--", "--test-threads=1"]))?;
    eprintln!("== layer: benchmark harness smoke run (bench --quick)");
    bench(true)?;
    eprintln!("all test layers passed");
    Ok(())
}

/// A cargo-fuzz target (`fuzz/fuzz_targets/<name>.rs`).
struct FuzzTarget {
    name: &'static str,
    /// Seed directories (committed fixtures, read-only for libFuzzer; what it finds goes to
    /// `target/fuzz/corpus/<name>`, which is never committed).
    seeds: &'static [&'static str],
    /// Fewest coverage points (libFuzzer's `cov:`) a run must reach: about half of what the
    /// seeds alone reach (route_loader 5023, services_loader 2712, cni_parser 420 when this was
    /// written), so a target that stopped calling its parser, or returns early on every input,
    /// fails instead of passing vacuously.
    min_cov: u64,
}

const FUZZ_TARGETS: [FuzzTarget; 3] = [
    FuzzTarget {
        name: "route_loader",
        seeds: &["tests/fixtures/seed", "tests/fixtures/routes.d"],
        min_cov: 2500,
    },
    FuzzTarget {
        name: "services_loader",
        seeds: &["tests/fixtures/services"],
        min_cov: 1300,
    },
    FuzzTarget {
        name: "cni_parser",
        seeds: &["tests/fixtures/cni/results", "tests/fixtures/seed"],
        min_cov: 200,
    },
];

/// Seconds each target runs in `cargo xtask test`.
const FUZZ_TEST_SECS: u32 = 20;

/// Builds the fuzz workspace (its own lockfile and target directory `target/fuzz`) and runs
/// `only` (or every target) for `secs` seconds each. Fails on a crash (panic, sanitizer report,
/// leak, a unit slower than 10 s, out of memory) and on a target reaching fewer than its
/// `min_cov` coverage points.
fn fuzz(only: Option<&str>, secs: u32) -> Result<()> {
    let r = root();
    let targets: Vec<&FuzzTarget> = FUZZ_TARGETS
        .iter()
        .filter(|t| only.is_none_or(|o| o == t.name))
        .collect();
    if targets.is_empty() {
        bail!(
            "no fuzz target {:?}; targets: {}",
            only.unwrap_or_default(),
            FUZZ_TARGETS.map(|t| t.name).join(", ")
        );
    }
    let fuzz_target_dir = target_dir().join("fuzz");
    let fuzz_cargo = || {
        let mut c = nightly_cargo();
        c.current_dir(r.join("fuzz")).env_remove("CARGO_TARGET_DIR");
        c
    };
    // `cargo fuzz build` passes no --locked to cargo: check fuzz/Cargo.lock first.
    run(fuzz_cargo().args(["fetch", "--locked"]))?;
    run(fuzz_cargo()
        .args(["fuzz", "build", "--target-dir"])
        .arg(&fuzz_target_dir))?;
    let mut summary = Vec::new();
    for FuzzTarget {
        name: t,
        seeds,
        min_cov,
    } in targets
    {
        let corpus = fuzz_target_dir.join("corpus").join(t);
        let artifacts = fuzz_target_dir.join("artifacts").join(t);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let mut c = fuzz_cargo();
        c.args(["fuzz", "run", t, "--target-dir"])
            .arg(&fuzz_target_dir)
            .arg(&corpus)
            .args(seeds.iter().map(|s| r.join(s)))
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg("-timeout=10")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .stderr(Stdio::piped());
        eprintln!("+ {c:?}");
        let mut child = c.spawn().with_context(|| format!("cannot start {c:?}"))?;
        let (mut cov, mut execs) = (0u64, 0u64);
        for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
            let line = line?;
            if let Some(v) = line
                .split("cov: ")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
            {
                cov = cov.max(v);
            }
            if let Some(v) = line.strip_prefix("stat::number_of_executed_units: ") {
                execs = v.trim().parse().unwrap_or(0);
            }
            // Every new input is a line of its own: keep the log to pulses and reports.
            if !line.contains(" NEW ") && !line.contains(" REDUCE ") {
                eprintln!("{line}");
            }
        }
        let st = child.wait()?;
        if !st.success() {
            bail!(
                "fuzz target {t} failed ({st}): the crashing input is in {}",
                artifacts.display()
            );
        }
        if cov < *min_cov {
            bail!(
                "fuzz target {t} reached only {cov} coverage points (< {min_cov}): it no longer \
                 exercises its parser"
            );
        }
        summary.push(format!(
            "{t}: {execs} inputs in {secs} s, {cov} coverage points"
        ));
    }
    for s in summary {
        eprintln!("fuzz {s}, no crash");
    }
    Ok(())
}

fn crdgen() -> Result<()> {
    let out = cargo()
        .args([
            "run",
            "--quiet",
            "--package",
            "veer-agent",
            "--bin",
            "veer-crdgen",
        ])
        .output()
        .context("running veer-crdgen")?;
    if !out.status.success() {
        bail!(
            "veer-crdgen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = root().join("manifests/crd.yaml");
    std::fs::write(&path, &out.stdout).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The target directory of the host workspace (`CARGO_TARGET_DIR` honoured).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

/// Path of the debug `veer` binary that [`build_agent_bin`] builds.
fn agent_bin() -> PathBuf {
    target_dir().join("debug/veer")
}

/// Builds the `veer` binary the end-to-end tests and the demo run (the eBPF object it embeds
/// must be built already).
fn build_agent_bin() -> Result<()> {
    run(cargo().args(["build", "--package", "veer-agent", "--bin", "veer"]))
}

fn demo(no_setup: bool, second: &str) -> Result<()> {
    if !setup::is_root() {
        bail!(
            "the demo attaches eBPF programs inside network namespaces it creates: run \
             `sudo cargo xtask demo` (or `sudo -E` to keep your toolchain)"
        );
    }
    if !no_setup {
        setup::setup()?;
    }
    build_ebpf(true)?;
    build_agent_bin()?;
    run(cargo().args(["build", "--package", "veer-tests", "--bin", "veer-demo"]))?;
    run(Command::new(target_dir().join("debug/veer-demo"))
        .args(["--second", second])
        .env("VEER_BIN", agent_bin()))
}

fn bench(quick: bool) -> Result<()> {
    if !setup::is_root() {
        bail!(
            "benchmarks use BPF_PROG_TEST_RUN and network namespaces: run `sudo cargo xtask bench`"
        );
    }
    build_ebpf(true)?;
    let r = root();
    // Parts B–E run the real agent: the full run measures the release build (what a node runs),
    // the smoke run the debug build the test layers have built already.
    let agent = if quick {
        build_agent_bin()?;
        agent_bin()
    } else {
        run(cargo().args([
            "build",
            "--release",
            "--package",
            "veer-agent",
            "--bin",
            "veer",
        ]))?;
        target_dir().join("release/veer")
    };
    // The harness itself runs in the dev profile: its figures are measured by the kernel
    // (BPF_PROG_TEST_RUN, CPU time of the sending thread) or by real traffic and the agent.
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "--package",
        "veer-tests",
        "--bin",
        "veer-bench",
        "--",
    ])
    .arg("--out")
    .arg(r.join("target/bench"))
    .env("VEER_BIN", &agent);
    if quick {
        c.arg("--quick");
    } else {
        c.arg("--doc").arg(r.join("docs/benchmarks.md"));
    }
    run(&mut c)?;
    eprintln!(
        "wrote target/bench/*.json{}",
        if quick { "" } else { " and docs/benchmarks.md" }
    );
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::setup(),
        Cmd::BuildEbpf { release } => build_ebpf(release),
        Cmd::Build { release } => build(release),
        Cmd::Test { no_setup, soak } => test(no_setup, soak),
        Cmd::Demo { no_setup, second } => demo(no_setup, &second),
        Cmd::Bench { quick } => bench(quick),
        Cmd::Crdgen => crdgen(),
        Cmd::Fuzz {
            target,
            secs,
            no_setup,
        } => {
            if !no_setup {
                setup::setup()?;
            }
            // The agent library embeds the eBPF objects at build time.
            build_ebpf(true)?;
            fuzz(target.as_deref(), secs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eBPF and fuzz crates build with one dated nightly (bare `nightly` drifts to an LLVM
    /// the llvm-22 bpf-linker cannot link), and the Dockerfile installs the same one.
    #[test]
    fn ebpf_and_fuzz_pin_the_same_dated_nightly() {
        let pin = ebpf_toolchain().unwrap();
        assert!(
            pin.strip_prefix("nightly-")
                .is_some_and(|d| d.len() == 10 && d.as_bytes()[4] == b'-'),
            "ebpf/rust-toolchain.toml must name a dated nightly (nightly-YYYY-MM-DD), not {pin:?}"
        );
        let fuzz = std::fs::read_to_string(root().join("fuzz/rust-toolchain.toml")).unwrap();
        assert_eq!(toolchain_channel(&fuzz).as_deref(), Some(pin.as_str()));
        let docker = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
        assert!(
            docker.contains("ebpf/rust-toolchain.toml"),
            "the Dockerfile installs the toolchain the pin names"
        );
    }
}
