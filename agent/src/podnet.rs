//! Pod interface discovery over rtnetlink: names, indexes, MACs, MTUs, addresses and the
//! gateway each interface reaches, as the pod's own namespace sees them.
//!
//! A netlink socket binds to the namespace of the thread that creates it, so [`discover_current`]
//! opens its socket, on a current-thread runtime of its own, in the *calling thread's*
//! namespace, and [`discover`] runs it on a thread inside a pod's namespace
//! ([`crate::netns::in_netns`]). No shared runtime is ever used: a worker of one would stay in
//! whatever namespace it last entered.
//!
//! The kernel's answers are first reduced to plain records ([`LinkRec`], [`AddrRec`],
//! [`RouteRec`]) and [`assemble`]d into [`IfaceFacts`]; both steps are pure and unit-tested.
//! Interface names are never assumed: every non-loopback link is reported.
//!
//! [`keep_resolved`] makes the kernel keep the gateways' neighbour entries resolved
//! (`NTF_EXT_MANAGED`). The programs redirect steered packets with `bpf_redirect_neigh`; a
//! packet that has to wait for neighbour resolution there still carries the route of the
//! interface it was first routed to, and the kernel re-resolves queued packets through that
//! route, so it would leave the target interface with the *original* gateway's MACs. A
//! managed entry is always resolved, so steered packets never wait.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use futures::TryStreamExt;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope},
        link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage},
        neighbour::{NeighbourAttribute, NeighbourExtFlags, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType, RouteVia},
    },
};
use serde::Serialize;
use veer_common::{
    IFACE_F_GW4, IFACE_F_GW6, IFACE_F_V4, IFACE_F_V6, IfaceInfo, IfaceKey, MAX_SLOTS,
};

use crate::netns::{NetnsError, in_netns};

/// How long one discovery may take before it is abandoned (a netlink dump of a pod namespace
/// takes well under a millisecond).
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What one interface of a pod looks like from inside the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IfaceFacts {
    /// Interface name inside the pod (`eth0`, `eth1`, `net1`, …).
    pub name: String,
    /// Interface index inside the pod's namespace.
    pub ifindex: u32,
    /// Hardware address; all zero when the link has no 6-byte address.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: u32,
    /// Primary global IPv4 address.
    pub v4: Option<Ipv4Addr>,
    /// Global (not link-local) IPv6 address.
    pub v6: Option<Ipv6Addr>,
    /// IPv4 gateway reached through this interface (the `via` of its most general route).
    pub gw4: Option<Ipv4Addr>,
    /// IPv6 gateway reached through this interface; may be link-local.
    pub gw6: Option<Ipv6Addr>,
    /// Ethernet link layer (`ARPHRD_ETHER`).
    pub is_ether: bool,
    /// Administratively up (`IFF_UP`) and running (`IFF_RUNNING`: carrier, peer up).
    pub up: bool,
    /// Subnets of the interface's addresses (address, prefix length): what is on-link.
    pub connected: Vec<(IpAddr, u8)>,
}

impl IfaceFacts {
    /// Whether `via` can be a next hop on this interface: one of its gateways, or inside one of
    /// its subnets.
    pub fn reaches(&self, via: IpAddr) -> bool {
        let is_gw = match via {
            IpAddr::V4(v) => self.gw4 == Some(v),
            IpAddr::V6(v) => self.gw6 == Some(v),
        };
        is_gw
            || self
                .connected
                .iter()
                .any(|(a, len)| ipnet::IpNet::new(*a, *len).is_ok_and(|n| n.trunc().contains(&via)))
    }
}

