//! Commands (replicated through Raft) and queries (answered by the leader
//! after a read-index check) of the metadata service, with their replies.
//!
//! Every command is keyed by bucket and key, so that a later split of the
//! namespace into many Raft groups is a routing change in the meta client.
//! Commands are deterministic: anything time-dependent (creation times,
//! ids) is chosen by the proposer and carried in the command.

use crate::repair::{
    DurabilityStatus, GcLease, RepairConfig, RepairItem, RepairOutcome, RepairTask, ShardLiveness,
    ShardProblem, StripeOwner,
};
use crate::{
    AccessKey, Bucket, ClusterMap, NodeId, NodeInfo, NodeState, ObjectManifest, Part, ShardEntry,
    Stripe, StripeId, UnixMillis,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A precondition checked atomically in the state machine when a manifest
/// is committed (S3 conditional writes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteCondition {
    #[default]
    None,
    /// `If-None-Match: *`: the key must not exist.
    IfNoneMatch,
    /// `If-Match: etag`: the key must exist with this ETag.
    IfMatch(String),
}

/// A state-changing request, applied by every meta node in log order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetaCommand {
    CreateBucket(Bucket),
    /// Deletes a bucket if it holds no objects. Its multipart uploads in
    /// progress are dropped: the reply is then [`MetaReply::Released`]
    /// with their parts' stripes.
    DeleteBucket {
        name: String,
    },
    /// Commits an object manifest (the object becomes visible). The
    /// replaced version's stripes go to the GC queue.
    PutObject {
        manifest: ObjectManifest,
        condition: WriteCondition,
    },
    /// Removes an object; its stripes go to the GC queue.
    DeleteObject {
        bucket: String,
        key: String,
    },
    PutAccessKey(AccessKey),
    DeleteAccessKey {
        id: String,
    },
    /// Adds a storage node or updates its address, zone, weight and usage.
    UpsertNode(NodeInfo),
    SetNodeState {
        id: NodeId,
        state: NodeState,
        at: i64,
    },
    RemoveNode {
        id: NodeId,
    },
    /// Starts a multipart upload (the bucket must exist).
    CreateUpload {
        upload: Upload,
    },
    /// Records an uploaded part of an upload in progress, replacing a part
    /// with the same number. Replies [`MetaReply::Released`] with the
    /// replaced part's stripes.
    PutPart {
        bucket: String,
        key: String,
        upload_id: String,
        part: PartRecord,
    },
    /// Atomically: checks that the upload exists and that every part of
    /// `manifest` is the stored part of that number (same ETag and
    /// stripes), removes the upload and its parts, and commits `manifest`
    /// under `condition`. Replies [`MetaReply::Released`] with the stripes
    /// of stored parts left out of the object and of the replaced object.
    CompleteUpload {
        upload_id: String,
        manifest: ObjectManifest,
        condition: WriteCondition,
    },
    /// Removes an upload and its parts. Replies [`MetaReply::Released`]
    /// with the stripes of its parts.
    AbortUpload {
        bucket: String,
        key: String,
        upload_id: String,
    },
    /// Bad shards found by a reader, a writer or a scrubber: their stripes
    /// are queued for repair (shards of stripes no manifest references are
    /// ignored: they are garbage already).
    ReportShards {
        problems: Vec<ShardProblem>,
        at: UnixMillis,
    },
    /// Leases up to `max` queued stripes, riskiest first, to `worker`
    /// until `at + lease_ms`. Replies [`MetaReply::Repairs`].
    LeaseRepairs {
        worker: String,
        max: u32,
        lease_ms: u64,
        at: UnixMillis,
    },
    /// Compare-and-set of a stripe's shard list after a repair: applied
    /// only if `owner` still holds stripe `stripe` with exactly `expected`
    /// shards. Shards of `expected` not kept in `shards` go to the GC
    /// queue; on a failed check (reply `Err(PreconditionFailed)`) the new
    /// shards of `shards` do instead. Drops the queue item either way.
    CommitRepair {
        worker: String,
        owner: StripeOwner,
        stripe: StripeId,
        expected: Vec<ShardEntry>,
        shards: Vec<ShardEntry>,
        /// Shard bytes written by the repair (for the totals).
        bytes: u64,
        at: UnixMillis,
    },
    /// Gives back a leased item (see [`RepairOutcome`]).
    ReleaseRepair {
        worker: String,
        stripe: StripeId,
        outcome: RepairOutcome,
        at: UnixMillis,
    },
    SetRepairConfig(RepairConfig),
    /// Leases up to `max` GC items queued before `before` to `worker`
    /// until `at + lease_ms`. Replies [`MetaReply::Gc`].
    LeaseGc {
        worker: String,
        max: u32,
        before: UnixMillis,
        lease_ms: u64,
        at: UnixMillis,
    },
    /// Removes GC items whose shards were deleted.
    AckGc {
        keys: Vec<Vec<u8>>,
    },
    /// Queues every stripe with a shard on `node` for a check (after a
    /// disk was replaced).
    CheckNode {
        id: NodeId,
        at: UnixMillis,
    },
    /// Queues up to `max` live stripes with ids after `after` (in id
    /// order) for [`crate::repair::RepairReason::Rebalance`]; a pass over
    /// every stripe is a loop of these. Replies [`MetaReply::Cursor`] with
    /// the last stripe visited (`None`: the pass is complete).
    QueueRebalance {
        after: Option<StripeId>,
        max: u32,
        at: UnixMillis,
    },
    /// Grants `access_key` read and/or write access to `bucket` (both
    /// false: revokes). The owner always has both; grants go with the
    /// bucket.
    SetGrant {
        bucket: String,
        access_key: String,
        grant: Grant,
    },
    /// Drops every lease `worker` holds (a restarted gateway, whose
    /// worker id is stable, gives back what its previous incarnation held
    /// instead of letting the leases run out).
    ReleaseLeases {
        worker: String,
        repairs: bool,
        gc: bool,
    },
    /// Replaces the tag set of the current version of an object in place
    /// (PutObjectTagging; `None`: DeleteObjectTagging): the manifest's
    /// [`crate::TAGGING_HEADER`] entry becomes `tagging`, nothing else
    /// changes. `NoSuchKey` if the object does not exist.
    SetObjectTagging {
        bucket: String,
        key: String,
        /// The canonical, URL-encoded tag set (`k1=v1&k2=v2`).
        tagging: Option<String>,
    },
    /// Group commit: several commands in one log entry, applied in order,
    /// each seeing the effects of the ones before it and answered on its
    /// own (one refused command does not affect the others). Replies
    /// [`MetaReply::Batch`], one reply per command in order. A nested
    /// batch is refused (`Err(Invalid)`).
    Batch(Vec<MetaCommand>),
    /// [`MetaCommand::PutObject`] on behalf of `access_key`, which must own
    /// the bucket or hold a write grant on it when the command is applied
    /// (`Err(AccessDenied)` otherwise, `Err(NoSuchBucket)` without the
    /// bucket). The authoritative permission check of a PUT, atomic with
    /// its commit: a gateway may check early against a cached answer, and
    /// a grant revoked (or a bucket deleted and re-created by another key)
    /// while the body streams is still refused.
    ///
    /// New variants go at the end: the encoding of the older ones is
    /// unchanged (a meta node of an older version cannot decode newer
    /// ones: upgrade meta nodes before gateways).
    PutObjectChecked {
        manifest: ObjectManifest,
        condition: WriteCondition,
        access_key: String,
    },
}

