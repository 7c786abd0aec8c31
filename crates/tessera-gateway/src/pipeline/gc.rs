//! Deferred deletion of the shards of replaced and deleted objects.
//!
//! Reads that fetched the old manifest just before it was replaced may
//! still need its shards, so they are deleted only after a grace period.
//! This is best effort: a gateway that stops before the grace period ends
//! leaves the shards to the GC queue in meta (a later issue).

use std::sync::Arc;

use futures::StreamExt;
use tessera_types::{ObjectManifest, Stripe, StripeId};

use super::DataPlane;

/// Deletes that run at once per scheduled batch.
const DELETE_CONCURRENCY: usize = 8;

/// Schedules the deletion of every shard of `old` after `dp.gc_grace`.
pub fn delete_later(dp: &Arc<DataPlane>, old: &ObjectManifest) {
    delete_stripes_later(dp, old.stripes());
}

/// Schedules the deletion of every shard of `stripes` (replaced or
/// unused multipart parts, aborted uploads) after `dp.gc_grace`.
pub fn delete_stripes_later<'a>(dp: &Arc<DataPlane>, stripes: impl Iterator<Item = &'a Stripe>) {
    let shards: Vec<(tessera_types::NodeId, StripeId, u8)> = stripes
        .flat_map(|s| {
            s.shards
                .iter()
                .map(move |e| (e.node.clone(), s.id, e.index))
        })
        .collect();
    if shards.is_empty() {
        return;
    }
    let dp = dp.clone();
    let grace = dp.gc_grace;
    tokio::spawn(async move {
        tokio::select! {
            _ = dp.shutdown.cancelled() => return,
            _ = tokio::time::sleep(grace) => {}
        }
        delete_now(&dp, shards).await;
    });
}

async fn delete_now(dp: &Arc<DataPlane>, shards: Vec<(tessera_types::NodeId, StripeId, u8)>) {
    let snap = dp.cluster.current();
    futures::stream::iter(shards)
        .for_each_concurrent(DELETE_CONCURRENCY, |(node, stripe, index)| {
            let addr = snap.any_addr(&node).map(str::to_string);
            let dp = dp.clone();
            async move {
                let Some(addr) = addr else { return };
                if let Err(e) = dp.storage.delete_shard(&addr, stripe, index).await {
                    tracing::debug!(%stripe, index, error = %e, "deferred shard delete failed");
                }
            }
        })
        .await;
}
