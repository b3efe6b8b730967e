//! The steering decision (egress) and the reverse translation (ingress).

use aya_ebpf::{
    bindings::{__sk_buff, BPF_ANY, BPF_NOEXIST, TC_ACT_SHOT},
    helpers::generated::bpf_ktime_get_coarse_ns,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use veer_common::{
    AddrKey, AddrOwner, Config, DIR_IN, DIR_OUT, FAMILY_V4, FLOW_NATIVE, FLOW_REVNAT, FLOW_STEER,
    FlowKey, FlowValue, IFACE_F_GW4, IFACE_F_GW6, IFACE_F_V4, IFACE_F_V6, IfaceInfo, IfaceKey,
    MAX_SLOTS, RULE_F_TOMBSTONE, RULE_F_VIA, Rule4Key, Rule6Key, RuleValue, ST_CLOSING, ST_EST,
    ST_NONE, ST_SYN, is_never_steered, stats,
};

use crate::{
    Verdict,
    maps::{
        VEER_ADDRS_V1, VEER_CONFIG_V1, VEER_FLOWS_V1, VEER_IFACES_V1, VEER_RULES4_V1,
        VEER_RULES6_V1, count, count_rule,
    },
    packet::{
        ETH_LEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Pkt, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN, parse, parse_inner, read,
    },
    rewrite::{clamp_mss, redirect_ingress, redirect_neigh, set_addr, set_inner_saddr},
};

const NS_PER_S: u64 = 1_000_000_000;

#[inline(always)]
fn skb(ctx: &TcContext) -> *mut __sk_buff {
    ctx.skb.skb
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The longest-prefix rule for `addr` in `ruleset`.
#[inline(always)]
fn lookup_rule(ruleset: u32, family: u8, addr: &[u8; 16]) -> Option<&'static RuleValue> {
    if family == FAMILY_V4 {
        let key = Key::new(
            Rule4Key::HOST_PREFIX_LEN,
            Rule4Key::new(ruleset, [addr[0], addr[1], addr[2], addr[3]]),
        );
        VEER_RULES4_V1.get(&key)
    } else {
        let key = Key::new(Rule6Key::HOST_PREFIX_LEN, Rule6Key::new(ruleset, *addr));
        VEER_RULES6_V1.get(&key)
    }
}

#[inline(always)]
fn iface(ifindex: u32, mac: [u8; 6]) -> Option<&'static IfaceInfo> {
    let key = IfaceKey::new(ifindex, mac);
    // SAFETY: entries are only replaced whole by the agent; a concurrent update can at worst
    // show the old or the new value of a field, never an out-of-bounds access.
    unsafe { VEER_IFACES_V1.get(&key) }
}

#[inline(always)]
fn flow_key(p: &Pkt, dir: u8) -> FlowKey {
    FlowKey::new(p.family, p.proto, p.saddr, p.daddr, p.sport, p.dport, dir)
}

/// Whether a flow entry has idled out, by [`Config::timeout_s`] (each zero field of the
/// configuration entry is that field's default). Reads only the one timeout field it needs, in
/// place, without copying the entry.
#[inline(always)]
fn expired(f: &FlowValue, now: u64) -> bool {
    if now <= f.last_seen_ns {
        return false;
    }
    let timeout_s = match VEER_CONFIG_V1.get(0) {
        Some(c) => c.timeout_s(f.state),
        None => Config::default_timeout_s(f.state),
    };
    now - f.last_seen_ns > timeout_s as u64 * NS_PER_S
}

/// Records a packet of the flow: TCP state and, at most once a second, the last-seen time
/// (so busy flows do not write a shared cache line per packet). Returns whether the entry was
/// written (a state change or a last-seen refresh).
#[inline(always)]
fn touch(f: &mut FlowValue, now: u64, tcp_flags: u8) -> bool {
    if f.state != ST_NONE {
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            if f.state != ST_CLOSING {
                f.state = ST_CLOSING;
                f.last_seen_ns = now;
                return true;
            }
            return false;
        }
        if f.state == ST_SYN && tcp_flags & TCP_ACK != 0 {
            f.state = ST_EST;
            f.last_seen_ns = now;
            return true;
        }
    }
    if now > f.last_seen_ns + NS_PER_S {
        f.last_seen_ns = now;
        return true;
    }
    false
}

