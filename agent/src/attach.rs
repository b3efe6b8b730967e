//! Attaching the TC programs to a pod's interfaces (TCX links), pinning and adopting the links.
//!
//! Everything that resolves an interface (its index, the TCX attachment) happens on a thread
//! inside the pod's namespace ([`crate::netns::in_netns`]).
//!
//! With a pin root, each link is pinned at `<root>/links/<netns cookie>/<ifindex>_<dir>`: the
//! programs stay attached while the agent is down, and a restarted agent adopts the pins,
//! atomically swapping its own (identical or upgraded) program in with `bpf_link_update`, so
//! no packet ever passes unprocessed. Without a pin root (tests) the links live as long as the
//! returned [`PodLinks`].

use std::{
    collections::BTreeSet,
    ffi::CString,
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, ProgramError, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
};
use veer_common::{maps as names, paths};

use crate::{
    dataplane::{Dataplane, DataplaneError},
    netns::{NetnsError, current_netns_cookie, in_netns},
};

/// Errors of attaching or detaching.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("interface {iface} does not exist in the pod's namespace")]
    NoSuchInterface { iface: String },
    #[error("reading the namespace cookie")]
    Cookie(#[source] io::Error),
    #[error("attaching {prog} to {iface}")]
    Attach {
        prog: &'static str,
        iface: String,
        #[source]
        source: ProgramError,
    },
    #[error("adopting pinned link {path}")]
    Adopt {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("pinning link at {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("link directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The programs attached to one pod. Dropping it releases the agent's file descriptors; links
/// that are pinned stay attached until [`detach_pod`] removes the pins.
#[derive(Debug)]
pub struct PodLinks {
    /// The pod namespace's cookie (the key of its entries in `VEER_IFACES_V1`).
    pub cookie: u64,
    /// The attached interfaces: name and ifindex in the pod's namespace.
    pub ifaces: Vec<(String, u32)>,
    /// Each link with the ifindex it is attached to.
    links: Vec<(u32, FdLink)>,
}

impl PodLinks {
    /// Releases the links of the interfaces `gone` (vanished from the pod: the kernel has
    /// detached their programs already) and removes their pins under `root`.
    pub fn release(&mut self, root: Option<&Path>, gone: &BTreeSet<u32>) {
        self.links.retain(|(i, _)| !gone.contains(i));
        self.ifaces.retain(|(_, i)| !gone.contains(i));
        if let Some(root) = root {
            for i in gone {
                for dir in [paths::EGRESS_SUFFIX, paths::INGRESS_SUFFIX] {
                    let _ = fs::remove_file(link_pin(root, self.cookie, *i, dir));
                }
            }
        }
    }
}

/// Directory of the pinned links of the pod with `cookie`.
pub fn pod_link_dir(root: &Path, cookie: u64) -> PathBuf {
    root.join(paths::LINKS_DIR).join(cookie.to_string())
}

fn link_pin(root: &Path, cookie: u64, ifindex: u32, dir: &str) -> PathBuf {
    pod_link_dir(root, cookie).join(format!("{ifindex}_{dir}"))
}

fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Attaches egress and ingress programs to each of `ifaces` inside the namespace at `netns`.
/// Links already pinned for an interface are adopted (program swapped atomically).
pub fn attach_pod(
    dp: &mut Dataplane,
    netns: &Path,
    ifaces: &[String],
) -> Result<PodLinks, AttachError> {
    let root = dp.root().map(Path::to_path_buf);
    in_netns(netns, move || {
        let cookie = current_netns_cookie().map_err(AttachError::Cookie)?;
        let mut out = PodLinks {
            cookie,
            ifaces: Vec::new(),
            links: Vec::new(),
        };
        if let Some(root) = &root {
            let dir = pod_link_dir(root, cookie);
            fs::create_dir_all(&dir).map_err(|source| AttachError::Dir {
                path: dir.clone(),
                source,
            })?;
            // Only root may reach the pins (like the maps directory).
            for d in [root.join(paths::LINKS_DIR), dir] {
                fs::set_permissions(&d, fs::Permissions::from_mode(0o700))
                    .map_err(|source| AttachError::Dir { path: d, source })?;
            }
        }
        for iface in ifaces {
            let ifindex = if_index(iface).ok_or_else(|| AttachError::NoSuchInterface {
                iface: iface.clone(),
            })?;
            for (prog_name, ty, suffix) in [
                (
                    names::PROG_EGRESS,
                    TcAttachType::Egress,
                    paths::EGRESS_SUFFIX,
                ),
                (
                    names::PROG_INGRESS,
                    TcAttachType::Ingress,
                    paths::INGRESS_SUFFIX,
                ),
            ] {
                let prog = dp.program(prog_name)?;
                let pin = root.as_ref().map(|r| link_pin(r, cookie, ifindex, suffix));
                let err = |source| AttachError::Attach {
                    prog: prog_name,
                    iface: iface.clone(),
                    source,
                };
                let id = match pin.as_ref().filter(|p| p.exists()) {
                    Some(path) => {
                        let pinned =
                            PinnedLink::from_pin(path).map_err(|source| AttachError::Adopt {
                                path: path.clone(),
                                source,
                            })?;
                        let fd: FdLink = pinned.into();
                        let link = SchedClassifierLink::try_from(fd).map_err(|source| {
                            AttachError::Adopt {
                                path: path.clone(),
                                source,
                            }
                        })?;
                        prog.attach_to_link(link).map_err(err)?
                    }
                    None => prog
                        .attach_with_options(
                            iface,
                            ty,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(err)?,
                };
                let link = prog.take_link(id).map_err(err)?;
                let fd = FdLink::try_from(link).map_err(|source| AttachError::Adopt {
                    path: pin.clone().unwrap_or_default(),
                    source,
                })?;
                if let Some(path) = pin.filter(|p| !p.exists()) {
                    let pinned = fd.pin(&path).map_err(|source| AttachError::Pin {
                        path: path.clone(),
                        source: Box::new(source),
                    })?;
                    out.links.push((ifindex, pinned.into()));
                } else {
                    out.links.push((ifindex, fd));
                }
            }
            out.ifaces.push((iface.clone(), ifindex));
        }
        Ok(out)
    })?
}

/// Removes the pinned links of the pod with `cookie` (the programs detach once no descriptor
/// is left, and at once if the namespace is gone). Missing pins are not an error.
pub fn detach_pod(root: &Path, cookie: u64) -> Result<(), AttachError> {
    let dir = pod_link_dir(root, cookie);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AttachError::Dir { path: dir, source }),
    }
}
