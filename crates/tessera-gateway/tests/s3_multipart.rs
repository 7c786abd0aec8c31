//! Multipart uploads, CopyObject and DeleteObjects through the gateway,
//! against a real `tessera_meta::serve` node and six real storage nodes in
//! this process (port 0, real gRPC), driven by the raw SigV4 client.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use md5::{Digest, Md5};
use tessera_gateway::GatewayConfig;
use tessera_proto::MetaClient;
use tessera_types::meta::{MetaCommand, MetaQuery, MetaReply, QueryReply};
use tessera_types::{AccessKey, NodeState};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use common::pattern;
use common::s3client::{Resp, S3Client};

const MIB: usize = 1 << 20;

/// One meta node, six storage nodes and a gateway; all stop on drop.
struct Cluster {
    s3: S3Client,
    /// A second key that owns nothing.
    other: S3Client,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let secret = tessera_proto::ClusterSecret::new("multipart-test-secret-01").unwrap();
    let meta_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let meta_addr = meta_listener.local_addr().unwrap().to_string();
    let meta_config = tessera_meta::MetaConfig {
        id: 1,
        data_dir: dir.path().join("meta"),
        peers: BTreeMap::from([(1, meta_addr.clone())]),
        bootstrap: true,
        cluster_secret: Some(secret.clone()),
        ..Default::default()
    };
    tokio::spawn(tessera_meta::serve(
        meta_config,
        meta_listener,
        shutdown.clone(),
    ));
    for i in 0..6 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = tessera_storage::StorageConfig {
            data_dirs: vec![dir.path().join(format!("storage{i}"))],
            zone: format!("z{i}"),
            meta: vec![meta_addr.clone()],
            heartbeat_ms: 200,
            cluster_secret: Some(secret.clone()),
            ..Default::default()
        };
        tokio::spawn(tessera_storage::serve(config, l, shutdown.child_token()));
    }
    let meta = MetaClient::with_auth(
        vec![meta_addr.clone()],
        Duration::from_secs(15),
        tessera_proto::ClusterAuth::new(secret.clone()),
    );
    let key = AccessKey::generate("test", 0);
    let other = AccessKey::generate("other", 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    for k in [&key, &other] {
        loop {
            match meta.write(&MetaCommand::PutAccessKey(k.clone())).await {
                Ok(MetaReply::Ok | MetaReply::Replaced(_)) => break,
                r => assert!(Instant::now() < deadline, "meta not ready: {r:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    loop {
        if let Ok(QueryReply::ClusterMap(m)) = meta.query(&MetaQuery::ClusterMap).await {
            if m.nodes.iter().filter(|n| n.state == NodeState::Up).count() == 6 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "storage nodes did not register");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let config = GatewayConfig {
        meta: vec![meta_addr],
        shard_size: 256 << 10,
        gc_grace_ms: 200,
        cluster_secret: Some(secret),
        ..GatewayConfig::default()
    };
    tokio::spawn(tessera_gateway::serve(config, listener, shutdown.clone()));
    Cluster {
        s3: S3Client::new(&endpoint, Some((&key.id, &key.secret))),
        other: S3Client::new(&endpoint, Some((&other.id, &other.secret))),
        shutdown,
        _dir: dir,
    }
}

/// The text of the first `<tag>` in `xml`.
fn tag(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let a = xml.find(&open)? + open.len();
    let b = a + xml[a..].find(&close)?;
    Some(xml[a..b].to_string())
}

/// Every `<tag>` text in `xml`, in order.
fn tags(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(a) = rest.find(&open) {
        let from = a + open.len();
        let Some(b) = rest[from..].find(&close) else {
            break;
        };
        out.push(rest[from..from + b].to_string());
        rest = &rest[from + b..];
    }
    out
}

fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

async fn create_upload(s3: &S3Client, path: &str) -> String {
    let r = s3.send("POST", path, &[("uploads", "")], &[], vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    tag(&r.text(), "UploadId").expect("UploadId")
}

async fn upload_part(s3: &S3Client, path: &str, id: &str, n: u32, data: Vec<u8>) -> Resp {
    let n = n.to_string();
    s3.send(
        "PUT",
        path,
        &[("partNumber", &n), ("uploadId", id)],
        &[],
        data,
    )
    .await
}

async fn complete(s3: &S3Client, path: &str, id: &str, parts: &[(u32, &str)]) -> Resp {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (n, etag) in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    s3.send("POST", path, &[("uploadId", id)], &[], xml.into_bytes())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_roundtrip_and_errors() {
    let c = cluster().await;
    let s3 = &c.s3;
    let r = s3.put("/mpart", vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Three parts: 5 MiB, 5 MiB, 1 byte. Part 2 is uploaded twice; the
    // second upload replaces the first.
    let p1 = pattern(5 * MIB, 1);
    let p2 = pattern(5 * MIB, 2);
    let p3 = vec![7u8];
    let id = create_upload(s3, "/mpart/big").await;
    let mut etags = Vec::new();
    for (n, data) in [(1, &p1), (2, &pattern(5 * MIB, 9)), (2, &p2), (3, &p3)] {
        let r = upload_part(s3, "/mpart/big", &id, n, data.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("etag").unwrap(), format!("\"{}\"", md5_hex(data)));
        etags.push(r.header("etag").unwrap());
    }
    let (e1, e2, e3) = (etags[0].clone(), etags[2].clone(), etags[3].clone());

    // ListParts, with pagination.
    let r = s3
        .send(
            "GET",
            "/mpart/big",
            &[("uploadId", &id), ("max-parts", "2")],
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert_eq!(tags(&t, "PartNumber"), vec!["1", "2"]);
    assert_eq!(tag(&t, "IsTruncated").as_deref(), Some("true"));
    assert_eq!(tag(&t, "NextPartNumberMarker").as_deref(), Some("2"));
    assert_eq!(
        tags(&t, "Size"),
        vec![(5 * MIB).to_string(), (5 * MIB).to_string()]
    );
    let r = s3
        .send(
            "GET",
            "/mpart/big",
            &[("uploadId", &id), ("part-number-marker", "2")],
            &[],
            vec![],
        )
        .await;
    let t = r.text();
    assert_eq!(tags(&t, "PartNumber"), vec!["3"]);
    assert_eq!(tag(&t, "IsTruncated").as_deref(), Some("false"));

    // ListMultipartUploads shows it.
    let r = s3
        .send("GET", "/mpart", &[("uploads", "")], &[], vec![])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(tags(&r.text(), "UploadId"), vec![id.clone()]);

    // Errors at Complete.
    let r = complete(s3, "/mpart/big", &id, &[(2, &e2), (1, &e1)]).await;
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidPartOrder"));
    let r = complete(
        s3,
        "/mpart/big",
        &id,
        &[(1, &e1), (2, "\"0123456789abcdef0123456789abcdef\"")],
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidPart"));
    let r = complete(s3, "/mpart/big", &id, &[(1, &e1), (4, &e3)]).await;
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidPart"));
    let r = complete(s3, "/mpart/big", &id, &[(1, &e1), (3, &e3)]).await;
    assert_eq!(r.status, 200, "parts may be skipped: {}", r.text());
    // That completed the upload with parts 1 and 3.
    let r = s3.get("/mpart/big").await;
    assert_eq!(r.body.len(), 5 * MIB + 1);
    let r = complete(s3, "/mpart/big", &id, &[(1, &e1)]).await;
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchUpload"));

    // Now the three-part object.
    let id = create_upload(s3, "/mpart/big").await;
    for (n, data) in [(1, &p1), (2, &p2), (3, &p3)] {
        let r = upload_part(s3, "/mpart/big", &id, n, data.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = complete(s3, "/mpart/big", &id, &[(1, &e1), (2, &e2), (3, &e3)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut bin = Vec::new();
    for d in [&p1, &p2, &p3] {
        bin.extend_from_slice(&Md5::digest(d));
    }
    let want_etag = format!("\"{}-3\"", md5_hex(&bin));
    assert_eq!(
        tag(&r.text(), "ETag").map(|e| e.replace("&quot;", "\"")),
        Some(want_etag.clone())
    );
    let mut whole = p1.clone();
    whole.extend_from_slice(&p2);
    whole.extend_from_slice(&p3);
    let r = s3.get("/mpart/big").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag").unwrap(), want_etag);
    assert!(
        r.body[..] == whole[..],
        "multipart object read back identical"
    );
    // A range across the part 1 / part 2 boundary, and one ending on the
    // 1-byte last part.
    let from = 5 * MIB - 1000;
    let range = format!("bytes={}-{}", from, from + 1999);
    let r = s3
        .send("GET", "/mpart/big", &[], &[("range", &range)], vec![])
        .await;
    assert_eq!(r.status, 206);
    assert!(r.body[..] == whole[from..from + 2000]);
    let range = format!("bytes={}-", 10 * MIB - 10);
    let r = s3
        .send("GET", "/mpart/big", &[], &[("range", &range)], vec![])
        .await;
    assert_eq!(r.status, 206);
    assert!(r.body[..] == whole[10 * MIB - 10..]);
    // The upload is gone.
    let r = s3
        .send("GET", "/mpart/big", &[("uploadId", &id)], &[], vec![])
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchUpload"));

    // EntityTooSmall: a part other than the last below 5 MiB.
    let id = create_upload(s3, "/mpart/small").await;
    let small = upload_part(s3, "/mpart/small", &id, 1, vec![1; 100])
        .await
        .header("etag")
        .unwrap();
    let last = upload_part(s3, "/mpart/small", &id, 2, vec![2; 100])
        .await
        .header("etag")
        .unwrap();
    let r = complete(s3, "/mpart/small", &id, &[(1, &small), (2, &last)]).await;
    assert_eq!((r.status, r.code().as_str()), (400, "EntityTooSmall"));
    // A single small part is fine (it is the last).
    let r = complete(s3, "/mpart/small", &id, &[(1, &small)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s3.get("/mpart/small").await.body.len(), 100);

    // Bad part numbers, unknown uploads.
    let id = create_upload(s3, "/mpart/abort").await;
    for n in ["0", "10001", "x"] {
        let r = s3
            .send(
                "PUT",
                "/mpart/abort",
                &[("partNumber", n), ("uploadId", &id)],
                &[],
                vec![1],
            )
            .await;
        assert_eq!(r.status, 400, "part number {n}: {}", r.text());
        assert_eq!(r.code(), "InvalidArgument", "part number {n}");
    }
    let r = upload_part(s3, "/mpart/abort", "no-such-upload", 1, vec![1]).await;
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchUpload"));
    let r = complete(s3, "/mpart/abort", "no-such-upload", &[(1, &e1)]).await;
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchUpload"));
    // Another key may not touch the bucket's uploads.
    let r = c
        .other
        .send("GET", "/mpart", &[("uploads", "")], &[], vec![])
        .await;
    assert_eq!(r.status, 403);

    // Abort: the upload and its parts are gone.
    assert_eq!(
        upload_part(s3, "/mpart/abort", &id, 1, vec![1; 10])
            .await
            .status,
        200
    );
    let r = s3
        .send("DELETE", "/mpart/abort", &[("uploadId", &id)], &[], vec![])
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = s3
        .send("GET", "/mpart/abort", &[("uploadId", &id)], &[], vec![])
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchUpload"));
    let r = s3
        .send("DELETE", "/mpart/abort", &[("uploadId", &id)], &[], vec![])
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchUpload"));
    let r = s3
        .send("GET", "/mpart", &[("uploads", "")], &[], vec![])
        .await;
    assert!(tags(&r.text(), "UploadId").is_empty(), "{}", r.text());
    let r = s3.get("/mpart/abort").await;
    assert_eq!(r.status, 404);

    // ListMultipartUploads: prefix and markers.
    let a1 = create_upload(s3, "/mpart/a/1").await;
    let a2 = create_upload(s3, "/mpart/a/2").await;
    let b_id = create_upload(s3, "/mpart/b").await;
    let r = s3
        .send(
            "GET",
            "/mpart",
            &[("uploads", ""), ("prefix", "a/"), ("max-uploads", "1")],
            &[],
            vec![],
        )
        .await;
    let t = r.text();
    assert_eq!(tags(&t, "UploadId"), vec![a1.clone()]);
    assert_eq!(tag(&t, "IsTruncated").as_deref(), Some("true"));
    assert_eq!(tag(&t, "NextKeyMarker").as_deref(), Some("a/1"));
    let r = s3
        .send(
            "GET",
            "/mpart",
            &[
                ("uploads", ""),
                ("prefix", "a/"),
                ("key-marker", "a/1"),
                ("upload-id-marker", &a1),
            ],
            &[],
            vec![],
        )
        .await;
    assert_eq!(tags(&r.text(), "UploadId"), vec![a2]);

    // With a delimiter, a/1 and a/2 collapse into the common prefix "a/".
    let r = s3
        .send(
            "GET",
            "/mpart",
            &[("uploads", ""), ("delimiter", "/")],
            &[],
            vec![],
        )
        .await;
    let t = r.text();
    assert_eq!(
        tags(&t, "Prefix").into_iter().filter(|p| p == "a/").count(),
        1,
        "{t}"
    );
    assert_eq!(tags(&t, "UploadId"), vec![b_id]);

    // Deleting a bucket (no objects) drops its uploads in progress.
    assert_eq!(s3.put("/mpgone", vec![]).await.status, 200);
    let id = create_upload(s3, "/mpgone/k").await;
    assert_eq!(
        upload_part(s3, "/mpgone/k", &id, 1, vec![1; 10])
            .await
            .status,
        200
    );
    let r = s3.delete("/mpgone").await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(s3.put("/mpgone", vec![]).await.status, 200);
    let r = s3
        .send("GET", "/mpgone", &[("uploads", "")], &[], vec![])
        .await;
    assert!(tags(&r.text(), "UploadId").is_empty(), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_part_copy_copy_object_delete_objects() {
    let c = cluster().await;
    let s3 = &c.s3;
    assert_eq!(s3.put("/cpsrc", vec![]).await.status, 200);
    assert_eq!(s3.put("/cpdst", vec![]).await.status, 200);
    let src = pattern(6 * MIB + 123, 3);
    let r = s3
        .send(
            "PUT",
            "/cpsrc/src",
            &[],
            &[("x-amz-meta-color", "blue"), ("content-type", "text/x-src")],
            src.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    s3.put("/cpsrc/tiny", b"tiny object".to_vec()).await;

    // UploadPartCopy with a range, plus a plain copied part.
    let id = create_upload(s3, "/cpdst/assembled").await;
    let range = format!("bytes=100-{}", 100 + 5 * MIB - 1);
    let r = s3
        .send(
            "PUT",
            "/cpdst/assembled",
            &[("partNumber", "1"), ("uploadId", &id)],
            &[
                ("x-amz-copy-source", "/cpsrc/src"),
                ("x-amz-copy-source-range", &range),
            ],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e1 = tag(&r.text(), "ETag").unwrap().replace("&quot;", "\"");
    assert_eq!(e1, format!("\"{}\"", md5_hex(&src[100..100 + 5 * MIB])));
    let r = s3
        .send(
            "PUT",
            "/cpdst/assembled",
            &[("partNumber", "2"), ("uploadId", &id)],
            &[("x-amz-copy-source", "cpsrc/tiny")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e2 = tag(&r.text(), "ETag").unwrap().replace("&quot;", "\"");
    // A range past the end of the source.
    let r = s3
        .send(
            "PUT",
            "/cpdst/assembled",
            &[("partNumber", "3"), ("uploadId", &id)],
            &[
                ("x-amz-copy-source", "cpsrc/tiny"),
                ("x-amz-copy-source-range", "bytes=0-100"),
            ],
            vec![],
        )
        .await;
    assert_eq!(r.status, 416, "{}", r.text());
    // Copy-source conditions.
    let r = s3
        .send(
            "PUT",
            "/cpdst/assembled",
            &[("partNumber", "3"), ("uploadId", &id)],
            &[
                ("x-amz-copy-source", "cpsrc/tiny"),
                ("x-amz-copy-source-if-match", "\"0123\""),
            ],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (412, "PreconditionFailed"));
    // The caller must be able to read the source.
    let r = c
        .other
        .send(
            "PUT",
            "/cpdst/assembled",
            &[("partNumber", "3"), ("uploadId", &id)],
            &[("x-amz-copy-source", "cpsrc/tiny")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = complete(s3, "/cpdst/assembled", &id, &[(1, &e1), (2, &e2)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut want = src[100..100 + 5 * MIB].to_vec();
    want.extend_from_slice(b"tiny object");
    let r = s3.get("/cpdst/assembled").await;
    assert!(r.body[..] == want[..], "assembled from copied parts");

    // CopyObject, COPY (default): bytes and metadata of the source.
    let r = s3
        .send(
            "PUT",
            "/cpdst/copy",
            &[],
            &[("x-amz-copy-source", "/cpsrc/src")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(
        t.contains("CopyObjectResult") && t.contains("LastModified"),
        "{t}"
    );
    assert_eq!(
        tag(&t, "ETag").unwrap().replace("&quot;", "\""),
        format!("\"{}\"", md5_hex(&src))
    );
    let r = s3.get("/cpdst/copy").await;
    assert!(r.body[..] == src[..], "copy identical");
    assert_eq!(r.header("x-amz-meta-color").as_deref(), Some("blue"));
    assert_eq!(r.header("content-type").as_deref(), Some("text/x-src"));
    // Percent-encoded source key, inline source.
    s3.put("/cpsrc/a b+c", b"spaced".to_vec()).await;
    let r = s3
        .send(
            "PUT",
            "/cpdst/spaced",
            &[],
            &[("x-amz-copy-source", "cpsrc/a%20b%2Bc")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(&s3.get("/cpdst/spaced").await.body[..], b"spaced");

    // REPLACE: new metadata, same bytes.
    let r = s3
        .send(
            "PUT",
            "/cpdst/replaced",
            &[],
            &[
                ("x-amz-copy-source", "cpsrc/src"),
                ("x-amz-metadata-directive", "REPLACE"),
                ("x-amz-meta-shape", "round"),
                ("content-type", "text/x-new"),
            ],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s3.head("/cpdst/replaced").await;
    assert_eq!(r.header("x-amz-meta-shape").as_deref(), Some("round"));
    assert_eq!(r.header("x-amz-meta-color"), None);
    assert_eq!(r.header("content-type").as_deref(), Some("text/x-new"));

    // Self-copy: only with REPLACE.
    let r = s3
        .send(
            "PUT",
            "/cpsrc/src",
            &[],
            &[("x-amz-copy-source", "cpsrc/src")],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidRequest"));
    let r = s3
        .send(
            "PUT",
            "/cpsrc/src",
            &[],
            &[
                ("x-amz-copy-source", "cpsrc/src"),
                ("x-amz-metadata-directive", "REPLACE"),
                ("x-amz-meta-color", "green"),
            ],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s3.get("/cpsrc/src").await;
    assert!(r.body[..] == src[..], "self-copy keeps the bytes");
    assert_eq!(r.header("x-amz-meta-color").as_deref(), Some("green"));

    // Bad copy sources and access.
    for bad in ["", "/", "cpsrc", "cpsrc/", "/cpsrc"] {
        let r = s3
            .send(
                "PUT",
                "/cpdst/bad",
                &[],
                &[("x-amz-copy-source", bad)],
                vec![],
            )
            .await;
        assert_eq!(r.status, 400, "copy source {bad:?}: {}", r.text());
    }
    let r = s3
        .send(
            "PUT",
            "/cpdst/bad",
            &[],
            &[("x-amz-copy-source", "cpsrc/missing")],
            vec![],
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (404, "NoSuchKey"));
    let r = c
        .other
        .send(
            "PUT",
            "/cpdst/stolen",
            &[],
            &[("x-amz-copy-source", "cpsrc/src")],
            vec![],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(s3.get("/cpdst/stolen").await.status, 404);

    // DeleteObjects: existing and missing keys, verbose and quiet.
    for k in ["d1", "d2", "d3"] {
        s3.put(&format!("/cpsrc/{k}"), b"x".to_vec()).await;
    }
    let body = "<Delete><Object><Key>d1</Key></Object><Object><Key>missing</Key></Object></Delete>";
    let r = delete_objects(s3, "/cpsrc", body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert_eq!(tags(&t, "Key"), vec!["d1", "missing"]);
    assert!(!t.contains("<Error>"), "{t}");
    assert_eq!(s3.get("/cpsrc/d1").await.status, 404);
    let body = "<Delete><Quiet>true</Quiet><Object><Key>d2</Key></Object><Object><Key>d3</Key></Object></Delete>";
    let r = delete_objects(s3, "/cpsrc", body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(tags(&r.text(), "Key").is_empty(), "quiet: {}", r.text());
    assert_eq!(s3.get("/cpsrc/d2").await.status, 404);
    assert_eq!(s3.get("/cpsrc/d3").await.status, 404);
    // A per-key error (a key over 1024 bytes) is reported, the rest done.
    s3.put("/cpsrc/d4", b"x".to_vec()).await;
    let long = "k".repeat(1025);
    let body = format!(
        "<Delete><Object><Key>{long}</Key></Object><Object><Key>d4</Key></Object></Delete>"
    );
    let r = delete_objects(s3, "/cpsrc", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert_eq!(tag(&t, "Code").as_deref(), Some("KeyTooLongError"), "{t}");
    assert_eq!(s3.get("/cpsrc/d4").await.status, 404);
    // 1001 keys: MalformedXML.
    let mut body = String::from("<Delete>");
    for i in 0..1001 {
        body.push_str(&format!("<Object><Key>k{i}</Key></Object>"));
    }
    body.push_str("</Delete>");
    let r = delete_objects(s3, "/cpsrc", &body).await;
    assert_eq!((r.status, r.code().as_str()), (400, "MalformedXML"));
    // Another key may not delete here.
    let r = delete_objects(
        &c.other,
        "/cpsrc",
        "<Delete><Object><Key>src</Key></Object></Delete>",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(s3.get("/cpsrc/src").await.status, 200);
}

async fn delete_objects(s3: &S3Client, bucket: &str, body: &str) -> Resp {
    let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body.as_bytes()));
    s3.send(
        "POST",
        bucket,
        &[("delete", "")],
        &[("content-md5", &md5)],
        body.as_bytes().to_vec(),
    )
    .await
}
