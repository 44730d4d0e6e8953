//! Shared harness for panda's privileged integration tests.
//!
//! Every test builds its own world out of RAII guards, so that a failing
//! assertion (a panic) still tears everything down:
//!
//! * [`Netns`]: a named network namespace (`ip netns add`), `lo` up, deleted
//!   on drop. Commands run inside with `nsenter --net=…` (never
//!   `ip netns exec`, which remounts /sys and hides the cgroup2 mount), and
//!   closures with [`Netns::in_netns`] on a thread that did setns(2).
//! * [`Pandad`]: the real daemon binary, started in a netns with a config in a
//!   per-test temporary directory, awaited through sd_notify `READY=1`,
//!   stopped with SIGTERM (or killed on drop). Its stderr is always captured
//!   and printed when a test fails.
//! * [`TempDir`], [`ChildCgroup`]: directories removed on drop.
//!
//! Nothing here sleeps to synchronise: every wait is on a condition (a socket
//! becoming readable, a pidfd signalling exit, a file changing) with a
//! deadline.
#![allow(dead_code)]

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read},
    mem,
    net::{Ipv6Addr, SocketAddr, SocketAddrV6},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{net::UnixDatagram, process::ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The default prefix pandad serves.
pub const PREFIX: &str = "fd00:1009:bacc::/48";
/// How long pandad may take to become ready or to stop.
pub const DAEMON_DEADLINE: Duration = Duration::from_secs(30);

/// Path of the pandad binary under test.
pub const PANDAD: &str = env!("CARGO_BIN_EXE_pandad");
/// Path of the panda CLI under test.
pub const PANDA: &str = env!("CARGO_BIN_EXE_panda");

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let tag: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(24)
        .collect();
    format!("pt{}-{}-{}", std::process::id(), n, tag)
}

// ---------------------------------------------------------------------------
// Privileges
// ---------------------------------------------------------------------------

/// True when the test may run: root, and a kernel pandad can serve: one
/// with BTF (guard mode reads kernel structures at offsets from BTF), or,
/// when this run expects the freebind mechanism (which reads none), any.
/// Otherwise it prints "skipped: needs root + BPF" and returns false, unless
/// `PANDA_REQUIRE_PRIVILEGED=1` is set (CI), in which case it panics.
pub fn require_privileged() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let btf = kernel_has_btf() || expected_mechanism().as_deref() == Some("freebind");
    if root && btf {
        raise_fd_limit();
        return true;
    }
    let why = match (root, btf) {
        (false, false) => "not root and no /sys/kernel/btf/vmlinux",
        (false, true) => "not root",
        _ => "no /sys/kernel/btf/vmlinux",
    };
    if std::env::var("PANDA_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("PANDA_REQUIRE_PRIVILEGED=1 but this test cannot run: {why}");
    }
    eprintln!("skipped: needs root + BPF ({why})");
    false
}

/// Whether the kernel has BTF (`/sys/kernel/btf/vmlinux`): guard mode needs
/// it, freebind mode does not.
pub fn kernel_has_btf() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").exists()
}

/// The mechanism this run expects `mechanism = "auto"` to pick, from
/// `PANDA_EXPECT_MECHANISM` (`cargo xtask vm-test --patched` sets
/// `freebind`); `None`: whatever the kernel supports.
pub fn expected_mechanism() -> Option<String> {
    std::env::var("PANDA_EXPECT_MECHANISM")
        .ok()
        .filter(|m| !m.is_empty())
}

/// `status.mechanism`, which must be the one [`expected_mechanism`] names,
/// if any: a kernel that should run freebind mode must not silently end up
/// in guard mode.
pub fn mechanism(status: &Value) -> String {
    let m = status["mechanism"]
        .as_str()
        .unwrap_or_else(|| panic!("status has no mechanism: {status}"))
        .to_string();
    if let Some(want) = expected_mechanism() {
        assert_eq!(
            m, want,
            "PANDA_EXPECT_MECHANISM={want}, but pandad runs {m:?}: {status}"
        );
    }
    m
}

