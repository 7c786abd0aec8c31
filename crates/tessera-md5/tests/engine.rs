//! The engine's digests equal the md-5 crate's, for many concurrent
//! streams of random lengths fed in random pieces, with the best kernel of
//! this CPU and with the scalar one.

use bytes::Bytes;
use md5::{Digest, Md5};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use std::time::Duration;

use tessera_md5::{Engine, EngineStats, Gather, Kernel, Md5State, Pending, Urgency};

/// Lengths next to the block and padding edges (55/56: the length field
/// fits or not; 63/64/65: a block boundary), and a few blocks over.
const EDGES: [usize; 12] = [0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 129];

/// One stream: its bytes and where they are cut into `update` calls.
#[derive(Debug, Clone)]
struct Stream {
    len: usize,
    seed: u64,
    /// Cut points, as fractions of `len` (in 1/65536).
    cuts: Vec<u16>,
}

impl Stream {
    fn bytes(&self) -> Bytes {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let mut v = vec![0u8; self.len];
        rng.fill(&mut v[..]);
        Bytes::from(v)
    }

    fn pieces(&self, data: &Bytes) -> Vec<Bytes> {
        let mut at: Vec<usize> = self
            .cuts
            .iter()
            .map(|&c| (self.len * c as usize) >> 16)
            .collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for to in at.into_iter().chain([self.len]) {
            pieces.push(data.slice(from..to));
            from = to;
        }
        pieces
    }
}

/// A stream cut into many pieces, some shorter than a block and some
/// empty, for jobs of several buffers.
fn chopped_stream() -> impl Strategy<Value = Stream> {
    (stream(), prop::collection::vec(any::<u16>(), 0..24)).prop_map(|(mut s, more)| {
        s.cuts.extend(more);
        // Repeated cuts make empty pieces; cuts close together, pieces
        // shorter than a block.
        if let Some(&c) = s.cuts.first() {
            s.cuts.extend([c, c.saturating_add(1), c.saturating_add(3)]);
        }
        s
    })
}

fn stream() -> impl Strategy<Value = Stream> {
    let len = prop_oneof![
        prop::sample::select(EDGES.to_vec()),
        // Around one 64-byte edge of a longer buffer.
        (1usize..2000, prop::sample::select(EDGES.to_vec())).prop_map(|(b, e)| 64 * b + e),
        0usize..300 << 10,
    ];
    (len, any::<u64>(), prop::collection::vec(any::<u16>(), 0..5))
        .prop_map(|(len, seed, cuts)| Stream { len, seed, cuts })
}

/// Hashes every stream concurrently through `engine`, a piece per job;
/// returns the digests, in order.
fn hash_all(engine: &'static Engine, streams: &[Stream]) -> Vec<[u8; 16]> {
    hash_grouped(engine, streams, 1)
}

/// [`hash_all`], with up to `group` consecutive pieces in one job (a
/// caller handing over what arrived while its last job ran).
fn hash_grouped(engine: &'static Engine, streams: &[Stream], group: usize) -> Vec<[u8; 16]> {
    hash_concurrently(streams, move |pieces, seed| async move {
        let mut state = Md5State::new();
        if group == 1 {
            for p in pieces {
                state = engine.update(state, p).await.unwrap();
            }
            return state.finalize();
        }
        // Jobs of 1..=group pieces, cut by the stream's seed.
        let mut pieces = pieces.into_iter().peekable();
        let mut n = seed as usize;
        while pieces.peek().is_some() {
            let take = 1 + n % group;
            n = n / group + 7;
            let job: Vec<Bytes> = pieces.by_ref().take(take).collect();
            state = engine.submit(state, job).await.unwrap();
        }
        state.finalize()
    })
}

/// Hashes every stream concurrently through `engine` with lazy jobs of
/// one piece, each stream with its own urgency; a stream hurries before
/// awaiting a job only where its seed says so (the others are answered
/// when lanes fill, an eager or hurried job runs, or the wait is over).
fn hash_lazy(engine: &'static Engine, streams: &[Stream]) -> Vec<[u8; 16]> {
    hash_concurrently(streams, move |pieces, seed| async move {
        let urgency = engine.urgency();
        let mut state = Md5State::new();
        for (i, p) in pieces.into_iter().enumerate() {
            let job = engine.submit_lazy(state, vec![p], &urgency);
            if seed >> (i % 64) & 1 == 1 {
                urgency.hurry();
            }
            state = job.await.unwrap();
            urgency.relax();
        }
        state.finalize()
    })
}

