//! The repair worker: leases stripes from the meta repair queue and, for
//! each, finds which shards are lost or must move, reads k healthy shards
//! (BLAKE3-verified by the node and again here), rebuilds the others,
//! writes them to nodes that hold no shard of the stripe, and commits the
//! new shard list with a compare-and-set.
//!
//! One worker per gateway, one step = one leased batch. Stripes of a batch
//! are repaired `concurrency` at a time; each holds one stripe's shards in
//! memory, so the worker's memory is bounded by `concurrency` stripes. A
//! token bucket paces the bytes read and written. Rate, concurrency and
//! pause come from meta and are re-read every `repair-poll-ms`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tessera_erasure::{codec_for, shard_hash, shard_len, verify_shard, ErasureError};
use tessera_proto::{MetaClient, RpcError};
use tessera_types::meta::{MetaCommand, MetaError, MetaQuery, MetaReply, QueryReply};
use tessera_types::repair::{
    check_shard_list, RepairConfig, RepairOutcome, RepairReason, RepairTask,
};
use tessera_types::{
    now_millis, ClusterMap, NodeId, NodeInfo, NodeState, ShardEntry, StorageClass,
};
use tokio_util::sync::CancellationToken;

use super::plan::{self, Check, LossCause, ShardState, StatAnswer};
use super::targets::choose_targets;
use super::throttle::TokenBucket;
use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::metrics::RepairMetrics;
use crate::pipeline::DataPlane;

/// Stripes of a batch not started this long before their lease ends are
/// left for the lease to expire (another worker takes them).
const LEASE_MARGIN_FRACTION: u32 = 4;

/// Most stripes one worker repairs at once, whatever meta says: each holds
/// a stripe's shards in memory.
pub const MAX_CONCURRENCY: u32 = 64;

/// Stripes to lease at once: twice the concurrency, but no more than the
/// byte rate can move in half a lease (at about k + 1 shards of
/// `class.shard_size` per stripe), so that leases do not run out while
/// stripes wait for the throttle.
pub fn batch_size(config: &RepairConfig, class: &StorageClass, lease: Duration) -> u32 {
    let concurrency = config.concurrency.clamp(1, MAX_CONCURRENCY);
    let max = concurrency * 2;
    if config.rate_bytes_per_sec == 0 {
        return max;
    }
    let per_stripe = (u64::from(class.k) + 1) * u64::from(class.shard_size.max(1));
    let budget = u128::from(config.rate_bytes_per_sec) * lease.as_millis() / 2_000;
    let fits = (budget / u128::from(per_stripe)).max(1);
    u32::try_from(fits).map_or(max, |f| f.min(max))
}

/// Why one repair attempt failed (meta backs the stripe off and retries).
#[derive(Debug, thiserror::Error)]
pub enum RepairFailure {
    /// Fewer than k shards could be read and verified.
    #[error("{have} shards readable, {need} needed")]
    NotEnoughShards { have: usize, need: usize },
    /// Nodes holding shards did not answer, and nothing else was wrong.
    #[error("{shards} shards on nodes that did not answer")]
    Unreachable { shards: usize },
    /// No node took any rebuilt shard.
    #[error("no node took any of the {wanted} rebuilt shards")]
    NoTargets { wanted: usize },
    /// A rebuilt shard differs from the hash its stripe records: the
    /// sources or the manifest are inconsistent, so nothing is written.
    #[error("rebuilt shard {index} does not match the hash its stripe records")]
    HashMismatch { index: u8 },
    #[error("erasure coding: {0}")]
    Erasure(#[from] ErasureError),
    /// Meta could not be reached or refused the commit.
    #[error("meta: {0}")]
    Meta(ApiError),
    #[error("{0}")]
    Internal(String),
}

/// What became of one leased stripe.
#[derive(Debug)]
pub enum Attempt {
    /// Nothing lost or misplaced: released as done.
    Whole,
    /// Rebuilt shards committed; `complete` is false when some shards to
    /// rebuild found no node (the stripe is better, not whole).
    Repaired {
        shards: usize,
        bytes: u64,
        complete: bool,
    },
    /// The stripe changed meanwhile; meta dropped the item and collects
    /// the shards written.
    LostRace,
    Failed(RepairFailure),
}

/// Counts of one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub leased: usize,
    pub repaired: usize,
    pub whole: usize,
    pub lost_races: usize,
    pub failed: usize,
    /// Not started before their lease ran short.
    pub skipped: usize,
}

