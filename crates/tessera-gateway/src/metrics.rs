//! The gateway's metrics: S3 requests by operation and status, their
//! latency (until the response head is ready), and body bytes in and out,
//! counted by a layer around the s3s service; and the repair and GC
//! workers' progress ([`RepairMetrics`]).
//!
//! The operation name comes from s3s (recorded during the access check,
//! which every request that passed signature checking reaches); requests
//! refused earlier (bad signature, malformed) are named from their method
//! and path shape.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use s3s::service::S3Service;
use tessera_observe::crash::Contained;
use tessera_observe::{Counter, Gauge, Histogram, Registry, LATENCY_BUCKETS};

/// The gateway's metric families.
pub struct GatewayMetrics {
    pub registry: Registry,
    /// The repair and GC workers' families, in the same registry.
    pub repair: RepairMetrics,
    requests: Counter,
    latency: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
    panics: Counter,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let r = Registry::new();
        GatewayMetrics {
            requests: r.counter(
                "tessera_gateway_s3_requests_total",
                "S3 requests answered, by operation and HTTP status.",
                &["op", "status"],
            ),
            latency: r.histogram(
                "tessera_gateway_s3_request_duration_seconds",
                "Time from request to response head, by operation.",
                &["op"],
                LATENCY_BUCKETS,
            ),
            bytes_in: r.counter(
                "tessera_gateway_s3_received_bytes_total",
                "Request body bytes received from S3 clients.",
                &[],
            ),
            bytes_out: r.counter(
                "tessera_gateway_s3_sent_bytes_total",
                "Response body bytes sent to S3 clients.",
                &[],
            ),
            panics: r.counter(
                "tessera_gateway_panics_total",
                "Panics in S3 request handling, each contained to its request \
                 (500 InternalError, or a response body cut short); see tessera_observe::crash.",
                &[],
            ),
            repair: RepairMetrics::new(&r),
            registry: r,
        }
    }
}

/// What the repair worker, the GC worker and the shard-problem reporter
/// have done in this gateway.
#[derive(Clone)]
pub struct RepairMetrics {
    /// Stripes whose rebuilt shards were committed.
    pub repaired_stripes: Counter,
    /// Shard bytes rebuilt and written by committed repairs.
    pub repaired_bytes: Counter,
    /// Shard bytes read as sources of rebuilds.
    pub read_bytes: Counter,
    /// Repairs given back as failed (meta retries them after a back-off).
    pub failed: Counter,
    /// Repairs whose compare-and-set lost to a concurrent change.
    pub lost_races: Counter,
    /// Leased stripes that turned out whole.
    pub whole: Counter,
    /// Stripes being repaired now.
    pub in_flight: Gauge,
    /// Shard files deleted by the GC worker.
    pub gc_deleted: Counter,
    /// Shard problems sent to meta by degraded reads.
    pub problems_reported: Counter,
}

impl RepairMetrics {
    /// Registers the families in `r`.
    pub fn new(r: &Registry) -> Self {
        RepairMetrics {
            repaired_stripes: r.counter(
                "tessera_gateway_repair_stripes_total",
                "Stripes repaired (rebuilt shards committed) by this gateway.",
                &[],
            ),
            repaired_bytes: r.counter(
                "tessera_gateway_repair_written_bytes_total",
                "Shard bytes rebuilt and written by committed repairs.",
                &[],
            ),
            read_bytes: r.counter(
                "tessera_gateway_repair_read_bytes_total",
                "Shard bytes read as the sources of repairs.",
                &[],
            ),
            failed: r.counter(
                "tessera_gateway_repair_failures_total",
                "Repairs that failed and were given back for a later retry.",
                &[],
            ),
            lost_races: r.counter(
                "tessera_gateway_repair_conflicts_total",
                "Repairs not committed because the stripe changed meanwhile.",
                &[],
            ),
            whole: r.counter(
                "tessera_gateway_repair_whole_total",
                "Leased stripes that needed no repair.",
                &[],
            ),
            in_flight: r.gauge(
                "tessera_gateway_repair_in_flight_stripes",
                "Stripes being repaired by this gateway now.",
                &[],
            ),
            gc_deleted: r.counter(
                "tessera_gateway_gc_deleted_shards_total",
                "Shard files deleted by the GC worker.",
                &[],
            ),
            problems_reported: r.counter(
                "tessera_gateway_shard_problems_reported_total",
                "Missing, corrupt or unreachable shards reported to meta by reads.",
                &[],
            ),
        }
    }
}