/// What a non-owner access key may do in a bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// GET/HEAD objects, list objects and uploads.
    pub read: bool,
    /// PUT/DELETE/copy objects, multipart uploads.
    pub write: bool,
}

impl MetaCommand {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            MetaCommand::CreateBucket(_) => "create_bucket",
            MetaCommand::DeleteBucket { .. } => "delete_bucket",
            MetaCommand::PutObject { .. } => "put_object",
            MetaCommand::DeleteObject { .. } => "delete_object",
            MetaCommand::PutAccessKey(_) => "put_access_key",
            MetaCommand::DeleteAccessKey { .. } => "delete_access_key",
            MetaCommand::UpsertNode(_) => "upsert_node",
            MetaCommand::SetNodeState { .. } => "set_node_state",
            MetaCommand::RemoveNode { .. } => "remove_node",
            MetaCommand::CreateUpload { .. } => "create_upload",
            MetaCommand::PutPart { .. } => "put_part",
            MetaCommand::CompleteUpload { .. } => "complete_upload",
            MetaCommand::AbortUpload { .. } => "abort_upload",
            MetaCommand::ReportShards { .. } => "report_shards",
            MetaCommand::LeaseRepairs { .. } => "lease_repairs",
            MetaCommand::CommitRepair { .. } => "commit_repair",
            MetaCommand::ReleaseRepair { .. } => "release_repair",
            MetaCommand::SetRepairConfig(_) => "set_repair_config",
            MetaCommand::LeaseGc { .. } => "lease_gc",
            MetaCommand::AckGc { .. } => "ack_gc",
            MetaCommand::CheckNode { .. } => "check_node",
            MetaCommand::QueueRebalance { .. } => "queue_rebalance",
            MetaCommand::SetGrant { .. } => "set_grant",
            MetaCommand::ReleaseLeases { .. } => "release_leases",
            MetaCommand::SetObjectTagging { .. } => "set_object_tagging",
            MetaCommand::Batch(_) => "batch",
            MetaCommand::PutObjectChecked { .. } => "put_object_checked",
        }
    }
}

