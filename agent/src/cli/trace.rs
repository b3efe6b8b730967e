//! `veer trace`: how a pod's packet to a destination would be handled, without sending one.
//!
//! The decision is explained with the reference model of the lookup ([`RefRules`], the model
//! the LPM property test checks the kernel against), rebuilt from the agent's rule index, and
//! the pod's entries in `VEER_IFACES_V1`; it follows the egress program step by step (special
//! destinations, unmanaged pod, longest-prefix match in the pod's ruleset, target slot, the
//! target's address, next hop). The live trie is looked up too (a `/32` or `/128` key: the
//! kernel's own longest-prefix match), and any disagreement with the model is reported.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use serde::Serialize;
use veer_common::{
    DIR_OUT, FlowKey, FlowValue, IFACE_F_GW4, IFACE_F_GW6, IFACE_F_V4, IFACE_F_V6, IfaceInfo,
    IfaceKey, NeverSteered, RuleValue, never_steered, stats,
};

use super::flows::FlowRow;
use crate::report::PodReport;
use crate::report::index::{RuleIndex, via_of};
use crate::{
    lpm::RefRules,
    maps::{iface_addrs16, to_addr16},
};

/// Protocol of the traced packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP echo request (ICMPv6 for an IPv6 destination).
    Icmp,
}

impl Proto {
    /// `tcp`, `udp` or `icmp`.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }

    /// IP protocol number for `dst`'s family.
    pub fn number(self, dst: IpAddr) -> u8 {
        match (self, dst) {
            (Proto::Tcp, _) => 6,
            (Proto::Udp, _) => 17,
            (Proto::Icmp, IpAddr::V4(_)) => 1,
            (Proto::Icmp, IpAddr::V6(_)) => 58,
        }
    }
}

/// Parses `<ip>`, `<ipv4>:<port>` or `[<ipv6>]:<port>`.
pub fn parse_dst(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok((a, None));
    }
    s.parse::<SocketAddr>()
        .map(|sa| (sa.ip(), Some(sa.port())))
        .map_err(|_| format!("{s:?} is not an address, <ipv4>:<port> or [<ipv6>]:<port>"))
}

/// Why `dst` is never steered, if it is one of the destinations the programs leave alone
/// ([`veer_common::never_steered`], the rule the programs apply).
pub fn special_destination(dst: IpAddr) -> Option<&'static str> {
    let (family, d) = to_addr16(dst);
    never_steered(family, &d).map(NeverSteered::describe)
}

/// A matching trie entry, described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceMatch {
    pub prefix: Option<String>,
    pub rule_id: u32,
    pub slot: u16,
    pub dev: Option<String>,
    pub via: Option<IpAddr>,
    pub route: Option<String>,
    pub entry: Option<String>,
    pub service: Option<String>,
}

/// An interface of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceIface {
    pub name: Option<String>,
    pub ifindex: u32,
    pub mtu: u32,
}

/// The next hop and where it comes from: `via` (the rule), `gateway` (the target interface's
/// gateway from the pod's routes) or `on-link` (the destination itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextHop {
    pub addr: IpAddr,
    pub source: &'static str,
}

/// The live map's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveCheck {
    /// Whether the live trie could be read.
    pub looked_up: bool,
    pub matched: Option<TraceMatch>,
    /// Whether the live answer equals the model's (absent without a rule index or live map).
    pub agrees: Option<bool>,
    pub note: Option<String>,
}

/// An existing flow of the pod to the destination (it keeps its decision while it lives).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PinnedFlow {
    pub kind: String,
    pub state: String,
    pub sport: u16,
    pub dport: u16,
    pub idle_s: f64,
    pub path: String,
}

/// The whole `veer trace` answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceReport {
    pub pod: String,
    pub netns_cookie: Option<u64>,
    pub ruleset: Option<u32>,
    pub dst: IpAddr,
    pub port: Option<u16>,
    pub proto: Proto,
    /// `steer`, `pass`, `never_steered` or `unmanaged`.
    pub verdict: &'static str,
    /// The `VEER_STATS_V1` counter a first packet would increment.
    pub counter: &'static str,
    pub reason: String,
    /// The rule the model selects.
    pub matched: Option<TraceMatch>,
    /// Interfaces whose packets to `dst` are moved (managed interfaces other than the target).
    pub from_interfaces: Vec<TraceIface>,
    pub out_interface: Option<TraceIface>,
    pub next_hop: Option<NextHop>,
    /// The packet's source address after translation.
    pub source_address: Option<IpAddr>,
    pub live: LiveCheck,
    pub pinned_flows: Vec<PinnedFlow>,
    pub notes: Vec<String>,
}

