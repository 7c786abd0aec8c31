//! The storage gRPC service: the only module that speaks protobuf. It
//! validates requests, converts them into [`ShardKey`]s and hashes, calls
//! the [`ShardStore`], and maps [`StorageError`]s to gRPC statuses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tessera_proto::storage::storage_server::Storage;
use tessera_proto::storage::{
    put_shard_request, DeleteShardResponse, GetShardRequest, NodeInfoRequest, NodeInfoResponse,
    PutShardRequest, PutShardResponse, ShardChunk, ShardRef, StatShardResponse,
};
use tessera_proto::{shard_stream, FRAME_BYTES};
use tessera_types::StripeId;
use tonic::body::Body;
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

use crate::error::{ShardKey, StorageError};
use crate::metrics::StorageMetrics;
use crate::store::{ReadCheck, ShardData, ShardStore};

/// Serves [`Storage`] from a [`ShardStore`].
pub struct StorageService {
    store: Arc<ShardStore>,
    zone: String,
    metrics: Arc<StorageMetrics>,
}

impl StorageService {
    pub fn new(store: Arc<ShardStore>, zone: String) -> Self {
        Self::with_metrics(store, zone, Arc::default())
    }

    /// A service that counts reads, writes and checksum failures in
    /// `metrics`.
    pub fn with_metrics(
        store: Arc<ShardStore>,
        zone: String,
        metrics: Arc<StorageMetrics>,
    ) -> Self {
        StorageService {
            store,
            zone,
            metrics,
        }
    }

    async fn put_inner(&self, request: Request<Streaming<PutShardRequest>>) -> Result<(), Status> {
        let mut stream = request.into_inner();
        let header = match stream.next().await {
            Some(Ok(PutShardRequest {
                msg: Some(put_shard_request::Msg::Header(h)),
            })) => h,
            Some(Ok(_)) => return Err(invalid("the first message must be the header").into()),
            Some(Err(status)) => return Err(status),
            None => return Err(invalid("empty request stream").into()),
        };
        let key = shard_key(header.shard.as_ref())?;
        tracing::Span::current().record("shard", tracing::field::display(key));
        let Some(blake3) = hash(&header.blake3, false)? else {
            return Err(invalid("missing BLAKE3 hash").into());
        };
        let mut writer = self.store.begin_put(key, header.length, blake3).await?;
        while let Some(msg) = stream.next().await {
            match msg?.msg {
                Some(put_shard_request::Msg::Data(data)) => writer.write(data).await?,
                Some(put_shard_request::Msg::Header(_)) => {
                    return Err(invalid("a second header in the stream").into())
                }
                None => return Err(invalid("an empty message in the stream").into()),
            }
        }
        writer.finish().await?;
        Ok(())
    }
}

/// A shard read, counted in the node's metrics (reads, checksum failures).
async fn counted_read(
    store: &Arc<ShardStore>,
    metrics: &StorageMetrics,
    key: ShardKey,
    check: ReadCheck,
) -> Result<ShardData, StorageError> {
    let got = store.read(key, check).await;
    metrics.read(got.is_ok());
    if let Err(StorageError::Corrupt { .. }) = &got {
        metrics.checksum_failure();
    }
    got
}

/// The shard streams of [`tessera_proto::shard_stream`] (registered next
/// to [`StorageService`] on the same server, behind the same auth).
#[derive(Clone)]
pub struct ShardStreamService {
    store: Arc<ShardStore>,
    metrics: Arc<StorageMetrics>,
}

impl ShardStreamService {
    pub fn new(store: Arc<ShardStore>, metrics: Arc<StorageMetrics>) -> Self {
        ShardStreamService { store, metrics }
    }

    async fn serve(&self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        match req.uri().path() {
            shard_stream::GET_PATH => self.get(req).await,
            shard_stream::PUT_PATH => {
                let r = self.put(req).await;
                count_write(&self.metrics, &r);
                r.map(|()| Status::ok("").into_http())
            }
            path => Err(Status::unimplemented(format!("no method {path}"))),
        }
    }

