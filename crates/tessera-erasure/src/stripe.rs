//! The stripe-level API the gateway uses: encode a stripe into hashed
//! shards, decode a stripe from any k of them, and check shard hashes.

use crate::{codec_for, shard_len, ErasureError};
use bytes::{Bytes, BytesMut};
use tessera_types::StorageClass;

/// A stripe coded into k data + m parity shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedStripe {
    /// Length of every shard: `ceil(stripe_len / k)`.
    pub shard_len: u32,
    /// k data shards (zero-padded to `shard_len`), then m parity shards.
    pub shards: Vec<Bytes>,
    /// BLAKE3 of each shard, same order as `shards`.
    pub hashes: Vec<[u8; 32]>,
}

/// BLAKE3 hash of a shard, as kept in the manifest's shard entries.
pub fn shard_hash(shard: &[u8]) -> [u8; 32] {
    *blake3::hash(shard).as_bytes()
}

/// Whether `shard` hashes to `expected` (constant-time comparison).
pub fn verify_shard(shard: &[u8], expected: &[u8; 32]) -> bool {
    blake3::hash(shard) == blake3::Hash::from_bytes(*expected)
}

/// Encodes one stripe of `data` (at most `k * shard_size` bytes) into
/// k + m shards with their hashes. The data is copied once, into a single
/// buffer that all shards share; see [`encode_stripe_bytes`] to avoid even
/// that copy when the data is already in a [`Bytes`].
pub fn encode_stripe(class: &StorageClass, data: &[u8]) -> Result<EncodedStripe, ErasureError> {
    let codec = codec_for(class)?;
    let sl = shard_len(data.len() as u64, class)? as usize;
    let (k, n) = (class.k as usize, class.total_shards());
    let mut buf = Vec::with_capacity(n * sl);
    buf.extend_from_slice(data);
    buf.resize(n * sl, 0);
    if sl > 0 {
        let (data_part, parity_part) = buf.split_at_mut(k * sl);
        let data_refs: Vec<&[u8]> = data_part.chunks(sl).collect();
        let mut parity_refs: Vec<&mut [u8]> = parity_part.chunks_mut(sl).collect();
        codec.encode(&data_refs, &mut parity_refs)?;
    }
    let buf = Bytes::from(buf);
    let shards = (0..n).map(|i| buf.slice(i * sl..(i + 1) * sl)).collect();
    Ok(finish(sl, shards))
}

/// Like [`encode_stripe`], but data shards that `data` fills completely are
/// zero-copy slices of it; only the padded tail (if any) and the parity are
/// newly allocated.
pub fn encode_stripe_bytes(
    class: &StorageClass,
    data: Bytes,
) -> Result<EncodedStripe, ErasureError> {
    let codec = codec_for(class)?;
    let sl = shard_len(data.len() as u64, class)? as usize;
    let (k, m) = (class.k as usize, class.m as usize);
    let mut shards = Vec::with_capacity(k + m);
    if sl == 0 {
        shards.resize(k + m, Bytes::new());
        return Ok(finish(0, shards));
    }
    let full = data.len() / sl;
    shards.extend((0..full).map(|i| data.slice(i * sl..(i + 1) * sl)));
    if full < k {
        let mut tail = BytesMut::with_capacity((k - full) * sl);
        tail.extend_from_slice(&data[full * sl..]);
        tail.resize((k - full) * sl, 0);
        let tail = tail.freeze();
        shards.extend((0..k - full).map(|i| tail.slice(i * sl..(i + 1) * sl)));
    }
    let mut parity = vec![0u8; m * sl];
    {
        let data_refs: Vec<&[u8]> = shards.iter().map(|s| s.as_ref()).collect();
        let mut parity_refs: Vec<&mut [u8]> = parity.chunks_mut(sl).collect();
        codec.encode(&data_refs, &mut parity_refs)?;
    }
    let parity = Bytes::from(parity);
    shards.extend((0..m).map(|i| parity.slice(i * sl..(i + 1) * sl)));
    Ok(finish(sl, shards))
}

fn finish(sl: usize, shards: Vec<Bytes>) -> EncodedStripe {
    let hashes = shards.iter().map(|s| shard_hash(s)).collect();
    EncodedStripe {
        // sl came from shard_len, a u32.
        shard_len: sl as u32,
        shards,
        hashes,
    }
}

