//! Case 5, repair latency: how long pandad's self-healing takes to put back
//! what was removed or changed, per kind of tampering.
//!
//! Each kind gets a fresh namespace and pandad (guard), then is tampered
//! with `repeats` times. The clock starts when the kernel reports the
//! damage and stops when it reports the repair, both read from the kernel's
//! own change notifications where it has them, so neither the tampering
//! command's start-up nor any polling of ours is counted:
//!
//! | kind | tampering | start | stop |
//! |---|---|---|---|
//! | route | `ip -6 route del local PREFIX` | RTM_DELROUTE | RTM_NEWROUTE of the prefix |
//! | anchor | `ip -6 addr del ANCHOR/128` | RTM_DELADDR | RTM_NEWADDR, then the route's RTM_NEWROUTE (its source restored) |
//! | table | `nft flush ruleset` | the flush's NFT_MSG_DELTABLE | the NFT_MSG_NEWGEN closing the transaction that re-creates a table |
//! | sysctl | write 0 to `ip_nonlocal_bind` | write(2) returns | the file reads 1 (polled every 50 µs: no event exists) |
//! | link | BPF_LINK_DETACH of the pinned bind6 link | the syscall returns | the pin names an attached link again (polled every 50 µs) |

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use panda::pins::Link;

use super::{progress, Ctx};
use crate::{
    interrupt,
    netns::Netns,
    pandad::Pandad,
    results::Repair,
    sock::{ANCHOR, PREFIX},
};

/// The kinds, in table order.
pub const KINDS: &[&str] = &["route", "anchor", "table", "sysctl", "link_bind6"];

/// A repair slower than this is a failure of the case, not a sample.
const DEADLINE: Duration = Duration::from_secs(5);

/// Between two tamperings: the repair's own events settle first, and the
/// pause varies over one poll period (50 ms), so that the polled kinds are
/// tampered with at every phase of pandad's tick instead of always just
/// after one (which would report the longest wait every time).
fn settle(i: usize) -> Duration {
    Duration::from_millis(50 + (i as u64 * 37) % 50)
}

pub fn run(ctx: &Ctx) -> Result<Vec<Repair>> {
    let mut out = Vec::new();
    for kind in KINDS {
        interrupt::check()?;
        let ns = Netns::new("repair")?;
        let p = Pandad::start(&ctx.pandad, &ns, "guard")?;
        let pin_dir = p.pin_dir()?;
        progress(format!("repair: {kind}, {} times", ctx.plan.repair_repeats));
        let mut samples_ms = Vec::new();
        for i in 0..ctx.plan.repair_repeats {
            interrupt::check()?;
            let took = ns
                .in_netns(|| once(kind, &pin_dir))
                .with_context(|| format!("repair case {kind}; pandad stderr:\n{}", p.stderr()))?;
            samples_ms.push(took.as_secs_f64() * 1e3);
            std::thread::sleep(settle(i));
        }
        let log = p.stderr();
        let logged = log.matches(&format!("repaired {kind}: ")).count();
        p.stop()?;
        out.push(Repair {
            kind: kind.to_string(),
            samples_ms,
            warn_lines: logged,
        });
    }
    Ok(out)
}

/// One tampering and its repair, in the calling thread's namespace.
fn once(kind: &str, pin_dir: &Path) -> Result<Duration> {
    match kind {
        // The tampering command runs while we read the notifications, so
        // that each is stamped as it arrives, not after the command exits.
        "route" => {
            let mut ev = NetlinkEvents::route()?;
            let cmd = Tamper::spawn(
                "ip",
                &[
                    "-6", "route", "del", "local", PREFIX, "dev", "lo", "table", "local",
                ],
            )?;
            let t0 = ev.wait(|m| m.kind == RTM_DELROUTE && m.is_prefix_route())?;
            let t1 = ev.wait(|m| m.kind == RTM_NEWROUTE && m.is_prefix_route())?;
            cmd.finish()?;
            Ok(t1 - t0)
        }
        "anchor" => {
            let mut ev = NetlinkEvents::route()?;
            let anchor = format!("{ANCHOR}/128");
            let cmd = Tamper::spawn("ip", &["-6", "addr", "del", &anchor, "dev", "lo"])?;
            let t0 = ev.wait(|m| m.kind == RTM_DELADDR && m.plen == 128)?;
            ev.wait(|m| m.kind == RTM_NEWADDR && m.plen == 128)?;
            let t1 = ev.wait(|m| m.kind == RTM_NEWROUTE && m.is_prefix_route())?;
            cmd.finish()?;
            Ok(t1 - t0)
        }
        "table" => {
            let mut ev = NetlinkEvents::nftables()?;
            let cmd = Tamper::spawn("nft", &["flush", "ruleset"])?;
            let t0 = ev.wait(|m| m.kind == NFT_DELTABLE)?;
            ev.wait(|m| m.kind == NFT_NEWTABLE)?;
            let t1 = ev.wait(|m| m.kind == NFT_NEWGEN)?;
            cmd.finish()?;
            Ok(t1 - t0)
        }
        "sysctl" => {
            let path = "/proc/sys/net/ipv6/ip_nonlocal_bind";
            std::fs::write(path, "0\n").context("resetting ip_nonlocal_bind")?;
            let t0 = Instant::now();
            poll_until(t0, || Ok(std::fs::read_to_string(path)?.trim() == "1"))
        }
        "link_bind6" => {
            let pin = pin_dir.join("bind6");
            let link = Link::open_pinned(&pin)?.context("bind6 is not pinned")?;
            link.detach()?;
            let t0 = Instant::now();
            drop(link);
            poll_until(t0, || {
                Ok(match Link::open_pinned(&pin)? {
                    Some(l) => l.info()?.cgroup_id != 0,
                    None => false,
                })
            })
        }
        other => bail!("unknown repair kind {other}"),
    }
}

