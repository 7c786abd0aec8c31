//! The one error type of the meta node.

/// Why the meta node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum MetaNodeError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("config: {0}")]
    Config(String),
    /// The sled database failed (open, read, write or flush).
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    /// A persisted value could not be decoded: the data directory is
    /// corrupt or was written by an incompatible version.
    #[error("corrupt {what}: {message}")]
    Corrupt { what: &'static str, message: String },
    /// A persisted value has an unknown version or is malformed.
    #[error("codec: {0}")]
    Codec(#[from] tessera_types::codec::CodecError),
    /// Openraft refused to start or stopped with a fatal error.
    #[error("raft: {0}")]
    Raft(String),
    /// Raft stopped while the node was serving (a storage error such as a
    /// full disk, or a bug). The node stops instead of lingering with a
    /// dead Raft core; restarted, it recovers from its data directory.
    #[error("raft stopped: {0}; restart the node once the cause is fixed (it recovers from its data directory)")]
    RaftStopped(String),
    /// The gRPC server failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}
