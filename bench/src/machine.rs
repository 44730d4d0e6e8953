//! The machine and kernel a run measured, stated with every result, and the
//! cgroup bind programs that run on the benchmark's own binds.

use std::{
    ffi::CStr,
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{interrupt, results::Machine};

pub fn describe() -> Result<Machine> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_total_kb = crate::procfs::meminfo()?
        .get("MemTotal")
        .copied()
        .unwrap_or(0);
    Ok(Machine {
        cpu,
        nproc,
        kernel: uname_release(),
        mem_total_mb: mem_total_kb / 1024,
        load_start: loadavg(),
        load_end: String::new(),
        bind6_programs_at_start: effective_bind6_programs().unwrap_or(u32::MAX),
    })
}

/// `uname -r`.
fn uname_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: release is NUL-terminated by uname.
    unsafe { CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The 1/5/15-minute load averages, as /proc/loadavg prints them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// How many cgroup/bind6 programs run on a bind made by this process: the
/// effective programs of its cgroup (BPF_PROG_QUERY, BPF_F_QUERY_EFFECTIVE).
/// Programs attached at the cgroup2 root by *other* pandads (tests run
/// concurrently by others) run on our binds too, even in our namespaces:
/// the report states how many there were.
/// How long [`with_only_programs`] waits for other pandads' programs to go
/// away, and how often it looks.
const FOREIGN_WAIT: Duration = Duration::from_secs(300);
const FOREIGN_POLL: Duration = Duration::from_millis(50);

/// Runs `sample` while exactly `programs` cgroup/bind6 programs are in
/// effect for our binds (the phase's own: 0, or 1). Other pandads on the
/// host (tests, say) attach at the cgroup2 root too, and theirs would run on
/// our binds: this waits until none is in effect, and runs `sample` again
/// when the count changed while it ran. Returns its result and how many
/// times it had to be taken again.
pub fn with_only_programs<T>(
    programs: u32,
    mut sample: impl FnMut() -> Result<T>,
) -> Result<(T, u32)> {
    let deadline = Instant::now() + FOREIGN_WAIT;
    let mut retaken = 0;
    loop {
        while effective_bind6_programs()? != programs {
            interrupt::check()?;
            if Instant::now() > deadline {
                bail!(
                    "cgroup/bind6 programs other than the suite's stayed in effect for \
                     {FOREIGN_WAIT:?} (another pandad on this host?): no clean sample"
                );
            }
            std::thread::sleep(FOREIGN_POLL);
        }
        let t = sample()?;
        if effective_bind6_programs()? == programs {
            return Ok((t, retaken));
        }
        retaken += 1;
    }
}

pub fn effective_bind6_programs() -> Result<u32> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_CGROUP_INET6_BIND: u32 = 9;
    const BPF_F_QUERY_EFFECTIVE: u32 = 1;
    #[repr(C)]
    #[derive(Default)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    let dir = File::open(own_cgroup()?).context("opening our cgroup")?;
    let mut q = Query {
        target_fd: dir.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_INET6_BIND,
        query_flags: BPF_F_QUERY_EFFECTIVE,
        ..Default::default()
    };
    // SAFETY: q is a valid bpf_attr prefix of the size passed; with
    // prog_ids == 0 the kernel only writes prog_cnt (and attach_flags).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut q as *mut Query,
            std::mem::size_of::<Query>() as u32,
        )
    };
    if rc != 0 {
        bail!("BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
    }
    Ok(q.prog_cnt)
}

/// The cgroup2 mount point, from mountinfo (on hybrid systems it is not
/// /sys/fs/cgroup).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next() != Some("cgroup2") {
                return None;
            }
            let f: Vec<&str> = left.split_whitespace().collect();
            (f.len() >= 5 && f[3] == "/").then(|| PathBuf::from(f[4]))
        })
        .ok_or_else(|| anyhow!("no cgroup2 mount"))
}

/// This process's cgroup directory: the cgroup2 mount joined with
/// /proc/self/cgroup's `0::PATH`.
fn own_cgroup() -> Result<PathBuf> {
    let mount = cgroup2_mount()?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| anyhow!("no cgroup2 line in /proc/self/cgroup"))?;
    Ok(mount.join(rel.trim_start_matches('/')))
}
