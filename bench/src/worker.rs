//! The scale case's worker process: holds up to [`PER_PROCESS`] listeners.
//!
//! A process may hold only about 20,000 descriptors here, so 100,000
//! listeners need several processes. Each worker joins the namespace,
//! opens its share of listeners one after another (timing them in thread
//! CPU time and wall time), reports `ok CPU_NS LAST_CPU_NS LAST_COUNT
//! WALL_NS` on stdout, and keeps them open until its stdin closes; then it
//! exits and the kernel closes them.

use std::{
    io::{Read, Write},
    path::Path,
};

use anyhow::{Context, Result};

use crate::{clock::Stamp, netns, sock};

/// Listeners per worker process (the hard descriptor limit is ~20,000).
pub const PER_PROCESS: u32 = 15_000;
/// The marginal cost is measured over this many last binds.
pub const LAST: u32 = 1_000;
/// Listeners opened and closed, untimed, before the timed ones.
const WARM_UP: u32 = 500;

/// Which addresses a worker listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    /// [`sock::prefix_addr`]`(subnet, first..first+count)`.
    Prefix,
    /// [`sock::v4_loopback`]`(first..first+count)`: 127/8.
    V4,
}

/// Opens `count` listeners on `port`, at distinct addresses from `first` on.
pub fn listen(
    netns_path: &Path,
    family: Family,
    subnet: u16,
    first: u64,
    count: u32,
    port: u16,
) -> Result<()> {
    // Single-threaded here: setns moves the whole process.
    netns::enter(netns_path)?;
    raise_nofile()?;
    warm_up(family, subnet, first, count, port)?;
    let mut held = Vec::with_capacity(count as usize);
    let t0 = Stamp::now();
    let mut t_last = t0;
    for i in 0..count {
        if i + LAST == count {
            t_last = Stamp::now();
        }
        let index = first + i as u64;
        held.push(match family {
            Family::Prefix => sock::listener6(sock::prefix_addr(subnet, index), port, 16)?,
            Family::V4 => sock::listener4(sock::v4_loopback(index as u32), port, 16)?,
        });
    }
    let (total, wall) = t0.elapsed();
    let (last, _) = t_last.elapsed();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ok {} {} {} {}",
        total.as_nanos(),
        last.as_nanos(),
        LAST.min(count),
        wall.as_nanos()
    )?;
    out.flush()?;
    // Hold the listeners until the parent closes our stdin.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
    Ok(())
}

/// Untimed preparation, so that a small worker is not charged for being a
/// fresh process: the descriptor table is grown to its final size once
/// (dup2 to the highest descriptor it will use), and a few hundred
/// listeners are opened and closed on the next port (caches, slab).
fn warm_up(family: Family, subnet: u16, first: u64, count: u32, port: u16) -> Result<()> {
    let top = count as i32 + 64;
    // SAFETY: dup2 of stderr to an unused high descriptor, closed at once.
    unsafe {
        if libc::dup2(2, top) == top {
            libc::close(top);
        }
    }
    for i in 0..WARM_UP.min(count) {
        let index = first + i as u64;
        match family {
            Family::Prefix => sock::bind_listen_close6(sock::prefix_addr(subnet, index), port + 1)?,
            Family::V4 => sock::bind_listen_close4(sock::v4_loopback(index as u32), port + 1)?,
        }
    }
    Ok(())
}

/// Soft RLIMIT_NOFILE up to the hard limit.
fn raise_nofile() -> Result<()> {
    // SAFETY: rlimit is plain data; get/setrlimit only read/write it.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        rl.rlim_cur = rl.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit");
        }
    }
    Ok(())
}
