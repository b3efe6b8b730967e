//! The rule tries and their tombstones: writing the difference between two compilations
//! (or, on the first apply after a start, between the desired entries and the live tries),
//! burying removed rules, zeroing the counters of re-assigned rule ids, and reading the live
//! tries back to seed a restarted agent's sticky slots and rule ids.
//!
//! Make before break, as enforced here (one trie entry changes atomically, so a packet sees
//! either a prefix's old or its new entry):
//! - the capacity is checked before anything is written ([`Reconciler::check_capacity`]);
//! - counters of re-assigned rule ids are zeroed before the entries carrying those ids are
//!   written, and new and changed entries are written before removed ones are buried
//!   ([`Reconciler::write_rule_diff`], [`Reconciler::adopt_live_rules`]);
//! - a removed entry is overwritten in place by its tombstone, never deleted while flows it
//!   pinned may live ([`Reconciler::bury`]); only the sweep deletes tombstones
//!   ([`super::flows`]).

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{MapError, PerCpuValues};
use ipnet::IpNet;
use veer_common::{RuleStats, RuleValue};

use super::{ReconcileError, Reconciler};
use crate::{
    config::{
        Compiled,
        compile::{RuleIdentity, SlotTable},
        diff,
    },
    maps::{rule4_key, rule6_key},
};

/// Trie keys by (ruleset, prefix), with the value as written.
pub(super) type RuleEntries = BTreeMap<(u32, IpNet), RuleValue>;

/// Trie writes in order: (ruleset, prefix, value).
type RuleWrites = Vec<(u32, IpNet, RuleValue)>;

impl Reconciler {
    /// Rule entries currently in the tries.
    pub(super) fn live_rules(&self) -> Result<RuleEntries, ReconcileError> {
        let mut out = BTreeMap::new();
        for r in self.maps.rules4.iter() {
            let (k, v) = r.map_err(|source| ReconcileError::Write {
                what: "reading",
                key: "rules4".into(),
                source,
            })?;
            if let Some((rs, n)) = crate::maps::decode_rule4(&k) {
                out.insert((rs, IpNet::V4(n)), v);
            }
        }
        for r in self.maps.rules6.iter() {
            let (k, v) = r.map_err(|source| ReconcileError::Write {
                what: "reading",
                key: "rules6".into(),
                source,
            })?;
            if let Some((rs, n)) = crate::maps::decode_rule6(&k) {
                out.insert((rs, IpNet::V6(n)), v);
            }
        }
        Ok(out)
    }

    fn upsert_rule(
        &mut self,
        ruleset: u32,
        dst: IpNet,
        v: RuleValue,
    ) -> Result<(), ReconcileError> {
        match dst {
            IpNet::V4(n) => self.maps.rules4.insert(&rule4_key(ruleset, n), v, 0),
            IpNet::V6(n) => self.maps.rules6.insert(&rule6_key(ruleset, n), v, 0),
        }
        .map_err(|source| ReconcileError::Write {
            what: "rule",
            key: format!("{ruleset}/{dst}"),
            source,
        })
    }

    pub(super) fn delete_rule(&mut self, ruleset: u32, dst: IpNet) -> Result<(), ReconcileError> {
        let r = match dst {
            IpNet::V4(n) => self.maps.rules4.remove(&rule4_key(ruleset, n)),
            IpNet::V6(n) => self.maps.rules6.remove(&rule6_key(ruleset, n)),
        };
        match r {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(ReconcileError::Write {
                what: "rule delete",
                key: format!("{ruleset}/{dst}"),
                source,
            }),
        }
    }

    /// Refuses a compilation the tries cannot hold, before writing anything: entries of `new`,
    /// plus the tombstones that removed entries would leave, per family.
    pub(super) fn check_capacity(&self, new: &Compiled) -> Result<(), ReconcileError> {
        check_trie_capacity(
            new,
            &self.applied,
            &self.tombstones,
            veer_common::maps::RULES_MAX,
        )
    }

    /// Replaces a removed rule by its tombstone: it steers nothing new, but keeps the flows it
    /// pinned visible to the egress program (which consults the flow table only for covered
    /// destinations) until they end. The tombstone overwrites the entry in place (one atomic
    /// update): the prefix is never uncovered in between.
    pub(super) fn bury(
        &mut self,
        ruleset: u32,
        dst: IpNet,
        v: RuleValue,
    ) -> Result<(), ReconcileError> {
        let tomb = tombstone(v);
        self.upsert_rule(ruleset, dst, tomb)?;
        self.tombstones.insert((ruleset, dst), tomb);
        Ok(())
    }

