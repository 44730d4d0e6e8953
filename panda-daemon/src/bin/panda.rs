//! panda: the command-line client of pandad.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use panda::{api, config::Config, doctor, gc};

/// Talk to pandad, the IPv6 loopback-subnet daemon.
#[derive(Parser)]
#[command(name = "panda", version, about)]
struct Args {
    /// pandad's API socket [default: the `socket` of --config, else
    /// /run/panda/pandad.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The pandad configuration file to use (its socket; doctor and gc use
    /// its prefix, table, state_dir and bpffs too) [default: built-in defaults].
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the prefix, the mechanism in force, uptime, counters and repairs.
    ///
    /// mechanism is `freebind` (the kernel sets IPV6_FREEBIND for prefix binds)
    /// or `guard` (ip_nonlocal_bind=1 plus BPF restoring strictness outside the
    /// prefix). `hookless` says whether raw/ping sockets, which skip the cgroup
    /// hooks, are held to the same rules. `pins` is where the BPF links are
    /// pinned, and whether this pandad adopted them from its predecessor.
    /// The counters come from the BPF programs (kept across restarts);
    /// `repairs` counts what pandad put back since it started.
    Status {
        /// Print JSON (stable field names, for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Print pandad's metrics in Prometheus text format (counters, repairs,
    /// uptime): for a node exporter's textfile collector, or a look by hand.
    /// The same is served over HTTP when `metrics_listen` is set.
    Metrics,
    /// Diagnose the subnet in this network namespace: one line per check,
    /// ok / WARN / FAIL, with a fix for every problem.
    ///
    /// Checks kernel support, conflicts pandad cannot repair (other routes for
    /// the prefix, foreign nftables rules dropping loopback traffic, prefix
    /// addresses on other interfaces) and pandad's state against the kernel.
    /// Uses the config's prefix, table, socket, state_dir and bpffs. Exit
    /// status: 0 when nothing FAILed (WARNs allowed), 1 when something did,
    /// 2 for bad usage or a bad config.
    #[command(after_long_help = doctor::HELP)]
    Doctor {
        /// Print the checks as a JSON array of {check, status, detail, fix}
        /// (status: "ok", "warn" or "fail"; fix: null when nothing to do).
        #[arg(long)]
        json: bool,
    },
    /// Remove the pins of pandad instances whose network namespace is gone.
    ///
    /// Every pandad pins its BPF links under `<bpffs>/panda/<netns
    /// cookie>-<table>/` so that they survive a crash or restart. When the
    /// namespace itself is deleted, nothing will adopt them: their programs
    /// stay attached at the cgroup2 root and cost every bind on the host a
    /// few ns for nothing. A namespace counts as alive while any task is in
    /// it, any process holds an fd of it or a socket made in it, or it is
    /// bind-mounted (/run/netns, any mount namespace); the directory of a
    /// live namespace is never removed. Uses the config's `bpffs`. Prints
    /// what it removed; exit status 0.
    Gc {
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    // A config that does not load is bad usage, like a bad flag: exit 2.
    let config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(c) => {
            let mut c = c.unwrap_or_default();
            if let Some(s) = args.socket {
                c.socket = s;
            }
            c
        }
        Err(e) => {
            eprintln!("panda: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args.command, &config) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("panda: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, config: &Config) -> anyhow::Result<ExitCode> {
    let socket = &config.socket;
    match command {
        Command::Status { json } => {
            let v = api::request(socket, "status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let s: api::Status = serde_json::from_value(v)?;
                println!("prefix        {} (anchor {})", s.prefix, s.anchor);
                println!("mechanism     {}", s.mechanism);
                println!("ready         {}", s.ready);
                println!("pid           {} (up {} s)", s.pid, s.uptime_secs);
                println!("cgroup        {}", s.cgroup);
                println!("table         {}", s.table);
                println!("raw/ping bind {}", s.hookless.raw_ping_bind);
                println!("icmp send     {}", s.hookless.icmp_send);
                println!(
                    "pins          {}{}",
                    s.pin_dir,
                    if s.adopted {
                        " (adopted from the previous pandad)"
                    } else {
                        ""
                    }
                );
                println!("counters");
                for (k, v) in &s.counters {
                    println!("  {k:<20} {v}");
                }
                let total: u64 = s.repairs.values().sum();
                println!("repairs       {total}");
                for (k, v) in &s.repairs {
                    println!("  {k:<20} {v}");
                }
            }
        }
        Command::Metrics => print!("{}", api::request_text(socket, "metrics")?),
        Command::Doctor { json } => {
            let checks = doctor::run(config);
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                print!("{}", doctor::render(&checks));
            }
            if doctor::failed(&checks) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Gc { dry_run } => print!("{}", gc::report(&gc::collect(&config.bpffs, dry_run)?)),
    }
    Ok(ExitCode::SUCCESS)
}
