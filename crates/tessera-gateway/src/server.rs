//! The HTTP side: builds the s3s service (S3 impl, SigV4 auth against meta,
//! no anonymous access, bucket-name rules, virtual hosts) and serves it
//! over HTTP/1.1 and h2 with hyper-util, with a header read timeout, a
//! connection limit and a graceful shutdown that waits for in-flight
//! requests up to a deadline.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::host::{S3Host, VirtualHost};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::S3Result;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::{MetaAuth, RequireAuth};
use crate::config::GatewayConfig;
use crate::metrics::Metered;
use crate::names::BucketNameRules;
use crate::s3::Tessera;

/// Virtual-hosted-style addressing under one base domain; any other host
/// (an IP, `localhost`, another name) is path-style.
struct VirtualHosts {
    domain: String,
}

impl S3Host for VirtualHosts {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let bucket = name
            .strip_suffix(self.domain.as_str())
            .and_then(|b| b.strip_suffix('.'))
            .filter(|b| !b.is_empty());
        Ok(match bucket {
            Some(b) => VirtualHost::new(self.domain.as_str()).with_bucket(b),
            None => VirtualHost::new(name),
        })
    }
}

/// Builds the s3s service.
pub(crate) fn build_service(config: &GatewayConfig, s3: Tessera) -> S3Service {
    let auth = MetaAuth::new(
        s3.meta.clone(),
        GatewayConfig::ms(config.auth_cache_ttl_ms),
        GatewayConfig::ms(config.auth_negative_ttl_ms),
    );
    let mut builder = S3ServiceBuilder::new(s3);
    builder.set_auth(auth);
    builder.set_access(RequireAuth);
    builder.set_validation(BucketNameRules);
    if let Some(domain) = &config.domain {
        builder.set_host(VirtualHosts {
            domain: domain.clone(),
        });
    }
    builder.build()
}

/// Serves `service` on `listener` until `shutdown`, then drains.
pub(crate) async fn serve_http(
    listener: TcpListener,
    service: Metered,
    config: &GatewayConfig,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(GatewayConfig::ms(config.header_read_timeout_ms))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(std::time::Duration::from_secs(20)))
        .max_concurrent_streams(128);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = GatewayConfig::ms(config.shutdown_grace_ms);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("gateway connections drained"),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "gateway shutdown deadline passed; closing connections")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_hosts() {
        let h = VirtualHosts {
            domain: "s3.example.com".into(),
        };
        let vh = h.parse_host_header("photos.s3.example.com:9000").unwrap();
        assert_eq!(vh.bucket(), Some("photos"));
        assert_eq!(
            h.parse_host_header("s3.example.com").unwrap().bucket(),
            None
        );
        assert_eq!(
            h.parse_host_header("localhost:9000").unwrap().bucket(),
            None
        );
        assert_eq!(
            h.parse_host_header("127.0.0.1:9000").unwrap().bucket(),
            None
        );
    }
}
