//! panda's developer tasks, run as `cargo xtask <task>` (alias in
//! .cargo/config.toml), so that setting up, building and testing panda is one
//! command on any machine and CI runs exactly what developers run.

mod bench;
mod ci;
mod cmd;
mod daemon;
mod ebpf;
mod host;
mod prereqs;
mod privilege;
mod testing;
mod vm;

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
    /// Boot other kernels under QEMU and run the integration tests in each:
    /// Debian's cloud kernels, downloaded into target/vm/ (never installed).
    /// Prints one verdict line per kernel. Arguments after `--` go to every
    /// test binary (libtest's: a name filter, `--nocapture`…). Uses KVM
    /// where a probe boot works, else TCG; PANDA_VM_ACCEL=kvm|tcg decides.
    VmTest {
        /// A Debian kernel: a series (`6.1`, `6.12`: its newest package) or
        /// an exact version (`6.1.0-56`, `6.1.0-56-cloud-amd64`). Repeat for
        /// several. Default: `--kernel 6.1 --kernel 6.12`.
        #[arg(long = "kernel", value_name = "VERSION")]
        kernels: Vec<String>,
        /// libtest's --test-threads inside the guest (2 vCPUs).
        #[arg(long, value_name = "N", default_value_t = vm::Options::default().test_threads)]
        test_threads: u32,
        /// Kill a guest still running after this many seconds (it fails).
        #[arg(long, value_name = "SECONDS", default_value_t = vm::Options::default().deadline.as_secs())]
        timeout: u64,
        /// Test the release build.
        #[arg(long)]
        release: bool,
        /// Build (once) a 6.12 kernel with contrib/kernel's patch and run
        /// the suite on it, expecting mechanism "freebind". Without
        /// --kernel, only that kernel runs.
        #[arg(long)]
        patched: bool,
        /// Export KEY=VALUE to the test binaries in the guest (repeatable;
        /// e.g. PANDA_TEST_ECHO=1 shows pandad's output live).
        #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        #[arg(last = true, allow_hyphen_values = true, value_name = "TEST_ARGS")]
        args: Vec<String>,
    },
    /// Set up, build in release mode, and run the benchmark suite as root
    /// (throwaway namespaces; under 10 minutes, `--quick` under 2); prints
    /// the tables and writes BENCHMARKS.md with plots in docs/bench/.
    Bench {
        /// Fewer repeats, N only up to 10,000, shorter windows.
        #[arg(long)]
        quick: bool,
        /// Run only these cases (hook, scale, setup, churn, daemon, leases),
        /// for development: the tables are printed, BENCHMARKS.md is left
        /// as it is (it is rendered from complete runs only).
        #[arg(long, value_delimiter = ',', value_name = "CASES")]
        only: Vec<String>,
    },
    // ---------------------------------------------------------------------
    // Reserved for future tasks (not implemented yet):
    // Add them here as variants and dispatch them in `main` below.
    // ---------------------------------------------------------------------
}

/// `KEY=VALUE` for `vm-test --env`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
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
        Task::Bench { quick, only } => bench::bench(quick, &only)?,
        Task::VmTest {
            kernels,
            test_threads,
            timeout,
            release,
            patched,
            env,
            args,
        } => {
            let opts = vm::Options {
                test_threads,
                deadline: std::time::Duration::from_secs(timeout),
                test_args: args,
                env,
                release,
            };
            if patched {
                vm::patched::vm_test_with_patched(&kernels, &opts)?
            } else {
                vm::vm_test(&kernels, &opts)?
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
