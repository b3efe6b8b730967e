//! Flow-table maintenance: sweeping the tombstones whose flows ended (and the flow entries that
//! idled out), carrying a pod's pinned flows into its new ruleset, removing a pod's flows, and
//! the iterator over steered flows these share.
//!
//! The invariant kept here is the one the egress program relies on: every pinned flow's
//! destination stays covered, in the ruleset of the pod it leaves, by its rule or by a
//! tombstone, for as long as the flow lives (the program consults the flow table only for
//! covered destinations; an uncovered one falls back to the kernel's path mid-stream, with
//! another source address). So a tombstone is deleted only once no live flow needs it
//! ([`Reconciler::sweep_tombstones`]), and a pod changing ruleset gets host tombstones in the
//! new one before its interface entries name it ([`Reconciler::carry_flows`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use veer_common::{FlowKey, FlowValue, RuleValue};

use super::{PodState, ReconcileError, Reconciler, rules::RuleEntries};
use crate::podnet::IfaceFacts;

/// Flow-key address bytes (IPv4 in the first four, the rest zero).
pub(super) type FlowAddr = [u8; 16];

impl Reconciler {
    /// Deletes the tombstones no live flow needs any more, and with them the flow entries that
    /// have idled out (the datapath removes those lazily, on their next packet). Costs one pass
    /// over the flow table, only while tombstones exist.
    ///
    /// Make before break: a tombstone is deleted only when no steered flow that is still live
    /// (not idled out) carries its rule id to a destination it covers.
    pub(super) fn sweep_tombstones(&mut self) -> Result<(), ReconcileError> {
        if self.tombstones.is_empty() {
            return Ok(());
        }
        let cfg = self.maps.config_entry().unwrap_or_default();
        let now = crate::maps::monotonic_coarse_ns();
        let mut live: Vec<(u32, IpAddr)> = Vec::new();
        let mut dead: Vec<FlowKey> = Vec::new();
        for (k, v, daddr) in self.steered_out_flows() {
            if idled_out(now, v.last_seen_ns, cfg.timeout_s(v.state)) {
                dead.push(k);
                continue;
            }
            live.push((v.rule_id, daddr));
        }
        for k in dead {
            // The reply entry first: it is found through the outgoing one's translated source.
            if let Ok(v) = self.maps.flows.get(&k, 0) {
                let _ = self
                    .maps
                    .flows
                    .remove(&k.reverse(v.addr, veer_common::DIR_IN));
            }
            let _ = self.maps.flows.remove(&k);
        }
        for (rs, dst) in finished_tombstones(&self.tombstones, &live) {
            self.delete_rule(rs, dst)?;
            self.tombstones.remove(&(rs, dst));
        }
        Ok(())
    }

    /// Whether a steered flow from one of the pod's addresses is in the flow table.
    pub(super) fn has_steered_flows(&self, p: &PodState) -> bool {
        let addrs = pod_addresses(&p.facts);
        self.steered_out_flows()
            .any(|(k, _, _)| addrs.contains(&k.saddr))
    }