/// Raises this process's soft RLIMIT_NOFILE towards its hard limit (at most
/// 65,536), once. The 1,000-address tests hold about 5,000 sockets at once
/// when run in parallel: more than the soft limit of 1,024 that systemd (and
/// the `cargo xtask vm-test` guest) gives a session by default.
pub fn raise_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut r: libc::rlimit = unsafe { mem::zeroed() };
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
            return;
        }
        let want = r.rlim_max.min(65_536);
        if r.rlim_cur < want {
            r.rlim_cur = want;
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
        }
    });
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// Runs a command, returns its output; panics if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates `/var/run/netns/<unique name>` and brings its `lo` up.
    pub fn new(tag: &str) -> Netns {
        sweep_stale();
        let name = unique(tag);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns {
            path: PathBuf::from(format!("/var/run/netns/{name}")),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `nsenter --net=<ns> -- program`: a command to be run inside.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `program args…` inside; returns the output whatever the status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        run(self.cmd(program).args(args))
    }

    /// Runs `program args…` inside; it must succeed; returns stdout.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        run_ok(self.cmd(program).args(args))
    }

    /// `ip ARGS` inside; must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        self.exec_ok("ip", args)
    }

    /// Reads a sysctl of this namespace (e.g. "net.ipv6.ip_nonlocal_bind").
    pub fn sysctl(&self, key: &str) -> String {
        self.exec_ok("sysctl", &["-n", key]).trim().to_string()
    }

    /// Writes a sysctl of this namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) {
        self.exec_ok("sysctl", &["-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a new thread that first joined this namespace with
    /// setns(CLONE_NEWNET) (which affects only that thread); returns what `f`
    /// returns and re-raises its panic. Sockets created by `f` belong to this
    /// namespace wherever they are used afterwards.
    pub fn in_netns<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path.clone();
        thread::scope(|s| {
            let h = s.spawn(move || {
                enter_netns(&path);
                f()
            });
            match h.join() {
                Ok(r) => r,
                Err(e) => std::panic::resume_unwind(e),
            }
        })
    }

    /// Like [`Netns::in_netns`], but the thread outlives the call.
    pub fn spawn_in<F, R>(&self, f: F) -> thread::JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = self.path.clone();
        thread::spawn(move || {
            enter_netns(&path);
            f()
        })
    }

    /// What the tests compare before start and after stop: addresses, all
    /// routing tables, the whole nftables ruleset and the guard sysctl.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            addrs: self.ip(&["-6", "addr"]),
            routes: self.ip(&["-6", "route", "show", "table", "all"]),
            ruleset: self.exec_ok("nft", &["list", "ruleset"]),
            nonlocal_bind: self.sysctl("net.ipv6.ip_nonlocal_bind"),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns delete {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: ip netns delete {}: {e}", self.name),
        }
    }
}

/// Removes what an earlier test process that was killed (so its guards never
/// ran) left behind: namespaces, cgroups and temp dirs named after a pid that
/// no longer exists. Once per process.
fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dead = |name: &str, prefix: &str| -> bool {
            let Some(rest) = name.strip_prefix(prefix) else {
                return false;
            };
            let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists()
        };
        let names = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        for n in names(Path::new("/var/run/netns")) {
            if dead(&n, "pt") {
                eprintln!("removing stale test netns {n}");
                let _ = run(Command::new("ip").args(["netns", "delete", &n]));
            }
        }
        let root = cgroup2_root();
        for n in names(&root) {
            if dead(&n, "pt") {
                eprintln!("removing stale test cgroup {n}");
                let _ = std::fs::remove_dir(root.join(&n));
            }
        }
        for n in names(Path::new("/tmp")) {
            if dead(&n, "panda-t") {
                remove_tree(&Path::new("/tmp").join(&n));
            }
        }
    });
}

/// setns(CLONE_NEWNET) for the calling thread.
pub fn enter_netns(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns({}): {}",
        path.display(),
        io::Error::last_os_error()
    );
}

/// Kernel state pandad may change, as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub addrs: String,
    pub routes: String,
    pub ruleset: String,
    pub nonlocal_bind: String,
}

/// Asserts two snapshots are identical, naming the part that differs.
pub fn assert_same(before: &Snapshot, after: &Snapshot, when: &str) {
    let parts = [
        ("ip -6 addr", &before.addrs, &after.addrs),
        ("ip -6 route show table all", &before.routes, &after.routes),
        ("nft list ruleset", &before.ruleset, &after.ruleset),
        (
            "net.ipv6.ip_nonlocal_bind",
            &before.nonlocal_bind,
            &after.nonlocal_bind,
        ),
    ];
    for (what, b, a) in parts {
        assert_eq!(
            b, a,
            "{when}: `{what}` differs\n--- before ---\n{b}\n--- after ---\n{a}"
        );
    }
}

/// A veth pair: `a_if` in `a` with `a_addr` (CIDR), `b_if` in `b` with
/// `b_addr`, both up, addresses without DAD.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
    a.ip(&["-6", "addr", "add", a_addr, "dev", a_if, "nodad"]);
    b.ip(&["-6", "addr", "add", b_addr, "dev", b_if, "nodad"]);
}

// ---------------------------------------------------------------------------
// Temporary directories and cgroups
// ---------------------------------------------------------------------------

