//! The client of storage nodes: one pooled connection per node, shard data
//! streamed in ~1 MiB frames, a timeout on every call.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tessera_types::StripeId;

use crate::auth::{AuthChannel, ClusterAuth};
use crate::channel::ChannelPool;
use crate::shard_http1::{Http1Error, Http1Reads};
use crate::storage::storage_client::StorageClient;
use crate::storage::{
    put_shard_request, GetShardRequest, NodeInfoRequest, NodeInfoResponse, PutShardHeader,
    PutShardRequest, ShardRef, StatShardResponse,
};
use crate::{shard_stream, RpcError, FRAME_BYTES, MAX_MESSAGE_BYTES};

/// Timeout of one shard transfer (a shard is at most a few MiB).
pub const SHARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of small calls (stat, delete, info).
pub const SMALL_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections to storage nodes, shared by all requests of a process.
#[derive(Default)]
pub struct StoragePool {
    pool: ChannelPool,
    http1: Http1Reads,
}

fn shard_ref(stripe: StripeId, index: u8) -> ShardRef {
    ShardRef {
        stripe_id: Bytes::copy_from_slice(&stripe.0),
        shard_index: index as u32,
    }
}

async fn timed<T>(
    addr: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, RpcError>>,
) -> Result<T, RpcError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(RpcError::Timeout {
            addr: addr.to_string(),
        })
    })
}

impl StoragePool {
    /// A pool that sends unsigned requests (real storage nodes refuse
    /// them; for tests against fakes). Nodes use [`StoragePool::with_auth`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool whose requests are signed with the cluster secret.
    pub fn with_auth(auth: Arc<ClusterAuth>) -> Self {
        StoragePool {
            pool: ChannelPool::with_auth(auth.clone()),
            http1: Http1Reads::new(Some(auth)),
        }
    }

    /// Idle HTTP/1.1 read connections kept for `addr` (tests).
    pub fn http1_idle_connections(&self, addr: &str) -> usize {
        self.http1.idle_connections(addr)
    }

