//! `cargo xtask vm-test --patched`: the freebind mechanism on a kernel that
//! has it.
//!
//! Stock kernels refuse `bpf_setsockopt(SOL_IPV6, IPV6_FREEBIND)`;
//! `contrib/kernel/0001-*.patch` allows it. [`build_patched_kernel`] builds
//! a small kernel with that patch from Debian's `linux-source-6.12` package:
//! `make tinyconfig` plus `contrib/kernel/config-fragment` (a serial console,
//! initramfs, IPv6, namespaces, veth, cgroup BPF, nftables, all built in, no
//! modules, no BTF), once, cached under
//! `target/vm/patched-HASH/` where HASH covers the patch, the fragment and
//! the source package's version. [`vm_test`] runs the integration suite on
//! it with `PANDA_EXPECT_MECHANISM=freebind`: every test that looks at the
//! mechanism then insists on `freebind`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{cmd, host};

/// Debian's kernel source package, and the tarball it installs.
pub const SOURCE_PACKAGE: &str = "linux-source-6.12";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
/// The top directory inside that tarball.
const SOURCE_DIR: &str = "linux-source-6.12";

/// The kernel change and the config, relative to the workspace root.
const PATCH: &str =
    "contrib/kernel/0001-bpf-allow-IP-FREEBIND-and-IPV6-FREEBIND-in-bpf_setsockopt.patch";
const FRAGMENT: &str = "contrib/kernel/config-fragment";

/// What the guest's `uname -r` ends with (CONFIG_LOCALVERSION in the fragment).
pub const LOCALVERSION: &str = "-panda-freebind";

/// Exported to the tests in the guest: the mechanism `auto` must pick.
const EXPECT: (&str, &str) = ("PANDA_EXPECT_MECHANISM", "freebind");

