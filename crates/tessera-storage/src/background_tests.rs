//! Tests of the scrubber, the orphan scan and full-disk behaviour: the
//! workers against a fake [`NodeMeta`] that records what it is told, and
//! the wiring in `serve` against a fake meta service over real gRPC.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tessera_proto::meta::meta_server::{Meta, MetaServer};
use tessera_proto::meta::{
    Envelope, HeartbeatRequest, HeartbeatResponse, RaftStatusRequest, RaftStatusResponse,
};
use tessera_proto::storage::storage_server::StorageServer;
use tessera_proto::{ClusterSecret, RpcError, StoragePool};
use tessera_types::meta::{MetaCommand, MetaQuery, MetaReply, QueryReply};
use tessera_types::repair::{ProblemKind, ShardLiveness, ShardProblem};
use tessera_types::{ClusterMap, NodeId, NodeInfo, NodeState, StripeId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::error::ShardKey;
use crate::meta_api::NodeMeta;
use crate::metrics::StorageMetrics;
use crate::orphans::{OrphanScan, BATCH};
use crate::scrub::Scrubber;
use crate::store::{file_len, format_1_file, DATA_OFFSET, HEADER_LEN};
use crate::throttle::Rate;
use crate::{serve, ShardStore, StorageConfig, StorageError, StorageService, StoreOptions};

// ---------------------------------------------------------------- helpers

fn random_bytes(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    blake3::Hasher::new()
        .update(&StripeId::random().0)
        .finalize_xof()
        .fill(&mut v);
    Bytes::from(v)
}

fn hash(b: &[u8]) -> [u8; 32] {
    *blake3::hash(b).as_bytes()
}

async fn open_store(dir: &Path, capacity_bytes: Option<u64>) -> Arc<ShardStore> {
    ShardStore::open(
        vec![dir.to_path_buf()],
        StoreOptions {
            max_shard_bytes: 64 << 20,
            read_buffer_bytes: 256 << 20,
            capacity_bytes,
        },
    )
    .await
    .unwrap()
}

async fn put(store: &Arc<ShardStore>, key: ShardKey, data: &Bytes) -> Result<(), StorageError> {
    let mut w = store.begin_put(key, data.len() as u64, hash(data)).await?;
    for frame in data.chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(frame)).await?;
    }
    w.finish().await
}

/// Stores `n` random shards of `len` bytes.
async fn put_many(store: &Arc<ShardStore>, n: usize, len: usize) -> Vec<(ShardKey, Bytes)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let key = ShardKey {
            stripe: StripeId::random(),
            index: 0,
        };
        let data = random_bytes(len);
        put(store, key, &data).await.unwrap();
        out.push((key, data));
    }
    out
}

fn shard_path(dir: &Path, key: ShardKey) -> PathBuf {
    let hex = key.stripe.to_hex();
    dir.join("shards")
        .join(&hex[0..2])
        .join(format!("{hex}.{}", key.index))
}

fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

fn set_age(path: &Path, age: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_in(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `p` names a temp file of a write in progress (or left behind).
pub(crate) fn is_temp_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".tmp."))
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files_in(dir)
        .into_iter()
        .filter(|p| is_temp_file(p))
        .collect()
}

type QueryHook = Box<dyn FnMut() + Send>;

/// A [`NodeMeta`] that records reports and answers liveness from a set;
/// either call can be made to fail.
#[derive(Clone, Default)]
struct FakeNodeMeta {
    reports: Arc<Mutex<Vec<Vec<ShardProblem>>>>,
    live: Arc<Mutex<HashSet<(StripeId, u8)>>>,
    asked: Arc<Mutex<Vec<usize>>>,
    fail_reports: Arc<Mutex<bool>>,
    /// Liveness queries answered before every later one fails.
    answer_first: Arc<Mutex<Option<usize>>>,
    unknown_node: Arc<Mutex<bool>>,
    /// Runs inside a liveness query, before it answers.
    on_query: Arc<Mutex<Option<QueryHook>>>,
}

impl FakeNodeMeta {
    fn reported(&self) -> Vec<ShardProblem> {
        self.reports.lock().unwrap().concat()
    }
}

impl NodeMeta for FakeNodeMeta {
    async fn report_shards(&self, problems: Vec<ShardProblem>) -> Result<(), StorageError> {
        if *self.fail_reports.lock().unwrap() {
            return Err(StorageError::Meta(RpcError::Unreachable {
                addr: "fake".into(),
                message: "down".into(),
            }));
        }
        self.reports.lock().unwrap().push(problems);
        Ok(())
    }

    async fn shards_live(
        &self,
        _node: NodeId,
        shards: Vec<ShardLiveness>,
    ) -> Result<Vec<bool>, StorageError> {
        let n = {
            let mut asked = self.asked.lock().unwrap();
            asked.push(shards.len());
            asked.len()
        };
        if self.answer_first.lock().unwrap().is_some_and(|k| n > k) {
            return Err(StorageError::Meta(RpcError::Timeout {
                addr: "fake".into(),
            }));
        }
        if let Some(f) = self.on_query.lock().unwrap().as_mut() {
            f();
        }
        let live = self.live.lock().unwrap();
        Ok(shards
            .iter()
            .map(|s| live.contains(&(s.stripe, s.index)))
            .collect())
    }

