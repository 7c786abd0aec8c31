//! CopyObject, and the copy-source half shared with UploadPartCopy.
//!
//! The source is read through the stripe reader and written through the
//! stripe writer, so a copy streams with the same bounded memory as a GET
//! plus a PUT; an inline source is copied as it is. The caller must be
//! able to read the source bucket and write the target bucket.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::S3Request;
use tessera_types::manifest::MANIFEST_LAYOUT;
use tessera_types::meta::WriteCondition;
use tessera_types::{ObjectData, ObjectManifest};

use super::put::{
    checksum_algorithms, checksum_type, commit_manifest, standard_headers, user_metadata,
    BodyStream,
};
use super::{get, timestamp, Access, Tessera};
use crate::checksum::{self, set_checksum, Algorithm, Hashers};
use crate::error::ApiError;
use crate::names::check_key;
use crate::pipeline::read::read_range;
use crate::pipeline::write::{write_body_with, WriteLimits, WrittenBody};

/// The `bucket` and `key` of an `x-amz-copy-source` (s3s has URL-decoded
/// it and removed a leading `/`).
pub(super) fn copy_source(cs: &CopySource) -> Result<(String, String), ApiError> {
    match cs {
        CopySource::Bucket {
            bucket,
            key,
            version_id,
        } => {
            if bucket.is_empty() || key.is_empty() {
                return Err(ApiError::InvalidArgument(
                    "Copy Source must mention the source bucket and key: sourcebucket/sourcekey"
                        .into(),
                ));
            }
            // Only the `null` version exists (buckets are unversioned).
            super::tagging::check_version(version_id.as_deref())?;
            check_key(key)?;
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(ApiError::InvalidArgument(
            "access point copy sources are not supported".into(),
        )),
    }
}

/// Bytes `range` of `source` as a request-body stream.
pub(super) fn source_body(s: &Tessera, source: ObjectManifest, range: Range<u64>) -> BodyStream {
    match &source.data {
        ObjectData::Inline(data) => {
            let (from, to) = (range.start as usize, range.end as usize);
            let item: Result<Bytes, Box<dyn std::error::Error + Send + Sync>> =
                match data.get(from..to) {
                    Some(_) => Ok(data.slice(from..to)),
                    None => Err(Box::new(ApiError::Internal(
                        "inline data shorter than the object".into(),
                    ))),
                };
            futures::stream::once(futures::future::ready(item)).boxed()
        }
        ObjectData::Parts(_) => read_range(s.dp.clone(), Arc::new(source), range)
            .map(|r| r.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>))
            .boxed(),
    }
}

/// Whether the copy replaces the metadata (`REPLACE`) or keeps the
/// source's (`COPY`, the default).
fn replaces_metadata(d: Option<&MetadataDirective>) -> Result<bool, ApiError> {
    match d.map(|d| d.as_str()) {
        None | Some(MetadataDirective::COPY) => Ok(false),
        Some(MetadataDirective::REPLACE) => Ok(true),
        Some(_) => Err(ApiError::InvalidArgument(
            "Unknown metadata directive.".into(),
        )),
    }
}

