//! rtnetlink: the anchor address, the `local PREFIX` route, and an address
//! dump (diagnostics; the bind guard reads the kernel's table directly).
//!
//! Together the anchor and the route are what make the prefix behave like
//! 127.0.0.0/8:
//!
//! ```text
//! ip -6 addr add ANCHOR/128 dev lo nodad noprefixroute
//! ip -6 route add local PREFIX dev lo src ANCHOR table local proto static
//! ```
//!
//! The route makes every address of the prefix local (packets to it are
//! delivered on this host, over `lo`); the anchor is a real address inside the
//! prefix that serves as the route's preferred source, so that connecting to
//! a prefix address picks a source from the prefix too.
//!
//! Everything here acts on the network namespace of the thread that called
//! [`Netlink::connect`]: a netlink socket belongs to the namespace it was
//! created in, whatever thread uses it later.
use std::net::{IpAddr, Ipv6Addr};

use anyhow::{anyhow, Context};
use futures::TryStreamExt;
use netlink_packet_route::{
    address::{AddressAttribute, AddressFlags, AddressHeaderFlags},
    link::LinkFlags,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType},
    AddressFamily,
};
use rtnetlink::{AddressMessageBuilder, Handle, RouteMessageBuilder};

use crate::config::Prefix;

/// The kernel's `local` routing table (`RT_TABLE_LOCAL`), consulted before
/// `main`; where the kernel keeps its own routes for local addresses.
pub const RT_TABLE_LOCAL: u8 = 255;

/// Protocol (`proto`) of the local route. `static` is what an administrator's
/// `ip route add ... proto static` would show; deletion matches on it, so a
/// route someone added by hand with another protocol is left alone.
pub const ROUTE_PROTOCOL: RouteProtocol = RouteProtocol::Static;

/// Name of the loopback interface the prefix lives on.
const LO: &str = "lo";

/// An IPv6 address configured on an interface of this netns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr {
    pub addr: Ipv6Addr,
    /// The prefix length it was added with (`ip addr del` needs it).
    pub prefix_len: u8,
    pub ifindex: u32,
    /// `IFA_F_*` flags: the full `IFA_FLAGS` attribute if the kernel sent
    /// it, else the 8-bit header field.
    pub flags: u32,
}

/// What [`Netlink::local_route_state`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteState {
    Ok,
    /// No local route for the prefix on `lo` in table local.
    Missing,
    /// There, but without the anchor as its source.
    NoSource,
}

/// One IPv6 route of any table, as `ip -6 route show table all` lists it
/// (the fields `panda doctor` needs to tell pandad's routes from others).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub table: u32,
    pub kind: RouteType,
    pub protocol: RouteProtocol,
    pub dst: Ipv6Addr,
    pub dst_len: u8,
    /// Output interface (none for e.g. `unreachable` or multipath routes).
    pub oif: Option<u32>,
}

/// rtnetlink multicast groups whose events can mean that pandad's route or
/// anchor changed: links (`lo` down removes routes), IPv6 addresses and
/// IPv6 routes (`RTNLGRP_LINK`, `RTNLGRP_IPV6_IFADDR`, `RTNLGRP_IPV6_ROUTE`).
const EVENT_GROUPS: [u32; 3] = [1, 9, 11];

/// A subscription to the rtnetlink events of [`EVENT_GROUPS`] in this
/// namespace: each event is only a nudge to look again ([`crate::reconcile`]
/// compares the kernel's state with what it should be).
pub struct Events {
    messages: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    // Keeps the connection task alive.
    _handle: Handle,
}

impl Events {
    /// Joins the groups; spawns the socket's task on the current runtime.
    pub fn subscribe() -> anyhow::Result<Events> {
        let (mut conn, handle, messages) =
            rtnetlink::new_connection().context("opening a NETLINK_ROUTE event socket")?;
        use rtnetlink::sys::AsyncSocket;
        // Only a bound netlink socket is on the kernel's multicast lists.
        conn.socket_mut()
            .socket_mut()
            .bind_auto()
            .context("binding the rtnetlink event socket")?;
        for group in EVENT_GROUPS {
            conn.socket_mut()
                .socket_mut()
                .add_membership(group)
                .with_context(|| format!("joining rtnetlink multicast group {group}"))?;
        }
        tokio::runtime::Handle::try_current()
            .context("spawning the netlink event task: no tokio runtime is running")?
            .spawn(conn);
        Ok(Events {
            messages,
            _handle: handle,
        })
    }

