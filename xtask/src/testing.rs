//! `cargo xtask test`: every test, with what they need set up and built, the
//! test binaries run as root (they create network namespaces, load BPF and
//! write nftables rules).

use std::ffi::OsString;

use anyhow::Result;

use crate::{cmd, ebpf, host, prereqs, privilege};

/// Installs what is missing, builds the BPF object and the binaries, then
/// runs `cargo test --workspace` with `cargo_test_args` appended (cargo test's
/// own syntax: a test name filter, `--test bind`, `-- --nocapture`…).
pub fn test(cargo_test_args: &[OsString]) -> Result<()> {
    prereqs::ensure(prereqs::Mode::Install)?;
    ebpf::build(false)?;
    host::build_bins(false)?;

    let mut c = host::cargo();
    c.args(["test", "--workspace"]);
    if !privilege::is_root() {
        // Compile as the user (root-owned files in target/ would break later
        // builds) and run only the test binaries as root, through cargo's
        // runner. The whole environment is kept: the tests read
        // PANDA_REQUIRE_PRIVILEGED and the variables cargo sets for them.
        let sudo = privilege::root_prefix(&["--preserve-env"])?;
        let runner = sudo
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        c.arg("--config")
            .arg(format!("target.'cfg(all())'.runner = [{runner}]"));
    }
    c.args(cargo_test_args);
    cmd::run(&mut c)
}
