//! The stripe writer: streams a body into stripe buffers of `k * shard_size`
//! bytes, hashes it on the way (MD5 for the ETag, and the S3 checksums the
//! caller asks for, CRC64NVME by default: one pass, a stripe at a time), and for each full stripe encodes
//! parity (on the blocking pool), picks nodes by placement and sends all
//! k + m shards concurrently. At most `stripes_in_flight` stripes are being
//! encoded or sent at once; the next stripe is filled while they are.
//!
//! The MD5 is fed to the multi-buffer engine of `tessera-md5` as the body
//! arrives, chunk by chunk ([`Md5Feed`]): the engine hashes the chunks of
//! up to eight concurrent writes in one SIMD pass on its own thread, while
//! the executor goes on receiving, and a full stripe goes out without
//! waiting for its MD5. (Before, a stripe was hashed once it was full and
//! sent after: its MD5 was on the write's critical path, and a stripe's
//! job seldom met another one in the engine. A 64 MiB PUT at two at a
//! time got 11% faster; with eight 1 MiB PUTs at a time the MD5's share of
//! the gateway's CPU stayed about a third: at that load the engine's thread
//! is idle most of the time, and jobs seldom overlap however they are cut.)
//! The other checksums run on the blocking pool, a stripe at a time.
//!
//! Small bodies (at most `inline_threshold` bytes) are returned inline.
//! Every shard sent is recorded in a ledger; unless the caller commits the
//! manifest and then calls [`WriteGuard::disarm`], the shards are deleted in
//! the background.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{Stream, StreamExt};
use tessera_erasure::encode_stripe_bytes;
use tessera_md5::{Engine, EngineError, Md5State, Pending, Urgency};
use tessera_types::{NodeId, ShardEntry, Stripe, StripeId};
use tokio::sync::OwnedSemaphorePermit;

use super::{join_error, AbortOnDrop, DataPlane};
use crate::checksum::{Algorithm, Computed, Hashers};
use crate::error::ApiError;

/// Delay before the shards of a failed write are deleted, so that puts cut
/// off mid-flight have finished (or failed) on the storage nodes.
const FAILED_WRITE_CLEANUP_DELAY: Duration = Duration::from_secs(2);

/// Where the bytes of a written body are.
#[derive(Debug)]
pub enum WrittenBody {
    Inline(Bytes),
    Stripes(Vec<Stripe>),
}

/// A body written by [`write_body`].
#[derive(Debug)]
pub struct WriteOutcome {
    pub size: u64,
    pub md5: [u8; 16],
    /// The checksums asked for, over the whole body.
    pub checksums: Computed,
    pub body: WrittenBody,
}

/// The digests of a body being written: the MD5 fed as the body arrives
/// (or a stripe at a time, without a SIMD engine), the other checksums a
/// stripe at a time.
struct BodyHash {
    md5: Md5Feed,
    sums: Hashers,
}

impl BodyHash {
    /// Hashes an inline body on this thread (too small to be worth a trip
    /// to another thread). Nothing of it went to the engine: chunks are
    /// handed over only once the body is past the inline size.
    fn finish_inline(self, data: &[u8]) -> ([u8; 16], Computed) {
        let mut md5 = Md5State::new();
        md5.update(data);
        let mut sums = self.sums;
        sums.update(data);
        (md5.finalize(), sums.finish())
    }
}

/// Bytes of a body received while the engine hashes the last chunks that
/// may wait before the write waits for the engine (memory held besides the
/// stripe buffer, per write: these chunks and the job's). From half of it
/// on, the write hurries the job out (without waiting for it), so a large
/// upload's MD5 runs while the next chunks arrive, and a 1 MiB upload's
/// chunks wait for company until the write is done.
const MD5_BACKLOG: usize = 2 << 20;

