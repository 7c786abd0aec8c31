//! Pacing of background I/O at a rate that can be changed at run time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Credit a pacer may bank while it is idle: after a pause (a slow meta
/// call, a small file) it may read this much faster than the rate, never
/// more.
const BURST: Duration = Duration::from_millis(50);

/// A byte rate shared between a worker and whoever may change it.
#[derive(Clone, Debug)]
pub struct Rate(Arc<AtomicU64>);

impl Rate {
    /// `bytes_per_sec` = 0 means unlimited.
    pub fn new(bytes_per_sec: u64) -> Self {
        Rate(Arc::new(AtomicU64::new(bytes_per_sec)))
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Takes effect from the next paced read.
    pub fn set(&self, bytes_per_sec: u64) {
        self.0.store(bytes_per_sec, Ordering::Relaxed)
    }
}

/// Spaces out reads so that they average at most the [`Rate`].
#[derive(Debug)]
pub(crate) struct Pacer {
    rate: Rate,
    /// When the bytes consumed so far are paid for.
    paid_until: Option<Instant>,
}

impl Pacer {
    pub(crate) fn new(rate: Rate) -> Self {
        Pacer {
            rate,
            paid_until: None,
        }
    }

    /// Books `bytes` just read at `now`; returns how long to wait before
    /// reading more.
    pub(crate) fn book(&mut self, bytes: u64, now: Instant) -> Duration {
        let rate = self.rate.get();
        if rate == 0 {
            self.paid_until = None;
            return Duration::ZERO;
        }
        let floor = now.checked_sub(BURST).unwrap_or(now);
        let from = self.paid_until.map_or(floor, |t| t.max(floor));
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let until = from + cost;
        self.paid_until = Some(until);
        until.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_add_up_to_the_rate() {
        let mut p = Pacer::new(Rate::new(1 << 20));
        let start = Instant::now();
        let mut now = start;
        for _ in 0..64 {
            // 64 KiB at a time, waiting exactly as told.
            now += p.book(64 << 10, now);
        }
        // 4 MiB at 1 MiB/s: 4 s, minus at most the burst credit.
        let took = now - start;
        assert!(took >= Duration::from_secs(4) - BURST, "{took:?}");
        assert!(took <= Duration::from_secs(4), "{took:?}");
    }

    #[test]
    fn idle_time_banks_only_the_burst() {
        let mut p = Pacer::new(Rate::new(1 << 20));
        let start = Instant::now();
        assert!(p.book(1 << 20, start) > Duration::from_millis(900));
        // An hour later, a full second's worth still costs nearly a second.
        let later = start + Duration::from_secs(3600);
        let wait = p.book(1 << 20, later);
        assert!(wait >= Duration::from_secs(1) - BURST, "{wait:?}");
    }

    #[test]
    fn rate_changes_apply_at_once_and_zero_is_unlimited() {
        let rate = Rate::new(1 << 20);
        let mut p = Pacer::new(rate.clone());
        let now = Instant::now();
        rate.set(0);
        assert_eq!(p.book(1 << 30, now), Duration::ZERO);
        rate.set(1 << 30);
        assert!(p.book(1 << 20, now) < Duration::from_millis(2));
    }
}
