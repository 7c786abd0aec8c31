//! Commands (replicated through Raft) and queries (answered by the leader
//! after a read-index check) of the metadata service, with their replies.
//!
//! Every command is keyed by bucket and key, so that a later split of the
//! namespace into many Raft groups is a routing change in the meta client.
//! Commands are deterministic: anything time-dependent (creation times,
//! ids) is chosen by the proposer and carried in the command.

use crate::{AccessKey, Bucket, ClusterMap, NodeId, NodeInfo, NodeState, ObjectManifest};
use serde::{Deserialize, Serialize};

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
    /// Deletes a bucket if it is empty.
    DeleteBucket { name: String },
    /// Commits an object manifest (the object becomes visible). The
    /// replaced version's stripes go to the GC queue.
    PutObject {
        manifest: ObjectManifest,
        condition: WriteCondition,
    },
    /// Removes an object; its stripes go to the GC queue.
    DeleteObject { bucket: String, key: String },
    PutAccessKey(AccessKey),
    DeleteAccessKey { id: String },
    /// Adds a storage node or updates its address, zone, weight and usage.
    UpsertNode(NodeInfo),
    SetNodeState { id: NodeId, state: NodeState, at: i64 },
    RemoveNode { id: NodeId },
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
}

/// The result of applying a command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaReply {
    Ok,
    /// PutObject / DeleteObject: the manifest that was replaced or removed.
    Replaced(Option<Box<ObjectManifest>>),
    Err(MetaError),
}

/// A read of the current state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MetaQuery {
    GetBucket { name: String },
    ListBuckets,
    /// Counts and sizes, for status pages.
    BucketStats { name: String },
    GetObject { bucket: String, key: String },
    ListObjects(ListObjectsQuery),
    GetAccessKey { id: String },
    ListAccessKeys,
    ClusterMap,
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
}
