//! Reading the guest's console: libtest's summaries and the markers `/init`
//! prints (`@@panda-vm …`, see xtask/vm/init.sh), turned into one verdict.

use std::{fmt, time::Duration};

use crate::testing::Totals;

/// The prefix of every line `/init` prints for the host.
pub const MARKER: &str = "@@panda-vm ";

/// One test binary's run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryRun {
    pub name: String,
    pub totals: Totals,
    /// It printed a libtest summary (`test result: …`).
    pub summarized: bool,
    /// Its exit status; `None` when it never finished.
    pub exit: Option<i32>,
}

/// Everything the guest reported, accumulated line by line.
#[derive(Debug, Default, Clone)]
pub struct Transcript {
    /// `uname -r` in the guest.
    pub kernel: Option<String>,
    pub binaries: Vec<BinaryRun>,
    /// `@@panda-vm error …` lines: set-up failures in the guest.
    pub errors: Vec<String>,
    /// The first line of a kernel panic or oops, if any.
    pub kernel_trouble: Option<String>,
    /// `/init` got to its end.
    pub done: bool,
}

impl Transcript {
    /// Feeds one console line; returns true once the guest is done.
    pub fn feed(&mut self, line: &str) -> bool {
        if let Some(rest) = line.split_once(MARKER).map(|(_, r)| r.trim()) {
            let (what, arg) = rest.split_once(' ').unwrap_or((rest, ""));
            match what {
                "kernel" => self.kernel = Some(arg.to_string()),
                "begin" => self.binaries.push(BinaryRun {
                    name: short_name(arg),
                    totals: Totals::default(),
                    summarized: false,
                    exit: None,
                }),
                "end" => {
                    // "end PATH exit=N"
                    let code = arg
                        .rsplit_once("exit=")
                        .and_then(|(_, n)| n.trim().parse().ok())
                        .unwrap_or(-1);
                    if let Some(b) = self.binaries.last_mut() {
                        b.exit = Some(code);
                    }
                }
                "error" => self.errors.push(arg.to_string()),
                "done" => self.done = true,
                _ => {}
            }
            return self.done;
        }
        if let Some(b) = self.binaries.last_mut() {
            if b.exit.is_none() && line.trim_start().starts_with("test result: ") {
                b.totals.add_line(line);
                b.summarized = true;
            }
        }
        let trouble = [
            "Kernel panic",
            "BUG:",
            "Oops:",
            "WARNING: CPU:",
            "general protection fault",
        ];
        if self.kernel_trouble.is_none() && trouble.iter().any(|t| line.contains(t)) {
            self.kernel_trouble = Some(line.trim().to_string());
        }
        self.done
    }

    /// The sum over all binaries.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for b in &self.binaries {
            t.passed += b.totals.passed;
            t.failed += b.totals.failed;
            t.ignored += b.totals.ignored;
        }
        t
    }

    /// What went wrong besides failed tests (which are counted).
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .errors
            .iter()
            .map(|e| format!("guest set-up failed: {e}"))
            .collect();
        for b in &self.binaries {
            match b.exit {
                None => p.push(format!("{} did not finish", b.name)),
                Some(0) if !b.summarized => {
                    p.push(format!("{} printed no libtest summary", b.name))
                }
                Some(c) if c != 0 && b.totals.failed == 0 => p.push(format!(
                    "{} exited with status {c} but no test failed (crashed?)",
                    b.name
                )),
                _ => {}
            }
        }
        if let Some(t) = &self.kernel_trouble {
            p.push(format!("kernel: {t}"));
        }
        if !self.done {
            p.push("the guest did not run to the end of /init".to_string());
        } else if self.totals().passed + self.totals().failed == 0 && self.errors.is_empty() {
            p.push("no test ran".to_string());
        }
        p
    }
}

/// `/work/x/target/debug/deps/guard-0123abcd` → `guard`.
fn short_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    match file.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => file.to_string(),
    }
}

/// The outcome of the suite on one kernel.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What the kernel is called in the report (e.g. its release).
    pub label: String,
    pub totals: Totals,
    /// Failures other than failed tests: crashes, timeouts, set-up errors.
    pub problems: Vec<String>,
    /// Wall time of the VM run (boot to power-off).
    pub elapsed: Duration,
    /// The guest's `uname -r`, when it got that far.
    pub kernel: Option<String>,
}

impl Verdict {
    pub fn from_transcript(label: &str, t: &Transcript, elapsed: Duration) -> Verdict {
        Verdict {
            label: label.to_string(),
            totals: t.totals(),
            problems: t.problems(),
            elapsed,
            kernel: t.kernel.clone(),
        }
    }

