//! A dual-CNI pod made of network namespaces, for end-to-end tests with real traffic.
//!
//! ```text
//!            Calico side (MTU 1500)                         servers
//!  pod:eth0 ───────────── node:cali0   node:tosrv ────── srv:from-node
//!  10.244.1.5/32          proxy_arp, ee:ee:..    10.255.1.0/30     lo: 172.16.10.7  (steered)
//!  fd00:244::5/128        fe80::ecee:eeff:feee:eeee                  192.168.2.7  (unsteered)
//!                                                                    fd00:172:16:10::7
//!            OVN side (MTU 1400, port security)                      fd00:192:168:2::7
//!  pod:<second> ───────── gw:ovn0      gw:tosrv ──────── srv:from-ovn
//!  10.124.2.5/24          10.124.2.1     10.255.2.0/30
//!  fd00:124::5/64         fd00:124::1
//! ```
//!
//! - The pod looks like a Calico pod on `eth0` (`default via 169.254.1.1 dev eth0` with
//!   `169.254.1.1 dev eth0 scope link`; IPv6 default via Calico's link-local gateway) and has a
//!   second interface whose name is a parameter (`eth1`, `net1`, …) on an OVN-like subnet, with
//!   the OVN cluster routes through its gateway (so discovery finds that gateway) but no default
//!   route through it. The pod's IPv4 `rp_filter` is strict.
//! - The node (`node`) proxies ARP on the host-side veth and forwards to the server; the OVN
//!   gateway (`gw`) forwards too and enforces **port security** on its pod-facing port with an
//!   nftables `netdev` ingress chain: frames whose source MAC or source IP is not the pod's are
//!   dropped (and counted in the named counters `bad_mac` and `bad_ip`).
//! - The server namespace (`srv`) reaches the pod's Calico address only through the node and
//!   its OVN address only through the gateway, with strict `rp_filter`: a packet with the
//!   wrong source for the path it came by never reaches a socket. [`Server`]s there answer TCP
//!   and UDP with the source address they saw and record ICMP echo requests.
//!
//! Every namespace is made with `ip netns add` under a unique name (`veer-t<pid>-<n>-<role>`),
//! so it has a `/var/run/netns` path like a real pod's; every link is created inside them
//! (`ip -n`), none has an end in the root namespace, and [`Topology`]'s `Drop` deletes them,
//! also when a test panics. Namespaces left by a killed test process are removed by the next
//! [`Topology::build`].

use std::{
    fs,
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use veer_agent::netns::in_netns;

/// The pod's Calico address.
pub const POD4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
/// The pod's Calico IPv6 address.
pub const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 5);
/// Calico's IPv4 gateway.
pub const CALICO_GW4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Calico's IPv6 gateway (link-local, on the host-side veth).
pub const CALICO_GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// The pod's address on the OVN interface (a /24).
pub const OVN4: Ipv4Addr = Ipv4Addr::new(10, 124, 2, 5);
/// The OVN gateway.
pub const OVN_GW4: Ipv4Addr = Ipv4Addr::new(10, 124, 2, 1);
/// The pod's IPv6 address on the OVN interface (a /64).
pub const OVN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x124, 0, 0, 0, 0, 0, 5);
/// The OVN IPv6 gateway.
pub const OVN_GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x124, 0, 0, 0, 0, 0, 1);
/// A server address the tests steer to the OVN interface.
pub const STEERED4: Ipv4Addr = Ipv4Addr::new(172, 16, 10, 7);
/// A server address the tests leave on `eth0`.
pub const UNSTEERED4: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 7);
/// IPv6 counterpart of [`STEERED4`].
pub const STEERED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x16, 0x10, 0, 0, 0, 7);
/// IPv6 counterpart of [`UNSTEERED4`].
pub const UNSTEERED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x192, 0x168, 0x2, 0, 0, 0, 7);
/// The port of the servers (TCP and UDP).
pub const PORT: u16 = 7007;
/// The port of the UDP sink on the OVN gateway (port-security checks).
pub const SINK_PORT: u16 = 7008;

/// MAC of the pod's `eth0`.
pub const POD_ETH0_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xf4, 0x01, 0x05];
/// MAC of the pod's OVN interface (the only source MAC port security lets in).
pub const POD_OVN_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x7c, 0x02, 0x05];
/// MAC of the OVN gateway's pod-facing port.
pub const OVN_GW_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x7c, 0x02, 0x01];
/// MAC of Calico's host-side veth.
pub const CALI_MAC: [u8; 6] = [0xee; 6];

