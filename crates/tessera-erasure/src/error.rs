//! The crate's one error type.

/// Everything that can go wrong while slicing, coding or decoding a stripe.
/// All variants are caused by input (a storage class, a range, shards read
/// from peers); none is a bug to panic on.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// The storage class cannot describe a stripe (k = 0, shard_size = 0,
    /// more than 256 shards...).
    #[error("invalid storage class k={k} m={m} shard_size={shard_size}: {reason}")]
    InvalidClass {
        k: u8,
        m: u8,
        shard_size: u32,
        reason: &'static str,
    },
    /// The class names a codec this build does not know.
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    /// A stripe longer than k * shard_size.
    #[error("stripe of {len} bytes exceeds the class maximum of {max} bytes")]
    StripeTooLong { len: u64, max: u64 },
    /// A byte range that is reversed or ends past the object (or stripe).
    #[error("invalid range {start}..{end} of a {len}-byte extent")]
    InvalidRange { start: u64, end: u64, len: u64 },
    /// A stripe index past the last stripe.
    #[error("stripe index {index} out of range ({count} stripes)")]
    StripeIndex { index: u64, count: u64 },
    /// The shard vector does not have k + m entries.
    #[error("expected {expected} shards, got {got}")]
    ShardCount { got: usize, expected: usize },
    /// A present shard has the wrong length for the stripe.
    #[error("shard {index} has {got} bytes, expected {expected}")]
    ShardSize {
        index: usize,
        got: usize,
        expected: usize,
    },
    /// Fewer than k shards are present: the stripe cannot be rebuilt.
    #[error("not enough shards to decode: have {have}, need {need}")]
    NotEnoughShards { have: usize, need: usize },
    /// The codec library refused the input.
    #[error("reed-solomon: {0}")]
    ReedSolomon(#[from] reed_solomon_erasure::Error),
}
