//! The hashes on the write path, per buffer size: MD5 (the S3 ETag, over
//! every byte of a PUT), SHA-256 (signed payloads), CRC64NVME (S3's
//! default flexible checksum, via `crc-fast`) and BLAKE3 (every shard's
//! integrity hash, `tessera_erasure::shard_hash`).

use crc_fast::CrcAlgorithm;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use md5::{Digest, Md5};
use sha2::Sha256;
use std::hint::black_box;
use tessera_benches::{criterion_config, data};
use tessera_erasure::shard_hash;

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

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = hashes
}
criterion_main!(benches);
