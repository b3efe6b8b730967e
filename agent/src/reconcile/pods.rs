//! The pod lifecycle: a new pod is discovered, attached and given its interface entries; a
//! managed pod is re-discovered when the pod watch saw its namespace change (or every round
//! when it is not followed), releasing what belonged to interfaces and addresses that went
//! away; a pod moving to another ruleset has its pinned flows carried over first; a gone pod
//! (or a draining one whose flows ended) has every trace removed; state a previous agent left
//! for pods that no longer exist is removed as orphans.
//!
//! [`Reconciler::setup_pod`] runs the set-up in named steps, in an order that is make before
//! break:
//! 1. [discovery](Reconciler::discover_pod): the namespace is followed before it is
//!    discovered, so nothing changes unseen;
//! 2. [choosing interfaces and slots](choose_interfaces): every Ethernet interface, with the
//!    slot its name has (or [`NO_SLOT`]);
//! 3. [attaching](Reconciler::attach_links): the pod's links exist (and run the object in
//!    force) before any of its entries is written: an entry tells the programs to act, it
//!    carries the namespace cookie the links report, and a failed attach returns before any
//!    entry is written;
//! 4. [writing interface entries](Reconciler::write_iface_entries): entries of interfaces no
//!    longer managed (other keys) are removed, then every managed interface's entry is written
//!    whole (one atomic update each);
//! 5. [next hops](next_hops): the neighbours steered packets leave through are pinned
//!    resolved, and unreachable `via`s are reported.

use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    path::Path,
};

use aya::maps::MapError;
use ipnet::IpNet;
use veer_common::{IfaceInfo, IfaceKey, paths};

use super::{
    DRAIN_RULESET, NO_SLOT, PodState, Reconciler,
    flows::{FlowAddr, addresses, pod_addresses},
};
use crate::{
    attach::{AttachError, PodLinks, attach_pod, detach_pod},
    config::{Compiled, PodSandbox, compile::SlotTable},
    podnet::{self, IfaceFacts, PodnetError, SlotTargets},
    report::{PodFailure, Skipped},
};

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

/// A managed interface: its facts and the slot its name has ([`NO_SLOT`] when no rule names it).
type Managed<'a> = Vec<(&'a IfaceFacts, u32)>;

impl Reconciler {
    /// Records a pod that could not be set up this round (retried at the next sync).
    pub(super) fn fail(
        &mut self,
        namespace: &str,
        name: &str,
        netns: &Path,
        e: &dyn std::error::Error,
    ) {
        let error = crate::error_chain(e);
        tracing::warn!(pod = %format!("{namespace}/{name}"), netns = %netns.display(), %error, "pod not set up; retrying on next sync");
        self.failures.push(PodFailure {
            namespace: namespace.into(),
            name: name.into(),
            netns: netns.into(),
            error,
        });
    }

    /// Starts following `netns` before its first discovery (so nothing changes unseen).
    pub(super) fn follow(&self, netns: &Path) {
        if let Some(w) = &self.watch
            && let Err(e) = w.watch(netns)
        {
            tracing::warn!(netns = %netns.display(), error = %crate::error_chain(&e), "cannot follow the pod's namespace; re-discovering it every round");
        }
    }

