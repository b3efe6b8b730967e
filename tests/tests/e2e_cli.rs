//! End-to-end checks that the operator-facing views of the real `veer` agent — `veer maps -o
//! json`, `veer trace -o json` and the Prometheus `/metrics` endpoint — agree with what real
//! traffic did in the seed topology (the same fixtures and route table as `e2e.rs`,
//! [`veer_tests::seed`]: one dual-CNI pod whose OVN interface is `eth1`, servers that report the
//! source address they saw).
//! Root only; everything is removed afterwards, also when a test fails.
//!
//! Build the agent first: `cargo build -p veer-agent --bin veer` (`cargo xtask test` does).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use veer_common::{DIR_OUT, FLOW_STEER, FlowKey, FlowValue, ST_EST, maps as names, paths, stats};
use veer_tests::{
    agent::{self, Agent, Json, veer_bin},
    privileged::require_root,
    seed::{self, Seed},
    topology::{PORT, Pod, STEERED4, SVC_ETH1_4, Topology, UNSTEERED4},
};

/// The name of the OVN interface: the seed's own.
const SECOND: &str = "eth1";

/// A free TCP port on 127.0.0.1 (bound to port 0, then released).
fn free_local_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address")
}

/// The agent on the seed table. Field order is drop order: the agent before the namespaces.
struct Env {
    agent: Agent,
    topo: Topology,
    seed: Seed,
}

impl Env {
    fn new(metrics: Option<SocketAddr>) -> Self {
        let seed = Seed::new(SECOND);
        let topo = seed.topology();
        let mut agent = Agent::new();
        if let Some(addr) = metrics {
            agent = agent.with_metrics_address(addr);
        }
        seed.start(&mut agent, &topo);
        Self { agent, topo, seed }
    }

    fn pod(&self) -> &Pod {
        self.topo.pod0()
    }

    /// Runs the `veer` CLI on the agent's bpffs root with `args` (a `-o json` command, followed
    /// by the agent's `--status-file`), returning its parsed output.
    fn cli(&self, args: &[&str]) -> Json {
        let out = Command::new(veer_bin())
            .arg("--bpffs-root")
            .arg(&self.agent.bpffs_root)
            .args(args)
            .arg("--status-file")
            .arg(&self.agent.status_file)
            .output()
            .expect("run veer");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "veer {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Json::parse(stdout.trim()).unwrap_or_else(|e| panic!("veer {args:?} JSON: {e}\n{stdout}"))
    }

    /// `veer maps -o json`'s rules: prefix → row.
    fn maps_rules(&self) -> BTreeMap<String, Json> {
        let v = self.cli(&["maps", "-o", "json"]);
        assert_eq!(
            v.get("rule_index_error"),
            &Json::Null,
            "veer maps could not use the rule index: {v:?}"
        );
        v.get("rules")
            .items()
            .iter()
            .map(|r| {
                let p = r.get("prefix").as_str().expect("prefix").to_string();
                (p, r.clone())
            })
            .collect()
    }

    /// TCP, UDP and one ping from the pod to `dst`; the source the server saw for TCP and UDP.
    fn traffic(&self, dst: IpAddr) -> (IpAddr, IpAddr) {
        let p = seed::probe(&self.topo, self.pod(), dst);
        let tcp = p.tcp.unwrap_or_else(|e| panic!("TCP to {dst}: {e}"));
        let udp = p.udp.unwrap_or_else(|e| panic!("UDP to {dst}: {e}"));
        assert!(p.ping, "ping {dst}: no reply");
        assert_eq!(p.icmp, vec![tcp], "echo requests to {dst} vs TCP source");
        (tcp, udp)
    }
}

fn packets(row: &Json) -> u64 {
    row.get("packets").as_u64().expect("packets")
}

