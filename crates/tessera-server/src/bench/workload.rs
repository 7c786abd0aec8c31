//! The load engine: `concurrency` workers, each a loop of one request at a
//! time, until a shared op count is used up or a deadline passes. Every
//! worker keeps its own statistics (no shared locks on the hot path; two
//! relaxed atomic adds feed the progress line), merged at the end.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::S3Client;
use super::hist::Histogram;
use super::spec::{Mix, OpKind, SizeSpec};

/// Error messages kept per phase (the rest are only counted).
const ERROR_SAMPLES: usize = 5;
/// Keys per ListObjectsV2 page of the list workload.
const LIST_PAGE: u32 = 1000;

/// When a phase ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this many operations in all (started ones finish).
    Count(u64),
    /// When this much time has passed (started operations finish).
    After(Duration),
}

/// The operation of a phase (`Mixed`: a weighted choice per operation).
#[derive(Debug, Clone)]
pub enum Workload {
    Put,
    Get,
    Stat,
    List,
    Delete,
    Mixed(Arc<Mix>),
}

/// What the workers of a phase do, with the objects they work on.
#[derive(Debug, Clone)]
enum Plan {
    /// PUT new objects.
    Put,
    /// GET (or HEAD) random objects of `keys`.
    Read {
        kind: OpKind,
        keys: Arc<Vec<String>>,
    },
    /// ListObjectsV2 pages under the run's prefix.
    List,
    /// DELETE the objects of `keys`, each once.
    Delete { keys: Arc<Mutex<Vec<String>>> },
    /// A weighted mix over objects that each worker owns: it starts with
    /// its share of `keys`, adds what it puts, forgets what it deletes.
    Mixed {
        mix: Arc<Mix>,
        keys: Arc<Vec<String>>,
    },
}

/// Everything workers share.
#[derive(Debug)]
pub struct Target {
    pub client: S3Client,
    pub bucket: String,
    pub sizes: SizeSpec,
    /// Random bytes of the largest size; PUT bodies are slices of it.
    pub payload: Bytes,
    pub concurrency: usize,
    /// Every key of the run starts with this (`tessera-bench/<run id>/`).
    pub prefix: String,
}

/// Counts and latencies of one kind of operation.
#[derive(Debug, Clone, Default)]
pub struct OpStats {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency: Histogram,
}

impl OpStats {
    fn merge(&mut self, o: &OpStats) {
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.errors += o.errors;
        self.latency.merge(&o.latency);
    }
}

/// The outcome of one phase.
#[derive(Debug, Default)]
pub struct PhaseOutcome {
    pub elapsed: Duration,
    pub by_kind: BTreeMap<OpKind, OpStats>,
    pub error_samples: Vec<String>,
    /// Whether the phase was cut short by Ctrl-C.
    pub interrupted: bool,
}

impl PhaseOutcome {
    pub fn total(&self) -> OpStats {
        let mut t = OpStats::default();
        for s in self.by_kind.values() {
            t.merge(s);
        }
        t
    }
}

/// One operation, chosen before it is timed.
enum Op {
    Put { key: String, size: u64 },
    Get(String),
    Stat(String),
    Delete(String),
    List,
}

impl Op {
    fn kind(&self) -> OpKind {
        match self {
            Op::Put { .. } => OpKind::Put,
            Op::Get(_) => OpKind::Get,
            Op::Stat(_) => OpKind::Stat,
            Op::Delete(_) => OpKind::Delete,
            Op::List => OpKind::List,
        }
    }
}

struct Worker {
    id: usize,
    /// Phase name, part of every key written: a key is never reused
    /// across phases (a mixed pool holding one key twice would GET it
    /// after DELETE).
    phase: String,
    plan: Plan,
    rng: StdRng,
    seq: u64,
    /// Objects this worker knows to exist (put ones; mixed: its pool).
    owned: Vec<String>,
}