pub(super) async fn copy_object(
    s: &Tessera,
    req: S3Request<CopyObjectInput>,
) -> Result<CopyObjectOutput, ApiError> {
    let caller = s.caller(&req)?;
    let mut input = req.input;
    check_key(&input.key)?;
    let (src_bucket, src_key) = copy_source(&input.copy_source)?;
    let replace = replaces_metadata(input.metadata_directive.as_ref())?;
    let new_metadata = if replace {
        Some(user_metadata(input.metadata.take())?)
    } else {
        None
    };
    if src_bucket == input.bucket && src_key == input.key && !replace {
        return Err(ApiError::InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes.".into(),
        ));
    }
    // Read access to the source, write access to the target.
    let source = get::load(s, &caller, &src_bucket, &src_key).await?;
    s.authorize(&caller, &input.bucket, Access::Write).await?;
    check_source_conditions(
        &source,
        input.copy_source_if_match.as_ref(),
        input.copy_source_if_none_match.as_ref(),
    )?;

    let (content_type, headers, user_metadata) = match new_metadata {
        Some(meta) => (
            input.content_type.take().filter(|c| !c.is_empty()),
            standard_headers(
                input.cache_control.take(),
                input.content_disposition.take(),
                input.content_encoding.take(),
                input.content_language.take(),
                input.expires.take(),
            ),
            meta,
        ),
        None => (
            source.content_type.clone(),
            source.headers.clone(),
            source.user_metadata.clone(),
        ),
    };
    // Tags follow x-amz-tagging-directive (COPY by default), whatever the
    // metadata directive did.
    let mut headers = headers;
    let replace_tags = input
        .tagging_directive
        .as_ref()
        .is_some_and(|d| d.as_str().eq_ignore_ascii_case("REPLACE"));
    if replace_tags {
        super::tagging::apply(&mut headers, input.tagging.as_deref())?;
    } else {
        let source_tags = source.headers.get(super::tagging::TAGGING_KEY).cloned();
        super::tagging::apply(&mut headers, source_tags.as_deref())?;
    }
    let size = source.size;
    // The copy's checksum: the algorithm asked for, else the source's
    // (recomputed over the whole object: a copy is one part).
    let algorithm = match input.checksum_algorithm.as_ref() {
        Some(a) => Some(Algorithm::parse(a.as_str()).ok_or_else(|| {
            ApiError::InvalidRequest(
                "Checksum algorithm provided is unsupported. Please try again with any of the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]".into(),
            )
        })?),
        None => checksum::primary(&source.checksums).map(|(a, _, _)| a),
    };
    let algorithms = checksum_algorithms([algorithm]);
    let (data, md5, checksums, guard) = match &source.data {
        ObjectData::Inline(bytes) => {
            let bytes = bytes.clone();
            let md5: [u8; 16] = Md5::digest(&bytes).into();
            let mut h = Hashers::new(algorithms.iter().copied());
            h.update(&bytes);
            (ObjectData::Inline(bytes), md5, h.finish().to_map(), None)
        }
        ObjectData::Parts(_) => {
            let body = source_body(s, source, 0..size);
            let limits = WriteLimits {
                expected: Some(size),
                max_size: s.config.max_object_size,
                inline_threshold: s.config.inline_threshold,
            };
            let (outcome, guard) = write_body_with(&s.dp, body, limits, &algorithms).await?;
            let checksums = outcome.checksums.to_map();
            let data = match outcome.body {
                WrittenBody::Inline(b) => ObjectData::Inline(b),
                WrittenBody::Stripes(stripes) => ObjectData::Parts(vec![tessera_types::Part {
                    number: 1,
                    size: outcome.size,
                    etag: hex::encode(outcome.md5),
                    checksums: checksums.clone(),
                    stripes,
                }]),
            };
            (data, outcome.md5, checksums, Some(guard))
        }
    };
    let etag = hex::encode(md5);
    let created = tessera_types::now_millis();
    let manifest = ObjectManifest {
        layout: MANIFEST_LAYOUT,
        bucket: input.bucket,
        key: input.key,
        version_id: hex::encode(rand::random::<[u8; 16]>()),
        size,
        etag: etag.clone(),
        content_type,
        headers,
        user_metadata,
        checksums,
        created,
        data,
    };
    let mut result = CopyObjectResult {
        e_tag: Some(ETag::Strong(etag)),
        last_modified: Some(timestamp(created)),
        ..Default::default()
    };
    if let Some((a, v, t)) = checksum::primary(&manifest.checksums) {
        set_checksum!(result, Some((a, v)));
        result.checksum_type = Some(checksum_type(t));
    }
    commit_manifest(s, &caller, manifest, WriteCondition::None, guard).await?;
    Ok(CopyObjectOutput {
        copy_object_result: Some(result),
        ..Default::default()
    })
}

/// `x-amz-copy-source-if-match` / `-if-none-match`: a failed condition is
/// 412 PreconditionFailed.
pub(super) fn check_source_conditions(
    source: &ObjectManifest,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> Result<(), ApiError> {
    let matches = |cond: &ETagCondition| match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == source.etag,
    };
    if if_match.is_some_and(|c| !matches(c)) || if_none_match.is_some_and(matches) {
        return Err(tessera_types::meta::MetaError::PreconditionFailed.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_sources() {
        let cs = |h: &str| {
            CopySource::parse(h)
                .map_err(|_| ())
                .and_then(|c| copy_source(&c).map_err(|_| ()))
        };
        assert_eq!(cs("bkt/k").unwrap(), ("bkt".to_string(), "k".to_string()));
        assert_eq!(
            cs("/bkt/a%20b").unwrap(),
            ("bkt".to_string(), "a b".to_string())
        );
        assert!(cs("").is_err());
        assert!(cs("/").is_err());
        assert!(cs("bucket-only").is_err());
        assert!(cs("bkt/").is_err());
    }

    #[test]
    fn metadata_directive() {
        assert!(!replaces_metadata(None).unwrap());
        let copy = MetadataDirective::from_static(MetadataDirective::COPY);
        let replace = MetadataDirective::from_static(MetadataDirective::REPLACE);
        assert!(!replaces_metadata(Some(&copy)).unwrap());
        assert!(replaces_metadata(Some(&replace)).unwrap());
        let other = MetadataDirective::from_static("MOVE");
        assert!(replaces_metadata(Some(&other)).is_err());
    }
}
