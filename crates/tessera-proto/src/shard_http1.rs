//! Shard reads over plain HTTP/1.1, answered with `sendfile(2)`.
//!
//! A storage node's port speaks HTTP/2 (gRPC and [`crate::shard_stream`]).
//! A connection whose first bytes are not the HTTP/2 preface is an
//! HTTP/1.1 connection instead, for shard reads:
//!
//! ```text
//! GET /tessera.storage.Shards/Get HTTP/1.1
//! x-tessera-shard: <stripe hex>.<index>
//! x-tessera-auth: <as for the HTTP/2 read, signed over the same path>
//! ```
//!
//! answered `200` with `content-length` and the shard's bytes, which the
//! node sends from the page cache with `sendfile(2)`: they never enter its
//! memory and are not copied into the socket (HTTP/2 frames its bytes
//! itself, so it cannot). Measured on loopback, that costs the sender
//! 0.21-0.25 ms of CPU per MiB against 0.54-0.58 for a read and a send;
//! the two copies were 35% of a storage node's CPU under 1 MiB GETs.
//! Errors answer with a gRPC status in the headers (`grpc-status`,
//! `grpc-message`) and no body. Requests follow each other on a connection
//! (keep-alive). As with the HTTP/2 read, the node checks the file's
//! header and length, not the hash: the caller hashes every byte it
//! receives against the manifest.
//!
//! The client ([`Http1Reads`]) keeps idle connections per node, and a
//! node that does not answer in HTTP/1.1 (one from before this path) is
//! read over HTTP/2 for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tessera_types::StripeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{ClusterAuth, AUTH_HEADER};
use crate::{shard_stream, RpcError, MAX_MESSAGE_BYTES};

/// The first bytes of every HTTP/2 connection (RFC 9113, 3.4): a
/// connection that starts otherwise is served as HTTP/1.1.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest request or response head accepted.
pub const MAX_HEAD: usize = 8 << 10;
/// Most headers parsed in a head.
const MAX_HEADERS: usize = 16;
/// Idle connections kept per node.
const IDLE_PER_NODE: usize = 32;
/// How long a node that did not answer in HTTP/1.1 is read over HTTP/2.
const UNSUPPORTED_FOR: Duration = Duration::from_secs(60);

/// Whether the first bytes of a connection (at least the first 4) are
/// those of HTTP/2's preface.
pub fn is_h2_preface(first: &[u8]) -> bool {
    let n = first.len().min(H2_PREFACE.len());
    first[..n] == H2_PREFACE[..n]
}

/// The end of a head (after its blank line) in `buf`, if it is all there.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// A parsed request: the shard it asks for, or the status to answer.
pub fn parse_request(
    head: &[u8],
    auth: &ClusterAuth,
    now: u64,
) -> Result<(StripeId, u8), tonic::Status> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => {
            return Err(tonic::Status::invalid_argument(
                "malformed HTTP/1.1 request",
            ))
        }
    }
    if req.method != Some("GET") || req.path != Some(shard_stream::GET_PATH) {
        return Err(tonic::Status::unimplemented(format!(
            "no HTTP/1.1 method {} {}",
            req.method.unwrap_or(""),
            req.path.unwrap_or("")
        )));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("content-length").is_some_and(|v| v != b"0") || header("transfer-encoding").is_some()
    {
        return Err(tonic::Status::invalid_argument("a shard read has no body"));
    }
    auth.verify(header(AUTH_HEADER), shard_stream::GET_PATH, now)
        .map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
    header(shard_stream::SHARD_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(shard_stream::parse_shard_header)
        .ok_or_else(|| tonic::Status::invalid_argument("missing or malformed x-tessera-shard"))
}

/// The head of a successful answer carrying `len` bytes.
pub fn ok_head(len: u64) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n").into_bytes()
}