/// The repair worker of one gateway.
pub struct RepairWorker {
    id: String,
    meta: MetaClient,
    dp: Arc<DataPlane>,
    lease: Duration,
    poll: Duration,
    metrics: RepairMetrics,
    throttle: Mutex<TokenBucket>,
    in_flight: AtomicI64,
}

/// A random worker id, `gw-` and 16 hex digits, new at each start.
/// The worker id of this gateway: stable across restarts of the same
/// gateway (host name and S3 port), so that a restarted gateway can give
/// back the leases its previous incarnation held (`ReleaseLeases`); random
/// when the port is unknown.
pub fn worker_id(port: Option<u16>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    match (host, port) {
        (Some(h), Some(p)) => format!("gw-{h}-{p}"),
        _ => format!("gw-{:016x}", rand::random::<u64>()),
    }
}

/// Gives back the leases a previous incarnation of `worker` held.
pub async fn release_previous(meta: &MetaClient, worker: &str, repairs: bool, gc: bool) {
    let cmd = MetaCommand::ReleaseLeases {
        worker: worker.to_string(),
        repairs,
        gc,
    };
    match meta.write(&cmd).await {
        Ok(_) => tracing::debug!(worker, repairs, gc, "released leases of an earlier run"),
        Err(e) => tracing::debug!(worker, error = %e, "could not release earlier leases"),
    }
}

