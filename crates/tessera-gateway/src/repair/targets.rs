//! Where rebuilt shards go: the stripe's rendezvous ranking over the Up
//! nodes, minus every node that holds a shard of the stripe, with the
//! zone caps of placement applied to the shards that stay plus the new
//! ones.

use std::collections::HashMap;

use tessera_placement::{zone_cap, Placement};
use tessera_types::{NodeId, StripeId};

/// Candidate nodes for `count` rebuilt shards of `stripe` (class k + m):
/// the first `count` (or fewer, when too few nodes are left) keep every
/// zone under its cap as far as the cluster allows; the rest follow in
/// rank order as fall-backs for targets that fail.
///
/// `kept` are the nodes of the shards that stay (they count against their
/// zones); `holders` are every node with an entry in the stripe (never
/// chosen: one shard per node, and a node's stale copy may still be
/// there); `avoid` are nodes that failed recently (last resort only).
/// `zone_of` gives a node's zone (`None`: unknown, its own zone).
#[allow(clippy::too_many_arguments)]
pub fn choose_targets(
    placement: &Placement,
    zone_of: impl Fn(&NodeId) -> Option<String>,
    stripe: &StripeId,
    k: usize,
    m: usize,
    kept: &[NodeId],
    holders: &[NodeId],
    avoid: &[NodeId],
    count: usize,
) -> Vec<NodeId> {
    let ranked: Vec<NodeId> = placement
        .ranked(stripe, k + m)
        .into_iter()
        .filter(|n| !holders.contains(n) && !kept.contains(n))
        .collect();
    let (mut order, last): (Vec<NodeId>, Vec<NodeId>) =
        ranked.into_iter().partition(|n| !avoid.contains(n));
    let zone = |n: &NodeId| zone_of(n).unwrap_or_else(|| format!("node:{n}"));
    let mut zones: HashMap<String, usize> = HashMap::new();
    for n in placement.nodes().chain(kept.iter()) {
        zones.entry(zone(n)).or_insert(0);
    }
    for n in kept {
        *zones.entry(zone(n)).or_insert(0) += 1;
    }
    let mut cap = zone_cap(k, m, zones.len());
    let want = count.min(order.len());
    let mut taken = vec![false; order.len()];
    let mut picked = Vec::with_capacity(order.len() + last.len());
    while picked.len() < want {
        for (i, n) in order.iter().enumerate() {
            if picked.len() == want {
                break;
            }
            let z = zones.entry(zone(n)).or_insert(0);
            if !taken[i] && *z < cap {
                taken[i] = true;
                *z += 1;
                picked.push(n.clone());
            }
        }
        cap += 1;
    }
    let rest: Vec<NodeId> = order
        .drain(..)
        .zip(taken)
        .filter(|(_, t)| !t)
        .map(|(n, _)| n)
        .collect();
    picked.extend(rest);
    picked.extend(last);
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_placement::Candidate;

    fn placement(nodes: &[(&str, &str)]) -> Placement {
        Placement::from_candidates(nodes.iter().map(|(id, zone)| Candidate {
            id: NodeId::from(*id),
            zone: zone.to_string(),
            weight: 1.0,
        }))
        .unwrap()
    }

    fn ids(v: &[&str]) -> Vec<NodeId> {
        v.iter().map(|s| NodeId::from(*s)).collect()
    }

    #[test]
    fn never_a_node_that_holds_a_shard() {
        let nodes: Vec<(String, String)> =
            (0..9).map(|i| (format!("n{i}"), format!("z{i}"))).collect();
        let nodes: Vec<(&str, &str)> = nodes
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let p = placement(&nodes);
        let zone_of = |n: &NodeId| Some(format!("z{}", &n.0[1..]));
        for _ in 0..50 {
            let id = StripeId::random();
            let kept = ids(&["n0", "n1", "n2", "n3"]);
            let holders = ids(&["n0", "n1", "n2", "n3", "n4", "n5"]);
            let t = choose_targets(&p, zone_of, &id, 4, 2, &kept, &holders, &[], 2);
            assert_eq!(t.len(), 3, "all of n6..n8, ranked");
            for n in &t {
                assert!(!holders.contains(n));
            }
        }
    }

    #[test]
    fn zone_caps_count_the_shards_that_stay() {
        // Three zones, RS(4,2): at most 2 shards per zone. Zone a already
        // has 2 kept shards: no target in zone a while others have room.
        let p = placement(&[
            ("a1", "a"),
            ("a2", "a"),
            ("a3", "a"),
            ("a4", "a"),
            ("b1", "b"),
            ("b2", "b"),
            ("c1", "c"),
            ("c2", "c"),
        ]);
        let zones: HashMap<NodeId, &str> = [
            ("a1", "a"),
            ("a2", "a"),
            ("a3", "a"),
            ("a4", "a"),
            ("b1", "b"),
            ("b2", "b"),
            ("c1", "c"),
            ("c2", "c"),
        ]
        .iter()
        .map(|(n, z)| (NodeId::from(*n), *z))
        .collect();
        for _ in 0..50 {
            let id = StripeId::random();
            let kept = ids(&["a1", "a2", "b1", "c1"]);
            let holders = ids(&["a1", "a2", "b1", "c1", "b9", "c9"]);
            let t = choose_targets(
                &p,
                |n| zones.get(n).map(|z| z.to_string()),
                &id,
                4,
                2,
                &kept,
                &holders,
                &[],
                2,
            );
            let first: Vec<&str> = t[..2].iter().map(|n| zones[n]).collect();
            assert!(first.contains(&"b") && first.contains(&"c"), "{t:?}");
            // Zone a nodes are still offered, as fall-backs.
            assert_eq!(t.len(), 4);
            assert_eq!(zones[&t[2]], "a");
        }
    }

    #[test]
    fn caps_relax_when_the_cluster_is_short_of_zones() {
        let p = placement(&[("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")]);
        let zone_of = |n: &NodeId| Some(if n.0.starts_with('a') { "a" } else { "b" }.to_string());
        let id = StripeId::random();
        let t = choose_targets(
            &p,
            zone_of,
            &id,
            2,
            1,
            &ids(&["a1", "b1"]),
            &ids(&["a1", "b1"]),
            &[],
            1,
        );
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|n| n.0.starts_with('a')));
    }

    #[test]
    fn recently_failed_nodes_come_last() {
        let p = placement(&[("n1", "z1"), ("n2", "z2"), ("n3", "z3")]);
        let id = StripeId::random();
        let t = choose_targets(&p, |_| None, &id, 1, 1, &[], &[], &ids(&["n2"]), 3);
        assert_eq!(t.len(), 3);
        assert_eq!(t[2], NodeId::from("n2"));
    }
}
