//! Answers to [`MetaQuery`], read straight from the state machine trees
//! (the service has already done the read-index check).

use std::ops::Bound;

use tessera_types::meta::{
    BucketStats, ListObjectsPage, ListObjectsQuery, ListUploadsQuery, MetaError, MetaQuery,
    ObjectSummary, PartRecord, PartsPage, QueryReply, Upload, UploadsPage, MAX_MANY_QUERIES,
};
use tessera_types::{AccessKey, Bucket, ClusterMap, ObjectManifest};

use super::dec;
use super::state_machine::{
    bucket_prefix, object_key, part_key, parts_prefix, upload_key, SmTrees,
};
use crate::MetaNodeError;

/// Largest page of a listing (S3's limit).
pub const MAX_LIST_KEYS: u32 = 1000;

/// Answers one query.
pub fn query(t: &SmTrees, q: &MetaQuery) -> Result<QueryReply, MetaNodeError> {
    Ok(match q {
        MetaQuery::Many(qs) => {
            if qs.len() > MAX_MANY_QUERIES {
                return Ok(QueryReply::Err(MetaError::Invalid(format!(
                    "{} queries in one, at most {MAX_MANY_QUERIES}",
                    qs.len()
                ))));
            }
            if qs.iter().any(|q| matches!(q, MetaQuery::Many(_))) {
                return Ok(QueryReply::Err(MetaError::Invalid(
                    "nested multi-query".into(),
                )));
            }
            QueryReply::Many(qs.iter().map(|q| query(t, q)).collect::<Result<_, _>>()?)
        }
        MetaQuery::GetBucket { name } => QueryReply::Bucket(t.bucket(name)?),
        MetaQuery::ListBuckets => {
            // sled iterates in byte order of names.
            let mut out: Vec<Bucket> = Vec::new();
            for item in t.buckets.iter() {
                let (_, v) = item?;
                out.push(dec(&v)?);
            }
            QueryReply::Buckets(out)
        }
        MetaQuery::BucketStats { name } => {
            if t.bucket(name)?.is_none() {
                return Ok(QueryReply::Err(MetaError::NoSuchBucket));
            }
            let mut stats = BucketStats::default();
            for item in t.objects.scan_prefix(bucket_prefix(name)) {
                let (_, v) = item?;
                let m: ObjectManifest = dec(&v)?;
                stats.objects += 1;
                stats.bytes += m.size;
            }
            QueryReply::BucketStats(stats)
        }
        MetaQuery::GetObject { bucket, key } => {
            if t.bucket(bucket)?.is_none() {
                return Ok(QueryReply::Err(MetaError::NoSuchBucket));
            }
            QueryReply::Object(t.object(bucket, key)?.map(Box::new))
        }
        MetaQuery::ListObjects(lq) => {
            if t.bucket(&lq.bucket)?.is_none() {
                return Ok(QueryReply::Err(MetaError::NoSuchBucket));
            }
            QueryReply::Listing(list_objects(t, lq)?)
        }
        MetaQuery::GetAccessKey { id } => QueryReply::AccessKey(t.access_key(id)?),
        MetaQuery::ListAccessKeys => {
            let mut out: Vec<AccessKey> = Vec::new();
            for item in t.access_keys.iter() {
                let (_, v) = item?;
                out.push(dec(&v)?);
            }
            QueryReply::AccessKeys(out)
        }
        MetaQuery::ClusterMap => QueryReply::ClusterMap(ClusterMap {
            epoch: t.epoch()?,
            nodes: t.all_nodes()?,
        }),
        MetaQuery::GetUpload {
            bucket,
            key,
            upload_id,
        } => {
            if t.bucket(bucket)?.is_none() {
                return Ok(QueryReply::Err(MetaError::NoSuchBucket));
            }
            QueryReply::Upload(t.upload(bucket, key, upload_id)?)
        }
        MetaQuery::ListParts {
            bucket,
            key,
            upload_id,
            marker,
            max_parts,
        } => {
            if t.bucket(bucket)?.is_none() {
                return Ok(QueryReply::Err(MetaError::NoSuchBucket));
            }
            if t.upload(bucket, key, upload_id)?.is_none() {
                return Ok(QueryReply::Err(MetaError::NoSuchUpload));
            }
            QueryReply::Parts(list_parts(t, upload_id, *marker, *max_parts)?)
        }
        MetaQuery::ListUploads(lq) => {
            if t.bucket(&lq.bucket)?.is_none() {
                return Ok(QueryReply::Err(MetaError::NoSuchBucket));
            }
            QueryReply::Uploads(list_uploads(t, lq)?)
        }
        MetaQuery::Durability => QueryReply::Durability(t.durability_status()?),
        MetaQuery::RepairConfig => QueryReply::RepairConfig(t.repair_config()?),
        MetaQuery::ShardsLive { node, shards } => QueryReply::Live(t.shards_live(node, shards)?),
        MetaQuery::RepairQueue { max } => QueryReply::RepairItems(t.repair_queue(*max)?),
        MetaQuery::BucketAccess { bucket, access_key } => {
            QueryReply::BucketAccess(t.bucket_access(bucket, access_key)?)
        }
        MetaQuery::NodeShards { node, after, max } => {
            QueryReply::NodeShards(t.node_shards_page(node, after.as_ref(), *max)?)
        }
        MetaQuery::ListGrants { bucket } => {
            if t.bucket(bucket)?.is_none() {
                return Ok(QueryReply::Err(MetaError::NoSuchBucket));
            }
            QueryReply::Grants(t.grants(bucket)?)
        }
    })
}

