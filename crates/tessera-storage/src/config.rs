//! Storage node configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_proto::ClusterSecret;

use crate::StorageError;

/// Storage node configuration (TOML, kebab-case).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct StorageConfig {
    /// One or more data directories (one per disk). The node id is kept in
    /// the first one.
    pub data_dirs: Vec<PathBuf>,
    /// Address other nodes use to reach this node (`host:port`); defaults
    /// to the bound listen address.
    pub advertise: Option<String>,
    /// Failure domain (rack, room, availability zone).
    pub zone: String,
    /// Relative placement weight.
    pub weight: f64,
    /// Meta node addresses (`host:port`).
    pub meta: Vec<String>,
    /// Heartbeat period in milliseconds.
    pub heartbeat_ms: u64,
    /// Largest shard the node accepts, in bytes.
    pub max_shard_bytes: u64,
    /// Memory budget for shard data held by reads in flight, in bytes
    /// (a read waits for budget before it loads a shard).
    pub read_buffer_bytes: u64,
    /// How long `serve` waits for in-flight requests and background tasks
    /// after shutdown is requested, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Address of the admin HTTP port (`/metrics`, `/health/live`,
    /// `/health/ready`); unset = none.
    pub admin_listen: Option<String>,
    /// The cluster secret that signs and checks every internode call.
    /// Required; never serialized.
    #[serde(skip_serializing)]
    pub cluster_secret: Option<ClusterSecret>,
    /// Scrubber read rate, in bytes per second: the background re-hash of
    /// every shard never reads faster than this.
    pub scrub_rate: u64,
    /// One full scrub pass per this period, in milliseconds: the next pass
    /// starts when the period since the start of the last one has elapsed
    /// (at once if the pass took longer). 0 = scrubber off.
    pub scrub_period_ms: u64,
    /// How often the orphan scan runs, in milliseconds: shard files no live
    /// manifest places on this node (failed uploads, a crash before commit,
    /// shards rebuilt elsewhere while this node was away) are deleted.
    /// 0 = orphan scan off. It never runs without `meta`.
    pub orphan_scan_interval_ms: u64,
    /// The orphan scan considers only shard files older than this, in
    /// milliseconds; it must be longer than any upload can take (a shard is
    /// written before the manifest that references it is committed).
    pub orphan_safety_age_ms: u64,
    /// How often the node checks that it has a file for every shard meta
    /// places on it, reporting missing ones for repair, in milliseconds;
    /// 0 = off.
    pub inventory_interval_ms: u64,
    /// Optional limit on the bytes held by shard files (headers included),
    /// below the file system's own: a write that would exceed it fails as
    /// if the disk were full. Unset = the file system's capacity.
    pub capacity_bytes: Option<u64>,
    /// Write shard files with `O_DIRECT`, bypassing the page cache (less
    /// CPU per byte written, and write-once shards do not evict hot data).
    /// A data directory whose file system refuses it falls back to
    /// buffered writes on its own; turn this off for one whose `O_DIRECT`
    /// is accepted but broken or slow. Reads always use the page cache.
    pub direct_io: bool,
}

/// Default scrub rate: 64 MiB/s.
pub const DEFAULT_SCRUB_RATE: u64 = 64 << 20;
/// Default scrub period: one pass a day.
pub const DEFAULT_SCRUB_PERIOD_MS: u64 = 24 * 3600 * 1000;
/// Default orphan scan interval: hourly.
pub const DEFAULT_ORPHAN_SCAN_INTERVAL_MS: u64 = 3600 * 1000;
/// Default inventory check period: 10 minutes (a stat per placed shard).
pub const DEFAULT_INVENTORY_INTERVAL_MS: u64 = 600 * 1000;
/// Default orphan safety age: one hour, longer than any upload.
pub const DEFAULT_ORPHAN_SAFETY_AGE_MS: u64 = 3600 * 1000;
/// Below this safety age the orphan scan may delete the shards of an
/// upload still in progress: allowed (tests, chaos runs) but warned about.
const SHORT_SAFETY_AGE_MS: u64 = 60 * 1000;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dirs: vec![PathBuf::from("data/storage")],
            advertise: None,
            zone: "default".into(),
            weight: 1.0,
            meta: vec![],
            heartbeat_ms: 1000,
            max_shard_bytes: 64 << 20,
            read_buffer_bytes: 256 << 20,
            shutdown_grace_ms: 10_000,
            admin_listen: None,
            cluster_secret: None,
            scrub_rate: DEFAULT_SCRUB_RATE,
            scrub_period_ms: DEFAULT_SCRUB_PERIOD_MS,
            orphan_scan_interval_ms: DEFAULT_ORPHAN_SCAN_INTERVAL_MS,
            orphan_safety_age_ms: DEFAULT_ORPHAN_SAFETY_AGE_MS,
            inventory_interval_ms: DEFAULT_INVENTORY_INTERVAL_MS,
            capacity_bytes: None,
            direct_io: true,
        }
    }
}

