//! S3 flexible checksums through the gateway, against a real meta node and
//! six real storage nodes in this process: every algorithm in a header and
//! in an aws-chunked trailer (unsigned, and signed chunks with a signed
//! trailer), good and bad; the default CRC64NVME; Content-MD5; multipart
//! COMPOSITE and FULL_OBJECT; checksums answered only with
//! `x-amz-checksum-mode: ENABLED`; the chunk framing never stored; and the
//! trailer path over HTTPS (a second gateway with `tls-cert`/`tls-key`), the
//! way boto3 sends checksums by default.
//!
//! Expected values come from reference implementations in this file
//! (bitwise CRCs, sha2), not from the gateway's own code.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use md5::{Digest as _, Md5};
use sha2::Sha256;
use tessera_gateway::GatewayConfig;
use tessera_proto::MetaClient;
use tessera_types::meta::{MetaCommand, MetaQuery, MetaReply, QueryReply};
use tessera_types::{AccessKey, NodeState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use common::pattern;
use common::s3client::{Resp, S3Client};

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------- cluster

struct Cluster {
    s3: S3Client,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
    /// The gateway's configuration (for a second, HTTPS gateway).
    config: GatewayConfig,
    /// Set by [`Cluster::enable_tls`]: raw requests go to the HTTPS
    /// gateway at this address, through this connector.
    tls: Option<(String, tokio_rustls::TlsConnector)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Cluster {
    fn host(&self) -> String {
        match &self.tls {
            Some((host, _)) => host.clone(),
            None => self.s3.endpoint.trim_start_matches("http://").to_string(),
        }
    }

    /// Starts a second gateway on the same cluster that serves HTTPS with a
    /// certificate for localhost/127.0.0.1 from a fresh CA, and sends raw
    /// requests there from now on (trusting only that CA).
    async fn enable_tls(&mut self) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let cert = self.dir.path().join("tls-cert.pem");
        let key = self.dir.path().join("tls-key.pem");
        std::fs::write(&cert, format!("{}{}", leaf_cert.pem(), ca_cert.pem())).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();

        let mut config = self.config.clone();
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(tessera_gateway::serve(
            config,
            listener,
            self.shutdown.clone(),
        ));

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
        self.tls = Some((host, connector));
    }
    fn keys(&self) -> (String, String) {
        self.s3.access.clone().expect("keys")
    }
    /// Shard files on all storage nodes.
    fn shard_files(&self) -> usize {
        fn count(p: &Path) -> usize {
            let Ok(rd) = std::fs::read_dir(p) else {
                return 0;
            };
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        count(&p)
                    } else {
                        1
                    }
                })
                .sum()
        }
        (0..6)
            .map(|i| count(&self.dir.path().join(format!("storage{i}"))))
            .sum()
    }
    /// Waits until the shard files are back to `n` (a failed write's shards
    /// are deleted a couple of seconds later).
    async fn shards_back_to(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = self.shard_files();
            if now == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "shard files: {now}, expected {n} (a failed write left shards)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let secret = tessera_proto::ClusterSecret::new("checksum-test-secret-0001").unwrap();
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match meta.write(&MetaCommand::PutAccessKey(key.clone())).await {
            Ok(MetaReply::Ok | MetaReply::Replaced(_)) => break,
            r => assert!(Instant::now() < deadline, "meta not ready: {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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
        shard_size: 64 << 10,
        inline_threshold: 1024,
        gc_grace_ms: 200,
        cluster_secret: Some(secret),
        ..GatewayConfig::default()
    };
    tokio::spawn(tessera_gateway::serve(
        config.clone(),
        listener,
        shutdown.clone(),
    ));
    let s3 = S3Client::new(&endpoint, Some((&key.id, &key.secret)));
    let r = s3.put("/cks", vec![]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    Cluster {
        s3,
        shutdown,
        dir,
        config,
        tls: None,
    }
}

// ------------------------------------------------------ reference digests

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

const ALL: [Alg; 5] = [
    Alg::Crc32,
    Alg::Crc32c,
    Alg::Crc64Nvme,
    Alg::Sha1,
    Alg::Sha256,
];

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Crc32 => "CRC32",
            Alg::Crc32c => "CRC32C",
            Alg::Crc64Nvme => "CRC64NVME",
            Alg::Sha1 => "SHA1",
            Alg::Sha256 => "SHA256",
        }
    }
    fn header(self) -> String {
        format!("x-amz-checksum-{}", self.name().to_ascii_lowercase())
    }
    /// The element name in CompleteMultipartUpload XML.
    fn xml(self) -> String {
        format!("Checksum{}", self.name())
    }
}

