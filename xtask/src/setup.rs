//! `cargo xtask setup`: installs what is missing and checks the kernel. Idempotent: every step
//! first looks, then acts only when needed, and says which.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    programs::{PROGRAMS, Program, Source, go_bin, install_hint},
    run,
};

/// Debian packages bpf-linker builds against (LLVM 22); the packages of the programs the suites
/// run come from the declared list (`programs.rs`).
const LLVM_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Every Debian package setup installs: LLVM's, then those of the declared programs.
fn apt_packages() -> Vec<&'static str> {
    let mut all: Vec<&str> = LLVM_PACKAGES.to_vec();
    for p in PROGRAMS {
        if let Source::Debian(pkg) = p.source
            && !all.contains(&pkg)
        {
            all.push(pkg);
        }
    }
    all
}

fn say(what: &str, done: &str) {
    eprintln!("[setup] {what}: {done}");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions. (Avoids a libc dependency for one call.)
    unsafe extern "C" {
        fn geteuid() -> u32;
    }
    unsafe { geteuid() == 0 }
}

fn output(cmd: &mut Command) -> Option<String> {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// The pinned eBPF nightly (`ebpf/rust-toolchain.toml`) with the components the builds use.
fn rust_toolchain() -> Result<()> {
    let channel = crate::ebpf_toolchain()?;
    let have = output(Command::new("rustup").args(["toolchain", "list"])).is_some_and(|s| {
        s.lines().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|t| t.starts_with(&format!("{channel}-")) || t == channel)
        })
    });
    if have {
        say(&format!("{channel} toolchain"), "present");
    } else {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &channel,
            "--profile",
            "minimal",
        ]))?;
        say(&format!("{channel} toolchain"), "installed");
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        &channel,
        "--installed",
    ]))
    .unwrap_or_default();
    for comp in ["rust-src", "rustfmt", "clippy"] {
        if installed.lines().any(|l| l.starts_with(comp)) {
            say(&format!("{channel} {comp}"), "present");
        } else {
            run(Command::new("rustup").args(["component", "add", comp, "--toolchain", &channel]))?;
            say(&format!("{channel} {comp}"), "installed");
        }
    }
    Ok(())
}

fn apt() -> Result<()> {
    let wanted = apt_packages();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        say(
            "Debian packages",
            &format!("present ({})", wanted.join(" ")),
        );
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages {} are missing and installing them needs root: run `sudo cargo xtask setup`",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    say(
        "Debian packages",
        &format!("installed {}", missing.join(" ")),
    );
    Ok(())
}

/// bpf-linker must be built against the LLVM that rustc's nightly uses (22).
fn bpf_linker() -> Result<()> {
    let home = std::env::var("CARGO_HOME")
        .or_else(|_| std::env::var("HOME").map(|h| format!("{h}/.cargo")))
        .unwrap_or_else(|_| "/root/.cargo".into());
    let crates2 = fs::read_to_string(Path::new(&home).join(".crates2.json")).unwrap_or_default();
    let built_for_22 = crates2.split("\"bpf-linker ").nth(1).is_some_and(|rest| {
        rest.split('}')
            .take(3)
            .collect::<String>()
            .contains("llvm-22")
    });
    let on_path = output(Command::new("bpf-linker").arg("--version")).is_some();
    if on_path && built_for_22 {
        say("bpf-linker (LLVM 22)", "present");
        return Ok(());
    }
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .env_remove("CARGO_TARGET_DIR"))?;
    say("bpf-linker (LLVM 22)", "installed");
    Ok(())
}

/// The cargo-fuzz version `cargo xtask test` and `cargo xtask fuzz` use (builds with `--locked`
/// on the pinned nightly; the fuzz workspace's `libfuzzer-sys` 0.4 matches it).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// cargo-fuzz, for the fuzz layer (`fuzz/`). Reinstalled only when missing or another version.
fn cargo_fuzz() -> Result<()> {
    let have = output(Command::new("cargo-fuzz").arg("--version"));
    // `cargo-fuzz 0.13.2`
    if have
        .as_deref()
        .is_some_and(|v| v.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION))
    {
        say(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}"), "present");
        return Ok(());
    }
    run(Command::new("cargo")
        .args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ])
        .env_remove("CARGO_TARGET_DIR"))?;
    say(
        &format!("cargo-fuzz {CARGO_FUZZ_VERSION}"),
        match have {
            Some(v) => format!("installed (replacing {})", v.trim()),
            None => "installed".into(),
        }
        .as_str(),
    );
    Ok(())
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf") && l.contains(" /sys/fs/bpf "))
    {
        say("bpffs on /sys/fs/bpf", "mounted");
        return Ok(());
    }
    if !is_root() {
        say(
            "bpffs on /sys/fs/bpf",
            "NOT mounted (needs root: `sudo mount -t bpf bpf /sys/fs/bpf`)",
        );
        return Ok(());
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    say("bpffs on /sys/fs/bpf", "mounted now");
    Ok(())
}

