//! Dual-CNI pods made of network namespaces, for end-to-end tests with real traffic.
//!
//! ```text
//!            Calico side (MTU 1500)                           servers (srv, on lo)
//!  pod<i>:eth0 ─────────── node:cali<i>   node:tosrv ────── srv:from-node
//!  10.244.1.(5+i)/32       proxy_arp, ee:ee:..    10.255.1.0/30
//!  fd00:244::(5+i)/128     fe80::ecee:eeff:feee:eeee
//!                                                          10.86.69.17    fd00:86::45:11
//!            OVN side (MTU 1400, port security)            10.86.205.109  fd00:86::cd:6d
//!  pod<i>:<second> ─────── gw:ovn<i> ─ gw:br-ovn           10.124.9.9     fd00:124:9::9
//!  10.124.2.(5+i)/24       10.124.2.1, fd00:124::1         172.16.10.7    fd00:172:16:10::7
//!  fd00:124::(5+i)/64      gw:tosrv ──────── srv:from-ovn  172.16.11.7    fd00:172:16:11::7
//!                          10.255.2.0/30                   192.168.2.7    fd00:192:168:2::7
//!                                                          198.51.100.7   fd00:198:51:100::7
//! ```
//!
//! - Each pod looks like a Calico pod on `eth0` (`default via 169.254.1.1 dev eth0` with
//!   `169.254.1.1 dev eth0 scope link`; IPv6 default via Calico's link-local gateway) and has a
//!   second interface whose name is a parameter (`eth1`, `net1`, …) on an OVN-like subnet, with
//!   the OVN cluster routes (`10.124.0.0/16`, `fd00:124::/48`) through its gateway (so
//!   discovery finds that gateway) but no default route through it. Its IPv4 `rp_filter` is
//!   strict. Pods can be added and removed at any time ([`Topology::add_pod`],
//!   [`Topology::remove_pod`]); pod `i` has its own addresses and MACs ([`Pod`]).
//! - The node (`node`) proxies ARP on each host-side veth (`cali<i>`, with a `/32` and a
//!   `/128` route to the pod) and forwards to the server; the OVN gateway (`gw`) bridges the
//!   pods' ports (`br-ovn` holds the gateway addresses), forwards too, and enforces **port
//!   security** on each pod-facing port with an nftables `netdev` ingress chain: frames whose
//!   source MAC or source IP is not that pod's are dropped (and counted in the named counters
//!   `bad_mac` and `bad_ip`). The node enforces Calico-style **anti-spoofing** on each
//!   `cali<i>` (nftables `netdev` ingress): an IP packet from the pod whose source is not its
//!   `eth0` address is dropped (counted in `bad_src`).
//! - The server namespace (`srv`) holds the destinations of the seed's route table
//!   ([`server_addrs`]), reaches the pods' Calico addresses only through the node and their OVN
//!   addresses only through the gateway, with strict `rp_filter`: a packet with the wrong
//!   source for the path it came by never reaches a socket. [`Server`]s there answer TCP and
//!   UDP with the source address they saw and record ICMP echo requests; [`Echo`] servers
//!   stream bytes back (long-lived and large transfers).
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

