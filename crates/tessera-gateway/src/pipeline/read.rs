//! The stripe reader: turns a byte range of an object into a stream of
//! verified bytes, stripe by stripe, with a bounded read-ahead.
//!
//! For each stripe the range touches, only the data shards holding the
//! wanted bytes are fetched (in parallel, no decoding). Every shard is
//! checked against the BLAKE3 hash in the manifest; a shard that fails,
//! is missing, does not verify, or is slower than `hedge_after` makes the
//! read degraded: more shards (the other data shards, then parity) are
//! fetched until any k verified shards rebuild the stripe. With fewer than
//! k, the stream ends with an error: the client sees a truncated body,
//! never wrong bytes.
//!
//! A shard that is missing, corrupt or on a node that does not answer is
//! reported to meta (through [`DataPlane::report_problem`]: non-blocking,
//! deduplicated, batched), which queues its stripe for repair. Shards a
//! write never stored need no report: meta queues short stripes itself.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tessera_erasure::{data_shards_for_range, decode_stripe, verify_shard};
use tessera_proto::RpcError;
use tessera_types::repair::{ProblemKind, ShardProblem};
use tessera_types::{NodeId, ObjectData, ObjectManifest, Stripe};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{join_error, DataPlane};
use crate::cluster::ClusterSnapshot;
use crate::error::ApiError;

/// The part of one stripe a read needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub part: usize,
    pub stripe: usize,
    /// Offset of the wanted bytes within the stripe.
    pub offset: u64,
    pub len: u64,
}

/// The pieces of `range` in an object made of `parts` (each a list of
/// stripe lengths), in order. Lazy: O(1) state whatever the object size.
pub struct Pieces<'a> {
    parts: Vec<&'a [Stripe]>,
    part: usize,
    stripe: usize,
    /// Object offset of the current stripe's first byte.
    pos: u64,
    range: Range<u64>,
}

impl<'a> Pieces<'a> {
    pub fn new(manifest: &'a ObjectManifest, range: Range<u64>) -> Self {
        let parts = match &manifest.data {
            ObjectData::Inline(_) => vec![],
            ObjectData::Parts(p) => p.iter().map(|p| p.stripes.as_slice()).collect(),
        };
        Pieces {
            parts,
            part: 0,
            stripe: 0,
            pos: 0,
            range,
        }
    }
}

impl Iterator for Pieces<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        loop {
            if self.pos >= self.range.end || self.range.start >= self.range.end {
                return None;
            }
            let stripes = self.parts.get(self.part)?;
            let Some(stripe) = stripes.get(self.stripe) else {
                self.part += 1;
                self.stripe = 0;
                continue;
            };
            let (start, end) = (self.pos, self.pos + stripe.len);
            let (part, index) = (self.part, self.stripe);
            self.pos = end;
            self.stripe += 1;
            if end <= self.range.start || stripe.len == 0 {
                continue;
            }
            let from = self.range.start.max(start);
            let to = self.range.end.min(end);
            return Some(Piece {
                part,
                stripe: index,
                offset: from - start,
                len: to - from,
            });
        }
    }
}

fn stripe_of<'a>(manifest: &'a ObjectManifest, piece: &Piece) -> Option<&'a Stripe> {
    match &manifest.data {
        ObjectData::Inline(_) => None,
        ObjectData::Parts(parts) => parts.get(piece.part)?.stripes.get(piece.stripe),
    }
}

