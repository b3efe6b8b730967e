//! End-to-end tests of the real `veer` agent binary (`veer run`, standalone mode) on dual-CNI
//! pods made of network namespaces ([`veer_tests::topology`]), with real TCP, UDP and ICMP
//! traffic to servers that report the source address they saw. The agent reads Route,
//! Service and CNI cache files written by the test ([`veer_tests::agent`]) and pins its maps
//! and links under a bpffs root of its own. The rules are the seed's route table
//! ([`veer_tests::seed`]). Root only; nothing outside the test's namespaces, temporary directory and bpffs
//! root is touched, and all of it is removed even when a test fails.
//!
//! Build the agent first: `cargo build -p veer-agent --bin veer` (`cargo xtask test` does).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use veer_agent::maps::Maps;
use veer_common::{DIR_OUT, FLOW_NATIVE, stats};
use veer_tests::{
    agent::{self, Agent, PodEntry},
    privileged::require_root,
    seed::{self, Seed},
    topology::{DEFAULT4, DEFAULT6, Exchanger, Pod, STEERED4, STEERED6, Topology, UNSTEERED4},
};

/// The agent running on a topology. Field order is drop order: the agent (and its pins) go
/// before the namespaces.
struct Env {
    agent: Agent,
    topo: Topology,
}

impl Env {
    /// The seed's one-pod topology, and the agent on `seed`.
    fn new(seed: &Seed) -> Self {
        let topo = seed.topology();
        let mut agent = Agent::new();
        seed.start(&mut agent, &topo);
        Self { agent, topo }
    }

    fn pod(&self) -> &Pod {
        self.topo.pod0()
    }

    /// Waits until the rule tries hold exactly `seed`'s entries (each with its interface's
    /// slot) and the last status reports no load error.
    fn wait_applied(&self, seed: &Seed) {
        seed.wait_applied(&self.agent)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Edits the Route file to `seed`'s and waits until the agent applied it (hot reload).
    fn apply(&self, seed: &Seed) {
        self.agent.write_routes(&seed.yaml());
        self.wait_applied(seed);
    }

    /// Non-zero reason counters, by name.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        seed::nonzero_counters(&self.agent.maps())
    }

    fn counter(&self, reason: u32) -> u64 {
        self.agent.maps().stats_totals().expect("stats")[reason as usize]
    }

    /// No error, collision or oversize drop was counted.
    fn assert_no_errors(&self) {
        seed::assert_no_error_counters(&self.agent.maps());
    }

    /// TCP, UDP and ping from `pod` to `dst`: the server must see `pod`'s address on `iface`
    /// each time. Returns what went wrong.
    fn probe(&self, pod: &Pod, dst: IpAddr, iface: &str) -> Vec<String> {
        seed::probe(&self.topo, pod, dst).problems(pod, pod.addr(iface, dst.is_ipv6()))
    }

