//! Case 1, hook overhead: what panda's bind6 program adds to a bind.
//!
//! The operation is socket + bind + listen + close on a distinct address,
//! same port. Variants:
//!
//! * no program: the same `local` route and anchor as pandad's and
//!   `ip_nonlocal_bind=1`, set by hand, but no pandad: the kernel's own cost;
//! * an empty bind6 program (`return 1`) at the cgroup2 root, no pandad:
//!   what the kernel's hook machinery costs by itself, whatever the program;
//! * panda guard (pandad running): the same binds through bind6's
//!   in-prefix path;
//! * addresses outside the prefix that are configured (64 /128s on `lo`),
//!   with and without pandad: the guard's address-table walk;
//! * IPv4 127/8 with no program (what panda is the IPv6 twin of);
//! * panda freebind, when the kernel lets bind6 set IPV6_FREEBIND.
//!
//! pandad's programs are attached at the cgroup2 root, so they run on
//! *every* bind on the host, in every namespace: the no-program batches are
//! therefore timed while no pandad of ours runs, and pandad is started for
//! each guard phase and stopped after it, in the same namespace (the
//! hand-made route is removed first). The phases alternate several
//! times per repeat (their order rotating), each variant timing one batch
//! per phase; a repeat's figure is the median of its batches, in thread CPU
//! time (see [`crate::clock`]); a batch counts only if no other pandad's
//! program was in effect while it ran. The programs' own run time comes
//! from a separate pass with BPF statistics on, with the empty program
//! attached alongside to show what the statistics themselves add per run.

use std::{net::Ipv6Addr, time::Duration};

use anyhow::{bail, Result};

use super::{add_addrs, progress, Ctx, KernelOnlySubnet};
use crate::{
    batch::{time_loop, BpfSamples, Variants},
    bpfstats,
    emptyprog::EmptyBind6,
    interrupt, machine,
    netns::Netns,
    pandad::{Launch, Pandad},
    plan::interleave,
    results::{Hook, HookVariant},
    sock::{self, outside_addr, prefix_addr, v4_loopback},
};

const PORT: u16 = 8080;
/// Configured addresses outside the prefix.
const OUTSIDE: u32 = 64;
/// Untimed operations before each batch (caches, after a pandad start).
const WARMUP: u32 = 500;
/// Pause after each phase change (pandad started or stopped, program
/// attached): the kernel frees what the previous phase left (programs,
/// maps, an nftables table) in deferred work that would otherwise run
/// during, and be charged to, the first batch.
const SETTLE: Duration = Duration::from_millis(100);

/// Which addresses a batch binds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// fd00:1009:bacc:1::N, a distinct one per operation.
    Prefix,
    /// The 64 configured fd00:1009:beef::N, in turn.
    Outside,
    /// 127.0.0.N.., a distinct one per operation.
    V4,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    NoProgram,
    EmptyProgram,
    Guard,
    Freebind,
}

/// The variants, in table order: key, label, baseline key.
const VARIANTS: &[(&str, &str, Option<&str>)] = &[
    (
        "v6-prefix-none",
        "IPv6 prefix address, no program (route + ip_nonlocal_bind=1)",
        None,
    ),
    (
        "v6-prefix-empty",
        "IPv6 prefix address, empty bind6 program (the hook's own cost)",
        Some("v6-prefix-none"),
    ),
    (
        "v6-prefix-guard",
        "IPv6 prefix address, panda guard",
        Some("v6-prefix-none"),
    ),
    (
        "v6-prefix-freebind",
        "IPv6 prefix address, panda freebind",
        Some("v6-prefix-none"),
    ),
    (
        "v6-outside-none",
        "IPv6 configured /128 outside the prefix, no program",
        None,
    ),
    (
        "v6-outside-guard",
        "IPv6 configured /128 outside the prefix, panda guard (address-table walk)",
        Some("v6-outside-none"),
    ),
    ("v4-none", "IPv4 127/8, no program", Some("v6-prefix-none")),
];

/// Everything the repeats collect.
struct Collected {
    samples: Variants,
    /// bind6's run time per repeat: prefix path, outside path.
    bpf_prefix: BpfSamples,
    bpf_outside: BpfSamples,
    progs_without: Vec<u32>,
    progs_with: Vec<u32>,
    /// Batches timed again because another bind6 program (another pandad on
    /// the host, e.g. a test) came or went while they ran.
    retaken: u32,
}

impl Collected {
    fn new() -> Collected {
        Collected {
            samples: Variants::new(VARIANTS.iter().map(|v| v.0)),
            bpf_prefix: BpfSamples::default(),
            bpf_outside: BpfSamples::default(),
            progs_without: Vec::new(),
            progs_with: Vec::new(),
            retaken: 0,
        }
    }
}

