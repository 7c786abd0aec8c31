//! The gateway's errors, and the one place where they become S3 error codes
//! and HTTP statuses.
//!
//! Handlers and pipelines return [`ApiError`], which says what went wrong in
//! domain terms; `impl From<ApiError> for S3Error` decides what the client
//! sees. Nothing else in the crate builds S3 error codes.

use s3s::{S3Error, S3ErrorCode};
use tessera_erasure::ErasureError;
use tessera_proto::RpcError;
use tessera_types::meta::MetaError;
use tessera_types::StripeId;

/// Why [`crate::serve`] could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("config: {0}")]
    Config(String),
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The caller may not do this (not the bucket owner, no credentials).
    #[error("access denied: {0}")]
    AccessDenied(&'static str),
    /// The request was signed for another region.
    #[error("the authorization header is malformed; the region '{got}' is wrong; expecting '{expected}'")]
    WrongRegion { got: String, expected: String },
    /// The meta state machine refused the request.
    #[error("{0}")]
    Meta(MetaError),
    /// CreateBucket of a bucket the caller already owns.
    #[error("bucket already owned by you")]
    BucketAlreadyOwnedByYou,
    /// The meta service could not be reached or did not answer in time.
    #[error("meta service: {0}")]
    MetaUnavailable(RpcError),
    /// Meta answered something this gateway did not ask for.
    #[error("unexpected meta reply to {0}")]
    UnexpectedReply(&'static str),
    /// A bucket name that breaks the naming rules; says which one.
    #[error("The specified bucket is not valid: {0}")]
    InvalidBucketName(&'static str),
    /// A feature Tessera does not have (versioning, ACLs other than
    /// private, SSE, object lock, ...): never a wrong success.
    #[error("{0}")]
    NotImplemented(&'static str),
    #[error("key longer than 1024 bytes")]
    KeyTooLong,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    InvalidTag(String),
    #[error("location constraint {0:?} does not match this gateway's region")]
    InvalidLocationConstraint(String),
    /// Content-MD5 that is not the base64 of 16 bytes.
    #[error("Content-MD5 is not valid base64 of 16 bytes")]
    InvalidDigest,
    /// Content-MD5 (or a body checksum) that does not match the body.
    #[error("the body does not match its digest")]
    BadDigest,
    /// An `x-amz-checksum-*` value (header or trailer) that does not match
    /// the body; names the algorithm.
    #[error("the {0} you specified did not match the calculated checksum")]
    ChecksumMismatch(&'static str),
    /// An aws-chunked trailer announced by `x-amz-trailer` is missing or
    /// malformed.
    #[error("malformed trailer: {0}")]
    MalformedTrailer(String),
    /// The body ended before (or went past) its declared length.
    #[error("body of {got} bytes, {expected} declared")]
    IncompleteBody { expected: u64, got: u64 },
    /// The client stopped sending the body.
    #[error("no body bytes received for {0:?}")]
    RequestTimeout(std::time::Duration),
    /// Reading the request body failed (client went away, bad framing).
    #[error("reading the request body: {0}")]
    Body(String),
    #[error("object larger than the maximum of {max} bytes")]
    EntityTooLarge { max: u64 },
    #[error("user metadata larger than 2 KiB")]
    MetadataTooLarge,
    #[error("requested range not satisfiable")]
    InvalidRange,
    /// A conditional GET/HEAD whose If-None-Match matched.
    #[error("not modified")]
    NotModified,
    /// Fewer writable storage nodes than the write quorum.
    #[error("not enough storage nodes: {available} writable, {needed} needed")]
    NotEnoughNodes { available: usize, needed: usize },
    /// A stripe could not be made durable on enough nodes.
    #[error("stripe {stripe}: only {ok} shards durable, {needed} needed")]
    WriteQuorum {
        stripe: StripeId,
        ok: usize,
        needed: usize,
    },
    /// A stripe has fewer than k shards that can be read and verified.
    #[error("stripe {stripe}: only {have} verified shards, {need} needed")]
    ReadFailed {
        stripe: StripeId,
        have: usize,
        need: usize,
    },
    #[error("erasure coding: {0}")]
    Erasure(#[from] ErasureError),
    /// The body does not hash to its `x-amz-content-sha256`.
    #[error("the body does not match x-amz-content-sha256")]
    ContentSha256Mismatch,
    /// An aws-chunked chunk signature did not verify.
    #[error("a chunk signature does not match")]
    ChunkSignature,
    /// CompleteMultipartUpload parts not in ascending order of number.
    #[error("the list of parts was not in ascending order")]
    InvalidPartOrder,
    /// CompleteMultipartUpload names a part that is not stored, or with
    /// another ETag.
    #[error("part {0} was not found or its ETag does not match")]
    InvalidPart(u32),
    /// A part other than the last is smaller than the minimum part size.
    #[error("part {number} is {size} bytes; every part but the last must be at least {min} bytes")]
    EntityTooSmall { number: u32, size: u64, min: u64 },
    /// A request body that is well-formed XML but breaks a limit of the
    /// operation (too many keys, no parts).
    #[error("{0}")]
    MalformedXml(String),
    /// A request S3 refuses as a whole (e.g. a copy onto itself that
    /// changes nothing).
    #[error("{0}")]
    InvalidRequest(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Classifies an error from the request body stream.
    ///
    /// s3s verifies `x-amz-content-sha256` and aws-chunked signatures while
    /// the body streams, but its stream error types are private in 0.14.1,
    /// so their names are recognised from the message here, in the one
    /// place that maps errors. Anything else is a broken or short body.
    pub fn from_body_error(err: Box<dyn std::error::Error + Send + Sync>) -> ApiError {
        // A copy's body is another object being read: its errors are ours.
        let err = match err.downcast::<ApiError>() {
            Ok(own) => return *own,
            Err(other) => other,
        };
        let text = format!("{err:?} {err}");
        if text.contains("Sha256Mismatch") {
            ApiError::ContentSha256Mismatch
        } else if text.contains("SignatureMismatch") || text.contains("SignatureDoesNotMatch") {
            ApiError::ChunkSignature
        } else if text.contains("Checksum") {
            ApiError::BadDigest
        } else {
            ApiError::Body(err.to_string())
        }
    }

    /// Maps a failed meta call.
    pub fn from_rpc(err: RpcError) -> ApiError {
        ApiError::MetaUnavailable(err)
    }

    /// True for failures of this cluster rather than of the request; they
    /// are logged at warn level.
    pub fn is_server_side(&self) -> bool {
        matches!(
            self,
            ApiError::MetaUnavailable(_)
                | ApiError::UnexpectedReply(_)
                | ApiError::NotEnoughNodes { .. }
                | ApiError::WriteQuorum { .. }
                | ApiError::ReadFailed { .. }
                | ApiError::Erasure(_)
                | ApiError::Internal(_)
        )
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        ApiError::Meta(e)
    }
}

fn s3(code: S3ErrorCode, msg: impl Into<String>) -> S3Error {
    S3Error::with_message(code, msg.into())
}

impl From<ApiError> for S3Error {
    fn from(err: ApiError) -> S3Error {
        use S3ErrorCode as C;
        let msg = err.to_string();
        match err {
            ApiError::AccessDenied(_) => s3(C::AccessDenied, msg),
            ApiError::WrongRegion { .. } => s3(C::AuthorizationHeaderMalformed, msg),
            ApiError::Meta(m) => match m {
                MetaError::NoSuchBucket => s3(C::NoSuchBucket, "The specified bucket does not exist"),
                MetaError::BucketAlreadyExists { .. } => s3(
                    C::BucketAlreadyExists,
                    "The requested bucket name is not available",
                ),
                MetaError::BucketNotEmpty => s3(
                    C::BucketNotEmpty,
                    "The bucket you tried to delete is not empty",
                ),
                MetaError::NoSuchKey => s3(C::NoSuchKey, "The specified key does not exist."),
                MetaError::PreconditionFailed => s3(
                    C::PreconditionFailed,
                    "At least one of the preconditions you specified did not hold",
                ),
                MetaError::NoSuchAccessKey => s3(C::InvalidAccessKeyId, msg),
                MetaError::Invalid(_) => s3(C::InvalidArgument, msg),
                MetaError::NoSuchNode => s3(C::InternalError, msg),
                MetaError::NoSuchUpload => s3(
                    C::NoSuchUpload,
                    "The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
                ),
                MetaError::AccessDenied => s3(C::AccessDenied, "Access Denied"),
                MetaError::InvalidPart { .. } => s3(
                    C::InvalidPart,
                    "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.",
                ),
            },
            ApiError::BucketAlreadyOwnedByYou => s3(
                C::BucketAlreadyOwnedByYou,
                "Your previous request to create the named bucket succeeded and you already own it",
            ),
            ApiError::MetaUnavailable(RpcError::NoSpace(why)) => {
                s3(C::ServiceUnavailable, format!("The metadata service refused the write: {why}"))
            }
            ApiError::MetaUnavailable(_) => s3(
                C::ServiceUnavailable,
                "The metadata service is unavailable; please retry",
            ),
            ApiError::UnexpectedReply(_) | ApiError::Internal(_) | ApiError::Erasure(_) => {
                s3(C::InternalError, "We encountered an internal error; please retry")
            }
            ApiError::InvalidBucketName(_) => s3(C::InvalidBucketName, msg),
            ApiError::NotImplemented(_) => s3(
                C::NotImplemented,
                format!("A header or operation you provided implies functionality that is not implemented: {msg}"),
            ),
            ApiError::KeyTooLong => s3(C::KeyTooLongError, "Your key is too long"),
            ApiError::InvalidArgument(_) => s3(C::InvalidArgument, msg),
            ApiError::InvalidTag(_) => s3(C::InvalidTag, msg),
            ApiError::InvalidLocationConstraint(_) => s3(C::InvalidLocationConstraint, msg),
            ApiError::InvalidDigest => s3(C::InvalidDigest, msg),
            ApiError::BadDigest => s3(
                C::BadDigest,
                "The Content-MD5 or checksum you specified did not match what we received",
            ),
            ApiError::ChecksumMismatch(algorithm) => s3(
                C::BadDigest,
                format!("The {algorithm} you specified did not match the calculated checksum."),
            ),
            ApiError::MalformedTrailer(_) => {
                // Not a variant of s3s 0.14.1 (see XAmzContentSHA256Mismatch).
                let code: S3ErrorCode = "MalformedTrailerError"
                    .parse()
                    .unwrap_or(C::InvalidRequest);
                let mut e = s3(
                    code,
                    "The request contained trailing data that was not well-formed or did not conform to our published schema.",
                );
                e.set_status_code(http::StatusCode::BAD_REQUEST);
                e
            }
            ApiError::IncompleteBody { .. } | ApiError::Body(_) => s3(
                C::IncompleteBody,
                "You did not provide the number of bytes specified by the Content-Length HTTP header",
            ),
            ApiError::EntityTooLarge { .. } => s3(C::EntityTooLarge, msg),
            ApiError::RequestTimeout(_) => s3(
                C::RequestTimeout,
                "Your socket connection to the server was not read from or written to within the timeout period",
            ),
            ApiError::MetadataTooLarge => s3(C::MetadataTooLarge, msg),
            ApiError::InvalidRange => s3(C::InvalidRange, "The requested range is not satisfiable"),
            ApiError::NotModified => S3Error::new(C::NotModified),
            ApiError::NotEnoughNodes { .. } | ApiError::WriteQuorum { .. } => {
                s3(C::ServiceUnavailable, format!("Not enough storage nodes: {msg}"))
            }
            ApiError::ReadFailed { .. } => s3(
                C::InternalError,
                "Not enough healthy shards to read the object; please retry",
            ),
            ApiError::ContentSha256Mismatch => {
                // s3s 0.14.1 has no variant for this code: a custom code
                // needs its status set by hand.
                let code: S3ErrorCode = "XAmzContentSHA256Mismatch"
                    .parse()
                    .unwrap_or(C::BadDigest);
                let mut e = s3(code, msg);
                e.set_status_code(http::StatusCode::BAD_REQUEST);
                e
            }
            ApiError::ChunkSignature => s3(C::SignatureDoesNotMatch, msg),
            ApiError::InvalidPartOrder => s3(
                C::InvalidPartOrder,
                "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
            ),
            ApiError::InvalidPart(_) => s3(
                C::InvalidPart,
                "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.",
            ),
            ApiError::EntityTooSmall { .. } => s3(
                C::EntityTooSmall,
                "Your proposed upload is smaller than the minimum allowed object size.",
            ),
            ApiError::MalformedXml(_) => s3(
                C::MalformedXML,
                "The XML you provided was not well-formed or did not validate against our published schema",
            ),
            ApiError::InvalidRequest(_) => s3(C::InvalidRequest, msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn code_and_status(e: ApiError) -> (String, Option<StatusCode>) {
        let s: S3Error = e.into();
        let status = s.status_code().or_else(|| s.code().status_code());
        (s.code().as_str().to_string(), status)
    }

    #[test]
    fn meta_errors_map_to_s3_codes() {
        let cases = [
            (ApiError::Meta(MetaError::NoSuchBucket), "NoSuchBucket", 404),
            (ApiError::Meta(MetaError::NoSuchKey), "NoSuchKey", 404),
            (
                ApiError::Meta(MetaError::BucketNotEmpty),
                "BucketNotEmpty",
                409,
            ),
            (
                ApiError::Meta(MetaError::BucketAlreadyExists { owner: "x".into() }),
                "BucketAlreadyExists",
                409,
            ),
            (
                ApiError::BucketAlreadyOwnedByYou,
                "BucketAlreadyOwnedByYou",
                409,
            ),
            (
                ApiError::Meta(MetaError::PreconditionFailed),
                "PreconditionFailed",
                412,
            ),
            (ApiError::AccessDenied("x"), "AccessDenied", 403),
            (ApiError::InvalidBucketName("x"), "InvalidBucketName", 400),
            (ApiError::NotImplemented("x"), "NotImplemented", 501),
            (ApiError::KeyTooLong, "KeyTooLongError", 400),
            (ApiError::BadDigest, "BadDigest", 400),
            (ApiError::InvalidDigest, "InvalidDigest", 400),
            (ApiError::ChecksumMismatch("CRC32"), "BadDigest", 400),
            (
                ApiError::MalformedTrailer("x".into()),
                "MalformedTrailerError",
                400,
            ),
            (
                ApiError::IncompleteBody {
                    expected: 2,
                    got: 1,
                },
                "IncompleteBody",
                400,
            ),
            (ApiError::InvalidRange, "InvalidRange", 416),
            (
                ApiError::MetaUnavailable(RpcError::Unreachable {
                    addr: "m".into(),
                    message: "x".into(),
                }),
                "ServiceUnavailable",
                503,
            ),
            (
                ApiError::NotEnoughNodes {
                    available: 1,
                    needed: 5,
                },
                "ServiceUnavailable",
                503,
            ),
            (ApiError::Internal("x".into()), "InternalError", 500),
            (ApiError::Meta(MetaError::NoSuchUpload), "NoSuchUpload", 404),
            (ApiError::Meta(MetaError::AccessDenied), "AccessDenied", 403),
            (
                ApiError::Meta(MetaError::InvalidPart { number: 1 }),
                "InvalidPart",
                400,
            ),
            (ApiError::InvalidPart(2), "InvalidPart", 400),
            (ApiError::InvalidPartOrder, "InvalidPartOrder", 400),
            (
                ApiError::EntityTooSmall {
                    number: 1,
                    size: 1,
                    min: 5,
                },
                "EntityTooSmall",
                400,
            ),
            (ApiError::MalformedXml("x".into()), "MalformedXML", 400),
            (ApiError::InvalidRequest("x".into()), "InvalidRequest", 400),
        ];
        for (err, code, status) in cases {
            let (c, s) = code_and_status(err);
            assert_eq!(c, code);
            assert_eq!(s.map(|s| s.as_u16()), Some(status), "{code}");
        }
    }

    #[test]
    fn a_full_meta_disk_is_a_503_that_says_so() {
        let err = ApiError::MetaUnavailable(RpcError::NoSpace(
            "meta disk nearly full: 3.0 MiB free".into(),
        ));
        let e = S3Error::from(err);
        assert_eq!(e.code().as_str(), "ServiceUnavailable");
        let status = e.status_code().or_else(|| e.code().status_code());
        assert_eq!(status.map(|s| s.as_u16()), Some(503));
        let msg = e.message().unwrap_or_default();
        assert!(msg.contains("meta disk nearly full"), "{msg}");
    }

    #[test]
    fn body_errors_are_classified() {
        #[derive(Debug, thiserror::Error)]
        #[error("UploadStreamError: Sha256Mismatch")]
        struct Sha;
        #[derive(Debug, thiserror::Error)]
        #[error("connection reset")]
        struct Reset;
        let (c, s) = code_and_status(ApiError::from_body_error(Box::new(Sha)));
        assert_eq!(c, "XAmzContentSHA256Mismatch");
        assert_eq!(s, Some(StatusCode::BAD_REQUEST));
        let (c, _) = code_and_status(ApiError::from_body_error(Box::new(Reset)));
        assert_eq!(c, "IncompleteBody");
    }
}