#[test]
fn after_steering_traffic_veer_maps_shows_nonzero_counters_on_exactly_the_rules_that_carried_it() {
    if !require_root(
        "after_steering_traffic_veer_maps_shows_nonzero_counters_on_exactly_the_rules_that_carried_it",
    ) {
        return;
    }
    let env = Env::new(None);
    let entries = env.seed.entries();
    let before = env.maps_rules();
    let want_prefixes: BTreeSet<String> = entries.keys().map(ToString::to_string).collect();
    assert_eq!(
        before.keys().cloned().collect::<BTreeSet<_>>(),
        want_prefixes,
        "veer maps lists the seed's rules"
    );
    for (p, r) in &before {
        assert_eq!(packets(r), 0, "{p}: counted before any traffic: {r:?}");
        assert_eq!(r.get("in_index"), &Json::Bool(true), "{p}: {r:?}");
        assert_eq!(
            r.get("dev").as_str(),
            Some(entries[&p.parse::<IpNet>().unwrap()].as_str()),
            "{p}: {r:?}"
        );
    }

    // Steered traffic to two eth1 rules (a CIDR and a Service); native traffic to an eth0 rule,
    // which the datapath leaves alone (the counters count steered packets only).
    let pod = env.pod();
    let steered = [
        (IpAddr::from(STEERED4), "172.16.10.0/24"),
        (SVC_ETH1_4.into(), "10.86.205.109/32"),
    ];
    for (dst, _) in steered {
        let (tcp, udp) = env.traffic(dst);
        assert_eq!((tcp, udp), (pod.ovn4.into(), pod.ovn4.into()), "{dst}");
    }
    let (tcp, _) = env.traffic(UNSTEERED4.into());
    assert_eq!(tcp, IpAddr::from(pod.v4), "192.168.2.7 stays on eth0");

    // Counters are per rule (one Route entry): a Service entry's IPv4 and IPv6 cluster IPs are
    // one rule and share its counters, so rows are judged by rule id.
    let after = env.maps_rules();
    let rule_id = |p: &str| after[p].get("rule_id").as_u64().expect("rule_id");
    let carried: BTreeSet<u64> = steered.iter().map(|(_, p)| rule_id(p)).collect();
    let mut bad = Vec::new();
    for (p, r) in &after {
        let (n, bytes) = (packets(r), r.get("bytes").as_u64().unwrap_or(0));
        let id = rule_id(p);
        if carried.contains(&id) {
            // TCP (handshake, data, close), one UDP datagram, one echo request.
            if n < 3 || bytes < n * 42 {
                bad.push(format!(
                    "{p} (rule {id}): {n} packets, {bytes} bytes; want >= 3 packets"
                ));
            }
        } else if n != 0 || bytes != 0 {
            bad.push(format!(
                "{p} (rule {id}): {n} packets, {bytes} bytes; want 0 (no steered traffic)"
            ));
        }
    }
    let carried_prefixes: Vec<&String> = after
        .keys()
        .filter(|p| carried.contains(&rule_id(p)))
        .collect();
    assert_eq!(
        carried_prefixes,
        ["10.86.205.109/32", "172.16.10.0/24", "fd00:86::cd:6d/128"],
        "rows of the rules that carried the traffic (the Service's two addresses are one rule)"
    );
    assert!(bad.is_empty(), "veer maps counters:\n{}", bad.join("\n"));
}

#[test]
fn veer_trace_agrees_with_the_path_the_traffic_took_for_every_demo_destination() {
    if !require_root("veer_trace_agrees_with_the_path_the_traffic_took_for_every_demo_destination")
    {
        return;
    }
    let env = Env::new(None);
    let pod = env.pod();
    let netns = pod.path();
    let netns = netns.to_str().expect("netns path");
    let mut bad = Vec::new();
    for d in env.seed.destinations() {
        let (label, dst, prefix) = (d.label, d.addr, d.rule);
        let (tcp, udp) = env.traffic(dst);
        for (proto, seen) in [("tcp", tcp), ("udp", udp), ("icmp", tcp)] {
            let t = env.cli(&[
                "trace",
                "--pod",
                netns,
                "--dst",
                &dst.to_string(),
                "--proto",
                proto,
                "-o",
                "json",
            ]);
            let out = t.get("out_interface").get("name").as_str();
            let src = t
                .get("source_address")
                .as_str()
                .and_then(|s| s.parse::<IpAddr>().ok());
            let matched = t.get("matched").get("prefix").as_str();
            let real = pod.iface_of(seen);
            if out != real || src != Some(seen) || matched != Some(prefix) {
                bad.push(format!(
                    "[{label}] {proto} to {dst}: server saw {seen} (by {real:?}); trace says \
                     out {out:?}, source {src:?}, rule {matched:?} (want {prefix}), verdict {:?}, \
                     reason {:?}",
                    t.get("verdict"),
                    t.get("reason")
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} disagreements:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// `GET <path>` over HTTP/1.0; (status line, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((head.lines().next().unwrap_or("").into(), body.into()))
}

/// `veer_rule_packets_total` samples by `rule_id` label.
fn rule_packets_metric(body: &str) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("veer_rule_packets_total{") else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").expect("sample value");
        let id = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("rule_id=\""))
            .and_then(|v| v.trim_end_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("rule_id label in {line}"));
        let v: f64 = value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("value in {line}"));
        assert!(
            out.insert(id, v as u64).is_none(),
            "duplicate series {line}"
        );
    }
    out
}

