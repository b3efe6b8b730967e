//! What a round did, in one shape for both modes, and where it goes.
//!
//! Each mode's loop ends a round by building a [`StatusFile`] (the round report: rules, pods,
//! source errors) and handing it with the compilation in force to [`Publisher::publish`], which
//! is the only writer of the agent's outputs: the rule index ([`index`]: provenance of every
//! trie entry), the status file, and the round, attach, pod and source-error metrics. So the
//! CLI, the metrics and an operator see the same things whichever mode runs. The CLI reads the
//! status file back into the same type with serde alone; [`STATUS_VERSION`] guards the format.

pub mod index;

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::{PodSandbox, compile::Compiled},
    debug::DebugState,
    metrics::Metrics,
};
use index::{RuleIndex, SlotName};

/// Version of the status file format. A reader refuses any other (it names both).
pub const STATUS_VERSION: u32 = 2;

/// Which loop wrote a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `veer run --routes …`: Route and Service files.
    Standalone,
    /// `veer run --kubernetes`: the API server's stores.
    Kubernetes,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Kubernetes => "kubernetes",
        }
    }
}

/// An interface of a pod with veer's programs: its name, ifindex in the pod's namespace and
/// node-wide slot (none when no rule names it: nothing is steered *to* it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// One pod as a round left it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReport {
    /// `namespace/name`.
    pub pod: String,
    pub uid: String,
    /// Its network namespace (absent for a pod not found in the CNI result cache).
    pub netns: Option<PathBuf>,
    /// The cookie of that namespace (`bpf_get_netns_cookie`): the key of its interface entries.
    pub netns_cookie: Option<u64>,
    /// Its ruleset (none: no Route selects it).
    pub ruleset: Option<u32>,
    /// The Routes that select it.
    pub routes: Vec<String>,
    /// Interfaces with veer's programs.
    pub interfaces: Vec<PodIface>,
    /// Interfaces named by rules that are skipped for it, and why.
    pub skipped: Vec<Skipped>,
    /// Why it could not be set up in the last round (it is retried).
    pub failure: Option<String>,
}

impl PodReport {
    /// `(namespace, name)` of [`pod`](Self::pod).
    pub fn namespace_name(&self) -> (&str, &str) {
        self.pod.split_once('/').unwrap_or(("", &self.pod))
    }

    /// Whether veer's programs run in the pod.
    pub fn is_managed(&self) -> bool {
        self.failure.is_none() && !self.interfaces.is_empty()
    }
}

/// A pod that could not be set up in the last round (retried on the next).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodFailure {
    pub namespace: String,
    pub name: String,
    pub netns: PathBuf,
    pub error: String,
}

/// The round report, and the status file's content (JSON; field names are stable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusFile {
    /// [`STATUS_VERSION`].
    pub version: u32,
    pub mode: Mode,
    /// The node (Kubernetes mode).
    pub node: Option<String>,
    pub round: u64,
    /// Whether the sources were complete this round (Kubernetes: no watch in error).
    pub ready: bool,
    pub last_round_ms: u64,
    pub slots: Vec<SlotName>,
    /// Trie entries in force.
    pub rules: usize,
    /// Routes known (applied or not).
    pub routes: Vec<String>,
    /// Routes rejected as a whole (invalid spec).
    pub invalid_routes: Vec<String>,
    /// Route or Service files rejected (their last good version stays in force).
    pub load_errors: Vec<String>,
    /// Why the rules could not be compiled or written this round (the previous stay).
    pub compile_error: Option<String>,
    pub issues: Vec<String>,
    pub conflicts: Vec<String>,
    /// Ruleset id → the Routes it combines.
    pub rulesets: BTreeMap<u32, Vec<String>>,
    pub pods: Vec<PodReport>,
    pub pod_failures: Vec<PodFailure>,
    /// CNI result files that could not be read.
    pub cni_errors: Vec<String>,
    /// Watched kind → its last error (Kubernetes mode).
    pub watch_errors: BTreeMap<String, String>,
    /// The rule index this round wrote (beside the status file).
    pub rule_index: Option<PathBuf>,
    /// The eBPF debug events in force (`veer debug`).
    pub debug_events: Option<DebugState>,
}

/// Errors of reading a status file.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a veer status file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path} has status format version {found}, this veer reads version {STATUS_VERSION}: \
         run the CLI of the agent's version (`kubectl exec` into the agent, or its image)"
    )]
    Version { path: PathBuf, found: u32 },
}

