//! CPU time of server processes, to report server CPU per operation and
//! per MiB; the bench's own CPU comes from the same place (`self`).
//!
//! Two sources: the run time of each live thread in nanoseconds
//! (`/proc/<pid>/task/<tid>/schedstat`), and the process's utime + stime in
//! clock ticks (`/proc/<pid>/stat`: 10 ms, all threads, dead ones too). A
//! delta uses the nanoseconds when every thread of the first sample is
//! still there (the usual case), else the ticks: a short phase (a few
//! milliseconds of CPU over a dozen processes) reads as zero in ticks.

use std::collections::BTreeMap;

/// Clock ticks per second of the `/proc` times.
pub fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime, in clock ticks, of a `/proc/<pid>/stat` line.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: fields are counted after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    // rest starts at field 3 (state); utime and stime are fields 14, 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_to_ms(ticks: u64) -> f64 {
    ticks as f64 * 1000.0 / ticks_per_sec() as f64
}

/// The run time in nanoseconds of a `/proc/<pid>/task/<tid>/schedstat`
/// line (its first field).
pub fn parse_schedstat_ns(line: &str) -> Option<u64> {
    line.split_ascii_whitespace().next()?.parse().ok()
}

/// CPU of one process at one instant.
#[derive(Debug, Clone, Default)]
struct ProcCpu {
    ticks: u64,
    /// Run time of each live thread, ns; `None` if unreadable.
    threads: Option<BTreeMap<u32, u64>>,
}

impl ProcCpu {
    fn read(proc_name: &str) -> Option<ProcCpu> {
        let stat = std::fs::read_to_string(format!("/proc/{proc_name}/stat")).ok()?;
        let ticks = parse_stat_ticks(&stat)?;
        let threads = (|| {
            let mut m = BTreeMap::new();
            for e in std::fs::read_dir(format!("/proc/{proc_name}/task")).ok()? {
                let e = e.ok()?;
                let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                // A thread that ended since the listing is not counted (the
                // comparison with the next sample then uses the ticks).
                if let Ok(line) = std::fs::read_to_string(e.path().join("schedstat")) {
                    m.insert(tid, parse_schedstat_ns(&line)?);
                }
            }
            Some(m)
        })();
        Some(ProcCpu { ticks, threads })
    }

    /// Milliseconds of CPU used since `earlier` (see the module docs).
    fn ms_since(&self, earlier: &ProcCpu) -> f64 {
        let ticks_ms = ticks_to_ms(self.ticks.saturating_sub(earlier.ticks));
        if let (Some(now), Some(then)) = (&self.threads, &earlier.threads) {
            let all_alive = then
                .iter()
                .all(|(tid, t)| now.get(tid).is_some_and(|n| n >= t));
            if all_alive {
                let ns: u64 = now
                    .iter()
                    .map(|(tid, n)| n - then.get(tid).copied().unwrap_or(0))
                    .sum();
                let ns_ms = ns as f64 / 1e6;
                // The ticks are within two of the truth (utime and stime
                // each cut to a tick at both ends); more than that above
                // the threads' sum is the CPU of a thread that started and
                // ended between the samples.
                if ticks_ms <= ns_ms + ticks_to_ms(2) {
                    return ns_ms;
                }
            }
        }
        ticks_ms
    }
}

/// CPU of a set of processes at one instant, and of this process.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    per_pid: BTreeMap<u32, ProcCpu>,
    own: Option<ProcCpu>,
}

impl CpuSample {
    pub fn take(pids: &[u32]) -> Self {
        CpuSample {
            per_pid: pids
                .iter()
                .filter_map(|&p| ProcCpu::read(&p.to_string()).map(|c| (p, c)))
                .collect(),
            own: ProcCpu::read("self"),
        }
    }

    /// Milliseconds of CPU each pid readable both times used since
    /// `earlier`.
    fn deltas<'a>(&'a self, earlier: &'a CpuSample) -> impl Iterator<Item = (u32, f64)> + 'a {
        self.per_pid.iter().filter_map(|(pid, now)| {
            let then = earlier.per_pid.get(pid)?;
            Some((*pid, now.ms_since(then)))
        })
    }

