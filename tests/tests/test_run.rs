//! BPF_PROG_TEST_RUN suite (root): crafted frames through the real programs, each test in a
//! network namespace of its own. Every rewrite is checked byte by byte against the input (only
//! the expected bytes may change) and every checksum is recomputed from scratch by the test.
//!
//! Topology of the harness pod: `eth0` (slot 0, Calico: 10.244.1.5, fd00:244::5, MTU 1500,
//! gw 169.254.1.1 / fe80::ecee:eeff:feee:eeee) and `eth1` (slot 1, OVN: 10.124.2.5,
//! fd00:124::5, MTU 1400, gw 10.124.2.1 / fd00:124::1).

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use veer_common::{
    Config, DIR_IN, DIR_OUT, FAMILY_V4, FLOW_NATIVE, FLOW_REVNAT, FLOW_STEER, FlowKey, FlowValue,
    ST_CLOSING, ST_EST, ST_NONE, ST_SYN, stats,
};
use veer_tests::{harness::*, ns::in_fresh_netns, packet::*, privileged::require_root};

fn a(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs a test body in its own namespace with a fresh harness, if privileged.
fn with_harness(name: &str, f: impl FnOnce(&mut Harness) + Send) {
    if !require_root(name) {
        return;
    }
    in_fresh_netns(|| {
        let mut h = Harness::new();
        f(&mut h)
    });
}

/// Offsets where two frames differ.
fn changed(a: &[u8], b: &[u8]) -> BTreeSet<usize> {
    assert_eq!(a.len(), b.len(), "frame length changed");
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .collect()
}

/// Asserts that only bytes in `allowed` ranges changed.
fn only_changed(before: &[u8], after: &[u8], allowed: &[std::ops::Range<usize>]) {
    for i in changed(before, after) {
        assert!(
            allowed.iter().any(|r| r.contains(&i)),
            "byte {i} changed ({:#04x} -> {:#04x}) outside {allowed:?}",
            before[i],
            after[i]
        );
    }
}

fn v6(s: &str) -> bool {
    s.contains(':')
}

/// Byte ranges of the source address, IPv4 header checksum and L4 checksum of a frame.
fn src_rewrite_ranges(is_v6: bool, proto: u8) -> Vec<std::ops::Range<usize>> {
    let (src, l4) = if is_v6 { (22..38, 54) } else { (26..30, 34) };
    let mut r = vec![src];
    if !is_v6 {
        r.push(24..26);
    }
    match proto {
        TCP => r.push(l4 + 16..l4 + 18),
        UDP => r.push(l4 + 6..l4 + 8),
        ICMPV6 => r.push(l4 + 2..l4 + 4),
        _ => {}
    }
    r
}

fn dst_rewrite_ranges(is_v6: bool, proto: u8) -> Vec<std::ops::Range<usize>> {
    let mut r = src_rewrite_ranges(is_v6, proto);
    r[0] = if is_v6 { 38..54 } else { 30..34 };
    // Destination MAC is rewritten for re-delivery on the original interface.
    r.push(0..6);
    r
}

fn flow(h: &Harness, dir: u8, kind: u8) -> Vec<(FlowKey, FlowValue)> {
    h.flows()
        .into_iter()
        .filter(|(k, v)| k.dir == dir && v.kind == kind)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Foundation: the object passes libbpf's loader and the verifier; parsing and counting.

#[test]
fn bpftool_loadall_accepts_the_release_object() {
    if !require_root("bpftool loadall") {
        return;
    }
    let obj = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/ebpf/bpfel-unknown-none/release/veer-ebpf"
    );
    let dir = format!("/sys/fs/bpf/veer-test-loadall-{}", std::process::id());
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _c = Cleanup(dir.clone());
    let out = veer_tests::programs::command("bpftool")
        .args(["prog", "loadall", obj, &dir, "type", "classifier"])
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool prog loadall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pinned: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pinned.sort();
    assert_eq!(
        pinned,
        vec!["veer_egress", "veer_ingress"],
        "both classifiers verified and pinned"
    );
}

#[test]
fn unmanaged_interface_passes_ipv4_tcp_ipv6_and_truncated_frames_byte_for_byte() {
    with_harness("unmanaged", |h| {
        h.unregister(h.eth0.ifindex);
        let v4 = tcp_frame(
            a("10.244.1.5"),
            a("172.16.10.7"),
            40000,
            80,
            SYN,
            &mss_opt(1460),
        );
        let v6f = udp_frame(a("fd00:244::5"), a("fd00:172:16:10::7"), 40000, 53, false);
        let mut trunc = v4.clone();
        // Cut inside the TCP header. (BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter
        // than an IPv4 header, so that case cannot reach a program through it.)
        trunc.truncate(14 + 20 + 10);
        for (frame, family, verdict) in [
            (&v4, "pkt_ipv4", "pass_unmanaged"),
            (&v6f, "pkt_ipv6", "pass_unmanaged"),
            (&trunc, "pkt_ipv4", "err_malformed"),
        ] {
            let before = h.stats();
            let r = h.egress(h.eth0.ifindex, frame);
            assert_eq!(r.ret, TC_ACT_OK);
            assert_eq!(&r.out, frame, "frame modified");
            let mut want = vec![(family, 1), (verdict, 1)];
            want.sort();
            assert_eq!(Harness::delta(&before, &h.stats()), want);
        }
    });
}

#[test]
fn arp_and_other_non_ip_frames_pass_untouched_and_are_counted() {
    with_harness("non-ip", |h| {
        let arp = eth_raw([0xff; 6], SRC_MAC, 0x0806, &[0u8; 28]);
        let lldp = eth_raw([0x01, 0x80, 0xc2, 0, 0, 0x0e], SRC_MAC, 0x88cc, &[0u8; 40]);
        for f in [&arp, &lldp] {
            for prog in ["egress", "ingress"] {
                let before = h.stats();
                let r = if prog == "egress" {
                    h.egress(h.eth0.ifindex, f)
                } else {
                    h.ingress(h.eth1.ifindex, f)
                };
                assert_eq!(r.ret, TC_ACT_OK);
                assert_eq!(&r.out, f);
                assert_eq!(
                    Harness::delta(&before, &h.stats()),
                    vec![("pass_not_ip", 1)]
                );
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 1. Longest prefix wins.

#[test]
fn longest_prefix_wins_service_over_cidr_over_default_v4_and_v6() {
    with_harness("lpm", |h| {
        // default → eth1, service range → eth0, one Service → eth1
        h.rule("0.0.0.0/0", 1, 1, None);
        h.rule("10.86.0.0/16", 0, 2, None);
        h.rule("10.86.205.109/32", 1, 3, None);
        h.rule("::/0", 1, 4, None);
        h.rule("fd00:86::/64", 0, 5, None);
        h.rule("fd00:86::205:109/128", 1, 6, None);
        for (dst, want_ret, want_rule) in [
            ("8.8.8.8", TC_ACT_REDIRECT, Some(1)),
            ("10.86.1.1", TC_ACT_OK, None),
            ("10.86.205.109", TC_ACT_REDIRECT, Some(3)),
            ("2001:db8::1", TC_ACT_REDIRECT, Some(4)),
            ("fd00:86::1", TC_ACT_OK, None),
            ("fd00:86::205:109", TC_ACT_REDIRECT, Some(6)),
        ] {
            let src = if v6(dst) { "fd00:244::5" } else { "10.244.1.5" };
            let f = udp_frame(a(src), a(dst), 41000, 53, false);
            let r = h.egress(h.eth0.ifindex, &f);
            assert_eq!(r.ret, want_ret, "{dst}");
            if let Some(id) = want_rule {
                assert_eq!(h.rule_stats(id).0, 1, "{dst}: rule {id} counted once");
            } else {
                assert_eq!(r.out, f, "{dst}: rule-local packet modified");
            }
        }
        assert_eq!(
            h.rule_stats(2).0,
            0,
            "rule pointing at the own interface steers nothing"
        );
    });
}

#[test]
fn no_match_leaves_the_packet_exactly_as_routed() {
    with_harness("miss", |h| {
        h.rule("172.16.10.0/24", 1, 1, None);
        for (src, dst) in [
            ("10.244.1.5", "192.168.2.7"),
            ("fd00:244::5", "fd00:192:168:2::7"),
        ] {
            for f in [
                tcp_frame(a(src), a(dst), 40000, 80, SYN, &mss_opt(1460)),
                udp_frame(a(src), a(dst), 40000, 53, false),
                echo_frame(a(src), a(dst), true, 7),
            ] {
                let before = h.stats();
                let r = h.egress(h.eth0.ifindex, &f);
                assert_eq!((r.ret, &r.out), (TC_ACT_OK, &f));
                assert!(Harness::delta(&before, &h.stats()).contains(&("pass_no_rule", 1)));
            }
        }
        assert!(h.flows().is_empty(), "a miss creates no flow state");
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Source translation, checksums, next hop.

fn steer_case(h: &mut Harness, src: &str, dst: &str, proto: u8, zero_udp_csum: bool) {
    let is_v6 = v6(src);
    let f = match proto {
        TCP => tcp_frame(a(src), a(dst), 40001, 443, SYN, &mss_opt(1000)),
        UDP => udp_frame(a(src), a(dst), 40001, 53, zero_udp_csum),
        _ => echo_frame(a(src), a(dst), true, 0x4242),
    };
    let before = h.stats();
    let r = h.egress(h.eth0.ifindex, &f);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "{dst} proto {proto}");
    let p = parse(&r.out);
    assert_eq!(
        p.src,
        h.eth1.addr(is_v6),
        "source must become eth1's address"
    );
    assert_eq!(p.dst, a(dst));
    only_changed(&f, &r.out, &src_rewrite_ranges(is_v6, proto));
    verify_checksums(&r.out).unwrap_or_else(|e| panic!("{dst} proto {proto}: {e}"));
    if zero_udp_csum {
        assert_eq!(
            &r.out[40..42],
            &[0, 0],
            "IPv4 UDP zero checksum must stay zero"
        );
    }
    let d = Harness::delta(&before, &h.stats());
    assert!(d.contains(&("steer_new", 1)), "{d:?}");
}

#[test]
fn steered_packets_get_eth1_source_and_valid_checksums_tcp_udp_icmp_v4() {
    with_harness("steer-v4", |h| {
        h.rule("172.16.10.0/24", 1, 9, None);
        steer_case(h, "10.244.1.5", "172.16.10.7", TCP, false);
        steer_case(h, "10.244.1.5", "172.16.10.8", UDP, false);
        steer_case(h, "10.244.1.5", "172.16.10.9", UDP, true);
        steer_case(h, "10.244.1.5", "172.16.10.10", ICMP, false);
        assert_eq!(h.rule_stats(9).0, 4);
        // Flow state: one outgoing and one reverse entry per flow, next hop = eth1's gateway.
        let out = flow(h, DIR_OUT, FLOW_STEER);
        assert_eq!(out.len(), 4);
        for (k, v) in &out {
            assert_eq!(k.family, FAMILY_V4);
            assert_eq!(&v.nexthop[..4], &[10, 124, 2, 1]);
            assert_eq!(v.ifindex, h.eth1.ifindex);
            assert_eq!(&v.addr[..4], &[10, 124, 2, 5]);
            assert_eq!(v.rule_id, 9);
        }
        let rev = flow(h, DIR_IN, FLOW_REVNAT);
        assert_eq!(rev.len(), 4);
        for (k, v) in &rev {
            assert_eq!(
                &k.daddr[..4],
                &[10, 124, 2, 5],
                "replies are keyed by eth1's address"
            );
            assert_eq!(&v.addr[..4], &[10, 244, 1, 5], "and restore eth0's");
            assert_eq!(v.ifindex, h.eth0.ifindex);
            assert_eq!(v.mac, h.eth0.mac);
        }
    });
}

#[test]
fn steered_packets_get_eth1_source_and_valid_checksums_tcp_udp_icmpv6() {
    with_harness("steer-v6", |h| {
        h.rule("fd00:172:16:10::/64", 1, 9, None);
        steer_case(h, "fd00:244::5", "fd00:172:16:10::7", TCP, false);
        steer_case(h, "fd00:244::5", "fd00:172:16:10::8", UDP, false);
        steer_case(h, "fd00:244::5", "fd00:172:16:10::9", ICMPV6, false);
        for (_, v) in flow(h, DIR_OUT, FLOW_STEER) {
            assert_eq!(
                v.nexthop,
                "fd00:124::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets()
            );
        }
    });
}

#[test]
fn next_hop_is_the_rules_via_else_the_interface_gateway_else_the_destination() {
    with_harness("nexthop", |h| {
        h.rule("172.16.10.0/24", 1, 1, Some(a("10.124.2.254")));
        h.rule("172.16.11.0/24", 1, 2, None);
        h.egress(
            h.eth0.ifindex,
            &udp_frame(a("10.244.1.5"), a("172.16.10.7"), 1, 2, false),
        );
        h.egress(
            h.eth0.ifindex,
            &udp_frame(a("10.244.1.5"), a("172.16.11.7"), 1, 2, false),
        );
        h.eth1.gw4 = None;
        h.register_ifaces();
        h.egress(
            h.eth0.ifindex,
            &udp_frame(a("10.244.1.5"), a("172.16.11.8"), 1, 2, false),
        );
        let mut hops: Vec<_> = flow(h, DIR_OUT, FLOW_STEER)
            .into_iter()
            .map(|(k, v)| (k.daddr[3], v.nexthop[..4].to_vec()))
            .collect();
        hops.sort();
        assert_eq!(
            hops,
            vec![
                (7, vec![10, 124, 2, 1]),
                (7, vec![10, 124, 2, 254]),
                (8, vec![172, 16, 11, 8])
            ]
        );
    });
}

#[test]
fn pod_without_the_rules_interface_or_address_family_is_skipped_untouched() {
    with_harness("no-target", |h| {
        h.rule("172.16.10.0/24", 2, 1, None); // slot 2: the pod has no such interface
        h.rule("fd00:172::/32", 1, 2, None);
        let f = udp_frame(a("10.244.1.5"), a("172.16.10.7"), 1, 2, false);
        let before = h.stats();
        let r = h.egress(h.eth0.ifindex, &f);
        assert_eq!((r.ret, &r.out), (TC_ACT_OK, &f));
        assert!(Harness::delta(&before, &h.stats()).contains(&("pass_no_target", 1)));
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Replies are restored and re-delivered on the original interface.

fn reply_case(h: &mut Harness, pod: &str, server: &str, proto: u8) {
    let is_v6 = v6(pod);
    let eth1 = h.eth1.addr(is_v6);
    let (out, reply) = match proto {
        TCP => (
            tcp_frame(a(pod), a(server), 40002, 443, SYN, &mss_opt(1460)),
            tcp_frame(a(server), eth1, 443, 40002, SYN | ACK, &mss_opt(1460)),
        ),
        UDP => (
            udp_frame(a(pod), a(server), 40002, 53, false),
            udp_frame(a(server), eth1, 53, 40002, false),
        ),
        _ => (
            echo_frame(a(pod), a(server), true, 77),
            echo_frame(a(server), eth1, false, 77),
        ),
    };
    assert_eq!(h.egress(h.eth0.ifindex, &out).ret, TC_ACT_REDIRECT);
    let before = h.stats();
    let r = h.ingress(h.eth1.ifindex, &reply);
    assert_eq!(
        r.ret, TC_ACT_REDIRECT,
        "reply must be re-delivered ({server}, {proto})"
    );
    let p = parse(&r.out);
    assert_eq!(p.dst, a(pod), "destination restored to eth0's address");
    assert_eq!(
        p.dst_mac, h.eth0.mac,
        "destination MAC is eth0's (not OTHERHOST)"
    );
    let mut allowed = dst_rewrite_ranges(is_v6, proto);
    if proto == TCP {
        let l4 = if is_v6 { 54 } else { 34 };
        allowed.push(l4 + 22..l4 + 24); // MSS clamped on the SYN-ACK
    }
    only_changed(&reply, &r.out, &allowed);
    verify_checksums(&r.out).unwrap_or_else(|e| panic!("{server} {proto}: {e}"));
    assert!(Harness::delta(&before, &h.stats()).contains(&("revnat", 1)));
}

#[test]
fn replies_of_steered_flows_get_their_destination_restored_v4() {
    with_harness("reply-v4", |h| {
        h.rule("172.16.10.0/24", 1, 1, None);
        reply_case(h, "10.244.1.5", "172.16.10.7", TCP);
        reply_case(h, "10.244.1.5", "172.16.10.7", UDP);
        reply_case(h, "10.244.1.5", "172.16.10.7", ICMP);
    });
}

#[test]
fn replies_of_steered_flows_get_their_destination_restored_v6() {
    with_harness("reply-v6", |h| {
        h.rule("fd00:172:16:10::/64", 1, 1, None);
        reply_case(h, "fd00:244::5", "fd00:172:16:10::7", TCP);
        reply_case(h, "fd00:244::5", "fd00:172:16:10::7", UDP);
        reply_case(h, "fd00:244::5", "fd00:172:16:10::7", ICMPV6);
    });
}

#[test]
fn ingress_traffic_not_of_a_translated_flow_is_untouched() {
    with_harness("ingress-other", |h| {
        h.rule("172.16.10.0/24", 1, 1, None);
        // A reply to eth1's address for a flow we never translated (native eth1 traffic).
        let f = tcp_frame(
            a("172.16.10.7"),
            a("10.124.2.5"),
            443,
            5555,
            SYN | ACK,
            &mss_opt(1460),
        );
        let r = h.ingress(h.eth1.ifindex, &f);
        assert_eq!((r.ret, &r.out), (TC_ACT_OK, &f));
    });
}

// ---------------------------------------------------------------------------------------------
// 4. ICMP errors and MTU.

#[test]
fn syn_to_smaller_mtu_interface_gets_mss_clamped_v4_and_v6() {
    with_harness("mss", |h| {
        h.rule("172.16.10.0/24", 1, 1, None);
        h.rule("fd00:172::/32", 1, 2, None);
        for (src, dst, want) in [
            ("10.244.1.5", "172.16.10.7", 1360),
            ("fd00:244::5", "fd00:172::7", 1340),
        ] {
            let f = tcp_frame(a(src), a(dst), 40003, 80, SYN, &mss_opt(1460));
            let before = h.stats();
            let r = h.egress(h.eth0.ifindex, &f);
            assert_eq!(r.ret, TC_ACT_REDIRECT);
            assert_eq!(mss_of(&r.out), Some(want));
            verify_checksums(&r.out).unwrap();
            assert!(Harness::delta(&before, &h.stats()).contains(&("mss_clamped", 1)));
        }
        // An MSS already small enough is left alone.
        let f = tcp_frame(
            a("10.244.1.5"),
            a("172.16.10.8"),
            40004,
            80,
            SYN,
            &mss_opt(1200),
        );
        let r = h.egress(h.eth0.ifindex, &f);
        assert_eq!(mss_of(&r.out), Some(1200));
    });
}

#[test]
fn oversize_udp_to_smaller_mtu_interface_is_dropped_and_counted_not_mangled() {
    with_harness("too-big", |h| {
        h.rule("172.16.10.0/24", 1, 1, None);
        let src = a("10.244.1.5");
        let dst = a("172.16.10.7");
        let l4 = udp(src, dst, 40005, 9, &[0x55; 1450], false);
        let f = eth(DST_MAC, SRC_MAC, &ip(src, dst, UDP, &l4));
        let before = h.stats();
        let r = h.egress(h.eth0.ifindex, &f);
        assert_eq!(r.ret, TC_ACT_SHOT);
        assert!(Harness::delta(&before, &h.stats()).contains(&("drop_too_big", 1)));
    });
}

/// Builds an ICMP error from `router` to eth1's address quoting the steered packet `quoted`
/// (the frame as it left eth1).
fn icmp_error_about(quoted_frame: &[u8], router: IpAddr, to: IpAddr, v6: bool) -> Vec<u8> {
    let quoted = &quoted_frame[14..quoted_frame.len().min(14 + if v6 { 40 + 8 } else { 28 })];
    let (ty, code, rest) = if v6 {
        (2u8, 0u8, 1280u32.to_be_bytes()) // packet too big, MTU 1280
    } else {
        let mut r = [0u8; 4];
        r[2..].copy_from_slice(&1400u16.to_be_bytes());
        (3u8, 4u8, r) // fragmentation needed, next-hop MTU 1400
    };
    let m = icmp(router, to, ty, code, rest, quoted);
    let proto = if v6 { ICMPV6 } else { ICMP };
    eth(DST_MAC, SRC_MAC, &ip(router, to, proto, &m))
}

#[test]
fn icmp_errors_about_steered_flows_are_translated_inner_header_included() {
    with_harness("icmp-err", |h| {
        h.rule("172.16.10.0/24", 1, 1, None);
        h.rule("fd00:172::/32", 1, 2, None);
        for (pod, server, router) in [
            ("10.244.1.5", "172.16.10.7", "10.124.2.1"),
            ("fd00:244::5", "fd00:172::7", "fd00:124::1"),
        ] {
            let is_v6 = v6(pod);
            let syn = tcp_frame(a(pod), a(server), 40006, 80, SYN, &mss_opt(1200));
            let sent = h.egress(h.eth0.ifindex, &syn);
            assert_eq!(sent.ret, TC_ACT_REDIRECT);
            let err = icmp_error_about(&sent.out, a(router), h.eth1.addr(is_v6), is_v6);
            verify_checksums(&err).unwrap();
            let before = h.stats();
            let r = h.ingress(h.eth1.ifindex, &err);
            assert_eq!(r.ret, TC_ACT_REDIRECT, "{pod}");
            let p = parse(&r.out);
            assert_eq!(p.dst, a(pod), "outer destination restored");
            assert_eq!(p.dst_mac, h.eth0.mac);
            // The quoted packet is the original one again: its source is eth0's address.
            let inner_src = if is_v6 {
                IpAddr::from(<[u8; 16]>::try_from(&r.out[54 + 8 + 8..54 + 8 + 24]).unwrap())
            } else {
                IpAddr::from(<[u8; 4]>::try_from(&r.out[34 + 8 + 12..34 + 8 + 16]).unwrap())
            };
            assert_eq!(inner_src, a(pod), "quoted source restored");
            verify_checksums(&r.out).unwrap_or_else(|e| panic!("{pod}: {e}"));
            assert!(Harness::delta(&before, &h.stats()).contains(&("revnat_icmp_err", 1)));
        }
    });
}

#[test]
fn icmp_errors_about_unknown_flows_are_untouched() {
    with_harness("icmp-err-other", |h| {
        let orig = tcp_frame(
            a("10.124.2.5"),
            a("172.16.10.7"),
            40007,
            80,
            SYN,
            &mss_opt(1200),
        );
        let err = icmp_error_about(&orig, a("10.124.2.1"), a("10.124.2.5"), false);
        let r = h.ingress(h.eth1.ifindex, &err);
        assert_eq!((r.ret, &r.out), (TC_ACT_OK, &err));
    });
}

// ---------------------------------------------------------------------------------------------
// 5. Flow pinning.

#[test]
fn rule_change_applies_to_new_flows_only_established_flows_keep_their_path() {
    with_harness("pinning", |h| {
        h.rule("172.16.10.0/24", 1, 1, None);
        let (pod, srv) = (a("10.244.1.5"), a("172.16.10.7"));
        assert_eq!(
            h.egress(h.eth0.ifindex, &tcp_frame(pod, srv, 40010, 80, SYN, &[]))
                .ret,
            TC_ACT_REDIRECT
        );
        // A connection that started before any rule: mid-stream segments keep the kernel path.
        let old_flow = tcp_frame(pod, a("172.16.10.8"), 40011, 80, ACK, &[]);
        let before = h.stats();
        let r = h.egress(h.eth0.ifindex, &old_flow);
        assert_eq!((r.ret, &r.out), (TC_ACT_OK, &old_flow));
        assert!(Harness::delta(&before, &h.stats()).contains(&("pass_tcp_unpinned", 1)));

        // The rule goes away (the agent leaves a tombstone): the steered connection keeps going
        // through eth1.
        h.bury("172.16.10.0/24", 1, 1);
        let r = h.egress(h.eth0.ifindex, &tcp_frame(pod, srv, 40010, 80, ACK, &[]));
        assert_eq!(
            r.ret, TC_ACT_REDIRECT,
            "established flow must keep its path"
        );
        assert_eq!(parse(&r.out).src, h.eth1.addr(false));
        let st: Vec<_> = flow(h, DIR_OUT, FLOW_STEER)
            .into_iter()
            .map(|(_, v)| v.state)
            .collect();
        assert_eq!(st, vec![ST_EST], "first ACK establishes the flow");
        // A new connection to the same server now stays on eth0: a tombstone steers nothing new.
        let n = tcp_frame(pod, srv, 40012, 80, SYN, &[]);
        let before = h.stats();
        let r = h.egress(h.eth0.ifindex, &n);
        assert_eq!((r.ret, &r.out), (TC_ACT_OK, &n));
        assert!(Harness::delta(&before, &h.stats()).contains(&("pass_no_rule", 1)));
        // Once the tombstone is gone too, the destination is simply not ours.
        h.unrule("172.16.10.0/24");
        let r = h.egress(h.eth0.ifindex, &tcp_frame(pod, srv, 40010, 80, ACK, &[]));
        assert_eq!(
            r.ret, TC_ACT_OK,
            "uncovered destination: the flow table is not consulted"
        );
    });
}

#[test]
fn closed_flows_idle_out_and_are_decided_again() {
    with_harness("expiry", |h| {
        let cfg = Config {
            tcp_close_timeout_s: 1,
            ..Config::DEFAULT
        };
        h.maps.config.set(0, cfg, 0).unwrap();
        h.rule("172.16.10.0/24", 1, 1, None);
        let (pod, srv) = (a("10.244.1.5"), a("172.16.10.7"));
        h.egress(h.eth0.ifindex, &tcp_frame(pod, srv, 40020, 80, SYN, &[]));
        h.egress(
            h.eth0.ifindex,
            &tcp_frame(pod, srv, 40020, 80, FIN | ACK, &[]),
        );
        let st: Vec<_> = flow(h, DIR_OUT, FLOW_STEER)
            .into_iter()
            .map(|(_, v)| v.state)
            .collect();
        assert_eq!(st, vec![ST_CLOSING]);
        h.bury("172.16.10.0/24", 1, 1);
        std::thread::sleep(Duration::from_millis(2300));
        let before = h.stats();
        let last_ack = tcp_frame(pod, srv, 40020, 80, ACK, &[]);
        let r = h.egress(h.eth0.ifindex, &last_ack);
        assert_eq!(
            (r.ret, &r.out),
            (TC_ACT_OK, &last_ack),
            "expired flow is decided again"
        );
        let d = Harness::delta(&before, &h.stats());
        assert!(d.contains(&("flow_expired", 1)), "{d:?}");
        assert!(flow(h, DIR_OUT, FLOW_STEER).is_empty());
        assert!(
            flow(h, DIR_IN, FLOW_REVNAT).is_empty(),
            "reverse entry removed with it"
        );
    });
}

/// `VEER_CONFIG_V1` as docs/operations.md writes it: one timeout set, every other field zero.
/// The set field applies to its state; each zero field is its own default (a datapath that
/// ignored the entry unless `other_timeout_s` was set kept the established flow for 6 h).
#[test]
fn one_timeout_set_with_the_other_fields_zero_expires_that_state_only() {
    with_harness("per-field-timeout", |h| {
        let cfg = Config {
            tcp_est_timeout_s: 1,
            ..Config::default()
        };
        h.maps.config.set(0, cfg, 0).unwrap();
        h.rule("172.16.10.0/24", 1, 1, None);
        let (pod, srv) = (a("10.244.1.5"), a("172.16.10.7"));
        h.egress(h.eth0.ifindex, &tcp_frame(pod, srv, 40040, 80, SYN, &[]));
        h.egress(h.eth0.ifindex, &tcp_frame(pod, srv, 40040, 80, ACK, &[]));
        let udp = udp_frame(pod, srv, 40041, 53, false);
        assert_eq!(h.egress(h.eth0.ifindex, &udp).ret, TC_ACT_REDIRECT);
        let st: Vec<_> = flow(h, DIR_OUT, FLOW_STEER)
            .into_iter()
            .map(|(_, v)| v.state)
            .collect();
        assert_eq!(st.len(), 2);
        assert!(st.contains(&ST_EST) && st.contains(&ST_NONE), "{st:?}");
        // Idle past the established timeout (1 s, plus the 1 s last-seen granularity), far
        // below every default.
        std::thread::sleep(Duration::from_millis(2300));
        let before = h.stats();
        let ack = tcp_frame(pod, srv, 40040, 80, ACK, &[]);
        let r = h.egress(h.eth0.ifindex, &ack);
        assert_eq!(
            (r.ret, &r.out),
            (TC_ACT_OK, &ack),
            "the idle established flow expired: an unpinned segment keeps the kernel path"
        );
        let d = Harness::delta(&before, &h.stats());
        assert!(d.contains(&("flow_expired", 1)), "{d:?}");
        assert!(d.contains(&("pass_tcp_unpinned", 1)), "{d:?}");
        // The UDP flow idled as long, but its timeout field is zero: the 60 s default holds.
        let before = h.stats();
        let r = h.egress(h.eth0.ifindex, &udp);
        assert_eq!(r.ret, TC_ACT_REDIRECT, "UDP flow still pinned");
        let d = Harness::delta(&before, &h.stats());
        assert!(d.contains(&("steer_pinned", 1)), "{d:?}");
        assert!(!d.iter().any(|(n, _)| *n == "flow_expired"), "{d:?}");
        let left: Vec<_> = flow(h, DIR_OUT, FLOW_STEER)
            .into_iter()
            .map(|(k, _)| k.proto)
            .collect();
        assert_eq!(left, vec![17], "only the UDP flow is left");
    });
}

/// `veer debug on|off` writes the configuration entry by read-modify-write: an operator's
/// timeouts (zero fields included) survive it byte for byte.
#[test]
fn debug_flag_switching_keeps_the_operator_timeouts() {
    with_harness("debug-flag-rmw", |h| {
        let operator = Config {
            tcp_est_timeout_s: 3600,
            ..Config::default()
        };
        h.maps.config.set(0, operator, 0).unwrap();
        assert!(h.maps.set_debug_flag(true).unwrap(), "written");
        let on = h.maps.config_entry().unwrap();
        assert!(on.debug());
        assert_eq!(on, operator.with_debug(true));
        assert_eq!(on.timeout_s(ST_EST), 3600);
        assert!(
            !h.maps.set_debug_flag(true).unwrap(),
            "already on: not written"
        );
        assert!(h.maps.set_debug_flag(false).unwrap());
        assert_eq!(h.maps.config_entry().unwrap(), operator);
    });
}

#[test]
fn syn_then_syn_ack_moves_the_reverse_entry_to_established() {
    with_harness("tcp-state", |h| {
        h.rule("172.16.10.0/24", 1, 1, None);
        let (pod, srv) = (a("10.244.1.5"), a("172.16.10.7"));
        h.egress(h.eth0.ifindex, &tcp_frame(pod, srv, 40030, 80, SYN, &[]));
        let rev: Vec<_> = flow(h, DIR_IN, FLOW_REVNAT)
            .into_iter()
            .map(|(_, v)| v.state)
            .collect();
        assert_eq!(rev, vec![ST_SYN]);
        h.ingress(
            h.eth1.ifindex,
            &tcp_frame(srv, a("10.124.2.5"), 80, 40030, SYN | ACK, &[]),
        );
        let rev: Vec<_> = flow(h, DIR_IN, FLOW_REVNAT)
            .into_iter()
            .map(|(_, v)| v.state)
            .collect();
        assert_eq!(rev, vec![ST_EST]);
        h.ingress(
            h.eth1.ifindex,
            &tcp_frame(srv, a("10.124.2.5"), 80, 40030, RST, &[]),
        );
        let rev: Vec<_> = flow(h, DIR_IN, FLOW_REVNAT)
            .into_iter()
            .map(|(_, v)| v.state)
            .collect();
        assert_eq!(rev, vec![ST_CLOSING]);
    });
}

/// The reply entry of the steered TCP flow `pod:sport → srv:80` (translated to eth1's address).
fn rev_key(h: &Harness, srv: IpAddr, sport: u16) -> FlowKey {
    let k: Vec<_> = flow(h, DIR_IN, FLOW_REVNAT)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| u16::from_be(k.dport) == sport && k.saddr[..4] == a4(srv))
        .collect();
    assert_eq!(k.len(), 1, "one reply entry for port {sport}");
    k[0]
}

fn a4(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(v) => v.octets(),
        IpAddr::V6(_) => panic!("IPv4 only"),
    }
}

fn half_evicted(h: &Harness) -> u64 {
    h.stats()[stats::FLOW_HALF_EVICTED as usize]
}

#[test]
fn a_steered_flow_that_lost_half_of_its_entry_pair_is_counted_once_and_repaired() {
    with_harness("half-evicted", |h| {
        h.rule("172.16.10.0/24", 1, 1, None);
        let (pod, srv, xlat) = (a("10.244.1.5"), a("172.16.10.7"), a("10.124.2.5"));
        let seg = |sport: u16, flags: u8| tcp_frame(pod, srv, sport, 80, flags, &[]);

        // Control: both halves present; SYN, ACK (state change) and FIN (state change) are
        // checked and count nothing.
        for flags in [SYN, ACK, ACK | FIN] {
            assert_eq!(
                h.egress(h.eth0.ifindex, &seg(40040, flags)).ret,
                TC_ACT_REDIRECT
            );
        }
        assert_eq!(half_evicted(h), 0, "{:?}", h.stats());

        // The reply entry disappears (as an LRU eviction would do it): the next packet that
        // refreshes the outgoing entry (SYN → established) counts it once and restores it.
        assert_eq!(
            h.egress(h.eth0.ifindex, &seg(40041, SYN)).ret,
            TC_ACT_REDIRECT
        );
        let rk = rev_key(h, srv, 40041);
        let original = h.maps.flows.get(&rk, 0).unwrap();
        h.maps.flows.remove(&rk).unwrap();
        assert_eq!(
            h.egress(h.eth0.ifindex, &seg(40041, ACK)).ret,
            TC_ACT_REDIRECT
        );
        assert_eq!(half_evicted(h), 1);
        let restored = h.maps.flows.get(&rk, 0).expect("reply entry restored");
        assert_eq!(
            (
                restored.kind,
                restored.state,
                restored.rule_id,
                restored.ifindex
            ),
            (FLOW_REVNAT, ST_EST, original.rule_id, original.ifindex)
        );
        assert_eq!(
            (
                restored.addr,
                restored.mac,
                restored.mss,
                restored.created_ns
            ),
            (
                original.addr,
                original.mac,
                original.mss,
                original.created_ns
            )
        );
        // Counted once: later packets find the pair whole; replies are translated again.
        h.egress(h.eth0.ifindex, &seg(40041, ACK | FIN));
        assert_eq!(half_evicted(h), 1);
        let reply = tcp_frame(srv, xlat, 80, 40041, ACK, &[]);
        let r = h.ingress(h.eth1.ifindex, &reply);
        assert_eq!(veer_tests::packet::parse(&r.out).dst, pod, "reply restored");

        // The outgoing entry disappears: the retransmitted SYN finds only the reply entry,
        // counts it and is steered again with a whole pair.
        assert_eq!(
            h.egress(h.eth0.ifindex, &seg(40042, SYN)).ret,
            TC_ACT_REDIRECT
        );
        let out: Vec<_> = flow(h, DIR_OUT, FLOW_STEER)
            .into_iter()
            .filter(|(k, _)| u16::from_be(k.sport) == 40042)
            .collect();
        assert_eq!(out.len(), 1);
        h.maps.flows.remove(&out[0].0).unwrap();
        let before = h.stats();
        assert_eq!(
            h.egress(h.eth0.ifindex, &seg(40042, SYN)).ret,
            TC_ACT_REDIRECT
        );
        let d = Harness::delta(&before, &h.stats());
        assert!(d.contains(&("flow_half_evicted", 1)), "{d:?}");
        assert!(d.contains(&("steer_new", 1)), "{d:?}");
        assert!(
            h.maps.flows.get(&out[0].0, 0).is_ok(),
            "outgoing entry back"
        );
        rev_key(h, srv, 40042);
    });
}

// ---------------------------------------------------------------------------------------------
// 6. Replies to inbound connections are never steered.

#[test]
fn replies_to_inbound_connections_leave_where_they_came_in() {
    with_harness("inbound", |h| {
        h.rule("172.16.10.0/24", 1, 1, None);
        let (pod, client) = (a("10.244.1.5"), a("172.16.10.7"));
        // UDP request arrives on eth0 from a client a rule would steer: pinned native.
        let before = h.stats();
        // Arriving on eth0: addressed to eth0's MAC.
        let l4 = udp(client, pod, 5353, 53, b"query", false);
        let q = eth(
            h.eth0.mac,
            [0x02, 0, 0, 0, 0, 0x99],
            &ip(client, pod, UDP, &l4),
        );
        assert_eq!(h.ingress(h.eth0.ifindex, &q).out, q);
        assert!(Harness::delta(&before, &h.stats()).contains(&("pinned_inbound", 1)));
        let reply = udp_frame(pod, client, 53, 5353, false);
        let r = h.egress(h.eth0.ifindex, &reply);
        assert_eq!((r.ret, &r.out), (TC_ACT_OK, &reply));
        let natives = flow(h, DIR_OUT, FLOW_NATIVE);
        assert_eq!(natives.len(), 1);
        // TCP: the SYN-ACK of an inbound connection is not a SYN, so it is never steered.
        let synack = tcp_frame(pod, client, 8080, 33000, SYN | ACK, &mss_opt(1460));
        let r = h.egress(h.eth0.ifindex, &synack);
        assert_eq!((r.ret, &r.out), (TC_ACT_OK, &synack));
        // Ping replies from the pod are never steered either.
        let pong = echo_frame(pod, client, false, 9);
        let r = h.egress(h.eth0.ifindex, &pong);
        assert_eq!((r.ret, &r.out), (TC_ACT_OK, &pong));
    });
}

// ---------------------------------------------------------------------------------------------
// 7. Translation collisions.

#[test]
fn translated_tuple_already_in_use_is_not_steered_and_counted() {
    with_harness("collision", |h| {
        h.rule("172.16.10.0/24", 1, 1, None);
        let (srv, eth1) = (a("172.16.10.7"), h.eth1.addr(false));
        // A second pod address (secondary on eth0) already owns eth1-addr:40040 → srv:80 through
        // a translated flow; a native flow marker works the same way.
        let first = tcp_frame(a("10.244.1.6"), srv, 40040, 80, SYN, &[]);
        assert_eq!(h.egress(h.eth0.ifindex, &first).ret, TC_ACT_REDIRECT);
        let second = tcp_frame(a("10.244.1.5"), srv, 40040, 80, SYN, &[]);
        let before = h.stats();
        let r = h.egress(h.eth0.ifindex, &second);
        assert_eq!((r.ret, &r.out), (TC_ACT_OK, &second));
        assert!(Harness::delta(&before, &h.stats()).contains(&("collision", 1)));
        // Replies for the tuple still go to the first flow's socket only.
        let reply = tcp_frame(srv, eth1, 80, 40040, SYN | ACK, &[]);
        let r = h.ingress(h.eth1.ifindex, &reply);
        assert_eq!(parse(&r.out).dst, a("10.244.1.6"));
        // A retransmitted SYN of the first flow is still steered.
        assert_eq!(h.egress(h.eth0.ifindex, &first).ret, TC_ACT_REDIRECT);
    });
}

// ---------------------------------------------------------------------------------------------
// 8. Frames that are not ours.

#[test]
fn multicast_broadcast_link_local_fragments_and_extension_headers_pass_untouched() {
    with_harness("not-ours", |h| {
        h.rule("0.0.0.0/0", 1, 1, None);
        h.rule("::/0", 1, 2, None);
        let pod4 = a("10.244.1.5");
        let pod6 = a("fd00:244::5");
        let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "mcast ip",
                udp_frame(pod4, a("239.1.1.1"), 1, 2, false),
                "pass_mcast",
            ),
            (
                "bcast ip",
                udp_frame(pod4, a("255.255.255.255"), 1, 2, false),
                "pass_mcast",
            ),
            (
                "link-local gw",
                udp_frame(pod4, a("169.254.1.1"), 1, 2, false),
                "pass_mcast",
            ),
            (
                "v6 mcast",
                udp_frame(pod6, a("ff02::1"), 1, 2, false),
                "pass_mcast",
            ),
            (
                "v6 link-local",
                udp_frame(pod6, a("fe80::1"), 1, 2, false),
                "pass_mcast",
            ),
        ];
        let mut bmac = udp_frame(pod4, a("8.8.8.8"), 1, 2, false);
        bmac[..6].copy_from_slice(&[0xff; 6]);
        cases.push(("bcast mac", bmac, "pass_mcast"));
        let mut frag = udp_frame(pod4, a("8.8.8.8"), 1, 2, false);
        frag[20] |= 0x20; // MF
        let c = ipv4_checksum(&frag[14..34]);
        frag[24..26].copy_from_slice(&c.to_be_bytes());
        cases.push(("v4 first fragment", frag.clone(), "pass_fragment"));
        let mut later = frag.clone();
        later[20] = 0x00;
        later[21] = 0x10; // offset 128 bytes
        let c = ipv4_checksum(&later[14..34]);
        later[24..26].copy_from_slice(&c.to_be_bytes());
        cases.push(("v4 later fragment", later, "pass_fragment"));
        let fh = [17u8, 0, 0, 1, 0, 0, 0, 42]; // fragment header, more fragments
        let mut l4 = fh.to_vec();
        l4.extend(udp(pod6, a("2001:db8::1"), 1, 2, b"x", false));
        cases.push((
            "v6 fragment",
            eth(
                DST_MAC,
                SRC_MAC,
                &ipv6(
                    "fd00:244::5".parse().unwrap(),
                    "2001:db8::1".parse().unwrap(),
                    44,
                    &l4,
                ),
            ),
            "pass_fragment",
        ));
        let hbh = [17u8, 0, 1, 4, 0, 0, 0, 0];
        let mut l4 = hbh.to_vec();
        l4.extend(udp(pod6, a("2001:db8::1"), 1, 2, b"x", false));
        cases.push((
            "v6 hop-by-hop",
            eth(
                DST_MAC,
                SRC_MAC,
                &ipv6(
                    "fd00:244::5".parse().unwrap(),
                    "2001:db8::1".parse().unwrap(),
                    0,
                    &l4,
                ),
            ),
            "pass_ipv6_ext",
        ));
        let mut trunc_tcp = tcp_frame(pod4, a("8.8.8.8"), 1, 2, SYN, &[]);
        trunc_tcp.truncate(34 + 12);
        cases.push(("truncated tcp", trunc_tcp, "err_malformed"));
        let mut bad_ihl = udp_frame(pod4, a("8.8.8.8"), 1, 2, false);
        bad_ihl[14] = 0x44;
        cases.push(("ihl < 5", bad_ihl, "err_malformed"));
        let gre = eth(
            DST_MAC,
            SRC_MAC,
            &ipv4(
                "10.244.1.5".parse().unwrap(),
                "8.8.8.8".parse().unwrap(),
                47,
                &[0; 24],
            ),
        );
        cases.push(("gre", gre, "pass_other_proto"));
        for (what, f, counter) in cases {
            for ingress in [false, true] {
                let before = h.stats();
                let r = if ingress {
                    h.ingress(h.eth1.ifindex, &f)
                } else {
                    h.egress(h.eth0.ifindex, &f)
                };
                assert_eq!(r.ret, TC_ACT_OK, "{what}");
                assert_eq!(r.out, f, "{what} was modified");
                let d = Harness::delta(&before, &h.stats());
                assert!(d.iter().any(|(n, _)| *n == counter), "{what}: {d:?}");
            }
        }
        assert!(h.flows().is_empty(), "nothing here creates flow state");
    });
}

// ---------------------------------------------------------------------------------------------
// Source-based egress: a packet whose source is another interface's address of the same pod
// leaves by that interface, untranslated, before any rule or flow logic.

/// The frame as it leaves `from` (source MAC = that interface's).
fn leaving(from: &Iface, mut f: Vec<u8>) -> Vec<u8> {
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f[6..12].copy_from_slice(&from.mac);
    f
}

/// The replies a pod sends to a peer that reached it on the interface owning `pod`: SYN-ACK
/// (MSS already below the owner's MTU, so nothing is clamped), UDP, ICMP echo reply.
fn replies(pod: IpAddr, peer: IpAddr) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "syn-ack",
            tcp_frame(pod, peer, 8080, 33000, SYN | ACK, &mss_opt(1300)),
        ),
        ("ack", tcp_frame(pod, peer, 8080, 33001, ACK, &[])),
        ("udp", udp_frame(pod, peer, 53, 5353, false)),
        ("echo reply", echo_frame(pod, peer, false, 9)),
    ]
}

#[test]
fn a_sibling_interfaces_source_leaves_by_it_untranslated_whatever_the_rules_v4_v6() {
    with_harness("srcegress", |h| {
        let (eth0, eth1) = (h.eth0.clone(), h.eth1.clone());
        for v6 in [false, true] {
            let peer = if v6 {
                a("fd00:172:16:10::7")
            } else {
                a("172.16.10.7")
            };
            let prefix = if v6 {
                "fd00:172:16:10::/64"
            } else {
                "172.16.10.0/24"
            };
            // No rule, a rule steering the peer to eth1, a rule steering it to eth0.
            for rule in [None, Some(1), Some(0)] {
                if let Some(slot) = rule {
                    h.rule(prefix, slot, 5, None);
                }
                // eth1's address leaving eth0 (the kernel routed the peer via eth0), and the
                // mirror: eth0's address leaving eth1.
                for (from, owner) in [(&eth0, &eth1), (&eth1, &eth0)] {
                    for (what, f) in replies(owner.addr(v6), peer) {
                        let f = leaving(from, f);
                        let before = h.stats();
                        let r = h.egress(from.ifindex, &f);
                        let d = Harness::delta(&before, &h.stats());
                        assert_eq!(
                            r.ret, TC_ACT_REDIRECT,
                            "{what} from {} leaving {} (rule {rule:?}): {d:?}",
                            owner.name, from.name
                        );
                        assert_eq!(r.out, f, "{what}: untranslated, byte for byte");
                        let fam = if v6 { "pkt_ipv6" } else { "pkt_ipv4" };
                        assert_eq!(d, vec![(fam, 1), ("src_egress", 1)], "{what}");
                    }
                }
            }
        }
        assert!(
            h.flows().is_empty(),
            "source-based egress keeps no flow state"
        );
        assert_eq!(h.rule_stats(5), (0, 0), "no rule counted it");
    });
}

#[test]
fn source_based_egress_clamps_a_syn_acks_mss_to_the_owners_mtu() {
    with_harness("srcegress-mss", |h| {
        let (eth0, eth1) = (h.eth0.clone(), h.eth1.clone());
        for (v6, want) in [(false, 1360), (true, 1340)] {
            let peer = if v6 {
                a("fd00:172:16:10::7")
            } else {
                a("172.16.10.7")
            };
            let f = leaving(
                &eth0,
                tcp_frame(eth1.addr(v6), peer, 8080, 33000, SYN | ACK, &mss_opt(1460)),
            );
            let r = h.egress(eth0.ifindex, &f);
            assert_eq!(r.ret, TC_ACT_REDIRECT);
            assert_eq!(mss_of(&r.out), Some(want), "eth1's MTU is 1400");
            assert_eq!(parse(&r.out).src, eth1.addr(v6), "source untouched");
            verify_checksums(&r.out).unwrap();
        }
    });
}

#[test]
fn another_pods_or_an_unknown_source_is_not_redirected_and_left_to_the_rules() {
    with_harness("srcegress-foreign", |h| {
        let eth0 = h.eth0.clone();
        h.rule("172.16.11.0/24", 1, 5, None);
        let peer = a("172.16.10.7");
        // Another pod on the node: its OVN interface has the same ifindex as ours (ifindexes
        // are per namespace), another MAC and another namespace cookie.
        let other_mac = [0x02, 0, 0, 0, 0, 0x77];
        let other = a("10.124.2.6");
        let mut info = h
            .maps
            .ifaces
            .get(&veer_common::IfaceKey::new(h.eth1.ifindex, h.eth1.mac), 0)
            .unwrap();
        info.netns_cookie = h.cookie + 1;
        info.mac = other_mac;
        info.addr4 = [10, 124, 2, 6];
        h.maps
            .ifaces
            .insert(
                veer_common::IfaceKey::new(h.eth1.ifindex, other_mac),
                info,
                0,
            )
            .unwrap();
        let (ifx, cookie) = (h.eth1.ifindex, h.cookie);
        h.own_addr(other, ifx, other_mac, cookie + 1, 24);
        // A forged entry claiming our cookie for the other pod's interface: the interface's own
        // entry (the agent's view) still says another pod.
        let forged = a("10.124.2.7");
        let mut info2 = info;
        info2.addr4 = [10, 124, 2, 7];
        let forged_mac = [0x02, 0, 0, 0, 0, 0x78];
        h.maps
            .ifaces
            .insert(
                veer_common::IfaceKey::new(h.eth1.ifindex, forged_mac),
                info2,
                0,
            )
            .unwrap();
        h.own_addr(forged, ifx, forged_mac, cookie, 24);
        for (src, side) in [(other, true), (forged, true), (a("10.9.9.9"), false)] {
            for (what, f) in replies(src, peer) {
                let f = leaving(&eth0, f);
                let before = h.stats();
                let r = h.egress(eth0.ifindex, &f);
                let d = Harness::delta(&before, &h.stats());
                assert_ne!(r.ret, TC_ACT_REDIRECT, "{what} from {src}: {d:?}");
                assert!(
                    !d.iter().any(|(n, _)| *n == "src_egress"),
                    "{what} from {src}: {d:?}"
                );
                assert_eq!(
                    d.iter().any(|(n, _)| *n == "src_foreign"),
                    side,
                    "{what} from {src}: {d:?}"
                );
                // Today's logic decided: replies (not SYNs, not echo requests) pass as routed.
                assert_eq!((r.ret, &r.out), (TC_ACT_OK, &f), "{what} from {src}");
            }
        }
        // A SYN from another pod's address is no exception either: the rule logic decides it
        // like any SYN leaving our eth0 (source-based egress never redirects it to the other
        // pod's interface).
        let syn = leaving(
            &eth0,
            tcp_frame(other, peer, 40000, 80, SYN, &mss_opt(1300)),
        );
        let before = h.stats();
        let _ = h.egress(eth0.ifindex, &syn);
        let d = Harness::delta(&before, &h.stats());
        assert!(!d.iter().any(|(n, _)| *n == "src_egress"), "{d:?}");
    });
}

#[test]
fn the_common_path_own_source_is_unchanged_by_source_based_egress() {
    with_harness("srcegress-common", |h| {
        h.rule("172.16.10.0/24", 1, 5, None);
        let (eth0, eth1) = (h.eth0.clone(), h.eth1.clone());
        for (from, dst) in [(&eth0, "192.168.2.7"), (&eth1, "172.16.10.7")] {
            for (what, f) in replies(from.addr(false), a(dst)) {
                let f = leaving(from, f);
                let before = h.stats();
                let r = h.egress(from.ifindex, &f);
                let d = Harness::delta(&before, &h.stats());
                assert_eq!((r.ret, &r.out), (TC_ACT_OK, &f), "{what}: {d:?}");
                assert!(
                    !d.iter().any(|(n, _)| n.starts_with("src_")),
                    "{what}: {d:?}"
                );
            }
        }
        // A SYN from eth0's own address is still steered by the rule.
        let syn = tcp_frame(
            eth0.v4.into(),
            a("172.16.10.7"),
            40000,
            80,
            SYN,
            &mss_opt(1300),
        );
        let before = h.stats();
        let r = h.egress(eth0.ifindex, &syn);
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        assert!(Harness::delta(&before, &h.stats()).contains(&("steer_new", 1)));
    });
}