/// `veer maps` rows by rule id: packets (one value per id).
fn by_rule_id(rules: &BTreeMap<String, Json>) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for (p, r) in rules {
        let id = u32::try_from(r.get("rule_id").as_u64().expect("rule_id")).unwrap();
        if id == 0 {
            continue;
        }
        let n = packets(r);
        if let Some(old) = out.insert(id, n) {
            assert_eq!(old, n, "rule id {id} ({p}) listed with two counts");
        }
    }
    out
}

#[test]
fn scraping_metrics_yields_the_same_per_rule_counters() {
    if !require_root("scraping_metrics_yields_the_same_per_rule_counters") {
        return;
    }
    let addr = free_local_addr();
    let env = Env::new(Some(addr));
    for d in env.seed.destinations() {
        env.traffic(d.addr);
    }
    // The endpoint comes up with the agent; wait for it.
    let deadline = Instant::now() + agent::AGENT_TIMEOUT;
    while http_get(addr, "/healthz").is_err() {
        assert!(
            Instant::now() < deadline,
            "no metrics endpoint at {addr}\nagent log:\n{}",
            env.agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let maps1 = by_rule_id(&env.maps_rules());
    let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
    let maps2 = by_rule_id(&env.maps_rules());
    assert!(status.contains(" 200 "), "GET /metrics: {status}\n{body}");
    let scraped = rule_packets_metric(&body);

    assert!(
        maps1.values().any(|n| *n > 0),
        "steered traffic was counted: {maps1:?}"
    );
    assert_eq!(
        scraped.keys().collect::<Vec<_>>(),
        maps1.keys().collect::<Vec<_>>(),
        "the same rule ids in /metrics and veer maps\n{body}"
    );
    let bad: Vec<String> = maps1
        .iter()
        .filter_map(|(id, m1)| {
            let s = scraped.get(id).copied().unwrap_or(0);
            let m2 = maps2.get(id).copied().unwrap_or(0);
            (!(*m1 <= s && s <= m2)).then(|| {
                format!("rule {id}: veer maps {m1} then {m2}, /metrics {s} (not in between)")
            })
        })
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// `veer debug on|off` with the agent's status file; its stdout.
fn debug_cli(env: &Env, args: &[&str]) -> String {
    let out = Command::new(veer_bin())
        .arg("debug")
        .args(args)
        .arg("--status-file")
        .arg(&env.agent.status_file)
        .output()
        .expect("run veer debug");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "veer debug {args:?} failed: {}\nstdout: {stdout}\nstderr: {}\nagent log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        env.agent.log_text()
    );
    stdout
}

/// Debug event lines (target `veer_ebpf`) about new steered flows in the agent's log.
fn new_flow_events(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("veer_ebpf") && l.contains("new steered flow"))
        .count()
}

/// Whether `veer maps` shows `CFG_F_DEBUG` set; the `veer_debug_events_enabled` metric must
/// say the same.
fn config_debug(env: &Env, metrics: SocketAddr) -> bool {
    let v = env.cli(&["maps", "-o", "json"]);
    let on = match v.get("config").get("debug") {
        Json::Bool(b) => *b,
        other => panic!("veer maps config.debug: {other:?}"),
    };
    let (_, body) = http_get(metrics, "/metrics").expect("scrape /metrics");
    let gauge = body
        .lines()
        .find_map(|l| l.strip_prefix("veer_debug_events_enabled "))
        .unwrap_or_else(|| panic!("no veer_debug_events_enabled in:\n{body}"));
    assert_eq!(
        gauge.trim(),
        if on { "1" } else { "0" },
        "metric vs veer maps"
    );
    on
}

#[test]
fn veer_debug_switches_ebpf_events_on_and_off_at_runtime_without_restart_or_detaching() {
    if !require_root(
        "veer_debug_switches_ebpf_events_on_and_off_at_runtime_without_restart_or_detaching",
    ) {
        return;
    }
    let metrics = free_local_addr();
    let env = Env::new(Some(metrics));
    let pod = env.pod();
    let pid = env.agent.pid().expect("agent running");
    let links0 = env.agent.pinned_links();
    assert!(!links0.is_empty(), "no pinned links");
    // An established steered connection and an unsteered one run across both switches.
    let streams: Vec<_> = [
        (IpAddr::from(STEERED4), "eth1"),
        (UNSTEERED4.into(), "eth0"),
    ]
    .into_iter()
    .map(|(dst, iface)| {
        let s = pod.echo(dst).expect("connect to the echo server");
        assert_eq!(pod.iface_of(s.seen), Some(iface), "stream to {dst}");
        (format!("stream to {dst} (by {iface})"), s)
    })
    .collect();
    let exchanger = veer_tests::topology::Exchanger::start(streams);

    // An operator's timeout, written as docs/operations.md says (established TCP 1 h, every
    // other field zero): switching debug events on and off must keep it (read-modify-write).
    bpftool_config_recipe(&env, 3600);
    assert_eq!(cli_config(&env), (false, [60, 3600, 10, 60]));

    // Off by default: the production programs emit nothing.
    env.traffic(STEERED4.into());
    assert_eq!(
        new_flow_events(&env.agent.log_text()),
        0,
        "events while off"
    );
    assert!(!config_debug(&env, metrics), "CFG_F_DEBUG set while off");

    let out = debug_cli(&env, &["on", "--for", "10m"]);
    assert!(
        out.contains("In force:  on"),
        "veer debug on output:\n{out}"
    );
    let links1 = env.agent.pinned_links();
    assert_eq!(
        links1.keys().collect::<Vec<_>>(),
        links0.keys().collect::<Vec<_>>(),
        "the same links (nothing detached or re-created)"
    );
    assert!(
        links1.iter().all(|(l, p)| links0[l] != *p),
        "every link runs a new program: before {links0:?}, after {links1:?}"
    );
    assert!(config_debug(&env, metrics), "CFG_F_DEBUG not set while on");
    assert_eq!(
        cli_config(&env),
        (true, [60, 3600, 10, 60]),
        "the operator's timeouts are kept by `veer debug on`"
    );
    let status = env.cli(&["status", "-o", "json"]);
    assert_eq!(
        status.get("debug_events").get("on"),
        &Json::Bool(true),
        "{status:?}"
    );
    assert!(
        status
            .get("debug_events")
            .get("until_unix")
            .as_u64()
            .is_some()
    );

    // New steered flows are now reported, by the agent that never restarted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        env.traffic(STEERED4.into());
        if new_flow_events(&env.agent.log_text()) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no debug event for a new steered flow while on; agent log:\n{}",
            env.agent.log_text()
        );
    }

    let out = debug_cli(&env, &["off"]);
    assert!(
        out.contains("In force:  off"),
        "veer debug off output:\n{out}"
    );
    let links2 = env.agent.pinned_links();
    assert_eq!(
        links2.keys().collect::<Vec<_>>(),
        links0.keys().collect::<Vec<_>>()
    );
    assert!(
        links2.iter().all(|(l, p)| links1[l] != *p),
        "the default programs are back: {links1:?} → {links2:?}"
    );
    assert!(
        !config_debug(&env, metrics),
        "CFG_F_DEBUG still set after off"
    );
    assert_eq!(
        cli_config(&env),
        (false, [60, 3600, 10, 60]),
        "the operator's timeouts are kept by `veer debug off`"
    );
    // Give the reader a moment to pass on anything still in the ring, then nothing more comes.
    std::thread::sleep(Duration::from_millis(500));
    let events = new_flow_events(&env.agent.log_text());
    env.traffic(STEERED4.into());
    env.traffic(SVC_ETH1_4.into());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        new_flow_events(&env.agent.log_text()),
        events,
        "events after off"
    );

    let (counts, errors) = exchanger.finish();
    assert!(
        errors.is_empty(),
        "established connections broken: {errors:?}"
    );
    assert!(counts.iter().all(|c| *c > 10), "round trips: {counts:?}");
    assert_eq!(env.agent.pid(), Some(pid), "the agent restarted");
    let v = env.cli(&["debug", "status", "-o", "json"]);
    assert_eq!(v.get("requested_on"), &Json::Bool(false), "{v:?}");
}

