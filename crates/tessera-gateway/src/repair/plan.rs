//! What a repair must do with each shard of a stripe, as pure functions of
//! the stripe, the queue item's bad list, the cluster map and what the
//! storage nodes answered.
//!
//! Two passes: [`precheck`] decides what it can from the map alone (no
//! entry, node down or unknown, reported bad); every other entry is
//! stat'ed and [`judge`]d from the answer. A node that does not answer is
//! neither read nor rebuilt: it may be restarting, and once the meta leader
//! marks it down every stripe it holds is queued again.

use tessera_types::{NodeId, NodeState, ShardEntry, Stripe};

/// Why a shard counts as lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossCause {
    /// The stripe has no entry for this index (a short write).
    NoEntry,
    /// Its node is down.
    NodeDown,
    /// Its node is not in the cluster map any more.
    NodeUnknown,
    /// A reader or scrubber reported it missing or corrupt.
    ReportedBad,
    /// The node answered that it has no such file.
    NoFile,
    /// The node holds a file of the wrong length or hash.
    Mismatch,
}

impl LossCause {
    /// Whether the shard's node is up and answering, so that it could take
    /// the rebuilt shard back if no other node can (a replaced disk).
    pub fn node_answers(self) -> bool {
        matches!(
            self,
            LossCause::ReportedBad | LossCause::NoFile | LossCause::Mismatch
        )
    }
}

/// The state of one shard index of a stripe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// Present on a live node: read it, keep it.
    Healthy,
    /// Present on a draining node: read it, rebuild it elsewhere.
    Move,
    /// Rebuild it.
    Lost(LossCause),
    /// Its node did not answer: neither read nor rebuilt, entry kept.
    Unavailable,
}

impl ShardState {
    /// Whether the shard may be read as a source for the rebuild.
    pub fn readable(self) -> bool {
        matches!(self, ShardState::Healthy | ShardState::Move)
    }
    /// Whether the shard must be written anew.
    pub fn rebuild(self) -> bool {
        matches!(self, ShardState::Lost(_) | ShardState::Move)
    }
}

/// The first pass over one index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Known from the map and the bad list alone.
    Decided(ShardState),
    /// Ask the node whether it holds the shard (`draining`: it must move
    /// even if it does).
    Stat { draining: bool },
}

/// First pass: one [`Check`] per shard index `0..k+m` of `stripe`.
/// `state_of` is the node's state in the cluster map (`None`: unknown).
pub fn precheck(
    stripe: &Stripe,
    bad: &[(u8, NodeId)],
    state_of: impl Fn(&NodeId) -> Option<NodeState>,
) -> Vec<Check> {
    let n = stripe.class.total_shards();
    (0..n)
        .map(|i| {
            // n <= 255: checked by the class; an index that does not fit
            // is simply absent.
            let Some(entry) = u8::try_from(i).ok().and_then(|i| stripe.shard(i)) else {
                return Check::Decided(ShardState::Lost(LossCause::NoEntry));
            };
            // A bad report names the node it was made against: a shard
            // since rebuilt elsewhere is not bad.
            if bad
                .iter()
                .any(|(idx, node)| *idx == entry.index && *node == entry.node)
            {
                return Check::Decided(ShardState::Lost(LossCause::ReportedBad));
            }
            match state_of(&entry.node) {
                None => Check::Decided(ShardState::Lost(LossCause::NodeUnknown)),
                Some(NodeState::Down) => Check::Decided(ShardState::Lost(LossCause::NodeDown)),
                Some(NodeState::Draining) => Check::Stat { draining: true },
                Some(NodeState::Up | NodeState::Suspect) => Check::Stat { draining: false },
            }
        })
        .collect()
}

/// What a storage node answered to a stat of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatAnswer {
    /// It holds the file; `blake3` is the hash in the file's header (empty
    /// when the node does not say).
    Present { len: u64, blake3: Vec<u8> },
    /// It has no such file.
    Absent,
    /// No answer (unreachable, timed out, refused).
    NoAnswer,
}

