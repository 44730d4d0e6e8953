//! What the cases that time batches of binds per variant share (case 1,
//! the hook; case 6, leases): reducing batch timings to per-repeat medians,
//! the timed loop itself, and bind6's run time from the kernel's BPF
//! statistics with the empty program alongside.
use std::time::Duration;

use anyhow::{bail, Result};

use crate::{bpfstats, clock::Stamp, results::BpfRunTime, stats::Summary};

/// Per variant: (CPU µs, wall µs) of each batch of the current repeat, and
/// the per-repeat medians.
pub struct Samples {
    pub key: &'static str,
    batches: Vec<(f64, f64)>,
    pub cpu: Vec<f64>,
    pub wall: Vec<f64>,
}

/// Every variant's [`Samples`], in the order the case lists them.
pub struct Variants(pub Vec<Samples>);

impl Variants {
    pub fn new(keys: impl IntoIterator<Item = &'static str>) -> Variants {
        Variants(
            keys.into_iter()
                .map(|key| Samples {
                    key,
                    batches: Vec::new(),
                    cpu: Vec::new(),
                    wall: Vec::new(),
                })
                .collect(),
        )
    }

    /// Records one batch of variant `key`.
    pub fn put(&mut self, key: &str, t: (f64, f64)) {
        let s = self.0.iter_mut().find(|s| s.key == key);
        s.expect("a known variant").batches.push(t);
    }

    /// Ends a repeat: each variant's figure is the median of its batches
    /// (dropped for the warm-up repeat).
    pub fn end_repeat(&mut self, record: bool) {
        for s in &mut self.0 {
            let b = std::mem::take(&mut s.batches);
            if record && !b.is_empty() {
                let cpu: Vec<f64> = b.iter().map(|x| x.0).collect();
                let wall: Vec<f64> = b.iter().map(|x| x.1).collect();
                s.cpu.push(Summary::of(&cpu).median);
                s.wall.push(Summary::of(&wall).median);
            }
        }
    }
}

/// Runs `one(i)` `warmup` times untimed, then `ops` times timed on this
/// thread's clocks: (CPU, wall) for the `ops`.
pub fn time_loop(
    warmup: u32,
    ops: u32,
    mut one: impl FnMut(u32) -> Result<()>,
) -> Result<(Duration, Duration)> {
    for i in 0..warmup {
        one(i)?;
    }
    let t0 = Stamp::now();
    for i in 0..ops {
        one(i)?;
    }
    Ok(t0.elapsed())
}

/// Per repeat: bind6's ns per run, its runs, and the empty program's ns per
/// run over the same binds.
#[derive(Default)]
pub struct BpfSamples {
    ns: Vec<f64>,
    runs: Vec<u64>,
    empty_ns: Vec<f64>,
}

impl BpfSamples {
    /// Runs `batch` (`ops` binds) between two reads of the statistics of
    /// bind6 (program `id`) and of the empty program (`empty_id`), and
    /// records both programs' ns per run. The statistics must be enabled.
    pub fn measure(
        &mut self,
        id: u32,
        empty_id: u32,
        ops: u32,
        batch: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let ((t0, c0), (e0, n0)) = (bpfstats::read(id)?, bpfstats::read(empty_id)?);
        batch()?;
        let ((t1, c1), (e1, n1)) = (bpfstats::read(id)?, bpfstats::read(empty_id)?);
        let (runs, empty_runs) = (c1.saturating_sub(c0), n1.saturating_sub(n0));
        if runs < u64::from(ops) || empty_runs < u64::from(ops) {
            bail!(
                "bind6 ran {runs} times, the empty program {empty_runs}, for {ops} binds: \
                 are they attached?"
            );
        }
        self.ns.push((t1 - t0) as f64 / runs as f64);
        self.runs.push(runs);
        self.empty_ns.push((e1 - e0) as f64 / empty_runs as f64);
        Ok(())
    }

    pub fn into_result(self, label: &str, variant: &str) -> BpfRunTime {
        BpfRunTime {
            label: label.into(),
            variant: variant.into(),
            ns_per_run: self.ns,
            runs: self.runs,
            empty_ns_per_run: self.empty_ns,
        }
    }
}
