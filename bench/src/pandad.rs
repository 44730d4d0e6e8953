//! The real pandad, started in a benchmark namespace the way the
//! integration tests start it: its own config, state directory and API
//! socket in a scratch directory, readiness through sd_notify (`READY=1` on
//! a NOTIFY_SOCKET we listen on) with a deadline, SIGTERM at the end.
//!
//! Spawn pandad from the main thread only: its parent death signal (SIGTERM
//! if panda-bench dies without stopping it) follows the *thread* that
//! forked it, and would fire as soon as a short-lived thread exits.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{net::UnixDatagram, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{interrupt, netns::Netns, tempdir::TempDir};

/// How long pandad may take to become ready or to stop.
const DEADLINE: Duration = Duration::from_secs(30);

/// How a launch ended.
pub enum Launch {
    Ready(Pandad),
    /// pandad exited before READY=1 (e.g. a mechanism the kernel refuses).
    Refused {
        status: ExitStatus,
        stderr: String,
    },
}

/// A running pandad; SIGTERM (then SIGKILL) on drop if not stopped.
pub struct Pandad {
    child: Child,
    pidfd: OwnedFd,
    dir: TempDir,
    stopped: bool,
    /// From spawn to `READY=1`.
    pub ready_after: Duration,
}

impl Pandad {
    /// Starts pandad with `mechanism` and must become ready.
    pub fn start(bin: &Path, ns: &Netns, mechanism: &str) -> Result<Pandad> {
        match Self::launch(bin, ns, mechanism)? {
            Launch::Ready(p) => Ok(p),
            Launch::Refused { status, stderr } => {
                bail!("pandad exited before READY=1 ({status}); stderr:\n{stderr}")
            }
        }
    }

    /// Starts pandad in `ns` and waits for `READY=1` or its exit.
    pub fn launch(bin: &Path, ns: &Netns, mechanism: &str) -> Result<Launch> {
        let dir = TempDir::new()?;
        let config = dir.path().join("pandad.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{}\"\nstate_dir = \"{}\"\nbpffs = \"{}\"\nmechanism = \"{mechanism}\"\n",
                dir.path().join("pandad.sock").display(),
                dir.path().join("state").display(),
                // A bpffs of its own, never the host's: its pins go when
                // the directory is removed (unmounted first).
                dir.path().join("bpffs").display()
            ),
        )?;
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).context("binding the notify socket")?;
        let stderr = File::create(dir.path().join("stderr"))?;
        let mut cmd = ns.cmd(bin);
        cmd.arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("PANDA_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let t0 = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pidfd = pidfd_open(child.id())?;
        let mut p = Pandad {
            child,
            pidfd,
            dir,
            stopped: false,
            ready_after: Duration::ZERO,
        };
        match p.wait_ready(&notify)? {
            true => {
                p.ready_after = t0.elapsed();
                Ok(Launch::Ready(p))
            }
            false => {
                let status = p.child.wait()?;
                p.stopped = true;
                Ok(Launch::Refused {
                    status,
                    stderr: p.stderr(),
                })
            }
        }
    }

    /// Polls the notify socket and the pidfd: true on `READY=1`, false when
    /// pandad exited first.
    fn wait_ready(&mut self, notify: &UnixDatagram) -> Result<bool> {
        let end = Instant::now() + DEADLINE;
        let mut buf = [0u8; 4096];
        loop {
            interrupt::check()?;
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "pandad sent no READY=1 within {DEADLINE:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            let mut fds = [pollfd(notify.as_raw_fd()), pollfd(self.pidfd.as_raw_fd())];
            // SAFETY: two valid pollfd entries.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, left.as_millis().min(1000) as i32) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                bail!("poll: {e}");
            }
            if fds[0].revents & libc::POLLIN != 0 {
                let n = notify.recv(&mut buf)?;
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l.trim() == "READY=1")
                {
                    return Ok(true);
                }
            } else if fds[1].revents != 0 {
                return Ok(false);
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where this pandad pinned its links: the one instance directory on
    /// its private bpffs.
    pub fn pin_dir(&self) -> Result<PathBuf> {
        let root = self.dir.path().join("bpffs").join("panda");
        let mut dirs = std::fs::read_dir(&root)
            .with_context(|| format!("reading {}", root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()));
        match (dirs.next(), dirs.next()) {
            (Some(d), None) => Ok(d),
            _ => bail!("not exactly one instance directory in {}", root.display()),
        }
    }

    /// One request on pandad's API socket (a JSON line, as `panda` sends
    /// it); its JSON answer, or pandad's error.
    pub fn request(&self, json: &serde_json::Value) -> Result<serde_json::Value> {
        panda::api::request(&self.dir.path().join("pandad.sock"), &json.to_string())
    }

    /// What pandad wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The kernel id of pandad's own program `name` (e.g. "bind6"): among
    /// the BPF program descriptors pandad holds (/proc/PID/fd and fdinfo's
    /// `prog_id`), the one the kernel calls `name`. Other pandads (tests run
    /// by others) load programs of the same name; this finds ours.
    pub fn program_id(&self, name: &str) -> Result<u32> {
        let ids = held_prog_ids(self.pid())?;
        for info in aya::programs::loaded_programs() {
            let info = info.context("listing loaded BPF programs")?;
            if ids.contains(&info.id()) && info.name_as_str() == Some(name) {
                return Ok(info.id());
            }
        }
        bail!(
            "pandad (pid {}) holds no BPF program named {name} (it holds {ids:?})",
            self.pid()
        )
    }

    /// SIGTERM and wait for the exit, which must be clean (status 0);
    /// returns how long the teardown took.
    pub fn stop(mut self) -> Result<Duration> {
        let t0 = Instant::now();
        self.signal(libc::SIGTERM);
        let status = self.reap(DEADLINE)?;
        let took = t0.elapsed();
        if !status.success() {
            bail!(
                "pandad exited with {status} after SIGTERM; stderr:\n{}",
                self.stderr()
            );
        }
        Ok(took)
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: a pidfd we own; pidfd_send_signal never hits a recycled pid.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }

    /// Waits (pidfd) up to `deadline` for pandad to exit, then reaps it.
    fn reap(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("pandad did not exit within {deadline:?}");
            }
            let mut pfd = pollfd(self.pidfd.as_raw_fd());
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
            if rc > 0 {
                break;
            }
        }
        let st = self.child.wait()?;
        self.stopped = true;
        Ok(st)
    }
}

impl Drop for Pandad {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.signal(libc::SIGTERM);
        if self.reap(DEADLINE).is_err() {
            self.signal(libc::SIGKILL);
            let _ = self.reap(DEADLINE);
        }
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(anyhow!("pidfd_open: {}", io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The ids of the BPF programs a process holds descriptors for.
fn held_prog_ids(pid: u32) -> Result<Vec<u32>> {
    let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let mut ids = Vec::new();
    for e in std::fs::read_dir(&fd_dir).with_context(|| format!("reading {}", fd_dir.display()))? {
        let e = e?;
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if target.to_string_lossy() != "anon_inode:bpf-prog" {
            continue;
        }
        if let Some(id) = crate::procfs::bpf_prog_id(pid, &e.file_name().to_string_lossy()) {
            ids.push(id);
        }
    }
    Ok(ids)
}
