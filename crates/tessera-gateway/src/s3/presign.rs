//! Presigned-URL rules s3s 0.14.1 leaves open, checked before s3s sees the
//! request: `X-Amz-Expires` must be an integer from 1 to 604800 (7 days),
//! else 400 AuthorizationQueryParametersError (s3s accepts any `u32` and
//! answers a missing, negative or non-numeric value with a bare
//! InvalidRequest). s3s itself refuses an expired URL with 403 AccessDenied
//! "Request has expired" (before looking at the signature) and a request
//! date too far in the future with RequestTimeTooSkewed.

use bytes::Bytes;

/// Longest validity of a presigned URL, as in S3.
pub const MAX_EXPIRES_SECS: i64 = 7 * 24 * 3600;

/// `Err(message)` if the request is a SigV4 presigned URL whose
/// `X-Amz-Expires` breaks the rules.
pub fn check_query(query: Option<&str>) -> Result<(), &'static str> {
    let mut presigned = false;
    let mut expires: Option<&str> = None;
    for (k, v) in crate::query::pairs(query) {
        match k {
            "X-Amz-Signature" | "X-Amz-Credential" | "X-Amz-Algorithm" => presigned = true,
            "X-Amz-Expires" => {
                if expires.is_some() {
                    return Err("X-Amz-Expires must be given once");
                }
                expires = Some(v);
            }
            _ => {}
        }
    }
    if !presigned {
        return Ok(());
    }
    let Some(v) = expires else {
        return Err("Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.");
    };
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if v.starts_with('-') || v.starts_with("%2D") {
            "X-Amz-Expires must be non-negative"
        } else {
            "X-Amz-Expires should be a number"
        });
    }
    match v.parse::<i64>() {
        Ok(0) => Err("X-Amz-Expires must be at least 1 second"),
        Ok(n) if n <= MAX_EXPIRES_SECS => Ok(()),
        _ => Err("X-Amz-Expires must be less than a week (in seconds) that is 604800"),
    }
}

/// The S3 XML error response for a refused presigned URL.
pub fn error_response(message: &str) -> http::Response<s3s::Body> {
    xml_error(
        http::StatusCode::BAD_REQUEST,
        "AuthorizationQueryParametersError",
        message,
    )
}

/// An S3 XML error response that the gateway answers itself, outside
/// s3s: `message` must not need XML escaping.
pub(crate) fn xml_error(
    status: http::StatusCode,
    code: &str,
    message: &str,
) -> http::Response<s3s::Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut resp = http::Response::new(s3s::Body::from(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: &str = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2Fb&X-Amz-Date=20250101T000000Z&X-Amz-SignedHeaders=host&X-Amz-Signature=00";

    fn with(expires: &str) -> Result<(), &'static str> {
        check_query(Some(&format!("{Q}&X-Amz-Expires={expires}")))
    }

    #[test]
    fn expires_must_be_one_second_to_seven_days() {
        with("1").unwrap();
        with("3600").unwrap();
        with("604800").unwrap();
        for bad in [
            "604801",
            "-1",
            "%2D1",
            "abc",
            "",
            "0",
            "1.5",
            "99999999999999999999999",
        ] {
            assert!(with(bad).is_err(), "{bad:?}");
        }
        assert!(check_query(Some(Q)).is_err(), "missing");
        assert!(check_query(Some(&format!("{Q}&X-Amz-Expires=1&X-Amz-Expires=2"))).is_err());
        // Not presigned: not our business.
        check_query(None).unwrap();
        check_query(Some("list-type=2&X-Amz-Expires=abc")).unwrap();
        let r = error_response("x");
        assert_eq!(r.status(), http::StatusCode::BAD_REQUEST);
    }
}