/// The first pod's Calico address.
pub const POD4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
/// The first pod's Calico IPv6 address.
pub const POD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 5);
/// Calico's IPv4 gateway.
pub const CALICO_GW4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Calico's IPv6 gateway (link-local, on the host-side veth).
pub const CALICO_GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// The first pod's address on the OVN interface (a /24).
pub const OVN4: Ipv4Addr = Ipv4Addr::new(10, 124, 2, 5);
/// The OVN gateway.
pub const OVN_GW4: Ipv4Addr = Ipv4Addr::new(10, 124, 2, 1);
/// The first pod's IPv6 address on the OVN interface (a /64).
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
/// Service `kube-system/nginx1` (the seed's route table sends it by `eth0`).
pub const SVC_ETH0_4: Ipv4Addr = Ipv4Addr::new(10, 86, 69, 17);
/// IPv6 cluster IP of `kube-system/nginx1`.
pub const SVC_ETH0_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x86, 0, 0, 0, 0, 0x45, 0x11);
/// Service `default/nginx` (the seed's route table sends it by `eth1`).
pub const SVC_ETH1_4: Ipv4Addr = Ipv4Addr::new(10, 86, 205, 109);
/// IPv6 cluster IP of `default/nginx`.
pub const SVC_ETH1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x86, 0, 0, 0, 0, 0xcd, 0x6d);
/// An address in the OVN pod range `10.124.0.0/16`, off the pod's OVN subnet.
pub const OVN_RANGE4: Ipv4Addr = Ipv4Addr::new(10, 124, 9, 9);
/// An address in `fd00:124::/32`, outside the pod's OVN route `fd00:124::/48`.
pub const OVN_RANGE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x124, 9, 0, 0, 0, 0, 9);
/// An address in the seed demo's `172.16.11.0/24` (sent by `eth0`).
pub const CALICO_CIDR4: Ipv4Addr = Ipv4Addr::new(172, 16, 11, 7);
/// IPv6 counterpart of [`CALICO_CIDR4`].
pub const CALICO_CIDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x172, 0x16, 0x11, 0, 0, 0, 7);
/// An address only the default route covers.
pub const DEFAULT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// IPv6 counterpart of [`DEFAULT4`].
pub const DEFAULT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x51, 0x100, 0, 0, 0, 7);

/// Every destination address the server namespace holds.
pub fn server_addrs() -> Vec<IpAddr> {
    vec![
        STEERED4.into(),
        UNSTEERED4.into(),
        STEERED6.into(),
        UNSTEERED6.into(),
        SVC_ETH0_4.into(),
        SVC_ETH0_6.into(),
        SVC_ETH1_4.into(),
        SVC_ETH1_6.into(),
        OVN_RANGE4.into(),
        OVN_RANGE6.into(),
        CALICO_CIDR4.into(),
        CALICO_CIDR6.into(),
        DEFAULT4.into(),
        DEFAULT6.into(),
    ]
}

/// The port of the servers (TCP and UDP).
pub const PORT: u16 = 7007;
/// The port of the UDP sink on the OVN gateway (port-security checks).
pub const SINK_PORT: u16 = 7008;
/// The port of the [`Echo`] servers.
pub const ECHO_PORT: u16 = 7009;

/// MAC of the first pod's `eth0`.
pub const POD_ETH0_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xf4, 0x01, 0x05];
/// MAC of the first pod's OVN interface (the only source MAC its port security lets in).
pub const POD_OVN_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x7c, 0x02, 0x05];
/// MAC of the OVN gateway (its bridge, the pods' next hop).
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
    /// Pods made by [`Topology::build`] (more can be added later).
    pub pods: usize,
}

