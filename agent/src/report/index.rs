//! The rule index: where every trie entry comes from.
//!
//! The tries hold only `{ruleset, prefix} → {rule id, slot, via}`. The agent writes, next to its
//! status file (`status.json` → `status.rules.json`), the applied compilation's provenance of
//! each entry — Route, the rule's field path, the Service, the interface name, the next hop —
//! plus the problems found per Route. The CLI joins it with the live maps (`veer maps`,
//! `veer flows`), rebuilds the reference model from it (`veer trace`), and the metrics use it
//! to label per-rule counters.
//!
//! JSON (field names are stable):
//! ```json
//! { "version": 1,
//!   "slots": [ { "dev": "eth0", "slot": 0 }, { "dev": "eth1", "slot": 1 } ],
//!   "entries": [ { "ruleset": 1, "prefix": "10.86.0.0/16", "rule_id": 3, "route": "demo",
//!                  "path": "spec.route[0]", "service": null, "dev": "eth1", "slot": 1,
//!                  "via": "10.124.0.1" } ],
//!   "issues": [ { "route": "demo", "path": "spec.svc[0]", "kind": "unresolved",
//!                 "message": "Route \"demo\" spec.svc[0] (Service default/gone): …" } ] }
//! ```

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use veer_common::{RULE_F_VIA, RuleValue};

use crate::{
    config::compile::{Compiled, Issue},
    lpm::RefRules,
};

/// Version of the index format.
pub const INDEX_VERSION: u32 = 1;

/// Where the index of the agent writing `status_file` lives: `status.json` → `status.rules.json`.
pub fn path_for_status(status_file: &Path) -> PathBuf {
    status_file.with_extension("rules.json")
}

/// An interface name and its node-wide slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotName {
    pub dev: String,
    pub slot: u16,
}

/// The provenance of one trie entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub ruleset: u32,
    /// Destination prefix (host bits zero), e.g. `10.86.0.0/16`.
    #[serde(with = "net_str")]
    pub prefix: IpNet,
    /// Counter slot in `VEER_RSTATS_V1` (0 = no counters).
    pub rule_id: u32,
    /// Route name.
    pub route: String,
    /// Where the rule is written in the Route (`spec.route[0]`, `spec.svc[1]`, …).
    pub path: String,
    /// `namespace/name` of the Service, for Service rules.
    pub service: Option<String>,
    /// Target interface name.
    pub dev: String,
    /// Target interface slot.
    pub slot: u16,
    /// Explicit next hop.
    pub via: Option<IpAddr>,
}

impl IndexEntry {
    /// The trie value this entry stands for.
    pub fn value(&self) -> RuleValue {
        let mut v = RuleValue {
            rule_id: self.rule_id,
            slot: self.slot,
            ..Default::default()
        };
        if let Some(via) = self.via {
            v.flags = RULE_F_VIA;
            v.via = crate::maps::to_addr16(via).1;
        }
        v
    }
}

/// A problem found for a Route while compiling (the rule is not applied, or not as written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteIssue {
    pub route: String,
    /// The rule's field path, when the problem is about one rule.
    pub path: Option<String>,
    /// `unresolved`, `via_family`, `duplicate_route`, `selection_unsupported`,
    /// `unknown_route`, `out_of_rule_ids`, `conflict_lost` or `other`.
    pub kind: String,
    pub message: String,
}

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleIndex {
    pub version: u32,
    pub slots: Vec<SlotName>,
    pub entries: Vec<IndexEntry>,
    #[serde(default)]
    pub issues: Vec<RouteIssue>,
}

impl Default for RuleIndex {
    fn default() -> Self {
        Self {
            version: INDEX_VERSION,
            slots: Vec::new(),
            entries: Vec::new(),
            issues: Vec::new(),
        }
    }
}

fn issue(i: &Issue) -> RouteIssue {
    let (route, path, kind) = match i {
        Issue::Unresolved { from, .. } => (&from.route, Some(&from.path), "unresolved"),
        Issue::ViaFamily { from, .. } => (&from.route, Some(&from.path), "via_family"),
        Issue::DuplicateRoute { name, .. } => (name, None, "duplicate_route"),
        Issue::SelectionUnsupported { route } => (route, None, "selection_unsupported"),
        Issue::UnknownRoute { route, .. } => (route, None, "unknown_route"),
        Issue::OutOfRuleIds { from } => (&from.route, Some(&from.path), "out_of_rule_ids"),
    };
    RouteIssue {
        route: route.clone(),
        path: path.cloned(),
        kind: kind.into(),
        message: i.to_string(),
    }
}

impl RuleIndex {
    /// The index of an applied compilation.
    pub fn from_compiled(c: &Compiled) -> Self {
        let by_slot = c.slots.by_slot();
        let dev = |slot: u16| {
            by_slot
                .get(usize::from(slot))
                .copied()
                .flatten()
                .map_or_else(|| format!("slot{slot}"), str::to_string)
        };
        let entries = c
            .entries
            .values()
            .map(|e| IndexEntry {
                ruleset: e.ruleset,
                prefix: e.dst,
                rule_id: e.value.rule_id,
                route: e.from.route.clone(),
                path: e.from.path.clone(),
                service: e.from.service.as_ref().map(ToString::to_string),
                dev: dev(e.value.slot),
                slot: e.value.slot,
                via: via_of(&e.value, e.dst),
            })
            .collect();
        let mut issues: Vec<RouteIssue> = c.issues.iter().map(issue).collect();
        for conflict in &c.conflicts {
            for l in &conflict.losers {
                issues.push(RouteIssue {
                    route: l.route.clone(),
                    path: Some(l.path.clone()),
                    kind: "conflict_lost".into(),
                    message: conflict.to_string(),
                });
            }
        }
        Self {
            version: INDEX_VERSION,
            slots: c
                .slots
                .iter()
                .map(|(d, s)| SlotName {
                    dev: d.into(),
                    slot: s,
                })
                .collect(),
            entries,
            issues,
        }
    }

