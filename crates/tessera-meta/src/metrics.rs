//! The meta node's metrics and readiness for its admin port: Raft state
//! from openraft's metrics, storage node counts by state and the GC backlog
//! from the state machine (read-only; refreshed in the background so that
//! a scrape never touches sled on the executor).

use std::sync::Arc;
use std::time::Duration;

use tessera_observe::{Gauge, Readiness, Registry};
use tessera_types::NodeState;
use tokio_util::sync::CancellationToken;

use crate::network::MetaRaft;
use crate::store::SmTrees;

/// How often the gauges are refreshed.
const REFRESH: Duration = Duration::from_secs(1);

struct MetaGauges {
    term: Gauge,
    leader: Gauge,
    is_leader: Gauge,
    last_log: Gauge,
    applied: Gauge,
    nodes: Gauge,
    gc_backlog: Gauge,
}

impl MetaGauges {
    fn new(r: &Registry) -> Self {
        MetaGauges {
            term: r.gauge("tessera_meta_raft_term", "Current Raft term.", &[]),
            leader: r.gauge(
                "tessera_meta_raft_leader_id",
                "Raft id of the leader this node knows (0: none).",
                &[],
            ),
            is_leader: r.gauge(
                "tessera_meta_raft_is_leader",
                "1 on the leader, 0 elsewhere.",
                &[],
            ),
            last_log: r.gauge(
                "tessera_meta_raft_last_log_index",
                "Index of the last entry in this node's Raft log.",
                &[],
            ),
            applied: r.gauge(
                "tessera_meta_raft_applied_index",
                "Index of the last entry applied to the state machine.",
                &[],
            ),
            nodes: r.gauge(
                "tessera_meta_storage_nodes",
                "Storage nodes in the cluster map, by state.",
                &["state"],
            ),
            gc_backlog: r.gauge(
                "tessera_meta_gc_backlog_items",
                "Entries in the GC queue (shards waiting to be deleted).",
                &[],
            ),
        }
    }
}

/// Starts the refresher; returns the registry and the readiness check
/// (ready when this node knows a leader).
pub(crate) fn start(
    raft: MetaRaft,
    trees: SmTrees,
    shutdown: CancellationToken,
) -> (Registry, Readiness) {
    let registry = Registry::new();
    let g = MetaGauges::new(&registry);
    let r = raft.clone();
    let ready: Readiness = Arc::new(move || r.metrics().borrow().current_leader.is_some());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            {
                let m = raft.metrics();
                let m = m.borrow();
                g.term.set(&[], m.current_term as f64);
                g.leader.set(&[], m.current_leader.unwrap_or(0) as f64);
                let leader = m.state == openraft::ServerState::Leader;
                g.is_leader.set(&[], if leader { 1.0 } else { 0.0 });
                g.last_log.set(&[], m.last_log_index.unwrap_or(0) as f64);
                g.applied
                    .set(&[], m.last_applied.map(|l| l.index).unwrap_or(0) as f64);
            }
            let t = trees.clone();
            let counts = tokio::task::spawn_blocking(move || {
                let nodes = t.all_nodes().ok()?;
                Some((nodes, t.gc.len()))
            })
            .await;
            if let Ok(Some((nodes, gc))) = counts {
                let states = [
                    NodeState::Up,
                    NodeState::Suspect,
                    NodeState::Down,
                    NodeState::Draining,
                ];
                let series: Vec<([&str; 1], f64)> = states
                    .iter()
                    .map(|s| {
                        let n = nodes.iter().filter(|n| n.state == *s).count();
                        ([s.as_str()], n as f64)
                    })
                    .collect();
                let refs: Vec<(&[&str], f64)> = series.iter().map(|(l, v)| (&l[..], *v)).collect();
                g.nodes.set_all(&refs);
                g.gc_backlog.set(&[], gc as f64);
            }
        }
    });
    (registry, ready)
}
