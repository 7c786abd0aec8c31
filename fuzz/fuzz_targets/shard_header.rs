//! The 48-byte header of an on-disk shard file (`ShardHeader::decode`),
//! read by storage nodes from disk (scrub, reads, restarts); and shard
//! stripe ids from hex (file names, internode requests). Properties:
//! never panics; decode(encode(h)) == h; a decoded header re-encodes to
//! the same bytes (reserved bytes aside).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_storage::store::{ShardHeader, HEADER_LEN};
use tessera_types::StripeId;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ShardHeader::decode(data) {
        let again = h.encode();
        assert_eq!(&again[..5], &data[..5]);
        assert_eq!(&again[8..HEADER_LEN], &data[8..HEADER_LEN]);
        assert_eq!(ShardHeader::decode(&again), Ok(h));
    }
    if data.len() >= 40 {
        let mut blake3 = [0u8; 32];
        blake3.copy_from_slice(&data[8..40]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&data[..8]);
        let h = ShardHeader { length: u64::from_le_bytes(len), blake3 };
        assert_eq!(ShardHeader::decode(&h.encode()), Ok(h));
    }
    let text = String::from_utf8_lossy(data);
    if let Some(id) = StripeId::from_hex(&text) {
        assert_eq!(id.to_hex(), text.to_ascii_lowercase());
    }
    if let Some(id) = StripeId::from_slice(data) {
        assert_eq!(StripeId::from_hex(&id.to_hex()), Some(id));
    }
});