impl StatusError {
    /// Whether the file is not there (the agent has not written one, or another path).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StatusError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

impl StatusFile {
    /// An empty report of a round of `mode`.
    pub fn new(mode: Mode, round: u64) -> Self {
        Self {
            version: STATUS_VERSION,
            mode,
            node: None,
            round,
            ready: true,
            last_round_ms: 0,
            slots: Vec::new(),
            rules: 0,
            routes: Vec::new(),
            invalid_routes: Vec::new(),
            load_errors: Vec::new(),
            compile_error: None,
            issues: Vec::new(),
            conflicts: Vec::new(),
            rulesets: BTreeMap::new(),
            pods: Vec::new(),
            pod_failures: Vec::new(),
            cni_errors: Vec::new(),
            watch_errors: BTreeMap::new(),
            rule_index: None,
            debug_events: None,
        }
    }

    /// Fills what the compilation in force says: slots, entry count, issues, conflicts.
    pub fn with_applied(mut self, c: &Compiled) -> Self {
        self.slots = c
            .slots
            .iter()
            .map(|(dev, slot)| SlotName {
                dev: dev.to_string(),
                slot,
            })
            .collect();
        self.rules = c.entries.len();
        self.issues = c.issues.iter().map(ToString::to_string).collect();
        self.conflicts = c.conflicts.iter().map(ToString::to_string).collect();
        self
    }

    /// Parses a status file's text (`path` names it in errors).
    pub fn parse(path: &Path, text: &[u8]) -> Result<Self, StatusError> {
        #[derive(Deserialize)]
        struct Versioned {
            #[serde(default)]
            version: u32,
        }
        let parse = |source| StatusError::Parse {
            path: path.into(),
            source,
        };
        let v: Versioned = serde_json::from_slice(text).map_err(parse)?;
        if v.version != STATUS_VERSION {
            return Err(StatusError::Version {
                path: path.into(),
                found: v.version,
            });
        }
        serde_json::from_slice(text).map_err(parse)
    }

    /// Reads the status file and its age (from its modification time).
    pub fn load(path: &Path) -> Result<(Self, Duration), StatusError> {
        let read = |source| StatusError::Read {
            path: path.into(),
            source,
        };
        let text = std::fs::read(path).map_err(read)?;
        let age = std::fs::metadata(path)
            .map_err(read)?
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        Ok((Self::parse(path, &text)?, age))
    }

    /// Where the rule index is: the path the agent wrote in the status file (when it exists
    /// from here: the agent may have been given a relative path), else the one beside
    /// `status_file`.
    pub fn index_path(&self, status_file: &Path) -> PathBuf {
        self.rule_index
            .clone()
            .filter(|p| p.exists())
            .unwrap_or_else(|| index::path_for_status(status_file))
    }

    /// The managed pods.
    pub fn managed(&self) -> impl Iterator<Item = &PodReport> {
        self.pods.iter().filter(|p| p.is_managed())
    }
}

/// A finished round, as [`Publisher::publish`] takes it.
pub struct Round<'a> {
    /// The report (its `rule_index` and `last_round_ms` are filled in by the publisher).
    pub report: StatusFile,
    /// The compilation in force after the round (the rule index is built from it).
    pub applied: &'a Compiled,
    pub elapsed: Duration,
    /// Errors of the round by source (`routes`, `services`, `cni`, `compile`, `watch`).
    pub source_errors: Vec<(&'static str, usize)>,
    /// The CNI result files of the round (the attach latency of a newly managed pod is
    /// measured from its file's write time).
    pub sandboxes: &'a [PodSandbox],
}

/// The one writer of the agent's outputs (see the module documentation).
pub struct Publisher {
    status_file: Option<PathBuf>,
    metrics: Option<Arc<Metrics>>,
    /// The index last written (and given to the metrics).
    index: Option<Arc<RuleIndex>>,
    /// Namespaces of the pods managed after the last round.
    managed: BTreeSet<PathBuf>,
}

impl Publisher {
    pub fn new(status_file: Option<PathBuf>, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            status_file,
            metrics,
            index: None,
            managed: BTreeSet::new(),
        }
    }

