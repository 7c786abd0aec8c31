//! The rebalancer's trigger, on the meta leader. The state machine counts
//! additions of storage nodes the map never had (`rebalance_wanted`) and
//! the additions the last complete pass covered (`rebalance_done`); while
//! wanted > done, the leader queues every live stripe (in batches, through
//! Raft) with reason `Rebalance`. Repair workers then move the shards of
//! stripes whose placement now includes the new node, at the repair rate
//! and after every degraded stripe (whole stripes sort last in the queue).
//! The counters are replicated, so a new leader finishes a pass that its
//! predecessor did not; nodes returning from down trigger nothing (their
//! stripes were repaired elsewhere, and moving them back would only churn).

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tessera_types::meta::{MetaCommand, MetaReply};
use tokio_util::sync::CancellationToken;

use crate::network::MetaRaft;
use crate::space::SpaceGuard;
use crate::store::{RaftNodeId, SmTrees};

/// How often the leader looks for new nodes.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Stripes queued per Raft entry.
pub const BATCH: u32 = 512;
/// Pause between batches, so a pass never crowds out client writes.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

pub async fn run(
    raft: MetaRaft,
    id: RaftNodeId,
    trees: SmTrees,
    space: Arc<SpaceGuard>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !leading(&raft, id) {
            continue;
        }
        let t = trees.clone();
        let Ok(Ok((wanted, done))) = tokio::task::spawn_blocking(move || t.rebalance_state()).await
        else {
            continue;
        };
        if wanted > done {
            tracing::info!(
                wanted,
                done,
                "new storage nodes: queueing every stripe for rebalance"
            );
            match pass(&raft, id, &space, &shutdown).await {
                Ok(n) => tracing::info!(batches = n, "rebalance pass queued"),
                Err(e) => tracing::warn!(error = %e, "rebalance pass stopped"),
            }
        }
    }
}

fn leading(raft: &MetaRaft, id: RaftNodeId) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    m.state == ServerState::Leader && m.current_leader == Some(id)
}

/// Queues every live stripe, batch by batch; returns the batch count.
async fn pass(
    raft: &MetaRaft,
    id: RaftNodeId,
    space: &SpaceGuard,
    shutdown: &CancellationToken,
) -> Result<u64, String> {
    let mut after = None;
    let mut batches = 0;
    loop {
        if shutdown.is_cancelled() || !leading(raft, id) {
            return Err("no longer leading".into());
        }
        let cmd = MetaCommand::QueueRebalance {
            after,
            max: BATCH,
            at: tessera_types::now_millis(),
        };
        space.check(&cmd).map_err(|s| s.message().to_string())?;
        let reply = raft.client_write(cmd).await.map_err(|e| e.to_string())?;
        batches += 1;
        match reply.data {
            MetaReply::Cursor(Some(next)) => after = Some(next),
            MetaReply::Cursor(None) => return Ok(batches),
            other => return Err(format!("unexpected reply {other:?}")),
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
}