/// Streams bytes `range` of an erasure-coded object. The reads run in a
/// spawned task that stops when the returned stream is dropped.
pub fn read_range(
    dp: Arc<DataPlane>,
    manifest: Arc<ObjectManifest>,
    range: Range<u64>,
) -> ReceiverStream<Result<Bytes, ApiError>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let shared = manifest.clone();
        let read_ahead = dp.read_ahead;
        let mut stream = futures::stream::iter(Pieces::new(&manifest, range))
            .map(|piece| {
                let dp = dp.clone();
                let manifest = shared.clone();
                async move {
                    let permit = dp.buffer().await?;
                    let stripe = stripe_of(&manifest, &piece)
                        .ok_or_else(|| ApiError::Internal("piece outside the manifest".into()))?;
                    let chunks = read_stripe(&dp, stripe, piece.offset, piece.len).await?;
                    Ok::<_, ApiError>((chunks, permit))
                }
            })
            .buffered(read_ahead);
        while let Some(r) = stream.next().await {
            match r {
                Ok((chunks, _permit)) => {
                    // The shards' bytes go out as they are: no copy into
                    // one stripe buffer.
                    for chunk in chunks {
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(bucket = %manifest.bucket, key = %manifest.key, error = %e,
                        "object read failed; the response body is cut short");
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
pub fn pieces(manifest: &ObjectManifest, range: Range<u64>) -> Vec<Piece> {
    Pieces::new(manifest, range).collect()
}

/// Reads `len` bytes at `offset` of one stripe, verified, as consecutive
/// chunks (slices of the shards read, no copy; one chunk when decoded).
///
/// A stripe that cannot be read by the cached cluster map is tried once
/// more with a map fresh from meta: the cached one may be empty (the
/// gateway started before meta had a leader) or behind (nodes it still
/// shows down came back after a restart, a node moved address).
pub async fn read_stripe(
    dp: &DataPlane,
    stripe: &Stripe,
    offset: u64,
    len: u64,
) -> Result<Vec<Bytes>, ApiError> {
    let snap = dp.cluster.ready().await?;
    match read_stripe_by(dp, &snap, stripe, offset, len).await {
        Err(e @ ApiError::ReadFailed { .. }) if dp.cluster.follows_meta() => {
            tracing::warn!(stripe = %stripe.id, error = %e,
                "stripe unreadable by the cached cluster map; reloading it and trying again");
            if let Err(refresh) = dp.cluster.refresh().await {
                tracing::warn!(error = %refresh, "cluster map reload failed");
                return Err(e);
            }
            read_stripe_by(dp, &dp.cluster.current(), stripe, offset, len).await
        }
        other => other,
    }
}

async fn read_stripe_by(
    dp: &DataPlane,
    snap: &ClusterSnapshot,
    stripe: &Stripe,
    offset: u64,
    len: u64,
) -> Result<Vec<Bytes>, ApiError> {
    let class = stripe.class;
    let (k, n) = (class.k as usize, class.total_shards());
    let want = data_shards_for_range(stripe.len, offset, len, &class)?;
    if want.len == 0 {
        return Ok(Vec::new());
    }
    if want.shard_len != stripe.shard_len {
        return Err(ApiError::Internal(format!(
            "stripe {} records shard length {}, its length implies {}",
            stripe.id, stripe.shard_len, want.shard_len
        )));
    }
    let mut got: Vec<Option<Bytes>> = vec![None; n];
    let mut tried = vec![false; n];
    let mut inflight = vec![false; n];
    let mut slow = vec![false; n];
    let mut good = 0usize;
    let mut degraded = false;
    let mut fetches = FuturesUnordered::new();

    // Starts fetching shard `i`; false when it cannot even be asked for.
    macro_rules! launch {
        ($i:expr) => {{
            let i = $i;
            tried[i] = true;
            match fetch_shard(dp, snap, stripe, i) {
                Some(f) => {
                    inflight[i] = true;
                    fetches.push(f);
                    true
                }
                None => false,
            }
        }};
    }

    for i in want.shards.clone() {
        if !launch!(i) {
            degraded = true;
        }
    }
    // Fires every `hedge_after` while shards are outstanding: the shards
    // still in flight then count as slow and fresh ones are asked for (a
    // parity shard asked for as a hedge may sit on a slow node too).
    let hedge = tokio::time::sleep(dp.hedge_after);
    tokio::pin!(hedge);

    loop {
        if want.shards.clone().all(|i| got[i].is_some()) {
            // Fast path: the wanted data shards, verified; no decoding.
            let mut out = Vec::with_capacity(want.shards.len());
            let mut skip = want.skip as usize;
            let mut left = len as usize;
            for shard in want.shards.clone().filter_map(|i| got[i].as_ref()) {
                let from = skip.min(shard.len());
                let take = (shard.len() - from).min(left);
                if take > 0 {
                    out.push(shard.slice(from..from + take));
                }
                left -= take;
                skip = 0;
            }
            return Ok(out);
        }
        if degraded && good >= k {
            tracing::warn!(stripe = %stripe.id, "degraded read: rebuilding from parity");
            let stripe_len = stripe.len;
            let shards = std::mem::take(&mut got);
            let full =
                tokio::task::spawn_blocking(move || decode_stripe(&class, stripe_len, shards))
                    .await
                    .map_err(join_error)??;
            let (from, to) = (offset as usize, (offset + len) as usize);
            if to > full.len() {
                return Err(ApiError::Internal("decoded stripe too short".into()));
            }
            return Ok(vec![full.slice(from..to)]);
        }
        if degraded {
            // Keep enough fresh fetches going to reach k verified shards:
            // the other data shards first, then parity.
            let fresh = (0..n).filter(|&i| inflight[i] && !slow[i]).count();
            let mut short = k.saturating_sub(good + fresh);
            let mut i = 0;
            while short > 0 && i < n {
                if !tried[i] && launch!(i) {
                    short -= 1;
                }
                i += 1;
            }
        }
        if fetches.is_empty() {
            return Err(ApiError::ReadFailed {
                stripe: stripe.id,
                have: good,
                need: k,
            });
        }
        tokio::select! {
            Some((i, r)) = fetches.next() => {
                inflight[i] = false;
                match r {
                    Ok(bytes) => {
                        got[i] = Some(bytes);
                        good += 1;
                    }
                    Err(e) => {
                        tracing::warn!(stripe = %stripe.id, index = i, node = %e.node,
                            error = %e.message, "shard read failed; reading parity");
                        degraded = true;
                        // Best effort, never waited for: meta queues the
                        // stripe for repair.
                        if let Some(kind) = e.problem {
                            dp.report_problem(ShardProblem {
                                stripe: stripe.id,
                                index: i as u8,
                                node: e.node,
                                kind,
                            });
                        }
                    }
                }
            }
            _ = &mut hedge => {
                degraded = true;
                slow.copy_from_slice(&inflight);
                hedge.as_mut().reset(tokio::time::Instant::now() + dp.hedge_after);
            }
        }
    }
}

/// Why a shard read failed, and what to report to meta about it.
#[derive(Debug)]
struct ShardFailure {
    node: NodeId,
    /// `None`: not the shard's fault (e.g. a refused call); not reported.
    problem: Option<ProblemKind>,
    message: String,
}

impl ShardFailure {
    fn new(node: &NodeId, problem: Option<ProblemKind>, message: impl Into<String>) -> Self {
        ShardFailure {
            node: node.clone(),
            problem,
            message: message.into(),
        }
    }

    fn from_rpc(node: &NodeId, e: RpcError) -> Self {
        let problem = match &e {
            RpcError::NotFound(_) => Some(ProblemKind::Missing),
            RpcError::Corrupt(_) => Some(ProblemKind::Corrupt),
            RpcError::Unreachable { .. } | RpcError::Timeout { .. } => {
                Some(ProblemKind::Unreachable)
            }
            _ => None,
        };
        ShardFailure::new(node, problem, e.to_string())
    }
}

/// Shards up to this size are verified on the executor (BLAKE3 of 256 KiB
/// takes well under 100 us): a trip to the blocking pool costs more.
const INLINE_VERIFY_BYTES: usize = 256 << 10;

/// Fetches and verifies shard `i` of `stripe`; `None` when the shard has
/// no readable location (not recorded, node unknown or down).
fn fetch_shard(
    dp: &DataPlane,
    snap: &ClusterSnapshot,
    stripe: &Stripe,
    i: usize,
) -> Option<impl std::future::Future<Output = (usize, Result<Bytes, ShardFailure>)> + Send + 'static>
{
    let entry = stripe.shard(u8::try_from(i).ok()?)?;
    let addr = snap.read_addr(&entry.node)?.to_string();
    let node = entry.node.clone();
    let hash = entry.blake3;
    let storage = dp.storage.clone();
    let (id, shard_len, timeout) = (stripe.id, stripe.shard_len as usize, dp.shard_read_timeout);
    Some(async move {
        let r =
            match tokio::time::timeout(timeout, storage.get_shard_unverified(&addr, id, i as u8))
                .await
            {
                Err(_) => Err(ShardFailure::new(
                    &node,
                    Some(ProblemKind::Unreachable),
                    format!("timed out after {timeout:?}"),
                )),
                Ok(Err(e)) => Err(ShardFailure::from_rpc(&node, e)),
                Ok(Ok(bytes)) if bytes.len() != shard_len => Err(ShardFailure::new(
                    &node,
                    Some(ProblemKind::Corrupt),
                    format!("{} bytes, expected {shard_len}", bytes.len()),
                )),
                Ok(Ok(bytes)) if bytes.len() <= INLINE_VERIFY_BYTES => {
                    if verify_shard(&bytes, &hash) {
                        Ok(bytes)
                    } else {
                        Err(ShardFailure::new(
                            &node,
                            Some(ProblemKind::Corrupt),
                            "checksum mismatch",
                        ))
                    }
                }
                Ok(Ok(bytes)) => {
                    // Hashing a large shard is CPU work: off the executor.
                    let check = bytes.clone();
                    match tokio::task::spawn_blocking(move || verify_shard(&check, &hash)).await {
                        Ok(true) => Ok(bytes),
                        Ok(false) => Err(ShardFailure::new(
                            &node,
                            Some(ProblemKind::Corrupt),
                            "checksum mismatch",
                        )),
                        Err(e) => Err(ShardFailure::new(
                            &node,
                            None,
                            format!("verify task failed: {e}"),
                        )),
                    }
                }
            };
        (i, r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_types::{Part, StorageClass, StripeId};

    fn manifest(parts: &[&[u64]]) -> ObjectManifest {
        let class = StorageClass::rs(2, 1, 10);
        let parts: Vec<Part> = parts
            .iter()
            .enumerate()
            .map(|(i, lens)| Part {
                number: i as u32 + 1,
                size: lens.iter().sum(),
                etag: String::new(),
                checksums: Default::default(),
                stripes: lens
                    .iter()
                    .map(|&len| Stripe {
                        id: StripeId::random(),
                        len,
                        shard_len: len.div_ceil(2) as u32,
                        class,
                        shards: vec![],
                    })
                    .collect(),
            })
            .collect();
        ObjectManifest {
            layout: 1,
            bucket: "b".into(),
            key: "k".into(),
            version_id: "v".into(),
            size: parts_size(&parts),
            etag: String::new(),
            content_type: None,
            headers: Default::default(),
            user_metadata: Default::default(),
            checksums: Default::default(),
            created: 0,
            data: ObjectData::Parts(parts),
        }
    }

    fn parts_size(parts: &[Part]) -> u64 {
        parts.iter().map(|p| p.size).sum()
    }

    fn p(part: usize, stripe: usize, offset: u64, len: u64) -> Piece {
        Piece {
            part,
            stripe,
            offset,
            len,
        }
    }

    #[test]
    fn range_to_stripe_pieces() {
        // One part: stripes of 20, 20, 5 bytes.
        let m = manifest(&[&[20, 20, 5]]);
        assert_eq!(
            pieces(&m, 0..45),
            vec![p(0, 0, 0, 20), p(0, 1, 0, 20), p(0, 2, 0, 5)]
        );
        assert_eq!(pieces(&m, 19..21), vec![p(0, 0, 19, 1), p(0, 1, 0, 1)]);
        assert_eq!(pieces(&m, 40..45), vec![p(0, 2, 0, 5)]);
        assert_eq!(pieces(&m, 44..45), vec![p(0, 2, 4, 1)]);
        assert_eq!(pieces(&m, 20..40), vec![p(0, 1, 0, 20)]);
        assert!(pieces(&m, 10..10).is_empty());
    }

    #[test]
    fn pieces_cross_parts() {
        // Two parts of unequal stripes (multipart objects).
        let m = manifest(&[&[20, 7], &[20, 20]]);
        assert_eq!(
            pieces(&m, 25..50),
            vec![p(0, 1, 5, 2), p(1, 0, 0, 20), p(1, 1, 0, 3)]
        );
        assert_eq!(pieces(&m, 66..67), vec![p(1, 1, 19, 1)]);
    }
}
