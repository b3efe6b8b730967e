//! Pruning the `status.nodes` entries of deleted nodes.
//!
//! Each agent writes only its own node's entry of a Route's `status.nodes` (see [`super::status`]);
//! when a Node is deleted its agent is gone with it and nothing else would remove the entry. So
//! every agent also reflects Node metadata (`nodes` list/watch, [`super::watch`]) and removes the
//! entries of nodes that no longer exist. No finalizer is involved (nothing delays a Node's
//! deletion), and agents never overwrite each other's entries:
//!
//! - **Evidence.** An entry is a candidate only when its node is absent from the Nodes store,
//!   only once that store has listed, and never in a round where a watch is failing (then the
//!   agent writes nothing at all): a store that could not be refreshed proves nothing. A store
//!   that does not hold the agent's own Node is not trusted either. The agent's own entry is
//!   never a candidate.
//! - **Grace.** A candidate is pruned only after it has been seen orphaned for a grace period
//!   ([`super::K8sConfig::node_gc_grace`], 30 s by default): a node that has just joined may
//!   write its entry before this agent's watch has delivered its Node.
//! - **Who.** All agents see the same orphan; one deterministic agent acts first. For each dead
//!   node the live nodes are ranked by an FNV-1a hash of (dead node, live node) ([`rank`]); the
//!   agent of rank `r` acts once the entry has been orphaned for `grace × (r + 1)`. Normally the
//!   first-ranked agent prunes alone; if it is down, the next one does a grace period later, and
//!   so on. Agents whose Node stores disagree for a moment only cost a refused request.
//! - **How.** One JSON patch (RFC 6902) per Route on `routes/<name>/status` ([`prune_patch`]):
//!   for every orphaned entry, highest index first, a `test` that `/status/nodes/<i>/node` still
//!   names the dead node, then `remove /status/nodes/<i>`. If the list changed since this agent
//!   read it (another agent pruned first, a node added its entry), a `test` fails, the apiserver
//!   answers `422` and applies nothing; the agent reads the Route again from its watch and
//!   decides again next round. Entries of existing nodes are never in a patch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::crd::RouteStatus;
use super::status::field_manager;
use crate::config::route::Route;

/// FNV-1a (64 bit): a hash every agent computes the same way, whatever its build.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The rank of node `me` among the `live` nodes for pruning the entries of node `dead`: `0`
/// acts first. A node missing from `live` ranks last.
pub fn rank(me: &str, dead: &str, live: &BTreeSet<String>) -> usize {
    let mut order: Vec<(u64, &str)> = live
        .iter()
        .map(|n| (fnv1a(&[dead, n]), n.as_str()))
        .collect();
    order.sort_unstable();
    order
        .iter()
        .position(|(_, n)| *n == me)
        .unwrap_or(order.len())
}

/// The orphaned entries of one Route to remove now: (index in `status.nodes`, node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prune {
    pub route: String,
    pub entries: Vec<(usize, String)>,
}

/// What this agent has seen orphaned, and since when.
#[derive(Debug)]
pub struct NodeGc {
    grace: Duration,
    /// (Route, node) → when the entry was first seen orphaned.
    orphaned_since: BTreeMap<(String, String), Instant>,
}

impl NodeGc {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            orphaned_since: BTreeMap::new(),
        }
    }

    /// The entries agent `me` should remove at `now`, given the names of the `live` nodes (a
    /// complete, listed Nodes store) and every Route's status. Forgets entries that are no
    /// longer orphaned (the node came back, or the entry is gone).
    pub fn due<'a>(
        &mut self,
        now: Instant,
        me: &str,
        live: &BTreeSet<String>,
        routes: impl IntoIterator<Item = (&'a str, Option<&'a RouteStatus>)>,
    ) -> Vec<Prune> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (route, status) in routes {
            let mut entries = Vec::new();
            for (i, n) in status.iter().flat_map(|s| s.nodes.iter()).enumerate() {
                if n.node == me || live.contains(&n.node) {
                    continue;
                }
                let key = (route.to_string(), n.node.clone());
                let since = *self.orphaned_since.entry(key.clone()).or_insert(now);
                seen.insert(key);
                let r = rank(me, &n.node, live);
                let wait = self
                    .grace
                    .saturating_mul(u32::try_from(r).unwrap_or(u32::MAX).saturating_add(1));
                if now.saturating_duration_since(since) >= wait {
                    entries.push((i, n.node.clone()));
                }
            }
            if !entries.is_empty() {
                out.push(Prune {
                    route: route.to_string(),
                    entries,
                });
            }
        }
        self.orphaned_since.retain(|k, _| seen.contains(k));
        out
    }
}

/// The JSON patch removing `entries` (index, node) from `status.nodes`: highest index first,
/// each `remove` preceded by a `test` that the index still holds that node.
pub fn prune_patch(entries: &[(usize, String)]) -> Value {
    let mut sorted: Vec<&(usize, String)> = entries.iter().collect();
    sorted.sort_by_key(|e| std::cmp::Reverse(e.0));
    sorted.dedup_by_key(|e| e.0);
    let ops: Vec<Value> = sorted
        .into_iter()
        .flat_map(|(i, node)| {
            [
                json!({"op": "test", "path": format!("/status/nodes/{i}/node"), "value": node}),
                json!({"op": "remove", "path": format!("/status/nodes/{i}")}),
            ]
        })
        .collect();
    Value::Array(ops)
}

