//! Case 3, set-up cost against the per-address alternative: the time and
//! kernel memory it takes to make N addresses bindable.
//!
//! * per address: N `address add …/128 dev lo nodad` lines in one
//!   `ip -batch`, in a fresh namespace;
//! * panda's kernel state: the anchor and the one `local` route, also in one
//!   `ip -batch` (independent of N);
//! * pandad itself, spawn to READY=1 (route, anchor, nftables table, BPF
//!   programs, sysctl), also independent of N.
//!
//! Memory is the change in the host's Slab and SUnreclaim (/proc/meminfo)
//! across the command: host-wide, so other activity shows up in it. Each
//! sample starts once the previous namespace's (asynchronous) cleanup has
//! let SUnreclaim settle, and the table reports medians over the repeats.
//! Each sample checks that the addresses really are bindable afterwards.
//!
//! Adding /128s one by one is quadratic in the kernel (each add walks the
//! device's address list), so a per-address sample runs at most the plan's
//! cap and then reports how many addresses it added; N from
//! `setup_once_from` on is measured once, after the repeats.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{progress, write_batch, Ctx};
use crate::{
    interrupt,
    netns::{self, Netns},
    pandad::Pandad,
    plan::interleave,
    procfs::{self, Slab},
    results::{Cost, Setup, SetupPoint},
    sock::{self, prefix_addr, ANCHOR, PREFIX},
    tempdir::TempDir,
};

const SUBNET: u16 = 3;

#[derive(Clone, Copy)]
enum Item {
    Pandad,
    Route,
    /// Index into the plan's sizes.
    PerAddress(usize),
}

/// One sample: wall seconds, (Δ Slab, Δ SUnreclaim) in kB, addresses added.
struct Sample {
    secs: f64,
    slab: (f64, f64),
    added: u64,
}

pub fn run(ctx: &Ctx) -> Result<Setup> {
    let sizes = &ctx.plan.sizes;
    let mut route = Cost::default();
    let mut pandad = Cost::default();
    let mut per_address = vec![Cost::default(); sizes.len()];
    let mut added = vec![Vec::new(); sizes.len()];
    let once = |i: usize| sizes[i] >= ctx.plan.setup_once_from;
    let mut items = vec![Item::Pandad, Item::Route];
    items.extend((0..sizes.len()).filter(|&i| !once(i)).map(Item::PerAddress));

    let mut record = |item: Item, s: Sample| {
        let cost = match item {
            Item::Pandad => &mut pandad,
            Item::Route => &mut route,
            Item::PerAddress(i) => {
                added[i].push(s.added);
                &mut per_address[i]
            }
        };
        cost.seconds.push(s.secs);
        cost.slab_kb.push(s.slab.0);
        cost.sunreclaim_kb.push(s.slab.1);
    };
    // Warm-up (binaries and libraries in the page cache): not recorded.
    measure(ctx, Item::Route)?;
    measure(ctx, Item::PerAddress(0))?;
    for r in 0..ctx.plan.repeats {
        for item in interleave(&items, r) {
            interrupt::check()?;
            record(item, measure(ctx, item)?);
        }
        progress(format!(
            "set-up cost: repeat {}/{} done",
            r + 1,
            ctx.plan.repeats
        ));
    }
    for i in (0..sizes.len()).filter(|&i| once(i)) {
        interrupt::check()?;
        progress(format!(
            "set-up cost: {} /128s, once (at most {:?})",
            sizes[i], ctx.plan.setup_cap
        ));
        record(Item::PerAddress(i), measure(ctx, Item::PerAddress(i))?);
        // Let the kernel finish tearing that namespace down before the
        // next case measures anything.
        settle(ctx.plan.settle_max)?;
    }
    Ok(Setup {
        cap_s: ctx.plan.setup_cap.as_secs_f64(),
        route,
        pandad,
        points: sizes
            .iter()
            .zip(per_address.into_iter().zip(added))
            .map(|(&n, (per_address, added))| SetupPoint {
                n,
                per_address,
                added,
            })
            .collect(),
    })
}