fn kernel() -> Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release
        .trim()
        .split(['.', '-'])
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    if (major, minor) < (6, 6) {
        bail!(
            "kernel {} is too old: veer attaches with TCX (Linux 6.6+) and needs \
             bpf_get_netns_cookie in TC programs; boot a 6.6 or newer kernel",
            release.trim()
        );
    }
    say(
        "kernel",
        &format!("{} (TCX and clsact available)", release.trim()),
    );
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing): use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    say("kernel BTF", "present");
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_BPF: u64 = 39;
    let has = |c: u64| cap_eff & (1 << c) != 0;
    if has(CAP_BPF) || has(CAP_SYS_ADMIN) {
        say("CAP_BPF", "held");
    } else {
        say(
            "CAP_BPF",
            "NOT held: privileged tests and the agent need root (sudo)",
        );
    }
    if !has(CAP_NET_ADMIN) {
        say(
            "CAP_NET_ADMIN",
            "NOT held: netns tests and the agent need root (sudo)",
        );
    }
    Ok(())
}

/// The Go module the Go-built programs come from (`go.mod`/`go.sum` committed: the pins).
fn go_module() -> std::path::PathBuf {
    crate::root().join("tests/go")
}

/// Where a declared program is spawned from: its `target/go-bin/` file for a Go-built one, its
/// name (looked up on `PATH`) otherwise.
fn program_path(p: &Program) -> std::path::PathBuf {
    go_bin(&crate::target_dir(), p).unwrap_or_else(|| p.name.into())
}

