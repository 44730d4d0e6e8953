//! `cargo xtask ci`: everything CI checks, in one command a developer can run
//! before pushing (`.ci/run` adds only the toolchain components and setup).

use anyhow::Result;

use crate::{bench, cmd, host, testing, vm};

/// Tests on the host kernel, then the kernel matrix under QEMU (Debian 6.1
/// and 6.12, and the patched 6.12 that runs the freebind mechanism; release
/// builds), then the
/// quick benchmark (its figures are not asserted; a crash or a missing case
/// fails it), then formatting (both workspaces) and clippy with warnings as
/// errors; stops at the first failure.
pub fn ci() -> Result<()> {
    let totals = testing::test(&[])?;
    // Release builds in the guests: under TCG a debug pandad takes ~10 s to
    // start (BTF parsing, probes), and the suite starts it a hundred times.
    vm::patched::vm_test_with_patched(
        &["6.1".to_string(), "6.12".to_string()],
        &vm::Options {
            release: true,
            ..vm::Options::default()
        },
    )?;
    bench::bench(true, &[])?;
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
