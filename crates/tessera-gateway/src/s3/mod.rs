//! The S3 API: one file per operation family, and the one `impl S3` that
//! dispatches to them. s3s has already authenticated the request (see
//! `auth.rs`); every handler starts from [`Tessera::caller`] (the verified
//! access key) and [`Tessera::authorize`] (bucket ownership).
//!
//! What is out of scope answers 501 NotImplemented, never a wrong success:
//! every operation not implemented here keeps s3s's default (versioning
//! but GetBucketVersioning, object lock, lifecycle, policy, ACLs,
//! encryption, website, CORS, replication, notifications, logging,
//! requester-pays, accelerate, ...); POST-object form uploads are refused
//! (s3s would turn them into a PutObject); and [`unsupported`] refuses the
//! headers that ask an implemented operation for such a feature (SSE,
//! object lock, ACLs other than private, website redirects), as well as
//! object versions other than `null`. GetBucketVersioning answers the
//! truth: a bucket that was never versioned (an empty
//! `VersioningConfiguration`).

mod access_cache;
mod bucket;
mod copy;
mod delete;
mod get;
mod list;
mod multipart;
pub(crate) mod presign;
mod put;
mod tagging;

use std::sync::Arc;

use s3s::dto::*;
use s3s::{S3Error, S3Request, S3Response, S3Result, S3};
use tessera_proto::MetaClient;
use tessera_types::meta::{MetaCommand, MetaQuery, MetaReply, QueryReply};

use crate::config::GatewayConfig;
use crate::error::ApiError;
use crate::pipeline::DataPlane;

pub use list::{decode_token, encode_token};

/// The S3 service: shared state of all requests.
pub struct Tessera {
    pub(crate) config: GatewayConfig,
    pub(crate) meta: MetaClient,
    pub(crate) dp: Arc<DataPlane>,
    /// Recent write permissions, for the early check of a PUT.
    access_cache: access_cache::AccessCache,
}

/// What a request needs to be allowed in a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read objects, list.
    Read,
    /// Write or delete objects, multipart uploads.
    Write,
    /// Bucket administration (delete the bucket).
    Owner,
}

impl Tessera {
    pub fn new(config: GatewayConfig, meta: MetaClient, dp: Arc<DataPlane>) -> Self {
        Tessera {
            config,
            meta,
            dp,
            access_cache: Default::default(),
        }
    }

    /// The verified access key of the request. Requests without one never
    /// get here (see `auth::RequireAuth`); this is the second lock.
    fn caller<T>(&self, req: &S3Request<T>) -> Result<String, ApiError> {
        let creds = req
            .credentials
            .as_ref()
            .ok_or(ApiError::AccessDenied("anonymous access is not allowed"))?;
        if let Some(region) = &req.region {
            if region.as_str() != self.config.region {
                return Err(ApiError::WrongRegion {
                    got: region.as_str().to_string(),
                    expected: self.config.region.clone(),
                });
            }
        }
        Ok(creds.access_key.clone())
    }

    /// The bucket, if it exists and `caller` may do `need` in it: the
    /// owner may do anything, other keys what `tessera admin bucket allow`
    /// granted them (linearizable read).
    async fn authorize(
        &self,
        caller: &str,
        bucket: &str,
        need: Access,
    ) -> Result<tessera_types::Bucket, ApiError> {
        let reply = self.query(&access_query(caller, bucket)).await?;
        check_access(reply, caller, need)
    }

    /// The early write check of a PUT: [`Self::authorize`] for
    /// [`Access::Write`], but a permission confirmed within the last few
    /// seconds is reused (see [`access_cache`]). Only for writes whose
    /// commit checks again ([`MetaCommand::PutObjectChecked`]).
    async fn authorize_write_early(&self, caller: &str, bucket: &str) -> Result<(), ApiError> {
        let now = std::time::Instant::now();
        if self.access_cache.may_write(caller, bucket, now) {
            return Ok(());
        }
        self.authorize(caller, bucket, Access::Write).await?;
        self.access_cache.allow_write(caller, bucket, now);
        Ok(())
    }

    /// A linearizable meta query; refusals become `ApiError::Meta`.
    async fn query(&self, q: &MetaQuery) -> Result<QueryReply, ApiError> {
        match self.meta.query(q).await.map_err(ApiError::from_rpc)? {
            QueryReply::Err(e) => Err(e.into()),
            r => Ok(r),
        }
    }

