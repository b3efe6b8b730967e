//! Frame builders and an independent checksum verifier (RFC 1071 sums computed from scratch,
//! sharing nothing with the programs' incremental updates).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// One's-complement sum of `data` folded to 16 bits (not inverted).
pub fn sum16(data: &[u8], mut acc: u32) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            v.extend(s.octets());
            v.extend(d.octets());
            v.extend([0, proto]);
            v.extend((len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            v.extend(s.octets());
            v.extend(d.octets());
            v.extend((len as u32).to_be_bytes());
            v.extend([0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    v
}

/// The L4 checksum of `l4` (with its checksum field zeroed) for the given pseudo-header.
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8], csum_off: usize) -> u16 {
    let mut seg = l4.to_vec();
    seg[csum_off] = 0;
    seg[csum_off + 1] = 0;
    let mut all = if proto == ICMP {
        Vec::new()
    } else {
        pseudo(src, dst, proto, l4.len())
    };
    all.extend(seg);
    let c = !sum16(&all, 0);
    if proto == UDP && c == 0 { 0xffff } else { c }
}

pub fn ipv4_checksum(hdr: &[u8]) -> u16 {
    let mut h = hdr.to_vec();
    h[10] = 0;
    h[11] = 0;
    !sum16(&h, 0)
}

/// TCP header (20 bytes + options) and payload, checksum filled.
pub fn tcp(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    flags: u8,
    opts: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(opts.len() % 4, 0);
    let mut t = Vec::new();
    t.extend(sport.to_be_bytes());
    t.extend(dport.to_be_bytes());
    t.extend(1000u32.to_be_bytes());
    t.extend(if flags & ACK != 0 { 2000u32 } else { 0 }.to_be_bytes());
    t.push((((20 + opts.len()) / 4) as u8) << 4);
    t.push(flags);
    t.extend(64240u16.to_be_bytes());
    t.extend([0, 0, 0, 0]);
    t.extend(opts);
    t.extend(payload);
    let c = l4_checksum(src, dst, TCP, &t, 16);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

/// The MSS option (kind 2, length 4).
pub fn mss_opt(mss: u16) -> [u8; 4] {
    let b = mss.to_be_bytes();
    [2, 4, b[0], b[1]]
}

/// UDP header and payload; `zero_csum` leaves the checksum 0 (IPv4 "no checksum").
pub fn udp(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    payload: &[u8],
    zero_csum: bool,
) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend(sport.to_be_bytes());
    u.extend(dport.to_be_bytes());
    u.extend(((8 + payload.len()) as u16).to_be_bytes());
    u.extend([0, 0]);
    u.extend(payload);
    if !zero_csum {
        let c = l4_checksum(src, dst, UDP, &u, 6);
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

/// ICMP (v4) or ICMPv6 message with checksum filled.
pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let proto = if src.is_ipv4() { ICMP } else { ICMPV6 };
    let mut m = vec![ty, code, 0, 0];
    m.extend(rest);
    m.extend(body);
    let c = l4_checksum(src, dst, proto, &m, 2);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// Echo request (or reply) with identifier `id`.
pub fn echo(src: IpAddr, dst: IpAddr, request: bool, id: u16) -> Vec<u8> {
    let ty = match (src.is_ipv4(), request) {
        (true, true) => 8,
        (true, false) => 0,
        (false, true) => 128,
        (false, false) => 129,
    };
    let i = id.to_be_bytes();
    icmp(src, dst, ty, 0, [i[0], i[1], 0, 1], b"veer-echo-payload")
}

/// IPv4 header (20 bytes, DF) + `l4`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend(((20 + l4.len()) as u16).to_be_bytes());
    h.extend([0x12, 0x34, 0x40, 0x00, 64, proto, 0, 0]);
    h.extend(src.octets());
    h.extend(dst.octets());
    let c = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend(l4);
    h
}

/// IPv6 header + `l4` with next header `next`.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend((l4.len() as u16).to_be_bytes());
    h.extend([next, 64]);
    h.extend(src.octets());
    h.extend(dst.octets());
    h.extend(l4);
    h
}

/// IP packet (either family) carrying `l4`.
pub fn ip(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4(s, d, proto, l4),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s, d, proto, l4),
        _ => panic!("mixed families"),
    }
}

/// Ethernet frame around an IP packet (ethertype from the IP version).
pub fn eth(dst: [u8; 6], src: [u8; 6], ip_pkt: &[u8]) -> Vec<u8> {
    let ethertype: u16 = if ip_pkt[0] >> 4 == 4 { 0x0800 } else { 0x86dd };
    eth_raw(dst, src, ethertype, ip_pkt)
}

