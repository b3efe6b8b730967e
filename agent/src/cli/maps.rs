//! `veer maps`: the rule tries (both families, every ruleset) joined with the rule index and the
//! per-rule counters, the interface table and the run-time configuration, decoded.

use std::{collections::HashMap, fmt::Write as _, net::IpAddr};

use serde::Serialize;
use veer_common::{
    Config, IFACE_F_GW4, IFACE_F_GW6, IFACE_F_V4, IFACE_F_V6, IfaceInfo, IfaceKey, MAX_SLOTS,
    RuleStats,
};

use super::{human_bytes, mac_str, or_dash, table};
use crate::maps::LiveRule;
use crate::report::PodReport;
use crate::report::index::{RuleIndex, via_of};

/// One trie entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRow {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    pub ruleset: u32,
    pub prefix: String,
    pub rule_id: u32,
    pub slot: u16,
    /// Interface name of the slot (from the rule index or the status file).
    pub dev: Option<String>,
    pub via: Option<IpAddr>,
    /// Originating Route and the rule's field path (from the rule index).
    pub route: Option<String>,
    pub entry: Option<String>,
    pub service: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    /// Whether the rule index (the agent's last applied state) has this exact entry with this
    /// value; `false` means the live map and the agent disagree (or there is no index).
    pub in_index: bool,
}

/// A slot of a pod interface's slot table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotTarget {
    pub slot: u16,
    pub dev: Option<String>,
    pub ifindex: u32,
    pub mac: String,
}

/// One `VEER_IFACES_V1` entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IfaceRow {
    /// `namespace/name` when the status file knows the namespace cookie.
    pub pod: Option<String>,
    pub netns_cookie: u64,
    pub ifindex: u32,
    pub mac: String,
    pub dev: Option<String>,
    pub slot: u32,
    pub ruleset: u32,
    pub mtu: u32,
    pub addr4: Option<IpAddr>,
    pub gw4: Option<IpAddr>,
    pub addr6: Option<IpAddr>,
    pub gw6: Option<IpAddr>,
    /// The pod's interfaces by slot (the targets rules can select).
    pub targets: Vec<SlotTarget>,
}

/// `VEER_CONFIG_V1` as in force: each zero field shows its default ([`Config::effective`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigRow {
    pub debug: bool,
    pub tcp_syn_timeout_s: u32,
    pub tcp_est_timeout_s: u32,
    pub tcp_close_timeout_s: u32,
    pub other_timeout_s: u32,
}

/// The effective configuration (each zero field: that field's default).
pub fn effective_config(c: &Config) -> ConfigRow {
    let e = c.effective();
    ConfigRow {
        debug: e.debug(),
        tcp_syn_timeout_s: e.tcp_syn_timeout_s,
        tcp_est_timeout_s: e.tcp_est_timeout_s,
        tcp_close_timeout_s: e.tcp_close_timeout_s,
        other_timeout_s: e.other_timeout_s,
    }
}

impl ConfigRow {
    /// The row as a configuration entry (every field set), to ask [`Config::timeout_s`].
    pub fn as_config(&self) -> Config {
        Config {
            flags: if self.debug {
                veer_common::CFG_F_DEBUG
            } else {
                0
            },
            tcp_syn_timeout_s: self.tcp_syn_timeout_s,
            tcp_est_timeout_s: self.tcp_est_timeout_s,
            tcp_close_timeout_s: self.tcp_close_timeout_s,
            other_timeout_s: self.other_timeout_s,
            _pad: [0; 3],
        }
    }
}

/// The whole `veer maps` answer.
#[derive(Debug, Clone, Serialize)]
pub struct MapsReport {
    pub rules: Vec<RuleRow>,
    pub interfaces: Vec<IfaceRow>,
    pub config: ConfigRow,
    /// Why the rule index could not be used (rows then lack Route and entry).
    pub rule_index_error: Option<String>,
}

/// Slot → interface name, from the index when it has slots, else from the status file.
pub fn slot_names(
    index: Option<&RuleIndex>,
    status_slots: &[(String, u16)],
) -> HashMap<u16, String> {
    let mut m: HashMap<u16, String> = status_slots.iter().map(|(d, s)| (*s, d.clone())).collect();
    if let Some(i) = index {
        for s in &i.slots {
            m.insert(s.slot, s.dev.clone());
        }
    }
    m
}

