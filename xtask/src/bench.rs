//! `cargo xtask bench [--quick]`: panda's benchmark suite (bench/, the
//! `panda-bench` binary), built in release mode and run as root, then its
//! report (BENCHMARKS.md and docs/bench/*.png) rendered as the user, so that
//! no file in the repository ends up owned by root.

use std::{fs::File, process::Command};

use anyhow::{Context, Result};

use crate::{cmd, ebpf, host, prereqs, privilege};

/// Sets up, builds everything in release mode, runs the suite (or only the
/// cases `only` names), writes the report (not for `only`: the report is
/// rendered from complete runs). Fails if any case fails or is missing.
pub fn bench(quick: bool, only: &[String]) -> Result<()> {
    prereqs::ensure(prereqs::Mode::Install)?;
    // Measure what users run: the optimised BPF object and binaries.
    ebpf::build(true)?;
    host::build_bins(true)?;
    cmd::run(host::cargo().args(["build", "--release", "-p", "panda-bench"]))?;

    let bench = host::bin("panda-bench", true);
    let out_dir = host::target_dir().join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("mkdir {}", out_dir.display()))?;
    // Created here, as the user: the root run only rewrites it.
    let results = out_dir.join("results.json");
    File::create(&results).with_context(|| format!("creating {}", results.display()))?;

    let mut command = String::from("cargo xtask bench");
    if quick {
        command.push_str(" --quick");
    }
    if !only.is_empty() {
        command.push_str(&format!(" --only {}", only.join(",")));
    }
    let mut run = privilege::command_as_root(&bench, &[])?;
    run.arg("run")
        .arg("--pandad")
        .arg(host::bin("pandad", true))
        .arg("--results")
        .arg(&results)
        .args(["--command", &command]);
    if quick {
        run.arg("--quick");
    }
    if !only.is_empty() {
        run.arg("--only").arg(only.join(","));
    }
    cmd::run(&mut run)?;
    if !only.is_empty() {
        eprintln!(
            "bench: only {} run; BENCHMARKS.md not rewritten (samples in {})",
            only.join(", "),
            results.display()
        );
        return Ok(());
    }

    cmd::run(
        Command::new(&bench)
            .arg("report")
            .arg("--results")
            .arg(&results)
            .arg("--root")
            .arg(host::root()),
    )
}
