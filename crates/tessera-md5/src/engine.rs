//! The multi-buffer engine: one dedicated OS thread that hashes the
//! buffers of many callers together, [`LANES`] streams per SIMD step.
//!
//! The design is MinIO's `md5-simd`: callers queue jobs (a state and a
//! buffer); the thread keeps up to [`LANES`] of them in lanes, and each
//! step compresses one block of every active lane. A lane whose buffer has
//! no full block left keeps the rest as its state's partial block, is
//! answered, and is refilled from the queue at once, so short jobs do not
//! wait for long ones. The thread never waits for more jobs while it has
//! work (no added latency when load is light), and a lone job is hashed
//! with the scalar kernel: an AVX2 step costs about one scalar block, so
//! SIMD gains nothing with one lane used, and the scalar loop has no
//! per-step bookkeeping.
//!
//! The thread is not a tokio worker nor on the blocking pool: hashing is
//! pure CPU and must not hold up the executor, and one long-lived thread
//! is what lets jobs from different callers meet in the same step.
//!
//! A job is a list of buffers (a stream's chunks as they arrived, hashed
//! in order), so a caller can hand over whatever it received while its
//! previous job ran, without copying it into one buffer. Callers that hash
//! a stream as it arrives, rather than a whole stripe at the end, are what
//! keeps several lanes busy at once: with a job per finished stripe, the
//! stripes of concurrent writes seldom meet in the queue.
//!
//! ## Gathering lanes
//!
//! An idle engine answers a job at once, but at a few hundred MiB/s of
//! uploads it is idle most of the time, so jobs seldom meet: measured on a
//! gateway under 1 MiB PUTs at concurrency 8, most blocks went through the
//! scalar kernel even with every chunk fed as it arrived. An upload's MD5
//! is needed only when its body has ended, so a caller may submit a job
//! *lazily* ([`Engine::submit_lazy`]): the engine then waits for company
//! before it steps, up to [`Gather::wait`] after the oldest waiting job
//! was queued, and runs as soon as [`Gather::lanes`] lanes are busy, an
//! eager job ([`Engine::submit`]) is among them, or the caller of one
//! needs its answer ([`Urgency::hurry`]). A caller that hurries before it
//! waits never waits for the gathering window; what a lazy job costs is
//! memory, the chunks it holds while it waits. Nothing is gathered while
//! one stream alone uses the engine (a lone upload's MD5 runs while its
//! stripes are written, as before), nor with the scalar kernel (no step
//! hashes more than one lane).
//!
//! The queue is unbounded, but it cannot grow past the number of callers:
//! each caller has at most one job queued ([`Engine::submit`] hands the
//! state back only with the job's answer) and holds its buffers anyway (a
//! `Bytes` is shared, not copied). A caller that goes away (drops its
//! [`Pending`]) has its job skipped, or stopped within a few
//! microseconds.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::{scalar, Kernel, LaneStates, Md5State, LANES};

/// Blocks of a lone job hashed between two looks at the queue: 4 KiB, a
/// few microseconds, the most a job arriving meanwhile waits for a lane.
const SOLO_BLOCKS: usize = 64;

/// Why the engine could not hash a buffer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine's thread could not be started, or died (a bug): the
    /// state given to [`Engine::update`] is lost; hash again elsewhere.
    #[error("the MD5 engine thread is not running")]
    Stopped,
}

/// What an engine has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// SIMD steps (one block of each active lane) run.
    pub simd_steps: u64,
    /// Blocks compressed one at a time (a lone job, or no SIMD).
    pub scalar_blocks: u64,
}

/// [`EngineStats`], shared with the thread.
#[derive(Default)]
struct Counters {
    simd_steps: AtomicU64,
    scalar_blocks: AtomicU64,
}

/// How long and for how many lanes the engine waits for company before
/// it steps lazy jobs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gather {
    /// Busy lanes that make the engine step at once.
    pub lanes: usize,
    /// The longest a lazy job waits for company after it was queued.
    pub wait: Duration,
}

