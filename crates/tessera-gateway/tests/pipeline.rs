//! The write and read pipelines against real gRPC storage nodes (in-memory
//! fakes with fault switches): multi-stripe objects survive m dead nodes
//! and corrupt shards, reads never return wrong bytes, failed writes clean
//! up after themselves.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tessera_gateway::cluster::ClusterView;
use tessera_gateway::pipeline::read::read_range;
use tessera_gateway::pipeline::write::{write_body, WriteLimits, WrittenBody};
use tessera_gateway::pipeline::DataPlane;
use tessera_gateway::{ApiError, GatewayConfig};
use tessera_proto::StoragePool;
use tessera_types::manifest::MANIFEST_LAYOUT;
use tessera_types::{ObjectData, ObjectManifest, Part};
use tokio_util::sync::CancellationToken;

use common::{pattern, storage_nodes, FakeStorage};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

fn config() -> GatewayConfig {
    GatewayConfig {
        meta: vec!["unused:1".into()],
        k: 4,
        m: 2,
        shard_size: 16 << 10,
        inline_threshold: 1024,
        stripes_in_flight: 2,
        max_buffered_stripes: 8,
        shard_read_timeout_ms: 2_000,
        hedge_after_ms: 300,
        body_idle_timeout_ms: 500,
        ..GatewayConfig::default()
    }
}

struct Rig {
    nodes: Vec<Arc<FakeStorage>>,
    dp: Arc<DataPlane>,
    _shutdown: CancellationToken,
}

async fn rig(n: usize) -> Rig {
    let shutdown = CancellationToken::new();
    let (nodes, map) = storage_nodes(n, &shutdown).await;
    let dp = Arc::new(DataPlane::new(
        &config(),
        Arc::new(StoragePool::new()),
        Arc::new(ClusterView::fixed(map)),
        shutdown.clone(),
    ));
    Rig {
        nodes,
        dp,
        _shutdown: shutdown,
    }
}

/// A body delivered in uneven chunks, as a client would send it.
fn body(data: &[u8]) -> futures::stream::BoxStream<'static, Result<Bytes, BoxErr>> {
    let chunks: Vec<Result<Bytes, BoxErr>> = data
        .chunks(7_001)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

async fn put(dp: &Arc<DataPlane>, data: &[u8]) -> Result<ObjectManifest, ApiError> {
    let limits = WriteLimits {
        expected: Some(data.len() as u64),
        max_size: 1 << 30,
        inline_threshold: 1024,
    };
    let (out, guard) = write_body(dp, body(data), limits).await?;
    guard.disarm();
    let data = match out.body {
        WrittenBody::Inline(b) => ObjectData::Inline(b),
        WrittenBody::Stripes(stripes) => ObjectData::Parts(vec![Part {
            number: 1,
            size: out.size,
            etag: hex::encode(out.md5),
            checksums: out.checksums.to_map(),
            stripes,
        }]),
    };
    Ok(ObjectManifest {
        layout: MANIFEST_LAYOUT,
        bucket: "b".into(),
        key: "k".into(),
        version_id: "v".into(),
        size: out.size,
        etag: hex::encode(out.md5),
        content_type: None,
        headers: Default::default(),
        user_metadata: Default::default(),
        checksums: Default::default(),
        created: 0,
        data,
    })
}

