//! `RequestChecksum::from_headers` and `verify`, `decode_value`: the
//! `x-amz-checksum-*`, `x-amz-trailer`, `x-amz-sdk-checksum-algorithm` and
//! `x-amz-content-sha256` headers of PutObject/UploadPart, straight from
//! the client.
//!
//! Input: lines `<selector byte><value bytes>`; the selector picks the
//! header name, the last line is the body. With the first byte odd, the
//! checksum headers get the body's true digest (so the success path is
//! explored too). Properties: never panics; when the headers are accepted,
//! `verify` succeeds exactly when the sent value is the body's digest, and
//! a value announced as a trailer is never taken as verified without one.
#![no_main]

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tessera_gateway::checksum::{decode_value, Algorithm, ChecksumType, Hashers, RequestChecksum};

const NAMES: [&str; 12] = [
    "x-amz-checksum-crc32",
    "x-amz-checksum-crc32c",
    "x-amz-checksum-crc64nvme",
    "x-amz-checksum-sha1",
    "x-amz-checksum-sha256",
    "x-amz-trailer",
    "x-amz-content-sha256",
    "x-amz-sdk-checksum-algorithm",
    "x-amz-checksum-algorithm",
    "x-amz-checksum-type",
    "content-md5",
    "x-amz-checksum-crc64",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut lines: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();
    let body = lines.pop().unwrap_or_default();
    let mut all = Hashers::new(Algorithm::ALL);
    all.update(body);
    let computed = all.finish();

    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((&sel, value)) = line.split_first() else {
            continue;
        };
        let name = NAMES[sel as usize % NAMES.len()];
        let value = match Algorithm::from_header(name) {
            Some(a) if flags & 1 == 1 => {
                base64::engine::general_purpose::STANDARD.encode(computed.get(a).unwrap_or_default()).into_bytes()
            }
            _ => value.to_vec(),
        };
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            headers.append(HeaderName::from_static(name), v);
        }
    }

    // Single-value parsers on every header value.
    for v in headers.values() {
        if let Ok(s) = v.to_str() {
            let _ = Algorithm::parse(s);
            let _ = Algorithm::from_header(s);
            let _ = ChecksumType::parse(s);
            let _ = ChecksumType::of_value(s);
            for a in Algorithm::ALL {
                if let Ok(raw) = decode_value(a, s, "header") {
                    assert_eq!(raw.len(), a.digest_len());
                }
            }
        }
    }

    let Ok(rc) = RequestChecksum::from_headers(&headers) else {
        return;
    };
    let result = rc.verify(&computed, None);
    let Some(a) = rc.algorithm else {
        assert!(result.is_ok(), "no checksum asked for, yet refused");
        return;
    };
    // The value the request sent for `a`, if it was a header.
    let sent = headers
        .get(a.header())
        .and_then(|v| v.to_str().ok())
        .and_then(|s| decode_value(a, s, "header").ok());
    match sent {
        Some(raw) => assert_eq!(
            result.is_ok(),
            computed.get(a) == Some(raw.as_slice()),
            "verify disagrees with the digest for {a:?}"
        ),
        // Announced as a trailer, none given: never verified.
        None => assert!(result.is_err(), "a missing trailer passed verification"),
    }
});
