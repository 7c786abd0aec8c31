//! Tessera's observability: a small Prometheus registry (counters, gauges,
//! histograms with labels, rendered in the text exposition format) and the
//! admin HTTP server every role runs (`/metrics`, `/health/live`,
//! `/health/ready`, plus read-only routes a role adds, such as the
//! gateway's console), crash failpoints for tests ([`failpoint`]), the crash-stop on a panic
//! ([`crash`]), and file system space ([`disk`]).
//!
//! It depends on nothing of Tessera's: services create their metrics here
//! and update them; the registry renders them on scrape. Metric names follow
//! `tessera_<component>_<thing>_<unit>`.

pub mod crash;
pub mod disk;
pub mod failpoint;
mod metrics;
mod server;

pub use metrics::{Counter, Gauge, Histogram, Registry, LATENCY_BUCKETS};

/// Writes `msg` and a newline to stderr, ignoring failure: `eprintln!`
/// panics when stderr cannot be written, and a node's stderr is often a
/// log file on the disk that just filled up.
pub fn stderr_line(msg: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(msg).and_then(|()| err.write_all(b"\n"));
}
pub use server::{serve_admin, serve_admin_with, AdminReply, AdminRoutes, Readiness};
