//! `cargo xtask build-ebpf`: compiles panda-ebpf for the BPF target and puts
//! the object where panda-daemon's build script embeds it.
//!
//! The BPF crate needs a `core` built for the BPF target. Two toolchains can
//! provide one: a rustup nightly with `rust-src` (`-Z build-std=core`), or
//! Debian's rustc, which ships `core` prebuilt for the BPF targets. The host
//! crates keep using the toolchain that runs xtask; only this build switches.

use std::{
    env,
    ffi::{OsStr, OsString},
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, host};

/// The BPF target whose byte order matches the host's: programs are loaded
/// into the running kernel, so they must share its endianness.
pub const TARGET: &str = if cfg!(target_endian = "big") {
    "bpfeb-unknown-none"
} else {
    "bpfel-unknown-none"
};

/// Debian's rustc and cargo (packages rustc-web, cargo-web), called by full
/// path because rustup's proxies come first on PATH.
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

/// The name of panda-ebpf's binary target, i.e. of the linked object.
const BPF_BIN: &str = "panda";

/// A toolchain able to build for [`TARGET`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup's nightly with `rust-src`: builds `core` itself (the usual aya
    /// setup on a developer machine).
    RustupNightly,
    /// Debian's rustc with its prebuilt BPF `core` (no rust-src needed; what
    /// CI and machines without rustup downloads use).
    Debian,
}

impl fmt::Display for Toolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Toolchain::RustupNightly => {
                write!(f, "rustup nightly with rust-src (-Z build-std=core)")
            }
            Toolchain::Debian => write!(
                f,
                "Debian's rustc with its prebuilt BPF core ({DEBIAN_RUSTC})"
            ),
        }
    }
}

impl Toolchain {
    /// Picks the toolchain, preferring rustup nightly where a user has set it
    /// up; fails naming exactly what is missing for either choice.
    pub fn detect() -> Result<Toolchain> {
        Self::choose(
            nightly_has_rust_src(),
            Path::new(&format!("/usr/lib/rustlib/{TARGET}")),
            Path::new(DEBIAN_RUSTC),
            Path::new(DEBIAN_CARGO),
        )
    }

    /// [`Toolchain::detect`] with its observations passed in, so the choice
    /// and the error message can be tested on any machine.
    fn choose(
        nightly: std::result::Result<(), String>,
        debian_sysroot: &Path,
        debian_rustc: &Path,
        debian_cargo: &Path,
    ) -> Result<Toolchain> {
        let nightly = match nightly {
            Ok(()) => return Ok(Toolchain::RustupNightly),
            Err(why) => why,
        };
        let mut debian_missing = Vec::new();
        if !debian_sysroot.is_dir() {
            debian_missing.push(format!(
                "{} (package libstd-rust-web-dev-bpf)",
                debian_sysroot.display()
            ));
        }
        if !cmd::is_executable(debian_rustc) {
            debian_missing.push(format!("{} (package rustc-web)", debian_rustc.display()));
        }
        if !cmd::is_executable(debian_cargo) {
            debian_missing.push(format!("{} (package cargo-web)", debian_cargo.display()));
        }
        if debian_missing.is_empty() {
            return Ok(Toolchain::Debian);
        }
        bail!(
            "no toolchain here can build the BPF programs for {TARGET}:\n  \
             - rustup nightly with rust-src: {nightly}; get it with \
             `rustup toolchain install nightly --component rust-src`\n  \
             - Debian's BPF core: missing {}; on Debian run `cargo xtask setup`",
            debian_missing.join(", ")
        )
    }
}

/// Ok when `rustup` has a nightly with the rust-src component installed;
/// otherwise the reason, for the error message.
fn nightly_has_rust_src() -> std::result::Result<(), String> {
    if cmd::which("rustup").is_none() {
        return Err("rustup is not on PATH".into());
    }
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--toolchain", "nightly", "--installed"]);
    scrub_env(&mut list);
    let out = cmd::output(&mut list).map_err(|e| format!("{e:#}"))?;
    if !out.status.success() {
        return Err("rustup has no nightly toolchain".into());
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    if listed.lines().any(|l| l.starts_with("rust-src")) {
        Ok(())
    } else {
        Err("the rustup nightly toolchain has no rust-src component".into())
    }
}

/// bpf-linker in `$CARGO_HOME/bin` when that directory is not on PATH (a
/// fresh `cargo install` into a shell that never sourced cargo's env).
pub fn bpf_linker_off_path() -> Option<PathBuf> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let candidate = cargo_home.join("bin").join("bpf-linker");
    cmd::is_executable(&candidate).then_some(candidate)
}

