//! End-to-end tests of the storage node over real gRPC on 127.0.0.1:0,
//! driven by the `tessera_proto::StoragePool` client the gateways use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tessera_proto::auth::AuthChannel;
use tessera_proto::channel::ChannelPool;
use tessera_proto::meta::meta_server::{Meta, MetaServer};
use tessera_proto::meta::{
    Envelope, HeartbeatRequest, HeartbeatResponse, RaftStatusRequest, RaftStatusResponse,
};
use tessera_proto::storage::storage_client::StorageClient;
use tessera_proto::storage::{put_shard_request, PutShardHeader, PutShardRequest, ShardRef};
use tessera_proto::{ClusterAuth, ClusterSecret, RpcError, StoragePool};
use tessera_types::StripeId;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

use crate::store::{
    file_len, format_1_file, ReadCheck, ShardFormat, ShardHeader, DATA_OFFSET, HEADER_LEN,
    SPILL_BYTES,
};
use crate::{serve, ShardKey, ShardStore, StorageConfig, StorageError, StoreOptions};

fn test_secret() -> ClusterSecret {
    ClusterSecret::new("storage-test-secret-0123").unwrap()
}

fn test_auth() -> Arc<ClusterAuth> {
    ClusterAuth::new(test_secret())
}

struct Node {
    addr: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), StorageError>>,
}

impl Node {
    async fn start(dirs: &[PathBuf]) -> Node {
        Self::start_with(dirs, vec![], 1000).await
    }

    async fn start_with(dirs: &[PathBuf], meta: Vec<String>, heartbeat_ms: u64) -> Node {
        Self::start_on("127.0.0.1:0", dirs, meta, heartbeat_ms).await
    }

    async fn start_on(bind: &str, dirs: &[PathBuf], meta: Vec<String>, heartbeat_ms: u64) -> Node {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let config = StorageConfig {
            data_dirs: dirs.to_vec(),
            meta,
            heartbeat_ms,
            zone: "z1".into(),
            shutdown_grace_ms: 3000,
            cluster_secret: Some(test_secret()),
            // These tests corrupt and age files on purpose; the background
            // workers are tested in `background_tests`.
            scrub_period_ms: 0,
            orphan_scan_interval_ms: 0,
            ..StorageConfig::default()
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(config, listener, shutdown.clone()));
        Node {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }

    /// A generated client over a signed channel, for hand-made messages.
    async fn raw_client(&self) -> StorageClient<AuthChannel> {
        StorageClient::new(ChannelPool::with_auth(test_auth()).get(&self.addr).unwrap())
    }
}

fn random_bytes(n: usize) -> Bytes {
    // BLAKE3's extendable output, seeded with fresh random bits.
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

/// Path of a shard in a single-data-dir store.
fn shard_file(dir: &Path, stripe: StripeId, index: u8) -> PathBuf {
    let hex = stripe.to_hex();
    dir.join("shards")
        .join(&hex[0..2])
        .join(format!("{hex}.{index}"))
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn shard_files(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("shards"))
}

/// A serving node on a temp dir that holds one shard (`index`, of random
/// bytes `data` hashing to `h`).
struct OneShard {
    dir: tempfile::TempDir,
    node: Node,
    pool: StoragePool,
    stripe: StripeId,
    index: u8,
    data: Bytes,
    h: [u8; 32],
}

impl OneShard {
    async fn put(index: u8, len: usize) -> OneShard {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(&[dir.path().to_path_buf()]).await;
        let pool = StoragePool::with_auth(test_auth());
        wait_until_serving(&pool, &node.addr).await;
        let stripe = StripeId::random();
        let data = random_bytes(len);
        let h = hash(&data);
        pool.put_shard(&node.addr, stripe, index, data.clone(), h)
            .await
            .unwrap();
        OneShard {
            dir,
            node,
            pool,
            stripe,
            index,
            data,
            h,
        }
    }

    fn path(&self) -> PathBuf {
        shard_file(self.dir.path(), self.stripe, self.index)
    }

    /// Flips the bits `mask` of byte `at` of the shard's file (header
    /// included); returns the file's new bytes.
    fn flip(&self, at: usize, mask: u8) -> Vec<u8> {
        let mut raw = std::fs::read(self.path()).unwrap();
        raw[at] ^= mask;
        std::fs::write(self.path(), &raw).unwrap();
        raw
    }
}

async fn wait_until_serving(pool: &StoragePool, addr: &str) {
    for _ in 0..200 {
        if pool.node_info(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("node at {addr} did not come up");
}

/// A gateway's pooled connection outlives a (graceful) restart of the node:
/// the first read and stat afterwards reconnect instead of failing. (A
/// kill -9 cannot be staged in-process: the e2e crash tests cover it.)
#[tokio::test]
async fn reads_survive_a_node_restart_on_a_pooled_connection() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = [dir.path().to_path_buf()];
    let mut node = Node::start(&dirs).await;
    let addr = node.addr.clone();
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &addr).await;
    let stripe = StripeId::random();
    let data = random_bytes(100_000);
    let h = hash(&data);
    pool.put_shard(&addr, stripe, 0, data.clone(), h)
        .await
        .unwrap();
    assert_eq!(
        pool.get_shard(&addr, stripe, 0, Some(h)).await.unwrap(),
        data
    );
    for round in 0..3 {
        node.stop().await;
        node = Node::start_on(&addr, &dirs, vec![], 1000).await;
        let got = pool.get_shard(&addr, stripe, 0, Some(h)).await;
        assert_eq!(got.unwrap(), data, "first read after restart {round}");
        node.stop().await;
        node = Node::start_on(&addr, &dirs, vec![], 1000).await;
        let st = pool.stat_shard(&addr, stripe, 0).await;
        assert!(st.unwrap().exists, "first stat after restart {round}");
    }
    // A node that stays down is still an error, not a hang.
    node.stop().await;
    let err = pool.get_shard(&addr, stripe, 0, Some(h)).await.unwrap_err();
    assert!(matches!(err, RpcError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn put_get_roundtrip_various_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[dir.path().to_path_buf()]).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    for (i, size) in [0usize, 1, 3 << 20].into_iter().enumerate() {
        let stripe = StripeId::random();
        let data = random_bytes(size);
        let h = hash(&data);
        pool.put_shard(&node.addr, stripe, i as u8, data.clone(), h)
            .await
            .unwrap();
        let got = pool
            .get_shard(&node.addr, stripe, i as u8, Some(h))
            .await
            .unwrap();
        assert_eq!(got, data, "size {size} with expected hash");
        let got = pool
            .get_shard(&node.addr, stripe, i as u8, None)
            .await
            .unwrap();
        assert_eq!(got, data, "size {size} without expected hash");
        let got = pool
            .get_shard_unverified(&node.addr, stripe, i as u8)
            .await
            .unwrap();
        assert_eq!(got, data, "size {size}, verified by the caller");
        let on_disk = std::fs::read(shard_file(dir.path(), stripe, i as u8)).unwrap();
        assert_eq!(on_disk.len() as u64, file_len(size as u64));
        let header = ShardHeader::decode(&on_disk).unwrap();
        assert_eq!(header.length, size as u64);
        assert_eq!(header.blake3, h);
    }
    let info = pool.node_info(&node.addr).await.unwrap();
    assert_eq!(info.shard_count, 3);
    assert_eq!(info.zone, "z1");
    assert!(info.capacity_bytes > 0);
    assert!(info.used_bytes <= info.capacity_bytes);
    node.stop().await;
}

/// A caller that verifies shards itself gets the bytes as they are on
/// disk (the node skips its hash), but never a file whose header or
/// length is wrong; the node-side check still quarantines.
#[tokio::test]
async fn a_caller_that_verifies_gets_the_bytes_unhashed() {
    let t = OneShard::put(1, 200_000).await;
    let raw = t.flip(DATA_OFFSET + 150_000, 0x80);

    // The flipped bit comes through: the caller's hash finds it.
    let got = t
        .pool
        .get_shard_unverified(&t.node.addr, t.stripe, 1)
        .await
        .unwrap();
    assert_eq!(got.len(), t.data.len());
    assert_ne!(got, t.data);
    assert_ne!(hash(&got), t.h, "the caller's check catches it");
    assert!(t.path().exists(), "no node-side verdict, no quarantine");

    // A file cut short is refused whoever verifies.
    std::fs::write(t.path(), &raw[..DATA_OFFSET + 1000]).unwrap();
    let err = t
        .pool
        .get_shard_unverified(&t.node.addr, t.stripe, 1)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Corrupt(_)), "{err:?}");
    assert!(!t.path().exists(), "a bad length is quarantined");
    t.node.stop().await;
}

/// Reads for a caller that verifies go over HTTP/1.1 (sent with
/// `sendfile`): one connection serves read after read, errors included,
/// and unsigned or malformed requests are refused.
#[tokio::test]
async fn http1_reads_keep_their_connection_and_refuse_unsigned_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = OneShard::put(2, 300_000).await;
    let addr = t.node.addr.clone();
    let read = |index: u8| t.pool.get_shard_unverified(&addr, t.stripe, index);
    for _ in 0..3 {
        assert!(read(2).await.unwrap() == t.data);
    }
    assert_eq!(t.pool.http1_idle_connections(&addr), 1);
    let err = read(0).await.unwrap_err();
    assert!(matches!(err, RpcError::NotFound(_)), "{err:?}");
    assert_eq!(
        t.pool.http1_idle_connections(&addr),
        1,
        "kept after an error"
    );
    assert!(read(2).await.unwrap() == t.data);