    /// Every expectation of `seed`, for `pod`, in both families and all three protocols.
    fn check_table(&self, pod: &Pod, seed: &Seed) {
        let bad: Vec<String> = seed
            .destinations()
            .into_iter()
            .flat_map(|d| {
                self.probe(pod, d.addr, &d.dev)
                    .into_iter()
                    .map(move |b| format!("[{}] {b}", d.label))
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
    let env = Env::new(&seed);
    env.check_table(env.pod(), &seed);
    let steered = env.counter(stats::STEER_NEW);
    assert!(
        steered >= 5 * 3,
        "five steered destinations × TCP/UDP/ICMP: {:?}",
        env.counters()
    );

    // The default route moves to the OVN network: only what no other rule covers follows.
    let moved = seed.clone().default_to(second);
    env.apply(&moved);
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
    let mut env = Env::new(&seed);
    env.agent.wait_rounds(2);
    let r0 = env.agent.round();
    std::thread::sleep(Duration::from_millis(2500));
    let rounds = env.agent.round() - r0;
    assert!(
        rounds <= 4,
        "{rounds} rounds in 2.5 s without any change (resync every 1 s)"
    );
}

/// The status file (and the rule index beside it) in the directory of a watched input: the
/// agent's own writes never wake it, so an idle agent runs only its periodic resync.
#[test]
fn idle_agent_with_its_status_file_beside_its_inputs_runs_only_the_periodic_resync() {
    if !require_root(
        "idle_agent_with_its_status_file_beside_its_inputs_runs_only_the_periodic_resync",
    ) {
        return;
    }
    let seed = Seed::new("eth1");
    let topo = seed.topology();
    let mut agent = Agent::new();
    agent.status_file = agent.services.with_file_name("status.json");
    seed.start(&mut agent, &topo);
    let mut env = Env { agent, topo };
    env.agent.wait_rounds(2);
    let r0 = env.agent.round();
    std::thread::sleep(Duration::from_secs(10));
    let rounds = env.agent.round() - r0;
    assert!(
        rounds <= 12,
        "{rounds} rounds in 10 s without any change (resync every 1 s): the agent wakes on its \
         own writes"
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
    let env = Env::new(&seed);
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
    let env = Env::new(&seed);
    let pod = env.pod();
    // (destination, interface): the default route's destinations by `default`, 172.16.10.0/24's
    // by `steered`, IPv4 and IPv6 each.
    let paths = |default, steered| {
        [
            (IpAddr::from(DEFAULT4), default),
            (DEFAULT6.into(), default),
            (STEERED4.into(), steered),
            (STEERED6.into(), steered),
        ]
    };
    let mut streams = Vec::new();
    for (dst, iface) in paths("eth0", "eth1") {
        let s = pod.echo(dst).expect("connect to the echo server");
        assert_eq!(s.seen, pod.addr(iface, dst.is_ipv6()), "stream to {dst}");
        streams.push((format!("stream to {dst} by {iface}"), s));
    }
    let ex = Exchanger::start(streams);
    std::thread::sleep(Duration::from_millis(300));

    // Swap: the default route to eth1, 172.16.10.0/24 back to eth0 (edit the Route file).
    let swapped = seed.clone().default_to("eth1").cidr_to("eth0");
    env.apply(&swapped);
    let at_change = ex.counts();
    std::thread::sleep(Duration::from_millis(500));
    // New connections take the new paths (while the old ones keep running).
    let mut bad = Vec::new();
    for (dst, iface) in paths("eth1", "eth0") {
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
    let mut env = Env::new(&seed);
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
    let mut env = Env::new(&seed);
    let first = env.pod().clone();
    let base_ifaces = agent::ifaces(&env.agent.maps());
    let base_links = env.agent.link_dirs();
    let base_ids = env.agent.pinned_link_ids();
    assert_eq!(base_ifaces.len(), 2, "eth0 and eth1 of the first pod");
    assert_eq!(base_links.len(), 1);
    assert_eq!(base_ids.len(), 4, "egress and ingress on two interfaces");

    let mut churned_ids = BTreeSet::new();
    for round in 0..10 {
        let (pod, entry) = env.add_pod();
        let ids = env.links_beyond(&base_ids);
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
        assert!(
            flows_of(&env.agent.maps(), &pod) > 0,
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
        assert_eq!(flows_of(&maps, &pod), 0, "round {round}: flows of the pod");
        assert_eq!(
            env.agent.link_dirs(),
            base_links,
            "round {round}: link pins"
        );
    }
    wait_links_gone(&churned_ids, "links of removed pods");
    assert!(
        base_ids.is_subset(&agent::live_link_ids()),
        "the first pod's links are still there"
    );
    assert_eq!(env.agent.pinned_link_ids(), base_ids);

    // A pod that goes while the agent is down: the restarted agent removes what it left.
    let (pod, entry) = env.add_pod();
    assert!(env.probe(&pod, STEERED4.into(), "eth1").is_empty());
    let ids = env.links_beyond(&base_ids);
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
    assert_eq!(flows_of(&maps, &pod), 0, "orphaned flows");
    assert_eq!(env.agent.link_dirs(), base_links, "orphaned link pins");
    wait_links_gone(&ids, "orphaned links");
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

impl Env {
    /// A new pod in the topology, with its CNI cache file; returned once the agent manages it.
    fn add_pod(&mut self) -> (Pod, PodEntry) {
        let pod = self.topo.add_pod();
        let entry = self.agent.add_topology_pod(&pod);
        self.agent
            .wait_pod_managed(&pod.path(), &["eth0", &pod.second]);
        (pod, entry)
    }

    /// The ids of the pinned links that are not in `base`.
    fn links_beyond(&self, base: &BTreeSet<u64>) -> BTreeSet<u64> {
        self.agent
            .pinned_link_ids()
            .difference(base)
            .copied()
            .collect()
    }
}

/// The flow entries from or to any of `pod`'s four addresses.
fn flows_of(maps: &Maps, pod: &Pod) -> usize {
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
    maps.flows
        .keys()
        .filter_map(Result::ok)
        .filter(|k| addrs.contains(&k.saddr) || addrs.contains(&k.daddr))
        .count()
}

/// Waits (≤ 10 s) until none of the links `ids` exists. A link goes when its last reference
/// does: its pin is gone, and its device leaves with the namespace, which the kernel tears
/// down asynchronously.
fn wait_links_gone(ids: &BTreeSet<u64>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = agent::live_link_ids();
        let left: Vec<&u64> = ids.intersection(&live).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what} still exist: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `p`'s OVN-side interface is managed with the facts its second network's ADD
/// configured (link, then addresses, then routes: the agent may see it part-way and converges
/// with the notifications that follow): its entry holds its addresses and gateways, and eth0's
/// entry points its slot at it.
fn wait_steerable(env: &mut Env, p: &Pod) {
    env.agent.wait_pod_managed(&p.path(), &["eth0", "eth1"]);
    let deadline = Instant::now() + agent::AGENT_TIMEOUT;
    loop {
        let ifaces = agent::ifaces(&env.agent.maps());
        let ovn = ifaces.values().find(|i| i.mac == p.ovn_mac);
        let eth0 = ifaces.values().find(|i| i.mac == p.eth0_mac);
        let complete = ovn.zip(eth0).is_some_and(|(o, e)| {
            o.addr4 == p.ovn4.octets()
                && o.addr6 == p.ovn6.octets()
                && o.gw4 != [0; 4]
                && o.gw6 != [0; 16]
                && e.slots.contains(&o.ifindex)
        });
        if complete {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never complete: eth1 {ovn:?}, eth0 {eth0:?}\n{}",
            p.second,
            env.agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The order a real node uses: the loopback network's CNI result is written first (containerd
/// runs it first or in parallel with the others), the default network's interface appears next
/// and the OVN-side one seconds later (Multus → OVN-Kubernetes waits for its annotation). The
/// agent follows the pod's namespace, so the pod is steered once its interfaces exist; a later
/// detach of the OVN interface leaves no entry or link pin of it behind, and a re-attach (a
/// Multus dynamic attachment) is steered again. The OVN-side IPv6 address goes through DAD
/// (tentative first), so IPv6 steering waits for the notification that it became usable.
#[test]
fn interfaces_that_appear_after_the_cni_result_file_are_steered_and_a_detached_one_leaves_nothing()
{
    if !require_root(
        "interfaces_that_appear_after_the_cni_result_file_are_steered_and_a_detached_one_leaves_nothing",
    ) {
        return;
    }
    let seed = Seed::new("eth1");
    let mut env = Env::new(&seed);
    let mut p = env.topo.add_bare_pod();
    // IPv6 as on a real node: the OVN-side address is tentative until DAD completes.
    env.topo.enable_dad(&mut p);
    let netns = p.path();
    // The `-lo` result first: the namespace has nothing but lo.
    env.agent.add_topology_pod(&p);
    let status = env.agent.wait_status("the bare pod listed", |s| {
        Agent::pod_status(s, &netns).is_some()
    });
    let listed = Agent::pod_status(&status, &netns).expect("listed");
    assert!(
        Agent::managed_ifaces(listed).is_empty(),
        "nothing to manage yet: {listed:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    env.topo.wire_default(&p);
    std::thread::sleep(Duration::from_secs(2));
    env.topo.wire_second(&p);
    wait_steerable(&mut env, &p);
    env.check_table(&p, &seed);

    let pins = |env: &Env| -> usize {
        env.agent
            .link_dirs()
            .iter()
            .map(|d| std::fs::read_dir(d).map_or(0, |rd| rd.count()))
            .sum()
    };
    let has_entry = |env: &Env, mac: [u8; 6]| {
        agent::ifaces(&env.agent.maps())
            .keys()
            .any(|(_, m)| *m == mac)
    };
    assert!(
        has_entry(&env, p.ovn_mac),
        "the OVN interface has its entry"
    );
    let with_both = pins(&env);

    // Detach: the interface goes away with everything veer had for it.
    env.topo.unwire_second(&p);
    env.agent
        .wait_status("the pod managed with eth0 only", |s| {
            Agent::pod_status(s, &netns).is_some_and(|p| Agent::managed_ifaces(p) == ["eth0"])
        });
    assert!(
        !has_entry(&env, p.ovn_mac),
        "the detached interface's entry is removed"
    );
    assert!(has_entry(&env, p.eth0_mac), "eth0 keeps its entry");
    assert_eq!(
        pins(&env),
        with_both - 2,
        "its egress and ingress link pins are removed"
    );
    // Traffic a rule steers to eth1 now stays on eth0 (the pod lacks the interface).
    assert!(
        env.probe(&p, STEERED4.into(), "eth0").is_empty(),
        "without eth1 the pod's traffic keeps its kernel route"
    );

    // Re-attach: steered again.
    env.topo.wire_second(&p);
    wait_steerable(&mut env, &p);
    env.check_table(&p, &seed);
    assert_eq!(
        pins(&env),
        with_both,
        "one pair of link pins per interface again"
    );
    env.assert_no_errors();
}

#[test]
fn bad_route_file_keeps_the_previous_rules_and_reports_file_field_and_value() {
    if !require_root("bad_route_file_keeps_the_previous_rules_and_reports_file_field_and_value") {
        return;
    }
    let seed = Seed::new("eth1");
    let mut env = Env::new(&seed);
    let pod = env.pod().clone();

    // A bad edit: the default route would move and 172.16.10.0/24 is mistyped. The whole file
    // is rejected, the previous rules stay.
    let bad = seed
        .clone()
        .default_to("eth1")
        .with_bad_cidr("172.16.10.0/33");
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
    env.agent.write_routes(&fixed.shorthand());
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

#[test]
fn inbound_udp_from_a_steered_prefix_is_answered_by_eth0() {
    if !require_root("inbound_udp_from_a_steered_prefix_is_answered_by_eth0") {
        return;
    }
    let seed = Seed::new("eth1");
    let env = Env::new(&seed);
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

/// One ping from the server namespace to `dst` (its source: the route's `src` hint).
fn ping_from(ns: &std::path::Path, dst: IpAddr) -> bool {
    let d = dst.to_string();
    veer_agent::netns::in_netns(ns, || {
        veer_tests::programs::command("ping")
            .args(["-n", "-q", "-c", "1", "-W", "2", &d])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .expect("enter srv")
}

/// Connections *to* the pod, answered from the address they reached, where the pod's routes
/// send the peer by the other interface (issue 15): the Calico side drops anything from the
/// pod's veth whose source is not its eth0 address, the OVN side has port security, so the
/// reply must leave by the interface owning its source (source-based egress). A peer on the
/// OVN side (172.16.10.7 / fd00:172:16:10::7 in the server namespace, reaching the pod's OVN
/// addresses through the OVN gateway; the pod routes it by its eth0 default route) opens TCP,
/// sends UDP and pings; the mirror peer (10.124.9.9 / fd00:124:0:9::9, reaching the pod's
/// Calico addresses through the node; the pod routes it by its OVN cluster routes) does the
/// same to eth0's addresses. With a rule steering the peers to eth1, to eth0, and with none.
#[test]
#[ignore = "fails in about one run of two: an inbound UDP reply from the OVN-side IPv6 address \
            is sometimes steered by the eth0 rule (steer_new) instead of leaving by eth1; open, \
            see docs/architecture.md Known limits. Run with --ignored."]
fn inbound_to_either_interfaces_address_is_answered_by_that_interface_v4_v6_tcp_udp_icmp() {
    if !require_root("inbound_to_either_interfaces_address_is_answered_by_that_interface") {
        return;
    }
    use veer_tests::topology::{OVN_RANGE4, Server, TopologyOpts, ip_in, netns_path, sysctl};
    let topo = Topology::build(TopologyOpts::default());
    let pod = topo.pod0().clone();
    let mut agent = Agent::new();
    agent.add_topology_pod(&pod);
    agent.start();
    let st = agent.wait_pod_managed(&pod.path(), &["eth0", "eth1"]);
    // The topology's pods have strict rp_filter: the agent reports it.
    let report = Agent::pod_status(&st, &pod.path())
        .expect("pod in status")
        .clone();
    let skipped = format!("{:?}", report.get("skipped"));
    assert!(
        skipped.contains("rp_filter is strict"),
        "strict rp_filter reported: {skipped}"
    );
    // Loose mode, as such pods need (strict drops the requests before any socket sees them).
    for conf in ["all", "eth0", "eth1"] {
        sysctl(&pod.ns, &format!("net.ipv4.conf.{conf}.rp_filter"), "2");
    }
    let srv = netns_path(&topo.srv);
    let mirror6: IpAddr = "fd00:124:0:9::9".parse().unwrap();
    ip_in(
        &topo.srv,
        &["addr", "add", &format!("{mirror6}/128"), "dev", "lo"],
    );
    // (peer, pod address it reaches, the server namespace's route to it)
    let cases: [(IpAddr, IpAddr, &str); 4] = [
        (STEERED4.into(), pod.ovn4.into(), "10.255.2.1"),
        (STEERED6.into(), pod.ovn6.into(), "fd00:ff:2::1"),
        (OVN_RANGE4.into(), pod.v4.into(), "10.255.1.1"),
        (mirror6, pod.v6.into(), "fd00:ff:1::1"),
    ];
    for (peer, local, via) in cases {
        let fam = if local.is_ipv4() { "-4" } else { "-6" };
        let host = format!("{local}/{}", if local.is_ipv4() { 32 } else { 128 });
        let peer_s = peer.to_string();
        ip_in(
            &topo.srv,
            &[fam, "route", "replace", &host, "via", via, "src", &peer_s],
        );
    }
    let port = 7210;
    let _server = Server::start(
        &pod.path(),
        &[
            pod.ovn4.into(),
            pod.ovn6.into(),
            pod.v4.into(),
            pod.v6.into(),
        ],
        port,
        false,
    );
    let rules = |dev: Option<&str>| -> String {
        match dev {
            None => "[]\n".to_string(),
            Some(d) => agent::shorthand(
                &[
                    ("172.16.10.0/24", d),
                    ("fd00:172:16:10::/64", d),
                    ("10.124.9.0/24", d),
                    ("fd00:124:0:9::/64", d),
                ],
                &[],
            ),
        }
    };
    let before_src = agent.maps().stats_totals().unwrap()[stats::SRC_EGRESS as usize];
    for dev in [Some("eth1"), Some("eth0"), None] {
        agent.write_routes(&rules(dev));
        let want = if dev.is_some() { 4 } else { 0 };
        let t0 = Instant::now();
        while agent::rules(&agent.maps()).len() != want {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "rules for {dev:?} not applied"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut bad = Vec::new();
        for (peer, local, _) in cases {
            let dst = SocketAddr::new(local, port);
            let tcp = veer_agent::netns::in_netns(&srv, || veer_tests::topology::tcp_probe(dst))
                .expect("enter srv");
            if tcp.as_ref().ok() != Some(&peer) {
                bad.push(format!("TCP {peer} -> {local}: {tcp:?}"));
            }
            let udp = veer_agent::netns::in_netns(&srv, || {
                veer_tests::topology::udp_probe(Some(peer), dst)
            })
            .expect("enter srv");
            if udp.as_ref().ok() != Some(&peer) {
                bad.push(format!("UDP {peer} -> {local}: {udp:?}"));
            }
            if !ping_from(&srv, local) {
                bad.push(format!("ping {peer} -> {local}: no reply"));
            }
        }
        let maps = agent.maps();
        assert!(
            bad.is_empty(),
            "rule {dev:?}: {} failures:\n{}\ncounters {:?}; port security drops {} / {}, \
             Calico anti-spoofing drops {}",
            bad.len(),
            bad.join("\n"),
            seed::nonzero_counters(&maps),
            topo.port_security_drops("bad_mac"),
            topo.port_security_drops("bad_ip"),
            topo.antispoof_drops(),
        );
    }
    let maps = agent.maps();
    let src = maps.stats_totals().unwrap()[stats::SRC_EGRESS as usize] - before_src;
    // Per rule variant and case: a SYN-ACK, the rest of the TCP exchange, a UDP reply, a ping
    // reply all left by the owning interface.
    assert!(
        src >= 3 * 4 * 4,
        "src_egress {src}: {:?}",
        seed::nonzero_counters(&maps)
    );
    assert_eq!(
        topo.antispoof_drops(),
        0,
        "nothing with a wrong source reached the node"
    );
    assert_eq!(topo.port_security_drops("bad_ip"), 0, "nor the OVN gateway");
    seed::assert_no_error_counters(&maps);
}
