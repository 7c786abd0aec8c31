//! The storage node's one error type. The mapping to gRPC statuses lives in
//! `service.rs`, the only module that speaks protobuf.

use std::io;

use tessera_types::StripeId;

/// A shard: its stripe and its index in the stripe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardKey {
    pub stripe: StripeId,
    pub index: u8,
}

impl std::fmt::Display for ShardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.stripe, self.index)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A disk operation failed.
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// The disk holding the shard is full.
    #[error("no space left on device: {0}")]
    NoSpace(io::Error),
    /// The configuration cannot work.
    #[error("config: {0}")]
    Config(String),
    /// A persisted file (node id, format marker) is not what this version
    /// can read.
    #[error("bad on-disk state in {path}: {reason}")]
    BadState { path: String, reason: String },
    /// The request is malformed (bad ids, missing header, oversized shard).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The received bytes do not match the length or hash their header
    /// announced; nothing was stored.
    #[error("shard {shard}: received data does not match its header: {reason}")]
    Mismatch { shard: ShardKey, reason: String },
    /// The node already holds different bytes under this shard's name.
    #[error("shard {shard} already exists with a different hash")]
    Conflict { shard: ShardKey },
    /// The node has no such shard.
    #[error("shard {shard} not found")]
    NotFound { shard: ShardKey },
    /// The stored shard failed its checksum; it was quarantined.
    #[error("shard {shard} is corrupt: {reason}")]
    Corrupt { shard: ShardKey, reason: String },
    /// The gRPC server failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A call to the meta service failed.
    #[error("meta: {0}")]
    Meta(#[from] tessera_proto::RpcError),
    /// Meta answered a call with an error or an answer that does not fit
    /// the question.
    #[error("meta refused: {0}")]
    MetaRefused(String),
    /// A blocking disk task panicked or was cancelled.
    #[error("disk task failed: {0}")]
    Task(String),
}

impl StorageError {
    /// Wraps an I/O error, singling out a full disk.
    pub(crate) fn io(e: io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC)
            || e.raw_os_error() == Some(libc::EDQUOT)
            || e.kind() == io::ErrorKind::StorageFull
        {
            StorageError::NoSpace(e)
        } else {
            StorageError::Io(e)
        }
    }
}