    /// Waits for the next event, then takes every event already queued:
    /// one look serves a burst.
    pub async fn next_burst(&mut self) {
        use futures::StreamExt;
        if self.messages.next().await.is_none() {
            // The socket task ended (it does not, short of an error): fall
            // back on the periodic check rather than spinning.
            std::future::pending::<()>().await;
        }
        while self.messages.try_recv().is_ok() {}
    }
}

/// A connection to the kernel's routing netlink (NETLINK_ROUTE), bound to
/// the network namespace it was opened in. One per daemon: it owns the
/// request/response plumbing for the anchor and the local route.
pub struct Netlink {
    handle: Handle,
}

/// The errno of a failed netlink request, if the kernel answered with one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

impl Netlink {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network
    /// namespace and spawns its connection task on the current tokio runtime.
    pub async fn connect() -> anyhow::Result<Netlink> {
        let (conn, handle, _unsolicited) =
            rtnetlink::new_connection().context("opening a NETLINK_ROUTE socket")?;
        let rt = tokio::runtime::Handle::try_current()
            .context("spawning the netlink connection: no tokio runtime is running")?;
        rt.spawn(conn);
        Ok(Netlink { handle })
    }

    /// The interface index of `lo` (1 in practice, but looked up rather than
    /// assumed). Public because the address map the BPF guard reads is keyed
    /// by ifindex.
    pub async fn lo_ifindex(&self) -> anyhow::Result<u32> {
        Ok(self.lo_link().await?.header.index)
    }

    async fn lo_link(&self) -> anyhow::Result<netlink_packet_route::link::LinkMessage> {
        self.handle
            .link()
            .get()
            .match_name(LO)
            .execute()
            .try_next()
            .await
            .context("looking up the loopback interface lo")?
            .ok_or_else(|| {
                anyhow!("looking up the loopback interface lo: the kernel returned no link")
            })
    }

    /// Whether `lo` is administratively up (IFF_UP). A down `lo` delivers
    /// nothing, so pandad refuses to start on one rather than half-work.
    pub async fn lo_is_up(&self) -> anyhow::Result<bool> {
        Ok(self.lo_link().await?.header.flags.contains(LinkFlags::Up))
    }