    fn reset_counter(&mut self, id: u32) -> Result<(), ReconcileError> {
        let cpus =
            aya::util::nr_cpus().map_err(|(_, source)| ReconcileError::Cpus { id, source })?;
        let zero = PerCpuValues::try_from(vec![RuleStats::default(); cpus]).expect("non-empty");
        self.maps
            .rule_stats
            .set(id, zero, 0)
            .map_err(|source| ReconcileError::Write {
                what: "counters",
                key: format!("rule {id}"),
                source,
            })
    }

    /// The first apply after a start: makes the tries hold `new`'s entries, comparing with the
    /// live tries (what a previous agent left) rather than with a previous compilation.
    ///
    /// Make before break: every desired entry that differs from the live one is written first;
    /// only then are the live entries `new` lacks (removed while no agent ran, or tombstones a
    /// previous agent left) buried, i.e. overwritten by tombstones, never deleted, since their
    /// flows may be pinned. Nothing is removed even briefly.
    pub(super) fn adopt_live_rules(&mut self, new: &Compiled) -> Result<(), ReconcileError> {
        let live = self.live_rules()?;
        let (write, bury) = adoption(&live, new);
        for (rs, dst, v) in write {
            self.upsert_rule(rs, dst, v)?;
        }
        for (rs, dst, v) in bury {
            self.bury(rs, dst, v)?;
        }
        Ok(())
    }

    /// Every later apply: writes only the difference between the compilation in force and
    /// `new`. Returns whether interface names gained or lost a slot.
    ///
    /// Make before break, in this order: the counters of rule ids `new` assigns to another rule
    /// (or newly) are zeroed before any entry carrying them is written, so the new rule starts
    /// from zero; new and changed entries are written (an entry replacing a tombstone overwrites
    /// it in place, and it stops being a tombstone); then removed entries are buried (their
    /// tombstone overwrites them in place). Nothing is deleted here except a key the
    /// compilation in force does not know (which a tombstone cannot be made of).
    pub(super) fn write_rule_diff(&mut self, new: &Compiled) -> Result<bool, ReconcileError> {
        let d = diff(&self.applied, new);
        for id in &d.reset_counters {
            self.reset_counter(*id)?;
        }
        for (rs, dst, v) in d.upsert {
            self.upsert_rule(rs, dst, v)?;
            self.tombstones.remove(&(rs, dst));
        }
        for (rs, dst) in d.delete {
            match self.applied.entries.get(&(rs, dst)) {
                Some(old) => {
                    let v = old.value;
                    self.bury(rs, dst, v)?;
                }
                None => self.delete_rule(rs, dst)?,
            }
        }
        Ok(d.slots_changed)
    }
}

/// A removed rule's tombstone: its value with `RULE_F_TOMBSTONE` set (same rule id, so the
/// flows it pinned still match it).
fn tombstone(v: RuleValue) -> RuleValue {
    RuleValue {
        flags: v.flags | veer_common::RULE_F_TOMBSTONE,
        ..v
    }
}

/// What the first apply writes, in order: the desired entries the live tries lack or hold with
/// another value (written first), and the live entries the desired state lacks, with their live
/// value (buried after).
fn adoption(live: &RuleEntries, new: &Compiled) -> (RuleWrites, RuleWrites) {
    let write = new
        .entries
        .iter()
        .filter(|(k, e)| live.get(k) != Some(&e.value))
        .map(|(&(rs, dst), e)| (rs, dst, e.value))
        .collect();
    let bury = live
        .iter()
        .filter(|(k, _)| !new.entries.contains_key(k))
        .map(|(&(rs, dst), v)| (rs, dst, *v))
        .collect();
    (write, bury)
}

/// Whether each family's trie can hold what applying `new` over `applied` needs at its
/// fullest: every key of `new`, of `applied` (the entries `new` drops become tombstones) and of
/// the tombstones still kept, each counted once.
fn check_trie_capacity(
    new: &Compiled,
    applied: &Compiled,
    tombstones: &RuleEntries,
    capacity: u32,
) -> Result<(), ReconcileError> {
    let mut keys: BTreeSet<(u32, IpNet)> = new.entries.keys().copied().collect();
    keys.extend(tombstones.keys().copied());
    keys.extend(applied.entries.keys().copied());
    for (family, v6) in [("IPv4", false), ("IPv6", true)] {
        let wanted = keys
            .iter()
            .filter(|(_, d)| matches!(d, IpNet::V6(_)) == v6)
            .count();
        if wanted > capacity as usize {
            return Err(ReconcileError::Capacity {
                family,
                wanted,
                capacity,
            });
        }
    }
    Ok(())
}

