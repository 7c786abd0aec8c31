//! The gateway's cached copy of the cluster map, with the placement built
//! from it. Refreshed from meta periodically and on demand (a writer that
//! failed to reach a node asks for a refresh), so that requests never wait
//! for meta to learn where shards go.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tessera_placement::Placement;
use tessera_proto::MetaClient;
use tessera_types::meta::{MetaQuery, QueryReply};
use tessera_types::{ClusterMap, NodeId, NodeState};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Least time between two refreshes triggered by failures.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(200);

/// One version of the cluster map, ready for placement and address lookups.
pub struct ClusterSnapshot {
    pub map: ClusterMap,
    /// Ranked candidates over the Up nodes of `map`.
    pub placement: Placement,
    nodes: HashMap<NodeId, (String, NodeState)>,
}

impl ClusterSnapshot {
    pub fn new(map: ClusterMap) -> Self {
        let placement = Placement::from_cluster_map(&map);
        let nodes = map
            .nodes
            .iter()
            .map(|n| (n.id.clone(), (n.addr.clone(), n.state)))
            .collect();
        ClusterSnapshot {
            map,
            placement,
            nodes,
        }
    }

    /// Address of a node that may still serve reads (not Down, known).
    pub fn read_addr(&self, id: &NodeId) -> Option<&str> {
        match self.nodes.get(id) {
            Some((addr, state)) if *state != NodeState::Down => Some(addr.as_str()),
            _ => None,
        }
    }

    /// Address of any known node (for deletes: a Down node may come back).
    pub fn any_addr(&self, id: &NodeId) -> Option<&str> {
        self.nodes.get(id).map(|(a, _)| a.as_str())
    }
}

/// The cached cluster map.
pub struct ClusterView {
    meta: Option<MetaClient>,
    current: RwLock<Arc<ClusterSnapshot>>,
    wake: Notify,
}

impl ClusterView {
    /// A view refreshed from `meta` (empty until the first refresh).
    pub fn new(meta: MetaClient) -> Self {
        ClusterView {
            meta: Some(meta),
            current: RwLock::new(Arc::new(ClusterSnapshot::new(ClusterMap::default()))),
            wake: Notify::new(),
        }
    }

    /// A view of a fixed map that never changes (tests, tools).
    pub fn fixed(map: ClusterMap) -> Self {
        ClusterView {
            meta: None,
            current: RwLock::new(Arc::new(ClusterSnapshot::new(map))),
            wake: Notify::new(),
        }
    }

    /// Replaces the map (tests: simulate the meta leader marking a node).
    pub fn set(&self, map: ClusterMap) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(ClusterSnapshot::new(map));
    }

    pub fn current(&self) -> Arc<ClusterSnapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current map, loaded from meta first if none was loaded yet.
    pub async fn ready(&self) -> Result<Arc<ClusterSnapshot>, ApiError> {
        let cur = self.current();
        if cur.map.epoch == 0 && cur.map.nodes.is_empty() && self.meta.is_some() {
            self.refresh().await?;
            return Ok(self.current());
        }
        Ok(cur)
    }

    /// Whether the map comes from meta (false for a [`ClusterView::fixed`]
    /// map, which a refresh leaves as it is).
    pub fn follows_meta(&self) -> bool {
        self.meta.is_some()
    }

    /// Asks the background task for a refresh soon (after a write failure).
    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }

    /// Loads the map from meta now. A map older than the cached one is
    /// ignored (a lagging answer must not undo a newer one).
    pub async fn refresh(&self) -> Result<(), ApiError> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        let map = match meta
            .query(&MetaQuery::ClusterMap)
            .await
            .map_err(ApiError::from_rpc)?
        {
            QueryReply::ClusterMap(m) => m,
            QueryReply::Err(e) => return Err(e.into()),
            _ => return Err(ApiError::UnexpectedReply("ClusterMap")),
        };
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if map.epoch >= cur.map.epoch {
            *cur = Arc::new(ClusterSnapshot::new(map));
        }
        Ok(())
    }

    /// Refreshes every `period` and when asked, until `shutdown`.
    pub async fn run(self: Arc<Self>, period: Duration, shutdown: CancellationToken) {
        let mut last = Instant::now();
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "initial cluster map load failed");
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
                _ = self.wake.notified() => {
                    let wait = (last + MIN_REFRESH_GAP).saturating_duration_since(Instant::now());
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
            last = Instant::now();
            tessera_observe::failpoint::hit("gateway.map.refresh");
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "cluster map refresh failed");
            }
        }
    }
}
