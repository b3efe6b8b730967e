//! The reconcile core shared by every mode: desired state (compiled rules, the node's pods) in,
//! map writes and program attachments out. Level-triggered: each call compares the desired
//! state with what is applied and writes only the difference.
//!
//! Order of writes (make before break, so no packet sees an uncovered address mid-update):
//! counters of re-used rule ids are zeroed, then new and changed rule entries are written, then
//! stale ones deleted. Each trie entry changes atomically; a packet sees, for each prefix,
//! either its old or its new entry.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::maps::{MapError, PerCpuValues};
use ipnet::IpNet;
use veer_common::{FlowKey, FlowValue, IfaceInfo, IfaceKey, RuleStats, RuleValue, paths};

use crate::{
    attach::{AttachError, PodLinks, attach_pod, detach_pod},
    config::{
        Compiled, PodSandbox,
        compile::{RuleIdentity, SlotTable},
        diff,
    },
    dataplane::{Dataplane, DataplaneError, DebugLog},
    debug::DebugEvents,
    maps::{Maps, MapsError, rule4_key, rule6_key},
    podnet::{self, IfaceFacts, PodnetError, SlotTargets},
    podwatch::PodWatch,
    report::{PodFailure, PodIface, PodReport, Skipped},
};

/// The ruleset of a pod no Route selects any more while its steered flows drain: no rule has
/// it (ruleset ids start at 1), only the tombstones that keep those flows pinned. A pod handed
/// to [`Reconciler::sync_pods_with_rulesets`] with it is managed only if it already was, and is
/// released once no steered flow of its addresses is left.
pub const DRAIN_RULESET: u32 = 0;

/// The slot of an interface no rule names (`IfaceInfo::slot`): nothing is steered to it.
pub const NO_SLOT: u32 = u32::MAX;

/// Errors of applying desired state to the maps.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("the dataplane has no pin root: another object can only share pinned maps")]
    NotPinned,
    #[error(
        "{family} rules need {wanted} trie entries (with tombstones of removed rules), the trie \
         holds {capacity}: nothing applied, the previous rules stay in force"
    )]
    Capacity {
        family: &'static str,
        wanted: usize,
        capacity: u32,
    },
    #[error("counting CPUs to reset the counters of rule {id}")]
    Cpus {
        id: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {what} for {key}")]
    Write {
        what: &'static str,
        key: String,
        #[source]
        source: MapError,
    },
}

/// What the agent knows and did about one pod.
#[derive(Debug)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: PathBuf,
    pub cookie: u64,
    pub ruleset: u32,
    /// Managed interfaces: name, ifindex, slot (none when no rule names the interface).
    pub ifaces: Vec<(String, u32, Option<u16>)>,
    pub skipped: Vec<Skipped>,
    facts: Vec<IfaceFacts>,
    links: Vec<PodLinks>,
    keys: Vec<IfaceKey>,
    /// Whether the pod's links run the debug object's programs.
    debug: bool,
}

impl PodState {
    /// The pod as a round report shows it (`routes`: the Routes selecting it).
    pub fn report(&self, routes: Vec<String>) -> PodReport {
        PodReport {
            pod: format!("{}/{}", self.namespace, self.name),
            uid: self.uid.clone(),
            netns: Some(self.netns.clone()),
            netns_cookie: Some(self.cookie).filter(|c| *c != 0),
            ruleset: Some(self.ruleset).filter(|r| *r != DRAIN_RULESET),
            routes,
            interfaces: self
                .ifaces
                .iter()
                .map(|(name, ifindex, slot)| PodIface {
                    name: name.clone(),
                    ifindex: Some(*ifindex),
                    slot: *slot,
                })
                .collect(),
            skipped: self.skipped.clone(),
            failure: None,
        }
    }
}

/// The dataplane side of the agent.
pub struct Reconciler {
    dp: Dataplane,
    maps: Maps,
    /// The last compilation applied to the maps.
    applied: Compiled,
    /// True until the first rule apply, which diffs against the live maps (restart adoption).
    first: bool,
    /// Removed rules kept as tombstones (value as written) until no flow they pinned is left.
    tombstones: BTreeMap<(u32, IpNet), RuleValue>,
    pods: BTreeMap<PathBuf, PodState>,
    pub failures: Vec<PodFailure>,
    /// Follows the managed pods' namespaces (netlink notifications) once
    /// [`follow_pods`](Self::follow_pods) started it; without it (or for a pod it could not
    /// follow) a managed pod's facts are re-discovered every round.
    watch: Option<PodWatch>,
}

