//! How much each case measures: the full suite (under 10 minutes on two
//! cores) or `--quick` (under 2 minutes, for CI and development).

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Plan {
    /// Repeats of every case, variants interleaved within each repeat.
    pub repeats: usize,
    /// Case 1: socket+bind+listen+close operations per batch, and batches
    /// per variant and repeat (the phases alternate between batches; a
    /// repeat's figure is the median of its batches). Small batches and many
    /// rounds: the machine's load drifts (other work on two cores), and a
    /// variant's batches then sample it at more moments, close to the
    /// other variants' batches.
    pub hook_batch: u32,
    pub hook_rounds: usize,
    /// Case 6: operations per batch and batches per variant and repeat,
    /// as case 1's (one binder process per variant; the phases are a lease
    /// table filled or emptied through the API, so they change fast).
    pub leases_batch: u32,
    pub leases_rounds: usize,
    /// Cases 2 and 3: numbers of addresses.
    pub sizes: Vec<u32>,
    /// Case 4: how long the client churns, per sample.
    pub churn: Duration,
    /// Case 5: how long pandad is left idle while its CPU time is counted.
    pub idle: Duration,
    /// Case 5: tamperings per kind for the repair latency.
    pub repair_repeats: usize,
    /// Case 3: longest wait for kernel memory to settle after a namespace
    /// with many addresses is deleted (its cleanup is asynchronous).
    pub settle_max: Duration,
    /// Case 3: the longest one `ip -batch` of N /128s may run. Adding
    /// addresses one by one is quadratic in the kernel (each add walks the
    /// device's address list): 10,000 take seconds, 100,000 ten minutes.
    /// A sample that hits the cap is stopped and reports how many addresses
    /// it added by then.
    pub setup_cap: Duration,
    /// Case 3: N from which one /128 per address is measured once, after
    /// the repeats of everything else (it is slow, and its teardown keeps
    /// the kernel busy for a while).
    pub setup_once_from: u32,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                repeats: 3,
                hook_batch: 2_500,
                hook_rounds: 12,
                leases_batch: 2_000,
                leases_rounds: 12,
                sizes: vec![1_000, 10_000],
                churn: Duration::from_secs(1),
                idle: Duration::from_secs(3),
                repair_repeats: 5,
                settle_max: Duration::from_secs(3),
                setup_cap: Duration::from_secs(30),
                setup_once_from: 50_000,
            }
        } else {
            Plan {
                repeats: 5,
                hook_batch: 5_000,
                hook_rounds: 20,
                leases_batch: 5_000,
                leases_rounds: 20,
                sizes: vec![1_000, 10_000, 100_000],
                churn: Duration::from_secs(5),
                idle: Duration::from_secs(10),
                repair_repeats: 30,
                settle_max: Duration::from_secs(30),
                setup_cap: Duration::from_secs(60),
                setup_once_from: 50_000,
            }
        }
    }
}

/// The order of `items` for repeat `r`: rotated by one each repeat (AB, BA,
/// AB… or ABC, BCA, CAB…), so that every variant takes every position and a
/// slow drift of the machine spreads over all of them instead of favouring
/// whichever always runs first.
pub fn interleave<T: Clone>(items: &[T], r: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let k = r % v.len();
        v.rotate_left(k);
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn rotates_each_repeat() {
        assert_eq!(super::interleave(&[1, 2, 3], 0), vec![1, 2, 3]);
        assert_eq!(super::interleave(&[1, 2, 3], 1), vec![2, 3, 1]);
        assert_eq!(super::interleave(&[1, 2], 3), vec![2, 1]);
    }
}
