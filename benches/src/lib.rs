//! Shared inputs of the criterion benchmarks under `benches/`: the storage
//! classes measured, deterministic test data, and the short criterion
//! configuration that keeps `cargo bench -p tessera-benches` to a few
//! minutes.
//!
//! Run with `cargo bench -p tessera-benches` (all), or one file and a
//! filter: `cargo bench -p tessera-benches --bench codec -- 'RS\(4,2\)'`.
//! `cargo test` runs each benchmark once, as a smoke test.
//!
//! This crate only measures: nothing in the workspace depends on it.

use bytes::Bytes;
use tessera_types::StorageClass;

/// Bytes per shard of a full stripe in every benchmark: the gateway's
/// default, so a RS(4,2) stripe is 4 MiB of data.
pub const SHARD_SIZE: usize = 1 << 20;

/// The (k, m) geometries measured: the `tessera dev` default and two wider
/// production-style classes.
pub const GEOMETRIES: [(u8, u8); 3] = [(4, 2), (8, 3), (10, 4)];

/// A storage class of `k` data and `m` parity shards of [`SHARD_SIZE`].
pub fn class(k: u8, m: u8) -> StorageClass {
    StorageClass::rs(k, m, SHARD_SIZE as u32)
}

/// `len` bytes of deterministic, incompressible-looking data (xorshift).
pub fn data(len: usize) -> Bytes {
    data_seeded(len, 0)
}

/// [`data`] from another starting point: different `seed`s give different
/// bytes of the same length (ids, hashes, bodies that must not repeat).
pub fn data_seeded(len: usize, seed: u64) -> Bytes {
    let mut state: u64 =
        0x9E37_79B9_7F4A_7C15 ^ len as u64 ^ seed.wrapping_mul(0xA24B_AED4_963E_E407);
    if state == 0 {
        state = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A label such as `RS(4,2)`.
pub fn label(k: u8, m: u8) -> String {
    format!("RS({k},{m})")
}

/// Short measurement settings: a few seconds per benchmark instead of
/// criterion's default ~8 s, enough for stable GiB/s figures of these
/// CPU-bound kernels. (`criterion_group!` applies the command-line
/// arguments on top.)
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_deterministic_and_sized() {
        assert_eq!(data(1000), data(1000));
        assert_eq!(data(12345).len(), 12345);
        assert_ne!(data(64)[..8], data(64)[8..16]);
    }
}
