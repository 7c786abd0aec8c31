//! Internode authentication: every gRPC request between nodes carries
//! `x-tessera-auth: v1:<unix seconds>:<hex HMAC-SHA256>` computed with the
//! cluster secret over `"v1\n" + ts + "\n" + exact method path`
//! (`/tessera.storage.v1.Storage/PutShard`).
//!
//! Binding the MAC to the full method path stops a signature captured for
//! one call from being replayed to another; the timestamp bounds replay of
//! the same call to [`MAX_SKEW`]. There is no default secret: servers
//! refuse every call without a valid signature, and the secret is never
//! printed (its `Debug` is redacted, it is never serialized). Lessons from
//! RustFS (hard-coded token, default secret, prefix-only MAC, secret in
//! logs), see shared/S3-NOTES.md 1.10.
//!
//! Client side: [`AuthChannel`] wraps a tonic `Channel` and signs each
//! request. Server side: [`RequireAuthLayer`] is a tower layer for
//! `tonic::transport::Server::layer` that answers `Unauthenticated` before
//! the request body is read.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::body::Body;
use tonic::Status;

use crate::end_aware::EndAware;

/// Metadata key of the signature.
pub const AUTH_HEADER: &str = "x-tessera-auth";
/// Largest accepted difference between a request's timestamp and the
/// server's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(300);
/// Shortest accepted secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The error text of every config that lacks a secret.
pub const MISSING_SECRET_HELP: &str = "cluster-secret is required (the same on every node): \
set TESSERA_CLUSTER_SECRET, --cluster-secret-file FILE, or `cluster-secret` in the config \
file; at least 16 bytes, e.g. `openssl rand -hex 32` (`tessera dev` keeps its own in \
DIR/cluster-secret)";

/// The shared cluster secret. Its `Debug` never shows the value and it is
/// never serialized (configs printed with `--print-config` omit it).
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Arc<[u8]>);

/// A secret that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cluster secret must be at least {MIN_SECRET_BYTES} bytes (got {0}); generate one with `openssl rand -hex 32`")]
pub struct WeakSecret(pub usize);

impl ClusterSecret {
    /// A secret from text; surrounding whitespace (a file's trailing
    /// newline) is ignored.
    pub fn new(text: &str) -> Result<Self, WeakSecret> {
        let t = text.trim();
        if t.len() < MIN_SECRET_BYTES {
            return Err(WeakSecret(t.len()));
        }
        Ok(ClusterSecret(Arc::from(t.as_bytes())))
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl<'de> serde::Deserialize<'de> for ClusterSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ClusterSecret::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a request was refused. The messages never include the secret or
/// the expected MAC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing {AUTH_HEADER}")]
    Missing,
    #[error("malformed {AUTH_HEADER}")]
    Malformed,
    #[error("{AUTH_HEADER} timestamp outside the allowed clock skew")]
    Stale,
    #[error("bad {AUTH_HEADER} signature")]
    BadSignature,
}

/// Signs and verifies internode requests with the cluster secret.
///
/// A signature depends only on the method path and the second, so both
/// sides remember their last one per path: a client signs each method once
/// a second, and a server checks a header it has already verified with a
/// constant-time comparison instead of a MAC. The HMAC keyed with the
/// secret is kept too (each MAC clones it instead of hashing the key).
/// Both maps hold at most one entry per method path that was signed or
/// verified with the secret.
pub struct ClusterAuth {
    keyed: HmacSha256,
    signed: Mutex<HashMap<String, (u64, http::HeaderValue)>>,
    verified: Mutex<HashMap<String, Vec<u8>>>,
}

impl fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterAuth(<redacted>)")
    }
}

