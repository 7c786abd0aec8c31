//! The Raft transport over gRPC: the client side (openraft's
//! [`RaftNetworkFactory`] / [`RaftNetwork`]) and the server side (the
//! `Raft` gRPC service handing requests to the local Raft node).
//!
//! Requests and responses are openraft's own types, codec-encoded (version
//! byte + bincode); a response is the whole `Result`, so remote Raft
//! errors reach the caller as [`RemoteError`]s. A connect failure is
//! [`Unreachable`] (openraft backs off), anything else on the wire is a
//! [`NetworkError`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use tessera_proto::auth::AuthChannel;
use tessera_proto::channel::ChannelPool;
use tessera_proto::meta::raft_client::RaftClient;
use tessera_proto::meta::raft_server::Raft as RaftRpc;
use tessera_proto::meta::RaftPayload;
use tessera_proto::{ClusterAuth, RpcError, MAX_MESSAGE_BYTES};
use tessera_types::codec;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::reads::VoteGate;
use crate::store::{RaftNodeId, TypeConfig};

/// The Raft handle type of a meta node.
pub type MetaRaft = openraft::Raft<TypeConfig>;

/// Room left for protobuf framing and headers under the message limit.
const FRAMING_SLACK: usize = 64 << 10;

/// Builds one [`PeerClient`] per replication target; channels are pooled
/// per address and sign every request with the cluster secret.
pub struct NetworkFactory {
    id: RaftNodeId,
    pool: Arc<ChannelPool>,
}

impl NetworkFactory {
    pub fn new(id: RaftNodeId, auth: Arc<ClusterAuth>) -> Self {
        NetworkFactory {
            id,
            pool: Arc::new(ChannelPool::with_auth(auth)),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: RaftNodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            id: self.id,
            target,
            node: node.clone(),
            channel: self.pool.get(&node.addr),
        }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    id: RaftNodeId,
    target: RaftNodeId,
    node: BasicNode,
    channel: Result<AuthChannel, RpcError>,
}

type RpcResult<T, E> = Result<T, RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId, E>>>;

impl PeerClient {
    /// Sends one encoded request and decodes the remote `Result`.
    async fn call<T, E>(&self, kind: RPCTypes, ttl: Duration, data: Vec<u8>) -> RpcResult<T, E>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self
            .channel
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let req = RaftPayload {
            data: Bytes::from(data),
        };
        let fut = async {
            match kind {
                RPCTypes::AppendEntries => client.append_entries(req).await,
                RPCTypes::Vote => client.vote(req).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(req).await,
            }
        };
        let out = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action: kind,
                    id: self.id,
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Ok(Err(status)) => {
                return Err(match RpcError::from_status(&self.node.addr, status) {
                    e @ RpcError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                    e => RPCError::Network(NetworkError::new(&e)),
                })
            }
            Ok(Ok(resp)) => resp.into_inner().data,
        };
        let res: Result<T, RaftError<RaftNodeId, E>> =
            codec::decode(&out).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<RaftNodeId>, openraft::error::Infallible> {
        let n = rpc.entries.len() as u64;
        let data = codec::encode(&rpc);
        if data.len() + FRAMING_SLACK > MAX_MESSAGE_BYTES && n > 1 {
            // Openraft retries with fewer entries.
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(n / 2),
            ));
        }
        self.call(RPCTypes::AppendEntries, option.hard_ttl(), data)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<RaftNodeId>, InstallSnapshotError> {
        let data = codec::encode(&rpc);
        self.call(RPCTypes::InstallSnapshot, option.hard_ttl(), data)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<RaftNodeId>, openraft::error::Infallible> {
        let data = codec::encode(&rpc);
        self.call(RPCTypes::Vote, option.hard_ttl(), data).await
    }
}

/// The server side: hands decoded requests to the local Raft node.
pub struct RaftTransport {
    raft: MetaRaft,
    votes: VoteGate,
}

impl RaftTransport {
    /// `no_votes_for`: how long after start this node refuses vote
    /// requests (at least the longest read lease a leader may hold; see
    /// [`crate::reads`]).
    pub fn new(raft: MetaRaft, no_votes_for: std::time::Duration) -> Self {
        RaftTransport {
            raft,
            votes: VoteGate::closed_for(no_votes_for),
        }
    }
}

fn decode_req<T: DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    codec::decode(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("bad raft payload: {e}")))
}

fn reply<T: serde::Serialize>(res: &T) -> Result<Response<RaftPayload>, Status> {
    Ok(Response::new(RaftPayload {
        data: Bytes::from(codec::encode(res)),
    }))
}

#[tonic::async_trait]
impl RaftRpc for RaftTransport {
    #[instrument(level = "debug", skip_all, err)]
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode_req(request)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    #[instrument(level = "debug", skip_all, err)]
    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.votes.check()?;
        let rpc: VoteRequest<RaftNodeId> = decode_req(request)?;
        reply(&self.raft.vote(rpc).await)
    }

    #[instrument(level = "debug", skip_all, err)]
    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_req(request)?;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}
