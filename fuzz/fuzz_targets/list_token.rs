//! ListObjectsV2 continuation tokens (`s3::decode_token`), which clients
//! send back verbatim. Properties: decode(encode(m)) == m for every marker
//! a listing can produce (a key, at most 1,024 bytes); arbitrary tokens
//! never panic, and what they decode to is itself a valid marker that
//! round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_gateway::s3::{decode_token, encode_token};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(marker) = decode_token(&text) {
        assert!(marker.len() <= 1024);
        assert_eq!(decode_token(&encode_token(&marker)).ok(), Some(marker));
    }
    let marker: String = text.chars().take(300).collect();
    if marker.len() <= 1024 {
        let token = encode_token(&marker);
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(decode_token(&token).ok(), Some(marker));
    }
});
