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
//!   address configured here?" check, `ipv6_chk_addr_and_flags()`. In guard
//!   mode these programs make that check instead, on the kernel's own data:
//!   they walk the namespace's address hash table `net->ipv6.inet6_addr_lst`
//!   exactly as that function does. Nothing is mirrored, so nothing lags: an
//!   address is bindable from the instant the kernel would allow it.
//! - `bpf_setsockopt(SOL_IPV6, IPV6_FREEBIND)` is refused (-EINVAL) by stock
//!   kernels; the freebind mechanism is used only where the probe saw it work.
//! - The context of a sock_addr program is, in the kernel, a
//!   `struct bpf_sock_addr_kern { struct sock *sk; struct sockaddr *uaddr; ..}`
//!   (layout unchanged since 4.17). Rust has no CO-RE, so kernel fields are
//!   read with `bpf_probe_read_kernel` at offsets the daemon resolved from BTF.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_netns_cookie, bpf_get_socket_cookie,
        bpf_probe_read_kernel,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_set_retval, bpf_setsockopt},
    },
    macros::{cgroup_sock_addr, lsm, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::{LsmContext, SockAddrContext},
};
use panda_common::{
    counter, lease, mechanism, probe, Config, Lease, IN6_ADDR_HSIZE_SHIFT, MAX_ADDR_CHAIN,
};

/// Written once by the daemon before anything is attached.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static PROBE: Array<i64> = Array::with_max_entries(probe::SLOTS, 0);

/// Leased addresses (as [`addr_words`]) → their holder; see [`lease`].
#[map]
static LEASES: HashMap<[u32; 4], Lease> = HashMap::with_max_entries(lease::MAX_LEASES, 0);

/// Cgroups holding a lease → how many addresses they hold.
#[map]
static HOLDERS: HashMap<u64, u32> = HashMap::with_max_entries(lease::MAX_LEASES, 0);

/// Bit L set while a holder sits at cgroup level L; 0: no leases at all.
#[map]
static LEASE_LEVELS: Array<u64> = Array::with_max_entries(1, 0);

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
const IFA_HOST: u16 = 0x10;
const IFA_LINK: u16 = 0x20;
/// `GOLDEN_RATIO_32` of include/linux/hash.h (`hash_32()`).
const GOLDEN_RATIO_32: u32 = 0x61C8_8647;

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

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
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

