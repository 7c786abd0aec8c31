//! Object tags: `x-amz-tagging` on PutObject, CreateMultipartUpload and
//! CopyObject (with `x-amz-tagging-directive`), GetObjectTagging,
//! PutObjectTagging and DeleteObjectTagging. The tag set is kept,
//! canonically encoded, in the manifest's header map under [`TAGGING_KEY`]
//! (never sent back as a response header); Put/DeleteObjectTagging replace
//! it in place with one Raft command (`MetaCommand::SetObjectTagging`), so
//! a reader sees the old or the new set, never a mix, and the object's
//! data, ETag and version stay as they are.

use std::collections::BTreeMap;

use s3s::dto::*;
use s3s::S3Request;

use tessera_types::meta::MetaCommand;

use super::get;
use super::{Access, Tessera};
use crate::error::ApiError;
use crate::names::check_key;

/// Where the tag set lives in [`tessera_types::ObjectManifest::headers`].
pub(super) const TAGGING_KEY: &str = tessera_types::TAGGING_HEADER;

/// S3's limits on object tags.
const MAX_TAGS: usize = 10;
const MAX_KEY_CHARS: usize = 128;
const MAX_VALUE_CHARS: usize = 256;

fn decode(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::InvalidTag("the tag set is not a valid URL-encoded query string".into());
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Parses and checks an `x-amz-tagging` value (`k1=v1&k2=v2`).
pub(super) fn parse(header: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut pairs = Vec::new();
    for pair in header.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push((decode(k)?, decode(v)?));
    }
    check(pairs)
}

