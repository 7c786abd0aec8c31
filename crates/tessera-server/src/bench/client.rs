//! A small S3 client for load generation: path-style requests signed with
//! SigV4 (`UNSIGNED-PAYLOAD`), over hyper's pooled HTTP/1.1 client. Bodies
//! are sent from shared [`Bytes`] and received frame by frame without
//! being kept, so the client costs little CPU next to the server.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::sigv4::{amz_date, uri_encode, SignedRequest, Signer, EMPTY_SHA256, UNSIGNED_PAYLOAD};

/// Most bytes of an error response kept to find its S3 `<Code>`.
const ERROR_BODY_LIMIT: usize = 4096;

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The server answered with an error status.
    #[error("HTTP {status} {code}")]
    Status { status: StatusCode, code: String },
    /// Connecting, sending or receiving failed.
    #[error("transport: {0}")]
    Transport(String),
    /// No complete answer within the request timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A GET returned a different length than the object has.
    #[error("short body: got {got} of {expected} bytes")]
    ShortBody { got: u64, expected: u64 },
}

/// Where and as whom to send requests.
#[derive(Debug)]
pub struct S3Client {
    http: Client<HttpConnector, Full<Bytes>>,
    /// `http://host:port`, no trailing slash.
    base: String,
    /// The `Host` header (the endpoint's authority).
    host: String,
    signer: Signer,
    timeout: Duration,
}

impl S3Client {
    /// A client for `endpoint` (`http://host[:port]`; TLS is not
    /// supported); `pool` is the idle connections kept (the concurrency).
    pub fn new(
        endpoint: &str,
        signer: Signer,
        timeout: Duration,
        pool: usize,
    ) -> Result<Self, String> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| format!("endpoint `{endpoint}`: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "endpoint `{endpoint}`: scheme `{other}` is not supported (http only)"
                ))
            }
            None => return Err(format!("endpoint `{endpoint}`: expected http://HOST:PORT")),
        }
        let host = uri
            .authority()
            .ok_or_else(|| format!("endpoint `{endpoint}`: no host"))?
            .to_string();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(pool.max(1))
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(S3Client {
            http,
            base: format!("http://{host}"),
            host,
            signer,
            timeout,
        })
    }

    /// PutObject; returns the bytes sent.
    pub async fn put(&self, bucket: &str, key: &str, body: Bytes) -> Result<u64, OpError> {
        let len = body.len() as u64;
        self.timed(async {
            let resp = self.send(Method::PUT, bucket, Some(key), &[], body).await?;
            drain(resp).await?;
            Ok(len)
        })
        .await
    }

    /// GetObject; returns the bytes received (checked against
    /// Content-Length).
    pub async fn get(&self, bucket: &str, key: &str) -> Result<u64, OpError> {
        self.timed(async {
            let resp = self
                .send(Method::GET, bucket, Some(key), &[], Bytes::new())
                .await?;
            let expected = content_length(&resp);
            let got = drain(resp).await?;
            match expected {
                Some(e) if e != got => Err(OpError::ShortBody { got, expected: e }),
                _ => Ok(got),
            }
        })
        .await
    }

    /// HeadObject; returns 0 (no body moves).
    pub async fn stat(&self, bucket: &str, key: &str) -> Result<u64, OpError> {
        self.timed(async {
            let resp = self
                .send(Method::HEAD, bucket, Some(key), &[], Bytes::new())
                .await?;
            drain(resp).await?;
            Ok(0)
        })
        .await
    }

    /// DeleteObject.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<u64, OpError> {
        self.timed(async {
            let resp = self
                .send(Method::DELETE, bucket, Some(key), &[], Bytes::new())
                .await?;
            drain(resp).await?;
            Ok(0)
        })
        .await
    }

    /// One page of ListObjectsV2 under `prefix`; returns the response size.
    pub async fn list(&self, bucket: &str, prefix: &str, max_keys: u32) -> Result<u64, OpError> {
        let max = max_keys.to_string();
        self.timed(async {
            let query = [
                ("list-type", "2"),
                ("prefix", prefix),
                ("max-keys", max.as_str()),
            ];
            let resp = self
                .send(Method::GET, bucket, None, &query, Bytes::new())
                .await?;
            drain(resp).await
        })
        .await
    }

    /// The keys under `prefix`, up to `max` (ListObjectsV2 pages).
    pub async fn list_keys(
        &self,
        bucket: &str,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<String>, OpError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        while keys.len() < max {
            let mut query = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = token.as_deref() {
                query.push(("continuation-token", t));
            }
            let text = self
                .timed(async {
                    let resp = self
                        .send(Method::GET, bucket, None, &query, Bytes::new())
                        .await?;
                    read_text(resp).await
                })
                .await?;
            keys.extend(xml_values(&text, "Key"));
            token = xml_values(&text, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none() {
                break;
            }
        }
        keys.truncate(max);
        Ok(keys)
    }

    /// Creates `bucket` unless it exists (and is ours). Returns whether it
    /// was created.
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<bool, OpError> {
        self.timed(async {
            let head = self
                .send(Method::HEAD, bucket, None, &[], Bytes::new())
                .await;
            match head {
                Ok(resp) => {
                    drain(resp).await?;
                    return Ok(false);
                }
                Err(OpError::Status { status, .. }) if status == StatusCode::NOT_FOUND => {}
                Err(e) => return Err(e),
            }
            match self
                .send(Method::PUT, bucket, None, &[], Bytes::new())
                .await
            {
                Ok(resp) => {
                    drain(resp).await?;
                    Ok(true)
                }
                // Created by a concurrent run in between: fine.
                Err(OpError::Status { code, .. }) if code == "BucketAlreadyOwnedByYou" => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, OpError>>,
    ) -> Result<T, OpError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| OpError::Timeout(self.timeout))?
    }

    /// Signs and sends one request; error statuses become [`OpError::Status`]
    /// (their body read for the S3 error code).
    async fn send(
        &self,
        method: Method,
        bucket: &str,
        key: Option<&str>,
        query: &[(&str, &str)],
        body: Bytes,
    ) -> Result<hyper::Response<Incoming>, OpError> {
        let mut path = String::with_capacity(2 + bucket.len() + key.map_or(0, str::len));
        path.push('/');
        path.push_str(&uri_encode(bucket, true));
        if let Some(key) = key {
            path.push('/');
            path.push_str(&uri_encode(key, false));
        }
        let query_string = super::sigv4::canonical_query(query);
        let uri = if query_string.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{query_string}", self.base)
        };
        let date = amz_date(SystemTime::now());
        let payload_hash = if body.is_empty() {
            EMPTY_SHA256
        } else {
            UNSIGNED_PAYLOAD
        };
        let auth = self.signer.authorization(&SignedRequest {
            method: method.as_str(),
            canonical_uri: &path,
            query,
            headers: &[
                ("host", &self.host),
                ("x-amz-content-sha256", payload_hash),
                ("x-amz-date", &date),
            ],
            payload_hash,
            amz_date: &date,
        });
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, &self.host)
            .header(
                "x-amz-content-sha256",
                HeaderValue::from_static(payload_hash),
            )
            .header("x-amz-date", date)
            .header(http::header::AUTHORIZATION, auth)
            .body(Full::new(body))
            .map_err(|e| OpError::Transport(format!("building the request: {e}")))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| OpError::Transport(error_chain(&e)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let code = error_code(resp).await;
        Err(OpError::Status { status, code })
    }
}

