//! PutObject: stream the body through the stripe writer, then commit the
//! manifest. The object becomes visible only at the commit; a failed PUT
//! deletes the shards it wrote (in the background).

use std::collections::{BTreeMap, HashSet};

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use s3s::dto::*;
use s3s::S3Request;
use tessera_proto::RpcError;
use tessera_types::manifest::MANIFEST_LAYOUT;
use tessera_types::meta::{MetaCommand, MetaError, MetaReply, WriteCondition};
use tessera_types::{ObjectData, ObjectManifest, Part, Stripe, StripeId};

use super::Tessera;
use crate::checksum::{self, set_checksum, Algorithm, RequestChecksum};
use crate::error::ApiError;
use crate::names::check_key;
use crate::pipeline::gc;
use crate::pipeline::write::{write_body_with, WriteGuard, WriteLimits, WrittenBody};

/// Largest total size of user metadata (names and values), as in S3.
const MAX_USER_METADATA_BYTES: usize = 2048;

pub(super) type BodyStream =
    futures::stream::BoxStream<'static, Result<Bytes, Box<dyn std::error::Error + Send + Sync>>>;

pub(super) async fn put_object(
    s: &Tessera,
    req: S3Request<PutObjectInput>,
) -> Result<PutObjectOutput, ApiError> {
    let caller = s.caller(&req)?;
    let mut input = req.input;
    check_key(&input.key)?;
    let user_metadata = user_metadata(input.metadata.take())?;
    let content_md5 = input.content_md5.as_deref().map(parse_md5).transpose()?;
    let sum = RequestChecksum::from_headers(&req.headers)?;
    let expected = declared_length(input.content_length, &req.headers)?;
    let condition = write_condition(input.if_none_match.as_ref(), input.if_match.as_ref())?;
    if let Some(t) = &input.tagging {
        super::tagging::parse(t)?;
    }
    // Authorization before a single body byte is read (a recent answer
    // will do: the commit checks again, atomically with the write).
    s.authorize_write_early(&caller, &input.bucket).await?;

    let body: BodyStream = match input.body.take() {
        Some(b) => b.boxed(),
        None => futures::stream::empty().boxed(),
    };
    let limits = WriteLimits {
        expected,
        max_size: s.config.max_object_size,
        inline_threshold: s.config.inline_threshold,
    };
    let algorithms = checksum_algorithms([sum.algorithm]);
    let (outcome, guard) = write_body_with(&s.dp, body, limits, &algorithms).await?;
    // Every check of the body passes before anything is committed; on an
    // error the dropped guard deletes the shards written.
    if let Some(want) = content_md5 {
        if want != outcome.md5 {
            return Err(ApiError::BadDigest);
        }
    }
    sum.verify(&outcome.checksums, req.trailing_headers.as_ref())?;
    let checksums = outcome.checksums.to_map();
    let etag = hex::encode(outcome.md5);
    let data = match outcome.body {
        WrittenBody::Inline(b) => ObjectData::Inline(b),
        WrittenBody::Stripes(stripes) => ObjectData::Parts(vec![Part {
            number: 1,
            size: outcome.size,
            etag: etag.clone(),
            checksums: checksums.clone(),
            stripes,
        }]),
    };
    let mut headers = standard_headers(
        input.cache_control,
        input.content_disposition,
        input.content_encoding,
        input.content_language,
        input.expires,
    );
    super::tagging::apply(&mut headers, input.tagging.as_deref())?;
    let manifest = ObjectManifest {
        layout: MANIFEST_LAYOUT,
        bucket: input.bucket,
        key: input.key,
        version_id: hex::encode(rand::random::<[u8; 16]>()),
        size: outcome.size,
        etag: etag.clone(),
        content_type: input.content_type.filter(|c| !c.is_empty()),
        headers,
        user_metadata,
        checksums,
        created: tessera_types::now_millis(),
        data,
    };
    let primary = checksum::primary(&manifest.checksums)
        .map(|(a, v, t)| (a, v.to_string(), checksum_type(t)));
    tessera_observe::failpoint::hit("gateway.put.after_shards");
    commit_manifest(s, &caller, manifest, condition, Some(guard)).await?;
    tessera_observe::failpoint::hit("gateway.put.after_commit");
    let mut out = PutObjectOutput {
        e_tag: Some(ETag::Strong(etag)),
        ..Default::default()
    };
    if let Some((a, v, t)) = primary {
        set_checksum!(out, Some((a, v)));
        out.checksum_type = Some(t);
    }
    Ok(out)
}

