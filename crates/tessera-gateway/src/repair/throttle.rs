//! A token bucket of bytes per second whose rate can change at run time.
//!
//! Callers take what they are about to move and wait the returned time
//! before moving it: the bucket may go into debt, so a shard larger than
//! the burst still passes, and the long-run rate is the configured one.

use std::time::{Duration, Instant};

/// Bytes-per-second limiter (rate 0 = unlimited). Pure: the caller passes
/// the clock and does the waiting.
#[derive(Debug)]
pub struct TokenBucket {
    rate: u64,
    /// Tokens, negative while in debt.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, now: Instant) -> Self {
        TokenBucket {
            rate,
            tokens: rate as f64,
            last: now,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Changes the rate; tokens and debt carry over (capped at the new
    /// burst of one second's worth).
    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        if rate == self.rate {
            return;
        }
        self.refill(now);
        self.rate = rate;
        if rate == 0 {
            self.tokens = 0.0;
        } else {
            self.tokens = self.tokens.min(rate as f64);
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        if self.rate > 0 {
            let burst = self.rate as f64;
            self.tokens = (self.tokens + elapsed * self.rate as f64).min(burst);
        }
    }

    /// Takes `bytes` and returns how long to wait before moving them.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn unlimited_never_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, t0);
        assert_eq!(b.take(u64::MAX / 2, t0), Duration::ZERO);
    }

    #[test]
    fn burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10 * MIB, t0);
        // One second's worth passes at once.
        assert_eq!(b.take(10 * MIB, t0), Duration::ZERO);
        // Then 5 MiB costs half a second.
        let w = b.take(5 * MIB, t0);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-9, "{w:?}");
        // After that half second, the debt is paid; 1 MiB more costs 0.1 s.
        let t1 = t0 + Duration::from_millis(500);
        let w = b.take(MIB, t1);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-9, "{w:?}");
    }

    #[test]
    fn long_run_rate_holds_for_big_takes() {
        // 100 takes of 4 MiB at 8 MiB/s: the caller that waits as told ends
        // after about 50 s (minus the 1 s initial burst).
        let t0 = Instant::now();
        let mut b = TokenBucket::new(8 * MIB, t0);
        let mut now = t0;
        for _ in 0..100 {
            now += b.take(4 * MIB, now);
        }
        let secs = (now - t0).as_secs_f64();
        assert!((secs - 49.0).abs() < 0.01, "{secs}");
    }

    #[test]
    fn rate_changes_at_run_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(MIB, t0);
        assert_eq!(b.take(MIB, t0), Duration::ZERO);
        b.set_rate(0, t0);
        assert_eq!(b.take(100 * MIB, t0), Duration::ZERO);
        b.set_rate(2 * MIB, t0);
        // No burst banked while unlimited: 2 MiB costs a second.
        let w = b.take(2 * MIB, t0);
        assert!((w.as_secs_f64() - 1.0).abs() < 1e-9, "{w:?}");
        assert_eq!(b.rate(), 2 * MIB);
    }
}