/// Builds (once) the patched kernel and returns its `bzImage`, cached in
/// `cache/patched-HASH/`. Needs `cargo xtask setup` (the source package and
/// the kernel build tools); takes about 4 minutes on 2 cores the first time.
pub fn build_patched_kernel(cache: &Path) -> Result<PathBuf> {
    let root = host::root();
    let patch = fs::read(root.join(PATCH)).with_context(|| format!("reading {PATCH}"))?;
    let fragment = fs::read(root.join(FRAGMENT)).with_context(|| format!("reading {FRAGMENT}"))?;
    let version = source_version()?;
    if !Path::new(SOURCE_TARBALL).is_file() {
        bail!("{SOURCE_TARBALL} is missing although {SOURCE_PACKAGE} {version} is installed");
    }
    // The commit message is not part of the key: rewording it changes no code.
    let key = cache_key(&[version.as_bytes(), diff_of(&patch), &fragment]);
    let done = cache.join(format!("patched-{key:016x}"));
    let image = done.join("bzImage");
    if image.is_file() {
        eprintln!("vm: patched kernel (cached): {}", image.display());
        return Ok(image);
    }

    // Built in a scratch directory next to the result; only the image and
    // its config are kept (the tree is ~1.5 GB).
    let work = cache.join(format!("patched-{key:016x}.build"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let started = Instant::now();
    eprintln!(
        "vm: building the patched kernel from {SOURCE_PACKAGE} {version} in {} (once; ~4 min on 2 cores)",
        work.display()
    );
    cmd::run(
        Command::new("tar")
            .arg("-xf")
            .arg(SOURCE_TARBALL)
            .arg("-C")
            .arg(&work),
    )?;
    let src = work.join(SOURCE_DIR);
    if !src.join("Makefile").is_file() {
        bail!("{SOURCE_TARBALL} did not unpack into {SOURCE_DIR}/");
    }
    cmd::run(
        Command::new("patch")
            .args(["-p1", "--forward", "--batch", "--input"])
            .arg(root.join(PATCH))
            .current_dir(&src),
    )
    .with_context(|| format!("{PATCH} does not apply to {SOURCE_PACKAGE} {version}"))?;

    let make = |args: &[&str]| {
        let mut c = Command::new("make");
        // ARCH=x86_64, not the default x86: tinyconfig would pick 32-bit.
        c.arg("ARCH=x86_64").args(args).current_dir(&src);
        c
    };
    cmd::run(&mut make(&["-s", "tinyconfig"]))?;
    cmd::run(
        Command::new("scripts/kconfig/merge_config.sh")
            .args(["-m", ".config"])
            .arg(root.join(FRAGMENT))
            .current_dir(&src)
            // merge_config.sh runs `make` itself only without -m; it prints
            // every override, which is noise here.
            .stdout(std::process::Stdio::null()),
    )?;
    cmd::run(&mut make(&["-s", "olddefconfig"]))?;
    let config = fs::read_to_string(src.join(".config")).context("reading the merged .config")?;
    let missing = missing_options(&String::from_utf8_lossy(&fragment), &config);
    if !missing.is_empty() {
        bail!(
            "after `make olddefconfig` these options of {FRAGMENT} are not set as asked (a \
             dependency is missing from the fragment, or the option does not exist in this \
             kernel):\n  {}",
            missing.join("\n  ")
        );
    }
    let configured = started.elapsed();
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    cmd::run(&mut make(&["-s", &format!("-j{jobs}"), "bzImage"]))?;
    let built = src.join("arch/x86/boot/bzImage");
    if !built.is_file() {
        bail!("the kernel build finished without {}", built.display());
    }

    let staging = cache.join(format!("patched-{key:016x}.staging"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    fs::copy(&built, staging.join("bzImage"))?;
    fs::write(staging.join("config"), &config)?;
    let total = started.elapsed();
    fs::write(
        staging.join("build-time"),
        format!(
            "{SOURCE_PACKAGE} {version}, {jobs} jobs: unpack+patch+config {:.0} s, build {:.0} s, total {:.0} s\n",
            configured.as_secs_f64(),
            (total - configured).as_secs_f64(),
            total.as_secs_f64()
        ),
    )?;
    let _ = fs::remove_dir_all(&done);
    fs::rename(&staging, &done)
        .with_context(|| format!("moving the kernel into {}", done.display()))?;
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    eprintln!(
        "vm: patched kernel built in {:.0} s: {}",
        total.as_secs_f64(),
        image.display()
    );
    Ok(image)
}

/// The installed version of [`SOURCE_PACKAGE`], or an error saying how to
/// get it.
fn source_version() -> Result<String> {
    let out = cmd::output(Command::new("dpkg-query").args([
        "-W",
        "-f=${Version} ${db:Status-Status}",
        SOURCE_PACKAGE,
    ]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_once(' ') {
        Some((version, "installed")) if out.status.success() => Ok(version.to_string()),
        _ => bail!(
            "Debian package {SOURCE_PACKAGE} is not installed; `cargo xtask setup` installs it \
             (the patched kernel is built from it)"
        ),
    }
}

/// The diff of a `git format-patch` file: from its first `diff --git` line
/// (the whole file when there is none).
fn diff_of(patch: &[u8]) -> &[u8] {
    let mut at = 0;
    for line in patch.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"diff --git ") {
            return &patch[at..];
        }
        at += line.len();
    }
    patch
}

/// FNV-1a (64 bit) over length-prefixed parts: stable across Rust versions
/// and machines, unlike `DefaultHasher`, so the cache survives toolchain
/// upgrades.
fn cache_key(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for part in parts {
        for b in (part.len() as u64).to_le_bytes() {
            eat(b);
        }
        for &b in *part {
            eat(b);
        }
    }
    h
}

/// The lines of `fragment` that `config` does not honour: a `CONFIG_X=V`
/// line must be in `config` verbatim; a `# CONFIG_X is not set` line must
/// not be contradicted by a `CONFIG_X=…` line (an option whose dependencies
/// are off has no line at all, which is fine).
fn missing_options(fragment: &str, config: &str) -> Vec<String> {
    let have: std::collections::HashSet<&str> = config.lines().map(str::trim).collect();
    let now = |name: &str| {
        config
            .lines()
            .find(|c| c.starts_with(&format!("{name}=")) || *c == format!("# {name} is not set"))
            .unwrap_or("absent")
            .to_string()
    };
    let mut missing = Vec::new();
    for l in fragment.lines().map(str::trim) {
        if let Some(name) = l
            .strip_prefix("# ")
            .and_then(|r| r.strip_suffix(" is not set"))
        {
            if config.lines().any(|c| c.starts_with(&format!("{name}="))) {
                missing.push(format!("{l} (got: {})", now(name)));
            }
        } else if l.starts_with("CONFIG_") && !have.contains(l) {
            let name = l.split('=').next().unwrap_or(l);
            missing.push(format!("{l} (got: {})", now(name)));
        }
    }
    missing
}

/// Builds the patched kernel and runs the suite on it; returns the verdict
/// (the caller prints it and decides).
pub fn vm_test(opts: &super::Options) -> Result<super::Verdict> {
    super::qemu::find()?;
    let image = build_patched_kernel(&host::target_dir().join("vm"))?;
    let suite = super::Suite::build(opts.release)?;
    let label = format!("6.12{LOCALVERSION}");
    let mut v = suite.run(&image, None, &label, &[EXPECT], opts)?;
    match &v.kernel {
        Some(release) if !release.ends_with(LOCALVERSION) => v.problems.push(format!(
            "the guest ran kernel {release}, not the patched one (*{LOCALVERSION})"
        )),
        _ => {}
    }
    Ok(v)
}

/// `cargo xtask vm-test --patched [--kernel V]…`: the Debian kernels asked
/// for (none by default: `--patched` alone runs only the patched kernel),
/// then the patched one; fails if any failed.
pub fn vm_test_with_patched(kernels: &[String], opts: &super::Options) -> Result<()> {
    let debian = if kernels.is_empty() {
        Ok(())
    } else {
        super::vm_test(kernels, opts)
    };
    let patched = vm_test(opts)?;
    println!("{patched}");
    match (debian, patched.ok()) {
        (Ok(()), true) => Ok(()),
        (Ok(()), false) => bail!("vm-test failed on {}", patched.label),
        (Err(e), true) => Err(e),
        (Err(e), false) => Err(e.context(format!("vm-test failed on {} too", patched.label))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_is_stable_and_sees_every_part() {
        // Fixed value: a change here means every cached kernel is rebuilt.
        assert_eq!(cache_key(&[]), 0xcbf2_9ce4_8422_2325);
        let a = cache_key(&[b"6.12.1", b"patch", b"frag"]);
        assert_eq!(a, cache_key(&[b"6.12.1", b"patch", b"frag"]));
        assert_ne!(a, cache_key(&[b"6.12.2", b"patch", b"frag"]));
        assert_ne!(a, cache_key(&[b"6.12.1", b"patch", b"frag\n"]));
        // Lengths are part of the key: moving a byte between parts changes it.
        assert_ne!(a, cache_key(&[b"6.12.1p", b"atch", b"frag"]));
    }

    #[test]
    fn only_the_diff_counts() {
        let a = b"Subject: [PATCH] x\n\nwords\n---\ndiff --git a/f b/f\n+1\n";
        let b = b"Subject: [PATCH] x\n\nother words\n---\ndiff --git a/f b/f\n+1\n";
        assert_eq!(diff_of(a), b"diff --git a/f b/f\n+1\n");
        assert_eq!(diff_of(a), diff_of(b));
        assert_eq!(diff_of(b"no diff"), b"no diff");
    }

    #[test]
    fn reports_options_that_did_not_stick() {
        let fragment = "# comment\nCONFIG_A=y\nCONFIG_B=y\nCONFIG_S=\"-x\"\n\
                        # CONFIG_C is not set\n# CONFIG_D is not set\n# CONFIG_E is not set\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"-x\"\nCONFIG_C=y\n\
                      # CONFIG_D is not set\n";
        assert_eq!(
            missing_options(fragment, config),
            [
                "CONFIG_B=y (got: # CONFIG_B is not set)",
                "# CONFIG_C is not set (got: CONFIG_C=y)"
            ]
        );
        assert_eq!(
            missing_options("CONFIG_Z=y", ""),
            ["CONFIG_Z=y (got: absent)"]
        );
    }

    #[test]
    fn the_fragment_asks_for_what_the_suite_needs() {
        let fragment = fs::read_to_string(host::root().join(FRAGMENT)).unwrap();
        for opt in [
            "CONFIG_64BIT=y",
            "CONFIG_SERIAL_8250_CONSOLE=y",
            "CONFIG_BLK_DEV_INITRD=y",
            "CONFIG_DEVTMPFS=y",
            "CONFIG_IPV6=y",
            "CONFIG_NET_NS=y",
            "CONFIG_VETH=y",
            "CONFIG_CGROUP_BPF=y",
            "CONFIG_BPF_SYSCALL=y",
            "CONFIG_NFT_FIB_INET=y",
        ] {
            assert!(
                fragment.lines().any(|l| l.trim() == opt),
                "{FRAGMENT} lacks {opt}"
            );
        }
        assert!(
            fragment
                .lines()
                .any(|l| l.trim() == format!("CONFIG_LOCALVERSION=\"{LOCALVERSION}\"")),
            "{FRAGMENT} must set CONFIG_LOCALVERSION=\"{LOCALVERSION}\""
        );
        assert!(
            !fragment
                .lines()
                .any(|l| l.trim_start().starts_with("CONFIG_MODULES=y")),
            "the patched kernel has everything built in"
        );
    }
}