/// Errors of discovery. Each names the namespace it was about.
#[derive(Debug, thiserror::Error)]
pub enum PodnetError {
    #[error("cannot work in network namespace {netns}")]
    Netns {
        netns: PathBuf,
        #[source]
        source: NetnsError,
    },
    #[error("cannot start the netlink runtime in network namespace {netns}")]
    Runtime {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open an rtnetlink socket in network namespace {netns}")]
    Socket {
        netns: String,
        #[source]
        source: io::Error,
    },
    #[error("listing {what} in network namespace {netns} failed")]
    Dump {
        netns: String,
        what: &'static str,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("listing {what} in network namespace {netns} took longer than {timeout:?}")]
    Timeout {
        netns: String,
        what: &'static str,
        timeout: Duration,
    },
    #[error("the discovery thread for network namespace {netns} panicked")]
    Panicked { netns: String },
    #[error("keeping the neighbour {addr} of {iface} resolved in network namespace {netns} failed")]
    Neighbour {
        netns: String,
        iface: String,
        addr: IpAddr,
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

/// Discovers the interfaces of the namespace at `netns` (e.g. `/var/run/netns/<pod>` or
/// `/proc/<pid>/ns/net`).
pub fn discover(netns: &Path) -> Result<Vec<IfaceFacts>, PodnetError> {
    let label = netns.display().to_string();
    in_netns(netns, move || discover_labelled(label)).map_err(|source| PodnetError::Netns {
        netns: netns.to_path_buf(),
        source,
    })?
}

/// Discovers the interfaces of the calling thread's namespace. Safe to call from inside an
/// async runtime: the work then runs on a helper thread, which starts in the same namespace.
pub fn discover_current() -> Result<Vec<IfaceFacts>, PodnetError> {
    discover_labelled(current_label())
}

/// The calling thread's namespace as `net:[inode]`, for error messages.
fn current_label() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "of the calling thread".into())
}

fn discover_labelled(label: String) -> Result<Vec<IfaceFacts>, PodnetError> {
    let label = label.as_str();
    with_netlink(label, |handle| async move {
        let (links, addrs, routes) = dump_all(&handle, label).await?;
        Ok(assemble(&links, &addrs, &routes))
    })
}

/// Runs `f` with an rtnetlink handle of the calling thread's network namespace, on a runtime
/// of its own. Inside a tokio runtime (where `block_on` would panic) it runs on a scoped
/// thread, which shares the caller's namespace.
fn with_netlink<T, F, Fut>(label: &str, f: F) -> Result<T, PodnetError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, PodnetError>>,
{
    let run = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|source| PodnetError::Runtime {
                netns: label.into(),
                source,
            })?;
        rt.block_on(async {
            // The socket is created here, in this thread's namespace.
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|source| PodnetError::Socket {
                    netns: label.into(),
                    source,
                })?;
            let conn = tokio::spawn(conn);
            let out = f(handle).await;
            conn.abort();
            out
        })
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|s| {
        s.spawn(run).join().map_err(|_| PodnetError::Panicked {
            netns: label.into(),
        })?
    })
}

type Dumped = (Vec<LinkRec>, Vec<AddrRec>, Vec<RouteRec>);

async fn dump_all(handle: &Handle, label: &str) -> Result<Dumped, PodnetError> {
    let links: Vec<LinkMessage> = dump(label, "links", handle.link().get().execute()).await?;
    let addrs: Vec<AddressMessage> =
        dump(label, "addresses", handle.address().get().execute()).await?;
    let mut routes: Vec<RouteMessage> = dump(
        label,
        "IPv4 routes",
        handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute(),
    )
    .await?;
    routes.extend(
        dump(
            label,
            "IPv6 routes",
            handle
                .route()
                .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
                .execute(),
        )
        .await?,
    );
    Ok((
        links.iter().filter_map(LinkRec::from_msg).collect(),
        addrs.iter().filter_map(AddrRec::from_msg).collect(),
        routes.iter().map(RouteRec::from_msg).collect(),
    ))
}

async fn dump<T>(
    label: &str,
    what: &'static str,
    stream: impl futures::Stream<Item = Result<T, rtnetlink::Error>>,
) -> Result<Vec<T>, PodnetError> {
    match tokio::time::timeout(DISCOVERY_TIMEOUT, stream.try_collect::<Vec<T>>()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(PodnetError::Dump {
            netns: label.into(),
            what,
            source: Box::new(source),
        }),
        Err(_) => Err(PodnetError::Timeout {
            netns: label.into(),
            what,
            timeout: DISCOVERY_TIMEOUT,
        }),
    }
}

