//! Reliability and security scenarios (root): faults, churn, pressure and least privilege, each
//! a named test against the real `veer` agent binary on dual-CNI pods made of network
//! namespaces ([`veer_tests::topology`], [`veer_tests::agent`]) or against the real programs
//! through `BPF_PROG_TEST_RUN` ([`veer_tests::harness`]).
//!
//! Every test runs a shortened version by default (the whole file stays well under 90 s) and
//! the long version with `VEER_SOAK=1` (`cargo xtask test --soak`; CI does not run it). Each
//! test appends what it measured and its result as one JSON line to
//! `target/reliability/<test>.jsonl`; `cargo run -p veer-tests --bin reliability-report`
//! renders them into the table of `docs/reliability.md`. A test that panics still writes its
//! line, with the result `FAIL`.
//!
//! Build the agent first: `cargo build -p veer-agent --bin veer` (`cargo xtask test` does).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    io::Write as _,
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use veer_common::{
    DIR_IN, DIR_OUT, FLOW_STEER, FlowKey, IFACE_F_V4, IfaceInfo, IfaceKey, maps as names, paths,
    stats,
};
use veer_tests::{
    agent::{self, Agent, Json, route_cr},
    harness::{Harness, RULESET, TC_ACT_OK, TC_ACT_REDIRECT},
    ns::in_fresh_netns,
    packet::{ACK, FIN, SRC_MAC, SYN, mss_opt, tcp_frame},
    privileged::require_root,
    topology::{
        EchoStream, Exchanger, Pod, STEERED4, STEERED6, Topology, TopologyOpts, UNSTEERED4,
        UNSTEERED6,
    },
};

// ---------------------------------------------------------------------------------------------
// Modes and the JSON-lines record.

/// Whether the long (soak) versions run: `VEER_SOAK=1`.
fn soak() -> bool {
    std::env::var("VEER_SOAK").is_ok_and(|v| v == "1" || v == "true")
}

fn mode() -> &'static str {
    if soak() { "soak" } else { "normal" }
}

/// `normal` in the default suite, `long` under `VEER_SOAK=1`.
fn pick<T>(normal: T, long: T) -> T {
    if soak() { long } else { normal }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Where the JSON lines go: `<workspace>/target/reliability/`.
fn report_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/reliability")
}

/// One scenario's record: what was measured, findings, and whether the test passed. Written as
/// one JSON line on drop (`FAIL` when the test panicked before [`Rec::pass`]).
struct Rec {
    scenario: &'static str,
    test: &'static str,
    measured: Vec<String>,
    findings: Vec<String>,
    passed: bool,
    started: Instant,
}

impl Rec {
    fn new(scenario: &'static str, test: &'static str) -> Self {
        Self {
            scenario,
            test,
            measured: Vec::new(),
            findings: Vec::new(),
            passed: false,
            started: Instant::now(),
        }
    }

    fn note(&mut self, m: impl Into<String>) {
        let m = m.into();
        eprintln!("[{}] {m}", self.test);
        self.measured.push(m);
    }

    fn finding(&mut self, f: impl Into<String>) {
        let f = f.into();
        eprintln!("[{}] FINDING: {f}", self.test);
        self.findings.push(f);
    }

    fn pass(mut self) {
        self.passed = true;
    }
}