/// Checks S3's rules on a tag set: at most [`MAX_TAGS`] tags, unique keys
/// of 1 to [`MAX_KEY_CHARS`] characters, values of at most
/// [`MAX_VALUE_CHARS`].
fn check(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut tags = BTreeMap::new();
    for (k, v) in pairs {
        if k.is_empty() || k.chars().count() > MAX_KEY_CHARS {
            return Err(ApiError::InvalidTag(format!(
                "tag keys are 1 to {MAX_KEY_CHARS} characters"
            )));
        }
        if v.chars().count() > MAX_VALUE_CHARS {
            return Err(ApiError::InvalidTag(format!(
                "tag values are at most {MAX_VALUE_CHARS} characters"
            )));
        }
        if tags.insert(k, v).is_some() {
            return Err(ApiError::InvalidTag("tag keys must be unique".into()));
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(ApiError::InvalidTag(format!(
            "an object has at most {MAX_TAGS} tags"
        )));
    }
    Ok(tags)
}

/// The canonical stored form of a tag set (`None`: no tags).
fn canonical(tags: &BTreeMap<String, String>) -> Option<String> {
    (!tags.is_empty()).then(|| {
        tags.iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// Adds the request's tags to a new object's headers.
pub(super) fn apply(
    headers: &mut BTreeMap<String, String>,
    tagging: Option<&str>,
) -> Result<(), ApiError> {
    headers.remove(TAGGING_KEY);
    if let Some(t) = tagging {
        if let Some(c) = canonical(&parse(t)?) {
            headers.insert(TAGGING_KEY.to_string(), c);
        }
    }
    Ok(())
}

/// How many tags an object has (GetObject's `x-amz-tagging-count`);
/// `None` without tags.
pub(super) fn count(m: &tessera_types::ObjectManifest) -> Option<i32> {
    m.headers
        .get(TAGGING_KEY)
        .map(|t| t.split('&').filter(|p| !p.is_empty()).count() as i32)
        .filter(|n| *n > 0)
}

/// Versions other than the `null` version (the only one of an
/// unversioned bucket) are NotImplemented.
pub(super) fn check_version(version_id: Option<&str>) -> Result<(), ApiError> {
    match version_id {
        Some(v) if v != "null" => Err(ApiError::NotImplemented(
            "object versions are not supported (buckets are unversioned)",
        )),
        _ => Ok(()),
    }
}

/// GetObjectTagging.
pub(super) async fn get_object_tagging(
    s: &Tessera,
    req: S3Request<GetObjectTaggingInput>,
) -> Result<GetObjectTaggingOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    check_version(input.version_id.as_deref())?;
    let m = get::load(s, &caller, &input.bucket, &input.key).await?;
    let tags = match m.headers.get(TAGGING_KEY) {
        Some(t) => parse(t)?,
        None => BTreeMap::new(),
    };
    Ok(GetObjectTaggingOutput {
        tag_set: tags
            .into_iter()
            .map(|(k, v)| Tag {
                key: Some(k),
                value: Some(v),
            })
            .collect(),
        version_id: None,
    })
}

/// Replaces the tag set of an existing object (`None`: removes it).
async fn set_tags(
    s: &Tessera,
    caller: &str,
    bucket: &str,
    key: &str,
    tagging: Option<String>,
) -> Result<(), ApiError> {
    check_key(key)?;
    s.authorize(caller, bucket, Access::Write).await?;
    s.write(&MetaCommand::SetObjectTagging {
        bucket: bucket.to_string(),
        key: key.to_string(),
        tagging,
    })
    .await?;
    Ok(())
}

/// PutObjectTagging: replaces the whole tag set.
pub(super) async fn put_object_tagging(
    s: &Tessera,
    req: S3Request<PutObjectTaggingInput>,
) -> Result<PutObjectTaggingOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    check_version(input.version_id.as_deref())?;
    let pairs = input
        .tagging
        .tag_set
        .into_iter()
        .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
        .collect();
    let tags = check(pairs)?;
    set_tags(s, &caller, &input.bucket, &input.key, canonical(&tags)).await?;
    Ok(PutObjectTaggingOutput { version_id: None })
}

/// DeleteObjectTagging: removes every tag.
pub(super) async fn delete_object_tagging(
    s: &Tessera,
    req: S3Request<DeleteObjectTaggingInput>,
) -> Result<DeleteObjectTaggingOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    check_version(input.version_id.as_deref())?;
    set_tags(s, &caller, &input.bucket, &input.key, None).await?;
    Ok(DeleteObjectTaggingOutput { version_id: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_checks_and_round_trips() {
        let t = parse("project=blue&team=a%20b+c&empty=").unwrap();
        assert_eq!(t["project"], "blue");
        assert_eq!(t["team"], "a b c");
        assert_eq!(t["empty"], "");
        let c = canonical(&t).unwrap();
        assert_eq!(parse(&c).unwrap(), t);
        assert!(parse("").unwrap().is_empty());
        assert!(matches!(parse("a=1&a=2"), Err(ApiError::InvalidTag(_))));
        assert!(matches!(parse("=v"), Err(ApiError::InvalidTag(_))));
        assert!(matches!(parse("k=%zz"), Err(ApiError::InvalidTag(_))));
        assert!(matches!(parse("k=%ff"), Err(ApiError::InvalidTag(_))));
        let eleven: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
        assert!(matches!(
            parse(&eleven.join("&")),
            Err(ApiError::InvalidTag(_))
        ));
        let long = format!("{}=v", "k".repeat(129));
        assert!(matches!(parse(&long), Err(ApiError::InvalidTag(_))));
        let long = format!("k={}", "v".repeat(257));
        assert!(matches!(parse(&long), Err(ApiError::InvalidTag(_))));
        // Limits count characters, not bytes.
        let wide = format!("{}={}", "é".repeat(128), "ü".repeat(256));
        assert_eq!(parse(&wide).unwrap().len(), 1);
        // The XML form (PutObjectTagging) goes through the same checks.
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert!(check(vec![pair("a", "1"), pair("b", "")]).is_ok());
        assert!(matches!(
            check(vec![pair("a", "1"), pair("a", "2")]),
            Err(ApiError::InvalidTag(_))
        ));
        assert!(matches!(
            check((0..11).map(|i| pair(&format!("k{i}"), "v")).collect()),
            Err(ApiError::InvalidTag(_))
        ));
        assert!(matches!(
            check(vec![pair("", "v")]),
            Err(ApiError::InvalidTag(_))
        ));
    }
}
