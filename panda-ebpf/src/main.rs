//! panda's BPF programs.
//!
//! Kernel contract this file relies on (checked by the daemon's probes and by
//! the integration tests, not assumed):
//!
//! - `cgroup/bind6` runs from `inet6_bind()` for TCP/UDP/SCTP sockets *before*
//!   `__inet6_bind()` checks the address. Returning 0 fails the bind; the errno
//!   is whatever `bpf_set_retval()` stored (default EPERM). Raw and ping
//!   sockets have their own `bind` and never reach this hook.
//! - `cgroup/sendmsg6` runs from `udpv6_sendmsg()` for unconnected sends, after
//!   `IPV6_PKTINFO` has been parsed into the source it reports.
//! - With `net.ipv6.ip_nonlocal_bind=1` the kernel skips its own "is this
//!   address configured here?" check (`ipv6_chk_addr_and_flags`); in guard mode
//!   these programs make that check instead, against `LOCAL_ADDRS`.
//! - `bpf_setsockopt(SOL_IPV6, IPV6_FREEBIND)` is refused (-EINVAL) by stock
//!   kernels; the freebind mechanism is used only where the probe saw it work.
//! - The context of a sock_addr program is, in the kernel, a
//!   `struct bpf_sock_addr_kern` whose first field is `struct sock *sk`
//!   (unchanged since 4.17). Rust has no CO-RE, so socket fields are read with
//!   `bpf_probe_read_kernel` at offsets the daemon resolved from BTF.
#![no_std]
#![no_main]


use aya_ebpf::{
    bindings::{BPF_NOEXIST, bpf_sock_addr},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_netns_cookie, bpf_get_socket_cookie,
        bpf_probe_read_kernel,
        generated::{bpf_set_retval, bpf_setsockopt},
    },
    macros::{cgroup_sock_addr, fentry, fexit, lsm, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::{FEntryContext, FExitContext, LsmContext, SockAddrContext},
};
use panda_common::{counter, mechanism, probe, AddrKey, Config, LOCAL_ADDRS_MAX};

/// Written once by the daemon before anything is attached.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Addresses configured in the served netns: `(addr, ifindex) -> 1` and the
/// summary `(addr, 0) -> number of interfaces carrying addr`.
#[map]
static LOCAL_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(LOCAL_ADDRS_MAX, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static PROBE: Array<i64> = Array::with_max_entries(probe::SLOTS, 0);

const ALLOW: i32 = 1;
const DENY: i32 = 0;
const EADDRNOTAVAIL: i32 = 99;
const EINVAL: i32 = 22;
const SOL_IPV6: i32 = 41;
const IPV6_FREEBIND: i32 = 78;
const AF_INET6: u16 = 10;
const SOCK_DGRAM: u16 = 2;
const SOCK_RAW: u16 = 3;
const IPPROTO_ICMPV6: u16 = 58;
const IFA_F_OPTIMISTIC: u32 = 0x04;
const IFA_F_TENTATIVE: u32 = 0x40;
const RTM_DELADDR: i32 = 21;

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // Per-CPU slot: no other writer while this program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Address words as the kernel hands them to sock_addr programs (network byte
/// order in each u32) turned back into the 16 bytes of the address.
#[inline(always)]
fn addr_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

#[inline(always)]
fn in_prefix(addr: &[u8; 16], cfg: &Config) -> bool {
    let len = cfg.prefix_len;
    let mut i = 0u32;
    while i < 16 {
        let bits = if len >= (i + 1) * 8 {
            8
        } else if len > i * 8 {
            len - i * 8
        } else {
            0
        };
        if bits == 0 {
            return true;
        }
        let mask: u8 = (0xffu16 << (8 - bits)) as u8;
        if (addr[i as usize] & mask) != (cfg.prefix[i as usize] & mask) {
            return false;
        }
        i += 1;
    }
    true
}

/// What the kernel lets any socket bind without an address check: `::`,
/// IPv4-mapped (checked by the IPv4 stack, whose sysctl panda never touches)
/// and multicast.
#[inline(always)]
fn exempt(addr: &[u8; 16]) -> bool {
    if addr[0] == 0xff {
        return true;
    }
    let mut i = 0;
    while i < 10 {
        if addr[i] != 0 {
            return false;
        }
        i += 1;
    }
    let mapped = addr[10] == 0xff && addr[11] == 0xff;
    let any = addr[10..].iter().all(|b| *b == 0);
    mapped || any
}

/// `ipv6_chk_addr()` against the mirrored address table.
#[inline(always)]
fn is_local(addr: &[u8; 16]) -> bool {
    let key = AddrKey {
        addr: *addr,
        ifindex: 0,
    };
    matches!(unsafe { LOCAL_ADDRS.get(&key) }, Some(n) if *n > 0)
}

/// `ipv6_can_nonlocal_bind()`'s per-socket half: IP(V6)_FREEBIND or
/// IP(V6)_TRANSPARENT set by the application itself.
#[inline(always)]
fn sock_may_bind_nonlocal(sk: u64, cfg: &Config) -> bool {
    let o = &cfg.offsets;
    if o.valid == 0 || sk == 0 {
        return false;
    }
    let fb: u8 = read(sk + o.freebind_byte as u64).unwrap_or(0);
    let tp: u8 = read(sk + o.transparent_byte as u64).unwrap_or(0);
    (fb as u32 & o.freebind_mask) != 0 || (tp as u32 & o.transparent_mask) != 0
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// The `struct sock *` behind a sock_addr context (see the contract above).
#[inline(always)]
fn sock_addr_sk(ctx: &SockAddrContext) -> u64 {
    read::<u64>(ctx.sock_addr as u64).unwrap_or(0)
}

#[inline(always)]
fn deny_with(errno: i32) -> i32 {
    unsafe { bpf_set_retval(-errno) };
    DENY
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else { return ALLOW };
    if unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } != cfg.netns_cookie {
        return ALLOW;
    }
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let addr = addr_bytes(sa.user_ip6);
    if in_prefix(&addr, cfg) {
        count(counter::BIND_PREFIX);
        if cfg.mechanism == mechanism::FREEBIND {
            let one: i32 = 1;
            let ret = unsafe {
                bpf_setsockopt(
                    ctx.sock_addr.cast(),
                    SOL_IPV6,
                    IPV6_FREEBIND,
                    &one as *const i32 as *mut _,
                    4,
                )
            };
            count(if ret == 0 {
                counter::FREEBIND_SET
            } else {
                counter::FREEBIND_FAILED
            });
        }
        return ALLOW;
    }
    if cfg.mechanism != mechanism::GUARD || exempt(&addr) || is_local(&addr) {
        return ALLOW;
    }
    if sock_may_bind_nonlocal(sock_addr_sk(&ctx), cfg) {
        return ALLOW;
    }
    count(counter::BIND_DENIED);
    deny_with(EADDRNOTAVAIL)
}

/// Guard mode only: an IPV6_PKTINFO source must pass the same test as a bind;
/// the kernel's own check (ip6_datagram_send_ctl) answers EINVAL.
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else { return ALLOW };
    if cfg.mechanism != mechanism::GUARD
        || unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } != cfg.netns_cookie
    {
        return ALLOW;
    }
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    let src = addr_bytes(sa.msg_src_ip6);
    if in_prefix(&src, cfg) || exempt(&src) || is_local(&src) {
        return ALLOW;
    }
    if sock_may_bind_nonlocal(sock_addr_sk(&ctx), cfg) {
        return ALLOW;
    }
    count(counter::SENDMSG_DENIED);
    deny_with(EINVAL)
}