impl Default for RepairMetrics {
    /// Families in a registry of their own (tests, tools).
    fn default() -> Self {
        RepairMetrics::new(&Registry::new())
    }
}

impl GatewayMetrics {
    /// Requests counted so far for `op` and `status` (tests).
    pub fn requests(&self, op: &str, status: u16) -> u64 {
        self.requests.get(&[op, &status.to_string()])
    }
}

/// Where the access check leaves the s3s operation name of a request.
#[derive(Clone, Default)]
pub(crate) struct OpSlot(Arc<Mutex<Option<String>>>);

impl OpSlot {
    pub(crate) fn set(&self, op: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(op.to_string());
    }
    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// An operation name from the request's shape, for requests s3s never
/// routed.
fn op_from_shape(method: &http::Method, path: &str, query: Option<&str>) -> &'static str {
    let mut segs = path.trim_start_matches('/').splitn(2, '/');
    let bucket = segs.next().is_some_and(|s| !s.is_empty());
    let key = segs.next().is_some_and(|s| !s.is_empty());
    let has = |k: &str| crate::query::has(query, k);
    use http::Method as M;
    match (method, bucket, key) {
        (&M::GET, false, _) => "ListBuckets",
        (&M::GET, true, false) => "ListObjects",
        (&M::GET, true, true) => "GetObject",
        (&M::HEAD, true, false) => "HeadBucket",
        (&M::HEAD, true, true) => "HeadObject",
        (&M::PUT, true, false) => "CreateBucket",
        (&M::PUT, true, true) if has("partNumber") => "UploadPart",
        (&M::PUT, true, true) => "PutObject",
        (&M::DELETE, true, false) => "DeleteBucket",
        (&M::DELETE, true, true) => "DeleteObject",
        (&M::POST, true, false) if has("delete") => "DeleteObjects",
        (&M::POST, true, true) if has("uploads") => "CreateMultipartUpload",
        (&M::POST, true, true) if has("uploadId") => "CompleteMultipartUpload",
        _ => "Other",
    }
}

