//! panda: a node-local IPv6 loopback subnet, the IPv6 twin of 127.0.0.0/8.
//!
//! The daemon (`pandad`) owns four pieces of kernel state in the network
//! namespace it runs in, each through exactly one module:
//!
//! | state                                   | owner        |
//! |-----------------------------------------|--------------|
//! | anchor address + `local PREFIX` route   | [`netlink`]  |
//! | the `inet panda` nftables table         | [`firewall`] |
//! | `net.ipv6.ip_nonlocal_bind` (guard)     | [`sysctl`]   |
//! | BPF programs, links and maps            | [`bpf`]      |
//!
//! [`daemon`] sequences them (set up in order, tear down in reverse) and
//! [`api`] answers `panda status` over a unix socket.
pub mod api;
pub mod bpf;
pub mod btf;
pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod firewall;
pub mod netlink;
pub mod pins;
pub mod probe;
pub mod reconcile;
pub mod state;
pub mod sysctl;
pub mod systemd;
#[cfg(test)]
mod testns;