    fn client(&self, addr: &str) -> Result<StorageClient<AuthChannel>, RpcError> {
        let ch = self.pool.get(addr)?;
        Ok(StorageClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Writes one shard; returns when the node has made it durable.
    pub async fn put_shard(
        &self,
        addr: &str,
        stripe: StripeId,
        index: u8,
        data: Bytes,
        blake3: [u8; 32],
    ) -> Result<(), RpcError> {
        let streamed = self
            .put_shard_stream(addr, stripe, index, data.clone(), blake3)
            .await;
        if !lacks_stream(&streamed) {
            return streamed;
        }
        // A node from before the shard stream: the same write over gRPC.
        let mut client = self.client(addr)?;
        let header = PutShardRequest {
            msg: Some(put_shard_request::Msg::Header(PutShardHeader {
                shard: Some(shard_ref(stripe, index)),
                length: data.len() as u64,
                blake3: Bytes::copy_from_slice(&blake3),
            })),
        };
        let mut frames = vec![header];
        let mut off = 0;
        while off < data.len() {
            let end = (off + FRAME_BYTES).min(data.len());
            frames.push(PutShardRequest {
                msg: Some(put_shard_request::Msg::Data(data.slice(off..end))),
            });
            off = end;
        }
        timed(addr, SHARD_TIMEOUT, async {
            client
                .put_shard(futures::stream::iter(frames))
                .await
                .map(|_| ())
                .map_err(|s| RpcError::from_status(addr, s))
        })
        .await
    }

    /// A shard write over [`crate::shard_stream`]: the bytes go to HTTP/2
    /// as they are, with no copy into an encode buffer.
    async fn put_shard_stream(
        &self,
        addr: &str,
        stripe: StripeId,
        index: u8,
        data: Bytes,
        blake3: [u8; 32],
    ) -> Result<(), RpcError> {
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(shard_stream::PUT_PATH)
            .header(
                shard_stream::SHARD_HEADER,
                shard_stream::shard_header(&stripe, index),
            )
            .header(
                shard_stream::BLAKE3_HEADER,
                shard_stream::blake3_header(&blake3),
            )
            .header(http::header::CONTENT_LENGTH, data.len())
            .header(http::header::TE, "trailers")
            .body(tonic::body::Body::new(shard_stream::OnceBody::new(
                data,
                (),
            )))
            .map_err(|e| RpcError::InvalidArgument(e.to_string()))?;
        timed(addr, SHARD_TIMEOUT, async {
            let body = self.stream_call(addr, req).await?;
            // The answer has no bytes: read it to its end for its status.
            collect_stream(addr, body, 0).await.map(|_| ())
        })
        .await
    }

    /// Reads one shard, verified by the node against `blake3` (when given)
    /// before it sends a byte.
    pub async fn get_shard(
        &self,
        addr: &str,
        stripe: StripeId,
        index: u8,
        blake3: Option<[u8; 32]>,
    ) -> Result<Bytes, RpcError> {
        let req = GetShardRequest {
            shard: Some(shard_ref(stripe, index)),
            blake3: blake3
                .map(|h| Bytes::copy_from_slice(&h))
                .unwrap_or_default(),
            caller_verifies: false,
        };
        self.fetch_shard(addr, req).await
    }

    /// Reads one shard that the caller hashes itself against the
    /// manifest: the node checks only the file's header and length, so
    /// the bytes are hashed once on the way, not twice. The caller must
    /// verify them before use and report a mismatch. Over HTTP/1.1, where
    /// the node sends the file with `sendfile` ([`crate::shard_http1`]).
    pub async fn get_shard_unverified(
        &self,
        addr: &str,
        stripe: StripeId,
        index: u8,
    ) -> Result<Bytes, RpcError> {
        let sent = timed(addr, SHARD_TIMEOUT, async {
            match self.http1.get(addr, stripe, index).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(Http1Error::Rpc(e)) => Err(e),
                Err(Http1Error::Unsupported) => Ok(None),
            }
        })
        .await?;
        if let Some(bytes) = sent {
            return Ok(bytes);
        }
        // A node from before the HTTP/1.1 read: over HTTP/2.
        let streamed = self.get_shard_stream(addr, stripe, index).await;
        if !lacks_stream(&streamed) {
            return streamed;
        }
        // A node from before the shard stream: the same read over gRPC.
        let req = GetShardRequest {
            shard: Some(shard_ref(stripe, index)),
            blake3: Bytes::new(),
            caller_verifies: true,
        };
        self.fetch_shard(addr, req).await
    }

    /// A shard's bytes over [`crate::shard_stream`]: no copy on either
    /// side when they arrive as one HTTP/2 frame.
    async fn get_shard_stream(
        &self,
        addr: &str,
        stripe: StripeId,
        index: u8,
    ) -> Result<Bytes, RpcError> {
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(shard_stream::GET_PATH)
            .header(
                shard_stream::SHARD_HEADER,
                shard_stream::shard_header(&stripe, index),
            )
            .header(http::header::TE, "trailers")
            .body(tonic::body::Body::empty())
            .map_err(|e| RpcError::InvalidArgument(e.to_string()))?;
        timed(addr, SHARD_TIMEOUT, async {
            let body = self.stream_call(addr, req).await?;
            collect_stream(addr, body, MAX_MESSAGE_BYTES).await
        })
        .await
    }

    /// Sends a [`crate::shard_stream`] request; the answer's body, once its
    /// headers say it is no error.
    async fn stream_call(
        &self,
        addr: &str,
        req: http::Request<tonic::body::Body>,
    ) -> Result<tonic::body::Body, RpcError> {
        use tower::ServiceExt;
        let channel = self.pool.get(addr)?;
        let resp = channel
            .oneshot(req)
            .await
            .map_err(|e| RpcError::Unreachable {
                addr: addr.to_string(),
                message: e.to_string(),
            })?;
        let (parts, body) = resp.into_parts();
        // Errors come as a gRPC status in the headers (trailers-only).
        if let Some(status) = tonic::Status::from_header_map(&parts.headers) {
            if status.code() != tonic::Code::Ok {
                return Err(RpcError::from_status(addr, status));
            }
        }
        if parts.status != http::StatusCode::OK {
            return Err(RpcError::Remote {
                code: tonic::Code::Unknown,
                message: format!("shard stream answered HTTP {}", parts.status),
            });
        }
        Ok(body)
    }

    async fn fetch_shard(&self, addr: &str, req: GetShardRequest) -> Result<Bytes, RpcError> {
        let mut client = self.client(addr)?;
        timed(addr, SHARD_TIMEOUT, async {
            let mut stream = client
                .get_shard(req)
                .await
                .map_err(|s| RpcError::from_status(addr, s))?
                .into_inner();
            let first = match stream.next().await {
                None => return Ok(Bytes::new()),
                Some(r) => r.map_err(|s| RpcError::from_status(addr, s))?.data,
            };
            let Some(second) = stream.next().await else {
                // One frame: hand it over without a copy.
                return Ok(first);
            };
            let mut buf = BytesMut::with_capacity(first.len() * 2);
            buf.extend_from_slice(&first);
            buf.extend_from_slice(&second.map_err(|s| RpcError::from_status(addr, s))?.data);
            while let Some(chunk) = stream.next().await {
                buf.extend_from_slice(&chunk.map_err(|s| RpcError::from_status(addr, s))?.data);
            }
            Ok(buf.freeze())
        })
        .await
    }

    /// Deletes a shard; `Ok(false)` if it did not exist.
    pub async fn delete_shard(
        &self,
        addr: &str,
        stripe: StripeId,
        index: u8,
    ) -> Result<bool, RpcError> {
        let mut client = self.client(addr)?;
        timed(addr, SMALL_CALL_TIMEOUT, async {
            client
                .delete_shard(shard_ref(stripe, index))
                .await
                .map(|r| r.into_inner().existed)
                .map_err(|s| RpcError::from_status(addr, s))
        })
        .await
    }

    pub async fn stat_shard(
        &self,
        addr: &str,
        stripe: StripeId,
        index: u8,
    ) -> Result<StatShardResponse, RpcError> {
        let mut client = self.client(addr)?;
        timed(addr, SMALL_CALL_TIMEOUT, async {
            client
                .stat_shard(shard_ref(stripe, index))
                .await
                .map(|r| r.into_inner())
                .map_err(|s| RpcError::from_status(addr, s))
        })
        .await
    }

    pub async fn node_info(&self, addr: &str) -> Result<NodeInfoResponse, RpcError> {
        let mut client = self.client(addr)?;
        timed(addr, SMALL_CALL_TIMEOUT, async {
            client
                .node_info(NodeInfoRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|s| RpcError::from_status(addr, s))
        })
        .await
    }
}

/// Whether a node answered a shard stream request as one that does not
/// know it (a node from before it, or a test fake): `Unimplemented`.
fn lacks_stream<T>(r: &Result<T, RpcError>) -> bool {
    matches!(
        r,
        Err(RpcError::Remote {
            code: tonic::Code::Unimplemented,
            ..
        })
    )
}

/// Reads a shard stream's body to its end, at most `limit` bytes, and
/// checks the status in its trailers, if any.
async fn collect_stream(
    addr: &str,
    mut body: tonic::body::Body,
    limit: usize,
) -> Result<Bytes, RpcError> {
    use http_body_util::BodyExt;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|s| RpcError::from_status(addr, s))?;
        match frame.into_data() {
            Ok(data) => {
                total += data.len();
                if total > limit {
                    return Err(RpcError::InvalidArgument(format!(
                        "shard stream longer than {limit} bytes"
                    )));
                }
                chunks.push(data);
            }
            Err(frame) => {
                let status = frame
                    .trailers_ref()
                    .and_then(tonic::Status::from_header_map);
                if let Some(status) = status.filter(|s| s.code() != tonic::Code::Ok) {
                    return Err(RpcError::from_status(addr, status));
                }
            }
        }
    }
    if chunks.len() <= 1 {
        return Ok(chunks.pop().unwrap_or_default());
    }
    let mut buf = BytesMut::with_capacity(total);
    for c in &chunks {
        buf.extend_from_slice(c);
    }
    Ok(buf.freeze())
}