/// Writes `VEER_CONFIG_V1` exactly as docs/operations.md ("`VEER_CONFIG_V1`") does: `bpftool map
/// update pinned $M/VEER_CONFIG_V1 key 0 0 0 0 value hex …`, little-endian u32s, `flags` first,
/// established TCP set to `tcp_est_timeout_s`, every other field zero.
fn bpftool_config_recipe(env: &Env, tcp_est_timeout_s: u32) {
    let pin = env
        .agent
        .bpffs_root
        .join(paths::MAPS_DIR)
        .join(names::CONFIG);
    let mut value = [0u8; 32];
    value[8..12].copy_from_slice(&tcp_est_timeout_s.to_le_bytes());
    let hex: Vec<String> = value.iter().map(|b| format!("{b:02x}")).collect();
    let out = veer_tests::programs::command("bpftool")
        .args(["map", "update", "pinned"])
        .arg(&pin)
        .args(["key", "0", "0", "0", "0", "value", "hex"])
        .args(&hex)
        .output()
        .expect("run bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "bpftool map update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `veer maps -o json`'s configuration: (debug, syn, established, close, other).
fn cli_config(env: &Env) -> (bool, [u64; 4]) {
    let v = env.cli(&["maps", "-o", "json"]);
    let c = v.get("config");
    let n = |k: &str| {
        c.get(k)
            .as_u64()
            .unwrap_or_else(|| panic!("config.{k}: {c:?}"))
    };
    let debug = match c.get("debug") {
        Json::Bool(b) => *b,
        other => panic!("config.debug: {other:?}"),
    };
    (
        debug,
        [
            n("tcp_syn_timeout_s"),
            n("tcp_est_timeout_s"),
            n("tcp_close_timeout_s"),
            n("other_timeout_s"),
        ],
    )
}

/// The pod's outgoing steered flow entry from local port `sport` with protocol `proto`.
fn steered_out(env: &Env, proto: u8, sport: u16) -> Option<(FlowKey, FlowValue)> {
    env.agent
        .maps()
        .flows
        .iter()
        .filter_map(Result::ok)
        .find(|(k, v)| {
            k.dir == DIR_OUT
                && v.kind == FLOW_STEER
                && k.proto == proto
                && u16::from_be(k.sport) == sport
        })
}

/// docs/operations.md's bpftool recipe for `VEER_CONFIG_V1` (one timeout set, every other field
/// zero), end to end: `veer maps` shows the set field and the defaults of the zero ones, and
/// the datapath applies the same rule. An established steered TCP connection idle past the
/// new 2 s timeout (far below the 6 h default) is expired at its next segment (counted
/// `flow_expired`, its entry removed); a UDP flow idle as long keeps its pinned entry (its
/// field is zero: the 60 s default). A datapath that ignored the entry unless
/// `other_timeout_s` was set keeps the TCP flow pinned, and fails here.
#[test]
fn documented_config_recipe_sets_one_timeout_and_the_datapath_expires_idle_flows_by_it() {
    if !require_root(
        "documented_config_recipe_sets_one_timeout_and_the_datapath_expires_idle_flows_by_it",
    ) {
        return;
    }
    let env = Env::new(None);
    let pod = env.pod();
    bpftool_config_recipe(&env, 2);
    assert_eq!(
        cli_config(&env),
        (false, [60, 2, 10, 60]),
        "veer maps config"
    );

    // A steered TCP connection (established) and a steered UDP flow, both from fixed ports.
    let mut tcp = pod
        .echo(STEERED4.into())
        .expect("connect to the echo server");
    assert_eq!(
        pod.iface_of(tcp.seen),
        Some("eth1"),
        "the stream is steered"
    );
    tcp.roundtrip(b"before").expect("echo before the idle time");
    let tcp_port = tcp.sock.local_addr().expect("local address").port();
    let udp = pod.in_ns(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind"));
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    udp.connect((STEERED4, PORT)).expect("connect UDP");
    let udp_port = udp.local_addr().unwrap().port();
    let udp_seen = |what: &str| -> IpAddr {
        udp.send(b"veer").expect("send UDP");
        let mut buf = [0u8; 256];
        let n = udp
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("UDP reply {what}: {e}"));
        String::from_utf8_lossy(&buf[..n])
            .trim()
            .parse()
            .expect("server reply")
    };
    assert_eq!(pod.iface_of(udp_seen("before")), Some("eth1"));
    let (_, tcp_flow) = steered_out(&env, 6, tcp_port).expect("steered TCP flow entry");
    assert_eq!(tcp_flow.state, ST_EST);
    let (_, udp_flow) = steered_out(&env, 17, udp_port).expect("steered UDP flow entry");

    // Idle past 2 s plus the datapath's 1 s last-seen granularity.
    std::thread::sleep(Duration::from_millis(3500));
    let flows = env.cli(&["flows", "-o", "json"]);
    let row = flows
        .items()
        .iter()
        .find(|r| {
            r.get("direction").as_str() == Some("out")
                && r.get("sport").as_u64() == Some(u64::from(tcp_port))
        })
        .unwrap_or_else(|| panic!("veer flows has no row for :{tcp_port}: {flows:?}"));
    assert_eq!(row.get("expired"), &Json::Bool(true), "veer flows: {row:?}");

    let expired_before =
        env.agent.maps().stats_totals().expect("stats")[stats::FLOW_EXPIRED as usize];
    // The next segment finds the entry idle past its timeout: the flow is decided again, and
    // a segment that is not a SYN is never re-steered (the connection is lost, as any
    // connection idle past its timeout is).
    tcp.sock
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let _ = tcp.roundtrip(b"after");
    let expired_after =
        env.agent.maps().stats_totals().expect("stats")[stats::FLOW_EXPIRED as usize];
    assert!(
        expired_after > expired_before,
        "the idle established flow was not expired by the 2 s timeout ({expired_before} → \
         {expired_after}); counters {:?}",
        seed::nonzero_counters(&env.agent.maps())
    );
    assert!(
        steered_out(&env, 6, tcp_port).is_none(),
        "the expired TCP flow's entry is gone"
    );

    // The UDP flow's timeout field is zero: the default (60 s) applies, the entry stays.
    assert_eq!(
        pod.iface_of(udp_seen("after")),
        Some("eth1"),
        "UDP still steered"
    );
    let (_, udp_now) = steered_out(&env, 17, udp_port).expect("UDP flow entry kept");
    assert_eq!(
        udp_now.created_ns, udp_flow.created_ns,
        "the UDP flow is the same entry (not expired and re-created)"
    );
    assert_eq!(cli_config(&env), (false, [60, 2, 10, 60]));
}

/// `manifests/monitoring/<file>`.
fn monitoring_file(file: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/monitoring")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The OpenMetrics text of a scrape: family types (`# TYPE`) and, per sample name, the label
/// sets of its samples.
type Scrape = (
    BTreeMap<String, String>,
    BTreeMap<String, Vec<BTreeMap<String, String>>>,
);

fn parse_scrape(body: &str) -> Scrape {
    let mut types = BTreeMap::new();
    let mut samples: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in body.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, ty) = t.split_once(' ').expect("# TYPE name type");
            types.insert(name.to_string(), ty.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, _value) = line.rsplit_once(' ').expect("sample value");
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").expect("label=\"value\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n, labels)
            }
        };
        samples.entry(name.to_string()).or_default().push(labels);
    }
    (types, samples)
}

