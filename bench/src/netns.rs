//! Throwaway network namespaces: every measurement runs in one of these,
//! never in the host's namespace, so the host's addresses, routes, sysctls
//! and nftables ruleset are never touched.
//!
//! A namespace is named (`ip netns add pb<pid>-<n>-<tag>`), so that
//! commands (`nsenter --net=…`, never `ip netns exec`, which remounts /sys
//! and hides the cgroup2 mount) and worker processes can join it, and it is
//! deleted on drop. Threads join it with setns(2), which moves only the
//! calling thread: sockets they create belong to the namespace.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{anyhow, bail, Context, Result};

const PREFIX: &str = "pb";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace with `lo` up, deleted on drop.
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a fresh namespace; `tag` says what it is for (in its name).
    pub fn new(tag: &str) -> Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns {
            path: PathBuf::from(format!("/var/run/netns/{name}")),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `nsenter --net=NS -- program`: a command that runs inside. nsenter
    /// without other namespaces execs `program` in place, so the child's pid
    /// is the program's.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        c
    }

    /// `ip ARGS` inside; must succeed.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(self.cmd("ip").args(args))
    }

    /// Writes a sysctl of this namespace (`sysctl -w` run inside).
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(self
            .cmd("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")]))?;
        Ok(())
    }

    /// Reads a sysctl of this namespace.
    pub fn sysctl(&self, key: &str) -> Result<String> {
        Ok(run(self.cmd("sysctl").args(["-n", key]))?
            .trim()
            .to_string())
    }

    /// Runs `f` on a new thread that joined this namespace, and returns its
    /// result (a panic in `f` is re-raised here).
    pub fn in_netns<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> Result<R> + Send,
        R: Send,
    {
        let path = self.path.clone();
        thread::scope(|s| {
            let h = s.spawn(move || {
                enter(&path)?;
                f()
            });
            match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// setns(CLONE_NEWNET) for the calling thread (or the whole process, when
/// it has only one thread: the scale workers).
pub fn enter(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: setns on a file descriptor we own; it only changes namespaces.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "setns({}): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Runs a command to completion; it must exit 0. Returns its stdout; the
/// error names the command and carries its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `rest` starts with a pid (digits) and that process is gone:
/// what an earlier, killed panda-bench left behind is named after it.
pub fn pid_is_dead(rest: &str) -> bool {
    let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes the namespaces of earlier panda-bench processes that are gone
/// (killed before their guards ran).
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(PREFIX) {
            if pid_is_dead(rest) {
                eprintln!("removing stale benchmark namespace {name}");
                let _ = run(Command::new("ip").args(["netns", "delete", &name]));
            }
        }
    }
}
