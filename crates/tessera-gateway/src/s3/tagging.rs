//! Object tags: `x-amz-tagging` on PutObject, CreateMultipartUpload and
//! CopyObject (with `x-amz-tagging-directive`), and GetObjectTagging. The
//! tag set is kept, canonically encoded, in the manifest's header map under
//! [`TAGGING_KEY`] (never sent back as a response header). Changing the
//! tags of an existing object (PutObjectTagging, DeleteObjectTagging) is
//! later work and answers NotImplemented.

use std::collections::BTreeMap;

use s3s::dto::*;
use s3s::S3Request;

use super::get;
use super::Tessera;
use crate::error::ApiError;

/// Where the tag set lives in [`tessera_types::ObjectManifest::headers`].
pub(super) const TAGGING_KEY: &str = "x-amz-tagging";

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
    let mut tags = BTreeMap::new();
    for pair in header.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k)?, decode(v)?);
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

/// GetObjectTagging.
pub(super) async fn get_object_tagging(
    s: &Tessera,
    req: S3Request<GetObjectTaggingInput>,
) -> Result<GetObjectTaggingOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    if input.version_id.as_deref().is_some_and(|v| v != "null") {
        return Err(ApiError::InvalidArgument(
            "object versions are not supported".into(),
        ));
    }
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
    }
}
