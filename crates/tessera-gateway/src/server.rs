//! The HTTP side: builds the s3s service (S3 impl, SigV4 auth against meta,
//! no anonymous access, bucket-name rules, virtual hosts) and serves it
//! over HTTP/1.1 and h2 with hyper-util, with a header read timeout, a
//! connection limit and a graceful shutdown that waits for in-flight
//! requests up to a deadline. With `tls-cert` and `tls-key` the same port
//! speaks HTTPS only (rustls with the ring provider; ALPN h2 and
//! http/1.1); the handshake runs in the connection's task under the header
//! read timeout, so a client that stalls in it holds only its own slot.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::auth::{MetaAuth, RequireAuth};
use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::metrics::Metered;
use crate::names::{AnyBucketName, CheckedNames, VirtualHosts};
use crate::s3::Tessera;

/// hyper's HTTP/1 read buffer limit (its default is ~400 KiB), and the h2
/// header list limit: bounds the memory a request head can take.
const MAX_HTTP1_BUFFER: usize = 64 << 10;

/// Builds the s3s service.
pub(crate) fn build_service(config: &GatewayConfig, s3: Tessera) -> S3Service {
    let auth = MetaAuth::new(
        s3.meta.clone(),
        GatewayConfig::ms(config.auth_cache_ttl_ms),
        GatewayConfig::ms(config.auth_negative_ttl_ms),
    );
    let mut builder = S3ServiceBuilder::new(s3);
    builder.set_auth(auth);
    builder.set_access(CheckedNames(RequireAuth));
    builder.set_validation(AnyBucketName);
    if !config.s3_domain.is_empty() {
        builder.set_host(VirtualHosts::new(&config.s3_domain));
    }
    builder.build()
}

/// The rustls server configuration of `tls-cert` and `tls-key`, or None
/// when neither is set (plain HTTP).
pub(crate) fn tls_config(
    config: &GatewayConfig,
) -> Result<Option<Arc<rustls::ServerConfig>>, GatewayError> {
    let err = |m: String| GatewayError::Config(m);
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err(err("tls-cert and tls-key must be set together".into())),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(format!("tls-cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(err(format!("tls-cert {}: no certificate", cert.display())));
    }
    // The error names the file, never its contents.
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| err(format!("tls-key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err(format!("tls-cert/tls-key: {e}")))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(tls)))
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
        // A request head larger than this is refused (431) before it is
        // parsed; also the largest body read at once. The S3 limits on
        // headers are stricter still (auth::check_request).
        .max_buf_size(MAX_HTTP1_BUFFER)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(std::time::Duration::from_secs(20)))
        .max_concurrent_streams(128)
        .max_header_list_size(MAX_HTTP1_BUFFER as u32);
    let tls = match tls_config(config) {
        Ok(t) => t.map(TlsAcceptor::from),
        Err(e) => {
            // validate() loads the same files; they changed since.
            tracing::error!(error = %e, "TLS configuration failed; not serving");
            return;
        }
    };
    let handshake_timeout = GatewayConfig::ms(config.header_read_timeout_ms);
    let builder = Arc::new(builder);
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
        let (builder, service, tls) = (builder.clone(), service.clone(), tls.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let r = match tls {
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .into_owned();
                            watcher.watch(conn).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = r {
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
    fn tls_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let with = |cert: Option<&str>, key: Option<&str>| GatewayConfig {
            tls_cert: cert.map(|c| dir.path().join(c)),
            tls_key: key.map(|k| dir.path().join(k)),
            ..GatewayConfig::default()
        };
        assert!(tls_config(&with(None, None)).unwrap().is_none());
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not a pem").unwrap();
        let tls = tls_config(&with(Some("cert.pem"), Some("key.pem")))
            .unwrap()
            .unwrap();
        assert_eq!(
            tls.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // One without the other, missing files, no certificate, a key that
        // is not one: refused at startup, naming the key.
        for (c, k, what) in [
            (Some("cert.pem"), None, "together"),
            (None, Some("key.pem"), "together"),
            (Some("nope.pem"), Some("key.pem"), "tls-cert"),
            (Some("junk.pem"), Some("key.pem"), "tls-cert"),
            (Some("cert.pem"), Some("junk.pem"), "tls-key"),
            (Some("cert.pem"), Some("cert.pem"), "tls-key"),
        ] {
            match tls_config(&with(c, k)) {
                Err(GatewayError::Config(m)) => assert!(m.contains(what), "{m}"),
                other => panic!("{c:?} {k:?}: {:?}", other.map(|t| t.is_some())),
            }
        }
    }
}
