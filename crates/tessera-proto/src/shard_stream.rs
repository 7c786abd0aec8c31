//! Shard transfers as plain HTTP/2 streams, next to the gRPC service on
//! the same port and connections:
//!
//! - `POST /tessera.storage.Shards/Get` with the shard in the
//!   `x-tessera-shard` header (`<stripe hex>.<index>`), answered with the
//!   shard's bytes as the response body;
//! - `POST /tessera.storage.Shards/Put` with the shard in
//!   `x-tessera-shard`, its BLAKE3 in `x-tessera-blake3` (64 hex digits),
//!   its length in `content-length`, and its bytes as the request body,
//!   answered once the shard is durable.
//!
//! Both answer errors with a gRPC status (a trailers-only response, as
//! tonic sends one), and a `Put` its success with `grpc-status: 0`.
//!
//! Why not `Storage/GetShard` and `Storage/PutShard`: tonic copies every
//! message into its encode buffer on the sender and every received frame
//! into its decode buffer on the receiver. Here the bytes are handed to
//! HTTP/2 as they are and reach the other side as the frames HTTP/2
//! received: perf put those two copies at 8% of a storage node's and 7% of
//! the gateway's CPU under 1 MiB GETs. Only reads for a caller that
//! verifies the bytes itself use `Get` (the gateway's reads, when a node
//! does not serve them over HTTP/1.1, see [`crate::shard_http1`]);
//! everything else, and any node that does not know these paths, stays
//! on gRPC.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tessera_types::StripeId;

/// The service name the storage node registers.
pub const SERVICE: &str = "tessera.storage.Shards";
/// Reads a shard.
pub const GET_PATH: &str = "/tessera.storage.Shards/Get";
/// Writes a shard.
pub const PUT_PATH: &str = "/tessera.storage.Shards/Put";
/// Request header naming the shard.
pub const SHARD_HEADER: &str = "x-tessera-shard";
/// `Put` request header: the BLAKE3 of the shard's bytes, in hex.
pub const BLAKE3_HEADER: &str = "x-tessera-blake3";

/// `x-tessera-shard` for shard `index` of `stripe`.
pub fn shard_header(stripe: &StripeId, index: u8) -> String {
    format!("{}.{index}", stripe.to_hex())
}

/// Parses an `x-tessera-shard` value.
pub fn parse_shard_header(v: &str) -> Option<(StripeId, u8)> {
    let (hex, index) = v.split_once('.')?;
    Some((StripeId::from_hex(hex)?, index.parse().ok()?))
}

/// `x-tessera-blake3` for `hash`.
pub fn blake3_header(hash: &[u8; 32]) -> String {
    hex::encode(hash)
}

/// Parses an `x-tessera-blake3` value (exactly 64 hex digits).
pub fn parse_blake3_header(v: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if v.len() != 64 {
        return None;
    }
    hex::decode_to_slice(v, &mut out).ok()?;
    Some(out)
}

/// A body of one buffer, sent as is; `guard` lives until the body is
/// dropped (the storage node's read budget; nothing for a `Put`).
pub struct OnceBody<G> {
    data: Option<Bytes>,
    _guard: G,
}

impl<G> OnceBody<G> {
    pub fn new(data: Bytes, guard: G) -> Self {
        OnceBody {
            data: Some(data).filter(|d| !d.is_empty()),
            _guard: guard,
        }
    }
}

impl<G: Unpin> Body for OnceBody<G> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_header_round_trips_and_refuses_junk() {
        let id = StripeId::random();
        assert_eq!(parse_shard_header(&shard_header(&id, 5)), Some((id, 5)));
        for bad in [
            "",
            ".",
            "abc.1",
            &id.to_hex(),
            &format!("{}.256", id.to_hex()),
            &format!("{}.-1", id.to_hex()),
            &format!("{}x.1", id.to_hex()),
        ] {
            assert_eq!(parse_shard_header(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn blake3_header_round_trips_and_refuses_junk() {
        for _ in 0..64 {
            let h: [u8; 32] = std::array::from_fn(|_| rand::random());
            assert_eq!(parse_blake3_header(&blake3_header(&h)), Some(h));
        }
        let good = "ab".repeat(32);
        assert_eq!(parse_blake3_header(&good.to_uppercase()), Some([0xab; 32]));
        for bad in [
            String::new(),
            "ab".repeat(31),
            "ab".repeat(33),
            format!("{}zz", "ab".repeat(31)),
            format!("+{}", &good[1..]),
            format!("{}\u{e9}", &good[..62]),
        ] {
            assert_eq!(parse_blake3_header(&bad), None, "{bad:?}");
        }
    }
}