    async fn knows_node(&self, _node: NodeId) -> Result<bool, StorageError> {
        Ok(!*self.unknown_node.lock().unwrap())
    }

    async fn node_shards(
        &self,
        _node: NodeId,
        after: Option<ShardLiveness>,
        max: u32,
    ) -> Result<Vec<ShardLiveness>, StorageError> {
        let mut all: Vec<(StripeId, u8)> = self.live.lock().unwrap().iter().copied().collect();
        all.sort();
        Ok(all
            .into_iter()
            .filter(|k| after.as_ref().is_none_or(|a| *k > (a.stripe, a.index)))
            .take(max as usize)
            .map(|(stripe, index)| ShardLiveness { stripe, index })
            .collect())
    }
}

fn scrubber(
    store: &Arc<ShardStore>,
    meta: &FakeNodeMeta,
    rate: u64,
) -> (Scrubber<FakeNodeMeta>, Arc<StorageMetrics>) {
    let metrics = Arc::new(StorageMetrics::default());
    let s = Scrubber::new(
        store.clone(),
        Some(meta.clone()),
        Duration::from_secs(3600),
        Rate::new(rate),
        metrics.clone(),
    );
    (s, metrics)
}

const FAST: u64 = 1 << 40;

// ---------------------------------------------------------------- scrubber

#[tokio::test]
async fn scrubber_finds_a_flipped_byte_quarantines_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    let shards = put_many(&store, 6, 100_000).await;
    let (flipped, _) = shards[1];
    let (truncated, _) = shards[2];
    let (bad_header, _) = shards[3];
    flip_byte(
        &shard_path(dir.path(), flipped),
        DATA_OFFSET as u64 + 77_777,
    );
    let f = std::fs::File::options()
        .write(true)
        .open(shard_path(dir.path(), truncated))
        .unwrap();
    f.set_len(DATA_OFFSET as u64 + 50_000).unwrap();
    drop(f);
    flip_byte(&shard_path(dir.path(), bad_header), 1);

    let meta = FakeNodeMeta::default();
    let (mut s, metrics) = scrubber(&store, &meta, FAST);
    let shutdown = CancellationToken::new();
    let summary = s.pass(&shutdown).await.unwrap();
    assert_eq!(summary.shards, 6);
    assert_eq!(summary.corrupt, 3);
    assert_eq!(summary.errors, 0);

    // Reported once each, as corrupt, from this node.
    let mut reported: Vec<(StripeId, u8)> = meta
        .reported()
        .iter()
        .map(|p| {
            assert_eq!(p.kind, ProblemKind::Corrupt);
            assert_eq!(&p.node, store.node_id());
            (p.stripe, p.index)
        })
        .collect();
    reported.sort();
    let mut expected: Vec<(StripeId, u8)> = [flipped, truncated, bad_header]
        .iter()
        .map(|k| (k.stripe, k.index))
        .collect();
    expected.sort();
    assert_eq!(reported, expected);

    // Quarantined: gone from the shard tree, kept under quarantine/, and
    // they read as missing; the good shards still read back.
    assert_eq!(files_in(&dir.path().join("quarantine")).len(), 3);
    for k in [flipped, truncated, bad_header] {
        assert!(!shard_path(dir.path(), k).exists());
        assert!(matches!(
            store.get(k, None).await,
            Err(StorageError::NotFound { .. })
        ));
    }
    for (k, data) in [&shards[0], &shards[4], &shards[5]] {
        assert_eq!(&store.get(*k, None).await.unwrap().bytes, data);
    }
    assert_eq!(store.shard_count(), 3);

    let bg = metrics.background();
    assert_eq!(bg.scrub_passes, 1);
    assert_eq!(bg.scrub_corrupt, 3);
    assert_eq!(bg.scrub_shards, 6);
    assert_eq!(bg.scrub_progress_permille, 1000);
    assert!(bg.scrub_bytes >= 3 * 100_000);
    let text = metrics.registry.render();
    for name in [
        "tessera_storage_scrub_bytes_total",
        "tessera_storage_scrub_shards_total",
        "tessera_storage_scrub_corrupt_total 3",
        "tessera_storage_scrub_passes_total 1",
        "tessera_storage_scrub_last_pass_seconds",
        "tessera_storage_scrub_pass_progress_ratio 1",
        "tessera_storage_orphans_deleted_total 0",
        "tessera_storage_orphan_scan_last_timestamp_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }

    // The next pass finds nothing new to report.
    let again = s.pass(&shutdown).await.unwrap();
    assert_eq!((again.shards, again.corrupt), (3, 0));
    assert_eq!(meta.reported().len(), 3);
}

#[tokio::test]
async fn scrub_reports_are_kept_and_retried_while_meta_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    let shards = put_many(&store, 3, 4096).await;
    flip_byte(&shard_path(dir.path(), shards[0].0), DATA_OFFSET as u64);

    let meta = FakeNodeMeta::default();
    *meta.fail_reports.lock().unwrap() = true;
    let (mut s, _) = scrubber(&store, &meta, FAST);
    let shutdown = CancellationToken::new();
    assert_eq!(s.pass(&shutdown).await.unwrap().corrupt, 1);
    assert!(meta.reported().is_empty());
    assert_eq!(s.pending_reports(), 1);

    // Meta is back: the next pass sends what the first one found, once.
    *meta.fail_reports.lock().unwrap() = false;
    assert_eq!(s.pass(&shutdown).await.unwrap().corrupt, 0);
    assert_eq!(s.pending_reports(), 0);
    let reported = meta.reported();
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].stripe, shards[0].0.stripe);
}

