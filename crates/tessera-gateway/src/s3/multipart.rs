//! Multipart uploads: Create, UploadPart, UploadPartCopy, Complete, Abort,
//! ListParts and ListMultipartUploads.
//!
//! Each part streams through the stripe writer (never inline, so that a
//! part is always a list of stripes) and is recorded in meta with its
//! stripes; re-uploading a part number replaces it. Complete builds the
//! object manifest from the stored parts the client names and commits it
//! in one meta command that also removes the upload. Stripes that no part
//! or object references any more (replaced parts, parts left out of the
//! object, aborted uploads) come back from meta and are deleted after the
//! GC grace period.

use std::collections::BTreeMap;
use std::ops::Range;

use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::S3Request;
use tessera_types::manifest::MANIFEST_LAYOUT;
use tessera_types::meta::{
    ListUploadsQuery, MetaCommand, MetaError, MetaQuery, MetaReply, PartRecord, QueryReply, Upload,
};
use tessera_types::{ObjectData, ObjectManifest, Part};

use super::copy::{check_source_conditions, copy_source, source_body};
use super::put::{
    committed, parse_md5, standard_headers, user_metadata, write_condition, BodyStream,
};
use super::{get, timestamp, Tessera};
use crate::error::ApiError;
use crate::names::check_key;
use crate::pipeline::gc;
use crate::pipeline::write::{write_body, WriteGuard, WriteLimits, WriteOutcome, WrittenBody};

/// Part numbers S3 accepts.
pub const MAX_PART_NUMBER: u32 = 10_000;
/// Smallest size of every part but the last (S3's limit).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// Largest page of ListParts and ListMultipartUploads.
const MAX_PAGE: i32 = 1000;

/// A part number from the request, checked.
fn part_number(n: i32) -> Result<u32, ApiError> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_PART_NUMBER).contains(n))
        .ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive"
            ))
        })
}

/// A page size from the request: absent = 1000, negative = error.
fn page_size(n: Option<i32>, what: &str) -> Result<u32, ApiError> {
    match n {
        None => Ok(MAX_PAGE as u32),
        Some(n) if n < 0 => Err(ApiError::InvalidArgument(format!(
            "{what} must be a non-negative integer"
        ))),
        Some(n) => Ok(n.min(MAX_PAGE) as u32),
    }
}

/// The upload, if it exists (a linearizable read).
async fn load_upload(
    s: &Tessera,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<Upload, ApiError> {
    let q = MetaQuery::GetUpload {
        bucket: bucket.to_string(),
        key: key.to_string(),
        upload_id: upload_id.to_string(),
    };
    match s.query(&q).await? {
        QueryReply::Upload(Some(u)) => Ok(u),
        QueryReply::Upload(None) => Err(MetaError::NoSuchUpload.into()),
        _ => Err(ApiError::UnexpectedReply("GetUpload")),
    }
}

/// Schedules the deletion of stripes that meta released.
fn release(s: &Tessera, reply: &MetaReply) {
    if let MetaReply::Released(stripes) = reply {
        gc::delete_stripes_later(&s.dp, stripes.iter());
    }
}

pub(super) async fn create_multipart_upload(
    s: &Tessera,
    req: S3Request<CreateMultipartUploadInput>,
) -> Result<CreateMultipartUploadOutput, ApiError> {
    let caller = s.caller(&req)?;
    let mut input = req.input;
    check_key(&input.key)?;
    let user_metadata = user_metadata(input.metadata.take())?;
    s.authorize(&caller, &input.bucket).await?;
    let upload = Upload {
        bucket: input.bucket.clone(),
        key: input.key.clone(),
        upload_id: hex::encode(rand::random::<[u8; 16]>()),
        owner: caller,
        initiated: tessera_types::now_millis(),
        content_type: input.content_type.filter(|c| !c.is_empty()),
        headers: standard_headers(
            input.cache_control,
            input.content_disposition,
            input.content_encoding,
            input.content_language,
            input.expires,
        ),
        user_metadata,
    };
    let upload_id = upload.upload_id.clone();
    s.write(&MetaCommand::CreateUpload { upload }).await?;
    Ok(CreateMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(upload_id),
        ..Default::default()
    })
}

