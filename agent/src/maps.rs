//! Typed views of veer's maps, from a freshly loaded object or from the pins (the CLI reads the
//! pins so it works while the agent is down), and the user-space side of their rules: decoding
//! trie keys into prefixes, reading the maps into rows ([`Snapshot`]), flow-key addresses
//! ([`addr16`], [`to_addr16`]), map occupancy ([`read_occupancy`]), counter and flow-field names
//! ([`named_counters`], [`counter_class`], [`kind_name`]), the datapath's clock
//! ([`monotonic_coarse_ns`]) and the read-modify-write of the configuration entry
//! ([`Maps::set_debug_flag`]). The rules the datapath shares (key layouts, timeouts, reverse keys)
//! are in `veer_common`; `cli` only renders what this module decodes, and the metrics read it too.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use veer_common::{
    AddrKey, AddrOwner, Config, FAMILY_V4, FAMILY_V6, FLOW_NATIVE, FLOW_REVNAT, FLOW_STEER,
    FlowKey, FlowValue, IFACE_F_V4, IFACE_F_V6, IfaceInfo, IfaceKey, Rule4Key, Rule6Key, RuleStats,
    RuleValue, ST_CLOSING, ST_EST, ST_NONE, ST_SYN, maps as names, paths, stats,
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
    /// Managed interfaces' addresses → owning interface (source-based egress).
    pub addrs: HashMap<MapData, AddrKey, AddrOwner>,
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
            addrs: typed(names::ADDRS, take(names::ADDRS)?)?,
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
            addrs: typed(names::ADDRS, open(names::ADDRS)?)?,
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

    /// The entry the datapath would use for `dst` in `ruleset`: the kernel's own longest-prefix
    /// match, asked with a full-length key ([`host_key4`], [`host_key6`]).
    pub fn longest_match(&self, ruleset: u32, dst: IpAddr) -> Result<RuleValue, MapError> {
        match dst {
            IpAddr::V4(a) => self.rules4.get(&host_key4(ruleset, a), 0),
            IpAddr::V6(a) => self.rules6.get(&host_key6(ruleset, a), 0),
        }
    }

    /// The configuration entry as stored (an entry never written is all zeros: every default,
    /// debug off; see [`Config::timeout_s`]).
    pub fn config_entry(&self) -> Result<Config, MapsError> {
        self.config.get(&0, 0).map_err(|source| MapsError::Map {
            name: names::CONFIG,
            source,
        })
    }

    /// Sets or clears `CFG_F_DEBUG` in `VEER_CONFIG_V1` by read-modify-write: every other field
    /// (an operator's timeouts) is written back as read. Returns whether the entry was written
    /// (not when the flag already had that value).
    pub fn set_debug_flag(&mut self, on: bool) -> Result<bool, MapsError> {
        let current = self.config_entry()?;
        if current.debug() == on {
            return Ok(false);
        }
        self.config
            .set(0, current.with_debug(on), 0)
            .map_err(|source| MapsError::Map {
                name: names::CONFIG,
                source,
            })?;
        Ok(true)
    }
}

/// The trie key of an IPv4 rule `net` in `ruleset` (host bits cleared).
pub fn rule4_key(ruleset: u32, net: Ipv4Net) -> Key<Rule4Key> {
    let net = net.trunc();
    Key::new(
        Rule4Key::prefix_len(net.prefix_len()),
        Rule4Key::new(ruleset, net.addr().octets()),
    )
}

/// The trie key of an IPv6 rule `net` in `ruleset` (host bits cleared).
pub fn rule6_key(ruleset: u32, net: Ipv6Net) -> Key<Rule6Key> {
    let net = net.trunc();
    Key::new(
        Rule6Key::prefix_len(net.prefix_len()),
        Rule6Key::new(ruleset, net.addr().octets()),
    )
}

/// The full-length key of one address in `ruleset`: what the datapath looks up (the kernel's
/// longest-prefix match answers it).
pub fn host_key4(ruleset: u32, a: Ipv4Addr) -> Key<Rule4Key> {
    Key::new(
        Rule4Key::HOST_PREFIX_LEN,
        Rule4Key::new(ruleset, a.octets()),
    )
}

