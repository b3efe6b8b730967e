//! `cargo xtask bench`: veer's performance report.
//!
//! - A. per-packet cost of veer's programs via BPF_PROG_TEST_RUN, side by side with an empty
//!   classifier, interleaved (A B C … A B C …), over pools of 256 different packets so the trie
//!   and flow table are not only cache-hot;
//! - B, C ([`veer_tests::bench::traffic`]): CPU per packet, TCP throughput, UDP latency;
//! - D, E ([`veer_tests::bench::fanout`]): fan-out to many pods, attach latency, footprint;
//! - F ([`veer_tests::bench::k8s`]): Kubernetes mode, watch event → rule in the pinned trie.
//!
//! Every figure is the median over interleaved rounds with the spread (min–max) shown.
//!
//! Usage: `veer-bench [--quick] [--parts abcdef] [--out DIR] [--doc PATH]` (root). Writes
//! `DIR/<part>.json`, `DIR/report.md` and the plots to `DIR`; with `--doc`, also the report to
//! PATH and its plots to `<PATH's directory>/benchmarks/`.

use std::{
    collections::HashSet,
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
    bench::{
        Aim, J, Section, Spread, fanout, k8s, machine,
        plot::{self, Axes, Series},
        traffic,
    },
    harness::{Harness, RULESET, TC_ACT_OK, TC_ACT_REDIRECT},
    ns::in_fresh_netns,
    packet::udp_frame,
};

struct Opts {
    quick: bool,
    parts: String,
    out: PathBuf,
    doc: Option<PathBuf>,
}