impl Default for Gather {
    /// Every lane, or 50 ms. A gateway hurries an upload's jobs when it
    /// needs the MD5 (its stripes are durable, or too much waits), so
    /// lazy jobs seldom wait the whole window; the window only bounds how
    /// long a job of a stalled upload holds its chunks. Measured on 1 MiB
    /// PUTs at concurrency 8 (gateway CPU per MiB): eager 3.25 ms, 4 lanes
    /// or 2 ms 3.25, 4 lanes or 30 ms 2.60, 8 lanes or 30 ms 2.60, 8 lanes
    /// or 1 s 2.53.
    fn default() -> Self {
        Gather {
            lanes: LANES,
            wait: Duration::from_millis(50),
        }
    }
}

/// Buffers to absorb into a state, in order, and where to send the state
/// after.
struct Job {
    state: Md5State,
    data: Vec<Bytes>,
    reply: oneshot::Sender<Md5State>,
    /// A lazy job's [`Urgency`] flag; `None` for an eager job.
    hurry: Option<Arc<AtomicBool>>,
    /// When the job was queued.
    queued: Instant,
}

impl Job {
    /// Whether the engine should step this job now rather than wait for
    /// company.
    fn urgent(&self) -> bool {
        self.hurry
            .as_ref()
            .is_none_or(|h| h.load(Ordering::Relaxed))
    }
}

/// What callers send the engine's thread.
enum Msg {
    Job(Job),
    /// A caller needs its lazy jobs now: look at the lanes again.
    Hurry,
}

/// Whether the lazy jobs of one caller (one stream) may wait for company:
/// shared by the jobs submitted with it, and by whoever decides when their
/// answers are needed. Starts relaxed.
#[derive(Clone, Debug)]
pub struct Urgency {
    flag: Arc<AtomicBool>,
    /// Wakes the engine's thread (`None`: no thread to wake).
    engine: Option<mpsc::Sender<Msg>>,
}

impl Urgency {
    /// The jobs submitted with this handle, queued or to come, are stepped
    /// without waiting for company (call it before awaiting one).
    pub fn hurry(&self) {
        if !self.flag.swap(true, Ordering::Relaxed) {
            if let Some(engine) = &self.engine {
                // A stopped engine answers the jobs with an error anyway.
                let _ = engine.send(Msg::Hurry);
            }
        }
    }

    /// Jobs submitted with this handle may wait for company again.
    pub fn relax(&self) {
        self.flag.store(false, Ordering::Relaxed);
    }