    /// A meta command through Raft; refusals become `ApiError::Meta`.
    async fn write(&self, cmd: &MetaCommand) -> Result<MetaReply, ApiError> {
        match self.meta.write(cmd).await.map_err(ApiError::from_rpc)? {
            MetaReply::Err(e) => Err(e.into()),
            r => Ok(r),
        }
    }
}

/// Logs server-side failures and converts to the S3 error.
fn fail(op: &'static str, e: ApiError) -> S3Error {
    if e.is_server_side() {
        tracing::warn!(op, error = %e, "request failed");
    } else {
        tracing::debug!(op, error = %e, "request refused");
    }
    e.into()
}

/// Milliseconds since the epoch as an S3 timestamp.
fn timestamp(ms: i64) -> Timestamp {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    Timestamp::from(t)
}

macro_rules! dispatch {
    ($name:literal, $e:expr) => {
        $e.await.map(S3Response::new).map_err(|e| fail($name, e))
    };
    // With the request-header and version checks first.
    ($name:literal, $req:ident, $version:expr, $e:expr) => {{
        unsupported(&$req.headers)
            .and_then(|()| tagging::check_version($version))
            .map_err(|e| fail($name, e))?;
        dispatch!($name, $e)
    }};
}

/// Canned ACLs that say what Tessera does anyway (the bucket's owner has
/// full control, nobody else has any access unless granted by `tessera
/// admin bucket allow`); clients such as rclone send them by default.
const TRUE_CANNED_ACLS: [&str; 2] = ["private", "bucket-owner-full-control"];

/// Request headers asking for features Tessera does not have. Silently
/// ignoring them would be a wrong success (an object stored unencrypted
/// that the client asked to encrypt, one without the retention it asked
/// for, a public-read ACL that is not applied).
pub(crate) fn unsupported(headers: &http::HeaderMap) -> Result<(), ApiError> {
    for (name, value) in headers {
        let n = name.as_str();
        let v = value.to_str().unwrap_or("").trim();
        let what = if n.starts_with("x-amz-server-side-encryption")
            || n.starts_with("x-amz-copy-source-server-side-encryption")
        {
            "server-side encryption"
        } else if n.starts_with("x-amz-object-lock-") {
            "object lock"
        } else if n == "x-amz-bucket-object-lock-enabled" {
            if v.eq_ignore_ascii_case("false") {
                continue;
            }
            "object lock"
        } else if n == "x-amz-acl" {
            if TRUE_CANNED_ACLS.contains(&v) {
                continue;
            }
            "access control lists (only the private canned ACL)"
        } else if n.starts_with("x-amz-grant-") {
            "access control lists (grants)"
        } else if n == "x-amz-website-redirect-location" {
            "website hosting"
        } else {
            continue;
        };
        return Err(ApiError::NotImplemented(what));
    }
    Ok(())
}

