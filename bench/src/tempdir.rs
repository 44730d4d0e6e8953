//! Scratch directories for pandad's config, state, API and notify sockets,
//! removed on drop. Their paths are short so that unix socket paths inside
//! stay under the 108-byte limit, and carry panda-bench's pid so that a
//! later run can remove those of a run that was killed (see [`sweep_stale`]).

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result};

use crate::netns::pid_is_dead;

const PREFIX: &str = "panda-b";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory under /tmp, removed (recursively) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Result<TempDir> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = PathBuf::from(format!("/tmp/{PREFIX}{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("mkdir {}", p.display()))?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// Unmounts what is mounted below `dir` (pandad's bpffs: unmounting drops
/// its pins, so nothing of a benchmark stays attached), then removes it.
fn remove_tree(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes the directories of earlier panda-bench processes that are gone.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(PREFIX) {
            if pid_is_dead(rest) {
                remove_tree(&e.path());
            }
        }
    }
}
