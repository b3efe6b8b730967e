//! `veer status`: agent health from its status file, managed pods, Routes with what was applied
//! and skipped, map occupancy and the drop/error counters.
//!
//! The status file is read in either agent mode's form (standalone and Kubernetes write
//! different fields); [`StatusFile`] keeps what both say and [`StatusPod`] normalises pods.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::debug::DebugState;

use super::{
    MapUse, counter_class,
    index::{RouteIssue, RuleIndex, SlotName},
    named_counters, or_dash, table,
};

/// Default location of the agent's status file.
pub const DEFAULT_STATUS_FILE: &str = "/run/veer/status.json";

/// An interface of a pod as the status file reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodIface {
    pub name: String,
    pub ifindex: Option<u32>,
    pub slot: Option<u16>,
}

/// An interface (or the whole pod, `iface` empty) that is not managed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub iface: String,
    pub reason: String,
}

/// A pod from the status file, in either mode's form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusPod {
    /// `namespace/name`.
    pub pod: String,
    pub uid: String,
    pub netns: Option<PathBuf>,
    pub netns_cookie: Option<u64>,
    pub ruleset: Option<u32>,
    pub interfaces: Vec<PodIface>,
    pub skipped: Vec<Skipped>,
    pub failure: Option<String>,
}

impl StatusPod {
    fn from_value(v: &Value) -> Option<Self> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let pod = match (s("pod"), s("namespace"), s("name")) {
            (Some(p), _, _) => p,
            (None, Some(ns), Some(n)) => format!("{ns}/{n}"),
            _ => return None,
        };
        let mut interfaces = Vec::new();
        // Standalone: `ifaces: [[name, ifindex, slot]]`; Kubernetes: `managed: [name]`.
        for i in v
            .get("ifaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(a) = i.as_array()
                && let Some(name) = a.first().and_then(Value::as_str)
            {
                interfaces.push(PodIface {
                    name: name.into(),
                    ifindex: a.get(1).and_then(Value::as_u64).map(|x| x as u32),
                    slot: a.get(2).and_then(Value::as_u64).map(|x| x as u16),
                });
            }
        }
        for i in v
            .get("managed")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = i.as_str() {
                interfaces.push(PodIface {
                    name: name.into(),
                    ifindex: None,
                    slot: None,
                });
            }
        }
        let mut skipped = Vec::new();
        for i in v
            .get("skipped")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (iface, reason) = match i {
                Value::Array(a) => (
                    a.first().and_then(Value::as_str),
                    a.get(1).and_then(Value::as_str),
                ),
                Value::Object(o) => (
                    o.get("iface").and_then(Value::as_str),
                    o.get("reason").and_then(Value::as_str),
                ),
                _ => (None, None),
            };
            if let Some(reason) = reason {
                skipped.push(Skipped {
                    iface: iface.unwrap_or_default().into(),
                    reason: reason.into(),
                });
            }
        }
        Some(Self {
            pod,
            uid: s("uid").unwrap_or_default(),
            netns: s("netns").map(PathBuf::from),
            netns_cookie: v.get("cookie").and_then(Value::as_u64).filter(|c| *c != 0),
            ruleset: v.get("ruleset").and_then(Value::as_u64).map(|x| x as u32),
            interfaces,
            skipped,
            failure: s("failure"),
        })
    }
}

/// A pod that could not be set up in the last round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodFailure {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub netns: PathBuf,
    #[serde(default)]
    pub error: String,
}

/// What the status file says (fields of both modes; missing ones are empty).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StatusFile {
    pub mode: String,
    pub node: Option<String>,
    pub round: u64,
    pub ready: Option<bool>,
    pub degraded: Option<bool>,
    pub last_round_ms: u64,
    pub slots: Vec<(String, u16)>,
    pub rules: usize,
    pub routes: Vec<String>,
    pub load_errors: Vec<String>,
    pub invalid_routes: Vec<String>,
    pub compile_error: Option<String>,
    pub round_error: Option<String>,
    pub issues: Vec<String>,
    pub conflicts: Vec<String>,
    #[serde(rename = "pods")]
    pub raw_pods: Vec<Value>,
    pub pod_failures: Vec<PodFailure>,
    pub cni_errors: Vec<String>,
    pub watch_errors: BTreeMap<String, String>,
    /// Path of the rule index (absent in older agents: see [`StatusFile::index_path`]).
    pub rule_index: Option<PathBuf>,
    /// The eBPF debug events in force (`veer debug`).
    pub debug_events: Option<DebugState>,
}