/// Second pass: the state of `entry` from its node's answer.
pub fn judge(
    entry: &ShardEntry,
    shard_len: u32,
    draining: bool,
    answer: &StatAnswer,
) -> ShardState {
    match answer {
        StatAnswer::NoAnswer => ShardState::Unavailable,
        StatAnswer::Absent => ShardState::Lost(LossCause::NoFile),
        StatAnswer::Present { len, blake3 } => {
            let hash_ok = blake3.is_empty() || blake3.as_slice() == entry.blake3.as_slice();
            if *len != u64::from(shard_len) || !hash_ok {
                ShardState::Lost(LossCause::Mismatch)
            } else if draining {
                ShardState::Move
            } else {
                ShardState::Healthy
            }
        }
    }
}

/// Indexes to read from, in read order. With a shard lost, k sources are
/// needed: healthy shards first (data before parity), then shards that
/// are moving (their nodes are busy draining). With only moves, the moving
/// shards come first: read and verified, they are copied as they are and
/// nothing is decoded.
pub fn read_order(states: &[ShardState]) -> Vec<usize> {
    let healthy = (0..states.len()).filter(|&i| states[i] == ShardState::Healthy);
    let moving = (0..states.len()).filter(|&i| states[i] == ShardState::Move);
    if any_lost(states) {
        healthy.chain(moving).collect()
    } else {
        moving.chain(healthy).collect()
    }
}

/// Whether a shard must be rebuilt from others (not merely copied).
pub fn any_lost(states: &[ShardState]) -> bool {
    states.iter().any(|s| matches!(s, ShardState::Lost(_)))
}

/// Rebalance: turns healthy shards on nodes outside `placed` (the
/// stripe's placement now) into moves, as many as `placed` has nodes that
/// hold no shard of the stripe. Returns those free nodes, in placement
/// order: the preferred targets.
pub fn rebalance(states: &mut [ShardState], stripe: &Stripe, placed: &[NodeId]) -> Vec<NodeId> {
    let free: Vec<NodeId> = placed
        .iter()
        .filter(|n| !stripe.shards.iter().any(|e| &e.node == *n))
        .cloned()
        .collect();
    let mut budget = free.len();
    for e in &stripe.shards {
        let i = e.index as usize;
        if budget == 0 {
            break;
        }
        if states.get(i) == Some(&ShardState::Healthy) && !placed.contains(&e.node) {
            states[i] = ShardState::Move;
            budget -= 1;
        }
    }
    free
}