impl Worker {
    fn new(id: usize, phase: &str, plan: Plan, concurrency: usize) -> Self {
        let owned = match &plan {
            // Worker i owns every concurrency-th object: no two workers
            // touch the same key, so a GET never races a DELETE.
            Plan::Mixed { keys, .. } => keys
                .iter()
                .skip(id)
                .step_by(concurrency.max(1))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        Worker {
            id,
            phase: phase.to_string(),
            plan,
            rng: StdRng::seed_from_u64(0x7E55_E4A0 ^ id as u64),
            seq: 0,
            owned,
        }
    }

    fn new_key(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{}/w{:03}-{:08}", self.phase, self.id, self.seq)
    }

    /// The next operation; `None` when there is nothing left to do.
    fn next(&mut self, target: &Target) -> Option<Op> {
        let sizes = &target.sizes;
        match &self.plan {
            Plan::Put => {
                let size = sizes.pick(&mut self.rng);
                Some(Op::Put {
                    key: self.new_key(&target.prefix),
                    size,
                })
            }
            Plan::Read { kind, keys } => {
                let key = keys.get(self.rng.gen_range(0..keys.len().max(1)))?.clone();
                Some(if *kind == OpKind::Stat {
                    Op::Stat(key)
                } else {
                    Op::Get(key)
                })
            }
            Plan::List => Some(Op::List),
            Plan::Delete { keys } => {
                let key = keys.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
                Some(Op::Delete(key))
            }
            Plan::Mixed { mix, .. } => {
                let mut kind = mix.pick(&mut self.rng);
                if kind != OpKind::Put && self.owned.is_empty() {
                    kind = OpKind::Put;
                }
                let i = self.rng.gen_range(0..self.owned.len().max(1));
                Some(match kind {
                    OpKind::Get => Op::Get(self.owned[i].clone()),
                    OpKind::Stat => Op::Stat(self.owned[i].clone()),
                    OpKind::Delete => Op::Delete(self.owned.swap_remove(i)),
                    _ => Op::Put {
                        key: self.new_key(&target.prefix),
                        size: sizes.pick(&mut self.rng),
                    },
                })
            }
        }
    }

    /// Keeps track of which objects exist after `op`.
    fn done(&mut self, op: Op, ok: bool) {
        match (op, &self.plan) {
            (Op::Put { key, .. }, _) if ok => self.owned.push(key),
            // A failed delete may have left the object: keep it for cleanup
            // (not retried, and not back in a mixed pool, where a later GET
            // would fail on it).
            (Op::Delete(key), Plan::Delete { .. }) if !ok => self.owned.push(key),
            _ => {}
        }
    }
}

/// Runs one phase and returns what it measured. `live` holds the objects
/// known to exist (put by earlier phases): read and deleted from, and
/// updated with what the phase puts and deletes.
pub async fn run_phase(
    target: &Arc<Target>,
    name: &str,
    workload: &Workload,
    live: &mut Vec<String>,
    stop: Stop,
    shutdown: &CancellationToken,
) -> PhaseOutcome {
    let plan = match workload {
        Workload::Put => Plan::Put,
        Workload::Get => Plan::Read {
            kind: OpKind::Get,
            keys: Arc::new(live.clone()),
        },
        Workload::Stat => Plan::Read {
            kind: OpKind::Stat,
            keys: Arc::new(live.clone()),
        },
        Workload::List => Plan::List,
        Workload::Delete => Plan::Delete {
            keys: Arc::new(Mutex::new(std::mem::take(live))),
        },
        Workload::Mixed(mix) => Plan::Mixed {
            mix: mix.clone(),
            keys: Arc::new(std::mem::take(live)),
        },
    };
    let started = Instant::now();
    let deadline = match stop {
        Stop::After(d) => Some(started + d),
        Stop::Count(_) => None,
    };
    let budget = match stop {
        Stop::Count(n) => Some(n),
        Stop::After(_) => None,
    };
    let claimed = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress::default());
    let stop_progress = CancellationToken::new();
    let printer = std::io::stderr().is_terminal().then(|| {
        tokio::spawn(show_progress(
            name.to_string(),
            progress.clone(),
            stop,
            started,
            stop_progress.clone(),
        ))
    });

