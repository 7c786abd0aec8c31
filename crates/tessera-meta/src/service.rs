//! The `Meta` gRPC service: protobuf at the edge, domain types inside.
//!
//! Writes go through `client_write` on the leader, coalesced by the
//! [`Proposer`] (group commit); reads are linearizable on the leader (a
//! read lease, or a shared read-index round when it has run out: see
//! [`crate::reads`]) and then read the state machine trees directly.
//! A follower answers NotLeader with the leader's address, which the meta
//! client follows.

use std::sync::Arc;

use bytes::Bytes;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::metrics::RaftServerMetrics;
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
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::detector::Liveness;
use crate::network::MetaRaft;
use crate::reads::{LeaderEpoch, ReadBarrier, ReadLease};
use crate::space::SpaceGuard;
use crate::store::{query, RaftNodeId, SmTrees};

/// The meta service of one node.
pub struct MetaService {
    id: RaftNodeId,
    raft: MetaRaft,
    trees: SmTrees,
    liveness: Arc<Liveness>,
    reads: ReadBarrier,
    lease: ReadLease,
    server_metrics: watch::Receiver<RaftServerMetrics<RaftNodeId, BasicNode>>,
    writes: Proposer,
    /// Refuses writes while the data directory is nearly full.
    space: Arc<SpaceGuard>,
}

/// Bounds of the group commit.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Most commands in one log entry (1: no batching).
    pub max_commands: usize,
    /// Most request bytes in one log entry (a single larger command still
    /// goes alone).
    pub max_bytes: usize,
    /// Raft writes in flight at once; proposals arriving meanwhile wait
    /// and go together in the next one.
    pub in_flight: usize,
}

/// Proposals waiting for a batch (callers wait when it is full).
const PROPOSAL_QUEUE: usize = 1024;

/// One command waiting to be proposed.
struct Proposal {
    cmd: MetaCommand,
    bytes: usize,
    reply: oneshot::Sender<Result<MetaReply, Status>>,
}

/// Group commit: coalesces concurrent proposals into one Raft entry.
///
/// openraft appends, flushes and replicates every `client_write` on its
/// own: at 16 concurrent PUTs that is 16 log appends with an fsync each on
/// every node. The proposer keeps at most `in_flight` writes in Raft; the
/// proposals that arrive while they run are queued and go as one
/// [`MetaCommand::Batch`] (bounded by count and bytes), whose reply is one
/// reply per command. A lone proposal goes as itself, so an idle node
/// adds no latency. Batching changes no semantics: concurrent proposals
/// have no order, and the state machine applies a batch's commands in
/// order, each on its own (see `StateMachineStore::apply_batch`).
pub(crate) struct Proposer {
    tx: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Starts the batching task; it stops at `shutdown` or when the
    /// proposer is dropped.
    pub(crate) fn start(raft: MetaRaft, limits: BatchLimits, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(Self::run(raft, limits, rx, shutdown));
        Proposer { tx }
    }

