//! Tessera's gRPC protocol: the code generated from `proto/`, the one place
//! that builds channels between nodes, internode authentication with the
//! cluster secret (`auth`), and typed clients for the meta and storage
//! services. Protobuf types stay in this crate and at the edges of
//! the service crates; everything above speaks `tessera-types`.

pub mod auth;
pub mod channel;
pub mod end_aware;
pub mod error;
pub mod meta_client;
pub mod raw;
pub mod shard_codec;
pub mod shard_http1;
pub mod shard_stream;
pub mod storage_client;

pub use auth::{ClusterAuth, ClusterSecret};
pub use error::RpcError;
pub use meta_client::MetaClient;
pub use storage_client::StoragePool;

/// Generated storage service code.
pub mod storage {
    tonic::include_proto!("tessera.storage.v1");
}
/// Generated meta and Raft service code.
pub mod meta {
    tonic::include_proto!("tessera.meta.v1");
}

/// Metadata key carrying the leader's address on a NotLeader answer.
pub const LEADER_HINT_KEY: &str = "x-tessera-leader";

/// Largest gRPC message accepted or sent (Raft batches can carry large
/// manifests; shard data moves in ~1 MiB frames).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Size of a shard data frame on the wire.
pub const FRAME_BYTES: usize = 1 << 20;
