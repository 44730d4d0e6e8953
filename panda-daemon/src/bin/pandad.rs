//! pandad: makes a prefix (default fd00:1009:bacc::/48) a node-local IPv6
//! loopback subnet in the network namespace it runs in, until stopped.
use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use panda::config::Config;

/// Make an IPv6 prefix a node-local loopback subnet (the IPv6 twin of 127/8).
///
/// pandad runs in the foreground in the network namespace it is started in.
/// It adds a `local` route for the prefix on `lo` (plus an anchor address),
/// an nftables table that keeps the prefix on `lo`, and BPF programs that let
/// bind() succeed on every address of the prefix while binds elsewhere stay
/// as strict as the kernel makes them. It signals readiness with sd_notify.
///
/// Ending it: SIGTERM or SIGINT undoes everything (a stop). SIGUSR2, or
/// SIGTERM while systemd is restarting the unit, exits leaving everything in
/// force, its BPF links pinned on bpffs, for the next pandad to adopt (a
/// hand-over: no bind fails in between). A crash leaves the same. While it
/// runs, pandad repairs its route, anchor, nftables table, sysctl and links
/// if anything removes or changes them. Needs root (CAP_BPF, CAP_NET_ADMIN,
/// CAP_SYS_ADMIN, CAP_PERFMON).
#[derive(Parser)]
#[command(name = "pandad", version, about, long_about)]
struct Args {
    /// Configuration file (TOML). Without it, the built-in defaults apply:
    /// prefix fd00:1009:bacc::/48, mechanism auto. See config/panda.toml.
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PANDA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pandad: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pandad: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(panda::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pandad: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