/// A tampering command, started in the calling thread's namespace.
struct Tamper {
    child: std::process::Child,
    what: String,
}

impl Tamper {
    fn spawn(program: &str, args: &[&str]) -> Result<Tamper> {
        let what = format!("{program} {}", args.join(" "));
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {what}"))?;
        Ok(Tamper { child, what })
    }

    /// It must have succeeded.
    fn finish(self) -> Result<()> {
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                self.what,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Polls `done` every 50 µs from `t0` until it holds (Ok: the elapsed time)
/// or [`DEADLINE`] passes.
fn poll_until(t0: Instant, mut done: impl FnMut() -> Result<bool>) -> Result<Duration> {
    loop {
        if done()? {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > DEADLINE {
            bail!("not repaired within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

// --- netlink notifications -------------------------------------------------

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
/// nfnetlink types are `NFNL_SUBSYS_NFTABLES (10) << 8 | NFT_MSG_*`.
const NFT_NEWTABLE: u16 = 10 << 8;
const NFT_DELTABLE: u16 = (10 << 8) | 2;
const NFT_NEWGEN: u16 = (10 << 8) | 15;
const RT_TABLE_LOCAL: u8 = 255;
const RTN_LOCAL: u8 = 2;

/// What one notification says, as much as the stops above need.
struct Msg {
    kind: u16,
    /// rtmsg: dst_len, table, type; ifaddrmsg: prefix length.
    plen: u8,
    table: u8,
    rtype: u8,
}

impl Msg {
    /// panda's `local PREFIX` route (the default /48).
    fn is_prefix_route(&self) -> bool {
        self.plen == 48 && self.table == RT_TABLE_LOCAL && self.rtype == RTN_LOCAL
    }
}

/// A netlink socket joined to notification groups, read with a deadline;
/// each message is stamped when it is read.
struct NetlinkEvents {
    fd: OwnedFd,
    /// Read but not yet looked at by [`NetlinkEvents::wait`] (one read can
    /// carry the damage and its repair together).
    queued: std::collections::VecDeque<(Msg, Instant)>,
}

impl NetlinkEvents {
    /// IPv6 addresses and routes (RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV6_ROUTE).
    fn route() -> Result<NetlinkEvents> {
        Self::open(libc::NETLINK_ROUTE, &[9, 11])
    }

    /// nf_tables changes (NFNLGRP_NFTABLES).
    fn nftables() -> Result<NetlinkEvents> {
        Self::open(libc::NETLINK_NETFILTER, &[7])
    }

    fn open(proto: i32, groups: &[i32]) -> Result<NetlinkEvents> {
        // SAFETY: plain socket(2); owned at once.
        let raw =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("netlink socket");
        }
        // SAFETY: a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a zeroed sockaddr_nl is a valid "any port" address.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // Only bound sockets are on the kernel's multicast lists.
        // SAFETY: sa is a valid sockaddr_nl of the size passed.
        if unsafe {
            libc::bind(
                raw,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        } != 0
        {
            return Err(io::Error::last_os_error()).context("binding a netlink socket");
        }
        for g in groups {
            // SAFETY: an int option of the right size.
            if unsafe {
                libc::setsockopt(
                    raw,
                    libc::SOL_NETLINK,
                    libc::NETLINK_ADD_MEMBERSHIP,
                    g as *const i32 as *const libc::c_void,
                    4,
                )
            } != 0
            {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("joining group {g}"));
            }
        }
        Ok(NetlinkEvents {
            fd,
            queued: Default::default(),
        })
    }

    /// Reads notifications until one satisfies `want`; returns when it was
    /// read.
    fn wait(&mut self, want: impl Fn(&Msg) -> bool) -> Result<Instant> {
        let end = Instant::now() + DEADLINE;
        loop {
            while let Some((msg, at)) = self.queued.pop_front() {
                if want(&msg) {
                    return Ok(at);
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no matching netlink notification within {DEADLINE:?}");
            }
            self.read(left)?;
        }
    }

    /// Queues the messages of one read (none if `left` passes first),
    /// each stamped with the time of the read.
    fn read(&mut self, left: Duration) -> Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) } <= 0 {
            return Ok(());
        }
        let mut buf = vec![0u8; 1 << 16];
        // SAFETY: buf is a valid writable buffer of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let at = Instant::now();
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                bail!("netlink overrun: notifications were lost");
            }
            return Err(e).context("reading netlink notifications");
        }
        let mut rest = &buf[..n as usize];
        // nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32.
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            if len < 16 || len > rest.len() {
                break;
            }
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            let body = &rest[16..len];
            let (plen, table, rtype) = match kind {
                // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type
                RTM_NEWROUTE | RTM_DELROUTE if body.len() >= 8 => (body[1], body[4], body[7]),
                // ifaddrmsg: family, prefixlen, ...
                RTM_NEWADDR | RTM_DELADDR if body.len() >= 2 => (body[1], 0, 0),
                _ => (0, 0, 0),
            };
            self.queued.push_back((
                Msg {
                    kind,
                    plen,
                    table,
                    rtype,
                },
                at,
            ));
            rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
        }
        Ok(())
    }
}
