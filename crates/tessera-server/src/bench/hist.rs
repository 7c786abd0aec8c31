//! A latency histogram with bounded memory: log-linear buckets over
//! microseconds (exact below 128 µs, then 64 buckets per power of two, so
//! every percentile is within 1/64 ≈ 1.6% of the true value), the exact
//! maximum, and merging of per-worker histograms.

use std::time::Duration;

/// Values below this are counted exactly.
const LINEAR: u64 = 128;
/// Sub-buckets per power of two above [`LINEAR`] (2^6).
const SUB_BITS: u32 = 6;
/// Powers of two covered above LINEAR: up to 2^48 µs (~9 years).
const OCTAVES: usize = 41;
const BUCKETS: usize = LINEAR as usize + (OCTAVES << SUB_BITS);

/// Counts of latencies; percentiles come out within 1.6%.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max_us: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max_us", &self.max_us)
            .finish_non_exhaustive()
    }
}

fn index(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    // exp >= 7 since us >= 128.
    let exp = 63 - us.leading_zeros();
    let sub = (us >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    let i = LINEAR as usize + (((exp - 7) as usize) << SUB_BITS) + sub as usize;
    i.min(BUCKETS - 1)
}

/// The middle of bucket `i`, in µs.
fn value(i: usize) -> f64 {
    if i < LINEAR as usize {
        return i as f64;
    }
    let j = i - LINEAR as usize;
    let exp = (j >> SUB_BITS) as u32 + 7;
    let sub = (j & ((1 << SUB_BITS) - 1)) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    let low = (1u64 << exp) + sub * width;
    low as f64 + width as f64 / 2.0
}

impl Histogram {
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0..=1) in milliseconds; `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // A bucket's middle may lie past the largest value seen.
                return Some(value(i).min(self.max_us as f64) / 1000.0);
            }
        }
        self.max_ms()
    }

    /// The largest latency recorded, in milliseconds (exact to the µs).
    pub fn max_ms(&self) -> Option<f64> {
        (self.total > 0).then(|| self.max_us as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in [0u64, 1, 127, 128, 129, 1000, 65_535, 1 << 30, 1 << 47] {
            let i = index(us);
            assert!(i >= last, "{us}");
            last = i;
            let v = value(i);
            assert!(
                (v - us as f64).abs() <= us as f64 / 64.0 + 0.5,
                "{us} -> {v}"
            );
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_within_two_percent() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.02;
        assert!(near(h.quantile_ms(0.5).unwrap(), 5.0));
        assert!(near(h.quantile_ms(0.9).unwrap(), 9.0));
        assert!(near(h.quantile_ms(0.99).unwrap(), 9.9));
        assert_eq!(h.max_ms(), Some(10.0));
        assert_eq!(h.quantile_ms(1.0), Some(10.0));
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        for _ in 0..99 {
            a.record(Duration::from_millis(1));
        }
        b.record(Duration::from_secs(2));
        a.merge(&b);
        assert_eq!(a.count(), 100);
        assert!((a.quantile_ms(0.5).unwrap() - 1.0).abs() < 0.02);
        assert_eq!(a.max_ms(), Some(2000.0));
        assert!(a.quantile_ms(0.999).unwrap() > 1900.0);
    }
}