/// The neighbours to keep resolved for steering to these interfaces: each interface's gateways.
pub fn gateways(facts: &[IfaceFacts]) -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    for f in facts {
        if let Some(g) = f.gw4 {
            out.push((f.name.clone(), IpAddr::V4(g)));
        }
        if let Some(g) = f.gw6 {
            out.push((f.name.clone(), IpAddr::V6(g)));
        }
    }
    out
}

/// Makes the kernel of the namespace at `netns` keep each `(interface, address)` neighbour
/// resolved (a managed entry, `ip neigh replace ADDR dev IFACE managed`; Linux 5.16+).
/// Idempotent. Interfaces that do not exist (any more) are skipped.
pub fn keep_resolved(netns: &Path, targets: &[(String, IpAddr)]) -> Result<(), PodnetError> {
    let label = netns.display().to_string();
    let targets = targets.to_vec();
    in_netns(netns, move || keep_resolved_labelled(&label, &targets)).map_err(|source| {
        PodnetError::Netns {
            netns: netns.to_path_buf(),
            source,
        }
    })?
}

/// [`keep_resolved`] in the calling thread's namespace.
pub fn keep_resolved_current(targets: &[(String, IpAddr)]) -> Result<(), PodnetError> {
    keep_resolved_labelled(&current_label(), targets)
}

fn keep_resolved_labelled(label: &str, targets: &[(String, IpAddr)]) -> Result<(), PodnetError> {
    with_netlink(label, |handle| async move {
        let links: Vec<LinkMessage> = dump(label, "links", handle.link().get().execute()).await?;
        let links: Vec<LinkRec> = links.iter().filter_map(LinkRec::from_msg).collect();
        let mut result = Ok(());
        for (iface, addr) in targets {
            let Some(link) = links.iter().find(|l| &l.name == iface) else {
                continue;
            };
            let mut req = handle.neighbours().add(link.index, *addr).replace();
            let m = req.message_mut();
            // A managed entry starts unresolved; the kernel resolves it and keeps it so.
            m.header.state = NeighbourState::None;
            m.attributes
                .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
            let r = match tokio::time::timeout(DISCOVERY_TIMEOUT, req.execute()).await {
                Ok(r) => r,
                Err(_) => Err(rtnetlink::Error::RequestFailed),
            };
            if let Err(source) = r {
                result = Err(PodnetError::Neighbour {
                    netns: label.into(),
                    iface: iface.clone(),
                    addr: *addr,
                    source: Box::new(source),
                });
                break;
            }
        }
        result
    })
}

/// The interface called `name`, if any.
pub fn find<'a>(facts: &'a [IfaceFacts], name: &str) -> Option<&'a IfaceFacts> {
    facts.iter().find(|f| f.name == name)
}

/// Slot → the same pod's interface in that slot: ifindex (0 = none) and MAC, i.e. its
/// `VEER_IFACES_V1` key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotTargets {
    pub ifindex: [u32; MAX_SLOTS],
    pub mac: [[u8; 6]; MAX_SLOTS],
}

impl SlotTargets {
    /// Puts `facts` in `slot`.
    pub fn set(&mut self, slot: u16, facts: &IfaceFacts) {
        self.ifindex[usize::from(slot)] = facts.ifindex;
        self.mac[usize::from(slot)] = facts.mac;
    }
}

/// The `VEER_IFACES_V1` key of an interface.
pub fn iface_key(facts: &IfaceFacts) -> IfaceKey {
    IfaceKey::new(facts.ifindex, facts.mac)
}

/// The `VEER_IFACES_V1` value of an interface of the pod whose namespace has `cookie`.
pub fn iface_info(
    facts: &IfaceFacts,
    cookie: u64,
    ruleset: u32,
    slot: u32,
    targets: &SlotTargets,
) -> IfaceInfo {
    let mut info = IfaceInfo {
        netns_cookie: cookie,
        ruleset,
        slot,
        ifindex: facts.ifindex,
        mtu: facts.mtu,
        mac: facts.mac,
        slots: targets.ifindex,
        slot_macs: targets.mac,
        ..IfaceInfo::default()
    };
    if let Some(a) = facts.v4 {
        info.addr4 = a.octets();
        info.flags |= IFACE_F_V4;
    }
    if let Some(a) = facts.v6 {
        info.addr6 = a.octets();
        info.flags |= IFACE_F_V6;
    }
    if let Some(g) = facts.gw4 {
        info.gw4 = g.octets();
        info.flags |= IFACE_F_GW4;
    }
    if let Some(g) = facts.gw6 {
        info.gw6 = g.octets();
        info.flags |= IFACE_F_GW6;
    }
    info
}

