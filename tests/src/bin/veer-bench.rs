//! `cargo xtask bench`: per-packet cost of veer's programs via BPF_PROG_TEST_RUN, measured side
//! by side with an empty classifier in one run, interleaved (A B C … A B C …), reported as the
//! median over rounds with the spread (min–max of round medians).
//!
//! Usage: `veer-bench [--quick] [--json PATH] [--markdown PATH]` (root).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use ipnet::{Ipv4Net, Ipv6Net};
use veer_agent::maps::{rule4_key, rule6_key};
use veer_common::RuleValue;
use veer_tests::{
    harness::{Harness, RULESET, TC_ACT_OK, TC_ACT_REDIRECT},
    ns::in_fresh_netns,
    packet::udp_frame,
};

struct Opts {
    quick: bool,
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
}

fn opts() -> Opts {
    let mut o = Opts {
        quick: false,
        json: None,
        markdown: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--json" => o.json = args.next().map(PathBuf::from),
            "--markdown" => o.markdown = args.next().map(PathBuf::from),
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// Runs `prog` on `frame` `repeat` times in the kernel and returns the kernel-measured time per
/// run. Paths that rewrite the packet must use `repeat = 1`: every measured run has to start from
/// the original frame (the kernel reuses one skb across repetitions).
fn once(prog: &SchedClassifier, ifindex: u32, frame: &[u8], want: u32, repeat: u32) -> Duration {
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let o = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat,
        ..Default::default()
    };
    let r = prog.test_run(o).expect("test_run");
    assert_eq!(
        r.return_value, want,
        "benchmark path took an unexpected verdict"
    );
    r.duration
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[derive(Debug)]
struct Row {
    family: &'static str,
    prefixes: usize,
    path: &'static str,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
}

fn fill_rules(h: &mut Harness, v6: bool, n: usize, seed: &mut u64) {
    let mut next = || {
        // xorshift: deterministic prefixes, no dependency.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    let v = RuleValue {
        rule_id: 1,
        slot: 1,
        flags: 0,
        via: [0; 16],
    };
    for _ in 0..n {
        let r = next();
        if v6 {
            let mut o = [0u8; 16];
            o[..8].copy_from_slice(&r.to_be_bytes());
            o[0] = 0xfd;
            let len = 32 + (r % 97) as u8;
            let net = Ipv6Net::new(Ipv6Addr::from(o), len).unwrap();
            h.maps
                .rules6
                .insert(&rule6_key(RULESET, net), v, 0)
                .unwrap();
        } else {
            let mut o = (r as u32).to_be_bytes();
            o[0] = 10;
            let len = 16 + (r >> 32) as u8 % 17;
            let net = Ipv4Net::new(Ipv4Addr::from(o), len).unwrap();
            h.maps
                .rules4
                .insert(&rule4_key(RULESET, net), v, 0)
                .unwrap();
        }
    }
    // The steered destination's own rule.
    let hit = RuleValue { rule_id: 2, ..v };
    if v6 {
        h.maps
            .rules6
            .insert(
                &rule6_key(RULESET, "2001:db8:1::/48".parse().unwrap()),
                hit,
                0,
            )
            .unwrap();
    } else {
        h.maps
            .rules4
            .insert(
                &rule4_key(RULESET, "198.19.0.0/16".parse().unwrap()),
                hit,
                0,
            )
            .unwrap();
    }
}

fn clear(h: &mut Harness) {
    let k4: Vec<_> = h.maps.rules4.keys().map(Result::unwrap).collect();
    k4.iter().for_each(|k| h.maps.rules4.remove(k).unwrap());
    let k6: Vec<_> = h.maps.rules6.keys().map(Result::unwrap).collect();
    k6.iter().for_each(|k| h.maps.rules6.remove(k).unwrap());
    let kf: Vec<_> = h.maps.flows.keys().map(Result::unwrap).collect();
    kf.iter().for_each(|k| h.maps.flows.remove(k).unwrap());
}

fn bench(o: &Opts) -> Vec<Row> {
    let mut h = Harness::new();
    let empty_path = std::env::var("VEER_EMPTY_OBJ").unwrap_or_else(|_| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/ebpf/bpfel-unknown-none/release/veer-empty"
        )
        .into()
    });
    let mut empty_obj = Ebpf::load_file(&empty_path)
        .expect("load the empty classifier (cargo xtask build-ebpf --release)");
    let empty: &mut SchedClassifier = empty_obj
        .program_mut("veer_empty")
        .unwrap()
        .try_into()
        .unwrap();
    empty.load().unwrap();

    let (sizes, rounds, iters): (&[usize], usize, usize) = if o.quick {
        (&[10, 1_000], 3, 100)
    } else {
        (&[10, 1_000, 10_000, 100_000], 7, 2_000)
    };
    let mut rows = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for v6 in [false, true] {
        for &n in sizes {
            clear(&mut h);
            fill_rules(&mut h, v6, n, &mut seed);
            let (src, eth1, miss_dst, hit_dst): (IpAddr, IpAddr, IpAddr, IpAddr) = if v6 {
                (
                    h.eth0.v6.into(),
                    h.eth1.v6.into(),
                    "2001:db8:2::1".parse().unwrap(),
                    "2001:db8:1::7".parse().unwrap(),
                )
            } else {
                (
                    h.eth0.v4.into(),
                    h.eth1.v4.into(),
                    "198.18.0.1".parse().unwrap(),
                    "198.19.0.7".parse().unwrap(),
                )
            };
            let miss = udp_frame(src, miss_dst, 30000, 53, false);
            let hit = udp_frame(src, hit_dst, 30001, 53, false);
            let reply = udp_frame(hit_dst, eth1, 53, 30001, false);
            // Create the pinned flow the hit and reply paths use.
            assert_eq!(h.egress(h.eth0.ifindex, &hit).ret, TC_ACT_REDIRECT);
            let (e0, e1) = (h.eth0.ifindex, h.eth1.ifindex);
            // empty/miss leave the packet as it is, so they are also measured with many
            // repetitions per run (less timer overhead); rewriting paths only one at a time, so
            // every path is also reported with repeat = 1 for a like-for-like comparison.
            let paths: [&'static str; 6] = [
                "empty",
                "miss",
                "steered_hit",
                "reply_revnat",
                "empty_x64",
                "miss_x64",
            ];
            let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
            for _ in 0..rounds {
                for (i, path) in paths.iter().enumerate() {
                    let mut s: Vec<f64> = Vec::with_capacity(iters);
                    for _ in 0..iters {
                        let d = match *path {
                            "empty" => once(empty, e0, &miss, TC_ACT_OK, 1),
                            "empty_x64" => once(empty, e0, &miss, TC_ACT_OK, 64),
                            "miss" => once(
                                h.dp.program(veer_common::maps::PROG_EGRESS).unwrap(),
                                e0,
                                &miss,
                                TC_ACT_OK,
                                1,
                            ),
                            "miss_x64" => once(
                                h.dp.program(veer_common::maps::PROG_EGRESS).unwrap(),
                                e0,
                                &miss,
                                TC_ACT_OK,
                                64,
                            ),
                            "steered_hit" => once(
                                h.dp.program(veer_common::maps::PROG_EGRESS).unwrap(),
                                e0,
                                &hit,
                                TC_ACT_REDIRECT,
                                1,
                            ),
                            _ => once(
                                h.dp.program(veer_common::maps::PROG_INGRESS).unwrap(),
                                e1,
                                &reply,
                                TC_ACT_REDIRECT,
                                1,
                            ),
                        };
                        s.push(d.as_nanos() as f64);
                    }
                    per_round[i].push(median(&mut s));
                }
            }
            for (i, path) in paths.iter().enumerate() {
                let v = &mut per_round[i];
                let m = median(v);
                rows.push(Row {
                    family: if v6 { "ipv6" } else { "ipv4" },
                    prefixes: n,
                    path,
                    median_ns: m,
                    min_ns: v[0],
                    max_ns: v[v.len() - 1],
                });
            }
        }
    }
    rows
}