/// A directory removed (recursively) on drop. Its path is short, so unix
/// socket paths inside stay under the 108-byte limit.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = PathBuf::from(format!("/tmp/panda-t{}-{}", std::process::id(), n));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// Unmounts whatever is mounted below `dir` (a test's bpffs: unmounting it
/// drops its pins, which detaches the programs), then removes the tree.
pub fn remove_tree(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    for line in info.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2") {
            let fields: Vec<&str> = left.split_whitespace().collect();
            if fields.len() >= 5 && fields[3] == "/" {
                return PathBuf::from(unescape_mountinfo(fields[4]));
            }
        }
    }
    panic!("no cgroup2 mount in /proc/self/mountinfo");
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A child cgroup directly under the cgroup2 root, removed on drop (after
/// waiting, with a deadline, for it to be empty).
pub struct ChildCgroup(PathBuf);

impl ChildCgroup {
    pub fn new(tag: &str) -> ChildCgroup {
        let p = cgroup2_root().join(unique(tag));
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        ChildCgroup(p)
    }

    /// A cgroup named like a systemd service (`….service`), for code that
    /// finds its unit from /proc/self/cgroup.
    pub fn service(tag: &str) -> ChildCgroup {
        let p = cgroup2_root().join(format!("{}.service", unique(tag)));
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        ChildCgroup(p)
    }

    /// Moves process `pid` into this cgroup.
    pub fn adopt(&self, pid: u32) {
        let procs = self.0.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", procs.display()));
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Waits (poll(2) on cgroup.events, POLLPRI) until no process is left.
    pub fn wait_empty(&self, deadline: Duration) -> bool {
        let events = self.0.join("cgroup.events");
        let end = Instant::now() + deadline;
        loop {
            let Ok(mut f) = File::open(&events) else {
                return true;
            };
            let mut s = String::new();
            if f.read_to_string(&mut s).is_err() {
                return true;
            }
            if s.lines().any(|l| l.trim() == "populated 0") {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut pfd = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            };
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        }
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        self.wait_empty(Duration::from_secs(10));
        if let Err(e) = std::fs::remove_dir(&self.0) {
            eprintln!("warning: rmdir {}: {e}", self.0.display());
        }
    }
}

// ---------------------------------------------------------------------------
// pandad
// ---------------------------------------------------------------------------

/// Captured output of a child process, filled by a draining thread.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn drain(&self, mut r: impl Read + Send + 'static, echo: bool) -> mpsc::Receiver<()> {
        let buf = self.0.clone();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match r.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if echo {
                            eprint!("[pandad] {}", String::from_utf8_lossy(&chunk[..n]));
                        }
                        buf.lock().unwrap().extend_from_slice(&chunk[..n]);
                    }
                }
            }
            let _ = tx.send(());
        });
        rx
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// How a launch ended: ready (running) or exited before READY=1.
pub enum Launch {
    Ready(Pandad),
    Exited { status: ExitStatus, stderr: String },
}

impl Launch {
    /// The daemon must have become ready.
    pub fn ready(self) -> Pandad {
        match self {
            Launch::Ready(p) => p,
            Launch::Exited { status, stderr } => {
                panic!("pandad exited before READY=1 ({status}); stderr:\n{stderr}")
            }
        }
    }

    /// The daemon must have exited before becoming ready; returns status and stderr.
    pub fn exited(self) -> (ExitStatus, String) {
        match self {
            Launch::Exited { status, stderr } => (status, stderr),
            Launch::Ready(p) => {
                let (st, err) = p.stop();
                panic!("pandad became ready but should have refused to start (stopped: {st}); stderr:\n{err}")
            }
        }
    }
}

/// A running pandad; stopped with SIGTERM (then SIGKILL) on drop.
pub struct Pandad {
    child: Option<Child>,
    pidfd: OwnedFd,
    /// Always Some but in [`Pandad::kill_keep_dir`].
    dir: Option<TempDir>,
    socket: PathBuf,
    stderr: Capture,
    stderr_done: mpsc::Receiver<()>,
    status: Option<ExitStatus>,
}

/// Config lines every test config starts with: API socket, state
/// directory and bpffs (a mount of its own, so the test's pins are private
/// and go when [`TempDir`] unmounts it) inside the per-test directory.
pub fn base_config(dir: &Path) -> String {
    config_with_bpffs(dir, &dir.join("bpffs"))
}

/// [`base_config`] with the bpffs at `bpffs` (several instances sharing one,
/// as on a real host).
pub fn config_with_bpffs(dir: &Path, bpffs: &Path) -> String {
    format!(
        "socket = \"{}\"\nstate_dir = \"{}\"\nbpffs = \"{}\"\n",
        dir.join("pandad.sock").display(),
        dir.join("state").display(),
        bpffs.display()
    )
}

/// Where a test's config file is written in its directory.
pub fn config_file(dir: &Path) -> PathBuf {
    dir.join("pandad.toml")
}