/// See [`host_key4`].
pub fn host_key6(ruleset: u32, a: Ipv6Addr) -> Key<Rule6Key> {
    Key::new(
        Rule6Key::HOST_PREFIX_LEN,
        Rule6Key::new(ruleset, a.octets()),
    )
}

/// (ruleset, prefix) of an IPv4 trie key; `None` for a key no agent writes (prefix length
/// outside the ruleset + address bits).
pub fn decode_rule4(k: &Key<Rule4Key>) -> Option<(u32, Ipv4Net)> {
    let len = Rule4Key::addr_prefix_len(k.prefix_len())?;
    let d = k.data();
    Ipv4Net::new(d.addr.into(), len)
        .ok()
        .map(|n| (d.ruleset(), n))
}

/// See [`decode_rule4`].
pub fn decode_rule6(k: &Key<Rule6Key>) -> Option<(u32, Ipv6Net)> {
    let len = Rule6Key::addr_prefix_len(k.prefix_len())?;
    let d = k.data();
    Ipv6Net::new(d.addr.into(), len)
        .ok()
        .map(|n| (d.ruleset(), n))
}

/// One live entry of a rule trie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRule {
    pub ruleset: u32,
    pub prefix: IpNet,
    pub value: RuleValue,
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

/// Every entry of both rule tries.
pub fn read_rules(maps: &Maps) -> Result<Vec<LiveRule>, MapsError> {
    let mut out = Vec::new();
    for r in maps.rules4.iter() {
        let (k, value) = r.map_err(map_err(names::RULES4))?;
        if let Some((ruleset, n)) = decode_rule4(&k) {
            out.push(LiveRule {
                ruleset,
                prefix: IpNet::V4(n),
                value,
            });
        }
    }
    for r in maps.rules6.iter() {
        let (k, value) = r.map_err(map_err(names::RULES6))?;
        if let Some((ruleset, n)) = decode_rule6(&k) {
            out.push(LiveRule {
                ruleset,
                prefix: IpNet::V6(n),
                value,
            });
        }
    }
    Ok(out)
}

/// The decoded contents of the pinned maps.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub rules: Vec<LiveRule>,
    pub ifaces: Vec<(IfaceKey, IfaceInfo)>,
    pub flows: Vec<(FlowKey, FlowValue)>,
    pub stats: Vec<u64>,
    /// The configuration entry as stored (zero fields: defaults).
    pub config: Config,
}

impl Snapshot {
    /// Reads every map (flows can be skipped: the table may hold 65 536 entries).
    pub fn read(maps: &Maps, with_flows: bool) -> Result<Self, MapsError> {
        let mut rules = read_rules(maps)?;
        rules.sort_by_key(|r| (r.ruleset, r.prefix));
        let mut ifaces = Vec::new();
        for r in maps.ifaces.iter() {
            ifaces.push(r.map_err(map_err(names::IFACES))?);
        }
        ifaces.sort_by_key(|(k, v)| (v.netns_cookie, k.ifindex));
        let mut flows = Vec::new();
        if with_flows {
            for r in maps.flows.iter() {
                match r {
                    Ok(kv) => flows.push(kv),
                    // An LRU entry can vanish between listing and lookup.
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(names::FLOWS)(e)),
                }
            }
        }
        Ok(Self {
            rules,
            ifaces,
            flows,
            stats: maps.stats_totals()?.to_vec(),
            config: maps.config_entry()?,
        })
    }

    /// Distinct non-zero rule ids referenced by the tries.
    pub fn rule_ids(&self) -> BTreeSet<u32> {
        self.rules
            .iter()
            .map(|r| r.value.rule_id)
            .filter(|id| *id != 0)
            .collect()
    }
}

/// An address stored in 16 bytes (IPv4 in the first four), as in flow keys and values.
pub fn addr16(v4: bool, b: &[u8; 16]) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

/// The family ([`FAMILY_V4`]/[`FAMILY_V6`]) and 16-byte form of `a`: the inverse of [`addr16`].
pub fn to_addr16(a: IpAddr) -> (u8, [u8; 16]) {
    match a {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    }
}

/// The addresses an interface entry carries (those its flags mark), in flow-key form: the
/// source addresses of the pod's outgoing flows.
pub fn iface_addrs16(v: &IfaceInfo) -> impl Iterator<Item = [u8; 16]> {
    let v4 = (v.flags & IFACE_F_V4 != 0).then(|| to_addr16(IpAddr::from(v.addr4)).1);
    let v6 = (v.flags & IFACE_F_V6 != 0).then_some(v.addr6);
    v4.into_iter().chain(v6)
}

