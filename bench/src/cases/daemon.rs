//! Case 5, the daemon itself: start-to-ready, peak memory, CPU while idle,
//! teardown time.
//!
//! Each repeat starts a pandad in a fresh namespace (spawn to READY=1) and,
//! in alternating order, `pandad --version` in the same namespace (spawn to
//! exit): the cost of starting the process at all, the baseline. The pandads
//! then stay up *together* for one idle window, each one's CPU time counted
//! from /proc (utime+stime, and the threads' schedstat for finer
//! resolution); peak RSS is VmHWM. Then the repair latency after each kind
//! of tampering ([`super::repair`]).

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::{progress, Ctx};
use crate::{interrupt, netns::Netns, pandad::Pandad, plan::interleave, procfs, results::Daemon};

pub fn run(ctx: &Ctx) -> Result<Daemon> {
    let mut start_ready_s = Vec::new();
    let mut exec_baseline_s = Vec::new();
    let mut running: Vec<(Netns, Pandad)> = Vec::new();
    for r in 0..ctx.plan.repeats {
        interrupt::check()?;
        let ns = Netns::new("daemon")?;
        let mut pandad = None;
        for exec_first in interleave(&[true, false], r) {
            if exec_first {
                exec_baseline_s.push(exec_version(ctx, &ns)?);
            } else {
                let p = Pandad::start(&ctx.pandad, &ns, "guard")?;
                start_ready_s.push(p.ready_after.as_secs_f64());
                pandad = Some(p);
            }
        }
        running.push((ns, pandad.expect("started above")));
    }

    progress(format!(
        "daemon: {} pandads idle for {:?}",
        running.len(),
        ctx.plan.idle
    ));
    let before: Vec<procfs::CpuTime> = running
        .iter()
        .map(|(_, p)| procfs::cpu_time(p.pid()))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    while t0.elapsed() < ctx.plan.idle {
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(100).min(ctx.plan.idle));
    }
    let window = t0.elapsed().as_secs_f64();
    let tick_ms = 1000.0 / procfs::ticks_per_second() as f64;
    let mut idle_cpu_ms = Vec::new();
    let mut idle_sched_ms = Vec::new();
    let mut vm_hwm_kb = Vec::new();
    for ((_, p), b) in running.iter().zip(&before) {
        let a = procfs::cpu_time(p.pid())?;
        idle_cpu_ms.push((a.ticks - b.ticks) as f64 * tick_ms);
        idle_sched_ms.push((a.sched_ns - b.sched_ns) as f64 / 1e6);
        vm_hwm_kb.push(procfs::status_kb(p.pid(), "VmHWM")? as f64);
    }
    let mut stop_s = Vec::new();
    for (ns, p) in running {
        stop_s.push(p.stop()?.as_secs_f64());
        drop(ns);
    }
    Ok(Daemon {
        start_ready_s,
        exec_baseline_s,
        vm_hwm_kb,
        idle_window_s: window,
        idle_cpu_ms,
        idle_sched_ms,
        stop_s,
        repair: super::repair::run(ctx)?,
    })
}

/// Spawn to exit of `nsenter --net=NS pandad --version`, seconds.
fn exec_version(ctx: &Ctx, ns: &Netns) -> Result<f64> {
    let t0 = Instant::now();
    let st = ns
        .cmd(&ctx.pandad)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()?;
    let secs = t0.elapsed().as_secs_f64();
    if !st.success() {
        bail!("pandad --version failed ({st})");
    }
    Ok(secs)
}