/// A reflected CRC, table-driven (independent of the gateway's crc-fast).
fn crc_reflected(poly: u64, width: u32, data: &[u8]) -> u64 {
    let mask = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    let mut table = [0u64; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u64;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ poly } else { c >> 1 };
        }
        *t = c;
    }
    let mut crc = mask;
    for &b in data {
        crc = table[((crc ^ b as u64) & 0xff) as usize] ^ (crc >> 8);
    }
    crc ^ mask
}

/// Raw digest of `data`.
fn digest(a: Alg, data: &[u8]) -> Vec<u8> {
    match a {
        Alg::Crc32 => (crc_reflected(0xEDB8_8320, 32, data) as u32)
            .to_be_bytes()
            .to_vec(),
        Alg::Crc32c => (crc_reflected(0x82F6_3B78, 32, data) as u32)
            .to_be_bytes()
            .to_vec(),
        Alg::Crc64Nvme => crc_reflected(0x9A6C_9329_AC4B_C9B5, 64, data)
            .to_be_bytes()
            .to_vec(),
        Alg::Sha1 => {
            use s3s::crypto::Checksum;
            s3s::crypto::Sha1::checksum(data).as_ref().to_vec()
        }
        Alg::Sha256 => Sha256::digest(data).to_vec(),
    }
}

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn sum(a: Alg, data: &[u8]) -> String {
    b64(&digest(a, data))
}

fn md5_b64(data: &[u8]) -> String {
    b64(&Md5::digest(data))
}

#[test]
fn reference_digests_match_check_values() {
    let d = |a| digest(a, b"123456789");
    assert_eq!(hex::encode(d(Alg::Crc32)), "cbf43926");
    assert_eq!(hex::encode(d(Alg::Crc32c)), "e3069283");
    assert_eq!(hex::encode(d(Alg::Crc64Nvme)), "ae8b14860a799888");
    assert_eq!(
        hex::encode(d(Alg::Sha1)),
        "f7c3bc1d808e04732adf679965ccc34ca7ae3441"
    );
}

// ------------------------------------------------------------ raw requests

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A request signed with SigV4 (header auth), with what signing the
/// chunks and trailer of a streaming body needs.
struct Signed {
    headers: Vec<(String, String)>,
    seed: String,
    amz_date: String,
    scope: String,
    key: [u8; 32],
}

/// Signs `method path?query` (query already canonical: sorted, encoded)
/// with `headers` and the payload value `payload`.
fn sign(
    c: &Cluster,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    payload: &str,
) -> Signed {
    let (ak, sk) = c.keys();
    let now = time::OffsetDateTime::now_utc();
    let amz_date = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let date = amz_date[..8].to_string();
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    all.push(("x-amz-content-sha256".into(), payload.to_string()));
    all.push(("x-amz-date".into(), amz_date.clone()));
    all.push(("host".into(), c.host()));
    all.sort();
    let signed = all
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canon_headers: String = all.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical = format!("{method}\n{path}\n{query}\n{canon_headers}\n{signed}\n{payload}");
    let scope = format!("{date}/us-east-1/s3/aws4_request");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha_hex(canonical.as_bytes())
    );
    let k = hmac(format!("AWS4{sk}").as_bytes(), date.as_bytes());
    let k = hmac(&k, b"us-east-1");
    let k = hmac(&k, b"s3");
    let key = hmac(&k, b"aws4_request");
    let seed = hex::encode(hmac(&key, sts.as_bytes()));
    all.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={signed}, Signature={seed}"
        ),
    ));
    Signed {
        headers: all,
        seed,
        amz_date,
        scope,
        key,
    }
}