    // Unsigned: refused, as gRPC calls are.
    let err = StoragePool::new()
        .get_shard_unverified(&addr, t.stripe, 2)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Unauthenticated(_)), "{err:?}");

    // By hand: a request that is not a shard read, and one too long.
    for (req, want) in [
        (b"DELETE / HTTP/1.1\r\n\r\n".to_vec(), "HTTP/1.1 501"),
        (
            [b"GET /".as_slice(), &[b'a'; 9000]].concat(),
            "HTTP/1.1 400",
        ),
    ] {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(&req).await.unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(want), "{answer}");
        assert!(answer.contains("grpc-status: "), "{answer}");
    }
    t.node.stop().await;
}

#[tokio::test]
async fn flipped_byte_is_reported_corrupt_and_quarantined() {
    let t = OneShard::put(2, 100_000).await;
    let (pool, addr, stripe) = (&t.pool, &t.node.addr, t.stripe);
    t.flip(DATA_OFFSET + 5000, 0x01);

    let err = pool
        .get_shard(addr, stripe, 2, Some(t.h))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Corrupt(_)), "{err:?}");
    assert!(!t.path().exists(), "corrupt shard left in place");
    assert_eq!(files_under(&t.dir.path().join("quarantine")).len(), 1);
    // From now on it reads as missing.
    let err = pool.get_shard(addr, stripe, 2, None).await.unwrap_err();
    assert!(matches!(err, RpcError::NotFound(_)), "{err:?}");
    assert!(!pool.stat_shard(addr, stripe, 2).await.unwrap().exists);
    assert_eq!(pool.node_info(addr).await.unwrap().shard_count, 0);
    t.node.stop().await;
}

#[tokio::test]
async fn get_with_a_different_expected_hash_is_corrupt() {
    let t = OneShard::put(0, 1000).await;
    let err = t
        .pool
        .get_shard(&t.node.addr, t.stripe, 0, Some(hash(b"something else")))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Corrupt(_)), "{err:?}");
    t.node.stop().await;
}

#[tokio::test]
async fn put_with_wrong_hash_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[dir.path().to_path_buf()]).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    let stripe = StripeId::random();
    let data = random_bytes(2 << 20);
    let mut bad = hash(&data);
    bad[0] ^= 0xff;
    let err = pool
        .put_shard(&node.addr, stripe, 0, data, bad)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::InvalidArgument(_)), "{err:?}");
    assert!(
        shard_files(dir.path()).is_empty(),
        "{:?}",
        shard_files(dir.path())
    );
    assert!(!pool.stat_shard(&node.addr, stripe, 0).await.unwrap().exists);
    node.stop().await;
}

#[tokio::test]
async fn missing_shard_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[dir.path().to_path_buf()]).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    let stripe = StripeId::random();
    let err = pool
        .get_shard(&node.addr, stripe, 0, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::NotFound(_)), "{err:?}");
    let stat = pool.stat_shard(&node.addr, stripe, 0).await.unwrap();
    assert!(!stat.exists);
    assert!(!pool.delete_shard(&node.addr, stripe, 0).await.unwrap());
    node.stop().await;
}

#[tokio::test]
async fn stat_and_delete() {
    let t = OneShard::put(7, 12345).await;
    let (pool, addr, stripe) = (&t.pool, &t.node.addr, t.stripe);
    let stat = pool.stat_shard(addr, stripe, 7).await.unwrap();
    assert!(stat.exists);
    assert_eq!(stat.length, 12345);
    assert_eq!(stat.blake3.as_ref(), &t.h);
    assert_eq!(pool.node_info(addr).await.unwrap().shard_count, 1);

    assert!(pool.delete_shard(addr, stripe, 7).await.unwrap());
    assert!(!pool.stat_shard(addr, stripe, 7).await.unwrap().exists);
    assert!(!t.path().exists());
    let err = pool.get_shard(addr, stripe, 7, None).await.unwrap_err();
    assert!(matches!(err, RpcError::NotFound(_)), "{err:?}");
    assert!(!pool.delete_shard(addr, stripe, 7).await.unwrap());
    assert_eq!(pool.node_info(addr).await.unwrap().shard_count, 0);
    t.node.stop().await;
}

#[tokio::test]
async fn put_is_idempotent_and_refuses_different_bytes() {
    let t = OneShard::put(1, 5000).await;
    let (pool, addr, stripe) = (&t.pool, &t.node.addr, t.stripe);
    pool.put_shard(addr, stripe, 1, t.data.clone(), t.h)
        .await
        .unwrap();
    assert_eq!(pool.node_info(addr).await.unwrap().shard_count, 1);

    let other = random_bytes(5000);
    let err = pool
        .put_shard(addr, stripe, 1, other.clone(), hash(&other))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RpcError::Remote {
                code: Code::AlreadyExists,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        pool.get_shard(addr, stripe, 1, Some(t.h)).await.unwrap(),
        t.data
    );
    assert_eq!(shard_files(t.dir.path()).len(), 1);
    t.node.stop().await;
}

#[tokio::test]
async fn put_replaces_a_corrupt_copy() {
    let t = OneShard::put(1, 5000).await;
    let (pool, addr, stripe) = (&t.pool, &t.node.addr, t.stripe);
    t.flip(DATA_OFFSET, 0x80);

    pool.put_shard(addr, stripe, 1, t.data.clone(), t.h)
        .await
        .unwrap();
    assert_eq!(
        pool.get_shard(addr, stripe, 1, Some(t.h)).await.unwrap(),
        t.data
    );
    assert_eq!(files_under(&t.dir.path().join("quarantine")).len(), 1);
    assert_eq!(pool.node_info(addr).await.unwrap().shard_count, 1);
    t.node.stop().await;
}

fn header_msg(stripe: &[u8], index: u32, length: u64, blake3: &[u8]) -> PutShardRequest {
    PutShardRequest {
        msg: Some(put_shard_request::Msg::Header(PutShardHeader {
            shard: Some(ShardRef {
                stripe_id: Bytes::copy_from_slice(stripe),
                shard_index: index,
            }),
            length,
            blake3: Bytes::copy_from_slice(blake3),
        })),
    }
}