impl Default for TopologyOpts {
    fn default() -> Self {
        Self {
            second: "eth1".into(),
            calico_mtu: 1500,
            ovn_mtu: 1400,
            servers: true,
            pods: 1,
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
    // `ip netns exec <ns> <program>` runs a second program: it must be declared and present too.
    if let ["netns", "exec", _, inner, ..] = args {
        crate::programs::require(inner);
    }
    let mut cmd = crate::programs::command(prog);
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

/// Echo servers running inside a namespace: on each address, a TCP listener whose connections
/// first get one line with the peer address the server saw, then every byte sent back. One
/// thread per connection; everything stops and is joined on drop.
pub struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Echo {
    /// Starts echo listeners on `port` of each of `addrs` inside the namespace at `netns`.
    pub fn start(netns: &Path, addrs: &[IpAddr], port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (path, addrs) = (netns.to_path_buf(), addrs.to_vec());
        let (stop2, conns2) = (stop.clone(), conns.clone());
        let thread = std::thread::spawn(move || {
            let entered = in_netns(&path, move || {
                let bind = || -> io::Result<Vec<TcpListener>> {
                    addrs
                        .iter()
                        .map(|a| {
                            let l = TcpListener::bind(SocketAddr::new(*a, port))?;
                            l.set_nonblocking(true)?;
                            Ok(l)
                        })
                        .collect()
                };
                let listeners = match bind() {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                while !stop2.load(Ordering::Relaxed) {
                    let mut busy = false;
                    for l in &listeners {
                        if let Ok((c, peer)) = l.accept() {
                            busy = true;
                            let stop = stop2.clone();
                            let h = std::thread::spawn(move || echo_conn(c, peer.ip(), &stop));
                            conns2.lock().unwrap().push(h);
                        }
                    }
                    if !busy {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            });
            if let Err(e) = entered {
                eprintln!("echo thread: {e}");
            }
        });
        let echo = Self {
            stop,
            thread: Some(thread),
            conns,
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => echo,
            Ok(Err(e)) => panic!("echo server in {}: {e}", netns.display()),
            Err(e) => panic!("echo server in {} did not start: {e}", netns.display()),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for h in self.conns.lock().unwrap().drain(..) {
            let _ = h.join();
        }
    }
}

fn echo_conn(mut c: TcpStream, peer: IpAddr, stop: &AtomicBool) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
    if c.write_all(format!("{peer}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

/// A TCP connection to an [`Echo`] server.
pub struct EchoStream {
    pub sock: TcpStream,
    /// The source address the server saw.
    pub seen: IpAddr,
}

impl EchoStream {
    /// Sends `data` and reads it back; an error if anything else comes back.
    pub fn roundtrip(&mut self, data: &[u8]) -> io::Result<()> {
        self.sock.write_all(data)?;
        let mut back = vec![0u8; data.len()];
        self.sock.read_exact(&mut back)?;
        if back != data {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "echo returned different bytes",
            ));
        }
        Ok(())
    }

    /// Sends `total` bytes of a pattern (from a second thread) while reading the echo, and
    /// checks every byte that comes back. Bounded by the socket timeouts.
    pub fn transfer(&mut self, total: usize) -> io::Result<()> {
        let pattern = |i: usize| (i.wrapping_mul(31) ^ (i >> 10)) as u8;
        let mut w = self.sock.try_clone()?;
        let writer = std::thread::spawn(move || -> io::Result<()> {
            let mut sent = 0;
            let mut chunk = vec![0u8; 32 * 1024];
            while sent < total {
                let n = chunk.len().min(total - sent);
                for (k, b) in chunk[..n].iter_mut().enumerate() {
                    *b = pattern(sent + k);
                }
                w.write_all(&chunk[..n])?;
                sent += n;
            }
            Ok(())
        });
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let read = (|| -> io::Result<()> {
            while got < total {
                let n = self.sock.read(&mut buf[..(total - got).min(64 * 1024)])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("echo closed after {got} of {total} bytes"),
                    ));
                }
                if let Some(k) = (0..n).find(|&k| buf[k] != pattern(got + k)) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("byte {} differs", got + k),
                    ));
                }
                got += n;
            }
            Ok(())
        })();
        if read.is_err() {
            // Unblock the writer.
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
        let wrote = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("writer panicked")));
        read?;
        wrote
    }
}

/// Connects to the [`Echo`] server at `dst`:[`ECHO_PORT`] from the calling thread's namespace.
pub fn echo_connect(dst: IpAddr) -> io::Result<EchoStream> {
    let mut sock = TcpStream::connect_timeout(&SocketAddr::new(dst, ECHO_PORT), TIMEOUT)?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.set_write_timeout(Some(TIMEOUT))?;
    sock.set_nodelay(true)?;
    // The greeting line, byte by byte (nothing else is in flight yet).
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        sock.read_exact(&mut b)?;
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    let seen = parse_reply(&String::from_utf8_lossy(&line))?;
    Ok(EchoStream { sock, seen })
}

/// One pod of a [`Topology`]: its namespace and addresses. Pod `i` has the addresses of the
/// constants with `5 + i` as last byte (pod 0 has exactly [`POD4`], [`OVN4`], …) and MACs made
/// the same way.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Index in the topology (never reused).
    pub index: u8,
    /// Namespace name (`/var/run/netns/<ns>`).
    pub ns: String,
    /// Name of the OVN interface.
    pub second: String,
    /// Calico (`eth0`) addresses.
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// OVN addresses.
    pub ovn4: Ipv4Addr,
    pub ovn6: Ipv6Addr,
    pub eth0_mac: [u8; 6],
    pub ovn_mac: [u8; 6],
    /// IPv6 addresses on the OVN side go through duplicate address detection (tentative at
    /// first) instead of `nodad`: [`Topology::enable_dad`].
    pub dad: bool,
}