/// The checksums a write computes: the default CRC64NVME and those named.
pub(super) fn checksum_algorithms<const N: usize>(named: [Option<Algorithm>; N]) -> Vec<Algorithm> {
    let mut v = vec![Algorithm::Crc64Nvme];
    v.extend(named.into_iter().flatten());
    v
}

/// The S3 form of a checksum type.
pub(super) fn checksum_type(t: checksum::ChecksumType) -> ChecksumType {
    ChecksumType::from_static(t.name())
}

/// The decoded body length the request declares: for aws-chunked
/// streaming bodies `x-amz-decoded-content-length` (the chunk framing is
/// not part of the object), else Content-Length.
pub(super) fn declared_length(
    content_length: Option<i64>,
    headers: &http::HeaderMap,
) -> Result<Option<u64>, ApiError> {
    let streaming = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("STREAMING-"));
    if streaming {
        if let Some(v) = headers.get("x-amz-decoded-content-length") {
            let n = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::InvalidArgument("invalid x-amz-decoded-content-length".into())
                })?;
            return Ok(Some(n));
        }
    }
    match content_length {
        Some(n) if n < 0 => Err(ApiError::InvalidArgument("negative Content-Length".into())),
        Some(n) => Ok(Some(n as u64)),
        None => Ok(None),
    }
}

/// Commits `manifest` (whose stripes `guard` holds, if any) on behalf of
/// `caller`, who must still be allowed to write into the bucket when it
/// commits, and schedules the deletion of the version it replaced.
pub(super) async fn commit_manifest(
    s: &Tessera,
    caller: &str,
    manifest: ObjectManifest,
    condition: WriteCondition,
    guard: Option<WriteGuard>,
) -> Result<(), ApiError> {
    let disarm = |guard: Option<WriteGuard>| {
        if let Some(g) = guard {
            g.disarm();
        }
    };
    let (bucket, key, version) = (
        manifest.bucket.clone(),
        manifest.key.clone(),
        manifest.version_id.clone(),
    );
    let ours: HashSet<StripeId> = manifest.stripes().map(|st| st.id).collect();
    let cmd = MetaCommand::PutObjectChecked {
        manifest,
        condition,
        access_key: caller.to_string(),
    };
    if tessera_observe::failpoint::is_on("gateway.commit.lose_answer") {
        // A first try whose answer is lost (tests): what follows is the
        // meta client's retry.
        let _ = s.meta.write(&cmd).await;
    }
    match s.meta.write(&cmd).await {
        Ok(MetaReply::Err(e)) => {
            // The meta client retries a write whose answer was lost, so a
            // refusal (e.g. If-None-Match) may follow our own commit.
            match committed(s, &bucket, &key, &version).await {
                Ok(true) => disarm(guard),
                Ok(false) => {
                    if matches!(e, MetaError::NoSuchBucket | MetaError::AccessDenied) {
                        // The early check's answer is stale.
                        s.access_cache.forget(caller, &bucket);
                    }
                    // Nothing references the shards; the dropped guard
                    // deletes them.
                    return Err(e.into());
                }
                Err(q) => {
                    // Meta cannot say: the outcome is unknown, so the
                    // client gets the error of the check, neither success
                    // nor the refusal, and the shards stay (GC finds them
                    // if nothing references them).
                    disarm(guard);
                    return Err(ApiError::from_rpc(q));
                }
            }
        }
        Ok(reply) => {
            disarm(guard);
            if let MetaReply::Replaced(Some(old)) = reply {
                gc::delete_stripes_later(&s.dp, superseded(&old, &ours));
            }
        }
        Err(e @ RpcError::NoSpace(_)) => {
            // Meta refused the write before proposing it (its disk is
            // nearly full). Unless that was the retry of a try whose answer
            // was lost and which was committed, nothing references the
            // shards: the dropped guard deletes them, which also gives back
            // the space that deletes on a full cluster need.
            match committed(s, &bucket, &key, &version).await {
                Ok(true) => disarm(guard),
                Ok(false) => return Err(ApiError::from_rpc(e)),
                Err(_) => {
                    // Unknown: keep the shards, never claim success.
                    disarm(guard);
                    return Err(ApiError::from_rpc(e));
                }
            }
        }
        Err(e) => {
            // The outcome is unknown: the manifest may be committed, so its
            // shards must not be deleted here (GC finds them if not).
            disarm(guard);
            return Err(ApiError::from_rpc(e));
        }
    }
    Ok(())
}

