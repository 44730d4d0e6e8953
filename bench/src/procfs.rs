//! What the cases read from /proc: kernel memory (host-wide, hence noisy:
//! the cases repeat and take medians) and a process's memory and CPU time.

use std::{collections::HashMap, path::Path};

use anyhow::{anyhow, Context, Result};

/// /proc/meminfo fields in kB.
pub fn meminfo() -> Result<HashMap<String, u64>> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kb = v.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), kb))
        })
        .collect())
}

/// The id of the BPF program behind descriptor `fd` of process `pid` (the
/// `prog_id:` line of its fdinfo), if it is one.
pub fn bpf_prog_id(pid: u32, fd: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Kernel slab memory, total and unreclaimable, in kB.
#[derive(Clone, Copy, Debug)]
pub struct Slab {
    pub slab_kb: u64,
    pub sunreclaim_kb: u64,
}

pub fn slab() -> Result<Slab> {
    let m = meminfo()?;
    let get = |k: &str| {
        m.get(k)
            .copied()
            .ok_or_else(|| anyhow!("no {k} in /proc/meminfo"))
    };
    Ok(Slab {
        slab_kb: get("Slab")?,
        sunreclaim_kb: get("SUnreclaim")?,
    })
}

/// One `Key:   value kB` line of /proc/PID/status, in kB.
pub fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))
}

/// CPU time of a process (all threads): utime + stime from /proc/PID/stat,
/// in clock ticks, and the sum of its threads' on-CPU time from
/// /proc/PID/task/*/schedstat, in ns (finer than ticks).
#[derive(Clone, Copy, Debug)]
pub struct CpuTime {
    pub ticks: u64,
    pub sched_ns: u64,
}

pub fn cpu_time(pid: u32) -> Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) in parens.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).context("utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).context("stime")?;
    let mut sched_ns = 0;
    let tasks = format!("/proc/{pid}/task");
    for t in std::fs::read_dir(&tasks).with_context(|| format!("reading {tasks}"))? {
        let p = t?.path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(Path::new(&p)) {
            sched_ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(CpuTime {
        ticks: utime + stime,
        sched_ns,
    })
}

/// Clock ticks per second (for utime/stime).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// TIME-WAIT sockets in the calling *thread's* network namespace
/// (/proc/thread-self/net: /proc/net would show the main thread's).
pub fn time_wait_count() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/sockstat")?;
    let tcp = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .ok_or_else(|| anyhow!("no TCP line in sockstat"))?;
    let f: Vec<&str> = tcp.split_whitespace().collect();
    f.iter()
        .position(|w| *w == "tw")
        .and_then(|i| f.get(i + 1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no tw in sockstat: {tcp}"))
}
