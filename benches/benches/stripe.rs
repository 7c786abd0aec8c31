//! The gateway's per-stripe CPU work for one full 4 MiB RS(4,2) stripe,
//! built up step by step so the cost of each addition shows:
//!
//! - `encode_stripe_bytes`: parity + BLAKE3 of the 6 shards (zero-copy
//!   data shards), what `write_stripe` runs on the blocking pool;
//! - `encode_stripe`: the same with the stripe copied into one buffer;
//! - `+md5`: plus the ETag MD5 over the stripe (the gateway's write path
//!   today);
//! - `+md5+sha256`: plus verifying a signed payload;
//! - `+md5+crc64nvme`: plus an S3 CRC64NVME checksum.

use crc_fast::CrcAlgorithm;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use md5::{Digest, Md5};
use sha2::Sha256;
use std::hint::black_box;
use tessera_benches::{class, criterion_config, data, SHARD_SIZE};
use tessera_erasure::{encode_stripe, encode_stripe_bytes};

fn stripe(c: &mut Criterion) {
    let class = class(4, 2);
    let stripe = data(4 * SHARD_SIZE);
    let mut g = c.benchmark_group("stripe_4MiB_RS(4,2)");
    g.throughput(Throughput::Bytes(stripe.len() as u64));
    g.bench_function("encode_stripe_bytes", |b| {
        b.iter(|| encode_stripe_bytes(&class, black_box(stripe.clone())).expect("encode"))
    });
    g.bench_function("encode_stripe", |b| {
        b.iter(|| encode_stripe(&class, black_box(&stripe)).expect("encode"))
    });
    g.bench_function("+md5", |b| {
        b.iter(|| {
            let etag = Md5::digest(black_box(&stripe));
            (
                etag,
                encode_stripe_bytes(&class, stripe.clone()).expect("encode"),
            )
        })
    });
    g.bench_function("+md5+sha256", |b| {
        b.iter(|| {
            let etag = Md5::digest(black_box(&stripe));
            let payload = Sha256::digest(&stripe);
            (
                etag,
                payload,
                encode_stripe_bytes(&class, stripe.clone()).expect("encode"),
            )
        })
    });
    g.bench_function("+md5+crc64nvme", |b| {
        b.iter(|| {
            let etag = Md5::digest(black_box(&stripe));
            let crc = crc_fast::checksum(CrcAlgorithm::Crc64Nvme, &stripe);
            (
                etag,
                crc,
                encode_stripe_bytes(&class, stripe.clone()).expect("encode"),
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = stripe
}
criterion_main!(benches);