    /// The outgoing entries of steered flows in the flow table, with their destination.
    pub(super) fn steered_out_flows(
        &self,
    ) -> impl Iterator<Item = (FlowKey, FlowValue, IpAddr)> + '_ {
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
    ///
    /// Make before break: must run after the rules of `to` are applied (coverage is judged
    /// against the compilation in force and the tombstones) and before the pod's interface
    /// entries name `to` (see [`Reconciler::resync_pod`]).
    pub(super) fn carry_flows(&mut self, p: &PodState, to: u32) {
        let addrs = pod_addresses(&p.facts);
        let covering: Vec<(u32, IpNet)> = self
            .applied
            .entries
            .keys()
            .chain(self.tombstones.keys())
            .copied()
            .collect();
        let needed = flows_to_carry(self.steered_out_flows(), &addrs, &covering, to);
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

    /// Removes the flows of a pod: outgoing entries from its addresses, reply entries to them.
    pub(super) fn remove_flows(&mut self, addrs: &BTreeSet<FlowAddr>) {
        if addrs.is_empty() {
            return;
        }
        let keys: Vec<FlowKey> = self
            .maps
            .flows
            .keys()
            .filter_map(Result::ok)
            .filter(|k| is_flow_of(k, addrs))
            .collect();
        for k in keys {
            let _ = self.maps.flows.remove(&k);
        }
    }
}

/// A pod interface's addresses as flow-key bytes (IPv4 in the first four).
pub(super) fn addresses(f: &IfaceFacts) -> Vec<FlowAddr> {
    let v4 = f.v4.map(std::net::IpAddr::V4);
    let v6 = f.v6.map(std::net::IpAddr::V6);
    v4.into_iter()
        .chain(v6)
        .map(|a| crate::maps::to_addr16(a).1)
        .collect()
}

/// Every address of a pod's interfaces, as flow-key bytes.
pub(super) fn pod_addresses(facts: &[IfaceFacts]) -> BTreeSet<FlowAddr> {
    facts.iter().flat_map(addresses).collect()
}

/// Whether a flow entry has idled out: unseen for longer than its state's timeout, plus one
/// second of slack (the datapath refreshes `last_seen_ns` at most once a second).
fn idled_out(now_ns: u64, last_seen_ns: u64, timeout_s: u32) -> bool {
    now_ns.saturating_sub(last_seen_ns) > (u64::from(timeout_s) + 1) * 1_000_000_000
}

/// The tombstones no live flow needs: none of `live` (rule id, destination) has the
/// tombstone's rule id and a destination inside its prefix.
fn finished_tombstones(tombstones: &RuleEntries, live: &[(u32, IpAddr)]) -> Vec<(u32, IpNet)> {
    tombstones
        .iter()
        .filter(|((_, dst), t)| {
            !live
                .iter()
                .any(|(id, a)| *id == t.rule_id && dst.contains(a))
        })
        .map(|(k, _)| *k)
        .collect()
}

/// Whether a flow entry belongs to the pod with `addrs`: an outgoing entry from one of them,
/// or a reply entry to one of them.
fn is_flow_of(k: &FlowKey, addrs: &BTreeSet<FlowAddr>) -> bool {
    let local = if k.dir == veer_common::DIR_OUT {
        k.saddr
    } else {
        k.daddr
    };
    addrs.contains(&local)
}

/// The host prefixes ruleset `to` needs a tombstone for, with the rule id to give it: the
/// destinations of the steered flows from `addrs` that none of the `covering` (ruleset,
/// prefix) keys of `to` contains.
fn flows_to_carry(
    steered: impl Iterator<Item = (FlowKey, FlowValue, IpAddr)>,
    addrs: &BTreeSet<FlowAddr>,
    covering: &[(u32, IpNet)],
    to: u32,
) -> BTreeMap<IpNet, u32> {
    let mut needed = BTreeMap::new();
    for (k, v, daddr) in steered {
        let covered = covering
            .iter()
            .any(|(rs, n)| *rs == to && n.contains(&daddr));
        if addrs.contains(&k.saddr) && !covered {
            needed.insert(IpNet::from(daddr), v.rule_id);
        }
    }
    needed
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(a: &str) -> FlowAddr {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a.parse::<Ipv4Addr>().unwrap().octets());
        b
    }