/// The address's four 32-bit words as sock_addr programs see them
/// (`user_ip6`, `msg_src_ip6`): each word holds four address bytes in
/// network order, i.e. `u32::from_ne_bytes` of them.
#[inline(always)]
fn addr_words(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

// `in_prefix_words` reads `Config::prefix` as four u32 words in one load
// each; that needs the field 4-byte aligned in every map value.
const _: () =
    assert!(core::mem::offset_of!(Config, prefix) % 4 == 0 && core::mem::align_of::<Config>() >= 4);

/// Is the address, given as its four words (see [`addr_words`]), inside the
/// configured prefix? This is bind6's fast path: every bind in the prefix
/// runs it. So it compares whole words and stops at the word where the
/// prefix ends (for a /48: one word whole, then the leading 16 bits of the
/// next), instead of a byte loop that built a mask for each byte and needed
/// the address copied out byte by byte first; `cargo xtask bench` (case 1,
/// BPF statistics) shows what bind6 costs per run. The loop has a constant
/// trip count and is unrolled into straight-line code.
#[inline(always)]
fn in_prefix_words(words: [u32; 4], cfg: &Config) -> bool {
    // SAFETY: aligned (asserted above), 16 bytes, plain integers.
    let prefix = unsafe { core::ptr::read(cfg.prefix.as_ptr() as *const [u32; 4]) };
    let mut left = cfg.prefix_len; // prefix bits not yet compared
    for (w, p) in words.into_iter().zip(prefix) {
        if let Some(verdict) = prefix_word(w, p, &mut left) {
            return verdict;
        }
    }
    true
}

/// One word of [`in_prefix_words`]: the verdict if this word decides it,
/// else `None` with `left` reduced by the 32 bits that matched.
#[inline(always)]
fn prefix_word(word: u32, prefix: u32, left: &mut u32) -> Option<bool> {
    if *left == 0 {
        return Some(true);
    }
    // from_be: network-order bytes to the word's numeric value, whose
    // leading bits are the address's first bits (a no-op on big-endian).
    let differ = u32::from_be(word ^ prefix);
    if *left < 32 {
        return Some(differ >> (32 - *left) == 0);
    }
    if differ != 0 {
        return Some(false);
    }
    *left -= 32;
    None
}

/// [`in_prefix_words`] for an address held as bytes (sendmsg6's source, the
/// LSM program's sockaddr, bind6 outside its fast path): one test for all.
#[inline(always)]
fn in_prefix(addr: &[u8; 16], cfg: &Config) -> bool {
    in_prefix_words(addr_words(addr), cfg)
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
    let any = addr[10] == 0 && addr[11] == 0 && addr[12..].iter().all(|b| *b == 0);
    mapped || any
}

#[inline(always)]
fn is_link_local(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && (addr[1] & 0xc0) == 0x80
}

/// `jhash2(k, 4, initval)` of include/linux/jhash.h.
#[inline(always)]
fn jhash2_4(k: [u32; 4], initval: u32) -> u32 {
    let init = 0xdead_beefu32.wrapping_add(4 << 2).wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    a = a.wrapping_add(k[0]);
    b = b.wrapping_add(k[1]);
    c = c.wrapping_add(k[2]);
    // __jhash_mix
    a = a.wrapping_sub(c);
    a ^= c.rotate_left(4);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= a.rotate_left(6);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= b.rotate_left(8);
    b = b.wrapping_add(a);
    a = a.wrapping_sub(c);
    a ^= c.rotate_left(16);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= a.rotate_left(19);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= b.rotate_left(4);
    b = b.wrapping_add(a);
    // last word, then __jhash_final
    a = a.wrapping_add(k[3]);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// `ipv6_chk_addr_and_flags(net, addr, dev, strict, 0, IFA_F_TENTATIVE)`:
/// is `addr` configured, not tentative (optimistic counts), on `dev` when
/// the address is link- or host-scoped (or `strict`), in namespace `net`?
/// `dev == 0` means "any device".
///
/// `inet6_addr_hash()` is `hash_32(ipv6_addr_hash(a) ^ net_hash_mix(net))`
/// before Linux 6.13 and `hash_32(__ipv6_addr_jhash(a, net_hash_mix(net)))`
/// since. The version is not in BTF, so both buckets are walked (jhash
/// first); entries are compared by full address, so walking a bucket the
/// kernel does not use can never produce a false "yes". The daemon checks
/// at start that `::1` is found.
#[inline(always)]
fn kernel_has_addr(net: u64, addr: &[u8; 16], dev: u32, strict: bool, cfg: &Config) -> bool {
    let o = &cfg.offsets;
    let Some(table) = read::<u64>(net + o.net_addr_lst as u64) else {
        return false;
    };
    let mix: u32 = read(net + o.net_hash_mix as u64).unwrap_or(0);
    let words = addr_words(addr);
    let hash_32 = |v: u32| v.wrapping_mul(GOLDEN_RATIO_32) >> (32 - IN6_ADDR_HSIZE_SHIFT);
    let jhash_bucket = hash_32(jhash2_4(words, mix));
    let xor_bucket = hash_32(words[0] ^ words[1] ^ words[2] ^ words[3] ^ mix);
    let mut chain = walk_chain(table, jhash_bucket, addr, dev, strict, cfg);
    if let Chain::Absent = chain {
        chain = walk_chain(table, xor_bucket, addr, dev, strict, cfg);
    }
    match chain {
        Chain::Found => true,
        Chain::Absent => false,
        Chain::TooLong => {
            count(counter::ADDR_CHAIN_OVERFLOW);
            true // never stricter than the kernel
        }
    }
}

enum Chain {
    Found,
    Absent,
    TooLong,
}

#[inline(always)]
fn walk_chain(
    table: u64,
    bucket: u32,
    addr: &[u8; 16],
    dev: u32,
    strict: bool,
    cfg: &Config,
) -> Chain {
    let o = &cfg.offsets;
    // hlist_head { first }, hlist_node { next, pprev }.
    let Some(mut node) = read::<u64>(table + bucket as u64 * 8) else {
        return Chain::Absent;
    };
    let mut i = 0;
    while i < MAX_ADDR_CHAIN {
        if node == 0 {
            return Chain::Absent;
        }
        let ifa = node - o.ifa_addr_lst as u64;
        if read::<[u8; 16]>(ifa + o.ifa_addr as u64).as_ref() == Some(addr) {
            let mut flags: u32 = read(ifa + o.ifa_flags as u64).unwrap_or(IFA_F_TENTATIVE);
            if flags & IFA_F_OPTIMISTIC != 0 {
                flags &= !IFA_F_TENTATIVE;
            }
            if flags & IFA_F_TENTATIVE == 0 {
                let scope: u16 = read(ifa + o.ifa_scope as u64).unwrap_or(IFA_HOST);
                if dev == 0 || (scope & (IFA_LINK | IFA_HOST) == 0 && !strict) {
                    return Chain::Found;
                }
                let ifindex = read::<u64>(ifa + o.ifa_idev as u64)
                    .and_then(|idev| read::<u64>(idev + o.idev_dev as u64))
                    .and_then(|nd| read::<u32>(nd + o.dev_ifindex as u64));
                if ifindex == Some(dev) {
                    return Chain::Found;
                }
            }
        }
        node = match read::<u64>(node) {
            Some(next) => next,
            None => return Chain::Absent,
        };
        i += 1;
    }
    Chain::TooLong
}

/// `ipv6_can_nonlocal_bind()`'s per-socket half: IP(V6)_FREEBIND or
/// IP(V6)_TRANSPARENT set by the application itself.
#[inline(always)]
fn sock_may_bind_nonlocal(sk: u64, cfg: &Config) -> bool {
    let o = &cfg.offsets;
    let fb: u8 = read(sk + o.freebind_byte as u64).unwrap_or(0);
    let tp: u8 = read(sk + o.transparent_byte as u64).unwrap_or(0);
    (fb as u32 & o.freebind_mask) != 0 || (tp as u32 & o.transparent_mask) != 0
}

/// The guard's verdict for a socket `sk` that wants source/bind address
/// `addr`: true when the kernel, with `ip_nonlocal_bind=0`, would allow it.
#[inline(always)]
fn kernel_would_allow(sk: u64, addr: &[u8; 16], dev: u32, strict: bool, cfg: &Config) -> bool {
    if in_prefix(addr, cfg) || exempt(addr) {
        return true;
    }
    if cfg.offsets.valid == 0 || sk == 0 {
        return true; // no offsets: cannot judge; the daemon refuses to start
    }
    let Some(net) = read::<u64>(sk + cfg.offsets.sock_net as u64) else {
        return true;
    };
    kernel_has_addr(net, addr, dev, strict, cfg) || sock_may_bind_nonlocal(sk, cfg)
}

/// The `struct sock *` behind a sock_addr context (see the contract above).
#[inline(always)]
fn sock_addr_sk(ctx: &SockAddrContext) -> u64 {
    read::<u64>(ctx.sock_addr as u64).unwrap_or(0)
}

/// The device a bind is scoped to, as `__inet6_bind()` will compute it: the
/// sockaddr's `sin6_scope_id` for link-local addresses, else the socket's
/// bound device.
#[inline(always)]
fn bind_dev(ctx: &SockAddrContext, sk: u64, addr: &[u8; 16], cfg: &Config) -> u32 {
    if is_link_local(addr) {
        let scope_id = read::<u64>(ctx.sock_addr as u64 + 8)
            .and_then(|uaddr| read::<u32>(uaddr + 24))
            .unwrap_or(0);
        if scope_id != 0 {
            return scope_id;
        }
    }
    read::<u32>(sk + cfg.offsets.sock_bound_dev_if as u64).unwrap_or(0)
}

/// `bpf_setsockopt(SOL_IPV6, IPV6_FREEBIND, 1)`: 0, or the kernel's
/// negative errno (-EINVAL on stock kernels).
#[inline(always)]
fn set_freebind(ctx: &SockAddrContext) -> i64 {
    let one: i32 = 1;
    unsafe {
        bpf_setsockopt(
            ctx.sock_addr.cast(),
            SOL_IPV6,
            IPV6_FREEBIND,
            &one as *const i32 as *mut _,
            4,
        )
    }
}

#[inline(always)]
fn deny_with(errno: i32) -> i32 {
    unsafe { bpf_set_retval(-errno) };
    DENY
}

/// The id of the calling task's cgroup `level` levels below the root; 0
/// when the task sits higher than that.
#[inline(always)]
fn ancestor_cgroup(level: u32) -> u64 {
    unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) }
}