impl Pod {
    fn new(index: u8, ns: String, second: &str) -> Self {
        assert!(index < 200, "at most 200 pods per topology");
        let h = 5 + index;
        Self {
            index,
            ns,
            second: second.into(),
            v4: Ipv4Addr::new(10, 244, 1, h),
            v6: Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, h.into()),
            ovn4: Ipv4Addr::new(10, 124, 2, h),
            ovn6: Ipv6Addr::new(0xfd00, 0x124, 0, 0, 0, 0, 0, h.into()),
            eth0_mac: [0x02, 0x00, 0x0a, 0xf4, 0x01, h],
            ovn_mac: [0x02, 0x00, 0x0a, 0x7c, 0x02, h],
            dad: false,
        }
    }

    /// Path of the pod's namespace (what the agent is given).
    pub fn path(&self) -> PathBuf {
        netns_path(&self.ns)
    }

    /// Runs `f` on a thread inside the pod's namespace (sockets made there stay in it).
    pub fn in_ns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        in_netns(&self.path(), f).expect("enter the pod's namespace")
    }

    /// TCP from the pod to `dst`:[`PORT`]: the source the server saw.
    pub fn tcp(&self, dst: IpAddr) -> io::Result<IpAddr> {
        self.in_ns(|| tcp_probe(SocketAddr::new(dst, PORT)))
    }

    /// UDP from the pod to `dst`:[`PORT`]: the source the server saw.
    pub fn udp(&self, dst: IpAddr) -> io::Result<IpAddr> {
        self.in_ns(|| udp_probe(None, SocketAddr::new(dst, PORT)))
    }

    /// One ping from the pod to `dst` (2 s deadline); whether the reply came.
    pub fn ping(&self, dst: IpAddr) -> bool {
        let d = dst.to_string();
        self.in_ns(|| run("ping", &["-n", "-q", "-c", "1", "-W", "2", &d], None))
            .is_ok()
    }

    /// `count` pings `interval` apart from the pod to `dst`: (transmitted, received).
    pub fn ping_series(&self, dst: IpAddr, count: u32, interval: Duration) -> (u32, u32) {
        let (d, c, i) = (
            dst.to_string(),
            count.to_string(),
            format!("{:.3}", interval.as_secs_f64()),
        );
        let out = self.in_ns(|| {
            let o = Command::new("ping")
                .args(["-n", "-q", "-i", &i, "-c", &c, "-W", "1", &d])
                .output();
            o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        });
        let out = out.unwrap_or_else(|e| panic!("cannot run ping: {e}"));
        // "300 packets transmitted, 300 received, 0% packet loss, time 3050ms"
        let summary = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_default();
        let num = |word: &str| -> u32 {
            summary
                .split(',')
                .find(|p| p.contains(word))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (num("transmitted"), num("received"))
    }

    /// Connects to the [`Echo`] server at `dst` from the pod.
    pub fn echo(&self, dst: IpAddr) -> io::Result<EchoStream> {
        self.in_ns(|| echo_connect(dst))
    }

    /// The pod's address of `family` on `iface` (`eth0` or the OVN interface).
    pub fn addr(&self, iface: &str, v6: bool) -> IpAddr {
        match (iface == "eth0", v6) {
            (true, false) => self.v4.into(),
            (true, true) => self.v6.into(),
            (false, false) => self.ovn4.into(),
            (false, true) => self.ovn6.into(),
        }
    }

    /// The pod interface that owns `src`: the interface a packet with that source left by
    /// (port security and the servers' strict `rp_filter` admit no other path).
    pub fn iface_of(&self, src: IpAddr) -> Option<&str> {
        if src == IpAddr::from(self.v4) || src == IpAddr::from(self.v6) {
            Some("eth0")
        } else if src == IpAddr::from(self.ovn4) || src == IpAddr::from(self.ovn6) {
            Some(&self.second)
        } else {
            None
        }
    }
}

