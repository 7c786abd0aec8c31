//! The console: a read-only web page on the gateway's admin port that shows
//! the cluster at a glance (storage nodes by zone with their state and
//! capacity, the meta group and its leader, buckets with object counts and
//! sizes, stripes by surviving-shard count and repair progress).
//!
//! The page is static HTML, JS and CSS compiled into the binary
//! (`include_str!`, no build step); it polls `/console/api/status`, a JSON
//! snapshot made from the same meta queries as `tessera admin status`
//! (`ClusterMap`, `Durability`, `ListBuckets`, `BucketStats`, Raft status).
//! The admin port answers only GET and HEAD, so the console cannot change
//! anything; it is an operator port and has no login of its own (bind it to
//! a private address).

mod status;

use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use tessera_observe::{AdminReply, AdminRoutes};
use tessera_proto::MetaClient;

pub use status::{StatusSource, StatusView};

const INDEX_HTML: &str = include_str!("index.html");
const CONSOLE_JS: &str = include_str!("console.js");
const CONSOLE_CSS: &str = include_str!("console.css");

/// Scripts, styles and data only from the admin port itself; no inline
/// code, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the console says about the gateway that serves it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GatewayInfo {
    pub version: &'static str,
    pub region: String,
    pub k: u8,
    pub m: u8,
}

impl GatewayInfo {
    pub fn of(config: &crate::GatewayConfig) -> Self {
        GatewayInfo {
            version: env!("CARGO_PKG_VERSION"),
            region: config.region.clone(),
            k: config.k,
            m: config.m,
        }
    }
}

/// The console's routes, for [`tessera_observe::serve_admin_with`].
pub fn routes(meta: MetaClient, info: GatewayInfo) -> AdminRoutes {
    let source = Arc::new(StatusSource::new(meta, info));
    Arc::new(move |path: String| {
        let source = source.clone();
        Box::pin(async move { answer(&source, &path).await })
    })
}

fn with_headers(mut r: AdminReply, cache: &str) -> AdminReply {
    r.headers.push(("cache-control", cache.to_string()));
    r.headers.push(("x-content-type-options", "nosniff".into()));
    r.headers.push(("referrer-policy", "no-referrer".into()));
    r
}

fn asset(content_type: &'static str, body: &'static str) -> AdminReply {
    // `no-cache`: revalidate, so an upgraded gateway serves its own page.
    with_headers(AdminReply::ok(content_type, body), "no-cache")
}

/// The answer for `path`, or `None` (404) for a path that is not the
/// console's.
pub async fn answer(source: &StatusSource, path: &str) -> Option<AdminReply> {
    Some(match path {
        "/" => AdminReply {
            status: StatusCode::FOUND,
            content_type: "text/plain; charset=utf-8",
            headers: vec![("location", "/console/".into())],
            body: Bytes::from_static(b"the console is at /console/\n"),
        },
        "/console" | "/console/" => {
            let mut r = asset("text/html; charset=utf-8", INDEX_HTML);
            r.headers.push(("content-security-policy", CSP.into()));
            r.headers.push(("x-frame-options", "DENY".into()));
            r
        }
        "/console/console.js" => asset("text/javascript; charset=utf-8", CONSOLE_JS),
        "/console/console.css" => asset("text/css; charset=utf-8", CONSOLE_CSS),
        "/console/api/status" => with_headers(
            AdminReply::ok("application/json", source.snapshot().await),
            "no-store",
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> StatusSource {
        // No meta node listens here: every query fails fast.
        let meta = MetaClient::with_deadline(
            vec!["127.0.0.1:1".into()],
            std::time::Duration::from_millis(300),
        );
        StatusSource::new(
            meta,
            GatewayInfo {
                version: "test",
                region: "us-east-1".into(),
                k: 4,
                m: 2,
            },
        )
    }

    #[tokio::test]
    async fn serves_the_page_its_assets_and_nothing_else() {
        let s = source();
        let page = answer(&s, "/console/").await.expect("page");
        assert_eq!(page.status, StatusCode::OK);
        let html = std::str::from_utf8(&page.body).unwrap();
        assert!(html.contains("console.js") && html.contains("console.css"));
        assert!(page
            .headers
            .iter()
            .any(|(n, v)| *n == "content-security-policy" && v.contains("script-src 'self'")));
        // The CSP forbids inline scripts: the page must not need any.
        assert!(!html.contains("<script>"), "inline script in index.html");
        let root = answer(&s, "/").await.expect("redirect");
        assert_eq!(root.status, StatusCode::FOUND);
        assert_eq!(
            answer(&s, "/console/console.js")
                .await
                .unwrap()
                .content_type,
            "text/javascript; charset=utf-8"
        );
        assert!(answer(&s, "/console/../metrics").await.is_none());
        assert!(answer(&s, "/console/secret").await.is_none());
    }

    #[tokio::test]
    async fn status_reports_errors_as_json_when_meta_is_unreachable() {
        let s = source();
        let r = answer(&s, "/console/api/status").await.expect("status");
        assert_eq!(r.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(v["gateway"]["k"], 4);
        assert!(v["storage"]["error"].is_string(), "{v}");
        assert!(v["meta"]["leader"].is_null(), "{v}");
        assert_eq!(v["meta"]["members"][0]["reachable"], false, "{v}");
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| *n == "cache-control" && v == "no-store"));
    }
}