/// One link, reduced to what discovery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRec {
    pub index: u32,
    pub name: String,
    /// The hardware address when it is 6 bytes long.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub is_ether: bool,
    pub up: bool,
    pub loopback: bool,
}

impl LinkRec {
    /// `None` for a link without a name (the kernel always sends one; nothing to report
    /// otherwise).
    pub fn from_msg(m: &LinkMessage) -> Option<Self> {
        let mut name = None;
        let mut mac = None;
        let mut mtu = 0;
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(b) => mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
                LinkAttribute::Mtu(v) => mtu = *v,
                _ => {}
            }
        }
        let flags = m.header.flags;
        Some(Self {
            index: m.header.index,
            name: name?,
            mac,
            mtu,
            is_ether: m.header.link_layer_type == LinkLayerType::Ether,
            up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
            loopback: flags.contains(LinkFlags::Loopback)
                || m.header.link_layer_type == LinkLayerType::Loopback,
        })
    }
}

/// One address, reduced to what discovery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrRec {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// Scope global (`universe`).
    pub global: bool,
    /// IPv4 secondary address.
    pub secondary: bool,
    /// Not (yet, or any more) usable as a source: tentative, DAD failed.
    pub unusable: bool,
    /// Usable, but deprecated (preferred lifetime over).
    pub deprecated: bool,
}

impl AddrRec {
    /// `None` for a message without an address.
    pub fn from_msg(m: &AddressMessage) -> Option<Self> {
        let mut local = None;
        let mut address = None;
        // The header carries the low 8 flag bits, IFA_FLAGS all of them.
        let mut flags = AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()));
        for a in &m.attributes {
            match a {
                AddressAttribute::Local(a) => local = Some(*a),
                AddressAttribute::Address(a) => address = Some(*a),
                AddressAttribute::Flags(f) => flags |= *f,
                _ => {}
            }
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
        // point-to-point links (and the only one IPv6 sends).
        let addr = local.or(address)?;
        Some(Self {
            index: m.header.index,
            addr,
            prefix_len: m.header.prefix_len,
            global: m.header.scope == AddressScope::Universe,
            secondary: flags.contains(AddressFlags::Secondary),
            unusable: flags.contains(AddressFlags::Tentative)
                || flags.contains(AddressFlags::Dadfailed),
            deprecated: flags.contains(AddressFlags::Deprecated),
        })
    }
}

/// One route of any table, reduced to what discovery needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRec {
    pub table: u32,
    pub unicast: bool,
    pub dst_len: u8,
    pub priority: u32,
    /// `(output ifindex, gateway)` of each next hop (one unless multipath).
    pub hops: Vec<(u32, Option<IpAddr>)>,
}

fn gateway_of(attrs: &[RouteAttribute]) -> Option<IpAddr> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
        RouteAttribute::Via(RouteVia::Inet(g)) => Some(IpAddr::V4(*g)),
        RouteAttribute::Via(RouteVia::Inet6(g)) => Some(IpAddr::V6(*g)),
        _ => None,
    })
}

impl RouteRec {
    pub fn from_msg(m: &RouteMessage) -> Self {
        let mut table = u32::from(m.header.table);
        let mut priority = 0;
        let mut oif = None;
        let mut hops = Vec::new();
        for a in &m.attributes {
            match a {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Priority(p) => priority = *p,
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::MultiPath(nhs) => hops.extend(
                    nhs.iter()
                        .map(|nh| (nh.interface_index, gateway_of(&nh.attributes))),
                ),
                _ => {}
            }
        }
        if let Some(i) = oif {
            hops.push((i, gateway_of(&m.attributes)));
        }
        Self {
            table,
            unicast: m.header.kind == RouteType::Unicast,
            dst_len: m.header.destination_prefix_length,
            priority,
            hops,
        }
    }
}

