//! Embeds the eBPF object built by `cargo xtask build-ebpf --release`.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=VEER_EBPF_OBJ");
    let path = match std::env::var_os("VEER_EBPF_OBJ") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/ebpf/bpfel-unknown-none/release/veer-ebpf"),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.exists() {
        panic!(
            "the eBPF object {} does not exist: build it first with `cargo xtask build-ebpf --release` \
             (or `cargo xtask build`), or point VEER_EBPF_OBJ at one",
            path.display()
        );
    }
    println!(
        "cargo:rustc-env=VEER_EBPF_OBJ={}",
        path.canonicalize().unwrap().display()
    );
}
