//! The storage node's metrics and readiness, served on its admin port.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

use tessera_observe::{Counter, Gauge, Registry};

use crate::store::Usage;

/// Counters and gauges of one storage node.
pub struct StorageMetrics {
    pub registry: Registry,
    shard_reads: Counter,
    shard_writes: Counter,
    checksum_failures: Counter,
    capacity: Gauge,
    used: Gauge,
    shards: Gauge,
    no_space: Counter,
    scrub_bytes: Counter,
    scrub_shards: Counter,
    scrub_corrupt: Counter,
    scrub_passes: Counter,
    scrub_last_pass: Gauge,
    scrub_progress: Gauge,
    scrub_reports_pending: Gauge,
    orphans_deleted: Counter,
    orphan_scans: Counter,
    orphan_last_scan: Gauge,
    heartbeat_ok: AtomicBool,
    scrub_progress_permille: AtomicU32,
    scrub_last_pass_ms: AtomicU64,
    orphan_last_scan_ms: AtomicI64,
}

/// The background workers' progress, as the `NodeInfo` RPC reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackgroundStatus {
    /// Full scrub passes completed since the node started.
    pub scrub_passes: u64,
    pub scrub_bytes: u64,
    pub scrub_shards: u64,
    /// Shards the scrubber found bad (and quarantined).
    pub scrub_corrupt: u64,
    /// Progress of the pass in progress, in thousandths (1000 between
    /// passes).
    pub scrub_progress_permille: u32,
    /// Duration of the last completed pass; 0 before the first.
    pub scrub_last_pass_ms: u64,
    pub orphans_deleted: u64,
    /// When the last orphan scan that reached meta finished; 0 = never.
    pub orphan_last_scan_unix_ms: i64,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        let r = Registry::new();
        let m = StorageMetrics {
            shard_reads: r.counter(
                "tessera_storage_shard_reads_total",
                "Shard reads served, by result (ok, error).",
                &["result"],
            ),
            shard_writes: r.counter(
                "tessera_storage_shard_writes_total",
                "Shard writes, by result (ok, error).",
                &["result"],
            ),
            checksum_failures: r.counter(
                "tessera_storage_checksum_failures_total",
                "Shards that failed their BLAKE3 check on read (quarantined).",
                &[],
            ),
            capacity: r.gauge(
                "tessera_storage_capacity_bytes",
                "Total capacity of the data directories' file systems.",
                &[],
            ),
            used: r.gauge(
                "tessera_storage_used_bytes",
                "Bytes held by shard files.",
                &[],
            ),
            shards: r.gauge("tessera_storage_shards", "Shard files held.", &[]),
            no_space: r.counter(
                "tessera_storage_no_space_total",
                "Shard writes refused because the disk (or capacity-bytes) is full.",
                &[],
            ),
            scrub_bytes: r.counter(
                "tessera_storage_scrub_bytes_total",
                "Shard file bytes re-hashed by the scrubber.",
                &[],
            ),
            scrub_shards: r.counter(
                "tessera_storage_scrub_shards_total",
                "Shard files checked by the scrubber.",
                &[],
            ),
            scrub_corrupt: r.counter(
                "tessera_storage_scrub_corrupt_total",
                "Shard files the scrubber found bad (quarantined and reported).",
                &[],
            ),
            scrub_passes: r.counter(
                "tessera_storage_scrub_passes_total",
                "Full scrub passes completed.",
                &[],
            ),
            scrub_last_pass: r.gauge(
                "tessera_storage_scrub_last_pass_seconds",
                "Duration of the last completed scrub pass.",
                &[],
            ),
            scrub_progress: r.gauge(
                "tessera_storage_scrub_pass_progress_ratio",
                "Progress of the scrub pass in progress (1 between passes).",
                &[],
            ),
            scrub_reports_pending: r.gauge(
                "tessera_storage_scrub_reports_pending",
                "Corrupt shards found but not yet reported to meta.",
                &[],
            ),
            orphans_deleted: r.counter(
                "tessera_storage_orphans_deleted_total",
                "Shard files deleted by the orphan scan (no live manifest places them here).",
                &[],
            ),
            orphan_scans: r.counter(
                "tessera_storage_orphan_scans_total",
                "Orphan scans, by result (ok, error).",
                &["result"],
            ),
            orphan_last_scan: r.gauge(
                "tessera_storage_orphan_scan_last_timestamp_seconds",
                "Unix time when the last successful orphan scan finished.",
                &[],
            ),
            heartbeat_ok: AtomicBool::new(false),
            scrub_progress_permille: AtomicU32::new(1000),
            scrub_last_pass_ms: AtomicU64::new(0),
            orphan_last_scan_ms: AtomicI64::new(0),
            registry: r,
        };
        // Every series exists from the start, so dashboards see zeros
        // rather than gaps.
        for c in [
            &m.no_space,
            &m.scrub_bytes,
            &m.scrub_shards,
            &m.scrub_corrupt,
            &m.scrub_passes,
            &m.orphans_deleted,
        ] {
            c.add(&[], 0);
        }
        m.orphan_scans.add(&["ok"], 0);
        m.orphan_scans.add(&["error"], 0);
        m.scrub_progress.set(&[], 1.0);
        m.scrub_last_pass.set(&[], 0.0);
        m.scrub_reports_pending.set(&[], 0.0);
        m.orphan_last_scan.set(&[], 0.0);
        m
    }
}