#[async_trait::async_trait]
impl S3 for Tessera {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        dispatch!("ListBuckets", bucket::list_buckets(self, req))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        dispatch!("CreateBucket", req, None, bucket::create_bucket(self, req))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        dispatch!("HeadBucket", bucket::head_bucket(self, req))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        dispatch!("DeleteBucket", bucket::delete_bucket(self, req))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        dispatch!("GetBucketLocation", bucket::get_bucket_location(self, req))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        dispatch!("PutObject", req, None, put::put_object(self, req))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        {
            let v = req.input.version_id.clone();
            dispatch!("GetObject", req, v.as_deref(), get::get_object(self, req))
        }
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        {
            let v = req.input.version_id.clone();
            dispatch!("HeadObject", req, v.as_deref(), get::head_object(self, req))
        }
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        dispatch!("GetObjectTagging", tagging::get_object_tagging(self, req))
    }

    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        {
            let v = req.input.version_id.clone();
            dispatch!(
                "GetObjectAttributes",
                req,
                v.as_deref(),
                get::get_object_attributes(self, req)
            )
        }
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        {
            let v = req.input.version_id.clone();
            dispatch!(
                "DeleteObject",
                req,
                v.as_deref(),
                delete::delete_object(self, req)
            )
        }
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        dispatch!("ListObjectsV2", list::list_objects_v2(self, req))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        dispatch!("ListObjects", list::list_objects(self, req))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        {
            let v = req
                .input
                .delete
                .objects
                .iter()
                .find_map(|o| o.version_id.clone().filter(|v| v != "null"));
            dispatch!(
                "DeleteObjects",
                req,
                v.as_deref(),
                delete::delete_objects(self, req)
            )
        }
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        dispatch!("CopyObject", req, None, copy::copy_object(self, req))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        dispatch!(
            "CreateMultipartUpload",
            req,
            None,
            multipart::create_multipart_upload(self, req)
        )
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        dispatch!("UploadPart", req, None, multipart::upload_part(self, req))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        dispatch!(
            "UploadPartCopy",
            req,
            None,
            multipart::upload_part_copy(self, req)
        )
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        dispatch!(
            "CompleteMultipartUpload",
            multipart::complete_multipart_upload(self, req)
        )
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        dispatch!(
            "AbortMultipartUpload",
            multipart::abort_multipart_upload(self, req)
        )
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        dispatch!("ListParts", multipart::list_parts(self, req))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        dispatch!(
            "ListMultipartUploads",
            multipart::list_multipart_uploads(self, req)
        )
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        dispatch!("PutObjectTagging", tagging::put_object_tagging(self, req))
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        dispatch!(
            "DeleteObjectTagging",
            tagging::delete_object_tagging(self, req)
        )
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        dispatch!(
            "GetBucketVersioning",
            bucket::get_bucket_versioning(self, req)
        )
    }

    /// POST-object form uploads are out of scope (s3s's default would run
    /// them as a PutObject).
    async fn post_object(
        &self,
        _req: S3Request<PostObjectInput>,
    ) -> S3Result<S3Response<PostObjectOutput>> {
        Err(fail(
            "PostObject",
            ApiError::NotImplemented("POST-object form uploads"),
        ))
    }
}

/// The meta query behind [`check_access`].
fn access_query(caller: &str, bucket: &str) -> MetaQuery {
    MetaQuery::BucketAccess {
        bucket: bucket.to_string(),
        access_key: caller.to_string(),
    }
}

/// Whether a BucketAccess reply lets `caller` do `need`: the bucket if so.
fn check_access(
    reply: QueryReply,
    caller: &str,
    need: Access,
) -> Result<tessera_types::Bucket, ApiError> {
    match reply {
        QueryReply::BucketAccess(Some((b, grant))) => {
            let ok = match need {
                Access::Read => grant.read,
                Access::Write => grant.write,
                Access::Owner => b.owner == caller,
            };
            if ok {
                Ok(b)
            } else {
                Err(ApiError::AccessDenied(match need {
                    Access::Owner => "only the bucket's owner may do this",
                    _ => "the bucket belongs to another access key",
                }))
            }
        }
        QueryReply::BucketAccess(None) => Err(tessera_types::meta::MetaError::NoSuchBucket.into()),
        QueryReply::Err(e) => Err(e.into()),
        _ => Err(ApiError::UnexpectedReply("BucketAccess")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(headers: &[(&str, &str)]) -> Result<(), ApiError> {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        unsupported(&h)
    }

    #[test]
    fn feature_headers_are_not_implemented() {
        check(&[("content-type", "text/plain"), ("x-amz-meta-a", "1")]).unwrap();
        check(&[("x-amz-acl", "private")]).unwrap();
        check(&[("x-amz-acl", "bucket-owner-full-control")]).unwrap();
        check(&[("x-amz-bucket-object-lock-enabled", "false")]).unwrap();
        for (k, v) in [
            ("x-amz-server-side-encryption", "AES256"),
            ("x-amz-server-side-encryption", "aws:kms"),
            ("x-amz-server-side-encryption-aws-kms-key-id", "k"),
            ("x-amz-server-side-encryption-customer-algorithm", "AES256"),
            ("x-amz-copy-source-server-side-encryption-customer-key", "k"),
            ("x-amz-object-lock-mode", "GOVERNANCE"),
            ("x-amz-object-lock-legal-hold", "ON"),
            ("x-amz-bucket-object-lock-enabled", "true"),
            ("x-amz-acl", "public-read"),
            ("x-amz-grant-read", "id=x"),
            ("x-amz-website-redirect-location", "/x"),
        ] {
            assert!(
                matches!(check(&[(k, v)]), Err(ApiError::NotImplemented(_))),
                "{k}: {v}"
            );
        }
        tagging::check_version(None).unwrap();
        tagging::check_version(Some("null")).unwrap();
        assert!(matches!(
            tagging::check_version(Some("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")),
            Err(ApiError::NotImplemented(_))
        ));
    }
}