fn data_msg(b: Bytes) -> PutShardRequest {
    PutShardRequest {
        msg: Some(put_shard_request::Msg::Data(b)),
    }
}

#[tokio::test]
async fn truncated_stream_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[dir.path().to_path_buf()]).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    let mut client = node.raw_client().await;
    let stripe = StripeId::random();
    let data = random_bytes(3 << 20);
    let msgs = vec![
        header_msg(&stripe.0, 0, data.len() as u64, &hash(&data)),
        data_msg(data.slice(0..1 << 20)),
        data_msg(data.slice(1 << 20..(2 << 20) + 17)),
    ];
    let status = client
        .put_shard(futures::stream::iter(msgs))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        shard_files(dir.path()).is_empty(),
        "{:?}",
        shard_files(dir.path())
    );
    assert!(!pool.stat_shard(&node.addr, stripe, 0).await.unwrap().exists);
    node.stop().await;
}

#[tokio::test]
async fn malformed_puts_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[dir.path().to_path_buf()]).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    let mut client = node.raw_client().await;
    let stripe = StripeId::random();
    let data = random_bytes(1000);
    let h = hash(&data);
    let cases: Vec<(&str, Vec<PutShardRequest>)> = vec![
        ("empty stream", vec![]),
        ("data before header", vec![data_msg(data.clone())]),
        ("empty message", vec![PutShardRequest { msg: None }]),
        (
            "short stripe id",
            vec![
                header_msg(&stripe.0[..15], 0, 1000, &h),
                data_msg(data.clone()),
            ],
        ),
        (
            "index above 255",
            vec![header_msg(&stripe.0, 256, 1000, &h), data_msg(data.clone())],
        ),
        (
            "short hash",
            vec![
                header_msg(&stripe.0, 0, 1000, &h[..31]),
                data_msg(data.clone()),
            ],
        ),
        (
            "missing shard ref",
            vec![PutShardRequest {
                msg: Some(put_shard_request::Msg::Header(PutShardHeader {
                    shard: None,
                    length: 1000,
                    blake3: Bytes::copy_from_slice(&h),
                })),
            }],
        ),
        ("too large", vec![header_msg(&stripe.0, 0, 65 << 20, &h)]),
        (
            "more data than announced",
            vec![header_msg(&stripe.0, 0, 999, &h), data_msg(data.clone())],
        ),
        (
            "second header",
            vec![
                header_msg(&stripe.0, 0, 1000, &h),
                header_msg(&stripe.0, 0, 1000, &h),
            ],
        ),
    ];
    for (name, msgs) in cases {
        let status = client
            .put_shard(futures::stream::iter(msgs))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
    }
    // Malformed get, stat and delete references.
    let bad_ref = ShardRef {
        stripe_id: Bytes::from_static(b"../../etc/passwd"),
        shard_index: 0,
    };
    assert_eq!(bad_ref.stripe_id.len(), 16);
    // 16 bytes is a valid id whatever its bytes: the path is built from hex.
    assert!(
        !client
            .stat_shard(bad_ref)
            .await
            .unwrap()
            .into_inner()
            .exists
    );
    let short = ShardRef {
        stripe_id: Bytes::from_static(b"short"),
        shard_index: 0,
    };
    let status = client.stat_shard(short.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client.delete_shard(short).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .get_shard(tessera_proto::storage::GetShardRequest {
            shard: Some(ShardRef {
                stripe_id: Bytes::copy_from_slice(&stripe.0),
                shard_index: 300,
            }),
            blake3: Bytes::new(),
            caller_verifies: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    assert!(
        shard_files(dir.path()).is_empty(),
        "{:?}",
        shard_files(dir.path())
    );
    node.stop().await;
}

#[tokio::test]
async fn node_id_persists_across_restarts_and_shards_are_recounted() {
    let dir = tempfile::tempdir().unwrap();
    let dirs = [dir.path().to_path_buf()];
    let pool = StoragePool::with_auth(test_auth());

    let node = Node::start(&dirs).await;
    wait_until_serving(&pool, &node.addr).await;
    let first = pool.node_info(&node.addr).await.unwrap().node_id;
    assert!(first.starts_with("s-"), "{first}");
    for i in 0..3u8 {
        let data = random_bytes(100);
        pool.put_shard(&node.addr, StripeId::random(), i, data.clone(), hash(&data))
            .await
            .unwrap();
    }
    node.stop().await;
    let stored = std::fs::read_to_string(dir.path().join("node-id")).unwrap();
    assert_eq!(stored.trim(), first);

    // A temp file left by a crash is cleaned up at startup.
    let stale = dir
        .path()
        .join("shards")
        .join("00")
        .join(".tmp.crashed.1.1");
    std::fs::write(&stale, b"partial").unwrap();

    let node = Node::start(&dirs).await;
    wait_until_serving(&pool, &node.addr).await;
    let info = pool.node_info(&node.addr).await.unwrap();
    assert_eq!(info.node_id, first);
    assert_eq!(info.shard_count, 3);
    assert!(!stale.exists());
    node.stop().await;
}

#[tokio::test]
async fn two_data_dirs_both_get_shards() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let node = Node::start(&[a.path().to_path_buf(), b.path().to_path_buf()]).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    let mut shards = Vec::new();
    for i in 0..40u8 {
        let stripe = StripeId::random();
        let data = random_bytes(64 + i as usize);
        pool.put_shard(&node.addr, stripe, i % 6, data.clone(), hash(&data))
            .await
            .unwrap();
        shards.push((stripe, i % 6, data));
    }
    let in_a = shard_files(a.path()).len();
    let in_b = shard_files(b.path()).len();
    assert_eq!(in_a + in_b, 40);
    assert!(in_a > 0 && in_b > 0, "a: {in_a}, b: {in_b}");
    for (stripe, index, data) in &shards {
        let got = pool
            .get_shard(&node.addr, *stripe, *index, Some(hash(data)))
            .await
            .unwrap();
        assert_eq!(&got, data);
    }
    assert_eq!(pool.node_info(&node.addr).await.unwrap().shard_count, 40);
    assert!(a.path().join("node-id").exists());
    assert!(!b.path().join("node-id").exists());
    node.stop().await;
}

#[tokio::test]
async fn shards_stay_readable_when_a_data_dir_is_added() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let pool = StoragePool::with_auth(test_auth());
    let node = Node::start(&[a.path().to_path_buf()]).await;
    wait_until_serving(&pool, &node.addr).await;
    let mut shards = Vec::new();
    for i in 0..20u8 {
        let stripe = StripeId::random();
        let data = random_bytes(100);
        pool.put_shard(&node.addr, stripe, i, data.clone(), hash(&data))
            .await
            .unwrap();
        shards.push((stripe, i, data));
    }
    node.stop().await;

    let node = Node::start(&[a.path().to_path_buf(), b.path().to_path_buf()]).await;
    wait_until_serving(&pool, &node.addr).await;
    for (stripe, index, data) in &shards {
        let got = pool
            .get_shard(&node.addr, *stripe, *index, None)
            .await
            .unwrap();
        assert_eq!(&got, data);
        assert!(
            pool.stat_shard(&node.addr, *stripe, *index)
                .await
                .unwrap()
                .exists
        );
    }
    let (stripe, index, _) = &shards[0];
    assert!(pool
        .delete_shard(&node.addr, *stripe, *index)
        .await
        .unwrap());
    assert_eq!(pool.node_info(&node.addr).await.unwrap().shard_count, 19);
    node.stop().await;
}