/// What [`explain`] needs.
pub struct TraceInput<'a> {
    pub pod: String,
    pub netns_cookie: Option<u64>,
    /// The pod's entries in `VEER_IFACES_V1`.
    pub ifaces: &'a [(IfaceKey, IfaceInfo)],
    /// The pod as the status file reports it (for skipped interfaces).
    pub status_pod: Option<&'a PodReport>,
    pub slots: &'a HashMap<u16, String>,
    pub index: Option<&'a RuleIndex>,
    /// The kernel's answer for the pod's ruleset: `None` = not looked up, `Some(None)` = no
    /// match.
    pub live: Option<Option<RuleValue>>,
    /// The live trie's entries as a model (to name the prefix the kernel matched).
    pub live_rules: Option<&'a RefRules>,
    pub dst: IpAddr,
    pub port: Option<u16>,
    pub proto: Proto,
    /// Decoded flows of the pod to `dst`.
    pub flows: &'a [FlowRow],
}

fn name(c: u32) -> &'static str {
    stats::NAMES[c as usize]
}

fn describe(
    v: &RuleValue,
    prefix: Option<ipnet::IpNet>,
    index: Option<&RuleIndex>,
    ruleset: u32,
    slots: &HashMap<u16, String>,
) -> TraceMatch {
    let e = prefix.and_then(|p| {
        index.and_then(|i| {
            i.entries
                .iter()
                .find(|e| e.ruleset == ruleset && e.prefix == p)
        })
    });
    TraceMatch {
        prefix: prefix.map(|p| p.to_string()),
        rule_id: v.rule_id,
        slot: v.slot,
        dev: slots.get(&v.slot).cloned(),
        via: prefix.and_then(|p| via_of(v, p)),
        route: e.map(|e| e.route.clone()),
        entry: e.map(|e| e.path.clone()),
        service: e.and_then(|e| e.service.clone()),
    }
}

fn iface_of(info: &IfaceInfo, slots: &HashMap<u16, String>) -> TraceIface {
    TraceIface {
        name: u16::try_from(info.slot)
            .ok()
            .and_then(|s| slots.get(&s).cloned()),
        ifindex: info.ifindex,
        mtu: info.mtu,
    }
}

