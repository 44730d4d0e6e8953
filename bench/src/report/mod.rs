//! The report: markdown tables (printed by `run`, and the body of
//! BENCHMARKS.md) and, for BENCHMARKS.md, PNG plots.
//!
//! Every figure is a median over the repeats with its spread (min–max);
//! every ratio is computed per repeat against the baseline measured in that
//! same repeat, then summarised the same way.

mod plots;

use std::{fmt::Write as _, path::Path};

use anyhow::{bail, Context, Result};

use crate::{
    results::{
        BpfRunTime, Churn, Cost, Daemon, Hook, HookVariant, Leases, Repair, Results, Scale, Setup,
    },
    stats::{paired_ratios, Summary},
};

/// Where BENCHMARKS.md puts its plots, relative to the repository root.
pub const PLOT_DIR: &str = "docs/bench";

/// Writes `root/BENCHMARKS.md` and `root/docs/bench/*.png` from a complete
/// run; refuses a run with a failed or missing case.
pub fn write(r: &Results, root: &Path) -> Result<()> {
    let missing: Vec<&str> = [
        ("hook overhead", r.hook.is_none()),
        ("scale", r.scale.is_none()),
        ("set-up cost", r.setup.is_none()),
        ("churn", r.churn.is_none()),
        ("daemon", r.daemon.is_none()),
        ("leases", r.leases.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, gone)| gone.then_some(name))
    .collect();
    if !missing.is_empty() || !r.failures.is_empty() {
        bail!(
            "the run is incomplete (missing: {}; failures: {}): no report written",
            missing.join(", "),
            r.failures.join("; ")
        );
    }
    let dir = root.join(PLOT_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let plots = plots::draw_all(r, &dir)?;
    let text = markdown(r, &plots);
    let path = root.join("BENCHMARKS.md");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "wrote {} and {} plots in {}",
        path.display(),
        plots.len(),
        dir.display()
    );
    Ok(())
}

