//! CONTRACT STUB — rtnetlink: anchor address, local route, address dump.
use std::net::Ipv6Addr;
use crate::config::Prefix;

/// An IPv6 address configured on an interface of this netns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfAddr { pub addr: Ipv6Addr, pub ifindex: u32, pub flags: u32 }

pub struct Netlink { _p: () }

impl Netlink {
    pub async fn connect() -> anyhow::Result<Netlink> { todo!() }
    pub async fn lo_is_up(&self) -> anyhow::Result<bool> { todo!() }
    pub async fn add_anchor(&self, _anchor: Ipv6Addr) -> anyhow::Result<bool> { todo!() }
    pub async fn del_anchor(&self, _anchor: Ipv6Addr) -> anyhow::Result<()> { todo!() }
    pub async fn add_local_route(&self, _prefix: &Prefix) -> anyhow::Result<bool> { todo!() }
    pub async fn del_local_route(&self, _prefix: &Prefix) -> anyhow::Result<()> { todo!() }
    pub async fn addresses(&self) -> anyhow::Result<Vec<IfAddr>> { todo!() }
}