/// Decodes the trie entries.
pub fn rule_rows(
    rules: &[LiveRule],
    index: Option<&RuleIndex>,
    slots: &HashMap<u16, String>,
    totals: &dyn Fn(u32) -> Option<RuleStats>,
) -> Vec<RuleRow> {
    let by_prefix = index.map(RuleIndex::by_prefix).unwrap_or_default();
    rules
        .iter()
        .map(|r| {
            let e = by_prefix.get(&(r.ruleset, r.prefix)).copied();
            let t = if r.value.rule_id == 0 {
                None
            } else {
                totals(r.value.rule_id)
            }
            .unwrap_or_default();
            RuleRow {
                family: if r.prefix.addr().is_ipv4() {
                    "ipv4"
                } else {
                    "ipv6"
                },
                ruleset: r.ruleset,
                prefix: r.prefix.to_string(),
                rule_id: r.value.rule_id,
                slot: r.value.slot,
                dev: slots.get(&r.value.slot).cloned(),
                via: via_of(&r.value, r.prefix),
                route: e.map(|e| e.route.clone()),
                entry: e.map(|e| e.path.clone()),
                service: e.and_then(|e| e.service.clone()),
                packets: t.packets,
                bytes: t.bytes,
                in_index: e.is_some_and(|e| e.value() == r.value),
            }
        })
        .collect()
}

fn v4(b: [u8; 4], ok: bool) -> Option<IpAddr> {
    ok.then(|| IpAddr::from(b))
}

fn v6(b: [u8; 16], ok: bool) -> Option<IpAddr> {
    ok.then(|| IpAddr::from(b))
}

/// Decodes one interface entry.
pub fn iface_row(
    k: &IfaceKey,
    v: &IfaceInfo,
    slots: &HashMap<u16, String>,
    pods: &[PodReport],
) -> IfaceRow {
    let name = |s: u16| slots.get(&s).cloned();
    IfaceRow {
        pod: pods
            .iter()
            .find(|p| p.netns_cookie == Some(v.netns_cookie))
            .map(|p| p.pod.clone()),
        netns_cookie: v.netns_cookie,
        ifindex: k.ifindex,
        mac: mac_str(&k.mac),
        dev: u16::try_from(v.slot).ok().and_then(name),
        slot: v.slot,
        ruleset: v.ruleset,
        mtu: v.mtu,
        addr4: v4(v.addr4, v.flags & IFACE_F_V4 != 0),
        gw4: v4(v.gw4, v.flags & IFACE_F_GW4 != 0),
        addr6: v6(v.addr6, v.flags & IFACE_F_V6 != 0),
        gw6: v6(v.gw6, v.flags & IFACE_F_GW6 != 0),
        targets: (0..MAX_SLOTS)
            .filter(|s| v.slots[*s] != 0)
            .map(|s| SlotTarget {
                slot: s as u16,
                dev: name(s as u16),
                ifindex: v.slots[s],
                mac: mac_str(&v.slot_macs[s]),
            })
            .collect(),
    }
}

