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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tessera_proto::StoragePool;
use tessera_types::repair::ShardProblem;
use tessera_types::{NodeId, StorageClass};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterView;
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::repair::ProblemReporter;

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
    /// Nodes whose shard writes failed recently, with when: new stripes
    /// avoid them until the cluster map catches up (a killed node stays Up
    /// in the map until the meta leader's failure detector notices).
    recent_failures: Mutex<HashMap<NodeId, Instant>>,
    /// Where reads report missing, corrupt and unreachable shards (set by
    /// `serve`; while unset nothing is reported).
    problems: OnceLock<ProblemReporter>,
}

/// How long a node that failed a shard write is avoided by new stripes.
pub const FAILED_NODE_AVOID: Duration = Duration::from_secs(15);

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
            recent_failures: Mutex::new(HashMap::new()),
            problems: OnceLock::new(),
        }
    }

    /// Sends the bad shards reads find to `reporter` (first call wins).
    pub fn set_problem_reporter(&self, reporter: ProblemReporter) {
        let _ = self.problems.set(reporter);
    }

    /// Reports a bad shard (never blocks; dropped when nobody listens).
    pub fn report_problem(&self, problem: ShardProblem) {
        if let Some(r) = self.problems.get() {
            r.report(problem);
        }
    }

    /// Remembers that a shard write to `node` failed.
    pub fn note_write_failure(&self, node: &NodeId) {
        let mut map = self
            .recent_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.insert(node.clone(), Instant::now());
    }

    /// Nodes to avoid for new stripes right now.
    pub fn avoided_nodes(&self) -> Vec<NodeId> {
        let mut map = self
            .recent_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.retain(|_, at| at.elapsed() < FAILED_NODE_AVOID);
        map.keys().cloned().collect()
    }

    /// The storage class and write quorum of a new stripe when `alive`
    /// storage nodes can take shards.
    ///
    /// With enough nodes this is the configured class. With fewer than
    /// k + m, the stripe keeps its m parity shards and narrows k to
    /// `alive - m`: it still survives the loss of any m nodes (the
    /// durability promise) and costs more space, instead of refusing the
    /// write or writing fewer parity shards. The stripe's data size stays
    /// the same, so its shards are larger. Stripes carry their class, so
    /// reads need nothing special.
    pub fn class_for(&self, alive: usize) -> Option<(StorageClass, usize)> {
        let (k, m) = (self.class.k as usize, self.class.m as usize);
        let extra = self.quorum.saturating_sub(k);
        if alive >= k + m {
            return Some((self.class, self.quorum));
        }
        let narrow_k = alive.checked_sub(m).filter(|&nk| nk >= 1)?;
        let stripe = self.class.stripe_data_size();
        let shard_size = stripe.div_ceil(narrow_k as u64);
        let class = StorageClass {
            k: narrow_k as u8,
            m: self.class.m,
            shard_size: u32::try_from(shard_size).ok()?,
            codec: self.class.codec,
        };
        Some((class, (narrow_k + extra).min(narrow_k + m)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_types::ClusterMap;

    fn plane() -> DataPlane {
        let config = GatewayConfig {
            meta: vec!["127.0.0.1:1".into()],
            ..GatewayConfig::default()
        };
        DataPlane::new(
            &config,
            Arc::new(StoragePool::new()),
            Arc::new(ClusterView::fixed(ClusterMap::default())),
            CancellationToken::new(),
        )
    }

    #[test]
    fn class_narrows_k_and_keeps_parity_when_nodes_are_missing() {
        let dp = plane();
        let full = dp.class;
        assert_eq!((full.k, full.m), (4, 2));
        assert_eq!(dp.class_for(8), Some((full, 5)));
        assert_eq!(dp.class_for(6), Some((full, 5)));
        let (c, q) = dp.class_for(5).unwrap();
        assert_eq!((c.k, c.m, q), (3, 2, 4));
        let (c, q) = dp.class_for(4).unwrap();
        assert_eq!((c.k, c.m, q), (2, 2, 3));
        // Same stripe size, larger shards.
        assert_eq!(c.stripe_data_size(), full.stripe_data_size());
        let (c, q) = dp.class_for(3).unwrap();
        assert_eq!((c.k, c.m, q), (1, 2, 2));
        assert_eq!(dp.class_for(2), None);
        assert_eq!(dp.class_for(0), None);
    }

    #[test]
    fn failed_nodes_are_avoided_for_a_while() {
        let dp = plane();
        assert!(dp.avoided_nodes().is_empty());
        dp.note_write_failure(&NodeId::from("s-1"));
        assert_eq!(dp.avoided_nodes(), vec![NodeId::from("s-1")]);
    }
}
