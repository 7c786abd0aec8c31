//! Panics: a crash-stop, except where one request can fail alone.
//!
//! A panic ends only the task it happened in, and every role has tasks
//! whose loss leaves the process up but broken: a meta node's state
//! machine worker, failure detector and rebalancer; a storage node's
//! heartbeat and scrubber; a gateway's cluster map refresh, repair and GC
//! workers. A node that limps on like that looks alive to its supervisor
//! and its peers. So a node binary installs [`crash_stop_on_panic`]: the
//! panic is reported as usual, then the process exits with
//! [`EXIT_RESTART`], which supervisors (systemd `Restart=on-failure`,
//! Kubernetes, compose `restart: unless-stopped`, `tessera dev`) restart.
//! Every role is built to survive a crash at any point; going on with the
//! state a panic left behind is the risk, a restart is not.
//!
//! The exception is code that runs inside [`contain`] (or a [`Contained`]
//! future): there the panic unwinds to the caller as an error, and the
//! process goes on. A gateway runs each S3 request's handler that way: a
//! bug that one malformed request hits must fail that request (500
//! `InternalError`), not take the endpoint away from every client, and a
//! gateway's state is a cache of meta's. Work a handler hands to other
//! tasks or threads is not contained.

use std::cell::Cell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Exit status of a node that stopped for a cause a restart may cure
/// (`EX_TEMPFAIL`): a panic, or a meta node's failed Raft log or state
/// machine write (a full disk, say).
pub const EXIT_RESTART: i32 = 75;

thread_local! {
    /// How many [`contain`] calls are running on this thread.
    static CONTAINED: Cell<u32> = const { Cell::new(0) };
}

/// Says why in the log and on stderr (which may be unwritable), then exits
/// with [`EXIT_RESTART`].
pub fn stop_for_restart(role: &str, cause: std::fmt::Arguments<'_>) -> ! {
    tracing::error!(
        "{cause}: the {role} node stops here, as a crash would, and recovers when restarted"
    );
    crate::stderr_line(format_args!(
        "tessera: {cause}; exiting with status {EXIT_RESTART} (restart me)"
    ));
    std::process::exit(EXIT_RESTART);
}

/// Makes every panic outside [`contain`] a crash-stop of this process (see
/// the module doc). For node binaries only: tests that run nodes in-process
/// keep the default.
pub fn crash_stop_on_panic(role: &'static str) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        // Contained: the caller gets the panic as an error (and counts it).
        if CONTAINED.with(Cell::get) > 0 {
            return;
        }
        stop_for_restart(role, format_args!("a panic in the {role} node ({info})"));
    }));
}

/// A panic that [`contain`] caught: its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked(pub String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "panicked: {}", self.0)
    }
}

impl std::error::Error for Panicked {}

/// Runs `f`; a panic in it (on this thread) is returned as an error
/// instead of stopping the process. The caller must not use what `f` was
/// changing as if `f` had finished.
pub fn contain<R>(f: impl FnOnce() -> R) -> Result<R, Panicked> {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            CONTAINED.with(|c| c.set(c.get() - 1));
        }
    }
    CONTAINED.with(|c| c.set(c.get() + 1));
    let _depth = Depth;
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        Panicked(message)
    })
}

pin_project_lite::pin_project! {
    /// A future whose every poll runs in [`contain`]: it resolves to
    /// `Err` if one panicked, and is not polled again after that.
    pub struct Contained<F> {
        #[pin]
        inner: F,
        done: bool,
    }
}

impl<F> Contained<F> {
    pub fn new(inner: F) -> Self {
        Contained { inner, done: false }
    }
}

impl<F: Future> Future for Contained<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        assert!(!*this.done, "Contained polled after it panicked");
        let inner = this.inner;
        match contain(|| inner.poll(cx)) {
            Ok(p) => p.map(Ok),
            Err(p) => {
                *this.done = true;
                Poll::Ready(Err(p))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contain_returns_the_panic_and_unwinds_its_depth() {
        assert_eq!(contain(|| 7), Ok(7));
        let r = contain(|| -> u32 { panic!("bad input {}", 3) });
        assert_eq!(r, Err(Panicked("bad input 3".to_string())));
        let r = contain(|| -> u32 { std::panic::panic_any(5u8) });
        assert_eq!(r, Err(Panicked("(no message)".to_string())));
        // Nested, and back to zero after each: a later panic on this
        // thread is not taken for a contained one.
        let r = contain(|| contain(|| -> () { panic!("inner") }).is_err());
        assert_eq!(r, Ok(true));
        assert_eq!(CONTAINED.with(Cell::get), 0);
    }

    #[tokio::test]
    async fn a_contained_future_resolves_to_the_panic() {
        let ok = Contained::new(async { 1 }).await;
        assert_eq!(ok, Ok(1));
        let failed = Contained::new(async {
            tokio::task::yield_now().await;
            if true {
                panic!("in the second poll");
            }
            2
        })
        .await;
        assert_eq!(failed, Err(Panicked("in the second poll".to_string())));
        assert_eq!(CONTAINED.with(Cell::get), 0);
    }
}
