//! GetObject, HeadObject and GetObjectAttributes: the manifest from meta (a
//! linearizable read, so read-after-write holds across gateways),
//! conditional headers, Range, and the body streamed from the stripe reader.

use std::ops::Range as ByteRange;
use std::sync::Arc;

use bytes::Bytes;
use s3s::dto::*;
use s3s::S3Request;
use tessera_types::meta::{MetaError, MetaQuery, QueryReply};
use tessera_types::{ObjectData, ObjectManifest};

use super::put::checksum_type;
use super::{timestamp, Access, Tessera};
use crate::checksum::{self, set_checksum, Algorithm};
use crate::error::ApiError;
use crate::names::check_key;
use crate::pipeline::read::read_range;

/// What GET and HEAD need to answer.
struct Conditions {
    if_match: Option<ETagCondition>,
    if_none_match: Option<ETagCondition>,
    if_modified_since: Option<Timestamp>,
    if_unmodified_since: Option<Timestamp>,
}

/// The object's standard response headers.
struct ObjectHeaders {
    etag: ETag,
    last_modified: Timestamp,
    content_type: Option<String>,
    metadata: Option<Metadata>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    expires: Option<Timestamp>,
}

impl ObjectHeaders {
    fn of(m: &ObjectManifest) -> Self {
        let h = |name: &str| m.headers.get(name).cloned();
        ObjectHeaders {
            etag: ETag::Strong(m.etag.clone()),
            last_modified: timestamp(m.created),
            content_type: m.content_type.clone(),
            metadata: (!m.user_metadata.is_empty()).then(|| {
                m.user_metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            cache_control: h("cache-control"),
            content_disposition: h("content-disposition"),
            content_encoding: h("content-encoding"),
            content_language: h("content-language"),
            expires: h("expires")
                .and_then(|v| Timestamp::parse(TimestampFormat::HttpDate, &v).ok()),
        }
    }
}

/// The object's primary checksum, answered on GET/HEAD only when the
/// client asks (`x-amz-checksum-mode: ENABLED`) and only for the whole
/// object (a range has no stored checksum).
fn answered_checksum(
    m: &ObjectManifest,
    mode: Option<&ChecksumMode>,
    ranged: bool,
) -> Option<(Algorithm, String, ChecksumType)> {
    let enabled = mode.is_some_and(|m| m.as_str().eq_ignore_ascii_case(ChecksumMode::ENABLED));
    if !enabled || ranged {
        return None;
    }
    checksum::primary(&m.checksums).map(|(a, v, t)| (a, v.to_string(), checksum_type(t)))
}

/// Loads the manifest of an object the caller may read.
pub(super) async fn load(
    s: &Tessera,
    caller: &str,
    bucket: &str,
    key: &str,
) -> Result<ObjectManifest, ApiError> {
    check_key(key)?;
    // The access check and the manifest in one linearizable meta read.
    let q = MetaQuery::Many(vec![
        super::access_query(caller, bucket),
        MetaQuery::GetObject {
            bucket: bucket.to_string(),
            key: key.to_string(),
        },
    ]);
    let QueryReply::Many(replies) = s.query(&q).await? else {
        return Err(ApiError::UnexpectedReply("Many"));
    };
    let mut replies = replies.into_iter();
    let (Some(access), Some(object)) = (replies.next(), replies.next()) else {
        return Err(ApiError::UnexpectedReply("Many"));
    };
    super::check_access(access, caller, Access::Read)?;
    match object {
        QueryReply::Object(Some(m)) => Ok(*m),
        QueryReply::Object(None) => Err(MetaError::NoSuchKey.into()),
        QueryReply::Err(e) => Err(e.into()),
        _ => Err(ApiError::UnexpectedReply("GetObject")),
    }
}

fn unix_secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

/// RFC 9110 conditional request evaluation, in its order of precedence.
fn check_conditions(m: &ObjectManifest, c: &Conditions) -> Result<(), ApiError> {
    let etag = ETag::Strong(m.etag.clone());
    let modified = m.created.div_euclid(1000);
    let matches = |cond: &ETagCondition| match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag.value(),
    };
    if let Some(cond) = &c.if_match {
        if !matches(cond) {
            return Err(MetaError::PreconditionFailed.into());
        }
    } else if let Some(t) = &c.if_unmodified_since {
        if modified > unix_secs(t) {
            return Err(MetaError::PreconditionFailed.into());
        }
    }
    if let Some(cond) = &c.if_none_match {
        if matches(cond) {
            return Err(ApiError::NotModified);
        }
    } else if let Some(t) = &c.if_modified_since {
        if modified <= unix_secs(t) {
            return Err(ApiError::NotModified);
        }
    }
    Ok(())
}

/// The byte range to send, and the Content-Range header if partial.
fn resolve_range(
    range: Option<Range>,
    size: u64,
) -> Result<(ByteRange<u64>, Option<String>), ApiError> {
    match range {
        None => Ok((0..size, None)),
        Some(r) => {
            let r = r.check(size).map_err(|_| ApiError::InvalidRange)?;
            let header = format!("bytes {}-{}/{}", r.start, r.end - 1, size);
            Ok((r, Some(header)))
        }
    }
}

pub(super) async fn get_object(
    s: &Tessera,
    req: S3Request<GetObjectInput>,
) -> Result<GetObjectOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    let m = load(s, &caller, &input.bucket, &input.key).await?;
    check_conditions(
        &m,
        &Conditions {
            if_match: input.if_match,
            if_none_match: input.if_none_match,
            if_modified_since: input.if_modified_since,
            if_unmodified_since: input.if_unmodified_since,
        },
    )?;
    let (range, content_range) = resolve_range(input.range, m.size)?;
    let h = ObjectHeaders::of(&m);
    let sum = answered_checksum(&m, input.checksum_mode.as_ref(), content_range.is_some());
    let tag_count = super::tagging::count(&m);
    let len = range.end - range.start;
    let body = match &m.data {
        ObjectData::Inline(data) => {
            let (from, to) = (range.start as usize, range.end as usize);
            let bytes = data
                .get(from..to)
                .map(|_| data.slice(from..to))
                .ok_or_else(|| ApiError::Internal("inline data shorter than the object".into()))?;
            StreamingBlob::wrap(futures::stream::once(futures::future::ready(Ok::<
                Bytes,
                ApiError,
            >(
                bytes
            ))))
        }
        ObjectData::Parts(_) => StreamingBlob::wrap(read_range(s.dp.clone(), Arc::new(m), range)),
    };
    let mut out = GetObjectOutput {
        body: Some(body),
        accept_ranges: Some("bytes".to_string()),
        content_length: Some(len as i64),
        content_range,
        e_tag: Some(h.etag),
        last_modified: Some(h.last_modified),
        content_type: h.content_type,
        metadata: h.metadata,
        cache_control: h.cache_control,
        content_disposition: h.content_disposition,
        content_encoding: h.content_encoding,
        content_language: h.content_language,
        expires: h.expires,
        tag_count,
        ..Default::default()
    };
    if let Some((a, v, t)) = sum {
        set_checksum!(out, Some((a, v)));
        out.checksum_type = Some(t);
    }
    Ok(out)
}

