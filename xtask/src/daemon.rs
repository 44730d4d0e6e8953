//! `cargo xtask run`: pandad in the foreground, as root, with Ctrl-C going to
//! it and its exit status coming back out of xtask.

use std::{
    os::unix::process::{CommandExt, ExitStatusExt},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, ebpf, host, prereqs, privilege};

/// Sets up, builds and runs pandad with `config` (default: the repository's
/// documented `config/panda.toml`), returning pandad's exit status.
pub fn run(config: Option<PathBuf>, release: bool) -> Result<ExitCode> {
    let config = match config {
        // A path the user typed is relative to where they typed it.
        Some(path) => std::path::absolute(&path)
            .with_context(|| format!("bad config path {}", path.display()))?,
        None => host::root().join("config/panda.toml"),
    };
    if !config.is_file() {
        bail!("config file {} does not exist", config.display());
    }

    prereqs::ensure(prereqs::Mode::Install)?;
    ebpf::build(release)?;
    host::build_bins(release)?;

    let pandad = host::bin("pandad", release);
    // Keep the log filter (PANDA_LOG) across sudo; the rest of the environment is
    // reset as sudo normally does.
    let mut daemon =
        privilege::command_as_root(&pandad, &["--preserve-env=PANDA_LOG,RUST_BACKTRACE"])?;
    daemon.arg("--config").arg(&config);

    // pandad shares our foreground process group, so Ctrl-C reaches it
    // directly; xtask ignores SIGINT while it waits so it can report how
    // pandad ended. Ignored signals survive exec, so the child restores the
    // default before exec.
    // SAFETY: signal() is async-signal-safe and the closure touches nothing else.
    unsafe {
        daemon.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let previous = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = cmd::status(&mut daemon);
    unsafe { libc::signal(libc::SIGINT, previous) };
    let status = status?;

    Ok(match (status.code(), status.signal()) {
        (Some(0), _) => ExitCode::SUCCESS,
        (Some(code), _) => {
            eprintln!("pandad exited with status {code}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        (None, Some(signal)) => {
            eprintln!("pandad was killed by signal {signal}");
            // The shell's convention for "killed by signal N".
            ExitCode::from(u8::try_from(128 + signal).unwrap_or(1))
        }
        (None, None) => ExitCode::FAILURE,
    })
}