/// The slots and rule ids the live tries record, in the terms of `fresh` (a compilation of the
/// current sources): an interface name takes the slot that the live entries of its rules carry,
/// a rule identity the id its live entries carry. Ambiguous assignments (one name seen with two
/// slots, one slot claimed by two names, and likewise for ids) and tombstones are left out, so
/// the recompilation allocates those afresh. The result has no entries: it only seeds
/// [`crate::config::compile`](mod@crate::config::compile)'s stickiness.
pub fn base_from_live(fresh: &Compiled, live: &RuleEntries) -> Compiled {
    let by_slot = fresh.slots.by_slot();
    let identity_of: BTreeMap<u32, &RuleIdentity> =
        fresh.rule_ids.iter().map(|(i, n)| (*n, i)).collect();
    let mut slots: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    let mut ids: BTreeMap<&RuleIdentity, BTreeSet<u32>> = BTreeMap::new();
    for (key, e) in &fresh.entries {
        let Some(v) = live.get(key) else { continue };
        if v.flags & veer_common::RULE_F_TOMBSTONE != 0 {
            continue;
        }
        if let Some(Some(name)) = by_slot.get(usize::from(e.value.slot)) {
            slots.entry(name).or_default().insert(v.slot);
        }
        if let Some(identity) = identity_of.get(&e.value.rule_id) {
            ids.entry(identity).or_default().insert(v.rule_id);
        }
    }
    let slots = SlotTable::from_assignments(
        unique(slots)
            .into_iter()
            .map(|(name, slot)| (name.to_string(), slot)),
    )
    .unwrap_or_default();
    let rule_ids = unique(ids)
        .into_iter()
        .filter(|(_, id)| (1..veer_common::maps::RULE_STATS_MAX).contains(id))
        .map(|(identity, id)| (identity.clone(), id))
        .collect();
    Compiled {
        slots,
        rule_ids,
        ..Compiled::default()
    }
}

