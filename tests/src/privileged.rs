//! Privileged tests start with [`require_root`]. Outside CI a missing privilege skips the test
//! loudly; under `CI=true` it fails the test, so a privileged layer can never pass by not running.

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `CI` is set to true.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns `true` when the test may run. Panics under `CI=true` without root.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if in_ci() {
        panic!("{test} needs root (BPF, netns) and CI=true forbids skipping it");
    }
    eprintln!("SKIPPED {test}: needs root (run `sudo -E cargo xtask test`)");
    false
}
