//! The data plane: the stripe writer (body -> encoded shards on storage
//! nodes), the stripe reader (shards -> verified bytes, degraded when it
//! must) and deferred shard deletion.
//!
//! Memory is bounded by configuration: a request holds at most
//! `stripes_in_flight` (writes) or `read_ahead_stripes` (reads) stripes plus
//! the one being filled or sent, and every stripe buffer takes a permit
//! from one gateway-wide semaphore (`max_buffered_stripes`).

pub mod gc;
pub mod read;
pub mod write;

use std::sync::Arc;
use std::time::Duration;

use tessera_proto::StoragePool;
use tessera_types::StorageClass;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterView;
use crate::config::GatewayConfig;
use crate::error::ApiError;

/// Everything the pipelines need, shared by all requests.
pub struct DataPlane {
    pub storage: Arc<StoragePool>,
    pub cluster: Arc<ClusterView>,
    /// Storage class of new stripes.
    pub class: StorageClass,
    /// Shards that must be durable per stripe.
    pub quorum: usize,
    pub stripes_in_flight: usize,
    pub read_ahead: usize,
    buffers: Arc<Semaphore>,
    pub shard_read_timeout: Duration,
    pub hedge_after: Duration,
    pub gc_grace: Duration,
    /// Longest wait for the next chunk of a request body.
    pub body_idle_timeout: Duration,
    /// Background tasks (deferred deletes) stop on this.
    pub shutdown: CancellationToken,
}

impl DataPlane {
    pub fn new(
        config: &GatewayConfig,
        storage: Arc<StoragePool>,
        cluster: Arc<ClusterView>,
        shutdown: CancellationToken,
    ) -> Self {
        DataPlane {
            storage,
            cluster,
            class: config.storage_class(),
            quorum: config.quorum(),
            stripes_in_flight: config.stripes_in_flight.max(1),
            read_ahead: config.read_ahead_stripes.max(1),
            buffers: Arc::new(Semaphore::new(config.max_buffered_stripes.max(2))),
            shard_read_timeout: GatewayConfig::ms(config.shard_read_timeout_ms),
            hedge_after: GatewayConfig::ms(config.hedge_after_ms),
            gc_grace: GatewayConfig::ms(config.gc_grace_ms),
            body_idle_timeout: GatewayConfig::ms(config.body_idle_timeout_ms),
            shutdown,
        }
    }

    /// Waits for a stripe buffer.
    async fn buffer(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.buffers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal("buffer pool closed".into()))
    }
}

/// Maps a failed `spawn_blocking` / task join.
fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError::Internal(format!("task failed: {e}"))
}

/// A spawned task that is aborted when its handle is dropped (the request
/// it serves went away).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}