/// Whether `a` and `b` are equal, in a time that depends only on their
/// lengths (a signature header has a fixed length).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Seconds since the epoch, as signatures carry them.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ClusterAuth {
    pub fn new(secret: ClusterSecret) -> Arc<Self> {
        // HMAC takes keys of any length; this cannot fail.
        let keyed = HmacSha256::new_from_slice(secret.bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        Arc::new(ClusterAuth {
            keyed,
            signed: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
        })
    }

    fn mac(&self, ts: u64, path: &str) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(b"v1\n");
        mac.update(ts.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(path.as_bytes());
        mac
    }

    /// The header value for a call of `path` at unix time `ts`.
    pub fn sign(&self, path: &str, ts: u64) -> String {
        let tag = self.mac(ts, path).finalize().into_bytes();
        format!("v1:{ts}:{}", hex::encode(tag))
    }

    /// [`ClusterAuth::sign`] as a header value, computed once per path and
    /// second.
    pub fn sign_header(&self, path: &str, ts: u64) -> Option<http::HeaderValue> {
        let mut signed = self.signed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, v)) = signed.get(path) {
            if *at == ts {
                return Some(v.clone());
            }
        }
        let v = http::HeaderValue::from_str(&self.sign(path, ts)).ok()?;
        signed.insert(path.to_string(), (ts, v.clone()));
        Some(v)
    }

    /// Checks `header` for a call of `path` at unix time `now`.
    pub fn verify(&self, header: Option<&[u8]>, path: &str, now: u64) -> Result<(), AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let text = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let mut parts = text.splitn(3, ':');
        let (Some("v1"), Some(ts), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError::Malformed);
        };
        let ts: u64 = ts.parse().map_err(|_| AuthError::Malformed)?;
        if now.abs_diff(ts) > MAX_SKEW.as_secs() {
            return Err(AuthError::Stale);
        }
        // The same bytes verified before for this path: the same MAC over
        // the same timestamp and path, so valid (the skew was checked above).
        let known = |v: &HashMap<String, Vec<u8>>| {
            v.get(path)
                .is_some_and(|known| constant_time_eq(known, header))
        };
        if known(&self.verified.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(());
        }
        let tag = hex::decode(tag).map_err(|_| AuthError::Malformed)?;
        // `verify_slice` compares in constant time.
        self.mac(ts, path)
            .verify_slice(&tag)
            .map_err(|_| AuthError::BadSignature)?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        match verified.get_mut(path) {
            Some(known) => {
                known.clear();
                known.extend_from_slice(header);
            }
            None => {
                verified.insert(path.to_string(), header.to_vec());
            }
        }
        Ok(())
    }
}

/// A channel that signs every request with the cluster secret, or sends it
/// unsigned when the process has none (every real node refuses those).
#[derive(Clone, Debug)]
pub struct AuthChannel {
    inner: tonic::transport::Channel,
    auth: Option<Arc<ClusterAuth>>,
}

impl AuthChannel {
    pub fn new(inner: tonic::transport::Channel, auth: Option<Arc<ClusterAuth>>) -> Self {
        AuthChannel { inner, auth }
    }
}

impl tower::Service<http::Request<Body>> for AuthChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = <tonic::transport::Channel as tower::Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The last DATA frame carries END_STREAM (see `end_aware`).
        let mut req = req.map(|body| Body::new(EndAware::new(body)));
        if let Some(auth) = &self.auth {
            if let Some(v) = auth.sign_header(req.uri().path(), unix_now()) {
                req.headers_mut().insert(AUTH_HEADER, v);
            }
        }
        self.inner.call(req)
    }
}

/// Server-side layer: refuses every request without a valid signature for
/// its exact path.
#[derive(Clone, Debug)]
pub struct RequireAuthLayer {
    auth: Arc<ClusterAuth>,
}