impl Pandad {
    /// Starts pandad in `ns` with the base config and must become ready.
    pub fn start(ns: &Netns) -> Pandad {
        Self::launch(ns, "").ready()
    }

    /// Starts pandad with the base config plus `extra` TOML lines.
    pub fn start_with(ns: &Netns, extra: &str) -> Pandad {
        Self::launch(ns, extra).ready()
    }

    /// Launches with the base config plus `extra`; reports ready or exited.
    pub fn launch(ns: &Netns, extra: &str) -> Launch {
        let dir = TempDir::new();
        let text = format!("{}{}", base_config(dir.path()), extra);
        Self::launch_raw(ns, dir, &text)
    }

    /// Launches with exactly `config` (written to DIR/pandad.toml).
    pub fn launch_raw(ns: &Netns, dir: TempDir, config: &str) -> Launch {
        let cfg = config_file(dir.path());
        std::fs::write(&cfg, config).expect("write config");
        Self::launch_args(ns, dir, &["--config", cfg.to_str().unwrap()])
    }

    /// Launches `pandad ARGS` in `ns` with NOTIFY_SOCKET set; waits for
    /// READY=1 or exit, with a deadline.
    pub fn launch_args(ns: &Netns, dir: TempDir, args: &[&str]) -> Launch {
        Self::launch_args_env(ns, dir, args, &[])
    }

    /// Like [`Pandad::launch_args`] with extra environment variables.
    pub fn launch_args_env(
        ns: &Netns,
        dir: TempDir,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Launch {
        let notify_path = dir.path().join("notify.sock");
        // A relaunch in the same directory finds its predecessor's socket.
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        let echo = std::env::var_os("PANDA_TEST_ECHO").is_some();
        let mut cmd = ns.cmd(PANDAD);
        // If this test process dies without running its guards (SIGKILL,
        // timeout), pandad gets SIGTERM and undoes its changes. (The death
        // signal follows the spawning thread, the test's own, which holds
        // this guard until the end.)
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .args(args)
            // Relative paths a (bad) config might hold land in the temp dir.
            .current_dir(dir.path())
            .env("NOTIFY_SOCKET", &notify_path)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nsenter pandad");
        // nsenter without --pid execs pandad in place: this pid is pandad's.
        let pid = child.id() as libc::pid_t;
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(pidfd >= 0, "pidfd_open: {}", io::Error::last_os_error());
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
        let stderr = Capture::default();
        let stderr_done = stderr.drain(child.stderr.take().unwrap(), echo);
        let stdout = Capture::default();
        let _ = stdout.drain(child.stdout.take().unwrap(), echo);
        let mut p = Pandad {
            child: Some(child),
            pidfd,
            socket: dir.path().join("pandad.sock"),
            dir: Some(dir),
            stderr,
            stderr_done,
            status: None,
        };
        let deadline = Instant::now() + DAEMON_DEADLINE;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let (st, err) = p.stop();
                panic!(
                    "pandad sent no READY=1 within {DAEMON_DEADLINE:?} (stopped: {st}); stderr:\n{err}"
                );
            }
            let mut fds = [
                libc::pollfd {
                    fd: notify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: p.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("poll: {e}");
            }
            if fds[0].revents & libc::POLLIN != 0 {
                let n = notify.recv(&mut buf).expect("recv notify");
                let msg = String::from_utf8_lossy(&buf[..n]);
                if msg.lines().any(|l| l.trim() == "READY=1") {
                    return Launch::Ready(p);
                }
                continue;
            }
            if fds[1].revents != 0 {
                let status = p.reap(DAEMON_DEADLINE).expect("pandad exited");
                return Launch::Exited {
                    status,
                    stderr: p.stderr_text(),
                };
            }
        }
    }