    /// Whether [`hurry`](Self::hurry) was called since the last
    /// [`relax`](Self::relax).
    pub fn is_hurried(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// Hashes the buffers of many concurrent streams together on one thread.
/// See the module docs.
pub struct Engine {
    /// `None` if the thread could not be started.
    jobs: Option<mpsc::Sender<Msg>>,
    kernel: Kernel,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("kernel", &self.kernel.name())
            .field("running", &self.jobs.is_some())
            .finish()
    }
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl Engine {
    /// The process-wide engine, started on first use with the best
    /// kernel of this CPU. Its thread lives as long as the process.
    pub fn global() -> &'static Engine {
        static GLOBAL: OnceLock<Engine> = OnceLock::new();
        GLOBAL.get_or_init(Engine::new)
    }

    /// A new engine (and thread) with the best kernel of this CPU. The
    /// thread finishes the queued jobs and exits when the engine is
    /// dropped.
    pub fn new() -> Engine {
        Engine::with_kernel(Kernel::detect())
    }

    /// A new engine using `kernel` (tests and benchmarks compare them).
    pub fn with_kernel(kernel: Kernel) -> Engine {
        Engine::with_gather(kernel, Gather::default())
    }

    /// A new engine using `kernel`, gathering lazy jobs as `gather` says.
    pub fn with_gather(kernel: Kernel, gather: Gather) -> Engine {
        let (jobs, queue) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let worker = Worker::new(kernel, gather, counters.clone());
        let thread = std::thread::Builder::new()
            .name("tessera-md5".into())
            .spawn(move || worker.run(queue));
        Engine {
            jobs: thread.ok().map(|_| jobs),
            kernel,
            counters,
        }
    }

    /// What this engine has done so far.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            simd_steps: self.counters.simd_steps.load(Ordering::Relaxed),
            scalar_blocks: self.counters.scalar_blocks.load(Ordering::Relaxed),
        }
    }

    /// The kernel this engine hashes with. With a scalar kernel (no AVX2)
    /// the engine is one thread hashing one stream at a time: spreading
    /// the streams over threads is faster then.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Returns `state` after absorbing `data`, hashed on the engine's
    /// thread together with other callers' buffers. Data that completes
    /// no block is absorbed here instead (not worth a thread hop).
    pub async fn update(&self, state: Md5State, data: Bytes) -> Result<Md5State, EngineError> {
        self.submit(state, vec![data]).await
    }

    /// Queues a job at once (not when first polled): `state` after
    /// absorbing `data`, buffer after buffer. The returned [`Pending`]
    /// answers with the state; dropping it abandons the job. Data that
    /// completes no block is absorbed here instead (not worth a thread
    /// hop), and answered without waiting.
    pub fn submit(&self, state: Md5State, data: Vec<Bytes>) -> Pending {
        self.queue(state, data, None)
    }

    /// A new [`Urgency`] for the lazy jobs of one stream.
    pub fn urgency(&self) -> Urgency {
        Urgency {
            flag: Arc::new(AtomicBool::new(false)),
            engine: self.jobs.clone(),
        }
    }

    /// Like [`submit`](Self::submit), but the engine may hold the job back
    /// for a little while to step it together with others (see the module
    /// docs), unless or until `urgency` is hurried.
    pub fn submit_lazy(&self, state: Md5State, data: Vec<Bytes>, urgency: &Urgency) -> Pending {
        let lazy = self.kernel.is_simd().then(|| urgency.flag.clone());
        self.queue(state, data, lazy)
    }

    fn queue(
        &self,
        mut state: Md5State,
        data: Vec<Bytes>,
        hurry: Option<Arc<AtomicBool>>,
    ) -> Pending {
        let len: usize = data.iter().map(Bytes::len).sum();
        if state.tail_len + len < 64 {
            for d in &data {
                state.update(d);
            }
            return Pending::ready(Ok(state));
        }
        let Some(jobs) = self.jobs.as_ref() else {
            return Pending::ready(Err(EngineError::Stopped));
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            state,
            data,
            reply,
            hurry,
            queued: Instant::now(),
        };
        match jobs.send(Msg::Job(job)) {
            Ok(()) => Pending(PendingKind::Queued(answer)),
            Err(_) => Pending::ready(Err(EngineError::Stopped)),
        }
    }
}

/// The answer to a job queued by [`Engine::submit`]: the state after the
/// job's buffers.
#[derive(Debug)]
pub struct Pending(PendingKind);

impl Pending {
    fn ready(r: Result<Md5State, EngineError>) -> Pending {
        Pending(PendingKind::Ready(Some(r)))
    }
}

#[derive(Debug)]
enum PendingKind {
    /// Answered without the engine's thread (`None` once taken).
    Ready(Option<Result<Md5State, EngineError>>),
    Queued(oneshot::Receiver<Md5State>),
}

impl Future for Pending {
    type Output = Result<Md5State, EngineError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            PendingKind::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(EngineError::Stopped))),
            PendingKind::Queued(answer) => Pin::new(answer)
                .poll(cx)
                .map(|r| r.map_err(|_| EngineError::Stopped)),
        }
    }
}

/// A job in a lane: the full blocks `job.data[chunk][at..end]` are next
/// to be compressed (its compression state is in the worker's
/// `LaneStates`), then the buffers after `chunk`.
struct Lane {
    job: Job,
    chunk: usize,
    at: usize,
    end: usize,
}

/// The engine thread's state.
struct Worker {
    kernel: Kernel,
    gather: Gather,
    counters: Arc<Counters>,
    lanes: [Option<Lane>; LANES],
    /// Lanes in use.
    active: usize,
    states: LaneStates,
    /// When a job was last admitted while another was in a lane: lazy
    /// jobs wait for company only if some came lately.
    company_at: Option<Instant>,
}

impl Worker {
    fn new(kernel: Kernel, gather: Gather, counters: Arc<Counters>) -> Self {
        Worker {
            kernel,
            gather,
            counters,
            lanes: Default::default(),
            active: 0,
            states: LaneStates::default(),
            company_at: None,
        }
    }

