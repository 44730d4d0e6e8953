//! Case 6, leases: what a lease table adds to a bind inside the prefix.
//!
//! bind6 does, for every bind inside the prefix, one array lookup of
//! `LEASE_LEVELS` (0: no leases, done); with leases, one hash lookup of the
//! address in `LEASES` (leased: one ancestor-cgroup-id compare), or, for an
//! unleased address, one ancestor id and `HOLDERS` lookup per cgroup level
//! that has holders. The variants, each the case 1 operation
//! (socket + bind + listen + close) on a binder's addresses in turn:
//!
//! * no leases (the baselines): pandad (guard, `lease_mode = "open"`) with
//!   an empty lease table, the binders below as they are;
//! * [`LEASES`] leases held by [`HOLDERS`] cgroups, an equal share each:
//!   a binder in a holder binding its own leased addresses;
//! * the same table, a binder outside every holder binding unleased
//!   addresses: the level walk.
//!
//! bind6 judges the *task* calling bind(), so each binder is a process of
//! its own in its own cgroup ([`crate::binder`]), the same process in both
//! phases; each leased variant is compared with the same binder's no-lease
//! figure. One pandad serves the whole case: a phase change is the lease
//! table filled or emptied through pandad's API (`lease` / `release`
//! requests, as `panda lease` makes them), so the program, its links and
//! the binders stay the same and only the maps change. The phases
//! alternate several times per repeat in rotating order, and batches are
//! timed as in case 1 (thread CPU time, only the suite's program in
//! effect). Once per repeat and phase, a pass with BPF statistics on gives
//! bind6's own run time on each path, less an empty program's figure.

use std::{net::Ipv6Addr, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{progress, Ctx};
use crate::{
    batch::{BpfSamples, Variants},
    binder::{Addrs, Binder},
    bpfstats,
    cgroup::{self, Cgroup},
    emptyprog::EmptyBind6,
    interrupt, machine,
    netns::Netns,
    pandad::Pandad,
    plan::interleave,
    results::{HookVariant, Leases},
};

const PORT: u16 = 8080;
/// Leases in force in the leased phase, and the cgroups holding them.
const LEASES: u32 = 1_000;
const HOLDERS: u32 = 10;
/// Leased addresses are fd00:1009:bacc:2::N, the outside binder's
/// (never leased) fd00:1009:bacc:3::N.
const LEASED_SUBNET: u16 = 2;
const FREE_SUBNET: u16 = 3;
/// Pause after each phase change. Only map entries change (freed after an
/// RCU grace period), much less than case 1's program swaps.
const SETTLE: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    NoLeases,
    Leased,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The binder in holder 0, on holder 0's addresses.
    Holder,
    /// The binder in a cgroup that holds nothing, on unleased addresses.
    Outside,
}

/// The variants, in table order: key, label, baseline key.
fn variants() -> [(&'static str, String, Option<&'static str>); 4] {
    let n = crate::report::thousands(f64::from(LEASES));
    [
        (
            "holder-none",
            "no leases; binder in a (later) holder cgroup, its addresses".into(),
            None,
        ),
        (
            "outside-none",
            "no leases; binder in a cgroup holding nothing, other addresses".into(),
            None,
        ),
        (
            "holder-leased",
            format!("{n} leases; binder in a holder, its own leased addresses"),
            Some("holder-none"),
        ),
        (
            "outside-leased",
            format!("{n} leases; binder outside every holder, unleased addresses (level walk)"),
            Some("outside-none"),
        ),
    ]
}

fn key(phase: Phase, who: Who) -> &'static str {
    match (phase, who) {
        (Phase::NoLeases, Who::Holder) => "holder-none",
        (Phase::NoLeases, Who::Outside) => "outside-none",
        (Phase::Leased, Who::Holder) => "holder-leased",
        (Phase::Leased, Who::Outside) => "outside-leased",
    }
}

/// bind6's run time on one path, per repeat (as case 1's).
struct BpfPath {
    label: &'static str,
    variant: &'static str,
    samples: BpfSamples,
}

struct Collected {
    samples: Variants,
    bpf: Vec<BpfPath>,
    retaken: u32,
}

