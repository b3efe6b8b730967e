//! `veer`: the node agent and its command-line interface.
//!
//! The read-only commands (`status`, `maps`, `flows`, `trace`, `stats`) read the pinned maps and
//! the agent's status file directly, so they work while the agent is down; their logic lives in
//! [`veer_agent::cli`].

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use veer_agent::{
    cli::{
        self,
        flows::{self as cli_flows},
        index::RuleIndex,
        maps::{self as cli_maps, MapsReport},
        status::{self as cli_status, DEFAULT_STATUS_FILE},
        trace::{self as cli_trace, Proto},
    },
    dataplane::Dataplane,
    debug::{DebugRequest, DebugState, format_unix, unix_now},
    error_chain,
    lpm::RefRules,
    maps::{self as agent_maps, Maps, Snapshot},
    metrics::{self, Metrics},
    report::{PodReport, StatusError, StatusFile},
};
use veer_common::{DIR_OUT, FAMILY_V4, IFACE_F_V4, IFACE_F_V6, paths, stats};

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

/// Default log filter when RUST_LOG is not set: debug events of the eBPF programs (debug
/// object only) are let through.
const DEFAULT_LOG_FILTER: &str = "info,veer_ebpf=debug";

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().flatten_event(true).with_current_span(false).init(),
    }
}

fn print<T: Serialize>(output: Output, v: &T, table: impl FnOnce(&T) -> String) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Table => print!("{}", table(v)),
    }
    Ok(())
}

fn open_maps(root: &Path) -> Result<Maps> {
    Maps::open_pinned(root).map_err(|e| anyhow::anyhow!(error_chain(&e)))
}

/// The status file (if readable) and the rule index (or why not).
struct Sources {
    status: Option<StatusFile>,
    index: Result<RuleIndex, String>,
    index_path: PathBuf,
}

