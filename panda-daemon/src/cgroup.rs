//! Where the cgroup2 hierarchy is mounted.
//!
//! It is not always /sys/fs/cgroup: hybrid systems (and this project's CI)
//! mount it at /sys/fs/cgroup/unified, and `ip netns exec` hides it by
//! remounting /sys. The truth is in /proc/self/mountinfo.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Mount point of the cgroup2 hierarchy as this process sees it.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .context("reading /proc/self/mountinfo to find the cgroup2 mount")?;
    parse_mountinfo(&info).with_context(|| {
        "no cgroup2 filesystem is mounted (panda needs cgroup v2; mount it with \
         `mount -t cgroup2 none /sys/fs/cgroup`)"
            .to_string()
    })
}

fn parse_mountinfo(info: &str) -> Option<PathBuf> {
    mounts(info)
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.point)
}

/// One line of a mountinfo file: what [`mounts`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The mounted file's path inside its filesystem (`net:[4026532…]` for
    /// a network namespace bind mount, nsfs).
    pub root: String,
    /// Where it is mounted, unescaped.
    pub point: PathBuf,
    pub fstype: String,
}

/// The mounts of a mountinfo file (`/proc/PID/mountinfo`).
pub fn mounts(info: &str) -> impl Iterator<Item = Mount> + '_ {
    info.lines().filter_map(|line| {
        // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mut fields = left.split_whitespace().skip(3);
        let root = unescape(fields.next()?);
        let point = PathBuf::from(unescape(fields.next()?));
        Some(Mount {
            root,
            point,
            fstype: fstype.to_owned(),
        })
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v as char);
            i += 4;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Checks that `path` is a directory of the cgroup2 hierarchy rooted at `root`.
pub fn validate(root: &Path, path: &Path) -> Result<()> {
    if !path.starts_with(root) {
        bail!(
            "cgroup {} is not inside the cgroup2 hierarchy mounted at {}",
            path.display(),
            root.display()
        );
    }
    if !path.join("cgroup.procs").exists() {
        bail!(
            "cgroup {} does not exist (no cgroup.procs in it)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_mount() {
        let info = "24 30 0:22 / /sys rw,nosuid - sysfs sysfs rw\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn lists_netns_bind_mounts() {
        let info = "612 29 0:4 net:[4026532301] /run/netns/a\\040b rw shared:310 - nsfs nsfs rw\n";
        let m: Vec<Mount> = mounts(info).collect();
        assert_eq!(
            m,
            vec![Mount {
                root: "net:[4026532301]".into(),
                point: PathBuf::from("/run/netns/a b"),
                fstype: "nsfs".into(),
            }]
        );
    }

    #[test]
    fn no_cgroup2() {
        assert_eq!(
            parse_mountinfo("24 30 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    #[test]
    fn unescapes_spaces() {
        let info = "41 31 0:38 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(info), Some(PathBuf::from("/mnt/my cg")));
    }
}