fn opts() -> Opts {
    let mut o = Opts {
        quick: false,
        parts: "abcdef".into(),
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench")),
        doc: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--parts" => o.parts = args.next().expect("--parts abcdef"),
            "--out" => o.out = args.next().map(PathBuf::from).expect("--out DIR"),
            "--doc" => o.doc = args.next().map(PathBuf::from),
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
    s: Spread,
}

/// How many different packets each path cycles through.
const POOL: usize = 256;

struct Rng(u64);

impl Rng {
    /// xorshift: deterministic, no dependency.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The filler rules (all steering to slot 1), as (prefix length, network) for membership tests.
type Rules = (HashSet<(u8, u128)>, Vec<(u128, u8)>);

fn fill_rules(h: &mut Harness, v6: bool, n: usize, rng: &mut Rng) -> Rules {
    let v = RuleValue {
        rule_id: 1,
        slot: 1,
        flags: 0,
        via: [0; 16],
    };
    let mut set = HashSet::new();
    let mut list = Vec::new();
    while list.len() < n {
        let r = rng.next();
        if v6 {
            let mut o = [0u8; 16];
            o[..8].copy_from_slice(&r.to_be_bytes());
            o[0] = 0xfd;
            let len = 32 + (r % 97) as u8;
            let net = Ipv6Net::new(Ipv6Addr::from(o), len).unwrap().trunc();
            let a = u128::from(net.network());
            if set.insert((len, a)) {
                list.push((a, len));
                h.maps
                    .rules6
                    .insert(&rule6_key(RULESET, net), v, 0)
                    .unwrap();
            }
        } else {
            // Unicast space outside 0/8, 127/8, 169.254/16 and multicast.
            let mut o = (r as u32).to_be_bytes();
            o[0] = 1 + (o[0] % 223);
            if o[0] == 127 || o[0] == 169 {
                continue;
            }
            let len = 16 + (r >> 32) as u8 % 17;
            let net = Ipv4Net::new(Ipv4Addr::from(o), len).unwrap().trunc();
            let a = u128::from(u32::from(net.network()));
            if set.insert((len, a)) {
                list.push((a, len));
                h.maps
                    .rules4
                    .insert(&rule4_key(RULESET, net), v, 0)
                    .unwrap();
            }
        }
    }
    (set, list)
}

fn matches(rules: &Rules, v6: bool, a: u128) -> bool {
    let (bits, lens) = if v6 {
        (128u32, 32..=128)
    } else {
        (32, 16..=32)
    };
    lens.into_iter().any(|len: u32| {
        let mask = if len == 0 {
            0
        } else {
            (u128::MAX << (bits - len)) & if v6 { u128::MAX } else { 0xffff_ffff }
        };
        rules.0.contains(&(len as u8, a & mask))
    })
}

fn addr(v6: bool, a: u128) -> IpAddr {
    if v6 {
        Ipv6Addr::from(a).into()
    } else {
        Ipv4Addr::from(a as u32).into()
    }
}

/// `POOL` destinations that match no rule (random unicast addresses, rejection-sampled).
fn miss_pool(rules: &Rules, v6: bool, rng: &mut Rng) -> Vec<IpAddr> {
    let mut v = Vec::new();
    while v.len() < POOL {
        let r = rng.next();
        let a = if v6 {
            // Inside fd00::/8 like the rules, so lookups walk the same part of the trie.
            (0xfdu128 << 120) | (u128::from(r) << 56) | u128::from(rng.next() >> 8)
        } else {
            let mut o = (r as u32).to_be_bytes();
            o[0] = 1 + (o[0] % 223);
            if o[0] == 127 || o[0] == 169 {
                continue;
            }
            u128::from(u32::from_be_bytes(o))
        };
        if !matches(rules, v6, a) {
            v.push(addr(v6, a));
        }
    }
    v
}

/// `POOL` destinations inside random rules (random host bits).
fn hit_pool(rules: &Rules, v6: bool, rng: &mut Rng) -> Vec<IpAddr> {
    let bits = if v6 { 128 } else { 32 };
    (0..POOL)
        .map(|_| {
            let (net, len) = rules.1[rng.next() as usize % rules.1.len()];
            let host = if u32::from(len) == bits {
                0
            } else {
                (u128::from(rng.next()) | (u128::from(rng.next()) << 64))
                    >> (128 - bits + u32::from(len))
            };
            addr(v6, net | host)
        })
        .collect()
}

fn clear(h: &mut Harness) {
    let k4: Vec<_> = h.maps.rules4.keys().map(Result::unwrap).collect();
    k4.iter().for_each(|k| h.maps.rules4.remove(k).unwrap());
    let k6: Vec<_> = h.maps.rules6.keys().map(Result::unwrap).collect();
    k6.iter().for_each(|k| h.maps.rules6.remove(k).unwrap());
    let kf: Vec<_> = h.maps.flows.keys().map(Result::unwrap).collect();
    kf.iter().for_each(|k| h.maps.flows.remove(k).unwrap());
}

const PATHS: [&str; 6] = [
    "empty",
    "miss",
    "steered_hit",
    "reply_revnat",
    "empty_x64",
    "miss_x64",
];

fn part_a(quick: bool) -> Vec<Row> {
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

    let (sizes, rounds, iters): (&[usize], usize, usize) = if quick {
        (&[10, 1_000], 3, 256)
    } else {
        (&[10, 1_000, 10_000, 100_000], 7, 2_048)
    };
    let mut rows = Vec::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for v6 in [false, true] {
        for &n in sizes {
            clear(&mut h);
            let rules = fill_rules(&mut h, v6, n, &mut rng);
            let (src, eth1): (IpAddr, IpAddr) = if v6 {
                (h.eth0.v6.into(), h.eth1.v6.into())
            } else {
                (h.eth0.v4.into(), h.eth1.v4.into())
            };
            let misses: Vec<Vec<u8>> = miss_pool(&rules, v6, &mut rng)
                .into_iter()
                .enumerate()
                .map(|(i, d)| udp_frame(src, d, 20000 + i as u16, 53, false))
                .collect();
            let hit_dsts = hit_pool(&rules, v6, &mut rng);
            let hits: Vec<Vec<u8>> = hit_dsts
                .iter()
                .enumerate()
                .map(|(i, d)| udp_frame(src, *d, 30000 + i as u16, 53, false))
                .collect();
            let replies: Vec<Vec<u8>> = hit_dsts
                .iter()
                .enumerate()
                .map(|(i, d)| udp_frame(*d, eth1, 53, 30000 + i as u16, false))
                .collect();
            // Create the pinned flows the hit and reply paths use.
            for f in &hits {
                assert_eq!(h.egress(h.eth0.ifindex, f).ret, TC_ACT_REDIRECT);
            }
            let (e0, e1) = (h.eth0.ifindex, h.eth1.ifindex);
            // empty/miss leave the packet as it is, so they are also measured with many
            // repetitions per run (less timer overhead, but the same packet 64 times); rewriting
            // paths only one at a time, so every path is also reported with repeat = 1 for a
            // like-for-like comparison.
            let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); PATHS.len()];
            for _ in 0..rounds {
                for (i, path) in PATHS.iter().enumerate() {
                    let mut s: Vec<f64> = Vec::with_capacity(iters);
                    for j in 0..iters {
                        let k = j % POOL;
                        let egress = h.dp.program(veer_common::maps::PROG_EGRESS).unwrap();
                        let d = match *path {
                            "empty" => once(empty, e0, &misses[k], TC_ACT_OK, 1),
                            "empty_x64" => once(empty, e0, &misses[k], TC_ACT_OK, 64),
                            "miss" => once(egress, e0, &misses[k], TC_ACT_OK, 1),
                            "miss_x64" => once(egress, e0, &misses[k], TC_ACT_OK, 64),
                            "steered_hit" => once(egress, e0, &hits[k], TC_ACT_REDIRECT, 1),
                            _ => once(
                                h.dp.program(veer_common::maps::PROG_INGRESS).unwrap(),
                                e1,
                                &replies[k],
                                TC_ACT_REDIRECT,
                                1,
                            ),
                        };
                        s.push(d.as_nanos() as f64);
                    }
                    per_round[i].push(median(&mut s));
                }
            }
            for (i, path) in PATHS.iter().enumerate() {
                rows.push(Row {
                    family: if v6 { "ipv6" } else { "ipv4" },
                    prefixes: n,
                    path,
                    s: Spread::of(&per_round[i]),
                });
            }
        }
    }
    rows
}

