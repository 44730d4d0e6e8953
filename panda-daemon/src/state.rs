//! What this instance changed, on disk, so that a crash loses nothing.
//!
//! pandad writes the record *before* each change it makes. If it dies
//! (SIGKILL, OOM, power cut) the next pandad with the same `state_dir` finds
//! the record of a dead pid and knows which of the anchor address and the
//! route were its own, what `ip_nonlocal_bind` was before panda set it, and
//! where its pinned BPF links are (still in force: the next instance adopts
//! them rather than leaving a gap).
//! Writes are atomic (temp file, fsync, rename, fsync of the directory).
use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One instance's changes to its network namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The pandad that made (or is making) these changes.
    pub pid: u32,
    /// `net.ipv6.ip_nonlocal_bind` before panda touched it; None = untouched.
    pub nonlocal_bind_before: Option<u32>,
    /// panda added the anchor address (it was not there before).
    pub owns_anchor: bool,
    /// panda added the local route.
    pub owns_route: bool,
    /// Where that instance pinned its BPF links ([`crate::pins`]): they are
    /// still in force, and the next instance adopts them. None: nothing
    /// pinned yet (or a record from before pinning existed).
    #[serde(default)]
    pub pin_dir: Option<PathBuf>,
}

/// Whether `pid` is a live pandad: a process of that name that is not a
/// zombie (a killed pandad its parent has not reaped yet is dead: its
/// pins are what the next instance adopts).
pub fn pandad_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ...": comm may contain spaces or parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    comm == "pandad" && !matches!(state, "Z" | "X")
}

/// The record file of one `state_dir`.
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The record kept in `state_dir` (one instance per directory).
    pub fn new(state_dir: &Path) -> StateFile {
        StateFile {
            path: state_dir.join("state.json"),
        }
    }

    /// The record left by an earlier instance that is no longer running.
    /// Fails if that instance is still alive: two pandads must not share a
    /// namespace's state.
    pub fn take_over(&self) -> Result<Option<Record>> {
        let Some(rec) = self.read()? else {
            return Ok(None);
        };
        if rec.pid != std::process::id() && pandad_alive(rec.pid) {
            {
                bail!(
                    "another pandad (pid {}) is running with state_dir {}",
                    rec.pid,
                    self.path.parent().unwrap_or(Path::new("/")).display()
                );
            }
        }
        Ok(Some(rec))
    }

    /// The record as it is on disk, whoever wrote it (`panda doctor`).
    pub fn read(&self) -> Result<Option<Record>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not a panda state record", self.path.display()))
    }

    /// Where the record lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Durably replaces the record.
    pub fn write(&self, rec: &Record) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(rec)?.as_bytes())?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, &self.path)
            .with_context(|| format!("renaming {} into place", tmp.display()))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
        Ok(())
    }

    /// Called after a complete teardown: nothing is left to undo.
    pub fn remove(&self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_dead_owner() {
        let dir = std::env::temp_dir().join(format!("panda-state-{}", std::process::id()));
        let sf = StateFile::new(&dir);
        assert_eq!(sf.take_over().unwrap(), None);
        // A pid that cannot exist (above pid_max's hard limit of 2^22).
        let rec = Record {
            pid: 4_194_305,
            nonlocal_bind_before: Some(0),
            owns_anchor: true,
            owns_route: false,
            pin_dir: Some("/sys/fs/bpf/panda/1-panda".into()),
        };
        sf.write(&rec).unwrap();
        assert_eq!(sf.take_over().unwrap(), Some(rec));
        sf.remove().unwrap();
        assert_eq!(sf.take_over().unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
