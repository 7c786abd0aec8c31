//! Tessera storage node: keeps shards (the erasure-coded pieces of stripes)
//! as files on one or more local disks, verifies a BLAKE3 checksum on every
//! read and quarantines what fails it, serves them over the storage gRPC
//! service, and heartbeats its identity and disk usage to the meta leader.
//! In the background it scrubs (re-hashes every shard at a bounded rate and
//! reports the bad ones) and deletes orphans (shards no manifest places on
//! it, after asking meta).
//!
//! It talks to other nodes only through `tessera-proto` over gRPC: it never
//! touches sled, openraft or S3.
//!
//! - [`config`]: the node's configuration.
//! - [`store`]: the shard store on disk (layout, file format, durability).
//! - [`service`]: the gRPC service; the only module that speaks protobuf.
//! - `heartbeat`: the liveness and usage reports to meta.
//! - [`scrub`]: the scrubber.
//! - [`orphans`]: the orphan scan.
//! - [`inventory`]: reports placed shards that have no file (lost parity).
//! - [`meta_api`]: what the background workers ask of meta (a trait, so
//!   they can be tested without it).
//! - [`throttle`]: pacing of background reads at a run-time rate.
//! - [`metrics`]: counters, gauges and readiness for the admin port.
//! - [`error`]: the crate's error type.

pub mod config;
mod durable;
pub mod error;
mod heartbeat;
mod http1;
pub mod inventory;
pub mod meta_api;
pub mod metrics;
pub mod orphans;
pub mod scrub;
pub mod service;
pub mod store;
pub mod throttle;

#[cfg(test)]
mod background_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tessera_proto::auth::{RequireAuthLayer, MISSING_SECRET_HELP};
use tessera_proto::storage::storage_server::StorageServer;
use tessera_proto::{ClusterAuth, MetaClient, MAX_MESSAGE_BYTES};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub use config::StorageConfig;
pub use error::{ShardKey, StorageError};
pub use service::{ShardStreamService, StorageService};
pub use store::{ReadCheck, ShardStore, StoreOptions};

use heartbeat::Heartbeat;
use metrics::StorageMetrics;
use orphans::OrphanScan;
use scrub::Scrubber;
use throttle::Rate;

