//! Types shared between panda's BPF programs (`panda-ebpf`) and its daemon.
//!
//! Everything here crosses the user/kernel boundary through a BPF map, so every
//! type is `#[repr(C)]`, has no padding the compiler could fill differently on
//! the two sides, and is `Copy`. Change a layout here and both sides change
//! together: that is the point of the crate.
#![no_std]

/// How prefix binds are made to succeed; stored in [`Config::mechanism`].
pub mod mechanism {
    /// The talk's design: the bind6 program sets IPV6_FREEBIND on sockets that
    /// bind inside the prefix; `net.ipv6.ip_nonlocal_bind` stays 0.
    pub const FREEBIND: u32 = 1;
    /// Stock kernels: `ip_nonlocal_bind=1` in the netns, and the programs
    /// restore the kernel's strictness everywhere outside the prefix.
    pub const GUARD: u32 = 2;
}

/// Where the kernel keeps the fields the programs read with
/// `bpf_probe_read_kernel`. Rust has no CO-RE relocations, so the daemon
/// resolves these from the running kernel's BTF (`/sys/kernel/btf/vmlinux`)
/// and hands them over; a zero `valid` means "not resolved, do not read".
/// All are byte offsets within the named struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// 1 once every field below was resolved.
    pub valid: u32,
    /// Byte of `struct inet_sock` holding the FREEBIND bit, and its mask.
    pub freebind_byte: u32,
    pub freebind_mask: u32,
    /// Byte of `struct inet_sock` holding the TRANSPARENT bit, and its mask.
    pub transparent_byte: u32,
    pub transparent_mask: u32,
    /// `struct sock`: `__sk_common.skc_net` (a `struct net *`).
    pub sock_net: u32,
    /// `struct sock`: `sk_protocol` (u16) and `sk_type` (u16).
    pub sock_protocol: u32,
    pub sock_type: u32,
    /// `struct sock`: `__sk_common.skc_bound_dev_if` (int).
    pub sock_bound_dev_if: u32,
    /// `struct socket`: `sk`.
    pub socket_sk: u32,
    /// `struct net`: `net_cookie` (u64), `hash_mix` (u32) and
    /// `ipv6.inet6_addr_lst` (the per-netns address hash table).
    pub net_cookie: u32,
    pub net_hash_mix: u32,
    pub net_addr_lst: u32,
    /// `struct inet6_ifaddr`: `addr`, `flags` (u32), `scope` (u16 or int),
    /// `addr_lst` (its hash-chain node) and `idev`.
    pub ifa_addr: u32,
    pub ifa_flags: u32,
    pub ifa_scope: u32,
    pub ifa_addr_lst: u32,
    pub ifa_idev: u32,
    /// `struct inet6_dev`: `dev`.
    pub idev_dev: u32,
    /// `struct net_device`: `ifindex` (int).
    pub dev_ifindex: u32,
}

/// log2 of the number of buckets of `net->ipv6.inet6_addr_lst`
/// (`IN6_ADDR_HSIZE_SHIFT` in include/net/addrconf.h; 8 since it was made
/// per-netns in Linux 5.18). Not in BTF, so the daemon verifies it at start
/// by checking that the guard finds `::1`.
pub const IN6_ADDR_HSIZE_SHIFT: u32 = 8;

/// The longest hash chain the guard walks. Chains are ~1/256 of a netns's
/// addresses; past this length the walk gives up and allows the bind
/// (counted in `ADDR_CHAIN_OVERFLOW`): never stricter than the kernel.
pub const MAX_ADDR_CHAIN: u32 = 64;

/// The programs' whole configuration: one entry of the `CONFIG` array map,
/// written by the daemon before any program is attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The prefix, network byte order, host bits zero.
    pub prefix: [u8; 16],
    /// Prefix length in bits (8..=128).
    pub prefix_len: u32,
    /// One of [`mechanism`].
    pub mechanism: u32,
    /// `bpf_get_netns_cookie` of the namespace panda serves. Programs attached
    /// at the cgroup2 root see every namespace; they act only on this one.
    pub netns_cookie: u64,
    /// Kernel structure offsets (guard mode; zero in freebind mode).
    pub offsets: KernelOffsets,
    /// Who may bind prefix addresses nobody leased: one of [`lease`]'s
    /// `OPEN` or `LEASED_ONLY`.
    pub lease_mode: u32,
    /// Keeps the size a multiple of 8 with no implicit padding.
    pub _reserved: u32,
}

