//! End-to-end tests of the real `veer` agent binary (`veer run`, standalone mode) on dual-CNI
//! pods made of network namespaces ([`veer_tests::topology`]), with real TCP, UDP and ICMP
//! traffic to servers that report the source address they saw. The agent reads Route,
//! Service and CNI cache files written by the test ([`veer_tests::agent`]) and pins its maps
//! and links under a bpffs root of its own. The rules are the seed's route table (see
//! `Seed`). Root only; nothing outside the test's namespaces, temporary directory and bpffs
//! root is touched, and all of it is removed even when a test fails.
//!
//! Build the agent first: `cargo build -p veer-agent --bin veer` (`cargo xtask test` does).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use veer_common::{DIR_OUT, FLOW_NATIVE, stats};
use veer_tests::{
    agent::{self, Agent, route_cr, services_list},
    privileged::require_root,
    topology::{
        CALICO_CIDR4, CALICO_CIDR6, DEFAULT4, DEFAULT6, Exchanger, OVN_RANGE4, OVN_RANGE6, Pod,
        STEERED4, STEERED6, SVC_ETH0_4, SVC_ETH0_6, SVC_ETH1_4, SVC_ETH1_6, Topology, TopologyOpts,
        UNSTEERED4, UNSTEERED6,
    },
};

/// The seed's route table as Routes, with the interface of the OVN network called `second`,
/// and three knobs the tests turn: where the default route goes, where `172.16.10.0/24` (and
/// its IPv6 counterpart) goes, and one deliberately invalid CIDR.
#[derive(Debug, Clone)]
struct Seed {
    second: String,
    default_dev: String,
    cidr_dev: String,
    bad_cidr: Option<&'static str>,
}

impl Seed {
    fn new(second: &str) -> Self {
        Self {
            second: second.into(),
            default_dev: "eth0".into(),
            cidr_dev: second.into(),
            bad_cidr: None,
        }
    }

    fn default_to(mut self, dev: &str) -> Self {
        self.default_dev = dev.into();
        self
    }

    fn cidr_to(mut self, dev: &str) -> Self {
        self.cidr_dev = dev.into();
        self
    }

    /// The Route file: the seed's demo Route (its `eth1` being `second`) and a Route with the
    /// rest of the seed's table, with IPv6 counterparts.
    fn yaml(&self) -> String {
        let s = self.second.as_str();
        let c = self.cidr_dev.as_str();
        let d = self.default_dev.as_str();
        let demo = route_cr(
            "demo",
            &[
                (self.bad_cidr.unwrap_or("172.16.10.0/24"), c),
                ("172.16.11.0/24", "eth0"),
            ],
            &[
                ("default", "nginx", s),
                ("kube-system", "nginx1", "eth0"),
                ("kube-system", "nginx2", "eth0"),
            ],
        );
        let table = route_cr(
            "seed-table",
            &[
                ("10.124.0.0/16", s),
                ("192.168.2.0/24", "eth0"),
                ("0.0.0.0/0", d),
                ("fd00:124::/32", s),
                ("fd00:172:16:10::/64", c),
                ("fd00:172:16:11::/64", "eth0"),
                ("fd00:192:168:2::/64", "eth0"),
                ("::/0", d),
            ],
            &[],
        );
        format!("{demo}---\n{table}")
    }

    /// The rule entries the agent must write: prefix → interface name.
    fn entries(&self) -> BTreeMap<IpNet, String> {
        let s = &self.second;
        let e = &"eth0".to_string();
        let (c, d) = (&self.cidr_dev, &self.default_dev);
        [
            ("172.16.10.0/24", c),
            ("172.16.11.0/24", e),
            ("10.86.205.109/32", s),
            ("fd00:86::cd:6d/128", s),
            ("10.86.69.17/32", e),
            ("fd00:86::45:11/128", e),
            ("10.124.0.0/16", s),
            ("192.168.2.0/24", e),
            ("0.0.0.0/0", d),
            ("fd00:124::/32", s),
            ("fd00:172:16:10::/64", c),
            ("fd00:172:16:11::/64", e),
            ("fd00:192:168:2::/64", e),
            ("::/0", d),
        ]
        .into_iter()
        .map(|(n, dev)| (n.parse().unwrap(), dev.clone()))
        .collect()
    }

