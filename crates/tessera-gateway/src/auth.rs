//! Authentication: SigV4 signatures are verified by s3s against secret keys
//! looked up in meta; [`MetaAuth`] caches them briefly. [`RequireAuth`]
//! refuses every request that is not signed: there is no anonymous access
//! at all. Bucket ownership is checked by the handlers (see
//! `s3::Tessera::authorize`), after authentication.
//!
//! [`RequireAuth`] also holds the request rules s3s leaves open (it runs
//! after the signature check and before any body is read):
//! - SigV2 header auth (`Authorization: AWS AKID:sig`) is refused even
//!   when correctly signed: AWS deprecated it, and s3s checks no date on
//!   it, so a captured request could be replayed forever. SigV2 presigned
//!   URLs (`AWSAccessKeyId`, `Expires`, `Signature`) stay accepted: botocore
//!   (aws cli v1, boto3) and s3cmd make them by default, and s3s verifies
//!   them with their expiry.
//! - A request with both an `Authorization` header and query-string
//!   credentials is ambiguous: 400 InvalidArgument.
//! - SigV4 must sign `host` and every `x-amz-*` header sent (s3s checks
//!   only the headers the client chose to list, so an `x-amz-acl` or
//!   `x-amz-meta-*` added after signing would otherwise be accepted).
//! - Object keys may not hold characters XML 1.0 cannot carry (C0
//!   controls other than tab, LF and CR): every listing or multipart
//!   answer naming such a key would be unreadable XML for clients that do
//!   not ask for `encoding-type=url`. 400 InvalidArgument.
//! - The header section is bounded (one value at most
//!   [`MAX_HEADER_VALUE_BYTES`], all of them [`MAX_HEADER_SECTION_BYTES`]):
//!   400 RequestHeaderSectionTooLarge.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderMap, Uri};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Error, S3ErrorCode, S3Result};
use tessera_proto::MetaClient;
use tessera_types::meta::{MetaError, MetaQuery, QueryReply};
use tokio::time::Instant;

use crate::error::ApiError;

/// Most cached keys; the cache is cleared when it fills (a flood of random
/// access key ids must not grow memory).
const MAX_CACHED_KEYS: usize = 10_000;
/// Longest access key id looked up at all.
const MAX_ACCESS_KEY_LEN: usize = 128;

struct Cached {
    /// `None`: the key is known not to exist.
    secret: Option<String>,
    until: Instant,
}

/// Secret keys from meta (`MetaQuery::GetAccessKey`), cached for `ttl`
/// (unknown keys for `negative_ttl`).
pub struct MetaAuth {
    meta: MetaClient,
    ttl: Duration,
    negative_ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl MetaAuth {
    pub fn new(meta: MetaClient, ttl: Duration, negative_ttl: Duration) -> Self {
        MetaAuth {
            meta,
            ttl,
            negative_ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, id: &str) -> Option<Option<String>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(id)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.secret.clone())
    }

    fn remember(&self, id: &str, secret: Option<String>) {
        let ttl = if secret.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_KEYS {
            cache.clear();
        }
        cache.insert(
            id.to_string(),
            Cached {
                secret,
                until: Instant::now() + ttl,
            },
        );
    }

    async fn lookup(&self, id: &str) -> Result<String, ApiError> {
        if id.is_empty() || id.len() > MAX_ACCESS_KEY_LEN {
            return Err(MetaError::NoSuchAccessKey.into());
        }
        if let Some(hit) = self.cached(id) {
            return hit.ok_or(ApiError::Meta(MetaError::NoSuchAccessKey));
        }
        let reply = self
            .meta
            .query(&MetaQuery::GetAccessKey { id: id.to_string() })
            .await
            .map_err(ApiError::from_rpc)?;
        let secret = match reply {
            QueryReply::AccessKey(key) => key.map(|k| k.secret),
            QueryReply::Err(MetaError::NoSuchAccessKey) => None,
            QueryReply::Err(e) => return Err(e.into()),
            _ => return Err(ApiError::UnexpectedReply("GetAccessKey")),
        };
        self.remember(id, secret.clone());
        secret.ok_or(ApiError::Meta(MetaError::NoSuchAccessKey))
    }
}

#[async_trait::async_trait]
impl S3Auth for MetaAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.lookup(access_key).await {
            Ok(secret) => Ok(SecretKey::from(secret)),
            Err(e) => {
                if e.is_server_side() {
                    tracing::warn!(error = %e, "access key lookup failed");
                }
                Err(S3Error::from(e))
            }
        }
    }
}