#[inline(always)]
fn frame_len(ctx: &TcContext) -> u32 {
    ctx.len()
}

/// The "drop too big" event, out of line: `steer` is inlined twice into the egress program,
/// whose frame leaves little of the 512-byte stack, and an event inlined there costs more of it
/// than this call.
#[cfg(feature = "debug-log")]
#[inline(never)]
fn log_too_big(ctx: &TcContext, len: u32, f: &FlowValue) {
    debug_event!(
        ctx,
        "drop too big: frame {} bytes, rule {} target ifindex {} mtu {}",
        len,
        f.rule_id,
        f.ifindex,
        f.mtu
    );
}

/// Translates the source of an outgoing packet of a steered flow and redirects it.
#[inline(always)]
fn steer(ctx: &TcContext, p: &Pkt, f: &FlowValue, reason: u32) -> Result<Verdict, u32> {
    let len = frame_len(ctx);
    // SAFETY: reading a field of the program's own context.
    let gso_segs = unsafe { (*skb(ctx)).gso_segs };
    if p.proto != IPPROTO_TCP && gso_segs <= 1 && len > f.mtu as u32 + ETH_LEN as u32 {
        #[cfg(feature = "debug-log")]
        log_too_big(ctx, len, f);
        return Ok(Verdict {
            action: TC_ACT_SHOT,
            reason: stats::DROP_TOO_BIG,
        });
    }
    clamp_mss(ctx, p, f.mss)?;
    set_addr(ctx, p, p.saddr_off, &p.saddr, &f.addr)?;
    count_rule(f.rule_id, len);
    Ok(Verdict {
        action: redirect_neigh(f.ifindex, p.family, &f.nexthop),
        reason,
    })
}

/// The destination and source MAC addresses of the frame.
#[inline(always)]
fn macs(ctx: &TcContext) -> Result<([u8; 6], [u8; 6]), u32> {
    let m: [u8; 12] = read(ctx, 0)?;
    Ok((
        [m[0], m[1], m[2], m[3], m[4], m[5]],
        [m[6], m[7], m[8], m[9], m[10], m[11]],
    ))
}

/// Whether the packet's source is the interface's own address of its family.
#[inline(always)]
fn is_own_source(me: &IfaceInfo, p: &Pkt) -> bool {
    if p.family == FAMILY_V4 {
        p.saddr[..4] == me.addr4
    } else {
        p.saddr == me.addr6
    }
}

/// The interface owning the packet's source per `o`, when it is another interface of the pod
/// `me` belongs to and its entry still holds that address.
#[inline(always)]
fn sibling(p: &Pkt, me: &IfaceInfo, ifindex: u32, o: &AddrOwner) -> Option<&'static IfaceInfo> {
    if me.netns_cookie == 0 || o.netns_cookie != me.netns_cookie {
        return None;
    }
    let y = iface(o.iface.ifindex, o.iface.mac)?;
    if y.netns_cookie != me.netns_cookie || y.ifindex == ifindex {
        return None;
    }
    let holds = if p.family == FAMILY_V4 {
        y.flags & IFACE_F_V4 != 0 && p.saddr[..4] == y.addr4
    } else {
        y.flags & IFACE_F_V6 != 0 && p.saddr == y.addr6
    };
    holds.then_some(y)
}

/// [`source_egress`]: the source is not a sibling's address, today's logic decides.
const SRC_NONE: u64 = 0;

/// A verdict in one register (the return of an out-of-line function): bit 63 set, action in
/// bits 32..62, reason in the low half. [`pack_err`] carries an error instead (bit 62).
#[inline(always)]
fn pack(action: i32, reason: u32) -> u64 {
    ((action as u32 as u64 & 0x3fff_ffff) << 32) | reason as u64 | 1 << 63
}

/// An error (the `Err` of a `Result<Verdict, u32>`) in one register; see [`pack`].
#[inline(always)]
fn pack_err(reason: u32) -> u64 {
    reason as u64 | 1 << 63 | 1 << 62
}

