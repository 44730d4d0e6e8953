//! Booting a kernel and an initramfs under QEMU, with the serial console
//! streamed back line by line and a deadline that kills a hung guest.
//!
//! KVM is used only where a quick probe boot succeeds: on some machines
//! `/dev/kvm` exists but cannot run a guest (`-cpu host` aborts), so the
//! default is TCG (software emulation), which works everywhere.
//! `PANDA_VM_ACCEL=tcg|kvm` skips the probe.

use std::{
    env,
    fs::OpenOptions,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{mpsc, OnceLock},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::cmd;

pub const QEMU: &str = "qemu-system-x86_64";

/// How the guest CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            // `max` offers RDRAND, so the guest's RNG is ready at once.
            Accel::Tcg => &["-accel", "tcg", "-cpu", "max"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// One guest boot.
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub append: &'a str,
    pub memory: &'a str,
    pub cpus: u32,
    pub accel: Accel,
    /// Killed when still running after this long.
    pub deadline: Duration,
    /// Killed when the console has said nothing after this long (a guest
    /// that cannot even start printing).
    pub first_output: Option<Duration>,
}

/// How a boot ended.
#[derive(Debug)]
pub struct Ended {
    /// QEMU's exit status; `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    /// What QEMU itself wrote to stderr (its own errors, not the guest's).
    pub qemu_stderr: String,
}

impl Boot<'_> {
    fn command(&self) -> Command {
        let mut c = Command::new(QEMU);
        c.args(self.accel.args())
            .args(["-m", self.memory, "-smp"])
            .arg(self.cpus.to_string())
            // No default devices (NIC, VGA…); only the serial console, on
            // stdout. The guest powers off (or its panic reboots) to end.
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .args(["-serial", "stdio", "-monitor", "none"])
            .arg("-kernel")
            .arg(self.kernel);
        if let Some(initrd) = self.initrd {
            c.arg("-initrd").arg(initrd);
        }
        c.arg("-append").arg(self.append);
        c
    }

    /// Boots, calling `on_line` with every console line (without `\r\n`) as
    /// it arrives; `on_line` returns `true` once the guest said all it had
    /// to (then QEMU gets a short grace to power off before it is killed).
    pub fn run(&self, mut on_line: impl FnMut(&str) -> bool) -> Result<Ended> {
        let mut c = self.command();
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!("$ {}", cmd::describe(&c));
        let start = Instant::now();
        let mut child = c
            .spawn()
            .with_context(|| format!("could not start {QEMU} (`cargo xtask setup` installs it)"))?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let stderr = child.stderr.take().context("qemu stderr")?;
        let (tx, rx) = mpsc::channel::<Out>();
        let tx_err = tx.clone();
        let reader = thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                        if tx.send(Out::Console(line)).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        // QEMU's own messages, passed on as they come: some (a KVM internal
        // error) leave the VM paused for ever, so they end the boot at once.
        let err_reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx_err.send(Out::Qemu(line)).is_err() {
                    break;
                }
            }
        });
        let mut end = start + self.deadline;
        if let Some(d) = self.first_output {
            end = end.min(start + d);
        }
        let mut heard = false;
        let mut finished = false;
        let mut killed = false;
        let mut qemu_stderr = String::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Out::Console(line)) => {
                    if !heard {
                        heard = true;
                        end = start + self.deadline;
                    }
                    if on_line(&line) && !finished {
                        finished = true;
                        end = end.min(Instant::now() + Duration::from_secs(30));
                    }
                }
                Ok(Out::Qemu(line)) => {
                    eprintln!("qemu: {line}");
                    qemu_stderr.push_str(&line);
                    qemu_stderr.push('\n');
                    if line.contains("KVM internal error") {
                        let _ = child.kill();
                        killed = true;
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !heard {
                        eprintln!(
                            "vm: the guest printed nothing in {:?}; killing QEMU",
                            start.elapsed()
                        );
                    } else if !finished {
                        eprintln!(
                            "vm: the guest is still running after {:?}; killing QEMU",
                            self.deadline
                        );
                    }
                    let _ = child.kill();
                    killed = true;
                    break;
                }
            }
        }
        let status = child.wait().context("waiting for QEMU")?;
        let _ = reader.join();
        let _ = err_reader.join();
        // Whatever QEMU said after the loop stopped listening.
        while let Ok(out) = rx.try_recv() {
            if let Out::Qemu(line) = out {
                qemu_stderr.push_str(&line);
                qemu_stderr.push('\n');
            }
        }
        Ok(Ended {
            status: (!killed).then_some(status),
            elapsed: start.elapsed(),
            qemu_stderr,
        })
    }
}

/// A line from QEMU: the guest's serial console, or QEMU's own stderr.
enum Out {
    Console(String),
    Qemu(String),
}

/// The accelerator to use: `PANDA_VM_ACCEL` if set, else KVM when
/// `/dev/kvm` opens and a probe boot of `kernel` runs to its end, else TCG.
/// Probed once per xtask run.
pub fn accel(kernel: &Path) -> Result<Accel> {
    static CHOSEN: OnceLock<Accel> = OnceLock::new();
    if let Some(a) = CHOSEN.get() {
        return Ok(*a);
    }
    let a = match env::var("PANDA_VM_ACCEL").as_deref() {
        Ok("kvm") => Accel::Kvm,
        Ok("tcg") => Accel::Tcg,
        Ok(other) if !other.is_empty() => bail!("PANDA_VM_ACCEL must be kvm or tcg, not {other:?}"),
        _ => probe_kvm(kernel),
    };
    Ok(*CHOSEN.get_or_init(|| a))
}

/// Boots `kernel` with no initramfs under KVM: it must get as far as
/// panicking for want of a root file system, which takes a second or two
/// where KVM works.
fn probe_kvm(kernel: &Path) -> Accel {
    let usable = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        eprintln!("vm: /dev/kvm is not usable; using TCG (software emulation)");
        return Accel::Tcg;
    }
    let boot = Boot {
        kernel,
        initrd: None,
        append: "console=ttyS0 panic=-1",
        memory: "256M",
        cpus: 1,
        accel: Accel::Kvm,
        deadline: Duration::from_secs(20),
        // Where KVM works the kernel's banner comes within a second.
        first_output: Some(Duration::from_secs(5)),
    };
    let mut panicked = false;
    let ended = boot.run(|line| {
        if line.contains("Kernel panic") {
            panicked = true;
        }
        false
    });
    match ended {
        Ok(e) if panicked && e.status.is_some() => {
            eprintln!("vm: KVM works here ({:.1?} probe boot)", e.elapsed);
            Accel::Kvm
        }
        Ok(e) => {
            let why = e
                .qemu_stderr
                .lines()
                .next()
                .unwrap_or("the probe guest did not boot");
            eprintln!("vm: KVM does not work here ({why}); using TCG (software emulation)");
            Accel::Tcg
        }
        Err(e) => {
            eprintln!("vm: KVM probe failed ({e:#}); using TCG (software emulation)");
            Accel::Tcg
        }
    }
}

/// `QEMU`'s path, for a clear error before anything is built.
pub fn find() -> Result<PathBuf> {
    cmd::which(QEMU).with_context(|| {
        format!(
            "{QEMU} is not installed (Debian: qemu-system-x86; `cargo xtask setup` installs it)"
        )
    })
}
