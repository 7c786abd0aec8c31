//! The 48-byte header of an on-disk shard file (`ShardHeader::parse`,
//! formats 1 and 2), read by storage nodes from disk (scrub, reads,
//! restarts); and shard stripe ids from hex (file names, internode
//! requests). Properties: never panics; parse(encode(h)) == h; a parsed
//! header re-encodes, in its own format, to the same bytes (reserved
//! bytes aside); the file size its format gives holds the header and the
//! shard bytes, and is the one size `parse_sized` accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_storage::store::{ShardFormat, ShardHeader, HEADER_LEN};
use tessera_types::StripeId;

fuzz_target!(|data: &[u8]| {
    if let Ok((h, format)) = ShardHeader::parse(data) {
        let again = h.encode_as(format);
        assert_eq!(&again[..5], &data[..5]);
        assert_eq!(&again[8..HEADER_LEN], &data[8..HEADER_LEN]);
        assert_eq!(ShardHeader::parse(&again), Ok((h, format)));
        assert_eq!(ShardHeader::decode(data), Ok(h));
        match format.file_len(h.length) {
            Some(size) => {
                assert!(size >= format.data_offset() + h.length);
                assert!(format.data_offset() >= HEADER_LEN as u64);
                assert_eq!(ShardHeader::parse_sized(data, size), Ok((h, format)));
                assert!(ShardHeader::parse_sized(data, size - 1).is_err());
            }
            None => assert!(h.length > u64::MAX - 8192),
        }
        if format == ShardFormat::V2 {
            assert_eq!(again, h.encode());
        }
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
