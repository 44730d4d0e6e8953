//! Kernel feature probes: ask the running kernel, don't guess from versions.
//!
//! - **freebind**: does `bpf_setsockopt(SOL_IPV6, IPV6_FREEBIND)` work from a
//!   cgroup/bind6 program? Mainline refuses it (-EINVAL: `sol_ipv6_sockopt`
//!   allows only IPV6_TCLASS and IPV6_AUTOFLOWLABEL); a kernel carrying the
//!   change proposed in the talk allows it. The probe attaches
//!   `probe_freebind` at the cgroup2 root, binds one socket of its own (the
//!   program acts only on that socket's cookie) and reads back the helper's
//!   return value.
//! - **bpf LSM**: an LSM program loads and attaches even when `bpf` is not in
//!   the kernel's active LSM list; it then simply never runs. The probe
//!   attaches `probe_lsm`, binds a socket from this thread and checks that
//!   the program saw it.
//!
//! - **guard self-check**: the guard finds configured addresses by walking
//!   the kernel's own address hash table; once it is attached, a bind to
//!   `[::1]:0` must succeed, or the walk does not match this kernel.
//!
//! The first two bind `[::]:0`, which needs no configured address.
use std::{
    fs::File,
    io, mem,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use anyhow::{bail, Context, Result};
use panda_common::probe;

use crate::bpf::Bpf;

/// getsockopt(2) of a u64 option.
fn getsockopt_u64(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<u64> {
    let mut v: u64 = 0;
    let mut len = mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: v/len describe a valid u64 buffer.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut u64).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// A throwaway AF_INET6 UDP socket, closed on drop.
struct Socket(std::os::fd::OwnedFd);

impl Socket {
    fn udp6() -> io::Result<Socket> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(Socket(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    fn u64_opt(&self, level: i32, name: i32) -> io::Result<u64> {
        getsockopt_u64(self.0.as_fd(), level, name)
    }

    fn cookie(&self) -> io::Result<u64> {
        self.u64_opt(libc::SOL_SOCKET, libc::SO_COOKIE)
    }

    fn bind_any(&self) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_in6 is `[::]:0`.
        let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
        sa.sin6_family = libc::AF_INET6 as u16;
        // SAFETY: sa is a valid sockaddr_in6 of the given length.
        let r = unsafe {
            libc::bind(
                self.0.as_raw_fd(),
                (&sa as *const libc::sockaddr_in6).cast(),
                mem::size_of::<libc::sockaddr_in6>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Cookie of the network namespace this thread runs in: the identity the BPF
/// programs compare against (`SO_NETNS_COOKIE`, Linux 5.14).
pub fn netns_cookie() -> Result<u64> {
    let s = Socket::udp6().context("creating an IPv6 socket (is IPv6 disabled?)")?;
    socket_netns_cookie(&s.0).context("reading SO_NETNS_COOKIE (needs Linux 5.14 or later)")
}

/// Whether bpf(2) works for this process: creates a one-entry array map
/// (`BPF_MAP_CREATE`) and closes it. Err: the kernel's errno (EPERM: not
/// root / no CAP_BPF, or unprivileged BPF disabled; ENOSYS: no
/// CONFIG_BPF_SYSCALL).
pub fn bpf_syscall() -> io::Result<()> {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    const BPF_MAP_CREATE: u32 = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
    };
    let fd = crate::pins::sys_bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: a new fd that nothing else owns; dropping it closes the map.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) });
    Ok(())
}

/// Cookie of the network namespace socket `fd` was created in (any socket
/// family; `SO_NETNS_COOKIE`, Linux 5.14).
pub fn socket_netns_cookie(fd: impl AsFd) -> io::Result<u64> {
    getsockopt_u64(fd.as_fd(), libc::SOL_SOCKET, libc::SO_NETNS_COOKIE)
}

/// Outcome of the freebind probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freebind {
    /// bpf_setsockopt(IPV6_FREEBIND) returned 0.
    Works,
    /// It returned this negative errno (stock kernels: -22, EINVAL).
    Refused(i64),
}

/// Runs the freebind probe with `probe_freebind` attached at `cgroup_root`.
pub fn freebind(bpf: &mut Bpf, cgroup_root: &File) -> Result<Freebind> {
    let sock = Socket::udp6().context("creating the probe socket")?;
    let cookie = sock
        .cookie()
        .context("reading SO_COOKIE of the probe socket")?;
    {
        let mut map = bpf.probe_map()?;
        map.set(probe::FREEBIND_RESULT, 0, 0)?;
        map.set(probe::TARGET, cookie as i64, 0)?;
    }
    bpf.attach_sock_addr("probe_freebind", cgroup_root)?;
    let bound = sock.bind_any();
    bpf.detach_sock_addr("probe_freebind")?;
    bound.context("binding the probe socket to [::]:0")?;
    let raw = bpf.probe_map()?.get(&probe::FREEBIND_RESULT, 0)?;
    if raw == 0 {
        bail!(
            "the freebind probe program did not run: this process is not below the \
             cgroup it was attached to"
        );
    }
    Ok(match raw - probe::RESULT_BIAS {
        0 => Freebind::Works,
        e => Freebind::Refused(e),
    })
}

/// Whether an LSM program can guard raw and ping binds here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lsm {
    /// The probe program loaded, attached and ran.
    Active,
    /// It attached but never ran: `bpf` is not in the active LSM list.
    NotEnabled,
    /// The kernel refused to load or attach it (no BPF LSM support, or
    /// trampoline programs are not allowed, e.g. under lockdown).
    Refused(String),
}

/// Finds out whether the bpf LSM is usable, by running `probe_lsm`.
pub fn lsm(bpf: &mut Bpf) -> Result<Lsm> {
    // SAFETY: trivial syscalls.
    let pid_tgid = unsafe { ((libc::getpid() as u64) << 32) | libc::gettid() as u64 };
    {
        let mut map = bpf.probe_map()?;
        map.set(probe::LSM_RAN, 0, 0)?;
        map.set(probe::TARGET, pid_tgid as i64, 0)?;
    }
    if let Err(e) = bpf.attach_lsm("probe_lsm") {
        return Ok(Lsm::Refused(format!("{e:#}")));
    }
    let bound = Socket::udp6().and_then(|s| s.bind_any());
    bpf.detach_lsm("probe_lsm")?;
    bound.context("binding the LSM probe socket")?;
    Ok(if bpf.probe_map()?.get(&probe::LSM_RAN, 0)? == 1 {
        Lsm::Active
    } else {
        Lsm::NotEnabled
    })
}

/// With the guard attached, binds `[::1]:0`: proof that the guard's walk of
/// the kernel address table finds a configured address on this kernel.
pub fn guard_self_check() -> Result<()> {
    match std::net::UdpSocket::bind("[::1]:0") {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => bail!(
            "guard self-check failed: with the guard attached, binding [::1]:0 was refused. \
             The guard cannot read this kernel's IPv6 address table (unknown hash layout); \
             refusing to run rather than break binds"
        ),
        Err(e) => Err(e).context("guard self-check: binding [::1]:0 (is ::1 configured on lo?)"),
    }
}
