//! The error of every internode call. Retry decisions are made from the
//! variant, never from message strings.

use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// Could not connect, or the connection broke: the request may not have
    /// reached the peer. Safe to retry elsewhere.
    #[error("peer {addr} unreachable: {message}")]
    Unreachable { addr: String, message: String },
    /// The call did not finish in time; its outcome is unknown.
    #[error("call to {addr} timed out")]
    Timeout { addr: String },
    /// A meta follower refused a leader-only call.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<String> },
    /// The peer has no such shard / entry.
    #[error("not found: {0}")]
    NotFound(String),
    /// A shard failed its checksum: it must be treated as missing.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The peer refused the request as invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The peer is out of space.
    #[error("no space: {0}")]
    NoSpace(String),
    /// Authentication with the peer failed.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A payload could not be decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// Any other remote error.
    #[error("remote error {code:?}: {message}")]
    Remote { code: Code, message: String },
}

impl RpcError {
    /// Converts a tonic status from `addr` into an error.
    pub fn from_status(addr: &str, status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::Unavailable | Code::Cancelled | Code::Unknown
                if status.metadata().get(crate::LEADER_HINT_KEY).is_none() =>
            {
                RpcError::Unreachable {
                    addr: addr.to_string(),
                    message,
                }
            }
            Code::FailedPrecondition | Code::Unavailable
                if status.metadata().get(crate::LEADER_HINT_KEY).is_some() =>
            {
                let leader = status
                    .metadata()
                    .get(crate::LEADER_HINT_KEY)
                    .and_then(|v| v.to_str().ok())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string);
                RpcError::NotLeader { leader }
            }
            Code::DeadlineExceeded => RpcError::Timeout {
                addr: addr.to_string(),
            },
            Code::NotFound => RpcError::NotFound(message),
            Code::DataLoss => RpcError::Corrupt(message),
            Code::InvalidArgument => RpcError::InvalidArgument(message),
            Code::ResourceExhausted => RpcError::NoSpace(message),
            Code::Unauthenticated | Code::PermissionDenied => RpcError::Unauthenticated(message),
            code => RpcError::Remote { code, message },
        }
    }

    /// True when trying another peer (or the same one later) is safe and
    /// may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RpcError::Unreachable { .. } | RpcError::NotLeader { .. } | RpcError::Timeout { .. }
        )
    }
}

/// Builds the NotLeader status a meta follower answers with.
pub fn not_leader_status(leader_addr: Option<&str>) -> Status {
    let mut status = Status::failed_precondition("not the meta leader");
    let hint = leader_addr.unwrap_or("");
    if let Ok(v) = hint.parse() {
        status.metadata_mut().insert(crate::LEADER_HINT_KEY, v);
    }
    status
}