/// The Go-built programs (`Source::Go`: etcd, kube-apiserver for the real API server layer),
/// built when their `target/go-bin/<name>-<version>` is absent, from the pinned module
/// `tests/go/` with `-mod=readonly` (the committed go.sum must cover every module) and the module
/// and build caches under `target/go/` (a fresh clone downloads into its own tree; a rerun builds
/// nothing; a new pin rebuilds only what changed).
fn go_programs() -> Result<()> {
    let go: Vec<&Program> = PROGRAMS
        .iter()
        .filter(|p| matches!(p.source, Source::Go { .. }))
        .collect();
    let missing: Vec<&&Program> = go.iter().filter(|p| !program_path(p).is_file()).collect();
    if missing.is_empty() {
        say(
            "Go-built programs",
            &format!(
                "present ({})",
                go.iter()
                    .map(|p| program_path(p).display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        );
        return Ok(());
    }
    if output(Command::new("go").arg("version")).is_none() {
        bail!(
            "{} are not built and building them needs Go: {}",
            missing
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
            install_hint(crate::programs::program("go").expect("go is declared"))
        );
    }
    let cache = crate::target_dir().join("go");
    for p in missing {
        let Source::Go {
            package,
            version,
            ldflags,
            ..
        } = p.source
        else {
            unreachable!()
        };
        let out = program_path(p);
        fs::create_dir_all(out.parent().expect("go-bin directory"))?;
        let tmp = out.with_file_name(format!("{}-{version}.partial", p.name));
        let started = std::time::Instant::now();
        eprintln!(
            "[setup] building {} {version} from tests/go (go build {package}; a cold build takes \
             minutes)",
            p.name
        );
        run(Command::new("go")
            .current_dir(go_module())
            .args(["build", "-mod=readonly", "-trimpath"])
            .arg(format!(
                "-ldflags={}",
                ldflags.split_whitespace().collect::<Vec<_>>().join(" ")
            ))
            .arg("-o")
            .arg(&tmp)
            .arg(package)
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "")
            .env("GOMODCACHE", cache.join("mod"))
            .env("GOCACHE", cache.join("cache")))?;
        fs::rename(&tmp, &out)?;
        say(
            &format!("{} {version}", p.name),
            &format!(
                "built into {} in {} s",
                out.display(),
                started.elapsed().as_secs()
            ),
        );
    }
    Ok(())
}

/// Every declared program (`programs.rs`) runs: found on PATH and prints its version.
fn programs_runnable() -> Result<()> {
    let mut broken = Vec::new();
    for p in PROGRAMS {
        match Command::new(program_path(p)).args(p.version_args).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => broken.push(format!(
                "{} {} exited with {} ({})",
                p.name,
                p.version_args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(_) => broken.push(format!("{} (used by: {})", install_hint(p), p.used_by)),
        }
    }
    if !broken.is_empty() {
        bail!(
            "programs the suites run are not runnable:\n  {}",
            broken.join("\n  ")
        );
    }
    say(
        "programs",
        &format!(
            "runnable ({})",
            PROGRAMS
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    Ok(())
}

pub fn setup() -> Result<()> {
    rust_toolchain().context("pinned eBPF nightly")?;
    apt().context("Debian packages")?;
    bpf_linker().context("bpf-linker")?;
    cargo_fuzz().context("cargo-fuzz")?;
    go_programs().context("Go-built programs (tests/go)")?;
    programs_runnable()?;
    bpffs().context("bpffs")?;
    kernel()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `(path, version)` lines of the go.mod blocks (or one-line directives) named `kw`.
    fn directives<'a>(gomod: &'a str, kw: &str) -> Vec<Vec<&'a str>> {
        let mut out = Vec::new();
        let mut inside = false;
        for line in gomod
            .lines()
            .map(|l| l.split("//").next().unwrap_or("").trim())
        {
            if inside {
                if line == ")" {
                    inside = false;
                } else if !line.is_empty() {
                    out.push(line.split_whitespace().collect());
                }
            } else if line == format!("{kw} (") {
                inside = true;
            } else if let Some(rest) = line.strip_prefix(&format!("{kw} ")) {
                out.push(rest.split_whitespace().collect());
            }
        }
        out
    }

    #[test]
    fn go_built_programs_are_the_versions_and_tools_that_tests_go_pins() {
        let gomod = fs::read_to_string(go_module().join("go.mod")).unwrap();
        let require = directives(&gomod, "require");
        let tools = directives(&gomod, "tool");
        let go: Vec<&Program> = PROGRAMS
            .iter()
            .filter(|p| matches!(p.source, Source::Go { .. }))
            .collect();
        assert!(!go.is_empty());
        for p in go {
            let Source::Go {
                package,
                module,
                version,
                ldflags,
            } = p.source
            else {
                unreachable!()
            };
            assert!(
                require.iter().any(|r| r[..] == [module, version]),
                "{}: tests/go/go.mod must require {module} {version}",
                p.name
            );
            assert!(
                tools.iter().any(|t| t[..] == [package]),
                "{}: tests/go/go.mod must list `tool {package}` (so go.sum covers its build)",
                p.name
            );
            assert!(package.starts_with(module), "{package} is not in {module}");
            // Every version stamp names the pinned version.
            for stamp in ldflags
                .split_whitespace()
                .filter(|w| w.contains(".gitVersion="))
            {
                assert!(
                    stamp.ends_with(&format!("={version}")),
                    "{}: {stamp}",
                    p.name
                );
            }
        }
    }

    /// k8s.io/kubernetes is built against published staging modules: every `k8s.io/<staging>`
    /// replace must point at `v0.<minor>.<patch>` of the pinned `v1.<minor>.<patch>`.
    #[test]
    fn kubernetes_staging_modules_are_replaced_by_the_matching_release() {
        let gomod = fs::read_to_string(go_module().join("go.mod")).unwrap();
        let k8s = directives(&gomod, "require")
            .into_iter()
            .find(|r| r.first() == Some(&"k8s.io/kubernetes"))
            .expect("tests/go requires k8s.io/kubernetes")[1];
        let staging = format!("v0.{}", k8s.strip_prefix("v1.").unwrap());
        let replaces = directives(&gomod, "replace");
        assert!(replaces.len() >= 20, "the staging replace block is missing");
        for r in replaces {
            // `k8s.io/api => k8s.io/api v0.37.2`
            assert_eq!(r.len(), 4, "{r:?}");
            assert_eq!(
                r[0], r[2],
                "a staging module is replaced by its own release"
            );
            assert_eq!(
                r[3], staging,
                "{} must be {staging} for kubernetes {k8s}",
                r[0]
            );
        }
    }
}