/// Why a command or query was refused by the state machine. These are
/// answers, not failures of the meta service: they map to S3 errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("bucket already exists (owner {owner})")]
    BucketAlreadyExists { owner: String },
    #[error("bucket not empty")]
    BucketNotEmpty,
    #[error("no such key")]
    NoSuchKey,
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("no such access key")]
    NoSuchAccessKey,
    #[error("no such node")]
    NoSuchNode,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no such upload")]
    NoSuchUpload,
    /// A part named in CompleteMultipartUpload is not the stored part.
    #[error("invalid part {number}")]
    InvalidPart { number: u32 },
    /// The access key may not do this in the bucket (checked when a
    /// command is applied, e.g. [`MetaCommand::PutObjectChecked`]).
    #[error("access denied")]
    AccessDenied,
}

/// The result of applying a command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaReply {
    Ok,
    /// PutObject / DeleteObject: the manifest that was replaced or removed.
    Replaced(Option<Box<ObjectManifest>>),
    Err(MetaError),
    /// Multipart commands: stripes no longer referenced by any part or
    /// object, for the gateway's deferred deletion (they are also queued in
    /// the GC queue).
    Released(Vec<Stripe>),
    /// LeaseRepairs: the leased items.
    Repairs(Vec<RepairTask>),
    /// LeaseGc: the leased GC items.
    Gc(Vec<GcLease>),
    /// QueueRebalance: where the next batch starts (`None`: done).
    Cursor(Option<StripeId>),
    /// [`MetaCommand::Batch`]: one reply per command, in order.
    Batch(Vec<MetaReply>),
}

/// A read of the current state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetaQuery {
    GetBucket {
        name: String,
    },
    ListBuckets,
    /// Counts and sizes, for status pages.
    BucketStats {
        name: String,
    },
    GetObject {
        bucket: String,
        key: String,
    },
    ListObjects(ListObjectsQuery),
    GetAccessKey {
        id: String,
    },
    ListAccessKeys,
    ClusterMap,
    /// An upload in progress.
    GetUpload {
        bucket: String,
        key: String,
        upload_id: String,
    },
    /// Parts of an upload with numbers greater than `marker`, in order;
    /// at most `max_parts` (0 = all).
    ListParts {
        bucket: String,
        key: String,
        upload_id: String,
        marker: u32,
        max_parts: u32,
    },
    ListUploads(ListUploadsQuery),
    /// Repair queue, GC backlog and totals.
    Durability,
    RepairConfig,
    /// Whether each shard is referenced by a live manifest at `node`
    /// (a shard repaired elsewhere while its node was away is not).
    ShardsLive {
        node: NodeId,
        shards: Vec<ShardLiveness>,
    },
    /// The first `max` queued items in queue order (riskiest first).
    RepairQueue {
        max: u32,
    },
    /// The bucket and what `access_key` may do in it (the owner: all).
    BucketAccess {
        bucket: String,
        access_key: String,
    },
    /// Every grant on a bucket, by access key.
    ListGrants {
        bucket: String,
    },
    /// The shards live manifests place on `node`, in (stripe id, index)
    /// order after `after`, at most `max` (a storage node's inventory
    /// check: a listed shard without a file is lost).
    NodeShards {
        node: NodeId,
        after: Option<ShardLiveness>,
        max: u32,
    },
    /// Several queries answered after one read-index check, in order (at
    /// most [`MAX_MANY_QUERIES`], none of them `Many`): a GET asks for the
    /// bucket access and the object in one trip.
    Many(Vec<MetaQuery>),
}

