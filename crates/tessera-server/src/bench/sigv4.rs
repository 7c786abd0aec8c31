//! AWS Signature Version 4 for S3 requests (header auth, path-style),
//! enough for a load generator: the caller gives the canonical URI, the
//! query parameters, the headers to sign and the payload hash
//! (`UNSIGNED-PAYLOAD` for bodies), and gets the `Authorization` value.
//!
//! The signing key depends only on the date, so it is derived once a day
//! instead of four HMACs per request.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Payload hash for bodies that are not hashed (allowed over any transport
/// by S3 and the S3-compatible stores).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// SHA-256 of the empty string: the payload hash of bodiless requests.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Signs requests for one access key in one region (service `s3`).
pub struct Signer {
    access_key: String,
    secret_key: String,
    region: String,
    /// (yyyymmdd, signing key) of the last date signed for.
    key_cache: Mutex<Option<(String, [u8; 32])>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// The parts of a request that SigV4 covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    /// `GET`, `PUT`, ...
    pub method: &'a str,
    /// The URI path, already encoded with [`uri_encode`] (`/bucket/key`).
    pub canonical_uri: &'a str,
    /// Query parameters, not encoded (the signer encodes and sorts them).
    pub query: &'a [(&'a str, &'a str)],
    /// Headers to sign, names lower-case; must include `host` and
    /// `x-amz-date`, and for S3 `x-amz-content-sha256`.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
    pub payload_hash: &'a str,
    /// `YYYYMMDDTHHMMSSZ`, the same as the `x-amz-date` header.
    pub amz_date: &'a str,
}

impl Signer {
    pub fn new(access_key: &str, secret_key: &str, region: &str) -> Self {
        Signer {
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            region: region.to_string(),
            key_cache: Mutex::new(None),
        }
    }

    /// The `Authorization` header value for `req`.
    pub fn authorization(&self, req: &SignedRequest<'_>) -> String {
        let (signed_headers, signature) = self.signature(req);
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{}/{}/s3/aws4_request, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key,
            date_part(req.amz_date),
            self.region
        )
    }

    /// (signed header list, hex signature).
    fn signature(&self, req: &SignedRequest<'_>) -> (String, String) {
        let mut headers: Vec<(&str, &str)> =
            req.headers.iter().map(|(n, v)| (*n, v.trim())).collect();
        headers.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let signed_headers = headers
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(";");
        let mut canonical = String::with_capacity(256);
        canonical.push_str(req.method);
        canonical.push('\n');
        canonical.push_str(req.canonical_uri);
        canonical.push('\n');
        canonical.push_str(&canonical_query(req.query));
        canonical.push('\n');
        for (name, value) in &headers {
            canonical.push_str(name);
            canonical.push(':');
            canonical.push_str(value);
            canonical.push('\n');
        }
        canonical.push('\n');
        canonical.push_str(&signed_headers);
        canonical.push('\n');
        canonical.push_str(req.payload_hash);

        let date = date_part(req.amz_date);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{}\n{date}/{}/s3/aws4_request\n{}",
            req.amz_date,
            self.region,
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let key = self.signing_key(date);
        let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
        (signed_headers, signature)
    }

    fn signing_key(&self, date: &str) -> [u8; 32] {
        // The cache holds plain data: a poisoned lock is still consistent.
        let mut cache = self.key_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((d, key)) = cache.as_ref() {
            if d == date {
                return *key;
            }
        }
        let k_date = hmac(
            format!("AWS4{}", self.secret_key).as_bytes(),
            date.as_bytes(),
        );
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, b"s3");
        let key = hmac(&k_service, b"aws4_request");
        *cache = Some((date.to_string(), key));
        key
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// `YYYYMMDD` of an `x-amz-date` value.
fn date_part(amz_date: &str) -> &str {
    amz_date.get(..8).unwrap_or(amz_date)
}

/// The SigV4 canonical query string: names and values URI-encoded, sorted
/// by name then value, joined with `&`.
pub fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
        .collect();
    pairs.sort_unstable();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// SigV4 URI encoding: every byte but `A-Za-z0-9-._~` as `%XX` (upper
/// case); `/` too when `encode_slash` (query values), not in paths.
pub fn uri_encode(s: &str, encode_slash: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
    out
}

/// `t` as an `x-amz-date` value, `YYYYMMDDTHHMMSSZ` (UTC).
pub fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ACCESS: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const HOST: &str = "examplebucket.s3.amazonaws.com";
    const DATE: &str = "20130524T000000Z";

    /// AWS S3 docs, "Signature Calculations for the Authorization Header:
    /// Transferring Payload in a Single Chunk", Example: GET Object.
    #[test]
    fn aws_example_get_object() {
        let signer = Signer::new(ACCESS, SECRET, "us-east-1");
        let req = SignedRequest {
            method: "GET",
            canonical_uri: "/test.txt",
            query: &[],
            headers: &[
                ("host", HOST),
                ("range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", DATE),
            ],
            payload_hash: EMPTY_SHA256,
            amz_date: DATE,
        };
        assert_eq!(
            signer.authorization(&req),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        // The cached signing key gives the same answer.
        assert_eq!(signer.signature(&req), signer.signature(&req));
    }

    /// Same page, Example: GET Bucket (List Objects): query parameters
    /// are encoded and sorted, headers given out of order are sorted.
    #[test]
    fn aws_example_list_objects() {
        let signer = Signer::new(ACCESS, SECRET, "us-east-1");
        let req = SignedRequest {
            method: "GET",
            canonical_uri: "/",
            query: &[("prefix", "J"), ("max-keys", "2")],
            headers: &[
                ("x-amz-date", DATE),
                ("host", HOST),
                ("x-amz-content-sha256", EMPTY_SHA256),
            ],
            payload_hash: EMPTY_SHA256,
            amz_date: DATE,
        };
        let (signed, sig) = signer.signature(&req);
        assert_eq!(signed, "host;x-amz-content-sha256;x-amz-date");
        assert_eq!(
            sig,
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(uri_encode("/b/a key+é~", false), "/b/a%20key%2B%C3%A9~");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
        assert_eq!(
            canonical_query(&[("prefix", "x/y"), ("list-type", "2"), ("a", "")]),
            "a=&list-type=2&prefix=x%2Fy"
        );
    }

    #[test]
    fn dates() {
        let at = |s: u64| amz_date(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(1_369_353_600), DATE);
        // 2024-02-29 23:59:59 (leap day).
        assert_eq!(at(1_709_251_199), "20240229T235959Z");
        assert_eq!(at(1_709_251_200), "20240301T000000Z");
    }
}
