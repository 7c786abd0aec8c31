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
}

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
        if self.cluster_secret.is_none() {
            return bad(tessera_proto::auth::MISSING_SECRET_HELP.into());
        }
        Ok(())
    }

    pub(crate) fn heartbeat_period(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub(crate) fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}