const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

fn is_link_local6(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The best address of `index` among `addrs` that `pick` accepts: never one that is not usable
/// as a source (tentative, DAD failed: the kernel would not use it, and replies to it are
/// dropped; the `RTM_NEWADDR` of DAD completing makes it a candidate), not deprecated first,
/// then dump order (the kernel lists an interface's primary address first).
fn best_addr<T>(addrs: &[AddrRec], index: u32, pick: impl Fn(&AddrRec) -> Option<T>) -> Option<T> {
    addrs
        .iter()
        .filter(|a| a.index == index && a.global && !a.unusable)
        .filter_map(|a| pick(a).map(|v| ((a.deprecated, a.secondary), v)))
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, v)| v)
}

/// The gateway reached through `index` in the main table: the `via` of the most general
/// unicast route (a default route first), lowest metric among equals.
fn best_gateway<T>(
    routes: &[RouteRec],
    index: u32,
    pick: impl Fn(IpAddr) -> Option<T>,
) -> Option<T> {
    routes
        .iter()
        .filter(|r| r.table == RT_TABLE_MAIN && r.unicast)
        .flat_map(|r| {
            r.hops
                .iter()
                .filter(move |(oif, _)| *oif == index)
                .filter_map(|(_, gw)| gw.and_then(&pick))
                .map(move |g| ((r.dst_len, r.priority), g))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, g)| g)
}