    /// Adds `anchor/128` on `lo` with `nodad noprefixroute` (no duplicate
    /// address detection on loopback, and no extra `/128` route in `main`:
    /// the local route covers it). Ok(true) if added, Ok(false) if `lo`
    /// already had it (EEXIST), in which case it is not ours to delete.
    pub async fn add_anchor(&self, anchor: Ipv6Addr) -> anyhow::Result<bool> {
        let what = || format!("adding the anchor address {anchor}/128 on lo");
        let lo = self.lo_ifindex().await.with_context(what)?;
        let mut req = self.handle.address().add(lo, IpAddr::V6(anchor), 128);
        let msg = req.message_mut();
        // IFA_F_NOPREFIXROUTE does not fit the 8-bit header field; the kernel
        // takes IFA_FLAGS over the header when both are present.
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Flags(
            AddressFlags::Nodad | AddressFlags::Noprefixroute,
        ));
        match req.execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e).with_context(what),
        }
    }

    /// Removes `anchor/128` from `lo`; Ok if it is already gone.
    pub async fn del_anchor(&self, anchor: Ipv6Addr) -> anyhow::Result<()> {
        let what = || format!("removing the anchor address {anchor}/128 from lo");
        let lo = self.lo_ifindex().await.with_context(what)?;
        let msg = AddressMessageBuilder::<Ipv6Addr>::new()
            .index(lo)
            .address(anchor, 128)
            .build();
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => Ok(()),
            Err(e) => Err(e).with_context(what),
        }
    }

    /// The local route for `prefix` as a netlink message: type local, table
    /// local, scope host, `dev lo`, protocol [`ROUTE_PROTOCOL`].
    fn local_route(prefix: &Prefix, lo: u32) -> RouteMessageBuilder<Ipv6Addr> {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(prefix.network(), prefix.len())
            .output_interface(lo)
            .table_id(u32::from(RT_TABLE_LOCAL))
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .protocol(ROUTE_PROTOCOL)
    }

    /// `ip -6 route add local PREFIX dev lo src ANCHOR table local`: makes
    /// every address of the prefix local. The anchor must already be on `lo`
    /// (the kernel rejects a `src` that is not a local address). Ok(true) if
    /// added, Ok(false) if a route for PREFIX with the same metric already
    /// exists in table local (EEXIST).
    pub async fn add_local_route(&self, prefix: &Prefix) -> anyhow::Result<bool> {
        let what = || {
            format!(
                "adding the local route for {prefix} on lo (src {}, table local)",
                prefix.anchor()
            )
        };
        let lo = self.lo_ifindex().await.with_context(what)?;
        let msg: RouteMessage = Self::local_route(prefix, lo)
            .pref_source(prefix.anchor())
            .build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e).with_context(what),
        }
    }

    /// Deletes the route [`Netlink::add_local_route`] adds (table local, dst
    /// PREFIX, dev lo, protocol [`ROUTE_PROTOCOL`]); Ok if it is absent.
    pub async fn del_local_route(&self, prefix: &Prefix) -> anyhow::Result<()> {
        let what = || format!("deleting the local route for {prefix} on lo (table local)");
        let lo = self.lo_ifindex().await.with_context(what)?;
        let msg = Self::local_route(prefix, lo).build();
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            // IPv6 answers ESRCH for "no such route".
            Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
            Err(e) => Err(e).with_context(what),
        }
    }

    /// Whether the local route for `prefix` is in table local as
    /// [`Netlink::add_local_route`] makes it, with the anchor as source.
    pub async fn local_route_state(&self, prefix: &Prefix) -> anyhow::Result<RouteState> {
        let what = || format!("looking up the local route for {prefix}");
        let lo = self.lo_ifindex().await.with_context(what)?;
        let filter = RouteMessageBuilder::<Ipv6Addr>::new()
            .table_id(u32::from(RT_TABLE_LOCAL))
            .build();
        let mut dump = self.handle.route().get(filter).execute();
        let mut state = RouteState::Missing;
        while let Some(msg) = dump.try_next().await.with_context(what)? {
            let h = &msg.header;
            if h.destination_prefix_length != prefix.len() || h.kind != RouteType::Local {
                continue;
            }
            let (mut dst, mut oif, mut src) = (None, None, None);
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet6(d)) => dst = Some(*d),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::PrefSource(RouteAddress::Inet6(p)) => src = Some(*p),
                    _ => {}
                }
            }
            if dst != Some(prefix.network()) || oif != Some(lo) {
                continue;
            }
            if src == Some(prefix.anchor()) {
                return Ok(RouteState::Ok);
            }
            state = RouteState::NoSource;
        }
        Ok(state)
    }

    /// Replaces the local route for `prefix` with the one
    /// [`Netlink::add_local_route`] adds (e.g. after the anchor was removed
    /// and re-added: the kernel drops a route's source with the address).
    pub async fn replace_local_route(&self, prefix: &Prefix) -> anyhow::Result<()> {
        let what = || format!("replacing the local route for {prefix} on lo");
        let lo = self.lo_ifindex().await.with_context(what)?;
        let msg: RouteMessage = Self::local_route(prefix, lo)
            .pref_source(prefix.anchor())
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .with_context(what)
    }

    /// Every IPv6 route of every table in this netns (`ip -6 route show
    /// table all`).
    pub async fn routes(&self) -> anyhow::Result<Vec<Route>> {
        // Table 0 (RT_TABLE_UNSPEC): every table, also under strict checking.
        let filter = RouteMessageBuilder::<Ipv6Addr>::new().table_id(0).build();
        let mut dump = self.handle.route().get(filter).execute();
        let mut out = Vec::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .context("dumping the IPv6 routes of this network namespace")?
        {
            let h = &msg.header;
            if h.address_family != AddressFamily::Inet6 {
                continue;
            }
            // The header's table is 8 bits; RTA_TABLE holds the full id.
            let mut route = Route {
                table: u32::from(h.table),
                kind: h.kind,
                protocol: h.protocol,
                dst: Ipv6Addr::UNSPECIFIED,
                dst_len: h.destination_prefix_length,
                oif: None,
            };
            for a in &msg.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet6(d)) => route.dst = *d,
                    RouteAttribute::Oif(i) => route.oif = Some(*i),
                    RouteAttribute::Table(t) => route.table = *t,
                    _ => {}
                }
            }
            out.push(route);
        }
        Ok(out)
    }

    /// Every IPv6 address of every interface in this netns (`ip -6 addr`),
    /// including tentative and deprecated ones (see [`IfAddr::flags`]): what
    /// an operator (or a test) checks pandad's changes against.
    pub async fn addresses(&self) -> anyhow::Result<Vec<IfAddr>> {
        let mut req = self.handle.address().get();
        req.message_mut().header.family = AddressFamily::Inet6;
        let mut dump = req.execute();
        let mut out = Vec::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .context("dumping the IPv6 addresses of this network namespace")?
        {
            if msg.header.family != AddressFamily::Inet6 {
                continue;
            }
            let mut addr = None;
            let mut flags = u32::from(msg.header.flags.bits());
            for attr in &msg.attributes {
                match attr {
                    // IFA_ADDRESS is the address itself; IFA_LOCAL only
                    // differs on point-to-point links, where it is ours.
                    AddressAttribute::Address(IpAddr::V6(a)) if addr.is_none() => addr = Some(*a),
                    AddressAttribute::Local(IpAddr::V6(a)) => addr = Some(*a),
                    AddressAttribute::Flags(f) => flags = f.bits(),
                    _ => {}
                }
            }
            if let Some(addr) = addr {
                out.push(IfAddr {
                    addr,
                    prefix_len: msg.header.prefix_len,
                    ifindex: msg.header.index,
                    flags,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    //! Each test runs in its own fresh network namespace ([`crate::testns`]),
    //! so it needs root; nothing it does reaches the host's namespace.
    use super::*;
    use crate::testns;
    use std::process::Command;

    const IFA_F_NODAD: u32 = 0x02;
    const IFA_F_PERMANENT: u32 = 0x80;
    const IFA_F_NOPREFIXROUTE: u32 = 0x200;

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn anchor_and_route_in_scratch_netns() {
        testns::run_async(|| async {
            let prefix: Prefix = "fd00:1009:bacc::/48".parse().unwrap();
            let anchor = prefix.anchor();
            let nl = Netlink::connect().await.unwrap();
            assert!(nl.lo_is_up().await.unwrap(), "set lo up first");
            let lo = nl.lo_ifindex().await.unwrap();

            // A src that is not local yet is refused; show what the error says.
            let e = nl.add_local_route(&prefix).await.unwrap_err();
            println!("route before anchor: {e:#}");

            assert!(nl.add_anchor(anchor).await.unwrap());
            assert!(!nl.add_anchor(anchor).await.unwrap());
            let addrs = nl.addresses().await.unwrap();
            println!("{addrs:#?}");
            let a = addrs
                .iter()
                .find(|a| a.addr == anchor)
                .expect("anchor in dump");
            assert_eq!(a.ifindex, lo);
            let want = IFA_F_NODAD | IFA_F_NOPREFIXROUTE | IFA_F_PERMANENT;
            assert_eq!(a.flags & want, want, "flags {:#x}", a.flags);
            assert!(addrs.iter().any(|a| a.addr == Ipv6Addr::LOCALHOST));

            assert!(nl.add_local_route(&prefix).await.unwrap());
            assert!(!nl.add_local_route(&prefix).await.unwrap());

            let addr_out = ip(&["-6", "addr", "show", "dev", "lo"]);
            let route_out = ip(&["-6", "route", "show", "table", "local"]);
            let main_out = ip(&["-6", "route", "show", "table", "main"]);
            println!("--- ip -6 addr show dev lo\n{addr_out}");
            println!("--- ip -6 route show table local\n{route_out}");
            println!("--- ip -6 route show table main\n{main_out}");
            assert!(
                addr_out.contains("inet6 fd00:1009:bacc::1/128 scope global nodad noprefixroute")
            );
            assert!(route_out.contains(
                "local fd00:1009:bacc::/48 dev lo proto static src fd00:1009:bacc::1 metric 1024"
            ));
            assert!(
                !main_out.contains("fd00:1009:bacc"),
                "noprefixroute: nothing in main"
            );
            // The kernel agrees the whole prefix is local.
            let get = ip(&["-6", "route", "get", "fd00:1009:bacc:1234::42"]);
            println!("--- ip -6 route get fd00:1009:bacc:1234::42\n{get}");
            assert!(get.starts_with("local fd00:1009:bacc:1234::42 "), "{get}");
            assert!(get.contains(" src fd00:1009:bacc::1 "), "{get}");

            nl.del_local_route(&prefix).await.unwrap();
            nl.del_local_route(&prefix).await.unwrap(); // absent: still Ok
            nl.del_anchor(anchor).await.unwrap();
            nl.del_anchor(anchor).await.unwrap(); // absent: still Ok
            assert!(!ip(&["-6", "route", "show", "table", "local"]).contains("fd00:1009:bacc"));
            assert!(!ip(&["-6", "addr", "show", "dev", "lo"]).contains("fd00:1009:bacc"));
            assert!(!nl
                .addresses()
                .await
                .unwrap()
                .iter()
                .any(|a| a.addr == anchor));
        });
    }

    #[test]
    fn del_route_leaves_foreign_protocol_alone() {
        testns::run_async(|| async {
            let prefix: Prefix = "fd00:1009:bacd::/48".parse().unwrap();
            let nl = Netlink::connect().await.unwrap();
            assert!(nl.add_anchor(prefix.anchor()).await.unwrap());
            // An administrator's route (proto boot, which ip does not print).
            ip(&[
                "-6",
                "route",
                "add",
                "local",
                "fd00:1009:bacd::/48",
                "dev",
                "lo",
                "table",
                "local",
            ]);
            assert!(!nl.add_local_route(&prefix).await.unwrap());
            nl.del_local_route(&prefix).await.unwrap();
            let routes = ip(&["-6", "route", "show", "table", "local"]);
            assert!(
                routes.contains("local fd00:1009:bacd::/48 dev lo metric 1024"),
                "{routes}"
            );
            ip(&[
                "-6",
                "route",
                "del",
                "local",
                "fd00:1009:bacd::/48",
                "dev",
                "lo",
                "table",
                "local",
            ]);
            nl.del_anchor(prefix.anchor()).await.unwrap();
        });
    }

    #[test]
    fn lo_is_up_agrees_with_ip() {
        testns::run_async(|| async {
            let nl = Netlink::connect().await.unwrap();
            // testns brings lo up; compare with lo up, then with lo down.
            for want_up in [true, false] {
                if !want_up {
                    ip(&["link", "set", "lo", "down"]);
                }
                let link = ip(&["link", "show", "dev", "lo"]);
                let flags = link.split(['<', '>']).nth(1).unwrap_or_default();
                let up = flags.split(',').any(|f| f == "UP");
                assert_eq!(up, want_up, "{link}");
                println!(
                    "lo flags <{flags}>, lo_is_up = {}",
                    nl.lo_is_up().await.unwrap()
                );
                assert_eq!(nl.lo_is_up().await.unwrap(), up, "{link}");
            }
        });
    }
}
