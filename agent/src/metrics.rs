//! Prometheus metrics (OpenMetrics text) and health endpoints of `veer run`.
//!
//! A tiny HTTP/1.1 responder on a std thread serves:
//! - `/metrics`: the registry below;
//! - `/healthz`: 200 while the process runs;
//! - `/readyz`: 200 once the maps are loaded and the first reconcile round is done (the node
//!   loop's publisher calls [`Metrics::set_ready`], in both modes), else 503.
//!
//! Datapath metrics are read from the pinned maps at scrape time (so they are current and the
//! same whatever the agent loop does); agent metrics are recorded by the loop.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `veer_rule_packets_total`, `veer_rule_bytes_total` | counter | `rule_id`, `route`, `entry`, `dev` |
//! | `veer_datapath_packets_total` | counter | `reason` (`veer_common::stats::NAMES`), `class` (`pass`, `steer`, `revnat`, `drop`, `error`, `family`, `side`) |
//! | `veer_flow_entries` | gauge | `kind` (`steer`, `native`, `revnat`) |
//! | `veer_map_entries`, `veer_map_capacity`, `veer_map_pressure_ratio` | gauge | `map` |
//! | `veer_maps_readable` | gauge | |
//! | `veer_reconcile_duration_seconds` | histogram | |
//! | `veer_pod_attach_latency_seconds` | histogram | |
//! | `veer_source_errors_total` | counter | `source` (`routes`, `services`, `cni`, `compile`) |
//! | `veer_source_errors_current` | gauge | `source` (errors of the last round) |
//! | `veer_reconcile_rounds_total` | counter | |
//! | `veer_pods_managed` | gauge | |
//! | `veer_ready` | gauge | |

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    maps::{MapUse, Maps, count_keys, counter_class, kind_name, named_counters, occupancy},
    report::index::RuleIndex,
};

/// Default address of the metrics endpoint.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9464";

/// Content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// State shared by the agent loop, the collector and the HTTP thread.
#[derive(Debug)]
struct Shared {
    root: PathBuf,
    ready: AtomicBool,
    started: SystemTime,
    /// The rule index of the last round (labels of the per-rule counters).
    index: RwLock<Option<Arc<RuleIndex>>>,
}