    async fn get(&self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        let key = stream_shard_key(&req)?;
        let (data, budget) =
            counted_read(&self.store, &self.metrics, key, ReadCheck::CallerVerifies)
                .await?
                .into_parts();
        let len = data.len();
        http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header(http::header::CONTENT_LENGTH, len)
            .body(Body::new(shard_stream::OnceBody::new(data, budget)))
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// Receives a shard: the body's frames go to the writer as HTTP/2
    /// delivered them, and the answer comes once the shard is durable.
    async fn put(&self, req: http::Request<Body>) -> Result<(), Status> {
        use http_body_util::BodyExt;
        let key = stream_shard_key(&req)?;
        let (parts, mut body) = req.into_parts();
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let blake3 = header(shard_stream::BLAKE3_HEADER)
            .and_then(shard_stream::parse_blake3_header)
            .ok_or_else(|| Status::invalid_argument("missing or malformed x-tessera-blake3"))?;
        let length = header(http::header::CONTENT_LENGTH.as_str())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Status::invalid_argument("missing or malformed content-length"))?;
        let mut writer = self.store.begin_put(key, length, blake3).await?;
        while let Some(frame) = body.frame().await {
            // A body cut off (the caller gave up, the connection broke):
            // nothing is kept, the writer's temp file goes with it.
            if let Ok(data) = frame?.into_data() {
                writer.write(data).await?;
            }
        }
        writer.finish().await?;
        Ok(())
    }
}

/// The shard a stream request names in `x-tessera-shard`.
fn stream_shard_key<B>(req: &http::Request<B>) -> Result<ShardKey, Status> {
    let (stripe, index) = req
        .headers()
        .get(shard_stream::SHARD_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(shard_stream::parse_shard_header)
        .ok_or_else(|| Status::invalid_argument("missing or malformed x-tessera-shard"))?;
    Ok(ShardKey { stripe, index })
}

/// Counts a shard write (and a refusal for want of space) in `metrics`.
fn count_write(metrics: &StorageMetrics, r: &Result<(), Status>) {
    metrics.write(r.is_ok());
    if let Err(s) = r {
        if s.code() == tonic::Code::ResourceExhausted {
            metrics.no_space();
        }
    }
}

impl tonic::server::NamedService for ShardStreamService {
    const NAME: &'static str = shard_stream::SERVICE;
}

impl tower::Service<http::Request<Body>> for ShardStreamService {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move {
            Ok(match svc.serve(req).await {
                Ok(r) => r,
                Err(status) => status.into_http(),
            })
        })
    }
}

impl From<StorageError> for Status {
    fn from(e: StorageError) -> Status {
        let msg = e.to_string();
        match e {
            StorageError::InvalidRequest(_) | StorageError::Mismatch { .. } => {
                Status::invalid_argument(msg)
            }
            StorageError::NotFound { .. } => Status::not_found(msg),
            StorageError::Corrupt { .. } => Status::data_loss(msg),
            StorageError::Conflict { .. } => Status::already_exists(msg),
            StorageError::NoSpace(_) => Status::resource_exhausted(msg),
            StorageError::Meta(_) | StorageError::MetaRefused(_) => Status::unavailable(msg),
            StorageError::Io(_)
            | StorageError::Config(_)
            | StorageError::BadState { .. }
            | StorageError::Transport(_)
            | StorageError::Task(_) => Status::internal(msg),
        }
    }
}

fn invalid(msg: impl Into<String>) -> StorageError {
    StorageError::InvalidRequest(msg.into())
}

/// Converts a wire shard reference into a key, refusing malformed ids.
fn shard_key(r: Option<&ShardRef>) -> Result<ShardKey, StorageError> {
    let r = r.ok_or_else(|| invalid("missing shard reference"))?;
    let stripe = StripeId::from_slice(&r.stripe_id).ok_or_else(|| {
        invalid(format!(
            "stripe id must be 16 bytes, got {}",
            r.stripe_id.len()
        ))
    })?;
    let index = u8::try_from(r.shard_index)
        .map_err(|_| invalid(format!("shard index {} is above 255", r.shard_index)))?;
    Ok(ShardKey { stripe, index })
}

/// Converts a wire hash; `None` for an empty one when `optional`.
fn hash(b: &Bytes, optional: bool) -> Result<Option<[u8; 32]>, StorageError> {
    if b.is_empty() && optional {
        return Ok(None);
    }
    <[u8; 32]>::try_from(b.as_ref())
        .map(Some)
        .map_err(|_| invalid(format!("BLAKE3 hash must be 32 bytes, got {}", b.len())))
}

