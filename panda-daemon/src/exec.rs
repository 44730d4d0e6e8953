//! `panda exec`: run one command on a loopback address of its own.
//!
//! The client forks the command's process first and holds it before exec,
//! on a pipe. pandad then makes a cgroup for it, leases the address to that
//! cgroup and moves the held process in (pandad moves only a child of the
//! process asking, which it checks with SO_PEERCRED and /proc). Only then
//! does the client send the address down the pipe, and the child exports it
//! as PANDA_ADDR and execs the command: the command never runs a moment
//! outside its lease. The client forwards signals, waits, asks pandad to
//! remove the cgroup and its lease, and exits with the command's status. If
//! the client is killed instead, pandad collects the lease once the client
//! is gone and the cgroup has emptied ([`crate::leases`]).
use std::{
    ffi::OsString,
    io::Write,
    net::Ipv6Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::process::CommandExt,
    path::Path,
    process::ExitCode,
};

use anyhow::{bail, Context, Result};

use crate::{api, leases::Request};

/// Signals passed on to the command (SIGCHLD is waited for, not passed).
const FORWARD: [libc::c_int; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];

/// Blocks the forwarded signals and SIGCHLD for as long as it lives, so
/// that they queue for `sigwait` instead of killing the client.
struct Blocked {
    set: libc::sigset_t,
    old: libc::sigset_t,
}

impl Blocked {
    fn new() -> Blocked {
        // SAFETY: sigset_t is plain data, initialised by sigemptyset.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in FORWARD.iter().chain(&[libc::SIGCHLD]) {
                libc::sigaddset(&mut set, *s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Blocked { set, old }
        }
    }

    /// The next pending signal of the set.
    fn wait(&self) -> libc::c_int {
        let mut sig = 0;
        // SAFETY: valid set and out-pointer.
        unsafe { libc::sigwait(&self.set, &mut sig) };
        sig
    }

    /// Restores the mask (in the child, before exec).
    fn restore(&self) {
        // SAFETY: the mask saved by new().
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        self.restore();
    }
}

/// What the command's end means for panda's own exit status: its code, or
/// 128 + the signal that killed it (as shells report it).
fn exit_code(status: libc::c_int) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        128u8.wrapping_add(libc::WTERMSIG(status) as u8)
    } else {
        1
    }
}

/// An argument with `$PANDA_ADDR` / `${PANDA_ADDR}` replaced by the
/// address, so that `panda exec -- server --listen '[$PANDA_ADDR]:8080'`
/// works without a shell (the quotes keep the caller's shell, which runs
/// before the address exists, from expanding it).
fn substitute(arg: &OsString, addr: &str) -> OsString {
    match arg.to_str() {
        Some(s) if s.contains("$PANDA_ADDR") || s.contains("${PANDA_ADDR}") => s
            .replace("${PANDA_ADDR}", addr)
            .replace("$PANDA_ADDR", addr)
            .into(),
        _ => arg.clone(),
    }
}

/// Runs `command` in a cgroup holding a lease of `addr` (None: auto).
pub fn run(socket: &Path, addr: Option<Ipv6Addr>, command: &[OsString]) -> Result<ExitCode> {
    let Some((program, args)) = command.split_first() else {
        bail!("no command given (usage: panda exec [--addr ADDR|auto] -- CMD [ARGS...])");
    };
    let blocked = Blocked::new();
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds, owned right away.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    // SAFETY: fresh fds nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: panda is single-threaded, so the child may allocate.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        drop(w);
        // Hold until pandad has moved us into the lease's cgroup; the
        // address comes down the pipe, EOF without it means "give up".
        let mut buf = [0u8; 64];
        let mut n = 0;
        loop {
            // SAFETY: reads into the rest of buf.
            let k =
                unsafe { libc::read(r.as_raw_fd(), buf[n..].as_mut_ptr().cast(), buf.len() - n) };
            if k <= 0 || n + k as usize >= buf.len() {
                break;
            }
            n += k as usize;
        }
        if n == 0 {
            // SAFETY: leave without running the parent's atexit handlers.
            unsafe { libc::_exit(127) };
        }
        blocked.restore();
        let addr = String::from_utf8_lossy(&buf[..n]).into_owned();
        let err = std::process::Command::new(program)
            .args(args.iter().map(|a| substitute(a, &addr)))
            .env("PANDA_ADDR", &addr)
            .exec();
        eprintln!("panda exec: {}: {err}", program.to_string_lossy());
        let code = if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        // SAFETY: as above.
        unsafe { libc::_exit(code) };
    }
    drop(r);
    let req = Request::Exec {
        addr,
        pid: pid as u32,
    };
    let granted = api::request(socket, &serde_json::to_string(&req)?);
    let (cgroup, addr) = match granted {
        Ok(v) => (
            v["cgroup"].as_str().unwrap_or_default().to_owned(),
            v["addrs"][0].as_str().unwrap_or_default().to_owned(),
        ),
        Err(e) => {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(e);
        }
    };
    let mut w = std::fs::File::from(w);
    let _ = w.write_all(addr.as_bytes());
    drop(w);
    let status = loop {
        let sig = blocked.wait();
        if sig == libc::SIGCHLD {
            let mut status = 0;
            // SAFETY: our own child, no hang.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break status;
            }
            continue;
        }
        // SAFETY: our own child (not yet reaped, so the pid is still it).
        unsafe { libc::kill(pid, sig) };
    };
    let done = Request::ExecDone {
        cgroup: cgroup.clone(),
    };
    if let Err(e) = api::request(socket, &serde_json::to_string(&done)?) {
        eprintln!(
            "panda exec: releasing {addr} ({cgroup}): {e:#}; pandad collects it once this panda has exited"
        );
    }
    Ok(ExitCode::from(exit_code(status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_both_spellings() {
        let a = "fd00:1009:bacc::5";
        assert_eq!(
            substitute(&"[$PANDA_ADDR]:80".into(), a),
            "[fd00:1009:bacc::5]:80"
        );
        assert_eq!(substitute(&"${PANDA_ADDR}".into(), a), a);
        assert_eq!(
            substitute(&"$PANDA_ADDRESS".into(), a),
            "fd00:1009:bacc::5ESS"
        );
        assert_eq!(substitute(&"plain".into(), a), "plain");
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(7 << 8), 7);
        assert_eq!(exit_code(libc::SIGTERM), 128 + 15);
    }
}
