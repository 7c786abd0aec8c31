//! DeleteObject (idempotent: 204 whether or not the key existed).

use s3s::dto::*;
use s3s::S3Request;
use tessera_types::meta::{MetaCommand, MetaError, MetaReply};

use super::Tessera;
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
    s.authorize(&caller, &input.bucket).await?;
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
