//! What of pandad outlives pandad: its BPF links (and the counters map),
//! pinned on bpffs, and the few bpf(2) calls that manage them.
//!
//! Kernel contract this module relies on (Linux >= 5.7; panda needs 5.18):
//!
//! - A `bpf_link` stays attached while anything references it: an open file
//!   descriptor *or* a pin (a file on a bpffs). A pinned link therefore keeps
//!   its program running after pandad dies, whatever the signal (SIGKILL,
//!   OOM): a crash or a restart never opens a moment without the hooks.
//! - `BPF_LINK_UPDATE` swaps the program behind a cgroup link atomically:
//!   every bind runs either the old or the new program, never neither. A
//!   tracing link (the LSM program) cannot be updated; it is replaced by
//!   attaching the new link first and dropping the old one after, so the two
//!   overlap instead of leaving a gap.
//! - `BPF_LINK_DETACH` (what `bpftool link detach` does) detaches a cgroup
//!   link without destroying it: the pin and the fds stay valid, and
//!   `BPF_OBJ_GET_INFO_BY_FD` then reports cgroup id 0. That is how a
//!   detached link is told from a healthy one.
//! - A bpffs mount is its own instance: pins made under one mount point are
//!   not visible under another, and unmounting drops them (tests mount one
//!   each, so they never see each other's pins).
//!
//! Layout: `<bpffs>/panda/<netns cookie>-<table>/` (bpffs refuses dots in names) holds `bind6`,
//! `sendmsg6`, `socket_bind` (links) and `COUNTERS` (the per-CPU counters
//! map, kept so that counts survive restarts). The netns cookie names the
//! namespace the programs act on (`panda gc` removes directories whose
//! namespace is gone); the table name tells two instances of one namespace
//! apart.
use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// `BPF_FS_MAGIC` of include/uapi/linux/magic.h: `statfs` says a directory
/// is on bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The subdirectory of the bpffs that holds every panda instance.
pub const PANDA_SUBDIR: &str = "panda";

/// Name of the pinned counters map inside an instance directory.
pub const COUNTERS_PIN: &str = "COUNTERS";

/// The pinned links, one per hook, by the name of the program behind them.
pub const LINK_PINS: [&str; 3] = ["bind6", "sendmsg6", "socket_bind"];

// bpf(2) commands and attach types (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: u32 = 6;
const BPF_OBJ_GET: u32 = 7;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_LINK_CREATE: u32 = 28;
const BPF_LINK_UPDATE: u32 = 29;
const BPF_LINK_DETACH: u32 = 34;
/// `bpf_link_type`: BPF_LINK_TYPE_CGROUP.
pub const LINK_TYPE_CGROUP: u32 = 3;

