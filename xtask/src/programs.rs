// The one declared list of external programs that `cargo xtask test`, `demo` and `bench` run
// (directly or inside `ip netns exec`), with where each comes from. `cargo xtask setup` installs
// the missing ones and checks each is runnable; the test harness (`veer_tests::programs`, which
// includes this file) refuses to run a program not listed here and fails at once, naming the
// package, when one is missing; `xtask/src/inventory.rs` scans the sources and fails naming any
// spawned program this list does not cover.
//
// This file is `include!`d by the tests crate: plain items only, no inner attributes.

/// Where a program comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Debian package `cargo xtask setup` installs (`apt-get install <package>`).
    Debian(&'static str),
    /// Installed by `cargo xtask setup` with `cargo install` (named crate).
    Cargo(&'static str),
    /// What setup itself runs on: the Rust toolchain (rustup) and the Debian base system. Setup
    /// cannot install these; it checks them and says what to do.
    Base(&'static str),
    /// Built by `cargo xtask setup` with `go build` from the pinned Go module `tests/go/`
    /// (`go.mod`/`go.sum` committed) into `<target>/go-bin/<name>-<version>` (see [`go_bin`]);
    /// not on `PATH`. `package` is the main package, `module` the module that provides it at
    /// `version` (the same as its `require` line in `tests/go/go.mod`, checked by a test).
    Go {
        package: &'static str,
        module: &'static str,
        version: &'static str,
        /// `go build -ldflags` (the version stamps a release build carries).
        ldflags: &'static str,
    },
}

/// An external program the suites, the demo, the bench or setup run.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    /// The executable's name, as spawned (looked up on `PATH`).
    pub name: &'static str,
    pub source: Source,
    /// Arguments that make it print its version and exit 0: setup's "is it runnable" check.
    pub version_args: &'static [&'static str],
    /// Who runs it, for the reader of setup's output.
    pub used_by: &'static str,
}

