//! Stripe math. An object (or a part of one) of `len` bytes is cut into
//! stripes of `k * shard_size` bytes, the last one short; a zero-length
//! object has zero stripes. A stripe of `stripe_len` bytes has shards of
//! `shard_len = ceil(stripe_len / k)` bytes, and data shard `i` holds bytes
//! `[i * shard_len, (i + 1) * shard_len)` of the stripe, zero-padded at the
//! end. Parity shards have the same length.

use crate::ErasureError;
use std::ops::Range;
use tessera_types::StorageClass;

/// Most shards a stripe can have (the GF(2^8) code limit).
pub const MAX_SHARDS: usize = 256;

/// Checks that `class` describes a usable stripe geometry: `k >= 1`,
/// `shard_size >= 1`, `k + m <= 256`. (The codec id is checked by
/// [`crate::codec_for`], since the math does not depend on it.)
pub fn check_class(class: &StorageClass) -> Result<(), ErasureError> {
    let reason = if class.k == 0 {
        "k must be at least 1"
    } else if class.shard_size == 0 {
        "shard_size must be at least 1"
    } else if class.total_shards() > MAX_SHARDS {
        "k + m must be at most 256"
    } else {
        return Ok(());
    };
    Err(ErasureError::InvalidClass {
        k: class.k,
        m: class.m,
        shard_size: class.shard_size,
        reason,
    })
}

/// Number of stripes of an object of `len` bytes (0 for an empty object).
pub fn stripe_count(len: u64, class: &StorageClass) -> Result<u64, ErasureError> {
    check_class(class)?;
    Ok(len.div_ceil(class.stripe_data_size()))
}

/// Byte range of stripe `index` within an object of `len` bytes.
pub fn stripe_range(
    index: u64,
    len: u64,
    class: &StorageClass,
) -> Result<Range<u64>, ErasureError> {
    let count = stripe_count(len, class)?;
    if index >= count {
        return Err(ErasureError::StripeIndex { index, count });
    }
    let size = class.stripe_data_size();
    let start = index * size;
    Ok(start..len.min(start + size))
}

/// Shard length of a stripe of `stripe_len` bytes: `ceil(stripe_len / k)`
/// (0 for an empty stripe). Errors if the stripe exceeds `k * shard_size`.
pub fn shard_len(stripe_len: u64, class: &StorageClass) -> Result<u32, ErasureError> {
    check_class(class)?;
    let max = class.stripe_data_size();
    if stripe_len > max {
        return Err(ErasureError::StripeTooLong {
            len: stripe_len,
            max,
        });
    }
    // <= shard_size, which is a u32.
    Ok(stripe_len.div_ceil(class.k as u64) as u32)
}

/// The part of one stripe that a byte range of the object covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StripePiece {
    /// Stripe index within the object (or part).
    pub stripe: u64,
    /// Length of that whole stripe.
    pub stripe_len: u64,
    /// Offset of the piece within the stripe.
    pub offset: u64,
    /// Length of the piece (never 0).
    pub len: u64,
}

/// Iterator over the [`StripePiece`]s of a byte range, in order; see
/// [`stripe_pieces`]. Holds O(1) state whatever the object size.
#[derive(Clone, Debug)]
pub struct StripePieces {
    pos: u64,
    end: u64,
    object_len: u64,
    stripe_size: u64,
}

impl Iterator for StripePieces {
    type Item = StripePiece;

