//! End-to-end tests with real traffic through a dual-CNI pod built of network namespaces
//! ([`veer_tests::topology`]): the real programs attached with TCX inside the pod, the pod's
//! interfaces discovered over rtnetlink, and TCP, UDP and ping from the pod to servers that
//! report the source address they saw. Root only; every name is unique, so tests may run in
//! parallel, and nothing is left behind (the namespaces go with the `Topology`).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use ipnet::{Ipv4Net, Ipv6Net};
use veer_agent::{
    attach::{PodLinks, attach_pod},
    dataplane::Dataplane,
    maps::{Maps, rule4_key, rule6_key},
    podnet::{self, IfaceFacts},
};
use veer_common::{DIR_IN, DIR_OUT, FLOW_REVNAT, FLOW_STEER, RuleValue, stats};
use veer_tests::{
    packet,
    privileged::require_root,
    seed,
    topology::{
        CALICO_GW4, CALICO_GW6, OVN_GW_MAC, OVN_GW4, OVN_GW6, OVN4, OVN6, POD_ETH0_MAC,
        POD_OVN_MAC, POD4, POD6, SINK_PORT, STEERED4, STEERED6, Topology, TopologyOpts, UNSTEERED4,
        UNSTEERED6, ip_in, send_frame, udp_probe,
    },
};

const RULESET: u32 = 1;
const RULE_STEER4: u32 = 11;
const RULE_STEER6: u32 = 12;
const RULE_LOCAL4: u32 = 21;

/// The pod with the programs attached and its interfaces and rules in the maps.
struct Steered {
    // Field order is drop order: links and maps before the namespaces.
    _links: PodLinks,
    maps: Maps,
    _dp: Dataplane,
    topo: Topology,
}

fn facts_of<'a>(facts: &'a [IfaceFacts], name: &str) -> &'a IfaceFacts {
    podnet::find(facts, name).unwrap_or_else(|| panic!("no {name} in {facts:?}"))
}

fn steered_pod(second: &str) -> Steered {
    let topo = Topology::build(TopologyOpts::second(second));
    let mut dp = Dataplane::load_unpinned().expect("load eBPF object");
    let mut maps = Maps::from_dataplane(&mut dp).expect("maps");
    let links = attach_pod(&mut dp, &topo.pod_path(), &["eth0".into(), second.into()])
        .expect("attach to the pod's interfaces");

    let facts = podnet::discover(&topo.pod_path()).expect("discover the pod's interfaces");
    assert_eq!(facts.len(), 2, "only eth0 and {second}, no lo: {facts:?}");
    let eth0 = facts_of(&facts, "eth0");
    let ovn = facts_of(&facts, second);
    assert_eq!(
        (eth0.mac, eth0.mtu, eth0.v4, eth0.v6, eth0.gw4, eth0.gw6),
        (
            POD_ETH0_MAC,
            1500,
            Some(POD4),
            Some(POD6),
            Some(CALICO_GW4),
            Some(CALICO_GW6)
        ),
        "{eth0:?}"
    );
    assert_eq!(
        (ovn.mac, ovn.mtu, ovn.v4, ovn.v6, ovn.gw4, ovn.gw6),
        (
            POD_OVN_MAC,
            1400,
            Some(OVN4),
            Some(OVN6),
            Some(OVN_GW4),
            Some(OVN_GW6)
        ),
        "{ovn:?}"
    );
    assert!(eth0.is_ether && eth0.up && ovn.is_ether && ovn.up);
    for (name, ifindex) in &links.ifaces {
        assert_eq!(facts_of(&facts, name).ifindex, *ifindex);
    }
    // As the agent does: the gateways' neighbour entries are kept resolved, so a steered packet
    // never waits for resolution (see `podnet::keep_resolved`).
    let gateways = podnet::gateways(&facts);
    assert_eq!(gateways.len(), 4, "{gateways:?}");
    podnet::keep_resolved(&topo.pod_path(), &gateways).expect("managed gateway neighbours");
    podnet::keep_resolved(&topo.pod_path(), &gateways).expect("idempotent");
    wait_resolved(&topo, &gateways);

    let mut slots = podnet::SlotTargets::default();
    slots.set(0, eth0);
    slots.set(1, ovn);
    for (f, slot) in [(eth0, 0), (ovn, 1)] {
        maps.ifaces
            .insert(
                podnet::iface_key(f),
                podnet::iface_info(f, links.cookie, RULESET, slot, &slots),
                0,
            )
            .expect("insert iface");
    }
    let rule = |rule_id, slot| RuleValue {
        rule_id,
        slot,
        flags: 0,
        via: [0; 16],
    };
    maps.rules4
        .insert(
            &rule4_key(RULESET, "172.16.10.0/24".parse::<Ipv4Net>().unwrap()),
            rule(RULE_STEER4, 1),
            0,
        )
        .expect("rule");
    maps.rules6
        .insert(
            &rule6_key(RULESET, "fd00:172:16:10::/64".parse::<Ipv6Net>().unwrap()),
            rule(RULE_STEER6, 1),
            0,
        )
        .expect("rule");
    // A rule naming the interface the traffic uses anyway: left alone.
    maps.rules4
        .insert(
            &rule4_key(RULESET, "192.168.2.0/24".parse::<Ipv4Net>().unwrap()),
            rule(RULE_LOCAL4, 0),
            0,
        )
        .expect("rule");
    Steered {
        _links: links,
        maps,
        _dp: dp,
        topo,
    }
}