/// Every external program, in install order.
pub const PROGRAMS: &[Program] = &[
    Program {
        name: "ip",
        source: Source::Debian("iproute2"),
        version_args: &["-V"],
        used_by: "netns topologies of every privileged layer, the demo and the bench",
    },
    Program {
        name: "bpftool",
        source: Source::Debian("bpftool"),
        version_args: &["version"],
        used_by: "link and map checks (test_run, cli, e2e, reliability), bench memory figures",
    },
    Program {
        name: "ping",
        source: Source::Debian("iputils-ping"),
        version_args: &["-V"],
        used_by: "ICMP probes (netns, e2e, demo)",
    },
    Program {
        name: "nft",
        source: Source::Debian("nftables"),
        version_args: &["--version"],
        used_by: "port security and anti-spoofing on the test gateways",
    },
    Program {
        name: "iperf3",
        source: Source::Debian("iperf3"),
        version_args: &["--version"],
        used_by: "bench traffic part (also in bench --quick, a test layer)",
    },
    Program {
        name: "zcat",
        source: Source::Debian("gzip"),
        version_args: &["--version"],
        used_by: "bench: reads /proc/config.gz for the machine description",
    },
    Program {
        name: "mount",
        source: Source::Debian("mount"),
        version_args: &["--version"],
        used_by: "setup: mounts bpffs",
    },
    Program {
        name: "bpf-linker",
        source: Source::Cargo("bpf-linker"),
        version_args: &["--version"],
        used_by: "eBPF build (linked against LLVM 22)",
    },
    Program {
        name: "cargo-fuzz",
        source: Source::Cargo("cargo-fuzz"),
        version_args: &["--version"],
        used_by: "fuzz layer",
    },
    Program {
        name: "etcd",
        source: Source::Go {
            package: "go.etcd.io/etcd/server/v3",
            module: "go.etcd.io/etcd/server/v3",
            version: "v3.7.0",
            // etcd's version is a constant of go.etcd.io/etcd/api/v3/version.
            ldflags: "",
        },
        version_args: &["--version"],
        used_by: "real API server layer (k8s_apiserver): kube-apiserver's storage, loopback only",
    },
    Program {
        name: "kube-apiserver",
        source: Source::Go {
            package: "k8s.io/kubernetes/cmd/kube-apiserver",
            module: "k8s.io/kubernetes",
            version: "v1.37.2",
            // What kubernetes' hack/lib/version.sh stamps (else /version says v0.0.0-master).
            ldflags: "-X k8s.io/component-base/version.gitVersion=v1.37.2 \
                      -X k8s.io/component-base/version.gitMajor=1 \
                      -X k8s.io/component-base/version.gitMinor=37 \
                      -X k8s.io/component-base/version.gitTreeState=clean \
                      -X k8s.io/client-go/pkg/version.gitVersion=v1.37.2 \
                      -X k8s.io/client-go/pkg/version.gitMajor=1 \
                      -X k8s.io/client-go/pkg/version.gitMinor=37 \
                      -X k8s.io/client-go/pkg/version.gitTreeState=clean",
        },
        version_args: &["--version"],
        used_by: "real API server layer (k8s_apiserver): the agent against a real server, loopback only",
    },
    Program {
        name: "go",
        source: Source::Base("the Go toolchain (1.26+, https://go.dev/dl)"),
        version_args: &["version"],
        used_by: "setup: builds etcd and kube-apiserver from tests/go",
    },
    Program {
        name: "cargo",
        source: Source::Base("rustup"),
        version_args: &["--version"],
        used_by: "every build",
    },
    Program {
        name: "rustup",
        source: Source::Base("rustup (https://rustup.rs)"),
        version_args: &["--version"],
        used_by: "setup: installs the pinned eBPF nightly",
    },
    Program {
        name: "apt-get",
        source: Source::Base("apt (Debian)"),
        version_args: &["--version"],
        used_by: "setup: installs the Debian packages",
    },
    Program {
        name: "dpkg-query",
        source: Source::Base("dpkg (Debian)"),
        version_args: &["--version"],
        used_by: "setup: sees which Debian packages are present",
    },
];

/// The declared entry for `name`, if any.
#[allow(dead_code)] // the tests crate's harness uses it (it includes this file)
pub fn program(name: &str) -> Option<&'static Program> {
    PROGRAMS.iter().find(|p| p.name == name)
}

/// Where `cargo xtask setup` puts a [`Source::Go`] program, under the cargo target directory
/// `target`: `<target>/go-bin/<name>-<version>` (a new pin is a new file, so a rerun with the same
/// pin builds nothing). `None` for programs looked up on `PATH`.
#[allow(dead_code)] // not every includer uses it
pub fn go_bin(target: &std::path::Path, p: &Program) -> Option<std::path::PathBuf> {
    match p.source {
        Source::Go { version, .. } => {
            Some(target.join("go-bin").join(format!("{}-{version}", p.name)))
        }
        _ => None,
    }
}

/// What to do when `p` is missing, as one sentence.
pub fn install_hint(p: &Program) -> String {
    match p.source {
        Source::Debian(pkg) => format!(
            "{} is not installed: it comes with the Debian package {pkg} (`sudo cargo xtask setup` \
             installs it, or `apt-get install {pkg}`)",
            p.name
        ),
        Source::Cargo(krate) => format!(
            "{} is not installed: `cargo xtask setup` builds it (`cargo install {krate}`)",
            p.name
        ),
        Source::Go {
            package, version, ..
        } => format!(
            "{} is not built: `cargo xtask setup` builds it from the pinned Go module tests/go \
             (`go build {package}`, {version}) into target/go-bin/",
            p.name
        ),
        Source::Base(from) => format!(
            "{} is not on PATH: it comes from {from}, which setup cannot install",
            p.name
        ),
    }
}
