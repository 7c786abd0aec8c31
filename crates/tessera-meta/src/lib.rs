//! Tessera metadata node: one member of the meta Raft group. It keeps the
//! Raft log and the replicated state machine (buckets, object manifests,
//! access keys, the cluster map, the GC queue) in sled, serves the `Raft`
//! transport and the `Meta` service over one gRPC server, and, while it
//! leads, tracks storage node heartbeats and marks silent nodes suspect
//! and then down.
//!
//! Only this crate touches sled and openraft. It depends on
//! `tessera-types` (domain types, codec) and `tessera-proto` (generated
//! gRPC code, channels), `tessera-observe` (metrics, admin port) and on
//! nothing above them.

pub mod config;
pub mod detector;
pub mod error;
mod metrics;
pub mod network;
pub(crate) mod reads;
pub mod rebalance;
pub mod server;
pub mod service;
pub mod space;
pub mod store;

pub use config::MetaConfig;
pub use error::MetaNodeError;
pub use server::serve;
pub use store::{RaftNodeId, TypeConfig};
