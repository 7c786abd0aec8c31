//! Authentication: SigV4 (and SigV2) signatures are verified by s3s against
//! secret keys looked up in meta; [`MetaAuth`] caches them briefly.
//! [`RequireAuth`] refuses every request that is not signed: there is no
//! anonymous access at all. Bucket ownership is checked by the handlers
//! (see `s3::Tessera::authorize`), after authentication.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Error, S3Result};
use tessera_proto::MetaClient;
use tessera_types::meta::{MetaError, MetaQuery, QueryReply};
use tokio::time::Instant;

use crate::error::ApiError;

/// Most cached keys; the cache is cleared when it fills (a flood of random
/// access key ids must not grow memory).
const MAX_CACHED_KEYS: usize = 10_000;
/// Longest access key id looked up at all.
const MAX_ACCESS_KEY_LEN: usize = 128;

struct Cached {
    /// `None`: the key is known not to exist.
    secret: Option<String>,
    until: Instant,
}

/// Secret keys from meta (`MetaQuery::GetAccessKey`), cached for `ttl`
/// (unknown keys for `negative_ttl`).
pub struct MetaAuth {
    meta: MetaClient,
    ttl: Duration,
    negative_ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl MetaAuth {
    pub fn new(meta: MetaClient, ttl: Duration, negative_ttl: Duration) -> Self {
        MetaAuth {
            meta,
            ttl,
            negative_ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, id: &str) -> Option<Option<String>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(id)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.secret.clone())
    }

    fn remember(&self, id: &str, secret: Option<String>) {
        let ttl = if secret.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_KEYS {
            cache.clear();
        }
        cache.insert(
            id.to_string(),
            Cached {
                secret,
                until: Instant::now() + ttl,
            },
        );
    }

    async fn lookup(&self, id: &str) -> Result<String, ApiError> {
        if id.is_empty() || id.len() > MAX_ACCESS_KEY_LEN {
            return Err(MetaError::NoSuchAccessKey.into());
        }
        if let Some(hit) = self.cached(id) {
            return hit.ok_or(ApiError::Meta(MetaError::NoSuchAccessKey));
        }
        let reply = self
            .meta
            .query(&MetaQuery::GetAccessKey { id: id.to_string() })
            .await
            .map_err(ApiError::from_rpc)?;
        let secret = match reply {
            QueryReply::AccessKey(key) => key.map(|k| k.secret),
            QueryReply::Err(MetaError::NoSuchAccessKey) => None,
            QueryReply::Err(e) => return Err(e.into()),
            _ => return Err(ApiError::UnexpectedReply("GetAccessKey")),
        };
        self.remember(id, secret.clone());
        secret.ok_or(ApiError::Meta(MetaError::NoSuchAccessKey))
    }
}

#[async_trait::async_trait]
impl S3Auth for MetaAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.lookup(access_key).await {
            Ok(secret) => Ok(SecretKey::from(secret)),
            Err(e) => {
                if e.is_server_side() {
                    tracing::warn!(error = %e, "access key lookup failed");
                }
                Err(S3Error::from(e))
            }
        }
    }
}

/// Denies every request without verified credentials. (s3s calls this
/// for every operation when an auth provider is set; credentials are
/// `None` for unsigned requests.)
pub struct RequireAuth;

#[async_trait::async_trait]
impl S3Access for RequireAuth {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        // Name the operation for the request metrics.
        let op = cx.s3_op().name().to_string();
        if let Some(slot) = cx.extensions_mut().get::<crate::metrics::OpSlot>() {
            slot.set(&op);
        }
        match cx.credentials() {
            Some(_) => Ok(()),
            None => Err(ApiError::AccessDenied("anonymous access is not allowed").into()),
        }
    }
}
