//! Property tests: any k of k + m shards rebuild the stripe, every flipped
//! bit is caught by the shard hash, and the stripe math covers ranges
//! exactly.

use bytes::Bytes;
use proptest::prelude::*;
use tessera_erasure::*;
use tessera_types::StorageClass;

/// A class with k in 1..=8, m in 1..=4 and a small shard size, plus stripe
/// data of any length from 0 to a full stripe.
fn class_and_stripe() -> impl Strategy<Value = (StorageClass, Vec<u8>)> {
    (1u8..=8, 1u8..=4, 1u32..=64).prop_flat_map(|(k, m, shard_size)| {
        let class = StorageClass::rs(k, m, shard_size);
        let max = class.stripe_data_size() as usize;
        (Just(class), proptest::collection::vec(any::<u8>(), 0..=max))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decode_survives_any_m_losses(
        (class, data) in class_and_stripe(),
        seed in any::<u64>(),
    ) {
        let n = class.total_shards();
        let enc = encode_stripe(&class, &data).unwrap();
        prop_assert_eq!(enc.shards.len(), n);
        prop_assert_eq!(enc.shard_len as usize, data.len().div_ceil(class.k as usize));
        // Pick a loss set of up to m shards from the seed.
        let lost_count = (seed % (class.m as u64 + 1)) as usize;
        let mut order: Vec<usize> = (0..n).collect();
        let mut s = seed;
        for i in (1..n).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        let mut shards: Vec<Option<Bytes>> = enc.shards.iter().cloned().map(Some).collect();
        for &i in &order[..lost_count] {
            shards[i] = None;
        }
        let out = decode_stripe(&class, data.len() as u64, shards).unwrap();
        prop_assert_eq!(out.as_ref(), data.as_slice());
    }

    #[test]
    fn decode_survives_every_loss_set_of_small_stripes(
        k in 1u8..=4, m in 1u8..=3, len in 0usize..=40,
    ) {
        let class = StorageClass::rs(k, m, 10);
        let data: Vec<u8> = (0..len.min(class.stripe_data_size() as usize))
            .map(|i| (i * 131 + 5) as u8)
            .collect();
        let enc = encode_stripe(&class, &data).unwrap();
        let n = class.total_shards();
        for mask in 0u32..(1 << n) {
            let lost = mask.count_ones() as usize;
            let shards: Vec<Option<Bytes>> = (0..n)
                .map(|i| (mask & (1 << i) == 0).then(|| enc.shards[i].clone()))
                .collect();
            let res = decode_stripe(&class, data.len() as u64, shards);
            // Data shards that hold stripe bytes (the rest is padding).
            let needed = if data.is_empty() { 0 } else { data.len().div_ceil(enc.shard_len as usize) };
            let needed_present = (0..needed).all(|i| mask & (1 << i) == 0);
            if lost <= m as usize || needed_present {
                let out = res.unwrap();
                prop_assert_eq!(&out[..], data.as_slice());
            } else {
                let not_enough = matches!(res, Err(ErasureError::NotEnoughShards { .. }));
                prop_assert!(not_enough);
            }
        }
    }

    #[test]
    fn any_flipped_bit_is_detected(
        (class, data) in class_and_stripe(),
        shard in any::<prop::sample::Index>(),
        byte in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let enc = encode_stripe(&class, &data).unwrap();
        prop_assume!(enc.shard_len > 0);
        let i = shard.index(enc.shards.len());
        let mut bad = enc.shards[i].to_vec();
        let j = byte.index(bad.len());
        bad[j] ^= 1 << bit;
        prop_assert!(verify_shard(&enc.shards[i], &enc.hashes[i]));
        prop_assert!(!verify_shard(&bad, &enc.hashes[i]));
        prop_assert_eq!(shard_hash(&enc.shards[i]), enc.hashes[i]);
    }

    #[test]
    fn encode_paths_agree((class, data) in class_and_stripe()) {
        let a = encode_stripe(&class, &data).unwrap();
        let b = encode_stripe_bytes(&class, Bytes::from(data)).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn stripes_tile_the_object(
        k in 1u8..=8, shard_size in 1u32..=64, len in 0u64..20_000,
    ) {
        let class = StorageClass::rs(k, 2, shard_size);
        let count = stripe_count(len, &class).unwrap();
        let mut pos = 0;
        for i in 0..count {
            let r = stripe_range(i, len, &class).unwrap();
            prop_assert_eq!(r.start, pos);
            prop_assert!(r.end > r.start);
            prop_assert!(r.end - r.start <= class.stripe_data_size());
            // Only the last stripe may be short.
            if i + 1 < count {
                prop_assert_eq!(r.end - r.start, class.stripe_data_size());
            }
            pos = r.end;
        }
        prop_assert_eq!(pos, len);
        prop_assert!(stripe_range(count, len, &class).is_err());
    }

    #[test]
    fn pieces_cover_a_range_exactly_in_order(
        k in 1u8..=8, shard_size in 1u32..=64, len in 0u64..20_000,
        a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>(),
    ) {
        let class = StorageClass::rs(k, 2, shard_size);
        let (mut start, mut end) = (a.index(len as usize + 1) as u64, b.index(len as usize + 1) as u64);
        if start > end {
            std::mem::swap(&mut start, &mut end);
        }
        let size = class.stripe_data_size();
        let pieces: Vec<StripePiece> = stripe_pieces(start..end, len, &class).unwrap().collect();
        let mut pos = start;
        let mut last_stripe = None;
        for p in &pieces {
            prop_assert!(p.len > 0);
            prop_assert_eq!(p.stripe * size + p.offset, pos);
            prop_assert!(p.offset + p.len <= p.stripe_len);
            prop_assert_eq!(stripe_range(p.stripe, len, &class).unwrap().end - p.stripe * size, p.stripe_len);
            prop_assert!(last_stripe.is_none_or(|s| p.stripe == s + 1));
            last_stripe = Some(p.stripe);
            pos += p.len;
        }
        prop_assert_eq!(pos, end);
        if start < end {
            prop_assert!(stripe_pieces(start..end + 1, end, &class).is_err());
        }
    }

    #[test]
    fn shard_reads_return_the_range(
        (class, data) in class_and_stripe(),
        a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>(),
    ) {
        let (mut start, mut end) = (a.index(data.len() + 1), b.index(data.len() + 1));
        if start > end {
            std::mem::swap(&mut start, &mut end);
        }
        let enc = encode_stripe(&class, &data).unwrap();
        let read = data_shards_for_range(
            data.len() as u64, start as u64, (end - start) as u64, &class,
        ).unwrap();
        prop_assert!(read.shards.end <= class.k as usize);
        let mut joined = Vec::new();
        for i in read.shards.clone() {
            joined.extend_from_slice(&enc.shards[i]);
        }
        let got = &joined[read.skip as usize..read.skip as usize + read.len as usize];
        prop_assert_eq!(got, &data[start..end]);
        // Minimal: the first and last fetched shards each hold wanted bytes.
        if !read.shards.is_empty() {
            prop_assert!(read.skip < read.shard_len as u64);
            prop_assert!(joined.len() as u64 - (read.skip + read.len) < read.shard_len as u64);
        }
    }
}
