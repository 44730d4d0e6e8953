//! `cargo xtask vm-test`: the privileged integration suite on other kernels,
//! each booted under QEMU with a generated initramfs.
//!
//! The pieces:
//!
//! - [`debian`]: Debian's cloud kernels, downloaded and unpacked into
//!   `target/vm/debian/` (never installed on the host);
//! - [`modules`]: the loadable modules the suite needs (nf_tables, nft_fib,
//!   veth…) and their dependencies, in `insmod` order;
//! - [`initramfs`]: the guest's whole file system as one `newc` archive:
//!   busybox, the host's `ip`/`nft`/`nsenter`/`sysctl` and their libraries,
//!   pandad, panda and the test binaries at the paths they were built with,
//!   and `/init` (xtask/vm/init.sh), which runs the tests and powers off;
//! - [`qemu`]: the boot, with KVM where a probe shows it works and TCG
//!   (software emulation) otherwise, the serial console streamed and a
//!   deadline;
//! - [`verdict`]: the console read back into one verdict per kernel.
//!
//! # Running the suite on a kernel of your own
//!
//! [`run_suite`] boots any x86-64 kernel image (a `bzImage` or Debian's
//! `vmlinuz`) and runs the suite in it:
//!
//! ```ignore
//! let verdict = vm::run_suite(&bzimage, None, "6.12-freebind", &[("PANDA_X", "1")])?;
//! println!("{verdict}");
//! if !verdict.ok() { bail!("...") }
//! ```
//!
//! `modules` is the kernel's `lib/modules/RELEASE` directory when the suite's
//! modules (see [`modules::SUITE_MODULES`]) are loadable modules there;
//! `None` means they are built in. The guest kernel needs, built in: a
//! serial 8250 console, initramfs (`BLK_DEV_INITRD`), `DEVTMPFS`, `TMPFS`,
//! `PROC_FS`, `SYSFS`, `CGROUPS`, `NET_NS`, `IPV6`, `BPF_SYSCALL`,
//! `CGROUP_BPF`, and `DEBUG_INFO_BTF` (pandad needs BTF for guard mode; the
//! tests require `/sys/kernel/btf/vmlinux` unless
//! `PANDA_EXPECT_MECHANISM=freebind`).
//! `extra_env` is exported to the test binaries (after
//! `PANDA_REQUIRE_PRIVILEGED=1`, which every guest run sets).

pub mod debian;
pub mod initramfs;
pub mod modules;
pub mod patched;
pub mod qemu;
pub mod verdict;

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{cmd, ebpf, host, prereqs};
use verdict::Transcript;
pub use verdict::Verdict;

/// The kernel command line: console on the first serial port, reboot (so
/// QEMU exits, `-no-reboot`) at once on a panic, and only warnings and worse
/// from the kernel on the console.
const APPEND: &str = "console=ttyS0 panic=-1 quiet";

/// Guest memory: the initramfs (~60 MiB, held twice while it is unpacked)
/// lives in it, and the tests run several pandad at once.
const MEMORY: &str = "2G";

/// How a suite run behaves (the `vm-test` options).
#[derive(Debug, Clone)]
pub struct Options {
    /// libtest's `--test-threads` in the guest.
    pub test_threads: u32,
    /// A VM still running after this long is killed and fails.
    pub deadline: Duration,
    /// More arguments for every test binary (a name filter, `--nocapture`…).
    pub test_args: Vec<String>,
    /// More variables for the test binaries (after the caller's own).
    pub env: Vec<(String, String)>,
    /// Test the release build.
    pub release: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            test_threads: 2,
            deadline: Duration::from_secs(15 * 60),
            test_args: Vec::new(),
            env: Vec::new(),
            release: false,
        }
    }
}

/// The built test suite: what goes into every guest.
pub struct Suite {
    /// pandad and panda (at the paths the tests have compiled in).
    bins: Vec<PathBuf>,
    /// panda-daemon's test binaries (integration and library), by name.
    tests: Vec<PathBuf>,
}