/// Guard mode, where the bpf LSM is active: the binds that never reach
/// cgroup/bind6 (raw and ping sockets) get the same test.
#[lsm(hook = "socket_bind")]
pub fn socket_bind(ctx: LsmContext) -> i32 {
    // Arguments: (struct socket *, struct sockaddr *, int addrlen, int ret).
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return prev;
    }
    let Some(cfg) = config() else { return 0 };
    let o = &cfg.offsets;
    if cfg.mechanism != mechanism::GUARD || o.valid == 0 {
        return 0;
    }
    let sock: u64 = ctx.arg(0);
    let uaddr: u64 = ctx.arg(1);
    let addrlen: i32 = ctx.arg(2);
    if addrlen < 24 {
        return 0; // the protocol's bind rejects it with its own errno
    }
    let Some(sk) = read::<u64>(sock + o.socket_sk as u64) else { return 0 };
    if netns_of_sock(sk, cfg) != Some(cfg.netns_cookie) {
        return 0;
    }
    if read::<u16>(uaddr) != Some(AF_INET6) {
        return 0;
    }
    let ty: u16 = read(sk + o.sock_type as u64).unwrap_or(0);
    let proto: u16 = read(sk + o.sock_protocol as u64).unwrap_or(0);
    let hookless = ty == SOCK_RAW || (ty == SOCK_DGRAM && proto == IPPROTO_ICMPV6);
    if !hookless {
        return 0; // TCP/UDP/SCTP: cgroup/bind6 decides, with its counters
    }
    let Some(addr) = read::<[u8; 16]>(uaddr + 8) else { return 0 };
    if in_prefix(&addr, cfg) || exempt(&addr) || is_local(&addr) {
        return 0;
    }
    if sock_may_bind_nonlocal(sk, cfg) {
        return 0;
    }
    count(counter::LSM_BIND_DENIED);
    -EADDRNOTAVAIL
}

#[inline(always)]
fn netns_of_sock(sk: u64, cfg: &Config) -> Option<u64> {
    let net: u64 = read(sk + cfg.offsets.sock_net as u64)?;
    read(net + cfg.offsets.net_cookie as u64)
}

