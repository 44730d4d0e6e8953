//! `panda gc`: removes the pin directories of pandad instances whose network
//! namespace no longer exists.
//!
//! Pinned links outlive pandad by design ([`crate::pins`]), and with them
//! their programs stay attached at the cgroup2 root. When the namespace
//! they served is gone, nothing will ever adopt them: each program still
//! runs on every bind (and UDP send) of every namespace of the host, checks
//! the netns cookie, and returns. That costs a few ns a bind, forever, until
//! the pins go. This module finds and removes them.
//!
//! Kernel facts relied on:
//!
//! - A network namespace lives while something holds a reference to it: a
//!   task in it (`/proc/PID/task/TID/ns/net`; one thread can be in another
//!   namespace than its process after setns(2)), an open nsfs file
//!   (`/proc/PID/fd/N` reading `net:[INODE]`), an nsfs bind mount (`ip netns
//!   add` makes `/run/netns/NAME`; other tools mount elsewhere, in any mount
//!   namespace), or a socket created in it. Once none is left it is gone for
//!   good: nothing can enter it again, so its programs act on nothing.
//! - Its cookie (`SO_NETNS_COOKIE`) comes from a 64-bit counter that is never
//!   reused while the kernel runs, and it is the name of the pin directory
//!   (`<bpffs>/panda/<cookie>-<table>`), being what the BPF programs compare.
//! - Unlinking the last pin of a `bpf_link` that no process holds releases
//!   the link, which detaches its program.
//!
//! **Identity: the netns cookie.** Liveness is decided by comparing cookies
//! of live namespaces with the cookie in a directory's name, never nsfs
//! inode numbers: those are recycled once a namespace is freed, so a new
//! namespace could carry a dead one's inode, and the directories do not
//! record inodes anyway. Inodes serve only to avoid asking the same live
//! namespace for its cookie twice; the scan holds an fd of every namespace
//! it has seen, so none of those inodes can be recycled during the scan.
//!
//! **Order.** The directories are listed before the namespaces are scanned:
//! a namespace created during the scan has a fresh cookie, and any directory
//! a pandad makes for it was not in the list, so it cannot be removed.
use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::{cgroup, pins, pins::Instance, probe};

/// Where `ip netns` keeps its bind mounts (`/var/run` is usually a link to
/// `/run`; both are read in case it is not).
const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// The instance directories under `bpffs` whose namespace no longer exists.
pub fn stale(bpffs: &Path) -> Result<Vec<Instance>> {
    // Listed first: see "Order" above.
    let instances = pins::instances(bpffs)?;
    if instances.is_empty() {
        return Ok(instances);
    }
    let mut scan = Scan::default();
    scan.namespaces()?;
    let mut candidates: Vec<Instance> = instances
        .into_iter()
        .filter(|i| !scan.cookies.contains(&i.netns_cookie))
        .collect();
    if !candidates.is_empty() {
        // Only sockets are left to keep a candidate alive; looking at every
        // socket of the host is the slow part, so it comes last.
        scan.sockets()?;
        candidates.retain(|i| !scan.cookies.contains(&i.netns_cookie));
    }
    Ok(candidates)
}

/// What [`collect`] did.
#[derive(Debug)]
pub struct Outcome {
    /// Removed (or, with `dry_run`, to be removed).
    pub stale: Vec<Instance>,
    pub dry_run: bool,
}

/// Removes (unless `dry_run`) the directories [`stale`] finds.
pub fn collect(bpffs: &Path, dry_run: bool) -> Result<Outcome> {
    let stale = stale(bpffs)?;
    if !dry_run {
        for i in &stale {
            i.dir.remove()?;
        }
    }
    Ok(Outcome { stale, dry_run })
}

/// The cookies of the namespaces found so far, and an fd of each (which
/// keeps its inode from being recycled while the scan runs).
#[derive(Default)]
struct Scan {
    held: HashMap<u64, OwnedFd>,
    cookies: HashSet<u64>,
}

/// Errors that only mean "that process, fd or mount is gone by now".
fn vanished(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ESRCH | libc::EBADF | libc::ENOTDIR)
    )
}

