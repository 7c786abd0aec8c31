//! The internode `x-tessera-auth` header (`ClusterAuth::verify`), parsed
//! by every meta and storage node before anything else. Properties: any
//! header that is not the exact signature for (path, time) is refused
//! without panicking; a real signature verifies for its path and no other,
//! within the skew window only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_proto::{ClusterAuth, ClusterSecret};

fuzz_target!(|data: &[u8]| {
    let auth = ClusterAuth::new(ClusterSecret::new("fuzzing-cluster-secret-0123456789abcdef").unwrap());
    let now = 1_800_000_000u64;
    let (path, header) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"/tessera.storage.v1.Storage/GetShard"[..], data),
    };
    let path = String::from_utf8_lossy(path);
    let r = auth.verify(Some(header), &path, now);
    if r.is_ok() {
        // Only a header the secret made can pass: forge one is a failure.
        let s = std::str::from_utf8(header).unwrap();
        let ts: u64 = s.split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(s.to_ascii_lowercase(), auth.sign(&path, ts), "accepted a forged header");
    }
    assert!(auth.verify(None, &path, now).is_err());
    // Round trip for this path, with a timestamp from the input.
    let ts = now - 200 + (header.len() as u64 % 400);
    let good = auth.sign(&path, ts);
    assert!(auth.verify(Some(good.as_bytes()), &path, now).is_ok());
    let other = format!("{path}x");
    assert!(auth.verify(Some(good.as_bytes()), &other, now).is_err(), "replayed to another method");
    assert!(auth.verify(Some(good.as_bytes()), &path, now + 100_000).is_err(), "stale accepted");
});
