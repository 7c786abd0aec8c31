//! Tessera S3 gateway. (Contract stub: the implementation replaces the
//! bodies, keeping these signatures.)

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Gateway configuration (TOML, kebab-case).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub struct GatewayConfig {
    /// Meta node addresses (`host:port`).
    pub meta: Vec<String>,
    /// S3 region name clients sign for.
    pub region: String,
    /// Data shards per stripe.
    pub k: u8,
    /// Parity shards per stripe.
    pub m: u8,
    /// Bytes per shard of a full stripe.
    pub shard_size: u32,
    /// Objects up to this size are stored inline in the manifest.
    pub inline_threshold: u64,
    /// Stripes being encoded or sent at once per request (bounds memory).
    pub stripes_in_flight: usize,
    /// Shards that must be durable for a write to succeed (default k + 1).
    pub write_quorum: Option<u8>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            meta: vec![],
            region: "us-east-1".into(),
            k: 4,
            m: 2,
            shard_size: 1 << 20,
            inline_threshold: 64 << 10,
            stripes_in_flight: 4,
            write_quorum: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("config: {0}")]
    Config(String),
}

/// Serves S3 on `listener` until `shutdown` is cancelled.
pub async fn serve(
    config: GatewayConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let _ = (config, listener, shutdown);
    Err(GatewayError::Config("not yet implemented".into()))
}
