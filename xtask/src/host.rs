//! The host side of the workspace: where things live, and building pandad and
//! panda with the toolchain that runs xtask.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::cmd;

/// The workspace root, fixed at compile time so xtask works from any
/// directory inside the tree (cargo runs it with the caller's cwd).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The workspace target directory: `CARGO_TARGET_DIR` when the user set one
/// (cargo reads it relative to the current directory), `target/` otherwise.
/// xtask needs it to find the binaries it built.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            std::path::absolute(PathBuf::from(dir)).unwrap_or_else(|_| root().join("target"))
        }
        _ => root().join("target"),
    }
}

/// Where `cargo xtask build-ebpf` leaves the BPF object that
/// panda-daemon's build script embeds.
pub fn bpf_object() -> PathBuf {
    target_dir().join("bpf").join("panda.bpf.o")
}

/// The cargo profile directory name for `--release` or not.
pub fn profile_dir(release: bool) -> &'static str {
    if release {
        "release"
    } else {
        "debug"
    }
}

/// A `cargo` command for the host workspace, run from the root with the same
/// toolchain as xtask itself (cargo tells us which in `CARGO`).
///
/// When the target directory is not the default, panda-daemon's build script
/// would look for the object in the wrong place, so point it at ours.
pub fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    let default_object = root().join("target/bpf/panda.bpf.o");
    if bpf_object() != default_object && env::var_os("PANDA_BPF_OBJECT").is_none() {
        c.env("PANDA_BPF_OBJECT", bpf_object());
    }
    c
}

/// Builds pandad and panda (not the tests): what `run` starts and what the
/// integration tests drive.
pub fn build_bins(release: bool) -> Result<()> {
    let mut c = cargo();
    c.args(["build", "--bins", "-p", "panda-daemon"]);
    if release {
        c.arg("--release");
    }
    cmd::run(&mut c)
}

/// Path of a binary built by [`build_bins`].
pub fn bin(name: &str, release: bool) -> PathBuf {
    target_dir().join(profile_dir(release)).join(name)
}
