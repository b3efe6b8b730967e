//! The seed example as the end-to-end suites and the demo run it: one Route file, one Services
//! file, for every rule the destination that proves it ([`Seed`]), and how traffic to those
//! destinations is checked ([`probe`], [`nonzero_counters`], [`assert_no_error_counters`]).
//!
//! Where it comes from (`tests/fixtures/seed/`, the user's own data, kept verbatim there):
//!
//! - the Route `demo` is `route-demo.yaml` (checked below), with its `eth1` being the name of the
//!   OVN interface ([`Seed::new`]'s `second`);
//! - the Route `seed-table` holds the rest of the pod route table in the fixture's README
//!   (`10.124.0.0/16` by OVN, `192.168.2.0/24` and the default route by Calico); its
//!   `10.124.2.0/24` is the OVN subnet, a connected route the topology has anyway, and the two
//!   Service host routes come from the demo Route's Services;
//! - the Services file resolves `default/nginx` (`10.86.205.109`, the README's OVN Service) and
//!   `kube-system/nginx1` (`10.86.69.17`, its Calico Service); `kube-system/nginx2` is left
//!   unresolved, as a Service the cluster does not have.
//!
//! The seed is IPv4 only. The tests add an IPv6 counterpart to every rule and Service (the
//! [`crate::topology`] addresses `fd00:…`); the demo prints the seed's own table and drops them
//! ([`Seed::ipv4_only`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use veer_agent::maps::Maps;
use veer_common::stats;

use crate::{
    agent::{self, Agent, route_cr, services_list, shorthand},
    topology::{
        CALICO_CIDR4, CALICO_CIDR6, DEFAULT4, DEFAULT6, OVN_RANGE4, OVN_RANGE6, Pod, STEERED4,
        STEERED6, SVC_ETH0_4, SVC_ETH0_6, SVC_ETH1_4, SVC_ETH1_6, Topology, TopologyOpts,
        UNSTEERED4, UNSTEERED6,
    },
};

/// Which interface a rule of the seed names; [`Seed`] says what each one is called.
#[derive(Debug, Clone, Copy)]
enum Dev {
    /// Calico's `eth0`.
    Eth0,
    /// The OVN interface (`eth1` in the seed).
    Second,
    /// `172.16.10.0/24`, the seed's custom CIDR by OVN, and its IPv6 counterpart: on the OVN
    /// interface unless [`Seed::cidr_to`] moves them.
    Cidr,
    /// The default routes: on `eth0` unless [`Seed::default_to`] moves them.
    Default,
}

/// The CIDR rules of the Route `demo` (`route-demo.yaml`'s `spec.route`).
const DEMO_ROUTES: [(&str, Dev); 2] =
    [("172.16.10.0/24", Dev::Cidr), ("172.16.11.0/24", Dev::Eth0)];

/// The Service rules of the Route `demo` (`route-demo.yaml`'s `spec.svc`): (namespace, name,
/// interface).
const DEMO_SVCS: [(&str, &str, Dev); 3] = [
    ("default", "nginx", Dev::Second),
    ("kube-system", "nginx1", Dev::Eth0),
    ("kube-system", "nginx2", Dev::Eth0),
];

/// The CIDR rules of the Route `seed-table`: the README's route table, then the IPv6
/// counterparts of every CIDR rule of both Routes.
const TABLE_ROUTES: [(&str, Dev); 8] = [
    ("10.124.0.0/16", Dev::Second),
    ("192.168.2.0/24", Dev::Eth0),
    ("0.0.0.0/0", Dev::Default),
    ("fd00:124::/32", Dev::Second),
    ("fd00:172:16:10::/64", Dev::Cidr),
    ("fd00:172:16:11::/64", Dev::Eth0),
    ("fd00:192:168:2::/64", Dev::Eth0),
    ("::/0", Dev::Default),
];

/// The Services file: (namespace, name, cluster IPs). `kube-system/nginx2` is not in it.
const SERVICES: [(&str, &str, [IpAddr; 2]); 2] = [
    (
        "default",
        "nginx",
        [IpAddr::V4(SVC_ETH1_4), IpAddr::V6(SVC_ETH1_6)],
    ),
    (
        "kube-system",
        "nginx1",
        [IpAddr::V4(SVC_ETH0_4), IpAddr::V6(SVC_ETH0_6)],
    ),
];

