//! Parts B and C: real traffic through the dual-CNI [`Topology`] with the real agent.
//!
//! Two pods: pod 0 is managed by the agent with one rule (`172.16.10.0/24 → eth1`); pod 1 is
//! not managed and has the original design's route (`ip route add 172.16.10.0/24 via <OVN gw>
//! dev eth1`). Four paths, measured in interleaved rounds:
//!
//! | path | pod | destination | how it leaves |
//! |---|---|---|---|
//! | `plain` | 1 | 192.168.2.7 | eth0, no program |
//! | `unsteered` | 0 | 192.168.2.7 | eth0, veer attached, no rule matches |
//! | `steered` | 0 | 172.16.10.7 | veer redirects eth0 → eth1 (source rewritten) |
//! | `routed` | 1 | 172.16.10.7 | eth1 by the pod's route |
//!
//! `plain`/`unsteered` cross the Calico node, `steered`/`routed` the OVN gateway (bridge, port
//! security): only those pairs are compared.

use std::{
    fmt::Write as _,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::Path,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use veer_agent::netns::in_netns;

use super::{Aim, J, Section, Spread, ksoftirqd_ns, quantile, thread_cpu_ns};
use crate::{
    agent::{self, Agent},
    topology::{OVN_GW4, STEERED4, Topology, TopologyOpts, UNSTEERED4, ip_in, netns_path},
};

const SINK_PORT: u16 = 7100;
const RR_PORT: u16 = 7101;
const IPERF_PORT: u16 = 5201;

/// Sizes of the runs.
pub struct TrafficOpts {
    pub rounds: usize,
    /// Offered load of part B (packets per second).
    pub pps: u64,
    /// Length of one part B run.
    pub run: Duration,
    /// Length of one iperf3 run (whole seconds).
    pub tcp_secs: u32,
    pub rr_per_round: usize,
}

impl TrafficOpts {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 2,
                pps: 10_000,
                run: Duration::from_millis(200),
                tcp_secs: 1,
                rr_per_round: 200,
            }
        } else {
            Self {
                rounds: 7,
                pps: 20_000,
                run: Duration::from_secs(1),
                tcp_secs: 3,
                rr_per_round: 2_000,
            }
        }
    }
}

/// The topology with the agent on pod 0 and the route on pod 1. Field order is drop order.
struct Env {
    _agent: Agent,
    topo: Topology,
}

impl Env {
    fn new() -> Self {
        let topo = Topology::build(TopologyOpts {
            pods: 2,
            servers: false,
            ..TopologyOpts::default()
        });
        let mut agent = Agent::new();
        // The agent manages only the interfaces its rules name: a rule for eth0 (on a
        // documentation prefix nothing sends to) makes it manage eth0, where steering starts.
        agent.write_routes(&agent::shorthand(
            &[("172.16.10.0/24", "eth1"), ("192.0.2.0/24", "eth0")],
            &[],
        ));
        agent.add_topology_pod(&topo.pods[0]);
        agent.start();
        agent.wait_pod_managed(&topo.pods[0].path(), &["eth0", "eth1"]);
        let deadline = Instant::now() + agent::AGENT_TIMEOUT;
        while agent::rules(&agent.maps()).is_empty() {
            assert!(Instant::now() < deadline, "the agent wrote no rule");
            std::thread::sleep(Duration::from_millis(10));
        }
        ip_in(
            &topo.pods[1].ns,
            &[
                "route",
                "add",
                "172.16.10.0/24",
                "via",
                &OVN_GW4.to_string(),
                "dev",
                "eth1",
            ],
        );
        Self {
            _agent: agent,
            topo,
        }
    }

