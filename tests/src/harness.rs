//! `BPF_PROG_TEST_RUN` harness: the real programs with fresh (unpinned) maps, inside a test's own
//! network namespace holding two veth interfaces that play the pod's `eth0` (Calico side) and
//! `eth1` (OVN side). `test_run` needs real devices because the programs read the skb's
//! ifindex; a redirect is only reported (`TC_ACT_REDIRECT`), never carried out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use ipnet::IpNet;
use veer_agent::{
    dataplane::Dataplane,
    maps::{Maps, rule4_key, rule6_key},
    netns::current_netns_cookie,
};
use veer_common::{
    AddrKey, AddrOwner, FlowKey, FlowValue, IFACE_F_GW4, IFACE_F_GW6, IFACE_F_V4, IFACE_F_V6,
    IfaceInfo, IfaceKey, RULE_F_VIA, RuleValue, maps as names, stats,
};

use crate::ns::{ifindex, ip};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// The ruleset the harness pod follows.
pub const RULESET: u32 = 7;

/// One of the pod's interfaces as the harness registers it.
#[derive(Debug, Clone)]
pub struct Iface {
    pub name: &'static str,
    pub ifindex: u32,
    pub slot: u32,
    pub mac: [u8; 6],
    pub v4: Ipv4Addr,
    pub gw4: Option<Ipv4Addr>,
    pub v6: Ipv6Addr,
    pub gw6: Option<Ipv6Addr>,
    pub mtu: u32,
}

impl Iface {
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { self.v6.into() } else { self.v4.into() }
    }
}

/// The output of one program run.
#[derive(Debug)]
pub struct Run {
    pub ret: u32,
    pub out: Vec<u8>,
}

pub struct Harness {
    pub dp: Dataplane,
    pub maps: Maps,
    pub cookie: u64,
    pub eth0: Iface,
    pub eth1: Iface,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// Creates the interfaces and loads the programs. Call inside
    /// [`crate::ns::in_fresh_netns`].
    pub fn new() -> Self {
        Self::with_names("eth0", "eth1")
    }

    /// Like [`Harness::new`] with other interface names (names are never assumed).
    pub fn with_names(n0: &'static str, n1: &'static str) -> Self {
        Self::build(
            n0,
            n1,
            Dataplane::load_unpinned().expect("load eBPF object"),
        )
    }

    /// Like [`Harness::new`] with an already loaded dataplane (for example the debug object,
    /// `Dataplane::load_unpinned_with(true)`), whose maps the harness takes.
    pub fn with_dataplane(dp: Dataplane) -> Self {
        Self::build("eth0", "eth1", dp)
    }

    fn build(n0: &'static str, n1: &'static str, mut dp: Dataplane) -> Self {
        // veth pairs (the kernel here has no dummy driver); the peers stay unused.
        for (n, peer) in [(n0, "peer0"), (n1, "peer1")] {
            ip(&["link", "add", n, "type", "veth", "peer", "name", peer]);
            ip(&["link", "set", n, "up"]);
            ip(&["link", "set", peer, "up"]);
        }
        let eth0 = Iface {
            name: n0,
            ifindex: ifindex(n0),
            slot: 0,
            mac: crate::packet::SRC_MAC,
            v4: "10.244.1.5".parse().unwrap(),
            gw4: Some("169.254.1.1".parse().unwrap()),
            v6: "fd00:244::5".parse().unwrap(),
            gw6: Some("fe80::ecee:eeff:feee:eeee".parse().unwrap()),
            mtu: 1500,
        };
        let eth1 = Iface {
            name: n1,
            ifindex: ifindex(n1),
            slot: 1,
            mac: crate::packet::DST_MAC,
            v4: "10.124.2.5".parse().unwrap(),
            gw4: Some("10.124.2.1".parse().unwrap()),
            v6: "fd00:124::5".parse().unwrap(),
            gw6: Some("fd00:124::1".parse().unwrap()),
            mtu: 1400,
        };
        let maps = Maps::from_dataplane(&mut dp).expect("maps");
        let cookie = current_netns_cookie().expect("netns cookie");
        let mut h = Harness {
            dp,
            maps,
            cookie,
            eth0,
            eth1,
        };
        h.register_ifaces();
        h
    }

    /// (Re)writes both interfaces into `VEER_IFACES_V1`.
    pub fn register_ifaces(&mut self) {
        let mut slots = [0u32; veer_common::MAX_SLOTS];
        let mut slot_macs = [[0u8; 6]; veer_common::MAX_SLOTS];
        for i in [&self.eth0, &self.eth1] {
            slots[i.slot as usize] = i.ifindex;
            slot_macs[i.slot as usize] = i.mac;
        }
        for i in [self.eth0.clone(), self.eth1.clone()] {
            let mut flags = IFACE_F_V4 | IFACE_F_V6;
            let mut info = IfaceInfo {
                netns_cookie: self.cookie,
                ruleset: RULESET,
                slot: i.slot,
                ifindex: i.ifindex,
                mtu: i.mtu,
                mac: i.mac,
                addr4: i.v4.octets(),
                addr6: i.v6.octets(),
                slots,
                slot_macs,
                ..Default::default()
            };
            if let Some(g) = i.gw4 {
                info.gw4 = g.octets();
                flags |= IFACE_F_GW4;
            }
            if let Some(g) = i.gw6 {
                info.gw6 = g.octets();
                flags |= IFACE_F_GW6;
            }
            info.flags = flags;
            self.maps
                .ifaces
                .insert(IfaceKey::new(i.ifindex, i.mac), info, 0)
                .expect("insert iface");
        }
        // The address table, as the agent writes it (veer_agent::srcaddr): eth0 /32 and /128
        // (Calico), eth1 /24 and /64 (OVN).
        for (i, len4, len6) in [(self.eth0.clone(), 32, 128), (self.eth1.clone(), 24, 64)] {
            self.own_addr(i.v4.into(), i.ifindex, i.mac, self.cookie, len4);
            self.own_addr(i.v6.into(), i.ifindex, i.mac, self.cookie, len6);
        }
    }

