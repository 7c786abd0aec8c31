//! Shard reads as a plain HTTP/2 stream, next to the gRPC service on the
//! same port and connections: `POST /tessera.storage.Shards/Get` with the
//! shard in the `x-tessera-shard` header (`<stripe hex>.<index>`), answered
//! with the shard's bytes as the response body, or with a gRPC error status
//! (a trailers-only response, as tonic sends one).
//!
//! Why not `Storage/GetShard`: tonic copies every message into its encode
//! buffer on the storage node and every received frame into its decode
//! buffer on the gateway. Here the bytes read from the file are handed to
//! HTTP/2 as they are and reach the caller as the frames HTTP/2 received:
//! perf put those two copies at 8% of a storage node's and 7% of the
//! gateway's CPU under 1 MiB GETs. Only reads for a caller that verifies
//! the bytes itself use it (the gateway's reads); everything else, and any
//! node that does not know this path, stays on gRPC.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tessera_types::StripeId;

/// The service name the storage node registers.
pub const SERVICE: &str = "tessera.storage.Shards";
/// The one method.
pub const GET_PATH: &str = "/tessera.storage.Shards/Get";
/// Request header naming the shard.
pub const SHARD_HEADER: &str = "x-tessera-shard";

/// `x-tessera-shard` for shard `index` of `stripe`.
pub fn shard_header(stripe: &StripeId, index: u8) -> String {
    format!("{}.{index}", stripe.to_hex())
}

/// Parses an `x-tessera-shard` value.
pub fn parse_shard_header(v: &str) -> Option<(StripeId, u8)> {
    let (hex, index) = v.split_once('.')?;
    Some((StripeId::from_hex(hex)?, index.parse().ok()?))
}

/// A response body of one buffer, sent as is; `guard` lives until the body
/// is dropped (the storage node's read budget).
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
}