/// May the calling task bind prefix address `words`, as far as leases go?
/// Without any lease this is one array lookup; with leases, one hash lookup
/// for the address, plus (for an unleased address in `OPEN` mode) one per
/// cgroup level that has holders, to tell whether the caller is inside one.
/// The task, not the socket, is judged: bind() runs in the binder's context,
/// and a workload passing a bound socket on passes what its lease allowed.
#[inline(always)]
fn lease_allows(words: [u32; 4], cfg: &Config) -> bool {
    let levels = LEASE_LEVELS.get(0).copied().unwrap_or(0);
    if levels == 0 {
        return cfg.lease_mode != lease::LEASED_ONLY;
    }
    // SAFETY: the value is copied out at once; the daemon may replace it.
    if let Some(l) = unsafe { LEASES.get(&words) }.copied() {
        return ancestor_cgroup(l.level) == l.cgroup_id;
    }
    cfg.lease_mode != lease::LEASED_ONLY && !in_holder(levels)
}

/// Is the calling task in a cgroup holding a lease, or below one? Walks
/// only the levels `levels` marks, top down, and stops below the task.
#[inline(always)]
fn in_holder(levels: u64) -> bool {
    let mut level = 1;
    while level <= lease::MAX_LEVEL {
        if levels >> level == 0 {
            return false;
        }
        if levels & (1 << level) != 0 {
            let id = ancestor_cgroup(level);
            if id == 0 {
                return false; // the task sits higher than this level
            }
            // SAFETY: only the presence is used.
            if unsafe { HOLDERS.get(&id) }.is_some() {
                return true;
            }
        }
        level += 1;
    }
    false
}

