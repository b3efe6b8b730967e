//! A test body in a network namespace of its own.
//!
//! [`in_fresh_netns`] runs the body on a new thread that `unshare`s a new network namespace.
//! Nothing is added to the root namespace, names cannot clash between tests, and the namespace
//! with everything in it disappears when the thread ends, even when the body panics.

use std::{ffi::CString, io};

/// Runs `f` on a new thread inside a new, empty network namespace (only `lo`, brought up).
/// A panic in `f` is re-raised in the caller.
pub fn in_fresh_netns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            // SAFETY: unshare affects only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!("unshare(CLONE_NEWNET): {}", io::Error::last_os_error());
            }
            ip(&["link", "set", "lo", "up"]);
            f()
        });
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Runs `ip` with `args` in the calling thread's namespace (children inherit it); panics with
/// the command's stderr on failure.
pub fn ip(args: &[&str]) {
    sh("ip", args);
}

/// Runs a command in the calling thread's namespace; panics with its stderr on failure.
pub fn sh(prog: &str, args: &[&str]) -> String {
    let out = crate::programs::command(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    if !out.status.success() {
        panic!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The index of interface `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}: {}", io::Error::last_os_error());
    i
}
