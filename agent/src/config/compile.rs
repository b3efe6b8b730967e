//! The rule compiler: loaded Routes + Service addresses → the desired rule-trie entries.
//!
//! # Rulesets
//! A ruleset is a distinct set of applicable Routes; every managed pod interface names one
//! (`IfaceInfo::ruleset`), and trie keys carry it. For now there is one, [`ALL_PODS_RULESET`]
//! (built by [`Ruleset::all_pods`]), holding every Route without pod selection; Routes that
//! select pods are reported ([`Issue::SelectionUnsupported`]) and not applied rather than
//! applied to every pod. [`compile`] already takes any list of rulesets, so per-pod selection
//! only has to group pods by their set of matching Routes.
//!
//! # Slots
//! Every `dev` name used by an applied Route gets a node-wide slot `0..MAX_SLOTS`. Slots are
//! **sticky**: a name keeps the slot it had in the previous compilation as long as some Route
//! uses it (so adding `net1` never renumbers `eth1`, and pods' slot tables stay valid). New
//! names are taken in name order and get the lowest slot that the previous table did not use
//! (a slot freed just now is reused last, so a stale reference to it is unlikely to point at
//! the wrong interface). From scratch this gives sorted order: `eth0` → 0, `eth1` → 1. More
//! than [`MAX_SLOTS`] names is a [`CompileError`].
//!
//! # Entries and conflicts
//! A CIDR rule gives one entry; a Service rule one `/32` or `/128` entry per address. Only
//! equal prefixes in one ruleset conflict (different, overlapping prefixes are what the
//! longest-prefix match is for). Among the candidates for one prefix the winner is, in order:
//! 1. the Route with the higher `spec.priority`;
//! 2. the Route whose name sorts first (byte-wise);
//! 3. within one Route, the earlier rule (`route[]` before `svc[]`, then index; for a Service,
//!    its first address).
//!
//! Every prefix with more than one candidate is reported as a [`Conflict`] (with whether they
//! agree on the target). Routes of the same name from two files: the first by (file, document)
//! is used, the other reported ([`Issue::DuplicateRoute`]).
//!
//! # Rule ids
//! Counters are kept per rule id. A rule's identity is (Route name, target), where the target
//! is the CIDR or the Service: all addresses of one Service rule share its id, and the id
//! survives changes of `dev`/`via`, of the Service's addresses, and of the rule's position.
//! An identity present in the previous compilation keeps its id; new identities, in identity
//! order, take the lowest id in `1..RULE_STATS_MAX` that the previous compilation did not use,
//! then any free one; when none is left the entry gets id 0 (no counters) and an
//! [`Issue::OutOfRuleIds`]. The output is a function of the set of Routes, the Service
//! addresses and the previous compilation — not of the order Routes are given in.
//!
//! [`diff`] gives the map writes between two compilations: O(changed entries) writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use veer_common::{MAX_SLOTS, RULE_F_VIA, RuleValue, maps::RULE_STATS_MAX};

use super::load::{LoadedRoute, Origin};
use super::route::{Family, NamespacedName, Target};
use super::services::{ServiceLookup, Unresolved};

/// The ruleset of "all pods".
pub const ALL_PODS_RULESET: u32 = 1;

/// A ruleset: an id and the names of the Routes that apply to its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub id: u32,
    pub routes: BTreeSet<String>,
}

impl Ruleset {
    /// [`ALL_PODS_RULESET`] with every Route that has no pod selection; the others are
    /// returned as [`Issue::SelectionUnsupported`]. Of Routes sharing a name, the one
    /// [`compile`] uses (first by origin) decides.
    pub fn all_pods<'a>(routes: impl IntoIterator<Item = &'a LoadedRoute>) -> (Self, Vec<Issue>) {
        let mut first: BTreeMap<&str, &LoadedRoute> = BTreeMap::new();
        for r in routes {
            let e = first.entry(&r.name).or_insert(r);
            if r.origin < e.origin {
                *e = r;
            }
        }
        let mut set = BTreeSet::new();
        let mut issues = BTreeSet::new();
        for r in first.into_values() {
            if r.spec.has_selection() {
                issues.insert(r.name.clone());
            } else {
                set.insert(r.name.clone());
            }
        }
        (
            Ruleset {
                id: ALL_PODS_RULESET,
                routes: set,
            },
            issues
                .into_iter()
                .map(|route| Issue::SelectionUnsupported { route })
                .collect(),
        )
    }
}

