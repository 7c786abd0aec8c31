//! Property and statistical tests of placement: distinct nodes, zone
//! spread, load proportional to weight, and little movement when a node
//! joins or leaves.

use proptest::prelude::*;
use std::collections::{HashMap, HashSet};
use tessera_placement::*;
use tessera_types::{NodeInfo, NodeState};

fn candidate(id: &str, zone: &str, weight: f64) -> Candidate {
    Candidate {
        id: NodeId::from(id),
        zone: zone.to_string(),
        weight,
    }
}

/// Deterministic pseudo-random stripe ids (SplitMix64 stream).
fn stripe_ids(count: usize, seed: u64) -> impl Iterator<Item = StripeId> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..count).map(move |_| {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&next().to_le_bytes());
        id[8..].copy_from_slice(&next().to_le_bytes());
        StripeId(id)
    })
}

/// Nodes `n0..`, weights cycling 1.0, 2.0, 0.5, in `zones` zones.
fn weighted_nodes(count: usize, zones: usize) -> Vec<Candidate> {
    (0..count)
        .map(|i| {
            candidate(
                &format!("n{i:02}"),
                &format!("z{}", i % zones),
                [1.0, 2.0, 0.5][i % 3],
            )
        })
        .collect()
}

/// Asserts each node's share of shard slots over `stripes` is within 10%
/// of its weight share.
fn assert_load_follows_weights(nodes: Vec<Candidate>, k: usize, m: usize, stripes: usize) {
    let total_weight: f64 = nodes.iter().map(|c| c.weight).sum();
    let weight_of: HashMap<NodeId, f64> = nodes.iter().map(|c| (c.id.clone(), c.weight)).collect();
    let p = Placement::from_candidates(nodes).unwrap();
    let mut load: HashMap<NodeId, usize> = HashMap::new();
    for s in stripe_ids(stripes, 1) {
        for id in p.place(&s, k, m) {
            *load.entry(id).or_default() += 1;
        }
    }
    let slots = (stripes * (k + m)) as f64;
    for (id, w) in &weight_of {
        let got = load.get(id).copied().unwrap_or(0) as f64 / slots;
        let want = w / total_weight;
        assert!(
            (got / want - 1.0).abs() < 0.10,
            "node {id} (weight {w}): {got:.4} of slots, weight share {want:.4}"
        );
    }
}

/// Fraction of shard slots whose node changed between two placements:
/// per stripe, targets of `after` that were not targets of `before`.
fn moved_fraction(before: &Placement, after: &Placement, k: usize, m: usize, n: usize) -> f64 {
    let mut moved = 0usize;
    for s in stripe_ids(n, 7) {
        let old: HashSet<NodeId> = before.place(&s, k, m).into_iter().collect();
        moved += after
            .place(&s, k, m)
            .iter()
            .filter(|id| !old.contains(*id))
            .count();
    }
    moved as f64 / (n * (k + m)) as f64
}

#[test]
fn load_follows_weights_in_one_zone() {
    assert_load_follows_weights(weighted_nodes(12, 1), 4, 2, 100_000);
}

#[test]
fn load_follows_weights_with_a_zone_per_node() {
    // Cap m = 2 per zone, one node per zone: zones never bind.
    assert_load_follows_weights(weighted_nodes(10, 10), 3, 2, 100_000);
}

#[test]
fn losing_a_zone_loses_at_most_m_shards() {
    // 3 zones x 4 nodes, unequal weights, RS(4,2): z * m = 6 = k + m.
    let p = Placement::from_candidates(weighted_nodes(12, 3)).unwrap();
    let zone_of: HashMap<NodeId, usize> = (0..12)
        .map(|i| (NodeId(format!("n{i:02}")), i % 3))
        .collect();
    for s in stripe_ids(20_000, 3) {
        let targets = p.place(&s, 4, 2);
        assert_eq!(targets.len(), 6);
        let mut per_zone = [0; 3];
        for id in &targets {
            per_zone[zone_of[id]] += 1;
        }
        assert_eq!(per_zone, [2, 2, 2], "{s}");
    }
}