/// The table form.
pub fn render(r: &MapsReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Rules (VEER_RULES4_V1, VEER_RULES6_V1): {}",
        r.rules.len()
    );
    let rows: Vec<Vec<String>> = r
        .rules
        .iter()
        .map(|x| {
            let origin = match (&x.route, &x.entry) {
                (Some(route), Some(e)) => {
                    let mut s = format!("{route} {e}");
                    if let Some(svc) = &x.service {
                        let _ = write!(s, " ({svc})");
                    }
                    if !x.in_index {
                        s.push_str(" [live value differs]");
                    }
                    s
                }
                _ => "? (not in the rule index)".into(),
            };
            vec![
                x.ruleset.to_string(),
                x.prefix.clone(),
                format!("{} (slot {})", x.dev.as_deref().unwrap_or("?"), x.slot),
                or_dash(x.via),
                origin,
                x.rule_id.to_string(),
                x.packets.to_string(),
                human_bytes(x.bytes),
            ]
        })
        .collect();
    o.push_str(&table(
        &[
            "RULESET",
            "PREFIX",
            "INTERFACE",
            "VIA",
            "ROUTE/ENTRY",
            "ID",
            "PACKETS",
            "BYTES",
        ],
        &rows,
    ));
    if let Some(e) = &r.rule_index_error {
        let _ = writeln!(o, "  rule index unavailable: {e}");
    }
    let _ = writeln!(o, "\nInterfaces (VEER_IFACES_V1): {}", r.interfaces.len());
    let rows: Vec<Vec<String>> = r
        .interfaces
        .iter()
        .map(|i| {
            let addrs: Vec<String> = [i.addr4, i.addr6]
                .iter()
                .flatten()
                .map(ToString::to_string)
                .collect();
            let gws: Vec<String> = [i.gw4, i.gw6]
                .iter()
                .flatten()
                .map(ToString::to_string)
                .collect();
            let targets: Vec<String> = i
                .targets
                .iter()
                .map(|t| format!("{}={}", t.dev.as_deref().unwrap_or("?"), t.ifindex))
                .collect();
            vec![
                i.pod
                    .clone()
                    .unwrap_or_else(|| format!("netns {}", i.netns_cookie)),
                format!("{} (if{})", i.dev.as_deref().unwrap_or("?"), i.ifindex),
                i.mac.clone(),
                i.ruleset.to_string(),
                i.mtu.to_string(),
                if addrs.is_empty() {
                    "-".into()
                } else {
                    addrs.join(",")
                },
                if gws.is_empty() {
                    "-".into()
                } else {
                    gws.join(",")
                },
                targets.join(" "),
            ]
        })
        .collect();
    o.push_str(&table(
        &[
            "POD",
            "INTERFACE",
            "MAC",
            "RULESET",
            "MTU",
            "ADDRESS",
            "GATEWAY",
            "SLOTS",
        ],
        &rows,
    ));
    let c = &r.config;
    let _ = writeln!(
        o,
        "\nConfig (VEER_CONFIG_V1): debug={} timeouts: tcp_syn={}s tcp_est={}s tcp_close={}s other={}s",
        c.debug, c.tcp_syn_timeout_s, c.tcp_est_timeout_s, c.tcp_close_timeout_s, c.other_timeout_s
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::index::tests_support::sample_index;

    #[test]
    fn rules_join_index_and_counters_and_flag_disagreements() {
        let idx = sample_index();
        let mut live: Vec<LiveRule> = idx
            .entries
            .iter()
            .map(|e| LiveRule {
                ruleset: e.ruleset,
                prefix: e.prefix,
                value: e.value(),
            })
            .collect();
        live[0].value.slot = 7;
        live.push(LiveRule {
            ruleset: 9,
            prefix: "192.0.2.0/24".parse().unwrap(),
            value: Default::default(),
        });
        let slots = slot_names(Some(&idx), &[]);
        let totals = |id: u32| {
            Some(RuleStats {
                packets: u64::from(id),
                bytes: 100,
            })
        };
        let rows = rule_rows(&live, Some(&idx), &slots, &totals);
        assert!(!rows[0].in_index, "changed live value");
        assert!(rows[1].in_index);
        assert_eq!(rows[1].route.as_deref(), Some("demo"));
        assert_eq!(rows[1].packets, u64::from(rows[1].rule_id));
        let last = rows.last().unwrap();
        assert_eq!((last.route.as_ref(), last.in_index), (None, false));
        assert_eq!(last.packets, 0, "rule id 0 has no counters");
        let j = serde_json::to_value(&rows[1]).unwrap();
        for k in [
            "family", "ruleset", "prefix", "rule_id", "slot", "dev", "via", "route", "entry",
            "service", "packets", "bytes", "in_index",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
    }

    #[test]
    fn interface_entries_decode_addresses_gateways_and_slot_tables() {
        let mut v = IfaceInfo {
            netns_cookie: 4242,
            ruleset: 1,
            slot: 1,
            ifindex: 3,
            mtu: 1400,
            flags: IFACE_F_V4 | IFACE_F_GW4,
            addr4: [10, 124, 2, 5],
            gw4: [10, 124, 2, 1],
            ..Default::default()
        };
        v.slots[0] = 2;
        v.slots[1] = 3;
        v.slot_macs[1] = [2, 0, 0, 0, 0, 3];
        let k = IfaceKey::new(3, [2, 0, 0, 0, 0, 3]);
        let slots = slot_names(None, &[("eth0".into(), 0), ("eth1".into(), 1)]);
        let r = iface_row(&k, &v, &slots, &[]);
        assert_eq!(r.dev.as_deref(), Some("eth1"));
        assert_eq!(r.addr4, Some("10.124.2.5".parse().unwrap()));
        assert_eq!(r.gw4, Some("10.124.2.1".parse().unwrap()));
        assert_eq!(r.addr6, None);
        assert_eq!(r.targets.len(), 2);
        assert_eq!(r.targets[1].mac, "02:00:00:00:00:03");
        let c = effective_config(&Config::default());
        assert_eq!(c.tcp_est_timeout_s, 21_600);
        // The documented recipe: established TCP set, every other field zero (= default).
        let recipe = effective_config(&Config {
            tcp_est_timeout_s: 3600,
            ..Config::default()
        });
        assert_eq!(
            (
                recipe.tcp_syn_timeout_s,
                recipe.tcp_est_timeout_s,
                recipe.tcp_close_timeout_s,
                recipe.other_timeout_s
            ),
            (60, 3600, 10, 60)
        );
        assert_eq!(effective_config(&recipe.as_config()), recipe);
        let text = render(&MapsReport {
            rules: vec![],
            interfaces: vec![r],
            config: c,
            rule_index_error: None,
        });
        assert!(text.contains("eth1 (if3)"), "{text}");
    }
}