    /// (path name, pod index, destination).
    fn paths() -> [(&'static str, usize, IpAddr); 4] {
        [
            ("plain", 1, UNSTEERED4.into()),
            ("unsteered", 0, UNSTEERED4.into()),
            ("steered", 0, STEERED4.into()),
            ("routed", 1, STEERED4.into()),
        ]
    }
}

/// A UDP socket in `srv` that is never read (small buffer): datagrams to it go the whole way and
/// are dropped at the socket, the same for every path.
fn sink(srv: &Path) -> UdpSocket {
    in_netns(srv, || -> io::Result<UdpSocket> {
        let u = UdpSocket::bind(("0.0.0.0", SINK_PORT))?;
        let one: libc::c_int = 1;
        // SAFETY: valid option value for the size given.
        unsafe {
            libc::setsockopt(
                u.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &one as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(u)
    })
    .expect("enter srv")
    .expect("sink socket")
}

/// Sends 64-byte UDP datagrams to `dst` at `pps` for `dur` from a thread in `pod`:
/// (packets sent, CPU ns of the sending thread, ns of ksoftirqd).
fn blast(pod: &Path, dst: SocketAddr, pps: u64, dur: Duration) -> (u64, u64, u64) {
    in_netns(pod, || {
        let u = UdpSocket::bind(("0.0.0.0", 0)).expect("bind");
        u.connect(dst).expect("connect");
        let payload = [0x5au8; 64];
        // The first packet of a steered flow takes the slow path (flow creation): not measured.
        for _ in 0..10 {
            let _ = u.send(&payload);
        }
        std::thread::sleep(Duration::from_millis(5));
        let per_tick = (pps / 1000).max(1);
        let ticks = (dur.as_millis() as u64).max(1);
        let (c0, k0) = (thread_cpu_ns(), ksoftirqd_ns());
        let start = Instant::now();
        let mut sent = 0;
        for t in 0..ticks {
            for _ in 0..per_tick {
                if u.send(&payload).is_ok() {
                    sent += 1;
                }
            }
            let next = start + Duration::from_millis(t + 1);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        let (c1, k1) = (thread_cpu_ns(), ksoftirqd_ns());
        (sent, c1 - c0, k1.saturating_sub(k0))
    })
    .expect("enter pod")
}

/// A UDP echo on `STEERED4:RR_PORT` in `srv` (blocking, answers at once). A datagram `?` is
/// answered with the address it came from.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(srv: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (path, stop2) = (srv.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _ = in_netns(&path, move || {
                let u = UdpSocket::bind(SocketAddr::new(STEERED4.into(), RR_PORT)).expect("bind");
                u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let _ = tx.send(());
                let mut buf = [0u8; 2048];
                while !stop2.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = u.recv_from(&mut buf) {
                        if &buf[..n] == b"?" {
                            let _ = u.send_to(peer.ip().to_string().as_bytes(), peer);
                        } else {
                            let _ = u.send_to(&buf[..n], peer);
                        }
                    }
                }
            });
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("echo server started");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The source address the echo saw for a datagram from `pod`.
fn seen_from(pod: &Path) -> IpAddr {
    in_netns(pod, || {
        let u = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        u.connect((STEERED4, RR_PORT)).unwrap();
        u.send(b"?").unwrap();
        let mut b = [0u8; 64];
        let n = u.recv(&mut b).expect("echo answers");
        String::from_utf8_lossy(&b[..n]).parse().unwrap()
    })
    .expect("enter pod")
}

/// `n` request/response exchanges from `pod`: (p50, p99) in µs.
fn rr(pod: &Path, n: usize) -> (f64, f64) {
    in_netns(pod, || {
        let u = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        u.connect((STEERED4, RR_PORT)).unwrap();
        let mut b = [0u8; 64];
        for _ in 0..20 {
            u.send(&[1; 32]).unwrap();
            u.recv(&mut b).expect("echo answers");
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            u.send(&[1; 32]).unwrap();
            u.recv(&mut b).expect("echo answers");
            v.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
        (quantile(&mut v, 0.5), quantile(&mut v, 0.99))
    })
    .expect("enter pod")
}

/// `iperf3 -s` in a namespace, killed on drop.
struct Iperf(Child);

impl Iperf {
    fn start(ns: &str) -> Self {
        let c = crate::programs::netns_exec(ns, "iperf3")
            .args(["-s", "-B"])
            .arg(STEERED4.to_string())
            .args(["-p", &IPERF_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start iperf3 -s");
        Self(c)
    }
}

impl Drop for Iperf {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One iperf3 client run from `ns`: received bits per second.
fn iperf(ns: &str, secs: u32) -> f64 {
    for _ in 0..50 {
        let out = crate::programs::netns_exec(ns, "iperf3")
            .args(["-J", "-c"])
            .arg(STEERED4.to_string())
            .args(["-p", &IPERF_PORT.to_string(), "-t", &secs.to_string()])
            .output()
            .expect("iperf3");
        let j = agent::Json::parse(String::from_utf8_lossy(&out.stdout).trim());
        if let Ok(j) = j
            && let agent::Json::Num(bps) = j.get("end").get("sum_received").get("bits_per_second")
        {
            return *bps;
        }
        // The server is not listening yet (or is busy finishing the last test).
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("iperf3 from {ns} never completed a test");
}

/// Runs parts B and C.
pub fn run(o: &TrafficOpts) -> Vec<Section> {
    let env = Env::new();
    let srv = netns_path(&env.topo.srv);
    let _sink = sink(&srv);
    let echo = Echo::start(&srv);
    // The paths are what they claim to be.
    let (p0, p1) = (&env.topo.pods[0], &env.topo.pods[1]);
    assert_eq!(
        seen_from(&p0.path()),
        IpAddr::from(p0.ovn4),
        "pod 0 is steered to eth1"
    );
    assert_eq!(
        seen_from(&p1.path()),
        IpAddr::from(p1.ovn4),
        "pod 1 is routed by eth1"
    );

    // B: CPU per packet.
    let paths = Env::paths();
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut deferred = 0u64;
    let mut total = 0u64;
    let mut short = 0u64;
    for _ in 0..o.rounds {
        for (i, (_, pod, dst)) in paths.iter().enumerate() {
            let pod = env.topo.pods[*pod].path();
            let (n, c, k) = blast(&pod, SocketAddr::new(*dst, SINK_PORT), o.pps, o.run);
            let want = o.pps * o.run.as_millis() as u64 / 1000;
            short += want.saturating_sub(n);
            deferred += k;
            total += c + k;
            cpu[i].push((c + k) as f64 / n.max(1) as f64);
        }
    }
    let sb: Vec<Spread> = cpu.iter().map(|v| Spread::of(v)).collect();
    let ratio = |a: usize, b: usize| -> Spread {
        // Per round ratios (the rounds are interleaved, so each pair ran side by side).
        let r: Vec<f64> = cpu[a].iter().zip(&cpu[b]).map(|(x, y)| x / y).collect();
        Spread::of(&r)
    };
    let (r_unsteered, r_steered) = (ratio(1, 0), ratio(2, 3));
    let mut md = String::new();
    writeln!(md, "## B. CPU per packet at a fixed offered load\n").unwrap();
    writeln!(
        md,
        "UDP, 64-byte payload, {} packets/s for {:.1} s per run from a pod, into a socket that is \
         never read (dropped at its full buffer, the same for every path); {} interleaved rounds \
         (plain, unsteered, steered, routed, plain, …). CPU = the sending thread's CPU time \
         (`CLOCK_THREAD_CPUTIME_ID`; {}) plus all `ksoftirqd` time during the run \
         (machine-wide: {:.1}% of the total). `perf stat` hardware counters are not \
         available on this machine (`instructions` is `<not supported>`), so this is time, not \
         instructions. The whole path crosses three namespaces (pod, node or gateway, server): \
         veer's share is the difference between paired paths.\n",
        o.pps,
        o.run.as_secs_f64(),
        o.rounds,
        match super::irq_time_accounting() {
            Some(false) =>
                "the kernel has no `CONFIG_IRQ_TIME_ACCOUNTING`, so the softirq \
                            work it runs inline after a transmit — veth receive, forwarding \
                            through the node or gateway, delivery — is charged to the thread",
            Some(true) =>
                "the kernel accounts softirq time separately, so the thread's time \
                           misses the inline softirq work: read the ratios with care",
            None =>
                "whether inline softirq work is charged to the thread is unknown here \
                     (no kernel config found)",
        },
        100.0 * deferred as f64 / total.max(1) as f64
    )
    .unwrap();
    writeln!(md, "| path | CPU ns/packet, median (min–max) |").unwrap();
    writeln!(md, "|---|---:|").unwrap();
    for (i, (name, _, _)) in paths.iter().enumerate() {
        writeln!(md, "| {name} | {} |", sb[i].show(0)).unwrap();
    }
    writeln!(
        md,
        "\n- unsteered / plain (cost of veer on a packet it passes): **{:.3}×** (per-round \
         ratios {:.3}–{:.3})\n- steered / routed (veer's redirect against the original \
         design's route): **{:.3}×** ({:.3}–{:.3}); aim ≤ 1.05×\n",
        r_unsteered.median,
        r_unsteered.min,
        r_unsteered.max,
        r_steered.median,
        r_steered.min,
        r_steered.max
    )
    .unwrap();
    if short > 0 {
        writeln!(md, "({short} datagrams could not be sent: send errors.)\n").unwrap();
    }
    let b_json = J::obj([
        ("pps", J::N(o.pps as f64)),
        ("run_s", J::N(o.run.as_secs_f64())),
        ("rounds", J::N(o.rounds as f64)),
        ("ksoftirqd_ns_total", J::N(deferred as f64)),
        (
            "cpu_ns_per_packet",
            J::O(
                paths
                    .iter()
                    .zip(&sb)
                    .map(|((n, _, _), s)| (n.to_string(), s.json()))
                    .collect(),
            ),
        ),
        ("ratio_unsteered_over_plain", r_unsteered.json()),
        ("ratio_steered_over_routed", r_steered.json()),
    ]);
    let b = Section {
        key: "cpu_per_packet",
        md,
        json: b_json,
        plots: Vec::new(),
        aims: vec![Aim::new(
            "CPU/packet steered ≤ 1.05× routed",
            format!("{:.3}×", r_steered.median),
            r_steered.median <= 1.05,
            "not profiled (no hardware counters); structurally the steered packet is routed on eth0, runs veer's egress program there (flow lookup, rewrite, bpf_redirect_neigh with a neighbour lookup on eth1) and its path is longer than the routed packet's single route lookup",
        )],
    };

    // C: throughput and latency, steered (pod 0) vs routed (pod 1).
    let iperf_srv = Iperf::start(&env.topo.srv);
    let mut tput: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut p50: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut p99: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let tcp_rounds = if o.rounds > 2 { 3 } else { 1 };
    for r in 0..o.rounds {
        for (k, pod) in [p0, p1].into_iter().enumerate() {
            if r < tcp_rounds {
                tput[k].push(iperf(&pod.ns, o.tcp_secs) / 1e9);
            }
            let (a, b) = rr(&pod.path(), o.rr_per_round);
            p50[k].push(a);
            p99[k].push(b);
        }
    }
    drop(iperf_srv);
    drop(echo);
    let ratio2 = |v: &[Vec<f64>; 2]| -> Spread {
        let r: Vec<f64> = v[0].iter().zip(&v[1]).map(|(x, y)| x / y).collect();
        Spread::of(&r)
    };
    let (t, l50, l99) = (ratio2(&tput), ratio2(&p50), ratio2(&p99));
    let s = |v: &Vec<f64>| Spread::of(v);
    let mut md = String::new();
    writeln!(
        md,
        "## C. TCP throughput and UDP request/response latency\n"
    )
    .unwrap();
    writeln!(
        md,
        "Single-stream TCP (`iperf3 -t {}`, {} runs per path) and UDP request/response \
         (32-byte datagrams to an echo answering at once, {} exchanges per round, {} rounds) \
         to 172.16.10.7 over the OVN side (MTU 1400), interleaved: veer-steered (pod 0, \
         eth0 → eth1 by the programs, replies restored on ingress) vs the routed baseline (pod 1, \
         `ip route … dev eth1`, no program). Latency figures are per-round percentiles; the \
         spread is over rounds.\n",
        o.tcp_secs, tcp_rounds, o.rr_per_round, o.rounds
    )
    .unwrap();
    writeln!(md, "| figure | veer-steered | routed | steered / routed |").unwrap();
    writeln!(md, "|---|---:|---:|---:|").unwrap();
    writeln!(
        md,
        "| TCP Gbit/s | {} | {} | {} |",
        s(&tput[0]).show(2),
        s(&tput[1]).show(2),
        t.show(3)
    )
    .unwrap();
    writeln!(
        md,
        "| UDP RR p50 µs | {} | {} | {} |",
        s(&p50[0]).show(1),
        s(&p50[1]).show(1),
        l50.show(3)
    )
    .unwrap();
    writeln!(
        md,
        "| UDP RR p99 µs | {} | {} | {} |\n",
        s(&p99[0]).show(1),
        s(&p99[1]).show(1),
        l99.show(3)
    )
    .unwrap();
    let c_json = J::obj([
        (
            "tcp_gbps",
            J::obj([
                ("steered", s(&tput[0]).json()),
                ("routed", s(&tput[1]).json()),
            ]),
        ),
        (
            "udp_rr_p50_us",
            J::obj([
                ("steered", s(&p50[0]).json()),
                ("routed", s(&p50[1]).json()),
            ]),
        ),
        (
            "udp_rr_p99_us",
            J::obj([
                ("steered", s(&p99[0]).json()),
                ("routed", s(&p99[1]).json()),
            ]),
        ),
        ("ratio_tcp", t.json()),
        ("ratio_p50", l50.json()),
        ("ratio_p99", l99.json()),
    ]);
    let c = Section {
        key: "throughput_latency",
        md,
        json: c_json,
        plots: Vec::new(),
        aims: Vec::new(),
    };
    drop(env);
    vec![b, c]
}
