//! Storage node liveness, kept in the leader's memory, and the failure
//! detector that turns silence into `Suspect` and `Down` through Raft.
//!
//! Last-seen times are not replicated (that would put every heartbeat in
//! the log). A node that becomes leader therefore starts every known node's
//! clock at "now": nobody is marked down just because leadership moved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tessera_types::meta::MetaCommand;
use tessera_types::{NodeId, NodeInfo, NodeState};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::network::MetaRaft;
use crate::store::{RaftNodeId, SmTrees};

/// Usage-only changes are proposed at most this often per node.
pub const USAGE_PROPOSE_INTERVAL: Duration = Duration::from_secs(10);

/// Bound on one state proposal of the detector.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
struct Seen {
    last_seen: Instant,
    last_proposed: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    /// The term in which this node's clocks were started as leader.
    leader_term: Option<u64>,
    nodes: HashMap<NodeId, Seen>,
}

/// Last heartbeat per storage node, as seen by this node while it leads.
#[derive(Default)]
pub struct Liveness {
    inner: Mutex<Inner>,
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat from `id`.
    pub fn seen(&self, id: &NodeId, now: Instant) {
        let mut g = self.lock();
        g.nodes
            .entry(id.clone())
            .and_modify(|s| s.last_seen = now)
            .or_insert(Seen {
                last_seen: now,
                last_proposed: None,
            });
    }

    /// Whether a heartbeat carrying `info` must go through Raft, given the
    /// node as the state machine knows it.
    pub fn should_propose(
        &self,
        info: &NodeInfo,
        current: Option<&NodeInfo>,
        now: Instant,
    ) -> bool {
        let Some(c) = current else {
            return true;
        };
        if c.addr != info.addr
            || c.zone != info.zone
            || c.weight != info.weight
            || !matches!(c.state, NodeState::Up | NodeState::Draining)
        {
            return true;
        }
        let usage_changed = c.capacity_bytes != info.capacity_bytes
            || c.used_bytes != info.used_bytes
            || c.shard_count != info.shard_count;
        if !usage_changed {
            return false;
        }
        let g = self.lock();
        match g.nodes.get(&info.id).and_then(|s| s.last_proposed) {
            None => true,
            Some(t) => now.saturating_duration_since(t) > USAGE_PROPOSE_INTERVAL,
        }
    }

    /// Records that an update for `id` was committed.
    pub fn proposed(&self, id: &NodeId, now: Instant) {
        let mut g = self.lock();
        if let Some(s) = g.nodes.get_mut(id) {
            s.last_proposed = Some(now);
        }
    }

    /// Forgets leader state (this node no longer leads).
    pub fn step_down(&self) {
        let mut g = self.lock();
        g.leader_term = None;
        g.nodes.clear();
    }

    /// The state changes the leader of `term` should propose for `nodes`.
    pub fn check(
        &self,
        term: u64,
        nodes: &[NodeInfo],
        now: Instant,
        suspect_after: Duration,
        down_after: Duration,
    ) -> Vec<(NodeId, NodeState)> {
        let mut g = self.lock();
        if g.leader_term != Some(term) {
            // New leadership: give every known node a full grace period.
            g.leader_term = Some(term);
            for n in nodes {
                g.nodes.insert(
                    n.id.clone(),
                    Seen {
                        last_seen: now,
                        last_proposed: None,
                    },
                );
            }
            return Vec::new();
        }
        let mut out = Vec::new();
        for n in nodes {
            let seen = g.nodes.entry(n.id.clone()).or_insert(Seen {
                last_seen: now,
                last_proposed: None,
            });
            let silent = now.saturating_duration_since(seen.last_seen);
            let target = match n.state {
                NodeState::Up | NodeState::Suspect | NodeState::Draining
                    if silent >= down_after =>
                {
                    Some(NodeState::Down)
                }
                NodeState::Up if silent >= suspect_after => Some(NodeState::Suspect),
                _ => None,
            };
            if let Some(t) = target {
                out.push((n.id.clone(), t));
            }
        }
        out
    }
}