#[inline(always)]
fn unpack(v: u64) -> Result<Verdict, u32> {
    if v & 1 << 62 != 0 {
        return Err(v as u32);
    }
    Ok(Verdict {
        action: ((v >> 32) & 0x3fff_ffff) as i32,
        reason: v as u32,
    })
}

/// Source-based egress. Returns a packed verdict when the source belongs to another managed
/// interface Y of the same pod (checked by the namespace cookie of both `VEER_IFACES_V1`
/// entries, which the agent writes from its own view of the pod, and by Y's entry still holding
/// that address): the packet leaves by Y untranslated, to the destination when it is on-link on
/// Y (inside the address's prefix), else to Y's gateway, else to the destination. [`SRC_NONE`]
/// when it is not a sibling's address (unknown, another pod's, stale, or X's own): today's
/// logic decides.
///
/// Returns one register (not a `Result<Option<Verdict>>`) so it can be moved out of line if the
/// egress frame ever needs it; inlined, the frame is 480 bytes (production) / 472 (debug).
#[inline(always)]
fn source_egress(ctx: &TcContext, p: &Pkt, me: &IfaceInfo, ifindex: u32) -> u64 {
    let key = AddrKey::new(p.family, p.saddr);
    // SAFETY: read-only look-up; entries are only replaced whole by the agent.
    let Some(o) = (unsafe { VEER_ADDRS_V1.get(&key) }) else {
        return SRC_NONE;
    };
    let Some(y) = sibling(p, me, ifindex, o) else {
        count(stats::SRC_FOREIGN);
        return SRC_NONE;
    };
    let mut nexthop = p.daddr;
    let hdr;
    if p.family == FAMILY_V4 {
        if y.flags & IFACE_F_GW4 != 0 && !o.on_link(p.family, &p.saddr, &p.daddr) {
            nexthop = [0; 16];
            nexthop[..4].copy_from_slice(&y.gw4);
        }
        hdr = 40;
    } else {
        if y.flags & IFACE_F_GW6 != 0 && !o.on_link(p.family, &p.saddr, &p.daddr) {
            nexthop = y.gw6;
        }
        hdr = 60;
    }
    // As for steered flows: a SYN or SYN-ACK advertises at most what Y's MTU carries, and a
    // non-TCP packet Y cannot carry is dropped (counted) rather than lost silently at Y's peer.
    let mtu = if y.mtu > 0xffff { 0xffff } else { y.mtu as u16 };
    let len = frame_len(ctx);
    // SAFETY: reading a field of the program's own context.
    let gso_segs = unsafe { (*skb(ctx)).gso_segs };
    if p.proto != IPPROTO_TCP && gso_segs <= 1 && len > mtu as u32 + ETH_LEN as u32 {
        return pack(TC_ACT_SHOT, stats::DROP_TOO_BIG);
    }
    if mtu > hdr
        && let Err(e) = clamp_mss(ctx, p, mtu - hdr)
    {
        return pack_err(e);
    }
    pack(
        redirect_neigh(y.ifindex, p.family, &nexthop),
        stats::SRC_EGRESS,
    )
}

