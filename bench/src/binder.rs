//! The leases case's binding process: it sits in a cgroup of its own and
//! binds on request.
//!
//! bind6 judges a lease by the cgroup of the *task* calling bind(), so the
//! binds cannot come from panda-bench's threads (they share its cgroup).
//! A binder (`panda-bench binder`, a subprocess) joins the namespace, moves
//! itself into its cgroup, says `ready`, and then answers one command per
//! line on stdin, for as long as the case runs (one process for every
//! phase, so a phase change changes nothing in it but pandad's maps):
//!
//! * `time OPS`: [`WARMUP`] untimed socket+bind+listen+close, then OPS
//!   timed ones, on its addresses in turn; answers `ok CPU_NS WALL_NS`
//!   (its thread CPU time and wall time for the OPS), or `err MESSAGE`;
//! * `try ADDR`: one socket+bind of [ADDR]:port; answers `errno N` (0: it
//!   bound).
//!
//! It exits when its stdin closes.

use std::{
    io::{BufRead, BufReader, BufWriter, Write},
    net::Ipv6Addr,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{batch, netns, sock};

/// Untimed operations before each timed batch (as case 1's).
const WARMUP: u32 = 500;

/// Where a binder binds: `count` addresses from
/// [`sock::prefix_addr`]`(subnet, first)` on, in turn, all on `port`.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub subnet: u16,
    pub first: u64,
    pub count: u32,
    pub port: u16,
}

impl Addrs {
    pub fn nth(&self, i: u32) -> Ipv6Addr {
        sock::prefix_addr(self.subnet, self.first + u64::from(i % self.count))
    }

    /// Every address, in order.
    pub fn all(&self) -> Vec<Ipv6Addr> {
        (0..self.count).map(|i| self.nth(i)).collect()
    }
}

/// The parent's end of a running binder; closing its stdin (on drop) ends
/// it, and drop waits for it, so that its cgroup can be removed next.
pub struct Binder {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
}

impl Binder {
    /// Starts `self_exe binder` in `netns` and `cgroup`; returns once it is
    /// in both.
    pub fn spawn(self_exe: &Path, netns: &Path, cgroup: &Path, addrs: Addrs) -> Result<Binder> {
        let mut child = Command::new(self_exe)
            .arg("binder")
            .arg("--netns")
            .arg(netns)
            .arg("--cgroup")
            .arg(cgroup)
            .args(["--subnet", &addrs.subnet.to_string()])
            .args(["--first", &addrs.first.to_string()])
            .args(["--count", &addrs.count.to_string()])
            .args(["--port", &addrs.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning a binder")?;
        let stdin = child.stdin.take().map(BufWriter::new);
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut b = Binder {
            child,
            stdin,
            stdout,
        };
        let hello = b.line()?;
        if hello != "ready" {
            bail!("binder in {}: {hello}", cgroup.display());
        }
        Ok(b)
    }

    /// Times `ops` operations: (CPU µs, wall µs) per operation.
    pub fn time(&mut self, ops: u32) -> Result<(f64, f64)> {
        let reply = self.ask(&format!("time {ops}"))?;
        let f: Vec<&str> = reply.split_whitespace().collect();
        let (cpu, wall) = match f.as_slice() {
            ["ok", cpu, wall] => (cpu.parse::<f64>()?, wall.parse::<f64>()?),
            _ => bail!("binder: {reply}"),
        };
        let per = |ns: f64| ns / 1e3 / f64::from(ops);
        Ok((per(cpu), per(wall)))
    }

    /// One bind of [addr]:port from the binder's cgroup: Err(errno) if refused.
    pub fn try_bind(&mut self, addr: Ipv6Addr) -> Result<Result<(), i32>> {
        let reply = self.ask(&format!("try {addr}"))?;
        match reply.strip_prefix("errno ").map(str::parse::<i32>) {
            Some(Ok(0)) => Ok(Ok(())),
            Some(Ok(e)) => Ok(Err(e)),
            _ => bail!("binder: {reply}"),
        }
    }

    fn ask(&mut self, command: &str) -> Result<String> {
        let w = self.stdin.as_mut().expect("open until drop");
        writeln!(w, "{command}")?;
        w.flush().context("writing to the binder")?;
        self.line()
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            let status = self.child.wait()?;
            return Err(anyhow!("the binder exited ({status})"));
        }
        Ok(l.trim().to_string())
    }
}

impl Drop for Binder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// The binder process itself (`panda-bench binder`).
pub fn serve(netns_path: &Path, cgroup: &Path, addrs: Addrs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    // Single-threaded here: setns and the cgroup move take the whole process.
    let entered = netns::enter(netns_path).and_then(|()| {
        std::fs::write(cgroup.join("cgroup.procs"), "0")
            .with_context(|| format!("moving into {}", cgroup.display()))
    });
    if let Err(e) = entered {
        writeln!(out, "err {e:#}")?;
        return Ok(());
    }
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let reply = match line.split_once(' ') {
            Some(("time", ops)) => match ops.parse() {
                Ok(ops) => time(addrs, ops)
                    .map(|(cpu, wall)| format!("ok {cpu} {wall}"))
                    .unwrap_or_else(|e| format!("err {e:#}")),
                Err(e) => format!("err {ops:?}: {e}"),
            },
            Some(("try", a)) => match a.parse::<Ipv6Addr>() {
                Ok(a) => match sock::try_bind6(a, addrs.port) {
                    Ok(Ok(())) => "errno 0".into(),
                    Ok(Err(e)) => format!("errno {e}"),
                    Err(e) => format!("err {e:#}"),
                },
                Err(e) => format!("err {a:?}: {e}"),
            },
            _ => format!("err unknown command {line:?}"),
        };
        writeln!(out, "{reply}")?;
        out.flush()?;
    }
    Ok(())
}

/// The timed loop: (CPU ns, wall ns) for `ops` operations after the warm-up.
fn time(addrs: Addrs, ops: u32) -> Result<(u128, u128)> {
    let one = |i: u32| sock::bind_listen_close6(addrs.nth(i), addrs.port);
    let (cpu, wall) = batch::time_loop(WARMUP, ops, one)?;
    Ok((cpu.as_nanos(), wall.as_nanos()))
}