#[tokio::test]
async fn concurrent_puts() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[dir.path().to_path_buf()]).await;
    let pool = Arc::new(StoragePool::with_auth(test_auth()));
    wait_until_serving(&pool, &node.addr).await;
    let mut tasks = Vec::new();
    for i in 0..32u8 {
        let pool = pool.clone();
        let addr = node.addr.clone();
        tasks.push(tokio::spawn(async move {
            let stripe = StripeId::random();
            let data = random_bytes(300_000 + i as usize);
            pool.put_shard(&addr, stripe, i, data.clone(), hash(&data))
                .await
                .unwrap();
            (stripe, i, data)
        }));
    }
    // The same shard from several writers at once: stored once.
    let same = StripeId::random();
    let same_data = random_bytes(200_000);
    let mut same_tasks = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        let addr = node.addr.clone();
        let data = same_data.clone();
        same_tasks.push(tokio::spawn(async move {
            pool.put_shard(&addr, same, 9, data.clone(), hash(&data))
                .await
        }));
    }
    for t in same_tasks {
        t.await.unwrap().unwrap();
    }
    for t in tasks {
        let (stripe, index, data) = t.await.unwrap();
        let got = pool
            .get_shard(&node.addr, stripe, index, Some(hash(&data)))
            .await
            .unwrap();
        assert_eq!(got, data);
    }
    assert_eq!(pool.node_info(&node.addr).await.unwrap().shard_count, 33);
    assert_eq!(shard_files(dir.path()).len(), 33);
    node.stop().await;
}

/// A meta service that records heartbeats and implements nothing else.
#[derive(Default, Clone)]
struct FakeMeta {
    beats: Arc<Mutex<Vec<HeartbeatRequest>>>,
}

#[tonic::async_trait]
impl Meta for FakeMeta {
    async fn write(&self, _: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn read(&self, _: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.beats.lock().unwrap().push(request.into_inner());
        Ok(Response::new(HeartbeatResponse {}))
    }
    async fn raft_status(
        &self,
        _: Request<RaftStatusRequest>,
    ) -> Result<Response<RaftStatusResponse>, Status> {
        Err(Status::unimplemented("fake meta"))
    }
}

#[tokio::test]
async fn heartbeats_reach_meta_with_the_node_id() {
    let meta = FakeMeta::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let meta_addr = listener.local_addr().unwrap().to_string();
    let meta_stop = CancellationToken::new();
    let stop = meta_stop.clone();
    let meta_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetaServer::new(meta.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { stop.cancelled().await },
            ),
    );

    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(&[dir.path().to_path_buf()], vec![meta_addr], 50).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    let node_id = pool.node_info(&node.addr).await.unwrap().node_id;
    let data = random_bytes(10);
    pool.put_shard(&node.addr, StripeId::random(), 0, data.clone(), hash(&data))
        .await
        .unwrap();

    // Wait for a heartbeat that reports the shard.
    let mut last = None;
    for _ in 0..500 {
        last = meta.beats.lock().unwrap().last().cloned();
        if last.as_ref().is_some_and(|b| b.shard_count == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let beat = last.expect("no heartbeat received");
    assert_eq!(beat.node_id, node_id);
    assert_eq!(beat.addr, node.addr);
    assert_eq!(beat.zone, "z1");
    assert_eq!(beat.weight, 1.0);
    assert_eq!(beat.shard_count, 1);
    assert!(beat.capacity_bytes > 0);
    assert!(meta
        .beats
        .lock()
        .unwrap()
        .iter()
        .all(|b| b.node_id == node_id));

    node.stop().await;
    let seen = meta.beats.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        meta.beats.lock().unwrap().len(),
        seen,
        "heartbeats after shutdown"
    );
    meta_stop.cancel();
    meta_task.await.unwrap().unwrap();
}

#[tokio::test]
async fn unreachable_meta_does_not_block_serving_or_shutdown() {
    // A port with nothing listening on it.
    let meta_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(&[dir.path().to_path_buf()], vec![meta_addr], 20).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    let data = random_bytes(10);
    pool.put_shard(&node.addr, StripeId::random(), 0, data.clone(), hash(&data))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    node.stop().await;
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = StorageConfig {
        data_dirs: vec![],
        cluster_secret: Some(test_secret()),
        ..StorageConfig::default()
    };
    let err = serve(config, listener, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn unknown_dir_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("format"), "tessera-storage 99\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = StorageConfig {
        data_dirs: vec![dir.path().to_path_buf()],
        cluster_secret: Some(test_secret()),
        ..StorageConfig::default()
    };
    let err = serve(config, listener, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::BadState { .. }), "{err:?}");
}

#[test]
fn header_roundtrip_and_rejects() {
    let h = ShardHeader {
        length: 123_456,
        blake3: [7u8; 32],
    };
    let enc = h.encode();
    assert_eq!(&enc[0..4], b"TSHD");
    assert_eq!(ShardHeader::decode(&enc).unwrap(), h);
    assert!(ShardHeader::decode(&enc[..47]).is_err());
    let mut bad = enc;
    bad[0] = b'X';
    assert!(ShardHeader::decode(&bad).is_err());
    let mut bad = enc;
    bad[4] = 3;
    assert!(ShardHeader::decode(&bad).is_err());
    // Both formats parse; each has its own layout.
    assert_eq!(ShardHeader::parse(&enc).unwrap(), (h, ShardFormat::V2));
    let v1 = h.encode_as(ShardFormat::V1);
    assert_eq!(ShardHeader::parse(&v1).unwrap(), (h, ShardFormat::V1));
    assert_eq!(ShardFormat::V1.data_offset(), 48);
    assert_eq!(ShardFormat::V2.data_offset(), 4096);
    for (length, v1_len, v2_len) in [
        (0, 48, 4096),
        (1, 49, 8192),
        (4096, 4144, 8192),
        (4097, 4145, 12288),
        (123_456, 123_504, 4096 + 126_976),
    ] {
        assert_eq!(ShardFormat::V1.file_len(length), Some(v1_len));
        assert_eq!(ShardFormat::V2.file_len(length), Some(v2_len));
    }
    assert_eq!(ShardFormat::V2.file_len(u64::MAX - 4000), None);
    assert_eq!(ShardFormat::V1.file_len(u64::MAX - 40), None);
    assert!(ShardHeader::parse_sized(&enc, 4096 + 126_976).is_ok());
    assert!(ShardHeader::parse_sized(&enc, 4096 + 123_456).is_err());
    assert!(ShardHeader::parse_sized(&v1, 48 + 123_456).is_ok());
}

/// Writes a shard file as version 1 wrote it: the header, then the bytes.
fn write_v1_file(dir: &Path, key: ShardKey, data: &[u8]) -> PathBuf {
    let path = shard_file(dir, key.stripe, key.index);
    std::fs::write(&path, format_1_file(data)).unwrap();
    path
}

/// Shard files of format 1 (written before format 2) are read, stat'ed,
/// counted, found equal to a retried put, and checked as before.
#[tokio::test]
async fn version_1_shard_files_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), true).await;
    let mut keys = Vec::new();
    for len in [0, 1, 4048, 100_000, (256 << 10) + 5, SPILL_BYTES + 3] {
        let key = ShardKey {
            stripe: StripeId::random(),
            index: 2,
        };
        let data = random_bytes(len);
        write_v1_file(dir.path(), key, &data);
        keys.push((key, data));
    }
    drop(store);
    let store = open_store(dir.path(), true).await;
    assert_eq!(store.shard_count(), keys.len() as u64);
    for (key, data) in &keys {
        let h = hash(data);
        let header = store.stat(*key).await.unwrap().unwrap();
        assert_eq!((header.length, header.blake3), (data.len() as u64, h));
        for check in [ReadCheck::Hash(Some(h)), ReadCheck::CallerVerifies] {
            let got = store.read(*key, check).await.unwrap();
            assert!(got.bytes == *data, "{} bytes, {check:?}", data.len());
        }
        // A retried put of the same bytes finds the stored copy.
        put_frames(&store, *key, data, 1 << 20, h).await.unwrap();
        let path = shard_file(dir.path(), key.stripe, key.index);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            data.len() as u64 + 48
        );
    }
    // A flipped byte in a version 1 file is found and quarantined.
    let (key, data) = &keys[3];
    let path = shard_file(dir.path(), key.stripe, key.index);
    let mut raw = std::fs::read(&path).unwrap();
    raw[48 + 777] ^= 1;
    std::fs::write(&path, raw).unwrap();
    let err = store
        .get(*key, Some(hash(data)))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(!path.exists());
}

