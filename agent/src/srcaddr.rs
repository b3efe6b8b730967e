//! Source-based egress, the agent's side: the `VEER_ADDRS_V1` entries (address → owning
//! interface) of every managed pod interface, and the strict `rp_filter` check.
//!
//! The egress program redirects a packet leaving pod interface X with a source address that
//! belongs to another managed interface Y *of the same pod* to Y, untranslated (see
//! docs/architecture.md, "The path of a packet"). It finds Y by the packet's source in
//! `VEER_ADDRS_V1` and checks that Y's `VEER_IFACES_V1` entry has X's namespace cookie and still
//! holds that address. The entries here are exactly the `addr4`/`addr6` of the pod's
//! `VEER_IFACES_V1` entries, written from the agent's own view of the pod (netlink inside its
//! namespace) right after them, and removed with the pod or the address — only when they still
//! name the pod (an address can move to another pod between two rounds).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::MapError;
use veer_common::{AddrKey, AddrOwner, FAMILY_V4, FAMILY_V6};

use crate::{
    maps::Maps,
    podnet::{self, IfaceFacts},
    report::Skipped,
};

/// The address-table entries of a pod's managed interfaces (namespace cookie `cookie`).
pub fn entries(cookie: u64, managed: &[&IfaceFacts]) -> Vec<(AddrKey, AddrOwner)> {
    let mut out = Vec::new();
    for f in managed {
        let owner = |a: IpAddr| AddrOwner {
            netns_cookie: cookie,
            iface: podnet::iface_key(f),
            prefix_len: f
                .connected
                .iter()
                .find(|(c, _)| *c == a)
                .map_or(if a.is_ipv4() { 32 } else { 128 }, |(_, l)| *l),
            _pad: [0; 7],
        };
        if let Some(a) = f.v4 {
            out.push((key4(a), owner(a.into())));
        }
        if let Some(a) = f.v6 {
            out.push((AddrKey::new(FAMILY_V6, a.octets()), owner(a.into())));
        }
    }
    out
}

fn key4(a: Ipv4Addr) -> AddrKey {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a.octets());
    AddrKey::new(FAMILY_V4, b)
}

/// What pod set-up does for source-based egress (one call from the reconcile core, after the
/// pod's `VEER_IFACES_V1` entries are written): writes the address-table entries of its managed
/// interfaces and adds the strict `rp_filter` warnings to its report.
pub fn setup(
    maps: &mut Maps,
    netns: &Path,
    cookie: u64,
    managed: &[&IfaceFacts],
    skipped: &mut Vec<Skipped>,
) -> Result<(), MapError> {
    write(maps, cookie, managed)?;
    skipped.extend(rp_filter_warnings(netns, managed));
    Ok(())
}

/// Writes the address-table entries of a pod's managed interfaces (after their
/// `VEER_IFACES_V1` entries). Addresses the pod no longer has are removed by [`forget`].
pub fn write(maps: &mut Maps, cookie: u64, managed: &[&IfaceFacts]) -> Result<(), MapError> {
    for (k, v) in entries(cookie, managed) {
        if maps.addrs.get(&k, 0).ok() != Some(v) {
            maps.addrs.insert(k, v, 0)?;
        }
    }
    Ok(())
}

/// Removes the entries of `addrs` (flow-key form: IPv4 in the first four bytes) that still name
/// the pod of namespace cookie `cookie`.
pub fn forget(maps: &mut Maps, cookie: u64, addrs: &BTreeSet<[u8; 16]>) {
    for a in addrs {
        let mut keys = vec![AddrKey::new(FAMILY_V6, *a)];
        if a[4..].iter().all(|b| *b == 0) {
            keys.push(AddrKey::new(FAMILY_V4, *a));
        }
        for k in keys {
            if maps
                .addrs
                .get(&k, 0)
                .is_ok_and(|o| o.netns_cookie == cookie)
            {
                let _ = maps.addrs.remove(&k);
            }
        }
    }
}

/// Removes the entries of pods that are not managed (`known`: the managed pods' namespace
/// cookies), left by a previous agent.
pub fn remove_orphans(maps: &mut Maps, known: &BTreeSet<u64>) {
    let stale: Vec<AddrKey> = maps
        .addrs
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, o)| !known.contains(&o.netns_cookie))
        .map(|(k, _)| k)
        .collect();
    for k in stale {
        let _ = maps.addrs.remove(&k);
    }
}

