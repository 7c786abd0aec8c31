//! Self-healing: the gateway's background workers over the durability
//! bookkeeping in meta (`tessera_types::repair`).
//!
//! - [`worker`]: the repair worker (lease, check, rebuild, re-place,
//!   compare-and-set commit).
//! - [`gc`]: the GC worker (lease GC items past the grace period, delete
//!   their shards, acknowledge).
//! - [`report`]: bad shards found by reads, batched to meta.
//! - [`plan`], [`targets`], [`throttle`]: the pure parts: what to do with
//!   each shard, where rebuilt shards go, the byte-rate limiter.
//!
//! Both workers share one shape: a step of work (`run_once`), counters in
//! [`crate::metrics::RepairMetrics`], a loop that exits on shutdown, and
//! settings that can change at run time (repair rate, concurrency and pause
//! live in meta). Leases make several gateways share the work safely.

pub mod gc;
pub mod plan;
pub mod report;
pub mod targets;
pub mod throttle;
pub mod worker;

use std::sync::Arc;

use tessera_proto::MetaClient;
use tokio_util::sync::CancellationToken;

pub use gc::GcWorker;
pub use report::ProblemReporter;
pub use worker::{Attempt, RepairWorker};

use crate::config::GatewayConfig;
use crate::metrics::RepairMetrics;
use crate::pipeline::DataPlane;

/// Starts what `config` enables: the problem reporter of the read path
/// (always), the repair worker and the GC worker, all stopping on
/// `shutdown`.
pub fn start(
    config: &GatewayConfig,
    meta: &MetaClient,
    dp: &Arc<DataPlane>,
    metrics: &RepairMetrics,
    shutdown: &CancellationToken,
    listen_port: Option<u16>,
) {
    dp.set_problem_reporter(ProblemReporter::spawn(
        meta.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let id = worker::worker_id(listen_port);
    if config.repair_enabled {
        let w = Arc::new(RepairWorker::new(
            config,
            id.clone(),
            meta.clone(),
            dp.clone(),
            metrics.clone(),
        ));
        tokio::spawn(w.run(shutdown.clone()));
    }
    if config.gc_enabled {
        let w = Arc::new(GcWorker::new(
            config,
            id,
            meta.clone(),
            dp.clone(),
            metrics.clone(),
        ));
        tokio::spawn(w.run(shutdown.clone()));
    }
}