/// Parts of an upload numbered above `marker`, at most `max` (0 = all).
fn list_parts(
    t: &SmTrees,
    upload_id: &str,
    marker: u32,
    max: u32,
) -> Result<PartsPage, MetaNodeError> {
    let prefix = parts_prefix(upload_id);
    let lower = Bound::Excluded(part_key(upload_id, marker));
    let mut page = PartsPage::default();
    for item in t.parts.range((lower, Bound::Unbounded)) {
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        if max > 0 && page.parts.len() == max as usize {
            page.is_truncated = true;
            page.next_marker = page.parts.last().map(|p| p.part.number);
            break;
        }
        let rec: PartRecord = dec(&v)?;
        page.parts.push(rec);
    }
    Ok(page)
}

/// One page of the uploads in progress of a bucket. With a delimiter,
/// uploads whose key has the delimiter after the prefix collapse into one
/// common prefix, and the scan seeks past it.
fn list_uploads(t: &SmTrees, q: &ListUploadsQuery) -> Result<UploadsPage, MetaNodeError> {
    let max = match q.max_uploads {
        0 => MAX_LIST_KEYS,
        n => n.min(MAX_LIST_KEYS),
    } as usize;
    let full_prefix = object_key(&q.bucket, &q.prefix);
    let mut lower: Bound<Vec<u8>> = if q.key_marker.is_empty() {
        Bound::Included(full_prefix.clone())
    } else if q.upload_id_marker.is_empty() {
        // Every upload of the marker key is skipped: start after all keys
        // `marker \0 ...`.
        let mut k = object_key(&q.bucket, &q.key_marker);
        k.push(1);
        Bound::Included(k)
    } else {
        Bound::Excluded(upload_key(&q.bucket, &q.key_marker, &q.upload_id_marker))
    };
    let mut page = UploadsPage::default();
    let mut returned = 0usize;
    // Key and upload id (or common prefix alone) of the last entry.
    let mut last: Option<(String, Option<String>)> = None;
    'scan: loop {
        for item in t.uploads.range((lower.clone(), Bound::Unbounded)) {
            let (k, v) = item?;
            if !k.starts_with(&full_prefix) {
                break 'scan;
            }
            let u: Upload = dec(&v)?;
            if u.key < q.key_marker {
                continue;
            }
            if !q.delimiter.is_empty() {
                let rest = u.key.get(q.prefix.len()..).unwrap_or("");
                if let Some(pos) = rest.find(q.delimiter.as_str()) {
                    let cp = u.key[..q.prefix.len() + pos + q.delimiter.len()].to_string();
                    if cp.as_str() > q.key_marker.as_str() {
                        if returned == max {
                            page.is_truncated = true;
                            break 'scan;
                        }
                        page.common_prefixes.push(cp.clone());
                        returned += 1;
                        last = Some((cp.clone(), None));
                    }
                    match prefix_successor(&object_key(&q.bucket, &cp)) {
                        Some(next) => {
                            lower = Bound::Included(next);
                            continue 'scan;
                        }
                        None => break 'scan,
                    }
                }
            }
            if returned == max {
                page.is_truncated = true;
                break 'scan;
            }
            last = Some((u.key.clone(), Some(u.upload_id.clone())));
            page.uploads.push(u);
            returned += 1;
        }
        break;
    }
    if page.is_truncated {
        if let Some((key, id)) = last {
            page.next_key_marker = Some(key);
            page.next_upload_id_marker = id;
        }
    }
    Ok(page)
}

