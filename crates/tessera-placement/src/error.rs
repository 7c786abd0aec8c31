//! The crate's one error type.

use tessera_types::NodeId;

/// Invalid candidate lists. Placing a stripe itself never fails: with too
/// few nodes it returns fewer targets and the caller decides about quorum.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// The same node id appears twice among the candidates.
    #[error("node {0} is listed twice")]
    DuplicateNode(NodeId),
    /// A weight that is not a finite number greater than zero.
    #[error("node {node} has invalid weight {weight}")]
    InvalidWeight { node: NodeId, weight: f64 },
}