/// Bound on every wait for a reply.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// How to build a [`Topology`].
#[derive(Debug, Clone)]
pub struct TopologyOpts {
    /// Name of the pod's OVN interface (never assumed: `eth1`, `net1`, …).
    pub second: String,
    /// MTU of the Calico link.
    pub calico_mtu: u32,
    /// MTU of the OVN link.
    pub ovn_mtu: u32,
    /// Start the servers in `srv` and the sink in `gw`.
    pub servers: bool,
}

impl Default for TopologyOpts {
    fn default() -> Self {
        Self {
            second: "eth1".into(),
            calico_mtu: 1500,
            ovn_mtu: 1400,
            servers: true,
        }
    }
}

impl TopologyOpts {
    /// Defaults with the OVN interface called `second`.
    pub fn second(name: &str) -> Self {
        Self {
            second: name.into(),
            ..Self::default()
        }
    }
}

const NETNS_DIR: &str = "/var/run/netns";
const PREFIX: &str = "veer-t";

/// The path of the named namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs a command (in the calling thread's namespace); `Err` carries its stderr.
fn run(prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {prog}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("{prog}: writing stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(prog: &str, args: &[&str]) -> String {
    run(prog, args, None).unwrap_or_else(|e| panic!("{e}"))
}

/// `ip -n <ns> <args…>`, panicking on failure.
pub fn ip_in(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    must("ip", &all)
}

/// Removes `veer-t<pid>-…` namespaces whose process is gone (a test run that was killed).
fn remove_stale() {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name], None);
        }
    }
}

/// Writes a sysctl inside namespace `ns` (from a thread in it: `/proc/sys/net` follows the
/// reading thread's namespace) and reads it back.
pub fn sysctl(ns: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let got = in_netns(&netns_path(ns), || {
        fs::write(&path, value)?;
        fs::read_to_string(&path)
    })
    .expect("enter namespace")
    .unwrap_or_else(|e| panic!("sysctl {key}={value} in {ns}: {e}"));
    assert_eq!(got.trim(), value, "sysctl {key} in {ns}");
}

/// What a [`Server`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `"tcp"`, `"udp"` or `"icmp"` (echo requests).
    pub proto: &'static str,
    /// The address the packet was sent to (`None` for ICMPv6, whose raw socket does not say).
    pub local: Option<IpAddr>,
    /// The source address.
    pub peer: IpAddr,
}

/// Servers running on a thread inside a namespace: on each address, a TCP server and a UDP
/// server that answer with the peer address they saw (as text), and optionally raw ICMP
/// sockets that record echo requests. Stopped and joined on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

struct Sockets {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    icmp: Vec<(OwnedFd, bool)>,
}

fn raw_icmp(v6: bool) -> io::Result<OwnedFd> {
    let (af, proto) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            af,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One datagram from a raw ICMP socket, as `(destination, source)` when it is an echo request.
fn recv_echo(fd: &OwnedFd, v6: bool) -> Option<(Option<IpAddr>, IpAddr)> {
    let mut buf = [0u8; 2048];
    // SAFETY: zeroed sockaddr_storage is a valid out-buffer.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: buffers valid for the sizes given.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
            &mut sa as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n <= 0 {
        return None;
    }
    let b = &buf[..n as usize];
    if v6 {
        // SAFETY: the kernel filled an AF_INET6 address for an AF_INET6 socket.
        let sin6 = unsafe { &*(&sa as *const _ as *const libc::sockaddr_in6) };
        (b.first() == Some(&128))
            .then(|| (None, IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))))
    } else {
        // IPv4 raw sockets get the IP header too.
        let ihl = usize::from(*b.first()? & 0x0f) * 4;
        if b.len() < ihl + 1 || b.len() < 20 || b[ihl] != 8 {
            return None;
        }
        let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
        let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
        Some((Some(dst.into()), src.into()))
    }
}

