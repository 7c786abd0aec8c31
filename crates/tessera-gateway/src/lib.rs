//! S3 gateway.
