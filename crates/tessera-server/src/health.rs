//! `tessera health`: a probe for container health checks. It asks a node's
//! admin HTTP port for `/health/ready` (or another path) and exits 0 only on
//! `200 OK`, so a Docker `HEALTHCHECK` or compose `healthcheck` needs no
//! shell, curl or wget in the image.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::HealthArgs;

/// The most of an answer the probe reads: a status line and a short body.
const MAX_ANSWER: usize = 64 * 1024;

/// Runs the probe; prints the node's answer on success, the reason on
/// failure (stderr), and sets the exit code.
pub async fn run(args: HealthArgs) -> Result<ExitCode> {
    let listen = std::env::var("TESSERA_ADMIN_LISTEN").ok();
    let Some(addr) = probe_addr(args.addr.as_deref(), listen.as_deref()) else {
        bail!("give --addr HOST:PORT (or set TESSERA_ADMIN_LISTEN)");
    };
    let path = &args.path;
    let timeout = Duration::from_millis(args.timeout_ms);
    match tokio::time::timeout(timeout, probe(&addr, path)).await {
        Ok(Ok((200, body))) => {
            print!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok((status, body))) => {
            eprintln!("{addr} {path}: HTTP {status}: {}", body.trim());
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(e)) => {
            eprintln!("{addr} {path}: {e:#}");
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            eprintln!("{addr} {path}: no answer within {timeout:?}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The address to probe: `--addr`, else the node's own admin listen
/// address with a wildcard host replaced by loopback (so an image's
/// HEALTHCHECK needs no arguments).
fn probe_addr(flag: Option<&str>, admin_listen: Option<&str>) -> Option<String> {
    if let Some(a) = flag {
        return Some(a.to_string());
    }
    let listen = admin_listen?.trim();
    let (host, port) = listen.rsplit_once(':')?;
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "[::]" => "[::1]",
        h => h,
    };
    Some(format!("{host}:{port}"))
}

/// One HTTP/1.0 GET; returns the status code and the body as text.
pub async fn probe(addr: &str, path: &str) -> Result<(u16, String)> {
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        bail!("path must start with / and hold no spaces or control characters");
    }
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER as u64)
        .read_to_end(&mut answer)
        .await?;
    parse_answer(&answer)
}

/// Splits an HTTP/1.x answer into its status code and body.
fn parse_answer(answer: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(answer);
    let status_line = text.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("not an HTTP answer: {status_line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 answer: {status_line:?}");
    }
    let code: u16 = code
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let (code, body) = parse_answer(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nready\n").unwrap();
        assert_eq!((code, body.as_str()), (200, "ready\n"));
        let (code, _) = parse_answer(b"HTTP/1.0 503 Service Unavailable\r\n\r\n").unwrap();
        assert_eq!(code, 503);
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_answer(b"").is_err());
        assert!(parse_answer(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    #[test]
    fn the_default_address_is_the_own_admin_port_on_loopback() {
        let pick = probe_addr;
        assert_eq!(pick(Some("h:1"), Some("0.0.0.0:9")), Some("h:1".into()));
        assert_eq!(
            pick(None, Some("0.0.0.0:9100")),
            Some("127.0.0.1:9100".into())
        );
        assert_eq!(pick(None, Some("[::]:9100")), Some("[::1]:9100".into()));
        assert_eq!(
            pick(None, Some("10.0.0.5:9100")),
            Some("10.0.0.5:9100".into())
        );
        assert_eq!(pick(None, Some("nonsense")), None);
        assert_eq!(pick(None, None), None);
    }

    #[tokio::test]
    async fn probe_reads_a_real_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            for answer in [
                "HTTP/1.1 200 OK\r\n\r\nready\n",
                "HTTP/1.1 503 No\r\n\r\nnot ready\n",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"GET /health/ready HTTP/1.0\r\n"));
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        assert_eq!(
            probe(&addr, "/health/ready").await.unwrap(),
            (200, "ready\n".into())
        );
        assert_eq!(probe(&addr, "/health/ready").await.unwrap().0, 503);
        server.await.unwrap();
        assert!(probe(&addr, "/x y").await.is_err());
        // Nothing listens any more: a clear error, not a hang.
        assert!(probe(&addr, "/health/ready").await.is_err());
    }
}
