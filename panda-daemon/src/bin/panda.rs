//! panda: the command-line client of pandad.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use panda::{api, config::Config};

/// Talk to pandad, the IPv6 loopback-subnet daemon.
#[derive(Parser)]
#[command(name = "panda", version, about)]
struct Args {
    /// pandad's API socket [default: the `socket` of --config, else
    /// /run/panda/pandad.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Read the socket path from this pandad configuration file.
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the prefix, the mechanism in force, readiness and counters.
    ///
    /// mechanism is `freebind` (the kernel sets IPV6_FREEBIND for prefix binds)
    /// or `guard` (ip_nonlocal_bind=1 plus BPF restoring strictness outside the
    /// prefix). `hookless` says whether raw/ping sockets, which skip the cgroup
    /// hooks, are held to the same rules.
    Status {
        /// Print JSON (stable field names, for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Print pandad's metrics in Prometheus text format (counters, repairs,
    /// uptime): for a node exporter's textfile collector, or a look by hand.
    /// The same is served over HTTP when `metrics_listen` is set.
    Metrics,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("panda: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let socket = match (args.socket, args.config) {
        (Some(s), _) => s,
        (None, Some(c)) => Config::load(&c)?.socket,
        (None, None) => Config::default().socket,
    };
    match args.command {
        Command::Status { json } => {
            let v = api::request(&socket, "status")?;
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
        Command::Metrics => print!("{}", api::request_text(&socket, "metrics")?),
    }
    Ok(())
}
