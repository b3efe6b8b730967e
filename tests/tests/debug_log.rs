//! Debug events through aya-log: the default object carries none of it (no `AYA_LOGS` ring
//! buffer, no legacy `maps` section, which libbpf rejects), and the debug object logs only while
//! `CFG_F_DEBUG` is set in `VEER_CONFIG_V1` (root: BPF_PROG_TEST_RUN in a namespace of its own).

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use object::{Object, ObjectSymbol};
use veer_agent::{
    EBPF_DEBUG_OBJ, EBPF_OBJ,
    dataplane::{Dataplane, DebugEvent},
};
use veer_common::{CFG_F_DEBUG, Config, maps as names};
use veer_tests::{
    harness::{Harness, TC_ACT_REDIRECT, TC_ACT_SHOT},
    ns::in_fresh_netns,
    packet::{DST_MAC, SRC_MAC, SYN, UDP, eth, ip, mss_opt, tcp_frame, udp},
    privileged::require_root,
};

const AYA_LOGS: &str = "AYA_LOGS";

/// Whether the ELF object has a `maps` section and whether it has an `AYA_LOGS` symbol.
fn aya_log_traces(elf: &[u8]) -> (bool, bool) {
    let f = object::File::parse(elf).expect("ELF");
    let maps_section = f.section_by_name("maps").is_some();
    let symbol = f.symbols().any(|s| s.name() == Ok(AYA_LOGS));
    (maps_section, symbol)
}

#[test]
fn default_object_has_no_aya_log() {
    assert_eq!(
        aya_log_traces(EBPF_OBJ),
        (false, false),
        "the default object must carry neither a legacy `maps` section nor {AYA_LOGS}"
    );
    let obj = aya_obj::Object::parse(EBPF_OBJ).expect("parse object");
    assert!(
        !obj.maps.contains_key(AYA_LOGS),
        "{AYA_LOGS} map in the default object"
    );
}

#[test]
fn debug_object_adds_only_the_aya_log_ring_buffer() {
    // The check above is only meaningful if the debug object does differ.
    assert_eq!(aya_log_traces(EBPF_DEBUG_OBJ), (true, true));
    let obj = aya_obj::Object::parse(EBPF_DEBUG_OBJ).expect("parse debug object");
    let mut maps: Vec<_> = obj
        .maps
        .keys()
        .filter(|m| !m.starts_with('.'))
        .cloned()
        .collect();
    maps.sort();
    let mut want: Vec<_> = names::ALL
        .iter()
        .map(|s| s.to_string())
        .chain([AYA_LOGS.to_string()])
        .collect();
    want.sort();
    assert_eq!(maps, want, "maps of the debug object");
    let mut progs: Vec<_> = obj.programs.keys().cloned().collect();
    progs.sort();
    assert_eq!(progs, [names::PROG_EGRESS, names::PROG_INGRESS]);
}

fn a(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn debug_events_only_while_switched_on() {
    if !require_root("debug_events_only_while_switched_on") {
        return;
    }
    in_fresh_netns(|| {
        assert!(
            Dataplane::load_unpinned()
                .expect("load default object")
                .debug_log()
                .is_none(),
            "the default object has no debug events to read"
        );
        let dp = Dataplane::load_unpinned_with(true).expect("load debug object");
        let mut h = Harness::with_dataplane(dp);
        let events: Arc<Mutex<Vec<DebugEvent>>> = Arc::default();
        let sink = events.clone();
        h.dp.debug_log()
            .expect("debug log of the debug object")
            .set_sink(move |e| sink.lock().unwrap().push(e.clone()));
        h.rule("198.51.100.0/24", 1, 42, None);
        let (pod, srv) = (a("10.244.1.5"), a("198.51.100.7"));
        let syn = |h: &mut Harness, sport: u16| {
            let r = h.egress(
                h.eth0.ifindex,
                &tcp_frame(pod, srv, sport, 443, SYN, &mss_opt(1460)),
            );
            assert_eq!(
                r.ret, TC_ACT_REDIRECT,
                "SYN from port {sport} must be steered"
            );
            h.dp.debug_log().unwrap().flush();
            std::mem::take(&mut *events.lock().unwrap())
        };
        let set_flags = |h: &mut Harness, flags| {
            let cfg = Config {
                flags,
                ..Config::DEFAULT
            };
            h.maps.config.set(0, cfg, 0).expect("set config");
        };

        // Off (no config written yet, then written without the flag): nothing is logged.
        assert_eq!(syn(&mut h, 40100).len(), 0, "debug events while off");
        set_flags(&mut h, 0);
        assert_eq!(syn(&mut h, 40101).len(), 0, "debug events while off");

        // On: the new steered flow is reported.
        set_flags(&mut h, CFG_F_DEBUG);
        let got = syn(&mut h, 40102);
        assert_eq!(got.len(), 1, "one event for one new steered flow: {got:?}");
        let e = &got[0];
        assert_eq!(e.level.to_string(), "DEBUG", "{e:?}");
        assert!(e.target.starts_with("veer_ebpf"), "{e:?}");
        assert!(
            e.message.contains("new steered flow")
                && e.message.contains("rule 42")
                && e.message
                    .contains(&format!("ifindex {} -> {}", h.eth0.ifindex, h.eth1.ifindex))
                && e.message.contains("dport 443"),
            "{e:?}"
        );

        // The event logged out of line (the egress stack is tight): an oversize UDP datagram to
        // the smaller-MTU interface starts a flow and is dropped.
        let l4 = udp(pod, srv, 40104, 9, &[0x55; 1450], false);
        let r = h.egress(
            h.eth0.ifindex,
            &eth(DST_MAC, SRC_MAC, &ip(pod, srv, UDP, &l4)),
        );
        assert_eq!(r.ret, TC_ACT_SHOT);
        h.dp.debug_log().unwrap().flush();
        let got = std::mem::take(&mut *events.lock().unwrap());
        let msgs: Vec<_> = got.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(msgs.len(), 2, "{got:?}");
        assert!(msgs[0].starts_with("new steered flow"), "{got:?}");
        assert!(
            msgs[1].starts_with("drop too big") && msgs[1].ends_with("mtu 1400"),
            "{got:?}"
        );

        // Off again, at run time: quiet again.
        set_flags(&mut h, 0);
        assert_eq!(
            syn(&mut h, 40103).len(),
            0,
            "debug events after switching off"
        );
    });
}
