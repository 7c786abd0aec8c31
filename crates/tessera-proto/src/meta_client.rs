//! The client of the meta service, used by gateways, storage nodes and the
//! admin CLI. It finds the leader (following NotLeader hints, trying every
//! known meta address) and retries what is safe to retry, with capped
//! backoff, within a deadline.
//!
//! This is the single resolver through which every meta request is routed;
//! when the namespace is split into several Raft groups, the (bucket, key)
//! -> group map lives here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_types::codec;
use tessera_types::meta::{MetaCommand, MetaQuery, MetaReply, QueryReply};
use tokio::time::Instant;

use crate::auth::{AuthChannel, ClusterAuth};
use crate::channel::ChannelPool;
use crate::meta::meta_client::MetaClient as GrpcMetaClient;
use crate::meta::{Envelope, HeartbeatRequest, RaftStatusRequest, RaftStatusResponse};
use crate::{RpcError, MAX_MESSAGE_BYTES};

/// How long one meta request may take, retries included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);
/// Timeout of a single attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

struct Inner {
    addrs: Vec<String>,
    leader: Mutex<Option<String>>,
    pool: ChannelPool,
    deadline: Duration,
}

impl MetaClient {
    /// A client for the meta group reachable at any of `addrs` that sends
    /// unsigned requests (real meta nodes refuse them; for tests against
    /// fakes). Nodes use [`MetaClient::with_auth`].
    pub fn new(addrs: Vec<String>) -> Self {
        Self::build(addrs, DEFAULT_DEADLINE, ChannelPool::default())
    }

    /// Unsigned, with a deadline per request; see [`MetaClient::new`].
    pub fn with_deadline(addrs: Vec<String>, deadline: Duration) -> Self {
        Self::build(addrs, deadline, ChannelPool::default())
    }

    /// A client whose requests are signed with the cluster secret, with a
    /// deadline per request (retries included).
    pub fn with_auth(addrs: Vec<String>, deadline: Duration, auth: Arc<ClusterAuth>) -> Self {
        Self::build(addrs, deadline, ChannelPool::with_auth(auth))
    }

    fn build(addrs: Vec<String>, deadline: Duration, pool: ChannelPool) -> Self {
        MetaClient {
            inner: Arc::new(Inner {
                addrs,
                leader: Mutex::new(None),
                pool,
                deadline,
            }),
        }
    }

    pub fn addrs(&self) -> &[String] {
        &self.inner.addrs
    }

    /// Proposes a command through Raft; returns once it is committed and
    /// applied on the leader.
    pub async fn write(&self, cmd: &MetaCommand) -> Result<MetaReply, RpcError> {
        let payload = bytes::Bytes::from(codec::encode(cmd));
        let out = self
            .call(
                |mut c, payload| async move {
                    c.write(Envelope { payload })
                        .await
                        .map(|r| r.into_inner().payload)
                },
                payload,
            )
            .await?;
        codec::decode(&out).map_err(|e| RpcError::Codec(e.to_string()))
    }

    /// A linearizable read through the leader.
    pub async fn query(&self, q: &MetaQuery) -> Result<QueryReply, RpcError> {
        let payload = bytes::Bytes::from(codec::encode(q));
        let out = self
            .call(
                |mut c, payload| async move {
                    c.read(Envelope { payload })
                        .await
                        .map(|r| r.into_inner().payload)
                },
                payload,
            )
            .await?;
        codec::decode(&out).map_err(|e| RpcError::Codec(e.to_string()))
    }

    /// Reports a storage node's liveness and usage to the leader.
    pub async fn heartbeat(&self, hb: HeartbeatRequest) -> Result<(), RpcError> {
        self.call(
            |mut c, hb| async move { c.heartbeat(hb).await.map(|_| ()) },
            hb,
        )
        .await
    }

    /// Raft status as one particular meta node sees it.
    pub async fn raft_status(&self, addr: &str) -> Result<RaftStatusResponse, RpcError> {
        let mut c = self.grpc(addr)?;
        match tokio::time::timeout(ATTEMPT_TIMEOUT, c.raft_status(RaftStatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(RpcError::from_status(addr, s)),
            Err(_) => Err(RpcError::Timeout {
                addr: addr.to_string(),
            }),
        }
    }

    fn grpc(&self, addr: &str) -> Result<GrpcMetaClient<AuthChannel>, RpcError> {
        let ch = self.inner.pool.get(addr)?;
        Ok(GrpcMetaClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Runs `f` against the leader, following hints and rotating through
    /// the known addresses on errors that are safe to retry.
    async fn call<T, R, F, Fut>(&self, f: F, req: T) -> Result<R, RpcError>
    where
        T: Clone,
        F: Fn(GrpcMetaClient<AuthChannel>, T) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>>,
    {
        let start = Instant::now();
        let addrs = &self.inner.addrs;
        if addrs.is_empty() {
            return Err(RpcError::InvalidArgument(
                "no meta addresses configured".into(),
            ));
        }
        let mut next = 0usize;
        let mut backoff = Duration::from_millis(20);
        loop {
            let target = {
                let leader = self.inner.leader.lock().unwrap_or_else(|p| p.into_inner());
                leader.clone()
            }
            .unwrap_or_else(|| {
                let a = addrs[next % addrs.len()].clone();
                next += 1;
                a
            });
            let client = self.grpc(&target)?;
            let err = match tokio::time::timeout(ATTEMPT_TIMEOUT, f(client, req.clone())).await {
                Ok(Ok(r)) => {
                    self.set_leader(Some(target));
                    return Ok(r);
                }
                Ok(Err(status)) => RpcError::from_status(&target, status),
                Err(_) => RpcError::Timeout {
                    addr: target.clone(),
                },
            };
            match &err {
                RpcError::NotLeader { leader: Some(l) } if *l != target => {
                    self.set_leader(Some(l.clone()));
                    // A fresh hint: retry at once.
                    if start.elapsed() < self.inner.deadline {
                        continue;
                    }
                }
                e if e.is_retryable() => {
                    self.set_leader(None);
                    // Go on with the address after the one that failed: a
                    // leader cut off by a partition costs one attempt
                    // timeout, not one per rotation back to it.
                    next = after(addrs, &target, next);
                }
                _ => return Err(err),
            }
            if start.elapsed() + backoff >= self.inner.deadline {
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    fn set_leader(&self, leader: Option<String>) {
        *self.inner.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }
}

/// The rotation position just past `failed` in `addrs` (`next` unchanged
/// when `failed` is not one of them, e.g. a leader hint's address).
fn after(addrs: &[String], failed: &str, next: usize) -> usize {
    addrs
        .iter()
        .position(|a| a == failed)
        .map_or(next, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::after;

    #[test]
    fn rotation_continues_past_the_failed_address() {
        let addrs: Vec<String> = ["m1:1", "m2:1", "m3:1"].map(String::from).to_vec();
        // The cached leader m1 timed out: the next attempt is m2, not m1.
        let next = after(&addrs, "m1:1", 0);
        assert_eq!(addrs[next % addrs.len()], "m2:1");
        // m3 failed in rotation: wrap around to m1.
        let next = after(&addrs, "m3:1", 7);
        assert_eq!(addrs[next % addrs.len()], "m1:1");
        // A hinted address outside the list leaves the rotation alone.
        assert_eq!(after(&addrs, "elsewhere:1", 5), 5);
    }
}