fn section_a(rows: &[Row], quick: bool) -> Section {
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
            .s
            .median
    };
    let mut md = String::new();
    writeln!(md, "## A. Per-packet program cost (BPF_PROG_TEST_RUN)\n").unwrap();
    writeln!(
        md,
        "Each figure is the median over {} interleaved rounds (empty, miss, hit, reply, empty, …) \
         of the per-round median of {} single runs; the spread is the range of round medians. \
         Every path cycles through a pool of {POOL} different packets (destinations, ports, \
         flows), so consecutive lookups walk different parts of the trie and flow table. The \
         rules are random prefixes (IPv4 /16–/32 across unicast space, IPv6 /32–/128 in \
         fd00::/8), all in one ruleset. \"over empty\" is the cost veer adds to the cheapest \
         possible classifier measured in the same rounds.\n\n\
         - `miss`: destination matches no rule (interface lookup, LPM lookup; the flow table \
         is not consulted).\n\
         - `steered_hit`: packet of a pinned steered flow (interface and LPM lookups, flow \
         lookup, source rewrite with checksums, redirect).\n\
         - `reply_revnat`: reply of that flow on the target interface (destination restore, \
         re-delivery).\n\
         - `_x64`: 64 repetitions of the same packet per run (less timer overhead, cache-hot).\n",
        if quick { 3 } else { 7 },
        if quick { 256 } else { 2048 },
    )
    .unwrap();
    writeln!(
        md,
        "| family | prefixes | path | median ns | over empty ns | spread (round medians) |"
    )
    .unwrap();
    writeln!(md, "|---|---:|---|---:|---:|---|").unwrap();
    for r in rows {
        writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:+.0} | {:.0}–{:.0} |",
            r.family,
            r.prefixes,
            r.path,
            r.s.median,
            r.s.median - empty(r),
            r.s.min,
            r.s.max
        )
        .unwrap();
    }
    let mut plots = Vec::new();
    for fam in ["ipv4", "ipv6"] {
        let series: Vec<Series> = ["empty", "miss", "steered_hit", "reply_revnat"]
            .iter()
            .map(|p| {
                (
                    p.to_string(),
                    rows.iter()
                        .filter(|r| r.family == fam && r.path == *p)
                        .map(|r| (r.prefixes as f64, r.s))
                        .collect(),
                )
            })
            .collect();
        let title = format!("{fam}: ns per packet (BPF_PROG_TEST_RUN)");
        plots.push((
            format!("prog_test_run_{fam}.svg"),
            plot::lines(
                &Axes {
                    title: &title,
                    x: "prefixes in the trie",
                    y: "ns",
                    log_x: true,
                    log_y: false,
                },
                &series,
            ),
        ));
        writeln!(md, "\n![{fam}](benchmarks/prog_test_run_{fam}.svg)").unwrap();
    }
    writeln!(md).unwrap();
    let find = |fam: &str, n: usize, p: &str| {
        rows.iter()
            .find(|r| r.family == fam && r.prefixes == n && r.path == p)
    };
    let mut aims = Vec::new();
    for fam in ["ipv4", "ipv6"] {
        if let Some(m) = find(fam, 1_000, "miss") {
            let over = m.s.median - empty(m);
            let x64 = find(fam, 1_000, "miss_x64")
                .map(|x| {
                    format!(
                        " (same packet ×64 per run: {:+.0} ns)",
                        x.s.median - empty(x)
                    )
                })
                .unwrap_or_default();
            aims.push(Aim::new(
                &format!("{fam} miss ≤ empty + 15 ns at 1k prefixes"),
                format!("{over:+.0} ns{x64}"),
                over <= 15.0,
                "not profiled; a miss does two map lookups (interface hash, LPM walk of the ruleset) plus parsing, over 256 different packets",
            ));
        }
        if let Some(m) = find(fam, 1_000, "steered_hit") {
            aims.push(Aim::new(
                &format!("{fam} steered hit ≤ 120 ns"),
                format!("{:.0} ns (1k prefixes)", m.s.median),
                m.s.median <= 120.0,
                "not profiled; the figure includes the test run's own per-run overhead (see `empty`) plus the flow lookup, the rewrite with incremental checksums and the redirect",
            ));
        }
    }
    let json = J::A(
        rows.iter()
            .map(|r| {
                J::obj([
                    ("family", J::s(r.family)),
                    ("prefixes", J::N(r.prefixes as f64)),
                    ("path", J::s(r.path)),
                    ("median_ns", J::N(r.s.median)),
                    ("over_empty_ns", J::N(r.s.median - empty(r))),
                    ("min_ns", J::N(r.s.min)),
                    ("max_ns", J::N(r.s.max)),
                ])
            })
            .collect(),
    );
    Section {
        key: "prog_test_run",
        md,
        json,
        plots,
        aims,
    }
}

