//! `veer stats`: the packet counters of [`veer_common::stats`], named.

use std::fmt::Write as _;

use serde_json::{Map, Value};
use veer_common::stats;

use crate::maps::named_counters;

/// The JSON form: counter name → packets (reserved slots left out).
pub fn counters(totals: &[u64]) -> Map<String, Value> {
    named_counters(totals)
        .map(|(n, v)| (n.to_string(), v.into()))
        .collect()
}

/// The table form: one line per counter that is not reserved, in the counters' order.
pub fn render(totals: &[u64]) -> String {
    let mut o = format!("{:<24} {:>14}\n", "COUNTER", "PACKETS");
    for (n, v) in stats::NAMES.iter().zip(totals) {
        if !n.starts_with("reserved") {
            let _ = writeln!(o, "{n:<24} {v:>14}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals() -> Vec<u64> {
        (0..u64::from(stats::COUNT)).collect()
    }

    #[test]
    fn the_table_has_a_header_and_one_aligned_line_per_named_counter() {
        let t = render(&totals());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 1 + named_counters(&totals()).count());
        assert_eq!(lines[0], format!("{:<24} {:>14}", "COUNTER", "PACKETS"));
        assert!(lines.iter().all(|l| l.len() == 39), "{t}");
        assert!(!t.contains("reserved"));
        assert_eq!(lines[1], format!("{:<24} {:>14}", stats::NAMES[0], 0));
    }

    #[test]
    fn the_json_form_names_every_counter_but_the_reserved_ones() {
        let c = counters(&totals());
        assert_eq!(c.len(), named_counters(&totals()).count());
        let (i, name) = stats::NAMES
            .iter()
            .enumerate()
            .find(|(_, n)| !n.starts_with("reserved"))
            .unwrap();
        assert_eq!(c[*name], Value::from(i as u64));
        assert!(c.keys().all(|k| !k.starts_with("reserved")));
    }
}