/// Leases: prefix addresses reserved for one cgroup and its descendants.
///
/// The bind6 program's view of them is three maps the daemon keeps in step
/// with its lease store: `LEASES` (address words → [`Lease`]), `HOLDERS`
/// (cgroup id → number of addresses it holds) and `LEASE_LEVELS` (one u64:
/// bit L set while some holder sits at cgroup level L). A bind to a leased
/// address is allowed only from the holder or below it; a bind to any other
/// prefix address only from outside every holder, and only in `OPEN` mode.
pub mod lease {
    /// Processes outside every leased cgroup may bind unleased addresses.
    pub const OPEN: u32 = 0;
    /// Nothing in the prefix may be bound except a lease, by its holder.
    pub const LEASED_ONLY: u32 = 1;
    /// Entries of `LEASES` and of `HOLDERS`.
    pub const MAX_LEASES: u32 = 65_536;
    /// The deepest cgroup level a lease may be held at (one bit of
    /// `LEASE_LEVELS` each); the processes that inherit it may sit deeper.
    pub const MAX_LEVEL: u32 = 63;
    /// The errno of a bind a lease forbids: the address exists and is
    /// local, it belongs to someone else (EACCES).
    pub const DENY_ERRNO: i32 = 13;
}

/// A value of the `LEASES` map: who may bind the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// The holder's cgroup id (its inode number in cgroupfs, what
    /// `bpf_get_current_ancestor_cgroup_id` returns).
    pub cgroup_id: u64,
    /// The holder's depth below the cgroup2 root (the root is level 0).
    pub level: u32,
    pub _reserved: u32,
}

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// bind() inside the prefix let through (guard) or given FREEBIND.
    pub const BIND_PREFIX: u32 = 0;
    /// bind() outside the prefix refused with EADDRNOTAVAIL.
    pub const BIND_DENIED: u32 = 1;
    /// UDP sendmsg with a non-local IPV6_PKTINFO source refused.
    pub const SENDMSG_DENIED: u32 = 2;
    /// bpf_setsockopt(IPV6_FREEBIND) succeeded (freebind mechanism).
    pub const FREEBIND_SET: u32 = 3;
    /// bpf_setsockopt(IPV6_FREEBIND) failed: the bind fails like the kernel's.
    pub const FREEBIND_FAILED: u32 = 4;
    /// Raw/ping bind refused by the LSM program.
    pub const LSM_BIND_DENIED: u32 = 5;
    /// An address hash chain longer than `MAX_ADDR_CHAIN`: the bind was
    /// allowed without a verdict.
    pub const ADDR_CHAIN_OVERFLOW: u32 = 6;
    /// bind() inside the prefix refused by a lease (see [`crate::lease`]).
    pub const LEASE_DENIED: u32 = 7;
    /// Number of counters; size of the map.
    pub const COUNT: u32 = 8;
    /// Names, in index order, as `panda status` reports them.
    pub const NAMES: [&str; COUNT as usize] = [
        "bind_prefix",
        "bind_denied",
        "sendmsg_denied",
        "freebind_set",
        "freebind_failed",
        "lsm_bind_denied",
        "addr_chain_overflow",
        "lease_denied",
    ];
}

/// Slots of the `PROBE` array: the probe programs write what they saw here.
pub mod probe {
    /// Return value of bpf_setsockopt(SOL_IPV6, IPV6_FREEBIND), stored + 1000
    /// so that 0 still means "the program did not run".
    pub const FREEBIND_RESULT: u32 = 0;
    /// 1 when the LSM socket_bind probe ran (the bpf LSM is active).
    pub const LSM_RAN: u32 = 1;
    /// Input: socket cookie (freebind probe) or pid_tgid (LSM probe) to act on.
    pub const TARGET: u32 = 2;
    /// Size of the map.
    pub const SLOTS: u32 = 3;
    /// Added to the helper's return value (see `FREEBIND_RESULT`).
    pub const RESULT_BIAS: i64 = 1000;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding (all fields are u32/u64/u8
    // arrays laid out to natural alignment).
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::Lease {}
}
