//! The read-only side of the `veer` command: `status`, `maps`, `flows`, `trace`.
//!
//! Everything here renders what [`crate::maps`] decodes from the pinned maps
//! ([`Maps::open_pinned`], [`crate::maps::Snapshot`]) plus the agent's status file and
//! [rule index](index), so it works while the agent is down. Each command builds a
//! report struct (its JSON form, `-o json`, has stable field names documented in
//! `docs/operations.md`) from decoded data with a pure function, then renders it as a table or
//! JSON; the pure parts are unit-tested without maps.

pub mod flows;
/// The rule index is the report's (the CLI reads it): re-exported under its old path.
pub use crate::report::index;
pub mod maps;
pub mod status;
pub mod trace;

use std::{collections::BTreeSet, fmt::Write as _};

use serde::Serialize;
use veer_common::{maps as names, stats};

use crate::maps::{Maps, MapsError, read_rules};

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
/// `drop`, `error` or `side`. `src_egress` (source-based egress: redirected to the interface
/// owning the source, untranslated) is a `steer` verdict; `src_foreign` is a side counter.
pub fn counter_class(name: &str) -> &'static str {
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
        assert_eq!(mac_str(&[2, 0, 0, 0, 0xab, 1]), "02:00:00:00:ab:01");
        assert_eq!(proto_name(6), "tcp");
        assert_eq!(proto_name(132), "132");
        assert_eq!(counter_class("drop_too_big"), "drop");
        assert_eq!(counter_class("err_rewrite"), "error");
        assert_eq!(counter_class("mss_clamped"), "side");
        assert_eq!(counter_class("flow_half_evicted"), "side");
        assert_eq!(counter_class("src_egress"), "steer");
        assert_eq!(counter_class("src_foreign"), "side");
        assert_eq!(named_counters(&[0; 32]).count(), 31);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        let o = occupancy(3, 0, 1, 65_536, 2);
        assert_eq!(o[3].ratio, 1.0);
        assert_eq!(o[4].capacity, 16_383);
    }
}