/// Shard bytes cut into frames; `guard` (the read budget) is held until
/// the last frame is sent or the client goes away.
fn frames<G: Send + 'static>(
    data: Bytes,
    guard: G,
) -> impl Stream<Item = Result<ShardChunk, Status>> + Send + 'static {
    futures::stream::unfold((data, guard), |(mut data, guard)| async move {
        if data.is_empty() {
            return None;
        }
        let frame = data.split_to(data.len().min(FRAME_BYTES));
        Some((Ok(ShardChunk { data: frame }), (data, guard)))
    })
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ShardChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Storage for StorageService {
    #[instrument(skip_all, err, fields(shard))]
    async fn put_shard(
        &self,
        request: Request<Streaming<PutShardRequest>>,
    ) -> Result<Response<PutShardResponse>, Status> {
        let r = self.put_inner(request).await;
        count_write(&self.metrics, &r);
        r.map(|()| Response::new(PutShardResponse {}))
    }

    type GetShardStream = ChunkStream;

    #[instrument(skip_all, err, fields(shard))]
    async fn get_shard(
        &self,
        request: Request<GetShardRequest>,
    ) -> Result<Response<Self::GetShardStream>, Status> {
        let req = request.into_inner();
        let key = shard_key(req.shard.as_ref())?;
        tracing::Span::current().record("shard", tracing::field::display(key));
        let expected = hash(&req.blake3, true)?;
        let check = if req.caller_verifies {
            ReadCheck::CallerVerifies
        } else {
            ReadCheck::Hash(expected)
        };
        let (data, budget) = counted_read(&self.store, &self.metrics, key, check)
            .await?
            .into_parts();
        Ok(Response::new(Box::pin(frames(data, budget))))
    }

    #[instrument(skip_all, err, fields(shard))]
    async fn delete_shard(
        &self,
        request: Request<ShardRef>,
    ) -> Result<Response<DeleteShardResponse>, Status> {
        let key = shard_key(Some(request.get_ref()))?;
        tracing::Span::current().record("shard", tracing::field::display(key));
        let existed = self.store.delete(key).await?;
        Ok(Response::new(DeleteShardResponse { existed }))
    }

    #[instrument(skip_all, err, fields(shard))]
    async fn stat_shard(
        &self,
        request: Request<ShardRef>,
    ) -> Result<Response<StatShardResponse>, Status> {
        let key = shard_key(Some(request.get_ref()))?;
        tracing::Span::current().record("shard", tracing::field::display(key));
        let resp = match self.store.stat(key).await? {
            Some(h) => StatShardResponse {
                exists: true,
                length: h.length,
                blake3: Bytes::copy_from_slice(&h.blake3),
            },
            None => StatShardResponse {
                exists: false,
                length: 0,
                blake3: Bytes::new(),
            },
        };
        Ok(Response::new(resp))
    }

    #[instrument(skip_all, err)]
    async fn node_info(
        &self,
        _request: Request<NodeInfoRequest>,
    ) -> Result<Response<NodeInfoResponse>, Status> {
        let usage = self.store.usage().await?;
        let bg = self.metrics.background();
        Ok(Response::new(NodeInfoResponse {
            node_id: self.store.node_id().to_string(),
            zone: self.zone.clone(),
            capacity_bytes: usage.capacity_bytes,
            used_bytes: usage.used_bytes,
            shard_count: usage.shard_count,
            scrub_passes: bg.scrub_passes,
            scrub_bytes_total: bg.scrub_bytes,
            scrub_shards_total: bg.scrub_shards,
            scrub_corrupt_total: bg.scrub_corrupt,
            scrub_pass_progress_permille: bg.scrub_progress_permille,
            scrub_last_pass_ms: bg.scrub_last_pass_ms,
            orphans_deleted_total: bg.orphans_deleted,
            orphan_last_scan_unix_ms: bg.orphan_last_scan_unix_ms,
        }))
    }
}

/// The heartbeat this node sends to meta.
pub(crate) fn heartbeat_request(
    store: &ShardStore,
    advertise: &str,
    zone: &str,
    weight: f64,
    usage: crate::store::Usage,
) -> tessera_proto::meta::HeartbeatRequest {
    tessera_proto::meta::HeartbeatRequest {
        node_id: store.node_id().to_string(),
        addr: advertise.to_string(),
        zone: zone.to_string(),
        capacity_bytes: usage.capacity_bytes,
        used_bytes: usage.used_bytes,
        shard_count: usage.shard_count,
        weight,
    }
}
