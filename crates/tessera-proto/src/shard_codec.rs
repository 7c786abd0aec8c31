//! The codec of the storage service: prost, with a decode buffer sized for
//! shard frames.
//!
//! tonic reads a message into one buffer, `reserve`ing the message's length
//! once its 5-byte prefix has arrived. Our HTTP/2 frames are large (256 KiB
//! to 1 MiB, see `channel::MAX_FRAME_SIZE`), so by then the buffer already
//! holds most of the message, and `reserve(len)` (room for `len` *more*
//! bytes) reallocates it to twice the message and copies what it holds: a
//! second full copy of every shard, on the storage node for PUTs and on the
//! gateway for GETs (perf: 3.9% of storage CPU under 1 MiB PUTs). Starting
//! with room for twice a 256 KiB shard message avoids that for the usual
//! shard sizes; bigger shards still work, with the copy.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial decode buffer: twice a 256 KiB shard message, plus its prefix
/// and protobuf framing.
pub const SHARD_DECODE_BUFFER: usize = 2 * (256 << 10) + (16 << 10);

/// How much a decoder reads before yielding to the executor (tonic's
/// default).
const YIELD_THRESHOLD: usize = 32 << 10;

/// [`ProstCodec`] with a [`SHARD_DECODE_BUFFER`] decode buffer; encoding
/// is unchanged.
#[derive(Debug, Clone)]
pub struct ShardCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ShardCodec<T, U> {
    fn default() -> Self {
        ShardCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for ShardCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(SHARD_DECODE_BUFFER, YIELD_THRESHOLD))
    }
}
