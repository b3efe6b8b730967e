//! Map key and value layouts. See the crate docs for the rules these types follow.
//!
//! Byte order: fields named `*addr*`, `gw*`, `via`, `nexthop`, `sport`, `dport` and
//! `ruleset_be` are in network byte order (big-endian) exactly as on the wire; every other
//! integer is in host byte order.

/// Number of interface slots. A slot is a node-wide number the agent gives to each interface
/// *name* used by a rule (`eth0` → 0, `eth1` → 1, `net1` → 2, …); rules name slots, pods map
/// slots to their own ifindexes. At most this many distinct `dev` names can be used by rules.
pub const MAX_SLOTS: usize = 8;

/// Address families as stored in [`FlowKey::family`].
pub const FAMILY_V4: u8 = 4;
/// See [`FAMILY_V4`].
pub const FAMILY_V6: u8 = 6;

/// [`RuleValue::flags`]: `via` holds an explicit next hop.
pub const RULE_F_VIA: u16 = 1;
/// [`RuleValue::flags`]: a removed rule kept only so the flows it pinned are still found (the
/// egress program looks at the flow table only for destinations some entry covers). Steers no
/// new flow; the agent deletes it once no flow pinned by its rule is left.
pub const RULE_F_TOMBSTONE: u16 = 2;

/// Data part of an IPv4 rule key. The trie key is `{ prefix_len: u32 (host order), data }`;
/// `prefix_len` counts the 32 ruleset bits too, so `10.0.0.0/8` in ruleset 3 has
/// `prefix_len = 40`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rule4Key {
    /// Ruleset id, network byte order (so the trie matches it bit by bit before the address).
    pub ruleset_be: u32,
    /// Destination address, network byte order.
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<Rule4Key>() == 8);

/// Data part of an IPv6 rule key; see [`Rule4Key`]. `prefix_len` = 32 + IPv6 prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rule6Key {
    /// Ruleset id, network byte order.
    pub ruleset_be: u32,
    /// Destination address, network byte order.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<Rule6Key>() == 20);

/// Width of the ruleset id in the trie keys, in bits.
pub const RULESET_BITS: u32 = 32;

/// The trie-key rules of [`Rule4Key`] and [`Rule6Key`], defined once for both families: how a
/// (ruleset, address prefix) becomes the key's data and `prefix_len`, and back.
macro_rules! rule_key {
    ($t:ident, $n:literal) => {
        impl $t {
            /// Address bits of this family.
            pub const ADDR_BITS: u32 = $n * 8;
            /// `prefix_len` of a full-length key (one address): the key the datapath looks up.
            pub const HOST_PREFIX_LEN: u32 = RULESET_BITS + Self::ADDR_BITS;

            /// The key data of `addr` (network order) in `ruleset` (host order). The trie
            /// ignores bits past `prefix_len`, but entries should be written with them zero (a
            /// truncated prefix) so that one prefix has one key.
            #[inline(always)]
            pub const fn new(ruleset: u32, addr: [u8; $n]) -> Self {
                Self {
                    ruleset_be: ruleset.to_be(),
                    addr,
                }
            }

            /// The ruleset id, host order.
            #[inline(always)]
            pub const fn ruleset(&self) -> u32 {
                u32::from_be(self.ruleset_be)
            }

            /// The key's `prefix_len` for an address prefix of `len` bits.
            #[inline(always)]
            pub const fn prefix_len(len: u8) -> u32 {
                RULESET_BITS + len as u32
            }

            /// The address prefix length of a key's `prefix_len`: `None` when it does not
            /// cover the whole ruleset id or is longer than an address (no such entry is
            /// ever written).
            #[inline(always)]
            pub const fn addr_prefix_len(prefix_len: u32) -> Option<u8> {
                if prefix_len < RULESET_BITS || prefix_len > Self::HOST_PREFIX_LEN {
                    None
                } else {
                    Some((prefix_len - RULESET_BITS) as u8)
                }
            }
        }
    };
}
rule_key!(Rule4Key, 4);
rule_key!(Rule6Key, 16);

/// Value of a rule trie entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleValue {
    /// Rule id for `VEER_RSTATS_V1` (host order); 0 = no counters.
    pub rule_id: u32,
    /// Target interface slot (host order), `< MAX_SLOTS`.
    pub slot: u16,
    /// `RULE_F_*` flags (host order).
    pub flags: u16,
    /// Explicit next hop when `flags & RULE_F_VIA`; IPv4 in the first 4 bytes. Network order.
    pub via: [u8; 16],
}
const _: () = assert!(size_of::<RuleValue>() == 24);