/// Every rule entry the agent writes for the seed, with the destination that proves it: (label,
/// address probed, the entry covering it, interface). One destination per entry, each served by
/// the topology's server namespace.
#[rustfmt::skip]
const DESTINATIONS: [(&str, IpAddr, &str, Dev); 14] = [
    ("svc kube-system/nginx1", IpAddr::V4(SVC_ETH0_4),   "10.86.69.17/32",      Dev::Eth0),
    ("svc kube-system/nginx1", IpAddr::V6(SVC_ETH0_6),   "fd00:86::45:11/128",  Dev::Eth0),
    ("svc default/nginx",      IpAddr::V4(SVC_ETH1_4),   "10.86.205.109/32",    Dev::Second),
    ("svc default/nginx",      IpAddr::V6(SVC_ETH1_6),   "fd00:86::cd:6d/128",  Dev::Second),
    ("10.124.0.0/16",          IpAddr::V4(OVN_RANGE4),   "10.124.0.0/16",       Dev::Second),
    ("fd00:124::/32",          IpAddr::V6(OVN_RANGE6),   "fd00:124::/32",       Dev::Second),
    ("172.16.10.0/24",         IpAddr::V4(STEERED4),     "172.16.10.0/24",      Dev::Cidr),
    ("fd00:172:16:10::/64",    IpAddr::V6(STEERED6),     "fd00:172:16:10::/64", Dev::Cidr),
    ("172.16.11.0/24",         IpAddr::V4(CALICO_CIDR4), "172.16.11.0/24",      Dev::Eth0),
    ("fd00:172:16:11::/64",    IpAddr::V6(CALICO_CIDR6), "fd00:172:16:11::/64", Dev::Eth0),
    ("192.168.2.0/24",         IpAddr::V4(UNSTEERED4),   "192.168.2.0/24",      Dev::Eth0),
    ("fd00:192:168:2::/64",    IpAddr::V6(UNSTEERED6),   "fd00:192:168:2::/64", Dev::Eth0),
    ("default",                IpAddr::V4(DEFAULT4),     "0.0.0.0/0",           Dev::Default),
    ("default",                IpAddr::V6(DEFAULT6),     "::/0",                Dev::Default),
];

/// One destination of the seed: where traffic to `addr` must leave and which rule entry says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The rule as the seed names it: `svc default/nginx`, `172.16.10.0/24`, `default`.
    pub label: &'static str,
    /// The address probed (a server of the topology answers there).
    pub addr: IpAddr,
    /// The rule entry covering `addr` (a Service's entry is its cluster IP's host prefix).
    pub rule: &'static str,
    /// The interface the traffic must leave by.
    pub dev: String,
}

/// The seed with the knobs the tests and the demo turn: the name of the OVN interface, where
/// the default route and `172.16.10.0/24` go, one deliberately invalid CIDR, and whether the
/// IPv6 counterparts are included.
#[derive(Debug, Clone)]
pub struct Seed {
    second: String,
    default_dev: String,
    cidr_dev: String,
    bad_cidr: Option<&'static str>,
    ipv6: bool,
}

impl Seed {
    /// The seed as written (default route by `eth0`), its OVN interface called `second`, with
    /// the IPv6 counterparts.
    pub fn new(second: &str) -> Self {
        Self {
            second: second.into(),
            default_dev: "eth0".into(),
            cidr_dev: second.into(),
            bad_cidr: None,
            ipv6: true,
        }
    }

    /// The default routes (`0.0.0.0/0`, `::/0`) on `dev`.
    pub fn default_to(mut self, dev: &str) -> Self {
        self.default_dev = dev.into();
        self
    }

    /// `172.16.10.0/24` and `fd00:172:16:10::/64` on `dev`.
    pub fn cidr_to(mut self, dev: &str) -> Self {
        self.cidr_dev = dev.into();
        self
    }

    /// The Route `demo` with `cidr` written where `172.16.10.0/24` stands (an invalid value
    /// makes the Route file bad; [`Seed::entries`] and [`Seed::destinations`] do not change).
    pub fn with_bad_cidr(mut self, cidr: &'static str) -> Self {
        self.bad_cidr = Some(cidr);
        self
    }

    /// Without the IPv6 counterparts: the seed's own, IPv4-only table (what the demo shows).
    pub fn ipv4_only(mut self) -> Self {
        self.ipv6 = false;
        self
    }

    fn dev(&self, dev: Dev) -> &str {
        match dev {
            Dev::Eth0 => "eth0",
            Dev::Second => &self.second,
            Dev::Cidr => &self.cidr_dev,
            Dev::Default => &self.default_dev,
        }
    }

    /// Whether a prefix or address of this family is part of this variant.
    fn has(&self, v6: bool) -> bool {
        self.ipv6 || !v6
    }