/// One phase of one round: where, how many operations per batch, the
/// round (for the order of the targets), and whether this is the first
/// recorded round of a repeat (program counts and BPF statistics then).
struct Round<'a> {
    ctx: &'a Ctx,
    ns: &'a Netns,
    ops: u32,
    round: usize,
    first: bool,
}

pub fn run(ctx: &Ctx) -> Result<Hook> {
    let batch = ctx.plan.hook_batch;
    let outside: Vec<Ipv6Addr> = (1..=OUTSIDE as u64).map(outside_addr).collect();

    // One namespace for every variant: they differ in nothing but whether
    // (and how) pandad runs.
    let ns = Netns::new("hook")?;
    add_addrs(&ns, outside.iter().copied())?;

    // Freebind needs a kernel whose bpf_setsockopt accepts IPV6_FREEBIND;
    // pandad probes that itself and refuses to start otherwise.
    let freebind_skipped = match Pandad::launch(&ctx.pandad, &ns, "freebind")? {
        Launch::Ready(p) => {
            p.stop()?;
            None
        }
        Launch::Refused { stderr, .. } => Some(refusal_reason(&stderr)),
    };
    let mut phases = vec![Phase::NoProgram, Phase::EmptyProgram, Phase::Guard];
    if freebind_skipped.is_none() {
        phases.push(Phase::Freebind);
    }

    let mut c = Collected::new();
    // Repeat 0 is a warm-up (one round, smaller batches): not recorded.
    for r in 0..=ctx.plan.repeats {
        let record = r > 0;
        let (rounds, ops) = if record {
            (ctx.plan.hook_rounds, batch)
        } else {
            (1, batch / 4)
        };
        for round in 0..rounds {
            let at = Round {
                ctx,
                ns: &ns,
                ops,
                round,
                first: record && round == 0,
            };
            for phase in interleave(&phases, r + round) {
                interrupt::check()?;
                match phase {
                    Phase::NoProgram => no_program(&at, &mut c)?,
                    Phase::EmptyProgram => empty_program(&at, &mut c)?,
                    Phase::Guard => guard(&at, &mut c)?,
                    Phase::Freebind => freebind(&at, &mut c)?,
                }
            }
        }
        c.samples.end_repeat(record);
        if record {
            progress(format!(
                "hook overhead: repeat {r}/{} done",
                ctx.plan.repeats
            ));
        }
    }

    let variants = VARIANTS
        .iter()
        .zip(c.samples.0)
        .filter(|(_, s)| !s.cpu.is_empty())
        .map(|((key, label, baseline), s)| HookVariant {
            key: key.to_string(),
            label: label.to_string(),
            baseline: baseline.map(str::to_string),
            us_per_op: s.cpu,
            wall_us_per_op: s.wall,
        })
        .collect();
    Ok(Hook {
        ops_per_batch: batch,
        batches_per_repeat: ctx.plan.hook_rounds,
        outside_addresses: OUTSIDE,
        variants,
        freebind_skipped,
        bpf: vec![
            c.bpf_prefix
                .into_result("bind6, address in the prefix", "v6-prefix-guard"),
            c.bpf_outside.into_result(
                "bind6, configured address outside (table walk)",
                "v6-outside-guard",
            ),
        ],
        batches_retaken: c.retaken,
        bind6_programs_without_pandad: c.progs_without,
        bind6_programs_with_pandad: c.progs_with,
    })
}

/// The kernel alone: route and sysctl by hand, no program of ours.
fn no_program(at: &Round, c: &mut Collected) -> Result<()> {
    let _subnet = KernelOnlySubnet::apply(at.ns)?;
    if at.first {
        c.progs_without.push(machine::effective_bind6_programs()?);
    }
    std::thread::sleep(SETTLE);
    for t in interleave(&[Target::Prefix, Target::Outside, Target::V4], at.round) {
        let key = match t {
            Target::Prefix => "v6-prefix-none",
            Target::Outside => "v6-outside-none",
            Target::V4 => "v4-none",
        };
        let time = clean_batch(at, c, t, 0)?;
        c.samples.put(key, time);
    }
    Ok(())
}

/// The kernel plus an empty bind6 program at the cgroup2 root.
fn empty_program(at: &Round, c: &mut Collected) -> Result<()> {
    let _subnet = KernelOnlySubnet::apply(at.ns)?;
    let before = machine::effective_bind6_programs()?;
    let _prog = EmptyBind6::attach()?;
    if machine::effective_bind6_programs()? != before + 1 {
        bail!("the empty bind6 program is not in effect");
    }
    std::thread::sleep(SETTLE);
    let t = clean_batch(at, c, Target::Prefix, 1)?;
    c.samples.put("v6-prefix-empty", t);
    Ok(())
}

