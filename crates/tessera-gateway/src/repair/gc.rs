//! The GC worker: leases items of the meta GC queue older than the grace
//! period (replaced and deleted objects, superseded and aborted parts, the
//! shards a repair replaced or lost a race with), deletes their shards and
//! acknowledges them.
//!
//! A shard on a node that is down or no longer in the map is skipped: the
//! node's orphan scan deletes it when it comes back. An item with a delete
//! that failed on a live node is not acknowledged; its lease expires and it
//! is tried again.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tessera_proto::MetaClient;
use tessera_types::meta::{MetaCommand, MetaReply};
use tessera_types::repair::GcLease;
use tessera_types::{now_millis, NodeState, StripeId};
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::metrics::RepairMetrics;
use crate::pipeline::DataPlane;

/// Shard deletes in flight at once.
const DELETE_CONCURRENCY: usize = 16;

/// Counts of one GC pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub items: usize,
    /// Shard files that existed and were deleted.
    pub deleted: usize,
    /// Shards on nodes that are down or unknown, left to orphan scans.
    pub skipped: usize,
    /// Items acknowledged (every delete on a live node answered).
    pub acked: usize,
}

/// The GC worker of one gateway.
pub struct GcWorker {
    id: String,
    meta: MetaClient,
    dp: Arc<DataPlane>,
    grace: Duration,
    interval: Duration,
    lease: Duration,
    batch: u32,
    metrics: RepairMetrics,
}

impl GcWorker {
    pub fn new(
        config: &GatewayConfig,
        id: String,
        meta: MetaClient,
        dp: Arc<DataPlane>,
        metrics: RepairMetrics,
    ) -> Self {
        GcWorker {
            id,
            meta,
            dp,
            grace: GatewayConfig::ms(config.gc_grace_ms),
            interval: GatewayConfig::ms(config.gc_interval_ms.max(1)),
            lease: GatewayConfig::ms(config.repair_lease_ms),
            batch: config.gc_batch.max(1),
            metrics,
        }
    }

    /// Runs passes until `shutdown`: back to back while the queue is full,
    /// every `gc-interval-ms` otherwise.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        super::worker::release_previous(&self.meta, &self.id, false, true).await;
        loop {
            let r = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.run_once() => r,
            };
            let more = match r {
                Ok(report) => report.items as u32 >= self.batch && report.acked > 0,
                Err(e) => {
                    tracing::debug!(error = %e, "GC lease failed");
                    false
                }
            };
            if !more {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.interval) => {}
                }
            }
        }
    }

    /// One pass: lease a batch, delete, acknowledge.
    pub async fn run_once(&self) -> Result<GcReport, ApiError> {
        let now = now_millis();
        let cmd = MetaCommand::LeaseGc {
            worker: self.id.clone(),
            max: self.batch,
            before: now - self.grace.as_millis() as i64,
            lease_ms: self.lease.as_millis() as u64,
            at: now,
        };
        let items = match self.meta.write(&cmd).await.map_err(ApiError::from_rpc)? {
            MetaReply::Gc(items) => items,
            MetaReply::Err(e) => return Err(e.into()),
            _ => return Err(ApiError::UnexpectedReply("LeaseGc")),
        };
        let mut report = GcReport {
            items: items.len(),
            ..GcReport::default()
        };
        if items.is_empty() {
            return Ok(report);
        }
        let snap = self.dp.cluster.current();
        let mut jobs: Vec<(usize, String, StripeId, u8)> = Vec::new();
        for (item, lease) in items.iter().enumerate() {
            for stripe in &lease.stripes {
                for e in &stripe.shards {
                    match snap.map.node(&e.node) {
                        Some(n) if n.state != NodeState::Down => {
                            jobs.push((item, n.addr.clone(), stripe.id, e.index))
                        }
                        _ => report.skipped += 1,
                    }
                }
            }
        }
        let mut failed = vec![false; items.len()];
        let mut deletes = futures::stream::iter(jobs)
            .map(|(item, addr, stripe, index)| {
                let storage = self.dp.storage.clone();
                async move {
                    let r = storage.delete_shard(&addr, stripe, index).await;
                    if let Err(e) = &r {
                        tracing::debug!(%stripe, index, error = %e, "GC delete failed");
                    }
                    (item, r)
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY);
        while let Some((item, r)) = deletes.next().await {
            match r {
                Ok(true) => report.deleted += 1,
                Ok(false) => {}
                Err(_) => failed[item] = true,
            }
        }
        self.metrics.gc_deleted.add(&[], report.deleted as u64);
        let keys: Vec<Vec<u8>> = items
            .into_iter()
            .zip(failed)
            .filter(|(_, failed)| !failed)
            .map(|(lease, _): (GcLease, bool)| lease.key)
            .collect();
        report.acked = keys.len();
        if !keys.is_empty() {
            match self.meta.write(&MetaCommand::AckGc { keys }).await {
                Ok(MetaReply::Ok) => {}
                Ok(other) => tracing::warn!(reply = ?other, "meta refused a GC ack"),
                Err(e) => {
                    // The items come back after their lease: deleting twice
                    // is harmless.
                    tracing::debug!(error = %e, "GC ack failed");
                    report.acked = 0;
                }
            }
        }
        if report.deleted > 0 || report.skipped > 0 {
            tracing::info!(
                items = report.items,
                deleted = report.deleted,
                skipped = report.skipped,
                acked = report.acked,
                "GC pass"
            );
        }
        Ok(report)
    }
}
