//! Bucket-name and key rules. Keys are opaque strings (never paths): the
//! only rule is their length.

use crate::error::ApiError;

/// Longest key S3 accepts, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// S3 bucket naming rules (general-purpose buckets): 3-63 characters of
/// lower-case letters, digits, hyphens and dots; starts and ends with a
/// letter or digit; no `..`, no `.-`/`-.`; not shaped like an IPv4
/// address; none of the reserved prefixes and suffixes. `None`: valid;
/// else the rule broken, for the error message.
pub fn bucket_name_problem(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    if !(3..=63).contains(&b.len()) {
        return Some("bucket names must be between 3 and 63 characters long");
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
    {
        return Some(
            "bucket names can consist only of lowercase letters, numbers, dots (.) and hyphens (-)",
        );
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Some("bucket names must begin and end with a letter or number");
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return Some(
            "bucket names must not contain two adjacent periods, or a period next to a hyphen",
        );
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Some("bucket names must not be formatted as an IP address");
    }
    const BAD_PREFIXES: [&str; 3] = ["xn--", "sthree-", "amzn-s3-demo-"];
    const BAD_SUFFIXES: [&str; 4] = ["-s3alias", "--ol-s3", ".mrap", "--x-s3"];
    if BAD_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Some(
            "bucket names must not start with a reserved prefix (xn--, sthree-, amzn-s3-demo-)",
        );
    }
    if BAD_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return Some(
            "bucket names must not end with a reserved suffix (-s3alias, --ol-s3, .mrap, --x-s3)",
        );
    }
    None
}

/// True if `name` follows the bucket naming rules.
pub fn valid_bucket_name(name: &str) -> bool {
    bucket_name_problem(name).is_none()
}

/// Checks a bucket name from a request; the error says which rule it
/// breaks.
pub fn check_bucket(name: &str) -> Result<(), ApiError> {
    match bucket_name_problem(name) {
        None => Ok(()),
        Some(why) => Err(ApiError::InvalidBucketName(why)),
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

/// What s3s's router checks of a bucket name in the path or Host: only
/// that it is not empty. The naming rules are applied by [`CheckedNames`]
/// after authentication, so that the client gets InvalidBucketName with
/// the rule it broke (s3s's own check answers it without a message).
pub struct AnyBucketName;

impl s3s::validation::NameValidation for AnyBucketName {
    fn validate_bucket_name(&self, name: &str) -> bool {
        !name.is_empty()
    }
}

/// An access check followed by the bucket-name rules: an unsigned request
/// is refused by `inner` first; a signed one naming an invalid bucket gets
/// InvalidBucketName saying why.
pub struct CheckedNames<A>(pub A);

#[async_trait::async_trait]
impl<A: s3s::access::S3Access> s3s::access::S3Access for CheckedNames<A> {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        self.0.check(cx).await?;
        if let Some(bucket) = cx.s3_path().get_bucket_name() {
            check_bucket(bucket)?;
        }
        Ok(())
    }
}

/// Virtual-hosted-style addressing (`bucket.<domain>`) under any of the
/// configured base domains (`s3-domain`); a host that is none of them or
/// a base domain itself (an IP, `localhost`, another name) is path-style.
/// A port in the Host header is ignored. (s3s's own `MultiDomain` treats
/// any other host name as a bucket, which would turn `127.0.0.1:9000`
/// into one.)
pub struct VirtualHosts {
    domains: Vec<String>,
}

impl VirtualHosts {
    /// `domains` lower-cased; more specific (longer) domains are tried
    /// first, so `s3.example.com` wins over `example.com`.
    pub fn new(domains: &[String]) -> Self {
        let mut domains: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
        domains.sort_by_key(|d| std::cmp::Reverse(d.len()));
        VirtualHosts { domains }
    }

    /// The bucket a Host header names, if it is virtual-hosted style.
    pub fn bucket_of<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        // A base domain itself is path-style, even under another one.
        if self.domains.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            return None;
        }
        self.domains.iter().find_map(|d| {
            let cut = name.len().checked_sub(d.len() + 1)?;
            let (bucket, rest) = (name.get(..cut)?, name.get(cut..)?);
            (rest.starts_with('.') && rest[1..].eq_ignore_ascii_case(d) && !bucket.is_empty())
                .then_some(bucket)
        })
    }
}

impl s3s::host::S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> s3s::S3Result<s3s::host::VirtualHost<'a>> {
        Ok(match self.bucket_of(host) {
            Some(b) => s3s::host::VirtualHost::new(host).with_bucket(b),
            None => s3s::host::VirtualHost::new(host),
        })
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
    fn invalid_names_say_why() {
        for (name, why) in [
            ("ab", "between 3 and 63"),
            ("My_Bucket", "lowercase"),
            ("-abc", "begin and end"),
            ("a..b", "adjacent"),
            ("192.168.1.1", "IP address"),
            ("xn--abc", "prefix"),
            ("b-s3alias", "suffix"),
        ] {
            match check_bucket(name) {
                Err(ApiError::InvalidBucketName(m)) => assert!(m.contains(why), "{name}: {m}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        check_bucket("good-name").unwrap();
    }

    #[test]
    fn virtual_hosts() {
        let h = VirtualHosts::new(&[
            "s3.example.com".into(),
            "localhost".into(),
            "example.com".into(),
        ]);
        assert_eq!(h.bucket_of("photos.s3.example.com:9000"), Some("photos"));
        assert_eq!(h.bucket_of("photos.S3.Example.COM"), Some("photos"));
        assert_eq!(
            h.bucket_of("my.dotted.bucket.s3.example.com"),
            Some("my.dotted.bucket")
        );
        assert_eq!(h.bucket_of("b1.localhost:9000"), Some("b1"));
        assert_eq!(h.bucket_of("b2.example.com"), Some("b2"));
        for path_style in [
            "s3.example.com",
            "s3.example.com:9000",
            "localhost:9000",
            "localhost",
            "127.0.0.1:9000",
            "[::1]:9000",
            "other.org",
            ".localhost",
            "xlocalhost",
            "",
        ] {
            assert_eq!(h.bucket_of(path_style), None, "{path_style}");
        }
        use s3s::host::S3Host;
        let vh = h.parse_host_header("photos.localhost:9000").unwrap();
        assert_eq!(vh.bucket(), Some("photos"));
        assert_eq!(
            h.parse_host_header("127.0.0.1:9000").unwrap().bucket(),
            None
        );
        // No domains: always path-style.
        assert_eq!(VirtualHosts::new(&[]).bucket_of("a.localhost"), None);
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