/// Records a written part in meta; on success the part's shards are kept
/// and the part it replaced is scheduled for deletion.
async fn store_part(
    s: &Tessera,
    upload: &Upload,
    number: u32,
    outcome: WriteOutcome,
    guard: WriteGuard,
) -> Result<PartRecord, ApiError> {
    let stripes = match outcome.body {
        WrittenBody::Stripes(stripes) => stripes,
        WrittenBody::Inline(b) if b.is_empty() => Vec::new(),
        WrittenBody::Inline(_) => {
            return Err(ApiError::Internal("a part was written inline".into()));
        }
    };
    let record = PartRecord {
        part: Part {
            number,
            size: outcome.size,
            etag: hex::encode(outcome.md5),
            stripes,
        },
        uploaded: tessera_types::now_millis(),
    };
    let cmd = MetaCommand::PutPart {
        bucket: upload.bucket.clone(),
        key: upload.key.clone(),
        upload_id: upload.upload_id.clone(),
        part: record.clone(),
    };
    match s.meta.write(&cmd).await {
        // The upload went away (aborted or completed) while the part was
        // written: the dropped guard deletes its shards.
        Ok(MetaReply::Err(e)) => Err(e.into()),
        Ok(reply) => {
            guard.disarm();
            release(s, &reply);
            Ok(record)
        }
        Err(e) => {
            // Maybe recorded: keep the shards (GC finds them if not).
            guard.disarm();
            Err(ApiError::from_rpc(e))
        }
    }
}

/// Limits of a part's write: never inline, at most one object's size.
fn part_limits(s: &Tessera, expected: Option<u64>) -> WriteLimits {
    WriteLimits {
        expected,
        max_size: s.config.max_object_size,
        inline_threshold: 0,
    }
}

pub(super) async fn upload_part(
    s: &Tessera,
    req: S3Request<UploadPartInput>,
) -> Result<UploadPartOutput, ApiError> {
    let caller = s.caller(&req)?;
    let mut input = req.input;
    check_key(&input.key)?;
    let number = part_number(input.part_number)?;
    let content_md5 = input.content_md5.as_deref().map(parse_md5).transpose()?;
    let expected = match input.content_length {
        Some(n) if n < 0 => {
            return Err(ApiError::InvalidArgument("negative Content-Length".into()))
        }
        Some(n) => Some(n as u64),
        None => None,
    };
    // Authorization and the upload before a single body byte is read.
    s.authorize(&caller, &input.bucket).await?;
    let upload = load_upload(s, &input.bucket, &input.key, &input.upload_id).await?;
    let body: BodyStream = match input.body.take() {
        Some(b) => futures::StreamExt::boxed(b),
        None => futures::StreamExt::boxed(futures::stream::empty()),
    };
    let (outcome, guard) = write_body(&s.dp, body, part_limits(s, expected)).await?;
    if let Some(want) = content_md5 {
        if want != outcome.md5 {
            return Err(ApiError::BadDigest);
        }
    }
    let record = store_part(s, &upload, number, outcome, guard).await?;
    Ok(UploadPartOutput {
        e_tag: Some(ETag::Strong(record.part.etag)),
        ..Default::default()
    })
}

/// `x-amz-copy-source-range: bytes=first-last` (both required, inclusive)
/// within an object of `size` bytes.
fn copy_range(header: Option<&str>, size: u64) -> Result<Range<u64>, ApiError> {
    let Some(h) = header else {
        return Ok(0..size);
    };
    let bad = || {
        ApiError::InvalidArgument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy".into(),
        )
    };
    let spec = h.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (first, last) = spec.split_once('-').ok_or_else(bad)?;
    let first: u64 = first.trim().parse().map_err(|_| bad())?;
    let last: u64 = last.trim().parse().map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    if last >= size {
        return Err(ApiError::InvalidRange);
    }
    Ok(first..last + 1)
}

