//! `veer flows`: the flow table (`VEER_FLOWS_V1`) decoded: direction, kind, TCP state, age and
//! idle time, 5-tuple, the interface a flow is pinned to, and the rule that steered it.

use std::{collections::HashMap, net::IpAddr};

use serde::Serialize;
use veer_common::{
    DIR_OUT, FAMILY_V4, FLOW_NATIVE, FLOW_REVNAT, FLOW_STEER, FlowKey, FlowValue, IfaceInfo,
    IfaceKey,
};

use super::{maps::ConfigRow, or_dash, proto_name, table};
use crate::maps::{addr16, iface_addrs16, kind_name, state_name};
use crate::report::PodReport;
use crate::report::index::RuleIndex;

/// One flow entry, decoded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowRow {
    /// `out` (as the packet leaves the pod) or `in` (as replies arrive on the target).
    pub direction: &'static str,
    /// `steer`, `native`, `revnat` or the raw number.
    pub kind: String,
    /// `none` (not TCP), `syn`, `established`, `closing`.
    pub state: String,
    /// Seconds since the flow was created / since its last packet (refreshed at most once a
    /// second by the programs).
    pub age_s: f64,
    pub idle_s: f64,
    /// Whether the idle time exceeds the state's timeout (removed at its next packet).
    pub expired: bool,
    pub proto: String,
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// `namespace/name` of the pod the flow belongs to (when known).
    pub pod: Option<String>,
    /// `steer`: target interface; `revnat`: the original interface replies are given back to.
    pub ifindex: u32,
    pub dev: Option<String>,
    /// Human summary of the path.
    pub path: String,
    /// `steer`: new source address; `revnat`: original address restored.
    pub addr: Option<IpAddr>,
    /// `steer`: next hop given to `bpf_redirect_neigh`.
    pub nexthop: Option<IpAddr>,
    pub mss: u16,
    pub mtu: u16,
    pub rule_id: u32,
    pub route: Option<String>,
    pub entry: Option<String>,
}

/// What decoding needs besides the entries.
pub struct Context<'a> {
    pub ifaces: &'a [(IfaceKey, IfaceInfo)],
    pub slots: &'a HashMap<u16, String>,
    pub pods: &'a [PodReport],
    pub index: Option<&'a RuleIndex>,
    pub config: &'a ConfigRow,
    /// [`crate::maps::monotonic_coarse_ns`] now (the datapath's clock).
    pub now_ns: u64,
}

fn secs(now: u64, then: u64) -> f64 {
    (now.saturating_sub(then) as f64 / 1e9 * 10.0).round() / 10.0
}

/// Decodes the flows, newest first.
pub fn rows(flows: &[(FlowKey, FlowValue)], cx: &Context<'_>) -> Vec<FlowRow> {
    // Pod address → the pod's namespace cookie.
    let mut by_addr: HashMap<[u8; 16], u64> = HashMap::new();
    for (_, v) in cx.ifaces {
        for a in iface_addrs16(v) {
            by_addr.insert(a, v.netns_cookie);
        }
    }
    let by_id = cx.index.map(RuleIndex::by_rule_id).unwrap_or_default();
    let timeout = cx.config.as_config();
    let mut out: Vec<FlowRow> = flows
        .iter()
        .map(|(k, v)| {
            let is4 = k.family == FAMILY_V4;
            let out_dir = k.dir == DIR_OUT;
            let local = if out_dir { k.saddr } else { k.daddr };
            let cookie = by_addr.get(&local).copied();
            let dev = cookie.and_then(|c| {
                cx.ifaces
                    .iter()
                    .find(|(ik, iv)| iv.netns_cookie == c && ik.ifindex == v.ifindex)
                    .and_then(|(_, iv)| u16::try_from(iv.slot).ok())
                    .and_then(|s| cx.slots.get(&s).cloned())
            });
            let has_addr = v.kind == FLOW_STEER || v.kind == FLOW_REVNAT;
            let addr = has_addr.then(|| addr16(is4, &v.addr));
            let nexthop = (v.kind == FLOW_STEER).then(|| addr16(is4, &v.nexthop));
            let iface = format!("{} (if{})", dev.as_deref().unwrap_or("?"), v.ifindex);
            let path = match v.kind {
                FLOW_STEER => format!(
                    "steered out {iface}, source {}, next hop {}",
                    or_dash(addr),
                    or_dash(nexthop)
                ),
                FLOW_REVNAT => format!(
                    "replies get destination {} and are delivered on {iface}",
                    or_dash(addr)
                ),
                FLOW_NATIVE => "kernel path (pinned native)".into(),
                _ => "?".into(),
            };
            let e = by_id.get(&v.rule_id).copied().filter(|_| v.rule_id != 0);
            let idle_s = secs(cx.now_ns, v.last_seen_ns);
            FlowRow {
                direction: if out_dir { "out" } else { "in" },
                kind: kind_name(v.kind),
                state: state_name(v.state),
                age_s: secs(cx.now_ns, v.created_ns),
                idle_s,
                expired: idle_s > f64::from(timeout.timeout_s(v.state)),
                proto: proto_name(k.proto),
                family: if is4 { "ipv4" } else { "ipv6" },
                src: addr16(is4, &k.saddr),
                sport: u16::from_be(k.sport),
                dst: addr16(is4, &k.daddr),
                dport: u16::from_be(k.dport),
                pod: cookie.and_then(|c| {
                    cx.pods
                        .iter()
                        .find(|p| p.netns_cookie == Some(c))
                        .map(|p| p.pod.clone())
                }),
                ifindex: v.ifindex,
                dev,
                path,
                addr,
                nexthop,
                mss: v.mss,
                mtu: v.mtu,
                rule_id: v.rule_id,
                route: e.map(|e| e.route.clone()),
                entry: e.map(|e| e.path.clone()),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.age_s
            .total_cmp(&b.age_s)
            .then_with(|| a.direction.cmp(b.direction))
    });
    out
}

fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}:{port}"),
        IpAddr::V6(_) => format!("[{a}]:{port}"),
    }
}

