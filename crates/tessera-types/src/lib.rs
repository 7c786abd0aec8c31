//! Tessera's shared vocabulary: identifiers, object manifests, the cluster
//! map, access keys, and the commands and queries of the metadata service.
//!
//! This crate does no I/O and knows nothing of the network, Raft or disks;
//! every other crate depends on it, and it depends on none of them.

pub mod codec;
pub mod ids;
pub mod manifest;
pub mod meta;
pub mod node;
pub mod repair;

pub use ids::{MetaNodeId, NodeId, StripeId};
pub use manifest::{
    AccessKey, Bucket, ObjectData, ObjectManifest, Part, ShardEntry, StorageClass, Stripe,
    TAGGING_HEADER,
};
pub use node::{ClusterMap, NodeInfo, NodeState};

/// Milliseconds since the Unix epoch; the one clock type in persisted state.
pub type UnixMillis = i64;

/// The current wall clock in [`UnixMillis`].
pub fn now_millis() -> UnixMillis {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
