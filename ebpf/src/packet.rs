//! Bounds-checked header parsing. Offsets are from the start of the frame (Ethernet header).

use aya_ebpf::programs::TcContext;
use veer_common::{FAMILY_V4, FAMILY_V6, stats};

pub const ETH_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IP4_OFF: usize = ETH_LEN;
pub const IP6_OFF: usize = ETH_LEN;
pub const IP6_LEN: usize = 40;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the programs need to know about an IP packet.
pub struct Pkt {
    pub family: u8,
    pub proto: u8,
    /// Offset of the IP header's checksum-free address fields: source address offset.
    pub saddr_off: usize,
    /// Offset of the L4 header.
    pub l4_off: usize,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Ports in network order (ICMP echo: identifier, see `veer_common::FlowKey`).
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type for ICMP packets.
    pub icmp_type: u8,
    /// This is an ICMP/ICMPv6 error message (carries an inner packet).
    pub icmp_error: u8,
}

impl Pkt {
    #[inline(always)]
    pub fn addr_len(&self) -> usize {
        if self.family == FAMILY_V4 { 4 } else { 16 }
    }
    #[inline(always)]
    pub fn daddr_off(&self) -> usize {
        self.saddr_off + self.addr_len()
    }
}

/// Pointer to a `T` at `off` if the whole `T` lies inside the linear packet data.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, off: usize) -> Result<*mut T, u32> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(stats::ERR_MALFORMED);
    }
    Ok((start + off) as *mut T)
}

