//! panda: a node-local IPv6 loopback subnet, the IPv6 twin of 127.0.0.0/8.
//!
//! The daemon (`pandad`) owns five pieces of state in the network
//! namespace it runs in, each through exactly one module:
//!
//! | state                                   | owner        |
//! |-----------------------------------------|--------------|
//! | anchor address + `local PREFIX` route   | [`netlink`]  |
//! | the `inet panda` nftables table         | [`firewall`] |
//! | `net.ipv6.ip_nonlocal_bind` (guard)     | [`sysctl`]   |
//! | BPF programs, links and maps            | [`bpf`]      |
//! | leases: their store, the lease maps' contents, exec cgroups | [`leases`] |
//!
//! [`daemon`] sequences them (set up in order, tear down in reverse) and
//! [`api`] answers `panda status`, `panda lease` and the rest over a unix
//! socket; [`exec`] is the client side of `panda exec`. Two CLI commands look
//! at that state from outside pandad, and work without one: [`doctor`] and
//! [`gc`].
pub mod api;
pub mod bpf;
pub mod btf;
pub mod cgroup;
pub mod config;
pub mod daemon;
/// `panda doctor`: what a user runs when the subnet does not work. Checks
/// kernel support, conflicts pandad cannot repair (foreign routes, nft
/// rules, addresses) and pandad's state against the kernel, with a fix for
/// each problem; here so that it reuses the modules that own that state.
pub mod doctor;
pub mod exec;
pub mod firewall;
/// `panda gc`: pinned links outlive their namespace; this finds instance
/// directories whose namespace is gone and removes them, so that their
/// programs stop running on every bind of the host.
pub mod gc;
pub mod leases;
pub mod netlink;
pub mod pins;
pub mod probe;
pub mod reconcile;
pub mod state;
pub mod sysctl;
pub mod systemd;
#[cfg(test)]
mod testns;
