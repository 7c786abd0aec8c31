//! Stripe math, the erasure codec and shard checksums: everything about
//! turning object bytes into k data + m parity shards and back, as pure
//! functions. This crate does no I/O and knows nothing of the network, disks
//! or Raft; the gateway calls it (from `spawn_blocking`, since coding and
//! hashing a stripe is CPU-bound) and moves the bytes itself.
//!
//! - [`layout`]: how an object splits into stripes, a stripe into shards, and
//!   which stripes and data shards a byte range needs.
//! - [`codec`]: the [`Codec`] trait, codec ids, and a per-(k, m) cache of
//!   Reed-Solomon instances.
//! - [`stripe`]: the high-level API the gateway uses: [`encode_stripe`],
//!   [`decode_stripe`], [`shard_hash`], [`verify_shard`].

pub mod codec;
pub mod error;
pub mod layout;
pub mod stripe;

pub use codec::{codec_for, Codec, CodecId};
pub use error::ErasureError;
pub use layout::{
    check_class, data_shards_for_range, shard_len, stripe_count, stripe_pieces, stripe_range,
    ShardRead, StripePiece, StripePieces,
};
pub use stripe::{
    decode_stripe, encode_stripe, encode_stripe_bytes, shard_hash, verify_shard, EncodedStripe,
};
