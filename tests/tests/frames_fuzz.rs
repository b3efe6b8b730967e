//! Random and mutated frames through the real programs (`BPF_PROG_TEST_RUN`, root), each test in
//! a network namespace of its own with the [`Harness`] pod (`eth0` slot 0, `eth1` slot 1):
//!
//! - with no rule at all, and with rules no frame matches, no frame is ever modified (output ==
//!   input, verdict `TC_ACT_OK`), whatever its bytes;
//! - with rules that match everything, every frame the programs modify has valid checksums
//!   when its input had (an invalid input checksum stays invalid by design: the programs update
//!   checksums incrementally).
//!
//! Frames are well-formed frames of every family and protocol with random fields, the same with
//! random byte flips, truncations and extensions, and pure random bytes, from a seeded PRNG
//! (the seed is printed; `VEER_FUZZ_SEED=<n>` replays it). `VEER_SOAK=1` runs 20× more.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    panic::{AssertUnwindSafe, catch_unwind},
};

use aya::programs::{TestRun, TestRunOptions};
use veer_common::maps as names;
use veer_tests::{
    harness::{Harness, TC_ACT_OK},
    ns::in_fresh_netns,
    packet::{self, DST_MAC, SRC_MAC, echo, eth, ip, mss_opt, tcp, udp, verify_checksums},
    privileged::require_root,
};

fn soak() -> bool {
    std::env::var("VEER_SOAK").is_ok_and(|v| v == "1" || v == "true")
}

fn iterations() -> u32 {
    if soak() { 2_000_000 } else { 100_000 }
}

/// Appends this test's result to `target/reliability/<test>.jsonl` (rendered into
/// docs/reliability.md by `cargo run -p veer-tests --bin reliability-report`).
fn record(test: &str, measured: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/reliability");
    let _ = std::fs::create_dir_all(&dir);
    let line = format!(
        "{{\"scenario\":\"7. bad input: random and mutated frames\",\"test\":\"{test}\",\"mode\":\"{}\",\"result\":\"pass\",\"measured\":[\"{}\"],\"findings\":[]}}\n",
        if soak() { "soak" } else { "normal" },
        measured.replace('"', "'")
    );
    let _ = std::fs::write(dir.join(format!("{test}.jsonl")), line);
}

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Self {
        let seed = std::env::var("VEER_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("{test}: VEER_FUZZ_SEED={seed}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

/// Remote addresses the frames use (none in a prefix the "no match" rules cover).
const REMOTE4: [Ipv4Addr; 5] = [
    Ipv4Addr::new(192, 168, 2, 7),
    Ipv4Addr::new(10, 86, 69, 17),
    Ipv4Addr::new(198, 51, 100, 7),
    Ipv4Addr::new(224, 0, 0, 5),
    Ipv4Addr::new(255, 255, 255, 255),
];
const REMOTE6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfd00, 0x192, 0x168, 2, 0, 0, 0, 7),
    Ipv6Addr::new(0xfd00, 0x198, 0x51, 0x100, 0, 0, 0, 7),
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
];