    /// The API socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The per-test directory holding config, sockets and state.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("pandad's dir").path()
    }

    /// Ends pandad with `sig` (e.g. SIGKILL, or SIGUSR2 for a hand-over)
    /// and hands back its directory (config, state, bpffs) for the next
    /// instance; returns stderr too.
    pub fn end_keep_dir(mut self, sig: libc::c_int) -> (TempDir, ExitStatus, String) {
        self.signal(sig);
        let st = self.reap(DAEMON_DEADLINE).unwrap_or_else(|| {
            panic!("pandad did not exit within {DAEMON_DEADLINE:?} of signal {sig}")
        });
        let err = self.stderr_text();
        (self.dir.take().expect("pandad's dir"), st, err)
    }

    /// Starts pandad again on the config a previous one left in `dir`.
    pub fn relaunch(ns: &Netns, dir: TempDir) -> Launch {
        let cfg = config_file(dir.path());
        Self::launch_args(ns, dir, &["--config", cfg.to_str().unwrap()])
    }

    /// pandad's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// What pandad wrote to stderr so far (everything once it exited).
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// Runs `panda --socket S ARGS` and returns its output.
    pub fn panda(&self, args: &[&str]) -> Output {
        run(Command::new(PANDA)
            .arg("--socket")
            .arg(&self.socket)
            .args(args))
    }

    /// `panda --socket S status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.panda(&["status", "--json"]);
        assert!(
            out.status.success(),
            "panda status --json failed ({}): {}\npandad stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.stderr_text()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "panda status --json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// One counter from `status`.
    pub fn counter(&self, name: &str) -> u64 {
        let s = self.status();
        s["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("status has no counter {name}: {s}"))
    }

    /// Sends a signal through the pidfd (never to a recycled pid).
    pub fn signal(&self, sig: libc::c_int) {
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // ESRCH: already exited; fine.
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ESRCH),
                "pidfd_send_signal: {e}"
            );
        }
    }

    /// Waits for exit (pidfd readable) up to `deadline`, then reaps.
    fn reap(&mut self, deadline: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.status {
            return Some(st);
        }
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let end = Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            if rc > 0 {
                break;
            }
            if rc == 0 {
                return None;
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return None;
            }
        }
        let st = self.child.as_mut().unwrap().wait().expect("wait pandad");
        // pandad is gone: its stderr reaches EOF promptly.
        let _ = self.stderr_done.recv_timeout(Duration::from_secs(5));
        self.status = Some(st);
        Some(st)
    }

    /// SIGTERM, wait for exit (deadline), return exit status and stderr.
    pub fn stop(self) -> (ExitStatus, String) {
        self.stop_with(libc::SIGTERM)
    }

    /// Like [`Pandad::stop`] with another signal (e.g. SIGINT).
    pub fn stop_with(mut self, sig: libc::c_int) -> (ExitStatus, String) {
        self.signal(sig);
        match self.reap(DAEMON_DEADLINE) {
            Some(st) => (st, self.stderr_text()),
            None => {
                self.signal(libc::SIGKILL);
                let st = self.reap(DAEMON_DEADLINE);
                panic!(
                    "pandad did not exit within {DAEMON_DEADLINE:?} of signal {sig} (killed: {st:?}); stderr:\n{}",
                    self.stderr_text()
                );
            }
        }
    }
}

impl Drop for Pandad {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.signal(libc::SIGTERM);
            if self.reap(DAEMON_DEADLINE).is_none() {
                self.signal(libc::SIGKILL);
                self.reap(DAEMON_DEADLINE);
            }
        }
        if thread::panicking() {
            eprintln!(
                "---- pandad stderr ({}) ----\n{}\n---- end of pandad stderr ----",
                self.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "still running".into()),
                self.stderr_text()
            );
        }
    }
}

/// Asserts an exit status is a plain non-zero exit (not a signal, not 0).
pub fn assert_failed_cleanly(status: &ExitStatus, stderr: &str, what: &str) {
    assert!(
        status.code().is_some_and(|c| c != 0),
        "{what}: expected a non-zero exit code, got {status} (signal {:?}); stderr:\n{stderr}",
        status.signal()
    );
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(
            !stderr.contains(bad),
            "{what}: stderr contains {bad:?}:\n{stderr}"
        );
    }
}

// ---------------------------------------------------------------------------
// Sockets (libc-level, for what std does not offer)
// ---------------------------------------------------------------------------

/// The errno of the last failed call.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Human name of an errno, for messages.
pub fn errname(e: i32) -> String {
    format!("{} ({e})", io::Error::from_raw_os_error(e))
}

pub fn sockaddr6(addr: Ipv6Addr, port: u16) -> libc::sockaddr_in6 {
    let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = addr.octets();
    sa
}

fn from_sockaddr6(sa: &libc::sockaddr_in6) -> SocketAddrV6 {
    SocketAddrV6::new(
        Ipv6Addr::from(sa.sin6_addr.s6_addr),
        u16::from_be(sa.sin6_port),
        sa.sin6_flowinfo,
        sa.sin6_scope_id,
    )
}

/// An AF_INET6 socket of `ty` (libc::SOCK_STREAM …) and `proto`.
pub fn socket6(ty: i32, proto: i32) -> OwnedFd {
    let fd = unsafe { libc::socket(libc::AF_INET6, ty | libc::SOCK_CLOEXEC, proto) };
    assert!(
        fd >= 0,
        "socket(AF_INET6, {ty}, {proto}): {}",
        errname(errno())
    );
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn tcp6() -> OwnedFd {
    socket6(libc::SOCK_STREAM, 0)
}

pub fn udp6() -> OwnedFd {
    socket6(libc::SOCK_DGRAM, 0)
}

/// setsockopt with an int value; panics on failure.
pub fn setsockopt_int(fd: &OwnedFd, level: i32, name: i32, value: i32) {
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}, {value}): {}",
        errname(errno())
    );
}

