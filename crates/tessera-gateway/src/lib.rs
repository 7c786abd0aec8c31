//! Tessera S3 gateway: the S3 API over HTTP, SigV4 authentication against
//! access keys kept in meta, and the streaming erasure-coded write and read
//! pipelines between clients and storage nodes.
//!
//! The gateway holds no state that matters: objects become visible only
//! when their manifest is committed in meta, so it can be killed at any
//! moment. It talks to meta and storage only through `tessera-proto`
//! clients and never touches sled, openraft or disks.
//!
//! - [`config`]: [`GatewayConfig`] and its validation.
//! - [`error`]: the error types, and the one mapping to S3 error codes.
//! - [`auth`]: secret-key lookup (cached) and the no-anonymous rule.
//! - [`names`]: bucket-name and key rules.
//! - [`cluster`]: the cached cluster map and placement.
//! - [`pipeline`]: stripe writer, stripe reader, deferred shard deletion.
//! - [`s3`]: the S3 operations, one file per family.
//! - `server`: the hyper server, connection limits, graceful shutdown.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod error;
pub mod names;
pub mod pipeline;
pub mod s3;
mod server;

use std::sync::Arc;

use tessera_proto::{MetaClient, StoragePool};
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;
pub use error::{ApiError, GatewayError};

/// Serves S3 on `listener` until `shutdown` is cancelled; returns once the
/// open connections have drained (or `shutdown-grace-ms` has passed).
pub async fn serve(
    config: GatewayConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    config.validate()?;
    let meta = MetaClient::new(config.meta.clone());
    let storage = Arc::new(StoragePool::new());
    let cluster = Arc::new(cluster::ClusterView::new(meta.clone()));
    let background = shutdown.child_token();
    tokio::spawn(cluster.clone().run(
        GatewayConfig::ms(config.cluster_refresh_ms),
        background.clone(),
    ));
    let dp = Arc::new(pipeline::DataPlane::new(
        &config,
        storage,
        cluster,
        background.clone(),
    ));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, region = %config.region, k = config.k, m = config.m,
            "S3 gateway listening");
    }
    let service = server::build_service(&config, s3::Tessera::new(config.clone(), meta, dp));
    server::serve_http(listener, service, &config, shutdown).await;
    background.cancel();
    Ok(())
}
