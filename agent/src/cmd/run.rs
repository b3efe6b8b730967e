//! `veer run`: the node agent, in standalone or Kubernetes mode, until SIGTERM or SIGINT.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};

use crate::{
    k8s::{self, K8sConfig},
    metrics::Metrics,
    node::NodeConfig,
    standalone::{self, StandaloneConfig},
};

/// Resync interval of standalone mode when none is given.
const STANDALONE_RESYNC_SECS: u64 = 10;

/// What `veer run` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// The pin root (`--bpffs-root`).
    pub bpffs_root: PathBuf,
    /// Standalone mode: the Route file or directory (required there).
    pub routes: Option<PathBuf>,
    pub services: Option<PathBuf>,
    /// Kubernetes mode.
    pub kubernetes: bool,
    pub node_name: Option<String>,
    pub cni_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub status_file: PathBuf,
    /// Full resync interval (none: the mode's default).
    pub resync_secs: Option<u64>,
    /// Where to serve metrics and health (none: not served).
    pub metrics_address: Option<SocketAddr>,
}

/// A resync interval in seconds as a duration, at least one second.
fn resync(secs: u64) -> Duration {
    Duration::from_secs(secs.max(1))
}

/// The node loop's settings both modes share (resync: `default_secs` unless given).
fn node_config(o: &RunOptions, metrics: Option<Arc<Metrics>>, default_secs: u64) -> NodeConfig {
    let mut node = NodeConfig::new(
        o.bpffs_root.clone(),
        resync(o.resync_secs.unwrap_or(default_secs)),
    );
    node.cni_dir = o.cni_dir.clone();
    node.netns_dir = o.netns_dir.clone();
    node.status_file = Some(o.status_file.clone());
    node.metrics = metrics;
    node
}

/// The Kubernetes mode's configuration (metrics: the endpoint, if served).
fn k8s_config(o: RunOptions, metrics: Option<Arc<Metrics>>) -> K8sConfig {
    let mut cfg = K8sConfig::new(
        o.node_name.clone().unwrap_or_default(),
        o.bpffs_root.clone(),
    );
    cfg.node = node_config(&o, metrics, cfg.node.resync.as_secs());
    cfg
}

/// The standalone mode's configuration; `None` without `--routes`.
fn standalone_config(o: RunOptions, metrics: Option<Arc<Metrics>>) -> Option<StandaloneConfig> {
    Some(StandaloneConfig {
        node: node_config(&o, metrics, STANDALONE_RESYNC_SECS),
        routes: o.routes?,
        services: o.services,
    })
}

/// Runs the agent until SIGTERM or SIGINT (it finishes its round first); the datapath keeps
/// working after it stops.
pub fn run(o: RunOptions) -> anyhow::Result<()> {
    let stop = install_signal_handlers();
    let metrics = o
        .metrics_address
        .map(|addr| Metrics::start(&o.bpffs_root, addr));
    if o.kubernetes {
        let cfg = k8s_config(o, metrics);
        tracing::info!(?cfg, "veer agent starting (kubernetes)");
        k8s::run_blocking(cfg, stop).context("agent stopped")?;
    } else {
        let Some(cfg) = standalone_config(o, metrics) else {
            bail!("--routes is required in standalone mode");
        };
        tracing::info!(?cfg, "veer agent starting (standalone)");
        standalone::run(cfg, stop).context("agent stopped")?;
    }
    tracing::info!("veer agent stopped; pinned maps and links keep the datapath running");
    Ok(())
}

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(s) = STOP.get() {
        s.store(true, Ordering::Relaxed);
    }
}

/// SIGTERM/SIGINT set the returned flag; the agent finishes its round and exits.
fn install_signal_handlers() -> Arc<AtomicBool> {
    let flag = STOP.get_or_init(Default::default).clone();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    flag
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> RunOptions {
        RunOptions {
            bpffs_root: "/sys/fs/bpf/veer".into(),
            routes: Some("/etc/veer/routes".into()),
            services: None,
            kubernetes: false,
            node_name: Some("n1".into()),
            cni_dir: "/cni".into(),
            netns_dir: "/netns".into(),
            status_file: "/run/veer/status.json".into(),
            resync_secs: None,
            metrics_address: None,
        }
    }

    #[test]
    fn standalone_needs_routes_and_resyncs_every_10_s_by_default() {
        let cfg = standalone_config(options(), None).unwrap();
        assert_eq!(cfg.node.resync, Duration::from_secs(10));
        assert_eq!(cfg.routes, PathBuf::from("/etc/veer/routes"));
        assert_eq!(cfg.node.bpffs_root, PathBuf::from("/sys/fs/bpf/veer"));
        assert_eq!(cfg.node.status_file, Some("/run/veer/status.json".into()));
        let no_routes = RunOptions {
            routes: None,
            ..options()
        };
        assert!(standalone_config(no_routes, None).is_none());
    }

    #[test]
    fn a_resync_interval_of_zero_is_one_second_in_both_modes() {
        let o = RunOptions {
            resync_secs: Some(0),
            ..options()
        };
        assert_eq!(
            standalone_config(o.clone(), None).unwrap().node.resync,
            Duration::from_secs(1)
        );
        assert_eq!(k8s_config(o, None).node.resync, Duration::from_secs(1));
    }

    #[test]
    fn kubernetes_mode_keeps_its_default_resync_unless_given_one() {
        let o = RunOptions {
            kubernetes: true,
            ..options()
        };
        let default = K8sConfig::new("n1", "/sys/fs/bpf/veer");
        let cfg = k8s_config(o.clone(), None);
        assert_eq!(cfg.node.resync, default.node.resync);
        assert_eq!(cfg.node_name, "n1");
        assert_eq!(cfg.node.cni_dir, PathBuf::from("/cni"));
        assert_eq!(cfg.node.status_file, Some("/run/veer/status.json".into()));
        let given = RunOptions {
            resync_secs: Some(45),
            ..o
        };
        assert_eq!(k8s_config(given, None).node.resync, Duration::from_secs(45));
    }
}