/// Labels Prometheus puts on every series of a target: `node` by the PodMonitor's relabeling
/// (checked in agent/tests/manifests.rs), the rest by the Prometheus Operator and Prometheus.
const TARGET_LABELS: &[&str] = &[
    "node",
    "namespace",
    "pod",
    "container",
    "endpoint",
    "instance",
    "job",
];
/// Series Prometheus itself records for a target (not served by the agent).
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// Problems of one PromQL expression against a scrape: metric names not served (or served with
/// another type), label names and required label values absent from the served series.
fn expr_problems(origin: &str, expr: &str, scrape: &Scrape) -> Vec<String> {
    use veer_tests::promql;
    let (types, samples) = scrape;
    let r = match promql::refs(expr) {
        Ok(r) => r,
        Err(e) => return vec![format!("{origin}: {e}")],
    };
    let mut bad = Vec::new();
    if r.selectors.is_empty() {
        bad.push(format!("{origin}: no metric in {expr:?}"));
    }
    let mut labels_here: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    for sel in &r.selectors {
        if PROMETHEUS_SERIES.contains(&sel.metric.as_str()) {
            continue;
        }
        let (family, want) = promql::family_of(&sel.metric);
        let served = samples.get(&sel.metric).map(Vec::as_slice).unwrap_or(&[]);
        // A gauge may be served as it is; counters and histograms by their family.
        let ty = types
            .get(&family)
            .or_else(|| types.get(&sel.metric))
            .map(String::as_str);
        if served.is_empty() {
            bad.push(format!(
                "{origin}: metric {} is not served (no such sample in /metrics)",
                sel.metric
            ));
            continue;
        }
        if ty != Some(want) && !(want == "gauge" && ty.is_some()) {
            bad.push(format!(
                "{origin}: {} is a {ty:?} family, used as a {want}",
                sel.metric
            ));
        }
        let on_metric: BTreeSet<&str> = served
            .iter()
            .flat_map(|l| l.keys().map(String::as_str))
            .collect();
        labels_here.extend(on_metric.iter().copied());
        for m in &sel.matchers {
            if TARGET_LABELS.contains(&m.label.as_str()) {
                continue;
            }
            if !on_metric.contains(m.label.as_str()) {
                bad.push(format!(
                    "{origin}: {} has no label {:?} (labels: {on_metric:?})",
                    sel.metric, m.label
                ));
                continue;
            }
            for v in m.required_values() {
                if !served.iter().any(|l| l.get(&m.label) == Some(&v)) {
                    bad.push(format!(
                        "{origin}: no {}{{{}={v:?}}} is served",
                        sel.metric, m.label
                    ));
                }
            }
        }
    }
    for g in &r.grouping {
        if !labels_here.contains(g.as_str()) {
            bad.push(format!(
                "{origin}: grouping label {g:?} is on none of its metrics"
            ));
        }
    }
    bad
}