impl Server {
    /// Starts servers on `port` of each of `addrs` inside the namespace at `netns`; with
    /// `icmp`, also records echo requests. Returns once every socket is bound.
    pub fn start(netns: &Path, addrs: &[IpAddr], port: u16, icmp: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (path, addrs) = (netns.to_path_buf(), addrs.to_vec());
        let (stop2, log2) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let entered = in_netns(&path, move || {
                let bind = || -> io::Result<Sockets> {
                    let mut s = Sockets {
                        tcp: Vec::new(),
                        udp: Vec::new(),
                        icmp: Vec::new(),
                    };
                    for a in &addrs {
                        let sa = SocketAddr::new(*a, port);
                        let l = TcpListener::bind(sa)?;
                        l.set_nonblocking(true)?;
                        s.tcp.push(l);
                        let u = UdpSocket::bind(sa)?;
                        u.set_nonblocking(true)?;
                        s.udp.push(u);
                    }
                    if icmp {
                        s.icmp.push((raw_icmp(false)?, false));
                        s.icmp.push((raw_icmp(true)?, true));
                    }
                    Ok(s)
                };
                match bind() {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        serve(&s, &stop2, &log2);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            });
            if let Err(e) = entered {
                // The sender went with the closure; the receiver sees a disconnect.
                eprintln!("server thread: {e}");
            }
        });
        let server = Self {
            stop,
            log,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => server,
            Ok(Err(e)) => panic!("server in {}: {e}", netns.display()),
            Err(e) => panic!("server in {} did not start: {e}", netns.display()),
        }
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Forgets what was seen.
    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(s: &Sockets, stop: &AtomicBool, log: &Mutex<Vec<Seen>>) {
    let note = |proto, local, peer| {
        log.lock().unwrap().push(Seen { proto, local, peer });
    };
    while !stop.load(Ordering::Relaxed) {
        let mut busy = false;
        for l in &s.tcp {
            if let Ok((mut c, peer)) = l.accept() {
                busy = true;
                let local = c.local_addr().ok().map(|a| a.ip());
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(TIMEOUT));
                let _ = c.set_write_timeout(Some(TIMEOUT));
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf);
                let _ = c.write_all(format!("{}\n", peer.ip()).as_bytes());
                note("tcp", local, peer.ip());
            }
        }
        for u in &s.udp {
            let mut buf = [0u8; 2048];
            if let Ok((_, peer)) = u.recv_from(&mut buf) {
                busy = true;
                let _ = u.send_to(format!("{}\n", peer.ip()).as_bytes(), peer);
                note("udp", u.local_addr().ok().map(|a| a.ip()), peer.ip());
            }
        }
        for (fd, v6) in &s.icmp {
            while let Some((local, peer)) = recv_echo(fd, *v6) {
                busy = true;
                note("icmp", local, peer);
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn parse_reply(s: &str) -> io::Result<IpAddr> {
    s.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("reply {s:?}")))
}

/// Connects to `dst` by TCP (from the calling thread's namespace), sends a line and returns the
/// address the server says it saw.
pub fn tcp_probe(dst: SocketAddr) -> io::Result<IpAddr> {
    let mut c = TcpStream::connect_timeout(&dst, TIMEOUT)?;
    c.set_read_timeout(Some(TIMEOUT))?;
    c.set_write_timeout(Some(TIMEOUT))?;
    c.write_all(b"veer\n")?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    parse_reply(&s)
}

/// Sends one UDP datagram to `dst` (from `src` when given, else an unspecified address of the
/// family) and returns the address the server says it saw.
pub fn udp_probe(src: Option<IpAddr>, dst: SocketAddr) -> io::Result<IpAddr> {
    let bind = src.unwrap_or(if dst.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    });
    let u = UdpSocket::bind(SocketAddr::new(bind, 0))?;
    u.set_read_timeout(Some(TIMEOUT))?;
    u.connect(dst)?;
    u.send(b"veer")?;
    let mut buf = [0u8; 256];
    let n = u.recv(&mut buf)?;
    parse_reply(&String::from_utf8_lossy(&buf[..n]))
}

