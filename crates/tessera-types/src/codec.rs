//! The one binary encoding of persisted and replicated values (Raft log
//! entries, sled values, meta RPC payloads): a version byte, then bincode
//! (varint integers). Bumping [`FORMAT_VERSION`] is how a migration starts.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Version marker written in front of every encoded value.
pub const FORMAT_VERSION: u8 = 1;

/// Upper bound on a decoded value, so a forged length prefix cannot make a
/// decoder allocate without bound.
pub const MAX_VALUE_BYTES: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty buffer")]
    Empty,
    #[error("unsupported format version {0}")]
    Version(u8),
    #[error("malformed value: {0}")]
    Malformed(String),
}

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_VALUE_BYTES)
}

/// Encodes `value` with the version marker.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    if let Err(e) = options().serialize_into(&mut out, value) {
        // Only reachable for a value over MAX_VALUE_BYTES, which no request
        // can produce (bodies are striped, keys and metadata are capped).
        unreachable!("value too large to encode: {e}");
    }
    out
}

/// Decodes a value written by [`encode`]; never panics on bad input.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<T, CodecError> {
    let (&version, rest) = buf.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version(version));
    }
    options()
        .deserialize(rest)
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects_garbage() {
        let v = (1u64, "abc".to_string(), vec![1u8, 2, 3]);
        let buf = encode(&v);
        assert_eq!(buf[0], FORMAT_VERSION);
        let back: (u64, String, Vec<u8>) = decode(&buf).unwrap();
        assert_eq!(back, v);
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<u64>(&[9, 1]),
            Err(CodecError::Version(9))
        ));
        // A forged huge length prefix is an error, not an allocation.
        let forged = [
            FORMAT_VERSION,
            0xfd,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f,
            0,
        ];
        assert!(decode::<Vec<u8>>(&forged).is_err());
    }
}
