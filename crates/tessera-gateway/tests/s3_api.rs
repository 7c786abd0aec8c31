//! The S3 API end to end: `tessera_gateway::serve` in front of a fake meta
//! node and fake storage nodes (real gRPC), driven by raw HTTP requests
//! signed with SigV4.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use md5::{Digest, Md5};
use tessera_gateway::GatewayConfig;
use tokio_util::sync::CancellationToken;

use common::s3client::S3Client;
use common::{meta_node, pattern, storage_nodes, FakeMeta, FakeStorage};

struct Harness {
    endpoint: String,
    meta_addr: String,
    meta: Arc<FakeMeta>,
    nodes: Vec<Arc<FakeStorage>>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), tessera_gateway::GatewayError>>,
}

impl Harness {
    fn alice(&self) -> S3Client {
        S3Client::new(&self.endpoint, Some(("ALICEKEY", "alice-secret")))
    }
    fn bob(&self) -> S3Client {
        S3Client::new(&self.endpoint, Some(("BOBKEY", "bob-secret")))
    }
    fn shards(&self) -> usize {
        self.nodes.iter().map(|n| n.count()).sum()
    }
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

async fn harness_with(tune: impl FnOnce(&mut GatewayConfig)) -> Harness {
    let shutdown = CancellationToken::new();
    let (nodes, map) = storage_nodes(6, &shutdown).await;
    let (meta, meta_addr) = meta_node(&shutdown).await;
    *meta.map.lock().unwrap() = map;
    meta.add_key("ALICEKEY", "alice-secret");
    meta.add_key("BOBKEY", "bob-secret");
    let mut config = GatewayConfig {
        meta: vec![meta_addr.to_string()],
        shard_size: 16 << 10,
        inline_threshold: 1024,
        gc_grace_ms: 300,
        ..GatewayConfig::default()
    };
    tune(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(tessera_gateway::serve(config, listener, shutdown.clone()));
    Harness {
        endpoint,
        meta_addr: meta_addr.to_string(),
        meta,
        nodes,
        shutdown,
        server,
    }
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_are_refused() {
    let h = harness().await;
    let anon = S3Client::new(&h.endpoint, None);
    for r in [
        anon.get("/").await,
        anon.get("/bucket").await,
        anon.put("/bucket", vec![]).await,
        anon.put("/bucket/key", b"x".to_vec()).await,
        anon.get("/bucket/key").await,
        anon.delete("/bucket/key").await,
    ] {
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.code(), "AccessDenied");
    }
    let wrong_secret = S3Client::new(&h.endpoint, Some(("ALICEKEY", "not-the-secret")));
    let r = wrong_secret.get("/").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "SignatureDoesNotMatch")
    );
    let unknown = S3Client::new(&h.endpoint, Some(("NOSUCHKEY", "x")));
    let r = unknown.get("/").await;
    assert_eq!((r.status, r.code().as_str()), (403, "InvalidAccessKeyId"));
    // Signed for another region.
    let mut other = h.alice();
    other.region = "eu-west-1".into();
    assert_eq!(other.get("/").await.code(), "AuthorizationHeaderMalformed");
    assert!(h.meta.buckets.lock().unwrap().is_empty());
    h.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_and_ownership() {
    let h = harness().await;
    let (alice, bob) = (h.alice(), h.bob());
    let r = alice.put("/photos", vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = alice.put("/photos", vec![]).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "BucketAlreadyOwnedByYou")
    );
    let r = bob.put("/photos", vec![]).await;
    assert_eq!((r.status, r.code().as_str()), (409, "BucketAlreadyExists"));
    for bad in [
        "/Bad_Name",
        "/ab",
        "/192.168.1.1",
        "/a..b",
        "/xn--abc",
        "/-abc",
    ] {
        let r = alice.put(bad, vec![]).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "InvalidBucketName"),
            "{bad}"
        );
    }
    assert!(alice.get("/").await.text().contains("<Name>photos</Name>"));
    assert!(!bob.get("/").await.text().contains("photos"));
    assert_eq!(alice.head("/photos").await.status, 200);
    assert_eq!(bob.head("/photos").await.status, 403);
    assert_eq!(alice.head("/nosuchbucket").await.status, 404);
    let r = bob.put("/photos/k", b"x".to_vec()).await;
    assert_eq!((r.status, r.code().as_str()), (403, "AccessDenied"));
    let r = bob
        .send("GET", "/photos", &[("list-type", "2")], &[], vec![])
        .await;
    assert_eq!(r.status, 403);
    let r = alice.get("/nosuchbucket/k").await;
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchBucket"));
    assert_eq!(alice.put("/photos/k", b"x".to_vec()).await.status, 200);
    let r = alice.delete("/photos").await;
    assert_eq!((r.status, r.code().as_str()), (409, "BucketNotEmpty"));
    assert_eq!(alice.delete("/photos/k").await.status, 204);
    assert_eq!(alice.delete("/photos").await.status, 204);
    assert_eq!(alice.head("/photos").await.status, 404);
    let r = alice.delete("/photos").await;
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchBucket"));
    h.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_roundtrip() {
    let h = harness().await;
    let alice = h.alice();
    let r = alice.put("/bkt1", vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Small object: inline, with metadata.
    let r = alice
        .send(
            "PUT",
            "/bkt1/dir/small.txt",
            &[],
            &[("content-type", "text/plain"), ("x-amz-meta-color", "blue")],
            b"hello".to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("etag").unwrap(),
        format!("\"{}\"", md5_hex(b"hello"))
    );
    let r = alice.get("/bkt1/dir/small.txt").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"hello");
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(r.header("x-amz-meta-color").as_deref(), Some("blue"));
    assert!(r.header("last-modified").is_some());
    assert_eq!(h.shards(), 0, "inline objects use no shards");

    // Large object: striped.
    let data = pattern(300_000, 7);
    let r = alice.put("/bkt1/big", data.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("etag").unwrap(), format!("\"{}\"", md5_hex(&data)));
    assert!(h.shards() > 0);
    let r = alice.get("/bkt1/big").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), data.len());
    assert!(r.body[..] == data[..]);
    let r = alice.head("/bkt1/big").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("300000"));

    // Ranges.
    let r = alice
        .send(
            "GET",
            "/bkt1/big",
            &[],
            &[("range", "bytes=100-199")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(&r.body[..], &data[100..200]);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 100-199/300000")
    );
    let r = alice
        .send("GET", "/bkt1/big", &[], &[("range", "bytes=-10")], vec![])
        .await;
    assert_eq!(&r.body[..], &data[data.len() - 10..]);
    let r = alice
        .send(
            "GET",
            "/bkt1/big",
            &[],
            &[("range", "bytes=65530-")],
            vec![],
        )
        .await;
    assert_eq!(&r.body[..], &data[65530..]);
    let r = alice
        .send(
            "GET",
            "/bkt1/big",
            &[],
            &[("range", "bytes=300000-")],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (416, "InvalidRange"));

    // Conditional GET.
    let etag = format!("\"{}\"", md5_hex(&data));
    let r = alice
        .send("GET", "/bkt1/big", &[], &[("if-none-match", &etag)], vec![])
        .await;
    assert_eq!(r.status, 304);
    let r = alice
        .send("GET", "/bkt1/big", &[], &[("if-match", "\"nope\"")], vec![])
        .await;
    assert_eq!(r.status, 412);

    // Delete is idempotent.
    assert_eq!(alice.delete("/bkt1/big").await.status, 204);
    let r = alice.get("/bkt1/big").await;
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchKey"));
    assert_eq!(alice.delete("/bkt1/big").await.status, 204);
    // Its shards go after the grace period.
    wait_for(|| h.shards() == 0).await;
    h.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_refused_by_a_full_meta_is_a_503_and_leaves_no_shards() {
    use std::sync::atomic::Ordering::SeqCst;
    let h = harness().await;
    let alice = h.alice();
    assert_eq!(alice.put("/fullbkt", vec![]).await.status, 200);
    let data = pattern(300_000, 9);
    assert_eq!(alice.put("/fullbkt/kept", data.clone()).await.status, 200);
    let before = h.shards();
    assert!(before > 0);

    h.meta.full.store(true, SeqCst);
    let r = alice.put("/fullbkt/refused", pattern(300_000, 10)).await;
    assert_eq!((r.status, r.code().as_str()), (503, "ServiceUnavailable"));
    assert!(r.text().contains("meta disk nearly full"), "{}", r.text());
    // The shards written before the refusal are deleted (the delete is
    // asynchronous to the answer).
    wait_for_shards(&h, before).await;

    // Refused after it committed (the retry of a try whose answer was
    // lost), and meta cannot then be asked: the outcome is unknown to the
    // gateway, so the client is not told the PUT succeeded, and the shards
    // stay (GC judges them). It was told success before: a 200 whose
    // object might not exist.
    h.meta.full_after_commit.store(true, SeqCst);
    h.meta.reads_fail_after_refusal.store(true, SeqCst);
    let r = alice.put("/fullbkt/unknown", pattern(300_000, 15)).await;
    assert_eq!(r.status / 100, 5, "{} {}", r.status, r.text());
    h.meta.full_after_commit.store(false, SeqCst);
    h.meta.reads_fail_after_refusal.store(false, SeqCst);
    h.meta.reads_fail.store(false, SeqCst);
    // Its shards stay: a wrongful delete would start at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.shards(), 2 * before);

    // Deletes and reads still work.
    assert_eq!(alice.get("/fullbkt/kept").await.body[..], data[..]);
    assert_eq!(alice.delete("/fullbkt/kept").await.status, 204);
    h.meta.full.store(false, SeqCst);
    assert_eq!(alice.put("/fullbkt/refused", data).await.status, 200);
}

/// Waits (up to 10 s) for the storage nodes to hold `want` shards.
async fn wait_for_shards(h: &Harness, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.shards() != want {
        assert!(
            Instant::now() < deadline,
            "{} shards, want {want}",
            h.shards()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_refused_by_a_full_meta_is_a_503_and_leaves_no_shards() {
    use std::sync::atomic::Ordering::SeqCst;
    let h = harness().await;
    let alice = h.alice();
    assert_eq!(alice.put("/fullparts", vec![]).await.status, 200);
    let r = alice
        .send("POST", "/fullparts/mp", &[("uploads", "")], &[], vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = between_all(&r.text(), "<UploadId>", "</UploadId>")
        .pop()
        .expect("UploadId");
    let part = |n: u32, data: Vec<u8>| {
        let (alice, id) = (alice.clone(), id.clone());
        async move {
            let n = n.to_string();
            alice
                .send(
                    "PUT",
                    "/fullparts/mp",
                    &[("partNumber", &n), ("uploadId", &id)],
                    &[],
                    data,
                )
                .await
        }
    };
    assert_eq!(part(1, pattern(300_000, 11)).await.status, 200);
    let before = h.shards();
    assert!(before > 0);

    // Refused before anything is recorded: a 503, and the part's shards
    // go at once (they stayed until the orphan scan).
    h.meta.full.store(true, SeqCst);
    let r = part(2, pattern(300_000, 12)).await;
    assert_eq!((r.status, r.code().as_str()), (503, "ServiceUnavailable"));
    assert!(r.text().contains("meta disk nearly full"), "{}", r.text());
    wait_for_shards(&h, before).await;

    // Refused after the part was recorded (a retry whose first answer was
    // lost): the part stands, so its shards stay and the upload succeeds.
    h.meta.full_after_commit.store(true, SeqCst);
    let r = part(2, pattern(300_000, 13)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    h.meta.full.store(false, SeqCst);
    h.meta.full_after_commit.store(false, SeqCst);
    // Part 2 is the size of part 1: as many shards, none deleted (a
    // wrongful delete would start at once; the first one above took far
    // less than this wait).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.shards(), 2 * before);
    let r = alice
        .send("GET", "/fullparts/mp", &[("uploadId", &id)], &[], vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        between_all(&r.text(), "<PartNumber>", "</PartNumber>"),
        ["1", "2"]
    );

    // Recorded, refused, and meta cannot then be asked: unknown, so an
    // error (never a success that may not be), and the shards stay.
    h.meta.full.store(true, SeqCst);
    h.meta.full_after_commit.store(true, SeqCst);
    h.meta.reads_fail_after_refusal.store(true, SeqCst);
    let r = part(3, pattern(300_000, 14)).await;
    assert_eq!(r.status / 100, 5, "{} {}", r.status, r.text());
    h.meta.full.store(false, SeqCst);
    h.meta.full_after_commit.store(false, SeqCst);
    h.meta.reads_fail_after_refusal.store(false, SeqCst);
    h.meta.reads_fail.store(false, SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.shards(), 3 * before);
    assert_eq!(part(4, pattern(300_000, 16)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_whose_outcome_is_unknown_is_not_acknowledged() {
    use std::sync::atomic::Ordering::SeqCst;
    let h = harness().await;
    let alice = h.alice();
    assert_eq!(alice.put("/completes", vec![]).await.status, 200);
    // One upload of one part; returns the part's data and its ETag.
    let upload = |key: &'static str, seed: u8| {
        let alice = alice.clone();
        async move {
            let path = format!("/completes/{key}");
            let r = alice
                .send("POST", &path, &[("uploads", "")], &[], vec![])
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let id = between_all(&r.text(), "<UploadId>", "</UploadId>")
                .pop()
                .expect("UploadId");
            let data = pattern(300_000, seed);
            let q = [("partNumber", "1"), ("uploadId", id.as_str())];
            let r = alice.send("PUT", &path, &q, &[], data.clone()).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let etag = r.headers["etag"].to_str().unwrap().to_string();
            let xml = format!(
                "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>\
                 <ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
            );
            (path, id, data, xml)
        }
    };

    // The first try commits and its answer is lost; the retry finds no
    // upload, and meta confirms the commit: a success.
    let (path, id, data, xml) = upload("confirmed", 21).await;
    h.meta.lose_first_answer.store(true, SeqCst);
    let r = alice
        .send("POST", &path, &[("uploadId", &id)], &[], xml.into_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    h.meta.lose_first_answer.store(false, SeqCst);
    assert_eq!(alice.get(&path).await.body[..], data[..]);

    // The same, but meta cannot then be asked: unknown, so an error (it
    // answered success), though the object is there.
    let (path, id, data, xml) = upload("unknown", 22).await;
    h.meta.lose_first_answer.store(true, SeqCst);
    h.meta.reads_fail_after_refusal.store(true, SeqCst);
    let r = alice
        .send("POST", &path, &[("uploadId", &id)], &[], xml.into_bytes())
        .await;
    assert_eq!(r.status / 100, 5, "{} {}", r.status, r.text());
    h.meta.lose_first_answer.store(false, SeqCst);
    h.meta.reads_fail_after_refusal.store(false, SeqCst);
    h.meta.reads_fail.store(false, SeqCst);
    assert_eq!(alice.get(&path).await.body[..], data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_puts_change_nothing() {
    let h = harness().await;
    let alice = h.alice();
    assert_eq!(alice.put("/bkt2", vec![]).await.status, 200);
    let data = pattern(200_000, 3);

    let wrong_md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(b"other"));
    let r = alice
        .send(
            "PUT",
            "/bkt2/k",
            &[],
            &[("content-md5", &wrong_md5)],
            data.clone(),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (400, "BadDigest"));
    // The body was read to its end: the connection stays open.
    assert_eq!(r.headers.get("connection"), None);
    let r = alice
        .send(
            "PUT",
            "/bkt2/k",
            &[],
            &[("content-md5", "not-base64!")],
            data.clone(),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidDigest"));
    // Refused on its headers, body unread: hyper closes the connection after
    // the answer, which must say so, or the client sends its next request
    // (the next one here) on a connection that is going away.
    assert_eq!(
        r.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    // x-amz-content-sha256 of another body.
    let other = hex::encode(sha2::Sha256::digest(b"other"));
    let r = alice
        .send(
            "PUT",
            "/bkt2/k",
            &[],
            &[("x-amz-content-sha256", &other)],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), "XAmzContentSHA256Mismatch");
    assert_eq!(alice.get("/bkt2/k").await.status, 404);
    // Shards written by the failed PUTs are removed.
    wait_for(|| h.shards() == 0).await;

    let long_key = format!("/bkt2/{}", "k".repeat(1025));
    let r = alice.put(&long_key, b"x".to_vec()).await;
    assert_eq!((r.status, r.code().as_str()), (400, "KeyTooLongError"));
    let ok_key = format!("/bkt2/{}", "k".repeat(1024));
    assert_eq!(alice.put(&ok_key, b"x".to_vec()).await.status, 200);

    // Keys that look like paths are opaque keys.
    assert_eq!(alice.put("/bkt2/../x", b"dots".to_vec()).await.status, 200);
    let r = alice.get("/bkt2/../x").await;
    assert_eq!(&r.body[..], b"dots");

    // Unsigned payloads work (Content-Length framed).
    let r = alice
        .send(
            "PUT",
            "/bkt2/unsigned",
            &[],
            &[("x-amz-content-sha256", "UNSIGNED-PAYLOAD")],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(alice.get("/bkt2/unsigned").await.body[..] == data[..]);

    // If-None-Match: * refuses an overwrite.
    let r = alice
        .send(
            "PUT",
            "/bkt2/unsigned",
            &[],
            &[("if-none-match", "*")],
            b"x".to_vec(),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (412, "PreconditionFailed"));
    h.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_deletes_old_shards_later() {
    let h = harness().await;
    let alice = h.alice();
    assert_eq!(alice.put("/bkt3", vec![]).await.status, 200);
    let v1 = pattern(100_000, 1);
    let v2 = pattern(100_000, 2);
    assert_eq!(alice.put("/bkt3/k", v1).await.status, 200);
    let one = h.shards();
    assert_eq!(alice.put("/bkt3/k", v2.clone()).await.status, 200);
    assert_eq!(
        h.shards(),
        2 * one,
        "old shards kept through the grace period"
    );
    assert!(alice.get("/bkt3/k").await.body[..] == v2[..]);
    wait_for(|| h.shards() == one).await;
    assert!(alice.get("/bkt3/k").await.body[..] == v2[..]);
    h.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing() {
    let h = harness().await;
    let alice = h.alice();
    assert_eq!(alice.put("/bkt4", vec![]).await.status, 200);
    let keys = ["a/1", "a/2", "b/1", "c", "d", "e/x/y"];
    for k in keys {
        assert_eq!(
            alice
                .put(&format!("/bkt4/{k}"), k.as_bytes().to_vec())
                .await
                .status,
            200
        );
    }
    let r = alice
        .send(
            "GET",
            "/bkt4",
            &[("list-type", "2"), ("delimiter", "/")],
            &[],
            vec![],
        )
        .await;
    let t = r.text();
    assert_eq!(r.status, 200, "{t}");
    for p in ["a/", "b/", "e/"] {
        assert!(t.contains(&format!("<Prefix>{p}</Prefix>")), "{t}");
    }
    assert!(
        t.contains("<Key>c</Key>") && t.contains("<Key>d</Key>"),
        "{t}"
    );
    assert!(!t.contains("<Key>a/1</Key>"), "{t}");
    assert!(t.contains("<KeyCount>5</KeyCount>"), "{t}");

    let r = alice
        .send(
            "GET",
            "/bkt4",
            &[("list-type", "2"), ("prefix", "a/")],
            &[],
            vec![],
        )
        .await;
    assert!(r.text().contains("<Key>a/1</Key>") && r.text().contains("<Key>a/2</Key>"));
    assert!(!r.text().contains("<Key>c</Key>"));

    // Paging two keys at a time finds every key exactly once.
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..10 {
        let mut q = vec![("list-type", "2"), ("max-keys", "2")];
        if let Some(t) = &token {
            q.push(("continuation-token", t.as_str()));
        }
        let r = alice.send("GET", "/bkt4", &q, &[], vec![]).await;
        let t = r.text();
        assert_eq!(r.status, 200, "{t}");
        found.extend(between_all(&t, "<Key>", "</Key>"));
        token = between_all(&t, "<NextContinuationToken>", "</NextContinuationToken>")
            .into_iter()
            .next();
        if token.is_none() {
            assert!(t.contains("<IsTruncated>false</IsTruncated>"), "{t}");
            break;
        }
    }
    assert_eq!(found, keys);

    // start-after, and v1 with a marker.
    let r = alice
        .send(
            "GET",
            "/bkt4",
            &[("list-type", "2"), ("start-after", "c")],
            &[],
            vec![],
        )
        .await;
    assert_eq!(between_all(&r.text(), "<Key>", "</Key>"), ["d", "e/x/y"]);
    let r = alice
        .send("GET", "/bkt4", &[("marker", "b/1")], &[], vec![])
        .await;
    assert_eq!(
        between_all(&r.text(), "<Key>", "</Key>"),
        ["c", "d", "e/x/y"]
    );
    let r = alice
        .send(
            "GET",
            "/bkt4",
            &[("list-type", "2"), ("continuation-token", "garbage!")],
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 400);
    h.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_two_dead_storage_nodes() {
    let h = harness().await;
    let alice = h.alice();
    assert_eq!(alice.put("/bkt5", vec![]).await.status, 200);
    let data = pattern(250_000, 9);
    assert_eq!(alice.put("/bkt5/k", data.clone()).await.status, 200);
    h.nodes[1]
        .dead
        .store(true, std::sync::atomic::Ordering::SeqCst);
    h.nodes[4]
        .dead
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = alice.get("/bkt5/k").await;
    assert_eq!(r.status, 200);
    assert!(r.body[..] == data[..]);
    h.shutdown.cancel();
}

/// A second gateway on the same meta, whose own map refresh is an hour
/// away (only the initial load and on-demand reloads happen), with an admin
/// port. Returns its S3 endpoint and admin address.
async fn second_gateway(h: &Harness) -> (String, String) {
    let meta_addr = h.meta_addr.clone();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin_addr = admin.local_addr().unwrap().to_string();
    drop(admin);
    let config = GatewayConfig {
        meta: vec![meta_addr],
        shard_size: 16 << 10,
        inline_threshold: 1024,
        cluster_refresh_ms: 3_600_000,
        admin_listen: Some(admin_addr.clone()),
        repair_enabled: false,
        gc_enabled: false,
        ..GatewayConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(tessera_gateway::serve(config, listener, h.shutdown.clone()));
    (endpoint, admin_addr)
}

/// Status code of `GET path` on an admin port (None: not answering yet).
async fn admin_status(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).await.ok()?;
    std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()
}

/// `/health/ready` on `admin`, polled for up to 5 s until `done` says so;
/// the last answer.
async fn readiness(admin: &str, done: impl Fn(Option<u16>) -> bool) -> Option<u16> {
    let mut status = None;
    for _ in 0..50 {
        status = admin_status(admin, "/health/ready").await;
        if done(status) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status
}

/// A new gateway (Alice's client to it) that loads a map showing every
/// node of `up` down (epoch `up.epoch + bump`), after which meta serves
/// them up again (the next epoch).
async fn gateway_with_an_all_down_map(
    h: &Harness,
    up: &tessera_types::ClusterMap,
    bump: u64,
) -> S3Client {
    let mut down = up.clone();
    down.epoch += bump;
    for n in &mut down.nodes {
        n.state = tessera_types::NodeState::Down;
    }
    *h.meta.map.lock().unwrap() = down;
    let (addr, admin) = second_gateway(h).await;
    let ready = readiness(&admin, |s| s == Some(200)).await;
    assert_eq!(ready, Some(200), "a map (all down) loaded");
    let mut back = up.clone();
    back.epoch += bump + 1;
    *h.meta.map.lock().unwrap() = back;
    S3Client::new(&addr, Some(("ALICEKEY", "alice-secret")))
}

/// After a whole-cluster restart a gateway can load its first map while
/// meta still shows every storage node down (or while meta has no leader
/// and it loads nothing). A read must not fail by that stale map: the
/// stripe is tried again with a map fresh from meta. (e2e caught a GET
/// whose body was cut short right after `tessera dev` restarted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_a_stale_map_reloads_it_to_read() {
    let h = harness().await;
    let alice = h.alice();
    assert_eq!(alice.put("/stale", vec![]).await.status, 200);
    let data = pattern(100_000, 3);
    assert_eq!(alice.put("/stale/k", data.clone()).await.status, 200);
    let up = h.meta.map.lock().unwrap().clone();

    // Meta unreachable while the gateway starts: it loads no map.
    h.meta.dead.store(true, std::sync::atomic::Ordering::SeqCst);
    let (first, admin) = second_gateway(&h).await;
    let ready = readiness(&admin, |s| s.is_some()).await;
    assert_eq!(ready, Some(503), "no map, not ready");
    h.meta
        .dead
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let c = S3Client::new(&first, Some(("ALICEKEY", "alice-secret")));
    let r = c.get("/stale/k").await;
    assert_eq!(r.status, 200);
    assert!(r.body[..] == data[..], "the first read loads the map");

    // Meta shows every node down while the gateway starts; they are up
    // again (a newer map) by the time a client reads.
    let c = gateway_with_an_all_down_map(&h, &up, 0).await;
    let r = c.get("/stale/k").await;
    assert_eq!(r.status, 200);
    assert!(r.body[..] == data[..], "read with the reloaded map");

    // The same for a write: a gateway whose map has every node down
    // reloads it rather than answer 503.
    let c = gateway_with_an_all_down_map(&h, &up, 2).await;
    assert_eq!(
        c.put("/stale/w", data.clone()).await.status,
        200,
        "written with the reloaded map"
    );
    let r = c.get("/stale/w").await;
    assert_eq!(r.status, 200);
    assert!(r.body[..] == data[..]);
    h.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns() {
    let h = harness().await;
    assert_eq!(h.alice().put("/bkt6", vec![]).await.status, 200);
    h.shutdown.cancel();
    let r = tokio::time::timeout(Duration::from_secs(15), h.server).await;
    assert!(matches!(r, Ok(Ok(Ok(())))), "serve returns after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness_with(|c| {
        c.header_read_timeout_ms = 500;
        c.body_idle_timeout_ms = 500;
    })
    .await;
    let addr = h.endpoint.trim_start_matches("http://").to_string();

    // Slowloris: headers that never finish.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let t = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
    assert!(n.is_ok(), "connection closed by the server");
    assert!(t.elapsed() < Duration::from_secs(3));

    // A body that stops: RequestTimeout, nothing stored.
    let alice = h.alice();
    assert_eq!(alice.put("/slow", vec![]).await.status, 200);
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!("PUT /slow/k HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100000\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&[0u8; 1000]).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
    // Unsigned: refused before the body is read at all, or timed out.
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    assert_eq!(alice.get("/slow/k").await.status, 404);
    h.shutdown.cancel();
}

fn between_all(t: &str, open: &str, close: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(a) = rest.find(open) {
        let after = &rest[a + open.len()..];
        let Some(b) = after.find(close) else { break };
        out.push(after[..b].to_string());
        rest = &after[b + close.len()..];
    }
    out
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached in 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
