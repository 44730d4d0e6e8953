//! panda-bench: what panda's loopback subnet costs and what it buys,
//! measured side by side (`cargo xtask bench`, issue 4).
//!
//! * `panda-bench run` (as root) runs the six cases in throwaway network
//!   namespaces, writes the raw samples as JSON and prints the tables;
//! * `panda-bench report` (as the user) renders BENCHMARKS.md and the plots
//!   from that JSON, so that no file in the repository is owned by root;
//! * `panda-bench worker` is the scale case's listener-holding subprocess,
//!   `panda-bench binder` the leases case's binding one.
//!
//! A case that fails does not stop the others, but makes `run` exit
//! non-zero, and `report` refuses a run with a missing case.

mod batch;
mod binder;
mod bpfstats;
mod cases;
mod cgroup;
mod clock;
mod emptyprog;
mod interrupt;
mod machine;
mod netns;
mod pandad;
mod plan;
mod procfs;
mod report;
mod results;
mod sock;
mod stats;
mod tempdir;
mod worker;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::{cases::Ctx, plan::Plan, results::Results};

#[derive(Parser)]
#[command(name = "panda-bench", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the suite (needs root); write the samples as JSON, print tables.
    Run {
        /// Fewer repeats, smaller N, shorter windows (under 2 minutes).
        #[arg(long)]
        quick: bool,
        /// The pandad binary to measure.
        #[arg(long, value_name = "PATH")]
        pandad: PathBuf,
        /// Where to write the samples (JSON).
        #[arg(long, value_name = "PATH")]
        results: PathBuf,
        /// The command line to state in the report.
        #[arg(long, default_value = "panda-bench run")]
        command: String,
        /// Run only these cases (hook, scale, setup, churn, daemon, leases),
        /// for development; the report refuses a run that misses any.
        #[arg(long, value_delimiter = ',', value_name = "CASES")]
        only: Option<Vec<String>>,
    },
    /// Render BENCHMARKS.md and docs/bench/*.png from a complete run.
    Report {
        #[arg(long, value_name = "PATH")]
        results: PathBuf,
        /// The repository root (BENCHMARKS.md goes there).
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
    },
    /// (internal) Hold listeners for the scale case.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long, value_enum)]
        family: worker::Family,
        #[arg(long)]
        subnet: u16,
        #[arg(long)]
        first: u64,
        #[arg(long)]
        count: u32,
        #[arg(long)]
        port: u16,
    },
    /// (internal) Bind from a cgroup of its own for the leases case.
    #[command(hide = true)]
    Binder {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long)]
        subnet: u16,
        #[arg(long)]
        first: u64,
        #[arg(long)]
        count: u32,
        #[arg(long)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::Run {
            quick,
            pandad,
            results,
            command,
            only,
        } => run(quick, pandad, results, command, only),
        Cmd::Report { results, root } => report(&results, &root),
        Cmd::Worker {
            netns,
            family,
            subnet,
            first,
            count,
            port,
        } => worker::listen(&netns, family, subnet, first, count, port),
        Cmd::Binder {
            netns,
            cgroup,
            subnet,
            first,
            count,
            port,
        } => binder::serve(
            &netns,
            &cgroup,
            binder::Addrs {
                subnet,
                first,
                count,
                port,
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("panda-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

const CASES: [&str; 6] = ["hook", "scale", "setup", "churn", "daemon", "leases"];

fn run(
    quick: bool,
    pandad: PathBuf,
    out: PathBuf,
    command: String,
    only: Option<Vec<String>>,
) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("panda-bench run needs root (namespaces, BPF, nftables)");
    }
    if let Some(o) = &only {
        if let Some(bad) = o.iter().find(|c| !CASES.contains(&c.as_str())) {
            bail!("unknown case {bad:?} (cases: {})", CASES.join(", "));
        }
    }
    let wanted = |c: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == c));
    let pandad = std::path::absolute(&pandad)?;
    if !pandad.is_file() {
        bail!("no pandad at {}", pandad.display());
    }
    interrupt::install();
    netns::sweep_stale();
    tempdir::sweep_stale();
    cgroup::sweep_stale();

    let plan = Plan::new(quick);
    let t0 = Instant::now();
    let mut r = Results {
        machine: machine::describe()?,
        run: results::RunInfo {
            quick,
            command,
            repeats: plan.repeats,
            started: utc_now(),
            wall_s: 0.0,
        },
        hook: None,
        scale: None,
        setup: None,
        churn: None,
        daemon: None,
        leases: None,
        failures: Vec::new(),
    };
    let ctx = Ctx {
        plan,
        pandad,
        self_exe: std::env::current_exe().context("finding panda-bench's own path")?,
    };
    eprintln!(
        "panda-bench: {} run on {} ({} CPUs), kernel {}",
        if quick { "quick" } else { "full" },
        r.machine.cpu,
        r.machine.nproc,
        r.machine.kernel
    );

    fn case<T>(
        name: &str,
        title: &str,
        failures: &mut Vec<String>,
        f: impl FnOnce() -> Result<T>,
    ) -> Option<T> {
        if let Err(e) = interrupt::check() {
            failures.push(format!("{name}: {e}"));
            return None;
        }
        eprintln!("case {title}");
        let t = Instant::now();
        match f() {
            Ok(v) => {
                eprintln!("  done in {:.1} s", t.elapsed().as_secs_f64());
                Some(v)
            }
            Err(e) => {
                eprintln!("  FAILED: {e:#}");
                failures.push(format!("{name}: {e:#}"));
                None
            }
        }
    }
    let f = &mut r.failures;
    if wanted("hook") {
        r.hook = case("hook", "1: hook overhead", f, || cases::hook::run(&ctx));
    }
    if wanted("scale") {
        r.scale = case("scale", "2: scale", f, || cases::scale::run(&ctx));
    }
    if wanted("setup") {
        r.setup = case("setup", "3: set-up cost", f, || cases::setup::run(&ctx));
    }
    if wanted("churn") {
        r.churn = case("churn", "4: connection churn", f, || {
            cases::churn::run(&ctx)
        });
    }
    if wanted("daemon") {
        r.daemon = case("daemon", "5: daemon", f, || cases::daemon::run(&ctx));
    }
    if wanted("leases") {
        r.leases = case("leases", "6: leases", f, || cases::leases::run(&ctx));
    }
    r.run.wall_s = t0.elapsed().as_secs_f64();
    r.machine.load_end = machine::loadavg();

    write_results(&r, &out)?;
    println!("{}", report::markdown(&r, &[]));
    eprintln!(
        "panda-bench: {:.0} s; samples in {}",
        r.run.wall_s,
        out.display()
    );
    if !r.failures.is_empty() {
        bail!(
            "{} case(s) failed: {}",
            r.failures.len(),
            r.failures.join("; ")
        );
    }
    Ok(())
}

/// Writes the JSON into `out`, keeping the file's owner when it exists
/// (xtask creates it as the user before running us as root).
fn write_results(r: &Results, out: &Path) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(f), r)
        .with_context(|| format!("writing {}", out.display()))
}

fn report(results: &Path, root: &Path) -> Result<()> {
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("reading {}", results.display()))?;
    let r: Results = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a panda-bench result", results.display()))?;
    report::write(&r, root)
}

/// Now, UTC, as `YYYY-MM-DD HH:MM UTC` (no date crate for one line).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}
