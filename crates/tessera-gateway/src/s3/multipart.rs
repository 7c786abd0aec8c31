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
//!
//! Checksums: CreateMultipartUpload fixes the upload's algorithm and type
//! (kept in the upload's header map under `x-tessera-checksum-*` keys,
//! which never reach the object). Every part gets the default CRC64NVME and
//! the upload's algorithm computed while it streams, plus any value the
//! client sent, verified before the part is recorded. Complete checks the
//! part checksums the client lists and derives the object's checksums from
//! the parts' (COMPOSITE or FULL_OBJECT), without reading the data again.

use std::collections::BTreeMap;
use std::ops::Range;

use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::S3Request;
use tessera_proto::RpcError;
use tessera_types::manifest::MANIFEST_LAYOUT;
use tessera_types::meta::{
    ListUploadsQuery, MetaCommand, MetaError, MetaQuery, MetaReply, PartRecord, QueryReply, Upload,
};
use tessera_types::{ObjectData, ObjectManifest, Part};

use super::copy::{check_source_conditions, copy_source, source_body};
use super::put::{checksum_algorithms, checksum_type, declared_length};
use super::put::{
    committed, parse_md5, standard_headers, user_metadata, write_condition, BodyStream,
};
use super::{get, timestamp, Access, Tessera};
use crate::checksum::{
    self, get_checksums, set_checksum, Algorithm, ChecksumType as SumType, RequestChecksum,
};
use crate::error::ApiError;
use crate::names::check_key;
use crate::pipeline::gc;
use crate::pipeline::write::{write_body_with, WriteGuard, WriteLimits, WriteOutcome, WrittenBody};

/// Keys of an upload's header map that hold its checksum algorithm and
/// type (internal: stripped when the object is built).
const UPLOAD_CHECKSUM_ALGORITHM: &str = "x-tessera-checksum-algorithm";
const UPLOAD_CHECKSUM_TYPE: &str = "x-tessera-checksum-type";

/// The checksum algorithm (if the client named one) and type of an
/// upload; without an algorithm the object gets a FULL_OBJECT CRC64NVME.
fn upload_checksum(upload: &Upload) -> (Option<Algorithm>, SumType) {
    let alg = upload
        .headers
        .get(UPLOAD_CHECKSUM_ALGORITHM)
        .and_then(|a| Algorithm::parse(a));
    let ty = upload
        .headers
        .get(UPLOAD_CHECKSUM_TYPE)
        .and_then(|t| SumType::parse(t))
        .unwrap_or(SumType::FullObject);
    (alg, ty)
}

/// CreateMultipartUpload's ChecksumAlgorithm and ChecksumType, checked.
fn requested_checksum(
    algorithm: Option<&ChecksumAlgorithm>,
    ty: Option<&ChecksumType>,
) -> Result<Option<(Algorithm, SumType)>, ApiError> {
    let alg = algorithm
        .map(|a| {
            Algorithm::parse(a.as_str()).ok_or_else(|| {
                ApiError::InvalidRequest(
                    "Checksum algorithm provided is unsupported. Please try again with any of the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]".into(),
                )
            })
        })
        .transpose()?;
    let ty = ty
        .map(|t| {
            SumType::parse(t.as_str()).ok_or_else(|| {
                ApiError::InvalidRequest("Value for x-amz-checksum-type header is invalid.".into())
            })
        })
        .transpose()?;
    match (alg, ty) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ApiError::InvalidRequest(
            "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.".into(),
        )),
        (Some(a), t) => {
            let t = t.unwrap_or(a.default_type());
            if !a.supports(t) {
                return Err(ApiError::InvalidRequest(format!(
                    "The {} checksum type cannot be used with the {} checksum algorithm.",
                    t.name(),
                    a.name().to_ascii_lowercase()
                )));
            }
            Ok(Some((a, t)))
        }
    }
}