/// Longest single request header value.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 << 10;
/// Largest request header section (names and values).
pub const MAX_HEADER_SECTION_BYTES: usize = 16 << 10;
/// `x-amz-*` headers clients send without signing them (aws-sdk
/// user-agent); they change nothing about the request.
const UNSIGNED_AMZ_HEADERS: [&str; 1] = ["x-amz-user-agent"];

fn s3_error(code: S3ErrorCode, msg: impl Into<String>) -> S3Error {
    S3Error::with_message(code, msg.into())
}

/// The `SignedHeaders=` list of a SigV4 Authorization header.
fn header_signed_headers(auth: &str) -> Option<&str> {
    auth.split([',', ' '])
        .find_map(|p| p.trim().strip_prefix("SignedHeaders="))
}

/// The request rules s3s leaves open (see the module doc). `Err` is the
/// S3 error to answer.
pub fn check_request(headers: &HeaderMap, uri: &Uri) -> S3Result<()> {
    let mut total = 0usize;
    for (name, value) in headers {
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(s3_error(
                S3ErrorCode::RequestHeaderSectionTooLarge,
                format!("The {name} header exceeds the maximum allowed size."),
            ));
        }
        total += name.as_str().len() + value.len();
    }
    if total > MAX_HEADER_SECTION_BYTES {
        return Err(s3_error(
            S3ErrorCode::RequestHeaderSectionTooLarge,
            "Your request header section exceeds the maximum allowed size.",
        ));
    }

    let auth_header = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let query = uri.query();
    let has = |n: &str| crate::query::has(query, n);
    let query_v4 = has("X-Amz-Signature") || has("X-Amz-Credential");
    let query_v2 = has("Signature") || has("AWSAccessKeyId");
    if auth_header.is_some() && (query_v4 || query_v2) {
        return Err(s3_error(
            S3ErrorCode::InvalidArgument,
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
        ));
    }
    if auth_header.is_some_and(|a| a.starts_with("AWS ")) {
        return Err(s3_error(
            S3ErrorCode::InvalidRequest,
            "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.",
        ));
    }

    // What the SigV4 signature covers.
    let (signed, presigned) = match auth_header {
        Some(a) if a.starts_with("AWS4-HMAC-SHA256 ") => {
            (header_signed_headers(a).unwrap_or("").to_string(), false)
        }
        Some(_) => return Ok(()),
        None if query_v4 => (
            crate::query::decoded(query, "X-Amz-SignedHeaders").unwrap_or_default(),
            true,
        ),
        None => return Ok(()),
    };
    let signed: Vec<String> = signed
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let code = if presigned {
        S3ErrorCode::AuthorizationQueryParametersError
    } else {
        S3ErrorCode::AuthorizationHeaderMalformed
    };
    if !signed.iter().any(|h| h == "host") {
        return Err(s3_error(code, "The host header must be signed."));
    }
    for name in headers.keys() {
        let n = name.as_str();
        if !n.starts_with("x-amz-")
            || UNSIGNED_AMZ_HEADERS.contains(&n)
            || (presigned && n == "x-amz-content-sha256")
            || signed.iter().any(|h| h == n)
        {
            continue;
        }
        return Err(s3_error(
            S3ErrorCode::AccessDenied,
            format!("There were headers present in the request which were not signed: {n}"),
        ));
    }
    Ok(())
}

