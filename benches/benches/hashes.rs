//! The hashes on the write path, per buffer size: MD5 (the S3 ETag, over
//! every byte of a PUT), SHA-256 (signed payloads), CRC64NVME (S3's
//! default flexible checksum, via `crc-fast`) and BLAKE3 (every shard's
//! integrity hash, `tessera_erasure::shard_hash`).
//!
//! `md5-streams/N`: N concurrent 1 MiB streams through the multi-buffer
//! MD5 engine (`tessera-md5`, its best kernel and its scalar one) against
//! the md-5 crate hashing the same N MiB on one thread. Throughput is the
//! N MiB over the wall time; the engine uses one thread (its own), like
//! the md-5 baseline.
//!
//! `auth`: the internode signature every gRPC call carries (HMAC-SHA256
//! of timestamp and method path): signed and verified from scratch, and
//! as the channel and the server do it, remembered per path and second.

use bytes::Bytes;
use crc_fast::CrcAlgorithm;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use md5::{Digest, Md5};
use sha2::Sha256;
use std::hint::black_box;
use tessera_benches::{criterion_config, data};
use tessera_erasure::shard_hash;
use tessera_md5::{Engine, Kernel, Md5State};

fn hashes(c: &mut Criterion) {
    for (name, len) in [("4KiB", 4usize << 10), ("1MiB", 1 << 20)] {
        let buf = data(len);
        let mut g = c.benchmark_group(format!("hash/{name}"));
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function("md5", |b| b.iter(|| Md5::digest(black_box(&buf))));
        g.bench_function("sha256", |b| b.iter(|| Sha256::digest(black_box(&buf))));
        g.bench_function("crc64nvme", |b| {
            b.iter(|| crc_fast::checksum(CrcAlgorithm::Crc64Nvme, black_box(&buf)))
        });
        g.bench_function("blake3", |b| b.iter(|| shard_hash(black_box(&buf))));
        g.finish();
    }
}

fn md5_streams(c: &mut Criterion) {
    let buf = data(1 << 20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a tokio runtime");
    let best = Engine::global();
    let scalar: &'static Engine = Box::leak(Box::new(Engine::with_kernel(Kernel::scalar())));
    // AVX2 next to AVX-512 where the CPU has both.
    let avx2: Option<&'static Engine> = Kernel::avx2()
        .filter(|k| *k != best.kernel())
        .map(|k| &*Box::leak(Box::new(Engine::with_kernel(k))));
    for streams in [1usize, 4, 8, 16] {
        let mut g = c.benchmark_group(format!("md5-streams/{streams}x1MiB"));
        g.throughput(Throughput::Bytes((streams as u64) << 20));
        g.bench_function("md-5", |b| {
            b.iter(|| {
                for _ in 0..streams {
                    black_box(Md5::digest(black_box(&buf)));
                }
            })
        });
        // Without SIMD the best engine is the scalar one.
        let mut engines = vec![(best.kernel().name(), best)];
        engines.extend(avx2.map(|e| ("avx2", e)));
        if best.kernel().is_simd() {
            engines.push(("scalar", scalar));
        }
        for (name, engine) in engines {
            g.bench_function(format!("engine-{name}"), |b| {
                b.iter(|| rt.block_on(hash_streams(engine, &buf, streams)))
            });
        }
        g.finish();
    }
}

/// MD5 of `n` concurrent streams of `buf`, each one engine update.
async fn hash_streams(engine: &'static Engine, buf: &Bytes, n: usize) -> Vec<[u8; 16]> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(engine.update(Md5State::new(), buf.clone())))
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        let state = t.await.expect("task").expect("engine");
        out.push(state.finalize());
    }
    out
}

fn auth(c: &mut Criterion) {
    use tessera_proto::{ClusterAuth, ClusterSecret};
    const PATH: &str = "/tessera.storage.v1.Storage/GetShard";
    let a =
        ClusterAuth::new(ClusterSecret::new("0123456789abcdef0123456789abcdef").expect("secret"));
    let now = 1_800_000_000;
    let header = a.sign(PATH, now);
    let mut g = c.benchmark_group("auth");
    g.bench_function("sign", |b| {
        b.iter(|| a.sign(black_box(PATH), black_box(now)))
    });
    g.bench_function("sign-remembered", |b| {
        b.iter(|| a.sign_header(black_box(PATH), black_box(now)))
    });
    // Two headers in turn: each verify finds the other one remembered.
    let other = a.sign(PATH, now + 1);
    let mut turn = false;
    g.bench_function("verify", |b| {
        b.iter(|| {
            turn = !turn;
            let h = if turn { &header } else { &other };
            a.verify(Some(black_box(h.as_bytes())), PATH, now)
        })
    });
    g.bench_function("verify-remembered", |b| {
        b.iter(|| a.verify(Some(black_box(header.as_bytes())), PATH, now))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = hashes, md5_streams, auth
}
criterion_main!(benches);
