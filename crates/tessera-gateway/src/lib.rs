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
//! - [`checksum`]: S3 flexible checksums: digests, request checks, multipart combination.
//! - [`names`]: bucket-name and key rules.
//! - [`metrics`]: request metrics around the s3s service.
//! - [`cluster`]: the cached cluster map and placement.
//! - [`console`]: the read-only web console on the admin port.
//! - [`pipeline`]: stripe writer, stripe reader, deferred shard deletion.
//! - [`repair`]: the repair and GC workers, and bad-shard reports from reads.
//! - [`s3`]: the S3 operations, one file per family.
//! - `server`: the hyper server, connection limits, graceful shutdown.

pub mod auth;
pub mod checksum;
pub mod cluster;
pub mod config;
pub mod console;
pub mod error;
pub mod metrics;
pub mod names;
pub mod pipeline;
pub mod query;
pub mod repair;
pub mod s3;
mod server;

use std::sync::Arc;

use tessera_proto::{ClusterAuth, MetaClient, StoragePool};
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
    let (meta, storage) = match &config.cluster_secret {
        Some(secret) => {
            let auth = ClusterAuth::new(secret.clone());
            (
                MetaClient::with_auth(
                    config.meta.clone(),
                    tessera_proto::meta_client::DEFAULT_DEADLINE,
                    auth.clone(),
                ),
                StoragePool::with_auth(auth),
            )
        }
        None => {
            // Only fakes answer unsigned calls; `tessera gateway` refuses
            // to start without a secret.
            tracing::warn!("no cluster secret: meta and storage nodes will refuse every call");
            (MetaClient::new(config.meta.clone()), StoragePool::new())
        }
    };
    let storage = Arc::new(storage);
    let cluster = Arc::new(cluster::ClusterView::new(meta.clone()));
    let background = shutdown.child_token();
    tokio::spawn(cluster.clone().run(
        GatewayConfig::ms(config.cluster_refresh_ms),
        background.clone(),
    ));
    let dp = Arc::new(pipeline::DataPlane::new(
        &config,
        storage,
        cluster.clone(),
        background.clone(),
    ));
    let metrics = Arc::new(metrics::GatewayMetrics::default());
    let port = listener.local_addr().ok().map(|a| a.port());
    repair::start(&config, &meta, &dp, &metrics.repair, &background, port);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, region = %config.region, k = config.k, m = config.m,
            repair = config.repair_enabled, gc = config.gc_enabled, "S3 gateway listening");
    }
    if let Some(addr) = &config.admin_listen {
        let admin = tokio::net::TcpListener::bind(addr).await?;
        let view = cluster.clone();
        let console = console::routes(meta.clone(), console::GatewayInfo::of(&config));
        tokio::spawn(tessera_observe::serve_admin_with(
            admin,
            metrics.registry.clone(),
            // Ready once a cluster map with storage nodes came from meta.
            Arc::new(move || !view.current().map.nodes.is_empty()),
            Some(console),
            background.clone(),
        ));
    }
    let service = server::build_service(&config, s3::Tessera::new(config.clone(), meta, dp));
    let service = metrics::Metered::new(service, metrics);
    server::serve_http(listener, service, &config, shutdown).await;
    background.cancel();
    Ok(())
}