/// Node-wide interface name → slot table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotTable {
    by_name: BTreeMap<String, u16>,
}

impl SlotTable {
    /// A table from known assignments (e.g. read back from the maps after a restart).
    pub fn from_assignments(
        pairs: impl IntoIterator<Item = (String, u16)>,
    ) -> Result<Self, CompileError> {
        let mut by_name = BTreeMap::new();
        let mut used = BTreeSet::new();
        for (name, slot) in pairs {
            if usize::from(slot) >= MAX_SLOTS || !used.insert(slot) {
                return Err(CompileError::BadSlot { name, slot });
            }
            by_name.insert(name, slot);
        }
        Ok(Self { by_name })
    }

    /// The slot of interface `dev`.
    pub fn get(&self, dev: &str) -> Option<u16> {
        self.by_name.get(dev).copied()
    }

    /// (name, slot) in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u16)> {
        self.by_name.iter().map(|(n, s)| (n.as_str(), *s))
    }

    /// Slot → name.
    pub fn by_slot(&self) -> [Option<&str>; MAX_SLOTS] {
        let mut out = [None; MAX_SLOTS];
        for (n, s) in self.iter() {
            out[usize::from(s)] = Some(n);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Sticky allocation (see the module docs).
    fn allocate(prev: &SlotTable, names: &BTreeSet<String>) -> Result<Self, CompileError> {
        if names.len() > MAX_SLOTS {
            return Err(CompileError::TooManyInterfaces {
                names: names.iter().cloned().collect(),
            });
        }
        let mut by_name = BTreeMap::new();
        let mut taken = [false; MAX_SLOTS];
        for n in names {
            if let Some(s) = prev.get(n) {
                by_name.insert(n.clone(), s);
                taken[usize::from(s)] = true;
            }
        }
        let prev_used: BTreeSet<u16> = prev.by_name.values().copied().collect();
        let order = (0..MAX_SLOTS as u16)
            .filter(|s| !prev_used.contains(s))
            .chain(prev_used.iter().copied());
        let mut free = order.filter(|s| !taken[usize::from(*s)]);
        let new: Vec<&String> = names.iter().filter(|n| !by_name.contains_key(*n)).collect();
        for n in new {
            let s = free.next().expect("names.len() <= MAX_SLOTS");
            by_name.insert(n.clone(), s);
        }
        Ok(Self { by_name })
    }
}

/// Where an entry comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Provenance {
    /// Route name.
    pub route: String,
    /// Where the rule is written in the Route (`spec.svc[0]`, or `document 1 [3]`).
    pub path: String,
    /// The Service, for Service rules.
    pub service: Option<NamespacedName>,
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Route {:?} {}", self.route, self.path)?;
        if let Some(s) = &self.service {
            write!(f, " (Service {s})")?;
        }
        Ok(())
    }
}

/// A rule's identity for counters: Route name and target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleIdentity {
    pub route: String,
    pub target: Target,
}

/// One desired trie entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ruleset: u32,
    /// Destination prefix (host bits zero).
    pub dst: IpNet,
    pub value: RuleValue,
    pub from: Provenance,
}

/// Several candidates for one prefix in one ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub ruleset: u32,
    pub dst: IpNet,
    pub winner: Provenance,
    pub losers: Vec<Provenance>,
    /// Whether every loser names the same interface and next hop as the winner.
    pub agree: bool,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ruleset {} {}: {} wins over ",
            self.ruleset, self.dst, self.winner
        )?;
        for (i, l) in self.losers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{l}")?;
        }
        if !self.agree {
            f.write_str(" (different targets)")?;
        }
        Ok(())
    }
}

/// A non-fatal problem found while compiling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Issue {
    #[error("{from}: {reason}")]
    Unresolved {
        from: Provenance,
        reason: Unresolved,
    },
    #[error("{from}: address {ip} skipped: via {via} is {}", Family::of(via))]
    ViaFamily {
        from: Provenance,
        ip: IpAddr,
        via: IpAddr,
    },
    #[error("Route {name:?} from {ignored} ignored: already defined in {kept}")]
    DuplicateRoute {
        name: String,
        kept: Origin,
        ignored: Origin,
    },
    #[error(
        "Route {route:?} selects pods (podSelector, namespaces, pods, workloads or exclude), \
         which this agent does not support yet; not applied"
    )]
    SelectionUnsupported { route: String },
    #[error("ruleset {ruleset} names Route {route:?}, which does not exist")]
    UnknownRoute { ruleset: u32, route: String },
    #[error("{from}: all rule ids are in use; this rule has no counters")]
    OutOfRuleIds { from: Provenance },
}