impl RequireAuthLayer {
    pub fn new(auth: Arc<ClusterAuth>) -> Self {
        RequireAuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for RequireAuthLayer {
    type Service = RequireAuth<S>;
    fn layer(&self, inner: S) -> RequireAuth<S> {
        RequireAuth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service made by [`RequireAuthLayer`].
#[derive(Clone, Debug)]
pub struct RequireAuth<S> {
    inner: S,
    auth: Arc<ClusterAuth>,
}

impl<S, B> tower::Service<http::Request<B>> for RequireAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::Ready<Result<http::Response<Body>, S::Error>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let header = req.headers().get(AUTH_HEADER).map(|v| v.as_bytes());
        match self.auth.verify(header, req.uri().path(), unix_now()) {
            Ok(()) => futures::future::Either::Right(self.inner.call(req)),
            Err(e) => {
                tracing::warn!(path = req.uri().path(), error = %e, "refused an unauthenticated internode call");
                let status = Status::unauthenticated(e.to_string());
                futures::future::Either::Left(futures::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(s: &str) -> Arc<ClusterAuth> {
        ClusterAuth::new(ClusterSecret::new(s).unwrap())
    }

    const A: &str = "/tessera.storage.v1.Storage/GetShard";
    const B: &str = "/tessera.storage.v1.Storage/DeleteShard";

    #[test]
    fn a_signature_verifies_only_for_its_path_secret_and_time() {
        let a = auth("0123456789abcdef0123");
        let now = 1_800_000_000;
        let h = a.sign(A, now);
        assert_eq!(a.verify(Some(h.as_bytes()), A, now), Ok(()));
        assert_eq!(a.verify(Some(h.as_bytes()), A, now + 299), Ok(()));
        // Replayed to another method.
        assert_eq!(
            a.verify(Some(h.as_bytes()), B, now),
            Err(AuthError::BadSignature)
        );
        // Stale or from the future.
        assert_eq!(
            a.verify(Some(h.as_bytes()), A, now + 301),
            Err(AuthError::Stale)
        );
        assert_eq!(
            a.verify(Some(h.as_bytes()), A, now - 301),
            Err(AuthError::Stale)
        );
        // Another cluster's secret.
        let other = auth("another-secret-of-enough-length");
        assert_eq!(
            other.verify(Some(h.as_bytes()), A, now),
            Err(AuthError::BadSignature)
        );
        assert_eq!(a.verify(None, A, now), Err(AuthError::Missing));
    }

    #[test]
    fn remembered_signatures_change_no_verdict() {
        let a = auth("0123456789abcdef0123");
        let now = 1_800_000_000;
        // One header per path and second, the same as an uncached one.
        let h = a.sign_header(A, now).unwrap();
        assert_eq!(h.as_bytes(), a.sign(A, now).as_bytes());
        assert_eq!(a.sign_header(A, now).unwrap(), h);
        let next = a.sign_header(A, now + 1).unwrap();
        assert_eq!(next.as_bytes(), a.sign(A, now + 1).as_bytes());
        assert_ne!(next, h);
        assert_eq!(
            a.sign_header(B, now).unwrap().as_bytes(),
            a.sign(B, now).as_bytes()
        );
        // Verified twice (the second time from memory), and still refused
        // once stale, for another path, or with any byte of it changed.
        for _ in 0..2 {
            assert_eq!(a.verify(Some(h.as_bytes()), A, now), Ok(()));
        }
        assert_eq!(
            a.verify(Some(h.as_bytes()), A, now + 301),
            Err(AuthError::Stale)
        );
        assert_eq!(
            a.verify(Some(h.as_bytes()), B, now),
            Err(AuthError::BadSignature)
        );
        let good = h.as_bytes().to_vec();
        for i in 3..good.len() {
            let mut bad = good.clone();
            bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
            assert!(a.verify(Some(&bad), A, now).is_err(), "byte {i}");
            assert_eq!(a.verify(Some(&good), A, now), Ok(()));
        }
        // A newer header for the path replaces the remembered one; the
        // older one still verifies (by its MAC) within the skew.
        assert_eq!(a.verify(Some(next.as_bytes()), A, now), Ok(()));
        assert_eq!(a.verify(Some(h.as_bytes()), A, now), Ok(()));
        // Another secret remembers nothing of this one's headers.
        let other = auth("another-secret-of-enough-length");
        assert_eq!(
            other.verify(Some(h.as_bytes()), A, now),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn malformed_headers_are_refused_without_panicking() {
        let a = auth("0123456789abcdef0123");
        for h in [
            &b""[..],
            b"v1",
            b"v1:",
            b"v1:1:",
            b"v2:1800000000:00",
            b"v1:-5:00",
            b"v1:99999999999999999999999:00",
            b"v1:1800000000:zz",
            b"\xff\xfe",
        ] {
            assert!(a.verify(Some(h), A, 1_800_000_000).is_err());
        }
    }

    #[test]
    fn secrets_are_never_shown_and_short_ones_refused() {
        let s = ClusterSecret::new("  super-secret-value-123\n").unwrap();
        assert!(!format!("{s:?}").contains("super"));
        assert!(!format!("{:?}", ClusterAuth::new(s)).contains("super"));
        assert!(ClusterSecret::new("short").is_err());
        assert!(ClusterSecret::new("                    ").is_err());
    }
}
