//! The socket calls the cases time, at the libc level so that nothing but
//! the system calls themselves is measured (no std wrappers allocating,
//! no SO_REUSEADDR std sets behind our back).

use std::{
    io, mem,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use anyhow::{anyhow, Result};

/// The default prefix pandad serves, and the addresses the cases use in it:
/// subnet `s`, host `h` is fd00:1009:bacc:s::h. Subnet 0 holds the anchor
/// (::1); the cases use subnets 1.. so they never touch it.
pub const PREFIX: &str = "fd00:1009:bacc::/48";
pub const ANCHOR: &str = "fd00:1009:bacc::1";

pub fn prefix_addr(subnet: u16, host: u64) -> Ipv6Addr {
    let base = u128::from(Ipv6Addr::new(0xfd00, 0x1009, 0xbacc, subnet, 0, 0, 0, 0));
    Ipv6Addr::from(base + host as u128)
}

/// An address outside the prefix (fd00:1009:beef::/64): the cases configure
/// some of them on `lo` to exercise the guard's address-table walk.
pub fn outside_addr(host: u64) -> Ipv6Addr {
    let base = u128::from(Ipv6Addr::new(0xfd00, 0x1009, 0xbeef, 0, 0, 0, 0, 0));
    Ipv6Addr::from(base + host as u128)
}

/// 127.x.y.z: the IPv4 loopback /8, host `i` (never 127.0.0.0).
pub fn v4_loopback(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x7f00_0000u32 + 1 + (i % 0x00ff_fffe))
}

pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn os_err(what: &str, e: i32) -> anyhow::Error {
    anyhow!("{what}: {}", io::Error::from_raw_os_error(e))
}

pub fn sockaddr6(addr: Ipv6Addr, port: u16) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = addr.octets();
    sa
}

fn sockaddr4(addr: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from(addr).to_be();
    sa
}

/// A TCP socket of `family`, or the errno.
pub fn tcp_socket(family: i32) -> Result<OwnedFd, i32> {
    // SAFETY: socket(2) returns a new descriptor or -1.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: fd is a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn bind6(fd: RawFd, addr: Ipv6Addr, port: u16) -> Result<(), i32> {
    let sa = sockaddr6(addr, port);
    // SAFETY: sa is a valid sockaddr_in6 of the length passed.
    let rc = unsafe {
        libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    zero_or_errno(rc)
}

fn bind4(fd: RawFd, addr: Ipv4Addr, port: u16) -> Result<(), i32> {
    let sa = sockaddr4(addr, port);
    // SAFETY: sa is a valid sockaddr_in of the length passed.
    let rc = unsafe {
        libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    zero_or_errno(rc)
}

pub fn listen(fd: RawFd, backlog: i32) -> Result<(), i32> {
    // SAFETY: listen on a descriptor we hold.
    zero_or_errno(unsafe { libc::listen(fd, backlog) })
}

/// A libc call's 0-or-−1 result as a Result carrying errno.
fn zero_or_errno(rc: libc::c_int) -> Result<(), i32> {
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

pub fn connect6(fd: RawFd, addr: Ipv6Addr, port: u16) -> Result<(), i32> {
    let sa = sockaddr6(addr, port);
    // SAFETY: sa is a valid sockaddr_in6 of the length passed.
    let rc = unsafe {
        libc::connect(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    zero_or_errno(rc)
}

pub fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> Result<()> {
    // SAFETY: an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_err(&format!("setsockopt({level}, {name})"), errno()));
    }
    Ok(())
}

/// A TCP listener on [addr]:port (what the scale workers hold).
pub fn listener6(addr: Ipv6Addr, port: u16, backlog: i32) -> Result<OwnedFd> {
    let fd = tcp_socket(libc::AF_INET6).map_err(|e| os_err("socket(AF_INET6)", e))?;
    bind6(fd.as_raw_fd(), addr, port).map_err(|e| os_err(&format!("bind [{addr}]:{port}"), e))?;
    listen(fd.as_raw_fd(), backlog).map_err(|e| os_err(&format!("listen [{addr}]:{port}"), e))?;
    Ok(fd)
}

/// socket + bind to [addr]:port (then close): Err(errno) if the bind fails.
pub fn try_bind6(addr: Ipv6Addr, port: u16) -> Result<Result<(), i32>> {
    let fd = tcp_socket(libc::AF_INET6).map_err(|e| os_err("socket(AF_INET6)", e))?;
    Ok(bind6(fd.as_raw_fd(), addr, port))
}

/// The operation case 1 times: socket + bind + listen + close.
pub fn bind_listen_close6(addr: Ipv6Addr, port: u16) -> Result<()> {
    drop(listener6(addr, port, 16)?);
    Ok(())
}

/// A TCP listener on addr:port, IPv4.
pub fn listener4(addr: Ipv4Addr, port: u16, backlog: i32) -> Result<OwnedFd> {
    let fd = tcp_socket(libc::AF_INET).map_err(|e| os_err("socket(AF_INET)", e))?;
    bind4(fd.as_raw_fd(), addr, port).map_err(|e| os_err(&format!("bind {addr}:{port}"), e))?;
    listen(fd.as_raw_fd(), backlog).map_err(|e| os_err(&format!("listen {addr}:{port}"), e))?;
    Ok(fd)
}

/// The same over IPv4.
pub fn bind_listen_close4(addr: Ipv4Addr, port: u16) -> Result<()> {
    drop(listener4(addr, port, 16)?);
    Ok(())
}