/// HTTP/2 flow-control window of one stream (one shard transfer), the
/// same as the clients' (`tessera_proto::channel`).
const STREAM_WINDOW: u32 = 4 << 20;
/// HTTP/2 flow-control window of one connection (all of a peer's
/// concurrent transfers).
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame peers may send (the default is 16 KiB: 16 frames,
/// each handled on its own, per 256 KiB shard).
const MAX_FRAME: u32 = 1 << 20;

/// Deadline of one meta call of the scrubber or the orphan scan, retries
/// included (they retry on their own schedule).
const BACKGROUND_META_DEADLINE: Duration = Duration::from_secs(10);

/// Serves the storage node on `listener` until `shutdown` is cancelled.
///
/// Opens the data directories (creating them and the node id on first
/// start), serves the storage gRPC service and heartbeats to meta. Returns
/// once shutdown was requested and the server and background tasks have
/// stopped, or the `shutdown-grace-ms` deadline passed.
pub async fn serve(
    config: StorageConfig,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StorageError> {
    config.validate()?;
    let auth = ClusterAuth::new(
        config
            .cluster_secret
            .clone()
            .ok_or_else(|| StorageError::Config(MISSING_SECRET_HELP.into()))?,
    );
    let store = ShardStore::open(
        config.data_dirs.clone(),
        StoreOptions {
            max_shard_bytes: config.max_shard_bytes,
            read_buffer_bytes: config.read_buffer_bytes,
            capacity_bytes: config.capacity_bytes,
        },
    )
    .await?;
    store.set_direct_io(config.direct_io);
    let local = listener.local_addr()?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| local.to_string());
    if config.advertise.is_none() && local.ip().is_unspecified() {
        tracing::warn!(%local, "listening on a wildcard address without `advertise`: other nodes cannot reach this one");
    }
    tracing::info!(node_id = %store.node_id(), %local, %advertise, zone = %config.zone, "storage node serving");

    let tasks = shutdown.child_token();
    let metrics = Arc::new(StorageMetrics::default());
    if let Ok(u) = store.usage().await {
        metrics.usage(&u);
    }
    if let Some(addr) = &config.admin_listen {
        let admin = tokio::net::TcpListener::bind(addr).await?;
        let m = metrics.clone();
        let no_meta = config.meta.is_empty();
        tokio::spawn(tessera_observe::serve_admin(
            admin,
            metrics.registry.clone(),
            Arc::new(move || no_meta || m.heartbeat_ok()),
            tasks.clone(),
        ));
    }
    let heartbeat = if config.meta.is_empty() {
        tracing::warn!("no meta addresses configured: not sending heartbeats");
        None
    } else {
        let period = config.heartbeat_period();
        let hb = Heartbeat {
            store: store.clone(),
            meta: MetaClient::with_auth(
                config.meta.clone(),
                Heartbeat::call_deadline(period),
                auth.clone(),
            ),
            advertise,
            zone: config.zone.clone(),
            weight: config.weight,
            period,
            metrics: metrics.clone(),
        };
        Some(tokio::spawn(hb.run(tasks.clone())))
    };
    let background_meta = (!config.meta.is_empty()).then(|| {
        MetaClient::with_auth(config.meta.clone(), BACKGROUND_META_DEADLINE, auth.clone())
    });
    let scrubber = config.scrub_period().map(|period| {
        let s = Scrubber::new(
            store.clone(),
            background_meta.clone(),
            period,
            Rate::new(config.scrub_rate),
            metrics.clone(),
        );
        tokio::spawn(s.run(tasks.clone()))
    });
    let inventory = match (config.inventory_interval(), background_meta.clone()) {
        (Some(interval), Some(meta)) => {
            let i = inventory::Inventory::new(store.clone(), meta, interval);
            Some(tokio::spawn(i.run(tasks.clone())))
        }
        _ => None,
    };
    let orphan_scan = match (config.orphan_scan_interval(), background_meta) {
        (Some(interval), Some(meta)) => {
            let o = OrphanScan::new(
                store.clone(),
                meta,
                interval,
                config.orphan_safety_age(),
                metrics.clone(),
            );
            Some(tokio::spawn(o.run(tasks.clone())))
        }
        (Some(_), None) => {
            tracing::warn!("no meta addresses configured: orphan scan off");
            None
        }
        (None, _) => None,
    };

    // HTTP/1.1 connections are shard reads served with sendfile; the
    // HTTP/2 ones go on to the gRPC server.
    let incoming = ReceiverStream::new(http1::split(
        listener,
        http1::Http1Server {
            store: store.clone(),
            metrics: metrics.clone(),
            auth: auth.clone(),
            stop: tasks.clone(),
        },
    ));
    let stream_service = ShardStreamService::new(store.clone(), metrics.clone());
    let service = StorageServer::new(StorageService::with_metrics(
        store,
        config.zone.clone(),
        metrics,
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let stop = tasks.clone();
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            // Shards arrive as ~1 MiB frames on many concurrent streams of
            // one connection per gateway: hyper's 1 MiB stream and
            // connection windows (and 16 KiB frames) would stall a put
            // every few frames for a window update, a wake-up each.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .layer(RequireAuthLayer::new(auth))
            .add_service(service)
            .add_service(stream_service)
            .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }),
    );

    let early = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut server => Some(r),
    };
    tasks.cancel();
    let grace = config.shutdown_grace();
    let result = match early {
        // The server stopped on its own: report why.
        Some(r) => flatten(r),
        None => match tokio::time::timeout(grace, &mut server).await {
            Ok(r) => flatten(r),
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "in-flight requests did not finish in time; aborting them"
                );
                server.abort();
                Ok(())
            }
        },
    };
    for task in [heartbeat, scrubber, orphan_scan, inventory]
        .into_iter()
        .flatten()
    {
        stop_task(task, grace).await;
    }
    tracing::info!("storage node stopped");
    result
}

fn flatten(
    r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), StorageError> {
    match r {
        Ok(r) => Ok(r?),
        Err(e) => Err(StorageError::Task(e.to_string())),
    }
}

async fn stop_task(mut task: tokio::task::JoinHandle<()>, grace: Duration) {
    if tokio::time::timeout(grace, &mut task).await.is_err() {
        task.abort();
    }
}