/// `user_ip6`, one context load per word: the verifier accepts context
/// reads only at a constant offset from the context pointer itself, which
/// a copy of the whole array (a memcpy from a derived pointer) is not.
#[inline(always)]
fn user_ip6(ctx: &SockAddrContext) -> [u32; 4] {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel's context, valid for the program's run.
    unsafe {
        [
            core::ptr::read_volatile(&(*sa).user_ip6[0]),
            core::ptr::read_volatile(&(*sa).user_ip6[1]),
            core::ptr::read_volatile(&(*sa).user_ip6[2]),
            core::ptr::read_volatile(&(*sa).user_ip6[3]),
        ]
    }
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    let Some(cfg) = config() else { return ALLOW };
    if unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } != cfg.netns_cookie {
        return ALLOW;
    }
    // The fast path, taken by every bind in the prefix: test the words as
    // the kernel hands them over; the bytes are needed only outside.
    let words = user_ip6(&ctx);
    if in_prefix_words(words, cfg) {
        if !lease_allows(words, cfg) {
            count(counter::LEASE_DENIED);
            return deny_with(lease::DENY_ERRNO);
        }
        count(counter::BIND_PREFIX);
        if cfg.mechanism == mechanism::FREEBIND {
            count(if set_freebind(&ctx) == 0 {
                counter::FREEBIND_SET
            } else {
                counter::FREEBIND_FAILED
            });
        }
        return ALLOW;
    }
    let addr = addr_bytes(words);
    if cfg.mechanism != mechanism::GUARD || exempt(&addr) {
        return ALLOW;
    }
    let sk = sock_addr_sk(&ctx);
    let dev = bind_dev(&ctx, sk, &addr, cfg);
    if kernel_would_allow(sk, &addr, dev, is_link_local(&addr), cfg) {
        return ALLOW;
    }
    count(counter::BIND_DENIED);
    deny_with(EADDRNOTAVAIL)
}

/// Guard mode only: an IPV6_PKTINFO source must pass the test
/// `ip6_datagram_send_ctl()` makes with the sysctl at 0, which answers
/// EINVAL. (Its device for link-local sources, `ipi6_ifindex`, is not visible
/// here: link-local sources are checked against every device.)
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
    if kernel_would_allow(sock_addr_sk(&ctx), &src, 0, false, cfg) {
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
    let Some(sk) = read::<u64>(sock + o.socket_sk as u64) else {
        return 0;
    };
    let Some(net) = read::<u64>(sk + o.sock_net as u64) else {
        return 0;
    };
    if read::<u64>(net + o.net_cookie as u64) != Some(cfg.netns_cookie) {
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
    let Some(addr) = read::<[u8; 16]>(uaddr + 8) else {
        return 0;
    };
    let mut dev = read::<u32>(sk + o.sock_bound_dev_if as u64).unwrap_or(0);
    if is_link_local(&addr) {
        if let Some(scope_id) = read::<u32>(uaddr + 24) {
            if scope_id != 0 {
                dev = scope_id;
            }
        }
    }
    if kernel_would_allow(sk, &addr, dev, is_link_local(&addr), cfg) {
        return 0;
    }
    count(counter::LSM_BIND_DENIED);
    -EADDRNOTAVAIL
}

/// Probe: does bpf_setsockopt(SOL_IPV6, IPV6_FREEBIND) work here? Acts only on
/// the one socket whose cookie the daemon wrote to `PROBE[TARGET]`.
#[cgroup_sock_addr(bind6)]
pub fn probe_freebind(ctx: SockAddrContext) -> i32 {
    let Some(target) = PROBE.get(probe::TARGET) else {
        return ALLOW;
    };
    if unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) } as i64 != *target {
        return ALLOW;
    }
    let ret = set_freebind(&ctx);
    if let Some(slot) = PROBE.get_ptr_mut(probe::FREEBIND_RESULT) {
        unsafe { *slot = ret + probe::RESULT_BIAS };
    }
    ALLOW
}

/// Probe: is the bpf LSM usable? (An LSM program can attach where the bpf
/// LSM is not enabled; it then never runs. Some kernels refuse to load it.)
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
