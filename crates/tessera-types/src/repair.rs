//! Durability bookkeeping kept by meta: which manifest owns each stripe,
//! the repair queue (stripes with lost, corrupt or misplaced shards,
//! riskiest first), the GC queue leases, and the repair settings that an
//! operator can change at run time.
//!
//! Workers (gateways) lease work through Raft commands, so two workers
//! never hold the same item and a crashed worker's lease simply expires.
//! A repair is committed with a compare-and-set on the stripe's shard list:
//! if the object was overwritten or repaired by somebody else meanwhile,
//! nothing changes and the rebuilt shards go to the GC queue.

use serde::{Deserialize, Serialize};

use crate::{NodeId, ShardEntry, Stripe, StripeId, UnixMillis};

/// What references a stripe. Stripe ids are never reused and belong to
/// exactly one owner at a time (a completed upload moves its parts'
/// stripes from `Part` to `Object`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StripeOwner {
    /// The current manifest of `bucket`/`key`.
    Object { bucket: String, key: String },
    /// Part `number` of an upload in progress.
    Part {
        bucket: String,
        key: String,
        upload_id: String,
        number: u32,
    },
}

/// What a reader, writer or scrubber found wrong with one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProblemKind {
    /// The node answered that it has no such shard.
    Missing,
    /// The shard's bytes do not match its BLAKE3 hash (quarantined).
    Corrupt,
    /// The node did not answer in time or refused the call.
    Unreachable,
}

/// One bad shard, as reported to meta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardProblem {
    pub stripe: StripeId,
    pub index: u8,
    pub node: NodeId,
    pub kind: ProblemKind,
}

/// Why a stripe is in the repair queue (an item keeps every reason it was
/// queued for, once each).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepairReason {
    /// A node holding one of its shards went down.
    NodeDown(NodeId),
    /// A write met its quorum without all k + m shards.
    ShortWrite,
    /// A shard was reported missing, corrupt or unreachable.
    Reported(ProblemKind),
    /// A node holding one of its shards is being drained.
    Drain(NodeId),
    /// An operator asked to verify a node's shards (after a disk was
    /// replaced): the worker checks every shard and rebuilds missing ones.
    Check(NodeId),
    /// The stripe may not follow placement any more (a node was added):
    /// the worker moves shards on nodes outside the stripe's placement to
    /// the placement's nodes that hold none. Whole stripes queued only for
    /// this sort after every degraded one.
    Rebalance,
}

/// A queued stripe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairItem {
    pub stripe: StripeId,
    pub owner: StripeOwner,
    /// Surviving shards when last (re)queued: the queue order.
    pub surviving: u8,
    /// Shards known bad on a node that is otherwise up: (index, node).
    pub bad: Vec<(u8, NodeId)>,
    pub reasons: Vec<RepairReason>,
    pub queued_at: UnixMillis,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Worker holding the item, and until when (state machine time).
    pub lease: Option<(String, UnixMillis)>,
    /// Not leased again before this time (back-off after a failure).
    pub not_before: UnixMillis,
    /// Queued again while leased (a rebalance pass, a report, a node
    /// going down): the holder judged the stripe by what it knew before,
    /// so its release or commit leaves the item queued for a fresh look.
    pub requeued: bool,
}

/// A leased repair: the queue item and the stripe as its owner holds it
/// now (the compare-and-set base of [`crate::meta::MetaCommand::CommitRepair`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairTask {
    pub item: RepairItem,
    pub stripe: Stripe,
}

/// How a worker gives back a leased item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RepairOutcome {
    /// Nothing to do (the stripe is whole again or gone): drop the item.
    /// Meta keeps it queued instead when its own node states say the
    /// stripe still has a shard on a down or draining node (the worker's
    /// cluster map may be older than the reason the item was queued for),
    /// or when the item was queued again while leased.
    Done,
    /// The attempt failed: keep the item, retry after a back-off.
    Failed,
}

/// Run-time repair settings, changed by `tessera admin repair`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairConfig {
    /// Rebuilt bytes per second per worker (gateway); 0 = unlimited.
    pub rate_bytes_per_sec: u64,
    /// Stripes repaired at once per worker.
    pub concurrency: u32,
    /// Repairs paused (the queue keeps filling).
    pub paused: bool,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig {
            rate_bytes_per_sec: 200 * 1024 * 1024,
            concurrency: 8,
            paused: false,
        }
    }
}

/// Repair and GC figures for `tessera admin status` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurabilityStatus {
    /// Live stripes (referenced by an object or a part).
    pub stripes: u64,
    /// Queued stripes by surviving-shard count (stripes not queued are
    /// whole).
    pub queued_by_surviving: Vec<(u8, u64)>,
    /// Queued stripes with fewer surviving shards than they need to decode.
    pub at_risk_unreadable: u64,
    pub queued: u64,
    pub leased: u64,
    /// Stripes and shard bytes rebuilt since the cluster was created.
    pub repaired_stripes: u64,
    pub repaired_bytes: u64,
    pub config: RepairConfig,
    /// GC queue: items (object versions or part sets) and their stripes.
    pub gc_items: u64,
    pub gc_stripes: u64,
    /// Shards per node, from the node -> shard index (drain progress).
    pub shards_by_node: Vec<(NodeId, u64)>,
}

/// One entry of the GC queue handed to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcLease {
    /// Opaque queue key, given back in `AckGc`.
    pub key: Vec<u8>,
    pub at: UnixMillis,
    pub stripes: Vec<Stripe>,
}

/// Whether `shard` of `stripe` on `node` is referenced by a live manifest
/// (the orphan scan of a storage node asks this before deleting).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLiveness {
    pub stripe: StripeId,
    pub index: u8,
}

/// Checks a proposed new shard list of a stripe against its storage class:
/// indexes in range, no index twice, no node twice.
pub fn check_shard_list(stripe: &Stripe, shards: &[ShardEntry]) -> Result<(), String> {
    let n = stripe.class.total_shards();
    let mut seen_idx = std::collections::HashSet::new();
    let mut seen_node = std::collections::HashSet::new();
    for s in shards {
        if s.index as usize >= n {
            return Err(format!("shard index {} out of range", s.index));
        }
        if !seen_idx.insert(s.index) {
            return Err(format!("shard index {} twice", s.index));
        }
        if !seen_node.insert(&s.node) {
            return Err(format!("node {} holds two shards", s.node));
        }
    }
    Ok(())
}