pub fn try_egress(ctx: &TcContext) -> Result<Verdict, u32> {
    let p = parse(ctx)?;
    let (dst_mac, src_mac) = macs(ctx)?;
    if dst_mac[0] & 1 != 0 || is_never_steered(p.family, &p.daddr) {
        return Ok(Verdict::pass(stats::PASS_MCAST));
    }
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*skb(ctx)).ifindex };
    // A frame leaving a pod interface carries that interface's MAC as its source.
    let Some(me) = iface(ifindex, src_mac) else {
        return Ok(Verdict::pass(stats::PASS_UNMANAGED));
    };
    // Source-based egress, before any rule or flow logic: a packet whose source is another
    // interface's address of this pod (a reply of a connection that came in there, say) leaves
    // by that interface. The common case (our own address) costs one compare.
    if !is_own_source(me, &p) {
        let v = source_egress(ctx, &p, me, ifindex);
        if v != SRC_NONE {
            return unpack(v);
        }
    }
    // The pod answering a ping, or reporting an error: never steered.
    let is_icmp = p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6;
    if is_icmp && p.sport == 0 {
        return Ok(Verdict::pass(stats::PASS_OTHER_PROTO));
    }
    // No trie entry covers the destination: nothing of ours can apply (every pinned flow's
    // destination stays covered by its rule, or by the rule's tombstone, while the flow lives),
    // so the common case costs two lookups and no flow-table access.
    let Some(rule) = lookup_rule(me.ruleset, p.family, &p.daddr) else {
        return Ok(Verdict::pass(stats::PASS_NO_RULE));
    };

    let now = now_ns();
    let key = flow_key(&p, DIR_OUT);

    if let Some(fp) = VEER_FLOWS_V1.get_ptr_mut(&key) {
        // SAFETY: LRU map value; concurrent writers only store whole fields.
        let f = unsafe { &mut *fp };
        if !expired(f, now) {
            let refreshed = touch(f, now, p.tcp_flags);
            if f.kind == FLOW_STEER {
                // Whenever the entry is written anyway (at most once a second per flow, and on
                // TCP state changes), check that its reply entry is still there: the pair is
                // created and deleted together, so a missing half was evicted by the LRU. It is
                // counted and restored (replies are translated again), so counted once.
                let rev_key = key.reverse(f.addr, DIR_IN);
                // SAFETY: read-only presence check.
                if refreshed && unsafe { VEER_FLOWS_V1.get(&rev_key) }.is_none() {
                    count(stats::FLOW_HALF_EVICTED);
                    let rev = FlowValue {
                        kind: FLOW_REVNAT,
                        state: f.state,
                        _pad0: [0; 2],
                        rule_id: f.rule_id,
                        ifindex,
                        mss: f.mss,
                        mtu: 0,
                        addr: p.saddr,
                        nexthop: [0; 16],
                        mac: me.mac,
                        _pad2: [0; 2],
                        last_seen_ns: now,
                        created_ns: f.created_ns,
                    };
                    let _ = VEER_FLOWS_V1.insert(&rev_key, &rev, BPF_NOEXIST as u64);
                }
                return steer(ctx, &p, f, stats::STEER_PINNED);
            }
            return Ok(Verdict::pass(stats::PASS_PINNED_NATIVE));
        }
        debug_event!(
            ctx,
            "flow expired (egress): kind {} state {} rule {} proto {}",
            f.kind,
            f.state,
            f.rule_id,
            p.proto
        );
        if f.kind == FLOW_STEER {
            let _ = VEER_FLOWS_V1.remove(&key.reverse(f.addr, DIR_IN));
        }
        let _ = VEER_FLOWS_V1.remove(&key);
        count(stats::FLOW_EXPIRED);
    }

    if rule.flags & RULE_F_TOMBSTONE != 0 {
        return Ok(Verdict::pass(stats::PASS_NO_RULE));
    }
    let slot = rule.slot as usize;
    if slot as u32 == me.slot {
        return Ok(Verdict::pass(stats::PASS_RULE_LOCAL));
    }
    // Only connections that start now are moved: a TCP segment other than a SYN without a
    // pinned flow belongs to a connection that predates the rule (or is a reply of an inbound
    // connection) and keeps its path.
    if p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Ok(Verdict::pass(stats::PASS_TCP_UNPINNED));
    }
    if slot >= MAX_SLOTS {
        return Ok(Verdict::pass(stats::PASS_NO_TARGET));
    }
    let tif = me.slots[slot];
    if tif == 0 {
        return Ok(Verdict::pass(stats::PASS_NO_TARGET));
    }
    let Some(t) = iface(tif, me.slot_macs[slot]) else {
        return Ok(Verdict::pass(stats::PASS_NO_TARGET));
    };

    let mut new_src = [0u8; 16];
    let mut nexthop = p.daddr;
    let hdr;
    if p.family == FAMILY_V4 {
        if t.flags & IFACE_F_V4 == 0 {
            return Ok(Verdict::pass(stats::PASS_TARGET_NO_ADDR));
        }
        new_src[..4].copy_from_slice(&t.addr4);
        if rule.flags & RULE_F_VIA != 0 {
            nexthop = rule.via;
        } else if t.flags & IFACE_F_GW4 != 0 {
            nexthop = [0; 16];
            nexthop[..4].copy_from_slice(&t.gw4);
        }
        hdr = 40;
    } else {
        if t.flags & IFACE_F_V6 == 0 {
            return Ok(Verdict::pass(stats::PASS_TARGET_NO_ADDR));
        }
        new_src = t.addr6;
        if rule.flags & RULE_F_VIA != 0 {
            nexthop = rule.via;
        } else if t.flags & IFACE_F_GW6 != 0 {
            nexthop = t.gw6;
        }
        hdr = 60;
    }
    let mtu = if t.mtu > 0xffff { 0xffff } else { t.mtu as u16 };
    let mss = if p.proto == IPPROTO_TCP && mtu > hdr {
        mtu - hdr
    } else {
        0
    };
    let state = if p.proto == IPPROTO_TCP {
        ST_SYN
    } else {
        ST_NONE
    };

    // Replies arrive on the target with the translated tuple. If that tuple already belongs to
    // someone else (a native socket on the target's address, or another translated flow), the
    // replies could not be told apart: do not steer this flow.
    let rev_key = key.reverse(new_src, DIR_IN);
    // One value on the stack, filled as the reverse entry first, then turned into the
    // outgoing one (the BPF stack is 512 bytes).
    let mut v = FlowValue {
        kind: FLOW_REVNAT,
        state,
        _pad0: [0; 2],
        rule_id: rule.rule_id,
        ifindex,
        mss,
        mtu: 0,
        addr: p.saddr,
        nexthop: [0; 16],
        mac: me.mac,
        _pad2: [0; 2],
        last_seen_ns: now,
        created_ns: now,
    };
    if VEER_FLOWS_V1
        .insert(&rev_key, &v, BPF_NOEXIST as u64)
        .is_err()
    {
        // SAFETY: read-only look at the entry that is in the way.
        let mine = match unsafe { VEER_FLOWS_V1.get(&rev_key) } {
            Some(old) => old.kind == FLOW_REVNAT && old.addr == p.saddr && old.ifindex == ifindex,
            None => false,
        };
        if !mine {
            debug_event!(
                ctx,
                "collision: rule {} target ifindex {}: translated tuple in use, not steered",
                rule.rule_id,
                tif
            );
            return Ok(Verdict::pass(stats::COLLISION));
        }
        // A retransmitted SYN of our own flow whose outgoing entry was lost (evicted: the
        // pair is only ever deleted together): take it over.
        count(stats::FLOW_HALF_EVICTED);
        if VEER_FLOWS_V1.insert(&rev_key, &v, BPF_ANY as u64).is_err() {
            return Err(stats::ERR_FLOW_INSERT);
        }
    }
    v.kind = FLOW_STEER;
    v.ifindex = tif;
    v.mtu = mtu;
    v.addr = new_src;
    v.nexthop = nexthop;
    v.mac = [0; 6];
    if VEER_FLOWS_V1.insert(&key, &v, BPF_ANY as u64).is_err() {
        let _ = VEER_FLOWS_V1.remove(&rev_key);
        return Err(stats::ERR_FLOW_INSERT);
    }
    debug_event!(
        ctx,
        "new steered flow: rule {} ifindex {} -> {} proto {} dport {}",
        rule.rule_id,
        ifindex,
        tif,
        p.proto,
        u16::from_be(p.dport)
    );
    steer(ctx, &p, &v, stats::STEER_NEW)
}