impl Sources {
    /// Slot → interface name, from the rule index or else the status file.
    fn slots(&self) -> HashMap<u16, String> {
        let status_slots = self
            .status
            .as_ref()
            .map(|s| {
                s.slots
                    .iter()
                    .map(|x| (x.dev.clone(), x.slot))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        cli_maps::slot_names(self.index.as_ref().ok(), &status_slots)
    }

    /// The pods of the status file (none without one).
    fn pods(&self) -> Vec<PodReport> {
        self.status
            .as_ref()
            .map(|s| s.pods.clone())
            .unwrap_or_default()
    }
}

fn context(status_file: &Path) -> (Result<(StatusFile, Duration), StatusError>, Sources) {
    let loaded = StatusFile::load(status_file);
    let status = loaded.as_ref().ok().map(|(s, _)| s.clone());
    let index_path = status.as_ref().map_or_else(
        || cli::index::path_for_status(status_file),
        |s| s.index_path(status_file),
    );
    let index = RuleIndex::load(&index_path)
        .map_err(|e| format!("cannot read the rule index {}: {e}", index_path.display()));
    (
        loaded,
        Sources {
            status,
            index,
            index_path,
        },
    )
}

fn cmd_status(root: &Path, status_file: &Path, stale_after: u64, output: Output) -> Result<()> {
    let (loaded, cx) = context(status_file);
    let health = cli_status::health(
        status_file,
        loaded.as_ref(),
        Duration::from_secs(stale_after),
    );
    let maps = Maps::open_pinned(root).map_err(|e| error_chain(&e));
    let live = maps.as_ref().map_err(Clone::clone).and_then(|m| {
        let occ = cli::read_occupancy(m).map_err(|e| error_chain(&e))?;
        let totals = m.stats_totals().map_err(|e| error_chain(&e))?;
        Ok((occ, totals.to_vec()))
    });
    let totals = |id: u32| {
        maps.as_ref()
            .ok()?
            .rule_totals(id)
            .ok()
            .map(|t| (t.packets, t.bytes))
    };
    let report = cli_status::build(
        health,
        cx.status.as_ref(),
        cli_status::Live {
            index: cx.index.as_ref().map_err(Clone::clone),
            index_path: cx.index.is_ok().then(|| cx.index_path.clone()),
            maps: live,
            rule_totals: maps
                .is_ok()
                .then_some(&totals as &dyn Fn(u32) -> Option<(u64, u64)>),
        },
    );
    print(output, &report, cli_status::render)
}

fn cmd_maps(root: &Path, status_file: &Path, output: Output) -> Result<()> {
    let maps = open_maps(root)?;
    let snap = Snapshot::read(&maps, false).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let (_, cx) = context(status_file);
    let index = cx.index.as_ref().ok();
    let slots = cx.slots();
    let pods = cx.pods();
    let totals = |id: u32| maps.rule_totals(id).ok();
    let report = MapsReport {
        rules: cli_maps::rule_rows(&snap.rules, index, &slots, &totals),
        interfaces: snap
            .ifaces
            .iter()
            .map(|(k, v)| cli_maps::iface_row(k, v, &slots, &pods))
            .collect(),
        config: cli_maps::effective_config(&snap.config),
        rule_index_error: cx.index.as_ref().err().cloned(),
    };
    print(output, &report, cli_maps::render)
}

/// Flow rows decoded with the names the agent's files give (pods, slots, rules).
fn flow_rows(
    snap: &Snapshot,
    flows: &[(veer_common::FlowKey, veer_common::FlowValue)],
    cx: &Sources,
) -> Vec<cli_flows::FlowRow> {
    let slots = cx.slots();
    let pods = cx.pods();
    let config = cli_maps::effective_config(&snap.config);
    cli_flows::rows(
        flows,
        &cli_flows::Context {
            ifaces: &snap.ifaces,
            slots: &slots,
            pods: &pods,
            index: cx.index.as_ref().ok(),
            config: &config,
            now_ns: agent_maps::monotonic_coarse_ns(),
        },
    )
}

fn cmd_flows(root: &Path, status_file: &Path, output: Output) -> Result<()> {
    let maps = open_maps(root)?;
    let snap = Snapshot::read(&maps, true).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let (_, cx) = context(status_file);
    let rows = flow_rows(&snap, &snap.flows, &cx);
    print(output, &rows, |r| cli_flows::render(r))
}

fn cmd_trace(
    root: &Path,
    status_file: &Path,
    pod: &str,
    dst: &str,
    proto: Proto,
    output: Output,
) -> Result<()> {
    let (dst, port) = cli_trace::parse_dst(dst).map_err(anyhow::Error::msg)?;
    let (_, cx) = context(status_file);
    let pods = cx.pods();
    let cookie_of = |p: &Path| -> Result<u64, String> {
        match veer_agent::netns::netns_cookie(p) {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("reading the cookie of {}: {e}", p.display())),
            Err(e) => Err(error_chain(&e)),
        }
    };
    let (label, cookie, status_pod) =
        cli_trace::resolve_pod(pod, &pods, &cookie_of).map_err(anyhow::Error::msg)?;
    let maps = open_maps(root)?;
    let snap = Snapshot::read(&maps, true).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let ifaces: Vec<_> = snap
        .ifaces
        .iter()
        .filter(|(_, v)| Some(v.netns_cookie) == cookie)
        .copied()
        .collect();
    let index = cx.index.as_ref().ok();
    let slots = cx.slots();
    let ruleset = ifaces
        .first()
        .map(|(_, v)| v.ruleset)
        .or(status_pod.and_then(|p| p.ruleset));
    // The kernel's own longest-prefix match (a full-length key).
    let live = ruleset.map(|rs| {
        let r = match dst {
            std::net::IpAddr::V4(a) => maps.rules4.get(&agent_maps::host_key4(rs, a), 0),
            std::net::IpAddr::V6(a) => maps.rules6.get(&agent_maps::host_key6(rs, a), 0),
        };
        r.ok()
    });
    let mut live_rules = RefRules::new();
    for r in &snap.rules {
        live_rules.insert(r.ruleset, r.prefix, r.value);
    }
    // The pod's existing flows to the destination.
    let mut own: BTreeSet<[u8; 16]> = BTreeSet::new();
    for (_, v) in &ifaces {
        if v.flags & IFACE_F_V4 != 0 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v.addr4);
            own.insert(a);
        }
        if v.flags & IFACE_F_V6 != 0 {
            own.insert(v.addr6);
        }
    }
    let mut dst16 = [0u8; 16];
    match dst {
        std::net::IpAddr::V4(a) => dst16[..4].copy_from_slice(&a.octets()),
        std::net::IpAddr::V6(a) => dst16 = a.octets(),
    }
    let family = if dst.is_ipv4() { FAMILY_V4 } else { 6 };
    let pflows: Vec<_> = snap
        .flows
        .iter()
        .filter(|(k, _)| {
            k.dir == DIR_OUT
                && k.family == family
                && k.daddr == dst16
                && own.contains(&k.saddr)
                && k.proto == proto.number(dst)
                && port.is_none_or(|p| u16::from_be(k.dport) == p)
        })
        .copied()
        .collect();
    let flow_rows = flow_rows(&snap, &pflows, &cx);
    let report = cli_trace::explain(&cli_trace::TraceInput {
        pod: label,
        netns_cookie: cookie,
        ifaces: &ifaces,
        status_pod,
        slots: &slots,
        index,
        live,
        live_rules: Some(&live_rules),
        dst,
        port,
        proto,
        flows: &flow_rows,
    });
    print(output, &report, cli_trace::render)
}

