//! Typed views of veer's maps, from a freshly loaded object or from the pins (the CLI reads the
//! pins so it works while the agent is down).

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use ipnet::{Ipv4Net, Ipv6Net};
use veer_common::{
    Config, FlowKey, FlowValue, IfaceInfo, IfaceKey, RULESET_BITS, Rule4Key, Rule6Key, RuleStats,
    RuleValue, maps as names, paths, stats,
};

use crate::dataplane::{Dataplane, DataplaneError};

/// Errors of map access.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("opening pinned map {path} (is the agent's pin root right, and are you root?)")]
    Pin {
        path: PathBuf,
        #[source]
        source: MapError,
    },
}

/// All of veer's maps, typed.
pub struct Maps {
    pub rules4: LpmTrie<MapData, Rule4Key, RuleValue>,
    pub rules6: LpmTrie<MapData, Rule6Key, RuleValue>,
    pub ifaces: HashMap<MapData, IfaceKey, IfaceInfo>,
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
    pub stats: PerCpuArray<MapData, u64>,
    pub rule_stats: PerCpuArray<MapData, RuleStats>,
    pub config: Array<MapData, Config>,
}

fn typed<T>(name: &'static str, map: Map) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(|source| MapsError::Map { name, source })
}

impl Maps {
    /// Takes the maps out of a loaded object.
    pub fn from_dataplane(dp: &mut Dataplane) -> Result<Self, MapsError> {
        let mut take = |name| dp.take_map(name);
        Ok(Self {
            rules4: typed(names::RULES4, take(names::RULES4)?)?,
            rules6: typed(names::RULES6, take(names::RULES6)?)?,
            ifaces: typed(names::IFACES, take(names::IFACES)?)?,
            flows: typed(names::FLOWS, take(names::FLOWS)?)?,
            stats: typed(names::STATS, take(names::STATS)?)?,
            rule_stats: typed(names::RULE_STATS, take(names::RULE_STATS)?)?,
            config: typed(names::CONFIG, take(names::CONFIG)?)?,
        })
    }

    /// Opens the maps pinned under `root/maps`.
    pub fn open_pinned(root: &Path) -> Result<Self, MapsError> {
        let dir = root.join(paths::MAPS_DIR);
        let open = |name: &'static str| -> Result<Map, MapsError> {
            let path = dir.join(name);
            let data =
                MapData::from_pin(&path).map_err(|source| MapsError::Pin { path, source })?;
            Map::from_map_data(data).map_err(|source| MapsError::Map { name, source })
        };
        Ok(Self {
            rules4: typed(names::RULES4, open(names::RULES4)?)?,
            rules6: typed(names::RULES6, open(names::RULES6)?)?,
            ifaces: typed(names::IFACES, open(names::IFACES)?)?,
            flows: typed(names::FLOWS, open(names::FLOWS)?)?,
            stats: typed(names::STATS, open(names::STATS)?)?,
            rule_stats: typed(names::RULE_STATS, open(names::RULE_STATS)?)?,
            config: typed(names::CONFIG, open(names::CONFIG)?)?,
        })
    }

    /// Every reason counter summed over CPUs, indexed like [`veer_common::stats`].
    pub fn stats_totals(&self) -> Result<[u64; stats::COUNT as usize], MapsError> {
        let mut out = [0u64; stats::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self
                .stats
                .get(&(i as u32), 0)
                .map_err(|source| MapsError::Map {
                    name: names::STATS,
                    source,
                })?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// A rule's counters summed over CPUs.
    pub fn rule_totals(&self, rule_id: u32) -> Result<RuleStats, MapsError> {
        let per_cpu = self
            .rule_stats
            .get(&rule_id, 0)
            .map_err(|source| MapsError::Map {
                name: names::RULE_STATS,
                source,
            })?;
        Ok(per_cpu.iter().fold(RuleStats::default(), |a, s| RuleStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
        }))
    }
}

/// The trie key of an IPv4 rule `net` in `ruleset`.
pub fn rule4_key(ruleset: u32, net: Ipv4Net) -> Key<Rule4Key> {
    let net = net.trunc();
    Key::new(
        RULESET_BITS + u32::from(net.prefix_len()),
        Rule4Key {
            ruleset_be: ruleset.to_be(),
            addr: net.addr().octets(),
        },
    )
}

/// The trie key of an IPv6 rule `net` in `ruleset`.
pub fn rule6_key(ruleset: u32, net: Ipv6Net) -> Key<Rule6Key> {
    let net = net.trunc();
    Key::new(
        RULESET_BITS + u32::from(net.prefix_len()),
        Rule6Key {
            ruleset_be: ruleset.to_be(),
            addr: net.addr().octets(),
        },
    )
}