impl StatusFile {
    /// Parses a status file's text.
    pub fn parse(text: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(text)
    }

    /// Reads the status file and its age (from its modification time).
    pub fn load(path: &Path) -> std::io::Result<(Self, Duration)> {
        let text = std::fs::read(path)?;
        let age = std::fs::metadata(path)?
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        let s = Self::parse(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok((s, age))
    }

    /// The pods, normalised.
    pub fn pods(&self) -> Vec<StatusPod> {
        self.raw_pods
            .iter()
            .filter_map(StatusPod::from_value)
            .collect()
    }

    /// Where the rule index is: the path the agent wrote in the status file (when it exists
    /// from here: the agent may have been given a relative path), else the one beside
    /// `status_file`.
    pub fn index_path(&self, status_file: &Path) -> PathBuf {
        self.rule_index
            .clone()
            .filter(|p| p.exists())
            .unwrap_or_else(|| super::index::path_for_status(status_file))
    }

    /// Slot → interface name.
    pub fn slot_names(&self) -> Vec<SlotName> {
        self.slots
            .iter()
            .map(|(dev, slot)| SlotName {
                dev: dev.clone(),
                slot: *slot,
            })
            .collect()
    }
}

/// The agent as the status file shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentHealth {
    pub status_file: PathBuf,
    /// `running` (status written within `stale_after_s`), `down` (stale) or `unknown` (no
    /// readable status file).
    pub state: String,
    pub age_s: Option<f64>,
    pub stale_after_s: f64,
    pub mode: Option<String>,
    pub node: Option<String>,
    pub round: Option<u64>,
    pub last_round_ms: Option<u64>,
    pub ready: Option<bool>,
    pub message: String,
}

/// The health of the agent from its status file (or the error reading it).
pub fn health(
    path: &Path,
    status: Result<&(StatusFile, Duration), &std::io::Error>,
    stale_after: Duration,
) -> AgentHealth {
    match status {
        Err(e) => AgentHealth {
            status_file: path.into(),
            state: "unknown".into(),
            age_s: None,
            stale_after_s: stale_after.as_secs_f64(),
            mode: None,
            node: None,
            round: None,
            last_round_ms: None,
            ready: None,
            message: format!(
                "agent status unknown: cannot read {} ({e}); is the agent running with this \
                 --status-file?",
                path.display()
            ),
        },
        Ok((s, age)) => {
            let stale = *age > stale_after;
            let ready = s.ready.or(s.degraded.map(|d| !d));
            AgentHealth {
                status_file: path.into(),
                state: if stale { "down" } else { "running" }.into(),
                age_s: Some((age.as_secs_f64() * 10.0).round() / 10.0),
                stale_after_s: stale_after.as_secs_f64(),
                mode: Some(s.mode.clone()),
                node: s.node.clone(),
                round: Some(s.round),
                last_round_ms: Some(s.last_round_ms),
                ready,
                message: if stale {
                    format!(
                        "agent down: status not updated for {:.0}s (round {}); the datapath \
                         keeps running from the pinned maps, but nothing is reconciled",
                        age.as_secs_f64(),
                        s.round
                    )
                } else {
                    format!(
                        "agent running: round {} {:.1}s ago, took {} ms",
                        s.round,
                        age.as_secs_f64(),
                        s.last_round_ms
                    )
                },
            }
        }
    }
}