impl Drop for Rec {
    fn drop(&mut self) {
        let dir = report_dir();
        let _ = fs::create_dir_all(&dir);
        let result = if self.passed { "pass" } else { "FAIL" };
        let line = format!(
            "{{\"scenario\":{},\"test\":{},\"mode\":{},\"result\":{},\"seconds\":{:.1},\"measured\":[{}],\"findings\":[{}]}}\n",
            json_str(self.scenario),
            json_str(self.test),
            json_str(mode()),
            json_str(result),
            self.started.elapsed().as_secs_f64(),
            self.measured
                .iter()
                .map(|m| json_str(m))
                .collect::<Vec<_>>()
                .join(","),
            self.findings
                .iter()
                .map(|m| json_str(m))
                .collect::<Vec<_>>()
                .join(","),
        );
        if let Ok(mut f) = fs::File::create(dir.join(format!("{}.jsonl", self.test))) {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The agent on a topology.

/// The Route file: `172.16.10.0/24` (and its IPv6 counterpart) to `cidr_dev`, `192.168.2.0/24`
/// (and its IPv6 counterpart) to `eth0`; the rest is not steered.
fn routes_yaml(cidr_dev: &str) -> String {
    route_cr(
        "reliability",
        &[
            ("172.16.10.0/24", cidr_dev),
            ("fd00:172:16:10::/64", cidr_dev),
            ("192.168.2.0/24", "eth0"),
            ("fd00:192:168:2::/64", "eth0"),
        ],
        &[],
    )
}

/// The rule entries [`routes_yaml`] must produce: prefix → interface name.
fn desired(cidr_dev: &str) -> BTreeMap<IpNet, String> {
    [
        ("172.16.10.0/24", cidr_dev),
        ("fd00:172:16:10::/64", cidr_dev),
        ("192.168.2.0/24", "eth0"),
        ("fd00:192:168:2::/64", "eth0"),
    ]
    .into_iter()
    .map(|(n, d)| (n.parse().unwrap(), d.to_string()))
    .collect()
}

/// The rule tries as (prefix, slot).
fn live_rules(a: &Agent) -> BTreeSet<(IpNet, Option<u16>)> {
    agent::rules(&a.maps())
        .into_iter()
        .map(|((_, n), v)| (n, Some(v.slot)))
        .collect()
}

/// Waits until the tries hold exactly `want` (each with its interface's slot from the status)
/// and the status reports as many rules and no load error.
fn wait_applied(a: &Agent, want: &BTreeMap<IpNet, String>) {
    let deadline = Instant::now() + agent::AGENT_TIMEOUT;
    loop {
        let status = a.status();
        let slots = status.as_ref().map(Agent::slots).unwrap_or_default();
        let want: BTreeSet<(IpNet, Option<u16>)> = want
            .iter()
            .map(|(n, dev)| (*n, slots.get(dev).copied()))
            .collect();
        let have = live_rules(a);
        let errors = status.as_ref().map(Agent::load_errors).unwrap_or_default();
        let counted = status.as_ref().and_then(|s| s.get("rules").as_u64());
        if have == want && errors.is_empty() && counted == Some(want.len() as u64) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rules not applied: want {want:?}, have {have:?}, status rules {counted:?}, load \
             errors {errors:?}\nagent log:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent on a one-pod topology (OVN interface `eth1`). Field order is drop order.
struct Env {
    agent: Agent,
    topo: Topology,
}

impl Env {
    fn new() -> Self {
        let topo = Topology::build(TopologyOpts::second("eth1"));
        let mut agent = Agent::new();
        agent.write_routes(&routes_yaml("eth1"));
        agent.add_topology_pod(topo.pod0());
        agent.start();
        agent.wait_pod_managed(&topo.pod_path(), &["eth0", "eth1"]);
        wait_applied(&agent, &desired("eth1"));
        Self { agent, topo }
    }

    fn pod(&self) -> Pod {
        self.topo.pod0().clone()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let t = self.agent.maps().stats_totals().expect("stats");
        stats::NAMES
            .iter()
            .zip(t)
            .filter(|(_, v)| *v != 0)
            .map(|(n, v)| (*n, v))
            .collect()
    }
}

/// Streams to a steered and an unsteered destination, with the source the server saw checked.
fn streams(pod: &Pod) -> Vec<(String, EchoStream)> {
    [
        (IpAddr::from(STEERED4), "eth1"),
        (UNSTEERED4.into(), "eth0"),
    ]
    .into_iter()
    .map(|(dst, iface)| {
        let s = pod.echo(dst).expect("connect to the echo server");
        assert_eq!(
            pod.iface_of(s.seen),
            Some(iface),
            "stream to {dst} left by the wrong interface"
        );
        (format!("stream to {dst} (by {iface})"), s)
    })
    .collect()
}

/// 10 ms pings from the pod to a steered and an unsteered destination (IPv4 and IPv6), each
/// `count` long, on threads.
fn pings(pod: &Pod, count: u32) -> Vec<(IpAddr, JoinHandle<(u32, u32)>)> {
    [
        IpAddr::from(STEERED4),
        STEERED6.into(),
        UNSTEERED4.into(),
        UNSTEERED6.into(),
    ]
    .into_iter()
    .map(|dst| {
        let p = pod.clone();
        (
            dst,
            std::thread::spawn(move || p.ping_series(dst, count, Duration::from_millis(10))),
        )
    })
    .collect()
}

/// Joins the ping threads: (sent, received) summed, and the destinations that lost any.
fn join_pings(pings: Vec<(IpAddr, JoinHandle<(u32, u32)>)>) -> (u32, u32, Vec<String>) {
    let (mut sent, mut got, mut lossy) = (0, 0, Vec::new());
    for (dst, h) in pings {
        let (s, r) = h.join().expect("ping thread");
        sent += s;
        got += r;
        if s == 0 || s != r {
            lossy.push(format!("{dst}: {r}/{s}"));
        }
    }
    (sent, got, lossy)
}

/// TCP from the pod to a steered and an unsteered destination leaves by the right interface.
fn new_connections_ok(pod: &Pod, cidr_dev: &str) -> Vec<String> {
    [
        (IpAddr::from(STEERED4), cidr_dev),
        (STEERED6.into(), cidr_dev),
        (UNSTEERED4.into(), "eth0"),
    ]
    .into_iter()
    .filter_map(|(dst, iface)| match pod.tcp(dst) {
        Ok(seen) if pod.iface_of(seen) == Some(iface) => None,
        Ok(seen) => Some(format!("TCP to {dst}: seen from {seen}, want {iface}")),
        Err(e) => Some(format!("TCP to {dst}: {e}")),
    })
    .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 and restart, repeatedly, under traffic.

#[test]
fn agent_kill_9_and_restart_repeatedly_under_ping_and_tcp_loses_nothing() {
    const T: &str = "agent_kill_9_and_restart_repeatedly_under_ping_and_tcp_loses_nothing";
    if !require_root(T) {
        return;
    }
    let mut rec = Rec::new("1. agent kill -9 + restart under traffic", T);
    let mut env = Env::new();
    let pod = env.pod();
    let cycles = pick(5, 20);
    let ex = Exchanger::start(streams(&pod));
    // Enough pings to cover every cycle (each takes well under a second).
    let count = pick(600, 3000);
    let pings = pings(&pod, count);
    std::thread::sleep(Duration::from_millis(300));
    let maps = env.agent.maps();
    let ifaces_before = agent::ifaces(&maps);
    drop(maps);
    let links_before = env.agent.pinned_links();
    let t = Instant::now();
    let mut downtime = Duration::ZERO;
    for cycle in 0..cycles {
        env.agent.kill9();
        let down = Instant::now();
        std::thread::sleep(Duration::from_millis(pick(150, 500)));
        env.agent.start();
        env.agent.wait_pod_managed(&pod.path(), &["eth0", "eth1"]);
        downtime += down.elapsed();
        assert!(env.agent.running(), "cycle {cycle}: agent exited");
    }
    let cycles_took = t.elapsed();
    let mid = ex.counts();
    let (sent, got, lossy) = join_pings(pings);
    let (end, errors) = ex.finish();
    rec.note(format!(
        "{cycles} kill -9/restart cycles in {:.1} s (agent down {:.1} s in total); pings (10 ms, \
         v4+v6, steered+unsteered) received {got}/{sent}; TCP round trips {end:?}",
        cycles_took.as_secs_f64(),
        downtime.as_secs_f64()
    ));
    assert!(
        cycles_took < Duration::from_millis(u64::from(count) * 10),
        "the cycles outlasted the pings ({cycles_took:?})"
    );
    assert!(
        lossy.is_empty(),
        "pings lost: {lossy:?}; {:?}",
        env.counters()
    );
    assert!(errors.is_empty(), "streams broke: {errors:?}");
    assert!(
        mid.iter().zip(&end).all(|(a, b)| b > a),
        "a stream stalled: {mid:?} → {end:?}"
    );
    // Maps equal the desired state: rules as compiled (status slots), interfaces and links as
    // before (adopted, not recreated).
    env.agent.wait_rounds(2);
    wait_applied(&env.agent, &desired("eth1"));
    assert_eq!(agent::ifaces(&env.agent.maps()), ifaces_before);
    let links_after = env.agent.pinned_links();
    assert_eq!(
        links_after.keys().collect::<Vec<_>>(),
        links_before.keys().collect::<Vec<_>>(),
        "the same TCX links are adopted"
    );
    let bad = new_connections_ok(&pod, "eth1");
    assert!(bad.is_empty(), "{bad:?}");
    rec.note(format!(
        "after: rule tries == compiled desired set ({} entries), interface entries and {} link \
         pins unchanged, new connections steered",
        desired("eth1").len(),
        links_after.len()
    ));
    rec.pass();
}

// ---------------------------------------------------------------------------------------------
// 2. Upgrade with a changed map layout.

fn bpftool_json(args: &[&str]) -> Json {
    let out = veer_tests::programs::command("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Json::parse(String::from_utf8_lossy(&out.stdout).trim()).expect("bpftool JSON")
}

fn bpftool(args: &[&str]) {
    let out = veer_tests::programs::command("bpftool")
        .args(args)
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn upgrade_with_a_changed_map_layout_migrates_make_before_break_and_drops_old_pins() {
    const T: &str =
        "upgrade_with_a_changed_map_layout_migrates_make_before_break_and_drops_old_pins";
    if !require_root(T) {
        return;
    }
    let mut rec = Rec::new("2. upgrade with a changed map layout", T);
    let mut env = Env::new();
    let pod = env.pod();
    let ex = Exchanger::start(streams(&pod));
    let pings = pings(&pod, pick(300, 1000));
    std::thread::sleep(Duration::from_millis(300));
    let progs_before: BTreeSet<u64> = env.agent.pinned_links().into_values().collect();

    // The old agent's pins: VEER_RULES4_V1 with another value size (a layout change without a
    // version bump) and a map of an older version, VEER_RULES4_V0. The attached programs keep
    // the map they were loaded with; only the pins change.
    env.agent.kill9();
    let maps_dir = env.agent.bpffs_root.join(paths::MAPS_DIR);
    let pin = maps_dir.join(names::RULES4);
    fs::remove_file(&pin).expect("unpin VEER_RULES4_V1");
    let old = pin.to_string_lossy().into_owned();
    bpftool(&[
        "map",
        "create",
        &old,
        "type",
        "lpm_trie",
        "key",
        "12",
        "value",
        "20",
        "entries",
        "131072",
        "name",
        "VEER_RULES4_V1",
        "flags",
        "1",
    ]);
    let v0 = maps_dir.join("VEER_RULES4_V0");
    bpftool(&[
        "map",
        "create",
        &v0.to_string_lossy(),
        "type",
        "lpm_trie",
        "key",
        "12",
        "value",
        "20",
        "entries",
        "1024",
        "name",
        "VEER_RULES4_V0",
        "flags",
        "1",
    ]);
    let t = Instant::now();
    env.agent.start();
    let deadline = Instant::now() + agent::AGENT_TIMEOUT;
    while env.agent.running()
        && Instant::now() < deadline
        && env
            .agent
            .status()
            .is_none_or(|s| Agent::pod_status(&s, &pod.path()).is_none())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !env.agent.running() {
        let log = env.agent.log_text();
        let why = log
            .lines()
            .skip_while(|l| !l.starts_with("Error:"))
            .take_while(|l| !l.starts_with("Stack backtrace"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ");
        let (sent, got, _) = join_pings(pings);
        rec.note(format!(
            "agent with a mismatched VEER_RULES4_V1 pin: exited ({why}); the attached programs \
             kept running: pings received {got}/{sent}"
        ));
        rec.finding(
            "layout migration cannot work: bpffs refuses names containing a dot (EPERM on \
             lookup), so renaming the mismatched pin to `<NAME>.stale` fails and the agent \
             exits (crash loop on upgrade). Fix: a dot-free name such as `<NAME>_stale` in \
             dataplane.rs (and in standalone.rs's clean-up)",
        );
        panic!("the agent exited on the layout migration: {why}");
    }
    env.agent.wait_pod_managed(&pod.path(), &["eth0", "eth1"]);
    wait_applied(&env.agent, &desired("eth1"));
    let switched = t.elapsed();
    env.agent.wait_rounds(2);

    let info = bpftool_json(&["map", "show", "pinned", &old]);
    assert_eq!(
        info.get("bytes_value").as_u64(),
        Some(24),
        "the pin holds the current layout: {info:?}"
    );
    let progs_after: BTreeSet<u64> = env.agent.pinned_links().into_values().collect();
    assert!(
        progs_after.is_disjoint(&progs_before),
        "the links run the new programs: {progs_before:?} → {progs_after:?}"
    );
    let (sent, got, lossy) = join_pings(pings);
    let (end, errors) = ex.finish();
    rec.note(format!(
        "mismatched VEER_RULES4_V1 pin (value 20 B) replaced in {:.2} s, links switched to the \
         new programs; pings received {got}/{sent}; TCP round trips {end:?}",
        switched.as_secs_f64()
    ));
    assert!(
        lossy.is_empty(),
        "pings lost: {lossy:?}; {:?}",
        env.counters()
    );
    assert!(errors.is_empty(), "streams broke: {errors:?}");
    let bad = new_connections_ok(&pod, "eth1");
    assert!(bad.is_empty(), "{bad:?}");
    let stale = veer_agent::dataplane::stale_pin(&maps_dir, names::RULES4);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stale.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !stale.exists(),
        "{} left behind after a successful round",
        stale.display()
    );
    assert!(
        !v0.exists(),
        "{} (a map of an older version) left behind after a successful round",
        v0.display()
    );
    rec.note(
        "the `_stale` pin and the VEER_RULES4_V0 pin (older version) are removed after the first \
         successful round",
    );
    rec.pass();
}

// ---------------------------------------------------------------------------------------------
// 3. Rule flapping.

#[test]
fn rule_flapping_keeps_established_connections_and_ends_in_the_desired_state() {
    const T: &str = "rule_flapping_keeps_established_connections_and_ends_in_the_desired_state";
    if !require_root(T) {
        return;
    }
    let mut rec = Rec::new("3. rule flapping under TCP traffic", T);
    let mut env = Env::new();
    let pod = env.pod();
    let flaps: u32 = pick(100, 1000);
    let every = Duration::from_millis(pick(25, 55));
    let ex = Exchanger::start(streams(&pod));
    std::thread::sleep(Duration::from_millis(200));
    let start_round = env.agent.round();
    let t = Instant::now();
    for i in 0..flaps {
        let dev = if i % 2 == 0 { "eth0" } else { "eth1" };
        env.agent.write_routes(&routes_yaml(dev));
        let next = t + every * (i + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        assert!(env.agent.running(), "flap {i}: the agent exited");
    }
    let took = t.elapsed();
    // flaps is even: the last write moved the rule to eth1.
    let last = if flaps.is_multiple_of(2) {
        "eth1"
    } else {
        "eth0"
    };
    wait_applied(&env.agent, &desired(last));
    let rounds = env.agent.round() - start_round;
    std::thread::sleep(Duration::from_millis(200));
    let (end, errors) = ex.finish();
    rec.note(format!(
        "{flaps} moves of 172.16.10.0/24 (+ IPv6) between eth0 and eth1 in {:.1} s, {rounds} \
         agent rounds; TCP round trips {end:?}",
        took.as_secs_f64()
    ));
    assert!(
        errors.is_empty(),
        "established connections broke: {errors:?}"
    );
    assert!(end.iter().all(|&c| c > 10), "streams stalled: {end:?}");
    assert!(env.agent.running());
    let bad = new_connections_ok(&pod, last);
    assert!(bad.is_empty(), "{bad:?}");
    let t = env.agent.maps().stats_totals().expect("stats");
    for r in [
        stats::ERR_FLOW_INSERT,
        stats::ERR_REWRITE,
        stats::ERR_REDIRECT,
    ] {
        assert_eq!(
            t[r as usize],
            0,
            "{}: {:?}",
            stats::NAMES[r as usize],
            env.counters()
        );
    }
    rec.note("agent alive, no stream broken, final tries == desired set, no error counter");
    rec.pass();
}

// ---------------------------------------------------------------------------------------------
// 4. Pod churn.

static LIGHT: AtomicU32 = AtomicU32::new(0);

/// A minimal pod: a namespace `veer-t<pid>-rl<n>-pod` with a veth pair `eth0`/`eth1` of its
/// own MACs, no addresses, no wiring (enough to be discovered, attached and registered).
/// Deleted on drop.
struct LightPod {
    name: String,
    path: PathBuf,
}

impl LightPod {
    fn new() -> Self {
        let n = LIGHT.fetch_add(1, Ordering::Relaxed);
        let name = format!("veer-t{}-rl{n}-pod", std::process::id());
        let ip = |args: &[&str]| {
            let out = veer_tests::programs::command("ip")
                .args(args)
                .output()
                .expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        let p = Self {
            path: PathBuf::from("/var/run/netns").join(&name),
            name,
        };
        let mac = |k: u8| {
            format!(
                "02:7{k}:{:02x}:{:02x}:{:02x}:{:02x}",
                (std::process::id() >> 8) as u8,
                std::process::id() as u8,
                (n >> 8) as u8,
                n as u8
            )
        };
        let (m0, m1) = (mac(0), mac(1));
        ip(&[
            "-n", &p.name, "link", "add", "eth0", "address", &m0, "type", "veth", "peer", "name",
            "eth1", "address", &m1,
        ]);
        ip(&["-n", &p.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &p.name, "link", "set", "eth1", "up"]);
        p
    }
}

impl Drop for LightPod {
    fn drop(&mut self) {
        let _ = veer_tests::programs::command("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// Links running one of `progs`.
fn links_running(progs: &BTreeSet<u64>) -> usize {
    agent::live_links()
        .values()
        .filter(|p| progs.contains(p))
        .count()
}

#[test]
fn pod_churn_at_10_per_second_leaks_no_entries_pins_links_or_descriptors() {
    const T: &str = "pod_churn_at_10_per_second_leaks_no_entries_pins_links_or_descriptors";
    if !require_root(T) {
        return;
    }
    let mut rec = Rec::new("4. pod churn", T);
    let mut agent = Agent::new();
    agent.write_routes(&routes_yaml("eth1"));
    let base = LightPod::new();
    agent.add_pod("default", "base", &base.path);
    agent.start();
    agent.wait_pod_managed(&base.path, &["eth0", "eth1"]);
    agent.wait_rounds(2);
    let pid = agent.pid().expect("running");
    let fds_before = fd_count(pid);
    let ifaces_before = agent::ifaces(&agent.maps());
    let dirs_before = agent.link_dirs();
    let pinned_before = agent.pinned_links();
    let progs: BTreeSet<u64> = pinned_before.values().copied().collect();
    let flows_before = agent.maps().flows.keys().count();
    assert_eq!(ifaces_before.len(), 2);
    assert_eq!(pinned_before.len(), 4);

    let total: usize = pick(20, 100);
    let live_for = 3; // pods alive at once: each lives ~0.3 s
    let mut live: std::collections::VecDeque<(LightPod, agent::PodEntry)> = Default::default();
    let t = Instant::now();
    let mut max_links = 0;
    for i in 0..total {
        let p = LightPod::new();
        let e = agent.add_pod("churn", &format!("churn-{i}"), &p.path);
        live.push_back((p, e));
        if live.len() > live_for {
            let (p, e) = live.pop_front().unwrap();
            agent.remove_pod_file(&e);
            drop(p);
        }
        max_links = max_links.max(agent.link_dirs().len());
        let next = t + Duration::from_millis(100) * (i as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for (p, e) in live.drain(..) {
        agent.remove_pod_file(&e);
        drop(p);
    }
    let churn_took = t.elapsed();
    agent.wait_status("only the base pod left", |s| {
        s.get("pods").items().len() == 1
    });
    agent.wait_rounds(2);
    assert!(agent.running(), "the agent exited");
    let managed = agent.log_text().matches("pod managed").count() - 1;
    let gone = agent.log_text().matches("pod gone").count();
    rec.note(format!(
        "{total} pods created and deleted in {:.1} s ({:.1}/s); the agent managed {managed} and \
         removed {gone} of them (up to {max_links} pods' link pin directories at once)",
        churn_took.as_secs_f64(),
        total as f64 / churn_took.as_secs_f64()
    ));
    assert!(managed > 0, "no churned pod was ever managed");
    assert_eq!(
        agent::ifaces(&agent.maps()),
        ifaces_before,
        "interface entries"
    );
    assert_eq!(agent.link_dirs(), dirs_before, "link pin directories");
    assert_eq!(agent.pinned_links(), pinned_before, "pinned links");
    assert_eq!(agent.maps().flows.keys().count(), flows_before, "flows");
    // Links die with their namespace, which the kernel tears down asynchronously.
    let deadline = Instant::now() + Duration::from_secs(10);
    while links_running(&progs) != 4 {
        assert!(
            Instant::now() < deadline,
            "links running veer's programs: {} (want 4)",
            links_running(&progs)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut fds_after = fd_count(pid);
    while fds_after != fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        fds_after = fd_count(pid);
    }
    rec.note(format!(
        "after: interface entries, link pins, flows and live links back to the base pod's; \
         agent fds {fds_before} → {fds_after}"
    ));
    assert_eq!(fds_after, fds_before, "the agent leaks file descriptors");
    drop(agent);
    drop(base);
    rec.pass();
}

// ---------------------------------------------------------------------------------------------
// 5. Map pressure.

/// `n` distinct IPv4 /32 routes to `eth1` in shorthand form, outside every test address.
fn many_routes(n: u32) -> String {
    let mut s = String::with_capacity(n as usize * 48 + 64);
    s.push_str("[\n");
    for i in 0..n {
        let a = std::net::Ipv4Addr::from(0x0b00_0000u32 + i); // 11.0.0.0/8 and up
        if i > 0 {
            s.push_str(",\n");
        }
        let _ = write!(s, "{{\"route\": \"{a}/32\", \"dev\": \"eth1\"}}");
    }
    s.push_str(",\n{\"route\": \"172.16.10.0/24\", \"dev\": \"eth1\"}\n]\n");
    s
}

#[test]
fn more_rules_than_the_trie_holds_are_refused_whole_and_steering_continues() {
    const T: &str = "more_rules_than_the_trie_holds_are_refused_whole_and_steering_continues";
    if !require_root(T) {
        return;
    }
    let mut rec = Rec::new("5a. rules beyond the trie capacity", T);
    let mut env = Env::new();
    let pod = env.pod();
    let before = live_rules(&env.agent);
    let n = names::RULES_MAX; // + the /24: one more than the trie holds
    let text = many_routes(n);
    let t = Instant::now();
    env.agent.write_routes(&text);
    // The agent either reports an error and keeps the previous rules, or dies.
    let deadline = Instant::now() + Duration::from_secs(pick(60, 120));
    let outcome = loop {
        if !env.agent.running() {
            break "exited";
        }
        if let Some(s) = env.agent.status() {
            let err = s.get("compile_error").as_str().map(String::from);
            let loads = Agent::load_errors(&s);
            if err.is_some() || !loads.is_empty() {
                break "reported";
            }
        }
        if Instant::now() >= deadline {
            break "nothing";
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = t.elapsed();
    let entries = agent::rules(&env.agent.maps()).len();
    let steering = new_connections_ok(&pod, "eth1");
    rec.note(format!(
        "{} rules written ({} over the {}-entry IPv4 trie): agent {outcome} after {:.1} s; {} \
         entries in the tries afterwards; existing steering {}",
        n + 1,
        1,
        names::RULES_MAX,
        took.as_secs_f64(),
        entries,
        if steering.is_empty() { "ok" } else { "BROKEN" }
    ));
    let log = env.agent.log_text();
    let logged = log
        .lines()
        .skip_while(|l| !l.starts_with("Error:"))
        .take_while(|l| !l.starts_with("Stack backtrace"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if outcome != "reported" {
        rec.finding(format!(
            "no capacity check before writing: the insert beyond RULES_MAX fails with the map \
             full, `apply_rules` returns the error and the agent exits ({}), leaving {entries} \
             entries half-applied (new entries written, stale ones not yet deleted); restarts \
             hit the same error (crash loop). Fix: refuse a compilation whose IPv4 or IPv6 \
             entry count exceeds RULES_MAX as a compile error (previous rules stay in force)",
            logged.trim()
        ));
    }
    assert!(
        steering.is_empty(),
        "existing steering broken: {steering:?}"
    );
    assert_eq!(outcome, "reported", "the agent must refuse, not exit");
    assert_eq!(live_rules(&env.agent), before, "nothing half-applied");
    rec.pass();
}

/// A steering rule for everything, SYNs of `n` distinct flows from `eth0`.
fn syn(h: &Harness, i: u32) -> Vec<u8> {
    let dst = std::net::Ipv4Addr::from(0xac10_0000u32 + (i >> 15)); // 172.16.0.0/12
    tcp_frame(
        IpAddr::from(h.eth0.v4),
        dst.into(),
        0x8000 | (i & 0x7fff) as u16,
        80,
        SYN,
        &mss_opt(1460),
    )
}

#[test]
fn full_flow_table_evicts_least_recently_used_flows_and_keeps_steering_new_ones() {
    const T: &str = "full_flow_table_evicts_least_recently_used_flows_and_keeps_steering_new_ones";
    if !require_root(T) {
        return;
    }
    let mut rec = Rec::new("5b. flow table full", T);
    in_fresh_netns(|| {
        let mut h = Harness::new();
        h.rule("172.16.0.0/12", 1, 1, None);
        let half = |h: &Harness| h.stats()[stats::FLOW_HALF_EVICTED as usize];
        let keys = |h: &Harness, i: u32| {
            let p = veer_tests::packet::parse(&syn(h, i));
            let mut k = FlowKey {
                sport: p.sport.to_be(),
                dport: p.dport.to_be(),
                proto: 6,
                family: veer_common::FAMILY_V4,
                dir: DIR_OUT,
                ..Default::default()
            };
            if let (IpAddr::V4(s), IpAddr::V4(d)) = (p.src, p.dst) {
                k.saddr[..4].copy_from_slice(&s.octets());
                k.daddr[..4].copy_from_slice(&d.octets());
            }
            // The reply entry: from the server to eth1's address.
            let mut eth1 = [0u8; 16];
            eth1[..4].copy_from_slice(&h.eth1.v4.octets());
            let r = k.reverse(eth1, DIR_IN);
            (k, r)
        };
        // (outgoing entry present, reply entry present); userspace look-ups do not mark LRU
        // entries as used, so looking does not change what is evicted.
        let halves = |h: &Harness, i: u32| {
            let (k, r) = keys(h, i);
            (
                h.maps.flows.get(&k, 0).is_ok_and(|v| v.kind == FLOW_STEER),
                h.maps.flows.get(&r, 0).is_ok(),
            )
        };
        let ack = |h: &Harness, i: u32, flags: u8| {
            let f = veer_tests::packet::parse(&syn(h, i));
            tcp_frame(IpAddr::from(h.eth0.v4), f.dst, f.sport, 80, flags, &[])
        };

        // Below capacity: 3/4 of the table. Every flow's ACK (SYN → established) checks its
        // pair; none may be counted.
        let below = names::FLOWS_MAX / 2 * 3 / 4;
        for i in 0..below {
            let f = syn(&h, i);
            assert_eq!(h.egress(h.eth0.ifindex, &f).ret, TC_ACT_REDIRECT);
        }
        let entries_below = h.maps.flows.keys().count();
        for i in 0..below {
            let f = ack(&h, i, ACK);
            assert_eq!(h.egress(h.eth0.ifindex, &f).ret, TC_ACT_REDIRECT);
        }
        let half_below = half(&h);
        rec.note(format!(
            "{below} steered flows ({entries_below} entries, 3/4 of the table): \
             flow_half_evicted {half_below} after an ACK of each"
        ));
        assert_eq!(
            entries_below as u32,
            below * 2,
            "nothing evicted below capacity"
        );
        assert_eq!(half_below, 0, "no pair is broken below capacity");

        // Beyond capacity: each steered flow takes two entries (OUT and reply IN).
        let flows = names::FLOWS_MAX / 2 * pick(3, 8) / 2;
        let before = h.stats();
        let t = Instant::now();
        let mut not_steered = 0;
        for i in below..flows {
            let f = syn(&h, i);
            if h.egress(h.eth0.ifindex, &f).ret != TC_ACT_REDIRECT {
                not_steered += 1;
            }
        }
        let took = t.elapsed();
        let entries = h.maps.flows.keys().count();
        let present = |h: &Harness, i: u32| halves(h, i).0;
        // The first flows of this phase were never used again; the ones of the first phase
        // were (their ACKs), the outgoing entries more recently than the reply entries.
        let oldest_kept = (below..below + 1000).filter(|&i| present(&h, i)).count();
        let newest_kept = (flows - 1000..flows).filter(|&i| present(&h, i)).count();
        let d = Harness::delta(&before, &h.stats());
        rec.note(format!(
            "then {} more steered SYNs ({} entries) into the {}-entry LRU in {:.1} s: {entries} \
             entries held, {not_steered} not steered, first 1000 of them kept {oldest_kept}, \
             newest 1000 kept {newest_kept}; counters {d:?}",
            flows - below,
            (flows - below) * 2,
            names::FLOWS_MAX,
            took.as_secs_f64()
        ));
        assert!(entries as u32 <= names::FLOWS_MAX);
        assert_eq!(not_steered, 0, "every new flow is steered: {d:?}");
        assert!(
            oldest_kept < 10,
            "the least recently used flows are evicted ({oldest_kept})"
        );
        assert!(
            newest_kept > 990,
            "the newest flows are kept ({newest_kept})"
        );

        // A FIN of every flow: where the outgoing entry is left, the packet is steered and
        // checks its pair. The expected count is what the map held just before each FIN (a
        // restored reply entry is an insert and may itself evict).
        let (mut broken, mut whole, mut gone) = (0u64, 0u64, 0u64);
        let b = h.stats();
        for i in 0..flows {
            match halves(&h, i) {
                (true, false) => broken += 1,
                (true, true) => whole += 1,
                (false, _) => gone += 1,
            }
            let f = ack(&h, i, ACK | FIN);
            h.egress(h.eth0.ifindex, &f);
        }
        let counted = half(&h) - b[stats::FLOW_HALF_EVICTED as usize];
        rec.note(format!(
            "a FIN of each of the {flows} flows: {whole} with both entries, {broken} with the \
             outgoing entry only, {gone} without it; flow_half_evicted +{counted}"
        ));
        assert!(
            broken > 0,
            "the LRU evicts reply entries of flows whose outgoing entries were used"
        );
        assert_eq!(
            counted, broken,
            "every broken pair met by a packet is counted, nothing else"
        );
        // A mid-stream segment of a flow evicted whole passes untouched on the kernel's path.
        let i = (below..flows)
            .find(|&i| halves(&h, i) == (false, false))
            .expect("a flow evicted whole");
        let seg = ack(&h, i, ACK);
        let b = h.stats();
        let r = h.egress(h.eth0.ifindex, &seg);
        assert_eq!(r.ret, TC_ACT_OK);
        assert_eq!(r.out, seg);
        let d = Harness::delta(&b, &h.stats());
        assert!(
            d.contains(&("pass_tcp_unpinned", 1)),
            "evicted mid-stream segment: {d:?}"
        );
        rec.note(
            "a mid-stream segment of a flow evicted whole passes unmodified (pass_tcp_unpinned)",
        );
        rec.finding(format!(
            "flow_half_evicted counts flows met with half of their entry pair ({counted} here, \
             each restored); a flow evicted whole leaves nothing to notice and is not counted \
             ({gone} of {flows} here): its segments show only as pass_tcp_unpinned. Watch `veer \
             maps` usage of VEER_FLOWS_V1"
        ));
    });
    rec.pass();
}

// ---------------------------------------------------------------------------------------------
// 8. Least privilege.

#[test]
fn pin_directories_are_mode_0700() {
    const T: &str = "pin_directories_are_mode_0700";
    if !require_root(T) {
        return;
    }
    let mut rec = Rec::new("8a. pin directory mode", T);
    let base = LightPod::new();
    let mut agent = Agent::new();
    agent.write_routes(&routes_yaml("eth1"));
    agent.add_pod("default", "base", &base.path);
    agent.start();
    agent.wait_pod_managed(&base.path, &["eth0", "eth1"]);
    let mut modes = Vec::new();
    for d in [
        agent.bpffs_root.clone(),
        agent.bpffs_root.join(paths::MAPS_DIR),
        agent.bpffs_root.join(paths::LINKS_DIR),
    ]
    .into_iter()
    .chain(agent.link_dirs())
    {
        let m = fs::metadata(&d).expect("stat").permissions().mode() & 0o7777;
        modes.push(format!(
            "{} {m:o}",
            d.strip_prefix(&agent.bpffs_root).unwrap().display()
        ));
        if d.starts_with(agent.bpffs_root.join(paths::LINKS_DIR)) && m != 0o700 {
            rec.finding(format!(
                "{} is mode {m:o}, not 0700 (the root above it is 0700, so only root can reach it)",
                d.display()
            ));
        } else {
            assert_eq!(m, 0o700, "{}", d.display());
        }
    }
    rec.note(format!("modes: {}", modes.join(", ")));
    drop(agent);
    drop(base);
    rec.pass();
}

#[test]
fn metrics_listen_on_localhost_by_default() {
    const T: &str = "metrics_listen_on_localhost_by_default";
    let mut rec = Rec::new("8b. metrics bound to localhost", T);
    let out = Command::new(agent::veer_bin())
        .args(["run", "--help"])
        .output()
        .expect("run veer run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let line = help
        .lines()
        .skip_while(|l| !l.contains("--metrics-address"))
        .take(4)
        .collect::<Vec<_>>()
        .join(" ");
    rec.note(format!(
        "`veer run --help`: {}",
        line.split_whitespace().collect::<Vec<_>>().join(" ")
    ));
    assert!(
        line.contains("[default: 127.0.0.1:"),
        "metrics default is not localhost: {line}"
    );
    rec.pass();
}

#[test]
fn a_pod_cannot_use_another_pods_identity_to_be_steered_by_its_rules() {
    const T: &str = "a_pod_cannot_use_another_pods_identity_to_be_steered_by_its_rules";
    if !require_root(T) {
        return;
    }
    let mut rec = Rec::new("8c. pod identity (ifindex, MAC)", T);
    in_fresh_netns(|| {
        let mut h = Harness::new();
        // Pod B: its own interface (another veth here) in ruleset 9, which steers 172.16.10.0/24
        // to its slot 1 (pod A's ruleset has no rule for it).
        veer_tests::ns::ip(&[
            "link", "add", "podb", "type", "veth", "peer", "name", "podbp",
        ]);
        veer_tests::ns::ip(&["link", "set", "podb", "up"]);
        let b_if = veer_tests::ns::ifindex("podb");
        let b_mac = [0x02, 0, 0, 0, 0, 0x0b];
        let mut slots = [0u32; veer_common::MAX_SLOTS];
        let mut slot_macs = [[0u8; 6]; veer_common::MAX_SLOTS];
        slots[0] = b_if;
        slot_macs[0] = b_mac;
        slots[1] = h.eth1.ifindex;
        slot_macs[1] = h.eth1.mac;
        let info = IfaceInfo {
            ruleset: 9,
            slot: 0,
            ifindex: b_if,
            mtu: 1500,
            mac: b_mac,
            flags: IFACE_F_V4,
            addr4: [10, 244, 1, 99],
            slots,
            slot_macs,
            ..Default::default()
        };
        h.maps
            .ifaces
            .insert(IfaceKey::new(b_if, b_mac), info, 0)
            .expect("pod B");
        h.rule_in(9, "172.16.10.0/24", 1, 9, None);
        assert_ne!(RULESET, 9);
        let dst = IpAddr::from(STEERED4);
        let frame = |src: IpAddr, mac: [u8; 6], sport: u16| {
            let mut f = tcp_frame(src, dst, sport, 80, SYN, &mss_opt(1460));
            f[6..12].copy_from_slice(&mac);
            f
        };
        let mut cases = Vec::new();
        // Pod A (eth0) sends with pod B's MAC, and with its own: neither is steered.
        for (what, ifx, mac, src) in [
            (
                "pod A's ifindex with pod B's MAC",
                h.eth0.ifindex,
                b_mac,
                IpAddr::from([10, 244, 1, 99]),
            ),
            (
                "pod A's ifindex with its own MAC",
                h.eth0.ifindex,
                SRC_MAC,
                IpAddr::from(h.eth0.v4),
            ),
            (
                "pod B's ifindex with pod A's MAC",
                b_if,
                SRC_MAC,
                IpAddr::from(h.eth0.v4),
            ),
        ] {
            let f = frame(src, mac, 40001);
            let r = h.egress(ifx, &f);
            assert_eq!(
                (r.ret, &r.out),
                (TC_ACT_OK, &f),
                "{what}: steered or modified"
            );
            cases.push(format!("{what}: passed unmodified"));
        }
        // Positive control: pod B itself is steered by its ruleset.
        let f = frame(IpAddr::from([10, 244, 1, 99]), b_mac, 40002);
        assert_eq!(h.egress(b_if, &f).ret, TC_ACT_REDIRECT, "pod B's own frame");
        cases.push("pod B's own (ifindex, MAC): steered (control)".into());
        rec.note(cases.join("; "));
    });
    rec.pass();
}