/// The MD5 of a body, fed to the multi-buffer engine chunk by chunk as the
/// body arrives: at most one job out at a time (the state comes back with
/// its answer), the chunks received meanwhile handed over together as the
/// next job. Chunks are `Bytes` shared with the request body: no copy.
/// Jobs are lazy ([`Engine::submit_lazy`]): the engine holds them back to
/// hash them in the same SIMD steps as other uploads' chunks, until this
/// write needs them: when [`MD5_BACKLOG`] / 2 bytes are behind, or when
/// its stripes are durable ([`write_body_with`] hurries the last jobs only
/// then). Measured on 1 MiB PUTs at concurrency 8: MD5's share of the
/// gateway's CPU samples 27% -> 19% (scalar kernel 12% -> 2.5%), gateway
/// CPU 2.5-2.6 -> 2.2-2.5 ms/MiB with the data on tmpfs, and 3.0-3.6 ->
/// 2.4-2.6 on a busy disk (slower writes, so fewer chunks met before).
///
/// Without a SIMD engine (no AVX2) nothing is fed: the MD5 is hashed a
/// stripe at a time with the other checksums ([`hash_stripe`]).
struct Md5Feed {
    engine: &'static Engine,
    streaming: bool,
    /// Whether this body's jobs may wait for company.
    urgency: Urgency,
    /// The state, while no job is out.
    state: Option<Md5State>,
    /// The job out, the state it started from and its chunks (to hash them
    /// again on this side if the engine's thread is gone).
    job: Option<(Pending, Md5State, Vec<Bytes>)>,
    /// Chunks received since the job out was handed over.
    waiting: Vec<Bytes>,
    waiting_len: usize,
}

impl Md5Feed {
    fn new() -> Self {
        let engine = Engine::global();
        Md5Feed {
            engine,
            streaming: engine.kernel().is_simd(),
            urgency: engine.urgency(),
            state: Some(Md5State::new()),
            job: None,
            waiting: Vec::new(),
            waiting_len: 0,
        }
    }

    /// Takes the next chunk of the body. `send`: the body is known not to
    /// be inline, so chunks go to the engine (an inline body's are hashed
    /// on this thread at the end). Waits for the engine only when
    /// [`MD5_BACKLOG`] bytes wait.
    async fn feed(&mut self, chunk: &Bytes, send: bool) -> Result<(), ApiError> {
        if !self.streaming || chunk.is_empty() {
            return Ok(());
        }
        self.waiting.push(chunk.clone());
        self.waiting_len += chunk.len();
        if !send {
            return Ok(());
        }
        if let Some((job, _, _)) = &mut self.job {
            match futures::FutureExt::now_or_never(job) {
                Some(r) => self.answered(r).await?,
                None if self.waiting_len >= MD5_BACKLOG => {
                    self.urgency.hurry();
                    self.wait().await?;
                }
                None => {
                    if self.waiting_len >= MD5_BACKLOG / 2 {
                        self.urgency.hurry();
                    }
                    return Ok(());
                }
            }
            // The next job may wait for company again.
            self.urgency.relax();
        }
        self.hand_over();
        Ok(())
    }

    /// The state after the whole body (every chunk fed). Lazy: the last
    /// jobs wait for company until [`urgency`](Self::urgency) is hurried.
    async fn finish(mut self) -> Result<Md5State, ApiError> {
        self.wait().await?;
        self.hand_over();
        self.wait().await?;
        self.state
            .take()
            .ok_or_else(|| ApiError::Internal("MD5 state lost".into()))
    }

    /// Hands the waiting chunks to the engine, if no job is out.
    fn hand_over(&mut self) {
        if self.waiting.is_empty() || self.job.is_some() {
            return;
        }
        let Some(state) = self.state.take() else {
            return;
        };
        let chunks = std::mem::take(&mut self.waiting);
        self.waiting_len = 0;
        let job = self
            .engine
            .submit_lazy(state.clone(), chunks.clone(), &self.urgency);
        self.job = Some((job, state, chunks));
    }

    /// Waits for the job out, if any.
    async fn wait(&mut self) -> Result<(), ApiError> {
        if let Some((job, _, _)) = &mut self.job {
            let r = job.await;
            self.answered(r).await?;
        }
        Ok(())
    }

    /// Takes the answer of the job out. If the engine's thread is gone (a
    /// bug, logged: writes keep working), hashes the job's chunks on the
    /// blocking pool instead.
    async fn answered(&mut self, r: Result<Md5State, EngineError>) -> Result<(), ApiError> {
        let Some((_, before, chunks)) = self.job.take() else {
            return Ok(());
        };
        let state = match r {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(error = %e, "MD5 engine unavailable: hashing on the blocking pool");
                tokio::task::spawn_blocking(move || {
                    let mut md5 = before;
                    for c in &chunks {
                        md5.update(c);
                    }
                    md5
                })
                .await
                .map_err(join_error)?
            }
        };
        self.state = Some(state);
        Ok(())
    }
}