    /// A pod not managed yet, in `ruleset`: discovered, attached and given its entries. `None`
    /// (and a failure recorded) when its set-up failed; the next sync tries it again as new.
    pub(super) fn add_pod(&mut self, s: &PodSandbox, ruleset: u32) -> Option<PodState> {
        let mut p = PodState {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            uid: s.uid.clone(),
            netns: s.netns.clone(),
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
                Some(p)
            }
            Err(e) => {
                self.fail(&s.namespace, &s.name, &s.netns, &e);
                None
            }
        }
    }

    /// A managed pod wanted in `ruleset` this round (`changed`: the pod watch saw its namespace
    /// change). A draining pod ([`DRAIN_RULESET`]) whose steered flows ended is removed (`None`).
    /// Otherwise its facts are refreshed when changed or not followed, and it is set up again
    /// when its facts, its ruleset or the object in force changed; a failed refresh or set-up
    /// keeps the pod as it was (and records a failure).
    ///
    /// Make before break: when the ruleset changes, the pod's pinned flows are carried into the
    /// new ruleset ([`Reconciler::carry_flows`]) before [`setup_pod`](Self::setup_pod) writes
    /// interface entries that name it; the new ruleset's rules are already in the tries
    /// (`apply_rules` runs before the pod sync, see [`super`]).
    pub(super) fn resync_pod(
        &mut self,
        mut p: PodState,
        s: &PodSandbox,
        ruleset: u32,
        changed: bool,
    ) -> Option<PodState> {
        let netns = s.netns.as_path();
        if ruleset == DRAIN_RULESET && !self.has_steered_flows(&p) {
            self.remove_pod(p);
            return None;
        }
        let followed = self.watch.as_ref().is_some_and(|w| w.watches(netns));
        let refreshed = if changed || !followed {
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
        Some(p)
    }

    /// Sets every managed pod up again after interface names gained or lost a slot (every
    /// pod's slot table changes; rare). A pod whose set-up fails is dropped from the managed
    /// pods (a failure recorded): the next sync sets it up as new.
    pub(super) fn rewrite_slot_tables(&mut self) {
        let keys: Vec<std::path::PathBuf> = self.pods.keys().cloned().collect();
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

    /// Re-discovers a managed pod's facts; when they changed, releases what belonged to
    /// interfaces and addresses that went away. Returns whether anything changed.
    fn refresh_facts(&mut self, p: &mut PodState) -> Result<bool, PodError> {
        let facts = podnet::discover(&p.netns)?;
        if facts == p.facts {
            return Ok(false);
        }
        self.release_vanished(p, &facts);
        tracing::info!(pod = %format!("{}/{}", p.namespace, p.name), before = ?p.facts.iter().map(|f| &f.name).collect::<Vec<_>>(), now = ?facts.iter().map(|f| &f.name).collect::<Vec<_>>(), "pod network changed");
        p.facts = facts;
        Ok(true)
    }

    /// Releases what belonged to the interfaces and addresses of `p` that are not in `now`
    /// (its facts as just discovered): the links (and pins) of vanished interfaces, whose
    /// programs the kernel detached with them, and the flows of lost addresses. Runs before the
    /// facts are replaced and the pod's entries rewritten.
    fn release_vanished(&mut self, p: &mut PodState, now: &[IfaceFacts]) {
        let gone = vanished_ifindexes(&attached_ifindexes(&p.links), now);
        if !gone.is_empty() {
            let root = self.dp.root().map(Path::to_path_buf);
            for l in &mut p.links {
                l.release(root.as_deref(), &gone);
            }
            p.links.retain(|l| !l.ifaces.is_empty());
        }
        let lost = lost_addresses(&p.facts, now);
        if !lost.is_empty() {
            self.remove_flows(&lost);
            crate::srcaddr::forget(&mut self.maps, p.cookie, &lost);
        }
    }

    /// Discovers the pod's interfaces, attaches to those a rule names, and writes their entries
    /// (the steps, and why in this order, in the [module documentation](self)).
    pub(super) fn setup_pod(&mut self, p: &mut PodState, discover: bool) -> Result<(), PodError> {
        self.discover_pod(p, discover)?;
        let (managed, skipped) = choose_interfaces(&p.facts, &self.applied.slots);
        p.skipped = skipped;
        self.attach_links(&p.netns, &mut p.links, &mut p.debug, &managed)?;
        let cookie = pod_cookie(&p.links, &p.netns)?;
        let keys = self.write_iface_entries(&p.keys, &managed, cookie, p.ruleset)?;
        // After the interface entries: the datapath checks the owner's entry names the pod.
        let owners: Vec<&IfaceFacts> = managed.iter().map(|(f, _)| *f).collect();
        crate::srcaddr::setup(&mut self.maps, &p.netns, cookie, &owners, &mut p.skipped).map_err(
            |source| PodError::Write {
                iface: "the address table".into(),
                source,
            },
        )?;
        let pod = format!("{}/{}", p.namespace, p.name);
        let (hops, unreachable) = next_hops(&self.applied, &managed, &pod);
        p.skipped.extend(unreachable);
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
        p.skipped.extend(pod_notes(p.ruleset, p.ifaces.is_empty()));
        Ok(())
    }

    /// Step 1: discovers the pod's interfaces when asked (a new pod) or when none are known,
    /// following its namespace first so that no change after the discovery goes unseen.
    fn discover_pod(&mut self, p: &mut PodState, discover: bool) -> Result<(), PodError> {
        if discover || p.facts.is_empty() {
            self.follow(&p.netns);
            p.facts = podnet::discover(&p.netns)?;
        }
        Ok(())
    }

    /// Step 3: makes the pod's links run the object in force on every managed interface.
    ///
    /// Make before break: when the other object was swapped in, adopting the pins replaces the
    /// programs in the existing links atomically (`bpf_link_update`), nothing is detached; only
    /// interfaces not attached yet get new links (the same ifindex keeps its links). Runs before
    /// the pod's entries are written.
    fn attach_links(
        &mut self,
        netns: &Path,
        links: &mut Vec<PodLinks>,
        debug: &mut bool,
        managed: &[(&IfaceFacts, u32)],
    ) -> Result<(), PodError> {
        let attached = attached_ifindexes(links);
        let names: Vec<String> = managed
            .iter()
            .filter(|(f, _)| !attached.contains(&f.ifindex))
            .map(|(f, _)| f.name.clone())
            .collect();
        if *debug != self.dp.is_debug() && !links.is_empty() {
            let all: Vec<String> = links
                .iter()
                .flat_map(|l| l.ifaces.iter().map(|(n, _)| n.clone()))
                .collect();
            let swapped = attach_pod(&mut self.dp, netns, &all)?;
            *links = vec![swapped];
        }
        *debug = self.dp.is_debug();
        if !names.is_empty() {
            let new = attach_pod(&mut self.dp, netns, &names)?;
            links.push(new);
        }
        Ok(())
    }

    /// Step 4: removes the entries in `old` that are not keys of `managed` any more (interfaces
    /// no longer managed, or whose MAC changed), then writes every managed interface's entry
    /// (cookie, ruleset, slot, the pod's slot table). Returns the keys written.
    fn write_iface_entries(
        &mut self,
        old: &[IfaceKey],
        managed: &[(&IfaceFacts, u32)],
        cookie: u64,
        ruleset: u32,
    ) -> Result<Vec<IfaceKey>, PodError> {
        let targets = slot_targets(managed);
        let keys: Vec<IfaceKey> = managed.iter().map(|(f, _)| podnet::iface_key(f)).collect();
        // Entries of interfaces no longer managed (or whose MAC changed) go first.
        for k in old {
            if !keys.contains(k) {
                let _ = self.maps.ifaces.remove(k);
            }
        }
        for (f, slot) in managed {
            let info = podnet::iface_info(f, cookie, ruleset, *slot, &targets);
            self.maps
                .ifaces
                .insert(podnet::iface_key(f), info, 0)
                .map_err(|source| PodError::Write {
                    iface: f.name.clone(),
                    source,
                })?;
        }
        Ok(keys)
    }

    /// Removes every trace of a pod: interface entries, flows, pinned links.
    ///
    /// In this order: its entries first (without them the programs steer nothing new from the
    /// pod and pin no new flow), then its flows, then its link pins.
    pub(super) fn remove_pod(&mut self, p: PodState) {
        if let Some(w) = &self.watch {
            w.unwatch(&p.netns);
        }
        for k in &p.keys {
            let _ = self.maps.ifaces.remove(k);
        }
        let addrs = pod_addresses(&p.facts);
        self.remove_flows(&addrs);
        crate::srcaddr::forget(&mut self.maps, p.cookie, &addrs);
        if let Some(root) = self.dp.root()
            && let Err(e) = detach_pod(root, p.cookie)
        {
            tracing::warn!(error = %crate::error_chain(&e), "removing link pins");
        }
        tracing::info!(pod = %format!("{}/{}", p.namespace, p.name), "pod gone: state removed");
    }

    /// Removes state of pods that no longer exist but were left by a previous agent: interface
    /// entries of no managed pod, then their flows, then link pins of unknown namespaces (the
    /// same order as [`remove_pod`](Self::remove_pod)).
    pub(super) fn remove_orphaned_state(&mut self) {
        let known_keys: HashSet<IfaceKey> = self
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
        for (k, _) in &stale {
            let _ = self.maps.ifaces.remove(k);
        }
        self.remove_flows(&entry_addresses(stale.iter().map(|(_, info)| info)));
        crate::srcaddr::remove_orphans(&mut self.maps, &known);
        if let Some(root) = self.dp.root().map(Path::to_path_buf)
            && let Ok(rd) = std::fs::read_dir(root.join(paths::LINKS_DIR))
        {
            for e in rd.flatten() {
                if let Some(c) = orphan_cookie(&e.file_name().to_string_lossy(), &known) {
                    let _ = detach_pod(&root, c);
                }
            }
        }
    }
}

/// Step 2: the interfaces to manage and the slot of each, and the rule-named interfaces that
/// are skipped. Every Ethernet interface gets the programs: a packet must be seen where the
/// kernel routes it (usually eth0, which rules need not name) to be steered elsewhere.
/// Interfaces no rule names have no slot ([`NO_SLOT`]): nothing steers *to* them.
fn choose_interfaces<'a>(
    facts: &'a [IfaceFacts],
    slots: &SlotTable,
) -> (Managed<'a>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    for (name, _) in slots.iter() {
        match podnet::find(facts, name) {
            Some(f) if !f.is_ether => skipped.push(Skipped {
                iface: name.into(),
                reason: "not an Ethernet interface".into(),
            }),
            Some(_) => {}
            None => skipped.push(Skipped {
                iface: name.into(),
                reason: format!(
                    "the pod has no interface {name}: rules with dev {name} are skipped for it"
                ),
            }),
        }
    }
    let managed = facts
        .iter()
        .filter(|f| f.is_ether)
        .map(|f| (f, slots.get(&f.name).map_or(NO_SLOT, u32::from)))
        .collect();
    (managed, skipped)
}