/// The whole report as markdown. `plots` are (case, file name) pairs to
/// link under each case; empty for the stdout table.
pub fn markdown(r: &Results, plots: &[(&'static str, String)]) -> String {
    let mut o = String::new();
    header(&mut o, r);
    let plot = |o: &mut String, case: &str| {
        for (c, file) in plots {
            if *c == case {
                let _ = writeln!(o, "\n![{case}]({PLOT_DIR}/{file})");
            }
        }
    };
    let _ = writeln!(o, "\n## 1. Hook overhead\n");
    match &r.hook {
        Some(h) => hook(&mut o, h),
        None => missing(&mut o, r, "hook"),
    }
    plot(&mut o, "hook");
    let _ = writeln!(o, "\n## 2. Scale: N listeners on one port\n");
    match &r.scale {
        Some(s) => scale(&mut o, s),
        None => missing(&mut o, r, "scale"),
    }
    plot(&mut o, "scale");
    let _ = writeln!(o, "\n## 3. Set-up cost against one /128 per address\n");
    match &r.setup {
        Some(s) => setup(&mut o, s),
        None => missing(&mut o, r, "setup"),
    }
    plot(&mut o, "setup");
    let _ = writeln!(o, "\n## 4. Connection churn (TIME-WAIT)\n");
    match &r.churn {
        Some(c) => churn(&mut o, c),
        None => missing(&mut o, r, "churn"),
    }
    plot(&mut o, "churn");
    let _ = writeln!(o, "\n## 5. The daemon\n");
    match &r.daemon {
        Some(d) => daemon(&mut o, d),
        None => missing(&mut o, r, "daemon"),
    }
    let _ = writeln!(o, "\n## 6. Leases\n");
    match &r.leases {
        Some(l) => leases(&mut o, l),
        None => missing(&mut o, r, "leases"),
    }
    if !r.failures.is_empty() {
        let _ = writeln!(o, "\n## Failures\n");
        for f in &r.failures {
            let _ = writeln!(o, "- {f}");
        }
    }
    o
}

/// What stands in for a case the run has no result for: it failed, or it
/// was not asked for (`--only`; such a run is printed, never written).
fn missing(o: &mut String, r: &Results, case: &str) {
    let failed = r
        .failures
        .iter()
        .any(|f| f.starts_with(&format!("{case}:")));
    let _ = if failed {
        writeln!(o, "**Not measured: this case failed (see Failures).**")
    } else {
        writeln!(o, "**Not measured: this case was not run (`--only`).**")
    };
}

fn header(o: &mut String, r: &Results) {
    let m = &r.machine;
    let _ = writeln!(o, "# panda benchmarks\n");
    if r.run.quick {
        let _ = writeln!(
            o,
            "> **This is a `--quick` run** (fewer repeats, N only up to {}, shorter windows), \
             made while developing the suite on a shared, busy machine. It shows what is \
             measured and how; it is not the reference run. Run `cargo xtask bench` on a \
             quiet machine for that.\n",
            r.scale
                .as_ref()
                .and_then(|s| s.variants.first()?.points.last())
                .map(|p| thousands(p.n as f64))
                .unwrap_or_else(|| "?".into())
        );
    }
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(
        o,
        "| machine | {}, {} CPUs (nproc), {} MiB RAM |",
        m.cpu, m.nproc, m.mem_total_mb
    );
    let _ = writeln!(o, "| kernel | `{}` |", m.kernel);
    let _ = writeln!(o, "| command | `{}` |", r.run.command);
    let _ = writeln!(
        o,
        "| run | started {}, took {:.0} s, {} repeats per case |",
        r.run.started, r.run.wall_s, r.run.repeats
    );
    let _ = writeln!(
        o,
        "| load average (1/5/15 min) | {} at start, {} at end |",
        m.load_start, m.load_end
    );
    let _ = writeln!(
        o,
        "| other cgroup/bind6 programs in effect at start | {} |",
        if m.bind6_programs_at_start == u32::MAX {
            "unknown".to_string()
        } else {
            m.bind6_programs_at_start.to_string()
        }
    );
    let _ = writeln!(
        o,
        "\nEach case runs in throwaway network namespaces. Figures are medians over \
         the repeats, with the spread (min–max) in brackets; every ratio is taken per \
         repeat against a baseline measured in the same repeat (variants interleaved, \
         their order rotating from repeat to repeat), then summarised the same way."
    );
}

// ----------------------------------------------------------------------------
// Case 1
// ----------------------------------------------------------------------------

fn hook(o: &mut String, h: &Hook) {
    let _ = writeln!(
        o,
        "socket + bind + listen + close, each on a distinct address (the {} configured \
         outside addresses in turn), same port, timed in batches of {} operations, all \
         in one namespace. \"No program\": the same `local` route and anchor as pandad's \
         and `ip_nonlocal_bind=1`, set by hand, while no pandad of the suite runs \
         (pandad attaches at the cgroup2 root, so its programs would run on every bind \
         on the host). \"Empty bind6 program\": the same plus a program that only \
         returns 1, attached at the cgroup2 root: what the kernel's hook machinery costs \
         whatever the program. pandad is started for each panda phase and stopped \
         after it; the phases alternate {} times per repeat, in rotating order. A \
         repeat's figure is the median of its batches, in the binding thread's CPU time \
         (a bind never blocks: CPU time is its cost, without the time other processes \
         held the CPU); wall time is shown for reference.\n",
        h.outside_addresses,
        thousands(h.ops_per_batch as f64),
        h.batches_per_repeat
    );
    let _ = writeln!(
        o,
        "| variant | CPU µs per operation | compared with | ratio | wall µs per operation |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|");
    let find = |k: &str| h.variants.iter().find(|v| v.key == k);
    for v in &h.variants {
        let s = Summary::of(&v.us_per_op);
        let (base, ratio) = match v.baseline.as_deref().and_then(find) {
            Some(b) => (
                b.label.clone(),
                ratio_text(&Summary::of(&paired_ratios(&v.us_per_op, &b.us_per_op))),
            ),
            None => ("(baseline)".into(), "1".into()),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            v.label,
            fmt_spread(&s, 2),
            base,
            ratio,
            fmt_spread(&Summary::of(&v.wall_us_per_op), 2)
        );
    }
    if let Some(why) = &h.freebind_skipped {
        let _ = writeln!(
            o,
            "| IPv6 prefix address, panda freebind | skipped: {why} | | | |"
        );
    }
    if let Some(r) = hook_ratio(h, "v6-prefix-guard") {
        let _ = writeln!(
            o,
            "\nGoal: panda ≤ 1.03× no program. Guard, prefix addresses: {:.3}× ({}).",
            r.median,
            if r.median <= 1.03 { "met" } else { "not met" }
        );
    }
    if let (Some(e), Some(g)) = (find("v6-prefix-empty"), find("v6-prefix-guard")) {
        let r = Summary::of(&paired_ratios(&g.us_per_op, &e.us_per_op));
        let _ = writeln!(
            o,
            "Of that, the kernel's hook machinery alone (any bind6 program, even an empty \
             one) accounts for {:.3}×; panda's program against the empty one: {}.",
            hook_ratio(h, "v6-prefix-empty")
                .map(|s| s.median)
                .unwrap_or(f64::NAN),
            ratio_text(&r)
        );
    }
    let _ = writeln!(
        o,
        "\nThe programs' own run time (kernel BPF statistics, `BPF_ENABLE_STATS`, \
         run_time_ns / run_cnt of the `bind6` program of the suite's pandad, in a \
         separate pass). The statistics themselves cost two clock reads per run, which \
         they count as the program's: the empty program, attached for the same binds, \
         shows that share, and bind6's own time is the difference (per repeat):\n"
    );
    bpf_table(o, &h.bpf, &h.variants);
    let without = max_u32(&h.bind6_programs_without_pandad);
    let with = max_u32(&h.bind6_programs_with_pandad);
    let _ = writeln!(
        o,
        "\ncgroup/bind6 programs in effect for the suite's binds: at most {without} during \
         the no-program samples, {with} during the panda samples{}.",
        if without > 0 {
            " (the extra ones belong to other pandads on the host, e.g. tests; they run on \
             every bind in both variants)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "Each batch ran with only the suite's own programs in effect: it waited while \
         other pandads' programs (tests, say) were attached, and was timed again when \
         their count changed during it ({} batch{} retaken in this run).",
        h.batches_retaken,
        if h.batches_retaken == 1 { "" } else { "es" }
    );
}

/// bind6's run time per path (cases 1 and 6): ns per run, the empty
/// program's over the same binds, their difference, and that difference as
/// a share of the path's operation (its variant's CPU µs).
fn bpf_table(o: &mut String, bpf: &[BpfRunTime], variants: &[HookVariant]) {
    let find = |k: &str| variants.iter().find(|v| v.key == k);
    let _ = writeln!(
        o,
        "| path | ns per run | empty program, same binds | bind6's own (difference) | runs per sample | own share of the operation |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    for b in bpf {
        let s = Summary::of(&b.ns_per_run);
        let e = Summary::of(&b.empty_ns_per_run);
        let own = Summary::of(&b.own_ns_per_run());
        let runs = Summary::of(&b.runs.iter().map(|&x| x as f64).collect::<Vec<_>>());
        let share = find(&b.variant)
            .filter(|_| own.n > 0)
            .map(|v| {
                format!(
                    "{:.1} %",
                    100.0 * own.median / (1000.0 * Summary::of(&v.us_per_op).median)
                )
            })
            .unwrap_or_else(|| "—".into());
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            b.label,
            fmt_spread(&s, 0),
            fmt_spread(&e, 0),
            fmt_spread(&own, 0),
            thousands(runs.median),
            share
        );
    }
}

fn hook_ratio(h: &Hook, key: &str) -> Option<Summary> {
    let v = h.variants.iter().find(|v| v.key == key)?;
    let b = h
        .variants
        .iter()
        .find(|b| Some(&b.key) == v.baseline.as_ref())?;
    Some(Summary::of(&paired_ratios(&v.us_per_op, &b.us_per_op)))
}

// ----------------------------------------------------------------------------
// Case 2
// ----------------------------------------------------------------------------

fn scale(o: &mut String, s: &Scale) {
    let _ = writeln!(
        o,
        "N TCP listeners on port {} at N distinct addresses, opened one after another \
         by worker processes of at most {} listeners each (so N − 1 are already \
         listening when the N-th binds), all in one namespace. Per bind: socket + bind + \
         listen in the worker's thread CPU time (after an untimed warm-up of the fresh \
         process), mean over all N, and over the last 1,000; wall time for reference. \
         N under 5,000 is filled several times per repeat (median). \"No program\" rows: \
         the route and sysctl set by hand while no pandad of the suite runs.\n",
        s.port,
        thousands(s.per_process as f64)
    );
    let Some(none) = s.variants.iter().find(|v| v.key == "none") else {
        return;
    };
    let _ = writeln!(
        o,
        "| variant | N | processes | CPU µs per bind (all N) | ratio to smallest N | CPU µs per bind (last 1,000) | ratio to smallest N | ratio to IPv6 no program, same N | wall µs per bind (all N) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
    for v in &s.variants {
        let Some(first) = v.points.first() else {
            continue;
        };
        for (p, base) in v.points.iter().zip(&none.points) {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                v.label,
                thousands(p.n as f64),
                p.processes,
                fmt_spread(&Summary::of(&p.mean_us), 2),
                ratio_text(&Summary::of(&paired_ratios(&p.mean_us, &first.mean_us))),
                fmt_spread(&Summary::of(&p.marginal_us), 2),
                ratio_text(&Summary::of(&paired_ratios(
                    &p.marginal_us,
                    &first.marginal_us
                ))),
                ratio_text(&Summary::of(&paired_ratios(&p.mean_us, &base.mean_us))),
                fmt_spread(&Summary::of(&p.wall_mean_us), 2),
            );
        }
    }
    let growth = |key: &str| {
        let v = s.variants.iter().find(|v| v.key == key)?;
        let (first, last) = (v.points.first()?, v.points.last()?);
        Some((
            first.n,
            last.n,
            Summary::of(&paired_ratios(&last.mean_us, &first.mean_us)),
        ))
    };
    if let (Some((n0, n1, g)), Some((_, _, k))) = (growth("guard"), growth("none")) {
        let _ = writeln!(
            o,
            "\nGoal: per-bind cost at the largest N ≤ 1.1× the cost at {}. Panda guard, \
             N = {}: {:.3}× ({}); the kernel alone (no program) grows {:.3}× over the same range.",
            thousands(n0 as f64),
            thousands(n1 as f64),
            g.median,
            if g.median <= 1.1 { "met" } else { "not met" },
            k.median
        );
        if let Some(added) = panda_added(s) {
            let _ = writeln!(o, "{added}");
        }
        let _ = writeln!(
            o,
            "Each fill ran with only the suite's own programs in effect (as in case 1; \
             {} fill{} retaken in this run).",
            s.fills_retaken,
            if s.fills_retaken == 1 { "" } else { "s" }
        );
    }
}

/// The part of case 2's growth that panda controls, in the same run: panda
/// guard's growth over the no-program growth (paired by repeat), and what
/// panda adds per bind (guard − no program, per repeat) at the smallest and
/// the largest N.
fn panda_added(s: &Scale) -> Option<String> {
    let v = |key: &str| s.variants.iter().find(|v| v.key == key);
    let (g, k) = (v("guard")?, v("none")?);
    let (g0, g1) = (&g.points.first()?.mean_us, &g.points.last()?.mean_us);
    let (k0, k1) = (&k.points.first()?.mean_us, &k.points.last()?.mean_us);
    let (n0, n1) = (g.points.first()?.n, g.points.last()?.n);
    let relative: Vec<f64> = paired_ratios(&paired_ratios(g1, g0), &paired_ratios(k1, k0));
    let added = |gs: &[f64], ks: &[f64]| {
        let ns: Vec<f64> = gs.iter().zip(ks).map(|(a, b)| 1000.0 * (a - b)).collect();
        Summary::of(&ns)
    };
    let (a0, a1) = (added(g0, k0), added(g1, k1));
    let added_ratio = if a0.median > 0.0 && a1.median > 0.0 {
        format!("{:.2}× of the medians", a1.median / a0.median)
    } else {
        "no ratio: a median is not above zero".into()
    };
    Some(format!(
        "The kernel's own growth is the no-program rows'; the part panda controls is its \
         growth relative to the kernel's, in the same run: panda guard's growth ÷ the \
         no-program growth, N = {n1} against {n0}, paired by repeat, is {}. What panda \
         adds per bind (guard − no program, same repeat): {} ns at N = {n0} and {} ns at \
         N = {n1} ({added_ratio}).",
        ratio_text(&Summary::of(&relative)),
        fmt_spread(&a0, 0),
        fmt_spread(&a1, 0),
        n1 = thousands(n1 as f64),
        n0 = thousands(n0 as f64),
    ))
}

// ----------------------------------------------------------------------------
// Case 3
// ----------------------------------------------------------------------------

fn setup(o: &mut String, s: &Setup) {
    let _ = writeln!(
        o,
        "Time and kernel memory to make N addresses bindable, each sample in a fresh \
         namespace. Per address: one `ip -batch` with N lines `address add …/128 dev lo \
         nodad`. panda: its kernel state (anchor + `local` route) in one `ip -batch`, \
         and pandad from spawn to READY=1 (adds the nftables table, the BPF programs and \
         the sysctl); both independent of N. Times are wall time and include starting \
         the command (nsenter + ip). Memory: change of the host's Slab / SUnreclaim \
         (/proc/meminfo) across the command, host-wide and therefore noisy. Adding \
         /128s is quadratic in the kernel (each add walks the device's address list), \
         so one `ip -batch` may run at most {:.0} s: a sample stopped there reports how \
         many addresses it had added, and N ≥ 50,000 is measured once.\n",
        s.cap_s
    );
    let _ = writeln!(
        o,
        "| way | N | time | time ratio to panda's route | Slab | SUnreclaim | SUnreclaim per address |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    let row = |o: &mut String, way: &str, n: &str, c: &Cost, added: Option<(u32, &[u64])>| {
        let t = Summary::of(&c.seconds);
        let mut ratio = ratio_text(&Summary::of(&paired_ratios(&c.seconds, &s.route.seconds)));
        let mut time = fmt_seconds(&t);
        if c.seconds.len() == 1 && s.route.seconds.len() > 1 {
            // Measured once: against the route's median.
            ratio = format!("{:.0}×", t.median / Summary::of(&s.route.seconds).median);
        }
        let su = Summary::of(&c.sunreclaim_kb);
        let mut per_addr = "—".to_string();
        if let Some((n, added)) = added {
            let done = Summary::of(&added.iter().map(|&a| a as f64).collect::<Vec<_>>());
            if done.min < n as f64 {
                time = format!(
                    "≥ {} (stopped at the cap: {} of {} added)",
                    time,
                    thousands(done.median),
                    thousands(n as f64)
                );
                ratio = format!("≥ {ratio}");
            }
            if done.median > 0.0 {
                per_addr = format!("{:.2} KiB", su.median / done.median);
            }
        }
        let _ = writeln!(
            o,
            "| {way} | {n} | {time} | {ratio} | {} | {} | {per_addr} |",
            fmt_mb(&Summary::of(&c.slab_kb)),
            fmt_mb(&su),
        );
    };
    row(
        o,
        "panda: anchor + route (`ip -batch`)",
        "any",
        &s.route,
        None,
    );
    row(o, "panda: pandad spawn → READY=1", "any", &s.pandad, None);
    for p in &s.points {
        row(
            o,
            "one /128 per address (`ip -batch`)",
            &thousands(p.n as f64),
            &p.per_address,
            Some((p.n, &p.added)),
        );
    }
    let _ = writeln!(
        o,
        "\npanda's kernel memory does not grow with N: one route and one address \
         (SUnreclaim change {:.0} KiB, within the noise of host-wide counters).",
        Summary::of(&s.route.sunreclaim_kb).median
    );
}

// ----------------------------------------------------------------------------
// Case 4
// ----------------------------------------------------------------------------

fn churn(o: &mut String, c: &Churn) {
    let _ = writeln!(
        o,
        "A client connects to [::1]:9000 and closes, as fast as it can, for {} s per \
         sample; the listener accepts, waits for the client's FIN and closes, so the \
         client always closes first and keeps the TIME-WAIT entry. Source ::1, or the {} prefix addresses \
         in turn (IP_BIND_ADDRESS_NO_PORT + bind to [address]:0). Fresh namespace and \
         pandad (guard) per sample; the narrow range is set with \
         `net.ipv4.ip_local_port_range` inside it (it applies to IPv6 too), and \
         `net.ipv4.tcp_max_tw_buckets` is raised there so that the kernel never skips \
         TIME-WAIT for lack of room.\n",
        c.seconds,
        thousands(c.spread_sources as f64)
    );
    let _ = writeln!(
        o,
        "| ephemeral range | source | connections/s | EADDRNOTAVAIL per sample | other errors | TIME-WAIT at end | ratio to ::1 |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for v in &c.variants {
        let base = c
            .variants
            .iter()
            .find(|b| b.source == "::1" && b.range == v.range)
            .map(|b| ratio_text(&Summary::of(&paired_ratios(&v.conns_per_s, &b.conns_per_s))))
            .unwrap_or_default();
        let source = if v.source == "spread" {
            format!("{} prefix addresses", thousands(c.spread_sources as f64))
        } else {
            "::1".to_string()
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            v.range,
            source,
            fmt_spread(&Summary::of(&v.conns_per_s), 0),
            fmt_spread(&summary_u64(&v.eaddrnotavail), 0),
            fmt_spread(&summary_u64(&v.other_errors), 0),
            fmt_spread(&summary_u64(&v.time_wait), 0),
            if v.source == "::1" {
                "1".to_string()
            } else {
                base
            },
        );
    }
}

// ----------------------------------------------------------------------------
// Case 5
// ----------------------------------------------------------------------------

fn daemon(o: &mut String, d: &Daemon) {
    let _ = writeln!(
        o,
        "One pandad (guard) per repeat, each in a fresh namespace; the baseline is \
         `pandad --version` spawned the same way (the cost of starting the process at \
         all). The pandads then idle together for {:.0} s.\n",
        d.idle_window_s
    );
    let _ = writeln!(o, "| metric | value | compared with | ratio |");
    let _ = writeln!(o, "|---|---|---|---|");
    let start = Summary::of(&d.start_ready_s);
    let _ = writeln!(
        o,
        "| start to ready (spawn → READY=1) | {} | `pandad --version`, spawn → exit: {} | {} |",
        fmt_ms(&start),
        fmt_ms(&Summary::of(&d.exec_baseline_s)),
        ratio_text(&Summary::of(&paired_ratios(
            &d.start_ready_s,
            &d.exec_baseline_s
        )))
    );
    let hwm: Vec<f64> = d.vm_hwm_kb.iter().map(|k| k / 1024.0).collect();
    let _ = writeln!(
        o,
        "| peak RSS (VmHWM) | {} MiB | — | — |",
        fmt_spread(&Summary::of(&hwm), 1)
    );
    let cpu = Summary::of(&d.idle_cpu_ms);
    let _ = writeln!(
        o,
        "| CPU while idle, utime + stime over {:.0} s | {} ms ({:.3} % of a CPU) | — | — |",
        d.idle_window_s,
        fmt_spread(&cpu, 0),
        cpu.median / (d.idle_window_s * 10.0)
    );
    let _ = writeln!(
        o,
        "| on-CPU while idle, all threads' schedstat over {:.0} s | {} ms | — | — |",
        d.idle_window_s,
        fmt_spread(&Summary::of(&d.idle_sched_ms), 2)
    );
    let _ = writeln!(
        o,
        "| teardown (SIGTERM → exit, state undone) | {} | — | — |",
        fmt_ms(&Summary::of(&d.stop_s))
    );
    repair(o, &d.repair);
}

/// Nearest-rank percentile `p` (0–100) of `v`.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

/// The repair latencies: one row per kind of tampering.
fn repair(o: &mut String, r: &[Repair]) {
    let _ = writeln!(
        o,
        "\n### Repair latency\n\n\
         Each kind of tampering on a running pandad (guard), repeated in one namespace; \
         the latency runs from the damage to its repair as the kernel reports them (rtnetlink \
         and nf_tables notifications; the sysctl and the BPF link have none and are polled \
         every 50 µs from the tampering syscall). Goal: p99 under 100 ms.\n"
    );
    let _ = writeln!(o, "| tampering | n | p50 | p99 | max | WARN lines |");
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    let what = |k: &str| match k {
        "route" => "`ip -6 route del` of the local route",
        "anchor" => "`ip -6 addr del` of the anchor (the route loses its source too)",
        "table" => "`nft flush ruleset`",
        "sysctl" => "`ip_nonlocal_bind` set to 0",
        "link_bind6" => "`bpftool link detach` of bind6 (BPF_LINK_DETACH)",
        _ => "?",
    };
    let mut worst = 0.0f64;
    for k in r {
        let p99 = percentile(&k.samples_ms, 99.0);
        worst = worst.max(p99);
        let _ = writeln!(
            o,
            "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
            what(&k.kind),
            k.samples_ms.len(),
            percentile(&k.samples_ms, 50.0),
            p99,
            percentile(&k.samples_ms, 100.0),
            k.warn_lines
        );
    }
    if !r.is_empty() {
        let _ = writeln!(
            o,
            "\nGoal: p99 under 100 ms. Slowest kind's p99: {worst:.1} ms ({}).",
            if worst < 100.0 { "met" } else { "not met" }
        );
    }
}

// ----------------------------------------------------------------------------
// Case 6
// ----------------------------------------------------------------------------

/// The goal for case 6: leases add at most this much to a prefix bind.
const LEASE_GOAL: f64 = 1.05;

fn leases(o: &mut String, l: &Leases) {
    let _ = writeln!(
        o,
        "What a lease table adds to a bind inside the prefix: case 1's operation \
         (socket + bind + listen + close) on {per} addresses in turn, same port, by a \
         binder process in a cgroup of its own (bind6 judges the task calling bind()), \
         timed in batches of {ops}. One pandad (guard, `lease_mode = \"open\"`) for the \
         whole case; the phases alternate {rounds} times per repeat in rotating order: \
         an empty lease table, or {n} leases held by {h} sibling cgroups {level} levels \
         below the cgroup2 root, {per} each, made with one `lease` request per holder \
         (and emptied with `release`) on pandad's API. \"Holder\": the binder in one of \
         them, binding its own leased addresses (one `LEASES` lookup and one \
         ancestor-cgroup compare). \"Outside\": a binder in a sibling cgroup that holds \
         nothing, binding addresses nobody leased (the `LEASES` lookup misses, then one \
         `HOLDERS` lookup per cgroup level with holders: here one). Each binder is \
         compared with itself in the no-lease phase of the same repeat; CPU time as in \
         case 1, and only the suite's program in effect.\n",
        per = thousands(f64::from(l.leases / l.holders.max(1))),
        ops = thousands(f64::from(l.ops_per_batch)),
        rounds = l.batches_per_repeat,
        n = thousands(f64::from(l.leases)),
        h = l.holders,
        level = l.holder_level,
    );
    let _ = writeln!(
        o,
        "| variant | CPU µs per operation | compared with | ratio | leases add, ns per operation | wall µs per operation |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    let find = |k: &str| l.variants.iter().find(|v| v.key == k);
    for v in &l.variants {
        let (base, ratio, added) = match v.baseline.as_deref().and_then(find) {
            Some(b) => {
                let added: Vec<f64> = v
                    .us_per_op
                    .iter()
                    .zip(&b.us_per_op)
                    .map(|(x, y)| 1000.0 * (x - y))
                    .collect();
                (
                    b.label.clone(),
                    ratio_text(&Summary::of(&paired_ratios(&v.us_per_op, &b.us_per_op))),
                    fmt_spread(&Summary::of(&added), 0),
                )
            }
            None => ("(baseline)".into(), "1".into(), "—".into()),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            v.label,
            fmt_spread(&Summary::of(&v.us_per_op), 2),
            base,
            ratio,
            added,
            fmt_spread(&Summary::of(&v.wall_us_per_op), 2)
        );
    }
    let ratio = |key: &str| {
        let v = find(key)?;
        let b = find(v.baseline.as_deref()?)?;
        Some(Summary::of(&paired_ratios(&v.us_per_op, &b.us_per_op)).median)
    };
    if let (Some(held), Some(walk)) = (ratio("holder-leased"), ratio("outside-leased")) {
        let verdict = |x: f64| if x <= LEASE_GOAL { "met" } else { "not met" };
        let _ = writeln!(
            o,
            "\nGoal: leases add ≤ {:.0} % to a prefix bind. Holder binding its own leased \
             address: {held:.3}× ({}); outside every holder, unleased address: {walk:.3}× ({}).",
            (LEASE_GOAL - 1.0) * 100.0,
            verdict(held),
            verdict(walk)
        );
    }
    let _ = writeln!(
        o,
        "\nbind6's own run time per path (BPF statistics in a separate pass, less the \
         empty program's figure over the same binds, as in case 1):\n"
    );
    bpf_table(o, &l.bpf, &l.variants);
    if let Some(line) = lease_run_time(l) {
        let _ = writeln!(o, "\n{line}");
    }
    let _ = writeln!(
        o,
        "\nEach batch ran with only the suite's own program in effect ({} batch{} retaken \
         in this run).",
        l.batches_retaken,
        if l.batches_retaken == 1 { "" } else { "es" }
    );
}

/// What leases add by bind6's own run time: each leased path's figure less
/// the no-lease one (paired by repeat), and that as a share of the no-lease
/// operation. It counts nothing but the program's work, so it is not lost
/// in the variance of the rest of the operation as the CPU-time ratios can
/// be on a busy machine.
fn lease_run_time(l: &Leases) -> Option<String> {
    let own = |variant: &str| -> Option<Vec<f64>> {
        let b = l.bpf.iter().find(|b| b.variant == variant)?;
        let own = b.own_ns_per_run();
        (!own.is_empty()).then_some(own)
    };
    let none = own("holder-none")?;
    let base = l.variants.iter().find(|v| v.key == "holder-none")?;
    let base_ns = 1000.0 * Summary::of(&base.us_per_op).median;
    let added = |variant: &str| -> Option<Summary> {
        let d: Vec<f64> = own(variant)?
            .iter()
            .zip(&none)
            .map(|(a, b)| a - b)
            .collect();
        Some(Summary::of(&d))
    };
    let (held, walk) = (added("holder-leased")?, added("outside-leased")?);
    let share = |s: &Summary| 100.0 * s.median / base_ns;
    let worst = share(&held).max(share(&walk));
    Some(format!(
        "By bind6's own run time, leases add {} ns per bind for a holder binding its \
         leased address and {} ns for the level walk (each less the no-lease path's, same \
         repeat): {:.1} % and {:.1} % of the no-lease operation ({} ns); goal ≤ {:.0} %: {}.",
        fmt_spread(&held, 0),
        fmt_spread(&walk, 0),
        share(&held),
        share(&walk),
        thousands(base_ns),
        (LEASE_GOAL - 1.0) * 100.0,
        if worst <= (LEASE_GOAL - 1.0) * 100.0 {
            "met"
        } else {
            "not met"
        }
    ))
}

// ----------------------------------------------------------------------------
// Formatting
// ----------------------------------------------------------------------------

fn summary_u64(v: &[u64]) -> Summary {
    Summary::of(&v.iter().map(|&x| x as f64).collect::<Vec<_>>())
}

fn max_u32(v: &[u32]) -> u32 {
    v.iter().copied().max().unwrap_or(0)
}

/// "MEDIAN (MIN–MAX)" with `prec` decimals (thousands separated when 0).
fn fmt_spread(s: &Summary, prec: usize) -> String {
    if s.n == 0 {
        return "—".into();
    }
    let f = |x: f64| {
        if prec == 0 {
            thousands(x)
        } else {
            format!("{x:.prec$}")
        }
    };
    if s.n == 1 {
        return f(s.median);
    }
    format!("{} ({}–{})", f(s.median), f(s.min), f(s.max))
}

fn ratio_text(s: &Summary) -> String {
    if s.n == 0 || !s.median.is_finite() {
        return "—".into();
    }
    let p = if s.median >= 100.0 {
        0
    } else if s.median >= 10.0 {
        1
    } else {
        3
    };
    if s.n == 1 {
        return format!("{:.p$}×", s.median);
    }
    format!("{:.p$}× ({:.p$}–{:.p$})", s.median, s.min, s.max)
}

fn fmt_seconds(s: &Summary) -> String {
    if s.median < 1.0 {
        fmt_ms(s)
    } else {
        format!("{} s", fmt_spread(s, 2))
    }
}

fn fmt_ms(s: &Summary) -> String {
    let ms = Summary {
        median: s.median * 1e3,
        min: s.min * 1e3,
        max: s.max * 1e3,
        q1: s.q1 * 1e3,
        q3: s.q3 * 1e3,
        n: s.n,
    };
    format!("{} ms", fmt_spread(&ms, 1))
}

fn fmt_mb(s: &Summary) -> String {
    let mb = Summary {
        median: s.median / 1024.0,
        min: s.min / 1024.0,
        max: s.max / 1024.0,
        q1: s.q1 / 1024.0,
        q3: s.q3 / 1024.0,
        n: s.n,
    };
    format!("{} MiB", fmt_spread(&mb, 1))
}

/// 12345.6 → "12,346".
pub fn thousands(x: f64) -> String {
    let neg = x < 0.0;
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-4096.0), "-4,096");
        let s = Summary::of(&[1.0, 1.02, 1.05]);
        assert_eq!(ratio_text(&s), "1.020× (1.000–1.050)");
        assert_eq!(fmt_spread(&s, 2), "1.02 (1.00–1.05)");
    }

    fn variant(key: &str, baseline: Option<&str>, us: &[f64]) -> HookVariant {
        HookVariant {
            key: key.into(),
            label: key.into(),
            baseline: baseline.map(Into::into),
            us_per_op: us.to_vec(),
            wall_us_per_op: us.to_vec(),
        }
    }

    #[test]
    fn leases_section_pairs_each_binder_with_itself() {
        let l = Leases {
            ops_per_batch: 2_000,
            batches_per_repeat: 6,
            leases: 1_000,
            holders: 10,
            holder_level: 2,
            variants: vec![
                variant("holder-none", None, &[5.0, 4.0]),
                variant("outside-none", None, &[5.0, 5.0]),
                variant("holder-leased", Some("holder-none"), &[5.1, 4.08]),
                variant("outside-leased", Some("outside-none"), &[5.5, 5.5]),
            ],
            bpf: Vec::new(),
            batches_retaken: 0,
        };
        let mut o = String::new();
        leases(&mut o, &l);
        assert!(o.contains("| 1.020× (1.020–1.020) | 90 (80–100) |"), "{o}");
        assert!(
            o.contains("its own leased address: 1.020× (met); outside every holder, unleased address: 1.100× (not met)"),
            "{o}"
        );
    }

    #[test]
    fn a_run_from_before_the_leases_case_still_parses() {
        let r: Results = serde_json::from_str(
            r#"{"machine":{"cpu":"c","nproc":2,"kernel":"k","mem_total_mb":1,
                "load_start":"","load_end":"","bind6_programs_at_start":0},
                "run":{"quick":true,"command":"c","repeats":1,"started":"s","wall_s":1.0},
                "hook":null,"scale":null,"setup":null,"churn":null,"daemon":null,
                "failures":[]}"#,
        )
        .unwrap();
        assert!(r.leases.is_none());
        assert!(markdown(&r, &[]).contains("## 6. Leases\n\n**Not measured: this case was not run"));
    }
}