/// The node, the OVN gateway, the server namespace and any number of dual-CNI pods. Everything
/// is removed on drop.
pub struct Topology {
    /// Namespace of the first pod (for `ip -n`, `ip netns exec`); see [`Topology::pods`].
    pub pod: String,
    pub node: String,
    pub gw: String,
    pub srv: String,
    /// How it was built.
    pub opts: TopologyOpts,
    /// The live pods, oldest first.
    pub pods: Vec<Pod>,
    /// The servers in `srv` (every [`server_addrs`] address, with ICMP).
    pub servers: Option<Server>,
    /// The echo servers in `srv` (every [`server_addrs`] address, port [`ECHO_PORT`]).
    pub echo: Option<Echo>,
    /// The UDP sink on the OVN gateway ([`OVN_GW4`]/[`OVN_GW6`] port [`SINK_PORT`]).
    pub sink: Option<Server>,
    tag: String,
    next_pod: u8,
    created: Vec<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Name of the bridge on the OVN gateway that the pods' OVN ports join.
const OVN_BRIDGE: &str = "br-ovn";

impl Topology {
    /// Builds the namespaces, links, addresses, routes, port security, `opts.pods` pods and
    /// (per `opts`) servers. Panics on any failure; whatever was made is removed.
    pub fn build(opts: TopologyOpts) -> Self {
        remove_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{}-{n}", std::process::id());
        let name = |role: &str| format!("{tag}-{role}");
        let mut t = Topology {
            pod: String::new(),
            node: name("node"),
            gw: name("gw"),
            srv: name("srv"),
            opts,
            pods: Vec::new(),
            servers: None,
            echo: None,
            sink: None,
            tag: tag.clone(),
            next_pod: 0,
            created: Vec::new(),
        };
        for ns in [t.node.clone(), t.gw.clone(), t.srv.clone()] {
            t.add_ns(&ns);
        }
        t.wire();
        t.port_security_table();
        t.antispoof_table();
        for _ in 0..t.opts.pods {
            t.add_pod();
        }
        if let Some(p) = t.pods.first() {
            t.pod = p.ns.clone();
        }
        if t.opts.servers {
            let addrs = server_addrs();
            t.servers = Some(Server::start(&netns_path(&t.srv), &addrs, PORT, true));
            t.echo = Some(Echo::start(&netns_path(&t.srv), &addrs, ECHO_PORT));
            t.sink = Some(Server::start(
                &netns_path(&t.gw),
                &[OVN_GW4.into(), OVN_GW6.into()],
                SINK_PORT,
                false,
            ));
        }
        t
    }

    fn add_ns(&mut self, ns: &str) {
        must("ip", &["netns", "add", ns]);
        self.created.push(ns.to_string());
        ip_in(ns, &["link", "set", "lo", "up"]);
        // No duplicate address detection: addresses are usable at once.
        sysctl(ns, "net.ipv6.conf.all.accept_dad", "0");
        sysctl(ns, "net.ipv6.conf.default.accept_dad", "0");
        // No router solicitations/advertisements noise.
        sysctl(ns, "net.ipv6.conf.default.accept_ra", "0");
    }

    /// The first pod.
    pub fn pod0(&self) -> &Pod {
        self.pods.first().expect("the topology has a pod")
    }

    /// Adds a pod (a new namespace wired to the node and the OVN gateway, with its own port
    /// security) and returns it.
    pub fn add_pod(&mut self) -> Pod {
        let p = self.add_bare_pod();
        self.wire_pod(&p);
        p
    }

    /// Turns duplicate address detection on in bare pod `p` (before
    /// [`wire_second`](Self::wire_second)): its OVN-side IPv6 address is then tentative for about
    /// a second, as on a real node, and becomes usable with an `RTM_NEWADDR` of its own.
    pub fn enable_dad(&self, p: &mut Pod) {
        sysctl(&p.ns, "net.ipv6.conf.all.accept_dad", "1");
        sysctl(&p.ns, "net.ipv6.conf.default.accept_dad", "1");
        p.dad = true;
    }

