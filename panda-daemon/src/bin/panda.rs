//! panda: the command-line client of pandad.
use std::{ffi::OsString, net::Ipv6Addr, path::PathBuf, process::ExitCode};

use clap::{Args as ClapArgs, Parser, Subcommand};
use panda::{api, config::Config, doctor, exec, gc, leases::Request};

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
    /// Reserve prefix addresses for a cgroup; prints them, one a line.
    ///
    /// A process in the cgroup, or anywhere below it, may bind only its own
    /// addresses inside the prefix; no other process may bind them. With
    /// `lease_mode = "open"` (the default) processes outside every leased
    /// cgroup may still bind unleased addresses; with "leased-only", nothing
    /// in the prefix is bindable without a lease. Denied binds fail with
    /// EACCES and are counted (`lease_denied`). A lease lasts until it is
    /// released or its cgroup is removed (a unit that stops), and survives
    /// pandad restarts and crashes. Without --cgroup or --unit, the lease is
    /// for the cgroup panda itself runs in.
    ///
    /// Examples:
    ///   panda lease --unit web@blue.service
    ///   panda lease --cgroup /sys/fs/cgroup/ci/job-17 --count 4
    ///   panda lease --cgroup /ci/job-17 --addr fd00:1009:bacc::80
    #[command(verbatim_doc_comment)]
    Lease {
        #[command(flatten)]
        holder: Holder,
        /// The address to lease (repeatable) [default: one, picked by pandad].
        #[arg(long = "addr", value_name = "ADDR", conflicts_with = "count")]
        addrs: Vec<Ipv6Addr>,
        /// How many addresses pandad should pick (1..=1024).
        #[arg(long, value_name = "N")]
        count: Option<u32>,
        /// Print {"cgroup", "addrs"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Give leased addresses back: the --addr given, or every lease of the
    /// cgroup (--cgroup/--unit, else panda's own). Prints what was released.
    Release {
        #[command(flatten)]
        holder: Holder,
        /// The address to release (repeatable).
        #[arg(long = "addr", value_name = "ADDR")]
        addrs: Vec<Ipv6Addr>,
    },
    /// List the leases: address and holder cgroup (--json: every field).
    Leases {
        /// Print a JSON array of {addr, cgroup, cgroup_id, level, since, exec}.
        #[arg(long)]
        json: bool,
    },
    /// Run a command on a loopback address of its own.
    ///
    /// pandad makes a cgroup for the command (under `exec_cgroup`), leases an
    /// address to it and exports it as PANDA_ADDR; the command and its
    /// children may bind that address and no other in the prefix. panda
    /// forwards signals to the command, exits with its status, and then
    /// removes the cgroup (killing what the command left running in it) and
    /// the lease. If panda is killed, pandad collects the lease once the
    /// cgroup is empty. `$PANDA_ADDR` and `${PANDA_ADDR}` in CMD's arguments
    /// are replaced with the address (quote them so that your shell does
    /// not expand them first).
    ///
    /// Examples (a test harness starting servers side by side on one port):
    ///   panda exec -- ./my-server --listen '[$PANDA_ADDR]:8080'
    ///   panda exec -- sh -c './my-server --listen "[$PANDA_ADDR]:8080"'
    #[command(verbatim_doc_comment)]
    Exec {
        /// The address to lease, or `auto` for one pandad picks.
        #[arg(long, value_name = "ADDR|auto", default_value = "auto", value_parser = parse_exec_addr)]
        addr: ExecAddr,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
}

/// Whose lease: one of --cgroup or --unit, or neither (panda's own cgroup).
#[derive(ClapArgs)]
struct Holder {
    /// The cgroup: a path under the cgroup2 mount (/sys/fs/cgroup/a/b) or
    /// as /proc/PID/cgroup names it (/a/b).
    #[arg(long, value_name = "PATH", conflicts_with = "unit")]
    cgroup: Option<String>,
    /// A systemd unit, whose cgroup systemctl reports (it must be running).
    #[arg(long, value_name = "NAME")]
    unit: Option<String>,
}

/// `--addr` of exec.
#[derive(Clone, Copy)]
struct ExecAddr(Option<Ipv6Addr>);

fn parse_exec_addr(s: &str) -> Result<ExecAddr, String> {
    if s == "auto" {
        return Ok(ExecAddr(None));
    }
    s.parse()
        .map(|a| ExecAddr(Some(a)))
        .map_err(|_| format!("{s:?} is neither an IPv6 address nor `auto`"))
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

/// The addresses of a lease or release answer, one a line.
fn print_addrs(v: &serde_json::Value) {
    for a in v["addrs"].as_array().into_iter().flatten() {
        println!("{}", a.as_str().unwrap_or_default());
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
                println!("leases        {} (panda leases lists them)", s.leases);
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
        Command::Lease {
            holder,
            addrs,
            count,
            json,
        } => {
            let req = Request::Lease {
                cgroup: holder.cgroup,
                unit: holder.unit,
                addrs,
                count,
            };
            let v = api::request(socket, &serde_json::to_string(&req)?)?;
            if json {
                println!("{v}");
            } else {
                print_addrs(&v);
            }
        }
        Command::Release { holder, addrs } => {
            let req = Request::Release {
                cgroup: holder.cgroup,
                unit: holder.unit,
                addrs,
            };
            print_addrs(&api::request(socket, &serde_json::to_string(&req)?)?);
        }
        Command::Leases { json } => {
            let v = api::request(socket, &serde_json::to_string(&Request::Leases)?)?;
            let leases: Vec<panda::leases::Lease> = serde_json::from_value(v["leases"].clone())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&leases)?);
            } else if leases.is_empty() {
                println!("no leases");
            } else {
                println!("{:<40} CGROUP", "ADDRESS");
                for l in &leases {
                    let exec = l.exec.map(|e| format!(" (panda exec, pid {})", e.pid));
                    println!("{:<40} {}{}", l.addr, l.cgroup, exec.unwrap_or_default());
                }
            }
        }
        Command::Exec { addr, command } => return exec::run(socket, addr.0, &command),
        Command::Gc { dry_run } => print!("{}", gc::report(&gc::collect(&config.bpffs, dry_run)?)),
    }
    Ok(ExitCode::SUCCESS)
}