/// Decodes a stripe of `stripe_len` bytes from its shards (`shards[i]` is
/// shard `i`, `None` when missing; k + m entries; present shards must
/// already be verified against their hashes). Returns exactly the
/// `stripe_len` original bytes.
///
/// Fast path: when every data shard that holds stripe bytes is present,
/// nothing is decoded (and a stripe held by one shard is returned without
/// a copy). Otherwise the data shards are rebuilt from any k present shards;
/// with fewer than k, [`ErasureError::NotEnoughShards`].
pub fn decode_stripe(
    class: &StorageClass,
    stripe_len: u64,
    shards: Vec<Option<Bytes>>,
) -> Result<Bytes, ErasureError> {
    let codec = codec_for(class)?;
    let sl = shard_len(stripe_len, class)? as usize;
    let (k, n) = (class.k as usize, class.total_shards());
    if shards.len() != n {
        return Err(ErasureError::ShardCount {
            got: shards.len(),
            expected: n,
        });
    }
    for (index, shard) in shards.iter().enumerate() {
        if let Some(shard) = shard {
            if shard.len() != sl {
                return Err(ErasureError::ShardSize {
                    index,
                    got: shard.len(),
                    expected: sl,
                });
            }
        }
    }
    if stripe_len == 0 {
        return Ok(Bytes::new());
    }
    // stripe_len fits in memory: it is at most k * shard_size (checked).
    let len = stripe_len as usize;
    // Data shards that hold stripe bytes; the rest of 0..k is padding.
    let needed = len.div_ceil(sl);
    if shards[..needed].iter().all(Option::is_some) {
        if let (1, Some(first)) = (needed, &shards[0]) {
            return Ok(first.slice(..len));
        } else {
            let mut out = BytesMut::with_capacity(len);
            for shard in shards[..needed].iter().flatten() {
                out.extend_from_slice(shard);
            }
            out.truncate(len);
            return Ok(out.freeze());
        }
    }

    let have = shards.iter().filter(|s| s.is_some()).count();
    if have < k {
        return Err(ErasureError::NotEnoughShards { have, need: k });
    }
    // Hand the codec exactly k shards, data first: extra parity would only
    // be copied for nothing.
    let mut taken = 0;
    let mut work: Vec<Option<Vec<u8>>> = shards
        .into_iter()
        .map(|s| match s {
            Some(b) if taken < k => {
                taken += 1;
                Some(Vec::from(b))
            }
            _ => None,
        })
        .collect();
    codec.reconstruct_data(&mut work)?;
    let mut out = Vec::with_capacity(len);
    for shard in work[..needed].iter().flatten() {
        out.extend_from_slice(shard);
    }
    if out.len() < len {
        // reconstruct_data fills every data shard or fails; defensive.
        return Err(ErasureError::NotEnoughShards { have, need: k });
    }
    out.truncate(len);
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    fn round_trip(k: u8, m: u8, shard_size: u32, len: usize) {
        let class = StorageClass::rs(k, m, shard_size);
        let data = pattern(len);
        let enc = encode_stripe(&class, &data).unwrap();
        assert_eq!(enc.shards.len(), (k + m) as usize);
        assert_eq!(enc.shard_len as usize, len.div_ceil(k as usize));
        assert_eq!(
            enc,
            encode_stripe_bytes(&class, Bytes::from(data.clone())).unwrap()
        );
        for (s, h) in enc.shards.iter().zip(&enc.hashes) {
            assert!(verify_shard(s, h));
        }
        // All present.
        let all: Vec<Option<Bytes>> = enc.shards.iter().cloned().map(Some).collect();
        assert_eq!(decode_stripe(&class, len as u64, all).unwrap(), data);
        // Lose the first m shards (all data when m >= k... at least some).
        let mut lost: Vec<Option<Bytes>> = enc.shards.iter().cloned().map(Some).collect();
        for s in lost.iter_mut().take(m as usize) {
            *s = None;
        }
        assert_eq!(
            decode_stripe(&class, len as u64, lost.clone()).unwrap(),
            data
        );
        // One more is too many.
        lost[m as usize] = None;
        assert!(matches!(
            decode_stripe(&class, len as u64, lost),
            Err(ErasureError::NotEnoughShards { .. })
        ));
    }

    #[test]
    fn rs_4_2() {
        round_trip(4, 2, 1 << 16, 4 << 16);
        round_trip(4, 2, 1 << 16, 100_003);
    }

    #[test]
    fn rs_8_3() {
        round_trip(8, 3, 4096, 8 * 4096);
        round_trip(8, 3, 4096, 5_000);
    }

    #[test]
    fn rs_10_4() {
        round_trip(10, 4, 4096, 10 * 4096);
        round_trip(10, 4, 4096, 1);
    }

    #[test]
    fn no_parity_class() {
        let class = StorageClass::rs(3, 0, 16);
        let data = pattern(40);
        let enc = encode_stripe(&class, &data).unwrap();
        let all: Vec<Option<Bytes>> = enc.shards.into_iter().map(Some).collect();
        assert_eq!(decode_stripe(&class, 40, all.clone()).unwrap(), data);
        let mut lost = all;
        lost[1] = None;
        assert!(matches!(
            decode_stripe(&class, 40, lost),
            Err(ErasureError::NotEnoughShards { have: 2, need: 3 })
        ));
    }

    #[test]
    fn bad_shards_are_errors() {
        let class = StorageClass::rs(4, 2, 16);
        let enc = encode_stripe(&class, &pattern(50)).unwrap();
        let mut shards: Vec<Option<Bytes>> = enc.shards.iter().cloned().map(Some).collect();
        shards[2] = Some(Bytes::from_static(b"short"));
        assert!(matches!(
            decode_stripe(&class, 50, shards),
            Err(ErasureError::ShardSize { index: 2, .. })
        ));
        let shards: Vec<Option<Bytes>> = enc.shards.iter().cloned().map(Some).take(5).collect();
        assert!(matches!(
            decode_stripe(&class, 50, shards),
            Err(ErasureError::ShardCount {
                got: 5,
                expected: 6
            })
        ));
        assert!(matches!(
            encode_stripe(&class, &pattern(65)),
            Err(ErasureError::StripeTooLong { len: 65, max: 64 })
        ));
    }

    #[test]
    fn single_shard_stripe_is_zero_copy() {
        let class = StorageClass::rs(1, 2, 16);
        let enc = encode_stripe(&class, &pattern(10)).unwrap();
        let first = enc.shards[0].clone();
        let shards: Vec<Option<Bytes>> = enc.shards.iter().cloned().map(Some).collect();
        let out = decode_stripe(&class, 10, shards).unwrap();
        assert_eq!(out.as_ptr(), first.as_ptr());
    }
}