/// Key of `VEER_IFACES_V1`: one managed interface of one pod.
///
/// Interface indexes are per network namespace (many pods have an `eth0` with the same
/// ifindex), and inside a TC program nothing names the namespace of a received packet
/// (`bpf_get_netns_cookie` answers for the packet's socket, and received packets have none). The
/// interface's MAC address does: egress frames carry it as source, unicast ingress frames as
/// destination. (ifindex, MAC) is unique on the node; the agent writes it from the node's own
/// view of the pod, never from anything the pod sends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    /// Interface index inside the pod's namespace (host order).
    pub ifindex: u32,
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// Must be zero.
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<IfaceKey>() == 16);

impl IfaceKey {
    /// The key of interface `ifindex` with address `mac`.
    pub const fn new(ifindex: u32, mac: [u8; 6]) -> Self {
        Self {
            ifindex,
            mac,
            _pad: [0; 6],
        }
    }
}

/// [`IfaceInfo::flags`]: `addr4` is valid.
pub const IFACE_F_V4: u32 = 1;
/// [`IfaceInfo::flags`]: `addr6` is valid.
pub const IFACE_F_V6: u32 = 2;
/// [`IfaceInfo::flags`]: `gw4` is valid.
pub const IFACE_F_GW4: u32 = 4;
/// [`IfaceInfo::flags`]: `gw6` is valid.
pub const IFACE_F_GW6: u32 = 8;

/// Value of `VEER_IFACES_V1`: what the programs know about one pod interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceInfo {
    /// Cookie of the pod's network namespace (host order), written by the agent from its own
    /// view of the pod: names the link pin directory, and tells the egress program whether two
    /// interfaces belong to the same pod (source-based egress, see [`AddrOwner`]).
    pub netns_cookie: u64,
    /// Ruleset the pod follows (host order).
    pub ruleset: u32,
    /// This interface's slot (host order).
    pub slot: u32,
    /// This interface's ifindex (host order), repeated for dumps.
    pub ifindex: u32,
    /// MTU (host order).
    pub mtu: u32,
    /// MAC address.
    pub mac: [u8; 6],
    /// Must be zero.
    pub _pad0: [u8; 2],
    /// `IFACE_F_*` (host order).
    pub flags: u32,
    /// Primary IPv4 address, network order.
    pub addr4: [u8; 4],
    /// IPv4 gateway reached through this interface (from the pod's routes), network order.
    pub gw4: [u8; 4],
    /// Primary global IPv6 address, network order.
    pub addr6: [u8; 16],
    /// IPv6 gateway (may be link-local), network order.
    pub gw6: [u8; 16],
    /// Slot → ifindex of the same pod's interface in that slot (host order); 0 = none.
    pub slots: [u32; MAX_SLOTS],
    /// Slot → MAC of the same pod's interface in that slot (with `slots`, its key).
    pub slot_macs: [[u8; 6]; MAX_SLOTS],
    /// Must be zero.
    pub _pad1: [u8; 4],
}
const _: () = assert!(size_of::<IfaceInfo>() == 160);

/// Key of `VEER_ADDRS_V1`: one address of a managed pod interface (the `addr4`/`addr6` of its
/// `VEER_IFACES_V1` entry). IPv4 addresses occupy the first 4 bytes, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    /// The address, network order.
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Must be zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<AddrKey>() == 20);

impl AddrKey {
    /// The key of `addr` (network order, IPv4 in the first 4 bytes) of `family`.
    #[inline(always)]
    pub const fn new(family: u8, addr: [u8; 16]) -> Self {
        Self {
            addr,
            family,
            _pad: [0; 3],
        }
    }
}

/// Value of `VEER_ADDRS_V1`: which managed interface owns an address. Written by the agent
/// from its own view of the pod (with the `VEER_IFACES_V1` entry of that interface), never
/// from anything a pod sends. The egress program uses it for **source-based egress**: a packet
/// leaving interface X with a source that belongs to another interface Y *of the same pod*
/// (same `netns_cookie` in both `VEER_IFACES_V1` entries) leaves by Y untranslated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrOwner {
    /// Cookie of the owning pod's network namespace (host order), as in `IfaceInfo`.
    pub netns_cookie: u64,
    /// The owning interface's `VEER_IFACES_V1` key.
    pub iface: IfaceKey,
    /// Prefix length of the address on that interface (what is on-link there).
    pub prefix_len: u8,
    /// Must be zero.
    pub _pad: [u8; 7],
}
const _: () = assert!(size_of::<AddrOwner>() == 32);