pub fn eth_raw(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(dst);
    f.extend(src);
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

/// A whole frame: Ethernet + IP + TCP.
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    flags: u8,
    opts: &[u8],
) -> Vec<u8> {
    let proto = TCP;
    let l4 = tcp(src, dst, sport, dport, flags, opts, b"hello");
    eth(DST_MAC, SRC_MAC, &ip(src, dst, proto, &l4))
}

pub fn udp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, zero_csum: bool) -> Vec<u8> {
    let l4 = udp(src, dst, sport, dport, b"hello over udp", zero_csum);
    eth(DST_MAC, SRC_MAC, &ip(src, dst, UDP, &l4))
}

pub fn echo_frame(src: IpAddr, dst: IpAddr, request: bool, id: u16) -> Vec<u8> {
    let l4 = echo(src, dst, request, id);
    let proto = if src.is_ipv4() { ICMP } else { ICMPV6 };
    eth(DST_MAC, SRC_MAC, &ip(src, dst, proto, &l4))
}

/// Default MACs of crafted frames: the source is the harness pod's `eth0`, the destination its
/// `eth1` (so egress frames from `eth0` and ingress frames to `eth1` are recognised; the
/// programs look interfaces up by ifindex and MAC).
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// What [`parse`] extracts from a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub l4_off: usize,
    pub sport: u16,
    pub dport: u16,
}

/// Parses an Ethernet/IP frame without options (IPv4 IHL 5 assumed only when verifying).
pub fn parse(f: &[u8]) -> Parsed {
    let mut dst_mac = [0; 6];
    dst_mac.copy_from_slice(&f[..6]);
    let (src, dst, proto, l4_off) = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            let ihl = usize::from(f[14] & 0xf) * 4;
            let s: [u8; 4] = f[26..30].try_into().unwrap();
            let d: [u8; 4] = f[30..34].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d), f[23], 14 + ihl)
        }
        0x86dd => {
            let s: [u8; 16] = f[22..38].try_into().unwrap();
            let d: [u8; 16] = f[38..54].try_into().unwrap();
            (IpAddr::from(s), IpAddr::from(d), f[20], 54)
        }
        t => panic!("not IP: ethertype {t:#x}"),
    };
    let (sport, dport) = if proto == TCP || proto == UDP {
        (
            u16::from_be_bytes([f[l4_off], f[l4_off + 1]]),
            u16::from_be_bytes([f[l4_off + 2], f[l4_off + 3]]),
        )
    } else {
        (0, 0)
    };
    Parsed {
        dst_mac,
        src,
        dst,
        proto,
        l4_off,
        sport,
        dport,
    }
}

/// Verifies every checksum of a frame from scratch: the IPv4 header, the L4 checksum (TCP,
/// UDP — zero allowed for IPv4 —, ICMP, ICMPv6) and, for ICMP errors, the quoted IPv4 header.
pub fn verify_checksums(f: &[u8]) -> Result<(), String> {
    let p = parse(f);
    if p.src.is_ipv4() {
        let ihl = usize::from(f[14] & 0xf) * 4;
        let c = u16::from_be_bytes([f[24], f[25]]);
        let want = ipv4_checksum(&f[14..14 + ihl]);
        if c != want {
            return Err(format!("IPv4 header checksum {c:#06x}, want {want:#06x}"));
        }
    }
    let l4 = &f[p.l4_off..];
    let csum_off = match p.proto {
        TCP => 16,
        UDP => 6,
        ICMP | ICMPV6 => 2,
        _ => return Ok(()),
    };
    let have = u16::from_be_bytes([l4[csum_off], l4[csum_off + 1]]);
    if !(p.proto == UDP && p.src.is_ipv4() && have == 0) {
        let want = l4_checksum(p.src, p.dst, p.proto, l4, csum_off);
        if have != want {
            return Err(format!(
                "L4 (proto {}) checksum {have:#06x}, want {want:#06x}",
                p.proto
            ));
        }
    }
    if p.proto == ICMP && matches!(l4[0], 3 | 11 | 12) {
        let inner = &l4[8..];
        let ihl = usize::from(inner[0] & 0xf) * 4;
        let c = u16::from_be_bytes([inner[10], inner[11]]);
        let want = ipv4_checksum(&inner[..ihl]);
        if c != want {
            return Err(format!(
                "quoted IPv4 header checksum {c:#06x}, want {want:#06x}"
            ));
        }
    }
    Ok(())
}

/// The MSS option value of a TCP frame whose first option is MSS.
pub fn mss_of(f: &[u8]) -> Option<u16> {
    let p = parse(f);
    let t = &f[p.l4_off..];
    ((t[12] >> 4) >= 6 && t[20] == 2 && t[21] == 4).then(|| u16::from_be_bytes([t[22], t[23]]))
}