#[tokio::test]
async fn a_report_lost_in_a_crash_is_sent_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    let shards = put_many(&store, 2, 4096).await;
    flip_byte(&shard_path(dir.path(), shards[1].0), DATA_OFFSET as u64 + 9);
    let quarantined = || files_in(&dir.path().join("quarantine"));

    // Meta is away, and the node dies before it could report.
    let meta = FakeNodeMeta::default();
    *meta.fail_reports.lock().unwrap() = true;
    let (mut s, _) = scrubber(&store, &meta, FAST);
    assert_eq!(s.pass(&CancellationToken::new()).await.unwrap().corrupt, 1);
    drop(s);
    let q = quarantined();
    assert_eq!(q.len(), 1);
    assert!(q[0].to_string_lossy().ends_with(".unreported"), "{q:?}");

    // The restarted scrubber reports it before anything else, once.
    *meta.fail_reports.lock().unwrap() = false;
    let (s, _) = scrubber(&store, &meta, FAST);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(s.run(shutdown.clone()));
    for _ in 0..100 {
        if !meta.reported().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.unwrap();
    let reported = meta.reported();
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].stripe, shards[1].0.stripe);
    let q = quarantined();
    assert_eq!(q.len(), 1);
    assert!(!q[0].to_string_lossy().ends_with(".unreported"), "{q:?}");

    // Reported files are not reported again.
    let (mut s, _) = scrubber(&store, &meta, FAST);
    s.load_unreported().await;
    assert_eq!(s.pending_reports(), 0);
}

/// Shard files of format 1 (the shard bytes right after the header) are
/// checked as well as those of format 2, and a bad one is found.
#[tokio::test]
async fn scrubber_checks_version_1_files_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    put_many(&store, 2, 70_000).await;
    let mut v1 = Vec::new();
    for _ in 0..3 {
        let key = ShardKey {
            stripe: StripeId::random(),
            index: 1,
        };
        let data = random_bytes(90_000);
        std::fs::write(shard_path(dir.path(), key), format_1_file(&data)).unwrap();
        v1.push(key);
    }
    flip_byte(&shard_path(dir.path(), v1[1]), HEADER_LEN as u64 + 89_999);
    // One block short, as a format 2 file of that length would not be.
    let f = std::fs::File::options()
        .write(true)
        .open(shard_path(dir.path(), v1[2]))
        .unwrap();
    f.set_len(HEADER_LEN as u64 + 90_000 - 4096).unwrap();
    drop(f);

    let meta = FakeNodeMeta::default();
    let (mut s, _) = scrubber(&store, &meta, FAST);
    let summary = s.pass(&CancellationToken::new()).await.unwrap();
    assert_eq!((summary.shards, summary.corrupt, summary.errors), (5, 2, 0));
    let mut reported: Vec<StripeId> = meta.reported().iter().map(|p| p.stripe).collect();
    reported.sort();
    let mut expected = vec![v1[1].stripe, v1[2].stripe];
    expected.sort();
    assert_eq!(reported, expected);
    assert!(shard_path(dir.path(), v1[0]).exists());
}

#[tokio::test]
async fn scrubber_keeps_to_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    // 4 MiB in shards of various sizes, at 2 MiB/s: about 2 s.
    let mut total = 0u64;
    for len in [1 << 20, 1 << 20, 512 << 10, 512 << 10, 256 << 10, 768 << 10] {
        put_many(&store, 1, len).await;
        // What the scrubber reads: the header and the shard bytes.
        total += (HEADER_LEN + len) as u64;
    }
    let rate = 2u64 << 20;
    let meta = FakeNodeMeta::default();
    let (mut s, _) = scrubber(&store, &meta, rate);
    let start = std::time::Instant::now();
    let summary = s.pass(&CancellationToken::new()).await.unwrap();
    let took = start.elapsed();
    assert_eq!(summary.bytes, total);
    let measured = total as f64 / took.as_secs_f64();
    eprintln!(
        "scrubbed {total} bytes in {took:?}: {:.2} MiB/s (limit {:.2} MiB/s)",
        measured / (1 << 20) as f64,
        rate as f64 / (1 << 20) as f64
    );
    // Never faster than the rate (give or take the 50 ms burst credit);
    // no upper bound on time: a loaded machine may be slower.
    assert!(
        took.as_secs_f64() >= total as f64 / rate as f64 - 0.1,
        "{took:?} for {total} bytes at {rate} B/s"
    );
}