/// The ifindexes the pod's links are attached to.
fn attached_ifindexes(links: &[PodLinks]) -> BTreeSet<u32> {
    links
        .iter()
        .flat_map(|l| l.ifaces.iter().map(|(_, i)| *i))
        .collect()
}

/// The attached ifindexes that are not among the interfaces discovered `now`.
fn vanished_ifindexes(attached: &BTreeSet<u32>, now: &[IfaceFacts]) -> BTreeSet<u32> {
    let now: BTreeSet<u32> = now.iter().map(|f| f.ifindex).collect();
    attached.difference(&now).copied().collect()
}

/// The addresses of `before` that none of the interfaces of `now` has any more.
fn lost_addresses(before: &[IfaceFacts], now: &[IfaceFacts]) -> BTreeSet<FlowAddr> {
    let kept = pod_addresses(now);
    before
        .iter()
        .flat_map(addresses)
        .filter(|a| !kept.contains(a))
        .collect()
}

/// The pod namespace's cookie: the one its links report, or, with no link, the namespace's.
fn pod_cookie(links: &[PodLinks], netns: &Path) -> Result<u64, PodError> {
    Ok(match links.first() {
        Some(l) => l.cookie,
        None => crate::netns::netns_cookie(netns)
            .map_err(AttachError::from)?
            .map_err(AttachError::Cookie)?,
    })
}

