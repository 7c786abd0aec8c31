//! DeleteObject (idempotent: 204 whether or not the key existed) and
//! DeleteObjects.

use futures::StreamExt;
use s3s::dto::*;
use s3s::S3Request;
use tessera_types::meta::{MetaCommand, MetaError, MetaReply};

use super::{Access, Tessera};
use crate::error::ApiError;
use crate::names::check_key;
use crate::pipeline::gc;

pub(super) async fn delete_object(
    s: &Tessera,
    req: S3Request<DeleteObjectInput>,
) -> Result<DeleteObjectOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    check_key(&input.key)?;
    s.authorize(&caller, &input.bucket, Access::Write).await?;
    let reply = s
        .write(&MetaCommand::DeleteObject {
            bucket: input.bucket,
            key: input.key,
        })
        .await;
    match reply {
        Ok(MetaReply::Replaced(Some(old))) => gc::delete_later(&s.dp, &old),
        Ok(_) | Err(ApiError::Meta(MetaError::NoSuchKey)) => {}
        Err(e) => return Err(e),
    }
    Ok(DeleteObjectOutput::default())
}

/// Most keys one DeleteObjects request may name (S3's limit).
pub const MAX_DELETE_KEYS: usize = 1000;
/// Deletes of one DeleteObjects request that run at once.
const DELETE_CONCURRENCY: usize = 16;

/// DeleteObjects: each key is deleted like DeleteObject (a missing key
/// counts as deleted); failures are reported per key. In quiet mode only
/// the failures are listed.
pub(super) async fn delete_objects(
    s: &Tessera,
    req: S3Request<DeleteObjectsInput>,
) -> Result<DeleteObjectsOutput, ApiError> {
    let caller = s.caller(&req)?;
    let input = req.input;
    if input.delete.objects.len() > MAX_DELETE_KEYS {
        return Err(ApiError::MalformedXml(format!(
            "more than {MAX_DELETE_KEYS} keys in one DeleteObjects request"
        )));
    }
    if input.delete.objects.is_empty() {
        return Err(ApiError::MalformedXml("DeleteObjects names no keys".into()));
    }
    let quiet = input.delete.quiet.unwrap_or(false);
    s.authorize(&caller, &input.bucket, Access::Write).await?;
    let bucket = input.bucket;
    let results: Vec<(String, Option<s3s::S3Error>)> = futures::stream::iter(input.delete.objects)
        .map(|obj| {
            let bucket = bucket.clone();
            async move {
                let key = obj.key;
                let r = delete_one(s, bucket, key.clone()).await;
                (key, r.err().map(s3s::S3Error::from))
            }
        })
        .buffered(DELETE_CONCURRENCY)
        .collect()
        .await;
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for (key, err) in results {
        match err {
            None if quiet => {}
            None => deleted.push(DeletedObject {
                key: Some(key),
                ..Default::default()
            }),
            Some(e) => errors.push(Error {
                code: Some(e.code().as_str().to_string()),
                key: Some(key),
                message: e.message().map(str::to_string),
                ..Default::default()
            }),
        }
    }
    Ok(DeleteObjectsOutput {
        deleted: (!deleted.is_empty()).then_some(deleted),
        errors: (!errors.is_empty()).then_some(errors),
        ..Default::default()
    })
}

async fn delete_one(s: &Tessera, bucket: String, key: String) -> Result<(), ApiError> {
    check_key(&key)?;
    match s.write(&MetaCommand::DeleteObject { bucket, key }).await {
        Ok(MetaReply::Replaced(Some(old))) => gc::delete_later(&s.dp, &old),
        Ok(_) | Err(ApiError::Meta(MetaError::NoSuchKey)) => {}
        Err(e) => return Err(e),
    }
    Ok(())
}