/// Hashes a stripe's worth of the body on the blocking pool: the
/// checksums, and the MD5 too when it is not fed as the body arrives (no
/// SIMD engine: one stream at a time on the engine's thread would be
/// slower than the blocking pool's threads).
async fn hash_stripe(hash: BodyHash, data: Bytes) -> Result<BodyHash, ApiError> {
    let BodyHash { mut md5, mut sums } = hash;
    let stripe_md5 = if md5.streaming {
        None
    } else {
        md5.state.take()
    };
    let (stripe_md5, sums) = tokio::task::spawn_blocking(move || {
        let stripe_md5 = stripe_md5.map(|mut m| {
            m.update(&data);
            m
        });
        sums.update(&data);
        (stripe_md5, sums)
    })
    .await
    .map_err(join_error)?;
    if stripe_md5.is_some() {
        md5.state = stripe_md5;
    }
    Ok(BodyHash { md5, sums })
}

/// Limits of one write.
#[derive(Clone, Copy, Debug)]
pub struct WriteLimits {
    /// Declared length (Content-Length or x-amz-decoded-content-length);
    /// the body must have exactly this many bytes.
    pub expected: Option<u64>,
    pub max_size: u64,
    pub inline_threshold: u64,
}

/// One shard sent (or being sent) to a node.
#[derive(Clone, Debug)]
struct ShardLoc {
    addr: String,
    stripe: StripeId,
    index: u8,
}

/// The shards a write has sent, deleted unless the write is committed.
pub struct WriteGuard {
    dp: Arc<DataPlane>,
    ledger: Arc<Mutex<Vec<ShardLoc>>>,
    armed: bool,
}

impl WriteGuard {
    fn new(dp: Arc<DataPlane>) -> Self {
        WriteGuard {
            dp,
            ledger: Arc::new(Mutex::new(Vec::new())),
            armed: true,
        }
    }

    /// The manifest that references the shards is committed: keep them.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let shards = std::mem::take(&mut *self.ledger.lock().unwrap_or_else(|p| p.into_inner()));
        if shards.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tracing::info!(
            shards = shards.len(),
            "deleting the shards of a failed write"
        );
        let dp = self.dp.clone();
        rt.spawn(async move {
            tokio::select! {
                _ = dp.shutdown.cancelled() => return,
                _ = tokio::time::sleep(FAILED_WRITE_CLEANUP_DELAY) => {}
            }
            futures::stream::iter(shards)
                .for_each_concurrent(8, |s| {
                    let dp = dp.clone();
                    async move {
                        if let Err(e) = dp.storage.delete_shard(&s.addr, s.stripe, s.index).await {
                            tracing::debug!(stripe = %s.stripe, index = s.index, error = %e,
                                "cleanup of a failed write's shard failed (GC will retry)");
                        }
                    }
                })
                .await;
        });
    }
}

/// Writes `body` (inline or as erasure-coded stripes), computing the
/// default CRC64NVME. On success the caller commits a manifest and then
/// disarms the returned guard; on error the shards already written are
/// deleted in the background.
pub async fn write_body<S>(
    dp: &Arc<DataPlane>,
    body: S,
    limits: WriteLimits,
) -> Result<(WriteOutcome, WriteGuard), ApiError>
where
    S: Stream<Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> + Unpin,
{
    write_body_with(dp, body, limits, &[Algorithm::Crc64Nvme]).await
}