/// Indexes to rebuild, lost ones (the risk) before moving ones.
pub fn rebuild_order(states: &[ShardState]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..states.len())
        .filter(|&i| matches!(states[i], ShardState::Lost(_)))
        .collect();
    order.extend((0..states.len()).filter(|&i| states[i] == ShardState::Move));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_types::{StorageClass, StripeId};

    fn stripe(nodes: &[Option<&str>]) -> Stripe {
        Stripe {
            id: StripeId::random(),
            len: 100,
            shard_len: 25,
            class: StorageClass::rs(4, 2, 64),
            shards: nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    n.map(|n| ShardEntry {
                        index: i as u8,
                        node: NodeId::from(n),
                        blake3: [i as u8; 32],
                    })
                })
                .collect(),
        }
    }

    fn state(id: &NodeId) -> Option<NodeState> {
        match id.as_str() {
            "up" | "up2" | "up3" => Some(NodeState::Up),
            "sus" => Some(NodeState::Suspect),
            "down" => Some(NodeState::Down),
            "drain" => Some(NodeState::Draining),
            _ => None,
        }
    }

    #[test]
    fn precheck_decides_from_the_map_and_the_bad_list() {
        let s = stripe(&[
            Some("up"),
            Some("sus"),
            Some("down"),
            Some("drain"),
            Some("gone"),
            None,
        ]);
        let checks = precheck(&s, &[], state);
        use Check::*;
        use ShardState::*;
        assert_eq!(
            checks,
            vec![
                Stat { draining: false },
                Stat { draining: false },
                Decided(Lost(LossCause::NodeDown)),
                Stat { draining: true },
                Decided(Lost(LossCause::NodeUnknown)),
                Decided(Lost(LossCause::NoEntry)),
            ]
        );
        // Bad only on the node it was reported against.
        let bad = vec![(0, NodeId::from("up")), (1, NodeId::from("elsewhere"))];
        let checks = precheck(&s, &bad, state);
        assert_eq!(checks[0], Decided(Lost(LossCause::ReportedBad)));
        assert_eq!(checks[1], Stat { draining: false });
    }

    #[test]
    fn judge_checks_length_and_hash() {
        let s = stripe(&[Some("up"); 6]);
        let e = &s.shards[2];
        let present = |len, hash: &[u8]| StatAnswer::Present {
            len,
            blake3: hash.to_vec(),
        };
        assert_eq!(
            judge(e, 25, false, &present(25, &[2; 32])),
            ShardState::Healthy
        );
        assert_eq!(judge(e, 25, false, &present(25, &[])), ShardState::Healthy);
        assert_eq!(judge(e, 25, true, &present(25, &[2; 32])), ShardState::Move);
        assert_eq!(
            judge(e, 25, false, &present(24, &[2; 32])),
            ShardState::Lost(LossCause::Mismatch)
        );
        assert_eq!(
            judge(e, 25, true, &present(25, &[3; 32])),
            ShardState::Lost(LossCause::Mismatch)
        );
        assert_eq!(
            judge(e, 25, false, &StatAnswer::Absent),
            ShardState::Lost(LossCause::NoFile)
        );
        assert_eq!(
            judge(e, 25, false, &StatAnswer::NoAnswer),
            ShardState::Unavailable
        );
    }

    #[test]
    fn rebalance_moves_shards_off_nodes_outside_the_placement() {
        // Shards on n0..n5; the placement now is n0..n3, n6, n7.
        let s = stripe(&[
            Some("n0"),
            Some("n1"),
            Some("n2"),
            Some("n3"),
            Some("n4"),
            Some("n5"),
        ]);
        let placed: Vec<NodeId> = ["n0", "n1", "n2", "n6", "n3", "n7"]
            .iter()
            .map(|n| NodeId::from(*n))
            .collect();
        let mut states = vec![ShardState::Healthy; 6];
        let free = rebalance(&mut states, &s, &placed);
        assert_eq!(free, vec![NodeId::from("n6"), NodeId::from("n7")]);
        assert_eq!(&states[4..], &[ShardState::Move, ShardState::Move]);
        assert!(states[..4].iter().all(|s| *s == ShardState::Healthy));
        // Only as many moves as free placement nodes; lost shards stay
        // lost (they are rebuilt anyway).
        let placed: Vec<NodeId> = ["n0", "n1", "n2", "n3", "n4", "n6"]
            .iter()
            .map(|n| NodeId::from(*n))
            .collect();
        let mut states = vec![ShardState::Healthy; 6];
        states[4] = ShardState::Lost(LossCause::NodeDown);
        let free = rebalance(&mut states, &s, &placed);
        assert_eq!(free, vec![NodeId::from("n6")]);
        assert_eq!(states[5], ShardState::Move);
        assert_eq!(states[4], ShardState::Lost(LossCause::NodeDown));
        // In placement already: nothing moves.
        let mut states = vec![ShardState::Healthy; 6];
        let mine: Vec<NodeId> = s.shards.iter().map(|e| e.node.clone()).collect();
        assert!(rebalance(&mut states, &s, &mine).is_empty());
        assert!(states.iter().all(|s| *s == ShardState::Healthy));
    }

    #[test]
    fn orders_put_risk_first() {
        use ShardState::*;
        let states = [
            Move,
            Healthy,
            Lost(LossCause::NodeDown),
            Unavailable,
            Healthy,
            Lost(LossCause::NoEntry),
        ];
        assert_eq!(read_order(&states), vec![1, 4, 0]);
        assert_eq!(rebuild_order(&states), vec![2, 5, 0]);
        // Only moves: the moving shards are read first, to be copied.
        let moves = [Healthy, Move, Unavailable, Healthy, Move, Healthy];
        assert_eq!(read_order(&moves), vec![1, 4, 0, 3, 5]);
        assert!(!any_lost(&moves) && any_lost(&states));
        assert!(LossCause::NoFile.node_answers());
        assert!(!LossCause::NodeDown.node_answers());
    }
}