/// pandad in guard mode; once per repeat also bind6's own run time.
fn guard(at: &Round, c: &mut Collected) -> Result<()> {
    let pandad = Pandad::start(&at.ctx.pandad, at.ns, "guard")?;
    check_guard_is_on(at.ns)?;
    if at.first {
        c.progs_with.push(machine::effective_bind6_programs()?);
    }
    std::thread::sleep(SETTLE);
    for t in interleave(&[Target::Prefix, Target::Outside], at.round) {
        let key = if t == Target::Prefix {
            "v6-prefix-guard"
        } else {
            "v6-outside-guard"
        };
        let time = clean_batch(at, c, t, 1)?;
        c.samples.put(key, time);
    }
    if at.first {
        bpf_run_time(at, &pandad, c)?;
    }
    pandad.stop()?;
    Ok(())
}

/// A pass with BPF statistics on: run_time_ns / run_cnt of pandad's bind6
/// over a batch of each path (its µs per operation is not used: the
/// statistics themselves cost time). The empty program runs on the same
/// binds meanwhile: what the statistics report for a program that does
/// nothing (their clock reads, the call) is the part of bind6's figure that
/// is not bind6's own.
fn bpf_run_time(at: &Round, pandad: &Pandad, c: &mut Collected) -> Result<()> {
    let id = pandad.program_id("bind6")?;
    let empty = EmptyBind6::attach()?;
    let empty_id = empty.prog_id()?;
    let _stats = bpfstats::enable()?;
    for (t, acc) in [
        (Target::Prefix, &mut c.bpf_prefix),
        (Target::Outside, &mut c.bpf_outside),
    ] {
        acc.measure(id, empty_id, at.ops, || {
            time_ops(at.ns, t, at.ops).map(drop)
        })?;
    }
    Ok(())
}

/// pandad in freebind mode (kernels that allow it).
fn freebind(at: &Round, c: &mut Collected) -> Result<()> {
    let pandad = Pandad::start(&at.ctx.pandad, at.ns, "freebind")?;
    std::thread::sleep(SETTLE);
    let t = clean_batch(at, c, Target::Prefix, 1)?;
    c.samples.put("v6-prefix-freebind", t);
    pandad.stop()?;
    Ok(())
}

/// [`time_ops`] with only the phase's own `programs` in effect (see
/// [`machine::with_only_programs`]); retakes are counted for the report.
fn clean_batch(at: &Round, c: &mut Collected, target: Target, programs: u32) -> Result<(f64, f64)> {
    let (t, retaken) = machine::with_only_programs(programs, || time_ops(at.ns, target, at.ops))?;
    c.retaken += retaken;
    Ok(t)
}

/// Times `ops` socket+bind+listen+close in `ns` (after a short untimed
/// warm-up); (CPU µs, wall µs) per operation.
fn time_ops(ns: &Netns, target: Target, ops: u32) -> Result<(f64, f64)> {
    ns.in_netns(move || {
        let one = |i: u32| match target {
            Target::Prefix => sock::bind_listen_close6(prefix_addr(1, i as u64 + 1), PORT),
            Target::Outside => {
                sock::bind_listen_close6(outside_addr((i % OUTSIDE) as u64 + 1), PORT)
            }
            Target::V4 => sock::bind_listen_close4(v4_loopback(i), PORT),
        };
        let (cpu, wall) = time_loop(WARMUP, ops, one)?;
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / ops as f64;
        Ok((per(cpu), per(wall)))
    })
}

/// With the guard on, an unconfigured address outside the prefix must be
/// refused (with ip_nonlocal_bind=1 and no guard it would not be): proof
/// that the guard batches measure a working guard.
fn check_guard_is_on(ns: &Netns) -> Result<()> {
    let addr = outside_addr(0xdead);
    match ns.in_netns(|| sock::try_bind6(addr, PORT))? {
        Err(libc::EADDRNOTAVAIL) => Ok(()),
        Ok(()) => bail!("guard is not in force: binding {addr} (outside, unconfigured) succeeded"),
        Err(e) => bail!(
            "binding {addr}: {} (expected EADDRNOTAVAIL)",
            std::io::Error::from_raw_os_error(e)
        ),
    }
}

/// The line of pandad's stderr that says why it refused.
fn refusal_reason(stderr: &str) -> String {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("error"))
        .unwrap_or("pandad refused to start")
        .trim();
    format!("pandad refused mechanism = \"freebind\" on this kernel: {line}")
}