    /// The CIDR rules of the Route `demo`, as `(dst, dev)`.
    fn demo_routes(&self) -> Vec<(&str, &str)> {
        DEMO_ROUTES
            .iter()
            .map(|&(dst, dev)| match (dst, self.bad_cidr) {
                ("172.16.10.0/24", Some(bad)) => (bad, self.dev(dev)),
                _ => (dst, self.dev(dev)),
            })
            .collect()
    }

    /// The CIDR rules of the Route `seed-table`, as `(dst, dev)`.
    fn table_routes(&self) -> Vec<(&str, &str)> {
        TABLE_ROUTES
            .iter()
            .filter(|(dst, _)| self.has(dst.contains(':')))
            .map(|&(dst, dev)| (dst, self.dev(dev)))
            .collect()
    }

    /// The Route file: the Route `demo` and the Route `seed-table`, as YAML documents.
    pub fn yaml(&self) -> String {
        let svcs: Vec<(&str, &str, &str)> = DEMO_SVCS
            .iter()
            .map(|&(ns, name, dev)| (ns, name, self.dev(dev)))
            .collect();
        let demo = route_cr("demo", &self.demo_routes(), &svcs);
        let table = route_cr("seed-table", &self.table_routes(), &[]);
        format!("{demo}---\n{table}")
    }

    /// The same rules as shorthand entries (a JSON array): the CIDR rules of both Routes, then
    /// the Services the Services file resolves (`kube-system/nginx2` is not written).
    pub fn shorthand(&self) -> String {
        let mut routes = self.demo_routes();
        routes.extend(self.table_routes());
        let svcs: Vec<(String, &str)> = DEMO_SVCS
            .iter()
            .filter(|(ns, name, _)| SERVICES.iter().any(|s| (s.0, s.1) == (*ns, *name)))
            .map(|&(ns, name, dev)| (format!("{ns}/{name}"), self.dev(dev)))
            .collect();
        let svcs: Vec<(&str, &str)> = svcs.iter().map(|(s, d)| (s.as_str(), *d)).collect();
        shorthand(&routes, &svcs)
    }

    /// The Services file (`kind: List`).
    pub fn services(&self) -> String {
        let ips: Vec<Vec<IpAddr>> = SERVICES
            .iter()
            .map(|(_, _, ips)| {
                ips.iter()
                    .copied()
                    .filter(|a| self.has(a.is_ipv6()))
                    .collect()
            })
            .collect();
        let svcs: Vec<(&str, &str, &[IpAddr])> = SERVICES
            .iter()
            .zip(&ips)
            .map(|((ns, name, _), ips)| (*ns, *name, ips.as_slice()))
            .collect();
        services_list(&svcs)
    }

    /// Every destination, in the order of the seed's table (Services, OVN range, custom CIDRs,
    /// default), IPv4 before IPv6 for each rule.
    pub fn destinations(&self) -> Vec<Destination> {
        DESTINATIONS
            .iter()
            .filter(|(_, addr, _, _)| self.has(addr.is_ipv6()))
            .map(|&(label, addr, rule, dev)| Destination {
                label,
                addr,
                rule,
                dev: self.dev(dev).to_string(),
            })
            .collect()
    }

    /// The rule entries the agent must write: prefix → interface name.
    pub fn entries(&self) -> BTreeMap<IpNet, String> {
        self.destinations()
            .into_iter()
            .map(|d| (d.rule.parse().expect("a prefix"), d.dev))
            .collect()
    }

    /// The topology the seed runs on: one dual-CNI pod whose OVN interface is `second`.
    pub fn topology(&self) -> Topology {
        Topology::build(TopologyOpts::second(&self.second))
    }

