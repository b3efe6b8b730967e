//! The read-only side of the `veer` command: `status`, `maps`, `flows`, `trace`.
//!
//! Everything here reads the pinned maps directly ([`Maps::open_pinned`]) plus the agent's status
//! file and [rule index](index), so it works while the agent is down. Each command builds a
//! report struct (its JSON form, `-o json`, has stable field names documented in
//! `docs/operations.md`) from decoded data with a pure function, then renders it as a table or
//! JSON; the pure parts are unit-tested without maps.

pub mod flows;
/// The rule index is the report's (the CLI reads it): re-exported under its old path.
pub use crate::report::index;
pub mod maps;
pub mod status;
pub mod trace;

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use veer_common::{
    Config, FlowKey, FlowValue, IfaceInfo, IfaceKey, RULESET_BITS, RuleValue, maps as names, stats,
};

use crate::maps::{Maps, MapsError};

/// One live entry of a rule trie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRule {
    pub ruleset: u32,
    pub prefix: IpNet,
    pub value: RuleValue,
}

/// The decoded contents of the pinned maps.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub rules: Vec<LiveRule>,
    pub ifaces: Vec<(IfaceKey, IfaceInfo)>,
    pub flows: Vec<(FlowKey, FlowValue)>,
    pub stats: Vec<u64>,
    pub config: Config,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
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
                    Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(names::FLOWS)(e)),
                }
            }
        }
        let config = maps.config.get(&0, 0).map_err(map_err(names::CONFIG))?;
        Ok(Self {
            rules,
            ifaces,
            flows,
            stats: maps.stats_totals()?.to_vec(),
            config,
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

/// Every entry of both rule tries.
pub fn read_rules(maps: &Maps) -> Result<Vec<LiveRule>, MapsError> {
    let mut out = Vec::new();
    for r in maps.rules4.iter() {
        let (k, value) = r.map_err(map_err(names::RULES4))?;
        let d = k.data();
        let len = k.prefix_len().saturating_sub(RULESET_BITS) as u8;
        if let Ok(n) = Ipv4Net::new(d.addr.into(), len) {
            out.push(LiveRule {
                ruleset: u32::from_be(d.ruleset_be),
                prefix: IpNet::V4(n),
                value,
            });
        }
    }
    for r in maps.rules6.iter() {
        let (k, value) = r.map_err(map_err(names::RULES6))?;
        let d = k.data();
        let len = k.prefix_len().saturating_sub(RULESET_BITS) as u8;
        if let Ok(n) = Ipv6Net::new(d.addr.into(), len) {
            out.push(LiveRule {
                ruleset: u32::from_be(d.ruleset_be),
                prefix: IpNet::V6(n),
                value,
            });
        }
    }
    Ok(out)
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
    I: Iterator<Item = Result<K, aya::maps::MapError>>,
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

/// An address stored in 16 bytes (IPv4 in the first four).
pub fn addr16(v4: bool, b: &[u8; 16]) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_str(m: &[u8; 6]) -> String {
    let mut s = String::with_capacity(17);
    for (i, b) in m.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_coarse_ns` (the coarse variant
/// lags by at most a tick).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A plain text table: left-aligned columns separated by two spaces, header first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let _ = write!(s, "{c:<width$}", width = w.get(i).copied().unwrap_or(0));
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut headers.iter().copied());
    for r in rows {
        line(&mut out, &mut r.iter().map(String::as_str));
    }
    out
}

/// `-` for a missing value.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Human-readable count of bytes (`1.5 MiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims() {
        let t = table(
            &["A", "LONGER"],
            &[vec!["xyz".into(), "1".into()], vec!["q".into(), "".into()]],
        );
        assert_eq!(t, "A    LONGER\nxyz  1\nq\n");
    }

    #[test]
    fn decoding_helpers() {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(addr16(true, &b).to_string(), "10.0.0.1");
        assert_eq!(mac_str(&[2, 0, 0, 0, 0xab, 1]), "02:00:00:00:ab:01");
        assert_eq!(proto_name(6), "tcp");
        assert_eq!(proto_name(132), "132");
        assert_eq!(counter_class("drop_too_big"), "drop");
        assert_eq!(counter_class("err_rewrite"), "error");
        assert_eq!(counter_class("mss_clamped"), "side");
        assert_eq!(counter_class("flow_half_evicted"), "side");
        assert_eq!(named_counters(&[0; 32]).count(), 29);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        let o = occupancy(3, 0, 1, 65_536, 2);
        assert_eq!(o[3].ratio, 1.0);
        assert_eq!(o[4].capacity, 16_383);
        assert!(monotonic_ns() > 0);
    }
}