#[tokio::test]
async fn scrubber_skips_files_deleted_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    // One large corrupt shard that will be deleted while it is hashed
    // (its stripe id puts it in the first sub-directory the scrubber
    // walks), and many small good ones after it, some deleted before the
    // scrubber gets to them.
    let mut stripe = StripeId::random();
    stripe.0[0] = 0;
    let big = ShardKey { stripe, index: 0 };
    put(&store, big, &random_bytes(3 << 20)).await.unwrap();
    flip_byte(&shard_path(dir.path(), big), DATA_OFFSET as u64 + (2 << 20));
    let mut small = Vec::new();
    while small.len() < 60 {
        let (k, d) = put_many(&store, 1, 16 << 10).await.remove(0);
        if k.stripe.0[0] == 0 {
            store.delete(k).await.unwrap();
        } else {
            small.push((k, d));
        }
    }

    let meta = FakeNodeMeta::default();
    let (mut s, _) = scrubber(&store, &meta, 1 << 20);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(async move {
        let r = s.pass(&shutdown).await;
        (r, s)
    });
    // 4 MiB at 1 MiB/s: the pass is still running after 400 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.delete(big).await.unwrap());
    for (k, _) in &small[..40] {
        store.delete(*k).await.unwrap();
    }
    let (summary, s) = task.await.unwrap();
    let summary = summary.unwrap();
    eprintln!("{summary:?}");
    // Nothing deleted is reported or quarantined, and nothing fails.
    assert_eq!(summary.corrupt, 0);
    assert_eq!(summary.errors, 0);
    assert_eq!(summary.vanished, 1, "{summary:?}");
    assert_eq!(summary.shards, 20, "{summary:?}");
    assert!(meta.reported().is_empty());
    assert_eq!(s.pending_reports(), 0);
    assert!(files_in(&dir.path().join("quarantine")).is_empty());
    for (k, data) in &small[40..] {
        assert_eq!(&store.get(*k, None).await.unwrap().bytes, data);
    }
}

#[tokio::test]
async fn scrubber_stops_promptly_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    put_many(&store, 2, 1 << 20).await;
    let meta = FakeNodeMeta::default();
    let (s, _) = scrubber(&store, &meta, 64 << 10);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(s.run(shutdown.clone()));
    // The first pass starts at once (period of an hour, first pass after
    // 30 s at most)... so cancel both while waiting and while pacing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("scrubber stops within 2 s")
        .unwrap();

    let (mut s, _) = scrubber(&store, &meta, 64 << 10);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move { s.pass(&stop).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    let r = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("a pass stops within 2 s")
        .unwrap();
    assert!(r.is_none(), "a cancelled pass reports no summary");
}

#[tokio::test]
async fn a_restarted_scrubber_resumes_its_pass_and_keeps_its_period() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    let total = 40;
    put_many(&store, total, 64 << 10).await;
    let meta = FakeNodeMeta::default();
    let state = || crate::scrub::ScrubState::load(dir.path());

    // A first run is stopped part-way through its pass.
    let (s, m1) = scrubber(&store, &meta, 512 << 10);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(s.first_pass_after(Duration::ZERO).run(shutdown.clone()));
    // (2.5 MiB at 512 KiB/s: 5 s; the position is saved every second.)
    while m1.background().scrub_shards < 24 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.unwrap();
    let stopped = state().expect("position saved");
    assert!(
        stopped.next_unit > 0 && stopped.next_unit < 256,
        "{stopped:?}"
    );
    let done_before = m1.background().scrub_shards;

    // The next run finishes that pass without starting over.
    let (s, m2) = scrubber(&store, &meta, FAST);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(s.first_pass_after(Duration::ZERO).run(shutdown.clone()));
    while m2.background().scrub_passes < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.unwrap();
    let resumed = m2.background().scrub_shards;
    assert!(
        resumed < total as u64 && resumed + done_before >= total as u64,
        "resumed pass checked {resumed}, first run {done_before}, of {total}"
    );
    let complete = state().unwrap();
    assert_eq!(complete.next_unit, 256);
    assert_eq!(complete.started_ms, stopped.started_ms);

    // After a complete pass, a restart waits out the period (an hour
    // here) instead of scrubbing again at once.
    let (s, m3) = scrubber(&store, &meta, FAST);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(s.first_pass_after(Duration::ZERO).run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(m3.background().scrub_shards, 0);
    shutdown.cancel();
    task.await.unwrap();
}

// ---------------------------------------------------------------- orphans

fn orphan_scan(store: &Arc<ShardStore>, meta: &FakeNodeMeta) -> OrphanScan<FakeNodeMeta> {
    OrphanScan::new(
        store.clone(),
        meta.clone(),
        Duration::from_secs(3600),
        Duration::from_secs(3600),
        Arc::new(StorageMetrics::default()),
    )
}

const OLD: Duration = Duration::from_secs(2 * 3600);

#[tokio::test]
async fn orphan_scan_deletes_only_old_shards_meta_does_not_place_here() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    let shards = put_many(&store, 4, 1000).await;
    let [(old_live, _), (old_orphan, _), (young_orphan, _), (young_live, _)] = [
        shards[0].clone(),
        shards[1].clone(),
        shards[2].clone(),
        shards[3].clone(),
    ];
    set_age(&shard_path(dir.path(), old_live), OLD);
    set_age(&shard_path(dir.path(), old_orphan), OLD);
    let meta = FakeNodeMeta::default();
    meta.live.lock().unwrap().extend([
        (old_live.stripe, old_live.index),
        (young_live.stripe, young_live.index),
    ]);
    let mut scan = orphan_scan(&store, &meta);
    // The first sighting only makes it a suspect.
    let summary = scan.scan().await.unwrap();
    assert_eq!(summary.checked, 2, "only old shards are asked about");
    assert_eq!((summary.suspected, summary.deleted), (1, 0));
    assert!(shard_path(dir.path(), old_orphan).exists());
    // The second deletes it.
    let summary = scan.scan().await.unwrap();
    assert_eq!((summary.suspected, summary.deleted), (0, 1));
    assert!(!shard_path(dir.path(), old_orphan).exists());
    for k in [old_live, young_orphan, young_live] {
        assert!(shard_path(dir.path(), k).exists(), "{k} deleted");
    }
    assert_eq!(store.shard_count(), 3);
}