/// The smallest byte string greater than every string starting with
/// `prefix`, or `None` if there is none (all 0xff).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

/// One page of a bucket listing. With a delimiter, every key that has the
/// delimiter after the prefix collapses into a common prefix, and the scan
/// seeks past the whole common prefix instead of walking its keys.
pub fn list_objects(t: &SmTrees, q: &ListObjectsQuery) -> Result<ListObjectsPage, MetaNodeError> {
    let max = match q.max_keys {
        0 => MAX_LIST_KEYS,
        n => n.min(MAX_LIST_KEYS),
    } as usize;
    let base = bucket_prefix(&q.bucket);
    let full_prefix = object_key(&q.bucket, &q.prefix);
    let mut lower: Bound<Vec<u8>> = if q.start_after.as_str() >= q.prefix.as_str() {
        Bound::Excluded(object_key(&q.bucket, &q.start_after))
    } else {
        Bound::Included(full_prefix.clone())
    };
    let mut page = ListObjectsPage::default();
    let mut returned = 0usize;
    let mut last: Option<String> = None;
    'scan: loop {
        let iter = t.objects.range((lower.clone(), Bound::Unbounded));
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&full_prefix) {
                break 'scan;
            }
            let key =
                std::str::from_utf8(&k[base.len()..]).map_err(|e| MetaNodeError::Corrupt {
                    what: "object key",
                    message: e.to_string(),
                })?;
            if !q.delimiter.is_empty() {
                let rest = &key[q.prefix.len()..];
                if let Some(pos) = rest.find(q.delimiter.as_str()) {
                    let cp = &key[..q.prefix.len() + pos + q.delimiter.len()];
                    // A common prefix at or before the marker was returned
                    // on an earlier page.
                    if cp > q.start_after.as_str() {
                        if returned == max {
                            page.is_truncated = true;
                            break 'scan;
                        }
                        page.common_prefixes.push(cp.to_string());
                        returned += 1;
                        last = Some(cp.to_string());
                    }
                    match prefix_successor(&object_key(&q.bucket, cp)) {
                        Some(next) => {
                            lower = Bound::Included(next);
                            continue 'scan;
                        }
                        None => break 'scan,
                    }
                }
            }
            if returned == max {
                page.is_truncated = true;
                break 'scan;
            }
            let m: ObjectManifest = dec(&v)?;
            page.objects.push(ObjectSummary {
                key: key.to_string(),
                size: m.size,
                etag: m.etag,
                last_modified: m.created,
            });
            returned += 1;
            last = Some(key.to_string());
        }
        break;
    }
    if page.is_truncated {
        page.next_marker = last;
    }
    Ok(page)
}
