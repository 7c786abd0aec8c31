//! Where the shards of a stripe go: weighted rendezvous (highest random
//! weight) hashing of (stripe id, node id) over the storage nodes that are
//! up, at most one shard of a stripe per node, spread over zones so that
//! losing one zone loses at most m shards whenever the cluster has enough
//! zones. Pure functions of the cluster map and the stripe id: this crate
//! does no I/O and knows nothing of the network, disks or Raft.
//!
//! - [`Placement`]: built once per cluster map, reused for many stripes.
//! - [`place`]: one-shot convenience over a [`ClusterMap`].
//! - [`weights`]: the correction that keeps every node's share of shard
//!   slots proportional to its weight when k + m nodes are picked at once.

pub mod error;
pub mod placement;
pub mod weights;

pub use error::PlacementError;
pub use placement::{place, zone_cap, Candidate, Placement};

#[doc(no_inline)]
pub use tessera_types::{ClusterMap, NodeId, StripeId};