/// Reads a `T` (any alignment) at `off`.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, u32> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at`; unaligned read.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// IPv6 next-header values that are extension headers.
#[inline(always)]
fn is_ipv6_ext(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// Parses Ethernet + IP + the start of L4. `Err` carries the counter to bump for packets that
/// are not ours to touch (`PASS_*`) or that are malformed (`ERR_MALFORMED`).
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Pkt, u32> {
    let eth: [u8; ETH_LEN] = read(ctx, 0).map_err(|_| stats::PASS_NOT_IP)?;
    let proto = be16([eth[12], eth[13]]);
    let mut p = Pkt {
        family: 0,
        proto: 0,
        saddr_off: 0,
        l4_off: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_error: 0,
    };
    if proto == ETH_P_IP {
        crate::maps::count(stats::PKT_IPV4);
        let h: [u8; 20] = read(ctx, IP4_OFF)?;
        if h[0] >> 4 != 4 {
            return Err(stats::ERR_MALFORMED);
        }
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if ihl < 20 {
            return Err(stats::ERR_MALFORMED);
        }
        // More-fragments set or a non-zero offset.
        if be16([h[6], h[7]]) & 0x3fff != 0 {
            return Err(stats::PASS_FRAGMENT);
        }
        p.family = FAMILY_V4;
        p.proto = h[9];
        p.saddr_off = IP4_OFF + 12;
        p.l4_off = IP4_OFF + ihl;
        p.saddr[..4].copy_from_slice(&h[12..16]);
        p.daddr[..4].copy_from_slice(&h[16..20]);
    } else if proto == ETH_P_IPV6 {
        crate::maps::count(stats::PKT_IPV6);
        let h: [u8; IP6_LEN] = read(ctx, IP6_OFF)?;
        if h[0] >> 4 != 6 {
            return Err(stats::ERR_MALFORMED);
        }
        let nh = h[6];
        if nh == 44 {
            return Err(stats::PASS_FRAGMENT);
        }
        if is_ipv6_ext(nh) {
            return Err(stats::PASS_IPV6_EXT);
        }
        p.family = FAMILY_V6;
        p.proto = nh;
        p.saddr_off = IP6_OFF + 8;
        p.l4_off = IP6_OFF + IP6_LEN;
        p.saddr.copy_from_slice(&h[8..24]);
        p.daddr.copy_from_slice(&h[24..40]);
    } else {
        return Err(stats::PASS_NOT_IP);
    }

    match p.proto {
        IPPROTO_TCP => {
            let t: [u8; 20] = read(ctx, p.l4_off)?;
            if (t[12] >> 4) < 5 {
                return Err(stats::ERR_MALFORMED);
            }
            p.sport = u16::from_ne_bytes([t[0], t[1]]);
            p.dport = u16::from_ne_bytes([t[2], t[3]]);
            p.tcp_flags = t[13];
        }
        IPPROTO_UDP => {
            let u: [u8; 8] = read(ctx, p.l4_off)?;
            p.sport = u16::from_ne_bytes([u[0], u[1]]);
            p.dport = u16::from_ne_bytes([u[2], u[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if (p.proto == IPPROTO_ICMP) != (p.family == FAMILY_V4) {
                return Err(stats::PASS_OTHER_PROTO);
            }
            let c: [u8; 8] = read(ctx, p.l4_off)?;
            p.icmp_type = c[0];
            let id = u16::from_ne_bytes([c[4], c[5]]);
            match (p.family, c[0]) {
                // Echo request: identifier is the "source port".
                (FAMILY_V4, 8) | (FAMILY_V6, 128) => p.sport = id,
                // Echo reply: identifier is the "destination port".
                (FAMILY_V4, 0) | (FAMILY_V6, 129) => p.dport = id,
                // Destination unreachable, time exceeded, parameter problem; ICMPv6 also
                // packet too big.
                (FAMILY_V4, 3 | 11 | 12) | (FAMILY_V6, 1..=4) => p.icmp_error = 1,
                _ => return Err(stats::PASS_OTHER_PROTO),
            }
        }
        _ => return Err(stats::PASS_OTHER_PROTO),
    }
    Ok(p)
}

/// The inner packet of an ICMP error, as needed to find the flow it is about.
pub struct Inner {
    /// Offset of the inner source address.
    pub saddr_off: usize,
    /// Offset of the inner IPv4 header checksum (IPv4 only).
    pub csum_off: usize,
    pub proto: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// Parses the packet quoted by an ICMP error (IP header + first 8 bytes of L4).
#[inline(always)]
pub fn parse_inner(ctx: &TcContext, p: &Pkt) -> Result<Inner, u32> {
    let ip_off = p.l4_off + 8;
    let mut i = Inner {
        saddr_off: 0,
        csum_off: 0,
        proto: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
    };
    let l4;
    if p.family == FAMILY_V4 {
        let h: [u8; 20] = read(ctx, ip_off)?;
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if h[0] >> 4 != 4 || ihl < 20 {
            return Err(stats::ERR_MALFORMED);
        }
        i.proto = h[9];
        i.saddr_off = ip_off + 12;
        i.csum_off = ip_off + 10;
        i.saddr[..4].copy_from_slice(&h[12..16]);
        i.daddr[..4].copy_from_slice(&h[16..20]);
        l4 = ip_off + ihl;
    } else {
        let h: [u8; IP6_LEN] = read(ctx, ip_off)?;
        if h[0] >> 4 != 6 {
            return Err(stats::ERR_MALFORMED);
        }
        i.proto = h[6];
        i.saddr_off = ip_off + 8;
        i.saddr.copy_from_slice(&h[8..24]);
        i.daddr.copy_from_slice(&h[24..40]);
        l4 = ip_off + IP6_LEN;
    }
    let b: [u8; 8] = read(ctx, l4)?;
    match i.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            i.sport = u16::from_ne_bytes([b[0], b[1]]);
            i.dport = u16::from_ne_bytes([b[2], b[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Only errors about echo requests are ours (the pod sent them).
            match b[0] {
                8 | 128 => i.sport = u16::from_ne_bytes([b[4], b[5]]),
                _ => return Err(stats::PASS_INGRESS),
            }
        }
        _ => return Err(stats::PASS_INGRESS),
    }
    Ok(i)
}
