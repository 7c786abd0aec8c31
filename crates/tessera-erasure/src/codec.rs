//! Codecs: the [`Codec`] trait, the ids that name codecs in manifests, and a
//! process-wide cache of codec instances per (codec, k, m), since building a
//! Reed-Solomon codec builds and inverts matrices.

use crate::{layout::check_class, ErasureError};
use reed_solomon_erasure::{galois_8, ReedSolomon};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use tessera_types::StorageClass;

/// Codec ids as stored in [`StorageClass::codec`]. Ids are never reused, so
/// stripes written by an older codec stay readable after the default changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CodecId {
    /// Systematic Reed-Solomon over GF(2^8) (`reed-solomon-erasure`'s
    /// `galois_8`, the Backblaze/klauspost matrix construction).
    ReedSolomonGf8 = 1,
}

impl TryFrom<u8> for CodecId {
    type Error = ErasureError;

    fn try_from(id: u8) -> Result<Self, ErasureError> {
        match id {
            1 => Ok(CodecId::ReedSolomonGf8),
            other => Err(ErasureError::UnknownCodec(other)),
        }
    }
}

impl From<CodecId> for u8 {
    fn from(id: CodecId) -> u8 {
        id as u8
    }
}

/// A systematic erasure code with `k` data and `m` parity shards of equal
/// length. Implementations are CPU-bound and synchronous: call them from
/// `spawn_blocking` or a dedicated pool, never on an async executor.
pub trait Codec: Send + Sync + fmt::Debug {
    /// Which codec this is.
    fn id(&self) -> CodecId;
    /// Number of data shards (k).
    fn data_shards(&self) -> usize;
    /// Number of parity shards (m).
    fn parity_shards(&self) -> usize;
    /// k + m.
    fn total_shards(&self) -> usize {
        self.data_shards() + self.parity_shards()
    }
    /// Computes the `m` parity shards of the `k` data shards into `parity`
    /// (overwritten). All shards must have the same length, possibly 0.
    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), ErasureError>;
    /// Rebuilds the missing (`None`) data shards from any k present shards;
    /// missing parity shards stay `None`. Present shards must have equal
    /// lengths. On error nothing is changed.
    fn reconstruct_data(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError>;
    /// Rebuilds every missing shard, data and parity (what repair needs).
    fn reconstruct(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError>;
}

/// Reed-Solomon over GF(2^8). `m = 0` is allowed and means no parity (the
/// stripe is just its data shards), which the library itself refuses.
struct ReedSolomonCodec {
    k: usize,
    m: usize,
    rs: Option<ReedSolomon<galois_8::Field>>,
}

impl fmt::Debug for ReedSolomonCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReedSolomonGf8({}, {})", self.k, self.m)
    }
}

impl ReedSolomonCodec {
    fn new(k: usize, m: usize) -> Result<Self, ErasureError> {
        let rs = if m == 0 {
            None
        } else {
            Some(ReedSolomon::new(k, m)?)
        };
        Ok(ReedSolomonCodec { k, m, rs })
    }

    /// Checks shard count and lengths; returns (shard length, present count).
    fn check_shards(&self, shards: &[Option<Vec<u8>>]) -> Result<(usize, usize), ErasureError> {
        if shards.len() != self.k + self.m {
            return Err(ErasureError::ShardCount {
                got: shards.len(),
                expected: self.k + self.m,
            });
        }
        let mut len = None;
        let mut present = 0;
        for (index, shard) in shards.iter().enumerate() {
            let Some(shard) = shard else { continue };
            present += 1;
            match len {
                None => len = Some(shard.len()),
                Some(expected) if expected != shard.len() => {
                    return Err(ErasureError::ShardSize {
                        index,
                        got: shard.len(),
                        expected,
                    })
                }
                Some(_) => {}
            }
        }
        if present < self.k {
            return Err(ErasureError::NotEnoughShards {
                have: present,
                need: self.k,
            });
        }
        Ok((len.unwrap_or(0), present))
    }