/// bind(2) to [addr]:port; Err(errno) on failure.
pub fn bind6(fd: &OwnedFd, addr: Ipv6Addr, port: u16) -> Result<(), i32> {
    let sa = sockaddr6(addr, port);
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

/// The address a socket is bound to.
pub fn local6(fd: &OwnedFd) -> SocketAddrV6 {
    let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            &mut sa as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockname: {}", errname(errno()));
    from_sockaddr6(&sa)
}

/// Opens a `ty` socket (SOCK_STREAM/SOCK_DGRAM, protocol 0), optionally sets
/// (level, option) to 1 first, and binds it to [addr]:0.
pub fn try_bind(ty: i32, opt: Option<(i32, i32)>, addr: Ipv6Addr) -> Result<OwnedFd, i32> {
    let fd = socket6(ty, 0);
    if let Some((level, name)) = opt {
        setsockopt_int(&fd, level, name, 1);
    }
    bind6(&fd, addr, 0).map(|_| fd)
}

/// Asserts a bind of `ty` to `addr` fails with EADDRNOTAVAIL.
pub fn assert_bind_refused(ty: i32, addr: Ipv6Addr, what: &str) {
    match try_bind(ty, None, addr) {
        Ok(fd) => panic!(
            "{what}: {} bind to {addr} succeeded (bound {}), expected EADDRNOTAVAIL",
            ty_name(ty),
            local6(&fd)
        ),
        Err(e) => assert_eq!(
            e,
            libc::EADDRNOTAVAIL,
            "{what}: {} bind to {addr} failed with {}, expected EADDRNOTAVAIL",
            ty_name(ty),
            errname(e)
        ),
    }
}

/// Asserts a bind of `ty` to `addr` succeeds.
pub fn assert_bind_ok(ty: i32, addr: Ipv6Addr, what: &str) -> OwnedFd {
    try_bind(ty, None, addr).unwrap_or_else(|e| {
        panic!(
            "{what}: {} bind to {addr} failed with {}",
            ty_name(ty),
            errname(e)
        )
    })
}

pub fn ty_name(ty: i32) -> &'static str {
    match ty {
        libc::SOCK_STREAM => "TCP",
        libc::SOCK_DGRAM => "UDP",
        libc::SOCK_RAW => "raw",
        _ => "?",
    }
}