impl Shared {
    fn index(&self) -> Option<Arc<RuleIndex>> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Reads the pinned maps at every scrape.
#[derive(Debug)]
struct MapCollector(Arc<Shared>);

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Labels, N)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    if let [(labels, v)] = series
        && labels.is_empty()
    {
        return ConstGauge::new(*v).encode(m);
    }
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for MapCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let maps = match Maps::open_pinned(&self.0.root) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: pinned maps not readable");
                return gauge(
                    &mut enc,
                    "veer_maps_readable",
                    "Whether the pinned maps could be read for this scrape.",
                    &[(vec![], 0i64)],
                );
            }
        };
        gauge(
            &mut enc,
            "veer_maps_readable",
            "Whether the pinned maps could be read for this scrape.",
            &[(vec![], 1i64)],
        )?;
        let index = self.0.index();
        let rules = crate::maps::read_rules(&maps).unwrap_or_default();
        // Per-rule counters, labelled from the rule index.
        let by_id = index
            .as_deref()
            .map(RuleIndex::by_rule_id)
            .unwrap_or_default();
        let mut ids: BTreeMap<u32, u16> = BTreeMap::new();
        for r in &rules {
            if r.value.rule_id != 0 {
                ids.entry(r.value.rule_id).or_insert(r.value.slot);
            }
        }
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        for (id, slot) in &ids {
            let Ok(t) = maps.rule_totals(*id) else {
                continue;
            };
            let e = by_id.get(id);
            let labels: Labels = vec![
                ("rule_id", id.to_string()),
                ("route", e.map(|e| e.route.clone()).unwrap_or_default()),
                ("entry", e.map(|e| e.path.clone()).unwrap_or_default()),
                (
                    "dev",
                    e.map(|e| e.dev.clone())
                        .or_else(|| {
                            index
                                .as_ref()
                                .and_then(|i| i.dev(*slot))
                                .map(str::to_string)
                        })
                        .unwrap_or_else(|| format!("slot{slot}")),
                ),
            ];
            packets.push((labels.clone(), t.packets));
            bytes.push((labels, t.bytes));
        }
        counter(
            &mut enc,
            "veer_rule_packets",
            "Packets steered by each rule (L2 frames), summed over CPUs.",
            &packets,
        )?;
        counter(
            &mut enc,
            "veer_rule_bytes",
            "Bytes steered by each rule (L2 frame length), summed over CPUs.",
            &bytes,
        )?;
        if let Ok(totals) = maps.stats_totals() {
            let series: Vec<(Labels, u64)> = named_counters(&totals)
                .map(|(n, v)| {
                    (
                        vec![
                            ("reason", n.to_string()),
                            ("class", counter_class(n).into()),
                        ],
                        v,
                    )
                })
                .collect();
            counter(
                &mut enc,
                "veer_datapath_packets",
                "Packets by outcome and reason (VEER_STATS_V1), summed over CPUs.",
                &series,
            )?;
        }
        // Flows by kind (values are read: the kind is in the value).
        let mut kinds: BTreeMap<String, i64> = ["steer", "native", "revnat"]
            .into_iter()
            .map(|k| (k.to_string(), 0))
            .collect();
        let mut flows = 0u64;
        for (_, v) in maps.flows.iter().filter_map(Result::ok) {
            *kinds.entry(kind_name(v.kind)).or_default() += 1;
            flows += 1;
        }
        let series: Vec<(Labels, i64)> = kinds
            .into_iter()
            .map(|(k, v)| (vec![("kind", k)], v))
            .collect();
        gauge(
            &mut enc,
            "veer_flow_entries",
            "Entries of the flow table by kind.",
            &series,
        )?;
        let v4 = rules.iter().filter(|r| r.prefix.addr().is_ipv4()).count() as u64;
        let occ = occupancy(
            v4,
            rules.len() as u64 - v4,
            count_keys(maps.ifaces.keys()),
            flows,
            ids.len() as u64,
        );
        let lab = |m: &MapUse| -> Labels { vec![("map", m.map.to_string())] };
        let entries: Vec<(Labels, i64)> = occ.iter().map(|m| (lab(m), m.entries as i64)).collect();
        let cap: Vec<(Labels, i64)> = occ.iter().map(|m| (lab(m), m.capacity as i64)).collect();
        let ratio: Vec<(Labels, f64)> = occ.iter().map(|m| (lab(m), m.ratio)).collect();
        gauge(
            &mut enc,
            "veer_map_entries",
            "Entries in each map (VEER_RSTATS_V1: rule ids in use).",
            &entries,
        )?;
        gauge(&mut enc, "veer_map_capacity", "Capacity of each map.", &cap)?;
        gauge(
            &mut enc,
            "veer_map_pressure_ratio",
            "Entries over capacity of each map (0..1).",
            &ratio,
        )?;
        // `veer debug on` sets the flag once the debug programs are in (an unset entry is all
        // zeros: off).
        let debug = maps.config_entry().is_ok_and(|c| c.debug());
        gauge(
            &mut enc,
            "veer_debug_events_enabled",
            "Whether the eBPF debug events are switched on (`veer debug`): they cost per packet.",
            &[(vec![], i64::from(debug))],
        )
    }
}

