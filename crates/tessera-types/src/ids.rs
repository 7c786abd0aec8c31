//! Identifiers.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A meta (Raft) node id: small integers chosen by the operator (1, 2, 3).
pub type MetaNodeId = u64;

/// A storage node id: generated once, persisted in the node's data
/// directory, stable across restarts and address changes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    /// A fresh random id, `s-` and 16 hex digits.
    pub fn generate() -> Self {
        let v: u64 = rand::random();
        NodeId(format!("s-{v:016x}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_string())
    }
}

/// A stripe id: 128 random bits. Shard files are named by stripe id and
/// shard index; shards are immutable, so a stripe id is never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StripeId(pub [u8; 16]);

impl StripeId {
    pub fn random() -> Self {
        StripeId(rand::random())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(b).ok().map(StripeId)
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Self::from_slice(&v)
    }
}

impl fmt::Display for StripeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for StripeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StripeId({})", self.to_hex())
    }
}