/// Writes `n` shard files straight into the layout (contents do not
/// matter to the orphan scan), aged `age`.
fn plant(dir: &Path, n: usize, age: Duration) -> Vec<ShardKey> {
    (0..n)
        .map(|i| {
            let key = ShardKey {
                stripe: StripeId::random(),
                index: (i % 6) as u8,
            };
            let p = shard_path(dir, key);
            std::fs::write(&p, b"x").unwrap();
            set_age(&p, age);
            key
        })
        .collect()
}

#[tokio::test]
async fn orphan_scan_asks_in_batches_and_keeps_live_shards() {
    let dir = tempfile::tempdir().unwrap();
    // Planted before the store opens, so its counters include them.
    std::fs::create_dir_all(dir.path()).unwrap();
    let first = open_store(dir.path(), None).await;
    drop(first);
    let keys = plant(dir.path(), 2 * BATCH + 345, OLD);
    let store = open_store(dir.path(), None).await;
    let meta = FakeNodeMeta::default();
    let live: Vec<ShardKey> = keys.iter().step_by(3).copied().collect();
    meta.live
        .lock()
        .unwrap()
        .extend(live.iter().map(|k| (k.stripe, k.index)));
    let mut scan = orphan_scan(&store, &meta);
    let first = scan.scan().await.unwrap();
    assert_eq!(*meta.asked.lock().unwrap(), vec![BATCH, BATCH, 345]);
    assert_eq!(first.checked, keys.len() as u64);
    assert_eq!(first.suspected, (keys.len() - live.len()) as u64);
    assert_eq!(first.deleted, 0);
    let summary = scan.scan().await.unwrap();
    assert_eq!(summary.checked, keys.len() as u64);
    assert_eq!(summary.deleted, (keys.len() - live.len()) as u64);
    let left: HashSet<PathBuf> = files_in(&dir.path().join("shards")).into_iter().collect();
    let expected: HashSet<PathBuf> = live.iter().map(|k| shard_path(dir.path(), *k)).collect();
    assert_eq!(left, expected);
    assert_eq!(store.shard_count(), live.len() as u64);
}

#[tokio::test]
async fn orphan_scan_deletes_nothing_meta_did_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_store(dir.path(), None).await);
    let keys = plant(dir.path(), BATCH + 10, OLD);
    let store = open_store(dir.path(), None).await;

    // Every shard is a suspect after a first scan.
    let meta = FakeNodeMeta::default();
    let mut scan = orphan_scan(&store, &meta);
    assert_eq!(scan.scan().await.unwrap().suspected, keys.len() as u64);
    assert_eq!(meta.asked.lock().unwrap().len(), 2);

    // Meta unreachable: nothing deleted.
    *meta.answer_first.lock().unwrap() = Some(2);
    assert!(scan.scan().await.is_err());
    assert_eq!(files_in(&dir.path().join("shards")).len(), keys.len());

    // Meta does not know this node (it would say "not live" to all).
    *meta.unknown_node.lock().unwrap() = true;
    *meta.answer_first.lock().unwrap() = None;
    let asked = meta.asked.lock().unwrap().len();
    assert!(scan.scan().await.is_err());
    assert_eq!(meta.asked.lock().unwrap().len(), asked);
    assert_eq!(files_in(&dir.path().join("shards")).len(), keys.len());

    // Meta answers the first batch, then fails: only that batch's shards
    // go.
    *meta.unknown_node.lock().unwrap() = false;
    *meta.answer_first.lock().unwrap() = Some(asked + 1);
    assert!(scan.scan().await.is_err());
    assert_eq!(files_in(&dir.path().join("shards")).len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_scan_spares_a_shard_written_again_after_meta_answered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    let (key, data) = put_many(&store, 1, 5000).await.remove(0);
    set_age(&shard_path(dir.path(), key), OLD);
    let meta = FakeNodeMeta::default();
    let mut scan = orphan_scan(&store, &meta);
    assert_eq!(scan.scan().await.unwrap().suspected, 1);
    // Just as meta answers "not live" again, a repair writes the same shard
    // back here (an idempotent put of identical bytes) and commits it.
    let (s, d) = (store.clone(), data.clone());
    let handle = tokio::runtime::Handle::current();
    *meta.on_query.lock().unwrap() = Some(Box::new(move || {
        tokio::task::block_in_place(|| handle.block_on(put(&s, key, &d)).unwrap())
    }));
    let summary = scan.scan().await.unwrap();
    assert_eq!(
        (summary.checked, summary.deleted, summary.kept_young),
        (1, 0, 1)
    );
    assert_eq!(store.get(key, None).await.unwrap().bytes, data);
}

// ---------------------------------------------------------------- full disk

/// A storage service over `store` on 127.0.0.1:0 (no auth layer: the
/// test talks to it with an unsigned client).
async fn serve_store(store: Arc<ShardStore>) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StorageServer::new(StorageService::new(store, "z1".into())))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { s.cancelled().await },
            ),
    );
    (addr, stop)
}

