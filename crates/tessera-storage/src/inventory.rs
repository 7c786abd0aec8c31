//! The inventory check: the other direction of the orphan scan. Every
//! interval, the node pages through the shards meta places on it
//! (`NodeShards`) and reports each one it has no file for as `Missing`, so
//! that its stripe is repaired. Without it a lost parity shard (reads fetch
//! data shards; the scrubber re-hashes only files that exist) would stay
//! lost until the node's stripes were checked by hand.
//!
//! Files are written before the manifest that places them is committed, so
//! a listed shard without a file is lost, not in flight.

use std::sync::Arc;
use std::time::Duration;

use tessera_types::repair::{ProblemKind, ShardLiveness, ShardProblem};
use tokio_util::sync::CancellationToken;

use crate::error::ShardKey;
use crate::meta_api::NodeMeta;
use crate::store::{blocking, ShardStore};
use crate::StorageError;

/// Shards asked of meta per page.
pub const PAGE: u32 = 1000;
/// The first check runs this soon after start (a restarted node reports
/// what it lost while it was away).
const FIRST_CHECK_AFTER: Duration = Duration::from_secs(5);

/// Figures of one check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InventorySummary {
    /// Shards meta places here.
    pub placed: u64,
    /// Of those, without a file here (reported).
    pub missing: u64,
}

pub struct Inventory<M> {
    store: Arc<ShardStore>,
    meta: M,
    interval: Duration,
}

impl<M: NodeMeta> Inventory<M> {
    pub fn new(store: Arc<ShardStore>, meta: M, interval: Duration) -> Self {
        Inventory {
            store,
            meta,
            interval,
        }
    }

    /// Checks every interval until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut wait = self.interval.min(FIRST_CHECK_AFTER);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = self.interval;
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.check() => r,
            };
            match result {
                Ok(s) if s.missing > 0 => tracing::warn!(
                    placed = s.placed,
                    missing = s.missing,
                    "inventory: shards meta places here have no file; reported for repair"
                ),
                Ok(s) => {
                    tracing::debug!(placed = s.placed, "inventory: every placed shard is here")
                }
                Err(error) => tracing::info!(%error, "inventory check stopped; next interval"),
            }
        }
    }

    /// One pass over the shards meta places on this node.
    pub async fn check(&self) -> Result<InventorySummary, StorageError> {
        let node = self.store.node_id().clone();
        let mut summary = InventorySummary::default();
        let mut after: Option<ShardLiveness> = None;
        loop {
            let page = self
                .meta
                .node_shards(node.clone(), after.clone(), PAGE)
                .await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            summary.placed += page.len() as u64;
            let store = self.store.clone();
            let keys: Vec<ShardKey> = page
                .iter()
                .map(|s| ShardKey {
                    stripe: s.stripe,
                    index: s.index,
                })
                .collect();
            let missing = blocking(move || {
                Ok(keys
                    .into_iter()
                    .filter(|k| !store.has_file(k))
                    .collect::<Vec<_>>())
            })
            .await?;
            if !missing.is_empty() {
                summary.missing += missing.len() as u64;
                let problems = missing
                    .into_iter()
                    .map(|k| ShardProblem {
                        stripe: k.stripe,
                        index: k.index,
                        node: node.clone(),
                        kind: ProblemKind::Missing,
                    })
                    .collect();
                self.meta.report_shards(problems).await?;
            }
            if page.len() < PAGE as usize {
                break;
            }
            after = Some(last);
        }
        Ok(summary)
    }
}
