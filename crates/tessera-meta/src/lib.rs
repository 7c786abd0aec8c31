//! Tessera metadata node. (Contract stub: the implementation replaces the
//! bodies, keeping these signatures.)

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Meta node configuration (TOML, kebab-case).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct MetaConfig {
    /// This node's Raft id (1, 2, 3, ...).
    pub id: u64,
    /// Directory of the sled database (Raft log, vote, state machine).
    pub data_dir: PathBuf,
    /// Address peers and clients use to reach this node; defaults to the
    /// bound listen address.
    pub advertise: Option<String>,
    /// The initial members, id -> address, used to bootstrap the group.
    pub peers: BTreeMap<u64, String>,
    /// Initialize the group with `peers` if it was never initialized. Safe
    /// to set on every node: the lowest id among peers does it.
    pub bootstrap: bool,
    /// A storage node missing heartbeats this long is marked suspect.
    pub suspect_after_ms: u64,
    /// ... and down after this long.
    pub down_after_ms: u64,
    /// Take a snapshot (and compact the log) every this many entries.
    pub snapshot_every: u64,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            id: 1,
            data_dir: PathBuf::from("data/meta"),
            advertise: None,
            peers: BTreeMap::new(),
            bootstrap: true,
            suspect_after_ms: 5_000,
            down_after_ms: 30_000,
            snapshot_every: 5_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetaNodeError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("config: {0}")]
    Config(String),
}

/// Serves the meta node (Raft + meta service) on `listener` until
/// `shutdown` is cancelled.
pub async fn serve(
    config: MetaConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), MetaNodeError> {
    let _ = (config, listener, shutdown);
    Err(MetaNodeError::Config("not yet implemented".into()))
}