fn cmd_stats(root: &Path, output: Output) -> Result<()> {
    let maps = open_maps(root)?;
    let totals = maps.stats_totals()?;
    if output == Output::Json {
        let obj: serde_json::Map<String, serde_json::Value> = cli::named_counters(&totals)
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
    Ok(())
}

/// `veer debug status`: the request and what the agent reports in force.
#[derive(Serialize)]
struct DebugReport {
    request_file: PathBuf,
    /// The request as written (absent: none was ever made).
    requested: Option<DebugRequest>,
    /// Whether the request wants the events on now (false once its time is up).
    requested_on: bool,
    /// What the agent's status file says is in force (absent: no agent status).
    in_force: Option<DebugState>,
    status_file: PathBuf,
    /// Age of the status file in seconds.
    status_age_s: Option<f64>,
}

fn debug_report(status_file: &Path) -> Result<DebugReport> {
    let request_file = veer_agent::debug::request_path(status_file);
    let requested =
        DebugRequest::read(&request_file).map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let loaded = StatusFile::load(status_file).ok();
    Ok(DebugReport {
        requested_on: requested.as_ref().is_some_and(|r| r.active_at(unix_now())),
        requested,
        request_file,
        in_force: loaded.as_ref().and_then(|(s, _)| s.debug_events.clone()),
        status_age_s: loaded.as_ref().map(|(_, age)| age.as_secs_f64()),
        status_file: status_file.to_path_buf(),
    })
}

fn render_debug(r: &DebugReport) -> String {
    let when = |u: Option<u64>| {
        u.map_or("until switched off".into(), |u| {
            format!("until {}", format_unix(u))
        })
    };
    let requested = match &r.requested {
        None => "nothing (off)".to_string(),
        Some(q) if r.requested_on => format!("on, {}", when(q.until_unix)),
        Some(q) if q.enabled => format!(
            "on, expired at {}",
            when(q.until_unix).trim_start_matches("until ")
        ),
        Some(_) => "off".into(),
    };
    let in_force = match &r.in_force {
        None => format!("unknown (no debug state in {})", r.status_file.display()),
        Some(d) if d.on => format!("on, {}", when(d.until_unix)),
        Some(_) => "off".into(),
    };
    let mut o = format!(
        "Requested: {requested}   ({})\nIn force:  {in_force}",
        r.request_file.display()
    );
    if let Some(age) = r.status_age_s {
        o.push_str(&format!("   (agent status {age:.0} s old)"));
    }
    o.push('\n');
    if let Some(e) = r.in_force.as_ref().and_then(|d| d.error.as_ref()) {
        o.push_str(&format!("Error:     {e}\n"));
    }
    o
}

fn cmd_debug(status_file: &Path, action: DebugAction) -> Result<()> {
    let path = veer_agent::debug::request_path(status_file);
    let now = unix_now();
    let (req, no_wait) = match action {
        DebugAction::Status { output } => {
            let r = debug_report(status_file)?;
            return print(output.output, &r, render_debug);
        }
        DebugAction::On { duration, no_wait } => (DebugRequest::on(now, Some(duration)), no_wait),
        DebugAction::Off { no_wait } => (DebugRequest::off(now), no_wait),
    };
    let written = std::time::SystemTime::now();
    req.write(&path)
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    let want = req.active_at(now);
    println!(
        "debug events {} requested ({})",
        if want { "on" } else { "off" },
        path.display()
    );
    if no_wait {
        return Ok(());
    }
    // The agent applies the request within ~200 ms and reports it in its next status file.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = debug_report(status_file)?;
        // Confirmed by a status the agent wrote after the request.
        let fresh = std::fs::metadata(status_file)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m >= written);
        if let Some(d) = &r.in_force
            && d.on == want
            && fresh
        {
            print!("{}", render_debug(&r));
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            print!("{}", render_debug(&r));
            bail!(
                "the agent has not confirmed within 10 s (is it running with --status-file {}?); \
                 the request stays and is applied when it runs",
                status_file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[allow(clippy::too_many_arguments)]
fn cmd_run(
    root: PathBuf,
    routes: Option<PathBuf>,
    services: Option<PathBuf>,
    kubernetes: bool,
    node_name: Option<String>,
    cni_dir: PathBuf,
    netns_dir: PathBuf,
    status_file: PathBuf,
    resync_secs: Option<u64>,
    metrics_address: Option<SocketAddr>,
) -> Result<()> {
    let stop = install_signal_handlers();
    let metrics = metrics_address.map(|addr| Metrics::start(&root, addr));
    if kubernetes {
        let mut cfg = veer_agent::k8s::K8sConfig::new(node_name.unwrap_or_default(), root.clone());
        cfg.cni_dir = cni_dir;
        cfg.netns_dir = netns_dir;
        cfg.status_file = Some(status_file.clone());
        cfg.metrics = metrics;
        if let Some(s) = resync_secs {
            cfg.resync = Duration::from_secs(s.max(1));
        }
        tracing::info!(?cfg, "veer agent starting (kubernetes)");
        veer_agent::k8s::run_blocking(cfg, stop).context("agent stopped")?;
    } else {
        let Some(routes) = routes else {
            bail!("--routes is required in standalone mode");
        };
        let cfg = veer_agent::standalone::StandaloneConfig {
            routes,
            services,
            cni_dir,
            netns_dir,
            bpffs_root: root,
            status_file: Some(status_file),
            resync: Duration::from_secs(resync_secs.unwrap_or(10).max(1)),
            metrics,
        };
        tracing::info!(?cfg, "veer agent starting (standalone)");
        veer_agent::standalone::run(cfg, stop).context("agent stopped")?;
    }
    tracing::info!("veer agent stopped; pinned maps and links keep the datapath running");
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
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
        } => cmd_run(
            root,
            routes,
            services,
            kubernetes,
            node_name,
            cni_dir,
            netns_dir,
            status_file,
            resync_secs,
            (!no_metrics).then_some(metrics_address),
        )?,
        Cmd::Load => {
            let dp = Dataplane::load_pinned(&root)
                .with_context(|| format!("loading veer with pins under {}", root.display()))?;
            dp.remove_stale();
            println!("maps pinned under {}", root.join(paths::MAPS_DIR).display());
        }
        Cmd::Stats { output } => cmd_stats(&root, output.output)?,
        Cmd::Status {
            output,
            status,
            stale_after_secs,
        } => cmd_status(&root, &status.status_file, stale_after_secs, output.output)?,
        Cmd::Maps { output, status } => cmd_maps(&root, &status.status_file, output.output)?,
        Cmd::Flows { output, status } => cmd_flows(&root, &status.status_file, output.output)?,
        Cmd::Trace {
            pod,
            dst,
            proto,
            output,
            status,
        } => cmd_trace(&root, &status.status_file, &pod, &dst, proto, output.output)?,
        Cmd::Debug {
            action,
            status_file,
        } => cmd_debug(&status_file, action)?,
        Cmd::Cleanup => {
            if root.exists() {
                std::fs::remove_dir_all(&root)
                    .with_context(|| format!("removing {}", root.display()))?;
                println!("removed {}", root.display());
            } else {
                println!("nothing to remove at {}", root.display());
            }
        }
    }
    Ok(())
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