fn main() {
    let o = opts();
    assert!(
        veer_tests::privileged::is_root(),
        "veer-bench needs root (BPF_PROG_TEST_RUN, namespaces)"
    );
    let (cpu, cores, kernel, load0) = machine();
    let started = std::time::Instant::now();
    let mut sections = Vec::new();
    if o.parts.contains('a') {
        let rows = in_fresh_netns(|| part_a(o.quick));
        sections.push(section_a(&rows, o.quick));
        eprintln!("veer-bench: part A done");
    }
    // Part F measures wall-clock latency: it runs before B–E, whose namespaces, traffic and
    // hundreds of pods leave the machine busy for a while after they finish.
    let part_f = o.parts.contains('f').then(|| {
        let f = k8s::run(&k8s::K8sOpts::new(o.quick));
        eprintln!("veer-bench: part F done");
        f
    });
    if o.parts.contains('b') || o.parts.contains('c') {
        sections.extend(traffic::run(&traffic::TrafficOpts::new(o.quick)));
        eprintln!("veer-bench: parts B, C done");
    }
    if o.parts.contains('d') || o.parts.contains('e') {
        sections.extend(fanout::run(&fanout::FanoutOpts::new(o.quick)));
        eprintln!("veer-bench: parts D, E done");
    }
    sections.extend(part_f);
    let (_, _, _, load1) = machine();
    let agent = veer_tests::agent::veer_bin();
    let profile = if agent.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else {
        "debug"
    };
    let irq = match veer_tests::bench::irq_time_accounting() {
        Some(true) => "CONFIG_IRQ_TIME_ACCOUNTING=y",
        Some(false) => "no CONFIG_IRQ_TIME_ACCOUNTING",
        None => "IRQ time accounting unknown",
    };

    let mut md = String::new();
    writeln!(md, "# veer benchmarks\n").unwrap();
    writeln!(
        md,
        "Generated by `sudo cargo xtask bench` (do not edit by hand; `--quick` is the test \
         suite's smoke run and writes only `target/bench/`). Machine-readable results: \
         `target/bench/*.json`.\n\n\
         - Reproduce: `sudo cargo xtask bench` (builds the eBPF object, the release `veer` \
         agent and runs `veer-bench --out target/bench --doc docs/benchmarks.md`; \
         `veer-bench --parts ab` runs a subset).\n\
         - Machine: {cpu}, {cores} CPUs; kernel {kernel} ({irq}).\n\
         - Load average at start: {load0}; at end: {load1}. Other builds shared this machine \
         while it ran: figures that depend on wall time or CPU share (B, C, D, F) carry that noise, \
         which is what the spreads show.\n\
         - Agent binary: {profile} build ({}). Total run: {:.0} s.\n",
        agent.display(),
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    let aims: Vec<&Aim> = sections.iter().flat_map(|s| &s.aims).collect();
    if !aims.is_empty() {
        writeln!(md, "## Aims\n").unwrap();
        writeln!(md, "| aim | measured | met | why not |").unwrap();
        writeln!(md, "|---|---|---|---|").unwrap();
        for a in &aims {
            writeln!(
                md,
                "| {} | {} | {} | {} |",
                a.aim,
                a.measured,
                if a.met { "yes" } else { "**no**" },
                a.why
            )
            .unwrap();
        }
        writeln!(md).unwrap();
    }
    for s in &sections {
        md.push_str(&s.md);
        md.push('\n');
    }
    let meta = J::obj([
        ("quick", J::B(o.quick)),
        ("cpu", J::s(cpu)),
        ("cores", J::N(cores as f64)),
        ("kernel", J::s(kernel)),
        ("load_start", J::s(load0)),
        ("load_end", J::s(load1)),
        ("agent_profile", J::s(profile)),
    ]);
    std::fs::create_dir_all(&o.out).unwrap();
    for s in &sections {
        let j = J::obj([("meta", meta.clone()), ("results", s.json.clone())]);
        std::fs::write(o.out.join(format!("{}.json", s.key)), format!("{j}\n")).unwrap();
        for (name, svg) in &s.plots {
            std::fs::write(o.out.join(name), svg).unwrap();
        }
    }
    let aims_json = J::A(
        aims.iter()
            .map(|a| {
                J::obj([
                    ("aim", J::s(a.aim.clone())),
                    ("measured", J::s(a.measured.clone())),
                    ("met", J::B(a.met)),
                ])
            })
            .collect(),
    );
    std::fs::write(
        o.out.join("aims.json"),
        format!("{}\n", J::obj([("meta", meta), ("aims", aims_json)])),
    )
    .unwrap();
    std::fs::write(o.out.join("report.md"), &md).unwrap();
    if let Some(doc) = &o.doc {
        let dir = doc.parent().unwrap().join("benchmarks");
        std::fs::create_dir_all(&dir).unwrap();
        for s in &sections {
            for (name, svg) in &s.plots {
                std::fs::write(dir.join(name), svg).unwrap();
            }
        }
        std::fs::write(doc, &md).unwrap();
        eprintln!("veer-bench: wrote {}", doc.display());
    }
    println!("{md}");
}
