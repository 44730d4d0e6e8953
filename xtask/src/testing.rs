//! `cargo xtask test`: every test, with what they need set up and built, the
//! test binaries run as root (they create network namespaces, load BPF and
//! write nftables rules).

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Write},
    process::Stdio,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, ebpf, host, prereqs, privilege};

/// Totals over every test binary of one `cargo test` run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Totals {
    /// Adds one libtest summary line ("test result: ok. 7 passed; 0 failed;
    /// 1 ignored; ..."); other lines are ignored.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }

    /// One line for the whole run, in the plain `N passed, N failed` form that
    /// log readers understand whatever the test runner.
    pub fn summary(&self) -> String {
        format!(
            "tests: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

/// Installs what is missing, builds the BPF object and the binaries, then
/// runs `cargo test --workspace` with `cargo_test_args` appended (cargo test's
/// own syntax: a test name filter, `--test bind`, `-- --nocapture`…). Prints
/// the totals last, and fails if any test failed or none ran.
pub fn test(cargo_test_args: &[OsString]) -> Result<Totals> {
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
    c.arg("--no-fail-fast").args(cargo_test_args);
    let totals = run_counting(&mut c)?;
    println!("{}", totals.summary());
    if totals.failed > 0 {
        bail!("{} test(s) failed", totals.failed);
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(totals)
}

/// Runs cargo test, passing its output through line by line while adding up
/// the summary lines of every test binary.
fn run_counting(c: &mut std::process::Command) -> Result<Totals> {
    eprintln!("$ {}", cmd::describe(c));
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", cmd::describe(c)))?;
    let mut totals = Totals::default();
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        totals.add_line(&line);
        writeln!(out, "{line}")?;
    }
    let status = child.wait()?;
    if !status.success() && totals.failed == 0 {
        bail!("`{}` failed ({status})", cmd::describe(c));
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_libtest_summaries() {
        let mut t = Totals::default();
        t.add_line("test result: ok. 7 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 3.82s");
        t.add_line("running 7 tests");
        t.add_line(
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 1 filtered out",
        );
        assert_eq!(
            t,
            Totals {
                passed: 9,
                failed: 3,
                ignored: 1
            }
        );
        assert_eq!(t.summary(), "tests: 9 passed, 3 failed, 1 skipped");
    }
}
