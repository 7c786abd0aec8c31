//! The meta node's metrics and readiness for its admin port: Raft state
//! from openraft's metrics, storage node counts by state, the repair queue,
//! repaired totals and the GC backlog from the state machine (read-only; refreshed in the background so that
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
/// The durability figures scan the repair queue (as long as the repair
/// backlog; the other figures are counts kept as writes commit): refreshed
/// less often.
const DURABILITY_EVERY: u64 = 10;

struct MetaGauges {
    term: Gauge,
    leader: Gauge,
    is_leader: Gauge,
    last_log: Gauge,
    applied: Gauge,
    nodes: Gauge,
    gc_backlog: Gauge,
    stripes: Gauge,
    queued: Gauge,
    leased: Gauge,
    unreadable: Gauge,
    repaired_stripes: Gauge,
    repaired_bytes: Gauge,
    gc_stripes: Gauge,
    node_shards: Gauge,
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
            stripes: r.gauge(
                "tessera_meta_stripes",
                "Live stripes (referenced by an object or a part).",
                &[],
            ),
            queued: r.gauge(
                "tessera_meta_repair_queued_stripes",
                "Stripes queued for repair, by surviving shards.",
                &["surviving"],
            ),
            leased: r.gauge(
                "tessera_meta_repair_leased_stripes",
                "Queued stripes a repair worker holds now.",
                &[],
            ),
            unreadable: r.gauge(
                "tessera_meta_repair_unreadable_stripes",
                "Queued stripes with fewer surviving shards than they need to decode.",
                &[],
            ),
            repaired_stripes: r.gauge(
                "tessera_meta_repaired_stripes",
                "Stripes repaired since the cluster was created (cumulative).",
                &[],
            ),
            repaired_bytes: r.gauge(
                "tessera_meta_repaired_bytes",
                "Shard bytes rebuilt since the cluster was created (cumulative).",
                &[],
            ),
            gc_stripes: r.gauge(
                "tessera_meta_gc_backlog_stripes",
                "Stripes in the GC queue.",
                &[],
            ),
            node_shards: r.gauge(
                "tessera_meta_node_shards",
                "Shards meta places on each storage node.",
                &["node"],
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
        let mut round: u64 = 0;
        loop {
            round += 1;
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
                Some((nodes, t.counts().gc_items))
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
            if round % DURABILITY_EVERY == 1 {
                let t = trees.clone();
                if let Ok(Ok(d)) = tokio::task::spawn_blocking(move || t.durability_status()).await
                {
                    set_durability(&g, &d);
                }
            }
        }
    });
    (registry, ready)
}

fn set_durability(g: &MetaGauges, d: &tessera_types::repair::DurabilityStatus) {
    g.stripes.set(&[], d.stripes as f64);
    let surv: Vec<(String, f64)> = d
        .queued_by_surviving
        .iter()
        .map(|(s, n)| (s.to_string(), *n as f64))
        .collect();
    let labels: Vec<[&str; 1]> = surv.iter().map(|(s, _)| [s.as_str()]).collect();
    let series: Vec<(&[&str], f64)> = labels
        .iter()
        .zip(&surv)
        .map(|(l, (_, v))| (&l[..], *v))
        .collect();
    g.queued.set_all(&series);
    g.leased.set(&[], d.leased as f64);
    g.unreadable.set(&[], d.at_risk_unreadable as f64);
    g.repaired_stripes.set(&[], d.repaired_stripes as f64);
    g.repaired_bytes.set(&[], d.repaired_bytes as f64);
    g.gc_stripes.set(&[], d.gc_stripes as f64);
    let ids: Vec<[&str; 1]> = d.shards_by_node.iter().map(|(n, _)| [n.as_str()]).collect();
    let series: Vec<(&[&str], f64)> = ids
        .iter()
        .zip(&d.shards_by_node)
        .map(|(l, (_, v))| (&l[..], *v as f64))
        .collect();
    g.node_shards.set_all(&series);
}
