//! Debian's cloud kernels as test guests: pick a version, `apt-get download`
//! its `linux-image-VERSION-cloud-amd64` package and `dpkg-deb -x` it into a
//! cache under `target/vm/debian/` (the package is never installed: the
//! host's kernel is not touched). The cloud flavour is small, boots fast
//! under QEMU and has what panda needs built in, apart from nf_tables and
//! friends (modules, loaded in the guest).

use std::{fs, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::{cmd, host, privilege};

/// Package names are `linux-image-VERSION` + this.
const FLAVOUR: &str = "-cloud-amd64";

/// The kernel series `vm-test` runs when no `--kernel` is given: Debian 12's
/// own (6.1) and its backport (6.12), each at its newest package.
pub const DEFAULT_SERIES: &[&str] = &["6.1", "6.12"];

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct DebianKernel {
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The bootable image (`boot/vmlinuz-RELEASE`).
    pub image: PathBuf,
    /// `lib/modules/RELEASE`.
    pub modules: PathBuf,
}

/// The numbers in a version, for ordering: `6.1.0-56` → [6, 1, 0, 56],
/// `6.12.117+deb12` → [6, 12, 117, 12].
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Versions of the `linux-image-*-cloud-amd64` packages in `apt-cache
/// search` output, meta-packages (`linux-image-6.12-cloud-amd64`), debug
/// symbols and unsigned variants left out.
pub fn versions_in(search_output: &str) -> Vec<String> {
    search_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| name.strip_prefix("linux-image-")?.strip_suffix(FLAVOUR))
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()) && version_key(v).len() >= 3)
        .map(str::to_string)
        .collect()
}

/// The version a `--kernel` argument names among `available`: an exact
/// version (`6.1.0-50`, also given as `6.1.0-50-cloud-amd64` or the package
/// name), or a series (`6.1`, `6.12`) meaning its newest version.
pub fn choose(spec: &str, available: &[String]) -> Result<String> {
    let spec = spec.trim();
    let bare = spec.strip_prefix("linux-image-").unwrap_or(spec);
    let bare = bare.strip_suffix(FLAVOUR).unwrap_or(bare);
    if let Some(v) = available.iter().find(|v| *v == bare) {
        return Ok(v.clone());
    }
    let series = format!("{bare}.");
    let mut in_series: Vec<&String> = available
        .iter()
        .filter(|v| v.starts_with(&series) || v.starts_with(&format!("{bare}-")))
        .collect();
    in_series.sort_by_key(|v| version_key(v));
    match in_series.last() {
        Some(v) => Ok((*v).clone()),
        None => {
            let mut all: Vec<&String> = available.iter().collect();
            all.sort_by_key(|v| version_key(v));
            bail!(
                "no Debian package linux-image-{bare}{FLAVOUR} (nor a {bare}.* series); available: {}",
                all.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )
        }
    }
}