/// Why nothing could be compiled (the previous state should stay).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error(
        "Routes name {} interfaces ({}), at most {MAX_SLOTS} are supported",
        names.len(),
        names.join(", ")
    )]
    TooManyInterfaces { names: Vec<String> },
    #[error("slot {slot} of interface {name:?} is out of range or used twice")]
    BadSlot { name: String, slot: u16 },
}

/// The result of a compilation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub slots: SlotTable,
    /// Desired entries by (ruleset, prefix).
    pub entries: BTreeMap<(u32, IpNet), Entry>,
    /// Ids of the rules that have entries.
    pub rule_ids: BTreeMap<RuleIdentity, u32>,
    pub conflicts: Vec<Conflict>,
    pub issues: Vec<Issue>,
}

/// One candidate entry of a Route.
struct Candidate {
    dst: IpNet,
    slot: u16,
    via: Option<IpAddr>,
    identity: RuleIdentity,
    from: Provenance,
}

/// Compiles with the single [`ALL_PODS_RULESET`] (see [`Ruleset::all_pods`]).
pub fn compile_all_pods<'a>(
    routes: impl IntoIterator<Item = &'a LoadedRoute>,
    services: &dyn ServiceLookup,
    prev: &Compiled,
) -> Result<Compiled, CompileError> {
    let routes: Vec<&LoadedRoute> = routes.into_iter().collect();
    let (ruleset, issues) = Ruleset::all_pods(routes.iter().copied());
    let mut c = compile(routes, &[ruleset], services, prev)?;
    c.issues.splice(0..0, issues);
    Ok(c)
}