/// Where one instance's pins live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// The directory of the instance serving the namespace `netns_cookie`
    /// with nftables table `table`, under the bpffs mounted at `bpffs`.
    pub fn for_instance(bpffs: &Path, netns_cookie: u64, table: &str) -> PinDir {
        PinDir {
            path: bpffs
                .join(PANDA_SUBDIR)
                .join(format!("{netns_cookie}-{table}")),
        }
    }

    /// A directory recorded earlier (the state record keeps the path).
    pub fn at(path: PathBuf) -> PinDir {
        PinDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pin of a link or map of this instance.
    pub fn entry(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Makes sure the directory exists on a bpffs: mounts one at `bpffs` if
    /// nothing is mounted there yet (most distributions mount
    /// /sys/fs/bpf at boot; some, like this project's CI host, do not).
    pub fn ensure(&self, bpffs: &Path) -> Result<()> {
        fs::create_dir_all(bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        if !is_bpffs(bpffs)? {
            refuse_private_mount_namespace(bpffs)?;
            mount_bpffs(bpffs)?;
        }
        fs::create_dir_all(&self.path)
            .with_context(|| format!("creating the pin directory {}", self.path.display()))?;
        Ok(())
    }

    /// Whether the directory exists.
    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Removes every pin and the directory itself (the links detach once
    /// the last fd is closed too). Ok if it does not exist.
    pub fn remove(&self) -> Result<()> {
        let entries = match fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        for entry in entries {
            let p = entry?.path();
            fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
        }
        fs::remove_dir(&self.path)
            .with_context(|| format!("removing the pin directory {}", self.path.display()))?;
        // The shared parent goes too once the last instance is gone.
        if let Some(parent) = self.path.parent() {
            let _ = fs::remove_dir(parent);
        }
        Ok(())
    }
}

/// One instance directory found under `<bpffs>/panda` (for `panda gc` and
/// `panda doctor`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub dir: PinDir,
    pub netns_cookie: u64,
    pub table: String,
}

/// The instance directories under the bpffs at `bpffs`; empty when there
/// is none (or no bpffs there at all).
pub fn instances(bpffs: &Path) -> Result<Vec<Instance>> {
    let root = bpffs.join(PANDA_SUBDIR);
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some((cookie, table)) = name.to_str().and_then(|n| n.split_once('-')) else {
            continue;
        };
        let Ok(netns_cookie) = cookie.parse() else {
            continue;
        };
        out.push(Instance {
            dir: PinDir::at(entry.path()),
            netns_cookie,
            table: table.to_owned(),
        });
    }
    out.sort_by_key(|i| i.netns_cookie);
    Ok(out)
}

/// Where a pin is made before being renamed over `path` (bpffs refuses
/// dots in names, so no `.new`).
pub fn staging_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push("_new");
    path.with_file_name(name)
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> Result<bool> {
    let c = cpath(path)?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st is a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// A bpffs mounted from a private mount namespace (a hardened systemd
/// unit's, `unshare -m`) would vanish with that namespace when pandad
/// exits, taking the pins, and so the hooks, with it: exactly what pinning
/// is for. Refuse, and say how to mount it where it lasts.
fn refuse_private_mount_namespace(at: &Path) -> Result<()> {
    let ns = |p: &str| fs::read_link(p).ok();
    let (ours, init) = (ns("/proc/self/ns/mnt"), ns("/proc/1/ns/mnt"));
    if ours.is_some() && init.is_some() && ours != init {
        anyhow::bail!(
            "config key `bpffs`: no bpffs is mounted at {} and this pandad runs in a private \
             mount namespace, where a mount would vanish (with the pinned links) when pandad \
             exits. Mount it on the host first: mount -t bpf bpf {} (the systemd unit does \
             this in ExecStartPre)",
            at.display(),
            at.display()
        );
    }
    Ok(())
}

fn mount_bpffs(at: &Path) -> Result<()> {
    let target = cpath(at)?;
    let (src, fstype) = (c"bpf", c"bpf");
    // SAFETY: all pointers are NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| {
            format!(
                "mounting a bpffs at {} (needs CAP_SYS_ADMIN in the initial mount namespace; \
                 or mount it yourself: mount -t bpf bpf {})",
                at.display(),
                at.display()
            )
        });
    }
    Ok(())
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", p.display()))
}