/// Builds the facts of every non-loopback link, in ifindex order.
pub fn assemble(links: &[LinkRec], addrs: &[AddrRec], routes: &[RouteRec]) -> Vec<IfaceFacts> {
    let mut out: Vec<IfaceFacts> = links
        .iter()
        .filter(|l| !l.loopback && l.name != "lo")
        .map(|l| IfaceFacts {
            name: l.name.clone(),
            ifindex: l.index,
            mac: l.mac.unwrap_or_default(),
            mtu: l.mtu,
            v4: best_addr(addrs, l.index, |a| match a.addr {
                IpAddr::V4(v) => Some(v),
                IpAddr::V6(_) => None,
            }),
            v6: best_addr(addrs, l.index, |a| match a.addr {
                IpAddr::V6(v) if !is_link_local6(&v) && !v.is_multicast() && !v.is_loopback() => {
                    Some(v)
                }
                _ => None,
            }),
            gw4: best_gateway(routes, l.index, |g| match g {
                IpAddr::V4(v) if !v.is_unspecified() => Some(v),
                _ => None,
            }),
            gw6: best_gateway(routes, l.index, |g| match g {
                IpAddr::V6(v) if !v.is_unspecified() => Some(v),
                _ => None,
            }),
            is_ether: l.is_ether,
            up: l.up,
            connected: addrs
                .iter()
                .filter(|a| a.index == l.index)
                .map(|a| (a.addr, a.prefix_len))
                .collect(),
        })
        .collect();
    out.sort_by_key(|f| f.ifindex);
    out
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::{
        AddressFamily,
        route::{RouteNextHop, RouteScope},
    };

    use super::*;

    fn link(
        index: u32,
        name: &str,
        mac: &[u8],
        mtu: u32,
        ty: LinkLayerType,
        flags: LinkFlags,
    ) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.link_layer_type = ty;
        m.header.flags = flags;
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        m.attributes.push(LinkAttribute::Mtu(mtu));
        m
    }

    fn addr(
        index: u32,
        a: &str,
        prefix: u8,
        scope: AddressScope,
        flags: AddressFlags,
    ) -> AddressMessage {
        let a: IpAddr = a.parse().unwrap();
        let mut m = AddressMessage::default();
        m.header.family = if a.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.index = index;
        m.header.prefix_len = prefix;
        m.header.scope = scope;
        m.attributes.push(AddressAttribute::Address(a));
        if a.is_ipv4() {
            m.attributes.push(AddressAttribute::Local(a));
        }
        m.attributes.push(AddressAttribute::Flags(flags));
        m
    }

    fn route(
        dst_len: u8,
        oif: u32,
        gw: Option<&str>,
        table: u8,
        prio: Option<u32>,
    ) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.table = table;
        m.header.kind = RouteType::Unicast;
        m.header.scope = RouteScope::Universe;
        m.header.destination_prefix_length = dst_len;
        m.attributes.push(RouteAttribute::Oif(oif));
        if let Some(g) = gw {
            let g: IpAddr = g.parse().unwrap();
            m.attributes.push(RouteAttribute::Gateway(g.into()));
        }
        if let Some(p) = prio {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        m
    }

    const UP: LinkFlags = LinkFlags::Up
        .union(LinkFlags::Running)
        .union(LinkFlags::LowerUp);
    const MAIN: u8 = RouteHeader::RT_TABLE_MAIN;

    /// A Calico `eth0` plus an OVN `net1`, as `ip` would show them.
    fn calico_ovn_pod() -> (Vec<LinkRec>, Vec<AddrRec>, Vec<RouteRec>) {
        let links = [
            link(
                1,
                "lo",
                &[0; 6],
                65536,
                LinkLayerType::Loopback,
                UP | LinkFlags::Loopback,
            ),
            link(
                3,
                "eth0",
                &[2, 0, 0, 0, 0, 1],
                1500,
                LinkLayerType::Ether,
                UP,
            ),
            link(
                7,
                "net1",
                &[2, 0, 0, 0, 0, 2],
                1400,
                LinkLayerType::Ether,
                UP,
            ),
        ];
        let none = AddressFlags::Permanent;
        let addrs = [
            addr(1, "127.0.0.1", 8, AddressScope::Host, none),
            addr(3, "10.244.1.5", 32, AddressScope::Universe, none),
            addr(3, "fe80::1", 64, AddressScope::Link, none),
            addr(3, "fd00:244::5", 128, AddressScope::Universe, none),
            addr(7, "10.124.2.5", 24, AddressScope::Universe, none),
            addr(
                7,
                "10.124.2.99",
                24,
                AddressScope::Universe,
                none | AddressFlags::Secondary,
            ),
            addr(7, "fd00:124::5", 64, AddressScope::Universe, none),
        ];
        let routes = [
            route(0, 3, Some("169.254.1.1"), MAIN, None),
            route(32, 3, None, MAIN, None),
            route(24, 7, None, MAIN, None),
            route(16, 7, Some("10.124.2.1"), MAIN, None),
            route(0, 3, Some("fe80::ecee:eeff:feee:eeee"), MAIN, Some(1024)),
            route(48, 7, Some("fd00:124::1"), MAIN, Some(1024)),
            // Another table's default through net1 is not the pod's main view.
            route(0, 7, Some("10.124.9.9"), 100, None),
        ];
        (
            links.iter().filter_map(LinkRec::from_msg).collect(),
            addrs.iter().filter_map(AddrRec::from_msg).collect(),
            routes.iter().map(RouteRec::from_msg).collect(),
        )
    }

    #[test]
    fn calico_and_ovn_interfaces_get_their_addresses_and_gateways_and_lo_is_skipped() {
        let (l, a, r) = calico_ovn_pod();
        let f = assemble(&l, &a, &r);
        assert_eq!(f.len(), 2, "{f:?}");
        let eth0 = find(&f, "eth0").unwrap();
        assert_eq!(eth0.ifindex, 3);
        assert_eq!(eth0.mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(eth0.mtu, 1500);
        assert_eq!(eth0.v4, Some("10.244.1.5".parse().unwrap()));
        assert_eq!(eth0.v6, Some("fd00:244::5".parse().unwrap()));
        assert_eq!(eth0.gw4, Some("169.254.1.1".parse().unwrap()));
        assert_eq!(eth0.gw6, Some("fe80::ecee:eeff:feee:eeee".parse().unwrap()));
        assert!(eth0.is_ether && eth0.up);
        let net1 = find(&f, "net1").unwrap();
        assert_eq!(
            net1.v4,
            Some("10.124.2.5".parse().unwrap()),
            "primary, not secondary"
        );
        assert_eq!(
            net1.gw4,
            Some("10.124.2.1".parse().unwrap()),
            "main table only"
        );
        assert_eq!(net1.gw6, Some("fd00:124::1".parse().unwrap()));
        assert_eq!(net1.mtu, 1400);
    }

    #[test]
    fn default_route_wins_over_more_specific_and_lower_metric_breaks_ties() {
        let (l, a, _) = calico_ovn_pod();
        let routes: Vec<RouteRec> = [
            route(8, 3, Some("10.0.0.8"), MAIN, None),
            route(0, 3, Some("10.0.0.2"), MAIN, Some(200)),
            route(0, 3, Some("10.0.0.1"), MAIN, Some(100)),
        ]
        .iter()
        .map(RouteRec::from_msg)
        .collect();
        let f = assemble(&l, &a, &routes);
        assert_eq!(
            find(&f, "eth0").unwrap().gw4,
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(find(&f, "net1").unwrap().gw4, None);
    }

    #[test]
    fn multipath_next_hops_count_for_their_own_interface() {
        let (l, a, _) = calico_ovn_pod();
        let mut m = RouteMessage::default();
        m.header.table = MAIN;
        m.header.kind = RouteType::Unicast;
        for (i, g) in [(3u32, "10.0.0.1"), (7, "10.124.2.1")] {
            let g: IpAddr = g.parse().unwrap();
            let mut nh = RouteNextHop::default();
            nh.interface_index = i;
            nh.attributes.push(RouteAttribute::Gateway(g.into()));
            m.attributes.push(RouteAttribute::MultiPath(vec![nh]));
        }
        let f = assemble(&l, &a, &[RouteRec::from_msg(&m)]);
        assert_eq!(
            find(&f, "eth0").unwrap().gw4,
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            find(&f, "net1").unwrap().gw4,
            Some("10.124.2.1".parse().unwrap())
        );
    }

    #[test]
    fn tentative_and_link_local_v6_are_not_chosen_when_a_usable_global_exists() {
        let links: Vec<LinkRec> = [link(
            4,
            "eth1",
            &[2, 0, 0, 0, 0, 4],
            1500,
            LinkLayerType::Ether,
            UP,
        )]
        .iter()
        .filter_map(LinkRec::from_msg)
        .collect();
        let addrs: Vec<AddrRec> = [
            addr(
                4,
                "fe80::4",
                64,
                AddressScope::Universe,
                AddressFlags::Permanent,
            ),
            addr(
                4,
                "fd00::1",
                64,
                AddressScope::Universe,
                AddressFlags::Tentative,
            ),
            addr(
                4,
                "fd00::2",
                64,
                AddressScope::Universe,
                AddressFlags::Permanent,
            ),
        ]
        .iter()
        .filter_map(AddrRec::from_msg)
        .collect();
        let f = assemble(&links, &addrs, &[]);
        assert_eq!(f[0].v6, Some("fd00::2".parse().unwrap()));
        assert_eq!(f[0].v4, None);
        assert_eq!((f[0].gw4, f[0].gw6), (None, None));
        // Only a tentative global address (DAD not done yet): none, until it becomes usable.
        let f = assemble(&links, &addrs[..2], &[]);
        assert_eq!(
            f[0].v6, None,
            "a tentative address is never a steering source"
        );
    }

    #[test]
    fn odd_links_are_reported_without_panicking() {
        // No name: skipped. A 4-byte address (ipip), no MTU, down: reported as such.
        let mut nameless = LinkMessage::default();
        nameless.header.index = 9;
        let tunnel = link(
            10,
            "tun0",
            &[10, 0, 0, 1],
            0,
            LinkLayerType::Tunnel,
            LinkFlags::empty(),
        );
        let links: Vec<LinkRec> = [nameless, tunnel]
            .iter()
            .filter_map(LinkRec::from_msg)
            .collect();
        let mut empty_addr = AddressMessage::default();
        empty_addr.header.index = 10;
        let addrs: Vec<AddrRec> = [empty_addr].iter().filter_map(AddrRec::from_msg).collect();
        assert!(addrs.is_empty());
        let routes = [RouteRec::from_msg(&RouteMessage::default())];
        let f = assemble(&links, &addrs, &routes);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].name, "tun0");
        assert_eq!(f[0].mac, [0; 6]);
        assert!(!f[0].is_ether && !f[0].up);
    }

    #[test]
    fn iface_info_sets_exactly_the_flags_of_known_facts() {
        let (l, a, r) = calico_ovn_pod();
        let f = assemble(&l, &a, &r);
        let mut slots = SlotTargets::default();
        slots.set(0, find(&f, "eth0").unwrap());
        slots.set(2, find(&f, "net1").unwrap());
        let i = iface_info(find(&f, "net1").unwrap(), 42, 9, 2, &slots);
        assert_eq!(
            (i.netns_cookie, i.ruleset, i.slot, i.ifindex, i.mtu),
            (42, 9, 2, 7, 1400)
        );
        assert_eq!(i.flags, IFACE_F_V4 | IFACE_F_V6 | IFACE_F_GW4 | IFACE_F_GW6);
        assert_eq!(i.addr4, [10, 124, 2, 5]);
        assert_eq!(i.gw4, [10, 124, 2, 1]);
        assert_eq!(i.addr6, "fd00:124::5".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(i.slots, slots.ifindex);
        assert_eq!(i.slot_macs, slots.mac);
        assert_eq!(i.slot_macs[2], [2, 0, 0, 0, 0, 2]);
        assert_eq!(i.mac, [2, 0, 0, 0, 0, 2]);

        let bare = IfaceFacts {
            name: "net2".into(),
            ifindex: 11,
            mac: [0; 6],
            mtu: 9000,
            v4: None,
            v6: Some("fd00::9".parse().unwrap()),
            gw4: None,
            gw6: None,
            is_ether: true,
            up: true,
            connected: vec![("fd00::9".parse().unwrap(), 64)],
        };
        assert!(bare.reaches("fd00::1".parse().unwrap()), "on-link");
        assert!(!bare.reaches("fd01::1".parse().unwrap()), "elsewhere");
        let i = iface_info(&bare, 1, 1, 3, &SlotTargets::default());
        assert_eq!(i.flags, IFACE_F_V6);
        assert_eq!((i.addr4, i.gw4, i.gw6), ([0; 4], [0; 4], [0; 16]));
    }

    #[test]
    fn discovery_of_the_own_namespace_works_from_a_plain_thread_and_from_a_runtime() {
        let plain = discover_current().expect("discover");
        assert!(plain.iter().all(|f| f.name != "lo"), "{plain:?}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let inside = rt
            .block_on(async { discover_current() })
            .expect("discover in runtime");
        assert_eq!(
            plain
                .iter()
                .map(|f| (&f.name, f.ifindex))
                .collect::<Vec<_>>(),
            inside
                .iter()
                .map(|f| (&f.name, f.ifindex))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn gateways_to_keep_resolved_are_every_interfaces_gateways_by_name() {
        let (l, a, r) = calico_ovn_pod();
        let g = gateways(&assemble(&l, &a, &r));
        let want: Vec<(String, IpAddr)> = [
            ("eth0", "169.254.1.1"),
            ("eth0", "fe80::ecee:eeff:feee:eeee"),
            ("net1", "10.124.2.1"),
            ("net1", "fd00:124::1"),
        ]
        .iter()
        .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
        .collect();
        assert_eq!(g, want);
        assert!(gateways(&[]).is_empty());
    }

    #[test]
    fn missing_namespace_error_names_it() {
        let e = discover(Path::new("/nonexistent/netns/pod")).unwrap_err();
        assert!(matches!(e, PodnetError::Netns { .. }));
        assert!(e.to_string().contains("/nonexistent/netns/pod"), "{e}");
        let e = keep_resolved(Path::new("/nonexistent/netns/pod"), &[]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns/pod"), "{e}");
        // Nothing to do is no error, and a missing interface is skipped.
        keep_resolved_current(&[]).unwrap();
        keep_resolved_current(&[("veer-no-such-if".into(), "10.0.0.1".parse().unwrap())]).unwrap();
    }
}