    /// Writes `VEER_ADDRS_V1[addr]` = interface (`ifindex`, `mac`) of the pod with namespace
    /// cookie `cookie`, prefix length `prefix_len`.
    pub fn own_addr(
        &mut self,
        addr: IpAddr,
        ifindex: u32,
        mac: [u8; 6],
        cookie: u64,
        prefix_len: u8,
    ) {
        let (family, b) = veer_agent::maps::to_addr16(addr);
        let owner = AddrOwner {
            netns_cookie: cookie,
            iface: IfaceKey::new(ifindex, mac),
            prefix_len,
            _pad: [0; 7],
        };
        self.maps
            .addrs
            .insert(AddrKey::new(family, b), owner, 0)
            .expect("insert addr");
    }

    /// Removes an interface from `VEER_IFACES_V1`.
    pub fn unregister(&mut self, ifindex: u32) {
        let mac = if ifindex == self.eth0.ifindex {
            self.eth0.mac
        } else {
            self.eth1.mac
        };
        self.maps
            .ifaces
            .remove(&IfaceKey::new(ifindex, mac))
            .expect("remove iface");
    }

    /// Adds (or replaces) a rule `dst → slot` in the harness ruleset.
    pub fn rule(&mut self, dst: &str, slot: u32, rule_id: u32, via: Option<IpAddr>) {
        self.rule_in(RULESET, dst, slot, rule_id, via)
    }

    pub fn rule_in(
        &mut self,
        ruleset: u32,
        dst: &str,
        slot: u32,
        rule_id: u32,
        via: Option<IpAddr>,
    ) {
        let net: IpNet = dst.parse().expect("CIDR");
        let mut v = RuleValue {
            rule_id,
            slot: slot as u16,
            flags: 0,
            via: [0; 16],
        };
        match via {
            Some(IpAddr::V4(a)) => {
                v.via[..4].copy_from_slice(&a.octets());
                v.flags |= RULE_F_VIA;
            }
            Some(IpAddr::V6(a)) => {
                v.via = a.octets();
                v.flags |= RULE_F_VIA;
            }
            None => {}
        }
        match net {
            IpNet::V4(n) => self.maps.rules4.insert(&rule4_key(ruleset, n), v, 0),
            IpNet::V6(n) => self.maps.rules6.insert(&rule6_key(ruleset, n), v, 0),
        }
        .expect("insert rule");
    }

    /// Removes a rule as the agent does: its entry stays as a tombstone (`RULE_F_TOMBSTONE`)
    /// so the flows it pinned are still found, but it steers no new flow.
    pub fn bury(&mut self, dst: &str, slot: u32, rule_id: u32) {
        let net: IpNet = dst.parse().expect("CIDR");
        let v = RuleValue {
            rule_id,
            slot: slot as u16,
            flags: veer_common::RULE_F_TOMBSTONE,
            via: [0; 16],
        };
        match net {
            IpNet::V4(n) => self.maps.rules4.insert(&rule4_key(RULESET, n), v, 0),
            IpNet::V6(n) => self.maps.rules6.insert(&rule6_key(RULESET, n), v, 0),
        }
        .expect("insert tombstone");
    }

    /// Removes the entry for exactly `dst`.
    pub fn unrule(&mut self, dst: &str) {
        match dst.parse::<IpNet>().expect("CIDR") {
            IpNet::V4(n) => self.maps.rules4.remove(&rule4_key(RULESET, n)),
            IpNet::V6(n) => self.maps.rules6.remove(&rule6_key(RULESET, n)),
        }
        .expect("remove rule");
    }

    /// Runs `prog` (`names::PROG_EGRESS` or `names::PROG_INGRESS`) on `frame` as if it passed
    /// through `ifindex`.
    pub fn run(&mut self, prog: &'static str, ifindex: u32, frame: &[u8]) -> Run {
        // struct __sk_buff is 192 bytes; only `ifindex` (offset 40) is set.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 512];
        let p = self.dp.program(prog).expect("program");
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..Default::default()
        };
        let r = p.test_run(opts).expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        Run {
            ret: r.return_value,
            out,
        }
    }

    pub fn egress(&mut self, ifindex: u32, frame: &[u8]) -> Run {
        self.run(names::PROG_EGRESS, ifindex, frame)
    }

    pub fn ingress(&mut self, ifindex: u32, frame: &[u8]) -> Run {
        self.run(names::PROG_INGRESS, ifindex, frame)
    }

    /// All reason counters summed over CPUs.
    pub fn stats(&self) -> [u64; stats::COUNT as usize] {
        self.maps.stats_totals().expect("stats")
    }

    /// Counter increments between two snapshots, by name, only non-zero ones, sorted.
    pub fn delta(before: &[u64], after: &[u64]) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = stats::NAMES
            .iter()
            .zip(before.iter().zip(after))
            .filter(|(_, (b, a))| a != b)
            .map(|(n, (b, a))| (*n, a - b))
            .collect();
        v.sort();
        v
    }

    /// Every flow entry.
    pub fn flows(&self) -> Vec<(FlowKey, FlowValue)> {
        self.maps
            .flows
            .iter()
            .map(|r| r.expect("flow iter"))
            .collect()
    }

    /// The packets/bytes of a rule.
    pub fn rule_stats(&self, rule_id: u32) -> (u64, u64) {
        let s = self.maps.rule_totals(rule_id).expect("rule stats");
        (s.packets, s.bytes)
    }
}