pub(super) async fn upload_part_copy(
    s: &Tessera,
    req: S3Request<UploadPartCopyInput>,
) -> Result<UploadPartCopyOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    check_key(&input.key)?;
    let number = part_number(input.part_number)?;
    let (src_bucket, src_key) = copy_source(&input.copy_source)?;
    // The caller must be able to read the source and write the target.
    let source = get::load(s, &caller, &src_bucket, &src_key).await?;
    s.authorize(&caller, &input.bucket).await?;
    check_source_conditions(
        &source,
        input.copy_source_if_match.as_ref(),
        input.copy_source_if_none_match.as_ref(),
    )?;
    let upload = load_upload(s, &input.bucket, &input.key, &input.upload_id).await?;
    let range = copy_range(input.copy_source_range.as_deref(), source.size)?;
    let len = range.end - range.start;
    let body = source_body(s, source, range);
    let (outcome, guard) = write_body(&s.dp, body, part_limits(s, Some(len))).await?;
    let record = store_part(s, &upload, number, outcome, guard).await?;
    Ok(UploadPartCopyOutput {
        copy_part_result: Some(CopyPartResult {
            e_tag: Some(ETag::Strong(record.part.etag)),
            last_modified: Some(timestamp(record.uploaded)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The ETag of a multipart object: hex MD5 of the binary MD5s of its
/// parts, then `-` and the number of parts.
pub fn multipart_etag(parts: &[Part]) -> String {
    let mut md5 = Md5::new();
    for p in parts {
        let mut raw = [0u8; 16];
        if hex::decode_to_slice(&p.etag, &mut raw).is_ok() {
            md5.update(raw);
        }
    }
    format!("{}-{}", hex::encode(md5.finalize()), parts.len())
}

/// The parts of the object, checked against what the client named: in
/// strictly ascending order, each stored with the named ETag, every one
/// but the last at least [`MIN_PART_SIZE`].
fn choose_parts(
    named: &[CompletedPart],
    mut stored: BTreeMap<u32, PartRecord>,
) -> Result<Vec<Part>, ApiError> {
    if named.is_empty() {
        return Err(ApiError::MalformedXml(
            "CompleteMultipartUpload names no parts".into(),
        ));
    }
    if named.len() > MAX_PART_NUMBER as usize {
        return Err(ApiError::MalformedXml("more than 10000 parts".into()));
    }
    let mut numbers = Vec::with_capacity(named.len());
    for p in named {
        let n = p
            .part_number
            .ok_or_else(|| ApiError::MalformedXml("a part has no PartNumber".into()))?;
        numbers.push(part_number(n)?);
    }
    if numbers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ApiError::InvalidPartOrder);
    }
    let mut parts = Vec::with_capacity(named.len());
    for (p, &number) in named.iter().zip(&numbers) {
        let rec = stored
            .remove(&number)
            .ok_or(ApiError::InvalidPart(number))?;
        let want = p.e_tag.as_ref().map(|e| e.value().trim_matches('"'));
        if want != Some(rec.part.etag.as_str()) {
            return Err(ApiError::InvalidPart(number));
        }
        parts.push(rec.part);
    }
    if let Some(small) = parts[..parts.len() - 1]
        .iter()
        .find(|p| p.size < MIN_PART_SIZE)
    {
        return Err(ApiError::EntityTooSmall {
            number: small.number,
            size: small.size,
            min: MIN_PART_SIZE,
        });
    }
    Ok(parts)
}

pub(super) async fn complete_multipart_upload(
    s: &Tessera,
    req: S3Request<CompleteMultipartUploadInput>,
) -> Result<CompleteMultipartUploadOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    check_key(&input.key)?;
    let condition = write_condition(input.if_none_match.as_ref(), input.if_match.as_ref())?;
    s.authorize(&caller, &input.bucket).await?;
    let upload = load_upload(s, &input.bucket, &input.key, &input.upload_id).await?;
    let q = MetaQuery::ListParts {
        bucket: input.bucket.clone(),
        key: input.key.clone(),
        upload_id: input.upload_id.clone(),
        marker: 0,
        max_parts: 0,
    };
    let stored: BTreeMap<u32, PartRecord> = match s.query(&q).await? {
        QueryReply::Parts(page) => page.parts.into_iter().map(|r| (r.part.number, r)).collect(),
        _ => return Err(ApiError::UnexpectedReply("ListParts")),
    };
    let named = input
        .multipart_upload
        .and_then(|m| m.parts)
        .unwrap_or_default();
    let parts = choose_parts(&named, stored)?;
    let etag = multipart_etag(&parts);
    let manifest = ObjectManifest {
        layout: MANIFEST_LAYOUT,
        bucket: input.bucket.clone(),
        key: input.key.clone(),
        version_id: hex::encode(rand::random::<[u8; 16]>()),
        size: parts.iter().map(|p| p.size).sum(),
        etag: etag.clone(),
        content_type: upload.content_type,
        headers: upload.headers,
        user_metadata: upload.user_metadata,
        checksums: BTreeMap::new(),
        created: tessera_types::now_millis(),
        data: ObjectData::Parts(parts),
    };
    let version = manifest.version_id.clone();
    let cmd = MetaCommand::CompleteUpload {
        upload_id: input.upload_id.clone(),
        manifest,
        condition,
    };
    match s.meta.write(&cmd).await.map_err(ApiError::from_rpc)? {
        // A retried command whose first try committed finds no upload.
        MetaReply::Err(MetaError::NoSuchUpload)
            if committed(s, &input.bucket, &input.key, &version).await => {}
        MetaReply::Err(e) => return Err(e.into()),
        reply => release(s, &reply),
    }
    Ok(CompleteMultipartUploadOutput {
        location: Some(format!("/{}/{}", input.bucket, input.key)),
        bucket: Some(input.bucket),
        key: Some(input.key),
        e_tag: Some(ETag::Strong(etag)),
        ..Default::default()
    })
}

pub(super) async fn abort_multipart_upload(
    s: &Tessera,
    req: S3Request<AbortMultipartUploadInput>,
) -> Result<AbortMultipartUploadOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    check_key(&input.key)?;
    s.authorize(&caller, &input.bucket).await?;
    let reply = s
        .write(&MetaCommand::AbortUpload {
            bucket: input.bucket,
            key: input.key,
            upload_id: input.upload_id,
        })
        .await?;
    release(s, &reply);
    Ok(AbortMultipartUploadOutput::default())
}

fn initiator(id: &str) -> Initiator {
    Initiator {
        display_name: Some(id.to_string()),
        id: Some(id.to_string()),
    }
}

fn owner(id: &str) -> Owner {
    Owner {
        display_name: Some(id.to_string()),
        id: Some(id.to_string()),
    }
}

pub(super) async fn list_parts(
    s: &Tessera,
    req: S3Request<ListPartsInput>,
) -> Result<ListPartsOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    check_key(&input.key)?;
    let max = page_size(input.max_parts, "max-parts")?;
    let marker = match input.part_number_marker {
        None => 0,
        Some(n) => u32::try_from(n).map_err(|_| {
            ApiError::InvalidArgument("part-number-marker must be a non-negative integer".into())
        })?,
    };
    s.authorize(&caller, &input.bucket).await?;
    let upload = load_upload(s, &input.bucket, &input.key, &input.upload_id).await?;
    let page = if max == 0 {
        tessera_types::meta::PartsPage::default()
    } else {
        let q = MetaQuery::ListParts {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            upload_id: input.upload_id.clone(),
            marker,
            max_parts: max,
        };
        match s.query(&q).await? {
            QueryReply::Parts(page) => page,
            _ => return Err(ApiError::UnexpectedReply("ListParts")),
        }
    };
    let parts: Vec<s3s::dto::Part> = page
        .parts
        .iter()
        .map(|r| s3s::dto::Part {
            e_tag: Some(ETag::Strong(r.part.etag.clone())),
            last_modified: Some(timestamp(r.uploaded)),
            part_number: Some(r.part.number as i32),
            size: Some(r.part.size as i64),
            ..Default::default()
        })
        .collect();
    Ok(ListPartsOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(input.upload_id),
        initiator: Some(initiator(&upload.owner)),
        owner: Some(owner(&upload.owner)),
        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
        max_parts: Some(max as i32),
        part_number_marker: Some(marker as i32),
        next_part_number_marker: page
            .next_marker
            .or_else(|| page.parts.last().map(|p| p.part.number))
            .map(|n| n as i32),
        is_truncated: Some(page.is_truncated),
        parts: Some(parts),
        ..Default::default()
    })
}

