//! The external programs the suites run, from the one declared list (`xtask/src/programs.rs`,
//! which `cargo xtask setup` installs). Every spawn of an external program goes through
//! [`command`] or [`netns_exec`]: a program missing from the machine fails at once, naming the
//! package to install, instead of as a downstream symptom; a program missing from the list fails
//! too (and the inventory test in `xtask` finds it in the sources first).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

#[allow(dead_code)]
mod list {
    include!("../../xtask/src/programs.rs");
}
pub use list::{PROGRAMS, Program, Source};

/// The cargo target directory this test binary was built into (`<target>/<profile>/deps/<exe>`),
/// where `cargo xtask setup` puts the Go-built programs (`<target>/go-bin/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// What to spawn for a declared program: its `target/go-bin/` file when setup builds it with Go,
/// else its name (looked up on `PATH`).
fn program_path(p: &Program) -> PathBuf {
    list::go_bin(&target_dir(), p).unwrap_or_else(|| p.name.into())
}

/// Whether an executable `name` is on `PATH`.
fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| {
        Path::new(&d)
            .join(name)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Whether the declared program `name` is installed (on `PATH`, or built into `target/go-bin/`).
pub fn installed(name: &str) -> bool {
    list::program(name).is_some_and(|p| match list::go_bin(&target_dir(), p) {
        Some(bin) => bin.is_file(),
        None => on_path(name),
    })
}

/// Panics unless `name` is declared and installed, naming its package when it is not.
pub fn require(name: &str) {
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    if SEEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(name)
    {
        return;
    }
    let Some(p) = list::program(name) else {
        panic!(
            "`{name}` is not in the declared program list (xtask/src/programs.rs): add it there \
             with its Debian package so `cargo xtask setup` installs it"
        );
    };
    if !installed(name) {
        panic!("{}", list::install_hint(p));
    }
    SEEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.to_string());
}

/// `Command::new(name)` for a declared, installed program (a Go-built one from
/// `target/go-bin/`).
pub fn command(name: &str) -> Command {
    require(name);
    Command::new(program_path(list::program(name).expect("declared")))
}

/// `ip netns exec <ns> <name>` for a declared, installed program.
pub fn netns_exec(ns: &str, name: &str) -> Command {
    require(name);
    let mut c = command("ip");
    c.args(["netns", "exec", ns, name]);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "not in the declared program list")]
    fn an_undeclared_program_is_refused() {
        // Built at run time so the inventory scan does not count it as a spawned program.
        command(&format!("surely-not-a-{}-program", "declared"));
    }

    #[test]
    fn a_missing_program_names_its_package() {
        let hint = list::install_hint(&Program {
            name: "iperf3",
            source: Source::Debian("iperf3"),
            version_args: &[],
            used_by: "",
        });
        assert!(hint.contains("Debian package iperf3"), "{hint}");
    }
}