/// Settings of the failure detector.
#[derive(Clone, Copy, Debug)]
pub struct DetectorConfig {
    pub id: RaftNodeId,
    pub interval: Duration,
    pub suspect_after: Duration,
    pub down_after: Duration,
}

/// Runs the failure detector until `shutdown`: while this node leads, every
/// `interval` it proposes `SetNodeState` for nodes that went silent.
pub async fn run(
    raft: MetaRaft,
    trees: SmTrees,
    liveness: Arc<Liveness>,
    cfg: DetectorConfig,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (leading, term) = {
            let m = raft.metrics();
            let m = m.borrow();
            (
                m.state == ServerState::Leader && m.current_leader == Some(cfg.id),
                m.current_term,
            )
        };
        if !leading {
            liveness.step_down();
            continue;
        }
        let trees2 = trees.clone();
        let nodes = match tokio::task::spawn_blocking(move || trees2.all_nodes()).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "failure detector: reading nodes failed");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "failure detector: reader task failed");
                continue;
            }
        };
        let changes = liveness.check(
            term,
            &nodes,
            Instant::now(),
            cfg.suspect_after,
            cfg.down_after,
        );
        for (id, state) in changes {
            tracing::info!(node = %id, state = state.as_str(), "storage node went silent");
            let cmd = MetaCommand::SetNodeState {
                id: id.clone(),
                state,
                at: tessera_types::now_millis(),
            };
            let res = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(PROPOSE_TIMEOUT, raft.client_write(cmd)) => r,
            };
            match res {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(node = %id, error = %e, "failure detector: proposal failed")
                }
                Err(_) => tracing::warn!(node = %id, "failure detector: proposal timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, state: NodeState) -> NodeInfo {
        NodeInfo {
            id: NodeId::from(id),
            addr: "127.0.0.1:1".into(),
            zone: "z".into(),
            weight: 1.0,
            capacity_bytes: 100,
            used_bytes: 1,
            shard_count: 1,
            state,
            last_heartbeat: 0,
        }
    }

    #[test]
    fn new_leader_grants_grace_then_suspects_then_downs() {
        let l = Liveness::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(5);
        let d = Duration::from_secs(30);
        let nodes = vec![node("a", NodeState::Up), node("b", NodeState::Up)];
        // First check in a term only starts clocks.
        assert!(l
            .check(3, &nodes, t0 + Duration::from_secs(100), s, d)
            .is_empty());
        let t1 = t0 + Duration::from_secs(100);
        l.seen(&NodeId::from("a"), t1 + Duration::from_secs(6));
        let c = l.check(3, &nodes, t1 + Duration::from_secs(6), s, d);
        assert_eq!(c, vec![(NodeId::from("b"), NodeState::Suspect)]);
        let nodes = vec![node("a", NodeState::Up), node("b", NodeState::Suspect)];
        let c = l.check(3, &nodes, t1 + Duration::from_secs(31), s, d);
        assert_eq!(
            c,
            vec![
                (NodeId::from("a"), NodeState::Suspect),
                (NodeId::from("b"), NodeState::Down)
            ]
        );
        // A new term restarts every clock.
        assert!(l
            .check(4, &nodes, t1 + Duration::from_secs(90), s, d)
            .is_empty());
    }

    #[test]
    fn heartbeat_proposals_are_throttled() {
        let l = Liveness::default();
        let now = Instant::now();
        let cur = node("a", NodeState::Up);
        assert!(l.should_propose(&cur, None, now));
        l.seen(&cur.id, now);
        assert!(!l.should_propose(&cur, Some(&cur), now));
        let mut moved = cur.clone();
        moved.addr = "127.0.0.1:2".into();
        assert!(l.should_propose(&moved, Some(&cur), now));
        let mut used = cur.clone();
        used.used_bytes = 50;
        assert!(l.should_propose(&used, Some(&cur), now));
        l.proposed(&cur.id, now);
        assert!(!l.should_propose(&used, Some(&cur), now + Duration::from_secs(5)));
        assert!(l.should_propose(&used, Some(&cur), now + Duration::from_secs(11)));
        let suspect = node("a", NodeState::Suspect);
        assert!(l.should_propose(&cur, Some(&suspect), now));
    }
}