pub(super) async fn list_multipart_uploads(
    s: &Tessera,
    req: S3Request<ListMultipartUploadsInput>,
) -> Result<ListMultipartUploadsOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    let max = page_size(input.max_uploads, "max-uploads")?;
    s.authorize(&caller, &input.bucket).await?;
    let q = ListUploadsQuery {
        bucket: input.bucket.clone(),
        prefix: input.prefix.clone().unwrap_or_default(),
        key_marker: input.key_marker.clone().unwrap_or_default(),
        upload_id_marker: input.upload_id_marker.clone().unwrap_or_default(),
        max_uploads: max,
        delimiter: input.delimiter.clone().unwrap_or_default(),
    };
    let page = if max == 0 {
        tessera_types::meta::UploadsPage::default()
    } else {
        match s.query(&MetaQuery::ListUploads(q)).await? {
            QueryReply::Uploads(page) => page,
            _ => return Err(ApiError::UnexpectedReply("ListUploads")),
        }
    };
    let uploads: Vec<MultipartUpload> = page
        .uploads
        .iter()
        .map(|u| MultipartUpload {
            initiated: Some(timestamp(u.initiated)),
            initiator: Some(initiator(&u.owner)),
            key: Some(u.key.clone()),
            owner: Some(owner(&u.owner)),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            upload_id: Some(u.upload_id.clone()),
            ..Default::default()
        })
        .collect();
    Ok(ListMultipartUploadsOutput {
        bucket: Some(input.bucket),
        prefix: input.prefix,
        delimiter: input.delimiter,
        key_marker: input.key_marker,
        upload_id_marker: input.upload_id_marker,
        max_uploads: Some(max as i32),
        is_truncated: Some(page.is_truncated),
        next_key_marker: page.next_key_marker,
        next_upload_id_marker: page.next_upload_id_marker,
        uploads: Some(uploads),
        common_prefixes: (!page.common_prefixes.is_empty()).then(|| {
            page.common_prefixes
                .into_iter()
                .map(|p| CommonPrefix { prefix: Some(p) })
                .collect()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, size: u64, etag: &str) -> PartRecord {
        PartRecord {
            part: Part {
                number,
                size,
                etag: etag.to_string(),
                stripes: vec![],
            },
            uploaded: 0,
        }
    }

    fn named(number: i32, etag: &str) -> CompletedPart {
        CompletedPart {
            part_number: Some(number),
            e_tag: Some(ETag::Strong(etag.to_string())),
            ..Default::default()
        }
    }

    #[test]
    fn part_numbers() {
        assert!(part_number(0).is_err());
        assert!(part_number(-1).is_err());
        assert!(part_number(10_001).is_err());
        assert_eq!(part_number(1).unwrap(), 1);
        assert_eq!(part_number(10_000).unwrap(), 10_000);
    }

    #[test]
    fn copy_ranges() {
        assert_eq!(copy_range(None, 10).unwrap(), 0..10);
        assert_eq!(copy_range(Some("bytes=2-5"), 10).unwrap(), 2..6);
        assert!(matches!(
            copy_range(Some("bytes=2-10"), 10),
            Err(ApiError::InvalidRange)
        ));
        assert!(copy_range(Some("bytes=5-2"), 10).is_err());
        assert!(copy_range(Some("bytes=2-"), 10).is_err());
        assert!(copy_range(Some("2-5"), 10).is_err());
    }

    #[test]
    fn parts_are_checked() {
        let big = MIN_PART_SIZE;
        let stored = || {
            BTreeMap::from([
                (1, part(1, big, "aa")),
                (2, part(2, big, "bb")),
                (3, part(3, 1, "cc")),
            ])
        };
        let ok = choose_parts(&[named(1, "aa"), named(3, "\"cc\"")], stored()).unwrap();
        assert_eq!(ok.iter().map(|p| p.number).collect::<Vec<_>>(), vec![1, 3]);
        assert!(matches!(
            choose_parts(&[named(2, "bb"), named(1, "aa")], stored()),
            Err(ApiError::InvalidPartOrder)
        ));
        assert!(matches!(
            choose_parts(&[named(1, "aa"), named(1, "aa")], stored()),
            Err(ApiError::InvalidPartOrder)
        ));
        assert!(matches!(
            choose_parts(&[named(1, "xx")], stored()),
            Err(ApiError::InvalidPart(1))
        ));
        assert!(matches!(
            choose_parts(&[named(4, "aa")], stored()),
            Err(ApiError::InvalidPart(4))
        ));
        assert!(matches!(
            choose_parts(&[named(3, "cc"), named(4, "dd")], stored()),
            Err(ApiError::InvalidPart(4))
        ));
        let mut small = stored();
        small.insert(1, part(1, big - 1, "aa"));
        assert!(matches!(
            choose_parts(&[named(1, "aa"), named(2, "bb")], small),
            Err(ApiError::EntityTooSmall { number: 1, .. })
        ));
        assert!(matches!(
            choose_parts(&[], stored()),
            Err(ApiError::MalformedXml(_))
        ));
    }

    #[test]
    fn etag_of_parts() {
        // MD5 of the two binary MD5s, then "-2".
        let a = Md5::digest(b"a");
        let b = Md5::digest(b"b");
        let mut both = Vec::new();
        both.extend_from_slice(&a);
        both.extend_from_slice(&b);
        let want = format!("{}-2", hex::encode(Md5::digest(&both)));
        let parts = [
            part(1, 1, &hex::encode(a)).part,
            part(2, 1, &hex::encode(b)).part,
        ];
        assert_eq!(multipart_etag(&parts), want);
    }
}