impl Reconciler {
    pub fn new(mut dp: Dataplane) -> Result<Self, ReconcileError> {
        let mut maps = Maps::from_dataplane(&mut dp)?;
        // A previous agent may have left the debug flag set: it says what runs now.
        write_debug_flag(&mut maps, dp.is_debug())?;
        Ok(Self {
            dp,
            maps,
            applied: Compiled::default(),
            first: true,
            tombstones: BTreeMap::new(),
            pods: BTreeMap::new(),
            failures: Vec::new(),
            watch: None,
        })
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn applied(&self) -> &Compiled {
        &self.applied
    }

    /// Runs `compile` against the compilation in force, for sticky slots and rule ids. Before
    /// the first apply (a restarted agent) that is what the live tries record: `compile` runs
    /// once against nothing, and again against [`base_from_live`], so interface names keep the
    /// slots and rules the ids the running datapath uses (a recomputed table could differ,
    /// and rewriting rules and pods' slot tables one after the other would mis-steer packets
    /// in between).
    pub fn compile_sticky<E>(
        &self,
        compile: impl Fn(&Compiled) -> Result<Compiled, E>,
    ) -> Result<Compiled, E> {
        if !self.first {
            return compile(&self.applied);
        }
        let fresh = compile(&self.applied)?;
        match self.live_rules() {
            Ok(live) if !live.is_empty() => compile(&base_from_live(&fresh, &live)),
            _ => Ok(fresh),
        }
    }

    pub fn pods(&self) -> impl Iterator<Item = &PodState> {
        self.pods.values()
    }

    /// Every managed pod and every pod that failed this round, as reports (`uid` of a failed
    /// pod from `sandboxes`; `routes` are filled in by the caller, who knows the selection).
    pub fn reports(&self, sandboxes: &[PodSandbox]) -> Vec<PodReport> {
        let uid_of: BTreeMap<&Path, &str> = sandboxes
            .iter()
            .map(|s| (s.netns.as_path(), s.uid.as_str()))
            .collect();
        let failed = self.failures.iter().map(|f| PodReport {
            pod: format!("{}/{}", f.namespace, f.name),
            uid: uid_of
                .get(f.netns.as_path())
                .map(|u| u.to_string())
                .unwrap_or_default(),
            netns: Some(f.netns.clone()),
            failure: Some(f.error.clone()),
            ..PodReport::default()
        });
        self.pods
            .values()
            .map(|p| p.report(Vec::new()))
            .chain(failed)
            .collect()
    }

    /// Rule entries currently in the tries.
    fn live_rules(&self) -> Result<BTreeMap<(u32, IpNet), RuleValue>, ReconcileError> {
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

    fn delete_rule(&mut self, ruleset: u32, dst: IpNet) -> Result<(), ReconcileError> {
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
    fn check_capacity(&self, new: &Compiled) -> Result<(), ReconcileError> {
        let mut keys: BTreeSet<(u32, IpNet)> = new.entries.keys().copied().collect();
        keys.extend(self.tombstones.keys().copied());
        keys.extend(self.applied.entries.keys().copied());
        for (family, v6) in [("IPv4", false), ("IPv6", true)] {
            let wanted = keys
                .iter()
                .filter(|(_, d)| matches!(d, IpNet::V6(_)) == v6)
                .count();
            if wanted > veer_common::maps::RULES_MAX as usize {
                return Err(ReconcileError::Capacity {
                    family,
                    wanted,
                    capacity: veer_common::maps::RULES_MAX,
                });
            }
        }
        Ok(())
    }

    /// Replaces a removed rule by its tombstone: it steers nothing new, but keeps the flows it
    /// pinned visible to the egress program (which consults the flow table only for covered
    /// destinations) until they end.
    fn bury(&mut self, ruleset: u32, dst: IpNet, v: RuleValue) -> Result<(), ReconcileError> {
        let tomb = RuleValue {
            flags: v.flags | veer_common::RULE_F_TOMBSTONE,
            ..v
        };
        self.upsert_rule(ruleset, dst, tomb)?;
        self.tombstones.insert((ruleset, dst), tomb);
        Ok(())
    }

    /// Deletes the tombstones no live flow needs any more, and with them the flow entries that
    /// have idled out (the datapath removes those lazily, on their next packet). Costs one pass
    /// over the flow table, only while tombstones exist.
    fn sweep_tombstones(&mut self) -> Result<(), ReconcileError> {
        if self.tombstones.is_empty() {
            return Ok(());
        }
        let cfg = self.maps.config_entry().unwrap_or_default();
        let now = crate::maps::monotonic_coarse_ns();
        let mut live: Vec<(u32, IpAddr)> = Vec::new();
        let mut dead: Vec<FlowKey> = Vec::new();
        for (k, v, daddr) in self.steered_out_flows() {
            let timeout_s = cfg.timeout_s(v.state);
            // One second of slack: the datapath refreshes `last_seen_ns` at most once a second.
            if now.saturating_sub(v.last_seen_ns) > (u64::from(timeout_s) + 1) * 1_000_000_000 {
                dead.push(k);
                continue;
            }
            live.push((v.rule_id, daddr));
        }
        for k in dead {
            if let Ok(v) = self.maps.flows.get(&k, 0) {
                let _ = self
                    .maps
                    .flows
                    .remove(&k.reverse(v.addr, veer_common::DIR_IN));
            }
            let _ = self.maps.flows.remove(&k);
        }
        let done: Vec<(u32, IpNet)> = self
            .tombstones
            .iter()
            .filter(|((_, dst), t)| {
                !live
                    .iter()
                    .any(|(id, a)| *id == t.rule_id && dst.contains(a))
            })
            .map(|(k, _)| *k)
            .collect();
        for (rs, dst) in done {
            self.delete_rule(rs, dst)?;
            self.tombstones.remove(&(rs, dst));
        }
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

    /// Makes the tries hold exactly `new`'s entries. The first call after start compares with the
    /// live maps (adopting what a previous agent left, without removing anything briefly);
    /// later calls write only the difference from the previous compilation.
    pub fn apply_rules(&mut self, new: Compiled) -> Result<(), ReconcileError> {
        self.check_capacity(&new)?;
        let slots_changed;
        if self.first {
            let live = self.live_rules()?;
            for (&(rs, dst), e) in &new.entries {
                if live.get(&(rs, dst)) != Some(&e.value) {
                    self.upsert_rule(rs, dst, e.value)?;
                }
            }
            // Entries the desired state no longer has (removed while no agent ran, or
            // tombstones a previous agent left) become tombstones: their flows may be pinned.
            for (&(rs, dst), v) in &live {
                if !new.entries.contains_key(&(rs, dst)) {
                    self.bury(rs, dst, *v)?;
                }
            }
            slots_changed = true;
            self.first = false;
        } else {
            let d = diff(&self.applied, &new);
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
            slots_changed = d.slots_changed;
        }
        self.sweep_tombstones()?;
        self.applied = new;
        if slots_changed {
            // Interface names gained or lost a slot: every pod's slot table changes (rare).
            let keys: Vec<PathBuf> = self.pods.keys().cloned().collect();
            for k in keys {
                if let Some(mut p) = self.pods.remove(&k) {
                    let netns = p.netns.clone();
                    match self.setup_pod(&mut p, false) {
                        Ok(()) => {
                            self.pods.insert(k, p);
                        }
                        Err(e) => self.fail(&p.namespace, &p.name, &netns, &e),
                    }
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, namespace: &str, name: &str, netns: &Path, e: &dyn std::error::Error) {
        let error = crate::error_chain(e);
        tracing::warn!(pod = %format!("{namespace}/{name}"), netns = %netns.display(), %error, "pod not set up; retrying on next sync");
        self.failures.push(PodFailure {
            namespace: namespace.into(),
            name: name.into(),
            netns: netns.into(),
            error,
        });
    }

    /// Follows every managed pod's network facts for its whole life (see [`crate::podwatch`]):
    /// `wake` is called when one changed, and the next round re-discovers that pod. Without
    /// it, every managed pod is re-discovered every round.
    pub fn follow_pods(&mut self, wake: Box<dyn Fn() + Send + Sync>) {
        match PodWatch::start(wake) {
            Ok(w) => {
                for netns in self.pods.keys() {
                    if let Err(e) = w.watch(netns) {
                        tracing::warn!(netns = %netns.display(), error = %crate::error_chain(&e), "cannot follow the pod's namespace; re-discovering it every round");
                    }
                }
                self.watch = Some(w);
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "pod watch not started; managed pods are re-discovered every round");
            }
        }
    }

    /// Starts following `netns` before its first discovery (so nothing changes unseen).
    fn follow(&self, netns: &Path) {
        if let Some(w) = &self.watch
            && let Err(e) = w.watch(netns)
        {
            tracing::warn!(netns = %netns.display(), error = %crate::error_chain(&e), "cannot follow the pod's namespace; re-discovering it every round");
        }
    }

    /// Re-discovers a managed pod's facts; when they changed, releases what belonged to
    /// interfaces and addresses that went away. Returns whether anything changed.
    fn refresh_facts(&mut self, p: &mut PodState) -> Result<bool, PodError> {
        let facts = podnet::discover(&p.netns)?;
        if facts == p.facts {
            return Ok(false);
        }
        let now: BTreeSet<u32> = facts.iter().map(|f| f.ifindex).collect();
        let gone: BTreeSet<u32> = p
            .links
            .iter()
            .flat_map(|l| l.ifaces.iter().map(|(_, i)| *i))
            .filter(|i| !now.contains(i))
            .collect();
        if !gone.is_empty() {
            let root = self.dp.root().map(Path::to_path_buf);
            for l in &mut p.links {
                l.release(root.as_deref(), &gone);
            }
            p.links.retain(|l| !l.ifaces.is_empty());
        }
        let kept: BTreeSet<[u8; 16]> = facts.iter().flat_map(addresses).collect();
        let lost: BTreeSet<[u8; 16]> = p
            .facts
            .iter()
            .flat_map(addresses)
            .filter(|a| !kept.contains(a))
            .collect();
        if !lost.is_empty() {
            self.remove_flows(&lost);
            crate::srcaddr::forget(&mut self.maps, p.cookie, &lost);
        }
        tracing::info!(pod = %format!("{}/{}", p.namespace, p.name), before = ?p.facts.iter().map(|f| &f.name).collect::<Vec<_>>(), now = ?facts.iter().map(|f| &f.name).collect::<Vec<_>>(), "pod network changed");
        p.facts = facts;
        Ok(true)
    }

    /// Makes the managed pods exactly `sandboxes` (those whose namespace exists), every pod in
    /// [`ALL_PODS_RULESET`](crate::config::compile::ALL_PODS_RULESET): new pods are discovered
    /// and attached, gone pods have every trace removed.
    pub fn sync_pods(&mut self, sandboxes: &[PodSandbox]) {
        let pods: Vec<(PodSandbox, u32)> = sandboxes
            .iter()
            .map(|s| (s.clone(), crate::config::compile::ALL_PODS_RULESET))
            .collect();
        self.sync_pods_with_rulesets(&pods);
    }

    /// Like [`sync_pods`](Self::sync_pods), with each pod's ruleset given: a managed pod whose
    /// ruleset changed has its interface entries rewritten (its links stay).
    pub fn sync_pods_with_rulesets(&mut self, pods: &[(PodSandbox, u32)]) {
        self.failures.clear();
        let want: BTreeMap<&Path, (&PodSandbox, u32)> = pods
            .iter()
            .filter(|(s, _)| s.netns.exists())
            .filter(|(s, rs)| *rs != DRAIN_RULESET || self.pods.contains_key(&s.netns))
            .map(|(s, rs)| (s.netns.as_path(), (s, *rs)))
            .collect();
        let gone: Vec<PathBuf> = self
            .pods
            .keys()
            .filter(|k| !want.contains_key(k.as_path()))
            .cloned()
            .collect();
        for k in gone {
            if let Some(p) = self.pods.remove(&k) {
                self.remove_pod(p);
            }
        }
        let changed = self
            .watch
            .as_ref()
            .map(PodWatch::take_changed)
            .unwrap_or_default();
        for (netns, (s, ruleset)) in want {
            if let Some(mut p) = self.pods.remove(netns) {
                if ruleset == DRAIN_RULESET && !self.has_steered_flows(&p) {
                    self.remove_pod(p);
                    continue;
                }
                let followed = self.watch.as_ref().is_some_and(|w| w.watches(netns));
                let refreshed = if changed.contains(netns) || !followed {
                    if !followed {
                        self.follow(netns);
                    }
                    match self.refresh_facts(&mut p) {
                        Ok(r) => r,
                        Err(e) => {
                            // Keep the pod as it is; unfollowed, the next round retries.
                            if let Some(w) = &self.watch {
                                w.unwatch(netns);
                            }
                            self.fail(&s.namespace, &s.name, netns, &e);
                            false
                        }
                    }
                } else {
                    false
                };
                if refreshed || p.ruleset != ruleset || p.debug != self.dp.is_debug() {
                    if p.ruleset != ruleset {
                        // Before the interface entries name the new ruleset (make before break).
                        self.carry_flows(&p, ruleset);
                    }
                    p.ruleset = ruleset;
                    if let Err(e) = self.setup_pod(&mut p, false) {
                        self.fail(&s.namespace, &s.name, netns, &e);
                    }
                }
                self.pods.insert(netns.to_path_buf(), p);
                continue;
            }
            let mut p = PodState {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                uid: s.uid.clone(),
                netns: netns.to_path_buf(),
                cookie: 0,
                ruleset,
                ifaces: Vec::new(),
                skipped: Vec::new(),
                facts: Vec::new(),
                links: Vec::new(),
                keys: Vec::new(),
                debug: self.dp.is_debug(),
            };
            match self.setup_pod(&mut p, true) {
                Ok(()) => {
                    tracing::info!(pod = %format!("{}/{}", p.namespace, p.name), ifaces = ?p.ifaces, skipped = ?p.skipped, "pod managed");
                    self.pods.insert(netns.to_path_buf(), p);
                }
                Err(e) => self.fail(&s.namespace, &s.name, netns, &e),
            }
        }
        // Exactly the managed pods are followed: a pod whose first set-up failed after its
        // namespace was followed (it vanished in between, say) must not keep a socket.
        if let Some(w) = &self.watch {
            w.retain(|netns| self.pods.contains_key(netns));
        }
    }

    /// Whether a steered flow from one of the pod's addresses is in the flow table.
    fn has_steered_flows(&self, p: &PodState) -> bool {
        let addrs: BTreeSet<[u8; 16]> = p.facts.iter().flat_map(addresses).collect();
        self.steered_out_flows()
            .any(|(k, _, _)| addrs.contains(&k.saddr))
    }

    /// The outgoing entries of steered flows in the flow table, with their destination.
    fn steered_out_flows(&self) -> impl Iterator<Item = (FlowKey, FlowValue, IpAddr)> + '_ {
        self.maps
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| k.dir == veer_common::DIR_OUT && v.kind == veer_common::FLOW_STEER)
            .map(|(k, v)| {
                let daddr = crate::maps::addr16(k.family == veer_common::FAMILY_V4, &k.daddr);
                (k, v, daddr)
            })
    }

    /// Keeps the pod's pinned steered flows visible after it moves to ruleset `to`: the egress
    /// program consults the flow table only for destinations its ruleset covers, so each flow
    /// destination `to` does not cover gets a host tombstone there (it steers nothing new; the
    /// sweep removes it once the flow has ended). Without it an established steered connection
    /// would fall back to the kernel's path mid-stream, with another source address.
    fn carry_flows(&mut self, p: &PodState, to: u32) {
        let addrs: BTreeSet<[u8; 16]> = p.facts.iter().flat_map(addresses).collect();
        let mut needed: BTreeMap<IpNet, u32> = BTreeMap::new();
        for (k, v, daddr) in self.steered_out_flows() {
            let covered = self
                .applied
                .entries
                .keys()
                .chain(self.tombstones.keys())
                .any(|(rs, n)| *rs == to && n.contains(&daddr));
            if addrs.contains(&k.saddr) && !covered {
                needed.insert(IpNet::from(daddr), v.rule_id);
            }
        }
        for (host, rule_id) in needed {
            let v = RuleValue {
                rule_id,
                ..RuleValue::default()
            };
            match self.bury(to, host, v) {
                Ok(()) => {
                    tracing::info!(pod = %format!("{}/{}", p.namespace, p.name), ruleset = to, dst = %host, "pinned flow carried into the pod's new ruleset")
                }
                Err(e) => {
                    tracing::warn!(pod = %format!("{}/{}", p.namespace, p.name), dst = %host, error = %crate::error_chain(&e), "a pinned flow may fall back to the kernel's path")
                }
            }
        }
    }

    /// Discovers the pod's interfaces, attaches to those a rule names, and writes their entries.
    fn setup_pod(&mut self, p: &mut PodState, discover: bool) -> Result<(), PodError> {
        if discover || p.facts.is_empty() {
            self.follow(&p.netns);
            p.facts = podnet::discover(&p.netns)?;
        }
        let slots: &SlotTable = &self.applied.slots;
        // Every Ethernet interface gets the programs: a packet must be seen where the kernel
        // routes it (usually eth0, which rules need not name) to be steered elsewhere.
        // Interfaces no rule names have no slot (`NO_SLOT`): nothing steers *to* them.
        let mut managed: Vec<(&IfaceFacts, u32)> = Vec::new();
        p.skipped.clear();
        for (name, _) in slots.iter() {
            match podnet::find(&p.facts, name) {
                Some(f) if !f.is_ether => p.skipped.push(Skipped {
                    iface: name.into(),
                    reason: "not an Ethernet interface".into(),
                }),
                Some(_) => {}
                None => p.skipped.push(Skipped {
                    iface: name.into(),
                    reason: format!(
                        "the pod has no interface {name}: rules with dev {name} are skipped for it"
                    ),
                }),
            }
        }
        for f in p.facts.iter().filter(|f| f.is_ether) {
            let slot = slots.get(&f.name).map_or(NO_SLOT, u32::from);
            managed.push((f, slot));
        }
        // Attach only to interfaces not attached yet (the same ifindex keeps its links).
        let attached: BTreeSet<u32> = p
            .links
            .iter()
            .flat_map(|l| l.ifaces.iter().map(|(_, i)| *i))
            .collect();
        let names: Vec<String> = managed
            .iter()
            .filter(|(f, _)| !attached.contains(&f.ifindex))
            .map(|(f, _)| f.name.clone())
            .collect();
        if p.debug != self.dp.is_debug() && !p.links.is_empty() {
            // The other object was swapped in: adopting the pins replaces the programs in the
            // existing links atomically (bpf_link_update), nothing is detached.
            let all: Vec<String> = p
                .links
                .iter()
                .flat_map(|l| l.ifaces.iter().map(|(n, _)| n.clone()))
                .collect();
            let links = attach_pod(&mut self.dp, &p.netns, &all)?;
            p.links = vec![links];
        }
        p.debug = self.dp.is_debug();
        if !names.is_empty() {
            let links = attach_pod(&mut self.dp, &p.netns, &names)?;
            p.links.push(links);
        }
        let cookie = match p.links.first() {
            Some(l) => l.cookie,
            None => crate::netns::netns_cookie(&p.netns)
                .map_err(AttachError::from)?
                .map_err(AttachError::Cookie)?,
        };
        let mut targets = SlotTargets::default();
        for (f, slot) in &managed {
            if let Ok(slot) = u16::try_from(*slot) {
                targets.set(slot, f);
            }
        }
        let keys: Vec<IfaceKey> = managed.iter().map(|(f, _)| podnet::iface_key(f)).collect();
        // Entries of interfaces no longer managed (or whose MAC changed) go first.
        for k in &p.keys {
            if !keys.contains(k) {
                let _ = self.maps.ifaces.remove(k);
            }
        }
        for (f, slot) in &managed {
            let info = podnet::iface_info(f, cookie, p.ruleset, *slot, &targets);
            self.maps
                .ifaces
                .insert(podnet::iface_key(f), info, 0)
                .map_err(|source| PodError::Write {
                    iface: f.name.clone(),
                    source,
                })?;
        }
        let owners: Vec<&IfaceFacts> = managed.iter().map(|(f, _)| *f).collect();
        crate::srcaddr::setup(&mut self.maps, &p.netns, cookie, &owners, &mut p.skipped).map_err(
            |source| PodError::Write {
                iface: "the address table".into(),
                source,
            },
        )?;
        // Keep the next hops resolved: a packet redirected while its next hop is unresolved is
        // queued and later re-resolved through its original route, leaving with the wrong MACs.
        let mut hops: Vec<(String, std::net::IpAddr)> = podnet::gateways(
            &managed
                .iter()
                .map(|(f, _)| (*f).clone())
                .collect::<Vec<_>>(),
        );
        for e in self.applied.entries.values() {
            if e.value.flags & veer_common::RULE_F_VIA != 0
                && let Some((f, _)) = managed.iter().find(|(_, s)| *s == u32::from(e.value.slot))
            {
                let via = match e.dst {
                    IpNet::V4(_) => std::net::IpAddr::from(
                        <[u8; 4]>::try_from(&e.value.via[..4]).expect("4 bytes"),
                    ),
                    IpNet::V6(_) => std::net::IpAddr::from(e.value.via),
                };
                if !f.reaches(via) {
                    p.skipped.push(Skipped {
                        iface: f.name.clone(),
                        reason: format!(
                            "{}: via {via} is not reachable on {} (neither its gateway nor in its \
                             subnets): steered packets for {} would not be delivered",
                            e.from, f.name, e.dst
                        ),
                    });
                    tracing::warn!(pod = %format!("{}/{}", p.namespace, p.name), iface = %f.name, %via, rule = %e.from, "via not reachable on the rule's interface");
                }
                if !hops.iter().any(|(n, a)| *n == f.name && *a == via) {
                    hops.push((f.name.clone(), via));
                }
            }
        }
        if let Err(e) = podnet::keep_resolved(&p.netns, &hops) {
            p.skipped.push(Skipped {
                iface: String::new(),
                reason: format!(
                    "next hops not pinned in the neighbour table: {}",
                    crate::error_chain(&e)
                ),
            });
        }
        p.cookie = cookie;
        p.keys = keys;
        p.ifaces = managed
            .iter()
            .map(|(f, s)| (f.name.clone(), f.ifindex, u16::try_from(*s).ok()))
            .collect();
        if p.ruleset == DRAIN_RULESET {
            p.skipped.push(Skipped {
                iface: String::new(),
                reason: "no Route selects the pod any more: its programs stay until its steered \
                         flows end (no new flow is steered)"
                    .into(),
            });
        }
        if p.ifaces.is_empty() {
            p.skipped.push(Skipped {
                iface: String::new(),
                reason: "no interface named by any rule".into(),
            });
        }
        Ok(())
    }

    /// Removes every trace of a pod: interface entries, flows, pinned links.
    fn remove_pod(&mut self, p: PodState) {
        if let Some(w) = &self.watch {
            w.unwatch(&p.netns);
        }
        for k in &p.keys {
            let _ = self.maps.ifaces.remove(k);
        }
        let addrs: BTreeSet<[u8; 16]> = p.facts.iter().flat_map(addresses).collect();
        self.remove_flows(&addrs);
        crate::srcaddr::forget(&mut self.maps, p.cookie, &addrs);
        if let Some(root) = self.dp.root()
            && let Err(e) = detach_pod(root, p.cookie)
        {
            tracing::warn!(error = %crate::error_chain(&e), "removing link pins");
        }
        tracing::info!(pod = %format!("{}/{}", p.namespace, p.name), "pod gone: state removed");
    }

    /// Removes the flows of a pod: outgoing entries from its addresses, reply entries to them.
    fn remove_flows(&mut self, addrs: &BTreeSet<[u8; 16]>) {
        if addrs.is_empty() {
            return;
        }
        let keys: Vec<FlowKey> = self
            .maps
            .flows
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let local = if k.dir == veer_common::DIR_OUT {
                    k.saddr
                } else {
                    k.daddr
                };
                addrs.contains(&local)
            })
            .collect();
        for k in keys {
            let _ = self.maps.flows.remove(&k);
        }
    }

    /// Removes state of pods that no longer exist but were left by a previous agent: interface
    /// entries of no managed pod (and their flows) and link pins of unknown namespaces.
    pub fn remove_orphans(&mut self) {
        let known_keys: std::collections::HashSet<IfaceKey> = self
            .pods
            .values()
            .flat_map(|p| p.keys.iter().copied())
            .collect();
        let known: BTreeSet<u64> = self.pods.values().map(|p| p.cookie).collect();
        let stale: Vec<(IfaceKey, IfaceInfo)> = self
            .maps
            .ifaces
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| !known_keys.contains(k))
            .collect();
        let mut addrs = BTreeSet::new();
        for (k, info) in stale {
            let mut a4 = [0u8; 16];
            a4[..4].copy_from_slice(&info.addr4);
            addrs.insert(a4);
            addrs.insert(info.addr6);
            let _ = self.maps.ifaces.remove(&k);
        }
        addrs.remove(&[0u8; 16]);
        self.remove_flows(&addrs);
        crate::srcaddr::remove_orphans(&mut self.maps, &known);
        if let Some(root) = self.dp.root().map(Path::to_path_buf)
            && let Ok(rd) = std::fs::read_dir(root.join(paths::LINKS_DIR))
        {
            for e in rd.flatten() {
                if let Some(c) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok())
                    && !known.contains(&c)
                {
                    let _ = detach_pod(&root, c);
                }
            }
        }
    }
}