    /// Every test passed and nothing else went wrong.
    pub fn ok(&self) -> bool {
        self.totals.failed == 0 && self.problems.is_empty()
    }
}

impl fmt::Display for Verdict {
    /// `vm-test: LABEL: N passed, N failed, N skipped (T s)`, then one
    /// indented line per problem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vm-test: {}: {} passed, {} failed, {} skipped ({:.0} s)",
            self.label,
            self.totals.passed,
            self.totals.failed,
            self.totals.ignored,
            self.elapsed.as_secs_f64()
        )?;
        for p in &self.problems {
            write!(f, "\n    {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &str) -> Transcript {
        let mut t = Transcript::default();
        for l in lines.lines() {
            t.feed(l);
        }
        t
    }

    #[test]
    fn a_clean_run() {
        let t = feed(
            "[    0.000000] Linux version 6.1.0-56-cloud-amd64\n\
             @@panda-vm kernel 6.1.0-56-cloud-amd64\n\
             @@panda-vm begin /w/target/debug/deps/bind-d00210b537d3eac5\n\
             running 3 tests\n\
             test a ... ok\n\
             test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 9.1s\n\
             @@panda-vm end /w/target/debug/deps/bind-d00210b537d3eac5 exit=0\n\
             @@panda-vm begin /w/target/debug/deps/guard-b291e15438858f5f\n\
             test result: ok. 5 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 20s\n\
             @@panda-vm end /w/target/debug/deps/guard-b291e15438858f5f exit=0\n\
             @@panda-vm done",
        );
        assert!(t.done);
        assert_eq!(t.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(t.binaries[0].name, "bind");
        assert_eq!(t.binaries[1].name, "guard");
        let v = Verdict::from_transcript("6.1", &t, Duration::from_secs(42));
        assert!(v.ok(), "{v}");
        assert_eq!(
            v.to_string(),
            "vm-test: 6.1: 8 passed, 0 failed, 1 skipped (42 s)"
        );
    }

    #[test]
    fn failures_are_counted_not_problems() {
        let t = feed(
            "@@panda-vm begin /x/guard-b291e15438858f5f\n\
             test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n\
             @@panda-vm end /x/guard-b291e15438858f5f exit=101\n\
             @@panda-vm done",
        );
        let v = Verdict::from_transcript("k", &t, Duration::ZERO);
        assert_eq!((v.totals.passed, v.totals.failed), (4, 2));
        assert!(v.problems.is_empty(), "{:?}", v.problems);
        assert!(!v.ok());
        // Only failures: still not "no test ran".
        let t = feed(
            "@@panda-vm begin /x/lifecycle\n\
             test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 7 filtered out\n\
             @@panda-vm end /x/lifecycle exit=101\n\
             @@panda-vm done",
        );
        assert!(t.problems().is_empty(), "{:?}", t.problems());
    }

    #[test]
    fn a_crash_is_a_problem() {
        let t = feed(
            "@@panda-vm begin /x/scope\n\
             thread 'main' has overflowed its stack\n\
             @@panda-vm end /x/scope exit=134\n\
             @@panda-vm begin /x/bind\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n\
             @@panda-vm end /x/bind exit=0\n\
             @@panda-vm done",
        );
        let v = Verdict::from_transcript("k", &t, Duration::ZERO);
        assert_eq!(
            v.problems,
            ["scope exited with status 134 but no test failed (crashed?)"]
        );
        assert!(!v.ok());
    }

    #[test]
    fn a_hang_or_panic_is_a_problem() {
        let t = feed(
            "@@panda-vm begin /x/lifecycle\n\
             running 9 tests\n\
             [  300.1] Kernel panic - not syncing: Attempted to kill init!",
        );
        let v = Verdict::from_transcript("k", &t, Duration::ZERO);
        assert_eq!(
            v.problems,
            [
                "lifecycle did not finish",
                "kernel: [  300.1] Kernel panic - not syncing: Attempted to kill init!",
                "the guest did not run to the end of /init",
            ]
        );
    }

    #[test]
    fn set_up_errors_and_empty_runs() {
        let t = feed("@@panda-vm error insmod /lib/modules/veth.ko failed\n@@panda-vm done");
        let v = Verdict::from_transcript("k", &t, Duration::ZERO);
        assert_eq!(
            v.problems,
            ["guest set-up failed: insmod /lib/modules/veth.ko failed"]
        );
        let t = feed("@@panda-vm done");
        assert_eq!(t.problems(), ["no test ran"]);
    }

    #[test]
    fn markers_survive_a_kernel_message_prefix() {
        // Console lines can start with the tail of a kernel message.
        let mut t = Transcript::default();
        assert!(t.feed("[ 12.3] random: crng init done@@panda-vm done"));
    }
}