pub fn try_ingress(ctx: &TcContext) -> Result<Verdict, u32> {
    let p = parse(ctx)?;
    let (dst_mac, _) = macs(ctx)?;
    if dst_mac[0] & 1 != 0 || is_never_steered(p.family, &p.daddr) {
        return Ok(Verdict::pass(stats::PASS_MCAST));
    }
    if p.icmp_error != 0 {
        return icmp_error(ctx, &p);
    }
    let now = now_ns();
    let key = flow_key(&p, DIR_IN);
    if let Some(fp) = VEER_FLOWS_V1.get_ptr_mut(&key) {
        // SAFETY: as in `try_egress`.
        let f = unsafe { &mut *fp };
        if !expired(f, now) {
            let _ = touch(f, now, p.tcp_flags);
            if f.kind != FLOW_REVNAT {
                return Ok(Verdict::pass(stats::PASS_PINNED_NATIVE));
            }
            clamp_mss(ctx, &p, f.mss)?;
            set_addr(ctx, &p, p.daddr_off(), &p.daddr, &f.addr)?;
            let action = redirect_ingress(ctx, f.ifindex, &f.mac)?;
            return Ok(Verdict {
                action,
                reason: stats::REVNAT,
            });
        }
        debug_event!(
            ctx,
            "flow expired (ingress): kind {} state {} proto {}",
            f.kind,
            f.state,
            p.proto
        );
        let _ = VEER_FLOWS_V1.remove(&key);
        count(stats::FLOW_EXPIRED);
    }

    // A UDP flow that starts from outside: its replies must leave where it came in even when a
    // rule covers the peer, so pin the reply direction as native. (TCP needs no entry: replies
    // of inbound connections are never SYNs, which alone start steering.)
    if p.proto == IPPROTO_UDP {
        let out_key = key.reverse(p.saddr, DIR_OUT);
        // SAFETY: read-only presence check.
        if unsafe { VEER_FLOWS_V1.get(&out_key) }.is_none() {
            // SAFETY: reading a field of the program's own context.
            let ifindex = unsafe { (*skb(ctx)).ifindex };
            // A unicast frame arriving on a pod interface carries its MAC as destination.
            if let Some(me) = iface(ifindex, dst_mac)
                && let Some(rule) = lookup_rule(me.ruleset, p.family, &p.saddr)
                && rule.slot as u32 != me.slot
            {
                let native = FlowValue {
                    kind: FLOW_NATIVE,
                    last_seen_ns: now,
                    created_ns: now,
                    ifindex,
                    ..FlowValue::default()
                };
                if VEER_FLOWS_V1
                    .insert(&out_key, &native, BPF_NOEXIST as u64)
                    .is_ok()
                {
                    count(stats::PINNED_INBOUND);
                }
            }
        }
    }
    Ok(Verdict::pass(stats::PASS_INGRESS))
}

