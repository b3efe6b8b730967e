//! `veer`: the node agent and its command-line interface.
//!
//! This file only defines the command line (clap; the doc comments are the `--help`) and
//! dispatches: each subcommand's logic is in its module of [`veer_agent::cmd`]. The read-only
//! commands (`status`, `maps`, `flows`, `trace`, `stats`) read the pinned maps and the agent's
//! status file directly, so they work while the agent is down.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use veer_agent::{
    cli::{status::DEFAULT_STATUS_FILE, trace::Proto},
    cmd::{self, Format, debug::Action, logs, run::RunOptions},
    metrics,
};
use veer_common::paths;

/// veer steers pod egress between a pod's networks (e.g. Calico eth0 and OVN eth1) with TC eBPF
/// programs inside each pod's network namespace.
#[derive(Parser)]
#[command(name = "veer", version)]
struct Cli {
    /// veer's directory in bpffs (pinned maps and links).
    #[arg(long, global = true, default_value = paths::DEFAULT_ROOT, env = "VEER_BPFFS_ROOT")]
    bpffs_root: PathBuf,
    /// Log format on stderr. The filter is RUST_LOG (default `info,veer_ebpf=debug`).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "VEER_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    /// One human-readable line per event.
    Human,
    /// One JSON object per event (for log collectors).
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    /// Human-readable table.
    Table,
    /// JSON (stable field names, documented in docs/operations.md).
    Json,
}

/// Output format.
#[derive(Args)]
struct OutputArg {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

/// Where the agent writes its status (and, beside it, the rule index).
#[derive(Args)]
struct StatusFileArg {
    /// The agent's status file (`veer run --status-file`); the rule index is read from beside
    /// it.
    #[arg(long, default_value = DEFAULT_STATUS_FILE, env = "VEER_STATUS_FILE")]
    status_file: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent. Standalone mode: Routes (and Services) from files, pods from the CNI
    /// result cache; hot-reloads on change. Kubernetes mode (`--kubernetes`): Routes, Services
    /// and pods from the API server. The datapath keeps working when the agent stops.
    Run {
        /// Route file or directory (YAML or JSON; CR form, `kind: List`, or shorthand).
        #[arg(long, required_unless_present = "kubernetes")]
        routes: Option<PathBuf>,
        /// Service/EndpointSlice file or directory (`kubectl get svc,endpointslices -A -o yaml`).
        #[arg(long)]
        services: Option<PathBuf>,
        /// Take Routes, Services and pods from the Kubernetes API (in-cluster or kubeconfig).
        #[arg(long, conflicts_with_all = ["routes", "services"])]
        kubernetes: bool,
        /// This node's name (Kubernetes mode; the DaemonSet passes spec.nodeName).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// CNI result cache (pods are found from its `*-lo` files).
        #[arg(long, default_value = "/var/lib/cni/results")]
        cni_dir: PathBuf,
        /// Directory of named network namespaces (watched for removals).
        #[arg(long, default_value = "/var/run/netns")]
        netns_dir: PathBuf,
        /// Status file written after every reconcile round (read by `veer status`); the rule
        /// index is written beside it (`status.json` → `status.rules.json`).
        #[arg(long, default_value = DEFAULT_STATUS_FILE)]
        status_file: PathBuf,
        /// Full resync interval in seconds (changes are applied at once regardless); default
        /// 10 (standalone) or 30 (Kubernetes).
        #[arg(long)]
        resync_secs: Option<u64>,
        /// Address of the Prometheus metrics, `/healthz` and `/readyz` endpoint.
        #[arg(long, default_value = metrics::DEFAULT_ADDRESS)]
        metrics_address: SocketAddr,
        /// Serve no metrics or health endpoints.
        #[arg(long)]
        no_metrics: bool,
    },
    /// Load the programs and create (or adopt, after a layout check) the pinned maps.
    Load,
    /// Packet counters by outcome and reason, summed over CPUs, from the pinned maps.
    Stats {
        #[command(flatten)]
        output: OutputArg,
    },
    /// Agent health, managed pods and interfaces, Routes (applied and skipped, with reasons),
    /// map occupancy and drop/error counters.
    Status {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        status: StatusFileArg,
        /// Report the agent down when its status file is older than this many seconds.
        #[arg(long, default_value_t = 60)]
        stale_after_secs: u64,
    },
    /// The rule tries decoded: prefix and ruleset → interface, next hop, originating Route and
    /// entry, packets and bytes; the interface table and the run-time configuration.
    Maps {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        status: StatusFileArg,
    },
    /// The flow table decoded: direction, kind, state, age, 5-tuple, path and rule.
    Flows {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        status: StatusFileArg,
    },
    /// Explain how a pod's packet to a destination would be handled, without sending one: the
    /// matching Route entry (or "no match: kernel route"), outgoing interface, next hop and
    /// source address after translation; checks the live map against the agent's rules.
    Trace {
        /// The pod: `namespace/name` (as `veer status` lists it) or its network namespace path.
        #[arg(long)]
        pod: String,
        /// Destination: `<ip>`, `<ipv4>:<port>` or `[<ipv6>]:<port>`.
        #[arg(long)]
        dst: String,
        /// Protocol of the packet.
        #[arg(long, value_enum, default_value = "tcp")]
        proto: Proto,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        status: StatusFileArg,
    },
    /// Switch the eBPF debug events (new steered flow, collision, flow expired, ICMP error
    /// reverse-translated, frame too big) on or off at run time, without restarting the agent:
    /// the agent swaps the debug programs into the existing links atomically and logs the
    /// events (target `veer_ebpf`). Writes a request beside the status file; the agent applies
    /// it within a second, also after a restart.
    Debug {
        #[command(subcommand)]
        action: DebugAction,
        /// The agent's status file (`veer run --status-file`); the request is written beside it.
        #[arg(long, global = true, default_value = DEFAULT_STATUS_FILE, env = "VEER_STATUS_FILE")]
        status_file: PathBuf,
    },
    /// Remove every pin veer created under the bpffs root (detaches pinned links).
    Cleanup,
}

#[derive(Subcommand)]
enum DebugAction {
    /// Switch the debug events on (for a limited time: they cost per packet while on).
    On {
        /// How long: `90s`, `15m`, `2h`, `1d`; `0` keeps them on until `veer debug off`.
        #[arg(long = "for", value_parser = veer_agent::debug::parse_duration, default_value = "15m")]
        duration: Duration,
        /// Return at once instead of waiting (up to 10 s) for the agent to confirm.
        #[arg(long)]
        no_wait: bool,
    },
    /// Switch the debug events off (the default programs are swapped back in).
    Off {
        /// Return at once instead of waiting (up to 10 s) for the agent to confirm.
        #[arg(long)]
        no_wait: bool,
    },
    /// What was requested and what the agent has in force.
    Status {
        #[command(flatten)]
        output: OutputArg,
    },
}

impl From<LogFormat> for logs::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Human => logs::LogFormat::Human,
            LogFormat::Json => logs::LogFormat::Json,
        }
    }
}