    /// Runs until every [`Engine`] handle is gone and the last job is
    /// answered.
    fn run(mut self, queue: mpsc::Receiver<Msg>) {
        let mut open = true;
        loop {
            // Refill free lanes; block on the queue only when idle, or
            // while lazy jobs wait for company.
            while open && self.active < LANES {
                let gathering = self.gathering();
                let waited = gathering.is_some();
                let next = if self.active == 0 {
                    queue.recv().map_err(|_| RecvTimeoutError::Disconnected)
                } else if let Some(until) = gathering {
                    queue.recv_timeout(until.saturating_duration_since(Instant::now()))
                } else {
                    queue.try_recv().map_err(|e| match e {
                        mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                        mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                    })
                };
                match next {
                    Ok(Msg::Job(job)) => self.admit(job),
                    Ok(Msg::Hurry) => {}
                    // A gathering wait ran out: look again (now stepping).
                    Err(RecvTimeoutError::Timeout) if waited => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            match self.active {
                0 if !open => return,
                0 => {}
                n if n >= 2 && self.kernel.is_simd() => self.steps(),
                _ => {
                    for lane in 0..LANES {
                        self.solo(lane);
                    }
                }
            }
        }
    }

    /// Until when the lanes wait for company before they are stepped, or
    /// `None` to step them now: when enough lanes are busy, one holds an
    /// eager or hurried job, or the oldest has waited its time.
    fn gathering(&self) -> Option<Instant> {
        if self.active == 0 || self.active >= self.gather.lanes || !self.kernel.is_simd() {
            return None;
        }
        let mut oldest: Option<Instant> = None;
        for lane in self.lanes.iter().flatten() {
            if lane.job.urgent() {
                return None;
            }
            oldest = Some(oldest.map_or(lane.job.queued, |o| o.min(lane.job.queued)));
        }
        let now = Instant::now();
        // A lone stream (no two jobs in the lanes at once for a whole
        // window) is not held back: nothing would join it, and its caller
        // would wait for the hashing it could have had meanwhile.
        if self.company_at? + self.gather.wait <= now {
            return None;
        }
        let until = oldest? + self.gather.wait;
        (now < until).then_some(until)
    }

    /// Puts `job` in a free lane, or answers it at once if it has no full
    /// block.
    fn admit(&mut self, job: Job) {
        let Some(lane) = self.lanes.iter().position(Option::is_none) else {
            return;
        };
        if job.reply.is_closed() {
            return;
        }
        // Uploads one after the other are no company: only jobs in the
        // lanes at once are (a caller has one job out at a time).
        if self.active > 0 {
            self.company_at = Some(job.queued);
        }
        self.states.set(lane, job.state.state);
        self.lanes[lane] = Some(Lane {
            job,
            chunk: 0,
            at: 0,
            end: 0,
        });
        self.active += 1;
        self.next_blocks(lane, false);
    }

    /// Moves lane `lane` on to the next buffer of its job that has a full
    /// block (keeping the bytes between as the partial block), or answers
    /// the job when none is left. `done_with_current`: the lane has
    /// compressed the full blocks of its current buffer (else it starts at
    /// the job's first buffer).
    fn next_blocks(&mut self, lane: usize, done_with_current: bool) {
        let Some(l) = &mut self.lanes[lane] else {
            return;
        };
        let state = &mut l.job.state;
        state.state = self.states.get(lane);
        if done_with_current {
            state.end(&l.job.data[l.chunk][l.end..]);
            l.chunk += 1;
        }
        while let Some(data) = l.job.data.get(l.chunk) {
            let at = state.begin(data);
            let end = at + (data.len() - at) / 64 * 64;
            if at < end {
                (l.at, l.end) = (at, end);
                self.states.set(lane, state.state);
                return;
            }
            state.end(&data[end..]);
            l.chunk += 1;
        }
        // Every buffer absorbed: answer with the state.
        let Some(Lane { job, .. }) = self.lanes[lane].take() else {
            return;
        };
        self.active -= 1;
        // The caller may have gone meanwhile: nobody to answer then.
        let _ = job.reply.send(job.state);
    }

    /// SIMD steps, each a block of every active lane, until a lane runs
    /// out of blocks or for [`SOLO_BLOCKS`] / 4 steps (a few microseconds,
    /// the most a new job waits for a free lane).
    fn steps(&mut self) {
        const IDLE: [u8; 64] = [0; 64];
        let Worker {
            kernel,
            lanes,
            states,
            ..
        } = self;
        // The blocks left in each lane (none in idle lanes).
        let left: [&[u8]; LANES] = std::array::from_fn(|i| match &lanes[i] {
            Some(l) => &l.job.data[l.chunk][l.at..l.end],
            None => &[],
        });
        let n = left
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| b.len() / 64)
            .min()
            .unwrap_or(0)
            .min(SOLO_BLOCKS / 4);
        for step in 0..n {
            // Active lanes have at least `n` blocks: only idle lanes take
            // the fallback.
            let blocks = left.map(|b| {
                b.get(64 * step..)
                    .and_then(|b| b.first_chunk::<64>())
                    .unwrap_or(&IDLE)
            });
            kernel.compress(states, blocks);
        }
        self.counters
            .simd_steps
            .fetch_add(n as u64, Ordering::Relaxed);
        for lane in 0..LANES {
            self.advance(lane, n);
        }
    }

    /// Up to [`SOLO_BLOCKS`] blocks of lane `lane`, with the scalar kernel.
    fn solo(&mut self, lane: usize) {
        let Some(l) = &self.lanes[lane] else { return };
        let n = ((l.end - l.at) / 64).min(SOLO_BLOCKS);
        let mut state = self.states.get(lane);
        scalar::compress_blocks(&mut state, &l.job.data[l.chunk][l.at..l.at + 64 * n]);
        self.states.set(lane, state);
        self.counters
            .scalar_blocks
            .fetch_add(n as u64, Ordering::Relaxed);
        self.advance(lane, n);
    }

    /// Notes that `blocks` blocks of lane `lane` are compressed; moves on
    /// to its next buffer, or answers the job, if its buffer has none
    /// left; drops it if its caller has gone.
    fn advance(&mut self, lane: usize, blocks: usize) {
        let Some(l) = &mut self.lanes[lane] else {
            return;
        };
        l.at += 64 * blocks;
        if l.job.reply.is_closed() {
            self.lanes[lane] = None;
            self.active -= 1;
        } else if l.at == l.end {
            self.next_blocks(lane, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_with(jobs: mpsc::Sender<Msg>) -> Engine {
        Engine {
            jobs: Some(jobs),
            kernel: Kernel::scalar(),
            counters: Arc::default(),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_dead_thread_is_an_error_not_a_hang() {
        let data = Bytes::from(vec![3u8; 1000]);

        // The thread is gone before the job is sent.
        let (jobs, queue) = mpsc::channel();
        drop(queue);
        let engine = engine_with(jobs);
        let r = block_on(engine.update(Md5State::new(), data.clone()));
        assert!(matches!(r, Err(EngineError::Stopped)), "{r:?}");

        // The thread dies holding the job.
        let (jobs, queue) = mpsc::channel::<Msg>();
        let thread = std::thread::spawn(move || {
            let _job = queue.recv();
            panic!("the engine thread dies");
        });
        let engine = engine_with(jobs);
        let r = block_on(engine.update(Md5State::new(), data.clone()));
        assert!(matches!(r, Err(EngineError::Stopped)), "{r:?}");
        assert!(thread.join().is_err());

        // Never started.
        let engine = Engine {
            jobs: None,
            kernel: Kernel::scalar(),
            counters: Arc::default(),
        };
        let r = block_on(engine.update(Md5State::new(), data));
        assert!(matches!(r, Err(EngineError::Stopped)), "{r:?}");
    }

    #[test]
    fn short_updates_stay_on_the_callers_thread() {
        let (jobs, _queue) = mpsc::channel();
        let engine = engine_with(jobs);
        // 63 bytes complete no block: answered without the (absent) thread.
        let s = block_on(engine.update(Md5State::new(), Bytes::from(vec![1u8; 63]))).unwrap();
        assert_eq!(s.len(), 63);
    }
}
