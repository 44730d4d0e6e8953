//! Median and spread of repeated samples, and ratios between variants
//! measured in the same repeat.

use serde::{Deserialize, Serialize};

/// Median, interquartile range and extremes of a set of samples.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub q1: f64,
    pub q3: f64,
}

impl Summary {
    /// Summarises `samples` (NaN when empty).
    pub fn of(samples: &[f64]) -> Summary {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return Summary {
                n: 0,
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                q1: f64::NAN,
                q3: f64::NAN,
            };
        }
        Summary {
            n: v.len(),
            median: quantile(&v, 0.5),
            min: v[0],
            max: v[v.len() - 1],
            q1: quantile(&v, 0.25),
            q3: quantile(&v, 0.75),
        }
    }
}

/// Linear-interpolated quantile of sorted, non-empty `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// `a[i] / b[i]` for each repeat i: a variant against its baseline measured
/// in the same repeat, so that slow drift of the machine cancels out.
pub fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quartiles() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.n, s.median, s.min, s.max), (5, 3.0, 1.0, 5.0));
        assert_eq!((s.q1, s.q3), (2.0, 4.0));
        let s = Summary::of(&[1.0, 2.0]);
        assert_eq!(s.median, 1.5);
        assert!(Summary::of(&[]).median.is_nan());
    }

    #[test]
    fn ratios_pair_by_repeat() {
        assert_eq!(paired_ratios(&[2.0, 9.0], &[1.0, 3.0]), vec![2.0, 3.0]);
    }
}