impl AddrOwner {
    /// Whether `dst` (network order, same family as the owned `addr`) is on-link on the
    /// owning interface: inside the prefix of `addr`. (Two 64-bit masked compares, no loop: the
    /// eBPF program runs it.)
    #[inline(always)]
    pub fn on_link(&self, family: u8, addr: &[u8; 16], dst: &[u8; 16]) -> bool {
        let max: u32 = if family == FAMILY_V4 { 32 } else { 128 };
        let len = if (self.prefix_len as u32) < max {
            self.prefix_len as u32
        } else {
            max
        };
        let word = |b: &[u8; 16], i: usize| {
            u64::from_be_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        // Mask of the first `bits` bits of a 64-bit word.
        let mask = |bits: u32| -> u64 {
            if bits == 0 {
                0
            } else if bits >= 64 {
                u64::MAX
            } else {
                u64::MAX << (64 - bits)
            }
        };
        let hi = mask(len);
        let lo = mask(len.saturating_sub(64));
        (word(addr, 0) ^ word(dst, 0)) & hi == 0 && (word(addr, 8) ^ word(dst, 8)) & lo == 0
    }
}

/// [`FlowKey::dir`]: the tuple as it leaves the pod on its original interface.
pub const DIR_OUT: u8 = 0;
/// [`FlowKey::dir`]: the tuple as replies arrive on the target interface.
pub const DIR_IN: u8 = 1;

/// Key of `VEER_FLOWS_V1`. IPv4 addresses occupy the first 4 bytes of `saddr`/`daddr`, the
/// rest zero. For ICMP echo, the identifier is `sport` on requests and `dport` on replies
/// (the other port is 0), so a reply's key is the request's key with both ends swapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Reserved, zero. Flows are told apart by their addresses: a pod's address is unique on
    /// the node, and so is the translated tuple of a steered flow.
    pub zone: u64,
    /// Source address, network order.
    pub saddr: [u8; 16],
    /// Destination address, network order.
    pub daddr: [u8; 16],
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// IP protocol number (6, 17, 1, 58).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`DIR_OUT`] or [`DIR_IN`].
    pub dir: u8,
    /// Must be zero.
    pub _pad: u8,
}
const _: () = assert!(size_of::<FlowKey>() == 48);

impl FlowKey {
    /// The key of a packet's tuple in direction `dir` (`zone` and padding zero). Addresses and
    /// ports in network order, as in the packet; IPv4 addresses in the first 4 bytes.
    #[inline(always)]
    pub const fn new(
        family: u8,
        proto: u8,
        saddr: [u8; 16],
        daddr: [u8; 16],
        sport: u16,
        dport: u16,
        dir: u8,
    ) -> Self {
        Self {
            zone: 0,
            saddr,
            daddr,
            sport,
            dport,
            proto,
            family,
            dir,
            _pad: 0,
        }
    }

    /// The key of the other direction of this tuple, in direction `dir`: packets from this
    /// key's destination back to `to` (ports swapped). For a steered flow's outgoing key, `to`
    /// is the translated source (`FlowValue::addr`) and `dir` [`DIR_IN`]: the key its replies
    /// arrive with on the target. For a plain swap (a reply's own flow), `to` is `self.saddr`.
    #[inline(always)]
    pub const fn reverse(&self, to: [u8; 16], dir: u8) -> Self {
        Self::new(
            self.family,
            self.proto,
            self.daddr,
            to,
            self.dport,
            self.sport,
            dir,
        )
    }
}

/// [`FlowValue::kind`]: outgoing packets of this flow are translated and redirected.
pub const FLOW_STEER: u8 = 1;
/// [`FlowValue::kind`]: this flow is left as the kernel routes it (inbound connection, or a
/// native socket owning a tuple on the target interface).
pub const FLOW_NATIVE: u8 = 2;
/// [`FlowValue::kind`]: replies with this tuple get their destination restored.
pub const FLOW_REVNAT: u8 = 3;

/// [`FlowValue::state`]: not TCP.
pub const ST_NONE: u8 = 0;
/// [`FlowValue::state`]: TCP SYN seen.
pub const ST_SYN: u8 = 1;
/// [`FlowValue::state`]: TCP established (a reply was seen).
pub const ST_EST: u8 = 2;
/// [`FlowValue::state`]: TCP FIN or RST seen.
pub const ST_CLOSING: u8 = 3;