#[test]
fn shard_names_parse_back() {
    use crate::store::parse_shard_name;
    let s = StripeId::random();
    let k = parse_shard_name(&format!("{}.17", s.to_hex())).unwrap();
    assert_eq!((k.stripe, k.index), (s, 17));
    assert!(parse_shard_name(&format!("{}.256", s.to_hex())).is_none());
    assert!(parse_shard_name(&format!("{}.", s.to_hex())).is_none());
    assert!(parse_shard_name(&format!("{}.+1", s.to_hex())).is_none());
    assert!(parse_shard_name(".tmp.x.1").is_none());
    assert!(parse_shard_name("zz.1").is_none());
}

/// Files this process holds open under `dir`, named or not: an anonymous
/// (`O_TMPFILE`) file reads as `<dir>/#<inode> (deleted)`.
fn open_files_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(&dir))
        .collect()
}

/// Shard files being written under `dir`: named temp files, or open
/// anonymous ones.
fn files_in_progress(dir: &Path) -> Vec<PathBuf> {
    let mut out = shard_files(dir);
    out.extend(open_files_under(&dir.join("shards")));
    out
}

#[tokio::test]
async fn abandoned_put_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[dir.path().to_path_buf()]).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    let mut client = node.raw_client().await;
    let stripe = StripeId::random();
    // Frames are written out once 2 MiB are pending: send two of a 3 MiB
    // shard so that a temp file exists (named, or anonymous and open).
    let data = random_bytes(3 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header_msg(&stripe.0, 0, data.len() as u64, &hash(&data)))
        .await
        .unwrap();
    tx.send(data_msg(data.slice(0..1 << 20))).await.unwrap();
    tx.send(data_msg(data.slice(1 << 20..2 << 20)))
        .await
        .unwrap();
    let call = tokio::spawn(async move {
        client
            .put_shard(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    // Wait until the node has started writing, then vanish mid-stream.
    for _ in 0..500 {
        if !files_in_progress(dir.path()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !files_in_progress(dir.path()).is_empty(),
        "the put never started"
    );
    call.abort();
    drop(tx);
    for _ in 0..500 {
        if files_in_progress(dir.path()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        files_in_progress(dir.path()).is_empty(),
        "{:?}",
        files_in_progress(dir.path())
    );
    assert!(!pool.stat_shard(&node.addr, stripe, 0).await.unwrap().exists);
    node.stop().await;
}

const STAT_PATH: &str = "/tessera.storage.v1.Storage/StatShard";
const DELETE_PATH: &str = "/tessera.storage.v1.Storage/DeleteShard";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A stat request carrying `header` as its signature, on a plain channel.
async fn stat_with_header(
    addr: &str,
    header: Option<String>,
    delete: bool,
) -> Result<(), tonic::Status> {
    let mut client = StorageClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let stripe = StripeId::random();
    let mut req = Request::new(ShardRef {
        stripe_id: Bytes::copy_from_slice(&stripe.0),
        shard_index: 0,
    });
    if let Some(h) = header {
        req.metadata_mut()
            .insert(tessera_proto::auth::AUTH_HEADER, h.parse().unwrap());
    }
    if delete {
        client.delete_shard(req).await.map(|_| ())
    } else {
        client.stat_shard(req).await.map(|_| ())
    }
}

#[tokio::test]
async fn unsigned_and_wrongly_signed_calls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[dir.path().to_path_buf()]).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;

    // A plain tonic client, no header.
    let err = stat_with_header(&node.addr, None, false).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // The client library without a secret.
    let err = StoragePool::new().node_info(&node.addr).await.unwrap_err();
    assert!(matches!(err, RpcError::Unauthenticated(_)), "{err:?}");
    // Another cluster's secret.
    let other = ClusterAuth::new(ClusterSecret::new("some-other-cluster-secret").unwrap());
    let err = StoragePool::with_auth(other)
        .put_shard(&node.addr, StripeId::random(), 0, random_bytes(10), [0; 32])
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Unauthenticated(_)), "{err:?}");
    assert!(shard_files(dir.path()).is_empty());
    // The status never echoes the secret or the expected signature.
    let good = test_auth().sign(STAT_PATH, unix_now());
    let err = stat_with_header(&node.addr, Some(format!("{good}00")), false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(!err.message().contains("storage-test-secret"));
    assert!(!err.message().contains(&good[20..]));
    node.stop().await;
}

#[tokio::test]
async fn signatures_are_bound_to_method_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[dir.path().to_path_buf()]).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    let auth = test_auth();
    let now = unix_now();

    // The hand-made header works for the method it was made for...
    let captured = auth.sign(STAT_PATH, now);
    stat_with_header(&node.addr, Some(captured.clone()), false)
        .await
        .unwrap();
    // ...and is refused when replayed to another method.
    let err = stat_with_header(&node.addr, Some(captured), true)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Stale (and far-future) timestamps are refused.
    for ts in [now - 600, now + 600] {
        let err = stat_with_header(&node.addr, Some(auth.sign(STAT_PATH, ts)), false)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    // A valid one for DeleteShard goes through.
    stat_with_header(&node.addr, Some(auth.sign(DELETE_PATH, now)), true)
        .await
        .unwrap();
    node.stop().await;
}

#[tokio::test]
async fn random_bytes_as_messages_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[dir.path().to_path_buf()]).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    // Count panics anywhere in the process (a handler panic only resets
    // its stream, so the answers alone would not show it).
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default_hook(info);
    }));
    let channel = ChannelPool::with_auth(test_auth()).get(&node.addr).unwrap();
    let paths = [
        STAT_PATH,
        DELETE_PATH,
        "/tessera.storage.v1.Storage/NodeInfo",
        "/tessera.storage.v1.Storage/GetShard",
        "/tessera.storage.v1.Storage/PutShard",
        "/tessera.storage.v1.Storage/NoSuchMethod",
    ];
    for (i, path) in paths.iter().enumerate() {
        for len in [1usize, 7, 64, 4096] {
            let body = random_bytes(len + i).to_vec();
            // Any answer is fine as long as nothing panics.
            let _ = tessera_proto::raw::unary(channel.clone(), path, body).await;
        }
    }
    assert_eq!(PANICS.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Still serving.
    pool.node_info(&node.addr).await.unwrap();
    node.stop().await;
}

// ---- O_DIRECT shard writes -------------------------------------------

/// Shard lengths around the 4096-byte blocks of direct writes (the header
/// is 48 bytes: 4048 fills one block) and the spills.
const DIRECT_LENGTHS: [usize; 10] = [
    0,
    1,
    4047,
    4048,
    4049,
    4096,
    256 << 10,
    SPILL_BYTES - 1,
    SPILL_BYTES + 12345,
    (5 << 20) + 7,
];

async fn open_store(dir: &Path, direct: bool) -> Arc<ShardStore> {
    let store = ShardStore::open(
        vec![dir.to_path_buf()],
        StoreOptions {
            max_shard_bytes: 64 << 20,
            read_buffer_bytes: 256 << 20,
            capacity_bytes: None,
        },
    )
    .await
    .unwrap();
    store.set_direct_io(direct);
    store
}

