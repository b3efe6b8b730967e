//! Destinations the programs never steer, defined once: the egress and ingress programs pass
//! them untouched (counted `PASS_MCAST`) and `veer trace` explains them with the same rule.
//!
//! Not an ABI type (never stored in a map), so an `enum` is fine here.

use crate::FAMILY_V4;

/// Why a destination is never steered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NeverSteered {
    /// IPv4 `255.255.255.255`.
    Broadcast,
    /// IPv4 `224.0.0.0/4`, IPv6 `ff00::/8`.
    Multicast,
    /// IPv4 `240.0.0.0/4` (but broadcast).
    Reserved,
    /// IPv4 `169.254.0.0/16`, IPv6 `fe80::/10`.
    LinkLocal,
    /// IPv4 `127.0.0.0/8`, IPv6 `::1`.
    Loopback,
    /// IPv4 `0.0.0.0/8`, IPv6 `::`.
    Unspecified,
}

impl NeverSteered {
    /// Human description of the class, e.g. `link-local`.
    pub const fn describe(self) -> &'static str {
        match self {
            NeverSteered::Broadcast => "broadcast",
            NeverSteered::Multicast => "multicast",
            NeverSteered::Reserved => "reserved (240.0.0.0/4)",
            NeverSteered::LinkLocal => "link-local",
            NeverSteered::Loopback => "loopback",
            NeverSteered::Unspecified => "unspecified",
        }
    }
}

/// Whether (and why) destination `d` of family `family` ([`FAMILY_V4`]: the first 4 bytes) is
/// never steered. `d` in network order, as in a [`crate::FlowKey`].
#[inline(always)]
pub fn never_steered(family: u8, d: &[u8; 16]) -> Option<NeverSteered> {
    if family == FAMILY_V4 {
        if d[0] >= 224 {
            if d[0] == 255 && d[1] == 255 && d[2] == 255 && d[3] == 255 {
                Some(NeverSteered::Broadcast)
            } else if d[0] < 240 {
                Some(NeverSteered::Multicast)
            } else {
                Some(NeverSteered::Reserved)
            }
        } else if d[0] == 169 && d[1] == 254 {
            Some(NeverSteered::LinkLocal)
        } else if d[0] == 127 {
            Some(NeverSteered::Loopback)
        } else if d[0] == 0 {
            Some(NeverSteered::Unspecified)
        } else {
            None
        }
    } else if d[0] == 0xff {
        Some(NeverSteered::Multicast)
    } else if d[0] == 0xfe && (d[1] & 0xc0) == 0x80 {
        Some(NeverSteered::LinkLocal)
    } else {
        let mut lo = [0u8; 16];
        lo[15] = 1;
        if d == &[0u8; 16] {
            Some(NeverSteered::Unspecified)
        } else if d == &lo {
            Some(NeverSteered::Loopback)
        } else {
            None
        }
    }
}

/// Whether destination `d` is never steered (see [`never_steered`]).
#[inline(always)]
pub fn is_never_steered(family: u8, d: &[u8; 16]) -> bool {
    never_steered(family, d).is_some()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::FAMILY_V6;

    fn v4(a: Ipv4Addr) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a.octets());
        b
    }

    #[test]
    fn each_class_of_never_steered_destination_is_named() {
        for (a, want) in [
            ("255.255.255.255", Some(NeverSteered::Broadcast)),
            ("224.0.0.251", Some(NeverSteered::Multicast)),
            ("239.255.255.255", Some(NeverSteered::Multicast)),
            ("240.0.0.1", Some(NeverSteered::Reserved)),
            ("169.254.1.1", Some(NeverSteered::LinkLocal)),
            ("127.0.0.1", Some(NeverSteered::Loopback)),
            ("0.1.2.3", Some(NeverSteered::Unspecified)),
            ("172.16.10.7", None),
            ("169.253.1.1", None),
        ] {
            let a: Ipv4Addr = a.parse().unwrap();
            assert_eq!(never_steered(FAMILY_V4, &v4(a)), want, "{a}");
        }
        for (a, want) in [
            ("ff02::1", Some(NeverSteered::Multicast)),
            ("fe80::1", Some(NeverSteered::LinkLocal)),
            ("febf::1", Some(NeverSteered::LinkLocal)),
            ("::1", Some(NeverSteered::Loopback)),
            ("::", Some(NeverSteered::Unspecified)),
            ("fec0::1", None),
            ("::2", None),
            ("fd00:172:16:10::7", None),
        ] {
            let a: Ipv6Addr = a.parse().unwrap();
            assert_eq!(never_steered(FAMILY_V6, &a.octets()), want, "{a}");
        }
    }

    proptest! {
        /// The rule agrees with the standard library's classification of addresses.
        #[test]
        fn never_steered_v4_matches_std(a in any::<u32>()) {
            let a = Ipv4Addr::from(a);
            let o = a.octets();
            let std_says = a.is_broadcast() || a.is_multicast() || o[0] >= 240
                || a.is_link_local() || a.is_loopback() || o[0] == 0;
            prop_assert_eq!(is_never_steered(FAMILY_V4, &v4(a)), std_says);
        }

        #[test]
        fn never_steered_v6_matches_std(a in any::<u128>()) {
            let a = Ipv6Addr::from(a);
            let std_says = a.is_multicast() || a.is_unicast_link_local() || a.is_loopback()
                || a.is_unspecified();
            prop_assert_eq!(is_never_steered(FAMILY_V6, &a.octets()), std_says);
        }
    }
}