impl StorageConfig {
    /// Checks the values that would otherwise fail later, at a worse time.
    pub fn validate(&self) -> Result<(), StorageError> {
        let bad = |m: String| Err(StorageError::Config(m));
        if self.data_dirs.is_empty() {
            return bad("data-dirs must name at least one directory".into());
        }
        for (i, d) in self.data_dirs.iter().enumerate() {
            if d.as_os_str().is_empty() {
                return bad(format!("data-dirs[{i}] is empty"));
            }
            if self.data_dirs[..i].contains(d) {
                return bad(format!("data-dirs lists {} twice", d.display()));
            }
        }
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return bad(format!(
                "weight must be a positive number, got {}",
                self.weight
            ));
        }
        if self.zone.is_empty() {
            return bad("zone must not be empty".into());
        }
        if self.heartbeat_ms == 0 {
            return bad("heartbeat-ms must be positive".into());
        }
        if self.max_shard_bytes == 0 {
            return bad("max-shard-bytes must be positive".into());
        }
        if self.read_buffer_bytes < self.max_shard_bytes {
            return bad(format!(
                "read-buffer-bytes ({}) must hold at least one shard (max-shard-bytes {})",
                self.read_buffer_bytes, self.max_shard_bytes
            ));
        }
        if let Some(a) = &self.advertise {
            if a.is_empty() {
                return bad("advertise must not be empty when set".into());
            }
        }
        if self.scrub_rate == 0 {
            return bad(
                "scrub-rate must be positive (turn the scrubber off with scrub-period-ms = 0)"
                    .into(),
            );
        }
        if self.orphan_scan_interval_ms > 0 && self.orphan_safety_age_ms == 0 {
            return bad("orphan-safety-age-ms must be positive: a shard is written before the manifest that references it".into());
        }
        if self.capacity_bytes == Some(0) {
            return bad("capacity-bytes must be positive when set".into());
        }
        if self.cluster_secret.is_none() {
            return bad(tessera_proto::auth::MISSING_SECRET_HELP.into());
        }
        if self.orphan_scan_interval_ms > 0 && self.orphan_safety_age_ms < SHORT_SAFETY_AGE_MS {
            tracing::warn!(
                orphan_safety_age_ms = self.orphan_safety_age_ms,
                "orphan-safety-age-ms is short: the orphan scan may delete shards of uploads still in progress"
            );
        }
        Ok(())
    }

    /// The scrub period, `None` when the scrubber is off.
    pub(crate) fn scrub_period(&self) -> Option<Duration> {
        (self.scrub_period_ms > 0).then(|| Duration::from_millis(self.scrub_period_ms))
    }

    /// The orphan scan interval, `None` when the scan is off.
    pub(crate) fn orphan_scan_interval(&self) -> Option<Duration> {
        (self.orphan_scan_interval_ms > 0)
            .then(|| Duration::from_millis(self.orphan_scan_interval_ms))
    }

    pub(crate) fn inventory_interval(&self) -> Option<Duration> {
        (self.inventory_interval_ms > 0).then(|| Duration::from_millis(self.inventory_interval_ms))
    }

    pub(crate) fn orphan_safety_age(&self) -> Duration {
        Duration::from_millis(self.orphan_safety_age_ms)
    }

    pub(crate) fn heartbeat_period(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}
