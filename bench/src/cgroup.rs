//! Throwaway cgroups for the leases case: bind6 judges a lease by the cgroup
//! of the task calling bind(), so its binders must sit in cgroups of their
//! own, and a lease needs a holder cgroup to name.
//!
//! A [`Cgroup`] is a directory under the cgroup2 mount, named after
//! panda-bench's pid (`pb<pid>-<n>-<tag>`, like the namespaces) so that a
//! later run can remove what a killed one left ([`sweep_stale`]), and is
//! removed on drop, children first. The processes put in it must have
//! exited by then (the kernel refuses to remove a populated cgroup).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{machine::cgroup2_mount, netns::pid_is_dead};

const PREFIX: &str = "pb";

/// How long removal retries while the kernel still counts an exited
/// process as a member (EBUSY right after its exit).
const REMOVE_WAIT: Duration = Duration::from_secs(5);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A cgroup directory, removed (with its children) on drop.
pub struct Cgroup(PathBuf);

impl Cgroup {
    /// A new cgroup just below the cgroup2 root; `tag` says what it is for.
    pub fn new(tag: &str) -> Result<Cgroup> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = cgroup2_mount()?.join(format!("{PREFIX}{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(Cgroup(p))
    }

    /// A child cgroup `name` (removed with this one at the latest).
    pub fn child(&self, name: &str) -> Result<PathBuf> {
        let p = self.0.join(name);
        std::fs::create_dir(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.0) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Depth of `p` below the cgroup2 root (what a lease calls its level).
pub fn level(p: &Path) -> Result<u32> {
    let root = cgroup2_mount()?;
    let rel = p
        .strip_prefix(&root)
        .with_context(|| format!("{} is not under {}", p.display(), root.display()))?;
    Ok(rel.components().count() as u32)
}

/// rmdir of `p` and the cgroups below it, deepest first. A cgroup directory
/// holds only the kernel's files besides its children, and rmdir takes
/// them all.
fn remove_tree(p: &Path) -> Result<()> {
    for e in std::fs::read_dir(p).with_context(|| format!("reading {}", p.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    let end = Instant::now() + REMOVE_WAIT;
    loop {
        match std::fs::remove_dir(p) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).with_context(|| format!("rmdir {}", p.display())),
        }
    }
}

/// Removes the cgroups of earlier panda-bench processes that are gone.
pub fn sweep_stale() {
    let Ok(root) = cgroup2_mount() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(PREFIX) {
            if pid_is_dead(rest) && e.path().join("cgroup.procs").exists() {
                eprintln!("removing stale benchmark cgroup {name}");
                if let Err(e) = remove_tree(&e.path()) {
                    eprintln!("warning: {e:#}");
                }
            }
        }
    }
}