/// The pod's slot table: slot → its interface with that slot (interfaces without one are no
/// target).
fn slot_targets(managed: &[(&IfaceFacts, u32)]) -> SlotTargets {
    let mut targets = SlotTargets::default();
    for (f, slot) in managed {
        if let Ok(slot) = u16::try_from(*slot) {
            targets.set(slot, f);
        }
    }
    targets
}

/// Step 5: the next hops to keep resolved for the managed interfaces (a packet redirected
/// while its next hop is unresolved is queued and later re-resolved through its original
/// route, leaving with the wrong MACs): each interface's gateways, and the `via` of every rule
/// steering to one of them. A `via` the interface cannot reach is reported as skipped (`pod`
/// names the pod in the warning).
fn next_hops(
    applied: &Compiled,
    managed: &[(&IfaceFacts, u32)],
    pod: &str,
) -> (Vec<(String, IpAddr)>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    let mut hops: Vec<(String, IpAddr)> = podnet::gateways(
        &managed
            .iter()
            .map(|(f, _)| (*f).clone())
            .collect::<Vec<_>>(),
    );
    for e in applied.entries.values() {
        if e.value.flags & veer_common::RULE_F_VIA != 0
            && let Some((f, _)) = managed.iter().find(|(_, s)| *s == u32::from(e.value.slot))
        {
            let via = match e.dst {
                IpNet::V4(_) => {
                    IpAddr::from(<[u8; 4]>::try_from(&e.value.via[..4]).expect("4 bytes"))
                }
                IpNet::V6(_) => IpAddr::from(e.value.via),
            };
            if !f.reaches(via) {
                skipped.push(Skipped {
                    iface: f.name.clone(),
                    reason: format!(
                        "{}: via {via} is not reachable on {} (neither its gateway nor in its \
                         subnets): steered packets for {} would not be delivered",
                        e.from, f.name, e.dst
                    ),
                });
                tracing::warn!(%pod, iface = %f.name, %via, rule = %e.from, "via not reachable on the rule's interface");
            }
            if !hops.iter().any(|(n, a)| *n == f.name && *a == via) {
                hops.push((f.name.clone(), via));
            }
        }
    }
    (hops, skipped)
}