    /// The metrics this publisher records into.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Records the round in the metrics and writes the rule index (when it changed or is
    /// missing) and then the status file, so a status file never names an older index.
    pub fn publish(&mut self, round: Round<'_>) {
        let Round {
            mut report,
            applied,
            elapsed,
            source_errors,
            sandboxes,
        } = round;
        report.last_round_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let fresh = RuleIndex::from_compiled(applied);
        let changed = self.index.as_deref() != Some(&fresh);
        if changed {
            self.index = Some(Arc::new(fresh));
        }
        let index = self.index.clone().expect("set above");
        let managed: BTreeSet<PathBuf> = report.managed().filter_map(|p| p.netns.clone()).collect();
        if let Some(m) = &self.metrics {
            for s in sandboxes {
                if !self.managed.contains(&s.netns) && managed.contains(&s.netns) {
                    m.observe_attached(&s.file);
                }
            }
            m.observe_round(elapsed, managed.len());
            for (source, n) in &source_errors {
                m.source_errors(source, *n);
            }
            if changed {
                m.set_rule_index(index.clone());
            }
            m.set_ready();
        }
        self.managed = managed;
        let Some(path) = &self.status_file else {
            return;
        };
        let index_path = index::path_for_status(path);
        if (changed || !index_path.exists())
            && let Err(e) = index.write_atomic(&index_path)
        {
            tracing::warn!(path = %index_path.display(), error = %e, "cannot write the rule index");
            // Not named: the CLI would read an index older than this report.
            let _ = std::fs::remove_file(&index_path);
        }
        if index_path.exists() {
            report.rule_index = Some(index_path);
        }
        if let Err(e) = write_json_atomic(path, &report) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the status file");
        }
    }
}

/// Writes `value` as JSON to `path` by a temporary file and a rename (readers never see a
/// partial file).
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatusFile {
        let mut s = StatusFile::new(Mode::Kubernetes, 7);
        s.node = Some("n1".into());
        s.pods.push(PodReport {
            pod: "default/web".into(),
            uid: "u1".into(),
            netns: Some("/var/run/netns/web".into()),
            netns_cookie: Some(4242),
            ruleset: Some(1),
            routes: vec!["demo".into()],
            interfaces: vec![PodIface {
                name: "eth1".into(),
                ifindex: Some(3),
                slot: Some(1),
            }],
            skipped: vec![Skipped {
                iface: "net1".into(),
                reason: "missing".into(),
            }],
            failure: None,
        });
        s
    }

    #[test]
    fn a_status_file_reads_back_as_written() {
        let s = sample();
        let text = serde_json::to_vec(&s).unwrap();
        let back = StatusFile::parse(Path::new("/s.json"), &text).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.pods[0].namespace_name(), ("default", "web"));
        assert_eq!(back.managed().count(), 1);
        let j: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(j["mode"], "kubernetes");
        assert_eq!(j["version"], STATUS_VERSION);
    }

    #[test]
    fn another_format_version_is_refused_naming_both() {
        let mut j = serde_json::to_value(sample()).unwrap();
        j["version"] = 1.into();
        let e = StatusFile::parse(Path::new("/run/veer/status.json"), j.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/run/veer/status.json") && e.contains("version 1") && e.contains("2"),
            "{e}"
        );
        // A file of an agent before the version field.
        let e = StatusFile::parse(Path::new("/s.json"), br#"{"mode": "standalone"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 0"), "{e}");
        let e = StatusFile::parse(Path::new("/s.json"), b"{").unwrap_err();
        assert!(matches!(e, StatusError::Parse { .. }), "{e}");
    }

    #[test]
    fn the_publisher_writes_the_index_then_a_status_naming_it() {
        let dir = std::env::temp_dir().join(format!("veer-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("status.json");
        let mut p = Publisher::new(Some(path.clone()), None);
        let applied = Compiled::default();
        p.publish(Round {
            report: sample(),
            applied: &applied,
            elapsed: Duration::from_millis(12),
            source_errors: vec![],
            sandboxes: &[],
        });
        let (s, _) = StatusFile::load(&path).unwrap();
        assert_eq!(s.last_round_ms, 12);
        let idx = s.rule_index.clone().expect("index named");
        assert_eq!(idx, dir.join("status.rules.json"));
        assert!(RuleIndex::load(&idx).is_ok());
        // Unchanged and present: not rewritten; removed: written again.
        std::fs::remove_file(&idx).unwrap();
        p.publish(Round {
            report: sample(),
            applied: &applied,
            elapsed: Duration::from_millis(1),
            source_errors: vec![],
            sandboxes: &[],
        });
        assert!(idx.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