#[tokio::test]
async fn full_disk_mid_write_is_resource_exhausted_and_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    let (addr, stop) = serve_store(store.clone()).await;
    let pool = StoragePool::new();
    let kept = random_bytes(200_000);
    let kept_stripe = StripeId::random();
    pool.put_shard(&addr, kept_stripe, 0, kept.clone(), hash(&kept))
        .await
        .unwrap();
    let before = (store.shard_count(), store.shard_bytes());

    // The disk fills up 1.5 MiB into a 3 MiB shard (several frames in),
    // and then right at the header.
    for room in [3 << 19, 0] {
        store.faults.disk_full_after(room);
        let data = random_bytes(3 << 20);
        let err = pool
            .put_shard(&addr, StripeId::random(), 1, data.clone(), hash(&data))
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::NoSpace(_)), "{err:?}");
        assert!(temp_files(dir.path()).is_empty(), "temp file left behind");
        assert_eq!((store.shard_count(), store.shard_bytes()), before);
        assert_eq!(files_in(&dir.path().join("shards")).len(), 1);
        let got = pool.get_shard(&addr, kept_stripe, 0, None).await.unwrap();
        assert_eq!(got, kept);
    }

    // Space again: writes work.
    store.faults.clear();
    let data = random_bytes(3 << 20);
    pool.put_shard(&addr, StripeId::random(), 1, data.clone(), hash(&data))
        .await
        .unwrap();
    stop.cancel();
}

#[tokio::test]
async fn capacity_limit_refuses_writes_as_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let shard = 100_000u64;
    let limit = 3 * file_len(shard) + 10;
    let store = open_store(dir.path(), Some(limit)).await;
    let (addr, stop) = serve_store(store.clone()).await;
    let pool = StoragePool::new();
    let mut stored = Vec::new();
    for _ in 0..3 {
        let data = random_bytes(shard as usize);
        let stripe = StripeId::random();
        pool.put_shard(&addr, stripe, 0, data.clone(), hash(&data))
            .await
            .unwrap();
        stored.push((stripe, data));
    }
    let data = random_bytes(shard as usize);
    let err = pool
        .put_shard(&addr, StripeId::random(), 0, data.clone(), hash(&data))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::NoSpace(_)), "{err:?}");
    assert!(temp_files(dir.path()).is_empty());
    for (stripe, d) in &stored {
        assert_eq!(&pool.get_shard(&addr, *stripe, 0, None).await.unwrap(), d);
    }
    // The node reports the limit as its capacity.
    let info = pool.node_info(&addr).await.unwrap();
    assert_eq!(info.capacity_bytes, limit);
    assert_eq!(info.used_bytes, 3 * file_len(shard));

    // Freeing a shard makes room for exactly one more.
    pool.delete_shard(&addr, stored[0].0, 0).await.unwrap();
    pool.put_shard(&addr, StripeId::random(), 0, data.clone(), hash(&data))
        .await
        .unwrap();
    let err = pool
        .put_shard(&addr, StripeId::random(), 0, data.clone(), hash(&data))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::NoSpace(_)), "{err:?}");
    stop.cancel();
}

