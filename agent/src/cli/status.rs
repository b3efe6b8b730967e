//! `veer status`: agent health from its status file, managed pods, Routes with what was applied
//! and skipped, map occupancy and the drop/error counters.
//!
//! The status file is the agent's round report ([`crate::report::StatusFile`]), the same in
//! both modes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use crate::{
    debug::DebugState,
    maps::{MapUse, counter_class, named_counters},
    report::{
        PodFailure, PodReport, StatusError, StatusFile,
        index::{RouteIssue, RuleIndex, SlotName},
    },
};

use super::{or_dash, table};

/// Default location of the agent's status file.
pub const DEFAULT_STATUS_FILE: &str = "/run/veer/status.json";

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
    status: Result<&(StatusFile, Duration), &StatusError>,
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
            let ready = Some(s.ready);
            AgentHealth {
                status_file: path.into(),
                state: if stale { "down" } else { "running" }.into(),
                age_s: Some((age.as_secs_f64() * 10.0).round() / 10.0),
                stale_after_s: stale_after.as_secs_f64(),
                mode: Some(s.mode.as_str().into()),
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
    pub pods: Vec<PodReport>,
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
        (_, Some(s)) => s.slots.clone(),
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
        pods: status.map(|s| s.pods.clone()).unwrap_or_default(),
        pod_failures: status.map(|s| s.pod_failures.clone()).unwrap_or_default(),
        routes: route_summaries(status, index, live.rule_totals),
        load_errors,
        compile_error: status.and_then(|s| s.compile_error.clone()),
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
    use crate::report::{Mode, PodIface, Skipped};
    use crate::{maps::occupancy, report::index::tests_support::sample_index};

    /// A standalone agent's status: one pod with two interfaces, one skipped.
    fn standalone() -> StatusFile {
        let mut s = StatusFile::new(Mode::Standalone, 7);
        s.last_round_ms = 3;
        s.slots = vec![
            SlotName {
                dev: "eth0".into(),
                slot: 0,
            },
            SlotName {
                dev: "eth1".into(),
                slot: 1,
            },
        ];
        s.rules = 3;
        s.routes = vec!["demo".into(), "other".into()];
        s.load_errors = vec!["bad.yaml: document 1: spec.route[0].dst: invalid".into()];
        s.issues = vec!["x".into()];
        let iface = |name: &str, ifindex, slot| PodIface {
            name: name.into(),
            ifindex: Some(ifindex),
            slot: Some(slot),
        };
        s.pods = vec![PodReport {
            pod: "default/web".into(),
            uid: "u1".into(),
            netns: Some("/var/run/netns/web".into()),
            netns_cookie: Some(4242),
            ruleset: Some(1),
            routes: vec!["demo".into(), "other".into()],
            interfaces: vec![iface("eth0", 2, 0), iface("eth1", 3, 1)],
            skipped: vec![Skipped {
                iface: "net1".into(),
                reason: "the pod has no interface net1".into(),
            }],
            failure: None,
        }];
        s.rule_index = Some("/run/veer/status.rules.json".into());
        s
    }

    #[test]
    fn the_index_path_is_the_recorded_one_when_it_exists_else_the_one_beside_the_file() {
        let s = standalone();
        assert_eq!(
            s.index_path(Path::new("/x/status.json")),
            PathBuf::from("/x/status.rules.json"),
            "the recorded path does not exist here"
        );
    }

    #[test]
    fn stale_status_means_agent_down() {
        let s = standalone();
        let p = Path::new("/run/veer/status.json");
        let fresh = (s.clone(), Duration::from_secs(2));
        let h = health(p, Ok(&fresh), Duration::from_secs(60));
        assert_eq!((h.state.as_str(), h.round), ("running", Some(7)));
        let old = (s, Duration::from_secs(600));
        let h = health(p, Ok(&old), Duration::from_secs(60));
        assert_eq!(h.state, "down");
        assert!(h.message.starts_with("agent down"), "{}", h.message);
        let e = StatusFile::load(Path::new("/nonexistent/status.json")).unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(health(p, Err(&e), Duration::from_secs(60)).state, "unknown");
    }

    #[test]
    fn report_json_has_stable_fields_and_route_summaries() {
        let s = standalone();
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