/// The raw values of algorithm `a` of every part, with the parts' sizes;
/// None if a part has none (written before checksums were kept).
fn part_values(parts: &[Part], a: Algorithm) -> Option<Vec<(Vec<u8>, u64)>> {
    parts
        .iter()
        .map(|p| {
            let v = p.checksums.get(a.name())?;
            let raw = checksum::decode_value(a, v, "part checksum").ok()?;
            Some((raw, p.size))
        })
        .collect()
}

/// The object checksums of a multipart upload from its parts': the
/// FULL_OBJECT CRC64NVME, and the upload's algorithm of its type.
fn object_checksums(
    parts: &[Part],
    alg: Option<Algorithm>,
    ty: SumType,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut sums = BTreeMap::new();
    let default = Algorithm::Crc64Nvme;
    if let Some(values) = part_values(parts, default) {
        let v = checksum::combine_parts(default, SumType::FullObject, &values)?;
        sums.insert(default.name().to_string(), v);
    }
    if let Some(a) = alg.filter(|&a| a != default) {
        if let Some(values) = part_values(parts, a) {
            sums.insert(
                a.name().to_string(),
                checksum::combine_parts(a, ty, &values)?,
            );
        }
    }
    Ok(sums)
}

/// The checksum answered for a part: the one the client sent, else the
/// upload's, else the default.
fn part_answer(
    part: &Part,
    sent: Option<Algorithm>,
    upload: Option<Algorithm>,
) -> Option<(Algorithm, String)> {
    [sent, upload, Some(Algorithm::Crc64Nvme)]
        .into_iter()
        .flatten()
        .find_map(|a| part.checksums.get(a.name()).map(|v| (a, v.clone())))
}

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
    let sum = requested_checksum(
        input.checksum_algorithm.as_ref(),
        input.checksum_type.as_ref(),
    )?;
    s.authorize(&caller, &input.bucket, Access::Write).await?;
    let mut headers = standard_headers(
        input.cache_control,
        input.content_disposition,
        input.content_encoding,
        input.content_language,
        input.expires,
    );
    super::tagging::apply(&mut headers, input.tagging.as_deref())?;
    if let Some((a, t)) = sum {
        headers.insert(UPLOAD_CHECKSUM_ALGORITHM.into(), a.name().into());
        headers.insert(UPLOAD_CHECKSUM_TYPE.into(), t.name().into());
    }
    let upload = Upload {
        bucket: input.bucket.clone(),
        key: input.key.clone(),
        upload_id: hex::encode(rand::random::<[u8; 16]>()),
        owner: caller,
        initiated: tessera_types::now_millis(),
        content_type: input.content_type.filter(|c| !c.is_empty()),
        headers,
        user_metadata,
    };
    let upload_id = upload.upload_id.clone();
    s.write(&MetaCommand::CreateUpload { upload }).await?;
    Ok(CreateMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(upload_id),
        checksum_algorithm: sum.map(|(a, _)| ChecksumAlgorithm::from(a.name().to_string())),
        checksum_type: sum.map(|(_, t)| checksum_type(t)),
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
            checksums: outcome.checksums.to_map(),
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
    tessera_observe::failpoint::hit("gateway.part.after_shards");
    match s.meta.write(&cmd).await {
        // The upload went away (aborted or completed) while the part was
        // written: the dropped guard deletes its shards.
        Ok(MetaReply::Err(e)) => Err(e.into()),
        Ok(reply) => {
            guard.disarm();
            release(s, &reply);
            Ok(record)
        }
        Err(e @ RpcError::NoSpace(_)) => {
            // Meta refused the write before proposing it (its disk is
            // nearly full): as for a PUT, unless this was the retry of a
            // try whose answer was lost and which was recorded, nothing
            // references the shards, and the dropped guard deletes them
            // now (retried parts would otherwise eat the space deletes
            // need until the orphan scan).
            match part_recorded(s, upload, &record.part).await {
                Ok(true) => {
                    guard.disarm();
                    Ok(record)
                }
                Ok(false) => Err(ApiError::from_rpc(e)),
                Err(_) => {
                    // Unknown: keep the shards, never claim success.
                    guard.disarm();
                    Err(ApiError::from_rpc(e))
                }
            }
        }
        Err(e) => {
            // Maybe recorded: keep the shards (GC finds them if not).
            guard.disarm();
            Err(ApiError::from_rpc(e))
        }
    }
}