async fn get(
    dp: &Arc<DataPlane>,
    m: &ObjectManifest,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, ApiError> {
    let mut s = read_range(dp.clone(), Arc::new(m.clone()), range);
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

const SIZE: usize = 3 * 65_536 + 12_345; // 3 full stripes (4 x 16 KiB) + a short one

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_stripe_roundtrip_and_ranges() {
    let r = rig(6).await;
    let data = pattern(SIZE, 1);
    let m = put(&r.dp, &data).await.unwrap();
    assert_eq!(m.etag, format!("{:x}", md5_of(&data)));
    assert_eq!(m.stripes().count(), 4);
    for s in m.stripes() {
        assert_eq!(s.shards.len(), 6, "every shard written");
    }
    let total: usize = r.nodes.iter().map(|n| n.count()).sum();
    assert_eq!(total, 24);
    assert_eq!(get(&r.dp, &m, 0..SIZE as u64).await.unwrap(), data);
    // Healthy: only the 4 data shards of each of the 4 stripes are read.
    let reads: u64 = r.nodes.iter().map(|n| n.reads.load(Ordering::SeqCst)).sum();
    assert_eq!(reads, 16);
    for (a, b) in [
        (0u64, 1u64),
        (100, 70_000),
        (65_535, 65_537),
        (131_071, 131_073),
        (SIZE as u64 - 10, SIZE as u64),
        (16_384, 16_384 * 2),
    ] {
        let got = get(&r.dp, &m, a..b).await.unwrap();
        assert_eq!(got, &data[a as usize..b as usize], "range {a}..{b}");
    }
}

fn md5_of(data: &[u8]) -> u128 {
    use md5::{Digest, Md5};
    u128::from_be_bytes(Md5::digest(data).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_body_is_inline() {
    let r = rig(6).await;
    let data = pattern(1000, 2);
    let m = put(&r.dp, &data).await.unwrap();
    assert!(matches!(&m.data, ObjectData::Inline(b) if b.as_ref() == data.as_slice()));
    assert_eq!(r.nodes.iter().map(|n| n.count()).sum::<usize>(), 0);
    let empty = put(&r.dp, &[]).await.unwrap();
    assert_eq!(empty.size, 0);
    assert_eq!(empty.etag, "d41d8cd98f00b204e9800998ecf8427e");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_m_dead_nodes() {
    let r = rig(6).await;
    let data = pattern(SIZE, 3);
    let m = put(&r.dp, &data).await.unwrap();
    r.nodes[0].dead.store(true, Ordering::SeqCst);
    r.nodes[3].dead.store(true, Ordering::SeqCst);
    assert_eq!(get(&r.dp, &m, 0..SIZE as u64).await.unwrap(), data);
    assert_eq!(
        get(&r.dp, &m, 5_000..200_000).await.unwrap(),
        &data[5_000..200_000]
    );
    // One more dead node: fewer than k shards. The read fails; it never
    // returns wrong bytes.
    r.nodes[5].dead.store(true, Ordering::SeqCst);
    let err = get(&r.dp, &m, 0..SIZE as u64).await.unwrap_err();
    assert!(matches!(err, ApiError::ReadFailed { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_shards_are_never_served() {
    let r = rig(6).await;
    let data = pattern(SIZE, 4);
    let m = put(&r.dp, &data).await.unwrap();
    // Two nodes rot: every stripe loses up to two shards to corruption.
    r.nodes[1].corrupt_all();
    r.nodes[4].corrupt_all();
    assert_eq!(get(&r.dp, &m, 0..SIZE as u64).await.unwrap(), data);
    assert_eq!(get(&r.dp, &m, 10..20).await.unwrap(), &data[10..20]);
    // A third: some stripe is now unreadable, and the read says so.
    r.nodes[2].corrupt_all();
    assert!(get(&r.dp, &m, 0..SIZE as u64).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_node_is_hedged() {
    let r = rig(6).await;
    let data = pattern(SIZE, 5);
    let m = put(&r.dp, &data).await.unwrap();
    for n in &r.nodes[..2] {
        n.read_delay_ms.store(10_000, Ordering::SeqCst);
    }
    let t = Instant::now();
    assert_eq!(get(&r.dp, &m, 0..SIZE as u64).await.unwrap(), data);
    // Each stripe waits for the hedge delay (300 ms), not for the shard
    // timeout (2 s) and certainly not for the 10 s node.
    assert!(
        t.elapsed() < Duration::from_millis(1_900),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_replaces_failed_nodes() {
    // 8 nodes, 2 dead: every stripe still gets k + m shards.
    let r = rig(8).await;
    r.nodes[0].dead.store(true, Ordering::SeqCst);
    r.nodes[1].dead.store(true, Ordering::SeqCst);
    let data = pattern(SIZE, 6);
    let m = put(&r.dp, &data).await.unwrap();
    for s in m.stripes() {
        assert_eq!(s.shards.len(), 6);
        let nodes: std::collections::HashSet<_> = s.shards.iter().map(|e| &e.node).collect();
        assert_eq!(nodes.len(), 6, "one shard per node");
    }
    assert_eq!(get(&r.dp, &m, 0..SIZE as u64).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_meets_quorum_with_one_node_down() {
    let r = rig(6).await;
    r.nodes[2].dead.store(true, Ordering::SeqCst);
    let data = pattern(SIZE, 7);
    let m = put(&r.dp, &data).await.unwrap();
    for s in m.stripes() {
        assert_eq!(
            s.shards.len(),
            5,
            "quorum k + 1, only shards written recorded"
        );
    }
    r.nodes[2].dead.store(false, Ordering::SeqCst);
    r.nodes[0].dead.store(true, Ordering::SeqCst);
    assert_eq!(get(&r.dp, &m, 0..SIZE as u64).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_write_deletes_its_shards() {
    // RS(4,2) with only 2 of 6 nodes alive: not even a narrowed class
    // (k >= 1 plus 2 parity) fits, so the write fails.
    let r = rig(6).await;
    for node in &r.nodes[..4] {
        node.dead.store(true, Ordering::SeqCst);
    }
    let data = pattern(SIZE, 8);
    let err = put(&r.dp, &data).await.unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::WriteQuorum { .. } | ApiError::NotEnoughNodes { .. }
        ),
        "{err}"
    );
    // Cleanup runs after a short delay.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: usize = r.nodes.iter().map(|n| n.count()).sum();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} shards left behind");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_and_long_bodies_are_refused() {
    let r = rig(6).await;
    let data = pattern(SIZE, 9);
    for declared in [SIZE as u64 + 1, SIZE as u64 - 1] {
        let limits = WriteLimits {
            expected: Some(declared),
            max_size: 1 << 30,
            inline_threshold: 1024,
        };
        let err = write_body(&r.dp, body(&data), limits).await.err().unwrap();
        assert!(matches!(err, ApiError::IncompleteBody { .. }), "{err}");
    }
    let limits = WriteLimits {
        expected: None,
        max_size: 100_000,
        inline_threshold: 1024,
    };
    let err = write_body(&r.dp, body(&data), limits).await.err().unwrap();
    assert!(matches!(err, ApiError::EntityTooLarge { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_errors_fail_the_write() {
    let r = rig(6).await;
    #[derive(Debug, thiserror::Error)]
    #[error("connection reset by peer")]
    struct Reset;
    let chunks: Vec<Result<Bytes, BoxErr>> =
        vec![Ok(Bytes::from(pattern(300_000, 1))), Err(Box::new(Reset))];
    let limits = WriteLimits {
        expected: None,
        max_size: 1 << 30,
        inline_threshold: 1024,
    };
    let err = write_body(&r.dp, futures::stream::iter(chunks).boxed(), limits)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ApiError::Body(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_times_out() {
    let r = rig(6).await;
    let first: Result<Bytes, BoxErr> = Ok(Bytes::from(pattern(100_000, 1)));
    let stalled = futures::stream::iter(vec![first]).chain(futures::stream::pending());
    let limits = WriteLimits {
        expected: Some(1 << 20),
        max_size: 1 << 30,
        inline_threshold: 1024,
    };
    let t = Instant::now();
    let err = write_body(&r.dp, stalled.boxed(), limits)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ApiError::RequestTimeout(_)), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dead_nodes_narrow_the_stripe_and_keep_its_parity() {
    // The cluster map still says all 6 nodes are Up: the writer learns of
    // the dead ones from failed shard writes and narrows RS(4,2) towards
    // RS(2,2) on the 4 live nodes, never dropping parity.
    let r = rig(6).await;
    r.nodes[0].dead.store(true, Ordering::SeqCst);
    r.nodes[1].dead.store(true, Ordering::SeqCst);
    let data = pattern(SIZE, 12);
    let m = put(&r.dp, &data).await.unwrap();
    let mut narrowed = 0;
    for stripe in m.stripes() {
        assert_eq!(stripe.class.m, 2, "parity is never reduced");
        // At least the write quorum (k + 1) of shards, one per node.
        assert!(stripe.shards.len() > stripe.class.k as usize);
        let mut nodes: Vec<_> = stripe.shards.iter().map(|s| s.node.clone()).collect();
        nodes.sort();
        nodes.dedup();
        assert_eq!(nodes.len(), stripe.shards.len(), "one shard per node");
        if stripe.class.k < 4 {
            narrowed += 1;
        }
    }
    assert!(narrowed > 0, "no stripe was narrowed");
    assert_eq!(get(&r.dp, &m, 0..SIZE as u64).await.unwrap(), data);
    // One more loss among the live nodes is still survivable.
    r.nodes[2].dead.store(true, Ordering::SeqCst);
    assert_eq!(get(&r.dp, &m, 0..SIZE as u64).await.unwrap(), data);
}
