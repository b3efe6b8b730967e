//! Names of every map and program veer creates, kept in one place.
//!
//! Map names are what the kernel shows (`bpftool map list`), so they are prefixed with `VEER_`
//! and versioned: a change of a key or value layout bumps the `_V<n>` suffix, which gives the new
//! map a new pin path and lets the agent migrate make-before-break. Kernel object names hold at
//! most 15 characters.

/// LPM trie of IPv4 rules: [`crate::Rule4Key`] → [`crate::RuleValue`].
pub const RULES4: &str = "VEER_RULES4_V1";
/// LPM trie of IPv6 rules: [`crate::Rule6Key`] → [`crate::RuleValue`].
pub const RULES6: &str = "VEER_RULES6_V1";
/// Hash of managed pod interfaces: [`crate::IfaceKey`] → [`crate::IfaceInfo`].
pub const IFACES: &str = "VEER_IFACES_V1";
/// LRU hash of pinned and translated flows: [`crate::FlowKey`] → [`crate::FlowValue`].
pub const FLOWS: &str = "VEER_FLOWS_V1";
/// Per-CPU array of packet counters by outcome/reason, indexed by [`crate::stats`] constants.
pub const STATS: &str = "VEER_STATS_V1";
/// Per-CPU array of per-rule counters, indexed by `RuleValue::rule_id`: [`crate::RuleStats`].
pub const RULE_STATS: &str = "VEER_RSTATS_V1";
/// Single-entry array with run-time knobs: [`crate::Config`].
pub const CONFIG: &str = "VEER_CONFIG_V1";

/// Hash of the managed pod interfaces' addresses: [`crate::AddrKey`] → [`crate::AddrOwner`]
/// (source-based egress).
pub const ADDRS: &str = "VEER_ADDRS_V1";

/// Every map, for loops that pin, check or remove them all.
pub const ALL: [&str; 8] = [
    RULES4, RULES6, IFACES, FLOWS, STATS, RULE_STATS, CONFIG, ADDRS,
];

/// Capacity of each rule trie (entries, all rulesets together).
pub const RULES_MAX: u32 = 131_072;
/// Capacity of the interface table (managed interfaces on the node, all pods together).
pub const IFACES_MAX: u32 = 16_384;
/// Capacity of the address table: an IPv4 and an IPv6 address per managed interface.
pub const ADDRS_MAX: u32 = 2 * IFACES_MAX;
/// Capacity of the flow table.
pub const FLOWS_MAX: u32 = 65_536;
/// Number of per-rule counter slots; rule ids are `1..RULE_STATS_MAX` (0 = none).
pub const RULE_STATS_MAX: u32 = 16_384;

/// TC egress program: steers packets leaving a pod interface.
pub const PROG_EGRESS: &str = "veer_egress";
/// TC ingress program: translates replies of steered flows back.
pub const PROG_INGRESS: &str = "veer_ingress";