impl Reconciler {
    /// Swaps the debug object in (`on`) or the default one back, for every managed pod, and
    /// sets `CFG_F_DEBUG` accordingly (see [`crate::dataplane`]). Rules, interfaces, flows and
    /// counters are the same pinned maps either way. A pod whose swap fails keeps running the
    /// other object (both are complete) and is retried at the next pod sync.
    pub fn switch_object(&mut self, on: bool) -> Result<Option<DebugLog>, ReconcileError> {
        let root = self
            .dp
            .root()
            .ok_or(ReconcileError::NotPinned)?
            .to_path_buf();
        let new = Dataplane::load_pinned_with(&root, on)?;
        if !on {
            // Quiet first: the debug programs check the flag at each event site.
            write_debug_flag(&mut self.maps, false)?;
        }
        self.dp = new;
        let keys: Vec<PathBuf> = self.pods.keys().cloned().collect();
        for k in keys {
            if let Some(mut p) = self.pods.remove(&k) {
                if let Err(e) = self.setup_pod(&mut p, false) {
                    let (ns, name) = (p.namespace.clone(), p.name.clone());
                    self.fail(&ns, &name, &k, &e);
                }
                self.pods.insert(k, p);
            }
        }
        if on {
            write_debug_flag(&mut self.maps, true)?;
        }
        Ok(self.dp.take_debug_log())
    }
}

