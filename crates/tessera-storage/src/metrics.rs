//! The storage node's metrics and readiness, served on its admin port.

use std::sync::atomic::{AtomicBool, Ordering};

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
    heartbeat_ok: AtomicBool,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        let r = Registry::new();
        StorageMetrics {
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
            heartbeat_ok: AtomicBool::new(false),
            registry: r,
        }
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
    pub(crate) fn heartbeat_succeeded(&self) {
        self.heartbeat_ok.store(true, Ordering::Relaxed);
    }
    /// A heartbeat reached meta at least once (the store is open, or this
    /// node would not run).
    pub fn heartbeat_ok(&self) -> bool {
        self.heartbeat_ok.load(Ordering::Relaxed)
    }
}
