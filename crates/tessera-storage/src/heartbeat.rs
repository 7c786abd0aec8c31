//! The heartbeat task: tells the meta leader, every period, that this node
//! is alive, where to reach it and how full it is. Failures are logged
//! (rate limited) and the task keeps going until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tessera_proto::MetaClient;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::metrics::StorageMetrics;
use crate::store::ShardStore;
use crate::StorageError;

/// At most one warning per this period while heartbeats keep failing.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// What the heartbeat says about this node besides its usage.
pub(crate) struct Heartbeat {
    pub store: Arc<ShardStore>,
    pub meta: MetaClient,
    pub advertise: String,
    pub zone: String,
    pub weight: f64,
    pub period: Duration,
    pub metrics: Arc<StorageMetrics>,
}

impl Heartbeat {
    /// The deadline of one heartbeat call, retries included: long enough
    /// to ride out a leader election, short enough not to skip many beats.
    pub(crate) fn call_deadline(period: Duration) -> Duration {
        (period * 3).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }

    /// Runs until `shutdown` is cancelled.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failures = 0u64;
        let mut last_warn: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.beat() => r,
            };
            match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "heartbeats to meta restored");
                    }
                    failures = 0;
                    last_warn = None;
                }
                Err(error) => {
                    failures += 1;
                    if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        tracing::warn!(%error, failures, "heartbeat to meta failed");
                        last_warn = Some(Instant::now());
                    } else {
                        tracing::debug!(%error, failures, "heartbeat to meta failed");
                    }
                }
            }
        }
        tracing::debug!("heartbeat task stopped");
    }

    async fn beat(&self) -> Result<(), StorageError> {
        let usage = self.store.usage().await?;
        self.metrics.usage(&usage);
        let req = crate::service::heartbeat_request(
            &self.store,
            &self.advertise,
            &self.zone,
            self.weight,
            usage,
        );
        self.meta.heartbeat(req).await?;
        self.metrics.heartbeat_succeeded();
        Ok(())
    }
}