/// A well-formed frame between `local` (one of the pod's addresses) and a remote address,
/// random protocol, ports, flags, options and payload. `outbound`: local is the source.
fn valid(r: &mut Rng, h: &Harness, on_eth1: bool, outbound: bool) -> Vec<u8> {
    let iface = if on_eth1 { &h.eth1 } else { &h.eth0 };
    let v6 = r.chance(50);
    let local = iface.addr(v6);
    let remote: IpAddr = if v6 {
        if r.chance(80) {
            r.pick(&REMOTE6).into()
        } else {
            Ipv6Addr::from(u128::from(r.next()) << 64 | u128::from(r.next())).into()
        }
    } else if r.chance(80) {
        r.pick(&REMOTE4).into()
    } else {
        Ipv4Addr::from(r.next() as u32).into()
    };
    let (src, dst) = if outbound {
        (local, remote)
    } else {
        (remote, local)
    };
    let (sport, any) = (r.next() as u16, r.next() as u16);
    let dport = r.pick(&[80u16, 53, 443, 7007, any]);
    let payload = {
        let n = r.below(64) as usize;
        r.bytes(n)
    };
    let (proto, l4) = match r.below(4) {
        0 | 1 => {
            let any = r.next() as u8;
            let flags = r.pick(&[
                packet::SYN,
                packet::SYN | packet::ACK,
                packet::ACK,
                packet::FIN | packet::ACK,
                packet::RST,
                any,
            ]);
            let opts: Vec<u8> = match r.below(3) {
                0 => Vec::new(),
                1 => mss_opt(r.next() as u16).to_vec(),
                _ => {
                    let k = 4 * r.below(3) as usize;
                    let mut o = r.bytes(k);
                    if let Some(b) = o.first_mut() {
                        *b = 1; // NOP first: other options follow
                    }
                    o
                }
            };
            (
                packet::TCP,
                tcp(src, dst, sport, dport, flags, &opts, &payload),
            )
        }
        2 => (
            packet::UDP,
            udp(src, dst, sport, dport, &payload, !v6 && r.chance(20)),
        ),
        _ => (
            if v6 { packet::ICMPV6 } else { packet::ICMP },
            echo(src, dst, r.chance(50), r.next() as u16),
        ),
    };
    let mut f = eth(DST_MAC, SRC_MAC, &ip(src, dst, proto, &l4));
    // The pod interface's MAC: source when leaving, destination when arriving.
    let mac = iface.mac;
    if outbound {
        f[6..12].copy_from_slice(&mac);
        f[0..6].copy_from_slice(&r.bytes(6));
    } else {
        f[0..6].copy_from_slice(&mac);
        f[6..12].copy_from_slice(&r.bytes(6));
    }
    f
}

/// Random damage: byte flips (mostly in the headers), truncation, extension.
fn mutate(r: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    for _ in 0..=r.below(4) {
        match r.below(6) {
            0..=2 => {
                let end = f.len().min(80);
                let i = 12 + r.below((end - 12) as u64) as usize;
                f[i] ^= 1 << r.below(8);
            }
            3 => {
                let i = r.below(f.len() as u64) as usize;
                f[i] = r.next() as u8;
            }
            4 => {
                let n = 14 + r.below((f.len() - 13) as u64) as usize;
                f.truncate(n);
            }
            _ => {
                let n = r.below(32) as usize;
                f.extend(r.bytes(n));
            }
        }
        if f.len() <= 14 {
            break;
        }
    }
    f
}

/// Pure random bytes behind an Ethernet header (IP ethertypes most of the time).
fn random(r: &mut Rng, h: &Harness) -> Vec<u8> {
    let n = 14 + r.below(120) as usize;
    let mut f = r.bytes(n);
    if r.chance(50) {
        f[6..12].copy_from_slice(&h.eth0.mac);
    }
    let other = r.next() as u16;
    let et: u16 = r.pick(&[0x0800, 0x0800, 0x86dd, 0x86dd, 0x0806, other]);
    f[12..14].copy_from_slice(&et.to_be_bytes());
    if et == 0x0800 && f.len() > 14 && r.chance(70) {
        f[14] = 0x45;
    }
    if et == 0x86dd && f.len() > 14 && r.chance(70) {
        f[14] = 0x60 | (f[14] & 0xf);
    }
    f
}

/// One program run; `None` when the kernel refuses the input (too short for its ethertype).
fn run(h: &mut Harness, prog: &'static str, ifindex: u32, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 512];
    let p = h.dp.program(prog).expect("program");
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..Default::default()
    };
    let r = p.test_run(opts).ok()?;
    out.truncate(r.data_size_out as usize);
    Some((r.return_value, out))
}