/// sendmsg(2) of `payload` to `dst` with an IPV6_PKTINFO control message
/// choosing `src` as source (ifindex 0). Ok(bytes) or Err(errno).
pub fn sendmsg_pktinfo(
    fd: &OwnedFd,
    dst: SocketAddrV6,
    src: Ipv6Addr,
    payload: &[u8],
) -> Result<usize, i32> {
    let mut sa = sockaddr6(*dst.ip(), dst.port());
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // struct in6_pktinfo { struct in6_addr ipi6_addr; int ipi6_ifindex; }
    #[repr(C)]
    struct In6Pktinfo {
        addr: [u8; 16],
        ifindex: u32,
    }
    let space = unsafe { libc::CMSG_SPACE(mem::size_of::<In6Pktinfo>() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = &mut sa as *mut _ as *mut libc::c_void;
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
        (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<In6Pktinfo>() as u32) as _;
        let info = In6Pktinfo {
            addr: src.octets(),
            ifindex: 0,
        };
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut In6Pktinfo, info);
    }
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// Sets SO_RCVTIMEO.
pub fn set_recv_timeout(fd: &OwnedFd, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", errname(errno()));
}

/// recvfrom(2) with the socket's timeout: Some((bytes, from)) or None on
/// timeout.
pub fn recv_from6(fd: &OwnedFd, buf: &mut [u8]) -> Option<(usize, SocketAddrV6)> {
    loop {
        let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut sa as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n >= 0 {
            return Some((n as usize, from_sockaddr6(&sa)));
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return None,
            e => panic!("recvfrom: {}", errname(e)),
        }
    }
}

/// sendto(2); Ok(bytes) or Err(errno).
pub fn send_to6(fd: &OwnedFd, buf: &[u8], dst: SocketAddrV6) -> Result<usize, i32> {
    let sa = sockaddr6(*dst.ip(), dst.port());
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            0,
            &sa as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// v6 part of a std SocketAddr (tests use IPv6 only).
pub fn v6(sa: SocketAddr) -> SocketAddrV6 {
    match sa {
        SocketAddr::V6(a) => a,
        SocketAddr::V4(a) => panic!("expected an IPv6 socket address, got {a}"),
    }
}

/// Parses an address literal (tests' constants).
pub fn a6(s: &str) -> Ipv6Addr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad IPv6 literal {s}: {e}"))
}

// ---------------------------------------------------------------------------
// Raw rtnetlink: add/delete addresses from the calling thread's netns
// ---------------------------------------------------------------------------

const NLMSG_ERROR: u16 = 2;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;

/// A NETLINK_ROUTE socket in the netns of the thread that opened it.
/// Requests are synchronous: each waits for the kernel's ACK, so when a call
/// returns Ok the kernel has finished the change.
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> Rtnl {
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        assert!(fd >= 0, "netlink socket: {}", errname(errno()));
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "bind netlink: {}", errname(errno()));
        Rtnl { fd, seq: 1 }
    }

    fn addr_request(
        &mut self,
        ty: u16,
        flags: u16,
        ifindex: u32,
        addr: Ipv6Addr,
        plen: u8,
    ) -> Result<(), i32> {
        self.seq += 1;
        let seq = self.seq;
        let mut m: Vec<u8> = Vec::with_capacity(128);
        // nlmsghdr (length patched below)
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        // ifaddrmsg
        m.push(libc::AF_INET6 as u8);
        m.push(plen);
        m.push(IFA_F_NODAD as u8);
        m.push(0); // RT_SCOPE_UNIVERSE
        m.extend_from_slice(&ifindex.to_ne_bytes());
        // attributes (each 4-byte aligned by construction)
        for attr in [IFA_LOCAL, IFA_ADDRESS] {
            m.extend_from_slice(&(4u16 + 16).to_ne_bytes());
            m.extend_from_slice(&attr.to_ne_bytes());
            m.extend_from_slice(&addr.octets());
        }
        m.extend_from_slice(&(4u16 + 4).to_ne_bytes());
        m.extend_from_slice(&IFA_FLAGS.to_ne_bytes());
        m.extend_from_slice(&IFA_F_NODAD.to_ne_bytes());
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                m.as_ptr() as *const libc::c_void,
                m.len(),
                0,
            )
        };
        assert_eq!(n, m.len() as isize, "netlink send: {}", errname(errno()));
        let mut buf = vec![0u8; 8192];
        loop {
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                panic!("netlink recv: {}", errname(e));
            }
            let n = n as usize;
            let mut off = 0;
            while off + 16 <= n {
                let mlen = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
                let mty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
                if mlen < 16 {
                    break;
                }
                if mty == NLMSG_ERROR && mseq == seq {
                    let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                    return if err == 0 { Ok(()) } else { Err(-err) };
                }
                off += (mlen + 3) & !3;
            }
        }
    }

    /// RTM_NEWADDR addr/plen on ifindex, nodad; returns when the kernel acked.
    pub fn add_addr(&mut self, ifindex: u32, addr: Ipv6Addr, plen: u8) -> Result<(), i32> {
        self.addr_request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, ifindex, addr, plen)
    }

    /// RTM_DELADDR addr/plen from ifindex; returns when the kernel acked.
    pub fn del_addr(&mut self, ifindex: u32, addr: Ipv6Addr, plen: u8) -> Result<(), i32> {
        self.addr_request(RTM_DELADDR, 0, ifindex, addr, plen)
    }
}

/// if_nametoindex in the calling thread's netns.
pub fn ifindex(name: &str) -> u32 {
    let c = CString::new(name).unwrap();
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i != 0, "if_nametoindex({name}): {}", errname(errno()));
    i
}

// ---------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------

/// A random address inside fd00:1009:bacc::/48 (host part never all-zero
/// and never the anchor ::1).
pub fn random_prefix_addr(rng: &mut impl rand::Rng) -> Ipv6Addr {
    loop {
        let mut o = a6("fd00:1009:bacc::").octets();
        rng.fill(&mut o[6..]);
        let a = Ipv6Addr::from(o);
        let host = u128::from(a) & ((1u128 << 80) - 1);
        if host > 1 {
            return a;
        }
    }
}

/// Checks `cond` every millisecond until it holds or `deadline` passes
/// (for kernel state that has no event a test can wait on); returns
/// whether it held.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    retry_until(deadline, || {
        if cond() {
            Some(())
        } else {
            thread::sleep(Duration::from_millis(1));
            None
        }
    })
    .is_some()
}

// ---------------------------------------------------------------------------
// pandad's BPF links, as the kernel sees them
// ---------------------------------------------------------------------------

/// One link of a pandad instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceLink {
    /// The program's name (`bind6`, `sendmsg6`, `socket_bind`).
    pub prog: String,
    pub link_id: u32,
    pub prog_id: u32,
}