/// The address of an entry, for dumps.
pub fn key_addr(k: &AddrKey) -> IpAddr {
    if k.family == FAMILY_V4 {
        Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]).into()
    } else {
        Ipv6Addr::from(k.addr).into()
    }
}

/// The effective IPv4 `rp_filter` mode of an interface: the larger of
/// `net.ipv4.conf.all.rp_filter` and `net.ipv4.conf.<iface>.rp_filter` (the kernel's rule).
pub fn effective_rp_filter(all: u8, iface: u8) -> u8 {
    all.max(iface)
}

/// Warnings for the pod's managed interfaces whose IPv4 `rp_filter` is strict (1), read inside
/// the pod's namespace. Only pods with two or more managed interfaces holding an IPv4 address are
/// checked (source-based egress needs a sibling): strict mode drops a packet arriving on Y from
/// a peer the pod routes via another interface before any socket (or source-based egress) can
/// answer it. Loose mode (2) or off (0) lets it in. A namespace whose sysctls cannot be read
/// gives no warning.
pub fn rp_filter_warnings(netns: &Path, managed: &[&IfaceFacts]) -> Vec<Skipped> {
    let names: Vec<String> = managed
        .iter()
        .filter(|f| f.v4.is_some())
        .map(|f| f.name.clone())
        .collect();
    if names.len() < 2 {
        return Vec::new();
    }
    let read = |name: &str| -> Option<u8> {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let Ok(values) = crate::netns::in_netns(netns, || {
        let all = read("all");
        names
            .iter()
            .map(|n| (n.clone(), all, read(n)))
            .collect::<Vec<_>>()
    }) else {
        return Vec::new();
    };
    values
        .into_iter()
        .filter_map(|(name, all, own)| {
            let (all, own) = (all?, own?);
            (effective_rp_filter(all, own) == 1).then(|| Skipped {
                iface: name.clone(),
                reason: format!(
                    "managed, but IPv4 rp_filter is strict (net.ipv4.conf.{name}.rp_filter={own}, \
                     net.ipv4.conf.all.rp_filter={all}): connections to {name}'s address from \
                     peers the pod routes via another interface are dropped by the kernel before \
                     they reach a socket; set both to 2 (loose) for source-based egress to answer \
                     them"
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, ifindex: u32, v4: &str, len4: u8, v6: &str, len6: u8) -> IfaceFacts {
        let (v4, v6): (Ipv4Addr, Ipv6Addr) = (v4.parse().unwrap(), v6.parse().unwrap());
        IfaceFacts {
            name: name.into(),
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
            mtu: 1500,
            v4: Some(v4),
            v6: Some(v6),
            gw4: None,
            gw6: None,
            is_ether: true,
            up: true,
            connected: vec![(v4.into(), len4), (v6.into(), len6)],
        }
    }

    #[test]
    fn every_managed_address_names_its_interface_pod_and_prefix() {
        let eth0 = facts("eth0", 2, "10.244.1.5", 32, "fd00:244::5", 128);
        let eth1 = facts("eth1", 3, "10.124.2.5", 24, "fd00:124::5", 64);
        let e = entries(77, &[&eth0, &eth1]);
        assert_eq!(e.len(), 4);
        let (k, o) = e
            .iter()
            .find(|(k, _)| key_addr(k) == "10.124.2.5".parse::<IpAddr>().unwrap())
            .unwrap();
        assert_eq!((k.family, &k.addr[4..]), (FAMILY_V4, &[0u8; 12][..]));
        assert_eq!(o.netns_cookie, 77);
        assert_eq!(o.iface, podnet::iface_key(&eth1));
        assert_eq!(o.prefix_len, 24);
        let (_, o6) = e
            .iter()
            .find(|(k, _)| key_addr(k) == "fd00:244::5".parse::<IpAddr>().unwrap())
            .unwrap();
        assert_eq!((o6.iface.ifindex, o6.prefix_len), (2, 128));
    }

    #[test]
    fn rp_filter_is_strict_when_the_larger_of_all_and_the_interface_is_one() {
        assert_eq!(effective_rp_filter(0, 1), 1);
        assert_eq!(effective_rp_filter(1, 0), 1);
        assert_eq!(effective_rp_filter(1, 2), 2);
        assert_eq!(effective_rp_filter(2, 0), 2);
        assert_eq!(effective_rp_filter(0, 0), 0);
    }
}
