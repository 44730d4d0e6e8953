//! Running things as root: pandad and the privileged tests need CAP_BPF,
//! CAP_NET_ADMIN and CAP_SYS_ADMIN, builds must not (root-owned files in
//! `target/` would break the next unprivileged build).

use std::{ffi::OsStr, process::Command};

use anyhow::{bail, Result};

use crate::cmd;

/// Whether xtask already runs as root, in which case nothing needs `sudo`
/// (and `sudo` may not even be installed, as on a minimal CI image).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The prefix that runs a program as root: nothing when already root,
/// otherwise `sudo` with `sudo_args` (e.g. which environment to keep).
/// Fails when not root and there is no sudo, saying so.
pub fn root_prefix(sudo_args: &[&str]) -> Result<Vec<String>> {
    if is_root() {
        return Ok(Vec::new());
    }
    let Some(sudo) = cmd::which("sudo") else {
        bail!("this step must run as root: run it as root, or install sudo");
    };
    let mut prefix = vec![sudo.to_string_lossy().into_owned()];
    prefix.extend(sudo_args.iter().map(|s| s.to_string()));
    Ok(prefix)
}

/// A command that runs `program` as root (through `sudo` when needed).
pub fn command_as_root(program: impl AsRef<OsStr>, sudo_args: &[&str]) -> Result<Command> {
    let prefix = root_prefix(sudo_args)?;
    Ok(match prefix.split_first() {
        None => Command::new(program),
        Some((sudo, rest)) => {
            let mut c = Command::new(sudo);
            c.args(rest).arg(program);
            c
        }
    })
}