/// One Route: what it put in the tries and what it could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteSummary {
    pub name: String,
    /// Trie entries from this Route.
    pub applied: usize,
    /// Distinct rule ids (counters) of those entries.
    pub rule_ids: usize,
    /// Rules not applied (or not as written): issues and lost conflicts.
    pub skipped: usize,
    pub issues: Vec<RouteIssue>,
    /// Packets and bytes steered by its rules (when the maps are readable).
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

/// Per-Route summaries from the rule index (or, without one, the status file's Route names).
pub fn route_summaries(
    status: Option<&StatusFile>,
    index: Option<&RuleIndex>,
    rule_totals: Option<&dyn Fn(u32) -> Option<(u64, u64)>>,
) -> Vec<RouteSummary> {
    let mut names: BTreeSet<String> = status
        .map(|s| s.routes.iter().cloned().collect())
        .unwrap_or_default();
    if let Some(i) = index {
        names.extend(i.entries.iter().map(|e| e.route.clone()));
        names.extend(i.issues.iter().map(|e| e.route.clone()));
    }
    names
        .into_iter()
        .map(|name| {
            let entries: Vec<_> = index
                .map(|i| i.entries.iter().filter(|e| e.route == name).collect())
                .unwrap_or_default();
            let ids: BTreeSet<u32> = entries
                .iter()
                .map(|e| e.rule_id)
                .filter(|i| *i != 0)
                .collect();
            let issues: Vec<RouteIssue> = index
                .map(|i| {
                    i.issues
                        .iter()
                        .filter(|x| x.route == name)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let (mut packets, mut bytes) = (None, None);
            if let Some(f) = rule_totals {
                let mut p = 0;
                let mut b = 0;
                let mut any = false;
                for id in &ids {
                    if let Some((x, y)) = f(*id) {
                        p += x;
                        b += y;
                        any = true;
                    }
                }
                if any || ids.is_empty() {
                    packets = Some(p);
                    bytes = Some(b);
                }
            }
            RouteSummary {
                name,
                applied: entries.len(),
                rule_ids: ids.len(),
                skipped: issues.len(),
                issues,
                packets,
                bytes,
            }
        })
        .collect()
}

/// The whole `veer status` answer.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub agent: AgentHealth,
    pub slots: Vec<SlotName>,
    pub pods: Vec<StatusPod>,
    pub pod_failures: Vec<PodFailure>,
    pub routes: Vec<RouteSummary>,
    /// Route files rejected (their last good version stays in force) and invalid Routes.
    pub load_errors: Vec<String>,
    pub compile_error: Option<String>,
    /// Issues not attributed to a Route (from the status file when there is no rule index).
    pub issues: Vec<String>,
    pub conflicts: Vec<String>,
    pub cni_errors: Vec<String>,
    pub watch_errors: BTreeMap<String, String>,
    pub rule_index: Option<PathBuf>,
    pub rule_index_error: Option<String>,
    /// Occupancy of the maps (absent when the pinned maps cannot be opened).
    pub maps: Option<Vec<MapUse>>,
    pub maps_error: Option<String>,
    /// `drop_*` and `err_*` counters by reason, summed over CPUs.
    pub drops_and_errors: Option<BTreeMap<String, u64>>,
    /// The eBPF debug events in force, as the agent last reported them.
    pub debug_events: Option<DebugState>,
}

/// Inputs of [`build`] besides the status file.
pub struct Live<'a> {
    pub index: Result<&'a RuleIndex, String>,
    pub index_path: Option<PathBuf>,
    pub maps: Result<(Vec<MapUse>, Vec<u64>), String>,
    pub rule_totals: Option<&'a dyn Fn(u32) -> Option<(u64, u64)>>,
}

