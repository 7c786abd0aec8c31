//! ListBuckets, CreateBucket, HeadBucket, DeleteBucket, GetBucketLocation,
//! GetBucketVersioning (never versioned).

use s3s::dto::*;
use s3s::S3Request;
use tessera_types::meta::{MetaCommand, MetaError, MetaQuery, MetaReply, QueryReply};

use super::{timestamp, Access, Tessera};
use crate::error::ApiError;
use crate::names::check_bucket;

pub(super) async fn list_buckets(
    s: &Tessera,
    req: S3Request<ListBucketsInput>,
) -> Result<ListBucketsOutput, ApiError> {
    let caller = s.caller(&req)?;
    let buckets = match s.query(&MetaQuery::ListBuckets).await? {
        QueryReply::Buckets(b) => b,
        _ => return Err(ApiError::UnexpectedReply("ListBuckets")),
    };
    let prefix = req.input.prefix.as_deref().unwrap_or("");
    let buckets = buckets
        .into_iter()
        .filter(|b| b.owner == caller && b.name.starts_with(prefix))
        .map(|b| Bucket {
            name: Some(b.name),
            creation_date: Some(timestamp(b.created)),
            bucket_region: None,
        })
        .collect();
    Ok(ListBucketsOutput {
        buckets: Some(buckets),
        owner: Some(Owner {
            display_name: Some(caller.clone()),
            id: Some(caller),
        }),
        prefix: req.input.prefix,
        continuation_token: None,
    })
}

pub(super) async fn create_bucket(
    s: &Tessera,
    req: S3Request<CreateBucketInput>,
) -> Result<CreateBucketOutput, ApiError> {
    let caller = s.caller(&req)?;
    let name = req.input.bucket;
    check_bucket(&name)?;
    let constraint = req
        .input
        .create_bucket_configuration
        .and_then(|c| c.location_constraint)
        .map(|c| c.as_str().to_string())
        .filter(|c| !c.is_empty());
    if let Some(c) = constraint {
        if c != s.config.region {
            return Err(ApiError::InvalidLocationConstraint(c));
        }
    }
    let bucket = tessera_types::Bucket {
        name: name.clone(),
        owner: caller.clone(),
        created: tessera_types::now_millis(),
    };
    match s.write(&MetaCommand::CreateBucket(bucket)).await {
        Ok(_) => {}
        Err(ApiError::Meta(MetaError::BucketAlreadyExists { owner })) if owner == caller => {
            return Err(ApiError::BucketAlreadyOwnedByYou)
        }
        Err(e) => return Err(e),
    }
    Ok(CreateBucketOutput {
        location: Some(format!("/{name}")),
    })
}

pub(super) async fn head_bucket(
    s: &Tessera,
    req: S3Request<HeadBucketInput>,
) -> Result<HeadBucketOutput, ApiError> {
    let caller = s.caller(&req)?;
    s.authorize(&caller, &req.input.bucket, Access::Read)
        .await?;
    Ok(HeadBucketOutput {
        bucket_region: Some(s.config.region.clone()),
        ..Default::default()
    })
}

pub(super) async fn delete_bucket(
    s: &Tessera,
    req: S3Request<DeleteBucketInput>,
) -> Result<DeleteBucketOutput, ApiError> {
    let caller = s.caller(&req)?;
    s.authorize(&caller, &req.input.bucket, Access::Owner)
        .await?;
    let reply = s
        .write(&MetaCommand::DeleteBucket {
            name: req.input.bucket,
        })
        .await?;
    if let MetaReply::Released(stripes) = &reply {
        crate::pipeline::gc::delete_stripes_later(&s.dp, stripes.iter());
    }
    Ok(DeleteBucketOutput::default())
}

pub(super) async fn get_bucket_location(
    s: &Tessera,
    req: S3Request<GetBucketLocationInput>,
) -> Result<GetBucketLocationOutput, ApiError> {
    let caller = s.caller(&req)?;
    s.authorize(&caller, &req.input.bucket, Access::Read)
        .await?;
    // us-east-1 is spelled as no constraint at all.
    let location_constraint = (s.config.region != "us-east-1")
        .then(|| BucketLocationConstraint::from(s.config.region.clone()));
    Ok(GetBucketLocationOutput {
        location_constraint,
    })
}

/// GetBucketVersioning: buckets are never versioned (PutBucketVersioning
/// is NotImplemented), which S3 spells as a configuration without a
/// status.
pub(super) async fn get_bucket_versioning(
    s: &Tessera,
    req: S3Request<GetBucketVersioningInput>,
) -> Result<GetBucketVersioningOutput, ApiError> {
    let caller = s.caller(&req)?;
    s.authorize(&caller, &req.input.bucket, Access::Read)
        .await?;
    Ok(GetBucketVersioningOutput::default())
}