impl Suite {
    /// Installs what is missing (`setup`), builds the BPF object, the
    /// binaries and the integration tests, and finds them.
    pub fn build(release: bool) -> Result<Suite> {
        prereqs::ensure(prereqs::Mode::Install)?;
        qemu::find()?;
        ebpf::build(release)?;
        let mut c = host::cargo();
        c.args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
            "-p",
            "panda-daemon",
            "--tests",
        ]);
        if release {
            c.arg("--release");
        }
        eprintln!("$ {}", cmd::describe(&c));
        let out = c
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("could not start `{}`", cmd::describe(&c)))?;
        if !out.status.success() {
            bail!("building the tests failed ({})", out.status);
        }
        let suite = Suite::from_cargo_json(&String::from_utf8_lossy(&out.stdout))?;
        for exe in suite.bins.iter().chain(&suite.tests) {
            initramfs::check_not_hidden(exe)?;
        }
        Ok(suite)
    }

    /// Reads cargo's `--message-format=json` artifacts: the integration test
    /// executables (target kind `test`), the library's unit tests (kind
    /// `lib`, test profile) and the binaries (kind `bin`, not their unit-test
    /// builds).
    fn from_cargo_json(json_lines: &str) -> Result<Suite> {
        let mut bins = Vec::new();
        let mut tests = Vec::new();
        for line in json_lines.lines() {
            let Ok(msg) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            let Some(exe) = msg["executable"].as_str() else {
                continue;
            };
            let kinds: Vec<&str> = msg["target"]["kind"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let is_test = msg["profile"]["test"].as_bool().unwrap_or(false);
            // The library's own tests too: its netlink, nftables, sysctl and
            // BTF tests run against the kernel (in private namespaces).
            if kinds.contains(&"test") || (kinds.contains(&"lib") && is_test) {
                tests.push(PathBuf::from(exe));
            } else if kinds.contains(&"bin") && !is_test {
                bins.push(PathBuf::from(exe));
            }
        }
        tests.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
        tests.dedup();
        bins.sort();
        bins.dedup();
        if tests.is_empty() {
            bail!("cargo built no integration test of panda-daemon");
        }
        if bins.is_empty() {
            bail!("cargo reported no pandad/panda binary");
        }
        Ok(Suite { bins, tests })
    }

    /// Boots `kernel` with the suite and reports (see [`run_suite`]).
    pub fn run(
        &self,
        kernel: &Path,
        modules: Option<&Path>,
        label: &str,
        extra_env: &[(&str, &str)],
        opts: &Options,
    ) -> Result<Verdict> {
        let work = host::target_dir()
            .join("vm")
            .join("run")
            .join(sanitize(label));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;

        let staged = match modules {
            Some(dir) => modules::ModuleTree::open(dir)?
                .stage(modules::SUITE_MODULES, &work.join("modules"))
                .with_context(|| format!("the modules the suite needs from {label}"))?,
            None => Vec::new(),
        };
        let mut env = vec![
            ("PANDA_REQUIRE_PRIVILEGED".to_string(), "1".to_string()),
            // The SIGKILL restarts under a bind every millisecond run on the
            // host only (20 rounds). In one of three runs the Debian 6.1 guest
            // under TCG soft-locked both vCPUs during them (pandad and the
            // binding thread, each stuck in the kernel for 600+ s), which
            // kills the whole matrix; not seen on the host, 6.12 or the
            // patched kernel, not yet explained (suspect: trampoline
            // patching for the LSM link under TCG). The guests still run the
            // hand-over and systemd restart tests, which adopt the pins too.
            ("PANDA_RESTART_ROUNDS".to_string(), "0".to_string()),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        env.extend(opts.env.iter().cloned());
        let mut test_args = vec![format!("--test-threads={}", opts.test_threads.max(1))];
        test_args.extend(opts.test_args.iter().cloned());
        let payload = self
            .bins
            .iter()
            .chain(&self.tests)
            .map(|exe| Ok((initramfs::stripped(exe, &work.join("bin"))?, exe.clone())))
            .collect::<Result<Vec<_>>>()?;
        let tree = initramfs::guest_tree(&initramfs::Userspace {
            payload: &payload,
            tests: &self.tests,
            modules: &staged,
            env: &env,
            test_args: &test_args,
        })?;
        let initrd = work.join("initramfs.cpio");
        let size = tree.write_to(&initrd)?;

        let accel = qemu::accel(kernel)?;
        println!(
            "vm-test: booting {label} ({}, {} modules, {} MiB initramfs, {})",
            kernel.display(),
            staged.len(),
            size >> 20,
            accel.name()
        );
        let boot = qemu::Boot {
            kernel,
            initrd: Some(&initrd),
            append: APPEND,
            memory: MEMORY,
            cpus: 2,
            accel,
            deadline: opts.deadline,
            first_output: Some(Duration::from_secs(120)),
        };
        let mut transcript = Transcript::default();
        let mut console = fs::File::create(work.join("console.log"))?;
        let started = std::time::Instant::now();
        let mut booted = None;
        let ended = {
            let stdout = std::io::stdout();
            boot.run(|line| {
                let _ = writeln!(console, "{line}");
                let _ = writeln!(stdout.lock(), "{line}");
                let done = transcript.feed(line);
                if booted.is_none() && transcript.kernel.is_some() {
                    booted = Some(started.elapsed());
                }
                done
            })?
        };
        if let Some(b) = booted {
            eprintln!(
                "vm-test: {label}: /init started {:.1} s after QEMU",
                b.as_secs_f64()
            );
        }
        let mut verdict = Verdict::from_transcript(label, &transcript, ended.elapsed);
        if !transcript.done {
            match ended.status {
                None => verdict
                    .problems
                    .push(format!("killed at the {:?} deadline", opts.deadline)),
                Some(st) => {
                    let err = ended.qemu_stderr.trim();
                    verdict.problems.push(format!(
                        "QEMU exited ({st}) before the guest finished{}{err}",
                        if err.is_empty() { "" } else { ": " }
                    ));
                }
            }
        }
        if verdict.ok() {
            // Large; kept after a failure, to boot the guest again by hand.
            let _ = fs::remove_file(&initrd);
            let _ = fs::remove_dir_all(work.join("bin"));
        }
        eprintln!(
            "vm-test: {label}: console log in {}",
            work.join("console.log").display()
        );
        Ok(verdict)
    }
}

/// A label as a directory name.
fn sanitize(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Builds the suite (debug profile), boots `kernel` (a bzImage/vmlinuz) with
/// `modules` (its `lib/modules/RELEASE`, or `None` when everything the suite
/// needs is built in), runs every integration test in it with `extra_env`
/// exported, and returns the verdict (print it with `{}`; `ok()` says
/// whether it passed). `label` names the kernel in the report and the work
/// directory `target/vm/run/LABEL/` (initramfs, console.log).
///
/// Errors are reserved for failing to get as far as booting; test failures,
/// crashes and timeouts are in the verdict.
#[allow(dead_code)] // the entry point for kernels built elsewhere in xtask
pub fn run_suite(
    kernel: &Path,
    modules: Option<&Path>,
    label: &str,
    extra_env: &[(&str, &str)],
) -> Result<Verdict> {
    let opts = Options::default();
    Suite::build(opts.release)?.run(kernel, modules, label, extra_env, &opts)
}

/// `cargo xtask vm-test`: every kernel of `specs` (default: the newest 6.1
/// and 6.12 Debian cloud kernels), one after the other; prints one verdict
/// line per kernel at the end, then the totals, and fails if any kernel
/// failed.
pub fn vm_test(specs: &[String], opts: &Options) -> Result<()> {
    let specs: Vec<String> = if specs.is_empty() {
        debian::DEFAULT_SERIES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        specs.to_vec()
    };
    qemu::find()?;
    let versions = debian::resolve(&specs)?;
    let kernels = versions
        .iter()
        .map(|v| debian::fetch(v))
        .collect::<Result<Vec<_>>>()?;
    let suite = Suite::build(opts.release)?;
    let mut verdicts = Vec::new();
    for k in &kernels {
        let mut v = suite.run(&k.image, Some(&k.modules), &k.release, &[], opts)?;
        if v.kernel.as_ref().is_some_and(|r| *r != k.release) {
            v.problems.push(format!(
                "the guest ran kernel {}, not {}",
                v.kernel.as_deref().unwrap_or("?"),
                k.release
            ));
        }
        println!("{v}");
        verdicts.push(v);
    }
    println!();
    let mut total = crate::testing::Totals::default();
    for v in &verdicts {
        println!("{v}");
        total.passed += v.totals.passed;
        total.failed += v.totals.failed;
        total.ignored += v.totals.ignored;
    }
    println!(
        "vm-test: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.ignored
    );
    let failed: Vec<&str> = verdicts
        .iter()
        .filter(|v| !v.ok())
        .map(|v| v.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tests_and_binaries_in_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"panda"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"pandad"},"profile":{"test":false},"executable":"/w/target/debug/pandad"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"pandad"},"profile":{"test":true},"executable":"/w/target/debug/deps/pandad-0123456789abcdef"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"panda"},"profile":{"test":false},"executable":"/w/target/debug/panda"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"scope"},"profile":{"test":true},"executable":"/w/target/debug/deps/scope-1"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"bind"},"profile":{"test":true},"executable":"/w/target/debug/deps/bind-2"}
{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"panda"},"profile":{"test":true},"executable":"/w/target/debug/deps/panda-3"}
{"reason":"build-finished","success":true}"#;
        let s = Suite::from_cargo_json(json).unwrap();
        assert_eq!(
            s.bins,
            [
                PathBuf::from("/w/target/debug/panda"),
                PathBuf::from("/w/target/debug/pandad")
            ]
        );
        assert_eq!(
            s.tests,
            [
                PathBuf::from("/w/target/debug/deps/bind-2"),
                PathBuf::from("/w/target/debug/deps/panda-3"),
                PathBuf::from("/w/target/debug/deps/scope-1")
            ]
        );
        assert!(Suite::from_cargo_json("").is_err());
    }

    #[test]
    fn labels_become_directory_names() {
        assert_eq!(
            sanitize("6.12.117+deb12-cloud-amd64"),
            "6.12.117+deb12-cloud-amd64"
        );
        assert_eq!(sanitize("a/b c"), "a_b_c");
    }
}