/// Compiles `routes` for `rulesets` (see the module docs for every rule it follows). `prev` is
/// the previous result (`Compiled::default()` the first time), for sticky slots and rule ids.
pub fn compile<'a>(
    routes: impl IntoIterator<Item = &'a LoadedRoute>,
    rulesets: &[Ruleset],
    services: &dyn ServiceLookup,
    prev: &Compiled,
) -> Result<Compiled, CompileError> {
    let mut issues = Vec::new();

    // Routes by name; the first by origin wins a duplicate name.
    let mut all: Vec<&LoadedRoute> = routes.into_iter().collect();
    all.sort_by(|a, b| (&a.name, &a.origin).cmp(&(&b.name, &b.origin)));
    let mut by_name: BTreeMap<&str, &LoadedRoute> = BTreeMap::new();
    for r in all {
        if let Some(kept) = by_name.get(r.name.as_str()) {
            issues.push(Issue::DuplicateRoute {
                name: r.name.clone(),
                kept: kept.origin.clone(),
                ignored: r.origin.clone(),
            });
        } else {
            by_name.insert(&r.name, r);
        }
    }

    let mut rulesets: Vec<&Ruleset> = rulesets.iter().collect();
    rulesets.sort_by_key(|r| r.id);
    let mut applied: BTreeMap<&str, &LoadedRoute> = BTreeMap::new();
    for rs in &rulesets {
        for name in &rs.routes {
            match by_name.get(name.as_str()) {
                Some(r) => {
                    applied.insert(&r.name, r);
                }
                None => issues.push(Issue::UnknownRoute {
                    ruleset: rs.id,
                    route: name.clone(),
                }),
            }
        }
    }

    let devs: BTreeSet<String> = applied
        .values()
        .flat_map(|r| r.rules.iter().map(|x| x.dev.clone()))
        .collect();
    let slots = SlotTable::allocate(&prev.slots, &devs)?;

    // Candidates of each applied Route, in rule order; Services resolved once.
    let mut resolved: BTreeMap<&NamespacedName, Result<Vec<IpAddr>, Unresolved>> = BTreeMap::new();
    let mut candidates: BTreeMap<&str, Vec<Candidate>> = BTreeMap::new();
    for (name, r) in &applied {
        let mut out = Vec::new();
        for rule in &r.rules {
            let slot = slots.get(&rule.dev).expect("every applied dev has a slot");
            let identity = RuleIdentity {
                route: r.name.clone(),
                target: rule.target.clone(),
            };
            let mut from = Provenance {
                route: r.name.clone(),
                path: rule.path.clone(),
                service: None,
            };
            match &rule.target {
                Target::Cidr(net) => out.push(Candidate {
                    dst: *net,
                    slot,
                    via: rule.via,
                    identity,
                    from,
                }),
                Target::Service(svc) => {
                    from.service = Some(svc.clone());
                    let ips = resolved
                        .entry(svc)
                        .or_insert_with(|| services.resolve(&svc.namespace, &svc.name));
                    match ips {
                        Err(reason) => issues.push(Issue::Unresolved {
                            from,
                            reason: reason.clone(),
                        }),
                        Ok(ips) => {
                            for ip in ips.iter() {
                                if let Some(via) = rule.via
                                    && Family::of(&via) != Family::of(ip)
                                {
                                    issues.push(Issue::ViaFamily {
                                        from: from.clone(),
                                        ip: *ip,
                                        via,
                                    });
                                    continue;
                                }
                                out.push(Candidate {
                                    dst: IpNet::from(*ip),
                                    slot,
                                    via: rule.via,
                                    identity: identity.clone(),
                                    from: from.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
        candidates.insert(name, out);
    }

    // Winners per ruleset.
    let mut winners: BTreeMap<(u32, IpNet), &Candidate> = BTreeMap::new();
    let mut conflicts: BTreeMap<(u32, IpNet), Conflict> = BTreeMap::new();
    for rs in &rulesets {
        let mut members: Vec<&LoadedRoute> = rs
            .routes
            .iter()
            .filter_map(|n| applied.get(n.as_str()).copied())
            .collect();
        members.sort_by(|a, b| {
            b.spec
                .priority
                .cmp(&a.spec.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        for r in members {
            for c in &candidates[r.name.as_str()] {
                let key = (rs.id, c.dst);
                match winners.get(&key) {
                    None => {
                        winners.insert(key, c);
                    }
                    Some(w) => {
                        let conflict = conflicts.entry(key).or_insert_with(|| Conflict {
                            ruleset: rs.id,
                            dst: c.dst,
                            winner: w.from.clone(),
                            losers: vec![],
                            agree: true,
                        });
                        conflict.losers.push(c.from.clone());
                        conflict.agree &= (w.slot, w.via) == (c.slot, c.via);
                    }
                }
            }
        }
    }

    // Rule ids.
    let identities: BTreeSet<&RuleIdentity> = winners.values().map(|c| &c.identity).collect();
    let mut rule_ids = BTreeMap::new();
    let mut used = vec![false; RULE_STATS_MAX as usize];
    used[0] = true;
    for id in &identities {
        if let Some(&n) = prev.rule_ids.get(*id)
            && n > 0
            && n < RULE_STATS_MAX
            && !used[n as usize]
        {
            used[n as usize] = true;
            rule_ids.insert((*id).clone(), n);
        }
    }
    let prev_used: BTreeSet<u32> = prev.rule_ids.values().copied().collect();
    let mut fresh = (1..RULE_STATS_MAX).filter(|n| !prev_used.contains(n));
    let mut any = 1..RULE_STATS_MAX;
    let mut out_of_ids = BTreeSet::new();
    for id in identities {
        if rule_ids.contains_key(id) {
            continue;
        }
        let next = fresh
            .by_ref()
            .find(|n| !used[*n as usize])
            .or_else(|| any.by_ref().find(|n| !used[*n as usize]));
        match next {
            Some(n) => {
                used[n as usize] = true;
                rule_ids.insert(id.clone(), n);
            }
            None => {
                out_of_ids.insert(id);
            }
        }
    }

    let mut reported = BTreeSet::new();
    let entries = winners
        .iter()
        .map(|(&(ruleset, dst), c)| {
            let rule_id = rule_ids.get(&c.identity).copied().unwrap_or_else(|| {
                if reported.insert(&c.identity) {
                    issues.push(Issue::OutOfRuleIds {
                        from: c.from.clone(),
                    });
                }
                0
            });
            let via = c.via.map_or([0u8; 16], |a| crate::maps::to_addr16(a).1);
            let value = RuleValue {
                rule_id,
                slot: c.slot,
                flags: if c.via.is_some() { RULE_F_VIA } else { 0 },
                via,
            };
            let entry = Entry {
                ruleset,
                dst,
                value,
                from: c.from.clone(),
            };
            ((ruleset, dst), entry)
        })
        .collect();

    Ok(Compiled {
        slots,
        entries,
        rule_ids,
        conflicts: conflicts.into_values().collect(),
        issues,
    })
}

/// The map writes that turn `old` into `new`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Entries to insert or overwrite (new, or with a different value).
    pub upsert: Vec<(u32, IpNet, RuleValue)>,
    /// Entries to delete.
    pub delete: Vec<(u32, IpNet)>,
    /// Rule ids that are new or now name another rule: zero their counters before the
    /// upserts.
    pub reset_counters: Vec<u32>,
    /// Whether the slot table changed (pods' `IfaceInfo::slots` must be rewritten).
    pub slots_changed: bool,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty()
            && self.delete.is_empty()
            && self.reset_counters.is_empty()
            && !self.slots_changed
    }
}

/// What to write to go from `old` to `new`. Apply `reset_counters`, then `upsert`, then
/// `delete`: every address stays covered during the update (make before break).
pub fn diff(old: &Compiled, new: &Compiled) -> Diff {
    let upsert = new
        .entries
        .iter()
        .filter(|(k, e)| old.entries.get(k).map(|o| o.value) != Some(e.value))
        .map(|(&(rs, dst), e)| (rs, dst, e.value))
        .collect();
    let delete = old
        .entries
        .keys()
        .filter(|k| !new.entries.contains_key(k))
        .copied()
        .collect();
    let old_by_id: BTreeMap<u32, &RuleIdentity> =
        old.rule_ids.iter().map(|(i, n)| (*n, i)).collect();
    let reset: BTreeSet<u32> = new
        .rule_ids
        .iter()
        .filter(|(i, n)| old_by_id.get(n) != Some(i))
        .map(|(_, n)| *n)
        .collect();
    Diff {
        upsert,
        delete,
        reset_counters: reset.into_iter().collect(),
        slots_changed: old.slots != new.slots,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::load::load_str;
    use crate::config::services::{self, ServiceIndex};

    fn routes(text: &str) -> Vec<LoadedRoute> {
        load_str(Path::new("r.yaml"), text).unwrap().routes
    }

    fn route(name: &str, priority: i32, body: &str) -> String {
        format!(
            "---\napiVersion: k8s.ovn.org/v1\nkind: Route\nmetadata: {{name: {name}}}\nspec:\n  priority: {priority}\n{body}"
        )
    }

    fn svcs() -> ServiceIndex {
        let text = r#"
- {apiVersion: v1, kind: Service, metadata: {name: nginx, namespace: default}, spec: {clusterIPs: [10.86.69.17, "fd00::17"]}}
- {apiVersion: v1, kind: Service, metadata: {name: web, namespace: default}, spec: {clusterIP: 10.86.205.109}}
"#;
        ServiceIndex::from_objects([&services::load_str(Path::new("s.yaml"), text).unwrap()])
    }

    fn v4(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_and_service_rules_become_entries_with_slots_and_via() {
        let r = routes(&route(
            "demo",
            0,
            "  route:\n  - {dst: 172.16.10.0/24, dev: eth1, via: 10.124.2.1}\n  svc:\n  - {namespace: default, name: nginx, dev: eth0}\n",
        ));
        let c = compile_all_pods(&r, &svcs(), &Compiled::default()).unwrap();
        assert_eq!(
            c.slots.iter().collect::<Vec<_>>(),
            [("eth0", 0), ("eth1", 1)]
        );
        let e = &c.entries[&(1, v4("172.16.10.0/24"))];
        assert_eq!(e.value.slot, 1);
        assert_eq!(e.value.flags, RULE_F_VIA);
        assert_eq!(e.value.via[..4], [10, 124, 2, 1]);
        assert_eq!(e.from.path, "spec.route[0]");
        let s4 = &c.entries[&(1, v4("10.86.69.17/32"))];
        let s6 = &c.entries[&(1, v4("fd00::17/128"))];
        assert_eq!((s4.value.slot, s4.value.flags), (0, 0));
        assert_eq!(
            s4.value.rule_id, s6.value.rule_id,
            "one id per Service rule"
        );
        assert_ne!(s4.value.rule_id, e.value.rule_id);
        assert_eq!(
            s4.from.service.as_ref().unwrap().to_string(),
            "default/nginx"
        );
        assert!(c.issues.is_empty() && c.conflicts.is_empty());
    }

    #[test]
    fn higher_priority_then_name_order_wins_conflicts() {
        let text = [
            route("b", 0, "  route: [{dst: 10.0.0.0/8, dev: eth0}]\n"),
            route("a", 0, "  route: [{dst: 10.0.0.0/8, dev: eth1}]\n"),
            route("z", 5, "  route: [{dst: 10.9.0.0/16, dev: eth1}]\n  svc: [{namespace: default, name: web, dev: eth1}]\n"),
            route("c", 0, "  route: [{dst: 10.9.0.0/16, dev: eth0}, {dst: 10.86.205.109/32, dev: eth1}]\n"),
        ]
        .concat();
        let c = compile_all_pods(&routes(&text), &svcs(), &Compiled::default()).unwrap();
        assert_eq!(c.entries[&(1, v4("10.0.0.0/8"))].from.route, "a");
        assert_eq!(c.entries[&(1, v4("10.9.0.0/16"))].from.route, "z");
        let msgs: Vec<String> = c.conflicts.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                r#"ruleset 1 10.0.0.0/8: Route "a" spec.route[0] wins over Route "b" spec.route[0] (different targets)"#,
                r#"ruleset 1 10.9.0.0/16: Route "z" spec.route[0] wins over Route "c" spec.route[0] (different targets)"#,
                r#"ruleset 1 10.86.205.109/32: Route "z" spec.svc[0] (Service default/web) wins over Route "c" spec.route[1]"#,
            ]
        );
        assert!(c.conflicts[2].agree);
    }

    #[test]
    fn unresolved_services_and_via_family_mismatches_are_issues() {
        let text = route(
            "r",
            0,
            "  svc:\n  - {namespace: default, name: gone, dev: eth0}\n  - {namespace: default, name: nginx, dev: eth1, via: 10.124.0.1}\n",
        );
        let c = compile_all_pods(&routes(&text), &svcs(), &Compiled::default()).unwrap();
        let msgs: Vec<String> = c.issues.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                r#"Route "r" spec.svc[0] (Service default/gone): Service default/gone not found"#,
                r#"Route "r" spec.svc[1] (Service default/nginx): address fd00::17 skipped: via 10.124.0.1 is IPv4"#,
            ]
        );
        assert_eq!(c.entries.len(), 1);
    }

    #[test]
    fn routes_with_pod_selection_are_not_applied_to_all_pods() {
        let text = route(
            "sel",
            0,
            "  namespaces: [a]\n  route: [{dst: 10.0.0.0/8, dev: eth1}]\n",
        );
        let c = compile_all_pods(&routes(&text), &svcs(), &Compiled::default()).unwrap();
        assert!(c.entries.is_empty());
        assert_eq!(
            c.issues,
            [Issue::SelectionUnsupported {
                route: "sel".into()
            }]
        );
    }

    #[test]
    fn slots_are_sticky_and_new_names_avoid_just_freed_slots() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let t1 = SlotTable::allocate(&SlotTable::default(), &names(&["eth1", "eth0"])).unwrap();
        assert_eq!(t1.by_slot()[..2], [Some("eth0"), Some("eth1")]);
        let t2 = SlotTable::allocate(&t1, &names(&["eth1", "bond0"])).unwrap();
        assert_eq!(t2.get("eth1"), Some(1), "kept");
        assert_eq!(t2.get("bond0"), Some(2), "not the just-freed 0");
        let many: Vec<String> = (0..9).map(|i| format!("n{i}")).collect();
        let e = SlotTable::allocate(&t1, &many.iter().cloned().collect()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Routes name 9 interfaces (n0, n1, n2, n3, n4, n5, n6, n7, n8), at most 8 are supported"
        );
    }

    #[test]
    fn rule_ids_survive_recompiles_and_diff_touches_only_changes() {
        let one = route(
            "a",
            0,
            "  route: [{dst: 10.1.0.0/16, dev: eth0}, {dst: 10.2.0.0/16, dev: eth0}]\n",
        );
        let c1 = compile_all_pods(&routes(&one), &svcs(), &Compiled::default()).unwrap();
        let two = route(
            "a",
            0,
            "  route: [{dst: 10.3.0.0/16, dev: eth0}, {dst: 10.2.0.0/16, dev: eth1}]\n",
        );
        let c2 = compile_all_pods(&routes(&two), &svcs(), &c1).unwrap();
        let id = |c: &Compiled, n: &str| c.entries[&(1, v4(n))].value.rule_id;
        assert_eq!(
            id(&c1, "10.2.0.0/16"),
            id(&c2, "10.2.0.0/16"),
            "moved rule keeps its id"
        );
        assert_ne!(
            id(&c2, "10.3.0.0/16"),
            id(&c1, "10.1.0.0/16"),
            "freed id not reused at once"
        );
        let d = diff(&c1, &c2);
        assert_eq!(
            d.upsert.iter().map(|u| u.1).collect::<Vec<_>>(),
            [v4("10.2.0.0/16"), v4("10.3.0.0/16")]
        );
        assert_eq!(d.delete, [(1, v4("10.1.0.0/16"))]);
        assert_eq!(d.reset_counters, [id(&c2, "10.3.0.0/16")]);
        assert!(d.slots_changed);
        assert!(diff(&c2, &compile_all_pods(&routes(&two), &svcs(), &c2).unwrap()).is_empty());
    }

    #[test]
    fn duplicate_route_names_across_files_keep_the_first_file() {
        let a = load_str(
            Path::new("a.yaml"),
            &route("x", 0, "  route: [{dst: 10.0.0.0/8, dev: eth0}]\n"),
        )
        .unwrap();
        let b = load_str(
            Path::new("b.yaml"),
            &route("x", 0, "  route: [{dst: 10.0.0.0/8, dev: eth1}]\n"),
        )
        .unwrap();
        let c = compile_all_pods(
            b.routes.iter().chain(&a.routes),
            &svcs(),
            &Compiled::default(),
        )
        .unwrap();
        assert_eq!(
            c.entries[&(1, v4("10.0.0.0/8"))].value.slot,
            c.slots.get("eth0").unwrap()
        );
        assert_eq!(
            c.issues[0].to_string(),
            r#"Route "x" from b.yaml: document 1 ignored: already defined in a.yaml: document 1"#
        );
    }

    #[test]
    fn a_duplicate_name_cannot_smuggle_a_selective_route_onto_all_pods() {
        let a = load_str(
            Path::new("a.yaml"),
            &route(
                "x",
                0,
                "  namespaces: [n]\n  route: [{dst: 10.0.0.0/8, dev: eth0}]\n",
            ),
        )
        .unwrap();
        let b = load_str(
            Path::new("b.yaml"),
            &route("x", 0, "  route: [{dst: 10.0.0.0/8, dev: eth1}]\n"),
        )
        .unwrap();
        let c = compile_all_pods(
            b.routes.iter().chain(&a.routes),
            &svcs(),
            &Compiled::default(),
        )
        .unwrap();
        assert!(c.entries.is_empty());
        assert_eq!(
            c.issues[0],
            Issue::SelectionUnsupported { route: "x".into() }
        );
    }

    mod prop {
        use std::path::PathBuf;

        use proptest::prelude::*;

        use super::*;
        use crate::config::route::{CheckedRule, RouteSpec};
        use crate::lpm::RefRules;

        const CIDRS: &[&str] = &["10.0.0.0/8", "10.1.0.0/16", "10.86.69.17/32", "fd00::/64"];
        const SVCS: &[&str] = &["nginx", "web", "gone"];
        const DEVS: &[&str] = &["eth0", "eth1", "net1"];

        fn rule() -> impl Strategy<Value = (bool, usize, usize, bool)> {
            (any::<bool>(), 0..4usize, 0..DEVS.len(), any::<bool>())
        }

        /// Up to 5 Routes with distinct names, random priorities and rules from small pools
        /// (so prefixes collide often).
        fn routes() -> impl Strategy<Value = Vec<LoadedRoute>> {
            proptest::collection::btree_map(
                "[a-e]",
                (-1..=1i32, proptest::collection::vec(rule(), 0..5)),
                0..5,
            )
            .prop_map(|m| {
                m.into_iter()
                    .enumerate()
                    .map(|(doc, (name, (priority, rules)))| {
                        let rules = rules
                            .into_iter()
                            .enumerate()
                            .map(|(i, (svc, pick, dev, via))| {
                                let target = if svc {
                                    Target::Service(NamespacedName {
                                        namespace: "default".into(),
                                        name: SVCS[pick % SVCS.len()].into(),
                                    })
                                } else {
                                    Target::Cidr(CIDRS[pick].parse().unwrap())
                                };
                                let via = via.then(|| match &target {
                                    Target::Cidr(IpNet::V6(_)) => "fd00::1".parse().unwrap(),
                                    _ => "10.124.0.1".parse().unwrap(),
                                });
                                CheckedRule {
                                    path: format!("spec.route[{i}]"),
                                    target,
                                    dev: DEVS[dev].into(),
                                    via,
                                }
                            })
                            .collect();
                        LoadedRoute {
                            spec: RouteSpec {
                                priority,
                                ..Default::default()
                            },
                            name,
                            origin: Origin {
                                file: PathBuf::from("p.yaml"),
                                document: doc + 1,
                            },
                            shorthand: false,
                            rules,
                        }
                    })
                    .collect()
            })
        }

        fn shuffled() -> impl Strategy<Value = (Vec<LoadedRoute>, Vec<LoadedRoute>)> {
            routes().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
        }

        proptest! {
            #[test]
            fn compilation_does_not_depend_on_route_order((a, b) in shuffled(), prev in routes()) {
                let idx = svcs();
                let prev = compile_all_pods(&prev, &idx, &Compiled::default()).unwrap();
                prop_assert_eq!(
                    compile_all_pods(&a, &idx, &prev).unwrap(),
                    compile_all_pods(&b, &idx, &prev).unwrap()
                );
            }

            #[test]
            fn winners_follow_priority_then_name(routes in routes()) {
                let c = compile_all_pods(&routes, &svcs(), &Compiled::default()).unwrap();
                for e in c.entries.values() {
                    let best = routes
                        .iter()
                        .filter(|r| r.rules.iter().any(|x| match &x.target {
                            Target::Cidr(n) => *n == e.dst,
                            Target::Service(s) => svcs()
                                .resolve(&s.namespace, &s.name)
                                .is_ok_and(|ips| ips.iter().any(|ip| IpNet::from(*ip) == e.dst)
                                    && x.via.is_none_or(|v| Family::of(&v) == Family::of(&e.dst.addr()))),
                        }))
                        .min_by(|x, y| y.spec.priority.cmp(&x.spec.priority).then(x.name.cmp(&y.name)))
                        .unwrap();
                    prop_assert_eq!(&e.from.route, &best.name);
                }
            }

            #[test]
            fn diff_turns_the_old_entries_into_the_new_and_keeps_ids(a in routes(), b in routes()) {
                let idx = svcs();
                let old = compile_all_pods(&a, &idx, &Compiled::default()).unwrap();
                let new = compile_all_pods(&b, &idx, &old).unwrap();
                let mut model = RefRules::new();
                for e in old.entries.values() {
                    model.insert(e.ruleset, e.dst, e.value);
                }
                let d = diff(&old, &new);
                for (rs, dst, v) in &d.upsert {
                    model.insert(*rs, *dst, *v);
                }
                for (rs, dst) in &d.delete {
                    model.remove(*rs, *dst);
                }
                let mut got: Vec<_> = model.iter().map(|r| (r.ruleset, r.dst, r.value)).collect();
                got.sort_by_key(|x| (x.0, x.1));
                let want: Vec<_> = new.entries.values().map(|e| (e.ruleset, e.dst, e.value)).collect();
                prop_assert_eq!(got, want);
                for (identity, id) in &new.rule_ids {
                    prop_assert!(*id >= 1 && *id < RULE_STATS_MAX);
                    if let Some(old_id) = old.rule_ids.get(identity) {
                        prop_assert_eq!(old_id, id, "unchanged rule keeps its id");
                    } else {
                        prop_assert!(d.reset_counters.contains(id));
                    }
                }
                let ids: BTreeSet<u32> = new.rule_ids.values().copied().collect();
                prop_assert_eq!(ids.len(), new.rule_ids.len(), "ids are distinct");
                for (name, slot) in old.slots.iter() {
                    if let Some(s) = new.slots.get(name) {
                        prop_assert_eq!(s, slot, "slots are sticky");
                    }
                }
            }
        }
    }
}