    /// Writes the Services and Route files and `topo`'s first pod for `agent`, starts it and
    /// waits until it manages the pod's two interfaces and has applied the seed (panics after
    /// [`agent::AGENT_TIMEOUT`]).
    pub fn start(&self, agent: &mut Agent, topo: &Topology) {
        agent.write_services(&self.services());
        agent.write_routes(&self.yaml());
        agent.add_topology_pod(topo.pod0());
        agent.start();
        agent.wait_pod_managed(&topo.pod_path(), &["eth0", &self.second]);
        self.wait_applied(agent).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until `agent`'s rule tries hold exactly [`Seed::entries`] (each with its
    /// interface's slot from the status) and the status reports no load error. After
    /// [`agent::AGENT_TIMEOUT`]: what differs, with the agent's log.
    pub fn wait_applied(&self, agent: &Agent) -> Result<(), String> {
        let deadline = Instant::now() + agent::AGENT_TIMEOUT;
        let want = self.entries();
        loop {
            let status = agent.status();
            let slots = status.as_ref().map(Agent::slots).unwrap_or_default();
            let want: BTreeSet<(IpNet, Option<u16>)> = want
                .iter()
                .map(|(n, dev)| (*n, slots.get(dev).copied()))
                .collect();
            let have: BTreeSet<(IpNet, Option<u16>)> = agent::rules(&agent.maps())
                .into_iter()
                .map(|((_, n), v)| (n, Some(v.slot)))
                .collect();
            let errors = status.as_ref().map(Agent::load_errors).unwrap_or_default();
            if have == want && errors.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "rules not applied: want {want:?}, have {have:?}, load errors {errors:?}, \
                     slots {slots:?}\nagent log:\n{}",
                    agent.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the servers saw of one TCP connection, one UDP datagram and one ping from a pod to a
/// destination.
#[derive(Debug)]
pub struct Probe {
    pub dst: IpAddr,
    /// The source address the TCP server saw.
    pub tcp: io::Result<IpAddr>,
    /// The source address the UDP server saw.
    pub udp: io::Result<IpAddr>,
    /// Whether the ping was answered.
    pub ping: bool,
    /// The sources of the echo requests the servers saw.
    pub icmp: Vec<IpAddr>,
}

/// TCP, UDP and one ping from `pod` (of `topo`) to `dst`, in that order, after the servers
/// forgot what they saw before.
pub fn probe(topo: &Topology, pod: &Pod, dst: IpAddr) -> Probe {
    topo.clear_seen();
    let tcp = pod.tcp(dst);
    let udp = pod.udp(dst);
    let ping = pod.ping(dst);
    let icmp = topo.take_icmp_sources();
    Probe {
        dst,
        tcp,
        udp,
        ping,
        icmp,
    }
}

impl Probe {
    /// What went wrong, one line each, when every packet must have arrived from `want` (an
    /// address of `pod`, which names the interfaces in the lines).
    pub fn problems(&self, pod: &Pod, want: IpAddr) -> Vec<String> {
        let dst = self.dst;
        let by = |a: IpAddr| pod.iface_of(a).unwrap_or("none of the pod's").to_string();
        let mut bad = Vec::new();
        for (proto, got) in [("TCP", &self.tcp), ("UDP", &self.udp)] {
            match got {
                Ok(seen) if *seen == want => {}
                Ok(seen) => bad.push(format!(
                    "{proto} to {dst}: server saw {seen} (by {}), want {want} (by {})",
                    by(*seen),
                    by(want)
                )),
                Err(e) => bad.push(format!("{proto} to {dst} failed: {e}")),
            }
        }
        if !self.ping {
            bad.push(format!("ping {dst}: no reply"));
        }
        if self.icmp != vec![want] {
            bad.push(format!(
                "echo requests to {dst} came from {:?}, want [{want}]",
                self.icmp
            ));
        }
        bad
    }
}

/// The reason counters (summed over CPUs) that are not zero, by name.
pub fn nonzero_counters(maps: &Maps) -> Vec<(&'static str, u64)> {
    let t = maps.stats_totals().expect("stats");
    stats::NAMES
        .iter()
        .zip(t)
        .filter(|(_, v)| *v != 0)
        .map(|(n, v)| (*n, v))
        .collect()
}

/// Asserts that no error, collision or oversize drop was counted.
pub fn assert_no_error_counters(maps: &Maps) {
    let t = maps.stats_totals().expect("stats");
    for reason in [
        stats::ERR_MALFORMED,
        stats::ERR_REWRITE,
        stats::ERR_REDIRECT,
        stats::ERR_FLOW_INSERT,
        stats::COLLISION,
        stats::DROP_TOO_BIG,
    ] {
        assert_eq!(
            t[reason as usize],
            0,
            "{}: counters {:?}",
            stats::NAMES[reason as usize],
            nonzero_counters(maps)
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use veer_agent::config::{LoadedRoute, load_str};

    use super::*;

    fn routes(text: &str) -> Vec<LoadedRoute> {
        load_str(Path::new("routes.yaml"), text)
            .unwrap_or_else(|e| panic!("{e:?}\n{text}"))
            .routes
    }

    /// The Route `demo` is the seed's `route-demo.yaml`, with `eth1` renamed to `second`.
    #[test]
    fn demo_route_is_the_seed_demo_route_with_the_ovn_interface_renamed() {
        let fixture = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/seed/route-demo.yaml"),
        )
        .expect("tests/fixtures/seed/route-demo.yaml");
        for second in ["eth1", "net1"] {
            let want = routes(&fixture.replace("\"eth1\"", &format!("\"{second}\"")));
            let have = routes(&Seed::new(second).yaml());
            assert_eq!(have[0].name, "demo");
            assert_eq!(have[0].spec, want[0].spec, "{second}");
        }
    }
}