/// Assembles the report.
pub fn build(health: AgentHealth, status: Option<&StatusFile>, live: Live<'_>) -> StatusReport {
    let index = live.index.as_ref().ok().copied();
    let slots = match (index, status) {
        (Some(i), _) if !i.slots.is_empty() => i.slots.clone(),
        (_, Some(s)) => s.slot_names(),
        _ => Vec::new(),
    };
    let (maps, counters, maps_error) = match live.maps {
        Ok((m, totals)) => {
            let c: BTreeMap<String, u64> = named_counters(&totals)
                .filter(|(n, _)| matches!(counter_class(n), "drop" | "error"))
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            (Some(m), Some(c), None)
        }
        Err(e) => (None, None, Some(e)),
    };
    let mut load_errors = Vec::new();
    let mut issues = Vec::new();
    let mut conflicts = Vec::new();
    if let Some(s) = status {
        load_errors.extend(s.load_errors.iter().cloned());
        load_errors.extend(s.invalid_routes.iter().cloned());
        if index.is_none() {
            issues = s.issues.clone();
            conflicts = s.conflicts.clone();
        }
    }
    StatusReport {
        agent: health,
        slots,
        pods: status.map(StatusFile::pods).unwrap_or_default(),
        pod_failures: status.map(|s| s.pod_failures.clone()).unwrap_or_default(),
        routes: route_summaries(status, index, live.rule_totals),
        load_errors,
        compile_error: status.and_then(|s| s.compile_error.clone().or(s.round_error.clone())),
        issues,
        conflicts,
        cni_errors: status.map(|s| s.cni_errors.clone()).unwrap_or_default(),
        watch_errors: status.map(|s| s.watch_errors.clone()).unwrap_or_default(),
        rule_index: live.index_path,
        rule_index_error: live.index.err(),
        maps,
        maps_error,
        drops_and_errors: counters,
        debug_events: status.and_then(|s| s.debug_events.clone()),
    }
}

