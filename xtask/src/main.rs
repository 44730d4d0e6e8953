//! panda's developer tasks, run as `cargo xtask <task>` (alias in
//! .cargo/config.toml), so that setting up, building and testing panda is one
//! command on any machine and CI runs exactly what developers run.

mod ci;
mod cmd;
mod daemon;
mod ebpf;
mod host;
mod prereqs;
mod privilege;
mod testing;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

/// panda's developer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// One task per subcommand; each installs or builds what it depends on, so
/// any of them works on a fresh checkout.
#[derive(Subcommand)]
enum Task {
    /// Install what panda needs (Debian packages, bpf-linker); fast and
    /// silent when everything is present.
    Setup,
    /// Build the BPF programs into target/bpf/panda.bpf.o.
    BuildEbpf {
        /// Use panda-ebpf's release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build the BPF object, then pandad and panda (checks setup, never installs).
    Build {
        /// Release build.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, and run pandad in the foreground as root (Ctrl-C stops it).
    Run {
        /// Config file (default: config/panda.toml in the repository).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Release build.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, and run every test as root. Arguments after `--` go to
    /// `cargo test` (e.g. `-- --test bind -- --nocapture`).
    Test {
        #[arg(
            last = true,
            allow_hyphen_values = true,
            value_name = "CARGO_TEST_ARGS"
        )]
        args: Vec<OsString>,
    },
    /// What CI runs: test, then rustfmt --check (both workspaces), then
    /// clippy -D warnings.
    Ci,
    // ---------------------------------------------------------------------
    // Reserved for future tasks (not implemented yet):
    //   Bench   - `cargo xtask bench`: bind/connect cost over the subnet
    //             versus 127/8, in its own module (bench.rs).
    //   VmTest  - `cargo xtask vm-test`: the tests under QEMU (TCG) on other
    //             kernels, e.g. one whose bpf_setsockopt allows
    //             IPV6_FREEBIND, in its own module (vm_test.rs).
    // Add them here as variants and dispatch them in `main` below.
    // ---------------------------------------------------------------------
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().task) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one task; `Ok` carries the exit code (only `run` has its own: pandad's).
fn dispatch(task: Task) -> Result<ExitCode> {
    match task {
        Task::Setup => prereqs::ensure(prereqs::Mode::Install)?,
        Task::BuildEbpf { release } => {
            ebpf::build(release)?;
        }
        Task::Build { release } => {
            prereqs::ensure(prereqs::Mode::Check)?;
            ebpf::build(release)?;
            host::build_bins(release)?;
        }
        Task::Run { config, release } => return daemon::run(config, release),
        Task::Test { args } => {
            testing::test(&args)?;
        }
        Task::Ci => ci::ci()?,
    }
    Ok(ExitCode::SUCCESS)
}
