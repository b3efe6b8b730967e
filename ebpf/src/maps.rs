//! The maps, declared as BTF maps so `bpftool map dump` prints field names.
//! Names and capacities come from `veer_common::maps`; the static names must match them
//! (checked by the agent's ELF test).

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use veer_common::{
    AddrKey, AddrOwner, Config, FlowKey, FlowValue, IfaceInfo, IfaceKey, Rule4Key, Rule6Key,
    RuleStats, RuleValue, maps as m, stats,
};

#[btf_map]
pub static VEER_RULES4_V1: LpmTrie<Rule4Key, RuleValue, { m::RULES_MAX as usize }> = LpmTrie::new();

#[btf_map]
pub static VEER_RULES6_V1: LpmTrie<Rule6Key, RuleValue, { m::RULES_MAX as usize }> = LpmTrie::new();

#[btf_map]
pub static VEER_IFACES_V1: HashMap<IfaceKey, IfaceInfo, { m::IFACES_MAX as usize }> =
    HashMap::new();

#[btf_map]
pub static VEER_ADDRS_V1: HashMap<AddrKey, AddrOwner, { m::ADDRS_MAX as usize }> = HashMap::new();

#[btf_map]
pub static VEER_FLOWS_V1: LruHashMap<FlowKey, FlowValue, { m::FLOWS_MAX as usize }> =
    LruHashMap::new();

#[btf_map]
pub static VEER_STATS_V1: PerCpuArray<u64, { stats::COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static VEER_RSTATS_V1: PerCpuArray<RuleStats, { m::RULE_STATS_MAX as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static VEER_CONFIG_V1: Array<Config, 1> = Array::new();

/// Adds one to a per-CPU reason counter.
#[inline(always)]
pub fn count(reason: u32) {
    if let Some(p) = VEER_STATS_V1.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot of this CPU; programs do not preempt each other on one CPU.
        unsafe { *p += 1 };
    }
}

/// Adds a packet of `bytes` to a rule's per-CPU counters.
#[inline(always)]
pub fn count_rule(rule_id: u32, bytes: u32) {
    if rule_id == 0 {
        return;
    }
    if let Some(p) = VEER_RSTATS_V1.get_ptr_mut(rule_id) {
        // SAFETY: as in `count`.
        unsafe {
            (*p).packets += 1;
            (*p).bytes += bytes as u64;
        }
    }
}