/// The numeric entries of a /proc directory (pids, tids, fds).
fn numeric_entries(dir: &Path) -> Vec<u64> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `net:[INODE]` of an nsfs magic link, if it names a network namespace.
fn net_link_inode(path: &Path) -> Option<u64> {
    let target = fs::read_link(path).ok()?;
    let t = target.to_str()?;
    t.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

impl Scan {
    /// Every namespace a task, an fd or a mount refers to.
    fn namespaces(&mut self) -> Result<()> {
        let mut mount_namespaces = HashSet::new();
        for pid in numeric_entries(Path::new("/proc")) {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            for tid in numeric_entries(&proc.join("task")) {
                self.reference(&proc.join(format!("task/{tid}/ns/net")))?;
            }
            for fd in numeric_entries(&proc.join("fd")) {
                self.reference(&proc.join(format!("fd/{fd}")))?;
            }
            // Bind mounts, once per mount namespace, seen through a process
            // of that mount namespace.
            if let Ok(mnt) = fs::read_link(proc.join("ns/mnt")) {
                if mount_namespaces.insert(mnt) {
                    self.mounts(&proc)?;
                }
            }
        }
        for dir in NETNS_DIRS {
            let Ok(rd) = fs::read_dir(dir) else { continue };
            for e in rd.flatten() {
                self.mount_point(&e.path())?;
            }
        }
        Ok(())
    }

    /// The nsfs bind mounts of network namespaces in `proc`'s mount namespace.
    fn mounts(&mut self, proc: &Path) -> Result<()> {
        let Ok(info) = fs::read_to_string(proc.join("mountinfo")) else {
            return Ok(()); // exited
        };
        for m in cgroup::mounts(&info) {
            if m.fstype == "nsfs" && m.root.starts_with("net:[") {
                let rel = m.point.strip_prefix("/").unwrap_or(&m.point);
                self.mount_point(&proc.join("root").join(rel))?;
            }
        }
        Ok(())
    }

    /// A task's or fd's magic link: only those naming a network namespace.
    fn reference(&mut self, link: &Path) -> Result<()> {
        match net_link_inode(link) {
            Some(inode) if !self.held.contains_key(&inode) => self.open(link),
            _ => Ok(()),
        }
    }

    /// A file that may be a network namespace's bind mount.
    fn mount_point(&mut self, path: &Path) -> Result<()> {
        self.open(path)
    }

    /// Opens `path`; if it is a network namespace not seen yet, reads its cookie.
    fn open(&mut self, path: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let (f, inode) = match fs::File::open(path).and_then(|f| Ok((f.metadata()?.ino(), f))) {
            Ok((inode, f)) => (OwnedFd::from(f), inode),
            Err(e) if vanished(&e) => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "opening {} to tell whether its network namespace is alive",
                        path.display()
                    )
                })
            }
        };
        if self.held.contains_key(&inode) {
            return Ok(());
        }
        match cookie_of(&f) {
            Ok(Some(c)) => {
                self.cookies.insert(c);
                self.held.insert(inode, f);
                Ok(())
            }
            Ok(None) => Ok(()), // not a network namespace
            Err(e) => Err(e).with_context(|| {
                format!(
                    "reading the netns cookie of {} (panda gc must run as root)",
                    path.display()
                )
            }),
        }
    }

    /// The namespaces only sockets keep alive: each socket of each process,
    /// duplicated with pidfd_getfd(2) (Linux 5.6), asked for its
    /// SO_NETNS_COOKIE.
    fn sockets(&mut self) -> Result<()> {
        for pid in numeric_entries(Path::new("/proc")) {
            let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
            let fds: Vec<u64> = numeric_entries(&fd_dir)
                .into_iter()
                .filter(|fd| {
                    fs::read_link(fd_dir.join(fd.to_string()))
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:["))
                })
                .collect();
            if fds.is_empty() {
                continue;
            }
            // SAFETY: plain syscall; the fd is owned right away.
            let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
            if pidfd < 0 {
                let e = io::Error::last_os_error();
                if vanished(&e) {
                    continue;
                }
                return Err(e).with_context(|| format!("pidfd_open({pid})"));
            }
            // SAFETY: a new fd that nothing else owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
            for fd in fds {
                // SAFETY: plain syscall; the fd is owned right away.
                let dup = unsafe {
                    libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd as i32, 0)
                };
                if dup < 0 {
                    let e = io::Error::last_os_error();
                    if vanished(&e) {
                        continue;
                    }
                    return Err(e).with_context(|| {
                        format!(
                            "duplicating socket fd {fd} of pid {pid} to read its network \
                             namespace (panda gc must run as root)"
                        )
                    });
                }
                // SAFETY: a new fd that nothing else owns.
                let sock = unsafe { OwnedFd::from_raw_fd(dup as i32) };
                if let Ok(c) = probe::socket_netns_cookie(&sock) {
                    self.cookies.insert(c);
                }
            }
        }
        Ok(())
    }
}

/// The cookie of the network namespace `ns` (an nsfs fd), read from a
/// socket made by a short-lived thread that joined it; None if `ns` is
/// not a network namespace.
fn cookie_of(ns: &OwnedFd) -> Result<Option<u64>> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns only changes this (short-lived) thread's netns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    return Ok(None);
                }
                bail!("setns: {e}");
            }
            probe::netns_cookie().map(Some)
        })
        .join()
        .unwrap_or_else(|_| bail!("the netns cookie thread panicked"))
    })
}

/// Prints what [`collect`] did, one line a directory.
pub fn report(o: &Outcome) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let verb = if o.dry_run { "would remove" } else { "removed" };
    for i in &o.stale {
        let _ = writeln!(
            out,
            "{verb} {} (table {}: network namespace with cookie {} no longer exists)",
            i.dir.path().display(),
            i.table,
            i.netns_cookie
        );
    }
    if o.stale.is_empty() {
        let _ = writeln!(
            out,
            "nothing to remove: every instance's network namespace is alive"
        );
    }
    out
}