/// bpf(2) with an attribute struct of the command's own (the kernel
/// zero-extends a short `attr`).
pub(crate) fn sys_bpf<T>(cmd: u32, attr: &mut T) -> io::Result<i64> {
    // SAFETY: attr points to a live, initialised #[repr(C)] struct of the
    // size passed; the kernel reads (and for some commands writes) only that.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Pins any BPF object (link, map, program) at `path`.
pub fn pin_fd(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let c = cpath(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    sys_bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning at {}", path.display()))?;
    Ok(())
}

/// Opens a pinned object; None when nothing is pinned at `path`.
pub fn open_pinned(path: &Path) -> Result<Option<OwnedFd>> {
    let c = cpath(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    match sys_bpf(BPF_OBJ_GET, &mut attr) {
        // SAFETY: BPF_OBJ_GET returns a new fd that nothing else owns.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening the pin {}", path.display())),
    }
}

/// What the kernel says about a link (`struct bpf_link_info`, the cgroup
/// member of its union).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// `bpf_link_type`.
    pub link_type: u32,
    pub id: u32,
    /// The program the link runs now.
    pub prog_id: u32,
    /// Cgroup links: the cgroup's id (its inode number on cgroup2), 0 once
    /// the link was detached. 0 for other link types.
    pub cgroup_id: u64,
}

/// A bpf_link held by pandad (and, once pinned, by the bpffs).
#[derive(Debug)]
pub struct Link {
    fd: OwnedFd,
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

impl Link {
    /// Wraps an fd that refers to a link.
    pub fn from_fd(fd: OwnedFd) -> Link {
        Link { fd }
    }

    /// Opens the link pinned at `path`, if any.
    pub fn open_pinned(path: &Path) -> Result<Option<Link>> {
        Ok(open_pinned(path)?.map(Link::from_fd))
    }

    /// `bpf_link_create` of a cgroup program (`attach_type`: the
    /// program's BPF_CGROUP_* attach type). cgroup links always stack.
    pub fn create_cgroup(
        prog: BorrowedFd<'_>,
        cgroup: BorrowedFd<'_>,
        attach_type: u32,
    ) -> Result<Link> {
        let mut attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type,
            flags: 0,
        };
        let fd = sys_bpf(BPF_LINK_CREATE, &mut attr).context("bpf_link_create")?;
        // SAFETY: a new fd that nothing else owns.
        Ok(Link::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Atomically replaces the program the link runs.
    pub fn update(&self, prog: BorrowedFd<'_>) -> Result<()> {
        let mut attr = LinkUpdateAttr {
            link_fd: self.fd.as_raw_fd() as u32,
            new_prog_fd: prog.as_raw_fd() as u32,
            flags: 0,
            old_prog_fd: 0,
        };
        sys_bpf(BPF_LINK_UPDATE, &mut attr).context("bpf_link_update")?;
        Ok(())
    }

    /// `BPF_LINK_DETACH`, what `bpftool link detach` does: the link stays,
    /// its program stops running. pandad never does this to its own links;
    /// the tests and the benchmark do, to tamper with them.
    pub fn detach(&self) -> Result<()> {
        let mut attr = [self.fd.as_raw_fd() as u32];
        sys_bpf(BPF_LINK_DETACH, &mut attr).context("bpf_link_detach")?;
        Ok(())
    }

    /// Pins the link at `path`, replacing whatever is pinned there in one
    /// rename (so the path never stops naming a link).
    pub fn pin_replacing(&self, path: &Path) -> Result<()> {
        let tmp = staging_path(path);
        let _ = fs::remove_file(&tmp);
        pin_fd(self.fd.as_fd(), &tmp)?;
        fs::rename(&tmp, path)
            .with_context(|| format!("moving the pin {} into place", path.display()))?;
        Ok(())
    }

    /// The kernel's view of the link.
    pub fn info(&self) -> Result<LinkInfo> {
        // struct bpf_link_info: type, id, prog_id, then a union aligned to
        // 8 whose cgroup member starts with cgroup_id (u64). 96 bytes covers
        // every kernel's struct; the kernel wants the unused tail zero.
        let mut buf = [0u64; 12];
        let mut attr = InfoAttr {
            bpf_fd: self.fd.as_raw_fd() as u32,
            info_len: std::mem::size_of_val(&buf) as u32,
            info: buf.as_mut_ptr() as u64,
        };
        sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("reading bpf_link_info")?;
        let link_type = buf[0] as u32;
        Ok(LinkInfo {
            link_type,
            id: (buf[0] >> 32) as u32,
            prog_id: buf[1] as u32,
            cgroup_id: if link_type == LINK_TYPE_CGROUP {
                buf[2]
            } else {
                0
            },
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The cgroup id the kernel reports for a cgroup2 directory: its inode.
pub fn cgroup_id(dir: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(dir)
        .with_context(|| format!("stat {}", dir.display()))?
        .ino())
}