pub(super) async fn head_object(
    s: &Tessera,
    req: S3Request<HeadObjectInput>,
) -> Result<HeadObjectOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    let m = load(s, &caller, &input.bucket, &input.key).await?;
    check_conditions(
        &m,
        &Conditions {
            if_match: input.if_match,
            if_none_match: input.if_none_match,
            if_modified_since: input.if_modified_since,
            if_unmodified_since: input.if_unmodified_since,
        },
    )?;
    let (range, content_range) = resolve_range(input.range, m.size)?;
    let h = ObjectHeaders::of(&m);
    let sum = answered_checksum(&m, input.checksum_mode.as_ref(), content_range.is_some());
    let mut out = HeadObjectOutput {
        accept_ranges: Some("bytes".to_string()),
        content_length: Some((range.end - range.start) as i64),
        content_range,
        e_tag: Some(h.etag),
        last_modified: Some(h.last_modified),
        content_type: h.content_type,
        metadata: h.metadata,
        cache_control: h.cache_control,
        content_disposition: h.content_disposition,
        content_encoding: h.content_encoding,
        content_language: h.content_language,
        expires: h.expires,
        ..Default::default()
    };
    if let Some((a, v, t)) = sum {
        set_checksum!(out, Some((a, v)));
        out.checksum_type = Some(t);
    }
    Ok(out)
}

/// Largest page of parts in GetObjectAttributes.
const MAX_ATTRIBUTE_PARTS: i32 = 1000;