/// Every link in the kernel whose program uses the counters map pinned in
/// `pin_dir`: the instance's links, whichever pandad loaded the program,
/// attached or not. Sorted by program name.
pub fn instance_links(pin_dir: &Path) -> Vec<InstanceLink> {
    let counters = aya::maps::MapInfo::from_pin(pin_dir.join("COUNTERS"))
        .unwrap_or_else(|e| panic!("no counters map pinned in {}: {e}", pin_dir.display()))
        .id();
    let progs: std::collections::HashMap<u32, aya::programs::ProgramInfo> =
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| (p.id(), p))
            .collect();
    let mut out: Vec<InstanceLink> = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter_map(|l| {
            let p = progs.get(&l.program_id())?;
            let maps = p.map_ids().ok()??;
            maps.contains(&counters).then(|| InstanceLink {
                prog: p.name_as_str().unwrap_or("").to_owned(),
                link_id: l.id(),
                prog_id: l.program_id(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.prog.cmp(&b.prog));
    out
}

/// `bpftool link detach` for the link pinned at `path` (BPF_LINK_DETACH):
/// the link object stays, but its program no longer runs.
pub fn detach_pinned_link(path: &Path) {
    panda::pins::Link::open_pinned(path)
        .expect("open pin")
        .unwrap_or_else(|| panic!("nothing pinned at {}", path.display()))
        .detach()
        .expect("BPF_LINK_DETACH");
}

/// Retries `f` (which itself blocks with a timeout) until it returns Some or
/// the deadline passes.
pub fn retry_until<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
    }
}

// ---------------------------------------------------------------------------
// Processes in a cgroup (leases judge the binding task's cgroup)
// ---------------------------------------------------------------------------

/// A process forked by [`binds_in_cgroup`], holding its listening sockets
/// until dropped (then it exits and is reaped).
pub struct CgroupProc {
    pid: libc::pid_t,
    release: Option<OwnedFd>,
}

impl CgroupProc {
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }
}

impl Drop for CgroupProc {
    fn drop(&mut self) {
        drop(self.release.take());
        unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
    }
}

/// Forks a process that joins `cgroup` (writes 0 to its cgroup.procs), then
/// TCP-binds each of `binds` and listens on what it bound, in the calling
/// thread's network namespace (call it inside [`Netns::in_netns`]). Returns
/// the errno of each bind (0: bound) and the process, which keeps the
/// sockets until it is dropped. Between fork and exit the child makes only
/// async-signal-safe calls, as a fork from a multi-threaded test must.
pub fn binds_in_cgroup(cgroup: &Path, binds: &[(Ipv6Addr, u16)]) -> (Vec<i32>, CgroupProc) {
    let procs = CString::new(
        cgroup
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let addrs: Vec<libc::sockaddr_in6> = binds.iter().map(|(a, p)| sockaddr6(*a, *p)).collect();
    let mut results = [0i32; 2];
    let mut hold = [0i32; 2];
    assert_eq!(
        unsafe { libc::pipe2(results.as_mut_ptr(), libc::O_CLOEXEC) },
        0
    );
    assert_eq!(
        unsafe { libc::pipe2(hold.as_mut_ptr(), libc::O_CLOEXEC) },
        0
    );
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", errname(errno()));
    if pid == 0 {
        unsafe {
            // Keep only stdio, the result pipe (as fd 3) and the hold pipe
            // (fd 4): a child of a concurrent test holding another pipe's
            // write end would keep that test's reader waiting.
            let r = libc::fcntl(results[1], libc::F_DUPFD, 100);
            let h = libc::fcntl(hold[0], libc::F_DUPFD, 100);
            libc::dup2(r, 3);
            libc::dup2(h, 4);
            libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32);
            let results = [-1, 3];
            let hold = [4, -1];
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            let moved = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            for sa in &addrs {
                let mut e: i32 = -1; // not moved: no bind was tried
                if moved {
                    let s = libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0);
                    let rc = libc::bind(
                        s,
                        (sa as *const libc::sockaddr_in6).cast(),
                        mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    );
                    e = if rc == 0 {
                        libc::listen(s, 16);
                        0
                    } else {
                        *libc::__errno_location()
                    };
                }
                libc::write(results[1], (&e as *const i32).cast(), 4);
            }
            libc::close(results[1]);
            let mut b = 0u8;
            libc::read(hold[0], (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    unsafe {
        libc::close(results[1]);
        libc::close(hold[0]);
    }
    let proc = CgroupProc {
        pid,
        release: Some(unsafe { OwnedFd::from_raw_fd(hold[1]) }),
    };
    let mut f = unsafe { File::from_raw_fd(results[0]) };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).expect("read bind results");
    let errs: Vec<i32> = buf
        .chunks_exact(4)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        errs.len(),
        binds.len(),
        "the child reported {} of {} binds",
        errs.len(),
        binds.len()
    );
    assert!(
        errs.iter().all(|e| *e != -1),
        "could not move a process into {}",
        cgroup.display()
    );
    (errs, proc)
}
