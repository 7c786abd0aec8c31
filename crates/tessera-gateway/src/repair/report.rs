//! Reports of bad shards from the read path to meta (`ReportShards`),
//! which queues their stripes for repair.
//!
//! A read must never wait for this or fail because of it: a report is put
//! in a bounded channel with `try_send` (dropped when full: the scrubber
//! and the next read find the shard again), and one background task
//! deduplicates (a hot object with a lost shard is reported once per
//! [`DEDUP_WINDOW`], not once per GET) and sends batches.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tessera_proto::MetaClient;
use tessera_types::meta::{MetaCommand, MetaReply};
use tessera_types::repair::ShardProblem;
use tessera_types::{now_millis, NodeId, StripeId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::RepairMetrics;

/// Reports waiting to be sent; beyond this, new ones are dropped.
const QUEUE: usize = 1024;
/// Most problems in one `ReportShards`.
const MAX_BATCH: usize = 256;
/// How long the first report of a batch waits for company.
const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// A shard reported once is not reported again for this long.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(60);

/// The read path's handle: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct ProblemReporter {
    tx: mpsc::Sender<ShardProblem>,
}

impl ProblemReporter {
    /// Starts the sending task (it stops on `shutdown`).
    pub fn spawn(meta: MetaClient, metrics: RepairMetrics, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_reports(rx, meta, metrics, shutdown));
        ProblemReporter { tx }
    }

    /// A reporter whose reports land in the returned receiver (tests).
    pub fn channel() -> (Self, mpsc::Receiver<ShardProblem>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (ProblemReporter { tx }, rx)
    }

    /// Queues a report, or drops it if the queue is full.
    pub fn report(&self, problem: ShardProblem) {
        if self.tx.try_send(problem).is_err() {
            tracing::debug!("shard problem report dropped: queue full");
        }
    }
}

type ShardKey = (StripeId, u8, NodeId);

/// Remembers what was reported recently.
#[derive(Default)]
struct Dedup {
    seen: HashMap<ShardKey, Instant>,
}

impl Dedup {
    /// True if `p` was not reported within the window (and records it).
    fn fresh(&mut self, p: &ShardProblem, now: Instant) -> bool {
        let key = (p.stripe, p.index, p.node.clone());
        match self.seen.get(&key) {
            Some(at) if now.saturating_duration_since(*at) < DEDUP_WINDOW => false,
            _ => {
                self.seen.insert(key, now);
                true
            }
        }
    }

    fn prune(&mut self, now: Instant) {
        self.seen
            .retain(|_, at| now.saturating_duration_since(*at) < DEDUP_WINDOW);
    }
}

async fn send_reports(
    mut rx: mpsc::Receiver<ShardProblem>,
    meta: MetaClient,
    metrics: RepairMetrics,
    shutdown: CancellationToken,
) {
    let mut dedup = Dedup::default();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = rx.recv() => match p {
                Some(p) => p,
                None => return,
            },
        };
        let now = Instant::now();
        dedup.prune(now);
        let mut batch = Vec::new();
        if dedup.fresh(&first, now) {
            batch.push(first);
        }
        let window = tokio::time::sleep(BATCH_WINDOW);
        tokio::pin!(window);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut window => break,
                p = rx.recv() => match p {
                    Some(p) => {
                        if dedup.fresh(&p, Instant::now()) {
                            batch.push(p);
                        }
                    }
                    None => break,
                },
            }
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        let cmd = MetaCommand::ReportShards {
            problems: batch,
            at: now_millis(),
        };
        // The meta client bounds the call with its deadline.
        let r = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = meta.write(&cmd) => r,
        };
        match r {
            Ok(MetaReply::Ok) => {
                metrics.problems_reported.add(&[], n);
                tracing::info!(shards = n, "reported bad shards to meta for repair");
            }
            Ok(other) => tracing::warn!(reply = ?other, "meta refused a shard problem report"),
            Err(e) => tracing::warn!(error = %e, shards = n,
                "shard problem report failed; the next read or the scrubber reports them again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_types::repair::ProblemKind;

    #[test]
    fn dedup_within_the_window() {
        let p = ShardProblem {
            stripe: StripeId::random(),
            index: 3,
            node: NodeId::from("s-1"),
            kind: ProblemKind::Missing,
        };
        let mut other = p.clone();
        other.index = 4;
        let t0 = Instant::now();
        let mut d = Dedup::default();
        assert!(d.fresh(&p, t0));
        assert!(!d.fresh(&p, t0 + Duration::from_secs(1)));
        assert!(d.fresh(&other, t0 + Duration::from_secs(1)));
        d.prune(t0 + DEDUP_WINDOW);
        assert!(d.fresh(&p, t0 + DEDUP_WINDOW));
    }

    #[tokio::test]
    async fn report_never_blocks() {
        let (r, mut rx) = ProblemReporter::channel();
        let p = ShardProblem {
            stripe: StripeId::random(),
            index: 0,
            node: NodeId::from("s-1"),
            kind: ProblemKind::Corrupt,
        };
        for _ in 0..QUEUE + 10 {
            r.report(p.clone());
        }
        let mut got = 0;
        while rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, QUEUE);
    }
}