/// Sends `data` in frames of `frame` bytes.
async fn put_frames(
    store: &Arc<ShardStore>,
    key: ShardKey,
    data: &Bytes,
    frame: usize,
    blake3: [u8; 32],
) -> Result<(), StorageError> {
    let mut w = store.begin_put(key, data.len() as u64, blake3).await?;
    let mut off = 0;
    while off < data.len() {
        let end = (off + frame).min(data.len());
        w.write(data.slice(off..end)).await?;
        off = end;
    }
    w.finish().await
}

/// Pages of the file at `path` in the page cache (`mincore`).
fn cached_pages(path: &Path) -> usize {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let page = 4096;
    // SAFETY: a read-only shared mapping of an open file of `len` bytes,
    // only passed to mincore and unmapped before return; `vec` has one
    // byte per page of the mapping.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED);
        let mut vec = vec![0u8; len.div_ceil(page)];
        assert_eq!(libc::mincore(addr, len, vec.as_mut_ptr()), 0);
        libc::munmap(addr, len);
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }
}

/// Whether `path` is on tmpfs, where every file is in the page cache.
fn on_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `statfs` is plain data, filled in by the call on a
    // NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    st.f_type == libc::TMPFS_MAGIC
}

/// Puts and reads back a shard of every length in `lengths`, in 1 MiB
/// frames and in odd ones (a spill then overflows the aligned buffer),
/// and checks the file: the header block, the shard bytes, zeros to a
/// whole block; when written direct, none of it in the page cache.
async fn check_round_trips(store: &Arc<ShardStore>, dir: &Path, lengths: &[usize]) {
    for &len in lengths {
        for frame in [1 << 20, 333_333] {
            let key = ShardKey {
                stripe: StripeId::random(),
                index: 3,
            };
            let data = random_bytes(len);
            put_frames(store, key, &data, frame, hash(&data))
                .await
                .unwrap_or_else(|e| panic!("put of {len} bytes in {frame}-byte frames: {e}"));
            let path = shard_file(dir, key.stripe, 3);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                file_len(len as u64),
                "file length of a {len}-byte shard"
            );
            if store.direct_io(0) && !on_tmpfs(dir) {
                assert_eq!(
                    cached_pages(&path),
                    0,
                    "{len}-byte shard went through the cache"
                );
            }
            let file = std::fs::read(&path).unwrap();
            let (header, format) = ShardHeader::parse(&file).unwrap();
            assert_eq!(format, ShardFormat::V2);
            assert_eq!(header.length, len as u64);
            assert_eq!(header.blake3, hash(&data));
            assert!(file[HEADER_LEN..DATA_OFFSET].iter().all(|&b| b == 0));
            assert!(file[DATA_OFFSET..DATA_OFFSET + len] == data[..]);
            assert!(file[DATA_OFFSET + len..].iter().all(|&b| b == 0));
            assert_eq!(store.stat(key).await.unwrap(), Some(header));
            let got = store.get(key, Some(hash(&data))).await.unwrap();
            assert!(got.bytes == data, "{len}-byte shard read back differs");
        }
    }
}

#[tokio::test]
async fn shard_round_trip_direct_and_buffered() {
    for direct in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), direct).await;
        check_round_trips(&store, dir.path(), &DIRECT_LENGTHS).await;
        // ext4, xfs, btrfs and tmpfs (since Linux 6.6) take O_DIRECT: a
        // fallback here would mean the direct path went untested.
        assert_eq!(
            store.direct_io(0),
            direct,
            "direct {direct}: the test directory refused O_DIRECT"
        );
        assert_eq!(store.shard_count(), 2 * DIRECT_LENGTHS.len() as u64);
        let total: u64 = DIRECT_LENGTHS.iter().map(|&l| 2 * file_len(l as u64)).sum();
        assert_eq!(store.shard_bytes(), total);
        // A retried identical put succeeds without writing; different
        // bytes under the same name are refused.
        let key = ShardKey {
            stripe: StripeId::random(),
            index: 0,
        };
        let data = random_bytes(SPILL_BYTES + 12345);
        put_frames(&store, key, &data, 1 << 20, hash(&data))
            .await
            .unwrap();
        put_frames(&store, key, &data, 1 << 20, hash(&data))
            .await
            .unwrap();
        let other = random_bytes(data.len());
        let err = put_frames(&store, key, &other, 1 << 20, hash(&other))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Conflict { .. }), "{err:?}");
        assert_eq!(store.get(key, None).await.unwrap().bytes, data);
        assert!(files_in_progress(dir.path()).len() == store.shard_count() as usize);
    }
}

#[tokio::test]
async fn concurrent_direct_puts_keep_a_bounded_buffer_pool() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), true).await;
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = ShardKey {
                stripe: StripeId::random(),
                index: i,
            };
            let data = random_bytes((3 << 20) + i as usize);
            put_frames(&store, key, &data, 1 << 20, hash(&data))
                .await
                .unwrap();
            (key, data)
        }));
    }
    for t in tasks {
        let (key, data) = t.await.unwrap();
        assert_eq!(store.get(key, None).await.unwrap().bytes, data);
    }
    assert!(
        store.write_buffers_kept() <= 8,
        "{}",
        store.write_buffers_kept()
    );
}

#[tokio::test]
async fn failed_puts_leave_nothing_direct_and_buffered() {
    for direct in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), direct).await;
        let data = random_bytes((5 << 20) + 7);
        let key = ShardKey {
            stripe: StripeId::random(),
            index: 1,
        };
        let nothing_left = |what: &str| {
            let left = files_in_progress(dir.path());
            assert!(left.is_empty(), "direct {direct}, {what}: {left:?}");
        };

        // Every byte arrives, the hash does not match.
        let mut bad = hash(&data);
        bad[7] ^= 1;
        let err = put_frames(&store, key, &data, 1 << 20, bad)
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Mismatch { .. }), "{err:?}");
        nothing_left("wrong hash");

        // The stream ends early, after two spills.
        let mut w = store
            .begin_put(key, data.len() as u64, hash(&data))
            .await
            .unwrap();
        for off in (0..4 << 20).step_by(1 << 20) {
            w.write(data.slice(off..off + (1 << 20))).await.unwrap();
        }
        let err = w.finish().await.unwrap_err();
        assert!(matches!(err, StorageError::Mismatch { .. }), "{err:?}");
        nothing_left("short stream");

        // More bytes than announced.
        let mut w = store.begin_put(key, 10, hash(&data)).await.unwrap();
        let err = w.write(data.slice(0..11)).await.unwrap_err();
        assert!(matches!(err, StorageError::Mismatch { .. }), "{err:?}");
        drop(w);
        nothing_left("long stream");

        // The writer is dropped after a spill (the client went away).
        let mut w = store
            .begin_put(key, data.len() as u64, hash(&data))
            .await
            .unwrap();
        for off in (0..3 << 20).step_by(1 << 20) {
            w.write(data.slice(off..off + (1 << 20))).await.unwrap();
        }
        drop(w);
        nothing_left("abandoned");

        assert_eq!((store.shard_count(), store.shard_bytes()), (0, 0));
        assert!(store.get(key, None).await.is_err());
        // Still writable.
        put_frames(&store, key, &data, 1 << 20, hash(&data))
            .await
            .unwrap();
        assert_eq!(store.get(key, None).await.unwrap().bytes, data);
    }
}

#[tokio::test]
async fn refused_direct_io_falls_back_to_buffered_for_the_directory() {
    for at_write in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path(), true).await;
        if at_write {
            store.faults.refuse_direct_at_write();
        } else {
            store.faults.refuse_direct_at_open();
        }
        // The first put meets the refusal (at its first write, in the
        // middle of a shard of several spills) and still succeeds.
        let lengths = [SPILL_BYTES + 12345, 0, 4049, (5 << 20) + 7];
        check_round_trips(&store, dir.path(), &lengths[..1]).await;
        assert!(!store.direct_io(0), "at write {at_write}: still direct");
        // From then on the directory is written buffered, refusal or not.
        store.faults.clear();
        check_round_trips(&store, dir.path(), &lengths).await;
        assert!(!store.direct_io(0));
        assert!(temp_files_in_shards(dir.path()).is_empty());
    }
}

