//! Follows every managed pod's network facts for the pod's whole life: one `NETLINK_ROUTE`
//! socket per pod network namespace, subscribed to link, address and route notifications
//! (`RTM_NEWLINK`/`DELLINK`, `RTM_NEWADDR`/`DELADDR` — IPv6 DAD completing is one —,
//! `RTM_NEWROUTE`/`DELROUTE`), all polled by one thread. A notification only marks its pod
//! changed and wakes the node loop; the loop re-discovers that pod's facts (one netlink dump)
//! and re-sets it up when they differ. So an interface that appears after the CNI result file
//! (the loopback result is written first on a real node), a Multus dynamic attachment, a
//! detachment, or an address, MAC, MTU or gateway change is followed within one round.
//!
//! Bounded: one descriptor per managed pod, no parsing on the notification path, one wake-up
//! per poll batch. A socket overrun (`ENOBUFS`: notifications were lost) also marks the pod
//! changed, so a lost message costs a re-discovery, never a missed change. The socket is opened
//! *before* the pod's first discovery, so nothing can change unseen in between.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use crate::netns::{NetnsError, in_netns};

/// Errors of following a pod's namespace.
#[derive(Debug, thiserror::Error)]
pub enum PodwatchError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("netlink socket in {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("starting the pod watch thread: {0}")]
    Start(io::Error),
}

/// The netlink groups a pod's facts depend on.
const GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_ROUTE) as u32;

/// A notification socket bound in the calling thread's namespace.
fn notification_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = GROUPS;
    // SAFETY: sa is a valid sockaddr_nl of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Reads everything queued on a non-blocking socket. Returns whether anything (a message or an
/// overrun) was there.
fn drain(fd: RawFd) -> bool {
    let mut buf = [0u8; 16 * 1024];
    let mut any = false;
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            any = true;
            continue;
        }
        if n == 0 {
            return any;
        }
        match io::Error::last_os_error().raw_os_error() {
            // Messages were dropped for lack of buffer: the pod changed, we do not know how.
            Some(libc::ENOBUFS) => any = true,
            Some(libc::EINTR) => {}
            _ => return any,
        }
    }
}

struct Shared {
    /// Pod namespace → its socket. `Arc` so the poll thread's snapshot keeps a descriptor open
    /// (and its number unused by another socket) until the poll it is in returns.
    sockets: Mutex<BTreeMap<PathBuf, Arc<OwnedFd>>>,
    changed: Mutex<BTreeSet<PathBuf>>,
    stop: AtomicBool,
    /// Interrupts the poll when the socket set changes or on stop.
    ctl: OwnedFd,
}

