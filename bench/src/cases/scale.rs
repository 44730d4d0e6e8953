//! Case 2, scale: N listeners on one port at N distinct addresses.
//!
//! N = 1k, 10k, 100k listeners are opened one after another on the same
//! port, spread over worker processes of at most 15,000 each (started in
//! turn, so the count of listeners already in the namespace grows to N).
//! The figure is the per-bind cost (socket + bind + listen, the worker's
//! thread CPU time), mean over all N and over the last 1,000, as a ratio to
//! the cost at the smallest N in the same repeat: does a bind get slower as
//! the port fills up? Three variants say whether any growth is panda's or
//! the kernel's: prefix addresses with pandad (guard) running; the same
//! with no program (route + ip_nonlocal_bind=1, no pandad running); IPv4
//! 127/8 with no program. A fill counts only if no other pandad's program
//! was in effect while it ran (see [`machine::with_only_programs`]).

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::{progress, Ctx, KernelOnlySubnet};
use crate::{
    interrupt, machine,
    netns::Netns,
    pandad::Pandad,
    plan::interleave,
    results::{Scale, ScalePoint, ScaleVariant},
    stats::Summary,
    worker::{Family, PER_PROCESS},
};

const PORT: u16 = 7000;
const SUBNET: u16 = 2;
/// Small N are filled several times per repeat (and the median taken), so
/// that each repeat's figure rests on at least this many binds.
const MIN_BINDS: u32 = 5_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Guard,
    NoProgram,
}

/// key, label.
const VARIANTS: [(&str, &str); 3] = [
    ("guard", "IPv6 prefix addresses, panda guard"),
    ("none", "IPv6 prefix addresses, no program"),
    ("v4", "IPv4 127/8, no program"),
];

pub fn run(ctx: &Ctx) -> Result<Scale> {
    // One namespace: the variants differ only in whether pandad runs.
    let ns = Netns::new("scale")?;
    let sizes = &ctx.plan.sizes;
    // [variant][size] → Fill per repeat.
    let mut fills: Vec<Vec<Vec<Fill>>> = (0..VARIANTS.len())
        .map(|_| (0..sizes.len()).map(|_| Vec::new()).collect())
        .collect();
    let order: Vec<(usize, u32)> = sizes.iter().copied().enumerate().collect();
    let mut retaken = 0;
    // Repeat 0 is a warm-up at the smallest N: not recorded.
    for r in 0..=ctx.plan.repeats {
        let record = r > 0;
        let sizes_now = if record {
            order.clone()
        } else {
            vec![order[0]]
        };
        for phase in interleave(&[Phase::Guard, Phase::NoProgram], r) {
            interrupt::check()?;
            match phase {
                Phase::Guard => {
                    let pandad = Pandad::start(&ctx.pandad, &ns, "guard")?;
                    for (i, n) in interleave(&sizes_now, r) {
                        let f = fill_median(ctx, &ns, Family::Prefix, n, 1, &mut retaken)?;
                        if record {
                            fills[0][i].push(f);
                        }
                    }
                    pandad.stop()?;
                }
                Phase::NoProgram => {
                    let _subnet = KernelOnlySubnet::apply(&ns)?;
                    for (i, n) in interleave(&sizes_now, r) {
                        for (v, family) in [(1, Family::Prefix), (2, Family::V4)] {
                            let f = fill_median(ctx, &ns, family, n, 0, &mut retaken)?;
                            if record {
                                fills[v][i].push(f);
                            }
                        }
                    }
                }
            }
        }
        if record {
            progress(format!("scale: repeat {r}/{} done", ctx.plan.repeats));
        }
    }
    let variants = VARIANTS
        .iter()
        .zip(fills)
        .map(|(&(key, label), per_size)| ScaleVariant {
            key: key.into(),
            label: label.into(),
            points: sizes
                .iter()
                .zip(per_size)
                .map(|(&n, f)| ScalePoint {
                    n,
                    processes: n.div_ceil(PER_PROCESS),
                    mean_us: f.iter().map(|x| x.mean_us).collect(),
                    marginal_us: f.iter().map(|x| x.marginal_us).collect(),
                    wall_mean_us: f.iter().map(|x| x.wall_mean_us).collect(),
                })
                .collect(),
        })
        .collect();
    Ok(Scale {
        port: PORT,
        per_process: PER_PROCESS,
        variants,
        fills_retaken: retaken,
    })
}