    /// Proposes `cmd` (`bytes`: its encoded size) and waits for its reply.
    async fn propose(&self, cmd: MetaCommand, bytes: usize) -> Result<MetaReply, Status> {
        let (reply, rx) = oneshot::channel();
        let gone = || Status::unavailable("meta node is shutting down");
        self.tx
            .send(Proposal { cmd, bytes, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    async fn run(
        raft: MetaRaft,
        limits: BatchLimits,
        mut rx: mpsc::Receiver<Proposal>,
        shutdown: CancellationToken,
    ) {
        let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
        let mut carry: Option<Proposal> = None;
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let first = match carry.take() {
                Some(p) => p,
                None => tokio::select! {
                    _ = shutdown.cancelled() => return,
                    p = rx.recv() => match p {
                        Some(p) => p,
                        None => return,
                    },
                },
            };
            let mut bytes = first.bytes;
            let mut batch = vec![first];
            while batch.len() < limits.max_commands {
                match rx.try_recv() {
                    Ok(p) if bytes.saturating_add(p.bytes) > limits.max_bytes => {
                        carry = Some(p);
                        break;
                    }
                    Ok(p) => {
                        bytes = bytes.saturating_add(p.bytes);
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            let raft = raft.clone();
            tokio::spawn(async move {
                submit(&raft, batch).await;
                drop(permit);
            });
        }
    }
}

/// Writes one batch through Raft and hands out the replies.
async fn submit(raft: &MetaRaft, mut batch: Vec<Proposal>) {
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            let _ = p.reply.send(client_write(raft, p.cmd).await);
        }
        return;
    }
    let (cmds, waiters): (Vec<MetaCommand>, Vec<_>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    match client_write(raft, MetaCommand::Batch(cmds)).await {
        Ok(MetaReply::Batch(replies)) if replies.len() == waiters.len() => {
            for (tx, r) in waiters.into_iter().zip(replies) {
                let _ = tx.send(Ok(r));
            }
        }
        Ok(other) => {
            let e = Status::internal(format!("a command batch was answered with {other:?}"));
            for tx in waiters {
                let _ = tx.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for tx in waiters {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

/// One `client_write`, errors as gRPC statuses.
async fn client_write(raft: &MetaRaft, cmd: MetaCommand) -> Result<MetaReply, Status> {
    match raft.client_write(cmd).await {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(MetaService::not_leader(f.leader_node.as_ref()))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(Status::internal(e.to_string()))
        }
        Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!("raft stopped: {e}"))),
    }
}

impl MetaService {
    /// The service; its group commit task runs until `shutdown`. Reads
    /// within `read_lease` after a confirmed leader check need no other
    /// (zero: every read batch confirms; see [`crate::reads`]). Client
    /// writes pass `space` first.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: RaftNodeId,
        raft: MetaRaft,
        trees: SmTrees,
        liveness: Arc<Liveness>,
        limits: BatchLimits,
        read_lease: std::time::Duration,
        space: Arc<SpaceGuard>,
        shutdown: CancellationToken,
    ) -> Self {
        MetaService {
            id,
            writes: Proposer::start(raft.clone(), limits, shutdown),
            server_metrics: raft.server_metrics(),
            raft,
            trees,
            liveness,
            reads: ReadBarrier::default(),
            lease: ReadLease::new(read_lease),
            space,
        }
    }

    /// The epoch this node leads, if it is the leader.
    fn leader_epoch(&self) -> Option<LeaderEpoch> {
        let m = self.server_metrics.borrow();
        (m.state == ServerState::Leader && m.vote.is_committed()).then(|| LeaderEpoch {
            term: m.vote.leader_id().get_term(),
            membership: m.membership_config.log_id().map(|l| l.index),
        })
    }

    /// Makes the reads that follow linearizable: at once within the read
    /// lease, else after a leader check shared with concurrent reads
    /// ([`ReadBarrier`]), which also renews the lease.
    async fn linearizable(&self) -> Result<(), Status> {
        if let Some(epoch) = self.leader_epoch() {
            if self.lease.covers(epoch, std::time::Instant::now()) {
                return Ok(());
            }
        }
        self.reads
            .wait(|| async {
                let started = std::time::Instant::now();
                let epoch = self.leader_epoch();
                match self.raft.ensure_linearizable().await {
                    Ok(_) => {
                        // Only a round that began and ended in one epoch
                        // proves the lease.
                        if let Some(e) = epoch.filter(|e| self.leader_epoch() == Some(*e)) {
                            self.lease.extend(e, started);
                        }
                        Ok(())
                    }
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                        Err(Self::not_leader(f.leader_node.as_ref()))
                    }
                    Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                        Err(Status::unavailable(e.to_string()))
                    }
                    Err(RaftError::Fatal(e)) => {
                        Err(Status::unavailable(format!("raft stopped: {e}")))
                    }
                }
            })
            .await
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

    /// Proposes `cmd` (`bytes`: its encoded size) and waits until it is
    /// applied here.
    async fn propose(&self, cmd: MetaCommand, bytes: usize) -> Result<MetaReply, Status> {
        self.writes.propose(cmd, bytes).await
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
        let payload = request.into_inner().payload;
        let cmd: MetaCommand = decode(&payload)?;
        if matches!(cmd, MetaCommand::Batch(_)) {
            // Batches are formed here, from concurrent writes.
            return Err(Status::invalid_argument("command batches are not accepted"));
        }
        tracing::debug!(cmd = cmd.name(), "meta write");
        self.space.check(&cmd)?;
        let reply = self.propose(cmd, payload.len()).await?;
        Ok(envelope(&reply))
    }

    #[instrument(skip_all, err(level = "info"))]
    async fn read(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let q: MetaQuery = decode(&request.into_inner().payload)?;
        self.linearizable().await?;
        let trees = self.trees.clone();
        let reply = if q.is_point() {
            query::query(&trees, &q)
        } else {
            tokio::task::spawn_blocking(move || query::query(&trees, &q))
                .await
                .map_err(|e| Status::internal(format!("query task: {e}")))?
        }
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
            // A node record is a few hundred bytes.
            match self.propose(MetaCommand::UpsertNode(info), 512).await? {
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
