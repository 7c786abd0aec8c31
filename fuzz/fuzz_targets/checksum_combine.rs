//! `combine_parts`: the checksum of a multipart object from its parts'
//! checksums (the values come from CompleteMultipartUpload bodies and
//! UploadPart headers). Property: for every CRC algorithm, combining the
//! parts' CRCs (FULL_OBJECT) gives the CRC of the whole object; COMPOSITE
//! values end in `-<parts>`; arbitrary raw part values never panic.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use tessera_gateway::checksum::{combine_parts, Algorithm, ChecksumType, Hashers};

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, rest)) = data.split_first() else {
        return;
    };
    // Split the object into up to 8 parts at points derived from `cuts`.
    let n = (cuts as usize % 8) + 1;
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut left = rest;
    for i in 0..n {
        let take = if i + 1 == n {
            left.len()
        } else {
            left.len().min((cuts as usize).wrapping_mul(i + 7) % 97)
        };
        let (p, r) = left.split_at(take);
        parts.push(p);
        left = r;
    }
    for a in Algorithm::ALL {
        let raw: Vec<(Vec<u8>, u64)> = parts
            .iter()
            .map(|p| {
                let mut h = Hashers::new([a]);
                h.update(p);
                (h.finish().get(a).unwrap_or_default().to_vec(), p.len() as u64)
            })
            .collect();
        let mut whole = Hashers::new([a]);
        whole.update(rest);
        let want = base64::engine::general_purpose::STANDARD.encode(whole.finish().get(a).unwrap_or_default());
        match combine_parts(a, ChecksumType::FullObject, &raw) {
            Ok(v) => {
                assert!(a.supports(ChecksumType::FullObject) || a.default_type() == ChecksumType::FullObject);
                assert_eq!(v, want, "{a:?} full-object combination of {n} parts");
            }
            Err(_) => assert!(!a.supports(ChecksumType::FullObject), "{a:?} refused FULL_OBJECT"),
        }
        let composite = combine_parts(a, ChecksumType::Composite, &raw).expect("composite never fails");
        assert!(composite.ends_with(&format!("-{n}")), "{composite}");
        // Garbage part values (wrong lengths): an error or a value, no panic.
        let junk: Vec<(Vec<u8>, u64)> = parts.iter().map(|p| (p.to_vec(), p.len() as u64)).collect();
        let _ = combine_parts(a, ChecksumType::FullObject, &junk);
        let _ = combine_parts(a, ChecksumType::Composite, &junk);
    }
});