impl Collected {
    fn new() -> Collected {
        let path = |label, variant| BpfPath {
            label,
            variant,
            samples: BpfSamples::default(),
        };
        Collected {
            samples: Variants::new(variants().map(|v| v.0)),
            bpf: vec![
                path("bind6, no leases (LEASE_LEVELS is 0)", "holder-none"),
                path(
                    "bind6, leased address, bound by its holder",
                    "holder-leased",
                ),
                path(
                    "bind6, unleased address, binder outside every holder (level walk)",
                    "outside-leased",
                ),
            ],
            retaken: 0,
        }
    }
}

/// The lease table, filled and emptied through pandad's API.
struct Table<'a> {
    pandad: &'a Pandad,
    /// Each holder cgroup and the addresses it leases.
    holders: Vec<(PathBuf, Vec<Ipv6Addr>)>,
    filled: bool,
}

impl Table<'_> {
    fn set(&mut self, phase: Phase) -> Result<()> {
        match (phase, self.filled) {
            (Phase::Leased, false) => self.fill(),
            (Phase::NoLeases, true) => self.empty(),
            _ => Ok(()),
        }
    }

    /// One `lease` request per holder, naming its addresses.
    fn fill(&mut self) -> Result<()> {
        for (cg, addrs) in &self.holders {
            let reply = self.pandad.request(&json!({
                "op": "lease",
                "cgroup": cg,
                "addrs": addrs,
            }))?;
            let got = reply["addrs"].as_array().map_or(0, Vec::len);
            if got != addrs.len() {
                bail!(
                    "leasing {} addresses to {} leased {got}: {reply}",
                    addrs.len(),
                    cg.display()
                );
            }
        }
        self.filled = true;
        Ok(())
    }

    /// One `release` request per holder (every lease it holds).
    fn empty(&mut self) -> Result<()> {
        for (cg, _) in &self.holders {
            self.pandad
                .request(&json!({ "op": "release", "cgroup": cg }))
                .with_context(|| format!("releasing the leases of {}", cg.display()))?;
        }
        self.filled = false;
        Ok(())
    }
}

/// What one phase of one round needs.
struct Round<'a> {
    pandad: &'a Pandad,
    holder: &'a mut Binder,
    outside: &'a mut Binder,
    /// An address holder 0 leases in the leased phase.
    leased: Ipv6Addr,
    ops: u32,
    /// First recorded round of a repeat: BPF statistics then.
    first: bool,
}