#[test]
fn adding_a_node_moves_about_one_over_n_plus_one_of_the_slots() {
    // Equal weights, one zone: the new node takes 1/(N+1) of the slots, and
    // each slot it takes displaces exactly one old node.
    for n in [8usize, 11] {
        let nodes: Vec<Candidate> = (0..n)
            .map(|i| candidate(&format!("n{i:02}"), "z", 1.0))
            .collect();
        let before = Placement::from_candidates(nodes.clone()).unwrap();
        let mut grown = nodes;
        grown.push(candidate("new", "z", 1.0));
        let after = Placement::from_candidates(grown).unwrap();
        let moved = moved_fraction(&before, &after, 4, 2, 50_000);
        let ideal = 1.0 / (n + 1) as f64;
        assert!(
            moved <= ideal * 1.05 + 0.002,
            "N={n}: moved {moved:.4}, ideal {ideal:.4}"
        );
        assert!(
            moved >= ideal * 0.95 - 0.002,
            "N={n}: moved {moved:.4}, ideal {ideal:.4}"
        );
    }
}

#[test]
fn adding_a_node_in_zones_moves_little() {
    // 3 zones x 4 equal nodes, RS(4,2), a 13th node in zone 0: its share is
    // 1/13 of the slots; zone caps may shuffle a little more.
    let nodes: Vec<Candidate> = (0..12)
        .map(|i| candidate(&format!("n{i:02}"), &format!("z{}", i % 3), 1.0))
        .collect();
    let before = Placement::from_candidates(nodes.clone()).unwrap();
    let mut grown = nodes;
    grown.push(candidate("new", "z0", 1.0));
    let after = Placement::from_candidates(grown).unwrap();
    let moved = moved_fraction(&before, &after, 4, 2, 50_000);
    let ideal = 1.0 / 13.0;
    assert!(
        moved <= ideal * 1.10 + 0.002,
        "moved {moved:.4}, ideal {ideal:.4}"
    );
}

#[test]
fn adding_a_weighted_node_moves_about_its_share() {
    let nodes = weighted_nodes(11, 1);
    let total: f64 = nodes.iter().map(|c| c.weight).sum();
    let before = Placement::from_candidates(nodes.clone()).unwrap();
    let mut grown = nodes;
    grown.push(candidate("new", "z0", 1.0));
    let after = Placement::from_candidates(grown).unwrap();
    let moved = moved_fraction(&before, &after, 4, 2, 50_000);
    let share = 1.0 / (total + 1.0);
    // Weight correction shifts every node's effective weight a little, so
    // allow some extra movement beyond the new node's share.
    assert!(
        moved <= share * 1.25 + 0.002,
        "moved {moved:.4}, share {share:.4}"
    );
}

#[test]
fn removing_a_node_moves_only_its_slots() {
    let nodes: Vec<Candidate> = (0..10)
        .map(|i| candidate(&format!("n{i:02}"), "z", 1.0))
        .collect();
    let before = Placement::from_candidates(nodes.clone()).unwrap();
    let gone = NodeId::from("n03");
    let after = Placement::from_candidates(nodes.into_iter().filter(|c| c.id != gone)).unwrap();
    for s in stripe_ids(5_000, 11) {
        let old = before.place(&s, 4, 2);
        let new = after.place(&s, 4, 2);
        let kept: Vec<&NodeId> = old.iter().filter(|id| **id != gone).collect();
        let changed = new.iter().filter(|id| !old.contains(id)).count();
        assert_eq!(changed, usize::from(old.contains(&gone)));
        assert!(kept.iter().all(|id| new.contains(id)));
    }
}

#[test]
fn cluster_map_places_on_up_nodes_only() {
    let node = |i: usize, state| NodeInfo {
        id: NodeId(format!("n{i}")),
        addr: format!("127.0.0.1:{}", 7000 + i),
        zone: format!("z{}", i / 3),
        weight: 1.0,
        capacity_bytes: 1 << 40,
        used_bytes: 0,
        shard_count: 0,
        state,
        last_heartbeat: 0,
    };
    let map = ClusterMap {
        epoch: 1,
        nodes: (0..9)
            .map(|i| {
                let state = match i {
                    1 => NodeState::Down,
                    4 => NodeState::Suspect,
                    7 => NodeState::Draining,
                    _ => NodeState::Up,
                };
                node(i, state)
            })
            .collect(),
    };
    let p = Placement::from_cluster_map(&map);
    assert_eq!(p.len(), 6);
    assert_eq!(p.zone_count(), 3);
    for s in stripe_ids(200, 5) {
        let targets = place(&map, &s, 4, 2);
        assert_eq!(targets, p.place(&s, 4, 2));
        assert_eq!(targets.len(), 6);
        for id in &targets {
            assert_eq!(map.node(id).map(|n| n.state), Some(NodeState::Up));
        }
    }
}

