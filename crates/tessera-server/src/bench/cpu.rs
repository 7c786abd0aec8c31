//! CPU time of server processes, from `/proc/<pid>/stat` (utime + stime,
//! all threads), to report server CPU per operation and per MiB. The
//! bench's own CPU comes from the same place (`/proc/self/stat`).

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

fn ticks_of(proc_name: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{proc_name}/stat")).ok()?;
    parse_stat_ticks(&stat)
}

/// CPU ticks of a set of processes at one instant, and of this process.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    per_pid: BTreeMap<u32, u64>,
    own: Option<u64>,
}

impl CpuSample {
    pub fn take(pids: &[u32]) -> Self {
        CpuSample {
            per_pid: pids
                .iter()
                .filter_map(|&p| ticks_of(&p.to_string()).map(|t| (p, t)))
                .collect(),
            own: ticks_of("self"),
        }
    }

    /// CPU ticks each pid readable both times used since `earlier`.
    fn deltas<'a>(&'a self, earlier: &'a CpuSample) -> impl Iterator<Item = (u32, u64)> + 'a {
        self.per_pid.iter().filter_map(|(pid, now)| {
            let then = earlier.per_pid.get(pid)?;
            Some((*pid, now.saturating_sub(*then)))
        })
    }

    /// Milliseconds of CPU the servers used since `earlier`, summed over the
    /// pids readable both times; `None` when there is none.
    pub fn servers_ms_since(&self, earlier: &CpuSample) -> Option<f64> {
        let mut ticks = 0;
        let mut any = false;
        for (_, d) in self.deltas(earlier) {
            ticks += d;
            any = true;
        }
        any.then(|| ticks_to_ms(ticks))
    }

    /// Milliseconds of CPU since `earlier` summed per group (a dev
    /// cluster's roles: meta, storage, gateway); pids in no group are left
    /// out.
    pub fn ms_by_group_since(
        &self,
        earlier: &CpuSample,
        group_of: &BTreeMap<u32, String>,
    ) -> BTreeMap<String, f64> {
        let mut ticks: BTreeMap<String, u64> = BTreeMap::new();
        for (pid, d) in self.deltas(earlier) {
            if let Some(g) = group_of.get(&pid) {
                *ticks.entry(g.clone()).or_default() += d;
            }
        }
        ticks
            .into_iter()
            .map(|(g, t)| (g, ticks_to_ms(t)))
            .collect()
    }

    /// Milliseconds of CPU this process used since `earlier`.
    pub fn own_ms_since(&self, earlier: &CpuSample) -> Option<f64> {
        Some(ticks_to_ms(self.own?.checked_sub(earlier.own?)?))
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