impl From<OutputArg> for Format {
    fn from(o: OutputArg) -> Self {
        match o.output {
            Output::Table => Format::Table,
            Output::Json => Format::Json,
        }
    }
}

impl From<DebugAction> for Action {
    fn from(a: DebugAction) -> Self {
        match a {
            DebugAction::On { duration, no_wait } => Action::On { duration, no_wait },
            DebugAction::Off { no_wait } => Action::Off { no_wait },
            DebugAction::Status { output } => Action::Status {
                format: output.into(),
            },
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    logs::init(cli.log_format.into());
    let root = cli.bpffs_root;
    match cli.cmd {
        Cmd::Run {
            routes,
            services,
            kubernetes,
            node_name,
            cni_dir,
            netns_dir,
            status_file,
            resync_secs,
            metrics_address,
            no_metrics,
        } => cmd::run::run(RunOptions {
            bpffs_root: root,
            routes,
            services,
            kubernetes,
            node_name,
            cni_dir,
            netns_dir,
            status_file,
            resync_secs,
            metrics_address: (!no_metrics).then_some(metrics_address),
        }),
        Cmd::Load => cmd::load::run(&root),
        Cmd::Stats { output } => cmd::stats::run(&root, output.into()),
        Cmd::Status {
            output,
            status,
            stale_after_secs,
        } => cmd::status::run(
            &root,
            &status.status_file,
            Duration::from_secs(stale_after_secs),
            output.into(),
        ),
        Cmd::Maps { output, status } => cmd::maps::run(&root, &status.status_file, output.into()),
        Cmd::Flows { output, status } => cmd::flows::run(&root, &status.status_file, output.into()),
        Cmd::Trace {
            pod,
            dst,
            proto,
            output,
            status,
        } => cmd::trace::run(&root, &status.status_file, &pod, &dst, proto, output.into()),
        Cmd::Debug {
            action,
            status_file,
        } => cmd::debug::run(&status_file, action.into()),
        Cmd::Cleanup => cmd::cleanup::run(&root),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_modes_parse() {
        let c = Cli::try_parse_from(["veer", "run", "--routes", "/r"]).unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Run {
                kubernetes: false,
                ..
            }
        ));
        let c = Cli::try_parse_from([
            "veer",
            "--log-format",
            "json",
            "run",
            "--kubernetes",
            "--node-name=n1",
            "--metrics-address=127.0.0.1:9464",
        ])
        .unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Run {
                kubernetes: true,
                ..
            }
        ));
        assert!(
            Cli::try_parse_from(["veer", "run"]).is_err(),
            "routes or --kubernetes"
        );
        let c = Cli::try_parse_from([
            "veer",
            "trace",
            "--pod",
            "default/web",
            "--dst",
            "10.0.0.1:80",
            "--proto",
            "udp",
            "-o",
            "json",
        ])
        .unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Trace {
                proto: Proto::Udp,
                ..
            }
        ));
        for sub in ["status", "maps", "flows", "stats"] {
            Cli::try_parse_from(["veer", sub, "-o", "json"]).unwrap();
        }
        let c = Cli::try_parse_from(["veer", "debug", "on", "--for", "2h", "--status-file=/s"])
            .unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Debug {
                action: DebugAction::On { duration, no_wait: false },
                ..
            } if duration == Duration::from_secs(7200)
        ));
        Cli::try_parse_from(["veer", "debug", "status", "-o", "json", "--status-file=/s"]).unwrap();
        Cli::try_parse_from(["veer", "debug", "off", "--no-wait"]).unwrap();
        assert!(Cli::try_parse_from(["veer", "debug", "on", "--for", "soon"]).is_err());
    }
}