#[test]
fn candidate_order_does_not_matter() {
    let nodes = weighted_nodes(9, 3);
    let mut reversed = nodes.clone();
    reversed.reverse();
    let a = Placement::from_candidates(nodes).unwrap();
    let b = Placement::from_candidates(reversed).unwrap();
    for s in stripe_ids(500, 9) {
        assert_eq!(a.place_ordered(&s, 4, 2), b.place_ordered(&s, 4, 2));
    }
}

/// Random clusters: up to 5 zones of up to 5 nodes, weights 0.25..4.
fn cluster() -> impl Strategy<Value = Vec<Candidate>> {
    proptest::collection::vec(proptest::collection::vec(0.25f64..4.0, 1..=5), 1..=5).prop_map(
        |zones| {
            zones
                .iter()
                .enumerate()
                .flat_map(|(z, weights)| {
                    weights
                        .iter()
                        .enumerate()
                        .map(move |(i, w)| candidate(&format!("z{z}n{i}"), &format!("z{z}"), *w))
                })
                .collect()
        },
    )
}

fn zone_counts(targets: &[NodeId]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in targets {
        // Ids are "z{zone}n{i}".
        let zone = id
            .as_str()
            .split('n')
            .next()
            .unwrap_or_default()
            .to_string();
        *counts.entry(zone).or_default() += 1;
    }
    counts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn no_node_twice(nodes in cluster(), k in 1usize..=8, m in 0usize..=4, id in any::<[u8; 16]>()) {
        let count = nodes.len();
        let p = Placement::from_candidates(nodes).unwrap();
        let s = StripeId(id);
        let targets = p.place(&s, k, m);
        prop_assert_eq!(targets.len(), (k + m).min(count));
        let distinct: HashSet<&NodeId> = targets.iter().collect();
        prop_assert_eq!(distinct.len(), targets.len());
        // The full order is a permutation of all candidates, targets first.
        let ordered = p.place_ordered(&s, k, m);
        prop_assert_eq!(&ordered[..targets.len()], &targets[..]);
        let all: HashSet<&NodeId> = ordered.iter().collect();
        prop_assert_eq!(all.len(), count);
        prop_assert_eq!(ordered.len(), count);
        let ranked: HashSet<NodeId> = p.ranked(&s, k + m).into_iter().collect();
        prop_assert_eq!(ranked.len(), count);
    }

    #[test]
    fn zones_hold_at_most_m_when_there_are_enough(
        nodes in cluster(), k in 1usize..=8, m in 1usize..=4, id in any::<[u8; 16]>(),
    ) {
        let mut per_zone: HashMap<String, usize> = HashMap::new();
        for c in &nodes {
            *per_zone.entry(c.zone.clone()).or_default() += 1;
        }
        let zones = per_zone.len();
        let p = Placement::from_candidates(nodes).unwrap();
        let targets = p.place(&StripeId(id), k, m);
        let counts = zone_counts(&targets);
        let cap = zone_cap(k, m, zones);
        // Enough zones (z * m >= k + m) and enough nodes in them to fill
        // k + m slots under the cap: no zone holds more than m shards.
        let room: usize = per_zone.values().map(|n| (*n).min(cap)).sum();
        if room >= k + m {
            prop_assert!(counts.values().all(|c| *c <= cap), "{counts:?} cap {cap}");
            if zones * m >= k + m {
                prop_assert!(counts.values().all(|c| *c <= m), "{counts:?}");
            }
        }
    }

    #[test]
    fn excluding_a_target_replaces_only_it(
        k in 1usize..=6, m in 1usize..=3, id in any::<[u8; 16]>(), victim in any::<prop::sample::Index>(),
    ) {
        // Ample nodes per zone so the first pass always fills the stripe.
        let nodes = weighted_nodes(24, 3);
        let p = Placement::from_candidates(nodes).unwrap();
        let s = StripeId(id);
        let targets = p.place(&s, k, m);
        let gone = targets[victim.index(targets.len())].clone();
        let again = p.place_excluding(&s, k, m, std::slice::from_ref(&gone));
        prop_assert!(!again.contains(&gone));
        prop_assert_eq!(again.len(), targets.len());
        for t in targets.iter().filter(|t| **t != gone) {
            prop_assert!(again.contains(t));
        }
    }
}
