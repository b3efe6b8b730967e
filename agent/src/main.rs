//! `veer`: the node agent and its command-line interface.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use veer_agent::{dataplane::Dataplane, maps::Maps};
use veer_common::{paths, stats};

/// veer steers pod egress between a pod's networks (e.g. Calico eth0 and OVN eth1) with TC eBPF
/// programs inside each pod's network namespace.
#[derive(Parser)]
#[command(name = "veer", version)]
struct Cli {
    /// veer's directory in bpffs (pinned maps and links).
    #[arg(long, global = true, default_value = paths::DEFAULT_ROOT, env = "VEER_BPFFS_ROOT")]
    bpffs_root: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    /// Human-readable table.
    Table,
    /// JSON (stable field names, documented in docs/operations.md).
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent. Standalone mode: Routes (and Services) from files, pods from the CNI
    /// result cache; hot-reloads on change. The datapath keeps working when the agent stops.
    Run {
        /// Route file or directory (YAML or JSON; CR form, `kind: List`, or shorthand).
        #[arg(long)]
        routes: PathBuf,
        /// Service/EndpointSlice file or directory (`kubectl get svc,endpointslices -A -o yaml`).
        #[arg(long)]
        services: Option<PathBuf>,
        /// CNI result cache (pods are found from its `*-lo` files).
        #[arg(long, default_value = "/var/lib/cni/results")]
        cni_dir: PathBuf,
        /// Directory of named network namespaces (watched for removals).
        #[arg(long, default_value = "/var/run/netns")]
        netns_dir: PathBuf,
        /// Status file written after every reconcile round (read by `veer status`).
        #[arg(long, default_value = "/run/veer/status.json")]
        status_file: PathBuf,
        /// Full resync interval in seconds (changes are applied at once regardless).
        #[arg(long, default_value_t = 10)]
        resync_secs: u64,
    },
    /// Load the programs and create (or adopt, after a layout check) the pinned maps.
    Load,
    /// Packet counters by outcome and reason, summed over CPUs, from the pinned maps.
    Stats {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Remove every pin veer created under the bpffs root (detaches pinned links).
    Cleanup,
}

static STOP: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(s) = STOP.get() {
        s.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// SIGTERM/SIGINT set the returned flag; the agent finishes its round and exits.
fn install_signal_handlers() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = STOP.get_or_init(Default::default).clone();
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    flag
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            routes,
            services,
            cni_dir,
            netns_dir,
            status_file,
            resync_secs,
        } => {
            let stop = install_signal_handlers();
            let cfg = veer_agent::standalone::StandaloneConfig {
                routes,
                services,
                cni_dir,
                netns_dir,
                bpffs_root: cli.bpffs_root.clone(),
                status_file: Some(status_file),
                resync: std::time::Duration::from_secs(resync_secs.max(1)),
            };
            tracing::info!(?cfg, "veer agent starting (standalone)");
            veer_agent::standalone::run(cfg, stop).context("agent stopped")?;
            tracing::info!("veer agent stopped; pinned maps and links keep the datapath running");
        }
        Cmd::Load => {
            let dp = Dataplane::load_pinned(&cli.bpffs_root).with_context(|| {
                format!("loading veer with pins under {}", cli.bpffs_root.display())
            })?;
            dp.remove_stale();
            println!(
                "maps pinned under {}",
                cli.bpffs_root.join(paths::MAPS_DIR).display()
            );
        }
        Cmd::Stats { output } => {
            let maps = Maps::open_pinned(&cli.bpffs_root)?;
            let totals = maps.stats_totals()?;
            if output == Output::Json {
                let obj: serde_json::Map<String, serde_json::Value> = stats::NAMES
                    .iter()
                    .zip(totals)
                    .filter(|(n, _)| !n.starts_with("reserved"))
                    .map(|(n, v)| (n.to_string(), v.into()))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&obj)?);
            } else {
                println!("{:<24} {:>14}", "COUNTER", "PACKETS");
                for (n, v) in stats::NAMES.iter().zip(totals) {
                    if !n.starts_with("reserved") {
                        println!("{n:<24} {v:>14}");
                    }
                }
            }
        }
        Cmd::Cleanup => {
            if cli.bpffs_root.exists() {
                std::fs::remove_dir_all(&cli.bpffs_root)
                    .with_context(|| format!("removing {}", cli.bpffs_root.display()))?;
                println!("removed {}", cli.bpffs_root.display());
            } else {
                println!("nothing to remove at {}", cli.bpffs_root.display());
            }
        }
    }
    Ok(())
}