/// Whether a frame is IP and all its checksums are valid (the verifier panics on frames too
/// damaged to parse: those count as invalid).
fn checksums_ok(f: &[u8]) -> bool {
    catch_unwind(AssertUnwindSafe(|| verify_checksums(f).is_ok())).unwrap_or(false)
}

/// One frame of any kind, for egress (`outbound`) or ingress, on `eth0` or `eth1`.
fn any_frame(r: &mut Rng, h: &Harness, on_eth1: bool, outbound: bool) -> Vec<u8> {
    match r.below(10) {
        0..=3 => valid(r, h, on_eth1, outbound),
        4..=7 => {
            let f = valid(r, h, on_eth1, outbound);
            mutate(r, f)
        }
        _ => random(r, h),
    }
}

/// Whether a frame's destination (IPv4 or IPv6, as far as present) lies in `172.16.10.0/24` or
/// `fd00:172:16:10::/64`, the prefixes of the "no match" rules.
fn in_rule_prefixes(f: &[u8]) -> bool {
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => f.len() >= 33 && f[30..33] == [172, 16, 10],
        0x86dd => f.len() >= 46 && f[38..46] == [0xfd, 0, 0x01, 0x72, 0, 0x16, 0, 0x10],
        _ => false,
    }
}

/// Runs `n` frames through both programs on both interfaces: none may be modified or get
/// another verdict than `TC_ACT_OK`. Returns how many the kernel accepted.
fn never_modified(h: &mut Harness, r: &mut Rng, n: u32, skip: impl Fn(&[u8]) -> bool) -> u32 {
    let mut ran = 0;
    for i in 0..n {
        let on_eth1 = r.chance(50);
        let outbound = r.chance(60);
        let f = any_frame(r, h, on_eth1, outbound);
        if f.len() < 14 || skip(&f) {
            continue;
        }
        let (prog, ifx) = match (outbound, on_eth1) {
            (true, false) => (names::PROG_EGRESS, h.eth0.ifindex),
            (true, true) => (names::PROG_EGRESS, h.eth1.ifindex),
            (false, false) => (names::PROG_INGRESS, h.eth0.ifindex),
            (false, true) => (names::PROG_INGRESS, h.eth1.ifindex),
        };
        let Some((ret, out)) = run(h, prog, ifx, &f) else {
            continue;
        };
        ran += 1;
        assert!(
            ret == TC_ACT_OK && out == f,
            "frame {i} through {prog} on ifindex {ifx}: verdict {ret}, modified: {}\nin:  {f:02x?}\nout: {out:02x?}",
            out != f
        );
    }
    ran
}

#[test]
fn with_no_rules_no_random_or_mutated_frame_is_ever_modified() {
    const T: &str = "with_no_rules_no_random_or_mutated_frame_is_ever_modified";
    if !require_root(T) {
        return;
    }
    let mut r = Rng::new(T);
    in_fresh_netns(|| {
        let mut h = Harness::new();
        let n = iterations();
        let ran = never_modified(&mut h, &mut r, n, |_| false);
        eprintln!("{ran}/{n} frames ran, none modified");
        assert!(ran > n / 2, "too few frames accepted by the kernel: {ran}");
        assert!(h.flows().is_empty(), "no rule, no flow");
        record(
            T,
            &format!(
                "no rules: {ran} of {n} frames (well-formed, mutated, random; egress and ingress on eth0 and eth1) accepted by the kernel, every one TC_ACT_OK and byte-identical"
            ),
        );
    });
}