impl RepairWorker {
    pub fn new(
        config: &GatewayConfig,
        id: String,
        meta: MetaClient,
        dp: Arc<DataPlane>,
        metrics: RepairMetrics,
    ) -> Self {
        let rate = RepairConfig::default().rate_bytes_per_sec;
        RepairWorker {
            id,
            meta,
            dp,
            lease: GatewayConfig::ms(config.repair_lease_ms),
            poll: GatewayConfig::ms(config.repair_poll_ms.max(1)),
            metrics,
            throttle: Mutex::new(TokenBucket::new(rate, Instant::now())),
            in_flight: AtomicI64::new(0),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Leases and repairs until `shutdown`. Leases held when it stops just
    /// expire.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(worker = %self.id, "repair worker started");
        release_previous(&self.meta, &self.id, true, false).await;
        let mut config = RepairConfig::default();
        let mut polled: Option<Instant> = None;
        loop {
            if polled.is_none_or(|t| t.elapsed() >= self.poll) {
                polled = Some(Instant::now());
                match self.settings().await {
                    Ok(c) => {
                        if c != config {
                            tracing::info!(
                                rate = c.rate_bytes_per_sec,
                                concurrency = c.concurrency,
                                paused = c.paused,
                                "repair settings"
                            );
                        }
                        config = c;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "repair settings not read; keeping the last")
                    }
                }
                self.set_rate(config.rate_bytes_per_sec);
            }
            let busy = if config.paused {
                false
            } else {
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.run_once(&config) => r,
                };
                match r {
                    Ok(report) => report.leased > 0,
                    Err(e) => {
                        tracing::warn!(error = %e, "leasing repairs failed");
                        false
                    }
                }
            };
            if !busy {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.poll) => {}
                }
            }
        }
    }

    /// The cluster-wide repair settings from meta.
    pub async fn settings(&self) -> Result<RepairConfig, ApiError> {
        match self
            .meta
            .query(&MetaQuery::RepairConfig)
            .await
            .map_err(ApiError::from_rpc)?
        {
            QueryReply::RepairConfig(c) => Ok(c),
            QueryReply::Err(e) => Err(e.into()),
            _ => Err(ApiError::UnexpectedReply("RepairConfig")),
        }
    }

    /// Changes the byte rate (0 = unlimited).
    pub fn set_rate(&self, rate: u64) {
        self.throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_rate(rate, Instant::now());
    }

    /// One step: leases a batch (see [`batch_size`]), repairs it and gives
    /// every item back.
    pub async fn run_once(&self, config: &RepairConfig) -> Result<BatchReport, ApiError> {
        let concurrency = config.concurrency.clamp(1, MAX_CONCURRENCY);
        let cmd = MetaCommand::LeaseRepairs {
            worker: self.id.clone(),
            max: batch_size(config, &self.dp.class, self.lease),
            lease_ms: self.lease.as_millis() as u64,
            at: now_millis(),
        };
        let tasks = match self.meta.write(&cmd).await.map_err(ApiError::from_rpc)? {
            MetaReply::Repairs(t) => t,
            MetaReply::Err(e) => return Err(e.into()),
            _ => return Err(ApiError::UnexpectedReply("LeaseRepairs")),
        };
        if tasks
            .iter()
            .any(|t| t.item.reasons.contains(&RepairReason::Rebalance))
        {
            // A rebalance pass is queued once the new node is in meta's
            // map; a cached map from before the lease may not show it, and
            // judged by that map every stripe already follows placement.
            if let Err(e) = self.dp.cluster.refresh().await {
                tracing::warn!(error = %e, "cluster map refresh before a rebalance failed");
            }
        }
        let start_by = Instant::now() + self.lease - self.lease / LEASE_MARGIN_FRACTION;
        let mut report = BatchReport {
            leased: tasks.len(),
            ..BatchReport::default()
        };
        let mut results = futures::stream::iter(tasks)
            .map(|task| async move {
                if Instant::now() >= start_by {
                    return None;
                }
                self.enter();
                let attempt = self.repair(&task).await;
                self.leave();
                self.finish(&task, &attempt).await;
                Some(attempt)
            })
            .buffer_unordered(concurrency as usize);
        while let Some(a) = results.next().await {
            match a {
                None => report.skipped += 1,
                Some(Attempt::Whole) => report.whole += 1,
                Some(Attempt::Repaired { .. }) => report.repaired += 1,
                Some(Attempt::LostRace) => report.lost_races += 1,
                Some(Attempt::Failed(_)) => report.failed += 1,
            }
        }
        Ok(report)
    }

    fn enter(&self) {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.metrics.in_flight.set(&[], n as f64);
    }

    fn leave(&self) {
        let n = self.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        self.metrics.in_flight.set(&[], n as f64);
    }

    /// Gives the item back as its attempt says, and counts it.
    async fn finish(&self, task: &RepairTask, attempt: &Attempt) {
        let stripe = task.stripe.id;
        let outcome = match attempt {
            Attempt::Whole => {
                self.metrics.whole.inc(&[]);
                RepairOutcome::Done
            }
            Attempt::Repaired {
                shards,
                bytes,
                complete,
            } => {
                self.metrics.repaired_stripes.inc(&[]);
                self.metrics.repaired_bytes.add(&[], *bytes);
                tracing::info!(%stripe, shards, bytes, complete, "stripe repaired");
                // CommitRepair dropped the item.
                return;
            }
            Attempt::LostRace => {
                self.metrics.lost_races.inc(&[]);
                tracing::info!(%stripe, "stripe changed during its repair; nothing committed");
                return;
            }
            Attempt::Failed(e) => {
                self.metrics.failed.inc(&[]);
                tracing::warn!(%stripe, error = %e, attempts = task.item.attempts + 1,
                    "stripe repair failed; meta retries it later");
                RepairOutcome::Failed
            }
        };
        let cmd = MetaCommand::ReleaseRepair {
            worker: self.id.clone(),
            stripe,
            outcome,
            at: now_millis(),
        };
        match self.meta.write(&cmd).await {
            Ok(MetaReply::Ok) => {}
            Ok(other) => tracing::debug!(%stripe, reply = ?other, "release refused"),
            Err(e) => tracing::debug!(%stripe, error = %e, "release failed; the lease expires"),
        }
    }

    /// Waits until `bytes` more may be moved.
    async fn pace(&self, bytes: u64) {
        let wait = self
            .throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Repairs one leased stripe and commits the result (nothing is given
    /// back to meta here; see [`RepairWorker::run_once`]).
    pub async fn repair(&self, task: &RepairTask) -> Attempt {
        match self.try_repair(task).await {
            Ok(a) => a,
            Err(e) => Attempt::Failed(e),
        }
    }

    async fn try_repair(&self, task: &RepairTask) -> Result<Attempt, RepairFailure> {
        let stripe = &task.stripe;
        let class = stripe.class;
        let (k, m) = (class.k as usize, class.m as usize);
        let n = k + m;
        let codec = codec_for(&class)?;
        if shard_len(stripe.len, &class)? != stripe.shard_len {
            return Err(RepairFailure::Internal(format!(
                "stripe {} records shard length {}, its length implies another",
                stripe.id, stripe.shard_len
            )));
        }
        let mut snap = self.dp.cluster.ready().await.map_err(RepairFailure::Meta)?;
        if map_predates(&snap.map, &task.item.reasons) {
            // Queued for a drain or a node going down that the cached map
            // does not show yet: judging by it would call the stripe whole.
            self.dp
                .cluster
                .refresh()
                .await
                .map_err(RepairFailure::Meta)?;
            snap = self.dp.cluster.current();
        }
        let nodes: HashMap<&NodeId, &NodeInfo> =
            snap.map.nodes.iter().map(|n| (&n.id, n)).collect();

        // Which shards are lost, must move, can be read.
        let checks = plan::precheck(stripe, &task.item.bad, |id| nodes.get(id).map(|n| n.state));
        let mut states = vec![ShardState::Unavailable; n];
        let mut stats = FuturesUnordered::new();
        for (i, check) in checks.iter().enumerate() {
            match *check {
                Check::Decided(s) => states[i] = s,
                Check::Stat { draining } => {
                    let entry = stripe.shard(i as u8);
                    let addr = entry
                        .and_then(|e| nodes.get(&e.node))
                        .map(|n| n.addr.clone());
                    let storage = self.dp.storage.clone();
                    let id = stripe.id;
                    stats.push(async move {
                        let answer = match addr {
                            None => StatAnswer::NoAnswer,
                            Some(addr) => match storage.stat_shard(&addr, id, i as u8).await {
                                Ok(r) if r.exists => StatAnswer::Present {
                                    len: r.length,
                                    blake3: r.blake3.to_vec(),
                                },
                                Ok(_) | Err(RpcError::NotFound(_)) => StatAnswer::Absent,
                                Err(_) => StatAnswer::NoAnswer,
                            },
                        };
                        (i, draining, answer)
                    });
                }
            }
        }
        while let Some((i, draining, answer)) = stats.next().await {
            if let Some(entry) = stripe.shard(i as u8) {
                states[i] = plan::judge(entry, stripe.shard_len, draining, &answer);
            }
        }
        drop(stats);
        // A rebalance moves shards off nodes outside the stripe's placement
        // onto the placement's nodes that hold none (preferred targets).
        let preferred = if task.item.reasons.contains(&RepairReason::Rebalance) {
            let placed = snap.placement.place(&stripe.id, k, m);
            plan::rebalance(&mut states, stripe, &placed)
        } else {
            Vec::new()
        };
        if !states.iter().any(|s| s.rebuild()) {
            let unavailable = states
                .iter()
                .filter(|s| **s == ShardState::Unavailable)
                .count();
            return if unavailable == 0 {
                Ok(Attempt::Whole)
            } else {
                Err(RepairFailure::Unreachable {
                    shards: unavailable,
                })
            };
        }

        // Read: the shards to move themselves when nothing is lost (they
        // are copied), otherwise k verified sources to decode from. A move
        // whose read fails turns the copy into a rebuild.
        let sources = plan::read_order(&states);
        let mut got: Vec<Option<Bytes>> = vec![None; n];
        let mut good = 0usize;
        let mut next = 0usize;
        let mut reads = FuturesUnordered::new();
        let enough = |states: &[ShardState], got: &[Option<Bytes>], good: usize| {
            if plan::any_lost(states) {
                good >= k
            } else {
                (0..n).all(|i| states[i] != ShardState::Move || got[i].is_some())
            }
        };
        while !enough(&states, &got, good) {
            let need = if plan::any_lost(&states) {
                k
            } else {
                states.iter().filter(|s| **s == ShardState::Move).count()
            };
            while good + reads.len() < need && next < sources.len() {
                let i = sources[next];
                next += 1;
                if states[i].readable() {
                    if let Some(f) = self.read_shard(task, &nodes, i) {
                        reads.push(f);
                    }
                }
            }
            let Some((i, r)) = reads.next().await else {
                break;
            };
            match r {
                Ok(bytes) => {
                    self.metrics.read_bytes.add(&[], bytes.len() as u64);
                    got[i] = Some(bytes);
                    good += 1;
                }
                Err(state) => states[i] = state,
            }
        }
        drop(reads);
        let rebuild = plan::rebuild_order(&states);
        if rebuild.is_empty() {
            // A shard to move became unreachable while reading.
            return Err(RepairFailure::Unreachable { shards: 1 });
        }
        let decode = rebuild.iter().any(|&i| got[i].is_none());
        if decode && good < k {
            return Err(RepairFailure::NotEnoughShards {
                have: good,
                need: k,
            });
        }

        // Rebuild (CPU work: off the executor).
        let wanted = rebuild.clone();
        let rebuilt = tokio::task::spawn_blocking(move || {
            let mut work: Vec<Option<Vec<u8>>> =
                got.into_iter().map(|s| s.map(|b| b.to_vec())).collect();
            if decode {
                codec.reconstruct(&mut work)?;
            }
            let mut out = Vec::with_capacity(wanted.len());
            for i in wanted {
                let shard = work.get_mut(i).and_then(Option::take).unwrap_or_default();
                let hash = shard_hash(&shard);
                out.push((i as u8, Bytes::from(shard), hash));
            }
            Ok::<_, ErasureError>(out)
        })
        .await
        .map_err(|e| RepairFailure::Internal(format!("rebuild task failed: {e}")))??;
        for (index, shard, hash) in &rebuilt {
            if shard.len() != stripe.shard_len as usize {
                return Err(RepairFailure::Internal(format!(
                    "rebuilt shard {index} has {} bytes",
                    shard.len()
                )));
            }
            // RS is deterministic: a shard the stripe records must come
            // back with the same hash.
            if stripe.shard(*index).is_some_and(|e| e.blake3 != *hash) {
                return Err(RepairFailure::HashMismatch { index: *index });
            }
        }

        // Targets: never a node that holds a shard of the stripe.
        let holders: Vec<NodeId> = stripe.shards.iter().map(|e| e.node.clone()).collect();
        let kept: Vec<NodeId> = stripe
            .shards
            .iter()
            .filter(|e| !states.get(e.index as usize).is_some_and(|s| s.rebuild()))
            .map(|e| e.node.clone())
            .collect();
        let ranked = choose_targets(
            &snap.placement,
            |id| nodes.get(id).map(|n| n.zone.clone()),
            &stripe.id,
            k,
            m,
            &kept,
            &holders,
            &self.dp.avoided_nodes(),
            rebuilt.len(),
        );
        let mut candidates = preferred;
        let rest: Vec<NodeId> = ranked
            .into_iter()
            .filter(|n| !candidates.contains(n))
            .collect();
        candidates.extend(rest);
        // Last resort for a lost shard: its own node, if it is up and
        // answered (a replaced disk; the stripe's zone spread is unchanged).
        let own_node = |index: u8| -> Option<NodeId> {
            let lost_here = matches!(states.get(index as usize),
                Some(ShardState::Lost(c)) if c.node_answers());
            let entry = stripe.shard(index)?;
            let up = nodes
                .get(&entry.node)
                .is_some_and(|n| n.state == NodeState::Up);
            (lost_here && up).then(|| entry.node.clone())
        };
        let placed = self
            .write_shards(task, &nodes, &rebuilt, candidates, own_node)
            .await;
        if placed.is_empty() {
            return Err(RepairFailure::NoTargets {
                wanted: rebuilt.len(),
            });
        }

        // Commit: a compare-and-set on the stripe's shard list.
        let replaced: HashSet<u8> = placed.iter().map(|e| e.index).collect();
        let mut shards: Vec<ShardEntry> = stripe
            .shards
            .iter()
            .filter(|e| !replaced.contains(&e.index))
            .cloned()
            .chain(placed.iter().cloned())
            .collect();
        shards.sort_by_key(|e| e.index);
        if let Err(e) = check_shard_list(stripe, &shards) {
            self.delete_shards(task, &nodes, &placed).await;
            return Err(RepairFailure::Internal(format!("new shard list: {e}")));
        }
        let bytes = placed.len() as u64 * u64::from(stripe.shard_len);
        let cmd = MetaCommand::CommitRepair {
            worker: self.id.clone(),
            owner: task.item.owner.clone(),
            stripe: stripe.id,
            expected: stripe.shards.clone(),
            shards,
            bytes,
            at: now_millis(),
        };
        match self.meta.write(&cmd).await {
            Ok(MetaReply::Ok) => Ok(Attempt::Repaired {
                shards: placed.len(),
                bytes,
                complete: placed.len() == rebuilt.len(),
            }),
            Ok(MetaReply::Err(MetaError::PreconditionFailed)) => Ok(Attempt::LostRace),
            Ok(MetaReply::Err(e)) => {
                // Refused outright: nothing references the new shards.
                self.delete_shards(task, &nodes, &placed).await;
                Err(RepairFailure::Meta(e.into()))
            }
            Ok(_) => Err(RepairFailure::Meta(ApiError::UnexpectedReply(
                "CommitRepair",
            ))),
            // Unknown outcome: the shards may be live now. If not, the
            // nodes' orphan scans collect them.
            Err(e) => Err(RepairFailure::Meta(ApiError::from_rpc(e))),
        }
    }

    /// Reads and verifies shard `i`; on failure, the state the shard turns
    /// out to be in. `None` when its node has no address.
    fn read_shard<'a>(
        &'a self,
        task: &'a RepairTask,
        nodes: &HashMap<&NodeId, &NodeInfo>,
        i: usize,
    ) -> Option<impl std::future::Future<Output = (usize, Result<Bytes, ShardState>)> + 'a> {
        let stripe = &task.stripe;
        let entry = stripe.shard(u8::try_from(i).ok()?)?;
        let addr = nodes.get(&entry.node)?.addr.clone();
        let hash = entry.blake3;
        let len = stripe.shard_len as usize;
        Some(async move {
            self.pace(len as u64).await;
            let r = match self
                .dp
                .storage
                .get_shard_unverified(&addr, stripe.id, i as u8)
                .await
            {
                Ok(bytes) if bytes.len() == len => {
                    let check = bytes.clone();
                    match tokio::task::spawn_blocking(move || verify_shard(&check, &hash)).await {
                        Ok(true) => Ok(bytes),
                        Ok(false) => Err(ShardState::Lost(LossCause::Mismatch)),
                        Err(_) => Err(ShardState::Unavailable),
                    }
                }
                Ok(_) | Err(RpcError::Corrupt(_)) => Err(ShardState::Lost(LossCause::Mismatch)),
                Err(RpcError::NotFound(_)) => Err(ShardState::Lost(LossCause::NoFile)),
                Err(_) => Err(ShardState::Unavailable),
            };
            if let Err(s) = &r {
                tracing::debug!(stripe = %stripe.id, index = i, node = %entry.node, state = ?s,
                    "repair source read failed");
            }
            (i, r)
        })
    }

    /// Writes each rebuilt shard to the next candidate, trying further
    /// candidates (then the shard's own node, see `own_node`) when a node
    /// fails. Returns the entries written.
    async fn write_shards(
        &self,
        task: &RepairTask,
        nodes: &HashMap<&NodeId, &NodeInfo>,
        rebuilt: &[(u8, Bytes, [u8; 32])],
        candidates: Vec<NodeId>,
        own_node: impl Fn(u8) -> Option<NodeId>,
    ) -> Vec<ShardEntry> {
        let id = task.stripe.id;
        let mut pool = candidates.into_iter();
        let mut own_tried = vec![false; rebuilt.len()];
        let mut next_target = |slot: usize, pool: &mut std::vec::IntoIter<NodeId>| {
            pool.next().or_else(|| {
                let (index, _, _) = rebuilt.get(slot)?;
                if std::mem::replace(&mut own_tried[slot], true) {
                    return None;
                }
                own_node(*index)
            })
        };
        let put = |slot: usize, node: NodeId| {
            let addr = nodes.get(&node).map(|n| n.addr.clone());
            let (index, shard, hash) = rebuilt[slot].clone();
            let storage = self.dp.storage.clone();
            async move {
                self.pace(shard.len() as u64).await;
                let r = match addr {
                    Some(addr) => storage
                        .put_shard(&addr, id, index, shard, hash)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err("node has no address in the cluster map".to_string()),
                };
                (slot, node, r)
            }
        };
        let mut puts = FuturesUnordered::new();
        for (slot, (index, _, _)) in rebuilt.iter().enumerate() {
            match next_target(slot, &mut pool) {
                Some(node) => puts.push(put(slot, node)),
                None => tracing::warn!(stripe = %id, index, "no node left for a rebuilt shard"),
            }
        }
        let mut placed = Vec::with_capacity(rebuilt.len());
        while let Some((slot, node, r)) = puts.next().await {
            let (index, _, hash) = &rebuilt[slot];
            match r {
                Ok(()) => placed.push(ShardEntry {
                    index: *index,
                    node,
                    blake3: *hash,
                }),
                Err(e) => {
                    tracing::warn!(stripe = %id, index, node = %node, error = %e,
                        "rebuilt shard write failed; trying the next node");
                    self.dp.note_write_failure(&node);
                    if let Some(other) = next_target(slot, &mut pool) {
                        puts.push(put(slot, other));
                    }
                }
            }
        }
        placed
    }

    /// Best-effort delete of shards this repair wrote and nobody will
    /// reference.
    async fn delete_shards(
        &self,
        task: &RepairTask,
        nodes: &HashMap<&NodeId, &NodeInfo>,
        entries: &[ShardEntry],
    ) {
        for e in entries {
            if let Some(n) = nodes.get(&e.node) {
                if let Err(err) = self
                    .dp
                    .storage
                    .delete_shard(&n.addr, task.stripe.id, e.index)
                    .await
                {
                    tracing::debug!(stripe = %task.stripe.id, index = e.index, error = %err,
                        "cleanup of a rebuilt shard failed (the orphan scan collects it)");
                }
            }
        }
    }
}

