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
    /// Cookie of the pod's network namespace (host order): bookkeeping for the agent and the
    /// CLI, not used by the programs.
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

/// Value of the single entry of `VEER_CONFIG_V1`. A zero timeout means "use the default"
/// from [`Config::DEFAULT`].
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
}
