//! The three long-running roles: bind the listener, hand it to the service
//! crate's `serve`, return when `shutdown` is cancelled and it has drained.

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{GatewaySettings, MetaSettings, StorageSettings};

async fn bind(role: &str, listen: &str) -> Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("{role}: cannot listen on {listen}"))
}

/// Runs a meta node until `shutdown`.
pub async fn run_meta(s: MetaSettings, shutdown: CancellationToken) -> Result<()> {
    let listener = bind("meta", &s.listen).await?;
    info!(
        id = s.config.id,
        listen = %listener.local_addr()?,
        advertise = s.config.advertise.as_deref().unwrap_or(""),
        peers = ?s.config.peers,
        data_dir = %s.config.data_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "meta node starting"
    );
    tessera_meta::serve(s.config, listener, shutdown)
        .await
        .context("meta node failed")?;
    info!("meta node stopped");
    Ok(())
}

/// Runs a storage node until `shutdown`.
pub async fn run_storage(s: StorageSettings, shutdown: CancellationToken) -> Result<()> {
    let listener = bind("storage", &s.listen).await?;
    info!(
        listen = %listener.local_addr()?,
        advertise = s.config.advertise.as_deref().unwrap_or(""),
        zone = %s.config.zone,
        data_dirs = ?s.config.data_dirs,
        meta = ?s.config.meta,
        version = env!("CARGO_PKG_VERSION"),
        "storage node starting"
    );
    tessera_storage::serve(s.config, listener, shutdown)
        .await
        .context("storage node failed")?;
    info!("storage node stopped");
    Ok(())
}

/// Runs an S3 gateway until `shutdown`.
pub async fn run_gateway(s: GatewaySettings, shutdown: CancellationToken) -> Result<()> {
    let listener = bind("gateway", &s.listen).await?;
    info!(
        listen = %listener.local_addr()?,
        region = %s.config.region,
        k = s.config.k,
        m = s.config.m,
        meta = ?s.config.meta,
        version = env!("CARGO_PKG_VERSION"),
        "gateway starting"
    );
    tessera_gateway::serve(s.config, listener, shutdown)
        .await
        .context("gateway failed")?;
    info!("gateway stopped");
    Ok(())
}