/// Value of `VEER_FLOWS_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowValue {
    /// `FLOW_*`.
    pub kind: u8,
    /// `ST_*`.
    pub state: u8,
    /// Must be zero.
    pub _pad0: [u8; 2],
    /// Rule that steered the flow (host order), 0 for native flows.
    pub rule_id: u32,
    /// `FLOW_STEER`: target ifindex; `FLOW_REVNAT`: original ifindex (host order).
    pub ifindex: u32,
    /// MSS to clamp SYN/SYN-ACK to (host order), 0 = none.
    pub mss: u16,
    /// `FLOW_STEER`: target interface MTU (host order); larger non-TCP packets are dropped.
    pub mtu: u16,
    /// `FLOW_STEER`: new source address; `FLOW_REVNAT`: original source to restore. Network order.
    pub addr: [u8; 16],
    /// `FLOW_STEER`: next hop given to `bpf_redirect_neigh`. Network order.
    pub nexthop: [u8; 16],
    /// `FLOW_REVNAT`: MAC of the original interface (destination MAC on re-delivery).
    pub mac: [u8; 6],
    /// Must be zero.
    pub _pad2: [u8; 2],
    /// `bpf_ktime_get_coarse_ns` of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
    /// `bpf_ktime_get_coarse_ns` at creation.
    pub created_ns: u64,
}
const _: () = assert!(size_of::<FlowValue>() == 72);

/// Per-rule counters (one per CPU in `VEER_RSTATS_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleStats {
    /// Packets steered by the rule (host order).
    pub packets: u64,
    /// Bytes steered by the rule, L2 frame length (host order).
    pub bytes: u64,
}
const _: () = assert!(size_of::<RuleStats>() == 16);

/// [`Config::flags`]: emit debug events.
pub const CFG_F_DEBUG: u32 = 1;

/// Value of the single entry of `VEER_CONFIG_V1`.
///
/// Each timeout field is read on its own: **0 means that field's default** (from
/// [`Config::DEFAULT`]), whatever the other fields hold, so an entry of all zeros (the array's
/// initial value) is "all defaults, debug off". [`Config::timeout_s`] is the one definition of
/// that rule; the datapath, the agent and the CLI all use it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// `CFG_F_*` (host order).
    pub flags: u32,
    /// Idle timeout of a TCP flow that has only sent a SYN, seconds.
    pub tcp_syn_timeout_s: u32,
    /// Idle timeout of an established TCP flow, seconds.
    pub tcp_est_timeout_s: u32,
    /// Time a TCP flow is kept after FIN/RST, seconds.
    pub tcp_close_timeout_s: u32,
    /// Idle timeout of UDP, ICMP and other flows, seconds.
    pub other_timeout_s: u32,
    /// Must be zero.
    pub _pad: [u32; 3],
}
const _: () = assert!(size_of::<Config>() == 32);

impl Config {
    /// Defaults (documented in docs/architecture.md, "Flow pinning").
    pub const DEFAULT: Config = Config {
        flags: 0,
        tcp_syn_timeout_s: 60,
        tcp_est_timeout_s: 21_600,
        tcp_close_timeout_s: 10,
        other_timeout_s: 60,
        _pad: [0; 3],
    };

    /// The default idle timeout of a flow in `state` (`ST_*`), seconds.
    #[inline(always)]
    pub const fn default_timeout_s(state: u8) -> u32 {
        match state {
            ST_SYN => Self::DEFAULT.tcp_syn_timeout_s,
            ST_EST => Self::DEFAULT.tcp_est_timeout_s,
            ST_CLOSING => Self::DEFAULT.tcp_close_timeout_s,
            _ => Self::DEFAULT.other_timeout_s,
        }
    }

    /// The configured field for `state` as stored (0 = default), read in place: one field,
    /// chosen by a branch and read with a volatile load, so the compiler cannot turn the choice
    /// into a computed offset into the value (the eBPF verifier cannot bound one into a map
    /// value).
    #[inline(always)]
    pub fn configured_timeout_s(&self, state: u8) -> u32 {
        // SAFETY: each pointer is a field of `self`, valid and aligned for a read.
        unsafe {
            match state {
                ST_SYN => core::ptr::read_volatile(&self.tcp_syn_timeout_s),
                ST_EST => core::ptr::read_volatile(&self.tcp_est_timeout_s),
                ST_CLOSING => core::ptr::read_volatile(&self.tcp_close_timeout_s),
                _ => core::ptr::read_volatile(&self.other_timeout_s),
            }
        }
    }