    /// Adds a pod's namespace with nothing but `lo` (what a runtime has when it writes the
    /// loopback network's CNI result, before the other networks' ADDs): wire it later with
    /// [`wire_default`](Self::wire_default) and [`wire_second`](Self::wire_second).
    pub fn add_bare_pod(&mut self) -> Pod {
        let index = self.next_pod;
        self.next_pod += 1;
        let p = Pod::new(index, format!("{}-pod{index}", self.tag), &self.opts.second);
        self.add_ns(&p.ns);
        sysctl(&p.ns, "net.ipv4.conf.all.rp_filter", "1");
        sysctl(&p.ns, "net.ipv4.conf.default.rp_filter", "1");

        self.pods.push(p.clone());
        p
    }

    /// Deletes pod `index`'s namespace (its links go with it) and its port security chain.
    pub fn remove_pod(&mut self, index: u8) {
        let Some(at) = self.pods.iter().position(|p| p.index == index) else {
            return;
        };
        let p = self.pods.remove(at);
        self.delete_port_security(index);
        must("ip", &["netns", "del", &p.ns]);
        self.created.retain(|n| *n != p.ns);
    }

    /// Deletes pod `index`'s port security chain (if any).
    fn delete_port_security(&self, index: u8) {
        let _ = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.gw,
                "nft",
                "delete",
                "chain",
                "netdev",
                "veer_portsec",
                &format!("port{index}"),
            ],
            None,
        );
    }

    fn wire(&self) {
        let (node, gw, srv) = (&self.node, &self.gw, &self.srv);
        let omtu = self.opts.ovn_mtu.to_string();

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

        // The Calico node: one `cali<i>` per pod (see `wire_pod`), the server behind `tosrv`.
        ip_in(node, &["link", "set", "tosrv", "up"]);
        ip_in(node, &["addr", "add", "10.255.1.1/30", "dev", "tosrv"]);
        ip_in(
            node,
            &["addr", "add", "fd00:ff:1::1/64", "dev", "tosrv", "nodad"],
        );
        ip_in(node, &["route", "add", "default", "via", "10.255.1.2"]);
        ip_in(
            node,
            &["-6", "route", "add", "default", "via", "fd00:ff:1::2"],
        );
        sysctl(node, "net.ipv4.ip_forward", "1");
        sysctl(node, "net.ipv6.conf.all.forwarding", "1");

        // The OVN gateway: the pods' ports join a bridge holding the subnet's gateway address.
        ip_in(
            gw,
            &[
                "link",
                "add",
                OVN_BRIDGE,
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ],
        );
        ip_in(
            gw,
            &[
                "link",
                "set",
                OVN_BRIDGE,
                "address",
                &mac_str(&OVN_GW_MAC),
                "mtu",
                &omtu,
                "up",
            ],
        );
        ip_in(
            gw,
            &["addr", "add", &format!("{OVN_GW4}/24"), "dev", OVN_BRIDGE],
        );
        ip_in(
            gw,
            &[
                "addr",
                "add",
                &format!("{OVN_GW6}/64"),
                "dev",
                OVN_BRIDGE,
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

        // The servers: reachable from the Calico pod addresses only through the node, from the
        // OVN addresses only through the gateway.
        for a in server_addrs() {
            let plen = if a.is_ipv4() { 32 } else { 128 };
            ip_in(srv, &["addr", "add", &format!("{a}/{plen}"), "dev", "lo"]);
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

    fn wire_pod(&self, p: &Pod) {
        self.wire_default(p);
        self.wire_second(p);
    }

    /// Wires pod `p`'s default-network interface (Calico `eth0`: link, addresses, default
    /// routes, the node's side), as the default network's CNI ADD does.
    pub fn wire_default(&self, p: &Pod) {
        let node = &self.node;
        let pod = p.ns.as_str();
        let cmtu = self.opts.calico_mtu.to_string();
        let cali = format!("cali{}", p.index);

        // Links, each created inside a test namespace with its peer in another one.
        ip_in(
            node,
            &[
                "link", "add", "name", &cali, "type", "veth", "peer", "name", "eth0", "netns", pod,
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
                &mac_str(&p.eth0_mac),
                "mtu",
                &cmtu,
                "up",
            ],
        );
        ip_in(
            pod,
            &["addr", "add", &format!("{}/32", p.v4), "dev", "eth0"],
        );
        ip_in(
            pod,
            &[
                "addr",
                "add",
                &format!("{}/128", p.v6),
                "dev",
                "eth0",
                "nodad",
            ],
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
        // The node's side: proxy ARP, Calico's link-local IPv6 gateway, host routes.
        ip_in(
            node,
            &[
                "link",
                "set",
                &cali,
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
                &cali,
                "nodad",
            ],
        );
        ip_in(node, &["link", "set", &cali, "up"]);
        ip_in(
            node,
            &["route", "add", &format!("{}/32", p.v4), "dev", &cali],
        );
        ip_in(
            node,
            &["-6", "route", "add", &format!("{}/128", p.v6), "dev", &cali],
        );
        sysctl(node, &format!("net.ipv4.conf.{cali}.proxy_arp"), "1");
        // Answer proxied ARP at once (the default delays it by up to 0.8 s).
        sysctl(node, &format!("net.ipv4.neigh.{cali}.proxy_delay"), "0");
        self.antispoof(p, &cali);
    }

    /// The table of the Calico-side anti-spoofing chains, with the counter they share.
    fn antispoof_table(&self) {
        let rules = "table netdev veer_antispoof {\n  counter bad_src { }\n}\n";
        run(
            "ip",
            &["netns", "exec", &self.node, "nft", "-f", "-"],
            Some(rules),
        )
        .unwrap_or_else(|e| panic!("anti-spoofing (is nftables installed?): {e}"));
    }

    /// Calico-style anti-spoofing on the node's veth of pod `p`: IP packets from the pod whose
    /// source is not its `eth0` address are dropped (counted in `bad_src`); ARP and IPv6
    /// link-local/unspecified sources (neighbour discovery) pass.
    fn antispoof(&self, p: &Pod, cali: &str) {
        let rules = format!(
            r#"table netdev veer_antispoof {{
  chain {cali} {{
    type filter hook ingress device "{cali}" priority 0; policy accept;
    ip saddr != {v4} counter name "bad_src" drop
    ip6 saddr != {{ {v6}, fe80::/10, :: }} counter name "bad_src" drop
  }}
}}
"#,
            v4 = p.v4,
            v6 = p.v6,
        );
        run(
            "ip",
            &["netns", "exec", &self.node, "nft", "-f", "-"],
            Some(&rules),
        )
        .unwrap_or_else(|e| panic!("anti-spoofing (is nftables installed?): {e}"));
    }

    /// Packets the Calico-side anti-spoofing dropped (all pods).
    pub fn antispoof_drops(&self) -> u64 {
        let out = must(
            "ip",
            &[
                "netns",
                "exec",
                &self.node,
                "nft",
                "list",
                "counter",
                "netdev",
                "veer_antispoof",
                "bad_src",
            ],
        );
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {out:?}"))
    }

    /// Wires pod `p`'s OVN-side interface (link, addresses, OVN cluster routes, the gateway's
    /// port with port security), as the second network's CNI ADD (or a Multus dynamic
    /// attachment) does.
    pub fn wire_second(&self, p: &Pod) {
        let gw = &self.gw;
        let pod = p.ns.as_str();
        let second = p.second.as_str();
        let omtu = self.opts.ovn_mtu.to_string();
        let port = format!("ovn{}", p.index);

        ip_in(
            gw,
            &[
                "link", "add", "name", &port, "type", "veth", "peer", "name", second, "netns", pod,
            ],
        );

        ip_in(
            pod,
            &[
                "link",
                "set",
                second,
                "address",
                &mac_str(&p.ovn_mac),
                "mtu",
                &omtu,
                "up",
            ],
        );
        ip_in(
            pod,
            &["addr", "add", &format!("{}/24", p.ovn4), "dev", second],
        );
        let ovn6 = format!("{}/64", p.ovn6);
        let mut add6 = vec!["addr", "add", &ovn6, "dev", second];
        if !p.dad {
            add6.push("nodad");
        }
        ip_in(pod, &add6);
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
        // The gateway's side: a bridge port with port security.
        ip_in(
            gw,
            &[
                "link", "set", &port, "mtu", &omtu, "master", OVN_BRIDGE, "up",
            ],
        );
        self.port_security(p, &port);
    }

    /// Removes pod `p`'s OVN-side interface and its port security (a Multus dynamic detach, or
    /// the second network's CNI DEL); the pod keeps its default network.
    pub fn unwire_second(&self, p: &Pod) {
        self.delete_port_security(p.index);
        ip_in(&self.gw, &["link", "del", &format!("ovn{}", p.index)]);
    }

    /// The table of the port security chains, with the counters they share.
    fn port_security_table(&self) {
        let rules = "table netdev veer_portsec {\n  counter bad_mac { }\n  counter bad_ip { }\n}\n";
        run(
            "ip",
            &["netns", "exec", &self.gw, "nft", "-f", "-"],
            Some(rules),
        )
        .unwrap_or_else(|e| panic!("port security (is nftables installed?): {e}"));
    }

    /// OVN-style port security on the gateway's port of pod `p`: frames whose source MAC or
    /// source IP is not the pod's are dropped (counted in `bad_mac`, `bad_ip`).
    fn port_security(&self, p: &Pod, port: &str) {
        let rules = format!(
            r#"table netdev veer_portsec {{
  chain port{index} {{
    type filter hook ingress device "{port}" priority 0; policy drop;
    ether saddr != {mac} counter name "bad_mac" drop
    arp saddr ip {v4} accept
    ip saddr {v4} accept
    ip6 saddr {{ {v6}, fe80::/10, :: }} accept
    counter name "bad_ip" drop
  }}
}}
"#,
            index = p.index,
            mac = mac_str(&p.ovn_mac),
            v4 = p.ovn4,
            v6 = p.ovn6,
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

    /// Path of the first pod's namespace (what the agent is given).
    pub fn pod_path(&self) -> PathBuf {
        self.pod0().path()
    }

    /// Runs `f` on a thread inside the first pod's namespace.
    pub fn in_pod<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pod0().in_ns(f)
    }

    /// TCP from the first pod to `dst`:[`PORT`]: the source the server saw.
    pub fn tcp(&self, dst: IpAddr) -> io::Result<IpAddr> {
        self.pod0().tcp(dst)
    }

    /// UDP from the first pod to `dst`:[`PORT`]: the source the server saw.
    pub fn udp(&self, dst: IpAddr) -> io::Result<IpAddr> {
        self.pod0().udp(dst)
    }

    /// One ping from the first pod to `dst` (2 s deadline); whether the reply came.
    pub fn ping(&self, dst: IpAddr) -> bool {
        self.pod0().ping(dst)
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
        self.echo.take();
        self.sink.take();
        for ns in self.created.drain(..).rev() {
            if let Err(e) = run("ip", &["netns", "del", &ns], None) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Streams exchanging 1 KiB round trips every 10 ms on a thread until stopped: proves that
/// established connections survive what a test does meanwhile.
pub struct Exchanger {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Vec<u64>>>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Exchanger {
    pub fn start(streams: Vec<(String, EchoStream)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(vec![0u64; streams.len()]));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (stop2, counts2, errors2) = (stop.clone(), counts.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            let mut streams = streams;
            let mut n = 0u32;
            while !stop2.load(Ordering::Relaxed) {
                n = n.wrapping_add(1);
                for (i, (name, s)) in streams.iter_mut().enumerate() {
                    let payload: Vec<u8> = (0..1024u32).map(|k| (k ^ n) as u8).collect();
                    match s.roundtrip(&payload) {
                        Ok(()) => counts2.lock().unwrap()[i] += 1,
                        Err(e) => {
                            errors2.lock().unwrap().push(format!("{name}: {e}"));
                            stop2.store(true, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self {
            stop,
            counts,
            errors,
            thread: Some(thread),
        }
    }

    pub fn counts(&self) -> Vec<u64> {
        self.counts.lock().unwrap().clone()
    }

    pub fn finish(mut self) -> (Vec<u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("exchanger thread");
        }
        (self.counts(), self.errors.lock().unwrap().clone())
    }
}

impl Drop for Exchanger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
