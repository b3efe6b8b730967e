//! Property test (root): for random rule sets and random destinations, the decision the real
//! egress program makes (through BPF_PROG_TEST_RUN) and the kernel trie's own answer equal the
//! plain longest-prefix reference model in `veer_agent::lpm` (the model `veer trace` uses).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::{
    prelude::*,
    test_runner::{Config as PtConfig, TestCaseError, TestRunner},
};
use veer_agent::{
    lpm::RefRules,
    maps::{rule4_key, rule6_key},
};
use veer_common::{DIR_OUT, RuleValue};
use veer_tests::{harness::*, ns::in_fresh_netns, packet::udp_frame, privileged::require_root};

/// A unicast address the programs may steer (not multicast, link-local, loopback, 0/8).
fn steerable(v6: bool, bits: u128) -> IpAddr {
    if v6 {
        let mut o = bits.to_be_bytes();
        o[0] = 0x20 + o[0] % 0xd0; // 2000::/3 .. fcxx
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        let mut o = (bits as u32).to_be_bytes();
        o[0] = 1 + o[0] % 223;
        if o[0] == 127 || o[0] == 169 {
            o[0] = 10;
        }
        IpAddr::V4(Ipv4Addr::from(o))
    }
}

#[derive(Debug, Clone)]
struct Case {
    /// (ruleset, v6?, address bits, prefix length, slot)
    rules: Vec<(u32, bool, u128, u8, u16)>,
    /// (v6?, address bits, or index of a rule to probe inside)
    probes: Vec<(bool, u128, Option<usize>)>,
}

fn case() -> impl Strategy<Value = Case> {
    // Few distinct high bits so prefixes nest and overlap often.
    let addr = (0u8..4, any::<u128>()).prop_map(|(hi, lo)| ((hi as u128) << 120) | (lo >> 8));
    let rule = (
        prop_oneof![Just(RULESET), Just(RULESET + 1)],
        any::<bool>(),
        addr.clone(),
        0u8..=128,
        0u16..=1,
    )
        .prop_map(|(rs, v6, a, len, slot)| (rs, v6, a, if v6 { len } else { len % 33 }, slot));
    let probe = (any::<bool>(), addr, proptest::option::of(0usize..64));
    (
        prop::collection::vec(rule, 0..40),
        prop::collection::vec(probe, 1..24),
    )
        .prop_map(|(rules, probes)| Case { rules, probes })
}

fn net(v6: bool, bits: u128, len: u8) -> IpNet {
    let a = steerable(v6, bits);
    match a {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, len).unwrap().trunc()),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, len).unwrap().trunc()),
    }
}

fn clear(h: &mut Harness) {
    let k4: Vec<_> = h.maps.rules4.keys().map(|k| k.unwrap()).collect();
    for k in k4 {
        h.maps.rules4.remove(&k).unwrap();
    }
    let k6: Vec<_> = h.maps.rules6.keys().map(|k| k.unwrap()).collect();
    for k in k6 {
        h.maps.rules6.remove(&k).unwrap();
    }
    let kf: Vec<_> = h.maps.flows.keys().map(|k| k.unwrap()).collect();
    for k in kf {
        h.maps.flows.remove(&k).unwrap();
    }
}

fn check(h: &mut Harness, c: &Case) -> Result<(), TestCaseError> {
    clear(h);
    let mut model = RefRules::new();
    for (i, &(rs, v6, bits, len, slot)) in c.rules.iter().enumerate() {
        let dst = net(v6, bits, len);
        let value = RuleValue {
            rule_id: i as u32 + 1,
            slot,
            flags: 0,
            via: [0; 16],
        };
        model.insert(rs, dst, value);
        match dst {
            IpNet::V4(n) => h.maps.rules4.insert(&rule4_key(rs, n), value, 0),
            IpNet::V6(n) => h.maps.rules6.insert(&rule6_key(rs, n), value, 0),
        }
        .unwrap();
    }
    for (pi, &(v6, bits, inside)) in c.probes.iter().enumerate() {
        // Half the probes land inside a rule's prefix, so hits are common.
        let (v6, dst) = match inside.and_then(|i| c.rules.get(i)) {
            Some(&(_, rv6, rbits, _, _)) => (rv6, steerable(rv6, rbits)),
            None => (v6, steerable(v6, bits)),
        };
        let want = model.lookup(RULESET, dst).map(|r| r.value);
        // The kernel trie alone.
        let got_map = match dst {
            IpAddr::V4(a) => h
                .maps
                .rules4
                .get(&rule4_key(RULESET, Ipv4Net::new(a, 32).unwrap()), 0)
                .ok(),
            IpAddr::V6(a) => h
                .maps
                .rules6
                .get(&rule6_key(RULESET, Ipv6Net::new(a, 128).unwrap()), 0)
                .ok(),
        };
        prop_assert_eq!(
            got_map,
            want,
            "trie lookup of {} disagrees with the model",
            dst
        );
        // The whole program.
        let src = h.eth0.addr(v6);
        let sport = 20000 + pi as u16;
        let f = udp_frame(src, dst, sport, 53, false);
        let r = h.egress(h.eth0.ifindex, &f);
        match want {
            Some(v) if v.slot == 1 => {
                prop_assert_eq!(
                    r.ret,
                    TC_ACT_REDIRECT,
                    "{} should be steered by rule {}",
                    dst,
                    v.rule_id
                );
                let steered = h
                    .flows()
                    .into_iter()
                    .find(|(k, _)| k.dir == DIR_OUT && k.sport == sport.to_be())
                    .map(|(_, v)| v.rule_id);
                prop_assert_eq!(steered, Some(v.rule_id));
            }
            _ => {
                prop_assert_eq!(r.ret, TC_ACT_OK, "{} should not be steered", dst);
                prop_assert_eq!(&r.out, &f);
            }
        }
    }
    Ok(())
}

#[test]
fn kernel_lookup_and_program_decision_equal_the_reference_model() {
    if !require_root("lpm property") {
        return;
    }
    in_fresh_netns(|| {
        let h = std::cell::RefCell::new(Harness::new());
        let mut runner = TestRunner::new(PtConfig {
            cases: 96,
            ..PtConfig::default()
        });
        runner
            .run(&case(), |c| check(&mut h.borrow_mut(), &c))
            .unwrap();
    });
}
