//! ListObjectsV2 and ListObjects (v1). Continuation tokens are an opaque,
//! versioned encoding of the marker (the last key or common prefix
//! returned): meta lists strictly after it.

use base64::Engine;
use s3s::dto::*;
use s3s::S3Request;
use tessera_types::meta::{ListObjectsPage, ListObjectsQuery, MetaQuery, QueryReply};

use super::{timestamp, Access, Tessera};
use crate::error::ApiError;

/// Most keys one listing page returns, as in S3.
const MAX_KEYS: i32 = 1000;
/// Version byte in front of a continuation token's marker.
const TOKEN_VERSION: u8 = 1;

/// Encodes a marker as a continuation token.
pub fn encode_token(marker: &str) -> String {
    let mut raw = Vec::with_capacity(marker.len() + 1);
    raw.push(TOKEN_VERSION);
    raw.extend_from_slice(marker.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Decodes a continuation token; any token this gateway did not make is
/// an InvalidArgument.
pub fn decode_token(token: &str) -> Result<String, ApiError> {
    let bad = || ApiError::InvalidArgument("The continuation token provided is incorrect".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| bad())?;
    match raw.split_first() {
        Some((&TOKEN_VERSION, marker)) if marker.len() <= 1024 => {
            String::from_utf8(marker.to_vec()).map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

fn max_keys(v: Option<i32>) -> Result<u32, ApiError> {
    match v {
        None => Ok(MAX_KEYS as u32),
        Some(n) if n < 0 => Err(ApiError::InvalidArgument(
            "max-keys must not be negative".into(),
        )),
        Some(n) => Ok(n.min(MAX_KEYS) as u32),
    }
}

/// Percent-encodes for `encoding-type=url` (everything but unreserved
/// characters and '/').
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

struct Page {
    contents: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    is_truncated: bool,
    next_marker: Option<String>,
}

impl Page {
    /// Sets every object's `Owner`: the bucket's owner (objects have no
    /// owner of their own: whoever may write in a bucket writes for its
    /// owner).
    fn with_owner(mut self, owner: &str) -> Page {
        for o in &mut self.contents {
            o.owner = Some(Owner {
                display_name: Some(owner.to_string()),
                id: Some(owner.to_string()),
            });
        }
        self
    }
}

/// One page from meta, after authorization, and the bucket's owner.
async fn page(
    s: &Tessera,
    caller: &str,
    q: ListObjectsQuery,
    url: bool,
) -> Result<(Page, String), ApiError> {
    let owner = s.authorize(caller, &q.bucket, Access::Read).await?.owner;
    let enc = |v: String| if url { url_encode(&v) } else { v };
    if q.max_keys == 0 {
        let empty = Page {
            contents: vec![],
            prefixes: vec![],
            is_truncated: false,
            next_marker: None,
        };
        return Ok((empty, owner));
    }
    let start_after = q.start_after.clone();
    let q = MetaQuery::ListObjects(q);
    let ListObjectsPage {
        objects,
        common_prefixes,
        is_truncated,
        next_marker,
    } = match s.query(&q).await? {
        QueryReply::Listing(p) => p,
        _ => return Err(ApiError::UnexpectedReply("ListObjects")),
    };
    let contents = objects
        .into_iter()
        .map(|o| Object {
            key: Some(enc(o.key)),
            size: Some(o.size as i64),
            e_tag: Some(ETag::Strong(o.etag)),
            last_modified: Some(timestamp(o.last_modified)),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect();
    let prefixes = common_prefixes
        .into_iter()
        // A page that ended on a common prefix continues after it; never
        // repeat it.
        .filter(|p| start_after.is_empty() || *p > start_after)
        .map(|p| CommonPrefix {
            prefix: Some(enc(p)),
        })
        .collect();
    let page = Page {
        contents,
        prefixes,
        is_truncated,
        next_marker: next_marker.filter(|_| is_truncated),
    };
    Ok((page, owner))
}

fn is_url(e: &Option<EncodingType>) -> bool {
    e.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL)
}

pub(super) async fn list_objects_v2(
    s: &Tessera,
    req: S3Request<ListObjectsV2Input>,
) -> Result<ListObjectsV2Output, ApiError> {
    let caller = s.caller(&req)?;
    let i = req.input;
    let max = max_keys(i.max_keys)?;
    let token_marker = i
        .continuation_token
        .as_deref()
        .map(decode_token)
        .transpose()?;
    let start_after = match (&token_marker, &i.start_after) {
        (Some(t), Some(sa)) => t.clone().max(sa.clone()),
        (Some(t), None) => t.clone(),
        (None, Some(sa)) => sa.clone(),
        (None, None) => String::new(),
    };
    let prefix = i.prefix.clone().unwrap_or_default();
    let url = is_url(&i.encoding_type);
    let q = ListObjectsQuery {
        bucket: i.bucket.clone(),
        prefix: prefix.clone(),
        delimiter: i.delimiter.clone().unwrap_or_default(),
        start_after,
        max_keys: max,
    };
    let (mut p, owner) = page(s, &caller, q, url).await?;
    if i.fetch_owner == Some(true) {
        p = p.with_owner(&owner);
    }
    let enc = |v: Option<String>| if url { v.map(|v| url_encode(&v)) } else { v };
    Ok(ListObjectsV2Output {
        name: Some(i.bucket),
        prefix: enc(Some(prefix)),
        delimiter: enc(i.delimiter),
        start_after: enc(i.start_after),
        max_keys: Some(max as i32),
        key_count: Some((p.contents.len() + p.prefixes.len()) as i32),
        continuation_token: i.continuation_token,
        is_truncated: Some(p.is_truncated),
        next_continuation_token: p.next_marker.as_deref().map(encode_token),
        contents: Some(p.contents),
        common_prefixes: Some(p.prefixes),
        encoding_type: i.encoding_type,
        ..Default::default()
    })
}

pub(super) async fn list_objects(
    s: &Tessera,
    req: S3Request<ListObjectsInput>,
) -> Result<ListObjectsOutput, ApiError> {
    let caller = s.caller(&req)?;
    let i = req.input;
    let max = max_keys(i.max_keys)?;
    let prefix = i.prefix.clone().unwrap_or_default();
    let url = is_url(&i.encoding_type);
    let marker = i.marker.clone().unwrap_or_default();
    let q = ListObjectsQuery {
        bucket: i.bucket.clone(),
        prefix: prefix.clone(),
        delimiter: i.delimiter.clone().unwrap_or_default(),
        start_after: marker,
        max_keys: max,
    };
    // v1 always names the owner.
    let (p, owner) = page(s, &caller, q, url).await?;
    let p = p.with_owner(&owner);
    // NextMarker only with a delimiter (as S3): without one the client
    // continues from the last key.
    let delimited = i.delimiter.as_deref().is_some_and(|d| !d.is_empty());
    let next_marker = p.next_marker.filter(|_| delimited);
    let enc = |v: Option<String>| if url { v.map(|v| url_encode(&v)) } else { v };
    Ok(ListObjectsOutput {
        name: Some(i.bucket),
        prefix: enc(Some(prefix)),
        delimiter: enc(i.delimiter),
        marker: enc(Some(i.marker.unwrap_or_default())),
        max_keys: Some(max as i32),
        is_truncated: Some(p.is_truncated),
        next_marker: enc(next_marker),
        contents: Some(p.contents),
        common_prefixes: Some(p.prefixes),
        encoding_type: i.encoding_type,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_token_roundtrip() {
        for marker in ["", "a", "photos/2024/", "ключ/😀", &"k".repeat(1024)] {
            let t = encode_token(marker);
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(decode_token(&t).unwrap(), marker);
        }
        for bad in ["", "!!!", "AA", &encode_token("x")[1..]] {
            assert!(decode_token(bad).is_err(), "{bad:?}");
        }
        // Another version byte is refused.
        let other = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([2u8, b'a']);
        assert!(decode_token(&other).is_err());
    }

    #[test]
    fn max_keys_bounds() {
        assert_eq!(max_keys(None).unwrap(), 1000);
        assert_eq!(max_keys(Some(5000)).unwrap(), 1000);
        assert_eq!(max_keys(Some(0)).unwrap(), 0);
        assert!(max_keys(Some(-1)).is_err());
    }

    #[test]
    fn url_encoding() {
        assert_eq!(url_encode("a b/c+d"), "a%20b/c%2Bd");
        assert_eq!(url_encode("é"), "%C3%A9");
    }
}
