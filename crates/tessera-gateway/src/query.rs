//! Reading a raw query string, for the request checks that run beside
//! s3s's own parsing (auth rules, presigned-URL limits, metrics names).
//! Names are compared undecoded: every name these checks ask for is plain
//! ASCII.

/// The `name=value` pairs of `query`, undecoded (`value` is empty when the
/// pair has no `=`).
pub fn pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Whether `query` holds a parameter `name` (with or without a value).
pub fn has(query: Option<&str>, name: &str) -> bool {
    pairs(query).any(|(k, _)| k == name)
}

/// The first value of parameter `name`, percent-decoded.
pub fn decoded(query: Option<&str>, name: &str) -> Option<String> {
    pairs(query).find_map(|(k, v)| (k == name).then(|| percent_decode(v)))
}

/// Percent-decoding; a `%` not followed by two hex digits stays as it is,
/// invalid UTF-8 becomes U+FFFD.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_has_and_decoded() {
        let q = Some("uploads&partNumber=3&X-Amz-SignedHeaders=host%3Bx-amz-date&&e=");
        let all: Vec<_> = pairs(q).collect();
        assert_eq!(
            all,
            [
                ("uploads", ""),
                ("partNumber", "3"),
                ("X-Amz-SignedHeaders", "host%3Bx-amz-date"),
                ("e", "")
            ]
        );
        assert!(has(q, "uploads") && has(q, "partNumber") && has(q, "e"));
        assert!(!has(q, "upload") && !has(None, "uploads"));
        assert_eq!(
            decoded(q, "X-Amz-SignedHeaders").as_deref(),
            Some("host;x-amz-date")
        );
        assert_eq!(decoded(q, "missing"), None);
        assert_eq!(percent_decode("host%3Bx-amz-date"), "host;x-amz-date");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%E2%82%AC"), "€");
    }
}