/// Removes what the outer `cargo run` (and rustup's proxy) put in our
/// environment that would change how the inner BPF build compiles: a
/// different rustc, wrappers, flags, toolchain, target directory or target,
/// and the rustup toolchain's libraries on LD_LIBRARY_PATH. Network,
/// registry and terminal settings (and CARGO_HOME, for the shared registry
/// cache) are kept.
fn scrub_env(cmd: &mut Command) {
    const KEEP_PREFIXES: &[&str] = &[
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    const REMOVE: &[&str] = &[
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_BOOTSTRAP",
        "RUSTDOC",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTUP_TOOLCHAIN",
        "RUSTUP_TOOLCHAIN_SOURCE",
        // Build-script variables, in case xtask was started from one.
        "TARGET",
        "HOST",
        "OUT_DIR",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
    ];
    for (key, _) in env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        let cargo_var = (k.starts_with("CARGO") || k.starts_with("__CARGO"))
            && !KEEP_PREFIXES.iter().any(|p| k.starts_with(p));
        if cargo_var || REMOVE.contains(&k) {
            cmd.env_remove(&key);
        }
    }
    // `cargo run` prepends the workspace's target dirs and the running
    // toolchain's lib dirs; another rustc must not pick those up.
    if let Some(paths) = env::var_os("LD_LIBRARY_PATH") {
        let target = host::target_dir();
        let rustup_home = env::var_os("RUSTUP_HOME").map(PathBuf::from);
        let kept: Vec<PathBuf> = env::split_paths(&paths)
            .filter(|p| !p.starts_with(&target) && !p.starts_with(host::root().join("target")))
            .filter(|p| !rustup_home.as_ref().is_some_and(|r| p.starts_with(r)))
            .collect();
        if kept.is_empty() {
            cmd.env_remove("LD_LIBRARY_PATH");
        } else if let Ok(joined) = env::join_paths(kept) {
            if joined != paths {
                cmd.env("LD_LIBRARY_PATH", joined);
            }
        }
    }
}

/// The rustflags of every BPF build: the architecture whose kernel structs
/// aya-ebpf's helpers should assume (the host's, as the programs run on this
/// kernel), and BTF for the loader and verifier.
fn rustflags() -> OsString {
    let arch = env::consts::ARCH;
    [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_string(),
        "-Clink-arg=--btf".to_string(),
    ]
    .join("\x1f")
    .into()
}

/// Builds the BPF object and copies it to [`host::bpf_object`]; returns its
/// path. `release` selects panda-ebpf's release profile (its dev profile is
/// optimised too, as the verifier requires).
pub fn build(release: bool) -> Result<PathBuf> {
    let mut path_for_child: Option<OsString> = None;
    if cmd::which("bpf-linker").is_none() {
        let Some(found) = bpf_linker_off_path() else {
            bail!(
                "bpf-linker is not on PATH; it links the BPF programs. Install it with \
                 `cargo xtask setup` (on Debian), or `cargo install bpf-linker` built \
                 against your BPF toolchain's LLVM"
            );
        };
        let dir = found.parent().unwrap().to_path_buf();
        let mut paths = vec![dir];
        paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
        path_for_child = Some(env::join_paths(paths)?);
    }

    let toolchain = Toolchain::detect()?;
    println!("building the BPF programs with {toolchain}");

    let crate_dir = host::root().join("panda-ebpf");
    let target_dir = crate_dir.join("target");
    let mut build = match toolchain {
        Toolchain::RustupNightly => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"]);
            c
        }
        Toolchain::Debian => {
            let mut c = Command::new(DEBIAN_CARGO);
            c.arg("build");
            c
        }
    };
    scrub_env(&mut build);
    build
        .current_dir(&crate_dir)
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        build.arg("--release");
    }
    if toolchain == Toolchain::Debian {
        // aya-ebpf enables `asm_experimental_arch` on the BPF target, a
        // nightly feature; Debian's stable rustc needs the bootstrap switch.
        build.env("RUSTC_BOOTSTRAP", "1").env("RUSTC", DEBIAN_RUSTC);
    }
    build.env("CARGO_ENCODED_RUSTFLAGS", rustflags());
    if let Some(path) = &path_for_child {
        build.env("PATH", path);
    }
    cmd::run(&mut build).context("building the BPF programs failed")?;

    let built = target_dir
        .join(TARGET)
        .join(host::profile_dir(release))
        .join(BPF_BIN);
    let dest = host::bpf_object();
    install_object(&built, &dest)?;
    println!("BPF object: {}", dest.display());
    Ok(dest)
}

/// Copies the object unless the destination already has the same bytes: a
/// fresh mtime would make cargo rebuild panda-daemon for nothing.
fn install_object(built: &Path, dest: &Path) -> Result<()> {
    let bytes = fs::read(built)
        .with_context(|| format!("the BPF build did not produce {}", built.display()))?;
    if fs::read(dest).ok().as_deref() == Some(bytes.as_slice()) {
        return Ok(());
    }
    let dir = dest.parent().unwrap();
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Write then rename, so a concurrent build never embeds half an object.
    let tmp = dir.join(format!(
        ".{}.tmp",
        dest.file_name().and_then(OsStr::to_str).unwrap_or("obj")
    ));
    fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, dest).with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags reach rustc as three separate arguments.
    #[test]
    fn rustflags_are_unit_separated() {
        let flags = rustflags().into_string().unwrap();
        let parts: Vec<&str> = flags.split('\x1f').collect();
        assert_eq!(parts.len(), 3, "{flags:?}");
        assert_eq!(
            parts[0],
            format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH)
        );
        assert_eq!(&parts[1..], ["-Cdebuginfo=2", "-Clink-arg=--btf"]);
    }

    /// Nightly with rust-src wins whatever Debian has.
    #[test]
    fn prefers_nightly() {
        let none = Path::new("/nonexistent/xtask-test");
        let t = Toolchain::choose(Ok(()), none, none, none).unwrap();
        assert_eq!(t, Toolchain::RustupNightly);
    }

    /// With neither toolchain, the error names every missing piece and how
    /// to get it.
    #[test]
    fn names_what_is_missing() {
        let none = Path::new("/nonexistent/xtask-test");
        let e = Toolchain::choose(Err("rustup is not on PATH".into()), none, none, none)
            .unwrap_err()
            .to_string();
        for needle in [
            "rustup is not on PATH",
            "rust-src",
            "libstd-rust-web-dev-bpf",
            "rustc-web",
            "cargo-web",
            "cargo xtask setup",
        ] {
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }
}