/// Most queries in one [`MetaQuery::Many`].
pub const MAX_MANY_QUERIES: usize = 16;

impl MetaQuery {
    /// A point lookup (a few sled gets): answered on the async executor,
    /// where a blocking-pool trip would cost more than the lookup. Scans
    /// (listings, statistics, queues) go to the blocking pool.
    pub fn is_point(&self) -> bool {
        match self {
            MetaQuery::GetBucket { .. }
            | MetaQuery::GetObject { .. }
            | MetaQuery::GetAccessKey { .. }
            | MetaQuery::GetUpload { .. }
            | MetaQuery::BucketAccess { .. }
            | MetaQuery::ClusterMap
            | MetaQuery::RepairConfig => true,
            MetaQuery::Many(qs) => qs.iter().all(MetaQuery::is_point),
            _ => false,
        }
    }
}

/// A multipart upload in progress: what CreateMultipartUpload fixed for
/// the object it will become.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    /// Access key that started it.
    pub owner: String,
    pub initiated: UnixMillis,
    pub content_type: Option<String>,
    /// Standard headers kept verbatim (see [`ObjectManifest::headers`]).
    pub headers: BTreeMap<String, String>,
    pub user_metadata: BTreeMap<String, String>,
}

/// One uploaded part of an upload in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub part: Part,
    pub uploaded: UnixMillis,
}

/// A page of ListParts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartsPage {
    pub parts: Vec<PartRecord>,
    pub is_truncated: bool,
    /// The last part number returned when truncated.
    pub next_marker: Option<u32>,
}

/// A page of ListMultipartUploads: uploads of `bucket` whose key starts
/// with `prefix`, in order of (key, upload id), after the markers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListUploadsQuery {
    pub bucket: String,
    pub prefix: String,
    /// Uploads of keys greater than this, or of this key with an upload id
    /// greater than `upload_id_marker`.
    pub key_marker: String,
    pub upload_id_marker: String,
    /// 0 = the default (1000).
    pub max_uploads: u32,
    /// Empty = no delimiter; otherwise keys with the delimiter after the
    /// prefix collapse into common prefixes (as in ListObjects).
    pub delimiter: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadsPage {
    pub uploads: Vec<Upload>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

/// A page of a bucket listing, in UTF-8 byte order of keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListObjectsQuery {
    pub bucket: String,
    pub prefix: String,
    /// Empty = no delimiter.
    pub delimiter: String,
    /// List keys strictly greater than this (continuation token /
    /// start-after / marker, whichever is greater).
    pub start_after: String,
    pub max_keys: u32,
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSummary {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListObjectsPage {
    pub objects: Vec<ObjectSummary>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    /// The last key or common prefix returned; continue after it.
    pub next_marker: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketStats {
    pub objects: u64,
    pub bytes: u64,
}

/// The answer to a [`MetaQuery`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum QueryReply {
    Bucket(Option<Bucket>),
    Buckets(Vec<Bucket>),
    BucketStats(BucketStats),
    Object(Option<Box<ObjectManifest>>),
    Listing(ListObjectsPage),
    AccessKey(Option<AccessKey>),
    AccessKeys(Vec<AccessKey>),
    ClusterMap(ClusterMap),
    Err(MetaError),
    Upload(Option<Upload>),
    Parts(PartsPage),
    Uploads(UploadsPage),
    Durability(DurabilityStatus),
    RepairConfig(RepairConfig),
    /// ShardsLive: one answer per asked shard, in order.
    Live(Vec<bool>),
    RepairItems(Vec<RepairItem>),
    /// BucketAccess: `None` when the bucket does not exist.
    BucketAccess(Option<(Bucket, Grant)>),
    Grants(Vec<(String, Grant)>),
    NodeShards(Vec<ShardLiveness>),
    /// Many: one answer per query, in order.
    Many(Vec<QueryReply>),
}