/// Bring `LOCAL_ADDRS` in line with one `struct inet6_ifaddr`, the way
/// `ipv6_chk_addr_and_flags(.., IFA_F_TENTATIVE)` sees it: usable when present
/// and not tentative (optimistic counts as usable). Both callers run under
/// RTNL, which serialises the read-modify-write of the summary count (the
/// BPF target has no atomic fetch-add in Rust's `core`).
#[inline(always)]
fn sync_ifa(ifp: u64, present: bool) {
    let Some(cfg) = config() else { return };
    let o = &cfg.offsets;
    if o.valid == 0 || ifp == 0 || ifp >= (-4095i64) as u64 {
        return;
    }
    let Some(idev) = read::<u64>(ifp + o.ifa_idev as u64) else { return };
    let Some(dev) = read::<u64>(idev + o.idev_dev as u64) else { return };
    let Some(net) = read::<u64>(dev + o.dev_net as u64) else { return };
    if read::<u64>(net + o.net_cookie as u64) != Some(cfg.netns_cookie) {
        return;
    }
    let Some(ifindex) = read::<u32>(dev + o.dev_ifindex as u64) else { return };
    let Some(addr) = read::<[u8; 16]>(ifp + o.ifa_addr as u64) else { return };
    let flags: u32 = read(ifp + o.ifa_flags as u64).unwrap_or(IFA_F_TENTATIVE);
    let usable = present && (flags & IFA_F_TENTATIVE == 0 || flags & IFA_F_OPTIMISTIC != 0);
    count(counter::ADDR_EVENTS);
    let key = AddrKey { addr, ifindex };
    let summary = AddrKey { addr, ifindex: 0 };
    if usable {
        if LOCAL_ADDRS.insert(&key, &1, BPF_NOEXIST as u64).is_ok() {
            match LOCAL_ADDRS.get_ptr_mut(&summary) {
                Some(n) => unsafe { *n += 1 },
                None => {
                    if LOCAL_ADDRS.insert(&summary, &1, BPF_NOEXIST as u64).is_err() {
                        if let Some(n) = LOCAL_ADDRS.get_ptr_mut(&summary) {
                            unsafe { *n += 1 };
                        }
                    }
                }
            }
        }
    } else if LOCAL_ADDRS.remove(&key).is_ok() {
        if let Some(n) = LOCAL_ADDRS.get_ptr_mut(&summary) {
            let left = unsafe {
                *n = (*n).saturating_sub(1);
                *n
            };
            if left == 0 {
                let _ = LOCAL_ADDRS.remove(&summary);
            }
        }
    }
}

/// A new address is in the kernel's hash (and, with `nodad`, usable) when
/// `ipv6_add_addr()` returns; its netlink notification comes later, from a
/// workqueue. Tracking it here closes that race for add-then-bind.
#[fexit(function = "ipv6_add_addr")]
pub fn addr_added(ctx: FExitContext) -> i32 {
    if let Ok(ifp) = ctx.ret::<u64>() {
        sync_ifa(ifp, true);
    }
    0
}

/// Every later change the kernel announces (DAD done or failed, deletion,
/// interface down) passes here, synchronously, before userspace hears of it.
#[fentry(function = "__ipv6_ifa_notify")]
pub fn addr_notify(ctx: FEntryContext) -> i32 {
    let event: i32 = ctx.arg(0);
    let ifp: u64 = ctx.arg(1);
    sync_ifa(ifp, event != RTM_DELADDR);
    0
}

/// Probe: does bpf_setsockopt(SOL_IPV6, IPV6_FREEBIND) work here? Acts only on
/// the one socket whose cookie the daemon wrote to `PROBE[TARGET]`.
#[cgroup_sock_addr(bind6)]
pub fn probe_freebind(ctx: SockAddrContext) -> i32 {
    let Some(target) = PROBE.get(probe::TARGET) else { return ALLOW };
    if unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) } as i64 != *target {
        return ALLOW;
    }
    let one: i32 = 1;
    let ret = unsafe {
        bpf_setsockopt(
            ctx.sock_addr.cast(),
            SOL_IPV6,
            IPV6_FREEBIND,
            &one as *const i32 as *mut _,
            4,
        )
    };
    if let Some(slot) = PROBE.get_ptr_mut(probe::FREEBIND_RESULT) {
        unsafe { *slot = ret as i64 + probe::RESULT_BIAS };
    }
    ALLOW
}

/// Probe: is the bpf LSM active? (An LSM program attaches even where the bpf
/// LSM is not enabled; it just never runs.)
#[lsm(hook = "socket_bind")]
pub fn probe_lsm(_ctx: LsmContext) -> i32 {
    if let Some(target) = PROBE.get(probe::TARGET) {
        if bpf_get_current_pid_tgid() as i64 == *target {
            if let Some(slot) = PROBE.get_ptr_mut(probe::LSM_RAN) {
                unsafe { *slot = 1 };
            }
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
