//! `cargo xtask setup`: what panda needs on the machine, installed when
//! missing (or only reported, for `build`).
//!
//! Checking is cheap (one dpkg-query, a PATH lookup), so every task that needs
//! the tools can call this and stay fast when everything is present.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{cmd, ebpf, host, privilege};

/// Debian packages panda builds or runs with, and why each is needed.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "a rustc with a prebuilt `core` for the BPF targets",
    ),
    ("cargo-web", "the cargo that goes with it"),
    ("libstd-rust-web-dev-bpf", "that BPF `core`"),
    ("llvm-22-dev", "the LLVM bpf-linker is built against"),
    ("nftables", "panda's scope rules (nft)"),
    ("iproute2", "routes and network namespaces (ip)"),
    ("bpftool", "inspecting loaded programs"),
    ("util-linux", "nsenter/unshare for the tests"),
    ("socat", "real-socket checks in the tests"),
    ("fonts-dejavu-core", "the font of the benchmark plots"),
    ("qemu-system-x86", "vm-test: booting other kernels"),
    ("busybox-static", "vm-test: the guest's shell and tools"),
    (
        "xz-utils",
        "vm-test: unpacking Debian's .ko.xz kernel modules",
    ),
    (
        "linux-source-6.12",
        "vm-test --patched: the kernel it patches and builds",
    ),
    ("build-essential", "vm-test --patched: gcc, make, patch"),
    ("bc", "vm-test --patched: the kernel build uses it"),
    ("flex", "vm-test --patched: kconfig"),
    ("bison", "vm-test --patched: kconfig"),
    ("libelf-dev", "vm-test --patched: objtool"),
];

/// Where Debian's llvm-22-dev lives; bpf-linker's build finds LLVM through it.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Whether to install what is missing or only report it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `setup`, `run`, `test`: install missing things (root or sudo).
    Install,
    /// `build`: never change the machine; say what is missing and let the
    /// build itself fail if it needs it.
    Check,
}

/// Makes sure panda's prerequisites are present (see [`Mode`]).
pub fn ensure(mode: Mode) -> Result<()> {
    if !is_debian() {
        return non_debian(mode);
    }
    debian_packages(mode)?;
    bpf_linker(mode)
}

/// Debian or a derivative with dpkg and apt: the only family whose package
/// names this file knows.
fn is_debian() -> bool {
    Path::new("/etc/debian_version").exists()
        && cmd::which("dpkg-query").is_some()
        && cmd::which("apt-get").is_some()
}

/// The packages of [`DEBIAN_PACKAGES`] that are not installed.
fn missing_packages() -> Result<Vec<&'static str>> {
    let mut query = Command::new("dpkg-query");
    query
        .args(["-W", "-f=${Package} ${db:Status-Status}\\n"])
        .args(DEBIAN_PACKAGES.iter().map(|(name, _)| name));
    // dpkg-query exits 1 when some package is unknown; stdout still lists the rest.
    let out = cmd::output(&mut query)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| *status == "installed")
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(DEBIAN_PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !installed.contains(name))
        .collect())
}

fn debian_packages(mode: Mode) -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(());
    }
    if mode == Mode::Check {
        for name in &missing {
            let why = DEBIAN_PACKAGES.iter().find(|(n, _)| n == name).unwrap().1;
            eprintln!(
                "note: Debian package {name} is missing ({why}); `cargo xtask setup` installs it"
            );
        }
        return Ok(());
    }
    // Only refresh the package lists when there is something to install:
    // `apt-get update` is the slow part and needs the network.
    let mut update = privilege::command_as_root("apt-get", &[])?;
    update.args(["update", "-q"]);
    cmd::run(&mut update).context("could not refresh the Debian package lists")?;

    let mut install = privilege::command_as_root("env", &[])?;
    install
        .args([
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            "-q",
        ])
        .arg("--no-install-recommends")
        .args(&missing);
    cmd::run(&mut install)
        .with_context(|| format!("could not install Debian packages: {}", missing.join(" ")))?;

    let still = missing_packages()?;
    if !still.is_empty() {
        bail!(
            "apt-get finished but these packages are still not installed: {}",
            still.join(" ")
        );
    }
    for name in &missing {
        println!("installed Debian package {name}");
    }
    Ok(())
}

/// bpf-linker links the BPF crate (rustc calls it by name for the bpf
/// targets). `cargo install` builds it against Debian's LLVM 22, the
/// LLVM of Debian's rustc.
fn bpf_linker(mode: Mode) -> Result<()> {
    if cmd::which("bpf-linker").is_some() {
        return Ok(());
    }
    if let Some(found) = ebpf::bpf_linker_off_path() {
        eprintln!(
            "note: bpf-linker is at {} but that directory is not on PATH; xtask uses it anyway",
            found.display()
        );
        return Ok(());
    }
    if mode == Mode::Check {
        eprintln!("note: bpf-linker is missing (it links the BPF programs); `cargo xtask setup` installs it");
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).is_dir() {
        bail!("cannot build bpf-linker: {LLVM_PREFIX} is missing (install llvm-22-dev)");
    }
    // Installed for the current user (into CARGO_HOME), never as root.
    let mut install = host::cargo();
    install.env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    cmd::run(&mut install).context("could not install bpf-linker")?;
    println!("installed bpf-linker");
    Ok(())
}

/// Outside Debian xtask cannot know package names: check for the tools
/// themselves and say plainly what to install.
fn non_debian(mode: Mode) -> Result<()> {
    let distro = fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "this system".to_string());
    let tools: &[(&str, &str)] = &[
        (
            "bpf-linker",
            "`cargo install bpf-linker` (built against your Rust toolchain's LLVM)",
        ),
        ("nft", "nftables"),
        ("ip", "iproute2"),
        ("bpftool", "bpftool"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("socat", "socat"),
    ];
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|(bin, _)| {
            cmd::which(bin).is_none()
                && !(*bin == "bpf-linker" && ebpf::bpf_linker_off_path().is_some())
        })
        .map(|(bin, how)| format!("  {bin}: install {how}"))
        .collect();
    if let Err(e) = ebpf::Toolchain::detect() {
        missing.push(format!(
            "  a Rust toolchain that can build for {}: `rustup toolchain install nightly --component rust-src` ({e:#})",
            ebpf::TARGET
        ));
    }
    if missing.is_empty() {
        return Ok(());
    }
    let report = format!(
        "{distro} is not Debian, so xtask cannot install packages for you. Missing:\n{}",
        missing.join("\n")
    );
    match mode {
        Mode::Install => bail!("{report}"),
        Mode::Check => {
            eprintln!("note: {report}");
            Ok(())
        }
    }
}