/// Runs `hash` on every stream's pieces (and seed) as concurrent tasks of
/// a two-thread runtime; returns the digests, in order.
fn hash_concurrently<F, Fut>(streams: &[Stream], hash: F) -> Vec<[u8; 16]>
where
    F: Fn(Vec<Bytes>, u64) -> Fut,
    Fut: std::future::Future<Output = [u8; 16]> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = streams
            .iter()
            .map(|s| tokio::spawn(hash(s.pieces(&s.bytes()), s.seed)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    })
}

fn expected(streams: &[Stream]) -> Vec<[u8; 16]> {
    streams
        .iter()
        .map(|s| Md5::digest(s.bytes()).into())
        .collect()
}

/// The AVX2 engine where the CPU has AVX2 (the best one may be AVX-512).
fn avx2_engine() -> Option<&'static Engine> {
    static E: std::sync::OnceLock<Option<Engine>> = std::sync::OnceLock::new();
    E.get_or_init(|| Kernel::avx2().map(Engine::with_kernel))
        .as_ref()
}

fn scalar_engine() -> &'static Engine {
    static E: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
    E.get_or_init(|| Engine::with_kernel(Kernel::scalar()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_md5_crate(streams in prop::collection::vec(stream(), 1..20)) {
        prop_assert_eq!(hash_all(Engine::global(), &streams), expected(&streams));
        if let Some(avx2) = avx2_engine() {
            prop_assert_eq!(hash_all(avx2, &streams), expected(&streams));
        }
    }

    #[test]
    fn scalar_engine_matches_md5_crate(streams in prop::collection::vec(stream(), 1..20)) {
        prop_assert_eq!(hash_all(scalar_engine(), &streams), expected(&streams));
    }

    /// Lazy jobs, some hurried and some not, through an engine that
    /// gathers three lanes or waits 5 ms.
    #[test]
    fn lazy_jobs_match_md5_crate(streams in prop::collection::vec(stream(), 1..20)) {
        static E: std::sync::OnceLock<Engine> = std::sync::OnceLock::new();
        let engine = E.get_or_init(|| {
            Engine::with_gather(
                Kernel::detect(),
                Gather { lanes: 3, wait: Duration::from_millis(5) },
            )
        });
        prop_assert_eq!(hash_lazy(engine, &streams), expected(&streams));
    }

    /// Jobs of several buffers: each buffer continues where the one
    /// before it left off, partial blocks included.
    #[test]
    fn jobs_of_several_buffers_match_md5_crate(
        streams in prop::collection::vec(chopped_stream(), 1..20),
        group in 2usize..6,
    ) {
        let want = expected(&streams);
        prop_assert_eq!(hash_grouped(Engine::global(), &streams, group), want.clone());
        prop_assert_eq!(hash_grouped(scalar_engine(), &streams, group), want);
    }
}

/// A job is queued when submitted, not when first polled: the engine
/// hashes it while the caller does other work.
#[test]
fn a_submitted_job_runs_before_it_is_awaited() {
    let engine: &'static Engine = Box::leak(Box::new(Engine::new()));
    let data = Bytes::from(vec![5u8; 1 << 20]);
    let pending = engine.submit(
        Md5State::new(),
        vec![data.slice(..1000), data.slice(1000..)],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // All blocks but the one that straddles the two buffers (completed
    // from the partial block, outside the counted kernel calls).
    while engine.stats().scalar_blocks < (1 << 20) / 64 - 1 {
        assert!(std::time::Instant::now() < deadline, "{:?}", engine.stats());
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let state = rt.block_on(pending).unwrap();
    assert_eq!(state.finalize(), <[u8; 16]>::from(Md5::digest(&data)));
}

/// Sixteen streams queued at once: more jobs than lanes, so lanes are
/// refilled as short jobs finish, and the SIMD kernel runs (where the CPU
/// has one).
#[test]
fn more_jobs_than_lanes_use_simd_and_agree() {
    let engine: &'static Engine = Box::leak(Box::new(Engine::new()));
    let streams: Vec<Stream> = (0..16)
        .map(|i| Stream {
            len: [0, 65, 4096, 100_000, 300 << 10][i % 5] + i,
            seed: i as u64,
            cuts: vec![(i as u16).wrapping_mul(4099)],
        })
        .collect();
    assert_eq!(hash_all(engine, &streams), expected(&streams));
    let stats = engine.stats();
    if engine.kernel().is_simd() {
        assert!(stats.simd_steps > 0, "{stats:?}");
    } else {
        assert_eq!(stats.simd_steps, 0, "{stats:?}");
    }
}

/// One stream alone is hashed with the scalar kernel, not a SIMD step with
/// seven idle lanes.
#[test]
fn a_lone_stream_uses_the_scalar_kernel() {
    let engine: &'static Engine = Box::leak(Box::new(Engine::new()));
    let s = Stream {
        len: 1 << 20,
        seed: 7,
        cuts: vec![],
    };
    assert_eq!(hash_all(engine, std::slice::from_ref(&s)), expected(&[s]));
    let stats = engine.stats();
    assert_eq!(stats.simd_steps, 0, "{stats:?}");
    assert_eq!(stats.scalar_blocks, (1 << 20) / 64, "{stats:?}");
}

/// A caller that gives up does not stop the others.
#[test]
fn a_dropped_caller_does_not_disturb_the_others() {
    let engine: &'static Engine = Box::leak(Box::new(Engine::new()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let big = Bytes::from(vec![7u8; 8 << 20]);
    let small = Bytes::from(vec![9u8; 100_000]);
    let digest = rt.block_on(async {
        let gone = engine.update(Md5State::new(), big);
        // Polled once (queued), then dropped.
        let _ = futures_poll_once(gone).await;
        let s = engine.update(Md5State::new(), small.clone()).await.unwrap();
        s.finalize()
    });
    assert_eq!(digest, <[u8; 16]>::from(Md5::digest(&small)));
}

/// Polls `fut` once and drops it.
async fn futures_poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// A dropped engine's thread exits once its jobs are answered; a new one
/// works independently.
#[test]
fn engines_are_independent() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let data = Bytes::from(vec![1u8; 10_000]);
    for _ in 0..3 {
        let engine = Engine::new();
        let s = rt
            .block_on(engine.update(Md5State::new(), data.clone()))
            .unwrap();
        assert_eq!(s.finalize(), <[u8; 16]>::from(Md5::digest(&data)));
    }
}

/// An engine that gathers `lanes` lanes or waits `wait`, for one test,
/// and its stats once it has seen two jobs at once (it holds lazy jobs
/// back only then): a one-block job admitted while a 64 MiB one (about
/// 100 ms of hashing, more on a loaded machine) is in a lane.
fn gathering_engine(lanes: usize, wait: Duration) -> (&'static Engine, EngineStats) {
    let engine = Box::leak(Box::new(Engine::with_gather(
        Kernel::detect(),
        Gather { lanes, wait },
    )));
    let long = engine.submit(Md5State::new(), vec![Bytes::from(vec![0u8; 64 << 20])]);
    let short = engine.submit(Md5State::new(), vec![Bytes::from(vec![0u8; 64])]);
    let rt = runtime();
    rt.block_on(long).unwrap();
    rt.block_on(short).unwrap();
    (engine, engine.stats())
}

/// `n` equal buffers of 256 KiB, different bytes each.
fn buffers(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(vec![i as u8 + 1; 256 << 10]))
        .collect()
}

fn digests_of(rt: &tokio::runtime::Runtime, jobs: Vec<Pending>) -> Vec<[u8; 16]> {
    rt.block_on(async {
        let mut out = Vec::new();
        for job in jobs {
            let s = tokio::time::timeout(Duration::from_secs(20), job)
                .await
                .expect("a lazy job was never answered")
                .unwrap();
            out.push(s.finalize());
        }
        out
    })
}

/// A lazy job per buffer, each of its own stream; returns the jobs and
/// the streams' urgencies.
fn lazy_jobs(engine: &Engine, data: &[Bytes]) -> (Vec<Pending>, Vec<Urgency>) {
    data.iter()
        .map(|d| {
            let urgency = engine.urgency();
            let job = engine.submit_lazy(Md5State::new(), vec![d.clone()], &urgency);
            (job, urgency)
        })
        .unzip()
}

/// What `engine` hashed since `before`: SIMD steps and scalar blocks.
fn since(engine: &Engine, before: EngineStats) -> (u64, u64) {
    let now = engine.stats();
    (
        now.simd_steps - before.simd_steps,
        now.scalar_blocks - before.scalar_blocks,
    )
}

/// With a SIMD kernel (where lazy jobs are lazy), nothing is hashed for
/// `time`.
fn assert_nothing_hashed_for(engine: &Engine, before: EngineStats, time: Duration) {
    if engine.kernel().is_simd() {
        std::thread::sleep(time);
        assert_eq!(since(engine, before), (0, 0), "hashed before any hurry");
    }
}

/// With a SIMD kernel, the equal buffers of [`buffers`] went through the
/// engine in lockstep: one step per block, no block alone.
fn assert_in_lockstep(engine: &Engine, before: EngineStats) {
    if engine.kernel().is_simd() {
        assert_eq!(since(engine, before), ((256 << 10) / 64, 0));
    }
}

fn md5s(data: &[Bytes]) -> Vec<[u8; 16]> {
    data.iter().map(|d| Md5::digest(d).into()).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Lazy jobs wait for company: nothing is hashed until one is hurried;
/// then the hurried one runs, and the others in the same SIMD steps.
#[test]
fn lazy_jobs_wait_until_hurried_then_run_together() {
    let (engine, before) = gathering_engine(8, Duration::from_secs(60));
    let rt = runtime();
    let data = buffers(3);
    let (jobs, urgencies) = lazy_jobs(engine, &data);
    assert_nothing_hashed_for(engine, before, Duration::from_millis(300));
    urgencies[1].hurry();
    assert_eq!(digests_of(&rt, jobs), md5s(&data));
    assert_in_lockstep(engine, before);
}

/// Once as many lanes as the engine gathers are busy, lazy jobs run
/// without a hurry.
#[test]
fn lazy_jobs_run_once_enough_lanes_are_busy() {
    let (engine, before) = gathering_engine(4, Duration::from_secs(60));
    let rt = runtime();
    let data = buffers(4);
    let (jobs, urgencies) = lazy_jobs(engine, &data);
    assert_eq!(digests_of(&rt, jobs), md5s(&data));
    assert!(urgencies.iter().all(|u| !u.is_hurried()));
    assert_in_lockstep(engine, before);
}

/// Lazy jobs nobody joins or hurries run once their wait is over. (The
/// window is long enough that the company seen while the engine was made
/// is still recent on a loaded machine: with a 100 ms one, a slow warm-up
/// let the first job run alone.)
#[test]
fn lazy_jobs_run_after_their_wait() {
    let (engine, before) = gathering_engine(8, Duration::from_secs(3));
    let rt = runtime();
    let data = buffers(2);
    let (jobs, _urgencies) = lazy_jobs(engine, &data);
    assert_nothing_hashed_for(engine, before, Duration::from_millis(300));
    assert_eq!(digests_of(&rt, jobs), md5s(&data));
    assert_in_lockstep(engine, before);
}

/// Streams one after the other (uploads of one client) are not held
/// back: their jobs run as they come, with no hurry and however long the
/// window.
#[test]
fn streams_one_after_another_are_not_held_back() {
    let engine: &'static Engine = Box::leak(Box::new(Engine::with_gather(
        Kernel::detect(),
        Gather {
            lanes: 8,
            wait: Duration::from_secs(60),
        },
    )));
    let rt = runtime();
    let data = buffers(3);
    let all: Vec<u8> = data.iter().flat_map(|d| d.iter().copied()).collect();
    for _stream in 0..2 {
        let urgency = engine.urgency();
        let mut state = Md5State::new();
        for d in &data {
            let job = engine.submit_lazy(state, vec![d.clone()], &urgency);
            let s = rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(20), job).await })
                .expect("a lone stream's job was held back");
            state = s.unwrap();
        }
        assert!(!urgency.is_hurried());
        assert_eq!(state.finalize(), <[u8; 16]>::from(Md5::digest(&all)));
    }
}

/// An eager job is never held back, and takes the waiting lazy jobs
/// along in its steps.
#[test]
fn an_eager_job_takes_lazy_ones_along() {
    let (engine, before) = gathering_engine(8, Duration::from_secs(60));
    let rt = runtime();
    let data = buffers(3);
    let (mut jobs, _urgencies) = lazy_jobs(engine, &data[..2]);
    assert_nothing_hashed_for(engine, before, Duration::from_millis(100));
    jobs.push(engine.submit(Md5State::new(), vec![data[2].clone()]));
    assert_eq!(digests_of(&rt, jobs), md5s(&data));
    assert_in_lockstep(engine, before);
}