/// What the report says about the pod as a whole: draining, or with nothing to manage.
fn pod_notes(ruleset: u32, no_ifaces: bool) -> Vec<Skipped> {
    let mut notes = Vec::new();
    if ruleset == DRAIN_RULESET {
        notes.push(Skipped {
            iface: String::new(),
            reason: "no Route selects the pod any more: its programs stay until its steered \
                     flows end (no new flow is steered)"
                .into(),
        });
    }
    if no_ifaces {
        notes.push(Skipped {
            iface: String::new(),
            reason: "no interface named by any rule".into(),
        });
    }
    notes
}

/// The pod addresses stale interface entries name (IPv4 in the first four bytes; unset
/// addresses are not addresses).
fn entry_addresses<'a>(infos: impl Iterator<Item = &'a IfaceInfo>) -> BTreeSet<FlowAddr> {
    let mut addrs = BTreeSet::new();
    for info in infos {
        addrs.insert(crate::maps::to_addr16(std::net::IpAddr::from(info.addr4)).1);
        addrs.insert(info.addr6);
    }
    addrs.remove(&[0u8; 16]);
    addrs
}

/// The cookie a link-pin directory name stands for, when it is no managed pod's.
fn orphan_cookie(dir_name: &str, known: &BTreeSet<u64>) -> Option<u64> {
    dir_name.parse::<u64>().ok().filter(|c| !known.contains(c))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{ServiceIndex, compile_all_pods, load_str};

    fn iface(name: &str, ifindex: u32, v4: Option<&str>) -> IfaceFacts {
        IfaceFacts {
            name: name.into(),
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
            mtu: 1500,
            v4: v4.map(|a| a.parse().unwrap()),
            v6: None,
            gw4: None,
            gw6: None,
            is_ether: true,
            up: true,
            connected: Vec::new(),
        }
    }

    fn compile(route: &str) -> Compiled {
        let text = format!(
            "apiVersion: k8s.ovn.org/v1\nkind: Route\nmetadata: {{name: r}}\nspec:\n  route: {route}\n"
        );
        let routes = load_str(Path::new("r.yaml"), &text).unwrap().routes;
        compile_all_pods(&routes, &ServiceIndex::new(), &Compiled::default()).unwrap()
    }

    #[test]
    fn every_ethernet_interface_is_managed_and_only_rule_named_ones_get_a_slot() {
        let c = compile("[{dst: 10.1.0.0/16, dev: eth1}, {dst: 10.2.0.0/16, dev: net9}]");
        let lo = IfaceFacts {
            is_ether: false,
            ..iface("wg0", 4, None)
        };
        let facts = vec![iface("eth0", 2, None), iface("eth1", 3, None), lo];
        let (managed, skipped) = choose_interfaces(&facts, &c.slots);
        let managed: Vec<(&str, u32)> = managed.iter().map(|(f, s)| (&*f.name, *s)).collect();
        assert_eq!(
            managed,
            vec![
                ("eth0", NO_SLOT),
                ("eth1", u32::from(c.slots.get("eth1").unwrap()))
            ]
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].iface, "net9");
        assert!(skipped[0].reason.contains("has no interface net9"));

        // A rule naming a non-Ethernet interface: skipped as such, not managed.
        let c = compile("[{dst: 10.1.0.0/16, dev: wg0}]");
        let (managed, skipped) = choose_interfaces(&facts, &c.slots);
        assert_eq!(managed.len(), 2);
        assert!(managed.iter().all(|(_, s)| *s == NO_SLOT));
        assert_eq!(skipped[0].iface, "wg0");
        assert_eq!(skipped[0].reason, "not an Ethernet interface");
    }

    #[test]
    fn an_interface_without_a_slot_is_no_target_of_the_pods_slot_table() {
        let (eth0, eth1) = (iface("eth0", 2, None), iface("eth1", 3, None));
        let t = slot_targets(&[(&eth0, NO_SLOT), (&eth1, 1)]);
        let mut want = SlotTargets::default();
        want.ifindex[1] = 3;
        want.mac[1] = eth1.mac;
        assert_eq!(t, want);
    }

    #[test]
    fn only_attached_interfaces_missing_from_the_new_facts_have_vanished() {
        let attached = BTreeSet::from([2, 3, 4]);
        let now = [iface("eth0", 2, None), iface("eth1", 5, None)];
        assert_eq!(vanished_ifindexes(&attached, &now), BTreeSet::from([3, 4]));
        assert!(vanished_ifindexes(&BTreeSet::new(), &now).is_empty());
    }

    #[test]
    fn an_address_moved_to_another_interface_is_not_lost() {
        let before = [
            iface("eth0", 2, Some("10.0.0.5")),
            iface("eth1", 3, Some("10.1.0.5")),
        ];
        let now = [iface("eth0", 2, None), iface("net1", 6, Some("10.0.0.5"))];
        let mut lost_v4 = [0u8; 16];
        lost_v4[..4].copy_from_slice(&[10, 1, 0, 5]);
        assert_eq!(lost_addresses(&before, &now), BTreeSet::from([lost_v4]));
        assert!(lost_addresses(&before, &before).is_empty());
    }

    #[test]
    fn a_via_the_interface_cannot_reach_is_reported_and_still_kept_resolved() {
        let c = compile(
            "[{dst: 172.16.10.0/24, dev: eth1, via: 10.124.2.1}, {dst: 172.16.11.0/24, dev: eth1, via: 10.99.0.1}]",
        );
        let eth1 = IfaceFacts {
            gw4: Some("10.124.2.254".parse().unwrap()),
            connected: vec![("10.124.2.7".parse().unwrap(), 24)],
            ..iface("eth1", 3, Some("10.124.2.7"))
        };
        let slot = u32::from(c.slots.get("eth1").unwrap());
        let (hops, skipped) = next_hops(&c, &[(&eth1, slot)], "default/p");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            hops,
            vec![
                ("eth1".to_string(), ip("10.124.2.254")),
                ("eth1".to_string(), ip("10.124.2.1")),
                ("eth1".to_string(), ip("10.99.0.1")),
            ]
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].iface, "eth1");
        assert!(
            skipped[0]
                .reason
                .contains("via 10.99.0.1 is not reachable on eth1")
        );
        // A pod without the rule's interface: its via is not its next hop.
        let eth0 = iface("eth0", 2, None);
        assert_eq!(
            next_hops(&c, &[(&eth0, NO_SLOT)], "default/p"),
            (Vec::new(), Vec::new())
        );
    }

    #[test]
    fn a_draining_pod_and_a_pod_with_nothing_to_manage_say_so() {
        assert!(pod_notes(1, false).is_empty());
        let notes = pod_notes(DRAIN_RULESET, true);
        assert_eq!(notes.len(), 2);
        assert!(
            notes[0]
                .reason
                .starts_with("no Route selects the pod any more")
        );
        assert_eq!(notes[1].reason, "no interface named by any rule");
        assert!(notes.iter().all(|n| n.iface.is_empty()));
    }

    #[test]
    fn orphaned_entries_name_their_set_addresses_only() {
        let v4_only = IfaceInfo {
            addr4: [10, 0, 0, 5],
            ..IfaceInfo::default()
        };
        let v6_only = IfaceInfo {
            addr6: "fd00::6".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            ..IfaceInfo::default()
        };
        let mut a4 = [0u8; 16];
        a4[..4].copy_from_slice(&[10, 0, 0, 5]);
        assert_eq!(
            entry_addresses([v4_only, v6_only].iter()),
            BTreeSet::from([a4, v6_only.addr6])
        );
        assert!(entry_addresses([IfaceInfo::default()].iter()).is_empty());
    }

    #[test]
    fn only_link_pins_of_unknown_cookies_are_orphans() {
        let known = BTreeSet::from([42]);
        assert_eq!(orphan_cookie("7", &known), Some(7));
        assert_eq!(orphan_cookie("42", &known), None);
        assert_eq!(orphan_cookie("not-a-cookie", &known), None);
    }
}