/// [`write_body`], computing the checksums of `algorithms` as well.
pub async fn write_body_with<S>(
    dp: &Arc<DataPlane>,
    mut body: S,
    limits: WriteLimits,
    algorithms: &[Algorithm],
) -> Result<(WriteOutcome, WriteGuard), ApiError>
where
    S: Stream<Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> + Unpin,
{
    if let Some(exp) = limits.expected {
        if exp > limits.max_size {
            return Err(ApiError::EntityTooLarge {
                max: limits.max_size,
            });
        }
    }
    let guard = WriteGuard::new(dp.clone());
    let stripe_size = usize::try_from(dp.class.stripe_data_size())
        .map_err(|_| ApiError::Internal("stripe size exceeds memory".into()))?;
    let mut hash = BodyHash {
        md5: Md5Feed::new(),
        sums: Hashers::new(algorithms.iter().copied()),
    };
    let mut total: u64 = 0;
    let mut buf = BytesMut::new();
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut inflight = FuturesOrdered::new();
    let mut stripes: Vec<Stripe> = Vec::new();
    let mut striped = false;

    loop {
        let next = tokio::time::timeout(dp.body_idle_timeout, body.next())
            .await
            .map_err(|_| ApiError::RequestTimeout(dp.body_idle_timeout))?;
        let Some(chunk) = next else { break };
        let mut chunk = chunk.map_err(ApiError::from_body_error)?;
        total += chunk.len() as u64;
        if total > limits.max_size {
            return Err(ApiError::EntityTooLarge {
                max: limits.max_size,
            });
        }
        if let Some(exp) = limits.expected {
            if total > exp {
                return Err(ApiError::IncompleteBody {
                    expected: exp,
                    got: total,
                });
            }
        }
        // Past the inline size, the chunks go to the MD5 engine as they
        // come.
        let send = striped || total > limits.inline_threshold;
        hash.md5.feed(&chunk, send).await?;
        while !chunk.is_empty() {
            if buf.is_empty() && buf.capacity() == 0 {
                // Size the buffer for what is coming, never over a stripe.
                let hint = limits
                    .expected
                    .map(|e| e.saturating_sub(total - chunk.len() as u64))
                    .unwrap_or(chunk.len() as u64);
                buf.reserve(hint.min(stripe_size as u64) as usize);
            }
            let take = (stripe_size - buf.len()).min(chunk.len());
            buf.extend_from_slice(&chunk.split_to(take));
            if permit.is_none() && (striped || buf.len() as u64 > limits.inline_threshold) {
                // Past the inline size: this buffer counts against the pool.
                permit = Some(dp.buffer().await?);
            }
            if buf.len() == stripe_size {
                let data = buf.split().freeze();
                striped = true;
                hash = hash_stripe(hash, data.clone()).await?;
                while inflight.len() >= dp.stripes_in_flight {
                    if let Some(r) = inflight.next().await {
                        stripes.push(stripe_result(r)?);
                    }
                }
                inflight.push_back(spawn_stripe(dp, data, permit.take(), &guard));
            }
        }
    }

    if let Some(exp) = limits.expected {
        if total != exp {
            return Err(ApiError::IncompleteBody {
                expected: exp,
                got: total,
            });
        }
    }
    if !striped && total <= limits.inline_threshold {
        let data = buf.freeze();
        let (md5, checksums) = hash.finish_inline(&data);
        let outcome = WriteOutcome {
            size: total,
            md5,
            checksums,
            body: WrittenBody::Inline(data),
        };
        return Ok((outcome, guard));
    }
    if !buf.is_empty() {
        let data = buf.split().freeze();
        hash = hash_stripe(hash, data.clone()).await?;
        inflight.push_back(spawn_stripe(dp, data, permit.take(), &guard));
    }
    // The MD5 of the last chunks is computed while the last stripes are
    // written, with other uploads' chunks where they meet in the engine;
    // it is hurried once the stripes are durable (or the write failed).
    let urgency = hash.md5.urgency.clone();
    let drain = async {
        let r = async {
            while let Some(s) = inflight.next().await {
                stripes.push(stripe_result(s)?);
            }
            Ok::<_, ApiError>(())
        }
        .await;
        urgency.hurry();
        r
    };
    let (md5, drained) = futures::future::join(hash.md5.finish(), drain).await;
    drained?;
    let md5 = md5?.finalize();
    let checksums = hash.sums.finish();
    let outcome = WriteOutcome {
        size: total,
        md5,
        checksums,
        body: WrittenBody::Stripes(stripes),
    };
    Ok((outcome, guard))
}

fn stripe_result(
    r: Result<Result<Stripe, ApiError>, tokio::task::JoinError>,
) -> Result<Stripe, ApiError> {
    r.map_err(join_error)?
}

fn spawn_stripe(
    dp: &Arc<DataPlane>,
    data: Bytes,
    permit: Option<OwnedSemaphorePermit>,
    guard: &WriteGuard,
) -> AbortOnDrop<Result<Stripe, ApiError>> {
    let dp = dp.clone();
    let ledger = guard.ledger.clone();
    AbortOnDrop(tokio::spawn(async move {
        let r = write_stripe(&dp, data, &ledger).await;
        drop(permit);
        r
    }))
}

/// Encodes one stripe and makes at least a write quorum of its shards
/// durable, replacing failed nodes by the next placement candidates. If
/// the quorum is missed because nodes died (and the cluster map does not
/// know yet), it tries once more without them, with a class narrowed to
/// the nodes that are left (see [`DataPlane::class_for`]); if the cached
/// map has too few nodes, once more after reloading it.
async fn write_stripe(
    dp: &Arc<DataPlane>,
    data: Bytes,
    ledger: &Arc<Mutex<Vec<ShardLoc>>>,
) -> Result<Stripe, ApiError> {
    match write_stripe_once(dp, data.clone(), ledger).await {
        Err(ApiError::WriteQuorum { .. }) => write_stripe_once(dp, data, ledger).await,
        // The cached map may predate the nodes (a gateway that loaded its
        // first map while they were registering): reload it, as reads do.
        Err(e @ ApiError::NotEnoughNodes { .. }) if dp.cluster.follows_meta() => {
            tracing::warn!(error = %e,
                "too few writable nodes in the cached cluster map; reloading it and trying again");
            if let Err(refresh) = dp.cluster.refresh().await {
                tracing::warn!(error = %refresh, "cluster map reload failed");
                return Err(e);
            }
            write_stripe_once(dp, data, ledger).await
        }
        r => r,
    }
}