/// What `apt-cache` offers now.
fn available() -> Result<Vec<String>> {
    let out = cmd::output(Command::new("apt-cache").args([
        "search",
        "--names-only",
        &format!("^linux-image-[0-9].*{FLAVOUR}$"),
    ]))?;
    if !out.status.success() {
        bail!(
            "apt-cache search failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(versions_in(&String::from_utf8_lossy(&out.stdout)))
}

/// `apt-get update`, as root (through sudo when needed).
fn apt_update() -> Result<()> {
    let mut c = privilege::command_as_root("apt-get", &[])?;
    c.args(["update", "-q"]);
    cmd::run(&mut c).context("could not refresh the Debian package lists")
}

/// Resolves every `--kernel` argument to a version; refreshes the package
/// lists once if one is not found (or none are known yet).
pub fn resolve(specs: &[String]) -> Result<Vec<String>> {
    let mut avail = available()?;
    let mut refreshed = false;
    let mut out = Vec::new();
    for spec in specs {
        let v = match choose(spec, &avail) {
            Ok(v) => v,
            Err(_) if !refreshed => {
                apt_update()?;
                refreshed = true;
                avail = available()?;
                choose(spec, &avail)?
            }
            Err(e) => return Err(e),
        };
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

/// The cache directory of one kernel package.
fn cache_dir(version: &str) -> PathBuf {
    host::target_dir()
        .join("vm")
        .join("debian")
        .join(format!("linux-image-{version}{FLAVOUR}"))
}

/// Downloads and unpacks `linux-image-VERSION-cloud-amd64` unless cached.
pub fn fetch(version: &str) -> Result<DebianKernel> {
    let package = format!("linux-image-{version}{FLAVOUR}");
    let release = format!("{version}{FLAVOUR}");
    let dir = cache_dir(version);
    let done = dir.join(".unpacked");
    if !done.exists() {
        let parent = dir.parent().unwrap();
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        let download = parent.join(format!(".download-{version}"));
        let _ = fs::remove_dir_all(&download);
        fs::create_dir_all(&download)?;
        let mut get = Command::new("apt-get");
        get.current_dir(&download)
            .args(["download", "-q", &package]);
        if privilege::is_root() {
            // apt's unprivileged download user could not write here anyway.
            get.args(["-o", "APT::Sandbox::User=root"]);
        }
        if cmd::run(&mut get).is_err() {
            // A stale package list names files the archive no longer has.
            apt_update()?;
            cmd::run(&mut get).with_context(|| format!("could not download {package}"))?;
        }
        let deb = fs::read_dir(&download)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download left no .deb for {package}"))?;
        let unpack = parent.join(format!(".unpack-{version}"));
        let _ = fs::remove_dir_all(&unpack);
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&unpack, &dir)
            .with_context(|| format!("cannot move the unpacked kernel to {}", dir.display()))?;
        fs::write(&done, format!("{package}\n"))?;
        let _ = fs::remove_dir_all(&download);
    }
    let kernel = DebianKernel {
        image: dir.join("boot").join(format!("vmlinuz-{release}")),
        modules: dir.join("lib/modules").join(&release),
        release,
    };
    if !kernel.image.is_file() || !kernel.modules.is_dir() {
        bail!(
            "{} lacks boot/vmlinuz-{r} or lib/modules/{r}: remove it and retry",
            dir.display(),
            r = kernel.release
        );
    }
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEARCH: &str = "\
linux-image-6.1.0-47-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-9-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.12.100+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.99+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-56-cloud-amd64-dbg - Debug symbols for linux-image-6.1.0-56-cloud-amd64
linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.12-cloud-amd64 - Linux for x86-64 cloud (meta-package)
linux-image-cloud-amd64 - Linux for x86-64 cloud (meta-package)
";

    #[test]
    fn lists_real_kernels_only() {
        assert_eq!(
            versions_in(SEARCH),
            [
                "6.1.0-47",
                "6.1.0-9",
                "6.12.100+deb12",
                "6.12.117+deb12",
                "6.12.99+deb12",
                "6.1.0-56"
            ]
        );
    }

    #[test]
    fn picks_the_newest_of_a_series() {
        let v = versions_in(SEARCH);
        assert_eq!(choose("6.1", &v).unwrap(), "6.1.0-56");
        assert_eq!(choose("6.12", &v).unwrap(), "6.12.117+deb12");
    }

    #[test]
    fn accepts_exact_versions() {
        let v = versions_in(SEARCH);
        assert_eq!(choose("6.1.0-47", &v).unwrap(), "6.1.0-47");
        assert_eq!(choose("6.1.0-47-cloud-amd64", &v).unwrap(), "6.1.0-47");
        assert_eq!(
            choose("linux-image-6.12.99+deb12-cloud-amd64", &v).unwrap(),
            "6.12.99+deb12"
        );
        let e = choose("5.10", &v).unwrap_err().to_string();
        assert!(e.contains("5.10") && e.contains("6.1.0-56"), "{e}");
    }

    #[test]
    fn orders_versions_numerically() {
        assert!(version_key("6.1.0-56") > version_key("6.1.0-9"));
        assert!(version_key("6.12.117+deb12") > version_key("6.12.99+deb12"));
    }
}
