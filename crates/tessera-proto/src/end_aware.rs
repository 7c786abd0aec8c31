//! A request body that knows its end one frame early.
//!
//! hyper's HTTP/2 client marks a DATA frame END_STREAM only if the body
//! says `is_end_stream()` right after yielding it. tonic's request body
//! cannot: it learns that its message stream is over only when polled
//! once more. So every unary gRPC call went out as HEADERS, DATA and then
//! an empty DATA frame with END_STREAM, often in a write of its own: one
//! more syscall and loopback segment for the client, one more wake-up for
//! the server, whose unary handler starts only once the stream has ended
//! (tonic reads to the end for trailers). Under 1 MiB PUTs the Raft leader
//! sent about half its AppendEntries that way (strace).
//!
//! [`EndAware`] polls its inner body one frame ahead: when the frame after
//! a data frame is already known to be the end, the data frame is the last
//! one and goes out with END_STREAM.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};

/// Wraps `B`, holding at most one frame polled ahead.
pub struct EndAware<B: Body> {
    inner: B,
    ahead: Option<Result<Frame<B::Data>, B::Error>>,
    ended: bool,
}

impl<B: Body> EndAware<B> {
    pub fn new(inner: B) -> Self {
        EndAware {
            inner,
            ahead: None,
            ended: false,
        }
    }
}

// Only `inner` is polled through a pin, and it is `Unpin`; the frame held
// ahead is never pinned.
impl<B: Body + Unpin> Unpin for EndAware<B> {}

impl<B> Body for EndAware<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = match this.ahead.take() {
            Some(frame) => frame,
            None if this.ended => return Poll::Ready(None),
            None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(frame) => frame,
                None => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
            },
        };
        // Look one frame ahead, without waiting: if the inner body is not
        // ready, it has registered `cx` and the caller polls again.
        if frame.is_ok() && !this.ended {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(next)) => this.ahead = Some(next),
                Poll::Pending => {}
            }
        }
        Poll::Ready(Some(frame))
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held = match &self.ahead {
            Some(Ok(frame)) => frame.data_ref().map_or(0, |d| d.remaining() as u64),
            _ => 0,
        };
        if self.ended {
            return SizeHint::with_exact(held);
        }
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::convert::Infallible;

    /// A body of scripted polls: `Some(frame)`, or `None` for one
    /// `Pending`; the end after the script.
    struct Scripted {
        polls: VecDeque<Option<&'static str>>,
        polled: usize,
    }

    fn scripted(polls: &[Option<&'static str>]) -> Scripted {
        Scripted {
            polls: polls.iter().copied().collect(),
            polled: 0,
        }
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.polled += 1;
            match self.polls.pop_front() {
                None => Poll::Ready(None),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Some(s)) => {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(s.as_bytes())))))
                }
            }
        }
    }

    /// Polls `body` to its end; for each data frame, whether the body said
    /// it was the end right after yielding it.
    fn drain(body: &mut EndAware<Scripted>) -> Vec<(String, bool)> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        loop {
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Pending => continue,
                Poll::Ready(None) => return out,
                Poll::Ready(Some(Ok(frame))) => {
                    let data = frame.into_data().unwrap_or_default();
                    out.push((
                        String::from_utf8_lossy(&data).into_owned(),
                        body.is_end_stream(),
                    ));
                }
                Poll::Ready(Some(Err(e))) => match e {},
            }
        }
    }

    #[test]
    fn a_single_message_ends_with_its_data_frame() {
        let mut body = EndAware::new(scripted(&[Some("msg")]));
        assert!(!body.is_end_stream());
        assert_eq!(drain(&mut body), vec![("msg".to_string(), true)]);
        assert!(body.is_end_stream());
        // Polled to the end once, never again.
        assert_eq!(body.inner.polled, 2);
    }

    #[test]
    fn every_frame_comes_once_in_order_and_only_the_last_is_the_end() {
        let mut body = EndAware::new(scripted(&[Some("a"), Some("b"), Some("c")]));
        assert_eq!(
            drain(&mut body),
            vec![
                ("a".to_string(), false),
                ("b".to_string(), false),
                ("c".to_string(), true),
            ]
        );
    }

    #[test]
    fn a_pending_inner_body_is_waited_for_not_taken_for_the_end() {
        // Pending after the first frame and before the end: the first frame
        // cannot be known to be the last, the second can't either (the end
        // comes after a Pending), and nothing is lost or repeated.
        let mut body = EndAware::new(scripted(&[Some("a"), None, Some("b"), None]));
        assert_eq!(
            drain(&mut body),
            vec![("a".to_string(), false), ("b".to_string(), false)]
        );
        assert!(body.is_end_stream());
    }

    #[test]
    fn an_empty_body_ends_at_once() {
        let mut body = EndAware::new(scripted(&[]));
        assert_eq!(drain(&mut body), vec![]);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[test]
    fn the_size_hint_counts_the_frame_held_ahead() {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut body = EndAware::new(scripted(&[Some("ab"), Some("cde")]));
        let _ = Pin::new(&mut body).poll_frame(&mut cx);
        assert_eq!(body.size_hint().lower(), 3);
        let _ = Pin::new(&mut body).poll_frame(&mut cx);
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
