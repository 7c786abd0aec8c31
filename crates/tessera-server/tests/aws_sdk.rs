//! The official Rust SDK (`aws-sdk-s3`, behavior version latest, default
//! checksum settings, path-style) against a real `tessera dev` cluster:
//! buckets, put/get (buffered and streamed from a file), a ~12 MiB
//! multipart upload, ListObjectsV2 pagination, head, copy, delete-objects,
//! presigned GET/PUT URLs used by a plain hyper client, object tagging, and
//! versioning (never enabled; enabling it is NotImplemented).
//!
//! The cluster is owned by a `DevCluster`, whose Drop kills its children if
//! an assertion fails half-way; the temporary directory goes with it.

mod common;

use common::free_port_base;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumMode, CompletedMultipartUpload, CompletedPart, Delete,
    MetadataDirective, ObjectIdentifier, Tag, Tagging, VersioningConfiguration,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tessera_server::dev::{ClusterInfo, DevCluster, DevOptions};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");
const MIB: usize = 1 << 20;

/// Deterministic, incompressible-enough bytes.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn client(info: &ClusterInfo) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(info.region.clone()))
        .endpoint_url(&info.s3_endpoint)
        .credentials_provider(Credentials::new(
            info.access_key.clone(),
            info.secret_key.clone(),
            None,
            None,
            "tessera-dev",
        ))
        .force_path_style(true)
        // Plain http (no TLS stack compiled in): the dev cluster's endpoint.
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn body(out: aws_sdk_s3::operation::get_object::GetObjectOutput) -> Vec<u8> {
    out.body
        .collect()
        .await
        .expect("read body")
        .into_bytes()
        .to_vec()
}

/// A plain (unsigned) request with hyper: (status, body).
async fn plain(method: &str, uri: &str, data: Vec<u8>) -> (u16, Vec<u8>) {
    let http: HyperClient<_, Full<Bytes>> = HyperClient::builder(TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from(data)))
        .unwrap();
    let resp = http.request(req).await.expect("plain request");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