/// Explains the decision (see the module documentation).
pub fn explain(i: &TraceInput<'_>) -> TraceReport {
    let mut r = TraceReport {
        pod: i.pod.clone(),
        netns_cookie: i.netns_cookie,
        ruleset: i
            .ifaces
            .first()
            .map(|(_, v)| v.ruleset)
            .or(i.status_pod.and_then(|p| p.ruleset)),
        dst: i.dst,
        port: i.port,
        proto: i.proto,
        verdict: "pass",
        counter: name(stats::PASS_NO_RULE),
        reason: String::new(),
        matched: None,
        from_interfaces: Vec::new(),
        out_interface: None,
        next_hop: None,
        source_address: None,
        live: LiveCheck {
            looked_up: false,
            matched: None,
            agrees: None,
            note: None,
        },
        pinned_flows: i
            .flows
            .iter()
            .filter(|f| f.direction == "out")
            .map(|f| PinnedFlow {
                kind: f.kind.clone(),
                state: f.state.clone(),
                sport: f.sport,
                dport: f.dport,
                idle_s: f.idle_s,
                path: f.path.clone(),
            })
            .collect(),
        notes: Vec::new(),
    };
    let ruleset = r.ruleset;

    // The model's answer and the live map's.
    let model = i.index.map(RuleIndex::model);
    let model_hit = match (&model, ruleset) {
        (Some(m), Some(rs)) => m.lookup(rs, i.dst).map(|x| (Some(x.dst), x.value)),
        _ => None,
    };
    if let (Some(live), Some(rs)) = (i.live, ruleset) {
        r.live.looked_up = true;
        let prefix = live.and_then(|v| {
            i.live_rules
                .and_then(|m| m.lookup(rs, i.dst))
                .filter(|x| x.value == v)
                .map(|x| x.dst)
        });
        r.live.matched = live.map(|v| describe(&v, prefix, i.index, rs, i.slots));
        if model.is_some() {
            let agrees = live == model_hit.map(|(_, v)| v);
            r.live.agrees = Some(agrees);
            if !agrees {
                r.live.note = Some(format!(
                    "the live map disagrees with the agent's applied rules: the kernel matches {}, \
                     the rule index {} (the agent is mid-update or down with other rules \
                     applied, or the map was changed by hand)",
                    match &r.live.matched {
                        Some(m) => format!(
                            "{} → slot {} (rule {})",
                            m.prefix.as_deref().unwrap_or("?"),
                            m.slot,
                            m.rule_id
                        ),
                        None => "nothing".into(),
                    },
                    match &model_hit {
                        Some((p, v)) => format!(
                            "{} → slot {} (rule {})",
                            p.map(|p| p.to_string()).unwrap_or_default(),
                            v.slot,
                            v.rule_id
                        ),
                        None => "nothing".into(),
                    }
                ));
            }
        }
    }
    if model.is_none() {
        r.notes.push(
            "no rule index (the agent writes it beside its status file): deciding from the \
             live map, without Route names"
                .into(),
        );
    }

    // 1. Destinations the programs never steer.
    if let Some(what) = special_destination(i.dst) {
        r.verdict = "never_steered";
        r.counter = name(stats::PASS_MCAST);
        r.reason = format!(
            "{} is a {what} destination: veer never steers it (passed untouched on every \
             interface)",
            i.dst
        );
        return r;
    }
    // 2. The pod's interfaces.
    if i.ifaces.is_empty() {
        r.verdict = "unmanaged";
        r.counter = name(stats::PASS_UNMANAGED);
        let mut why = match (i.netns_cookie, i.status_pod) {
            (None, None) => format!("pod {} is not known to the agent", i.pod),
            (None, Some(_)) => format!(
                "pod {} is in the status file without its namespace cookie; pass its network \
                 namespace path as --pod",
                i.pod
            ),
            (Some(c), _) => format!(
                "pod {} (netns cookie {c}) has no interface in VEER_IFACES_V1",
                i.pod
            ),
        };
        if let Some(p) = i.status_pod {
            for s in &p.skipped {
                let _ = write!(
                    why,
                    "; {}{}",
                    if s.iface.is_empty() {
                        String::new()
                    } else {
                        format!("{}: ", s.iface)
                    },
                    s.reason
                );
            }
            if let Some(f) = &p.failure {
                let _ = write!(why, "; set-up failed: {f}");
            }
        }
        why.push_str(": its packets pass untouched");
        r.reason = why;
        return r;
    }
    let rs = ruleset.expect("a pod with interfaces has a ruleset");

    // 3. Longest-prefix match in the pod's ruleset.
    let hit = if model.is_some() {
        model_hit
    } else {
        i.live.flatten().map(|v| {
            let p = i
                .live_rules
                .and_then(|m| m.lookup(rs, i.dst))
                .filter(|x| x.value == v)
                .map(|x| x.dst);
            (p, v)
        })
    };
    let Some((prefix, rule)) = hit else {
        r.counter = name(stats::PASS_NO_RULE);
        r.reason = format!(
            "no match: kernel route (no rule of ruleset {rs} covers {}; the packet leaves as \
             the pod's routing table decides, untouched)",
            i.dst
        );
        return r;
    };
    let m = describe(&rule, prefix, i.index, rs, i.slots);
    let dev = m
        .dev
        .clone()
        .unwrap_or_else(|| format!("slot {}", rule.slot));
    let origin = match (&m.route, &m.entry) {
        (Some(route), Some(e)) => format!("Route {route:?} {e}"),
        _ => format!("rule {}", rule.rule_id),
    };
    r.matched = Some(m);

    // 4. The target interface in the pod.
    let slot = usize::from(rule.slot);
    let target = i
        .ifaces
        .iter()
        .find(|(_, v)| v.slot == u32::from(rule.slot))
        .map(|(_, v)| v);
    let has_slot = i
        .ifaces
        .first()
        .is_some_and(|(_, v)| v.slots.get(slot).is_some_and(|x| *x != 0));
    let Some(t) = target.filter(|_| has_slot) else {
        r.counter = name(stats::PASS_NO_TARGET);
        r.reason = format!(
            "{origin} selects {dev}, but the pod lacks interface {dev}: the rule is skipped for \
             this pod and the packet leaves as the kernel routes it"
        );
        return r;
    };
    r.out_interface = Some(iface_of(t, i.slots));
    r.from_interfaces = i
        .ifaces
        .iter()
        .filter(|(_, v)| v.slot != u32::from(rule.slot))
        .map(|(_, v)| iface_of(v, i.slots))
        .collect();
    if r.from_interfaces.is_empty() {
        r.counter = name(stats::PASS_RULE_LOCAL);
        r.reason = format!(
            "{origin} selects {dev}, the pod's only managed interface: packets leaving it pass \
             unchanged"
        );
        return r;
    }
    // 5. The target's address and the next hop.
    let (ok, src, gw) = match i.dst {
        IpAddr::V4(_) => (
            t.flags & IFACE_F_V4 != 0,
            IpAddr::from(t.addr4),
            (t.flags & IFACE_F_GW4 != 0).then(|| IpAddr::from(t.gw4)),
        ),
        IpAddr::V6(_) => (
            t.flags & IFACE_F_V6 != 0,
            IpAddr::from(t.addr6),
            (t.flags & IFACE_F_GW6 != 0).then(|| IpAddr::from(t.gw6)),
        ),
    };
    if !ok {
        r.counter = name(stats::PASS_TARGET_NO_ADDR);
        r.reason = format!(
            "{origin} selects {dev}, which has no {} address in this pod: the packet passes \
             untouched",
            if i.dst.is_ipv4() { "IPv4" } else { "IPv6" }
        );
        return r;
    }
    r.next_hop = Some(match (r.matched.as_ref().and_then(|m| m.via), gw) {
        (Some(via), _) => NextHop {
            addr: via,
            source: "via",
        },
        (None, Some(g)) => NextHop {
            addr: g,
            source: "gateway",
        },
        (None, None) => NextHop {
            addr: i.dst,
            source: "on-link",
        },
    });
    r.source_address = Some(src);
    r.verdict = "steer";
    r.counter = name(stats::STEER_NEW);
    let from: Vec<String> = r
        .from_interfaces
        .iter()
        .map(|f| f.name.clone().unwrap_or_else(|| format!("if{}", f.ifindex)))
        .collect();
    let nh = r.next_hop.as_ref().expect("set above");
    r.reason = format!(
        "{origin} ({}) selects {dev}: packets leaving {} are moved to {dev} (if{}) with source \
         {src}, next hop {} ({})",
        r.matched
            .as_ref()
            .and_then(|m| m.prefix.clone())
            .unwrap_or_default(),
        from.join(", "),
        t.ifindex,
        nh.addr,
        nh.source
    );
    r.notes.push(format!(
        "packets the pod's routing already sends out {dev} pass unchanged ({})",
        name(stats::PASS_RULE_LOCAL)
    ));
    match i.proto {
        Proto::Tcp => {
            r.notes.push(format!(
                "only connections starting now (their SYN) are moved; a connection open before \
                 the rule keeps its path ({}); the SYN's MSS is clamped to {dev}'s MTU {}",
                name(stats::PASS_TCP_UNPINNED),
                t.mtu
            ));
        }
        Proto::Udp => {
            r.notes.push(format!(
                "a UDP flow a peer started towards the pod keeps replying where it came in \
                 ({}); datagrams larger than {dev}'s MTU {} are dropped ({})",
                name(stats::PASS_PINNED_NATIVE),
                t.mtu,
                name(stats::DROP_TOO_BIG)
            ));
        }
        Proto::Icmp => {
            r.notes.push(format!(
                "echo requests are steered; ICMP the pod sends in reply (echo replies, errors) \
                 never is; packets larger than {dev}'s MTU {} are dropped ({})",
                t.mtu,
                name(stats::DROP_TOO_BIG)
            ));
        }
    }
    if !r.pinned_flows.is_empty() {
        r.notes.push(format!(
            "{} existing flow(s) of the pod to {} keep their pinned decision until they close or \
             idle out",
            r.pinned_flows.len(),
            i.dst
        ));
    }
    r
}