    fn steered(src: &str, dst: &str, rule_id: u32) -> (FlowKey, FlowValue, IpAddr) {
        let k = FlowKey {
            saddr: v4(src),
            daddr: v4(dst),
            family: veer_common::FAMILY_V4,
            dir: veer_common::DIR_OUT,
            ..FlowKey::default()
        };
        let v = FlowValue {
            kind: veer_common::FLOW_STEER,
            rule_id,
            ..FlowValue::default()
        };
        (k, v, dst.parse().unwrap())
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_flow_idles_out_only_after_its_timeout_and_one_second_of_slack() {
        let s = 1_000_000_000;
        assert!(!idled_out(100 * s, 100 * s, 30));
        assert!(!idled_out(131 * s, 100 * s, 30), "exactly timeout + 1 s");
        assert!(idled_out(131 * s + 1, 100 * s, 30));
        // A last_seen_ns ahead of the clock (another CPU's coarse clock) is not idle.
        assert!(!idled_out(100 * s, 200 * s, 0));
    }

    #[test]
    fn a_tombstone_is_finished_when_no_live_flow_of_its_rule_goes_inside_its_prefix() {
        let tombstones: RuleEntries = [
            (
                (1, net("10.1.0.0/16")),
                RuleValue {
                    rule_id: 7,
                    ..RuleValue::default()
                },
            ),
            (
                (1, net("10.2.0.0/16")),
                RuleValue {
                    rule_id: 8,
                    ..RuleValue::default()
                },
            ),
            (
                (2, net("10.3.0.5/32")),
                RuleValue {
                    rule_id: 9,
                    ..RuleValue::default()
                },
            ),
        ]
        .into_iter()
        .collect();
        let live = [
            // Rule 7 still has a flow inside its prefix: kept.
            (7, "10.1.2.3".parse().unwrap()),
            // Rule 8's id, but outside its prefix; a flow inside it, but of another rule.
            (8, "10.9.0.1".parse().unwrap()),
            (7, "10.2.0.1".parse().unwrap()),
        ];
        assert_eq!(
            finished_tombstones(&tombstones, &live),
            vec![(1, net("10.2.0.0/16")), (2, net("10.3.0.5/32"))]
        );
        assert!(finished_tombstones(&tombstones, &[]).len() == 3);
    }

    #[test]
    fn a_pods_flows_are_its_outgoing_entries_and_the_replies_to_it() {
        let addrs = BTreeSet::from([v4("10.0.0.5")]);
        let (out, _, _) = steered("10.0.0.5", "192.0.2.1", 1);
        assert!(is_flow_of(&out, &addrs));
        let reply = FlowKey {
            saddr: v4("192.0.2.1"),
            daddr: v4("10.0.0.5"),
            dir: veer_common::DIR_IN,
            ..out
        };
        assert!(is_flow_of(&reply, &addrs));
        // An incoming entry is the pod's by its destination alone.
        let other = FlowKey {
            dir: veer_common::DIR_IN,
            ..out
        };
        assert!(!is_flow_of(&other, &addrs));
        assert!(!is_flow_of(&out, &BTreeSet::new()));
    }

    #[test]
    fn only_the_pods_flows_to_destinations_its_new_ruleset_does_not_cover_are_carried() {
        let addrs = BTreeSet::from([v4("10.0.0.5")]);
        let flows = vec![
            // Covered by ruleset 2's rule: nothing to carry.
            steered("10.0.0.5", "10.1.2.3", 4),
            // Covered only in ruleset 1 (the pod's old one): carried as a host tombstone.
            steered("10.0.0.5", "10.2.0.9", 5),
            // Another pod's flow: not this pod's to carry.
            steered("10.0.0.6", "10.3.0.1", 6),
        ];
        let covering = [(2, net("10.1.0.0/16")), (1, net("10.2.0.0/16"))];
        let needed = flows_to_carry(flows.into_iter(), &addrs, &covering, 2);
        assert_eq!(needed, BTreeMap::from([(net("10.2.0.9/32"), 5)]));
    }

    #[test]
    fn a_pods_addresses_are_the_v4_and_v6_of_each_interface_in_flow_key_bytes() {
        let f = IfaceFacts {
            name: "eth1".into(),
            ifindex: 3,
            mac: [0; 6],
            mtu: 1500,
            v4: Some("10.0.0.5".parse().unwrap()),
            v6: Some("fd00::5".parse().unwrap()),
            gw4: None,
            gw6: None,
            is_ether: true,
            up: true,
            connected: Vec::new(),
        };
        let v6_only = IfaceFacts {
            v4: None,
            v6: Some("fd00::6".parse().unwrap()),
            ..f.clone()
        };
        assert_eq!(
            addresses(&f),
            vec![
                v4("10.0.0.5"),
                "fd00::5".parse::<Ipv6Addr>().unwrap().octets()
            ]
        );
        assert_eq!(pod_addresses(&[f, v6_only]).len(), 3);
    }
}
