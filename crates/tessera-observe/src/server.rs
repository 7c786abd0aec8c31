//! The admin HTTP server: `/metrics`, `/health/live`, `/health/ready`, and
//! whatever read-only pages a role adds with [`AdminRoutes`] (the
//! gateway's console).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Registry;

/// Tells whether the process is ready for traffic.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// An answer of an extra admin route.
#[derive(Clone, Debug)]
pub struct AdminReply {
    pub status: StatusCode,
    pub content_type: &'static str,
    /// Further headers (cache and security policy, redirects).
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

impl AdminReply {
    /// A 200 answer.
    pub fn ok(content_type: &'static str, body: impl Into<Bytes>) -> Self {
        AdminReply {
            status: StatusCode::OK,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

/// Extra read-only routes served on the admin port after the built-in
/// ones: called with the path of every GET or HEAD request the server does
/// not answer itself; `None` means 404. The admin port answers nothing but
/// GET and HEAD, so whatever is added here cannot change the cluster.
pub type AdminRoutes =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<AdminReply>> + Send>> + Send + Sync>;

/// Most admin connections served at once (scrapers and probes only).
const MAX_CONNECTIONS: usize = 64;
/// Time a scraper has to send its request headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn answer(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

/// The built-in routes; `None` for a path they do not know.
fn route(
    req: &Request<hyper::body::Incoming>,
    registry: &Registry,
    ready: &Readiness,
) -> Option<Response<Full<Bytes>>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        let mut r = answer(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n".into());
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return Some(r);
    }
    Some(match req.uri().path() {
        "/metrics" => answer(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            registry.render(),
        ),
        "/health/live" => answer(StatusCode::OK, TEXT, "live\n".into()),
        "/health/ready" => {
            if ready() {
                answer(StatusCode::OK, TEXT, "ready\n".into())
            } else {
                answer(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".into())
            }
        }
        _ => return None,
    })
}

fn extra_reply(reply: AdminReply) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(reply.body));
    *r.status_mut() = reply.status;
    let headers = r.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(reply.content_type),
    );
    for (name, value) in reply.headers {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    r
}

async fn respond(
    req: Request<hyper::body::Incoming>,
    registry: Registry,
    ready: Readiness,
    extra: Option<AdminRoutes>,
) -> Response<Full<Bytes>> {
    if let Some(r) = route(&req, &registry, &ready) {
        return r;
    }
    if let Some(extra) = extra {
        if let Some(reply) = extra(req.uri().path().to_string()).await {
            return extra_reply(reply);
        }
    }
    answer(StatusCode::NOT_FOUND, TEXT, "not found\n".into())
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve_admin(
    listener: TcpListener,
    registry: Registry,
    ready: Readiness,
    shutdown: CancellationToken,
) {
    serve_admin_with(listener, registry, ready, None, shutdown).await
}

/// [`serve_admin`] with `extra` routes after the built-in ones.
pub async fn serve_admin_with(
    listener: TcpListener,
    registry: Registry,
    ready: Readiness,
    extra: Option<AdminRoutes>,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin HTTP (metrics, health) listening");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let registry = registry.clone();
        let ready = ready.clone();
        let extra = extra.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let r = respond(req, registry.clone(), ready.clone(), extra.clone());
                async move { Ok::<_, Infallible>(r.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HEADER_TIMEOUT, conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 request over a fresh connection; the whole answer.
    async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn extra_routes_come_after_the_built_in_ones_and_only_for_get() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = Registry::default();
        registry
            .counter("tessera_test_things_total", "things", &[])
            .inc(&[]);
        let extra: AdminRoutes = Arc::new(|path: String| {
            Box::pin(async move {
                match path.as_str() {
                    "/console" => {
                        let mut r = AdminReply::ok("text/html; charset=utf-8", "<p>hello</p>");
                        r.headers.push(("cache-control", "no-store".into()));
                        Some(r)
                    }
                    // An extra route cannot shadow a built-in one.
                    "/metrics" => Some(AdminReply::ok("text/plain", "shadowed")),
                    _ => None,
                }
            })
        });
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_admin_with(
            listener,
            registry,
            Arc::new(|| true),
            Some(extra),
            stop.clone(),
        ));

        let page = http(addr, "GET", "/console").await;
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(
            page.contains("content-type: text/html; charset=utf-8"),
            "{page}"
        );
        assert!(page.contains("cache-control: no-store"), "{page}");
        assert!(page.ends_with("<p>hello</p>"), "{page}");

        let metrics = http(addr, "GET", "/metrics").await;
        assert!(metrics.contains("tessera_test_things_total 1"), "{metrics}");
        assert!(!metrics.contains("shadowed"), "{metrics}");

        let missing = http(addr, "GET", "/nothing").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

        // Read-only: no other method reaches an extra route.
        let post = http(addr, "POST", "/console").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        assert!(post.contains("allow: GET, HEAD"), "{post}");

        stop.cancel();
        server.await.unwrap();
    }
}
