//! BPF_PROG_TEST_RUN suite (root): crafted frames through the real programs.
use std::net::IpAddr;
use veer_tests::{harness::*, ns::in_fresh_netns, packet::*, privileged::require_root};

fn a(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn smoke_steer_v4_tcp_syn() {
    if !require_root("smoke") {
        return;
    }
    in_fresh_netns(|| {
        let mut h = Harness::new();
        h.rule("172.16.10.0/24", 1, 3, None);
        let f = tcp_frame(
            a("10.244.1.5"),
            a("172.16.10.7"),
            40000,
            80,
            SYN,
            &mss_opt(1460),
        );
        let before = h.stats();
        let r = h.egress(h.eth0.ifindex, &f);
        eprintln!("{:?} {:?}", r.ret, Harness::delta(&before, &h.stats()));
        assert_eq!(r.ret, TC_ACT_REDIRECT);
        verify_checksums(&r.out).unwrap();
        eprintln!("{:?}", parse(&r.out));
    });
}
