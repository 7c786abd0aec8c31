//! Tessera storage node. (Contract stub: the implementation replaces the
//! bodies, keeping these signatures.)

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("config: {0}")]
    Config(String),
}

/// Serves the storage node on `listener` until `shutdown` is cancelled.
pub async fn serve(
    config: StorageConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StorageError> {
    let _ = (config, listener, shutdown);
    Err(StorageError::Config("not yet implemented".into()))
}