/// The stripes of a replaced version that the new one does not use. The
/// meta client retries a write whose answer was lost: if the first try
/// was committed, the retry replaces our own manifest, and its stripes
/// are the ones just written (meta's GC queue keeps them the same way).
fn superseded<'a>(
    old: &'a ObjectManifest,
    ours: &'a HashSet<StripeId>,
) -> impl Iterator<Item = &'a Stripe> {
    old.stripes().filter(|st| !ours.contains(&st.id))
}

/// Whether the current version of `bucket/key` is `version`; an error when
/// meta cannot be asked. Callers treat that as unknown: they keep the
/// shards (keeping stray shards is safe, deleting live ones is not) and
/// answer an error (claiming a success that may not be is not).
pub(super) async fn committed(
    s: &Tessera,
    bucket: &str,
    key: &str,
    version: &str,
) -> Result<bool, RpcError> {
    let q = tessera_types::meta::MetaQuery::GetObject {
        bucket: bucket.to_string(),
        key: key.to_string(),
    };
    Ok(match s.meta.query(&q).await? {
        tessera_types::meta::QueryReply::Object(Some(m)) => m.version_id == version,
        _ => false,
    })
}

/// Decodes Content-MD5 (base64 of 16 bytes).
pub(super) fn parse_md5(v: &str) -> Result<[u8; 16], ApiError> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .map_err(|_| ApiError::InvalidDigest)?;
    <[u8; 16]>::try_from(raw.as_slice()).map_err(|_| ApiError::InvalidDigest)
}

/// `x-amz-meta-*` with lower-cased names, capped at 2 KiB in total.
pub(super) fn user_metadata(
    meta: Option<std::collections::HashMap<String, String>>,
) -> Result<BTreeMap<String, String>, ApiError> {
    let out: BTreeMap<String, String> = meta
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let size: usize = out.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_USER_METADATA_BYTES {
        return Err(ApiError::MetadataTooLarge);
    }
    Ok(out)
}