/// The pod's existing flows to the destination: outgoing entries from one of the addresses of
/// `ifaces` (the pod's interface entries) to `dst` with `proto` (and `port`, when given).
pub fn pod_flows(
    flows: &[(FlowKey, FlowValue)],
    ifaces: &[(IfaceKey, IfaceInfo)],
    dst: IpAddr,
    port: Option<u16>,
    proto: Proto,
) -> Vec<(FlowKey, FlowValue)> {
    let own: BTreeSet<[u8; 16]> = ifaces.iter().flat_map(|(_, v)| iface_addrs16(v)).collect();
    let (family, daddr) = to_addr16(dst);
    flows
        .iter()
        .filter(|(k, _)| {
            k.dir == DIR_OUT
                && k.family == family
                && k.daddr == daddr
                && own.contains(&k.saddr)
                && k.proto == proto.number(dst)
                && port.is_none_or(|p| u16::from_be(k.dport) == p)
        })
        .copied()
        .collect()
}

/// Finds the pod: `namespace/name` (or a unique `name`) in the status file, or a network
/// namespace path. Returns its label, namespace cookie (via `cookie_of` for a path) and status
/// entry.
pub fn resolve_pod<'a>(
    arg: &str,
    pods: &'a [PodReport],
    cookie_of: &dyn Fn(&Path) -> Result<u64, String>,
) -> Result<(String, Option<u64>, Option<&'a PodReport>), String> {
    if arg.starts_with('/') {
        let path = Path::new(arg);
        let p = pods.iter().find(|p| p.netns.as_deref() == Some(path));
        let cookie = match p.and_then(|p| p.netns_cookie) {
            Some(c) => c,
            None => cookie_of(path)?,
        };
        let label = p.map_or_else(|| arg.to_string(), |p| p.pod.clone());
        return Ok((label, Some(cookie), p));
    }
    let found: Vec<&PodReport> = pods
        .iter()
        .filter(|p| p.pod == arg || (!arg.contains('/') && p.pod.rsplit('/').next() == Some(arg)))
        .collect();
    match found.as_slice() {
        [] => Err(format!(
            "pod {arg} is not in the agent's status file (not managed on this node?); pass \
             namespace/name as `veer status` lists it, or a network namespace path"
        )),
        [p] => {
            let cookie = match (p.netns_cookie, &p.netns) {
                (Some(c), _) => Some(c),
                (None, Some(n)) => cookie_of(n).ok(),
                (None, None) => None,
            };
            Ok((p.pod.clone(), cookie, Some(p)))
        }
        many => Err(format!(
            "{arg} names several pods ({}); use namespace/name",
            many.iter()
                .map(|p| p.pod.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The table (text) form.
pub fn render(r: &TraceReport) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Pod {} (netns cookie {}, ruleset {}) → {}{} {}",
        r.pod,
        r.netns_cookie.map_or("?".into(), |c| c.to_string()),
        r.ruleset.map_or("?".into(), |c| c.to_string()),
        r.dst,
        r.port.map(|p| format!(" port {p}")).unwrap_or_default(),
        r.proto.name()
    );
    let _ = writeln!(
        o,
        "Verdict:  {} (counter {})",
        r.verdict.to_uppercase(),
        r.counter
    );
    let _ = writeln!(o, "Why:      {}", r.reason);
    if let Some(m) = &r.matched {
        let _ = writeln!(
            o,
            "Rule:     {} → {} (slot {}){}, rule id {}{}",
            m.prefix.as_deref().unwrap_or("?"),
            m.dev.as_deref().unwrap_or("?"),
            m.slot,
            m.via.map(|v| format!(" via {v}")).unwrap_or_default(),
            m.rule_id,
            match (&m.route, &m.entry) {
                (Some(route), Some(e)) => format!(", Route {route} {e}"),
                _ => String::new(),
            }
        );
    }
    if let Some(t) = &r.out_interface {
        let _ = writeln!(
            o,
            "Out:      {} (if{}, MTU {})",
            t.name.as_deref().unwrap_or("?"),
            t.ifindex,
            t.mtu
        );
    }
    if let Some(n) = &r.next_hop {
        let _ = writeln!(o, "Next hop: {} ({})", n.addr, n.source);
    }
    if let Some(s) = &r.source_address {
        let _ = writeln!(o, "Source:   {s} (after translation)");
    }
    if r.live.looked_up {
        let live = match &r.live.matched {
            Some(m) => format!(
                "{} → slot {} (rule {})",
                m.prefix.as_deref().unwrap_or("?"),
                m.slot,
                m.rule_id
            ),
            None => "no match".into(),
        };
        let agree = match r.live.agrees {
            Some(true) => " — agrees with the model",
            Some(false) => " — DISAGREES with the model",
            None => "",
        };
        let _ = writeln!(o, "Live map: {live}{agree}");
    }
    if let Some(n) = &r.live.note {
        let _ = writeln!(o, "  {n}");
    }
    for f in &r.pinned_flows {
        let _ = writeln!(
            o,
            "Flow:     :{} → :{} {} {} (idle {:.0}s): {}",
            f.sport, f.dport, f.kind, f.state, f.idle_s, f.path
        );
    }
    for n in &r.notes {
        let _ = writeln!(o, "Note:     {n}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::index::tests_support::sample_index;

    fn pod_ifaces(eth1: bool, eth1_v6: bool) -> Vec<(IfaceKey, IfaceInfo)> {
        let mut eth0 = IfaceInfo {
            netns_cookie: 77,
            ruleset: 1,
            slot: 0,
            ifindex: 2,
            mtu: 1500,
            flags: IFACE_F_V4 | IFACE_F_GW4,
            addr4: [10, 0, 0, 5],
            gw4: [10, 0, 0, 1],
            ..Default::default()
        };
        eth0.slots[0] = 2;
        let mut v = vec![(IfaceKey::new(2, [2, 0, 0, 0, 0, 2]), eth0)];
        if eth1 {
            v[0].1.slots[1] = 3;
            let mut e1 = IfaceInfo {
                slot: 1,
                ifindex: 3,
                mtu: 1400,
                flags: IFACE_F_V4 | IFACE_F_GW4,
                addr4: [10, 124, 2, 5],
                gw4: [10, 124, 2, 1],
                ..v[0].1
            };
            if eth1_v6 {
                e1.flags |= IFACE_F_V6;
                e1.addr6 = "fd00:124::5"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets();
            }
            v.push((IfaceKey::new(3, [2, 0, 0, 0, 0, 3]), e1));
            v[1].1.slots = v[0].1.slots;
        }
        v
    }

    fn input<'a>(
        ifaces: &'a [(IfaceKey, IfaceInfo)],
        idx: Option<&'a RuleIndex>,
        slots: &'a HashMap<u16, String>,
        dst: &str,
        live: Option<Option<RuleValue>>,
    ) -> TraceInput<'a> {
        TraceInput {
            pod: "default/web".into(),
            netns_cookie: Some(77),
            ifaces,
            status_pod: None,
            slots,
            index: idx,
            live,
            live_rules: None,
            dst: dst.parse().unwrap(),
            port: Some(80),
            proto: Proto::Tcp,
            flows: &[],
        }
    }

    fn slots() -> HashMap<u16, String> {
        [(0, "eth0".into()), (1, "eth1".into())].into()
    }

    #[test]
    fn steered_destination_names_route_interface_next_hop_and_source() {
        let idx = sample_index();
        let ifs = pod_ifaces(true, false);
        let s = slots();
        let model_value = idx
            .model()
            .lookup(1, "10.86.1.1".parse().unwrap())
            .unwrap()
            .value;
        let r = explain(&input(
            &ifs,
            Some(&idx),
            &s,
            "10.86.1.1",
            Some(Some(model_value)),
        ));
        assert_eq!((r.verdict, r.counter), ("steer", "steer_new"));
        let m = r.matched.as_ref().unwrap();
        assert_eq!(
            (m.route.as_deref(), m.entry.as_deref(), m.prefix.as_deref()),
            (Some("demo"), Some("spec.route[0]"), Some("10.86.0.0/16"))
        );
        assert_eq!(
            r.out_interface.as_ref().unwrap().name.as_deref(),
            Some("eth1")
        );
        assert_eq!(
            r.next_hop,
            Some(NextHop {
                addr: "10.124.0.1".parse().unwrap(),
                source: "via"
            })
        );
        assert_eq!(r.source_address, Some("10.124.2.5".parse().unwrap()));
        assert_eq!(r.from_interfaces[0].name.as_deref(), Some("eth0"));
        assert_eq!(r.live.agrees, Some(true));
        assert!(
            r.reason.contains(r#"Route "demo" spec.route[0]"#),
            "{}",
            r.reason
        );
        let j = serde_json::to_value(&r).unwrap();
        for k in [
            "pod",
            "ruleset",
            "dst",
            "verdict",
            "counter",
            "reason",
            "matched",
            "out_interface",
            "next_hop",
            "source_address",
            "live",
            "notes",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert_eq!(j["proto"], "tcp");
        assert!(render(&r).contains("Next hop: 10.124.0.1 (via)"));
    }

    #[test]
    fn default_route_to_own_interface_and_no_match_and_gateway() {
        let idx = sample_index();
        let ifs = pod_ifaces(true, true);
        let s = slots();
        // 0.0.0.0/0 → eth0: packets leaving eth1 are moved to eth0, via eth0's gateway.
        let r = explain(&input(&ifs, Some(&idx), &s, "8.8.8.8", None));
        assert_eq!(r.verdict, "steer");
        assert_eq!(
            r.out_interface.as_ref().unwrap().name.as_deref(),
            Some("eth0")
        );
        assert_eq!(r.next_hop.as_ref().unwrap().source, "gateway");
        assert_eq!(r.next_hop.as_ref().unwrap().addr.to_string(), "10.0.0.1");
        assert!(!r.live.looked_up);
        // IPv6 with no IPv6 default: no match.
        let r = explain(&input(&ifs, Some(&idx), &s, "2001:db8::1", None));
        assert_eq!((r.verdict, r.counter), ("pass", "pass_no_rule"));
        assert!(
            r.reason.starts_with("no match: kernel route"),
            "{}",
            r.reason
        );
        // fd00:86::/64 → eth1, on-link (no IPv6 gateway on eth1).
        let r = explain(&input(&ifs, Some(&idx), &s, "fd00:86::9", None));
        assert_eq!(r.next_hop.as_ref().unwrap().source, "on-link");
        assert_eq!(r.source_address.unwrap().to_string(), "fd00:124::5");
    }

    #[test]
    fn special_missing_interface_unmanaged_no_address_and_live_disagreement() {
        let idx = sample_index();
        let s = slots();
        let ifs = pod_ifaces(true, false);
        for (d, what) in [
            ("224.0.0.251", "multicast"),
            ("169.254.1.1", "link-local"),
            ("255.255.255.255", "broadcast"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("127.0.0.1", "loopback"),
            ("240.0.0.1", "reserved"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
        ] {
            let r = explain(&input(&ifs, Some(&idx), &s, d, None));
            assert_eq!(
                (r.verdict, r.counter),
                ("never_steered", "pass_mcast"),
                "{d}"
            );
            assert!(r.reason.contains(what), "{d}: {}", r.reason);
        }
        let only_eth0 = pod_ifaces(false, false);
        let r = explain(&input(&only_eth0, Some(&idx), &s, "10.86.1.1", None));
        assert_eq!((r.verdict, r.counter), ("pass", "pass_no_target"));
        assert!(r.reason.contains("lacks interface eth1"), "{}", r.reason);
        let r = explain(&input(&[], Some(&idx), &s, "10.86.1.1", None));
        assert_eq!((r.verdict, r.counter), ("unmanaged", "pass_unmanaged"));
        let r = explain(&input(&ifs, Some(&idx), &s, "fd00:86::9", None));
        assert_eq!(r.counter, "pass_target_no_addr");
        let r = explain(&input(&ifs, Some(&idx), &s, "10.86.1.1", Some(None)));
        assert_eq!(r.live.agrees, Some(false));
        assert!(r.live.note.as_ref().unwrap().contains("disagrees"));
        assert_eq!(r.verdict, "steer", "the model decides");
        // Without an index the live answer decides.
        let r = explain(&input(&ifs, None, &s, "10.86.1.1", Some(None)));
        assert_eq!(r.counter, "pass_no_rule");
    }

    #[test]
    fn pod_flows_are_the_outgoing_ones_from_the_pods_addresses_to_the_destination() {
        let ifaces = pod_ifaces(true, true);
        let dst: IpAddr = "10.86.1.1".parse().unwrap();
        let key = |saddr: &str, daddr: IpAddr, dport: u16, proto: u8, dir: u8| {
            let (family, daddr) = to_addr16(daddr);
            FlowKey {
                saddr: to_addr16(saddr.parse().unwrap()).1,
                daddr,
                sport: 40000u16.to_be(),
                dport: dport.to_be(),
                proto,
                family,
                dir,
                ..Default::default()
            }
        };
        let v = FlowValue::default();
        let mine_eth0 = key("10.0.0.5", dst, 80, 6, DIR_OUT);
        let mine_eth1 = key("10.124.2.5", dst, 443, 6, DIR_OUT);
        let flows = [
            mine_eth0,
            mine_eth1,
            key("10.0.0.9", dst, 80, 6, DIR_OUT), // another pod
            key("10.0.0.5", "10.86.1.2".parse().unwrap(), 80, 6, DIR_OUT), // another destination
            key("10.0.0.5", dst, 80, 17, DIR_OUT), // UDP
            key("10.0.0.5", dst, 80, 6, veer_common::DIR_IN), // reply direction
        ]
        .map(|k| (k, v));
        let keys = |p| -> Vec<FlowKey> {
            pod_flows(&flows, &ifaces, dst, p, Proto::Tcp)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys(None), vec![mine_eth0, mine_eth1]);
        assert_eq!(keys(Some(443)), vec![mine_eth1]);
        assert!(pod_flows(&flows, &[], dst, None, Proto::Tcp).is_empty());
        let v6 = [(
            key("fd00:124::5", "fd00:86::1".parse().unwrap(), 80, 6, DIR_OUT),
            v,
        )];
        let n = pod_flows(
            &v6,
            &ifaces,
            "fd00:86::1".parse().unwrap(),
            None,
            Proto::Tcp,
        );
        assert_eq!(n.len(), 1, "IPv6 flows of the pod's IPv6 address");
    }

    #[test]
    fn destinations_and_pods_resolve() {
        assert_eq!(
            parse_dst("10.0.0.1").unwrap(),
            ("10.0.0.1".parse().unwrap(), None)
        );
        assert_eq!(parse_dst("10.0.0.1:443").unwrap().1, Some(443));
        assert_eq!(parse_dst("[fd00::1]:53").unwrap().1, Some(53));
        assert!(parse_dst("nope").is_err());
        let pods = vec![PodReport {
            pod: "default/web".into(),
            uid: String::new(),
            netns: Some("/var/run/netns/web".into()),
            netns_cookie: Some(77),
            ruleset: Some(1),
            routes: vec![],
            interfaces: vec![],
            skipped: vec![],
            failure: None,
        }];
        let never = |_: &Path| -> Result<u64, String> { Err("no".into()) };
        let (l, c, _) = resolve_pod("default/web", &pods, &never).unwrap();
        assert_eq!((l.as_str(), c), ("default/web", Some(77)));
        assert_eq!(resolve_pod("web", &pods, &never).unwrap().1, Some(77));
        assert_eq!(
            resolve_pod("/var/run/netns/web", &pods, &never).unwrap().1,
            Some(77)
        );
        let other = |_: &Path| -> Result<u64, String> { Ok(5) };
        assert_eq!(
            resolve_pod("/proc/1/ns/net", &pods, &other).unwrap().1,
            Some(5)
        );
        assert!(resolve_pod("x/y", &pods, &never).is_err());
    }
}