/// Whether `part` (this write of it: its stripes are new) is the one
/// meta has for its number; an error when meta cannot be asked.
async fn part_recorded(s: &Tessera, upload: &Upload, part: &Part) -> Result<bool, RpcError> {
    let q = MetaQuery::ListParts {
        bucket: upload.bucket.clone(),
        key: upload.key.clone(),
        upload_id: upload.upload_id.clone(),
        marker: part.number.saturating_sub(1),
        max_parts: 1,
    };
    Ok(match s.meta.query(&q).await? {
        QueryReply::Parts(page) => page.parts.first().is_some_and(|r| {
            r.part.number == part.number
                && r.part
                    .stripes
                    .iter()
                    .map(|st| st.id)
                    .eq(part.stripes.iter().map(|st| st.id))
        }),
        _ => false,
    })
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
    let sum = RequestChecksum::from_headers(&req.headers)?;
    let expected = declared_length(input.content_length, &req.headers)?;
    // Authorization and the upload before a single body byte is read.
    s.authorize(&caller, &input.bucket, Access::Write).await?;
    let upload = load_upload(s, &input.bucket, &input.key, &input.upload_id).await?;
    let (upload_alg, _) = upload_checksum(&upload);
    let body: BodyStream = match input.body.take() {
        Some(b) => futures::StreamExt::boxed(b),
        None => futures::StreamExt::boxed(futures::stream::empty()),
    };
    let algorithms = checksum_algorithms([upload_alg, sum.algorithm]);
    let (outcome, guard) =
        write_body_with(&s.dp, body, part_limits(s, expected), &algorithms).await?;
    // Checked before the part is recorded; the dropped guard deletes the
    // shards of a part that fails.
    if let Some(want) = content_md5 {
        if want != outcome.md5 {
            return Err(ApiError::BadDigest);
        }
    }
    sum.verify(&outcome.checksums, req.trailing_headers.as_ref())?;
    let record = store_part(s, &upload, number, outcome, guard).await?;
    let mut out = UploadPartOutput {
        e_tag: Some(ETag::Strong(record.part.etag.clone())),
        ..Default::default()
    };
    set_checksum!(out, part_answer(&record.part, sum.algorithm, upload_alg));
    Ok(out)
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
    s.authorize(&caller, &input.bucket, Access::Write).await?;
    check_source_conditions(
        &source,
        input.copy_source_if_match.as_ref(),
        input.copy_source_if_none_match.as_ref(),
    )?;
    let upload = load_upload(s, &input.bucket, &input.key, &input.upload_id).await?;
    let range = copy_range(input.copy_source_range.as_deref(), source.size)?;
    let len = range.end - range.start;
    let body = source_body(s, source, range);
    let (upload_alg, _) = upload_checksum(&upload);
    let algorithms = checksum_algorithms([upload_alg]);
    let (outcome, guard) =
        write_body_with(&s.dp, body, part_limits(s, Some(len)), &algorithms).await?;
    let record = store_part(s, &upload, number, outcome, guard).await?;
    let mut result = CopyPartResult {
        e_tag: Some(ETag::Strong(record.part.etag.clone())),
        last_modified: Some(timestamp(record.uploaded)),
        ..Default::default()
    };
    set_checksum!(result, part_answer(&record.part, None, upload_alg));
    Ok(UploadPartCopyOutput {
        copy_part_result: Some(result),
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
        // A part checksum the client lists must be the one stored.
        for (a, v) in get_checksums!(p) {
            if let Some(v) = v {
                if rec.part.checksums.get(a.name()).map(String::as_str) != Some(v.trim()) {
                    return Err(ApiError::InvalidPart(number));
                }
            }
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
    s.authorize(&caller, &input.bucket, Access::Write).await?;
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
    let (alg, ty) = upload_checksum(&upload);
    if let Some(t) = input.checksum_type.as_ref() {
        if SumType::parse(t.as_str()) != Some(ty) {
            return Err(ApiError::InvalidRequest(format!(
                "The upload was created using the {} checksum mode. The complete request must use the same checksum mode.",
                ty.name()
            )));
        }
    }
    let checksums = object_checksums(&parts, alg, ty)?;
    // A whole-object checksum the client sends must be the one derived.
    for (a, v) in get_checksums!(input) {
        if let Some(v) = v {
            let ours = checksums.get(a.name()).ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "The upload was not created with the {} checksum algorithm.",
                    a.name()
                ))
            })?;
            let base = |x: &str| x.trim().split('-').next().unwrap_or_default().to_string();
            if base(ours) != base(v) {
                return Err(ApiError::ChecksumMismatch(a.name()));
            }
        }
    }
    let mut headers = upload.headers;
    headers.retain(|k, _| k != UPLOAD_CHECKSUM_ALGORITHM && k != UPLOAD_CHECKSUM_TYPE);
    let etag = multipart_etag(&parts);
    let manifest = ObjectManifest {
        layout: MANIFEST_LAYOUT,
        bucket: input.bucket.clone(),
        key: input.key.clone(),
        version_id: hex::encode(rand::random::<[u8; 16]>()),
        size: parts.iter().map(|p| p.size).sum(),
        etag: etag.clone(),
        content_type: upload.content_type,
        headers,
        user_metadata: upload.user_metadata,
        checksums,
        created: tessera_types::now_millis(),
        data: ObjectData::Parts(parts),
    };
    let version = manifest.version_id.clone();
    let primary = checksum::primary(&manifest.checksums)
        .map(|(a, v, t)| (a, v.to_string(), checksum_type(t)));
    let cmd = MetaCommand::CompleteUpload {
        upload_id: input.upload_id.clone(),
        manifest,
        condition,
    };
    match s.meta.write(&cmd).await.map_err(ApiError::from_rpc)? {
        // A retried command whose first try committed finds no upload;
        // when meta cannot tell, the outcome is unknown: an error, never
        // a success that may not be.
        MetaReply::Err(MetaError::NoSuchUpload) => {
            match committed(s, &input.bucket, &input.key, &version).await {
                Ok(true) => {}
                Ok(false) => return Err(MetaError::NoSuchUpload.into()),
                Err(e) => return Err(ApiError::from_rpc(e)),
            }
        }
        MetaReply::Err(e) => return Err(e.into()),
        reply => release(s, &reply),
    }
    let mut out = CompleteMultipartUploadOutput {
        location: Some(format!("/{}/{}", input.bucket, input.key)),
        bucket: Some(input.bucket),
        key: Some(input.key),
        e_tag: Some(ETag::Strong(etag)),
        ..Default::default()
    };
    if let Some((a, v, t)) = primary {
        set_checksum!(out, Some((a, v)));
        out.checksum_type = Some(t);
    }
    Ok(out)
}

pub(super) async fn abort_multipart_upload(
    s: &Tessera,
    req: S3Request<AbortMultipartUploadInput>,
) -> Result<AbortMultipartUploadOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    check_key(&input.key)?;
    s.authorize(&caller, &input.bucket, Access::Write).await?;
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
    s.authorize(&caller, &input.bucket, Access::Read).await?;
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
    let (upload_alg, upload_ty) = upload_checksum(&upload);
    let parts: Vec<s3s::dto::Part> = page
        .parts
        .iter()
        .map(|r| {
            let mut p = s3s::dto::Part {
                e_tag: Some(ETag::Strong(r.part.etag.clone())),
                last_modified: Some(timestamp(r.uploaded)),
                part_number: Some(r.part.number as i32),
                size: Some(r.part.size as i64),
                ..Default::default()
            };
            if upload_alg.is_some() {
                set_checksum!(p, part_answer(&r.part, None, upload_alg));
            }
            p
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
        checksum_algorithm: upload_alg.map(|a| ChecksumAlgorithm::from(a.name().to_string())),
        checksum_type: upload_alg.map(|_| checksum_type(upload_ty)),
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
    s.authorize(&caller, &input.bucket, Access::Read).await?;
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
                checksums: BTreeMap::new(),
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