    /// The reference model of the lookup (what `lpm_property` checks the kernel against).
    pub fn model(&self) -> RefRules {
        let mut m = RefRules::new();
        for e in &self.entries {
            m.insert(e.ruleset, e.prefix, e.value());
        }
        m
    }

    /// Entries by (ruleset, prefix).
    pub fn by_prefix(&self) -> HashMap<(u32, IpNet), &IndexEntry> {
        self.entries
            .iter()
            .map(|e| ((e.ruleset, e.prefix), e))
            .collect()
    }

    /// The first entry of each rule id (all entries of one Service rule share an id).
    pub fn by_rule_id(&self) -> HashMap<u32, &IndexEntry> {
        let mut m = HashMap::new();
        for e in &self.entries {
            if e.rule_id != 0 {
                m.entry(e.rule_id).or_insert(e);
            }
        }
        m
    }

    /// Interface name of `slot`.
    pub fn dev(&self, slot: u16) -> Option<&str> {
        self.slots
            .iter()
            .find(|s| s.slot == slot)
            .map(|s| s.dev.as_str())
    }

    /// Reads an index file.
    pub fn load(path: &Path) -> io::Result<Self> {
        let b = std::fs::read(path)?;
        serde_json::from_slice(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Writes the index to `path` atomically (temporary file, then rename).
    pub fn write_atomic(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    }
}

/// The explicit next hop of a rule value, when it has one.
pub fn via_of(v: &RuleValue, dst: IpNet) -> Option<IpAddr> {
    if v.flags & RULE_F_VIA == 0 {
        return None;
    }
    Some(match dst {
        IpNet::V4(_) => IpAddr::from(<[u8; 4]>::try_from(&v.via[..4]).expect("4 bytes")),
        IpNet::V6(_) => IpAddr::from(v.via),
    })
}

mod net_str {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(n: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// Fixtures shared by the CLI tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use std::path::Path;

    use super::*;
    use crate::config::{ServiceIndex, compile_all_pods, load_str};

    pub(crate) fn sample() -> Compiled {
        let text = r#"
apiVersion: k8s.ovn.org/v1
kind: Route
metadata: {name: demo}
spec:
  route:
  - {dst: 10.86.0.0/16, dev: eth1, via: 10.124.0.1}
  - {dst: "fd00:86::/64", dev: eth1}
  - {dst: 0.0.0.0/0, dev: eth0}
  svc:
  - {namespace: default, name: gone, dev: eth1}
---
apiVersion: k8s.ovn.org/v1
kind: Route
metadata: {name: other}
spec:
  route:
  - {dst: 10.86.0.0/16, dev: eth0}
"#;
        let f = load_str(Path::new("r.yaml"), text).unwrap();
        compile_all_pods(&f.routes, &ServiceIndex::new(), &Compiled::default()).unwrap()
    }

    /// [`sample`]'s index.
    pub(crate) fn sample_index() -> RuleIndex {
        RuleIndex::from_compiled(&sample())
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::sample;
    use super::*;

    #[test]
    fn index_keeps_provenance_issues_and_round_trips_with_stable_names() {
        let idx = RuleIndex::from_compiled(&sample());
        assert_eq!(idx.entries.len(), 3);
        let e = idx.by_prefix()[&(1, "10.86.0.0/16".parse().unwrap())];
        assert_eq!(
            (e.route.as_str(), e.path.as_str(), e.dev.as_str()),
            ("demo", "spec.route[0]", "eth1")
        );
        assert_eq!(e.via, Some("10.124.0.1".parse().unwrap()));
        assert_eq!(idx.dev(e.slot), Some("eth1"));
        let kinds: Vec<(&str, &str)> = idx
            .issues
            .iter()
            .map(|i| (i.route.as_str(), i.kind.as_str()))
            .collect();
        assert_eq!(kinds, [("demo", "unresolved"), ("other", "conflict_lost")]);
        let json = serde_json::to_value(&idx).unwrap();
        let first = &json["entries"][0];
        for k in [
            "ruleset", "prefix", "rule_id", "route", "path", "service", "dev", "slot", "via",
        ] {
            assert!(first.get(k).is_some(), "field {k} in {first}");
        }
        assert_eq!(json["version"], 1);
        let back: RuleIndex = serde_json::from_value(json).unwrap();
        assert_eq!(back, idx);
    }

    #[test]
    fn model_matches_compiled_values_and_atomic_write_round_trips() {
        let c = sample();
        let idx = RuleIndex::from_compiled(&c);
        let m = idx.model();
        for e in c.entries.values() {
            let hit = m.lookup(e.ruleset, e.dst.addr()).unwrap();
            assert_eq!(hit.value, e.value, "{}", e.dst);
        }
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status.json");
        let p = path_for_status(&status);
        assert_eq!(p, dir.path().join("status.rules.json"));
        idx.write_atomic(&p).unwrap();
        assert_eq!(RuleIndex::load(&p).unwrap(), idx);
        assert!(!p.with_extension("json.tmp").exists());
    }
}