async fn write_stripe_once(
    dp: &Arc<DataPlane>,
    data: Bytes,
    ledger: &Arc<Mutex<Vec<ShardLoc>>>,
) -> Result<Stripe, ApiError> {
    let len = data.len() as u64;
    let snap = dp.cluster.ready().await?;
    let avoided: Vec<NodeId> = dp
        .avoided_nodes()
        .into_iter()
        .filter(|n| snap.placement.nodes().any(|p| p == n))
        .collect();
    let alive = snap.placement.len() - avoided.len();
    let Some((class, quorum)) = dp.class_for(alive) else {
        dp.cluster.request_refresh();
        return Err(ApiError::NotEnoughNodes {
            available: alive,
            needed: dp.class.m as usize + 1,
        });
    };
    let enc = tokio::task::spawn_blocking(move || encode_stripe_bytes(&class, data))
        .await
        .map_err(join_error)??;
    let id = StripeId::random();
    let (k, m) = (class.k as usize, class.m as usize);
    let n = k + m;
    let ranked = if avoided.is_empty() {
        snap.placement.place_ordered(&id, k, m)
    } else {
        snap.placement.place_excluding(&id, k, m, &avoided)
    };
    // Fall-backs: the rest of the ranking, nodes that failed recently last.
    let mut candidates = ranked;
    for node in snap.placement.place_ordered(&id, k, m) {
        if !candidates.contains(&node) && !avoided.contains(&node) {
            candidates.push(node);
        }
    }
    candidates.extend(avoided.iter().cloned());
    if candidates.len() < quorum {
        dp.cluster.request_refresh();
        return Err(ApiError::NotEnoughNodes {
            available: candidates.len(),
            needed: quorum,
        });
    }

    let put = |index: usize, node: NodeId| {
        let addr = snap.any_addr(&node).map(str::to_string);
        let shard = enc.shards.get(index).cloned().unwrap_or_default();
        let hash = enc.hashes.get(index).copied().unwrap_or_default();
        let storage = dp.storage.clone();
        if let Some(addr) = &addr {
            ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(ShardLoc {
                    addr: addr.clone(),
                    stripe: id,
                    index: index as u8,
                });
        }
        async move {
            let r = match addr {
                Some(addr) => storage
                    .put_shard(&addr, id, index as u8, shard, hash)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("node has no address in the cluster map".to_string()),
            };
            (index, node, r)
        }
    };

    let mut puts = FuturesUnordered::new();
    let first = n.min(candidates.len());
    for (index, node) in candidates.iter().take(first).enumerate() {
        puts.push(put(index, node.clone()));
    }
    let mut next = first;
    let mut written: Vec<ShardEntry> = Vec::with_capacity(n);
    while let Some((index, node, r)) = puts.next().await {
        match r {
            Ok(()) => written.push(ShardEntry {
                index: index as u8,
                node,
                blake3: enc.hashes.get(index).copied().unwrap_or_default(),
            }),
            Err(e) => {
                tracing::warn!(stripe = %id, index, node = %node, error = %e,
                    "shard write failed; trying the next candidate");
                dp.note_write_failure(&node);
                dp.cluster.request_refresh();
                if let Some(replacement) = candidates.get(next) {
                    next += 1;
                    puts.push(put(index, replacement.clone()));
                }
            }
        }
    }
    if written.len() < quorum {
        return Err(ApiError::WriteQuorum {
            stripe: id,
            ok: written.len(),
            needed: quorum,
        });
    }
    if written.len() < n {
        // Repair (a later issue) restores the missing shards.
        tracing::warn!(stripe = %id, written = written.len(), total = n,
            "stripe written with fewer than k + m shards");
    }
    if class != dp.class {
        tracing::info!(stripe = %id, k = class.k, m = class.m,
            "too few storage nodes for the configured class: stripe narrowed, same parity");
    }
    written.sort_by_key(|s| s.index);
    Ok(Stripe {
        id,
        len,
        shard_len: enc.shard_len,
        class,
        shards: written,
    })
}