fn main() {
    let o = opts();
    assert!(
        veer_tests::privileged::is_root(),
        "veer-bench needs root (BPF_PROG_TEST_RUN)"
    );
    let rows = in_fresh_netns(|| bench(&o));
    // The baseline of a row: the empty program measured the same way (same repeat count).
    let empty = |r: &Row| {
        let base = if r.path.ends_with("_x64") {
            "empty_x64"
        } else {
            "empty"
        };
        rows.iter()
            .find(|b| b.family == r.family && b.prefixes == r.prefixes && b.path == base)
            .unwrap()
            .median_ns
    };
    let mut md = String::new();
    writeln!(
        md,
        "| family | prefixes | path | median ns | over empty ns | spread (round medians) |"
    )
    .unwrap();
    writeln!(md, "|---|---:|---|---:|---:|---|").unwrap();
    for r in &rows {
        writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:+.0} | {:.0}–{:.0} |",
            r.family,
            r.prefixes,
            r.path,
            r.median_ns,
            r.median_ns - empty(r),
            r.min_ns,
            r.max_ns
        )
        .unwrap();
    }
    println!("{md}");
    if let Some(p) = &o.json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{{\"family\":\"{}\",\"prefixes\":{},\"path\":\"{}\",\"median_ns\":{:.1},\"over_empty_ns\":{:.1},\"min_ns\":{:.1},\"max_ns\":{:.1}}}",
                    r.family,
                    r.prefixes,
                    r.path,
                    r.median_ns,
                    r.median_ns - empty(r),
                    r.min_ns,
                    r.max_ns
                )
            })
            .collect();
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(
            p,
            format!(
                "{{\"quick\":{},\"results\":[{}]}}\n",
                o.quick,
                items.join(",")
            ),
        )
        .unwrap();
    }
    if let Some(p) = &o.markdown {
        std::fs::write(p, md).unwrap();
    }
}
