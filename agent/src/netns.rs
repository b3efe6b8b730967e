//! Network-namespace work on dedicated OS threads.
//!
//! `setns` changes the namespace of the calling *thread*. Doing it on an async worker would
//! move that worker, and every task later scheduled on it, into the pod's namespace. So every
//! piece of per-pod work runs on a fresh thread that enters the namespace, does the work and
//! ends; the caller's thread never changes namespace. Interface indexes, netlink sockets and
//! TCX attachments all resolve in the namespace of the thread that makes them.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

/// Errors of namespace work.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the thread working in {path} panicked")]
    Panicked { path: PathBuf },
}

/// Runs `f` on a new thread inside the network namespace at `path` and returns its result.
pub fn in_netns<F, R>(path: &Path, f: F) -> Result<R, NetnsError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let ns = File::open(path).map_err(|source| NetnsError::Open {
        path: path.into(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Enter {
                    path: path.into(),
                    source: io::Error::last_os_error(),
                });
            }
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked { path: path.into() })?
    })
}

const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace: the value `bpf_get_netns_cookie`
/// returns for packets of that namespace.
pub fn current_netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for the size given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err);
    }
    Ok(cookie)
}

/// The cookie of the network namespace at `path`.
pub fn netns_cookie(path: &Path) -> Result<io::Result<u64>, NetnsError> {
    in_netns(path, current_netns_cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_has_a_stable_nonzero_cookie() {
        let a = current_netns_cookie().unwrap();
        let b = current_netns_cookie().unwrap();
        assert_ne!(a, 0);
        assert_eq!(a, b);
    }

    #[test]
    fn work_in_own_namespace_by_path_sees_the_same_cookie() {
        let here = current_netns_cookie().unwrap();
        let there = netns_cookie(Path::new("/proc/self/ns/net"))
            .unwrap()
            .unwrap();
        assert_eq!(here, there);
    }

    #[test]
    fn missing_namespace_is_a_clear_error() {
        let e = in_netns(Path::new("/nonexistent/netns"), || ()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }
}