/// One sample in a fresh namespace.
fn measure(ctx: &Ctx, item: Item) -> Result<Sample> {
    let ns = Netns::new("setup")?;
    let dir = TempDir::new()?;
    match item {
        Item::PerAddress(i) => {
            let n = ctx.plan.sizes[i];
            let file = write_batch(
                &dir,
                (1..=n as u64)
                    .map(|h| format!("address add {}/128 dev lo nodad", prefix_addr(SUBNET, h))),
            )?;
            let mut finished = true;
            let (secs, slab) = timed(ctx, || {
                finished = run_capped(&ns, &file, ctx.plan.setup_cap)?;
                Ok(())
            })?;
            let added = if finished {
                n as u64
            } else {
                count_added(&ns)?
            };
            // The last address added must be bindable (a plain bind: no
            // sysctl involved).
            let last = prefix_addr(SUBNET, added);
            if added > 0 {
                ns.in_netns(|| sock::bind_listen_close6(last, 9))
                    .with_context(|| format!("binding {last} after adding {added} addresses"))?;
            }
            Ok(Sample { secs, slab, added })
        }
        Item::Route => {
            let file = write_batch(
                &dir,
                [
                    format!("address add {ANCHOR}/128 dev lo nodad noprefixroute"),
                    format!("route add local {PREFIX} dev lo table local src {ANCHOR}"),
                ],
            )?;
            let mut cmd = ns.cmd("ip");
            cmd.arg("-batch").arg(&file);
            let (secs, slab) = timed(ctx, || netns::run(&mut cmd).map(drop))?;
            // Routed local: bindable once the kernel's check is relaxed.
            ns.set_sysctl("net.ipv6.ip_nonlocal_bind", "1")?;
            let any = prefix_addr(SUBNET, 0xbeef_cafe);
            ns.in_netns(|| sock::bind_listen_close6(any, 9))
                .with_context(|| format!("binding {any} with the route"))?;
            Ok(Sample {
                secs,
                slab,
                added: 0,
            })
        }
        Item::Pandad => {
            let mut running = None;
            let (_, slab) = timed(ctx, || {
                running = Some(Pandad::start(&ctx.pandad, &ns, "guard")?);
                Ok(())
            })?;
            let p = running.expect("set by the closure");
            let secs = p.ready_after.as_secs_f64();
            let any = prefix_addr(SUBNET, 0xbeef_cafe);
            ns.in_netns(|| sock::bind_listen_close6(any, 9))
                .with_context(|| format!("binding {any} with pandad"))?;
            p.stop()?;
            Ok(Sample {
                secs,
                slab,
                added: 0,
            })
        }
    }
}

/// `ip -batch FILE` in `ns`, stopped (killed) after `cap`; true if it
/// finished (successfully) in time.
fn run_capped(ns: &Netns, file: &std::path::Path, cap: Duration) -> Result<bool> {
    let mut child = ns
        .cmd("ip")
        .arg("-batch")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning ip -batch")?;
    let end = Instant::now() + cap;
    loop {
        if let Some(st) = child.try_wait()? {
            if !st.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("ip -batch failed ({st}): {}", err.trim());
            }
            return Ok(true);
        }
        if Instant::now() >= end || interrupt::check().is_err() {
            let _ = child.kill();
            let _ = child.wait();
            interrupt::check()?;
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many of the case's /128s are on `lo` in `ns`.
fn count_added(ns: &Netns) -> Result<u64> {
    let out = ns.ip(&["-6", "-o", "addr", "show", "dev", "lo"])?;
    let prefix = format!("{}", prefix_addr(SUBNET, 0))
        .trim_end_matches(':')
        .to_string();
    Ok(out.lines().filter(|l| l.contains(&prefix)).count() as u64)
}

/// Waits for kernel memory to settle, then runs `f`; returns its wall time
/// and the slab change across it.
fn timed(ctx: &Ctx, f: impl FnOnce() -> Result<()>) -> Result<(f64, (f64, f64))> {
    settle(ctx.plan.settle_max)?;
    let before = procfs::slab()?;
    let t0 = Instant::now();
    f()?;
    let secs = t0.elapsed().as_secs_f64();
    let after = procfs::slab()?;
    Ok((secs, delta(before, after)))
}

fn delta(a: Slab, b: Slab) -> (f64, f64) {
    (
        b.slab_kb as f64 - a.slab_kb as f64,
        b.sunreclaim_kb as f64 - a.sunreclaim_kb as f64,
    )
}

/// Waits until SUnreclaim moves by less than 256 kB over two consecutive
/// 100 ms intervals (the previous namespace's teardown is done), at most
/// `max`.
fn settle(max: Duration) -> Result<()> {
    let end = Instant::now() + max;
    let mut prev = procfs::slab()?.sunreclaim_kb;
    let mut calm = 0;
    while calm < 2 && Instant::now() < end {
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(100));
        let now = procfs::slab()?.sunreclaim_kb;
        calm = if now.abs_diff(prev) < 256 {
            calm + 1
        } else {
            0
        };
        prev = now;
    }
    Ok(())
}