/// Sends [`prune_patch`] for Route `name` as `node`'s agent. A `422` means the entries moved
/// or are gone (nothing was changed).
pub async fn prune_status(
    client: &Client,
    node: &str,
    name: &str,
    entries: &[(usize, String)],
) -> Result<Route, kube::Error> {
    let patch: json_patch::Patch =
        serde_json::from_value(prune_patch(entries)).map_err(kube::Error::SerdeError)?;
    let api: Api<Route> = Api::all(client.clone());
    let pp = PatchParams {
        field_manager: Some(field_manager(node)),
        ..Default::default()
    };
    api.patch_status(name, &pp, &Patch::Json::<()>(patch)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::crd::NodeStatus;

    fn status(nodes: &[&str]) -> RouteStatus {
        RouteStatus {
            nodes: nodes
                .iter()
                .map(|n| NodeStatus {
                    node: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ranks_are_a_permutation_that_depends_on_the_dead_node() {
        let live = set(&["a", "b", "c", "d", "e"]);
        for dead in ["x", "y"] {
            let mut ranks: Vec<usize> = live.iter().map(|n| rank(n, dead, &live)).collect();
            ranks.sort_unstable();
            assert_eq!(ranks, [0, 1, 2, 3, 4], "{dead}");
        }
        let first = |dead: &str| live.iter().find(|n| rank(n, dead, &live) == 0).cloned();
        let firsts: BTreeSet<_> = (0..20).map(|i| first(&format!("dead-{i}"))).collect();
        assert!(firsts.len() > 1, "the work is spread: {firsts:?}");
        assert_eq!(
            rank("zz", "x", &live),
            5,
            "a node not in the store ranks last"
        );
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
    }

    #[test]
    fn only_entries_of_missing_nodes_after_the_grace_of_this_agent_rank() {
        let grace = Duration::from_secs(10);
        let live = set(&["me", "b", "c"]);
        let st = status(&["b", "gone", "me", "c", "gone2"]);
        let r_gone = rank("me", "gone", &live) as u32;
        let r_gone2 = rank("me", "gone2", &live) as u32;
        let mut gc = NodeGc::new(grace);
        let t0 = Instant::now();
        assert!(
            gc.due(t0, "me", &live, [("r", Some(&st))]).is_empty(),
            "grace"
        );
        let at = |k: u32| t0 + grace * (k + 1);
        let due = gc.due(at(r_gone), "me", &live, [("r", Some(&st))]);
        let want_gone2 = r_gone2 <= r_gone;
        let mut want = vec![(1, "gone".to_string())];
        if want_gone2 {
            want.push((4, "gone2".to_string()));
        }
        assert_eq!(
            due,
            [Prune {
                route: "r".into(),
                entries: want
            }]
        );
        // Long after: both, never a live node nor this node.
        let due = gc.due(at(3), "me", &live, [("r", Some(&st)), ("s", None)]);
        assert_eq!(
            due[0].entries,
            [(1, "gone".to_string()), (4, "gone2".to_string())]
        );
        // The node came back: forgotten, and the grace starts again if it goes away again.
        let back = set(&["me", "b", "c", "gone", "gone2"]);
        assert!(gc.due(at(4), "me", &back, [("r", Some(&st))]).is_empty());
        assert!(gc.due(at(5), "me", &live, [("r", Some(&st))]).is_empty());
    }

    #[test]
    fn with_no_grace_every_agent_prunes_at_once() {
        let live = set(&["me", "b"]);
        let mut gc = NodeGc::new(Duration::ZERO);
        let st = status(&["gone"]);
        let due = gc.due(Instant::now(), "me", &live, [("r", Some(&st))]);
        assert_eq!(due[0].entries, [(0, "gone".to_string())]);
    }

    #[test]
    fn the_patch_tests_each_entry_before_removing_it_highest_index_first() {
        let p = prune_patch(&[(1, "a".into()), (4, "b".into())]);
        assert_eq!(
            p,
            json!([
                {"op": "test", "path": "/status/nodes/4/node", "value": "b"},
                {"op": "remove", "path": "/status/nodes/4"},
                {"op": "test", "path": "/status/nodes/1/node", "value": "a"},
                {"op": "remove", "path": "/status/nodes/1"},
            ])
        );
        let mut obj = json!({"status": {"nodes": [{"node": "x"}, {"node": "a"}, {"node": "y"},
                                                   {"node": "z"}, {"node": "b"}]}});
        let patch: json_patch::Patch = serde_json::from_value(p.clone()).unwrap();
        json_patch::patch(&mut obj, &patch).unwrap();
        assert_eq!(
            obj,
            json!({"status": {"nodes": [{"node": "x"}, {"node": "y"}, {"node": "z"}]}})
        );
        // The same patch on a list that moved: refused as a whole.
        let mut moved = json!({"status": {"nodes": [{"node": "a"}, {"node": "x"}, {"node": "y"},
                                                     {"node": "z"}, {"node": "b"}]}});
        let before = moved.clone();
        assert!(json_patch::patch(&mut moved, &patch).is_err());
        assert_eq!(moved, before);
    }
}
