//! The reconcile core shared by every mode: desired state (compiled rules, the node's pods) in,
//! map writes and program attachments out. Level-triggered: each call compares the desired
//! state with what is applied and writes only the difference.
//!
//! This module holds the [`Reconciler`] type, its public API and the order of a round; the
//! work is done by one module per responsibility:
//! - `rules`: the rule tries and their tombstones (writing the rule difference, seeding sticky
//!   slots and rule ids from the live tries, burying removed rules);
//! - `flows`: flow-table maintenance (sweeping tombstones whose flows ended, carrying pinned
//!   flows into a pod's new ruleset, removing a pod's flows);
//! - `pods`: the pod lifecycle (new pod, refresh from the pod watch, set-up in named steps,
//!   releasing vanished interfaces, removal, orphans);
//! - `debug_object`: switching every pod to the debug object and back
//!   ([`DebugEvents`](crate::debug::DebugEvents)).
//!
//! A round is [`Reconciler::apply_rules`] then [`Reconciler::sync_pods_with_rulesets`] (or
//! [`sync_pods`](Reconciler::sync_pods)), the order the node loop's one apply enforces for both
//! modes ([`NodeDataplane::apply`](crate::node::NodeDataplane::apply)). Make before
//! break, so no packet sees an uncovered address mid-update (each trie entry changes
//! atomically; a packet sees, for each prefix, either its old or its new entry):
//! - a compilation the tries cannot hold is refused before anything is written
//!   (`check_capacity`, in `rules`);
//! - counters of re-used rule ids are zeroed, then new and changed rule entries are written,
//!   then removed ones are buried as tombstones (overwritten in place, not deleted)
//!   (`write_rule_diff`, `adopt_live_rules` and `bury`, in `rules`);
//! - a tombstone is deleted only once no live flow it pinned is left
//!   (`sweep_tombstones`, in `flows`);
//! - rules are applied before the pods are synced, so a pod's interface entry names a ruleset
//!   only once the ruleset's rules are in the tries; a pod changing ruleset has its pinned flows
//!   carried into the new one (host tombstones) before its entries name it
//!   (`resync_pod` in `pods`, `carry_flows` in `flows`);
//! - a pod's links are attached (or their programs replaced in place) before its interface
//!   entries are written; a gone pod loses its entries before its flows and link pins
//!   (`setup_pod`, `attach_links` and `remove_pod`, in `pods`).
//!
//! Not make before break: when interface names gain or lose a slot, the rules carrying the
//! new slots are written before every pod's slot table is rewritten
//! (`rewrite_slot_tables`, in `pods`), so in between a rule may name a slot a pod's table
//! does not hold yet (such a rule is skipped for that pod). Slots are sticky, also across a
//! restart ([`Reconciler::compile_sticky`]), so this happens only when a name is first used or
//! no longer used.

mod debug_object;
mod flows;
mod pods;
mod rules;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::maps::MapError;
use ipnet::IpNet;
use veer_common::{IfaceKey, RuleValue};

use self::debug_object::write_debug_flag;
pub use self::{pods::PodError, rules::base_from_live};
use crate::{
    attach::PodLinks,
    config::{Compiled, PodSandbox},
    dataplane::{Dataplane, DataplaneError},
    maps::{Maps, MapsError},
    podnet::IfaceFacts,
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

    /// Makes the tries hold exactly `new`'s entries. The first call after start compares with the
    /// live maps (adopting what a previous agent left, without removing anything briefly);
    /// later calls write only the difference from the previous compilation.
    ///
    /// In this order: the capacity check (nothing is written when it fails); the rule writes
    /// (make before break, see `rules`); the sweep of tombstones whose flows ended; `new`
    /// becomes the compilation in force; and, when interface names gained or lost a slot, every
    /// managed pod is set up again (its slot table rewritten, after the rules).
    pub fn apply_rules(&mut self, new: Compiled) -> Result<(), ReconcileError> {
        self.check_capacity(&new)?;
        let slots_changed = if self.first {
            self.adopt_live_rules(&new)?;
            self.first = false;
            true
        } else {
            self.write_rule_diff(&new)?
        };
        self.sweep_tombstones()?;
        self.applied = new;
        if slots_changed {
            self.rewrite_slot_tables();
        }
        Ok(())
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
    ///
    /// Runs after [`apply_rules`](Self::apply_rules) (the rulesets it names are in the tries).
    /// In this order: gone pods are removed; each wanted pod that is managed is brought up to
    /// date (`resync_pod` in `pods`: pinned flows carried before its entries name a new
    /// ruleset), each new one set up (`add_pod`); then exactly the managed pods
    /// stay followed.
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
            let kept = match self.pods.remove(netns) {
                Some(p) => self.resync_pod(p, s, ruleset, changed.contains(netns)),
                None => self.add_pod(s, ruleset),
            };
            if let Some(p) = kept {
                self.pods.insert(netns.to_path_buf(), p);
            }
        }
        // Exactly the managed pods are followed: a pod whose first set-up failed after its
        // namespace was followed (it vanished in between, say) must not keep a socket.
        if let Some(w) = &self.watch {
            w.retain(|netns| self.pods.contains_key(netns));
        }
    }

    /// Removes state of pods that no longer exist but were left by a previous agent: interface
    /// entries of no managed pod (and their flows) and link pins of unknown namespaces (see
    /// `remove_orphaned_state` in `pods`).
    pub fn remove_orphans(&mut self) {
        self.remove_orphaned_state();
    }
}
