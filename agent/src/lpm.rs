//! The reference model of the rule lookup: a plain longest-prefix match over a list.
//!
//! It is deliberately simple (linear scan) so it can be trusted: property tests compare the
//! kernel's LPM trie against it, and `veer trace` uses it to explain a decision and to notice
//! when the live map disagrees with the desired state.

use std::net::IpAddr;

use ipnet::IpNet;
use veer_common::RuleValue;

/// One rule as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefRule {
    pub ruleset: u32,
    pub dst: IpNet,
    pub value: RuleValue,
}

/// A set of rules, possibly spanning several rulesets.
#[derive(Debug, Clone, Default)]
pub struct RefRules {
    rules: Vec<RefRule>,
}

impl RefRules {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the rule for exactly (`ruleset`, `dst`), as a map update would.
    pub fn insert(&mut self, ruleset: u32, dst: IpNet, value: RuleValue) {
        let dst = dst.trunc();
        match self
            .rules
            .iter_mut()
            .find(|r| r.ruleset == ruleset && r.dst == dst)
        {
            Some(r) => r.value = value,
            None => self.rules.push(RefRule {
                ruleset,
                dst,
                value,
            }),
        }
    }

    /// Removes the rule for exactly (`ruleset`, `dst`).
    pub fn remove(&mut self, ruleset: u32, dst: IpNet) {
        let dst = dst.trunc();
        self.rules
            .retain(|r| !(r.ruleset == ruleset && r.dst == dst));
    }

    /// The rule with the longest prefix containing `addr` in `ruleset`.
    pub fn lookup(&self, ruleset: u32, addr: IpAddr) -> Option<&RefRule> {
        self.rules
            .iter()
            .filter(|r| r.ruleset == ruleset && r.dst.contains(&addr))
            .max_by_key(|r| r.dst.prefix_len())
    }

    pub fn iter(&self) -> impl Iterator<Item = &RefRule> {
        self.rules.iter()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(slot: u16) -> RuleValue {
        RuleValue {
            rule_id: slot as u32,
            slot,
            ..Default::default()
        }
    }

    #[test]
    fn longest_prefix_wins_service_over_cidr_over_default() {
        let mut r = RefRules::new();
        r.insert(1, "0.0.0.0/0".parse().unwrap(), v(0));
        r.insert(1, "10.86.0.0/16".parse().unwrap(), v(1));
        r.insert(1, "10.86.69.17/32".parse().unwrap(), v(2));
        let slot = |a: &str| r.lookup(1, a.parse().unwrap()).map(|x| x.value.slot);
        assert_eq!(slot("10.86.69.17"), Some(2));
        assert_eq!(slot("10.86.1.1"), Some(1));
        assert_eq!(slot("8.8.8.8"), Some(0));
        assert_eq!(
            r.lookup(2, "8.8.8.8".parse().unwrap()),
            None,
            "other ruleset"
        );
        assert_eq!(r.lookup(1, "::1".parse().unwrap()), None, "other family");
    }

    #[test]
    fn insert_replaces_and_remove_deletes_exact_prefix_only() {
        let mut r = RefRules::new();
        r.insert(1, "10.0.0.0/8".parse().unwrap(), v(1));
        r.insert(1, "10.1.2.3/8".parse().unwrap(), v(2));
        assert_eq!(r.len(), 1, "host bits are truncated like the kernel key");
        r.insert(1, "10.1.0.0/16".parse().unwrap(), v(3));
        r.remove(1, "10.0.0.0/8".parse().unwrap());
        assert_eq!(
            r.lookup(1, "10.1.0.1".parse().unwrap()).unwrap().value.slot,
            3
        );
        assert_eq!(r.lookup(1, "10.2.0.1".parse().unwrap()), None);
    }
}