    /// Destinations and the interface their traffic must leave by.
    fn expectations(&self) -> Vec<(&'static str, IpAddr, String)> {
        let s = &self.second;
        let e = "eth0".to_string();
        let (c, d) = (&self.cidr_dev, &self.default_dev);
        vec![
            ("svc kube-system/nginx1", SVC_ETH0_4.into(), e.clone()),
            ("svc kube-system/nginx1", SVC_ETH0_6.into(), e.clone()),
            ("svc default/nginx", SVC_ETH1_4.into(), s.clone()),
            ("svc default/nginx", SVC_ETH1_6.into(), s.clone()),
            ("10.124.0.0/16", OVN_RANGE4.into(), s.clone()),
            ("fd00:124::/32", OVN_RANGE6.into(), s.clone()),
            ("172.16.10.0/24", STEERED4.into(), c.clone()),
            ("fd00:172:16:10::/64", STEERED6.into(), c.clone()),
            ("172.16.11.0/24", CALICO_CIDR4.into(), e.clone()),
            ("fd00:172:16:11::/64", CALICO_CIDR6.into(), e.clone()),
            ("192.168.2.0/24", UNSTEERED4.into(), e.clone()),
            ("fd00:192:168:2::/64", UNSTEERED6.into(), e.clone()),
            ("default", DEFAULT4.into(), d.clone()),
            ("default", DEFAULT6.into(), d.clone()),
        ]
    }
}

/// The Services of the seed's demo Route (`kube-system/nginx2` is left unresolved).
fn services() -> String {
    services_list(&[
        ("default", "nginx", &[SVC_ETH1_4.into(), SVC_ETH1_6.into()]),
        (
            "kube-system",
            "nginx1",
            &[SVC_ETH0_4.into(), SVC_ETH0_6.into()],
        ),
    ])
}

/// The agent running on a topology. Field order is drop order: the agent (and its pins) go
/// before the namespaces.
struct Env {
    agent: Agent,
    topo: Topology,
}

impl Env {
    /// A topology with one pod whose OVN interface is `second`, and the agent on `seed`.
    fn new(second: &str, seed: &Seed) -> Self {
        let topo = Topology::build(TopologyOpts::second(second));
        let mut agent = Agent::new();
        agent.write_services(&services());
        agent.write_routes(&seed.yaml());
        agent.add_topology_pod(topo.pod0());
        agent.start();
        agent.wait_pod_managed(&topo.pod_path(), &["eth0", second]);
        let env = Self { agent, topo };
        env.wait_applied(seed);
        env
    }

    fn pod(&self) -> &Pod {
        self.topo.pod0()
    }

    /// Waits until the rule tries hold exactly `seed`'s entries (each with its interface's
    /// slot) and the last status reports no load error.
    fn wait_applied(&self, seed: &Seed) {
        let deadline = Instant::now() + agent::AGENT_TIMEOUT;
        let want = seed.entries();
        loop {
            let status = self.agent.status();
            let slots = status.as_ref().map(Agent::slots).unwrap_or_default();
            let want: BTreeSet<(IpNet, Option<u16>)> = want
                .iter()
                .map(|(n, dev)| (*n, slots.get(dev).copied()))
                .collect();
            let have: BTreeSet<(IpNet, Option<u16>)> = agent::rules(&self.agent.maps())
                .into_iter()
                .map(|((_, n), v)| (n, Some(v.slot)))
                .collect();
            let errors = status.as_ref().map(Agent::load_errors).unwrap_or_default();
            if have == want && errors.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rules not applied: want {want:?}, have {have:?}, load errors {errors:?}, \
                 slots {slots:?}\nagent log:\n{}",
                self.agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Non-zero reason counters, by name.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let t = self.agent.maps().stats_totals().expect("stats");
        stats::NAMES
            .iter()
            .zip(t)
            .filter(|(_, v)| *v != 0)
            .map(|(n, v)| (*n, v))
            .collect()
    }

    fn counter(&self, reason: u32) -> u64 {
        self.agent.maps().stats_totals().expect("stats")[reason as usize]
    }

    /// No error, collision or oversize drop was counted.
    fn assert_no_errors(&self) {
        let t = self.agent.maps().stats_totals().expect("stats");
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
                self.counters()
            );
        }
    }

    /// TCP, UDP and ping from `pod` to `dst`: the server must see `pod`'s address on `iface`
    /// each time. Returns what went wrong.
    fn probe(&self, pod: &Pod, dst: IpAddr, iface: &str) -> Vec<String> {
        let want = pod.addr(iface, dst.is_ipv6());
        let mut bad = Vec::new();
        self.topo.clear_seen();
        for (proto, got) in [("TCP", pod.tcp(dst)), ("UDP", pod.udp(dst))] {
            match got {
                Ok(seen) if seen == want => {}
                Ok(seen) => bad.push(format!(
                    "{proto} to {dst}: server saw {seen} (by {:?}), want {want} (by {iface})",
                    pod.iface_of(seen)
                )),
                Err(e) => bad.push(format!("{proto} to {dst} failed: {e}")),
            }
        }
        if !pod.ping(dst) {
            bad.push(format!("ping {dst}: no reply"));
        }
        let icmp = self.topo.take_icmp_sources();
        if icmp != vec![want] {
            bad.push(format!(
                "echo requests to {dst} came from {icmp:?}, want [{want}]"
            ));
        }
        bad
    }

    /// Every expectation of `seed`, for `pod`, in both families and all three protocols.
    fn check_table(&self, pod: &Pod, seed: &Seed) {
        let bad: Vec<String> = seed
            .expectations()
            .into_iter()
            .flat_map(|(label, dst, iface)| {
                self.probe(pod, dst, &iface)
                    .into_iter()
                    .map(move |b| format!("[{label}] {b}"))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{} failures:\n{}\ncounters {:?}",
            bad.len(),
            bad.join("\n"),
            self.counters()
        );
    }
}