#[test]
fn every_metric_name_the_dashboard_and_the_alerts_use_is_served() {
    if !require_root("every_metric_name_the_dashboard_and_the_alerts_use_is_served") {
        return;
    }
    use veer_tests::promql;
    let rule: serde_json::Value = serde_saphyr::from_str(&monitoring_file("prometheusrule.yaml"))
        .expect("prometheusrule.yaml parses");
    let dashboard: serde_json::Value =
        serde_json::from_str(&monitoring_file("veer-dashboard.json")).expect("dashboard JSON");
    let exprs: Vec<promql::Expr> = promql::rule_exprs(&rule)
        .into_iter()
        .chain(promql::dashboard_exprs(&dashboard))
        .collect();
    let variables = promql::dashboard_variable_queries(&dashboard);
    assert!(
        exprs.len() >= 20 && !variables.is_empty(),
        "expressions found: {exprs:?}, variables {variables:?}"
    );

    let addr = free_local_addr();
    let env = Env::new(Some(addr));
    // Steered and unsteered traffic, so that per-rule counters and flows exist.
    for d in env.seed.destinations() {
        env.traffic(d.addr);
    }
    let deadline = Instant::now() + agent::AGENT_TIMEOUT;
    while http_get(addr, "/healthz").is_err() {
        assert!(
            Instant::now() < deadline,
            "no metrics endpoint at {addr}\nagent log:\n{}",
            env.agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
    assert!(status.contains(" 200 "), "GET /metrics: {status}\n{body}");
    assert!(
        rule_packets_metric(&body).values().any(|n| *n > 0),
        "the scrape has steered packets on some rule:\n{body}"
    );
    let scrape = parse_scrape(&body);

    let mut bad: Vec<String> = exprs
        .iter()
        .flat_map(|e| expr_problems(&e.origin, &e.expr, &scrape))
        .collect();
    for v in &variables {
        let Some((sel, label)) = promql::grafana_label_values(&v.expr) else {
            bad.push(format!("{}: not label_values(…): {:?}", v.origin, v.expr));
            continue;
        };
        bad.extend(expr_problems(
            &v.origin,
            &format!("sum by ({label}) ({sel})"),
            &scrape,
        ));
    }
    assert!(
        bad.is_empty(),
        "the monitoring manifests use what the agent does not serve:\n{}\n\n/metrics:\n{body}",
        bad.join("\n")
    );
}