pub fn run(ctx: &Ctx) -> Result<Leases> {
    let per = LEASES / HOLDERS;
    let leased = |i: u32| Addrs {
        subnet: LEASED_SUBNET,
        first: 1 + u64::from(i * per),
        count: per,
        port: PORT,
    };
    let free = Addrs {
        subnet: FREE_SUBNET,
        first: 1,
        count: per,
        port: PORT,
    };

    // Declared in this order so that they go in the reverse one: binders
    // (out of their cgroups), pandad, the cgroups, the namespace.
    let ns = Netns::new("leases")?;
    let top = Cgroup::new("leases")?;
    let mut holders = Vec::new();
    for i in 0..HOLDERS {
        holders.push((top.child(&format!("holder{i}"))?, leased(i).all()));
    }
    let outside_cg = top.child("outside")?;
    let holder_level = cgroup::level(&holders[0].0)?;
    let pandad = Pandad::start(&ctx.pandad, &ns, "guard")?;
    let mut holder = Binder::spawn(&ctx.self_exe, ns.path(), &holders[0].0, leased(0))?;
    let mut outside = Binder::spawn(&ctx.self_exe, ns.path(), &outside_cg, free)?;
    let mut table = Table {
        pandad: &pandad,
        holders,
        filled: false,
    };

    let batch = ctx.plan.leases_batch;
    let mut c = Collected::new();
    // Repeat 0 is a warm-up (one round, smaller batches): not recorded.
    for r in 0..=ctx.plan.repeats {
        let record = r > 0;
        let (rounds, ops) = if record {
            (ctx.plan.leases_rounds, batch)
        } else {
            (1, batch / 4)
        };
        for round in 0..rounds {
            let mut at = Round {
                pandad: &pandad,
                holder: &mut holder,
                outside: &mut outside,
                leased: leased(0).nth(0),
                ops,
                first: record && round == 0,
            };
            for phase in interleave(&[Phase::NoLeases, Phase::Leased], r + round) {
                interrupt::check()?;
                table.set(phase)?;
                check_phase(&mut at, phase)?;
                std::thread::sleep(SETTLE);
                for who in interleave(&[Who::Holder, Who::Outside], round) {
                    let t = clean_batch(&mut at, &mut c, who)?;
                    c.samples.put(key(phase, who), t);
                }
                if at.first {
                    bpf_run_time(&mut at, &mut c, phase)?;
                }
            }
        }
        c.samples.end_repeat(record);
        if record {
            progress(format!("leases: repeat {r}/{} done", ctx.plan.repeats));
        }
    }
    table.empty()?;
    drop((holder, outside));
    pandad.stop()?;

    let variants = variants()
        .into_iter()
        .zip(c.samples.0)
        .map(|((key, label, baseline), s)| HookVariant {
            key: key.to_string(),
            label,
            baseline: baseline.map(str::to_string),
            us_per_op: s.cpu,
            wall_us_per_op: s.wall,
        })
        .collect();
    Ok(Leases {
        ops_per_batch: batch,
        batches_per_repeat: ctx.plan.leases_rounds,
        leases: LEASES,
        holders: HOLDERS,
        holder_level,
        variants,
        bpf: c
            .bpf
            .into_iter()
            .map(|b| b.samples.into_result(b.label, b.variant))
            .collect(),
        batches_retaken: c.retaken,
    })
}

/// Proof that a phase measures what it says: the outside binder may bind
/// holder 0's address exactly when nobody leases it (EACCES otherwise).
fn check_phase(at: &mut Round, phase: Phase) -> Result<()> {
    let got = at.outside.try_bind(at.leased)?;
    match (phase, got) {
        (Phase::NoLeases, Ok(())) | (Phase::Leased, Err(libc::EACCES)) => Ok(()),
        (Phase::NoLeases, Err(e)) => bail!(
            "with no leases, binding {} from outside failed: {}",
            at.leased,
            std::io::Error::from_raw_os_error(e)
        ),
        (Phase::Leased, other) => bail!(
            "the lease of {} is not in force: a bind from outside its holder gave {other:?} \
             (expected EACCES)",
            at.leased
        ),
    }
}

/// One timed batch of `who`, with only pandad's bind6 in effect (see
/// [`machine::with_only_programs`]).
fn clean_batch(at: &mut Round, c: &mut Collected, who: Who) -> Result<(f64, f64)> {
    let ops = at.ops;
    let binder = match who {
        Who::Holder => &mut *at.holder,
        Who::Outside => &mut *at.outside,
    };
    let (t, retaken) = machine::with_only_programs(1, || binder.time(ops))?;
    c.retaken += retaken;
    Ok(t)
}

/// bind6's run_time_ns / run_cnt over one batch of each path this phase
/// has, with the empty program alongside (what the statistics report for a
/// program that does nothing; see case 1).
fn bpf_run_time(at: &mut Round, c: &mut Collected, phase: Phase) -> Result<()> {
    let id = at.pandad.program_id("bind6")?;
    let empty = EmptyBind6::attach()?;
    let empty_id = empty.prog_id()?;
    let _stats = bpfstats::enable()?;
    let paths: &[(Who, &str)] = match phase {
        Phase::NoLeases => &[(Who::Holder, "holder-none")],
        Phase::Leased => &[
            (Who::Holder, "holder-leased"),
            (Who::Outside, "outside-leased"),
        ],
    };
    for &(who, variant) in paths {
        let binder = match who {
            Who::Holder => &mut *at.holder,
            Who::Outside => &mut *at.outside,
        };
        let acc = c.bpf.iter_mut().find(|b| b.variant == variant);
        let acc = &mut acc.expect("a known path").samples;
        acc.measure(id, empty_id, at.ops, || binder.time(at.ops).map(drop))?;
    }
    Ok(())
}