fn seed_table_steering(second: &str) {
    let seed = Seed::new(second);
    let env = Env::new(second, &seed);
    env.check_table(env.pod(), &seed);
    let steered = env.counter(stats::STEER_NEW);
    assert!(
        steered >= 5 * 3,
        "five steered destinations × TCP/UDP/ICMP: {:?}",
        env.counters()
    );

    // The default route moves to the OVN network: only what no other rule covers follows.
    let moved = seed.clone().default_to(second);
    env.agent.write_routes(&moved.yaml());
    env.wait_applied(&moved);
    env.check_table(env.pod(), &moved);
    env.assert_no_errors();
}

#[test]
fn seed_table_steers_cidrs_services_and_default_route_v4_v6_tcp_udp_icmp_eth1() {
    if !require_root("seed_table_steers_cidrs_services_and_default_route_v4_v6_tcp_udp_icmp_eth1") {
        return;
    }
    seed_table_steering("eth1");
}

#[test]
fn seed_table_steers_cidrs_services_and_default_route_v4_v6_tcp_udp_icmp_net1() {
    if !require_root("seed_table_steers_cidrs_services_and_default_route_v4_v6_tcp_udp_icmp_net1") {
        return;
    }
    seed_table_steering("net1");
}

/// With nothing changing, the agent only runs its periodic resync (1 s here): reading its own
/// inputs must not wake it up.
#[test]
fn idle_agent_runs_only_the_periodic_resync() {
    if !require_root("idle_agent_runs_only_the_periodic_resync") {
        return;
    }
    let seed = Seed::new("eth1");
    let mut env = Env::new("eth1", &seed);
    env.agent.wait_rounds(2);
    let r0 = env.agent.round();
    std::thread::sleep(Duration::from_millis(2500));
    let rounds = env.agent.round() - r0;
    assert!(
        rounds <= 4,
        "{rounds} rounds in 2.5 s without any change (resync every 1 s)"
    );
}

#[test]
fn large_tcp_transfer_to_a_steered_destination_over_the_smaller_ovn_mtu_completes() {
    if !require_root(
        "large_tcp_transfer_to_a_steered_destination_over_the_smaller_ovn_mtu_completes",
    ) {
        return;
    }
    let seed = Seed::new("eth1");
    let env = Env::new("eth1", &seed);
    let pod = env.pod();
    // eth0 has MTU 1500, eth1 1400: the SYN's MSS (1460 from eth0's MTU) must be clamped.
    for (dst, want, bytes) in [
        (IpAddr::from(STEERED4), IpAddr::from(pod.ovn4), 4 << 20),
        (STEERED6.into(), pod.ovn6.into(), 1 << 20),
    ] {
        let mut s = pod.echo(dst).expect("connect to the echo server");
        assert_eq!(s.seen, want, "the stream to {dst} is steered");
        let t = Instant::now();
        s.transfer(bytes).unwrap_or_else(|e| {
            panic!(
                "{bytes} bytes to {dst} and back: {e}; counters {:?}",
                env.counters()
            )
        });
        eprintln!("{bytes} bytes echoed over {dst} in {:?}", t.elapsed());
    }
    assert!(
        env.counter(stats::MSS_CLAMPED) >= 2,
        "SYN MSS clamped: {:?}",
        env.counters()
    );
    env.assert_no_errors();
}