/// Waits (≤ 2 s) until every `(iface, addr)` neighbour of the pod is a resolved managed entry.
fn wait_resolved(topo: &Topology, targets: &[(String, IpAddr)]) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let table =
            ip_in(&topo.pod, &["neigh", "show"]) + &ip_in(&topo.pod, &["-6", "neigh", "show"]);
        let resolved = |(dev, addr): &(String, IpAddr)| {
            table.lines().any(|l| {
                l.starts_with(&format!("{addr} dev {dev} lladdr "))
                    && l.contains("managed")
                    && !l.contains("FAILED")
            })
        };
        if targets.iter().all(resolved) {
            return;
        }
        assert!(Instant::now() < deadline, "gateways not resolved: {table}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// TCP, UDP and ping from the first pod to `dst` succeed and the server sees `want` as the
/// source each time.
fn check_all(topo: &Topology, dst: IpAddr, want: IpAddr, why: &dyn Fn() -> String) {
    let bad = seed::probe(topo, topo.pod0(), dst).problems(topo.pod0(), want);
    assert!(bad.is_empty(), "{}; {}", bad.join("; "), why());
}

fn steering(second: &str) {
    let s = steered_pod(second);
    let why = || format!("counters {:?}", seed::nonzero_counters(&s.maps));
    let rule_packets = |id| s.maps.rule_totals(id).expect("rule stats").packets;

    for (dst, want, rule) in [
        (STEERED4.into(), IpAddr::from(OVN4), Some(RULE_STEER4)),
        (UNSTEERED4.into(), POD4.into(), None),
        (STEERED6.into(), OVN6.into(), Some(RULE_STEER6)),
        (UNSTEERED6.into(), POD6.into(), None),
    ] {
        let before = rule.map(rule_packets);
        check_all(&s.topo, dst, want, &why);
        if let (Some(id), Some(b)) = (rule, before) {
            let after = rule_packets(id);
            // TCP handshake + request + FIN/ACKs, one UDP datagram, one echo request.
            assert!(after >= b + 5, "rule {id} counted {b} → {after}; {}", why());
        }
    }
    assert_eq!(
        rule_packets(RULE_LOCAL4),
        0,
        "a rule for the current path steers nothing"
    );

    let t = s.maps.stats_totals().expect("stats");
    for (reason, min) in [
        (stats::STEER_NEW, 6),
        (stats::STEER_PINNED, 1),
        (stats::REVNAT, 6),
        (stats::PASS_RULE_LOCAL, 1),
        (stats::PASS_NO_RULE, 1),
    ] {
        assert!(
            t[reason as usize] >= min,
            "{} < {min}; {}",
            stats::NAMES[reason as usize],
            why()
        );
    }
    seed::assert_no_error_counters(&s.maps);
    // Flow entries are keyed by addresses: outgoing ones by the pod's own source address.
    let flows: Vec<_> = s.maps.flows.iter().map(|r| r.expect("flows")).collect();
    assert!(
        flows
            .iter()
            .any(|(k, v)| k.dir == DIR_OUT && v.kind == FLOW_STEER)
            && flows
                .iter()
                .any(|(k, v)| k.dir == DIR_IN && v.kind == FLOW_REVNAT),
        "{flows:?}"
    );
    assert!(
        flows.iter().filter(|(k, _)| k.dir == DIR_OUT).all(
            |(k, _)| k.zone == 0 && (k.saddr[..4] == POD4.octets() || k.saddr == POD6.octets())
        ),
        "{flows:?}"
    );
}

#[test]
fn steered_destination_leaves_by_eth1_with_eth1_source_and_unsteered_stays_on_eth0() {
    if !require_root(
        "steered_destination_leaves_by_eth1_with_eth1_source_and_unsteered_stays_on_eth0",
    ) {
        return;
    }
    steering("eth1");
}

#[test]
fn steered_destination_leaves_by_net1_with_net1_source_and_unsteered_stays_on_eth0() {
    if !require_root(
        "steered_destination_leaves_by_net1_with_net1_source_and_unsteered_stays_on_eth0",
    ) {
        return;
    }
    steering("net1");
}

#[test]
fn without_veer_the_pod_reaches_every_server_by_eth0_with_its_calico_address() {
    if !require_root("without_veer_the_pod_reaches_every_server_by_eth0_with_its_calico_address") {
        return;
    }
    let topo = Topology::build(TopologyOpts::default());
    let none = String::new;
    for (dst, want) in [
        (IpAddr::from(STEERED4), IpAddr::from(POD4)),
        (UNSTEERED4.into(), POD4.into()),
        (STEERED6.into(), POD6.into()),
        (UNSTEERED6.into(), POD6.into()),
    ] {
        check_all(&topo, dst, want, &none);
    }
}

#[test]
fn ovn_port_security_drops_frames_with_a_foreign_source_ip_or_mac() {
    if !require_root("ovn_port_security_drops_frames_with_a_foreign_source_ip_or_mac") {
        return;
    }
    let topo = Topology::build(TopologyOpts::second("net1"));
    let sink = topo.sink.as_ref().expect("sink");
    // The pod's own addresses pass (and resolve the gateway's MAC for what follows).
    for (src, gw) in [
        (IpAddr::from(OVN4), IpAddr::from(OVN_GW4)),
        (OVN6.into(), OVN_GW6.into()),
    ] {
        let seen = topo
            .in_pod(|| udp_probe(Some(src), SocketAddr::new(gw, SINK_PORT)))
            .unwrap_or_else(|e| panic!("UDP {src} → {gw}: {e}"));
        assert_eq!(seen, src);
    }
    let (ip0, mac0) = (
        topo.port_security_drops("bad_ip"),
        topo.port_security_drops("bad_mac"),
    );

    // The Calico addresses sent out of the OVN interface (the kernel lets a socket bound to
    // any local address use the connected route): dropped for their source IP.
    for (src, gw) in [
        (IpAddr::from(POD4), IpAddr::from(OVN_GW4)),
        (POD6.into(), OVN_GW6.into()),
    ] {
        topo.in_pod(|| {
            let u = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind");
            u.send_to(b"spoofed-ip", SocketAddr::new(gw, SINK_PORT))
                .expect("send");
        });
    }
    // The right source IP from a foreign MAC.
    let l4 = packet::udp(
        OVN4.into(),
        OVN_GW4.into(),
        40000,
        SINK_PORT,
        b"spoofed-mac",
        false,
    );
    let frame = packet::eth(
        OVN_GW_MAC,
        [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01],
        &packet::ip(OVN4.into(), OVN_GW4.into(), packet::UDP, &l4),
    );
    let second = topo.opts.second.clone();
    topo.in_pod(|| send_frame(&second, &frame))
        .expect("send raw frame");

    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline
        && (topo.port_security_drops("bad_ip") < ip0 + 2
            || topo.port_security_drops("bad_mac") < mac0 + 1)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        topo.port_security_drops("bad_ip") >= ip0 + 2,
        "spoofed source IPs dropped"
    );
    assert!(
        topo.port_security_drops("bad_mac") > mac0,
        "spoofed source MAC dropped"
    );
    let seen: Vec<IpAddr> = sink.seen().into_iter().map(|s| s.peer).collect();
    assert_eq!(
        seen,
        vec![IpAddr::from(OVN4), OVN6.into()],
        "the sink got only the legitimate datagrams"
    );
}

/// The very first packet of the very first steered flow is a single UDP datagram (a DNS query
/// has no quick retransmission to fall back on): it must arrive, not wait for neighbour
/// resolution and leave with the MACs of eth0's gateway.
#[test]
fn first_steered_datagram_of_a_fresh_pod_arrives() {
    if !require_root("first_steered_datagram_of_a_fresh_pod_arrives") {
        return;
    }
    let s = steered_pod("eth1");
    for (dst, want) in [
        (IpAddr::from(STEERED4), IpAddr::from(OVN4)),
        (STEERED6.into(), OVN6.into()),
    ] {
        let got = s.topo.udp(dst);
        assert!(
            matches!(got, Ok(a) if a == want),
            "first UDP datagram to {dst}: {got:?} (want the server to see {want}); counters {:?}",
            seed::nonzero_counters(&s.maps)
        );
    }
}