fn result(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "error"
    }
}

impl StorageMetrics {
    pub(crate) fn read(&self, ok: bool) {
        self.shard_reads.inc(&[result(ok)]);
    }
    pub(crate) fn write(&self, ok: bool) {
        self.shard_writes.inc(&[result(ok)]);
    }
    pub(crate) fn checksum_failure(&self) {
        self.checksum_failures.inc(&[]);
    }
    pub(crate) fn usage(&self, u: &Usage) {
        self.capacity.set(&[], u.capacity_bytes as f64);
        self.used.set(&[], u.used_bytes as f64);
        self.shards.set(&[], u.shard_count as f64);
    }
    pub(crate) fn no_space(&self) {
        self.no_space.inc(&[]);
    }
    /// Bytes the scrubber read (counted as they are read, so the rate is
    /// visible while a large shard is hashed).
    pub(crate) fn scrub_read(&self, bytes: u64) {
        self.scrub_bytes.add(&[], bytes);
    }
    /// One shard file checked by the scrubber.
    pub(crate) fn scrub_checked(&self) {
        self.scrub_shards.inc(&[]);
    }
    pub(crate) fn scrub_corrupt(&self) {
        self.scrub_corrupt.inc(&[]);
    }
    pub(crate) fn scrub_progress(&self, permille: u32) {
        let permille = permille.min(1000);
        self.scrub_progress_permille
            .store(permille, Ordering::Relaxed);
        self.scrub_progress.set(&[], f64::from(permille) / 1000.0);
    }
    pub(crate) fn scrub_pass_done(&self, ms: u64) {
        self.scrub_passes.inc(&[]);
        self.scrub_last_pass_ms.store(ms, Ordering::Relaxed);
        self.scrub_last_pass.set(&[], ms as f64 / 1000.0);
        self.scrub_progress(1000);
    }
    pub(crate) fn scrub_reports_pending(&self, n: usize) {
        self.scrub_reports_pending.set(&[], n as f64);
    }
    pub(crate) fn orphans_deleted(&self, n: u64) {
        self.orphans_deleted.add(&[], n);
    }
    pub(crate) fn orphan_scan(&self, ok: bool) {
        self.orphan_scans.inc(&[result(ok)]);
        if ok {
            let now = tessera_types::now_millis();
            self.orphan_last_scan_ms.store(now, Ordering::Relaxed);
            self.orphan_last_scan.set(&[], now as f64 / 1000.0);
        }
    }

    /// The scrubber's and orphan scan's figures.
    pub fn background(&self) -> BackgroundStatus {
        BackgroundStatus {
            scrub_passes: self.scrub_passes.get(&[]),
            scrub_bytes: self.scrub_bytes.get(&[]),
            scrub_shards: self.scrub_shards.get(&[]),
            scrub_corrupt: self.scrub_corrupt.get(&[]),
            scrub_progress_permille: self.scrub_progress_permille.load(Ordering::Relaxed),
            scrub_last_pass_ms: self.scrub_last_pass_ms.load(Ordering::Relaxed),
            orphans_deleted: self.orphans_deleted.get(&[]),
            orphan_last_scan_unix_ms: self.orphan_last_scan_ms.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn heartbeat_succeeded(&self) {
        self.heartbeat_ok.store(true, Ordering::Relaxed);
    }
    /// A heartbeat reached meta at least once (the store is open, or this
    /// node would not run).
    pub fn heartbeat_ok(&self) -> bool {
        self.heartbeat_ok.load(Ordering::Relaxed)
    }
}