/// The table form.
pub fn render(r: &StatusReport) -> String {
    let mut o = String::new();
    let a = &r.agent;
    let _ = writeln!(o, "Agent:    {} — {}", a.state.to_uppercase(), a.message);
    if let Some(m) = &a.mode {
        let _ = write!(o, "Mode:     {m}");
        if let Some(n) = &a.node {
            let _ = write!(o, " (node {n})");
        }
        if let Some(ready) = a.ready {
            let _ = write!(o, ", ready: {ready}");
        }
        o.push('\n');
    }
    if let Some(d) = &r.debug_events {
        if d.on {
            let until = d.until_unix.map_or("until switched off".to_string(), |u| {
                format!("until {}", crate::debug::format_unix(u))
            });
            let _ = writeln!(
                o,
                "Debug:    eBPF debug events ON {until} (`veer debug off`)"
            );
        }
        if let Some(e) = &d.error {
            let _ = writeln!(o, "Debug:    request not carried out: {e}");
        }
    }
    if !r.slots.is_empty() {
        let s: Vec<String> = r
            .slots
            .iter()
            .map(|s| format!("{}={}", s.dev, s.slot))
            .collect();
        let _ = writeln!(o, "Slots:    {}", s.join(" "));
    }
    let _ = writeln!(o, "\nPods ({}):", r.pods.len());
    if !r.pods.is_empty() {
        let rows: Vec<Vec<String>> = r
            .pods
            .iter()
            .map(|p| {
                let ifs: Vec<String> = p
                    .interfaces
                    .iter()
                    .map(|i| match (i.ifindex, i.slot) {
                        (Some(x), Some(s)) => format!("{}(if{x},slot{s})", i.name),
                        _ => i.name.clone(),
                    })
                    .collect();
                let sk: Vec<String> = p
                    .skipped
                    .iter()
                    .map(|s| {
                        if s.iface.is_empty() {
                            s.reason.clone()
                        } else {
                            format!("{}: {}", s.iface, s.reason)
                        }
                    })
                    .chain(p.failure.iter().map(|f| format!("failed: {f}")))
                    .collect();
                vec![
                    p.pod.clone(),
                    or_dash(p.ruleset),
                    if ifs.is_empty() {
                        "-".into()
                    } else {
                        ifs.join(" ")
                    },
                    if sk.is_empty() {
                        "-".into()
                    } else {
                        sk.join("; ")
                    },
                ]
            })
            .collect();
        o.push_str(&table(&["POD", "RULESET", "MANAGED", "SKIPPED"], &rows));
    }
    for f in &r.pod_failures {
        let _ = writeln!(
            o,
            "  not set up: {}/{} ({}): {}",
            f.namespace,
            f.name,
            f.netns.display(),
            f.error
        );
    }
    let _ = writeln!(o, "\nRoutes ({}):", r.routes.len());
    if !r.routes.is_empty() {
        let rows: Vec<Vec<String>> = r
            .routes
            .iter()
            .map(|x| {
                vec![
                    x.name.clone(),
                    x.applied.to_string(),
                    x.skipped.to_string(),
                    or_dash(x.packets),
                    or_dash(x.bytes),
                ]
            })
            .collect();
        o.push_str(&table(
            &["ROUTE", "APPLIED", "SKIPPED", "PACKETS", "BYTES"],
            &rows,
        ));
        for x in &r.routes {
            for i in &x.issues {
                let _ = writeln!(o, "  {} [{}]: {}", x.name, i.kind, i.message);
            }
        }
    }
    for (what, list) in [
        ("load error", &r.load_errors),
        ("issue", &r.issues),
        ("conflict", &r.conflicts),
        ("CNI cache", &r.cni_errors),
    ] {
        for e in list {
            let _ = writeln!(o, "  {what}: {e}");
        }
    }
    if let Some(e) = &r.compile_error {
        let _ = writeln!(o, "  compile error (previous rules stay in force): {e}");
    }
    for (k, e) in &r.watch_errors {
        let _ = writeln!(o, "  watch {k}: {e}");
    }
    if let Some(e) = &r.rule_index_error {
        let _ = writeln!(o, "  rule index: {e}");
    }
    o.push_str("\nMaps:\n");
    match (&r.maps, &r.maps_error) {
        (Some(m), _) => {
            let rows: Vec<Vec<String>> = m
                .iter()
                .map(|u| {
                    vec![
                        u.map.to_string(),
                        u.entries.to_string(),
                        u.capacity.to_string(),
                        format!("{:.1}%", u.ratio * 100.0),
                    ]
                })
                .collect();
            o.push_str(&table(&["MAP", "ENTRIES", "CAPACITY", "USED"], &rows));
        }
        (None, Some(e)) => {
            let _ = writeln!(o, "  unavailable: {e}");
        }
        (None, None) => {}
    }
    if let Some(c) = &r.drops_and_errors {
        let nonzero: Vec<String> = c
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(
            o,
            "\nDrops/errors: {}",
            if nonzero.is_empty() {
                "none".to_string()
            } else {
                nonzero.join(" ")
            }
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{index::tests_support::sample_index, occupancy};

    const STANDALONE: &str = r#"{
      "mode": "standalone", "round": 7, "ready": true, "last_round_ms": 3,
      "slots": [["eth0", 0], ["eth1", 1]], "rules": 3, "routes": ["demo", "other"],
      "load_errors": ["bad.yaml: document 1: spec.route[0].dst: invalid"], "compile_error": null,
      "issues": ["x"], "conflicts": [],
      "pods": [{"namespace": "default", "name": "web", "uid": "u1",
                "netns": "/var/run/netns/web", "cookie": 4242, "ruleset": 1,
                "ifaces": [["eth0", 2, 0], ["eth1", 3, 1]],
                "skipped": [{"iface": "net1", "reason": "the pod has no interface net1"}]}],
      "pod_failures": [], "cni_errors": [], "rule_index": "/run/veer/status.rules.json"
    }"#;

    const K8S: &str = r#"{
      "mode": "kubernetes", "node": "n1", "round": 2, "degraded": false, "last_round_ms": 9,
      "slots": [["eth1", 1]], "rules": 1, "routes": ["demo"], "invalid_routes": ["bad: x"],
      "rulesets": {"1": ["demo"]}, "round_error": null, "issues": [], "conflicts": [],
      "pods": [{"pod": "default/web", "uid": "u1", "ruleset": 1, "routes": ["demo"],
                "managed": ["eth1"], "skipped": [["net1", "missing"]], "failure": null}],
      "watch_errors": {}, "cni_errors": []
    }"#;

    #[test]
    fn both_status_file_forms_are_normalised() {
        let s = StatusFile::parse(STANDALONE.as_bytes()).unwrap();
        let p = &s.pods()[0];
        assert_eq!(p.pod, "default/web");
        assert_eq!(p.netns_cookie, Some(4242));
        assert_eq!(
            p.interfaces[1],
            PodIface {
                name: "eth1".into(),
                ifindex: Some(3),
                slot: Some(1)
            }
        );
        assert_eq!(p.skipped[0].iface, "net1");
        assert_eq!(
            s.rule_index,
            Some(PathBuf::from("/run/veer/status.rules.json"))
        );
        assert_eq!(
            s.index_path(Path::new("/x/status.json")),
            PathBuf::from("/x/status.rules.json"),
            "the recorded path does not exist here"
        );
        let k = StatusFile::parse(K8S.as_bytes()).unwrap();
        let p = &k.pods()[0];
        assert_eq!((p.pod.as_str(), p.ruleset), ("default/web", Some(1)));
        assert_eq!(p.interfaces[0].name, "eth1");
        assert_eq!(p.skipped[0].reason, "missing");
        assert_eq!(
            k.index_path(Path::new("/x/status.json")),
            PathBuf::from("/x/status.rules.json")
        );
    }

    #[test]
    fn stale_status_means_agent_down() {
        let s = StatusFile::parse(STANDALONE.as_bytes()).unwrap();
        let p = Path::new("/run/veer/status.json");
        let fresh = (s.clone(), Duration::from_secs(2));
        let h = health(p, Ok(&fresh), Duration::from_secs(60));
        assert_eq!((h.state.as_str(), h.round), ("running", Some(7)));
        let old = (s, Duration::from_secs(600));
        let h = health(p, Ok(&old), Duration::from_secs(60));
        assert_eq!(h.state, "down");
        assert!(h.message.starts_with("agent down"), "{}", h.message);
        let e = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(health(p, Err(&e), Duration::from_secs(60)).state, "unknown");
    }

    #[test]
    fn report_json_has_stable_fields_and_route_summaries() {
        let s = StatusFile::parse(STANDALONE.as_bytes()).unwrap();
        let idx = sample_index();
        let st = (s.clone(), Duration::from_secs(1));
        let h = health(Path::new("/s.json"), Ok(&st), Duration::from_secs(60));
        let totals = |id: u32| Some((u64::from(id) * 10, u64::from(id) * 1000));
        let mut stats = vec![0u64; 32];
        stats[veer_common::stats::DROP_TOO_BIG as usize] = 5;
        let r = build(
            h,
            Some(&s),
            Live {
                index: Ok(&idx),
                index_path: Some("/s.rules.json".into()),
                maps: Ok((occupancy(3, 1, 2, 0, 2), stats)),
                rule_totals: Some(&totals),
            },
        );
        let demo = r.routes.iter().find(|x| x.name == "demo").unwrap();
        assert_eq!((demo.applied, demo.skipped), (3, 1));
        let other = r.routes.iter().find(|x| x.name == "other").unwrap();
        assert_eq!((other.applied, other.skipped), (0, 1));
        assert_eq!(other.issues[0].kind, "conflict_lost");
        assert_eq!(r.drops_and_errors.as_ref().unwrap()["drop_too_big"], 5);
        let j = serde_json::to_value(&r).unwrap();
        for k in [
            "agent",
            "slots",
            "pods",
            "pod_failures",
            "routes",
            "load_errors",
            "compile_error",
            "maps",
            "drops_and_errors",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert_eq!(j["agent"]["state"], "running");
        assert_eq!(j["pods"][0]["interfaces"][1]["ifindex"], 3);
        assert_eq!(j["maps"][0]["map"], "VEER_RULES4_V1");
        assert_eq!(j["routes"][0]["name"], "demo");
        let text = render(&r);
        assert!(text.contains("RUNNING"), "{text}");
        assert!(text.contains("default/web"), "{text}");
        assert!(text.contains("drop_too_big=5"), "{text}");
        assert!(text.contains("[conflict_lost]"), "{text}");
    }
}
