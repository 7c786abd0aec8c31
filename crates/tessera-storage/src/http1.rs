//! The storage port's HTTP/1.1 side: shard reads answered with
//! `sendfile(2)` ([`tessera_proto::shard_http1`] has the protocol and the
//! client). [`split`] tells each new connection's protocol from its first
//! bytes: HTTP/2 goes on to the gRPC server, anything else is served here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tessera_proto::auth::ClusterAuth;
use tessera_proto::shard_http1::{self, MAX_HEAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{ShardKey, StorageError};
use crate::metrics::StorageMetrics;
use crate::store::ShardStore;

/// How long a new connection may take to send its first bytes, and an
/// HTTP/1.1 connection to send its next request.
const IDLE: Duration = Duration::from_secs(120);
/// How long a `sendfile` waits for room in the socket before it gives up.
const SEND_STALL: Duration = Duration::from_secs(30);

/// What the HTTP/1.1 side needs.
#[derive(Clone)]
pub(crate) struct Http1Server {
    pub store: Arc<ShardStore>,
    pub metrics: Arc<StorageMetrics>,
    pub auth: Arc<ClusterAuth>,
    pub stop: CancellationToken,
}

/// Accepts connections on `listener` until `stop`: each one's first bytes
/// say where it goes; HTTP/2 connections come out of the returned channel
/// (for the gRPC server), the others are served here.
pub(crate) fn split(
    listener: TcpListener,
    reads: Http1Server,
) -> mpsc::Receiver<io::Result<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = reads.stop.cancelled() => return,
                c = listener.accept() => c,
            };
            let (conn, _) = match conn {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Shard frames are latency-sensitive; never wait for Nagle.
            let _ = conn.set_nodelay(true);
            let (tx, reads) = (tx.clone(), reads.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 4];
                let peeked = tokio::time::timeout(IDLE, peek_exact(&conn, &mut first)).await;
                match peeked {
                    Ok(Ok(())) if shard_http1::is_h2_preface(&first) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Ok(())) => serve(conn, reads).await,
                    // Closed or silent before 4 bytes: nothing to serve.
                    _ => {}
                }
            });
        }
    });
    rx
}

/// Waits until `buf.len()` bytes can be peeked.
async fn peek_exact(conn: &TcpStream, buf: &mut [u8]) -> io::Result<()> {
    loop {
        let n = conn.peek(buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if n == buf.len() {
            return Ok(());
        }
        // Fewer bytes than asked: let more arrive.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Serves requests on one HTTP/1.1 connection until it closes, idles,
/// breaks or the node stops.
async fn serve(mut conn: TcpStream, reads: Http1Server) {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let end = tokio::select! {
            _ = reads.stop.cancelled() => return,
            r = tokio::time::timeout(IDLE, read_head(&mut conn, &mut buf)) => match r {
                Ok(Ok(Some(end))) => end,
                Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    refuse(conn, &tonic::Status::invalid_argument(e.to_string())).await;
                    return;
                }
                _ => return,
            },
        };
        let asked =
            shard_http1::parse_request(&buf[..end], &reads.auth, tessera_proto::auth::unix_now());
        // A shard read has no body: the next request starts here.
        buf.advance(end);
        let (stripe, index) = match asked {
            Ok(a) => a,
            Err(status) => {
                // Refused before anything was read: answer, and close
                // (what follows in the buffer cannot be trusted).
                refuse(conn, &status).await;
                return;
            }
        };
        let key = ShardKey { stripe, index };
        let sock = match conn.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(_) => return,
        };
        let sent = reads
            .store
            .send_shard(key, move |file, offset, len| {
                send_file(sock.as_fd(), file, offset, len)
            })
            .await;
        reads.metrics.read(matches!(sent, Ok(Ok(()))));
        match sent {
            Ok(Ok(())) => {}
            // The socket failed during the answer: the connection is done.
            Ok(Err(_)) => return,
            Err(e) => {
                if matches!(e, StorageError::Corrupt { .. }) {
                    reads.metrics.checksum_failure();
                }
                let status = tonic::Status::from(e);
                if conn
                    .write_all(&shard_http1::error_response(&status))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Answers `status` and closes the connection the way that lets the
/// answer arrive: closing with unread bytes would reset it, and a reset
/// can discard the answer before the peer reads it. So the write side is
/// shut, and what the peer still sends is read and dropped for a moment.
async fn refuse(mut conn: TcpStream, status: &tonic::Status) {
    if conn
        .write_all(&shard_http1::error_response(status))
        .await
        .is_err()
        || conn.shutdown().await.is_err()
    {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Reads until `buf` holds a whole request head; its end, or `None` when
/// the peer closed between requests. A head too long is refused.
async fn read_head(conn: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Option<usize>> {
    loop {
        if let Some(end) = shard_http1::head_end(buf) {
            return Ok(Some(end));
        }
        if buf.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        if conn.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Writes the answer's head, then `len` bytes of `file` from `offset`
/// with `sendfile(2)`, on the (non-blocking) socket `sock`; blocking, for
/// the blocking pool.
fn send_file(sock: BorrowedFd<'_>, file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    let head = shard_http1::ok_head(len);
    let mut done = 0;
    while done < head.len() {
        // SAFETY: `head[done..]` is a valid buffer of that length; `sock`
        // is an open socket. MSG_MORE: the bytes follow at once.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                head[done..].as_ptr().cast(),
                head.len() - done,
                libc::MSG_MORE | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            wait_writable(sock, io::Error::last_os_error())?;
            continue;
        }
        done += n as usize;
    }
    let mut off = offset as libc::off_t;
    let end = offset + len;
    while (off as u64) < end {
        let want = (end - off as u64).min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the call; `off` is a valid
        // offset the kernel advances by what it sent.
        let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
        if n < 0 {
            wait_writable(sock, io::Error::last_os_error())?;
            continue;
        }
        if n == 0 {
            // The file is shorter than its header said: cut while sent.
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// For an `EAGAIN` from a write on `sock`: waits (blocking) until it can
/// take more, up to [`SEND_STALL`]. `EINTR` retries; any other error is
/// returned.
fn wait_writable(sock: BorrowedFd<'_>, err: io::Error) -> io::Result<()> {
    match err.raw_os_error() {
        Some(libc::EINTR) => Ok(()),
        Some(libc::EAGAIN) => {
            let mut pfd = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut pfd, 1, SEND_STALL.as_millis() as libc::c_int) };
                if r > 0 {
                    return Ok(());
                }
                if r == 0 {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e);
                }
            }
        }
        _ => Err(err),
    }
}
