//! The `Meta` gRPC service: protobuf at the edge, domain types inside.
//!
//! Writes go through `client_write` on the leader; reads do a leader
//! read-index check (`ensure_linearizable`) and then read the state
//! machine trees directly. A follower answers NotLeader with the leader's
//! address, which the meta client follows.

use std::sync::Arc;

use bytes::Bytes;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use tessera_proto::error::not_leader_status;
use tessera_proto::meta::meta_server::Meta;
use tessera_proto::meta::{
    Envelope, HeartbeatRequest, HeartbeatResponse, RaftMember, RaftStatusRequest,
    RaftStatusResponse,
};
use tessera_types::codec;
use tessera_types::meta::{MetaCommand, MetaQuery, MetaReply};
use tessera_types::{NodeId, NodeInfo, NodeState};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::detector::Liveness;
use crate::network::MetaRaft;
use crate::store::{query, RaftNodeId, SmTrees};

/// The meta service of one node.
pub struct MetaService {
    id: RaftNodeId,
    raft: MetaRaft,
    trees: SmTrees,
    liveness: Arc<Liveness>,
}

impl MetaService {
    pub fn new(id: RaftNodeId, raft: MetaRaft, trees: SmTrees, liveness: Arc<Liveness>) -> Self {
        MetaService {
            id,
            raft,
            trees,
            liveness,
        }
    }

    /// The current leader's id and address as this node knows them.
    fn leader(&self) -> (Option<RaftNodeId>, Option<String>) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let addr = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| n.addr.clone())
        });
        (m.current_leader, addr)
    }

    fn not_leader(leader: Option<&BasicNode>) -> Status {
        not_leader_status(leader.map(|n| n.addr.as_str()))
    }

    /// Proposes `cmd` and waits until it is applied here.
    async fn propose(&self, cmd: MetaCommand) -> Result<MetaReply, Status> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Self::not_leader(f.leader_node.as_ref()))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(Status::internal(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!("raft stopped: {e}"))),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(buf: &[u8]) -> Result<T, Status> {
    codec::decode(buf).map_err(|e| Status::invalid_argument(format!("bad payload: {e}")))
}

fn envelope<T: serde::Serialize>(v: &T) -> Response<Envelope> {
    Response::new(Envelope {
        payload: Bytes::from(codec::encode(v)),
    })
}

#[tonic::async_trait]
impl Meta for MetaService {
    #[instrument(skip_all, err(level = "info"))]
    async fn write(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let cmd: MetaCommand = decode(&request.into_inner().payload)?;
        tracing::debug!(cmd = cmd.name(), "meta write");
        let reply = self.propose(cmd).await?;
        Ok(envelope(&reply))
    }

    #[instrument(skip_all, err(level = "info"))]
    async fn read(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let q: MetaQuery = decode(&request.into_inner().payload)?;
        match self.raft.ensure_linearizable().await {
            Ok(_) => {}
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                return Err(Self::not_leader(f.leader_node.as_ref()))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                return Err(Status::unavailable(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => {
                return Err(Status::unavailable(format!("raft stopped: {e}")))
            }
        }
        let trees = self.trees.clone();
        let reply = tokio::task::spawn_blocking(move || query::query(&trees, &q))
            .await
            .map_err(|e| Status::internal(format!("query task: {e}")))?
            .map_err(|e| Status::internal(format!("state machine: {e}")))?;
        Ok(envelope(&reply))
    }

    #[instrument(skip_all, err(level = "info"))]
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let (leader, leader_addr) = self.leader();
        if leader != Some(self.id) {
            return Err(not_leader_status(leader_addr.as_deref()));
        }
        let hb = request.into_inner();
        if hb.node_id.is_empty() || hb.addr.is_empty() {
            return Err(Status::invalid_argument("node_id and addr are required"));
        }
        if !hb.weight.is_finite() || hb.weight < 0.0 {
            return Err(Status::invalid_argument("weight must be finite and >= 0"));
        }
        let now = Instant::now();
        let info = NodeInfo {
            id: NodeId(hb.node_id),
            addr: hb.addr,
            zone: hb.zone,
            // proto3 cannot tell 0 from unset: unset means one disk's worth.
            weight: if hb.weight == 0.0 { 1.0 } else { hb.weight },
            capacity_bytes: hb.capacity_bytes,
            used_bytes: hb.used_bytes,
            shard_count: hb.shard_count,
            state: NodeState::Up,
            last_heartbeat: tessera_types::now_millis(),
        };
        self.liveness.seen(&info.id, now);
        let current = self
            .trees
            .node(&info.id)
            .map_err(|e| Status::internal(format!("state machine: {e}")))?;
        if self.liveness.should_propose(&info, current.as_ref(), now) {
            let id = info.id.clone();
            match self.propose(MetaCommand::UpsertNode(info)).await? {
                MetaReply::Err(e) => return Err(Status::internal(e.to_string())),
                _ => self.liveness.proposed(&id, now),
            }
        }
        Ok(Response::new(HeartbeatResponse {}))
    }

    #[instrument(skip_all, err(level = "info"))]
    async fn raft_status(
        &self,
        _request: Request<RaftStatusRequest>,
    ) -> Result<Response<RaftStatusResponse>, Status> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()))
            .unwrap_or_default();
        let state = match m.state {
            ServerState::Leader => "Leader",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        };
        Ok(Response::new(RaftStatusResponse {
            id: self.id,
            current_term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            leader_addr,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            members: membership
                .nodes()
                .map(|(id, n)| RaftMember {
                    id: *id,
                    addr: n.addr.clone(),
                })
                .collect(),
            state: state.to_string(),
        }))
    }
}
