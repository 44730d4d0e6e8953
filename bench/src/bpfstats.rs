//! The BPF programs' own run time, from the kernel's statistics.
//!
//! The kernel counts `run_time_ns` and `run_cnt` per program only while
//! someone holds a `BPF_ENABLE_STATS` descriptor (it costs two clock reads
//! per run, so it is off by default). The hook-overhead case times its
//! variants with statistics off and reads them in a separate pass.

use std::os::fd::OwnedFd;

use anyhow::{bail, Context, Result};
use aya::sys::{enable_stats, Stats};

/// Statistics are collected while this is alive.
pub struct StatsOn(#[allow(dead_code)] OwnedFd);

pub fn enable() -> Result<StatsOn> {
    Ok(StatsOn(
        enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS (BPF_STATS_RUN_TIME)")?,
    ))
}

/// (run_time_ns, run_cnt) of the program with kernel id `id`.
pub fn read(id: u32) -> Result<(u64, u64)> {
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        if info.id() == id {
            return Ok((info.run_time().as_nanos() as u64, info.run_count()));
        }
    }
    bail!("BPF program {id} is no longer loaded")
}