/// Occupancy of one map.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MapUse {
    /// Map name (`VEER_RULES4_V1`, …); for `VEER_RSTATS_V1`, the rule ids in use.
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
    /// `entries / capacity`, 0..1.
    pub ratio: f64,
}

/// Occupancy of the maps that fill up: both tries, interfaces, flows, rule ids.
pub fn occupancy(rules4: u64, rules6: u64, ifaces: u64, flows: u64, rule_ids: u64) -> Vec<MapUse> {
    let u = |map, entries: u64, capacity: u32| MapUse {
        map,
        entries,
        capacity: u64::from(capacity),
        ratio: entries as f64 / f64::from(capacity.max(1)),
    };
    vec![
        u(names::RULES4, rules4, names::RULES_MAX),
        u(names::RULES6, rules6, names::RULES_MAX),
        u(names::IFACES, ifaces, names::IFACES_MAX),
        u(names::FLOWS, flows, names::FLOWS_MAX),
        // Ids are 1..RULE_STATS_MAX.
        u(names::RULE_STATS, rule_ids, names::RULE_STATS_MAX - 1),
    ]
}

/// Counts the keys of a map without reading values (cheaper for the flow table).
pub fn count_keys<I, K>(keys: I) -> u64
where
    I: Iterator<Item = Result<K, MapError>>,
{
    keys.filter(Result::is_ok).count() as u64
}

/// Occupancy read from live maps (keys only).
pub fn read_occupancy(maps: &Maps) -> Result<Vec<MapUse>, MapsError> {
    let rules = read_rules(maps)?;
    let v4 = rules.iter().filter(|r| r.prefix.addr().is_ipv4()).count() as u64;
    let ids: BTreeSet<u32> = rules
        .iter()
        .map(|r| r.value.rule_id)
        .filter(|i| *i != 0)
        .collect();
    Ok(occupancy(
        v4,
        rules.len() as u64 - v4,
        count_keys(maps.ifaces.keys()),
        count_keys(maps.flows.keys()),
        ids.len() as u64,
    ))
}

/// The class of a counter of [`veer_common::stats`]: `family`, `pass`, `steer`, `revnat`,
/// `drop`, `error` or `side`.
pub fn counter_class(name: &str) -> &'static str {
    // Source-based egress (redirected to the interface owning the source, untranslated) is a
    // steer verdict; `src_foreign` is a side counter.
    if name == "src_egress" {
        return "steer";
    }
    match name.split('_').next().unwrap_or("") {
        "pkt" => "family",
        "pass" => "pass",
        "steer" => "steer",
        "revnat" => "revnat",
        "drop" => "drop",
        "err" => "error",
        _ => "side",
    }
}