    let mut workers = JoinSet::new();
    for id in 0..target.concurrency {
        let target = target.clone();
        let mut worker = Worker::new(id, name, plan.clone(), target.concurrency);
        let claimed = claimed.clone();
        let progress = progress.clone();
        let shutdown = shutdown.clone();
        workers.spawn(async move {
            let mut stats: BTreeMap<OpKind, OpStats> = BTreeMap::new();
            let mut samples = Vec::new();
            let mut interrupted = false;
            loop {
                if let Some(n) = budget {
                    if claimed.fetch_add(1, Ordering::Relaxed) >= n {
                        break;
                    }
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let Some(op) = worker.next(&target) else {
                    break;
                };
                let kind = op.kind();
                let t0 = Instant::now();
                let result = tokio::select! {
                    r = execute(&target, &op) => r,
                    _ = shutdown.cancelled() => {
                        interrupted = true;
                        break;
                    }
                };
                let latency = t0.elapsed();
                let s = stats.entry(kind).or_default();
                let ok = result.is_ok();
                match result {
                    Ok(bytes) => {
                        s.ops += 1;
                        s.bytes += bytes;
                        s.latency.record(latency);
                        progress.ops.fetch_add(1, Ordering::Relaxed);
                        progress.bytes.fetch_add(bytes, Ordering::Relaxed);
                    }
                    Err(e) => {
                        s.errors += 1;
                        progress.errors.fetch_add(1, Ordering::Relaxed);
                        if samples.len() < ERROR_SAMPLES {
                            samples.push(format!("{} {}: {e}", kind.as_str(), op_key(&op)));
                        }
                    }
                }
                worker.done(op, ok);
            }
            (stats, samples, worker.owned, interrupted)
        });
    }

    let mut out = PhaseOutcome::default();
    while let Some(joined) = workers.join_next().await {
        // A worker only panics on a bug; its share is lost, not the run.
        let Ok((stats, samples, owned, interrupted)) = joined else {
            out.error_samples.push("a worker panicked".into());
            continue;
        };
        for (kind, s) in stats {
            out.by_kind.entry(kind).or_default().merge(&s);
        }
        for e in samples {
            if out.error_samples.len() < ERROR_SAMPLES {
                out.error_samples.push(e);
            }
        }
        // Put objects, or a mixed worker's pool at the end.
        live.extend(owned);
        out.interrupted |= interrupted;
    }
    out.elapsed = started.elapsed();
    stop_progress.cancel();
    if let Some(p) = printer {
        let _ = p.await;
    }
    if let Plan::Delete { keys } = plan {
        // Not deleted (the phase ended first, or the delete failed).
        live.extend(keys.lock().unwrap_or_else(|e| e.into_inner()).drain(..));
    }
    out
}

fn op_key(op: &Op) -> &str {
    match op {
        Op::Put { key, .. } | Op::Get(key) | Op::Stat(key) | Op::Delete(key) => key,
        Op::List => "(list)",
    }
}

async fn execute(target: &Target, op: &Op) -> Result<u64, super::client::OpError> {
    let (c, b) = (&target.client, target.bucket.as_str());
    match op {
        Op::Put { key, size } => {
            // The size never exceeds the payload (it is cut to the max).
            let body = target
                .payload
                .slice(..(*size as usize).min(target.payload.len()));
            c.put(b, key, body).await
        }
        Op::Get(key) => c.get(b, key).await,
        Op::Stat(key) => c.stat(b, key).await,
        Op::Delete(key) => c.delete(b, key).await,
        Op::List => c.list(b, &target.prefix, LIST_PAGE).await,
    }
}

#[derive(Debug, Default)]
struct Progress {
    ops: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// A one-line status on stderr (a terminal), rewritten 4 times a second.
async fn show_progress(
    name: String,
    p: Arc<Progress>,
    stop: Stop,
    started: Instant,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.cancelled() => break,
        }
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let ops = p.ops.load(Ordering::Relaxed);
        let mib = p.bytes.load(Ordering::Relaxed) as f64 / (1u64 << 20) as f64;
        let errors = p.errors.load(Ordering::Relaxed);
        let goal = match stop {
            Stop::Count(n) => format!("{ops}/{n} ops"),
            Stop::After(d) => format!("{secs:.0}/{:.0}s, {ops} ops", d.as_secs_f64()),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{name}: {goal}, {:.0} ops/s, {:.1} MiB/s, {errors} errors",
            ops as f64 / secs,
            mib / secs,
        );
        let _ = err.flush();
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K");
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_across_phases_and_workers() {
        let mut seen = std::collections::HashSet::new();
        for phase in ["prepare", "warmup", "mixed"] {
            for id in 0..3 {
                let mut w = Worker::new(id, phase, Plan::Put, 3);
                for _ in 0..5 {
                    assert!(seen.insert(w.new_key("tessera-bench/1/")));
                }
            }
        }
        let mut w = Worker::new(0, "put", Plan::Put, 1);
        assert_eq!(w.new_key("p/"), "p/put/w000-00000001");
    }

    #[test]
    fn mixed_workers_own_disjoint_shares() {
        let keys: Arc<Vec<String>> = Arc::new((0..10).map(|i| format!("k{i}")).collect());
        let mix = Arc::new(Mix::parse("get=1").unwrap());
        let shares: Vec<Vec<String>> = (0..3)
            .map(|id| {
                let plan = Plan::Mixed {
                    mix: mix.clone(),
                    keys: keys.clone(),
                };
                Worker::new(id, "mixed", plan, 3).owned
            })
            .collect();
        assert_eq!(shares.iter().map(Vec::len).sum::<usize>(), 10);
        let mut all: Vec<String> = shares.concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 10);
    }
}