/// An ICMP/ICMPv6 error about a packet we translated: restore the outer destination and the
/// quoted source so the original socket learns of it (PMTU discovery included).
#[inline(always)]
fn icmp_error(ctx: &TcContext, p: &Pkt) -> Result<Verdict, u32> {
    // Quoted headers may sit outside the linear area; 8 + 40 + 8 covers both families.
    let _ = ctx.pull_data((p.l4_off + 56) as u32);
    let i = parse_inner(ctx, p)?;
    if i.saddr != p.daddr {
        return Ok(Verdict::pass(stats::PASS_INGRESS));
    }
    // The quoted packet is one we sent (translated); its flow's reply key is its reverse.
    let key = FlowKey::new(
        p.family, i.proto, i.saddr, i.daddr, i.sport, i.dport, DIR_OUT,
    )
    .reverse(i.saddr, DIR_IN);
    // SAFETY: read-only look-up; the value is copied.
    let Some(f) = (unsafe { VEER_FLOWS_V1.get(&key) }) else {
        return Ok(Verdict::pass(stats::PASS_INGRESS));
    };
    if f.kind != FLOW_REVNAT {
        return Ok(Verdict::pass(stats::PASS_INGRESS));
    }
    set_addr(ctx, p, p.daddr_off(), &p.daddr, &f.addr)?;
    set_inner_saddr(ctx, p, i.saddr_off, i.csum_off, &i.saddr, &f.addr)?;
    let action = redirect_ingress(ctx, f.ifindex, &f.mac)?;
    debug_event!(
        ctx,
        "icmp error reverse-translated: quoted proto {} -> ifindex {}",
        i.proto,
        f.ifindex
    );
    Ok(Verdict {
        action,
        reason: stats::REVNAT_ICMP_ERR,
    })
}