/// A body that counts the data bytes that pass through it and, for a
/// request body, notes when it has been read to its end.
pub struct Counted<B> {
    inner: Pin<Box<B>>,
    counter: Counter,
    ended: Option<Arc<AtomicBool>>,
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = self.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.counter.add(&[], d.len() as u64);
            }
        }
        if let Some(ended) = &self.ended {
            if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
                ended.store(true, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a response body fails with (s3s's error type).
type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A response body whose polls run in [`tessera_observe::crash::contain`]:
/// a panic while producing it (a GET's stream) fails that response, which
/// hyper then cuts short (the client sees fewer bytes than
/// `Content-Length`), instead of stopping the gateway.
pub struct ContainedBody {
    inner: s3s::Body,
    panics: Counter,
    failed: bool,
}

impl Body for ContainedBody {
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StdError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let inner = Pin::new(&mut this.inner);
        match tessera_observe::crash::contain(|| inner.poll_frame(cx)) {
            Ok(r) => r,
            Err(p) => {
                this.failed = true;
                this.panics.inc(&[]);
                tracing::error!(error = %p, "an S3 response body panicked; the response is cut short");
                Poll::Ready(Some(Err(Box::new(p))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The s3s service with metrics.
#[derive(Clone)]
pub(crate) struct Metered {
    inner: S3Service,
    metrics: Arc<GatewayMetrics>,
}

impl Metered {
    pub(crate) fn new(inner: S3Service, metrics: Arc<GatewayMetrics>) -> Self {
        Metered { inner, metrics }
    }
}

type Incoming = hyper::body::Incoming;

impl hyper::service::Service<http::Request<Incoming>> for Metered {
    type Response = http::Response<Counted<ContainedBody>>;
    type Error = s3s::HttpError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let start = Instant::now();
        let slot = OpSlot::default();
        let shape = op_from_shape(req.method(), req.uri().path(), req.uri().query());
        let metrics = self.metrics.clone();
        let mut inner = self.inner.clone();
        // hyper drops a HEAD response's body on HTTP/1.1 but not on h2, where
        // DATA on a HEAD stream is a protocol error (s3s answers a failed HEAD
        // with an XML error body): send the head only.
        let head = req.method() == http::Method::HEAD;
        // Presigned-URL rules s3s leaves open (see `s3::presign`).
        let refused = crate::s3::presign::check_query(req.uri().query()).err();
        // An HTTP/1 request whose body is not read to its end (a PUT refused
        // on its headers): hyper then closes the connection after the
        // response, but says nothing in it, so a client may already be
        // sending its next request on that connection and lose it. Answer
        // with `Connection: close` instead (h2 streams end on their own).
        let ended = Arc::new(AtomicBool::new(req.body().is_end_stream()));
        let close_unless_read = (req.version() < http::Version::HTTP_2).then(|| ended.clone());
        let mut req = req.map(|b| Counted {
            inner: Box::pin(b),
            counter: metrics.bytes_in.clone(),
            ended: Some(ended),
        });
        req.extensions_mut().insert(slot.clone());
        Box::pin(async move {
            let r = match refused {
                Some(message) => Ok(crate::s3::presign::error_response(message)),
                None => {
                    let handled = async { tower::Service::call(&mut inner, req).await };
                    match Contained::new(handled).await {
                        Ok(r) => r,
                        Err(p) => {
                            metrics.panics.inc(&[]);
                            tracing::error!(error = %p, op = shape,
                                "an S3 request handler panicked; answered 500 InternalError");
                            Ok(crate::s3::presign::xml_error(
                                http::StatusCode::INTERNAL_SERVER_ERROR,
                                "InternalError",
                                "We encountered an internal error. Please try again.",
                            ))
                        }
                    }
                }
            };
            let op = slot.get().unwrap_or_else(|| shape.to_string());
            let op = op.as_str();
            let status = match &r {
                Ok(resp) => resp.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            metrics.requests.inc(&[op, &status]);
            metrics
                .latency
                .observe(&[op], start.elapsed().as_secs_f64());
            let (counter, panics) = (metrics.bytes_out.clone(), metrics.panics.clone());
            r.map(|mut resp| {
                if close_unless_read.is_some_and(|e| !e.load(Ordering::Relaxed)) {
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                resp.map(|b| Counted {
                    inner: Box::pin(ContainedBody {
                        inner: if head { s3s::Body::empty() } else { b },
                        panics,
                        failed: false,
                    }),
                    counter,
                    ended: None,
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that yields one frame, then panics.
    struct PanicsOnSecondFrame(bool);

    impl Body for PanicsOnSecondFrame {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            assert!(!self.0, "a bug in the body's stream");
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
        }
    }

    #[tokio::test]
    async fn a_response_body_that_panics_fails_without_stopping_the_gateway() {
        use http_body_util::BodyExt;
        let metrics = GatewayMetrics::default();
        let mut body = ContainedBody {
            inner: s3s::Body::http_body(PanicsOnSecondFrame(false)),
            panics: metrics.panics.clone(),
            failed: false,
        };
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first"));
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(
            err.to_string().contains("a bug in the body's stream"),
            "{err}"
        );
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none(), "polled again after the panic");
        let text = metrics.registry.render();
        assert!(text.contains("tessera_gateway_panics_total 1\n"), "{text}");
    }

    #[test]
    fn shapes_name_operations() {
        let g = http::Method::GET;
        assert_eq!(op_from_shape(&g, "/", None), "ListBuckets");
        assert_eq!(op_from_shape(&g, "/b", Some("list-type=2")), "ListObjects");
        assert_eq!(op_from_shape(&g, "/b/k/x", None), "GetObject");
        assert_eq!(
            op_from_shape(&http::Method::PUT, "/b/k", Some("partNumber=1&uploadId=x")),
            "UploadPart"
        );
        assert_eq!(
            op_from_shape(&http::Method::POST, "/b", Some("delete")),
            "DeleteObjects"
        );
    }
}