fn content_length(resp: &hyper::Response<Incoming>) -> Option<u64> {
    resp.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads and drops the body; returns its length.
async fn drain(resp: hyper::Response<Incoming>) -> Result<u64, OpError> {
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| OpError::Transport(error_chain(&e)))?;
        if let Some(data) = frame.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

/// The whole body as text.
async fn read_text(resp: hyper::Response<Incoming>) -> Result<String, OpError> {
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| OpError::Transport(error_chain(&e)))?;
        if let Some(data) = frame.data_ref() {
            text.extend_from_slice(data);
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// The text of every `<tag>...</tag>` element of an XML document, with the
/// five predefined entities decoded.
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        let Some(end) = rest.find(&close) else { break };
        out.push(
            rest[..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &rest[end + close.len()..];
    }
    out
}

/// The `<Code>` of an S3 error body, or a placeholder.
async fn error_code(resp: hyper::Response<Incoming>) -> String {
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            let room = ERROR_BODY_LIMIT.saturating_sub(text.len());
            text.extend_from_slice(&data[..data.len().min(room)]);
        }
        if text.len() >= ERROR_BODY_LIMIT {
            break;
        }
    }
    let text = String::from_utf8_lossy(&text);
    text.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_string())
        .unwrap_or_else(|| "(no S3 error code)".to_string())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::xml_values;

    #[test]
    fn xml_values_of_a_listing() {
        let xml = "<ListBucketResult><Contents><Key>a/1</Key></Contents>\
                   <Contents><Key>b&amp;c&lt;d</Key></Contents>\
                   <NextContinuationToken>t0k</NextContinuationToken></ListBucketResult>";
        assert_eq!(xml_values(xml, "Key"), vec!["a/1", "b&c<d"]);
        assert_eq!(xml_values(xml, "NextContinuationToken"), vec!["t0k"]);
        assert!(xml_values(xml, "Missing").is_empty());
        assert!(xml_values("<Key>unclosed", "Key").is_empty());
    }
}