#[test]
fn with_rules_that_do_not_match_no_random_or_mutated_frame_is_ever_modified() {
    const T: &str = "with_rules_that_do_not_match_no_random_or_mutated_frame_is_ever_modified";
    if !require_root(T) {
        return;
    }
    let mut r = Rng::new(T);
    in_fresh_netns(|| {
        let mut h = Harness::new();
        h.rule("172.16.10.0/24", 1, 1, None);
        h.rule("fd00:172:16:10::/64", 1, 2, None);
        let n = iterations();
        let ran = never_modified(&mut h, &mut r, n, in_rule_prefixes);
        eprintln!("{ran}/{n} frames ran, none modified");
        assert!(ran > n / 2, "too few frames accepted by the kernel: {ran}");
        assert_eq!(h.rule_stats(1), (0, 0));
        assert_eq!(h.rule_stats(2), (0, 0));
        record(
            T,
            &format!(
                "rules for 172.16.10.0/24 and fd00:172:16:10::/64, frames to elsewhere: {ran} of {n} frames ran, every one TC_ACT_OK and byte-identical"
            ),
        );
    });
}

#[test]
fn with_matching_rules_every_modified_frame_has_valid_checksums() {
    const T: &str = "with_matching_rules_every_modified_frame_has_valid_checksums";
    if !require_root(T) {
        return;
    }
    let mut r = Rng::new(T);
    in_fresh_netns(|| {
        let mut h = Harness::new();
        h.rule("0.0.0.0/0", 1, 1, None);
        h.rule("::/0", 1, 2, None);
        let n = iterations();
        let (mut modified, mut checked) = (0u32, 0u32);
        for i in 0..n {
            // Outbound on eth0 (steered to eth1), then a reply (or damaged reply) on eth1.
            let f = any_frame(&mut r, &h, false, true);
            if f.len() < 14 {
                continue;
            }
            let ifx = h.eth0.ifindex;
            let Some((_, out)) = run(&mut h, names::PROG_EGRESS, ifx, &f) else {
                continue;
            };
            let mut replies = Vec::new();
            if out != f {
                modified += 1;
                if checksums_ok(&f) {
                    checked += 1;
                    verify_checksums(&out).unwrap_or_else(|e| {
                        panic!("frame {i}: steered frame: {e}\nin:  {f:02x?}\nout: {out:02x?}")
                    });
                    // The reply of the translated packet: swap addresses and ports.
                    let p = packet::parse(&out);
                    let l4 = &out[p.l4_off..];
                    let reply_l4 = match p.proto {
                        packet::TCP => tcp(
                            p.dst,
                            p.src,
                            p.dport,
                            p.sport,
                            packet::SYN | packet::ACK,
                            &[],
                            &[],
                        ),
                        packet::UDP => udp(p.dst, p.src, p.dport, p.sport, b"reply", false),
                        _ => echo(p.dst, p.src, false, u16::from_be_bytes([l4[4], l4[5]])),
                    };
                    let mut reply = eth(
                        h.eth1.mac,
                        [0x02, 0, 0, 0, 0, 0x99],
                        &ip(p.dst, p.src, p.proto, &reply_l4),
                    );
                    replies.push(reply.clone());
                    reply = mutate(&mut r, reply);
                    replies.push(reply);
                }
            }
            for reply in replies {
                if reply.len() < 14 {
                    continue;
                }
                let ifx = h.eth1.ifindex;
                let Some((_, rout)) = run(&mut h, names::PROG_INGRESS, ifx, &reply) else {
                    continue;
                };
                if rout != reply && checksums_ok(&reply) {
                    checked += 1;
                    verify_checksums(&rout).unwrap_or_else(|e| {
                        panic!(
                            "frame {i}: translated reply: {e}\nin:  {reply:02x?}\nout: {rout:02x?}"
                        )
                    });
                }
            }
        }
        eprintln!(
            "{n} frames: {modified} steered, {checked} modified frames with valid input checked"
        );
        assert!(
            checked > n / 10,
            "too few steered frames checked: {checked}"
        );
        record(
            T,
            &format!(
                "rules 0.0.0.0/0 and ::/0 to eth1: {n} frames from eth0, {modified} modified; \
                 {checked} modified frames (steered, and translated replies) whose input had \
                 valid checksums: every output has valid IPv4/L4 checksums"
            ),
        );
    });
}