    /// The idle timeout in force for a flow in `state` (`ST_*`), seconds: the state's field,
    /// or its default when that field is 0.
    #[inline(always)]
    pub fn timeout_s(&self, state: u8) -> u32 {
        match self.configured_timeout_s(state) {
            0 => Self::default_timeout_s(state),
            s => s,
        }
    }

    /// This configuration with every zero timeout replaced by its default (what is in force).
    pub fn effective(&self) -> Self {
        Self {
            flags: self.flags,
            tcp_syn_timeout_s: self.timeout_s(ST_SYN),
            tcp_est_timeout_s: self.timeout_s(ST_EST),
            tcp_close_timeout_s: self.timeout_s(ST_CLOSING),
            other_timeout_s: self.timeout_s(ST_NONE),
            _pad: [0; 3],
        }
    }

    /// Whether debug events are switched on ([`CFG_F_DEBUG`]).
    #[inline(always)]
    pub fn debug(&self) -> bool {
        self.flags & CFG_F_DEBUG != 0
    }

    /// This configuration with [`CFG_F_DEBUG`] set or cleared and every other field as it is
    /// (the read-modify-write that keeps an operator's timeouts).
    pub const fn with_debug(self, on: bool) -> Self {
        Self {
            flags: if on {
                self.flags | CFG_F_DEBUG
            } else {
                self.flags & !CFG_F_DEBUG
            },
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const STATES: [u8; 4] = [ST_NONE, ST_SYN, ST_EST, ST_CLOSING];

    #[test]
    fn an_all_zero_entry_means_every_default() {
        let z = Config::default();
        for st in STATES {
            assert_eq!(z.timeout_s(st), Config::DEFAULT.timeout_s(st), "state {st}");
        }
        assert_eq!(z.effective(), Config::DEFAULT);
        assert_eq!(Config::DEFAULT.effective(), Config::DEFAULT);
        assert!(!z.debug());
    }

    /// The documented recipe: established TCP to 1 h, every other field zero.
    #[test]
    fn one_field_set_changes_only_its_state_and_zero_fields_keep_their_defaults() {
        let c = Config {
            tcp_est_timeout_s: 3600,
            ..Config::default()
        };
        assert_eq!(c.timeout_s(ST_EST), 3600);
        assert_eq!(c.timeout_s(ST_SYN), 60);
        assert_eq!(c.timeout_s(ST_CLOSING), 10);
        assert_eq!(c.timeout_s(ST_NONE), 60);
        // Unknown states follow the "other" timeout, as the datapath does.
        assert_eq!(c.timeout_s(200), 60);
        let c = Config {
            other_timeout_s: 5,
            ..Config::default()
        };
        assert_eq!(
            c.timeout_s(ST_EST),
            21_600,
            "a set other_timeout_s enables nothing else"
        );
        assert_eq!(c.timeout_s(ST_NONE), 5);
    }

    #[test]
    fn debug_flag_read_modify_write_keeps_the_timeouts() {
        let operator = Config {
            tcp_est_timeout_s: 3600,
            ..Config::default()
        };
        let on = operator.with_debug(true);
        assert!(on.debug());
        assert_eq!(on.tcp_est_timeout_s, 3600);
        assert_eq!(on.other_timeout_s, 0, "a zero field stays zero (default)");
        assert_eq!(on.with_debug(false), operator);
    }

    #[test]
    fn trie_prefix_lengths_count_the_ruleset_bits() {
        assert_eq!(Rule4Key::prefix_len(8), 40);
        assert_eq!(Rule4Key::HOST_PREFIX_LEN, 64);
        assert_eq!(Rule6Key::HOST_PREFIX_LEN, 160);
        assert_eq!(
            Rule4Key::addr_prefix_len(31),
            None,
            "ruleset bits incomplete"
        );
        assert_eq!(
            Rule4Key::addr_prefix_len(65),
            None,
            "longer than an address"
        );
        assert_eq!(Rule6Key::addr_prefix_len(160), Some(128));
        let k = Rule4Key::new(3, [10, 0, 0, 0]);
        assert_eq!(
            k.ruleset_be,
            3u32.to_be(),
            "ruleset stored in network order"
        );
        assert_eq!(k.ruleset(), 3);
    }

    #[test]
    fn on_link_is_the_owned_address_prefix() {
        let o = |len| AddrOwner {
            prefix_len: len,
            ..AddrOwner::default()
        };
        let v4 = |a: [u8; 4]| {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a);
            b
        };
        let me = v4([10, 124, 2, 5]);
        assert!(o(24).on_link(FAMILY_V4, &me, &v4([10, 124, 2, 77])));
        assert!(!o(24).on_link(FAMILY_V4, &me, &v4([10, 124, 3, 77])));
        assert!(o(23).on_link(FAMILY_V4, &me, &v4([10, 124, 3, 77])));
        assert!(!o(32).on_link(FAMILY_V4, &me, &v4([10, 124, 2, 6])));
        assert!(o(0).on_link(FAMILY_V4, &me, &v4([1, 2, 3, 4])));
        let a6: [u8; 16] = [0xfd, 0, 1, 0x24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        let mut b6 = a6;
        b6[15] = 9;
        assert!(o(64).on_link(FAMILY_V6, &a6, &b6));
        assert!(!o(128).on_link(FAMILY_V6, &a6, &b6));
        b6[7] = 1;
        assert!(!o(64).on_link(FAMILY_V6, &a6, &b6));
        assert!(o(200).on_link(FAMILY_V6, &a6, &a6), "clamped to 128");
    }

    fn key() -> impl Strategy<Value = FlowKey> {
        (
            prop_oneof![Just(FAMILY_V4), Just(FAMILY_V6)],
            any::<u8>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>(),
            prop_oneof![Just(DIR_OUT), Just(DIR_IN)],
        )
            .prop_map(|(f, p, s, d, sp, dp, dir)| FlowKey::new(f, p, s, d, sp, dp, dir))
    }

    proptest! {
        #[test]
        fn config_timeout_is_the_field_or_its_default(
            f in any::<[u32; 4]>(), st in any::<u8>()
        ) {
            let c = Config {
                flags: 0,
                tcp_syn_timeout_s: f[0],
                tcp_est_timeout_s: f[1],
                tcp_close_timeout_s: f[2],
                other_timeout_s: f[3],
                _pad: [0; 3],
            };
            let (field, default) = match st {
                ST_SYN => (f[0], 60),
                ST_EST => (f[1], 21_600),
                ST_CLOSING => (f[2], 10),
                _ => (f[3], 60),
            };
            prop_assert_eq!(c.configured_timeout_s(st), field);
            prop_assert_eq!(c.timeout_s(st), if field == 0 { default } else { field });
            prop_assert_eq!(c.effective().timeout_s(st), c.timeout_s(st));
        }

        #[test]
        fn reverse_swaps_the_ends_and_reversing_twice_restores_the_key(k in key(), to in any::<[u8; 16]>()) {
            let other = if k.dir == DIR_OUT { DIR_IN } else { DIR_OUT };
            let r = k.reverse(to, other);
            prop_assert_eq!((r.saddr, r.daddr, r.sport, r.dport), (k.daddr, to, k.dport, k.sport));
            prop_assert_eq!((r.proto, r.family, r.dir, r.zone, r._pad), (k.proto, k.family, other, 0, 0));
            // Reversing the reply key gives the translated outgoing tuple: source `to`.
            let back = r.reverse(r.saddr, k.dir);
            prop_assert_eq!(back, FlowKey { saddr: to, ..k });
            // A plain swap (replies to the packet's own source) is an involution.
            let swap = |x: &FlowKey, d| x.reverse(x.saddr, d);
            prop_assert_eq!(swap(&swap(&k, other), k.dir), k);
        }

        #[test]
        fn rule_key_prefix_len_round_trips(len4 in 0u8..=32, len6 in 0u8..=128) {
            prop_assert_eq!(Rule4Key::addr_prefix_len(Rule4Key::prefix_len(len4)), Some(len4));
            prop_assert_eq!(Rule6Key::addr_prefix_len(Rule6Key::prefix_len(len6)), Some(len6));
        }

        #[test]
        fn rule_key_ruleset_round_trips(rs in any::<u32>(), a in any::<[u8; 4]>()) {
            let k = Rule4Key::new(rs, a);
            prop_assert_eq!((k.ruleset(), k.addr), (rs, a));
            prop_assert_eq!(Rule6Key::new(rs, [7; 16]).ruleset(), rs);
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all types are `repr(C)`, `Copy`, made of integers and byte arrays with explicit
    // padding fields, so every bit pattern is valid and there is no implicit padding.
    unsafe impl aya::Pod for Rule4Key {}
    unsafe impl aya::Pod for Rule6Key {}
    unsafe impl aya::Pod for RuleValue {}
    unsafe impl aya::Pod for IfaceKey {}
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for RuleStats {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for AddrOwner {}
}
