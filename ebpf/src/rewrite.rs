//! Packet rewrites. Every helper failure becomes `ERR_REWRITE`, which drops the packet: a packet
//! whose address was changed but whose checksum was not must never leave.
//!
//! Checksums are updated incrementally with the kernel helpers, which handle
//! `CHECKSUM_PARTIAL` (veth egress: the L4 field holds only the pseudo-header sum) and
//! `CHECKSUM_COMPLETE` (`BPF_F_PSEUDO_HDR` keeps `skb->csum` right); `BPF_F_MARK_MANGLED_0`
//! leaves an IPv4 UDP zero checksum ("none") alone and never produces one.

use aya_ebpf::{
    bindings::{
        BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, bpf_redir_neigh,
        bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::generated::{bpf_csum_diff, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use veer_common::{FAMILY_V4, stats};

use crate::packet::{IP4_OFF, IPPROTO_TCP, IPPROTO_UDP, Pkt, TCP_SYN, read};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[inline(always)]
fn ok(r: Result<(), i64>) -> Result<(), u32> {
    r.map_err(|_| stats::ERR_REWRITE)
}

/// One's-complement difference of two 16-byte addresses, for IPv6 checksum updates.
#[inline(always)]
fn diff16(old: &[u8; 16], new: &[u8; 16]) -> Result<u64, u32> {
    let mut from = *old;
    let mut to = *new;
    // SAFETY: both buffers are 16 bytes on the stack, a multiple of 4 as the helper needs.
    let d = unsafe {
        bpf_csum_diff(
            from.as_mut_ptr() as *mut u32,
            16,
            to.as_mut_ptr() as *mut u32,
            16,
            0,
        )
    };
    if d < 0 {
        return Err(stats::ERR_REWRITE);
    }
    Ok(d as u64)
}

/// Offset of the L4 checksum field and the flags for `bpf_l4_csum_replace`, for an address
/// change of a packet of protocol `proto`. `None`: the L4 checksum does not cover addresses
/// (ICMPv4).
#[inline(always)]
fn l4_csum(p: &Pkt) -> Option<(usize, u64)> {
    let pseudo = BPF_F_PSEUDO_HDR as u64;
    match p.proto {
        IPPROTO_TCP => Some((p.l4_off + 16, pseudo)),
        IPPROTO_UDP => Some((p.l4_off + 6, pseudo | BPF_F_MARK_MANGLED_0 as u64)),
        // ICMPv6 checksums cover the pseudo-header; ICMPv4 ones do not.
        _ if p.family != FAMILY_V4 => Some((p.l4_off + 2, pseudo)),
        _ => None,
    }
}

/// Replaces the address at `off` (the packet's source or destination) with `new`, fixing the
/// IPv4 header checksum and the L4 checksum.
#[inline(always)]
pub fn set_addr(
    ctx: &TcContext,
    p: &Pkt,
    off: usize,
    old: &[u8; 16],
    new: &[u8; 16],
) -> Result<(), u32> {
    if p.family == FAMILY_V4 {
        let o = u32::from_ne_bytes([old[0], old[1], old[2], old[3]]) as u64;
        let n = u32::from_ne_bytes([new[0], new[1], new[2], new[3]]) as u64;
        if let Some((csum_off, flags)) = l4_csum(p) {
            ok(ctx.l4_csum_replace(csum_off, o, n, flags | 4))?;
        }
        ok(ctx.l3_csum_replace(IP4_OFF + 10, o, n, 4))?;
        let b = [new[0], new[1], new[2], new[3]];
        ok(ctx.store(off, &b, 0))
    } else {
        let d = diff16(old, new)?;
        if let Some((csum_off, flags)) = l4_csum(p) {
            ok(ctx.l4_csum_replace(csum_off, 0, d, flags))?;
        }
        ok(ctx.store(off, new, 0))
    }
}

/// Rewrites the source address of the packet quoted in an ICMP error (`inner_saddr_off`),
/// keeping the inner IPv4 header checksum and the outer ICMPv6 checksum right. (For ICMPv4
/// the inner header's sum is unchanged once its own checksum is fixed, so the outer ICMP
/// checksum needs no update.) The inner L4 checksum is left as quoted; receivers do not
/// verify it.
#[inline(always)]
pub fn set_inner_saddr(
    ctx: &TcContext,
    p: &Pkt,
    inner_saddr_off: usize,
    inner_csum_off: usize,
    old: &[u8; 16],
    new: &[u8; 16],
) -> Result<(), u32> {
    if p.family == FAMILY_V4 {
        let o = u32::from_ne_bytes([old[0], old[1], old[2], old[3]]) as u64;
        let n = u32::from_ne_bytes([new[0], new[1], new[2], new[3]]) as u64;
        ok(ctx.l3_csum_replace(inner_csum_off, o, n, 4))?;
        let b = [new[0], new[1], new[2], new[3]];
        ok(ctx.store(inner_saddr_off, &b, 0))
    } else {
        let d = diff16(old, new)?;
        ok(ctx.l4_csum_replace(p.l4_off + 2, 0, d, 0))?;
        ok(ctx.store(inner_saddr_off, new, 0))
    }
}

/// Lowers the MSS option of a SYN or SYN-ACK to `mss` when it is larger. Linux (and every
/// common stack) sends MSS as the first option; a SYN with MSS elsewhere is left alone.
/// Returns whether the option was changed.
#[inline(always)]
pub fn clamp_mss(ctx: &TcContext, p: &Pkt, mss: u16) -> Result<bool, u32> {
    if mss == 0 || p.proto != IPPROTO_TCP || p.tcp_flags & TCP_SYN == 0 {
        return Ok(false);
    }
    let doff: u8 = read(ctx, p.l4_off + 12)?;
    if (doff >> 4) < 6 {
        return Ok(false);
    }
    let opt: [u8; 4] = read(ctx, p.l4_off + 20)?;
    if opt[0] != 2 || opt[1] != 4 {
        return Ok(false);
    }
    let cur = u16::from_be_bytes([opt[2], opt[3]]);
    if cur <= mss {
        return Ok(false);
    }
    let old = u16::from_ne_bytes([opt[2], opt[3]]) as u64;
    let new_be = mss.to_be_bytes();
    let new = u16::from_ne_bytes(new_be) as u64;
    ok(ctx.l4_csum_replace(p.l4_off + 16, old, new, 2))?;
    ok(ctx.store(p.l4_off + 22, &new_be, 0))?;
    crate::maps::count(stats::MSS_CLAMPED);
    Ok(true)
}

/// Sends the packet out of `ifindex` (in this namespace) with L2 resolved for `nexthop` in this
/// namespace's neighbour table, so source and destination MACs are those of a native packet.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32, family: u8, nexthop: &[u8; 16]) -> i32 {
    let mut nh = bpf_redir_neigh {
        nh_family: AF_INET6,
        __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: [0; 4] },
    };
    if family == FAMILY_V4 {
        nh.nh_family = AF_INET;
        nh.__bindgen_anon_1.ipv4_nh =
            u32::from_ne_bytes([nexthop[0], nexthop[1], nexthop[2], nexthop[3]]);
    } else {
        let mut w = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            w[i] = u32::from_ne_bytes([
                nexthop[i * 4],
                nexthop[i * 4 + 1],
                nexthop[i * 4 + 2],
                nexthop[i * 4 + 3],
            ]);
            i += 1;
        }
        nh.__bindgen_anon_1.ipv6_nh = w;
    }
    // SAFETY: `nh` lives on the stack for the call; its size is passed.
    unsafe { bpf_redirect_neigh(ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0) as i32 }
}

/// Sets the destination MAC to `mac` and re-delivers the packet on `ifindex`'s ingress, as if it
/// had arrived there (the MAC must be the device's own or the stack drops it as OTHERHOST).
#[inline(always)]
pub fn redirect_ingress(ctx: &TcContext, ifindex: u32, mac: &[u8; 6]) -> Result<i32, u32> {
    ok(ctx.store(0, mac, 0))?;
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, BPF_F_INGRESS as u64) } as i32)
}