/// Sends a raw Ethernet frame out of `iface` (calling thread's namespace).
pub fn send_frame(iface: &str, frame: &[u8]) -> io::Result<()> {
    let idx = crate::ns::ifindex(iface);
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation; owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_ll is valid; the fields set below are all that matter.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = idx as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: buffers valid for the sizes given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr() as *const libc::c_void,
            frame.len(),
            0,
            &sll as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The namespaces and servers of one dual-CNI pod. Everything is removed on drop.
pub struct Topology {
    /// Namespace names (for `ip -n`, `ip netns exec`).
    pub pod: String,
    pub node: String,
    pub gw: String,
    pub srv: String,
    /// How it was built.
    pub opts: TopologyOpts,
    /// The servers in `srv` (steered and unsteered addresses, both families, with ICMP).
    pub servers: Option<Server>,
    /// The UDP sink on the OVN gateway ([`OVN_GW4`]/[`OVN_GW6`] port [`SINK_PORT`]).
    pub sink: Option<Server>,
    created: Vec<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Topology {
    /// Builds the namespaces, links, addresses, routes, port security and (per `opts`) servers.
    /// Panics on any failure; whatever was made is removed.
    pub fn build(opts: TopologyOpts) -> Self {
        remove_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = |role: &str| format!("{PREFIX}{}-{n}-{role}", std::process::id());
        let mut t = Topology {
            pod: name("pod"),
            node: name("node"),
            gw: name("gw"),
            srv: name("srv"),
            opts,
            servers: None,
            sink: None,
            created: Vec::new(),
        };
        for ns in [t.pod.clone(), t.node.clone(), t.gw.clone(), t.srv.clone()] {
            must("ip", &["netns", "add", &ns]);
            t.created.push(ns.clone());
            ip_in(&ns, &["link", "set", "lo", "up"]);
            // No duplicate address detection: addresses are usable at once.
            sysctl(&ns, "net.ipv6.conf.all.accept_dad", "0");
            sysctl(&ns, "net.ipv6.conf.default.accept_dad", "0");
            // No router solicitations/advertisements noise.
            sysctl(&ns, "net.ipv6.conf.default.accept_ra", "0");
        }
        t.wire();
        t.port_security();
        if t.opts.servers {
            let addrs: Vec<IpAddr> = vec![
                STEERED4.into(),
                UNSTEERED4.into(),
                STEERED6.into(),
                UNSTEERED6.into(),
            ];
            t.servers = Some(Server::start(&netns_path(&t.srv), &addrs, PORT, true));
            t.sink = Some(Server::start(
                &netns_path(&t.gw),
                &[OVN_GW4.into(), OVN_GW6.into()],
                SINK_PORT,
                false,
            ));
        }
        t
    }

    fn wire(&self) {
        let (pod, node, gw, srv) = (&self.pod, &self.node, &self.gw, &self.srv);
        let second = self.opts.second.as_str();
        let cmtu = self.opts.calico_mtu.to_string();
        let omtu = self.opts.ovn_mtu.to_string();

        // Links, each created inside a test namespace with its peer in another one.
        ip_in(
            node,
            &[
                "link", "add", "name", "cali0", "type", "veth", "peer", "name", "eth0", "netns",
                pod,
            ],
        );
        ip_in(
            gw,
            &[
                "link", "add", "name", "ovn0", "type", "veth", "peer", "name", second, "netns", pod,
            ],
        );
        ip_in(
            node,
            &[
                "link",
                "add",
                "name",
                "tosrv",
                "type",
                "veth",
                "peer",
                "name",
                "from-node",
                "netns",
                srv,
            ],
        );
        ip_in(
            gw,
            &[
                "link", "add", "name", "tosrv", "type", "veth", "peer", "name", "from-ovn",
                "netns", srv,
            ],
        );

        // The pod.
        ip_in(
            pod,
            &[
                "link",
                "set",
                "eth0",
                "address",
                &mac_str(&POD_ETH0_MAC),
                "mtu",
                &cmtu,
                "up",
            ],
        );
        ip_in(
            pod,
            &[
                "link",
                "set",
                second,
                "address",
                &mac_str(&POD_OVN_MAC),
                "mtu",
                &omtu,
                "up",
            ],
        );
        ip_in(pod, &["addr", "add", &format!("{POD4}/32"), "dev", "eth0"]);
        ip_in(
            pod,
            &[
                "addr",
                "add",
                &format!("{POD6}/128"),
                "dev",
                "eth0",
                "nodad",
            ],
        );
        ip_in(pod, &["addr", "add", &format!("{OVN4}/24"), "dev", second]);
        ip_in(
            pod,
            &["addr", "add", &format!("{OVN6}/64"), "dev", second, "nodad"],
        );
        ip_in(
            pod,
            &[
                "route",
                "add",
                &CALICO_GW4.to_string(),
                "dev",
                "eth0",
                "scope",
                "link",
            ],
        );
        ip_in(
            pod,
            &[
                "route",
                "add",
                "default",
                "via",
                &CALICO_GW4.to_string(),
                "dev",
                "eth0",
            ],
        );
        ip_in(
            pod,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &CALICO_GW6.to_string(),
                "dev",
                "eth0",
            ],
        );
        // OVN cluster routes (what Multus IPAM typically installs): the gateway is discoverable,
        // and the servers stay behind the default route on eth0.
        ip_in(
            pod,
            &[
                "route",
                "add",
                "10.124.0.0/16",
                "via",
                &OVN_GW4.to_string(),
                "dev",
                second,
            ],
        );
        ip_in(
            pod,
            &[
                "-6",
                "route",
                "add",
                "fd00:124::/48",
                "via",
                &OVN_GW6.to_string(),
                "dev",
                second,
            ],
        );
        sysctl(pod, "net.ipv4.conf.all.rp_filter", "1");
        sysctl(pod, "net.ipv4.conf.default.rp_filter", "1");

        // The Calico node.
        ip_in(
            node,
            &[
                "link",
                "set",
                "cali0",
                "address",
                &mac_str(&CALI_MAC),
                "mtu",
                &cmtu,
            ],
        );
        ip_in(
            node,
            &[
                "addr",
                "add",
                &format!("{CALICO_GW6}/64"),
                "dev",
                "cali0",
                "nodad",
            ],
        );
        ip_in(node, &["link", "set", "cali0", "up"]);
        ip_in(node, &["link", "set", "tosrv", "up"]);
        ip_in(node, &["addr", "add", "10.255.1.1/30", "dev", "tosrv"]);
        ip_in(
            node,
            &["addr", "add", "fd00:ff:1::1/64", "dev", "tosrv", "nodad"],
        );
        ip_in(
            node,
            &["route", "add", &format!("{POD4}/32"), "dev", "cali0"],
        );
        ip_in(
            node,
            &["-6", "route", "add", &format!("{POD6}/128"), "dev", "cali0"],
        );
        ip_in(node, &["route", "add", "default", "via", "10.255.1.2"]);
        ip_in(
            node,
            &["-6", "route", "add", "default", "via", "fd00:ff:1::2"],
        );
        sysctl(node, "net.ipv4.ip_forward", "1");
        sysctl(node, "net.ipv6.conf.all.forwarding", "1");
        sysctl(node, "net.ipv4.conf.cali0.proxy_arp", "1");
        // Answer proxied ARP at once (the default delays it by up to 0.8 s).
        sysctl(node, "net.ipv4.neigh.cali0.proxy_delay", "0");

        // The OVN gateway.
        ip_in(
            gw,
            &[
                "link",
                "set",
                "ovn0",
                "address",
                &mac_str(&OVN_GW_MAC),
                "mtu",
                &omtu,
                "up",
            ],
        );
        ip_in(
            gw,
            &["addr", "add", &format!("{OVN_GW4}/24"), "dev", "ovn0"],
        );
        ip_in(
            gw,
            &[
                "addr",
                "add",
                &format!("{OVN_GW6}/64"),
                "dev",
                "ovn0",
                "nodad",
            ],
        );
        ip_in(gw, &["link", "set", "tosrv", "up"]);
        ip_in(gw, &["addr", "add", "10.255.2.1/30", "dev", "tosrv"]);
        ip_in(
            gw,
            &["addr", "add", "fd00:ff:2::1/64", "dev", "tosrv", "nodad"],
        );
        ip_in(gw, &["route", "add", "default", "via", "10.255.2.2"]);
        ip_in(
            gw,
            &["-6", "route", "add", "default", "via", "fd00:ff:2::2"],
        );
        sysctl(gw, "net.ipv4.ip_forward", "1");
        sysctl(gw, "net.ipv6.conf.all.forwarding", "1");

        // The servers: reachable from the Calico pod address only through the node, from the
        // OVN address only through the gateway.
        for a in [
            format!("{STEERED4}/32"),
            format!("{UNSTEERED4}/32"),
            format!("{STEERED6}/128"),
            format!("{UNSTEERED6}/128"),
        ] {
            ip_in(srv, &["addr", "add", &a, "dev", "lo"]);
        }
        ip_in(srv, &["link", "set", "from-node", "up"]);
        ip_in(srv, &["link", "set", "from-ovn", "up"]);
        ip_in(srv, &["addr", "add", "10.255.1.2/30", "dev", "from-node"]);
        ip_in(
            srv,
            &[
                "addr",
                "add",
                "fd00:ff:1::2/64",
                "dev",
                "from-node",
                "nodad",
            ],
        );
        ip_in(srv, &["addr", "add", "10.255.2.2/30", "dev", "from-ovn"]);
        ip_in(
            srv,
            &["addr", "add", "fd00:ff:2::2/64", "dev", "from-ovn", "nodad"],
        );
        ip_in(srv, &["route", "add", "10.244.0.0/16", "via", "10.255.1.1"]);
        ip_in(
            srv,
            &["-6", "route", "add", "fd00:244::/32", "via", "fd00:ff:1::1"],
        );
        ip_in(srv, &["route", "add", "10.124.0.0/16", "via", "10.255.2.1"]);
        ip_in(
            srv,
            &["-6", "route", "add", "fd00:124::/32", "via", "fd00:ff:2::1"],
        );
        sysctl(srv, "net.ipv4.conf.all.rp_filter", "1");
        sysctl(srv, "net.ipv4.conf.default.rp_filter", "1");
    }

    /// OVN-style port security on the gateway's pod-facing port.
    fn port_security(&self) {
        let rules = format!(
            r#"table netdev veer_portsec {{
  counter bad_mac {{ }}
  counter bad_ip {{ }}
  chain ingress {{
    type filter hook ingress device "ovn0" priority 0; policy drop;
    ether saddr != {mac} counter name "bad_mac" drop
    arp saddr ip {v4} accept
    ip saddr {v4} accept
    ip6 saddr {{ {v6}, fe80::/10, :: }} accept
    counter name "bad_ip" drop
  }}
}}
"#,
            mac = mac_str(&POD_OVN_MAC),
            v4 = OVN4,
            v6 = OVN6,
        );
        run(
            "ip",
            &["netns", "exec", &self.gw, "nft", "-f", "-"],
            Some(&rules),
        )
        .unwrap_or_else(|e| panic!("port security (is nftables installed?): {e}"));
    }

    /// Packets the port security dropped, by counter (`"bad_mac"` or `"bad_ip"`).
    pub fn port_security_drops(&self, counter: &str) -> u64 {
        let out = must(
            "ip",
            &[
                "netns",
                "exec",
                &self.gw,
                "nft",
                "list",
                "counter",
                "netdev",
                "veer_portsec",
                counter,
            ],
        );
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {out:?}"))
    }

    /// Path of the pod's namespace (what the agent is given).
    pub fn pod_path(&self) -> PathBuf {
        netns_path(&self.pod)
    }

    /// Runs `f` on a thread inside the pod's namespace.
    pub fn in_pod<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        in_netns(&self.pod_path(), f).expect("enter the pod's namespace")
    }

    /// TCP from the pod to `dst`:[`PORT`]: the source the server saw.
    pub fn tcp(&self, dst: IpAddr) -> io::Result<IpAddr> {
        self.in_pod(|| tcp_probe(SocketAddr::new(dst, PORT)))
    }

    /// UDP from the pod to `dst`:[`PORT`]: the source the server saw.
    pub fn udp(&self, dst: IpAddr) -> io::Result<IpAddr> {
        self.in_pod(|| udp_probe(None, SocketAddr::new(dst, PORT)))
    }

    /// One ping from the pod to `dst` (2 s deadline); whether the reply came.
    pub fn ping(&self, dst: IpAddr) -> bool {
        let d = dst.to_string();
        self.in_pod(|| run("ping", &["-n", "-q", "-c", "1", "-W", "2", &d], None))
            .is_ok()
    }

    /// Sources of the echo requests the servers saw (waiting up to 0.5 s for the first one: the
    /// server reads its raw socket asynchronously), then forgets them.
    pub fn take_icmp_sources(&self) -> Vec<IpAddr> {
        let s = self.servers.as_ref().expect("servers");
        let icmp = || -> Vec<IpAddr> {
            s.seen()
                .into_iter()
                .filter(|x| x.proto == "icmp")
                .map(|x| x.peer)
                .collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while icmp().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let v = icmp();
        s.clear();
        v
    }

    /// Forgets what the servers saw.
    pub fn clear_seen(&self) {
        if let Some(s) = &self.servers {
            s.clear();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Threads inside a namespace keep it alive: stop them first.
        self.servers.take();
        self.sink.take();
        for ns in self.created.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "del", &ns], None) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}
