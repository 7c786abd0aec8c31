//! The cluster map: storage nodes, their zones, weights, usage and state.

use crate::{NodeId, UnixMillis};
use serde::{Deserialize, Serialize};

/// A storage node's state, decided by the meta leader through Raft so that
/// every gateway agrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Heartbeating; gets new shards.
    Up,
    /// Missed a few heartbeats: not chosen for new shards, still read.
    Suspect,
    /// Gone long enough that its shards count as lost.
    Down,
    /// Being decommissioned: readable, gets no new shards.
    Draining,
}

impl NodeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Suspect => "suspect",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
        }
    }
}

/// One storage node as the cluster map knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// gRPC address, `host:port`.
    pub addr: String,
    pub zone: String,
    /// Relative placement weight (1.0 = one ordinary disk's worth).
    pub weight: f64,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub shard_count: u64,
    pub state: NodeState,
    /// Leader's clock at the last heartbeat that changed the map.
    pub last_heartbeat: UnixMillis,
}

/// The set of storage nodes, with an epoch that grows on every change.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub epoch: u64,
    pub nodes: Vec<NodeInfo>,
}

impl ClusterMap {
    pub fn node(&self, id: &NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| &n.id == id)
    }
    /// Nodes that may receive new shards.
    pub fn writable(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.state == NodeState::Up)
    }
}