impl DebugEvents for Reconciler {
    fn debug_events(&self) -> bool {
        self.dp.is_debug()
    }

    fn set_debug_events(&mut self, on: bool) -> Result<Option<DebugLog>, String> {
        self.switch_object(on).map_err(|e| crate::error_chain(&e))
    }
}

/// The slots and rule ids the live tries record, in the terms of `fresh` (a compilation of the
/// current sources): an interface name takes the slot that the live entries of its rules carry,
/// a rule identity the id its live entries carry. Ambiguous assignments (one name seen with two
/// slots, one slot claimed by two names, and likewise for ids) and tombstones are left out, so
/// the recompilation allocates those afresh. The result has no entries: it only seeds
/// [`crate::config::compile`]'s stickiness.
pub fn base_from_live(fresh: &Compiled, live: &BTreeMap<(u32, IpNet), RuleValue>) -> Compiled {
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

/// Sets or clears `CFG_F_DEBUG` in `VEER_CONFIG_V1`, keeping the other settings.
fn write_debug_flag(maps: &mut Maps, on: bool) -> Result<(), ReconcileError> {
    maps.set_debug_flag(on)?;
    Ok(())
}

/// A pod interface's addresses as flow-key bytes (IPv4 in the first four).
fn addresses(f: &IfaceFacts) -> Vec<[u8; 16]> {
    let mut v = Vec::new();
    if let Some(a) = f.v4 {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a.octets());
        v.push(b);
    }
    if let Some(a) = f.v6 {
        v.push(a.octets());
    }
    v
}

/// Errors of setting up one pod.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Discover(#[from] PodnetError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("writing the interface entry of {iface}")]
    Write {
        iface: String,
        #[source]
        source: MapError,
    },
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
    fn live(c: &Compiled) -> BTreeMap<(u32, IpNet), RuleValue> {
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
}