/// A whole error answer: `status` in gRPC's headers, no body.
pub fn error_response(status: &tonic::Status) -> Vec<u8> {
    let code = match status.code() {
        tonic::Code::NotFound => "404 Not Found",
        tonic::Code::Unauthenticated => "401 Unauthorized",
        tonic::Code::InvalidArgument => "400 Bad Request",
        tonic::Code::Unimplemented => "501 Not Implemented",
        _ => "500 Internal Server Error",
    };
    let mut headers = http::HeaderMap::new();
    // Only fails for a message that cannot be a header value, which
    // percent-encoding rules out.
    let _ = status.add_header(&mut headers);
    let mut out = format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n").into_bytes();
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Why a read over HTTP/1.1 did not give the shard.
#[derive(Debug)]
pub enum Http1Error {
    /// The node answered, or could not be reached: the outcome.
    Rpc(RpcError),
    /// The node does not serve HTTP/1.1 reads: read over HTTP/2.
    Unsupported,
}

impl From<RpcError> for Http1Error {
    fn from(e: RpcError) -> Self {
        Http1Error::Rpc(e)
    }
}

/// The client side: idle connections per node, and the nodes that do
/// not serve these reads.
#[derive(Default)]
pub struct Http1Reads {
    auth: Option<Arc<ClusterAuth>>,
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
    unsupported: Mutex<HashMap<String, Instant>>,
}

/// What one attempt on one connection gave.
enum Attempt {
    Done(Result<Bytes, Http1Error>, Option<TcpStream>),
    /// The connection failed before an answer: `true` if nothing at all
    /// came back.
    Broken(std::io::Error, bool),
}

impl Http1Reads {
    /// Requests signed with `auth` (unsigned without: real nodes refuse
    /// them, as they refuse unsigned gRPC calls).
    pub fn new(auth: Option<Arc<ClusterAuth>>) -> Self {
        Http1Reads {
            auth,
            ..Default::default()
        }
    }

    /// Idle connections kept for `addr` (tests).
    pub fn idle_connections(&self, addr: &str) -> usize {
        self.lock_idle().get(addr).map_or(0, Vec::len)
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<TcpStream>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_unsupported(&self, addr: &str) -> bool {
        let mut map = self.unsupported.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(addr) {
            Some(at) if at.elapsed() < UNSUPPORTED_FOR => true,
            Some(_) => {
                map.remove(addr);
                false
            }
            None => false,
        }
    }

    fn mark_unsupported(&self, addr: &str) {
        self.unsupported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), Instant::now());
    }

    fn put_back(&self, addr: &str, conn: TcpStream) {
        let mut idle = self.lock_idle();
        let list = idle.entry(addr.to_string()).or_default();
        if list.len() < IDLE_PER_NODE {
            list.push(conn);
        }
    }

    /// Reads shard `index` of `stripe` from the node at `addr`. The bytes
    /// are not verified: the caller hashes them against the manifest.
    pub async fn get(&self, addr: &str, stripe: StripeId, index: u8) -> Result<Bytes, Http1Error> {
        if self.is_unsupported(addr) {
            return Err(Http1Error::Unsupported);
        }
        let request = self.request(addr, &stripe, index);
        // A kept connection may have been closed by the node meanwhile:
        // then once more on a new one.
        let kept = self.lock_idle().get_mut(addr).and_then(Vec::pop);
        if let Some(conn) = kept {
            if let Attempt::Done(r, conn) = exchange(conn, &request).await {
                return self.finish(addr, r, conn);
            }
        }
        let conn = TcpStream::connect(addr)
            .await
            .map_err(|e| RpcError::Unreachable {
                addr: addr.to_string(),
                message: e.to_string(),
            })?;
        let _ = conn.set_nodelay(true);
        match exchange(conn, &request).await {
            Attempt::Done(r, conn) => self.finish(addr, r, conn),
            // A node from before this path closes the connection on the
            // first bytes that are not HTTP/2's.
            Attempt::Broken(_, true) => {
                self.mark_unsupported(addr);
                Err(Http1Error::Unsupported)
            }
            Attempt::Broken(e, false) => Err(Http1Error::Rpc(RpcError::Unreachable {
                addr: addr.to_string(),
                message: e.to_string(),
            })),
        }
    }

    fn finish(
        &self,
        addr: &str,
        r: Result<Bytes, Http1Error>,
        conn: Option<TcpStream>,
    ) -> Result<Bytes, Http1Error> {
        if let Some(conn) = conn {
            self.put_back(addr, conn);
        }
        if matches!(r, Err(Http1Error::Unsupported)) {
            self.mark_unsupported(addr);
        }
        r.map_err(|e| match e {
            Http1Error::Rpc(RpcError::Remote { code, message }) => Http1Error::Rpc(
                RpcError::from_status(addr, tonic::Status::new(code, message)),
            ),
            other => other,
        })
    }

    fn request(&self, addr: &str, stripe: &StripeId, index: u8) -> Vec<u8> {
        let mut req = format!(
            "GET {} HTTP/1.1\r\nhost: {addr}\r\n{}: {}\r\n",
            shard_stream::GET_PATH,
            shard_stream::SHARD_HEADER,
            shard_stream::shard_header(stripe, index)
        )
        .into_bytes();
        let signed = self
            .auth
            .as_ref()
            .and_then(|a| a.sign_header(shard_stream::GET_PATH, crate::auth::unix_now()));
        if let Some(v) = signed {
            req.extend_from_slice(AUTH_HEADER.as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(v.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        req
    }
}

/// An answer with more bytes than its `content-length`: its connection
/// cannot be trusted again.
fn overlong() -> Attempt {
    Attempt::Done(
        Err(Http1Error::Rpc(RpcError::Remote {
            code: tonic::Code::Internal,
            message: "HTTP/1.1 shard read answered more bytes than its length".into(),
        })),
        None,
    )
}

/// Sends `request` and reads the answer on `conn`.
async fn exchange(mut conn: TcpStream, request: &[u8]) -> Attempt {
    if let Err(e) = conn.write_all(request).await {
        return Attempt::Broken(e, true);
    }
    let mut buf = BytesMut::with_capacity(1024);
    let end = loop {
        if let Some(end) = head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD || (buf.len() >= 5 && !buf.starts_with(b"HTTP/")) {
            return Attempt::Done(Err(Http1Error::Unsupported), None);
        }
        match conn.read_buf(&mut buf).await {
            Ok(0) => {
                let nothing = buf.is_empty();
                return Attempt::Broken(std::io::ErrorKind::UnexpectedEof.into(), nothing);
            }
            Ok(_) => {}
            Err(e) => {
                let nothing = buf.is_empty();
                return Attempt::Broken(e, nothing);
            }
        }
    };
    let (code, len, status) = {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        if !matches!(resp.parse(&buf[..end]), Ok(httparse::Status::Complete(_))) {
            return Attempt::Done(Err(Http1Error::Unsupported), None);
        }
        let mut map = http::HeaderMap::new();
        for h in resp.headers.iter() {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_bytes(h.value),
            ) {
                map.append(name, value);
            }
        }
        let len = map
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        (
            resp.code.unwrap_or(0),
            len,
            tonic::Status::from_header_map(&map),
        )
    };
    buf.advance(end);
    let Some(len) = len.filter(|&l| l <= MAX_MESSAGE_BYTES) else {
        return Attempt::Done(
            Err(Http1Error::Rpc(RpcError::Remote {
                code: tonic::Code::Internal,
                message: "HTTP/1.1 shard read answered without a usable content-length".into(),
            })),
            None,
        );
    };
    if code != 200 {
        let status = status.unwrap_or_else(|| {
            tonic::Status::unknown(format!("HTTP/1.1 shard read answered {code}"))
        });
        // The answer has no body: the connection can serve again.
        let reusable = len == 0 && buf.is_empty();
        return Attempt::Done(
            Err(Http1Error::Rpc(RpcError::Remote {
                code: status.code(),
                message: status.message().to_string(),
            })),
            reusable.then_some(conn),
        );
    }
    if buf.len() > len {
        return overlong();
    }
    // One buffer of the shard's size; what came with the head first.
    let mut body = BytesMut::with_capacity(len);
    body.extend_from_slice(&buf);
    while body.len() < len {
        match conn.read_buf(&mut body).await {
            Ok(0) => {
                return Attempt::Broken(std::io::ErrorKind::UnexpectedEof.into(), false);
            }
            Ok(_) => {}
            Err(e) => return Attempt::Broken(e, false),
        }
    }
    if body.len() > len {
        return overlong();
    }
    Attempt::Done(Ok(body.freeze()), Some(conn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ClusterSecret;

    fn auth() -> Arc<ClusterAuth> {
        ClusterAuth::new(ClusterSecret::new("0123456789abcdef0123").unwrap())
    }

    #[test]
    fn tells_http2_from_http1() {
        assert!(is_h2_preface(b"PRI "));
        assert!(is_h2_preface(H2_PREFACE));
        assert!(!is_h2_preface(b"GET "));
        assert!(!is_h2_preface(b"PRJ "));
    }

    #[test]
    fn parses_a_signed_request_and_refuses_the_rest() {
        let a = auth();
        let reads = Http1Reads::new(Some(a.clone()));
        let stripe = StripeId::random();
        let req = reads.request("n1:7000", &stripe, 3);
        let end = head_end(&req).unwrap();
        assert_eq!(end, req.len());
        let now = crate::auth::unix_now();
        assert_eq!(parse_request(&req, &a, now).unwrap(), (stripe, 3));

        let unsigned = Http1Reads::new(None).request("n1:7000", &stripe, 3);
        let e = parse_request(&unsigned, &a, now).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);

        let other = String::from_utf8(req.clone())
            .unwrap()
            .replace("GET ", "PUT ");
        let e = parse_request(other.as_bytes(), &a, now).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);

        let body = String::from_utf8(req)
            .unwrap()
            .replace("\r\n\r\n", "\r\ncontent-length: 5\r\n\r\n");
        let e = parse_request(body.as_bytes(), &a, now).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        let e = parse_request(b"\x00\x01garbage\r\n\r\n", &a, now).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    /// A node from before this path closes a connection whose first
    /// bytes are not HTTP/2's: the client then reads over HTTP/2 for a
    /// while instead of trying every time.
    #[tokio::test]
    async fn a_node_that_closes_at_once_is_read_otherwise() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepts = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
                n += 1;
                if n == 1 {
                    break;
                }
            }
            n
        });
        let reads = Http1Reads::new(Some(auth()));
        let e = reads.get(&addr, StripeId::random(), 0).await.unwrap_err();
        assert!(matches!(e, Http1Error::Unsupported), "{e:?}");
        assert_eq!(accepts.await.unwrap(), 1);
        // Remembered: no new connection (the listener is gone).
        let e = reads.get(&addr, StripeId::random(), 0).await.unwrap_err();
        assert!(matches!(e, Http1Error::Unsupported), "{e:?}");
    }

    #[test]
    fn an_error_answer_carries_its_status() {
        let resp = error_response(&tonic::Status::not_found("no shard a.1 (100%)"));
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut headers);
        assert!(matches!(r.parse(&resp), Ok(httparse::Status::Complete(n)) if n == resp.len()));
        assert_eq!(r.code, Some(404));
        let mut map = http::HeaderMap::new();
        for h in r.headers.iter() {
            map.append(
                http::HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        let s = tonic::Status::from_header_map(&map).unwrap();
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "no shard a.1 (100%)");
    }
}