    fn rebuild(&self, shards: &mut [Option<Vec<u8>>], data_only: bool) -> Result<(), ErasureError> {
        let (len, present) = self.check_shards(shards)?;
        let wanted = if data_only { self.k } else { self.k + self.m };
        if shards[..wanted].iter().all(Option::is_some) {
            return Ok(());
        }
        match &self.rs {
            // Zero-length shards: nothing to compute (the library refuses them).
            _ if len == 0 => {
                for shard in &mut shards[..wanted] {
                    shard.get_or_insert_with(Vec::new);
                }
                Ok(())
            }
            // m = 0 and all k present was handled above; fewer is an error.
            None => Err(ErasureError::NotEnoughShards {
                have: present,
                need: self.k,
            }),
            Some(rs) if data_only => Ok(rs.reconstruct_data(shards)?),
            Some(rs) => Ok(rs.reconstruct(shards)?),
        }
    }
}

impl Codec for ReedSolomonCodec {
    fn id(&self) -> CodecId {
        CodecId::ReedSolomonGf8
    }
    fn data_shards(&self) -> usize {
        self.k
    }
    fn parity_shards(&self) -> usize {
        self.m
    }

    fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), ErasureError> {
        if data.len() != self.k || parity.len() != self.m {
            return Err(ErasureError::ShardCount {
                got: data.len() + parity.len(),
                expected: self.k + self.m,
            });
        }
        let len = data.first().map_or(0, |d| d.len());
        let lens = data
            .iter()
            .map(|d| d.len())
            .chain(parity.iter().map(|p| p.len()));
        for (index, got) in lens.enumerate() {
            if got != len {
                return Err(ErasureError::ShardSize {
                    index,
                    got,
                    expected: len,
                });
            }
        }
        match &self.rs {
            Some(rs) if len > 0 => Ok(rs.encode_sep(data, parity)?),
            _ => Ok(()),
        }
    }

    fn reconstruct_data(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        self.rebuild(shards, true)
    }

    fn reconstruct(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        self.rebuild(shards, false)
    }
}

type CodecCache = Mutex<HashMap<(CodecId, u8, u8), Arc<dyn Codec>>>;

/// The codec for `class`, built once per (codec, k, m) and shared.
pub fn codec_for(class: &StorageClass) -> Result<Arc<dyn Codec>, ErasureError> {
    check_class(class)?;
    let id = CodecId::try_from(class.codec)?;
    let key = (id, class.k, class.m);
    static CACHE: OnceLock<CodecCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // A panic while holding the lock cannot leave the map inconsistent
    // (insert is the only mutation), so a poisoned lock is still usable.
    if let Some(codec) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(codec.clone());
    }
    // Build outside the lock; a racing builder's instance is equivalent.
    let built: Arc<dyn Codec> = match id {
        CodecId::ReedSolomonGf8 => {
            Arc::new(ReedSolomonCodec::new(class.k as usize, class.m as usize)?)
        }
    };
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    Ok(map.entry(key).or_insert(built).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_ids_round_trip() {
        assert_eq!(CodecId::try_from(1).unwrap(), CodecId::ReedSolomonGf8);
        assert_eq!(u8::from(CodecId::ReedSolomonGf8), 1);
        assert!(matches!(
            CodecId::try_from(7),
            Err(ErasureError::UnknownCodec(7))
        ));
    }

    #[test]
    fn codecs_are_cached() {
        let class = StorageClass::rs(4, 2, 64);
        let a = codec_for(&class).unwrap();
        let b = codec_for(&class).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!((a.data_shards(), a.parity_shards()), (4, 2));
        let mut other = class;
        other.codec = 9;
        assert!(codec_for(&other).is_err());
    }

    #[test]
    fn reconstruct_rebuilds_parity_too() {
        let codec = codec_for(&StorageClass::rs(3, 2, 8)).unwrap();
        let data: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i * 17 + 1; 8]).collect();
        let mut parity = vec![vec![0u8; 8]; 2];
        let data_refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let mut parity_refs: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
        codec.encode(&data_refs, &mut parity_refs).unwrap();
        let full: Vec<Vec<u8>> = data.iter().chain(parity.iter()).cloned().collect();
        let mut shards: Vec<Option<Vec<u8>>> = full.iter().cloned().map(Some).collect();
        shards[0] = None;
        shards[4] = None;
        codec.reconstruct(&mut shards).unwrap();
        let rebuilt: Vec<Vec<u8>> = shards.into_iter().map(|s| s.unwrap()).collect();
        assert_eq!(rebuilt, full);
    }
}
