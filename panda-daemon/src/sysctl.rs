//! `net.ipv6.ip_nonlocal_bind` of the current network namespace.
//!
//! The `guard` mechanism turns this on (so bind() to any prefix address
//! succeeds) and relies on a BPF hook to keep it from applying outside the
//! prefix; pandad records the previous value and restores it on exit.
//!
//! The setting is per network namespace, and `/proc/sys/net` shows the
//! namespace of the thread that opens the file, so these functions read and
//! write the calling thread's namespace.
use std::path::Path;

use anyhow::{bail, Context};

/// Where the kernel exposes `net.ipv6.ip_nonlocal_bind`.
pub const NONLOCAL_BIND_PATH: &str = "/proc/sys/net/ipv6/ip_nonlocal_bind";

/// Reads `net.ipv6.ip_nonlocal_bind` (0 or 1 in practice).
pub fn read_nonlocal_bind() -> anyhow::Result<u32> {
    read_u32(Path::new(NONLOCAL_BIND_PATH))
}

/// Sets `net.ipv6.ip_nonlocal_bind` to `v` (the kernel accepts any int; 0
/// and 1 are the meaningful values).
pub fn write_nonlocal_bind(v: u32) -> anyhow::Result<()> {
    write_u32(Path::new(NONLOCAL_BIND_PATH), v)
}

fn read_u32(path: &Path) -> anyhow::Result<u32> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let t = text.trim();
    t.parse()
        .with_context(|| format!("reading {}: {t:?} is not a number", path.display()))
}

fn write_u32(path: &Path, v: u32) -> anyhow::Result<()> {
    // One write(2) of the whole value, as sysctl(8) does; a partial write
    // would be parsed by the kernel on its own.
    std::fs::write(path, format!("{v}\n"))
        .with_context(|| format!("writing {v} to {}", path.display()))?;
    let now = read_u32(path)?;
    if now != v {
        bail!("writing {v} to {}: it reads back as {now}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_plain_files() {
        let dir = std::env::temp_dir().join(format!("panda-sysctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("knob");
        std::fs::write(&f, "0\n").unwrap();
        assert_eq!(read_u32(&f).unwrap(), 0);
        write_u32(&f, 1).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "1\n");
        assert_eq!(read_u32(&f).unwrap(), 1);
        std::fs::write(&f, "yes\n").unwrap();
        let e = format!("{:#}", read_u32(&f).unwrap_err());
        assert!(
            e.contains(&f.display().to_string()) && e.contains("\"yes\""),
            "{e}"
        );
        let missing = dir.join("missing/knob");
        let e = format!("{:#}", read_u32(&missing).unwrap_err());
        assert!(
            e.starts_with(&format!("reading {}", missing.display())),
            "{e}"
        );
        let e = format!("{:#}", write_u32(&missing, 1).unwrap_err());
        assert!(
            e.starts_with(&format!("writing 1 to {}", missing.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_the_real_knob() {
        // Present whenever IPv6 is; reading is harmless.
        if Path::new(NONLOCAL_BIND_PATH).exists() {
            assert!(read_nonlocal_bind().unwrap() <= 1);
        }
    }

    #[test]
    fn toggle_in_scratch_netns() {
        // /proc/sys/net shows the namespace of the thread that opens the
        // file, i.e. testns's fresh one, never the host's.
        crate::testns::run(|| {
            let before = read_nonlocal_bind().unwrap();
            write_nonlocal_bind(1 - before.min(1)).unwrap();
            assert_eq!(read_nonlocal_bind().unwrap(), 1 - before.min(1));
            write_nonlocal_bind(before).unwrap();
            assert_eq!(read_nonlocal_bind().unwrap(), before);
        });
    }
}
