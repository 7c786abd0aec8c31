//! The orphan scan: deletes shard files that no live manifest places on
//! this node — shards of failed uploads, of a gateway that crashed before
//! its commit, and of stripes rebuilt elsewhere while this node was away.
//!
//! Every `orphan-scan-interval-ms` it lists the shard files last modified
//! more than `orphan-safety-age-ms` ago (a shard is written before the
//! manifest that references it is committed, so a young shard may be
//! about to become live), and asks meta `ShardsLive` in batches. A shard
//! is deleted only when meta has answered "not live" in two scans, an
//! interval apart: the first sighting makes it a suspect. Shards of an
//! object that was just overwritten or deleted leave the index at once but
//! may still be read by GETs that started before (the gateways' GC waits
//! out a grace period for them); the second sighting gives those reads an
//! interval to finish, and makes a one-off wrong answer harmless.
//!
//! Nothing is deleted for a batch meta did not answer, nor when meta does
//! not know this node at all. The delete re-checks the file's age under
//! the shard's name lock: a put of the same shard since the scan listed it
//! (a repair writing it back) refreshes the file's mtime and keeps it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tessera_types::repair::ShardLiveness;
use tokio_util::sync::CancellationToken;

use crate::error::ShardKey;
use crate::meta_api::NodeMeta;
use crate::metrics::StorageMetrics;
use crate::store::{blocking, ShardStore};
use crate::StorageError;

/// Shards asked about in one `ShardsLive` query.
pub const BATCH: usize = 1000;
/// The first scan runs this long after start (or after one interval, if
/// shorter), when heartbeats have made the node known to meta.
const FIRST_SCAN_AFTER: Duration = Duration::from_secs(60);
/// Suspects remembered between scans (about 24 bytes each); more orphans
/// than this are collected over several scans.
const MAX_SUSPECTS: usize = 500_000;

/// Figures of one scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Shard files old enough to be asked about.
    pub checked: u64,
    /// Of those, deleted (meta: not live here, in this scan and the
    /// last).
    pub deleted: u64,
    /// Not live here for the first time: deleted by the next scan if meta
    /// still says so.
    pub suspected: u64,
    /// Not live, but written again since the listing (kept) or already
    /// gone.
    pub kept_young: u64,
}

/// The orphan scan of one storage node.
pub struct OrphanScan<M> {
    store: Arc<ShardStore>,
    meta: M,
    interval: Duration,
    safety_age: Duration,
    metrics: Arc<StorageMetrics>,
    /// Shards meta called not live in the last scan.
    suspects: HashSet<ShardKey>,
}

impl<M: NodeMeta> OrphanScan<M> {
    pub fn new(
        store: Arc<ShardStore>,
        meta: M,
        interval: Duration,
        safety_age: Duration,
        metrics: Arc<StorageMetrics>,
    ) -> Self {
        OrphanScan {
            store,
            meta,
            interval,
            safety_age,
            metrics,
            suspects: HashSet::new(),
        }
    }

    /// Scans every interval until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut wait = self.interval.min(FIRST_SCAN_AFTER);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = self.interval;
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.scan() => r,
            };
            match result {
                Ok(s) => {
                    self.metrics.orphan_scan(true);
                    if s.deleted > 0 || s.suspected > 0 {
                        tracing::info!(
                            checked = s.checked,
                            deleted = s.deleted,
                            suspected = s.suspected,
                            "orphan scan: shards no manifest places here"
                        );
                    } else {
                        tracing::debug!(checked = s.checked, "orphan scan found no orphans");
                    }
                }
                Err(error) => {
                    self.metrics.orphan_scan(false);
                    tracing::warn!(%error, "orphan scan stopped: meta could not answer; nothing more deleted until the next scan");
                }
            }
        }
        tracing::debug!("orphan scan stopped");
    }

    /// One scan. Batches answered before an error keep their deletions;
    /// the batch meta did not answer and every later one delete nothing.
    pub async fn scan(&mut self) -> Result<ScanSummary, StorageError> {
        let mut next = HashSet::new();
        let result = self.scan_into(&mut next).await;
        if result.is_ok() {
            // Suspects not seen again are live again, or gone.
            self.suspects = next;
        } else {
            // Every sighting stays valid; the scan did not see them all.
            for k in next {
                if self.suspects.len() >= MAX_SUSPECTS {
                    break;
                }
                self.suspects.insert(k);
            }
        }
        result
    }

    async fn scan_into(&self, next: &mut HashSet<ShardKey>) -> Result<ScanSummary, StorageError> {
        let node = self.store.node_id().clone();
        if !self.meta.knows_node(node.clone()).await? {
            return Err(StorageError::MetaRefused(format!(
                "meta does not know node {node}: not asking it which shards are live"
            )));
        }
        let cutoff = SystemTime::now()
            .checked_sub(self.safety_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut summary = ScanSummary::default();
        let mut batch: Vec<ShardKey> = Vec::with_capacity(BATCH);
        for dir in 0..self.store.dir_count() {
            for sub in 0..=255u8 {
                let store = self.store.clone();
                let old = blocking(move || {
                    let listing = store.list_shards(dir, sub).map_err(StorageError::io)?;
                    let mut old = Vec::new();
                    for (key, path) in listing {
                        match std::fs::symlink_metadata(&path).and_then(|m| m.modified()) {
                            Ok(t) if t < cutoff => old.push(key),
                            Ok(_) => {}
                            // Gone since the listing.
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(StorageError::io(e)),
                        }
                    }
                    Ok(old)
                })
                .await?;
                for key in old {
                    batch.push(key);
                    if batch.len() >= BATCH {
                        self.settle(&mut batch, cutoff, next, &mut summary).await?;
                    }
                }
            }
        }
        self.settle(&mut batch, cutoff, next, &mut summary).await?;
        Ok(summary)
    }

    /// Asks meta about `batch` and deletes what is not live; empties it.
    async fn settle(
        &self,
        batch: &mut Vec<ShardKey>,
        cutoff: SystemTime,
        next: &mut HashSet<ShardKey>,
        summary: &mut ScanSummary,
    ) -> Result<(), StorageError> {
        if batch.is_empty() {
            return Ok(());
        }
        let asked: Vec<ShardLiveness> = batch
            .iter()
            .map(|k| ShardLiveness {
                stripe: k.stripe,
                index: k.index,
            })
            .collect();
        let live = self
            .meta
            .shards_live(self.store.node_id().clone(), asked)
            .await?;
        if live.len() != batch.len() {
            return Err(StorageError::MetaRefused(format!(
                "ShardsLive answered {} of {} shards",
                live.len(),
                batch.len()
            )));
        }
        summary.checked += batch.len() as u64;
        for (key, live) in batch.drain(..).zip(live) {
            if live {
                continue;
            }
            if !self.suspects.contains(&key) {
                if next.len() < MAX_SUSPECTS {
                    next.insert(key);
                    summary.suspected += 1;
                }
                continue;
            }
            if self.store.delete_if_older(key, cutoff).await? {
                tracing::debug!(shard = %key, "deleted orphan shard");
                summary.deleted += 1;
                self.metrics.orphans_deleted(1);
            } else {
                summary.kept_young += 1;
            }
        }
        Ok(())
    }
}
