//! Embeds the eBPF objects built by `cargo xtask build-ebpf --release`: the default one and its
//! debug-log variant.
use std::path::PathBuf;

/// Points the compile-time variable `var` at the object (`var` itself when set in the
/// environment, `default` under the repository otherwise).
fn embed(var: &str, default: &str) {
    println!("cargo:rerun-if-env-changed={var}");
    let path = match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.exists() {
        panic!(
            "the eBPF object {} does not exist: build it first with `cargo xtask build-ebpf --release` \
             (or `cargo xtask build`), or point {var} at one",
            path.display()
        );
    }
    println!(
        "cargo:rustc-env={var}={}",
        path.canonicalize().unwrap().display()
    );
}

fn main() {
    embed(
        "VEER_EBPF_OBJ",
        "../target/ebpf/bpfel-unknown-none/release/veer-ebpf",
    );
    embed(
        "VEER_EBPF_DEBUG_OBJ",
        "../target/ebpf-debug/bpfel-unknown-none/release/veer-ebpf",
    );
}