#[test]
fn rule_change_keeps_open_tcp_connections_on_their_path_and_moves_new_ones() {
    if !require_root("rule_change_keeps_open_tcp_connections_on_their_path_and_moves_new_ones") {
        return;
    }
    let seed = Seed::new("eth1");
    let env = Env::new("eth1", &seed);
    let pod = env.pod();
    let mut streams = Vec::new();
    for (dst, iface) in [
        (IpAddr::from(DEFAULT4), "eth0"),
        (DEFAULT6.into(), "eth0"),
        (STEERED4.into(), "eth1"),
        (STEERED6.into(), "eth1"),
    ] {
        let s = pod.echo(dst).expect("connect to the echo server");
        assert_eq!(s.seen, pod.addr(iface, dst.is_ipv6()), "stream to {dst}");
        streams.push((format!("stream to {dst} by {iface}"), s));
    }
    let ex = Exchanger::start(streams);
    std::thread::sleep(Duration::from_millis(300));

    // Swap: the default route to eth1, 172.16.10.0/24 back to eth0 (edit the Route file).
    let swapped = seed.clone().default_to("eth1").cidr_to("eth0");
    env.agent.write_routes(&swapped.yaml());
    env.wait_applied(&swapped);
    let at_change = ex.counts();
    std::thread::sleep(Duration::from_millis(500));
    // New connections take the new paths (while the old ones keep running).
    let mut bad = Vec::new();
    for (dst, iface) in [
        (IpAddr::from(DEFAULT4), "eth1"),
        (DEFAULT6.into(), "eth1"),
        (STEERED4.into(), "eth0"),
        (STEERED6.into(), "eth0"),
    ] {
        bad.extend(env.probe(pod, dst, iface));
        let s = pod.echo(dst).expect("new connection");
        if s.seen != pod.addr(iface, dst.is_ipv6()) {
            bad.push(format!("new stream to {dst}: server saw {}", s.seen));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let (end, errors) = ex.finish();
    assert!(errors.is_empty(), "open connections broke: {errors:?}");
    for (i, (a, b)) in at_change.iter().zip(&end).enumerate() {
        assert!(
            b >= &(a + 10),
            "stream {i} stalled after the change: {a} → {b} round trips"
        );
    }
    assert!(
        bad.is_empty(),
        "new connections: {bad:?}; counters {:?}",
        env.counters()
    );
    env.assert_no_errors();
}

#[test]
fn kill_9_and_restart_of_the_agent_loses_no_packet_and_keeps_the_maps() {
    if !require_root("kill_9_and_restart_of_the_agent_loses_no_packet_and_keeps_the_maps") {
        return;
    }
    let seed = Seed::new("net1");
    let mut env = Env::new("net1", &seed);
    let pod = env.pod().clone();
    let mut streams = Vec::new();
    for dst in [IpAddr::from(STEERED4), DEFAULT4.into()] {
        let s = pod.echo(dst).expect("connect to the echo server");
        streams.push((format!("stream to {dst}"), s));
    }
    let ex = Exchanger::start(streams);
    let pings: Vec<_> = [IpAddr::from(STEERED4), STEERED6.into()]
        .into_iter()
        .map(|dst| {
            let p = pod.clone();
            (
                dst,
                std::thread::spawn(move || p.ping_series(dst, 300, Duration::from_millis(10))),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));

    let maps = env.agent.maps();
    let (rules_before, ifaces_before) = (agent::rules(&maps), agent::ifaces(&maps));
    let links_before = env.agent.link_dirs();
    drop(maps);
    env.agent.kill9();
    std::thread::sleep(Duration::from_millis(300));
    env.agent.start();
    env.agent.wait_pod_managed(&pod.path(), &["eth0", "net1"]);
    let restarted = ex.counts();

    for (dst, h) in pings {
        let (sent, got) = h.join().expect("ping thread");
        assert_eq!(
            (sent, got),
            (300, 300),
            "pings to {dst} across the restart; counters {:?}",
            env.counters()
        );
    }
    let (end, errors) = ex.finish();
    assert!(errors.is_empty(), "streams broke: {errors:?}");
    for (a, b) in restarted.iter().zip(&end) {
        assert!(b > a, "a stream stalled after the restart: {a} → {b}");
    }

    env.agent.wait_rounds(2);
    env.wait_applied(&seed);
    let maps = env.agent.maps();
    assert_eq!(agent::rules(&maps), rules_before, "rules after the restart");
    assert_eq!(
        agent::ifaces(&maps),
        ifaces_before,
        "interface entries after the restart"
    );
    assert_eq!(env.agent.link_dirs(), links_before, "link pins adopted");
    env.check_table(&pod, &seed);
    env.assert_no_errors();
}

#[test]
fn pod_churn_leaves_no_map_entries_pins_or_links_behind() {
    if !require_root("pod_churn_leaves_no_map_entries_pins_or_links_behind") {
        return;
    }
    let seed = Seed::new("eth1");
    let mut env = Env::new("eth1", &seed);
    let first = env.pod().clone();
    let base_ifaces = agent::ifaces(&env.agent.maps());
    let base_links = env.agent.link_dirs();
    let base_ids = env.agent.pinned_link_ids();
    assert_eq!(base_ifaces.len(), 2, "eth0 and eth1 of the first pod");
    assert_eq!(base_links.len(), 1);
    assert_eq!(base_ids.len(), 4, "egress and ingress on two interfaces");

    let mut churned_ids = BTreeSet::new();
    for round in 0..10 {
        let pod = env.topo.add_pod();
        let entry = env.agent.add_topology_pod(&pod);
        env.agent.wait_pod_managed(&pod.path(), &["eth0", "eth1"]);
        let ids: BTreeSet<u64> = env
            .agent
            .pinned_link_ids()
            .difference(&base_ids)
            .copied()
            .collect();
        assert_eq!(ids.len(), 4, "round {round}: links of the new pod");
        churned_ids.extend(&ids);
        // Some traffic, so the pod has flows (steered, reverse and inbound-pinned).
        let bad: Vec<String> = [
            (IpAddr::from(STEERED4), "eth1"),
            (STEERED6.into(), "eth1"),
            (UNSTEERED4.into(), "eth0"),
        ]
        .into_iter()
        .flat_map(|(dst, iface)| env.probe(&pod, dst, iface))
        .collect();
        assert!(bad.is_empty(), "round {round}: {bad:?}");
        let addrs: BTreeSet<[u8; 16]> = [
            IpAddr::from(pod.v4),
            pod.v6.into(),
            pod.ovn4.into(),
            pod.ovn6.into(),
        ]
        .into_iter()
        .map(|a| match a {
            IpAddr::V4(v) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v.octets());
                b
            }
            IpAddr::V6(v) => v.octets(),
        })
        .collect();
        let flows_of_pod = |maps: &veer_agent::maps::Maps| -> usize {
            maps.flows
                .keys()
                .filter_map(Result::ok)
                .filter(|k| addrs.contains(&k.saddr) || addrs.contains(&k.daddr))
                .count()
        };
        assert!(
            flows_of_pod(&env.agent.maps()) > 0,
            "round {round}: the pod's traffic made flows"
        );

        // Even rounds: CNI DEL (cache file removed), then the sandbox goes. Odd rounds: the
        // sandbox goes and the cache file is left behind (the netns path no longer exists).
        if round % 2 == 0 {
            env.agent.remove_pod_file(&entry);
        }
        env.topo.remove_pod(pod.index);
        env.agent.wait_pod_gone(&pod.path());

        let maps = env.agent.maps();
        assert_eq!(
            agent::ifaces(&maps),
            base_ifaces,
            "round {round}: interface entries"
        );
        assert_eq!(flows_of_pod(&maps), 0, "round {round}: flows of the pod");
        assert_eq!(
            env.agent.link_dirs(),
            base_links,
            "round {round}: link pins"
        );
    }
    // The links go when their last reference does (the pins are gone; the devices leave with
    // the namespace, which the kernel tears down asynchronously).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = agent::live_link_ids();
        let leaked: Vec<&u64> = churned_ids.intersection(&live).collect();
        if leaked.is_empty() {
            assert!(
                base_ids.is_subset(&live),
                "the first pod's links are still there"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "links of removed pods still exist: {leaked:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(env.agent.pinned_link_ids(), base_ids);

    // A pod that goes while the agent is down: the restarted agent removes what it left.
    let pod = env.topo.add_pod();
    let entry = env.agent.add_topology_pod(&pod);
    env.agent.wait_pod_managed(&pod.path(), &["eth0", "eth1"]);
    assert!(env.probe(&pod, STEERED4.into(), "eth1").is_empty());
    let ids: BTreeSet<u64> = env
        .agent
        .pinned_link_ids()
        .difference(&base_ids)
        .copied()
        .collect();
    env.agent.kill9();
    env.agent.remove_pod_file(&entry);
    env.topo.remove_pod(pod.index);
    env.agent.start();
    env.agent.wait_pod_managed(&first.path(), &["eth0", "eth1"]);
    let maps = env.agent.maps();
    assert_eq!(
        agent::ifaces(&maps),
        base_ifaces,
        "orphaned interface entries"
    );
    let orphan_flows = maps
        .flows
        .keys()
        .filter_map(Result::ok)
        .filter(|k| {
            k.saddr[..4] == pod.ovn4.octets()
                || k.daddr[..4] == pod.ovn4.octets()
                || k.saddr[..4] == pod.v4.octets()
        })
        .count();
    assert_eq!(orphan_flows, 0, "orphaned flows");
    assert_eq!(env.agent.link_dirs(), base_links, "orphaned link pins");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ids.is_disjoint(&agent::live_link_ids()) {
        assert!(
            Instant::now() < deadline,
            "orphaned links {ids:?} still exist"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // `bpftool link list`: the links running veer's programs are exactly the first pod's four.
    let programs: BTreeSet<u64> = env.agent.pinned_links().into_values().collect();
    let running = agent::live_links()
        .into_iter()
        .filter(|(_, prog)| programs.contains(prog))
        .count();
    assert_eq!(running, 4, "links running veer's programs");
    // The surviving pod was not disturbed.
    env.check_table(&first, &seed);
    env.assert_no_errors();
}

#[test]
fn bad_route_file_keeps_the_previous_rules_and_reports_file_field_and_value() {
    if !require_root("bad_route_file_keeps_the_previous_rules_and_reports_file_field_and_value") {
        return;
    }
    let seed = Seed::new("eth1");
    let mut env = Env::new("eth1", &seed);
    let pod = env.pod().clone();

    // A bad edit: the default route would move and 172.16.10.0/24 is mistyped. The whole file
    // is rejected, the previous rules stay.
    let bad = Seed {
        bad_cidr: Some("172.16.10.0/33"),
        ..seed.clone().default_to("eth1")
    };
    env.agent.write_routes(&bad.yaml());
    let status = env.agent.wait_status("the load error reported", |s| {
        !Agent::load_errors(s).is_empty()
    });
    let errors = Agent::load_errors(&status);
    let file = env.agent.routes.display().to_string();
    assert!(
        errors.iter().any(|e| e.contains(&file)
            && e.contains("spec.route[0].dst")
            && e.contains("\"172.16.10.0/33\"")
            && e.contains("is not a CIDR")),
        "the error names the file, the field and the value: {errors:?}"
    );
    env.agent.wait_rounds(2);
    env.wait_applied_ignoring_errors(&seed);
    env.check_table(&pod, &seed);

    // Fixed (now written as shorthand): applied.
    let fixed = seed.clone().default_to("eth1");
    env.agent.write_routes(&agent::shorthand(
        &shorthand_routes(&fixed),
        &shorthand_svcs(&fixed),
    ));
    env.wait_applied(&fixed);
    env.check_table(&pod, &fixed);
    env.assert_no_errors();
}

impl Env {
    /// [`Env::wait_applied`] for the rules only (a rejected file leaves its error in the
    /// status while the previous rules stay).
    fn wait_applied_ignoring_errors(&self, seed: &Seed) {
        let slots = Agent::slots(&self.agent.status().expect("status"));
        let want: BTreeSet<(IpNet, u16)> = seed
            .entries()
            .iter()
            .map(|(n, dev)| (*n, slots[dev]))
            .collect();
        let have: BTreeSet<(IpNet, u16)> = agent::rules(&self.agent.maps())
            .into_iter()
            .map(|((_, n), v)| (n, v.slot))
            .collect();
        assert_eq!(have, want, "the previous rules stay in force");
    }
}

/// The CIDR rules of a seed as shorthand `(cidr, dev)` entries.
fn shorthand_routes(seed: &Seed) -> Vec<(&'static str, &str)> {
    let s = seed.second.as_str();
    let (c, d) = (seed.cidr_dev.as_str(), seed.default_dev.as_str());
    vec![
        ("172.16.10.0/24", c),
        ("172.16.11.0/24", "eth0"),
        ("10.124.0.0/16", s),
        ("192.168.2.0/24", "eth0"),
        ("0.0.0.0/0", d),
        ("fd00:124::/32", s),
        ("fd00:172:16:10::/64", c),
        ("fd00:172:16:11::/64", "eth0"),
        ("fd00:192:168:2::/64", "eth0"),
        ("::/0", d),
    ]
}

/// The Service rules of a seed as shorthand `("namespace/name", dev)` entries.
fn shorthand_svcs(seed: &Seed) -> Vec<(&'static str, &str)> {
    vec![
        ("default/nginx", seed.second.as_str()),
        ("kube-system/nginx1", "eth0"),
    ]
}

#[test]
fn inbound_udp_from_a_steered_prefix_is_answered_by_eth0() {
    if !require_root("inbound_udp_from_a_steered_prefix_is_answered_by_eth0") {
        return;
    }
    let seed = Seed::new("eth1");
    let env = Env::new("eth1", &seed);
    let pod = env.pod();
    let srv = veer_tests::topology::netns_path(&env.topo.srv);
    let before = env.counter(stats::PINNED_INBOUND);
    for (peer, local) in [
        (IpAddr::from(STEERED4), IpAddr::from(pod.v4)),
        (STEERED6.into(), pod.v6.into()),
    ] {
        // The pod's UDP service, on every address (the reply's source is the kernel's choice).
        let any: IpAddr = if local.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let server = pod.in_ns(|| UdpSocket::bind(SocketAddr::new(any, 7100)).expect("bind"));
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let responder = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            for _ in 0..3 {
                let Ok((n, from)) = server.recv_from(&mut buf) else {
                    return;
                };
                let _ = server.send_to(&buf[..n], from);
            }
        });
        // A peer behind 172.16.10.0/24 (steered to eth1) starts the flow; it reaches the pod
        // on eth0. Its connected socket takes replies only from the pod's eth0 address, and
        // the server namespace's strict rp_filter only by the node.
        let peer_sock = veer_agent::netns::in_netns(&srv, || {
            let u = UdpSocket::bind(SocketAddr::new(peer, 0)).expect("bind peer");
            u.connect(SocketAddr::new(local, 7100)).expect("connect");
            u
        })
        .expect("enter srv");
        peer_sock
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        for i in 0..3u8 {
            let msg = [b'q', i];
            peer_sock.send(&msg).expect("send");
            let mut buf = [0u8; 16];
            let n = peer_sock.recv(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "datagram {i} from {peer} to {local}: no reply by eth0 ({e}); counters {:?}",
                    env.counters()
                )
            });
            assert_eq!(&buf[..n], &msg);
        }
        responder.join().unwrap();
    }
    assert!(
        env.counter(stats::PINNED_INBOUND) >= before + 2,
        "the inbound flows were pinned: {:?}",
        env.counters()
    );
    let native: Vec<_> = env
        .agent
        .maps()
        .flows
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| k.dir == DIR_OUT && v.kind == FLOW_NATIVE)
        .collect();
    assert!(native.len() >= 2, "native flow entries: {native:?}");
    env.assert_no_errors();
}

/// The demo (`cargo xtask demo`): every row of both tables is right.
#[test]
fn demo_prints_every_row_ok_before_and_after_moving_the_default_route() {
    if !require_root("demo_prints_every_row_ok_before_and_after_moving_the_default_route") {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_veer-demo"))
        .env("VEER_BIN", agent::veer_bin())
        .output()
        .expect("run veer-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "veer-demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| destination"))
        .collect();
    assert_eq!(rows.len(), 2 * 7, "two tables of seven rows:\n{stdout}");
    assert!(
        rows.iter().all(|r| r.trim_end().ends_with("| OK |")),
        "every row OK:\n{stdout}"
    );
    assert!(
        rows[6].contains("eth0") && rows[13].contains("eth1"),
        "the default route moved from eth0 to eth1:\n{stdout}"
    );
}
