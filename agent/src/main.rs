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

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
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