/// Standard headers kept verbatim. `aws-chunked` is a transfer detail of
/// the upload, never part of the stored Content-Encoding.
pub(super) fn standard_headers(
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    expires: Option<Timestamp>,
) -> BTreeMap<String, String> {
    let mut h = BTreeMap::new();
    let encoding = content_encoding.map(|e| {
        e.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    for (name, value) in [
        ("cache-control", cache_control),
        ("content-disposition", content_disposition),
        ("content-encoding", encoding),
        ("content-language", content_language),
    ] {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            h.insert(name.to_string(), v);
        }
    }
    if let Some(t) = expires {
        let mut buf = Vec::new();
        if t.format(TimestampFormat::HttpDate, &mut buf).is_ok() {
            if let Ok(s) = String::from_utf8(buf) {
                h.insert("expires".to_string(), s);
            }
        }
    }
    h
}

/// The atomic precondition of a write (PutObject, CompleteMultipartUpload):
/// `If-None-Match: *` or `If-Match: etag`, checked in the meta state
/// machine when the manifest is committed.
pub(super) fn write_condition(
    if_none_match: Option<&ETagCondition>,
    if_match: Option<&ETagCondition>,
) -> Result<WriteCondition, ApiError> {
    Ok(match (if_none_match, if_match) {
        (Some(ETagCondition::Any), _) => WriteCondition::IfNoneMatch,
        (Some(ETagCondition::ETag(_)), _) => {
            return Err(ApiError::InvalidArgument(
                "If-None-Match on writes supports only '*'".into(),
            ))
        }
        (None, Some(ETagCondition::ETag(e))) => WriteCondition::IfMatch(e.value().to_string()),
        _ => WriteCondition::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_md5_parsing() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        let v = parse_md5("1B2M2Y8AsgTpgAmY7PhCfg==").unwrap();
        assert_eq!(hex::encode(v), "d41d8cd98f00b204e9800998ecf8427e");
        assert!(matches!(
            parse_md5("not base64!"),
            Err(ApiError::InvalidDigest)
        ));
        assert!(matches!(parse_md5("AAAA"), Err(ApiError::InvalidDigest)));
    }

    #[test]
    fn aws_chunked_is_not_stored() {
        let h = standard_headers(None, None, Some("aws-chunked".into()), None, None);
        assert!(!h.contains_key("content-encoding"));
        let h = standard_headers(None, None, Some("gzip, aws-chunked".into()), None, None);
        assert_eq!(h.get("content-encoding").map(String::as_str), Some("gzip"));
    }

    fn manifest(version: &str, stripes: Vec<Stripe>) -> ObjectManifest {
        ObjectManifest {
            layout: MANIFEST_LAYOUT,
            bucket: "b".into(),
            key: "k".into(),
            version_id: version.into(),
            size: 1,
            etag: String::new(),
            content_type: None,
            headers: BTreeMap::new(),
            user_metadata: BTreeMap::new(),
            checksums: BTreeMap::new(),
            created: 0,
            data: ObjectData::Parts(vec![Part {
                number: 1,
                size: 1,
                etag: String::new(),
                checksums: BTreeMap::new(),
                stripes,
            }]),
        }
    }

    fn stripe() -> Stripe {
        Stripe {
            id: StripeId::random(),
            len: 4,
            shard_len: 1,
            class: tessera_types::StorageClass::rs(4, 2, 64),
            shards: Vec::new(),
        }
    }

    #[test]
    fn a_retried_commit_never_deletes_its_own_stripes() {
        let (a, b) = (stripe(), stripe());
        let ids = |m: &ObjectManifest| m.stripes().map(|st| st.id).collect::<HashSet<_>>();
        // The retry of a committed write "replaces" the same manifest.
        let ours = manifest("v1", vec![a.clone(), b.clone()]);
        assert_eq!(superseded(&ours, &ids(&ours)).count(), 0);
        // A real replacement gives back every stripe of the old version.
        let old = manifest("v0", vec![stripe(), stripe()]);
        let gone: HashSet<StripeId> = superseded(&old, &ids(&ours)).map(|st| st.id).collect();
        assert_eq!(gone, ids(&old));
        // Shared stripes stay.
        let mixed = manifest("v0", vec![a, stripe()]);
        assert_eq!(superseded(&mixed, &ids(&ours)).count(), 1);
    }

    #[test]
    fn metadata_cap() {
        let mut m = std::collections::HashMap::new();
        m.insert("Color".to_string(), "blue".to_string());
        let out = user_metadata(Some(m)).unwrap();
        assert_eq!(out.get("color").map(String::as_str), Some("blue"));
        let mut big = std::collections::HashMap::new();
        big.insert("k".to_string(), "v".repeat(2048));
        assert!(matches!(
            user_metadata(Some(big)),
            Err(ApiError::MetadataTooLarge)
        ));
    }
}