/// Single-valued assignments whose value no other key claims.
fn unique<K: Ord + Copy, V: Ord + Copy>(m: BTreeMap<K, BTreeSet<V>>) -> Vec<(K, V)> {
    let single: Vec<(K, V)> = m
        .into_iter()
        .filter(|(_, vs)| vs.len() == 1)
        .filter_map(|(k, vs)| vs.first().map(|v| (k, *v)))
        .collect();
    let mut count: BTreeMap<V, usize> = BTreeMap::new();
    for (_, v) in &single {
        *count.entry(*v).or_default() += 1;
    }
    single.into_iter().filter(|(_, v)| count[v] == 1).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{ServiceIndex, compile_all_pods, load_str};

    fn compile(text: &str, prev: &Compiled) -> Compiled {
        let routes = load_str(Path::new("r.yaml"), text).unwrap().routes;
        compile_all_pods(&routes, &ServiceIndex::new(), prev).unwrap()
    }

    /// The tries as a running datapath holds them after `c` was applied.
    fn live(c: &Compiled) -> RuleEntries {
        c.entries.iter().map(|(k, e)| (*k, e.value)).collect()
    }

    const ROUTE: &str = "apiVersion: k8s.ovn.org/v1\nkind: Route\nmetadata: {name: r}\nspec:\n  route: [{dst: 10.1.0.0/16, dev: eth1}, {dst: 10.2.0.0/16, dev: eth0}, {dst: 10.3.0.0/16, dev: eth1}]\n";

    #[test]
    fn a_restarted_agent_keeps_the_slots_and_rule_ids_the_live_maps_use() {
        // History the restarted agent cannot recompute: eth1 was named first (slot 0), and
        // the first rule was once removed and added back (a new id).
        let history = compile(
            "apiVersion: k8s.ovn.org/v1\nkind: Route\nmetadata: {name: r}\nspec:\n  route: [{dst: 10.3.0.0/16, dev: eth1}]\n",
            &Compiled::default(),
        );
        let running = compile(ROUTE, &history);
        assert_eq!(running.slots.get("eth1"), Some(0));
        assert_eq!(running.slots.get("eth0"), Some(1));
        let fresh = compile(ROUTE, &Compiled::default());
        assert_eq!(fresh.slots.get("eth0"), Some(0), "recomputed table differs");
        assert_ne!(fresh.entries, running.entries);

        let base = base_from_live(&fresh, &live(&running));
        let again = compile(ROUTE, &base);
        assert_eq!(again.slots, running.slots);
        assert_eq!(again.rule_ids, running.rule_ids);
        assert_eq!(again.entries, running.entries, "nothing to rewrite");
    }

    #[test]
    fn ambiguous_or_tombstoned_live_entries_seed_nothing() {
        let fresh = compile(ROUTE, &Compiled::default());
        let mut l = live(&fresh);
        // Two eth1 rules whose live entries disagree on the slot: eth1's slot is not adopted.
        let k1 = (1, "10.1.0.0/16".parse().unwrap());
        l.get_mut(&k1).unwrap().slot = 5;
        let base = base_from_live(&fresh, &l);
        assert_eq!(base.slots.get("eth1"), None);
        assert_eq!(base.slots.get("eth0"), Some(0));
        // A tombstone says nothing about the rule in force.
        let k2 = (1, "10.2.0.0/16".parse().unwrap());
        let v = l.get_mut(&k2).unwrap();
        v.flags |= veer_common::RULE_F_TOMBSTONE;
        v.slot = 7;
        v.rule_id = 99;
        let base = base_from_live(&fresh, &l);
        assert_eq!(base.slots.get("eth0"), None);
        assert!(!base.rule_ids.values().any(|id| *id == 99));
        assert!(base.entries.is_empty());
        // Empty tries: nothing.
        assert_eq!(
            base_from_live(&fresh, &BTreeMap::new()),
            Compiled::default()
        );
    }

    #[test]
    fn one_value_claimed_by_two_keys_is_assigned_to_neither() {
        let m: BTreeMap<&str, BTreeSet<u16>> = [
            ("eth1", BTreeSet::from([2])),
            ("net1", BTreeSet::from([2])),
            ("eth0", BTreeSet::from([0])),
            ("eth2", BTreeSet::from([3, 4])),
        ]
        .into_iter()
        .collect();
        assert_eq!(unique(m), vec![("eth0", 0)]);
    }

    #[test]
    fn a_tombstone_keeps_the_rule_id_slot_and_next_hop_of_the_rule_it_replaces() {
        let v = RuleValue {
            rule_id: 7,
            slot: 2,
            flags: veer_common::RULE_F_VIA,
            via: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let t = tombstone(v);
        assert_eq!(
            t.flags,
            veer_common::RULE_F_VIA | veer_common::RULE_F_TOMBSTONE
        );
        assert_eq!((t.rule_id, t.slot, t.via), (v.rule_id, v.slot, v.via));
        assert_eq!(tombstone(t), t, "burying a tombstone again changes nothing");
    }

    #[test]
    fn the_first_apply_writes_only_what_differs_and_buries_what_the_live_tries_have_extra() {
        let new = compile(ROUTE, &Compiled::default());
        // Identical live tries: nothing written, nothing buried.
        let (write, bury) = adoption(&live(&new), &new);
        assert!(write.is_empty() && bury.is_empty());

        let mut l = live(&new);
        let changed = (1, "10.1.0.0/16".parse::<IpNet>().unwrap());
        l.get_mut(&changed).unwrap().slot = 5;
        let missing = (1, "10.2.0.0/16".parse::<IpNet>().unwrap());
        l.remove(&missing);
        let extra = (1, "10.9.0.0/16".parse::<IpNet>().unwrap());
        let extra_value = RuleValue {
            rule_id: 42,
            ..RuleValue::default()
        };
        l.insert(extra, extra_value);
        let (write, bury) = adoption(&l, &new);
        let written: BTreeSet<(u32, IpNet)> = write.iter().map(|(rs, d, _)| (*rs, *d)).collect();
        assert_eq!(written, BTreeSet::from([changed, missing]));
        for (rs, d, v) in &write {
            assert_eq!(*v, new.entries[&(*rs, *d)].value, "the desired value");
        }
        assert_eq!(
            bury,
            vec![(extra.0, extra.1, extra_value)],
            "the live value"
        );
    }

    #[test]
    fn capacity_counts_entries_removed_rules_and_tombstones_once_each_per_family() {
        let applied = compile(ROUTE, &Compiled::default());
        let new = compile(
            "apiVersion: k8s.ovn.org/v1\nkind: Route\nmetadata: {name: r}\nspec:\n  route: [{dst: 10.1.0.0/16, dev: eth1}, {dst: 10.4.0.0/16, dev: eth1}, {dst: 'fd00::/64', dev: eth1}]\n",
            &applied,
        );
        let tombstones: RuleEntries = [(
            (1, "10.8.0.0/16".parse().unwrap()),
            tombstone(RuleValue::default()),
        )]
        .into_iter()
        .collect();
        // IPv4: 10.1 (in both), 10.2, 10.3 (buried), 10.4 (new), 10.8 (tombstone) = 5.
        assert!(check_trie_capacity(&new, &applied, &tombstones, 5).is_ok());
        match check_trie_capacity(&new, &applied, &tombstones, 4) {
            Err(ReconcileError::Capacity {
                family: "IPv4",
                wanted: 5,
                capacity: 4,
            }) => {}
            other => panic!("expected an IPv4 capacity refusal, got {other:?}"),
        }
        // IPv6 needs 1.
        let v4_only = compile(ROUTE, &Compiled::default());
        assert!(check_trie_capacity(&new, &v4_only, &RuleEntries::new(), 4).is_ok());
        assert!(matches!(
            check_trie_capacity(&new, &Compiled::default(), &RuleEntries::new(), 0),
            Err(ReconcileError::Capacity { family: "IPv4", .. })
        ));
    }
}
