//! Indexes into the per-CPU `VEER_STATS_V1` array: one counter per outcome or reason.
//!
//! Every packet the programs see increments exactly one "verdict" counter (the `PASS_*`,
//! `STEER_*`, `SRC_EGRESS`, `REVNAT_*`, `DROP_*` and `ERR_*` ones) plus, independently, one of
//! [`PKT_IPV4`]/[`PKT_IPV6`]/[`PASS_NOT_IP`] for the L3 family. [`MSS_CLAMPED`], [`COLLISION`],
//! [`FLOW_EXPIRED`], [`PINNED_INBOUND`], [`FLOW_HALF_EVICTED`] and [`SRC_FOREIGN`] are side
//! counters.

/// IPv4 packets seen (family counter).
pub const PKT_IPV4: u32 = 0;
/// IPv6 packets seen (family counter).
pub const PKT_IPV6: u32 = 1;
/// Not IP (ARP, LLDP, …): passed untouched.
pub const PASS_NOT_IP: u32 = 2;
/// The interface is not in `VEER_IFACES_V1` (not managed): passed untouched.
pub const PASS_UNMANAGED: u32 = 3;
/// No rule matched the destination: passed untouched, as the kernel routed it.
pub const PASS_NO_RULE: u32 = 4;
/// The matching rule selects the interface the packet already leaves by.
pub const PASS_RULE_LOCAL: u32 = 5;
/// Multicast, broadcast or link-local destination: never steered.
pub const PASS_MCAST: u32 = 6;
/// IPv4 or IPv6 fragment: never steered (ports are not visible in every fragment).
pub const PASS_FRAGMENT: u32 = 7;
/// IPv6 packet with extension headers: passed untouched.
pub const PASS_IPV6_EXT: u32 = 8;
/// TCP segment without SYN and without a pinned flow: a connection that started before the
/// rule (or the agent) existed keeps its path.
pub const PASS_TCP_UNPINNED: u32 = 9;
/// A pinned native flow (reply of an inbound connection, or a flow that predates a rule).
pub const PASS_PINNED_NATIVE: u32 = 10;
/// The pod has no interface in the rule's slot: skipped for that rule.
pub const PASS_NO_TARGET: u32 = 11;
/// The target interface has no address of the packet's family.
pub const PASS_TARGET_NO_ADDR: u32 = 12;
/// Protocol other than TCP/UDP/ICMP/ICMPv6: passed untouched.
pub const PASS_OTHER_PROTO: u32 = 13;
/// Ingress packet not belonging to a translated flow: passed untouched.
pub const PASS_INGRESS: u32 = 14;
/// New flow steered: source translated and redirected.
pub const STEER_NEW: u32 = 15;
/// Packet of a pinned steered flow: source translated and redirected.
pub const STEER_PINNED: u32 = 16;
/// Reply of a steered flow: destination restored, delivered on the original interface.
pub const REVNAT: u32 = 17;
/// ICMP/ICMPv6 error about a steered flow: outer and inner headers restored.
pub const REVNAT_ICMP_ERR: u32 = 18;
/// Non-TCP packet larger than the target interface's MTU: dropped (counted).
pub const DROP_TOO_BIG: u32 = 19;
/// Truncated or malformed header: passed untouched.
pub const ERR_MALFORMED: u32 = 20;
/// A checksum or store helper failed: packet dropped rather than sent half-rewritten.
pub const ERR_REWRITE: u32 = 21;
/// `bpf_redirect_neigh`/`bpf_redirect` refused: passed untouched before any rewrite.
pub const ERR_REDIRECT: u32 = 22;
/// Flow table insert failed: the flow is not steered.
pub const ERR_FLOW_INSERT: u32 = 23;
/// Side counter: MSS option clamped on a SYN or SYN-ACK.
pub const MSS_CLAMPED: u32 = 24;
/// Side counter: the translated 5-tuple was already taken on the target interface; the new
/// flow was not steered.
pub const COLLISION: u32 = 25;
/// Side counter: a pinned flow idled out and was re-decided.
pub const FLOW_EXPIRED: u32 = 26;
/// Side counter: an inbound connection was pinned so its replies leave where it came in.
pub const PINNED_INBOUND: u32 = 27;
/// Side counter: a steered flow was found with only one of its two `VEER_FLOWS_V1` entries
/// (the outgoing one without its reply entry, or the reply entry without the outgoing one).
/// The datapath and the agent always create and delete the pair together, so one half missing
/// means the flow-table LRU evicted it — with one exception: an idle reply entry removed on
/// ingress (`flow_expired`) while the pod kept sending. Checked when a packet refreshes the
/// outgoing entry (a TCP state change, or at most once a second per flow) and on a SYN that
/// finds its reply entry but no outgoing one. A pair evicted whole is not seen (nothing is
/// left to notice it): this counts broken flows, a lower bound of the evictions.
pub const FLOW_HALF_EVICTED: u32 = 28;

/// Source-based egress: the packet's source belongs to another managed interface of the same
/// pod (same namespace cookie); it was redirected there untranslated, before any rule or flow
/// logic.
pub const SRC_EGRESS: u32 = 29;
/// Side counter: the packet's source is a managed address of *another pod* (or a stale entry);
/// never redirected for it, left to the rule and flow logic.
pub const SRC_FOREIGN: u32 = 30;

/// Number of slots in `VEER_STATS_V1`.
pub const COUNT: u32 = 32;

/// Human names of the counters, indexed like the constants above (for the CLI and metrics).
pub const NAMES: [&str; COUNT as usize] = [
    "pkt_ipv4",
    "pkt_ipv6",
    "pass_not_ip",
    "pass_unmanaged",
    "pass_no_rule",
    "pass_rule_local",
    "pass_mcast",
    "pass_fragment",
    "pass_ipv6_ext",
    "pass_tcp_unpinned",
    "pass_pinned_native",
    "pass_no_target",
    "pass_target_no_addr",
    "pass_other_proto",
    "pass_ingress",
    "steer_new",
    "steer_pinned",
    "revnat",
    "revnat_icmp_err",
    "drop_too_big",
    "err_malformed",
    "err_rewrite",
    "err_redirect",
    "err_flow_insert",
    "mss_clamped",
    "collision",
    "flow_expired",
    "pinned_inbound",
    "flow_half_evicted",
    "src_egress",
    "src_foreign",
    "reserved_31",
];