fn temp_files_in_shards(dir: &Path) -> Vec<PathBuf> {
    shard_files(dir)
        .into_iter()
        .filter(|p| crate::background_tests::is_temp_file(p))
        .collect()
}

/// A data directory on tmpfs: tmpfs takes O_DIRECT since Linux 6.6 and
/// refused it before (the store then falls back); shards work either way.
/// Without /dev/shm the fallback is forced through the configuration.
#[tokio::test]
async fn tmpfs_data_dir_works() {
    let shm = Path::new("/dev/shm");
    let (dir, direct) = if shm.is_dir() {
        (tempfile::tempdir_in(shm).unwrap(), true)
    } else {
        (tempfile::tempdir().unwrap(), false)
    };
    let store = open_store(dir.path(), direct).await;
    check_round_trips(
        &store,
        dir.path(),
        &[0, 1, 4049, 256 << 10, SPILL_BYTES + 12345],
    )
    .await;
    assert!(temp_files_in_shards(dir.path()).is_empty());
}

#[tokio::test]
async fn direct_io_is_on_by_default_and_can_be_turned_off() {
    assert!(StorageConfig::default().direct_io);
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let config = StorageConfig {
        data_dirs: vec![dir.path().to_path_buf()],
        zone: "z1".into(),
        shutdown_grace_ms: 3000,
        cluster_secret: Some(test_secret()),
        scrub_period_ms: 0,
        orphan_scan_interval_ms: 0,
        direct_io: false,
        ..StorageConfig::default()
    };
    let shutdown = CancellationToken::new();
    let node = Node {
        addr: addr.clone(),
        shutdown: shutdown.clone(),
        task: tokio::spawn(serve(config, listener, shutdown)),
    };
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &addr).await;
    let stripe = StripeId::random();
    let data = random_bytes((1 << 20) + 3);
    pool.put_shard(&addr, stripe, 2, data.clone(), hash(&data))
        .await
        .unwrap();
    assert_eq!(pool.get_shard(&addr, stripe, 2, None).await.unwrap(), data);
    assert_eq!(
        std::fs::metadata(shard_file(dir.path(), stripe, 2))
            .unwrap()
            .len(),
        file_len(data.len() as u64)
    );
    node.stop().await;
}