/// The URL with the first hex digit of X-Amz-Signature changed.
fn tamper(uri: &str) -> String {
    let at = uri.find("X-Amz-Signature=").expect("a SigV4 presigned URL") + 16;
    let mut s = uri.to_string();
    let c = if &s[at..at + 1] == "0" { "1" } else { "0" };
    s.replace_range(at..at + 1, c);
    s
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sdk_s3_workload_against_tessera_dev() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = DevCluster::start(DevOptions {
        data_dir: tmp.path().join("data"),
        port_base: free_port_base(DevOptions::default().storage_nodes),
        binary: Some(PathBuf::from(BIN)),
        ready_timeout: Duration::from_secs(90),
        ..DevOptions::default()
    })
    .await
    .expect("tessera dev starts");
    eprintln!("dev cluster ready in {:?}", cluster.started_in());
    let t0 = Instant::now();
    let info = cluster.info().clone();
    let s3 = client(&info);
    let bucket = "sdk-rust";

    // Buckets.
    s3.create_bucket().bucket(bucket).send().await.unwrap();
    let buckets = s3.list_buckets().send().await.unwrap();
    assert!(buckets.buckets().iter().any(|b| b.name() == Some(bucket)));

    // Put/get with the default checksum behaviour (a CRC32 sent with every
    // upload, validated on GET with ChecksumMode::Enabled).
    let small = payload(MIB + 17, 1);
    let put = s3
        .put_object()
        .bucket(bucket)
        .key("small.bin")
        .content_type("application/x-test")
        .metadata("origin", "rust-sdk")
        .body(ByteStream::from(small.clone()))
        .send()
        .await
        .unwrap();
    assert!(put.checksum_crc32().is_some(), "{put:?}");
    let got = s3
        .get_object()
        .bucket(bucket)
        .key("small.bin")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(got.checksum_crc32(), put.checksum_crc32());
    assert_eq!(body(got).await, small);

    // Streamed from a file (the SDK's streaming body path).
    let streamed = payload(3 * MIB + 5, 2);
    let path = write_file(tmp.path(), "streamed.bin", &streamed);
    s3.put_object()
        .bucket(bucket)
        .key("dir/streamed file.bin")
        .body(ByteStream::from_path(&path).await.unwrap())
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object()
        .bucket(bucket)
        .key("dir/streamed file.bin")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(body(got).await, streamed);

    // Ranged get.
    let got = s3
        .get_object()
        .bucket(bucket)
        .key("small.bin")
        .range("bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.content_range(),
        Some(&*format!("bytes 100-199/{}", small.len()))
    );
    assert_eq!(body(got).await, &small[100..200]);

    // Multipart upload of ~12 MiB: 5 + 5 + 2 MiB parts.
    let big = payload(12 * MIB + 1234, 3);
    let up = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key("multi.bin")
        .send()
        .await
        .unwrap();
    let upload_id = up.upload_id().unwrap().to_string();
    let mut parts = Vec::new();
    for (i, chunk) in big.chunks(5 * MIB).enumerate() {
        let n = i as i32 + 1;
        let r = s3
            .upload_part()
            .bucket(bucket)
            .key("multi.bin")
            .upload_id(&upload_id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .e_tag(r.e_tag().unwrap())
                .set_checksum_crc32(r.checksum_crc32().map(str::to_string))
                .build(),
        );
    }
    assert_eq!(parts.len(), 3);
    let done = s3
        .complete_multipart_upload()
        .bucket(bucket)
        .key("multi.bin")
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert!(
        done.e_tag().unwrap().trim_matches('"').ends_with("-3"),
        "{done:?}"
    );
    let head = s3
        .head_object()
        .bucket(bucket)
        .key("multi.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(big.len() as i64));
    assert_eq!(head.e_tag(), done.e_tag());
    let got = s3
        .get_object()
        .bucket(bucket)
        .key("multi.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(body(got).await, big);
    // A range across the first part boundary.
    let (a, b) = (5 * MIB - 10, 5 * MIB + 10);
    let got = s3
        .get_object()
        .bucket(bucket)
        .key("multi.bin")
        .range(format!("bytes={a}-{b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(body(got).await, &big[a..=b]);

    // Head: size, type, metadata.
    let head = s3
        .head_object()
        .bucket(bucket)
        .key("small.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(small.len() as i64));
    assert_eq!(head.content_type(), Some("application/x-test"));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("origin"))
            .map(String::as_str),
        Some("rust-sdk")
    );

    // Copy, with the metadata copied and then replaced.
    s3.copy_object()
        .bucket(bucket)
        .key("copied.bin")
        .copy_source(format!("{bucket}/small.bin"))
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object()
        .bucket(bucket)
        .key("copied.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.metadata()
            .and_then(|m| m.get("origin"))
            .map(String::as_str),
        Some("rust-sdk")
    );
    assert_eq!(body(got).await, small);
    s3.copy_object()
        .bucket(bucket)
        .key("copied.bin")
        .copy_source(format!("{bucket}/copied.bin"))
        .metadata_directive(MetadataDirective::Replace)
        .metadata("origin", "replaced")
        .send()
        .await
        .unwrap();
    let head = s3
        .head_object()
        .bucket(bucket)
        .key("copied.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("origin"))
            .map(String::as_str),
        Some("replaced")
    );

    // ListObjectsV2 with pagination: 23 keys, 5 per page.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..23 {
        let s3 = s3.clone();
        tasks.spawn(async move {
            s3.put_object()
                .bucket(bucket)
                .key(format!("list/{i:02}"))
                .body(ByteStream::from(payload(100 + i, i as u64)))
                .send()
                .await
                .unwrap();
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let mut keys = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix("list/")
            .max_keys(5)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    assert_eq!(pages, 5);
    let want: Vec<String> = (0..23).map(|i| format!("list/{i:02}")).collect();
    assert_eq!(keys, want);
    // The SDK's own paginator agrees.
    let mut paged = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix("list/")
        .max_keys(7)
        .into_paginator()
        .send();
    let mut n = 0;
    while let Some(page) = paged.next().await {
        for o in page.unwrap().contents() {
            assert_eq!(o.key(), Some(want[n].as_str()));
            n += 1;
        }
    }
    assert_eq!(n, 23);

    // Delete objects.
    let ids: Vec<ObjectIdentifier> = want
        .iter()
        .map(|k| ObjectIdentifier::builder().key(k).build().unwrap())
        .collect();
    let del = s3
        .delete_objects()
        .bucket(bucket)
        .delete(Delete::builder().set_objects(Some(ids)).build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(del.deleted().len(), 23, "{del:?}");
    assert!(del.errors().is_empty(), "{del:?}");
    let left = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix("list/")
        .send()
        .await
        .unwrap();
    assert_eq!(left.key_count(), Some(0));

    // Presigned GET and PUT, used by a plain hyper client.
    let presign = PresigningConfig::expires_in(Duration::from_secs(120)).unwrap();
    let get_url = s3
        .get_object()
        .bucket(bucket)
        .key("small.bin")
        .presigned(presign.clone())
        .await
        .unwrap();
    assert_eq!(get_url.method(), "GET");
    let (status, got) = plain("GET", get_url.uri(), vec![]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&got));
    assert_eq!(got, small);
    assert_eq!(plain("GET", &tamper(get_url.uri()), vec![]).await.0, 403);

    let put_url = s3
        .put_object()
        .bucket(bucket)
        .key("presigned.bin")
        .presigned(presign)
        .await
        .unwrap();
    // The signed headers the SDK asks the caller to send, if any.
    let extra: Vec<_> = put_url.headers().collect();
    assert!(
        extra
            .iter()
            .all(|(k, _)| !k.eq_ignore_ascii_case("x-amz-checksum-crc32")),
        "{extra:?}"
    );
    let data = payload(70_000, 4);
    let (status, resp) = plain("PUT", put_url.uri(), data.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    let got = s3
        .get_object()
        .bucket(bucket)
        .key("presigned.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(body(got).await, data);
    let (status, _) = plain("PUT", &tamper(put_url.uri()), b"other".to_vec()).await;
    assert_eq!(status, 403);

    // Object tags: replaced in place, removed; the object stays the same.
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build().unwrap();
    let etag = s3
        .head_object()
        .bucket(bucket)
        .key("small.bin")
        .send()
        .await
        .unwrap()
        .e_tag;
    s3.put_object_tagging()
        .bucket(bucket)
        .key("small.bin")
        .tagging(
            Tagging::builder()
                .tag_set(tag("team", "storage"))
                .tag_set(tag("ü", "日本"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let tags = |out: aws_sdk_s3::operation::get_object_tagging::GetObjectTaggingOutput| {
        let mut v: Vec<(String, String)> =
            out.tag_set.into_iter().map(|t| (t.key, t.value)).collect();
        v.sort();
        v
    };
    let got = s3
        .get_object_tagging()
        .bucket(bucket)
        .key("small.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        tags(got),
        vec![
            ("team".to_string(), "storage".to_string()),
            ("ü".to_string(), "日本".to_string())
        ]
    );
    s3.delete_object_tagging()
        .bucket(bucket)
        .key("small.bin")
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object_tagging()
        .bucket(bucket)
        .key("small.bin")
        .send()
        .await
        .unwrap();
    assert!(tags(got).is_empty());
    let head = s3
        .head_object()
        .bucket(bucket)
        .key("small.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.e_tag, etag);

    // Versioning: never enabled (no status); enabling it is NotImplemented.
    let v = s3
        .get_bucket_versioning()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(v.status, None);
    let err = s3
        .put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            VersioningConfiguration::builder()
                .status(BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("NotImplemented"), "{err:?}");
    assert_eq!(
        err.raw_response().map(|r| r.status().as_u16()),
        Some(501),
        "{err:?}"
    );

    eprintln!("aws-sdk-s3 workload took {:?}", t0.elapsed());
    cluster.stop().await.unwrap();
}
