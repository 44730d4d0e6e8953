//! `cargo xtask ci`: everything CI checks, in one command a developer can run
//! before pushing (`.ci/run` adds only the toolchain components and setup).

use anyhow::Result;

use crate::{cmd, host, testing};

/// Tests, then formatting (both workspaces), then clippy with warnings as
/// errors; stops at the first failure.
pub fn ci() -> Result<()> {
    let totals = testing::test(&[])?;
    cmd::run(host::cargo().args(["fmt", "--all", "--", "--check"]))?;
    // panda-ebpf is its own workspace, so `--all` above does not reach it.
    cmd::run(host::cargo().args([
        "fmt",
        "--manifest-path",
        "panda-ebpf/Cargo.toml",
        "--",
        "--check",
    ]))?;
    cmd::run(host::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("ci: all checks passed");
    // Last, so that it is the closing line of the log.
    println!("{}", totals.summary());
    Ok(())
}