pub(super) async fn get_object_attributes(
    s: &Tessera,
    req: S3Request<GetObjectAttributesInput>,
) -> Result<GetObjectAttributesOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    let max_parts = match input.max_parts {
        None => MAX_ATTRIBUTE_PARTS,
        Some(n) if n < 0 => {
            return Err(ApiError::InvalidArgument(
                "max-parts must be a non-negative integer".into(),
            ))
        }
        Some(n) => n.min(MAX_ATTRIBUTE_PARTS),
    };
    let marker = match input.part_number_marker {
        None => 0,
        Some(n) => u32::try_from(n).map_err(|_| {
            ApiError::InvalidArgument("part-number-marker must be a non-negative integer".into())
        })?,
    };
    let m = load(s, &caller, &input.bucket, &input.key).await?;
    // One header of comma-separated names, or several headers.
    let wants = |name: &str| {
        input
            .object_attributes
            .iter()
            .flat_map(|a| a.as_str().split(','))
            .any(|a| a.trim().eq_ignore_ascii_case(name))
    };
    let primary = checksum::primary(&m.checksums);
    let mut out = GetObjectAttributesOutput {
        last_modified: Some(timestamp(m.created)),
        ..Default::default()
    };
    if wants(ObjectAttributes::ETAG) {
        out.e_tag = Some(ETag::Strong(m.etag.clone()));
    }
    if wants(ObjectAttributes::OBJECT_SIZE) {
        out.object_size = Some(m.size as i64);
    }
    if wants(ObjectAttributes::STORAGE_CLASS) {
        out.storage_class = Some(StorageClass::from_static(StorageClass::STANDARD));
    }
    if wants(ObjectAttributes::CHECKSUM) {
        if let Some((a, v, t)) = primary {
            let mut c = Checksum {
                checksum_type: Some(checksum_type(t)),
                ..Default::default()
            };
            set_checksum!(c, Some((a, v)));
            out.checksum = Some(c);
        }
    }
    // Parts are those of a multipart upload (a plain PUT is one part
    // internally, not for S3).
    if let (true, true, ObjectData::Parts(parts)) = (
        wants(ObjectAttributes::OBJECT_PARTS),
        m.etag.contains('-'),
        &m.data,
    ) {
        let after: Vec<&tessera_types::Part> = parts.iter().filter(|p| p.number > marker).collect();
        let page = &after[..after.len().min(max_parts as usize)];
        let list: Vec<ObjectPart> = page
            .iter()
            .map(|p| {
                let mut op = ObjectPart {
                    part_number: Some(p.number as i32),
                    size: Some(p.size as i64),
                    ..Default::default()
                };
                if let Some((a, _, _)) = primary {
                    set_checksum!(op, p.checksums.get(a.name()).map(|v| (a, v)));
                }
                op
            })
            .collect();
        out.object_parts = Some(GetObjectAttributesParts {
            total_parts_count: Some(parts.len() as i32),
            part_number_marker: Some(marker as i32),
            next_part_number_marker: page.last().map(|p| p.number as i32),
            max_parts: Some(max_parts),
            is_truncated: Some(after.len() > page.len()),
            parts: Some(list),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |first, last| Some(Range::Int { first, last });
        assert_eq!(resolve_range(None, 10).unwrap(), (0..10, None));
        assert_eq!(
            resolve_range(r(2, Some(5)), 10).unwrap(),
            (2..6, Some("bytes 2-5/10".to_string()))
        );
        assert_eq!(resolve_range(r(2, None), 10).unwrap().0, 2..10);
        assert_eq!(resolve_range(r(2, Some(100)), 10).unwrap().0, 2..10);
        assert_eq!(
            resolve_range(Some(Range::Suffix { length: 3 }), 10)
                .unwrap()
                .0,
            7..10
        );
        assert_eq!(
            resolve_range(Some(Range::Suffix { length: 30 }), 10)
                .unwrap()
                .0,
            0..10
        );
        assert!(matches!(
            resolve_range(r(10, None), 10),
            Err(ApiError::InvalidRange)
        ));
        assert!(matches!(
            resolve_range(r(0, None), 0),
            Err(ApiError::InvalidRange)
        ));
        assert!(matches!(
            resolve_range(Some(Range::Suffix { length: 0 }), 10),
            Err(ApiError::InvalidRange)
        ));
    }
}
