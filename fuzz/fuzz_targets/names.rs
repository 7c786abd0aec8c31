//! Bucket-name and key rules (`names::valid_bucket_name`, `check_key`,
//! also plugged into s3s' router). Property: the answer equals an
//! independent statement of the S3 rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_gateway::names::{check_bucket, check_key, valid_bucket_name, MAX_KEY_BYTES};

fn reference(name: &str) -> bool {
    let len_ok = (3..=63).contains(&name.len());
    let chars_ok = name.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '.'));
    let ends_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ip = {
        let parts: Vec<&str> = name.split('.').collect();
        parts.len() == 4
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.len() <= 3
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && p.parse::<u16>().is_ok_and(|v| v <= 255)
                    && !(p.len() > 1 && p.starts_with('0'))
            })
    };
    let reserved = ["xn--", "sthree-", "amzn-s3-demo-"].iter().any(|p| name.starts_with(p))
        || ["-s3alias", "--ol-s3", ".mrap", "--x-s3"].iter().any(|s| name.ends_with(s));
    len_ok
        && chars_ok
        && ends_ok
        && !name.contains("..")
        && !name.contains(".-")
        && !name.contains("-.")
        && !ip
        && !reserved
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let ok = valid_bucket_name(&s);
    assert_eq!(ok, reference(&s), "bucket name {s:?}");
    assert_eq!(ok, check_bucket(&s).is_ok());
    let key_ok = check_key(&s).is_ok();
    assert_eq!(key_ok, !s.is_empty() && s.len() <= MAX_KEY_BYTES, "key of {} bytes", s.len());
});