    fn next(&mut self) -> Option<StripePiece> {
        if self.pos >= self.end {
            return None;
        }
        let stripe = self.pos / self.stripe_size;
        let stripe_start = stripe * self.stripe_size;
        let stripe_end = self.object_len.min(stripe_start + self.stripe_size);
        let piece_end = self.end.min(stripe_end);
        let piece = StripePiece {
            stripe,
            stripe_len: stripe_end - stripe_start,
            offset: self.pos - stripe_start,
            len: piece_end - self.pos,
        };
        self.pos = piece_end;
        Some(piece)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.pos >= self.end {
            return (0, Some(0));
        }
        let n = (self.end - 1) / self.stripe_size - self.pos / self.stripe_size + 1;
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

/// Maps the byte range `range` of an object of `object_len` bytes to the
/// stripes it touches: one [`StripePiece`] per stripe, in order, covering
/// the range exactly. An empty range yields nothing.
pub fn stripe_pieces(
    range: Range<u64>,
    object_len: u64,
    class: &StorageClass,
) -> Result<StripePieces, ErasureError> {
    check_class(class)?;
    if range.start > range.end || range.end > object_len {
        return Err(ErasureError::InvalidRange {
            start: range.start,
            end: range.end,
            len: object_len,
        });
    }
    Ok(StripePieces {
        pos: range.start,
        end: range.end,
        object_len,
        stripe_size: class.stripe_data_size(),
    })
}

/// Which data shards a read of part of one stripe needs, and how to cut the
/// wanted bytes out of them: concatenate data shards `shards` (in order),
/// skip `skip` bytes, take `len` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRead {
    /// Data shard indices to fetch (empty for an empty read).
    pub shards: Range<usize>,
    /// Length of every shard of the stripe.
    pub shard_len: u32,
    /// Bytes to skip at the start of shard `shards.start`.
    pub skip: u64,
    /// Bytes to return.
    pub len: u64,
}

/// For a stripe of `stripe_len` bytes, the data shards holding the bytes
/// `[offset, offset + len)` of the stripe, so a ranged GET fetches only
/// those (a degraded read needs any k shards instead).
pub fn data_shards_for_range(
    stripe_len: u64,
    offset: u64,
    len: u64,
    class: &StorageClass,
) -> Result<ShardRead, ErasureError> {
    let sl = shard_len(stripe_len, class)?;
    let end = offset.checked_add(len);
    if end.is_none_or(|end| end > stripe_len) {
        return Err(ErasureError::InvalidRange {
            start: offset,
            end: end.unwrap_or(u64::MAX),
            len: stripe_len,
        });
    }
    if len == 0 {
        return Ok(ShardRead {
            shards: 0..0,
            shard_len: sl,
            skip: 0,
            len: 0,
        });
    }
    // len > 0 implies stripe_len > 0 and so sl > 0.
    let sl64 = sl as u64;
    let first = offset / sl64;
    let last = (offset + len - 1) / sl64;
    Ok(ShardRead {
        shards: first as usize..last as usize + 1,
        shard_len: sl,
        skip: offset - first * sl64,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_has_no_stripes() {
        let class = StorageClass::rs(4, 2, 1024);
        assert_eq!(stripe_count(0, &class).unwrap(), 0);
        assert!(stripe_range(0, 0, &class).is_err());
        assert_eq!(stripe_pieces(0..0, 0, &class).unwrap().count(), 0);
    }

    #[test]
    fn short_last_stripe() {
        let class = StorageClass::rs(4, 2, 10);
        assert_eq!(stripe_count(95, &class).unwrap(), 3);
        assert_eq!(stripe_range(2, 95, &class).unwrap(), 80..95);
        assert_eq!(shard_len(15, &class).unwrap(), 4);
        assert_eq!(shard_len(40, &class).unwrap(), 10);
        assert!(shard_len(41, &class).is_err());
    }

    #[test]
    fn invalid_classes_are_errors() {
        for class in [
            StorageClass::rs(0, 2, 10),
            StorageClass::rs(4, 2, 0),
            StorageClass::rs(200, 100, 10),
        ] {
            assert!(matches!(
                stripe_count(10, &class),
                Err(ErasureError::InvalidClass { .. })
            ));
        }
    }

    #[test]
    fn range_to_data_shards() {
        let class = StorageClass::rs(4, 2, 10);
        // 30-byte stripe: shard_len 8, shards hold 0..8, 8..16, 16..24, 24..30.
        let r = data_shards_for_range(30, 7, 10, &class).unwrap();
        assert_eq!(r.shards, 0..3);
        assert_eq!(r.skip, 7);
        let r = data_shards_for_range(30, 24, 6, &class).unwrap();
        assert_eq!(r.shards, 3..4);
        assert_eq!(r.skip, 0);
        assert!(data_shards_for_range(30, 25, 6, &class).is_err());
        assert!(data_shards_for_range(30, u64::MAX, 6, &class).is_err());
    }
}