/// `(name, value)` of every counter that is not reserved.
pub fn named_counters(totals: &[u64]) -> impl Iterator<Item = (&'static str, u64)> + '_ {
    stats::NAMES
        .iter()
        .zip(totals.iter().copied())
        .filter(|(n, _)| !n.starts_with("reserved"))
        .map(|(n, v)| (*n, v))
}

/// Name of a flow kind (`FlowValue::kind`): `steer`, `native`, `revnat` or the number.
pub fn kind_name(k: u8) -> String {
    match k {
        FLOW_STEER => "steer".into(),
        FLOW_NATIVE => "native".into(),
        FLOW_REVNAT => "revnat".into(),
        n => n.to_string(),
    }
}

/// Name of a TCP state (`FlowValue::state`): `none`, `syn`, `established`, `closing` or the
/// number.
pub fn state_name(s: u8) -> String {
    match s {
        ST_NONE => "none".into(),
        ST_SYN => "syn".into(),
        ST_EST => "established".into(),
        ST_CLOSING => "closing".into(),
        n => n.to_string(),
    }
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`, which
/// stamps `FlowValue::last_seen_ns` and `created_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn trie_keys_truncate_and_decode_to_the_prefix() {
        let k = rule4_key(3, "10.1.2.3/8".parse().unwrap());
        assert_eq!(k.prefix_len(), 40);
        assert_eq!(k.data().addr, [10, 0, 0, 0]);
        assert_eq!(decode_rule4(&k), Some((3, "10.0.0.0/8".parse().unwrap())));
        let h = host_key6(1, "fd00::1".parse().unwrap());
        assert_eq!(decode_rule6(&h), Some((1, "fd00::1/128".parse().unwrap())));
        let bad = Key::new(20, Rule4Key::new(3, [10, 0, 0, 0]));
        assert_eq!(decode_rule4(&bad), None, "ruleset bits incomplete");
    }

    #[test]
    fn counters_are_named_and_classed_by_prefix_without_reserved_slots() {
        assert_eq!(counter_class("drop_too_big"), "drop");
        assert_eq!(counter_class("err_rewrite"), "error");
        assert_eq!(counter_class("pkt_ipv4"), "family");
        assert_eq!(counter_class("mss_clamped"), "side");
        assert_eq!(counter_class("flow_half_evicted"), "side");
        let named: Vec<_> = named_counters(&[7; stats::COUNT as usize]).collect();
        assert_eq!(named.len(), 31);
        assert!(
            named
                .iter()
                .all(|(n, v)| !n.starts_with("reserved") && *v == 7)
        );
    }

    #[test]
    fn occupancy_ratios_and_the_rule_id_capacity() {
        let o = occupancy(3, 0, 1, 65_536, 2);
        assert_eq!(o[0].map, names::RULES4);
        assert_eq!(o[3].ratio, 1.0);
        assert_eq!(o[4].capacity, 16_383);
        let keys = [Ok(1u32), Err(MapError::KeyNotFound), Ok(2)];
        assert_eq!(
            count_keys(keys.into_iter()),
            2,
            "vanished keys are not counted"
        );
    }

    #[test]
    fn flow_kinds_and_states_have_names_and_unknown_ones_their_number() {
        assert_eq!(kind_name(FLOW_STEER), "steer");
        assert_eq!(kind_name(FLOW_REVNAT), "revnat");
        assert_eq!(kind_name(99), "99");
        assert_eq!(state_name(ST_EST), "established");
        assert_eq!(state_name(42), "42");
    }

    #[test]
    fn iface_addresses_are_the_flagged_ones_in_flow_key_form() {
        let mut v = IfaceInfo {
            addr4: [10, 0, 0, 5],
            addr6: "fd00::5".parse::<Ipv6Addr>().unwrap().octets(),
            flags: IFACE_F_V4,
            ..Default::default()
        };
        let a: Vec<_> = iface_addrs16(&v).collect();
        assert_eq!(a, vec![to_addr16("10.0.0.5".parse().unwrap()).1]);
        v.flags = IFACE_F_V4 | IFACE_F_V6;
        let a: Vec<_> = iface_addrs16(&v).collect();
        assert_eq!(
            a,
            vec![[10, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], v.addr6]
        );
        v.flags = 0;
        assert_eq!(iface_addrs16(&v).count(), 0);
    }

    #[test]
    fn the_clock_is_the_coarse_monotonic_one() {
        let a = monotonic_coarse_ns();
        assert!(a > 0);
        assert!(monotonic_coarse_ns() >= a);
    }

    proptest! {
        #[test]
        fn rule4_key_decodes_to_its_truncated_prefix(
            rs in any::<u32>(), a in any::<u32>(), len in 0u8..=32
        ) {
            let net = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap();
            prop_assert_eq!(decode_rule4(&rule4_key(rs, net)), Some((rs, net.trunc())));
        }

        #[test]
        fn rule6_key_decodes_to_its_truncated_prefix(
            rs in any::<u32>(), a in any::<u128>(), len in 0u8..=128
        ) {
            let net = Ipv6Net::new(Ipv6Addr::from(a), len).unwrap();
            prop_assert_eq!(decode_rule6(&rule6_key(rs, net)), Some((rs, net.trunc())));
        }

        #[test]
        fn addr16_round_trips(v4 in any::<u32>(), v6 in any::<u128>()) {
            for a in [IpAddr::from(Ipv4Addr::from(v4)), IpAddr::from(Ipv6Addr::from(v6))] {
                let (family, b) = to_addr16(a);
                prop_assert_eq!(addr16(family == FAMILY_V4, &b), a);
            }
        }
    }
}
