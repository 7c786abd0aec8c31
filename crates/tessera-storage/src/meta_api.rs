//! What the storage node's background workers ask of meta, behind a trait
//! so that they can be tested without a meta group.

use std::future::Future;

use tessera_proto::MetaClient;
use tessera_types::meta::{MetaCommand, MetaQuery, MetaReply, QueryReply};
use tessera_types::repair::{ShardLiveness, ShardProblem};
use tessera_types::NodeId;

use crate::StorageError;

/// The meta calls of the scrubber and the orphan scan.
pub trait NodeMeta: Send + Sync + 'static {
    /// Reports bad shards (`ReportShards`); their stripes are queued for
    /// repair.
    fn report_shards(
        &self,
        problems: Vec<ShardProblem>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Whether a live manifest places each of `shards` on `node`
    /// (`ShardsLive`): one answer per shard, in order. Any error means
    /// "unknown", never "not live".
    fn shards_live(
        &self,
        node: NodeId,
        shards: Vec<ShardLiveness>,
    ) -> impl Future<Output = Result<Vec<bool>, StorageError>> + Send;

    /// Whether `node` is in the cluster map (the orphan scan deletes
    /// nothing for a node meta does not know: it would answer "not live"
    /// for every shard).
    fn knows_node(&self, node: NodeId) -> impl Future<Output = Result<bool, StorageError>> + Send;

    /// A page of the shards live manifests place on `node`, after `after`
    /// (`NodeShards`). The default knows of none (test fakes).
    fn node_shards(
        &self,
        node: NodeId,
        after: Option<ShardLiveness>,
        max: u32,
    ) -> impl Future<Output = Result<Vec<ShardLiveness>, StorageError>> + Send {
        let _ = (node, after, max);
        async { Ok(Vec::new()) }
    }
}

impl NodeMeta for MetaClient {
    async fn report_shards(&self, problems: Vec<ShardProblem>) -> Result<(), StorageError> {
        let cmd = MetaCommand::ReportShards {
            problems,
            at: tessera_types::now_millis(),
        };
        match self.write(&cmd).await? {
            MetaReply::Ok => Ok(()),
            MetaReply::Err(e) => Err(StorageError::MetaRefused(e.to_string())),
            other => Err(StorageError::MetaRefused(format!(
                "unexpected reply to ReportShards: {other:?}"
            ))),
        }
    }

    async fn shards_live(
        &self,
        node: NodeId,
        shards: Vec<ShardLiveness>,
    ) -> Result<Vec<bool>, StorageError> {
        let asked = shards.len();
        match self.query(&MetaQuery::ShardsLive { node, shards }).await? {
            QueryReply::Live(v) if v.len() == asked => Ok(v),
            QueryReply::Live(v) => Err(StorageError::MetaRefused(format!(
                "ShardsLive answered {} of {asked} shards",
                v.len()
            ))),
            QueryReply::Err(e) => Err(StorageError::MetaRefused(e.to_string())),
            other => Err(StorageError::MetaRefused(format!(
                "unexpected reply to ShardsLive: {other:?}"
            ))),
        }
    }

    async fn node_shards(
        &self,
        node: NodeId,
        after: Option<ShardLiveness>,
        max: u32,
    ) -> Result<Vec<ShardLiveness>, StorageError> {
        match self
            .query(&MetaQuery::NodeShards { node, after, max })
            .await?
        {
            QueryReply::NodeShards(v) => Ok(v),
            QueryReply::Err(e) => Err(StorageError::MetaRefused(e.to_string())),
            other => Err(StorageError::MetaRefused(format!(
                "unexpected reply to NodeShards: {other:?}"
            ))),
        }
    }

    async fn knows_node(&self, node: NodeId) -> Result<bool, StorageError> {
        match self.query(&MetaQuery::ClusterMap).await? {
            QueryReply::ClusterMap(map) => Ok(map.node(&node).is_some()),
            QueryReply::Err(e) => Err(StorageError::MetaRefused(e.to_string())),
            other => Err(StorageError::MetaRefused(format!(
                "unexpected reply to ClusterMap: {other:?}"
            ))),
        }
    }
}
