//! Bucket-name and key rules. Keys are opaque strings (never paths): the
//! only rule is their length.

use crate::error::ApiError;

/// Longest key S3 accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// S3 bucket naming rules (general-purpose buckets): 3-63 characters of
/// lower-case letters, digits, hyphens and dots; starts and ends with a
/// letter or digit; no `..`, no `.-`/`-.`; not shaped like an IPv4
/// address; none of the reserved prefixes and suffixes.
pub fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    if !(3..=63).contains(&b.len()) {
        return false;
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
    {
        return false;
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return false;
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return false;
    }
    const BAD_PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];
    const BAD_SUFFIXES: [&str; 4] = ["-s3alias", "--ol-s3", ".mrap", "--x-s3"];
    !BAD_PREFIXES.iter().any(|p| name.starts_with(p))
        && !BAD_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Checks a bucket name from a request.
pub fn check_bucket(name: &str) -> Result<(), ApiError> {
    if valid_bucket_name(name) {
        Ok(())
    } else {
        Err(ApiError::InvalidBucketName)
    }
}

/// Checks an object key from a request.
pub fn check_key(key: &str) -> Result<(), ApiError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::KeyTooLong);
    }
    if key.is_empty() {
        return Err(ApiError::InvalidArgument("empty object key".into()));
    }
    Ok(())
}

/// The bucket-name rules, plugged into s3s so that its router applies the
/// same rules as CreateBucket.
pub struct BucketNameRules;

impl s3s::validation::NameValidation for BucketNameRules {
    fn validate_bucket_name(&self, name: &str) -> bool {
        valid_bucket_name(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for good in [
            "abc",
            "my-bucket",
            "my.bucket.name",
            "a1b",
            "123",
            &"a".repeat(63),
            "192.168.1.1a",
        ] {
            assert!(valid_bucket_name(good), "{good} should be valid");
        }
        for bad in [
            "AB",
            "a",
            "ab",
            &"a".repeat(64),
            "my_bucket",
            "192.168.1.1",
            "-abc",
            "abc-",
            ".abc",
            "abc.",
            "a..b",
            "a.-b",
            "a-.b",
            "xn--abc",
            "sthree-x",
            "bucket-s3alias",
            "MyBucket",
            "buck et",
            "bücket",
            "",
        ] {
            assert!(!valid_bucket_name(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn keys() {
        check_key(&"k".repeat(1024)).unwrap();
        assert!(matches!(
            check_key(&"k".repeat(1025)),
            Err(ApiError::KeyTooLong)
        ));
        // Multi-byte characters count in bytes.
        assert!(matches!(
            check_key(&"é".repeat(513)),
            Err(ApiError::KeyTooLong)
        ));
        // Keys that look like paths are just keys.
        check_key("../x").unwrap();
        check_key("a/../../b").unwrap();
    }
}