/// A worker process; on the error path (drop before it was waited for) it
/// is killed and reaped, so no listener outlives a failed sample.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What one fill measured, per bind: CPU µs over all N and over the last
/// 1,000, wall µs over all N.
struct Fill {
    mean_us: f64,
    marginal_us: f64,
    wall_mean_us: f64,
}

/// [`fill`] repeated until at least [`MIN_BINDS`] binds were timed (at
/// most 5 times); the median of each figure. Each fill runs with only the
/// phase's own `programs` in effect ([`machine::with_only_programs`]; its
/// retakes are added to `retaken`).
fn fill_median(
    ctx: &Ctx,
    ns: &Netns,
    family: Family,
    n: u32,
    programs: u32,
    retaken: &mut u32,
) -> Result<Fill> {
    let times = MIN_BINDS.div_ceil(n).clamp(1, 5);
    let mut fills = Vec::new();
    for _ in 0..times {
        let (f, again) = machine::with_only_programs(programs, || fill(ctx, ns, family, n))?;
        *retaken += again;
        fills.push(f);
    }
    let median = |f: fn(&Fill) -> f64| Summary::of(&fills.iter().map(f).collect::<Vec<_>>()).median;
    Ok(Fill {
        mean_us: median(|f| f.mean_us),
        marginal_us: median(|f| f.marginal_us),
        wall_mean_us: median(|f| f.wall_mean_us),
    })
}

/// Opens `n` listeners over as many workers as needed, one worker after
/// the other. The workers exit (closing everything) before it returns.
fn fill(ctx: &Ctx, ns: &Netns, family: Family, n: u32) -> Result<Fill> {
    let mut workers = Vec::new();
    let mut cpu_ns = 0u128;
    let mut wall_ns = 0u128;
    let mut last = (0u128, 0u32);
    let mut first = 1u64;
    let mut left = n;
    while left > 0 {
        let count = left.min(PER_PROCESS);
        let mut cmd = Command::new(&ctx.self_exe);
        cmd.arg("worker")
            .arg("--netns")
            .arg(ns.path())
            .arg("--family")
            .arg(match family {
                Family::Prefix => "prefix",
                Family::V4 => "v4",
            })
            .args(["--subnet", &SUBNET.to_string()])
            .args(["--first", &first.to_string()])
            .args(["--count", &count.to_string()])
            .args(["--port", &PORT.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe. Spawned from the main thread,
        // so the death signal fires only if panda-bench itself dies.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut w = Worker(cmd.spawn().context("spawning a scale worker")?);
        let mut line = String::new();
        BufReader::new(w.0.stdout.as_mut().unwrap()).read_line(&mut line)?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let [ok, cpu, last_cpu, last_n, wall] = f[..] else {
            bail!("scale worker for {count} listeners failed (said {line:?})");
        };
        if ok != "ok" {
            bail!("scale worker for {count} listeners failed (said {line:?})");
        }
        cpu_ns += cpu.parse::<u128>()?;
        wall_ns += wall.parse::<u128>()?;
        last = (last_cpu.parse()?, last_n.parse()?);
        workers.push(w);
        first += count as u64;
        left -= count;
    }
    for mut w in workers {
        // EOF on its stdin: the worker closes its listeners and exits.
        drop(w.0.stdin.take());
        let st = w.0.wait()?;
        if !st.success() {
            bail!("scale worker exited with {st}");
        }
    }
    Ok(Fill {
        mean_us: cpu_ns as f64 / 1e3 / n as f64,
        marginal_us: last.0 as f64 / 1e3 / last.1 as f64,
        wall_mean_us: wall_ns as f64 / 1e3 / n as f64,
    })
}