#[tokio::test]
async fn concurrent_writes_never_overshoot_the_capacity_limit() {
    let dir = tempfile::tempdir().unwrap();
    let shard = 50_000u64;
    let limit = 5 * file_len(shard);
    let store = open_store(dir.path(), Some(limit)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = ShardKey {
                stripe: StripeId::random(),
                index: 0,
            };
            put(&store, key, &random_bytes(shard as usize)).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StorageError::NoSpace(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    // At most the limit. A write that finished is counted in the used
    // bytes a moment before its reservation goes (counted twice, never
    // missed), so a concurrent write may be refused while one more would
    // just fit: fewer than five can succeed in the burst.
    assert!((1..=5).contains(&ok), "{ok} writes succeeded");
    assert!(store.shard_bytes() <= limit);
    // Once quiet, the room left is exactly what the limit allows.
    let mut more = 0;
    loop {
        let key = ShardKey {
            stripe: StripeId::random(),
            index: 0,
        };
        match put(&store, key, &random_bytes(shard as usize)).await {
            Ok(()) => more += 1,
            Err(StorageError::NoSpace(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok + more, 5);
    assert_eq!(store.shard_bytes(), limit);
    assert!(temp_files(dir.path()).is_empty());
}

// ---------------------------------------------------------------- wiring

/// A meta service that answers what the background workers ask: it
/// records `ReportShards`, knows one node, and answers `ShardsLive`
/// with "not live" for every shard.
#[derive(Clone, Default)]
struct FakeMetaService {
    node: Arc<Mutex<Option<NodeId>>>,
    reports: Arc<Mutex<Vec<ShardProblem>>>,
    live_queries: Arc<Mutex<u64>>,
}

fn envelope<T: serde::Serialize>(v: &T) -> Response<Envelope> {
    Response::new(Envelope {
        payload: Bytes::from(tessera_types::codec::encode(v)),
    })
}

#[tonic::async_trait]
impl Meta for FakeMetaService {
    async fn write(&self, r: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let cmd: MetaCommand = tessera_types::codec::decode(&r.into_inner().payload)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        match cmd {
            MetaCommand::ReportShards { problems, .. } => {
                self.reports.lock().unwrap().extend(problems);
                Ok(envelope(&MetaReply::Ok))
            }
            _ => Err(Status::unimplemented("fake meta")),
        }
    }
    async fn read(&self, r: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        let q: MetaQuery = tessera_types::codec::decode(&r.into_inner().payload)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        match q {
            MetaQuery::ShardsLive { shards, .. } => {
                *self.live_queries.lock().unwrap() += 1;
                Ok(envelope(&QueryReply::Live(vec![false; shards.len()])))
            }
            MetaQuery::ClusterMap => Ok(envelope(&QueryReply::ClusterMap(ClusterMap {
                epoch: 1,
                nodes: self.nodes(),
            }))),
            _ => Err(Status::unimplemented("fake meta")),
        }
    }
    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Ok(Response::new(HeartbeatResponse {}))
    }
    async fn raft_status(
        &self,
        _: Request<RaftStatusRequest>,
    ) -> Result<Response<RaftStatusResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
}

impl FakeMetaService {
    fn nodes(&self) -> Vec<NodeInfo> {
        self.node
            .lock()
            .unwrap()
            .iter()
            .map(|id| NodeInfo {
                id: id.clone(),
                addr: String::new(),
                zone: "z1".into(),
                weight: 1.0,
                capacity_bytes: 0,
                used_bytes: 0,
                shard_count: 0,
                state: NodeState::Up,
                last_heartbeat: 0,
            })
            .collect()
    }
}

#[tokio::test]
async fn a_serving_node_scrubs_reports_and_collects_orphans_through_meta() {
    let meta = FakeMetaService::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let meta_addr = listener.local_addr().unwrap().to_string();
    let meta_stop = CancellationToken::new();
    let stop = meta_stop.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetaServer::new(meta.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { stop.cancelled().await },
            ),
    );

    // A node whose data dir already holds a corrupt shard and an old
    // orphan (written by an earlier run of the node).
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    let node_id = store.node_id().clone();
    *meta.node.lock().unwrap() = Some(node_id.clone());
    let shards = put_many(&store, 3, 10_000).await;
    let (corrupt, orphan, young) = (shards[0].0, shards[1].0, shards[2].0);
    flip_byte(&shard_path(dir.path(), corrupt), DATA_OFFSET as u64 + 5);
    set_age(&shard_path(dir.path(), orphan), OLD);
    drop(store);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = StorageConfig {
        data_dirs: vec![dir.path().to_path_buf()],
        meta: vec![meta_addr],
        zone: "z1".into(),
        cluster_secret: Some(ClusterSecret::new("storage-test-secret-0123").unwrap()),
        scrub_period_ms: 200,
        scrub_rate: 64 << 20,
        orphan_scan_interval_ms: 200,
        orphan_safety_age_ms: 3_600_000,
        shutdown_grace_ms: 3000,
        ..StorageConfig::default()
    };
    let shutdown = CancellationToken::new();
    let node = tokio::spawn(serve(config, listener, shutdown.clone()));
    let pool = StoragePool::with_auth(tessera_proto::ClusterAuth::new(
        ClusterSecret::new("storage-test-secret-0123").unwrap(),
    ));

    let deadline = Instant::now() + Duration::from_secs(20);
    let info = loop {
        assert!(
            Instant::now() < deadline,
            "no scrub report / orphan scan in time"
        );
        if let Ok(info) = pool.node_info(&addr).await {
            if info.scrub_passes >= 1
                && info.orphans_deleted_total >= 1
                && !meta.reports.lock().unwrap().is_empty()
            {
                break info;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reports = meta.reports.lock().unwrap().clone();
    assert_eq!(
        reports,
        vec![ShardProblem {
            stripe: corrupt.stripe,
            index: corrupt.index,
            node: node_id,
            kind: ProblemKind::Corrupt,
        }]
    );
    assert_eq!(info.scrub_corrupt_total, 1);
    assert!(info.scrub_shards_total >= 2);
    assert!(info.scrub_bytes_total >= 10_000);
    assert!(info.orphan_last_scan_unix_ms > 0);
    assert_eq!(info.orphans_deleted_total, 1);
    assert!(!shard_path(dir.path(), orphan).exists());
    // Young, though meta says it is not live: kept.
    assert!(shard_path(dir.path(), young).exists());
    assert!(*meta.live_queries.lock().unwrap() >= 1);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), node)
        .await
        .expect("serve stops")
        .unwrap()
        .unwrap();
    meta_stop.cancel();
}

#[test]
fn background_config_is_validated() {
    let ok = StorageConfig {
        cluster_secret: Some(ClusterSecret::new("storage-test-secret-0123").unwrap()),
        ..StorageConfig::default()
    };
    ok.validate().unwrap();
    assert_eq!(ok.scrub_rate, 64 << 20);
    assert_eq!(ok.scrub_period_ms, 24 * 3600 * 1000);
    assert_eq!(ok.orphan_safety_age_ms, 3600 * 1000);
    for bad in [
        StorageConfig {
            scrub_rate: 0,
            ..ok.clone()
        },
        StorageConfig {
            orphan_safety_age_ms: 0,
            ..ok.clone()
        },
        StorageConfig {
            capacity_bytes: Some(0),
            ..ok.clone()
        },
    ] {
        assert!(matches!(bad.validate(), Err(StorageError::Config(_))));
    }
    // Off switches.
    StorageConfig {
        scrub_period_ms: 0,
        orphan_scan_interval_ms: 0,
        orphan_safety_age_ms: 0,
        ..ok.clone()
    }
    .validate()
    .unwrap();
}

/// One unthrottled pass, from the page cache and from disk, checks every
/// byte and prints its speed on this machine (`--no-capture`; set
/// `SCRUB_BENCH_DIR` to measure another disk, `SCRUB_BENCH_SHARDS` for a
/// bigger sample).
#[tokio::test]
async fn scrub_throughput() {
    use std::os::fd::AsRawFd;
    let dir =
        tempfile::tempdir_in(std::env::var("SCRUB_BENCH_DIR").unwrap_or("/tmp".into())).unwrap();
    let n: usize = std::env::var("SCRUB_BENCH_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let store = open_store(dir.path(), None).await;
    let shards = put_many(&store, n, 4 << 20).await;
    let meta = FakeNodeMeta::default();
    for cold in [false, true] {
        if cold {
            // Drop this test's files from the page cache (they are clean
            // after the fsync of the put).
            for (k, _) in &shards {
                let f = std::fs::File::open(shard_path(dir.path(), *k)).unwrap();
                // SAFETY: a valid open descriptor; the call only advises.
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            }
        }
        let (mut s, _) = scrubber(&store, &meta, FAST);
        let summary = s.pass(&CancellationToken::new()).await.unwrap();
        assert_eq!(summary.shards, n as u64, "every shard re-hashed");
        assert!(
            summary.bytes >= (n as u64) * (4 << 20),
            "every byte re-hashed"
        );
        assert!(
            meta.reported().is_empty(),
            "healthy shards are not reported"
        );
        eprintln!(
            "{}: {} shards, {} MiB in {:?}: {:.0} MB/s",
            if cold { "cold" } else { "page cache" },
            summary.shards,
            summary.bytes >> 20,
            summary.took,
            summary.bytes as f64 / 1e6 / summary.took.as_secs_f64()
        );
    }
}

/// Unmounts the test's small file system when dropped.
struct SmallFs(PathBuf);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A real ENOSPC, on a 3 MiB tmpfs the test mounts (as root, as in CI) or
/// on a small file system named by `TESSERA_SMALL_FS`.
#[tokio::test]
async fn real_enospc_fails_cleanly() {
    let mount_point = tempfile::tempdir().unwrap();
    let (root, _mounted) = match std::env::var_os("TESSERA_SMALL_FS") {
        Some(root) => (PathBuf::from(root), None),
        None => {
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
                .arg(mount_point.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Not root: the simulated ENOSPC tests above still run.
                eprintln!("cannot mount a tmpfs here (not root?); set TESSERA_SMALL_FS");
                return;
            }
            let p = mount_point.path().to_path_buf();
            (p.clone(), Some(SmallFs(p)))
        }
    };
    let dir = tempfile::tempdir_in(root).unwrap();
    let store = open_store(dir.path(), None).await;
    let (addr, stop) = serve_store(store.clone()).await;
    let pool = StoragePool::new();
    let mut stored = Vec::new();
    let err = loop {
        let data = random_bytes(700 << 10);
        let stripe = StripeId::random();
        match pool
            .put_shard(&addr, stripe, 0, data.clone(), hash(&data))
            .await
        {
            Ok(()) => stored.push((stripe, data)),
            Err(e) => break e,
        }
        assert!(stored.len() < 100, "the file system never filled up");
    };
    eprintln!("{} shards stored, then: {err}", stored.len());
    assert!(matches!(err, RpcError::NoSpace(_)), "{err:?}");
    assert!(temp_files(dir.path()).is_empty(), "temp file left behind");
    for (stripe, d) in &stored {
        assert_eq!(&pool.get_shard(&addr, *stripe, 0, None).await.unwrap(), d);
    }
    // Deleting makes room again.
    pool.delete_shard(&addr, stored[0].0, 0).await.unwrap();
    let data = random_bytes(700 << 10);
    pool.put_shard(&addr, StripeId::random(), 0, data.clone(), hash(&data))
        .await
        .unwrap();
    stop.cancel();
}

#[tokio::test]
async fn inventory_reports_placed_shards_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None).await;
    let shards = put_many(&store, 3, 100).await;
    let meta = FakeNodeMeta::default();
    let gone: Vec<(StripeId, u8)> = (0..1500u32)
        .map(|i| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            (StripeId(id), 5)
        })
        .collect();
    {
        let mut live = meta.live.lock().unwrap();
        live.extend(shards.iter().map(|(k, _)| (k.stripe, k.index)));
        live.extend(gone.iter().copied());
    }
    let inv =
        crate::inventory::Inventory::new(store.clone(), meta.clone(), Duration::from_secs(60));
    let summary = inv.check().await.unwrap();
    assert_eq!(summary.placed, 1503, "paged through all of them");
    assert_eq!(summary.missing, 1500);
    let reported = meta.reported();
    assert_eq!(reported.len(), 1500);
    assert!(reported
        .iter()
        .all(|p| p.kind == tessera_types::repair::ProblemKind::Missing && p.index == 5));
    // Nothing missing: nothing reported.
    meta.live.lock().unwrap().retain(|(_, i)| *i != 5);
    meta.reports.lock().unwrap().clear();
    assert_eq!(inv.check().await.unwrap().missing, 0);
    assert!(meta.reported().is_empty());
}