/// An aws-chunked body of `data` in `chunk`-byte chunks with an optional
/// trailer; with `signing`, every chunk and the trailer are signed.
fn aws_chunked(
    data: &[u8],
    chunk: usize,
    trailer: Option<(&str, &str)>,
    signing: Option<&Signed>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = signing.map(|s| s.seed.clone()).unwrap_or_default();
    let chunk_sig = |prev: &str, piece: &[u8], s: &Signed| {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{prev}\n{}\n{}",
            s.amz_date,
            s.scope,
            sha_hex(b""),
            sha_hex(piece)
        );
        hex::encode(hmac(&s.key, sts.as_bytes()))
    };
    let mut pieces: Vec<&[u8]> = data.chunks(chunk).collect();
    pieces.push(&[]);
    for piece in pieces {
        match signing {
            Some(s) => {
                let sig = chunk_sig(&prev, piece, s);
                out.extend_from_slice(
                    format!("{:x};chunk-signature={sig}\r\n", piece.len()).as_bytes(),
                );
                prev = sig;
            }
            None => out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes()),
        }
        if !piece.is_empty() {
            out.extend_from_slice(piece);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some((name, value)) = trailer {
        out.extend_from_slice(format!("{name}:{value}\r\n").as_bytes());
        if let Some(s) = signing {
            let sts = format!(
                "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{prev}\n{}",
                s.amz_date,
                s.scope,
                sha_hex(format!("{name}:{value}\n").as_bytes())
            );
            let sig = hex::encode(hmac(&s.key, sts.as_bytes()));
            out.extend_from_slice(format!("x-amz-trailer-signature:{sig}\r\n").as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends a request over a fresh TCP connection: with a Content-Length, or
/// (`chunked`) with `Transfer-Encoding: chunked` and none, as boto3 sends
/// aws-chunked bodies over HTTPS.
async fn raw(
    c: &Cluster,
    method: &str,
    path_query: &str,
    headers: &[(String, String)],
    body: &[u8],
    chunked: bool,
) -> (u16, String) {
    let mut req = format!("{method} {path_query} HTTP/1.1\r\nhost: {}\r\n", c.host());
    for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if chunked {
        req.push_str("transfer-encoding: chunked\r\n");
    } else {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("connection: close\r\n\r\n");
    let mut wire = req.into_bytes();
    if chunked {
        for piece in body.chunks(100_000) {
            wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
    } else {
        wire.extend_from_slice(body);
    }
    let tcp = tokio::net::TcpStream::connect(c.host()).await.unwrap();
    let resp = match &c.tls {
        None => exchange(tcp, &wire).await,
        Some((_, connector)) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            exchange(connector.connect(name, tcp).await.unwrap(), &wire).await
        }
    };
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Writes `wire` and reads the answer until the server closes.
async fn exchange<S>(mut s: S, wire: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(wire).await.unwrap();
    s.flush().await.unwrap();
    let mut resp = Vec::new();
    // A close without TLS close_notify is an error after the bytes read.
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut resp)).await;
    resp
}

/// The value of a header in a raw response.
fn raw_header(resp: &str, name: &str) -> Option<String> {
    let head = resp.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// `data` with every `from` replaced by `to` (binary-safe).
fn replace_bytes(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fn code(text: &str) -> String {
    tag(text, "Code").unwrap_or_default()
}

fn tag(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let a = xml.find(&open)? + open.len();
    let b = a + xml[a..].find(&close)?;
    Some(xml[a..b].to_string())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// STREAMING-UNSIGNED-PAYLOAD-TRAILER.
    Unsigned,
    /// STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER.
    Signed,
}

/// PUTs `data` to `path?query` as aws-chunked with `trailer` (name,
/// value) and returns the status and raw response.
#[allow(clippy::too_many_arguments)]
async fn put_trailer(
    c: &Cluster,
    path: &str,
    query: &str,
    data: &[u8],
    announced: &str,
    trailer: Option<(&str, &str)>,
    mode: Mode,
    chunked: bool,
) -> (u16, String) {
    let payload = match mode {
        Mode::Unsigned => "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        Mode::Signed => "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    };
    let len = data.len().to_string();
    let algorithm = announced
        .trim_start_matches("x-amz-checksum-")
        .to_ascii_uppercase();
    let headers = [
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", len.as_str()),
        ("x-amz-trailer", announced),
        ("x-amz-sdk-checksum-algorithm", algorithm.as_str()),
    ];
    let signed = sign(c, "PUT", path, query, &headers, payload);
    let body = aws_chunked(
        data,
        64 << 10,
        trailer,
        (mode == Mode::Signed).then_some(&signed),
    );
    let pq = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    raw(c, "PUT", &pq, &signed.headers, &body, chunked).await
}

/// GetObjectAttributes of every attribute.
async fn attributes(c: &Cluster, path: &str) -> String {
    let r =
        c.s3.send(
            "GET",
            path,
            &[("attributes", "")],
            &[(
                "x-amz-object-attributes",
                "ETag,Checksum,ObjectParts,StorageClass,ObjectSize",
            )],
            vec![],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

async fn get_enabled(c: &Cluster, path: &str) -> Resp {
    c.s3.send(
        "GET",
        path,
        &[],
        &[("x-amz-checksum-mode", "ENABLED")],
        vec![],
    )
    .await
}

/// Asserts that `resp` (GET or HEAD with checksum mode) carries exactly one
/// checksum, `want` of `a`, of type `ty`.
fn assert_answered(resp: &Resp, a: Alg, want: &str, ty: &str) {
    for b in ALL {
        let got = resp.header(&b.header());
        if b == a {
            assert_eq!(got.as_deref(), Some(want), "{}", b.name());
        } else {
            assert_eq!(got, None, "{} answered besides {}", b.name(), a.name());
        }
    }
    assert_eq!(resp.header("x-amz-checksum-type").as_deref(), Some(ty));
}

fn assert_no_checksum(resp: &Resp) {
    for b in ALL {
        assert_eq!(resp.header(&b.header()), None, "{} without mode", b.name());
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_checksums_every_algorithm() {
    let c = cluster().await;
    for (i, a) in ALL.into_iter().enumerate() {
        // Inline (small) and striped bodies.
        for size in [100usize, 300_000] {
            let data = pattern(size, i as u8);
            let path = format!("/cks/h-{}-{size}", a.name());
            let good = sum(a, &data);
            let r =
                c.s3.send(
                    "PUT",
                    &path,
                    &[],
                    &[
                        (&a.header(), &good),
                        ("x-amz-sdk-checksum-algorithm", a.name()),
                    ],
                    data.clone(),
                )
                .await;
            assert_eq!(r.status, 200, "{} {}", a.name(), r.text());
            assert_eq!(r.header(&a.header()).as_deref(), Some(good.as_str()));
            assert_eq!(
                r.header("x-amz-checksum-type").as_deref(),
                Some("FULL_OBJECT")
            );

            let plain = c.s3.get(&path).await;
            assert_eq!(plain.body.as_ref(), data.as_slice());
            assert_no_checksum(&plain);
            let g = get_enabled(&c, &path).await;
            assert_eq!(g.status, 200);
            assert_eq!(g.body.as_ref(), data.as_slice());
            assert_answered(&g, a, &good, "FULL_OBJECT");
            let attrs = attributes(&c, &path).await;
            assert_eq!(tag(&attrs, &a.xml()), Some(good.clone()), "{attrs}");
            assert_eq!(tag(&attrs, "ChecksumType").as_deref(), Some("FULL_OBJECT"));
            assert_eq!(tag(&attrs, "ObjectParts"), None, "a plain PUT has no parts");
            let h =
                c.s3.send(
                    "HEAD",
                    &path,
                    &[],
                    &[("x-amz-checksum-mode", "ENABLED")],
                    vec![],
                )
                .await;
            assert_answered(&h, a, &good, "FULL_OBJECT");
            assert_no_checksum(&c.s3.head(&path).await);
            // A range has no checksum of its own.
            let ranged =
                c.s3.send(
                    "GET",
                    &path,
                    &[],
                    &[("x-amz-checksum-mode", "ENABLED"), ("range", "bytes=0-9")],
                    vec![],
                )
                .await;
            assert_eq!(ranged.status, 206);
            assert_no_checksum(&ranged);
        }
    }

    // A wrong value: 400 BadDigest, nothing committed, no shard left.
    let before = c.shard_files();
    for a in ALL {
        let data = pattern(300_000, 9);
        let path = format!("/cks/bad-{}", a.name());
        let wrong = sum(a, b"something else");
        let r =
            c.s3.send("PUT", &path, &[], &[(&a.header(), &wrong)], data)
                .await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.code(), "BadDigest", "{}", a.name());
        assert!(r
            .text()
            .contains(&format!("The {} you specified", a.name())));
        assert_eq!(c.s3.get(&path).await.status, 404);
    }
    c.shards_back_to(before).await;

    // An overwrite with a wrong checksum leaves the old object in place.
    let path = "/cks/h-CRC32-100";
    let r =
        c.s3.send(
            "PUT",
            path,
            &[],
            &[("x-amz-checksum-crc32", "AAAAAA==")],
            b"new".to_vec(),
        )
        .await;
    assert_eq!(r.code(), "BadDigest");
    assert_eq!(
        c.s3.get(path).await.body.as_ref(),
        pattern(100, 0).as_slice()
    );

    // Malformed values and contradictory headers: 400 InvalidRequest.
    for headers in [
        vec![("x-amz-checksum-crc32", "not base64!")],
        vec![("x-amz-checksum-crc32", "AAAAAAAA")],
        vec![
            ("x-amz-checksum-crc32", "AAAAAA=="),
            ("x-amz-checksum-crc32c", "AAAAAA=="),
        ],
        vec![
            ("x-amz-checksum-crc32", "AAAAAA=="),
            ("x-amz-sdk-checksum-algorithm", "SHA256"),
        ],
        vec![("x-amz-sdk-checksum-algorithm", "CRC32")],
        vec![("x-amz-sdk-checksum-algorithm", "MD4")],
    ] {
        let r =
            c.s3.send("PUT", "/cks/invalid", &[], &headers, b"x".to_vec())
                .await;
        assert_eq!(r.status, 400, "{headers:?}: {}", r.text());
        assert_eq!(r.code(), "InvalidRequest", "{headers:?}");
    }
    assert_eq!(c.s3.get("/cks/invalid").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_crc64nvme_and_content_md5() {
    let c = cluster().await;
    for size in [0usize, 10, 500_000] {
        let data = pattern(size, 3);
        let path = format!("/cks/default-{size}");
        let want = sum(Alg::Crc64Nvme, &data);
        let r = c.s3.put(&path, data.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("x-amz-checksum-crc64nvme").as_deref(),
            Some(want.as_str())
        );
        let g = get_enabled(&c, &path).await;
        assert_eq!(g.body.as_ref(), data.as_slice());
        assert_answered(&g, Alg::Crc64Nvme, &want, "FULL_OBJECT");
    }

    // Content-MD5: right, wrong (BadDigest, nothing stored), malformed.
    let data = pattern(200_000, 4);
    let r =
        c.s3.send(
            "PUT",
            "/cks/md5",
            &[],
            &[("content-md5", &md5_b64(&data))],
            data.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let before = c.shard_files();
    let r =
        c.s3.send(
            "PUT",
            "/cks/md5-bad",
            &[],
            &[("content-md5", &md5_b64(b"other"))],
            data.clone(),
        )
        .await;
    assert_eq!((r.status, r.code().as_str()), (400, "BadDigest"));
    assert_eq!(c.s3.get("/cks/md5-bad").await.status, 404);
    let r =
        c.s3.send("PUT", "/cks/md5-bad", &[], &[("content-md5", "AAAA")], data)
            .await;
    assert_eq!((r.status, r.code().as_str()), (400, "InvalidDigest"));
    c.shards_back_to(before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailer_checksums_every_algorithm() {
    let c = cluster().await;
    for mode in [Mode::Unsigned, Mode::Signed] {
        for (i, a) in ALL.into_iter().enumerate() {
            // Several chunks, the last one short; with and without a
            // Content-Length (boto3 over HTTPS sends none).
            let data = pattern(200_000 + i, i as u8 + 10);
            let good = sum(a, &data);
            for chunked in [false, true] {
                let path = format!("/cks/t-{mode:?}-{}-{chunked}", a.name());
                let (status, resp) = put_trailer(
                    &c,
                    &path,
                    "",
                    &data,
                    &a.header(),
                    Some((&a.header(), &good)),
                    mode,
                    chunked,
                )
                .await;
                assert_eq!(status, 200, "{mode:?} {} {resp}", a.name());
                assert_eq!(
                    raw_header(&resp, &a.header()).as_deref(),
                    Some(good.as_str())
                );
                // The stored bytes are the payload: no chunk framing, no
                // trailer, and no aws-chunked Content-Encoding.
                let g = get_enabled(&c, &path).await;
                assert_eq!(g.body.len(), data.len());
                assert!(g.body.as_ref() == data.as_slice(), "stored bytes differ");
                assert_answered(&g, a, &good, "FULL_OBJECT");
                assert_eq!(g.header("content-encoding"), None);
            }

            // A wrong trailer value: BadDigest, nothing stored.
            let path = format!("/cks/t-bad-{mode:?}-{}", a.name());
            let wrong = sum(a, b"wrong");
            let (status, resp) = put_trailer(
                &c,
                &path,
                "",
                &data,
                &a.header(),
                Some((&a.header(), &wrong)),
                mode,
                true,
            )
            .await;
            assert_eq!(status, 400, "{resp}");
            assert_eq!(code(&resp), "BadDigest");
            assert_eq!(c.s3.get(&path).await.status, 404);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_trailers_change_nothing() {
    let c = cluster().await;
    let data = pattern(150_000, 5);
    let crc = sum(Alg::Crc32, &data);
    let before = c.shard_files();
    let h = "x-amz-checksum-crc32";
    // Announced but not sent; another trailer than announced.
    for (mode, trailer) in [
        (Mode::Unsigned, None),
        (Mode::Signed, None),
        (
            Mode::Unsigned,
            Some(("x-amz-checksum-crc32c", crc.as_str())),
        ),
    ] {
        let (status, resp) = put_trailer(&c, "/cks/tb", "", &data, h, trailer, mode, true).await;
        assert_eq!(status, 400, "{mode:?} {trailer:?}: {resp}");
        assert_eq!(code(&resp), "MalformedTrailerError", "{resp}");
    }
    // A malformed value in the trailer.
    let (status, resp) = put_trailer(
        &c,
        "/cks/tb",
        "",
        &data,
        h,
        Some((h, "%%%")),
        Mode::Unsigned,
        false,
    )
    .await;
    assert_eq!(
        (status, code(&resp).as_str()),
        (400, "InvalidRequest"),
        "{resp}"
    );

    // A signed trailer whose value was changed after signing: 403.
    let headers = [
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "150000"),
        ("x-amz-trailer", h),
    ];
    let payload = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
    let signed = sign(&c, "PUT", "/cks/tb", "", &headers, payload);
    let body = aws_chunked(&data, 64 << 10, Some((h, &crc)), Some(&signed));
    let tampered = replace_bytes(&body, crc.as_bytes(), sum(Alg::Crc32, b"x").as_bytes());
    let (status, resp) = raw(&c, "PUT", "/cks/tb", &signed.headers, &tampered, true).await;
    assert_eq!(
        (status, code(&resp).as_str()),
        (403, "SignatureDoesNotMatch"),
        "{resp}"
    );

    // A decoded length that is not the payload's.
    let headers = [
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "150001"),
        ("x-amz-trailer", h),
    ];
    let signed = sign(
        &c,
        "PUT",
        "/cks/tb",
        "",
        &headers,
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    );
    let body = aws_chunked(&data, 64 << 10, Some((h, &crc)), None);
    let (status, resp) = raw(&c, "PUT", "/cks/tb", &signed.headers, &body, true).await;
    assert_eq!(
        (status, code(&resp).as_str()),
        (400, "IncompleteBody"),
        "{resp}"
    );

    assert_eq!(c.s3.get("/cks/tb").await.status, 404);
    c.shards_back_to(before).await;
}

// --------------------------------------------------------------- multipart

async fn create_upload(c: &Cluster, path: &str, headers: &[(&str, &str)]) -> Resp {
    c.s3.send("POST", path, &[("uploads", "")], headers, vec![])
        .await
}

async fn put_part(
    c: &Cluster,
    path: &str,
    id: &str,
    n: u32,
    headers: &[(&str, &str)],
    data: Vec<u8>,
) -> Resp {
    let n = n.to_string();
    c.s3.send(
        "PUT",
        path,
        &[("partNumber", &n), ("uploadId", id)],
        headers,
        data,
    )
    .await
}

/// A part named in CompleteMultipartUpload: number, ETag, checksums.
type NamedPart = (u32, String, Vec<(Alg, String)>);

/// CompleteMultipartUpload naming `parts`.
async fn complete(
    c: &Cluster,
    path: &str,
    id: &str,
    parts: &[NamedPart],
    headers: &[(&str, &str)],
) -> Resp {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (n, etag, sums) in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag>"
        ));
        for (a, v) in sums {
            xml.push_str(&format!("<{0}>{v}</{0}>", a.xml()));
        }
        xml.push_str("</Part>");
    }
    xml.push_str("</CompleteMultipartUpload>");
    c.s3.send("POST", path, &[("uploadId", id)], headers, xml.into_bytes())
        .await
}

/// The composite checksum of parts: checksum of the raw part checksums.
fn composite(a: Alg, parts: &[&[u8]]) -> String {
    let mut cat = Vec::new();
    for p in parts {
        cat.extend_from_slice(&digest(a, p));
    }
    format!("{}-{}", sum(a, &cat), parts.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_composite_checksums() {
    let c = cluster().await;
    for (i, a) in [Alg::Crc32, Alg::Crc32c, Alg::Sha1, Alg::Sha256]
        .into_iter()
        .enumerate()
    {
        let path = format!("/cks/mp-{}", a.name());
        let r = create_upload(&c, &path, &[("x-amz-checksum-algorithm", a.name())]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("x-amz-checksum-algorithm").as_deref(),
            Some(a.name())
        );
        assert_eq!(
            r.header("x-amz-checksum-type").as_deref(),
            Some("COMPOSITE")
        );
        let id = tag(&r.text(), "UploadId").unwrap();
        let p1 = pattern(5 * MIB, 20 + i as u8);
        let p2 = pattern(MIB + 3, 40 + i as u8);

        // Part 1 with its checksum in a header; a wrong one first.
        let bad = put_part(
            &c,
            &path,
            &id,
            1,
            &[(&a.header(), &sum(a, b"no"))],
            p1.clone(),
        )
        .await;
        assert_eq!((bad.status, bad.code().as_str()), (400, "BadDigest"));
        let r1 = put_part(
            &c,
            &path,
            &id,
            1,
            &[(&a.header(), &sum(a, &p1))],
            p1.clone(),
        )
        .await;
        assert_eq!(r1.status, 200, "{}", r1.text());
        assert_eq!(r1.header(&a.header()), Some(sum(a, &p1)));
        // Part 2 with its checksum in an unsigned trailer (what boto3 does
        // over HTTPS, and the Go SDK's CRC64NVME trailers on parts).
        let query = format!("partNumber=2&uploadId={id}");
        let (status, resp) = put_trailer(
            &c,
            &path,
            &query,
            &p2,
            &a.header(),
            Some((&a.header(), &sum(a, &p2))),
            Mode::Unsigned,
            true,
        )
        .await;
        assert_eq!(status, 200, "{resp}");
        let e1 = r1.header("etag").unwrap();
        let e2 = raw_header(&resp, "etag").unwrap();

        // ListParts shows the part checksums.
        let lp =
            c.s3.send("GET", &path, &[("uploadId", &id)], &[], vec![])
                .await;
        assert_eq!(
            tag(&lp.text(), &a.xml()),
            Some(sum(a, &p1)),
            "{}",
            lp.text()
        );

        // A wrong part checksum in Complete: InvalidPart.
        let wrong = complete(
            &c,
            &path,
            &id,
            &[
                (1, e1.clone(), vec![(a, sum(a, &p1))]),
                (2, e2.clone(), vec![(a, sum(a, &p1))]),
            ],
            &[],
        )
        .await;
        assert_eq!((wrong.status, wrong.code().as_str()), (400, "InvalidPart"));

        let want = composite(a, &[&p1, &p2]);
        let done = complete(
            &c,
            &path,
            &id,
            &[
                (1, e1, vec![(a, sum(a, &p1))]),
                (2, e2, vec![(a, sum(a, &p2))]),
            ],
            &[],
        )
        .await;
        assert_eq!(done.status, 200, "{}", done.text());
        assert_eq!(
            tag(&done.text(), &a.xml()),
            Some(want.clone()),
            "{}",
            done.text()
        );
        assert_eq!(
            tag(&done.text(), "ChecksumType").as_deref(),
            Some("COMPOSITE")
        );

        let g = get_enabled(&c, &path).await;
        assert_eq!(g.body.len(), p1.len() + p2.len());
        assert!(g.body[..p1.len()] == p1[..] && g.body[p1.len()..] == p2[..]);
        assert_answered(&g, a, &want, "COMPOSITE");

        // GetObjectAttributes: the object checksum and each part's.
        let attrs = attributes(&c, &path).await;
        let checksum = tag(&attrs, "Checksum").unwrap_or_default();
        assert_eq!(tag(&checksum, &a.xml()), Some(want.clone()), "{attrs}");
        assert_eq!(tag(&checksum, "ChecksumType").as_deref(), Some("COMPOSITE"));
        assert_eq!(tag(&attrs, "PartsCount").as_deref(), Some("2"));
        assert_eq!(
            tag(&attrs, "ObjectSize"),
            Some((p1.len() + p2.len()).to_string())
        );
        let parts: Vec<String> = attrs.split("<Part>").skip(1).map(str::to_string).collect();
        assert_eq!(parts.len(), 2, "{attrs}");
        assert_eq!(tag(&parts[0], &a.xml()), Some(sum(a, &p1)));
        assert_eq!(tag(&parts[1], &a.xml()), Some(sum(a, &p2)));
    }

    // SHA256 cannot be FULL_OBJECT, CRC64NVME cannot be COMPOSITE, a type
    // needs an algorithm.
    for headers in [
        vec![
            ("x-amz-checksum-algorithm", "SHA256"),
            ("x-amz-checksum-type", "FULL_OBJECT"),
        ],
        vec![
            ("x-amz-checksum-algorithm", "CRC64NVME"),
            ("x-amz-checksum-type", "COMPOSITE"),
        ],
        vec![("x-amz-checksum-type", "COMPOSITE")],
        vec![("x-amz-checksum-algorithm", "MD5")],
    ] {
        let r = create_upload(&c, "/cks/mp-bad", &headers).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "InvalidRequest"),
            "{headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_full_object_checksums() {
    let c = cluster().await;
    let p1 = pattern(5 * MIB, 60);
    let p2 = pattern(5 * MIB, 61);
    let p3 = pattern(12345, 62);
    let mut whole = p1.clone();
    whole.extend_from_slice(&p2);
    whole.extend_from_slice(&p3);
    // (CreateMultipartUpload headers, algorithm of the object checksum).
    let cases: [(Vec<(&str, &str)>, Alg); 4] = [
        (vec![], Alg::Crc64Nvme),
        (
            vec![("x-amz-checksum-algorithm", "CRC64NVME")],
            Alg::Crc64Nvme,
        ),
        (
            vec![
                ("x-amz-checksum-algorithm", "CRC32"),
                ("x-amz-checksum-type", "FULL_OBJECT"),
            ],
            Alg::Crc32,
        ),
        (
            vec![
                ("x-amz-checksum-algorithm", "CRC32C"),
                ("x-amz-checksum-type", "FULL_OBJECT"),
            ],
            Alg::Crc32c,
        ),
    ];
    for (n, (headers, a)) in cases.into_iter().enumerate() {
        let path = format!("/cks/full-{n}");
        let r = create_upload(&c, &path, &headers).await;
        assert_eq!(r.status, 200, "{}", r.text());
        if !headers.is_empty() {
            assert_eq!(
                r.header("x-amz-checksum-type").as_deref(),
                Some("FULL_OBJECT")
            );
        }
        let id = tag(&r.text(), "UploadId").unwrap();
        let mut parts = Vec::new();
        let hname = a.header();
        for (i, p) in [&p1, &p2, &p3].into_iter().enumerate() {
            let sent: Vec<(&str, String)> = if headers.is_empty() {
                vec![]
            } else {
                vec![(hname.as_str(), sum(a, p))]
            };
            let sent_ref: Vec<(&str, &str)> = sent.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = put_part(&c, &path, &id, i as u32 + 1, &sent_ref, p.clone()).await;
            assert_eq!(r.status, 200, "{}", r.text());
            parts.push((i as u32 + 1, r.header("etag").unwrap(), vec![]));
        }
        let want = sum(a, &whole);
        // The whole object's checksum may be sent with Complete: a wrong
        // one is BadDigest and leaves the upload in place.
        let wrong = complete(&c, &path, &id, &parts, &[(&a.header(), &sum(a, b"x"))]).await;
        assert_eq!(
            (wrong.status, wrong.code().as_str()),
            (400, "BadDigest"),
            "{}",
            wrong.text()
        );
        let done = complete(&c, &path, &id, &parts, &[(&a.header(), &want)]).await;
        assert_eq!(done.status, 200, "{}", done.text());
        assert_eq!(
            tag(&done.text(), &a.xml()),
            Some(want.clone()),
            "{}",
            done.text()
        );
        assert_eq!(
            tag(&done.text(), "ChecksumType").as_deref(),
            Some("FULL_OBJECT")
        );
        let g = get_enabled(&c, &path).await;
        assert!(g.body.as_ref() == whole.as_slice());
        assert_answered(&g, a, &want, "FULL_OBJECT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailer_checksums_over_tls() {
    let mut c = cluster().await;
    c.enable_tls().await;
    // The HTTPS port speaks only TLS: a plain request gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(c.host()).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP answered on the TLS port"
    );

    for mode in [Mode::Unsigned, Mode::Signed] {
        for (i, a) in ALL.into_iter().enumerate() {
            let data = pattern(150_000 + i, 70 + i as u8);
            let good = sum(a, &data);
            let path = format!("/cks/tls-{mode:?}-{}", a.name());
            let (status, resp) = put_trailer(
                &c,
                &path,
                "",
                &data,
                &a.header(),
                Some((&a.header(), &good)),
                mode,
                true,
            )
            .await;
            assert_eq!(status, 200, "{mode:?} {} {resp}", a.name());
            // Read back over TLS, with the checksum asked for.
            let payload = sha_hex(b"");
            let signed = sign(
                &c,
                "GET",
                &path,
                "",
                &[("x-amz-checksum-mode", "ENABLED")],
                &payload,
            );
            let (status, resp) = raw(&c, "GET", &path, &signed.headers, &[], false).await;
            assert_eq!(status, 200, "{resp}");
            assert_eq!(raw_header(&resp, &a.header()), Some(good.clone()));
            // And the bytes, through the plain gateway: the payload, no framing.
            let g = get_enabled(&c, &path).await;
            assert!(g.body.as_ref() == data.as_slice());
            assert_answered(&g, a, &good, "FULL_OBJECT");

            let bad_path = format!("{path}-bad");
            let (status, resp) = put_trailer(
                &c,
                &bad_path,
                "",
                &data,
                &a.header(),
                Some((&a.header(), &sum(a, b"bad"))),
                mode,
                true,
            )
            .await;
            assert_eq!((status, code(&resp).as_str()), (400, "BadDigest"), "{resp}");
            assert_eq!(c.s3.get(&bad_path).await.status, 404);
        }
    }
}