/// Whether `map` is older than one of `reasons`: a node being drained or
/// down by the reason, but not (yet) in the map.
fn map_predates(map: &ClusterMap, reasons: &[RepairReason]) -> bool {
    let state = |id: &NodeId| map.node(id).map(|n| n.state);
    reasons.iter().any(|r| match r {
        RepairReason::Drain(id) => state(id).is_some_and(|s| s != NodeState::Draining),
        RepairReason::NodeDown(id) => {
            state(id).is_some_and(|s| matches!(s, NodeState::Up | NodeState::Suspect))
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_fit_the_rate_and_the_lease() {
        let class = StorageClass::rs(4, 2, 1 << 20);
        let lease = Duration::from_secs(60);
        let cfg = |rate, concurrency| RepairConfig {
            rate_bytes_per_sec: rate,
            concurrency,
            paused: false,
        };
        // Unlimited or fast: twice the concurrency.
        assert_eq!(batch_size(&cfg(0, 8), &class, lease), 16);
        assert_eq!(batch_size(&cfg(200 << 20, 8), &class, lease), 16);
        // 1 MiB/s moves 30 MiB in half a lease: 6 stripes of 5 MiB.
        assert_eq!(batch_size(&cfg(1 << 20, 8), &class, lease), 6);
        // Slower still: one stripe at a time, never none.
        assert_eq!(batch_size(&cfg(1024, 8), &class, lease), 1);
        // Concurrency is capped; 0 means 1.
        assert_eq!(
            batch_size(&cfg(0, 100_000), &class, lease),
            2 * MAX_CONCURRENCY
        );
        assert_eq!(batch_size(&cfg(0, 0), &class, lease), 2);
    }

    #[test]
    fn a_map_older_than_the_items_reason_is_refreshed() {
        let node = |id: &str, state| NodeInfo {
            id: NodeId::from(id),
            addr: format!("{id}:1"),
            zone: "z".into(),
            weight: 1.0,
            capacity_bytes: 1,
            used_bytes: 0,
            shard_count: 0,
            state,
            last_heartbeat: 0,
        };
        let map = ClusterMap {
            epoch: 3,
            nodes: vec![
                node("a", NodeState::Up),
                node("b", NodeState::Draining),
                node("c", NodeState::Down),
            ],
        };
        let drain = |id: &str| RepairReason::Drain(NodeId::from(id));
        let down = |id: &str| RepairReason::NodeDown(NodeId::from(id));
        // The map shows the drain / the node down: current enough.
        assert!(!map_predates(&map, &[drain("b")]));
        assert!(!map_predates(&map, &[down("c"), RepairReason::Rebalance]));
        // Drained or down by the item, up in the map: older.
        assert!(map_predates(&map, &[drain("a")]));
        assert!(map_predates(&map, &[RepairReason::ShortWrite, down("a")]));
        // A node the map does not know (removed since) is no reason.
        assert!(!map_predates(&map, &[drain("x")]));
        assert!(!map_predates(&map, &[RepairReason::Rebalance]));
    }
}