/// Whether `key` holds a character XML 1.0 cannot represent, even
/// escaped (C0 controls but tab, LF, CR; U+FFFE and U+FFFF).
pub fn key_unrepresentable_in_xml(key: &str) -> bool {
    key.chars().any(|c| {
        (c < '\u{20}' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{fffe}' | '\u{ffff}')
    })
}

/// The key rule (after routing): 400 InvalidArgument for a key XML
/// cannot carry.
pub fn check_key_chars(key: Option<&str>) -> S3Result<()> {
    if key.is_some_and(key_unrepresentable_in_xml) {
        return Err(s3_error(
            S3ErrorCode::InvalidArgument,
            "Object keys may not contain control characters other than tab, CR and LF.",
        ));
    }
    Ok(())
}

/// Denies every request without verified credentials. (s3s calls this
/// for every operation when an auth provider is set; credentials are
/// `None` for unsigned requests.)
pub struct RequireAuth;

#[async_trait::async_trait]
impl S3Access for RequireAuth {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        // Name the operation for the request metrics.
        let op = cx.s3_op().name().to_string();
        if let Some(slot) = cx.extensions_mut().get::<crate::metrics::OpSlot>() {
            slot.set(&op);
        }
        check_request(cx.headers(), cx.uri())?;
        let key = match cx.s3_path() {
            s3s::path::S3Path::Object { key, .. } => Some(&**key),
            _ => None,
        };
        check_key_chars(key)?;
        match cx.credentials() {
            Some(_) => Ok(()),
            None => Err(ApiError::AccessDenied("anonymous access is not allowed").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)], uri: &str) -> S3Result<()> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        check_request(&h, &uri.parse().unwrap())
    }

    fn code(r: S3Result<()>) -> String {
        r.unwrap_err().code().as_str().to_string()
    }

    const V4: &str = "AWS4-HMAC-SHA256 Credential=AK/20250101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-meta-a, Signature=00";

    #[test]
    fn signed_requests_pass() {
        let h = [
            ("authorization", V4),
            ("host", "h"),
            ("x-amz-date", "d"),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ("x-amz-meta-a", "1"),
            ("x-amz-user-agent", "sdk"),
            ("user-agent", "curl"),
        ];
        req(&h, "/b/k?x-id=PutObject").unwrap();
        // Presigned: x-amz-content-sha256 may come unsigned.
        req(
            &[("host", "h"), ("x-amz-content-sha256", "UNSIGNED-PAYLOAD")],
            "/b/k?X-Amz-Credential=a&X-Amz-SignedHeaders=host&X-Amz-Signature=00",
        )
        .unwrap();
        // Anonymous: refused later, not here.
        req(&[("host", "h")], "/b/k").unwrap();
    }

    #[test]
    fn unsigned_amz_headers_and_host_are_refused() {
        let h = [
            ("authorization", V4),
            ("host", "h"),
            ("x-amz-acl", "public-read"),
        ];
        assert_eq!(code(req(&h, "/b/k")), "AccessDenied");
        let no_host = V4.replace("host;", "");
        assert_eq!(
            code(req(&[("authorization", &no_host)], "/b/k")),
            "AuthorizationHeaderMalformed"
        );
        let q = "/b/k?X-Amz-Credential=a&X-Amz-SignedHeaders=x-amz-date&X-Amz-Signature=00";
        assert_eq!(code(req(&[], q)), "AuthorizationQueryParametersError");
        let q =
            "/b/k?X-Amz-Credential=a&X-Amz-SignedHeaders=host%3Bx-amz-meta-a&X-Amz-Signature=00";
        req(&[("x-amz-meta-a", "1")], q).unwrap();
        assert_eq!(code(req(&[("x-amz-meta-b", "1")], q)), "AccessDenied");
    }

    #[test]
    fn sigv2_and_double_auth_are_refused() {
        assert_eq!(
            code(req(&[("authorization", "AWS AK:c2ln")], "/b/k")),
            "InvalidRequest"
        );
        // SigV2 presigned URLs are verified by s3s (with their expiry).
        req(&[], "/b/k?AWSAccessKeyId=AK&Expires=1&Signature=x").unwrap();
        assert_eq!(
            code(req(&[("authorization", V4)], "/b/k?X-Amz-Signature=00")),
            "InvalidArgument"
        );
    }

    #[test]
    fn header_section_is_bounded() {
        let big = "v".repeat(MAX_HEADER_VALUE_BYTES + 1);
        assert_eq!(
            code(req(&[("x-pad", &big)], "/b/k")),
            "RequestHeaderSectionTooLarge"
        );
        let half = "v".repeat(MAX_HEADER_VALUE_BYTES);
        req(&[("x-pad", &half)], "/b/k").unwrap();
        assert_eq!(
            code(req(&[("x-pad", &half), ("x-pad2", &half)], "/b/k")),
            "RequestHeaderSectionTooLarge"
        );
    }

    #[test]
    fn keys_xml_cannot_carry_are_refused() {
        check_key_chars(Some("a/../b\r\n\t\u{7f}é")).unwrap();
        check_key_chars(None).unwrap();
        for bad in ["nul\0", "bell\u{7}", "esc\u{1b}[0m", "\u{ffff}"] {
            let e = check_key_chars(Some(bad)).unwrap_err();
            assert_eq!(e.code().as_str(), "InvalidArgument", "{bad:?}");
        }
    }
}