impl Shared {
    fn poke(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to an eventfd.
        let _ = unsafe { libc::write(self.ctl.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

/// The pod watch: see the module docs.
pub struct PodWatch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl PodWatch {
    /// Starts the poll thread; `wake` is called (from that thread) after each batch of
    /// notifications.
    pub fn start(wake: Box<dyn Fn() + Send + Sync>) -> Result<Self, PodwatchError> {
        // SAFETY: eventfd(2); the fd is owned at once.
        let ctl = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if ctl < 0 {
            return Err(PodwatchError::Start(io::Error::last_os_error()));
        }
        let shared = Arc::new(Shared {
            sockets: Mutex::default(),
            changed: Mutex::default(),
            stop: AtomicBool::new(false),
            // SAFETY: fresh descriptor.
            ctl: unsafe { OwnedFd::from_raw_fd(ctl) },
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("veer-podwatch".into())
            .spawn(move || poll_loop(&s, &*wake))
            .map_err(PodwatchError::Start)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Follows the namespace at `netns` (idempotent).
    pub fn watch(&self, netns: &Path) -> Result<(), PodwatchError> {
        if lock(&self.shared.sockets).contains_key(netns) {
            return Ok(());
        }
        let fd = in_netns(netns, notification_socket)?.map_err(|source| PodwatchError::Socket {
            path: netns.to_path_buf(),
            source,
        })?;
        lock(&self.shared.sockets).insert(netns.to_path_buf(), Arc::new(fd));
        self.shared.poke();
        Ok(())
    }

    /// Stops following `netns` (closes its socket).
    pub fn unwatch(&self, netns: &Path) {
        if lock(&self.shared.sockets).remove(netns).is_some() {
            lock(&self.shared.changed).remove(netns);
            self.shared.poke();
        }
    }

    /// Stops following every namespace `keep` refuses: the level-triggered backstop that keeps
    /// exactly the managed pods followed, whatever path (a failed first set-up, a namespace gone
    /// between follow and discovery) left a socket behind.
    pub fn retain(&self, mut keep: impl FnMut(&Path) -> bool) {
        let mut sockets = lock(&self.shared.sockets);
        let before = sockets.len();
        sockets.retain(|p, _| keep(p));
        if sockets.len() != before {
            let mut changed = lock(&self.shared.changed);
            changed.retain(|p| sockets.contains_key(p));
            drop(changed);
            drop(sockets);
            self.shared.poke();
        }
    }

    /// Whether `netns` is followed.
    pub fn watches(&self, netns: &Path) -> bool {
        lock(&self.shared.sockets).contains_key(netns)
    }

    /// The namespaces that changed since the last call.
    pub fn take_changed(&self) -> BTreeSet<PathBuf> {
        std::mem::take(&mut *lock(&self.shared.changed))
    }

    /// How many namespaces are followed.
    pub fn len(&self) -> usize {
        lock(&self.shared.sockets).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn poll_loop(s: &Shared, wake: &(dyn Fn() + Send + Sync)) {
    while !s.stop.load(Ordering::Relaxed) {
        let snapshot: Vec<(PathBuf, Arc<OwnedFd>)> = lock(&s.sockets)
            .iter()
            .map(|(p, fd)| (p.clone(), fd.clone()))
            .collect();
        let mut fds: Vec<libc::pollfd> = std::iter::once(s.ctl.as_raw_fd())
            .chain(snapshot.iter().map(|(_, fd)| fd.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd; every descriptor is held open by `snapshot`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            tracing::error!(error = %io::Error::last_os_error(), "pod watch poll failed; pods are re-discovered at resync only");
            return;
        }
        if fds[0].revents != 0 {
            let mut v = 0u64;
            // SAFETY: reading 8 bytes from an eventfd.
            let _ = unsafe { libc::read(s.ctl.as_raw_fd(), (&raw mut v).cast(), 8) };
        }
        let mut woke = Vec::new();
        for (pfd, (path, fd)) in fds[1..].iter().zip(&snapshot) {
            if pfd.revents != 0 && (drain(fd.as_raw_fd()) || pfd.revents & libc::POLLERR != 0) {
                woke.push(path.clone());
            }
        }
        if !woke.is_empty() {
            // Only namespaces still followed (one may have been unwatched meanwhile).
            let followed = lock(&s.sockets);
            lock(&s.changed).extend(woke.into_iter().filter(|p| followed.contains_key(p)));
            drop(followed);
            wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::mpsc, time::Duration};

    /// Root only: a namespace of the test's own, an interface added in it.
    #[test]
    fn an_interface_added_in_a_followed_namespace_marks_it_changed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: this test needs root"
            );
            eprintln!("skipped: needs root (netns)");
            return;
        }
        let name = format!("veer-u{}-pw", std::process::id());
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        struct Del(String);
        impl Drop for Del {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        let _del = Del(name.clone());
        let path = PathBuf::from("/var/run/netns").join(&name);
        let (tx, rx) = mpsc::channel();
        let w = PodWatch::start(Box::new(move || {
            let _ = tx.send(());
        }))
        .unwrap();
        w.watch(&path).unwrap();
        assert!(w.take_changed().is_empty());
        ip(&[
            "-n", &name, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
        ]);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("woken by RTM_NEWLINK");
        assert!(w.take_changed().contains(&path));
        w.retain(|p| p != path);
        assert!(w.is_empty(), "retain closes the sockets it refuses");
        ip(&["-n", &name, "link", "del", "d0"]);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            w.take_changed().is_empty(),
            "an unwatched namespace wakes nothing"
        );
    }
}