/// The table form.
pub fn render(rows: &[FlowRow]) -> String {
    let r: Vec<Vec<String>> = rows
        .iter()
        .map(|f| {
            vec![
                f.direction.to_string(),
                f.kind.clone(),
                f.state.clone(),
                format!("{:.0}s", f.age_s),
                format!(
                    "{:.0}s{}",
                    f.idle_s,
                    if f.expired { " (expired)" } else { "" }
                ),
                f.proto.clone(),
                endpoint(f.src, f.sport),
                endpoint(f.dst, f.dport),
                f.pod.clone().unwrap_or_else(|| "-".into()),
                f.path.clone(),
                match (&f.route, &f.entry) {
                    (Some(r), Some(e)) => format!("{r} {e}"),
                    _ if f.rule_id != 0 => format!("rule {}", f.rule_id),
                    _ => "-".into(),
                },
            ]
        })
        .collect();
    let mut o = format!("Flows (VEER_FLOWS_V1): {}\n", rows.len());
    o.push_str(&table(
        &[
            "DIR",
            "KIND",
            "STATE",
            "AGE",
            "IDLE",
            "PROTO",
            "SOURCE",
            "DESTINATION",
            "POD",
            "PATH",
            "RULE",
        ],
        &r,
    ));
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::maps::effective_config;
    use crate::report::index::tests_support::sample_index;
    use veer_common::{Config, DIR_IN, IFACE_F_GW4, IFACE_F_V4, ST_CLOSING, ST_EST, ST_NONE};

    fn v4(a: [u8; 4]) -> [u8; 16] {
        crate::maps::to_addr16(IpAddr::from(a)).1
    }

    #[test]
    fn steered_flow_and_its_reply_entry_decode_with_pod_path_and_rule() {
        let idx = sample_index();
        let rule = idx.entries.iter().find(|e| e.dev == "eth1").unwrap();
        let mut eth0 = IfaceInfo {
            netns_cookie: 77,
            ruleset: 1,
            slot: 0,
            ifindex: 2,
            flags: IFACE_F_V4,
            addr4: [10, 0, 0, 5],
            ..Default::default()
        };
        eth0.slots[0] = 2;
        eth0.slots[1] = 3;
        let eth1 = IfaceInfo {
            slot: 1,
            ifindex: 3,
            flags: IFACE_F_V4 | IFACE_F_GW4,
            addr4: [10, 124, 2, 5],
            ..eth0
        };
        let ifaces = [
            (IfaceKey::new(2, [2, 0, 0, 0, 0, 2]), eth0),
            (IfaceKey::new(3, [2, 0, 0, 0, 0, 3]), eth1),
        ];
        let out = FlowKey {
            saddr: v4([10, 0, 0, 5]),
            daddr: v4([10, 86, 1, 1]),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: FAMILY_V4,
            dir: DIR_OUT,
            ..Default::default()
        };
        let sec = 1_000_000_000u64;
        let steer = FlowValue {
            kind: FLOW_STEER,
            state: ST_EST,
            rule_id: rule.rule_id,
            ifindex: 3,
            mss: 1360,
            mtu: 1400,
            addr: v4([10, 124, 2, 5]),
            nexthop: v4([10, 124, 0, 1]),
            last_seen_ns: 95 * sec,
            created_ns: 40 * sec,
            ..Default::default()
        };
        let back = out.reverse(v4([10, 124, 2, 5]), DIR_IN);
        let revnat = FlowValue {
            kind: FLOW_REVNAT,
            state: ST_CLOSING,
            ifindex: 2,
            addr: v4([10, 0, 0, 5]),
            last_seen_ns: 0,
            created_ns: 40 * sec,
            ..steer
        };
        let slots: HashMap<u16, String> = [(0, "eth0".into()), (1, "eth1".into())].into();
        let pods = [PodReport {
            pod: "default/web".into(),
            uid: String::new(),
            netns: None,
            netns_cookie: Some(77),
            ruleset: Some(1),
            routes: vec![],
            interfaces: vec![],
            skipped: vec![],
            failure: None,
        }];
        let cfg = effective_config(&Config::default());
        let cx = Context {
            ifaces: &ifaces,
            slots: &slots,
            pods: &pods,
            index: Some(&idx),
            config: &cfg,
            now_ns: 100 * sec,
        };
        let r = rows(&[(out, steer), (back, revnat)], &cx);
        let o = r.iter().find(|x| x.direction == "out").unwrap();
        assert_eq!(
            (o.kind.as_str(), o.state.as_str()),
            ("steer", "established")
        );
        assert_eq!((o.age_s, o.idle_s, o.expired), (60.0, 5.0, false));
        assert_eq!(o.src.to_string(), "10.0.0.5");
        assert_eq!((o.sport, o.dport), (40000, 80));
        assert_eq!(o.pod.as_deref(), Some("default/web"));
        assert_eq!(o.dev.as_deref(), Some("eth1"));
        assert_eq!(o.route.as_deref(), Some("demo"));
        assert_eq!(o.nexthop, Some("10.124.0.1".parse().unwrap()));
        let i = r.iter().find(|x| x.direction == "in").unwrap();
        assert_eq!(
            (i.kind.as_str(), i.dev.as_deref()),
            ("revnat", Some("eth0"))
        );
        assert_eq!(i.pod.as_deref(), Some("default/web"));
        assert!(i.expired, "idle 100 s, closing timeout 10 s");
        let j = serde_json::to_value(o).unwrap();
        for k in [
            "direction",
            "kind",
            "state",
            "age_s",
            "idle_s",
            "expired",
            "proto",
            "family",
            "src",
            "sport",
            "dst",
            "dport",
            "pod",
            "ifindex",
            "dev",
            "path",
            "addr",
            "nexthop",
            "mss",
            "mtu",
            "rule_id",
            "route",
            "entry",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
        let text = render(&r);
        assert!(text.contains("10.0.0.5:40000"), "{text}");
    }

    /// The documented recipe (established TCP 1 h, the rest zero): an established flow idle
    /// past 1 h is shown expired, a UDP flow idle 30 s is not (its zero field is the default).
    #[test]
    fn expired_column_follows_the_per_field_timeout_rule() {
        let sec = 1_000_000_000u64;
        let cfg = effective_config(&Config {
            tcp_est_timeout_s: 3600,
            ..Config::default()
        });
        let k = FlowKey {
            proto: 6,
            family: FAMILY_V4,
            ..Default::default()
        };
        let est = FlowValue {
            kind: FLOW_STEER,
            state: ST_EST,
            last_seen_ns: sec,
            ..Default::default()
        };
        let udp = FlowValue {
            state: ST_NONE,
            last_seen_ns: 3571 * sec,
            ..est
        };
        let slots = HashMap::new();
        let cx = Context {
            ifaces: &[],
            slots: &slots,
            pods: &[],
            index: None,
            config: &cfg,
            now_ns: 3602 * sec,
        };
        let r = rows(&[(k, est), (FlowKey { proto: 17, ..k }, udp)], &cx);
        let by_proto = |p: &str| r.iter().find(|x| x.proto == p).unwrap().expired;
        assert!(by_proto("tcp"), "idle 3601 s > 3600 s");
        assert!(!by_proto("udp"), "idle 31 s < the 60 s default");
    }
}
