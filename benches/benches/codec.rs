//! The erasure codec: encode, and decode with 1..=m data shards lost, for
//! RS(4,2), RS(8,3) and RS(10,4) with 1 MiB shards; `reed-solomon-simd`
//! (Leopard-style O(n log n) GF(2^16) codec) measured in the same run as a
//! reference. Throughput is counted in bytes of stripe data (k shards).
//!
//! - `encode/tessera`: `Codec::encode` (parity math only, buffers reused).
//! - `encode/rs-simd`: `ReedSolomonEncoder` (encoder reused, shards copied in).
//! - `decode_lostN/tessera-decode_stripe`: the public `decode_stripe`, what a
//!   degraded read runs (copies in and out included).
//! - `decode_lostN/tessera-reconstruct`: `Codec::reconstruct_data` alone
//!   (input copies made outside the timed region).
//! - `decode_lostN/rs-simd`: `ReedSolomonDecoder` from the same k shards.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use std::hint::black_box;
use tessera_benches::{class, criterion_config, data, label, GEOMETRIES, SHARD_SIZE};
use tessera_erasure::{codec_for, decode_stripe, encode_stripe};

fn encode(c: &mut Criterion) {
    for (k, m) in GEOMETRIES {
        let (ku, mu) = (k as usize, m as usize);
        let stripe = data(ku * SHARD_SIZE);
        let shards: Vec<&[u8]> = stripe.chunks(SHARD_SIZE).collect();
        let mut g = c.benchmark_group(format!("{}/encode", label(k, m)));
        g.throughput(Throughput::Bytes(stripe.len() as u64));

        let codec = codec_for(&class(k, m)).expect("valid class");
        let mut parity = vec![vec![0u8; SHARD_SIZE]; mu];
        g.bench_function("tessera", |b| {
            b.iter(|| {
                let mut refs: Vec<&mut [u8]> =
                    parity.iter_mut().map(|p| p.as_mut_slice()).collect();
                codec.encode(black_box(&shards), &mut refs).expect("encode");
            })
        });

        let mut enc = ReedSolomonEncoder::new(ku, mu, SHARD_SIZE).expect("rs-simd geometry");
        g.bench_function("rs-simd", |b| {
            b.iter(|| {
                for s in &shards {
                    enc.add_original_shard(black_box(s)).expect("add shard");
                }
                let out = enc.encode().expect("encode");
                black_box(out.recovery(0));
            })
        });
        g.finish();
    }
}

fn decode(c: &mut Criterion) {
    for (k, m) in GEOMETRIES {
        let (ku, mu) = (k as usize, m as usize);
        let class = class(k, m);
        let stripe = data(ku * SHARD_SIZE);
        let enc = encode_stripe(&class, &stripe).expect("encode");
        // rs-simd has its own parity (a different code); computed once.
        let mut simd_enc = ReedSolomonEncoder::new(ku, mu, SHARD_SIZE).expect("rs-simd geometry");
        for s in stripe.chunks(SHARD_SIZE) {
            simd_enc.add_original_shard(s).expect("add shard");
        }
        let simd_parity: Vec<Vec<u8>> = simd_enc
            .encode()
            .expect("encode")
            .recovery_iter()
            .map(<[u8]>::to_vec)
            .collect();

        for lost in 1..=mu {
            let mut g = c.benchmark_group(format!("{}/decode_lost{lost}", label(k, m)));
            g.throughput(Throughput::Bytes(stripe.len() as u64));
            // The worst case for a systematic code: the lost shards are data
            // shards, and exactly k survivors are used.
            let survivors: Vec<Option<Bytes>> = enc
                .shards
                .iter()
                .enumerate()
                .map(|(i, s)| (i >= lost && i < ku + lost).then(|| s.clone()))
                .collect();

            g.bench_function("tessera-decode_stripe", |b| {
                b.iter_batched(
                    || survivors.clone(),
                    |shards| decode_stripe(&class, stripe.len() as u64, shards).expect("decode"),
                    BatchSize::LargeInput,
                )
            });

            let codec = codec_for(&class).expect("valid class");
            let as_vecs: Vec<Option<Vec<u8>>> = survivors
                .iter()
                .map(|s| s.as_ref().map(|b| b.to_vec()))
                .collect();
            g.bench_function("tessera-reconstruct", |b| {
                b.iter_batched(
                    || as_vecs.clone(),
                    |mut shards| {
                        codec.reconstruct_data(&mut shards).expect("reconstruct");
                        shards
                    },
                    BatchSize::LargeInput,
                )
            });

            let mut dec = ReedSolomonDecoder::new(ku, mu, SHARD_SIZE).expect("rs-simd geometry");
            g.bench_function("rs-simd", |b| {
                b.iter(|| {
                    for (i, s) in stripe.chunks(SHARD_SIZE).enumerate().skip(lost) {
                        dec.add_original_shard(i, black_box(s)).expect("add shard");
                    }
                    for (i, p) in simd_parity.iter().enumerate().take(lost) {
                        dec.add_recovery_shard(i, black_box(p)).expect("add shard");
                    }
                    let out = dec.decode().expect("decode");
                    black_box(out.restored_original(0));
                })
            });
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = encode, decode
}
criterion_main!(benches);