    /// Milliseconds of CPU the servers used since `earlier`, summed over the
    /// pids readable both times; `None` when there is none.
    pub fn servers_ms_since(&self, earlier: &CpuSample) -> Option<f64> {
        let mut ms = 0.0;
        let mut any = false;
        for (_, d) in self.deltas(earlier) {
            ms += d;
            any = true;
        }
        any.then_some(ms)
    }

    /// Milliseconds of CPU since `earlier` summed per group (a dev
    /// cluster's roles: meta, storage, gateway); pids in no group are left
    /// out.
    pub fn ms_by_group_since(
        &self,
        earlier: &CpuSample,
        group_of: &BTreeMap<u32, String>,
    ) -> BTreeMap<String, f64> {
        let mut ms: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, d) in self.deltas(earlier) {
            if let Some(g) = group_of.get(&pid) {
                *ms.entry(g.clone()).or_default() += d;
            }
        }
        ms
    }

    /// Milliseconds of CPU this process used since `earlier`.
    pub fn own_ms_since(&self, earlier: &CpuSample) -> Option<f64> {
        Some(self.own.as_ref()?.ms_since(earlier.own.as_ref()?))
    }

    /// Pids given but not readable (gone, or another user's).
    pub fn missing(&self, pids: &[u32]) -> Vec<u32> {
        pids.iter()
            .copied()
            .filter(|p| !self.per_pid.contains_key(p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "4242 (tes) ra (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 12345 1000000 100 18446744073709551615";
        assert_eq!(parse_stat_ticks(line), Some(325));
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_schedstat_ns("123456789 2345 67\n"), Some(123456789));
        assert_eq!(parse_schedstat_ns(""), None);
        assert_eq!(parse_schedstat_ns("x 1 2"), None);
    }

    /// A thread that ends between two samples: its CPU is in the ticks
    /// only, so the delta falls back to them.
    #[test]
    fn a_thread_gone_falls_back_to_ticks() {
        let then = ProcCpu {
            ticks: 10,
            threads: Some(BTreeMap::from([(1, 5_000_000), (2, 7_000_000)])),
        };
        let same = ProcCpu {
            ticks: 10,
            threads: Some(BTreeMap::from([
                (1, 6_500_000),
                (2, 7_000_000),
                (3, 250_000),
            ])),
        };
        assert!((same.ms_since(&then) - 1.75).abs() < 1e-9);
        // A thread that started and ended between the samples: only the
        // ticks have its CPU.
        let short_lived = ProcCpu {
            ticks: 15,
            ..same.clone()
        };
        assert!((short_lived.ms_since(&then) - ticks_to_ms(5)).abs() < 1e-9);
        let gone = ProcCpu {
            ticks: 13,
            threads: Some(BTreeMap::from([(1, 6_500_000)])),
        };
        assert!((gone.ms_since(&then) - ticks_to_ms(3)).abs() < 1e-9);
        let reused = ProcCpu {
            ticks: 12,
            threads: Some(BTreeMap::from([(1, 6_500_000), (2, 10)])),
        };
        assert!((reused.ms_since(&then) - ticks_to_ms(2)).abs() < 1e-9);
    }

    /// A few milliseconds of CPU, below one clock tick, still show.
    #[test]
    fn less_than_a_tick_of_cpu_shows() {
        let pid = std::process::id();
        let before = CpuSample::take(&[pid]);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(3) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = CpuSample::take(&[pid]);
        let ms = after.servers_ms_since(&before).unwrap();
        assert!(ms > 0.0 && ms < 1000.0, "{ms}");
    }

    #[test]
    fn own_process_uses_cpu() {
        let pid = std::process::id();
        let before = CpuSample::take(&[pid]);
        // Burn some CPU: a few clock ticks' worth.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = CpuSample::take(&[pid, u32::MAX]);
        assert!(after.servers_ms_since(&before).unwrap() > 0.0);
        assert!(after.own_ms_since(&before).unwrap() > 0.0);
        assert_eq!(after.missing(&[pid, u32::MAX]), vec![u32::MAX]);
        assert_eq!(CpuSample::default().servers_ms_since(&before), None);
        let groups = BTreeMap::from([(pid, "gateway".to_string())]);
        let by = after.ms_by_group_since(&before, &groups);
        assert_eq!(by.keys().collect::<Vec<_>>(), vec!["gateway"]);
        assert_eq!(Some(by["gateway"]), after.servers_ms_since(&before));
        assert!(after
            .ms_by_group_since(&before, &BTreeMap::new())
            .is_empty());
    }
}