/// The agent's metrics (see the module documentation).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    shared: Arc<Shared>,
    reconcile: Histogram,
    attach: Histogram,
    rounds: Counter,
    source_errors: Family<Vec<(&'static str, String)>, Counter>,
    source_errors_now: Family<Vec<(&'static str, String)>, Gauge>,
    pods: Gauge,
    ready: Gauge,
}

impl Metrics {
    /// Metrics of an agent whose maps are pinned under `bpffs_root`.
    pub fn new(bpffs_root: &Path) -> Arc<Self> {
        let shared = Arc::new(Shared {
            root: bpffs_root.to_path_buf(),
            ready: AtomicBool::new(false),
            // File times come from a coarse clock that lags by up to a tick: a file written just
            // after this point may look older than it.
            started: SystemTime::now() - Duration::from_millis(50),
            index: RwLock::new(None),
        });
        let mut registry = Registry::default();
        let reconcile = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let attach = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let rounds = Counter::default();
        let source_errors = Family::default();
        let source_errors_now = Family::default();
        let pods = Gauge::default();
        let ready = Gauge::default();
        registry.register(
            "veer_reconcile_duration_seconds",
            "Duration of a reconcile round (sources, compile, map writes, pods).",
            reconcile.clone(),
        );
        registry.register(
            "veer_pod_attach_latency_seconds",
            "Time from a pod's CNI result being written to its interfaces being managed.",
            attach.clone(),
        );
        registry.register(
            "veer_reconcile_rounds",
            "Reconcile rounds completed.",
            rounds.clone(),
        );
        registry.register(
            "veer_source_errors",
            "Errors reading sources (Route/Service files, CNI cache) or compiling, per round.",
            source_errors.clone(),
        );
        registry.register(
            "veer_source_errors_current",
            "Errors of the last round by source.",
            source_errors_now.clone(),
        );
        registry.register("veer_pods_managed", "Pods managed.", pods.clone());
        registry.register(
            "veer_ready",
            "1 once the maps are loaded and the first round is done.",
            ready.clone(),
        );
        registry.register_collector(Box::new(MapCollector(shared.clone())));
        Arc::new(Self {
            registry,
            shared,
            reconcile,
            attach,
            rounds,
            source_errors,
            source_errors_now,
            pods,
            ready,
        })
    }

    /// Metrics of the agent whose maps are pinned under `bpffs_root`, served on `addr`. Metrics
    /// are not worth stopping the agent for: a bind failure is logged (and `/healthz` probes
    /// then fail visibly), and the loop still records into the returned metrics.
    pub fn start(bpffs_root: &Path, addr: SocketAddr) -> Arc<Self> {
        let m = Self::new(bpffs_root);
        if let Err(e) = m.serve(addr) {
            tracing::error!(%addr, error = %e, "cannot serve metrics; continuing without them");
        }
        m
    }

    /// Marks the agent ready (maps loaded, first round done).
    pub fn set_ready(&self) {
        self.shared.ready.store(true, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// Records a finished reconcile round.
    pub fn observe_round(&self, elapsed: Duration, pods_managed: usize) {
        self.reconcile.observe(elapsed.as_secs_f64());
        self.rounds.inc();
        self.pods.set(pods_managed as i64);
    }

    /// Records the errors of a round from one source (`routes`, `services`, `cni`, `compile`).
    pub fn source_errors(&self, source: &'static str, n: usize) {
        let l = vec![("source", source.to_string())];
        self.source_errors.get_or_create(&l).inc_by(n as u64);
        self.source_errors_now.get_or_create(&l).set(n as i64);
    }

    /// Records a newly managed pod whose CNI result file is `cni_file`: the latency is the time
    /// since the file was written, when that is after the agent started (pods found at start
    /// are not counted).
    pub fn observe_attached(&self, cni_file: &Path) {
        let Some(written) = std::fs::metadata(cni_file)
            .ok()
            .and_then(|m| m.modified().ok())
        else {
            return;
        };
        if written < self.shared.started {
            return;
        }
        if let Ok(d) = SystemTime::now().duration_since(written) {
            self.attach.observe(d.as_secs_f64());
        }
    }

    /// Sets the rule index used to label per-rule counters.
    pub fn set_rule_index(&self, index: Arc<RuleIndex>) {
        *self.shared.index.write().unwrap_or_else(|e| e.into_inner()) = Some(index);
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        self.ready.set(i64::from(self.is_ready()));
        let mut s = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut s, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        s
    }

    /// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` on a new thread, for the
    /// life of the process. Returns the bound address (useful with port 0).
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("veer-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(c) => {
                            if let Err(e) = me.handle(c) {
                                tracing::debug!(error = %e, "metrics connection");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "metrics accept"),
                    }
                }
            })?;
        tracing::info!(address = %local, "serving /metrics, /healthz, /readyz");
        Ok(local)
    }

    fn handle(&self, mut c: TcpStream) -> io::Result<()> {
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = c.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf);
        let mut parts = text.lines().next().unwrap_or("").split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        let (status, ctype, body) = match (method, path) {
            ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, self.encode()),
            ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", "ok\n".into()),
            ("GET" | "HEAD", "/readyz") if self.is_ready() => {
                ("200 OK", "text/plain", "ready\n".into())
            }
            ("GET" | "HEAD", "/readyz") => (
                "503 Service Unavailable",
                "text/plain",
                "not ready: maps not loaded or first reconcile round not done\n".into(),
            ),
            ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".into()),
            _ => (
                "405 Method Not Allowed",
                "text/plain",
                "method not allowed\n".into(),
            ),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes())?;
        if method != "HEAD" {
            c.write_all(body.as_bytes())?;
        }
        c.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::index::tests_support::sample_index;

    /// Parses OpenMetrics text into (name, labels, value) samples, checking every line's shape.
    fn parse(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
        let mut out = Vec::new();
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
        for line in text.lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP ")
                        || line.starts_with("# TYPE ")
                        || line.starts_with("# UNIT ")
                        || line == "# EOF",
                    "{line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let mut m = BTreeMap::new();
                    for kv in body.split("\",").filter(|s| !s.is_empty()) {
                        let (k, v) = kv.split_once("=\"").expect("label");
                        m.insert(k.to_string(), v.trim_end_matches('"').to_string());
                    }
                    (n.to_string(), m)
                }
            };
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            out.push((name, labels, value));
        }
        out
    }

    #[test]
    fn agent_metrics_encode_and_parse() {
        let m = Metrics::new(Path::new("/nonexistent/veer-metrics-test"));
        m.set_rule_index(Arc::new(sample_index()));
        m.observe_round(Duration::from_millis(3), 2);
        m.source_errors("routes", 1);
        m.source_errors("routes", 1);
        m.source_errors("cni", 0);
        let samples = parse(&m.encode());
        let get = |name: &str, label: Option<(&str, &str)>| {
            samples
                .iter()
                .find(|(n, l, _)| {
                    n == name && label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v))
                })
                .map(|s| s.2)
        };
        assert_eq!(
            get("veer_reconcile_duration_seconds_count", None),
            Some(1.0)
        );
        assert_eq!(get("veer_reconcile_rounds_total", None), Some(1.0));
        assert_eq!(
            get("veer_source_errors_total", Some(("source", "routes"))),
            Some(2.0)
        );
        assert_eq!(
            get("veer_source_errors_current", Some(("source", "routes"))),
            Some(1.0)
        );
        assert_eq!(get("veer_pods_managed", None), Some(2.0));
        assert_eq!(get("veer_ready", None), Some(0.0));
        assert_eq!(get("veer_maps_readable", None), Some(0.0), "no pins here");
        assert!(
            get(
                "veer_pod_attach_latency_seconds_bucket",
                Some(("le", "+Inf"))
            )
            .is_some()
        );
        m.set_ready();
        assert_eq!(
            parse(&m.encode())
                .iter()
                .find(|s| s.0 == "veer_ready")
                .unwrap()
                .2,
            1.0
        );
    }

    #[test]
    fn attach_latency_counts_only_files_written_after_start() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        std::fs::write(&old, "{}").unwrap();
        let f = std::fs::File::options().write(true).open(&old).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let m = Metrics::new(dir.path());
        m.observe_attached(&old);
        let newer = dir.path().join("new");
        std::fs::write(&newer, "{}").unwrap();
        m.observe_attached(&newer);
        let s = parse(&m.encode());
        let count = s
            .iter()
            .find(|x| x.0 == "veer_pod_attach_latency_seconds_count")
            .unwrap()
            .2;
        assert_eq!(count, 1.0);
    }

    #[test]
    fn http_endpoints_answer_health_readiness_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new(dir.path());
        let addr = m.serve("127.0.0.1:0".parse().unwrap()).unwrap();
        let get = |path: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut s = String::new();
            c.read_to_string(&mut s).unwrap();
            s
        };
        assert!(get("/healthz").starts_with("HTTP/1.1 200 OK"));
        assert!(get("/readyz").starts_with("HTTP/1.1 503"));
        m.set_ready();
        assert!(get("/readyz").starts_with("HTTP/1.1 200 OK"));
        let r = get("/metrics");
        assert!(r.contains(CONTENT_TYPE), "{r}");
        let body = r.split_once("\r\n\r\n").unwrap().1;
        assert!(
            parse(body)
                .iter()
                .any(|s| s.0 == "veer_ready" && s.2 == 1.0)
        );
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
    }
}