/// CPU time of this process (user, system), in milliseconds.
fn process_cpu_ms() -> (f64, f64) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` points to writable memory of the right type.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) },
        0
    );
    // SAFETY: getrusage returned 0, so it filled `ru`.
    let ru = unsafe { ru.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    (ms(ru.ru_utime), ms(ru.ru_stime))
}

/// Writes the same shards direct and buffered, in alternating rounds, and
/// prints the CPU each way costs per MiB (`--no-capture`; run with
/// `--release` for meaningful user time; `WRITE_BENCH_MIB` sets the MiB
/// per round and mode, `WRITE_BENCH_DIR` the disk). 256 KiB shards, as a
/// 1 MiB object makes with k = 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_cpu_direct_and_buffered() {
    let dir =
        tempfile::tempdir_in(std::env::var("WRITE_BENCH_DIR").unwrap_or("/tmp".into())).unwrap();
    let mib: usize = std::env::var("WRITE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let store = open_store(dir.path(), true).await;
    let shard = random_bytes(256 << 10);
    let blake3 = hash(&shard);
    let mut totals = [(0.0, 0.0); 2];
    for _round in 0..3 {
        for (m, direct) in [true, false].into_iter().enumerate() {
            store.set_direct_io(direct);
            let (u0, s0) = process_cpu_ms();
            let mut keys = Vec::new();
            for _ in 0..mib * 4 {
                let key = ShardKey {
                    stripe: StripeId::random(),
                    index: 0,
                };
                put_frames(&store, key, &shard, 1 << 20, blake3)
                    .await
                    .unwrap();
                keys.push(key);
            }
            let (u1, s1) = process_cpu_ms();
            totals[m].0 += u1 - u0;
            totals[m].1 += s1 - s0;
            assert_eq!(store.direct_io(0), direct, "O_DIRECT refused");
            for key in keys {
                assert!(store.delete(key).await.unwrap());
            }
        }
    }
    for (m, name) in ["direct", "buffered"].into_iter().enumerate() {
        let per = (3 * mib) as f64;
        eprintln!(
            "{name}: {:.3} ms user + {:.3} ms system per MiB written",
            totals[m].0 / per,
            totals[m].1 / per
        );
    }
}

/// A shard the kernel has cached (path and bytes) is read on the executor;
/// the fast path never serves a damaged copy: the read falls through to
/// the blocking path, which quarantines it.
#[tokio::test]
async fn cached_reads_skip_the_blocking_pool_and_never_serve_a_bad_copy() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    // Buffered writes leave the bytes in the page cache.
    let store = open_store(dir.path(), false).await;
    let key = ShardKey {
        stripe: StripeId::random(),
        index: 1,
    };
    // Small enough to hash on the executor (CACHED_HASHED_READ_MAX).
    let data = random_bytes(200_000);
    put_frames(&store, key, &data, 1 << 20, hash(&data))
        .await
        .unwrap();
    let before = store.cached_reads();
    let got = store.get(key, Some(hash(&data))).await.unwrap();
    assert!(got.into_parts().0 == data);
    assert_eq!(store.cached_reads(), before + 1, "served from the caches");

    // Too large to hash on the executor: the blocking pool reads it.
    let big = ShardKey {
        stripe: StripeId::random(),
        index: 2,
    };
    let big_data = random_bytes(300_000);
    put_frames(&store, big, &big_data, 1 << 20, hash(&big_data))
        .await
        .unwrap();
    let got = store.get(big, Some(hash(&big_data))).await.unwrap();
    assert!(got.into_parts().0 == big_data);
    assert_eq!(store.cached_reads(), before + 1, "not on the executor");

    let path = shard_file(dir.path(), key.stripe, 1);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0x55], (DATA_OFFSET + 777) as u64).unwrap();
    drop(f);
    let err = store.get(key, None).await.map(|_| ()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(!path.exists(), "quarantined by the blocking path");
    assert_eq!(store.cached_reads(), before + 1);
}

/// One request on the shard stream, over `channel`; its HTTP status and
/// gRPC status (`Ok` when the headers carry none).
async fn stream_request(channel: AuthChannel, shard: Option<&str>) -> (u16, Code) {
    let headers: Vec<(&str, String)> = shard
        .map(|v| (tessera_proto::shard_stream::SHARD_HEADER, v.to_string()))
        .into_iter()
        .collect();
    raw_stream(
        channel,
        tessera_proto::shard_stream::GET_PATH,
        &headers,
        Bytes::new(),
    )
    .await
}

/// Request headers of a raw shard stream request.
type Headers<'a> = Vec<(&'a str, String)>;

/// A shard stream request as given (headers, body), and what came back:
/// the HTTP status and the gRPC status (from the trailers-only headers,
/// else from the trailers); `(0, Code::Aborted)` for a stream that HTTP/2
/// reset (as it does a body shorter than its content-length).
async fn raw_stream(
    channel: AuthChannel,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> (u16, Code) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req = http::Request::builder()
        .method(http::Method::POST)
        .uri(path);
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    // A body of unknown size: no content-length but the one given.
    let frames = futures::stream::iter([Ok::<_, std::convert::Infallible>(
        http_body::Frame::data(body),
    )]);
    let body = tonic::body::Body::new(http_body_util::StreamBody::new(frames));
    let Ok(resp) = channel.oneshot(req.body(body).unwrap()).await else {
        return (0, Code::Aborted);
    };
    let http = resp.status().as_u16();
    if let Some(s) = Status::from_header_map(resp.headers()) {
        return (http, s.code());
    }
    let trailers = resp
        .into_body()
        .collect()
        .await
        .ok()
        .and_then(|b| b.trailers().cloned());
    let code = trailers
        .as_ref()
        .and_then(Status::from_header_map)
        .map_or(Code::Ok, |s| s.code());
    (http, code)
}

/// Gateways read shards over the plain HTTP/2 shard stream: every size
/// (one frame or several) comes back exact, errors map like gRPC's, junk
/// and unsigned requests are refused, and a node without the stream (an
/// older version) is still read, over gRPC.
#[tokio::test]
async fn the_shard_stream_serves_reads_and_refuses_junk() {
    let t = OneShard::put(0, 1).await;
    let (pool, addr) = (&t.pool, &t.node.addr);
    for len in [1usize, 300_000, (3 << 20) + 7] {
        let stripe = StripeId::random();
        let data = random_bytes(len);
        pool.put_shard(addr, stripe, 4, data.clone(), hash(&data))
            .await
            .unwrap();
        let got = pool.get_shard_unverified(addr, stripe, 4).await.unwrap();
        assert!(got == data, "{len} bytes");
    }
    let err = pool
        .get_shard_unverified(addr, StripeId::random(), 0)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::NotFound(_)), "{err:?}");

    let signed = ChannelPool::with_auth(test_auth()).get(addr).unwrap();
    let good = tessera_proto::shard_stream::shard_header(&t.stripe, 0);
    assert_eq!(
        stream_request(signed.clone(), Some(&good)).await,
        (200, Code::Ok)
    );
    for bad in [
        None,
        Some("zz.1"),
        Some("00.1"),
        Some(&format!("{}.300", t.stripe.to_hex())[..]),
    ] {
        assert_eq!(
            stream_request(signed.clone(), bad).await.1,
            Code::InvalidArgument,
            "{bad:?}"
        );
    }
    let unsigned = ChannelPool::default().get(addr).unwrap();
    assert_eq!(
        stream_request(unsigned, Some(&good)).await.1,
        Code::Unauthenticated
    );
    t.node.stop().await;

    // A node that only has the gRPC service.
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), true).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tessera_proto::auth::RequireAuthLayer::new(test_auth()))
            .add_service(tessera_proto::storage::storage_server::StorageServer::new(
                crate::StorageService::new(store, "z1".into()),
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move { token.cancelled().await },
            ),
    );
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &addr).await;
    // Written over gRPC too: the node refuses the stream before it reads
    // the body, large ones included (a rolling upgrade writes to old nodes).
    for len in [70_000usize, (3 << 20) + 7] {
        let stripe = StripeId::random();
        let data = random_bytes(len);
        pool.put_shard(&addr, stripe, 2, data.clone(), hash(&data))
            .await
            .unwrap();
        let got = pool.get_shard_unverified(&addr, stripe, 2).await.unwrap();
        assert!(got == data, "{len} bytes over gRPC");
    }
    stop.cancel();
    let _ = server.await;
}

/// Gateways write shards over the plain HTTP/2 shard stream: a write
/// announced right is stored and readable; a missing or malformed header,
/// a body that is not what its length and hash say, or an unsigned
/// request is refused and leaves nothing behind.
#[tokio::test]
async fn the_shard_stream_takes_writes_and_refuses_junk() {
    use tessera_proto::shard_stream::{
        blake3_header, shard_header, BLAKE3_HEADER, PUT_PATH, SHARD_HEADER,
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(&[dir.path().to_path_buf()]).await;
    let pool = StoragePool::with_auth(test_auth());
    wait_until_serving(&pool, &node.addr).await;
    let signed = ChannelPool::with_auth(test_auth()).get(&node.addr).unwrap();
    let put = |stripe: StripeId, hash: [u8; 32], len: Option<usize>| {
        let mut headers = vec![
            (SHARD_HEADER, shard_header(&stripe, 3)),
            (BLAKE3_HEADER, blake3_header(&hash)),
        ];
        if let Some(len) = len {
            headers.push(("content-length", len.to_string()));
        }
        headers
    };

    // Well-formed writes of every size, empty included, read back exactly.
    for len in [0usize, 1, 300_000, (3 << 20) + 7] {
        let stripe = StripeId::random();
        let data = random_bytes(len);
        let headers = put(stripe, hash(&data), Some(len));
        assert_eq!(
            raw_stream(signed.clone(), PUT_PATH, &headers, data.clone()).await,
            (200, Code::Ok),
            "{len} bytes"
        );
        let got = pool
            .get_shard_unverified(&node.addr, stripe, 3)
            .await
            .unwrap();
        assert!(got == data, "{len} bytes");
    }

    // Junk: each refused, with nothing stored under its name.
    let data = random_bytes(100_000);
    let good = hash(&data);
    let mut bad_hash = good;
    bad_hash[7] ^= 1;
    // (what, headers, the codes it may be refused with); the body is `data`.
    let cases: Vec<(&str, Headers, &[Code])> = vec![
        (
            "wrong hash",
            put(StripeId::random(), bad_hash, Some(data.len())),
            &[Code::InvalidArgument],
        ),
        (
            "body shorter than its length",
            put(StripeId::random(), good, Some(data.len() + 1)),
            // HTTP/2 itself resets it (content-length is checked).
            &[Code::Aborted],
        ),
        (
            "no length",
            put(StripeId::random(), good, None),
            &[Code::InvalidArgument],
        ),
        (
            "no hash",
            vec![
                (SHARD_HEADER, shard_header(&StripeId::random(), 3)),
                ("content-length", data.len().to_string()),
            ],
            &[Code::InvalidArgument],
        ),
        (
            "short hash",
            vec![
                (SHARD_HEADER, shard_header(&StripeId::random(), 3)),
                (BLAKE3_HEADER, "ab".repeat(31)),
                ("content-length", data.len().to_string()),
            ],
            &[Code::InvalidArgument],
        ),
        (
            "no shard",
            vec![
                (BLAKE3_HEADER, blake3_header(&good)),
                ("content-length", data.len().to_string()),
            ],
            &[Code::InvalidArgument],
        ),
        (
            "shard too large",
            put(StripeId::random(), good, Some(usize::MAX)),
            // Refused before the body is read; unless the body ended
            // first, and HTTP/2 reset the stream for its short length.
            &[Code::InvalidArgument, Code::Aborted],
        ),
    ];
    for (what, headers, codes) in cases {
        let (_, got) = raw_stream(signed.clone(), PUT_PATH, &headers, data.clone()).await;
        assert!(codes.contains(&got), "{what}: {got:?}");
        if let Some(v) = headers.iter().find(|(n, _)| *n == SHARD_HEADER) {
            let (stripe, index) = tessera_proto::shard_stream::parse_shard_header(&v.1).unwrap();
            let err = pool
                .get_shard_unverified(&node.addr, stripe, index)
                .await
                .unwrap_err();
            assert!(matches!(err, RpcError::NotFound(_)), "{what}: {err:?}");
        }
    }

    // Unsigned: refused before a byte is stored.
    let stripe = StripeId::random();
    let unsigned = ChannelPool::default().get(&node.addr).unwrap();
    let headers = put(stripe, good, Some(data.len()));
    assert_eq!(
        raw_stream(unsigned, PUT_PATH, &headers, data.clone())
            .await
            .1,
        Code::Unauthenticated
    );
    let err = pool
        .get_shard_unverified(&node.addr, stripe, 3)
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::NotFound(_)), "{err:?}");

    // An unknown method of the stream service.
    assert_eq!(
        raw_stream(signed, "/tessera.storage.Shards/Nope", &headers, data)
            .await
            .1,
        Code::Unimplemented
    );
    node.stop().await;
}
