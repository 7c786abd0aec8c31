//! Weighted rendezvous placement with zone spread.

use crate::{weights::adjusted_weights, PlacementError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tessera_types::{ClusterMap, NodeId, StripeId};

/// A node that may receive shards.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub id: NodeId,
    pub zone: String,
    /// Relative weight, finite and > 0.
    pub weight: f64,
}

#[derive(Debug)]
struct Node {
    id: NodeId,
    zone: usize,
    weight: f64,
    /// Per-node hash key, so per-stripe scoring is a cheap integer mix.
    key: u64,
}

/// Placement over a fixed set of candidate nodes. Build it once per cluster
/// map (it sorts the nodes and hashes their ids) and reuse it for many
/// stripes; it is `Send + Sync`.
///
/// For a given candidate set, the result depends only on the stripe id and
/// the node ids, zones and weights: every gateway computes the same
/// placement. Changing the hash or scoring changes where new stripes go
/// (existing stripes record their nodes in the manifest).
#[derive(Debug)]
pub struct Placement {
    /// Sorted by id, so the input order does not matter and ties break by id.
    nodes: Vec<Node>,
    zone_count: usize,
    /// Effective weights per number of picks n (see [`crate::weights`]).
    effective: Mutex<HashMap<usize, Arc<[f64]>>>,
}

/// Largest number of shards of a stripe of `n = k + m` shards that one zone
/// may hold when there are `zones` zones: `max(m, ceil(n / zones))`. When
/// `zones * m >= n` this is m, so losing a zone loses at most m shards;
/// with fewer zones it spreads the shards as evenly as possible.
pub fn zone_cap(k: usize, m: usize, zones: usize) -> usize {
    let n = k + m;
    if zones == 0 {
        return n;
    }
    m.max(n.div_ceil(zones))
}

impl Placement {
    /// Placement over the nodes of `map` that are [`Up`](tessera_types::NodeState::Up).
    /// Nodes with a weight that is not finite and > 0 get no shards; a
    /// duplicated id keeps its first entry.
    pub fn from_cluster_map(map: &ClusterMap) -> Placement {
        let mut seen = HashSet::new();
        let candidates = map
            .writable()
            .filter(|n| n.weight.is_finite() && n.weight > 0.0)
            .filter(|n| seen.insert(n.id.clone()))
            .map(|n| Candidate {
                id: n.id.clone(),
                zone: n.zone.clone(),
                weight: n.weight,
            });
        Self::build(candidates.collect())
    }

    /// Placement over an explicit candidate list.
    pub fn from_candidates(
        candidates: impl IntoIterator<Item = Candidate>,
    ) -> Result<Placement, PlacementError> {
        let candidates: Vec<Candidate> = candidates.into_iter().collect();
        let mut seen = HashSet::new();
        for c in &candidates {
            if !(c.weight.is_finite() && c.weight > 0.0) {
                return Err(PlacementError::InvalidWeight {
                    node: c.id.clone(),
                    weight: c.weight,
                });
            }
            if !seen.insert(&c.id) {
                return Err(PlacementError::DuplicateNode(c.id.clone()));
            }
        }
        Ok(Self::build(candidates))
    }

    fn build(mut candidates: Vec<Candidate>) -> Placement {
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        let mut zones: HashMap<String, usize> = HashMap::new();
        let nodes = candidates
            .into_iter()
            .map(|c| {
                let next = zones.len();
                let zone = *zones.entry(c.zone).or_insert(next);
                Node {
                    key: node_key(&c.id),
                    id: c.id,
                    zone,
                    weight: c.weight,
                }
            })
            .collect();
        Placement {
            nodes,
            zone_count: zones.len(),
            effective: Mutex::new(HashMap::new()),
        }
    }

    /// Number of candidate nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no candidates.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of distinct zones among the candidates.
    pub fn zone_count(&self) -> usize {
        self.zone_count
    }

    /// The candidate node ids, sorted.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes.iter().map(|n| &n.id)
    }

    /// Effective weights for picking n nodes, computed once per n.
    fn effective_weights(&self, n: usize) -> Arc<[f64]> {
        // Only inserts happen under the lock: a poisoned map is still valid.
        let cached = self
            .effective
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&n)
            .cloned();
        if let Some(w) = cached {
            return w;
        }
        let raw: Vec<f64> = self.nodes.iter().map(|n| n.weight).collect();
        let w: Arc<[f64]> = adjusted_weights(&raw, n).into();
        self.effective
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(n)
            .or_insert(w)
            .clone()
    }

    /// Node indices by descending rendezvous score for `stripe`, with the
    /// weights tuned for `n` picks.
    fn rank(&self, stripe: &StripeId, n: usize) -> Vec<usize> {
        let weights = self.effective_weights(n);
        let s = stripe_key(stripe);
        let scores: Vec<f64> = self
            .nodes
            .iter()
            .zip(weights.iter())
            .map(|(node, w)| score(s, node.key, *w))
            .collect();
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        // Ties (practically impossible) break by node id, i.e. by index.
        order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        order
    }

    /// Every candidate ranked by rendezvous score for `stripe` (weights
    /// tuned for `n` picks), ignoring zones.
    pub fn ranked(&self, stripe: &StripeId, n: usize) -> Vec<NodeId> {
        self.ids(self.rank(stripe, n))
    }

    /// The k + m target nodes of `stripe`, distinct, in shard-index order
    /// (shard i goes to element i). Zones hold at most [`zone_cap`] shards
    /// each as long as enough nodes exist; otherwise the cap is relaxed one
    /// shard at a time. With fewer than k + m candidates all of them are
    /// returned (shorter list): the caller decides about quorum.
    pub fn place(&self, stripe: &StripeId, k: usize, m: usize) -> Vec<NodeId> {
        self.place_excluding(stripe, k, m, &[])
    }

    /// Like [`place`](Self::place) with some nodes ruled out (e.g. nodes a
    /// writer failed to reach). Rendezvous hashing keeps the rest stable:
    /// excluding one target mostly just replaces it by the next candidate.
    pub fn place_excluding(
        &self,
        stripe: &StripeId,
        k: usize,
        m: usize,
        exclude: &[NodeId],
    ) -> Vec<NodeId> {
        let order = self.rank(stripe, k + m);
        let order = self.without(order, exclude);
        let mut picked = self.select(&order, k, m);
        picked.truncate(k + m);
        self.ids(picked)
    }

    /// All candidates for `stripe` in write order: the first k + m are the
    /// targets of [`place`](Self::place); the rest are fall-backs in rank
    /// order, to try when a target fails.
    pub fn place_ordered(&self, stripe: &StripeId, k: usize, m: usize) -> Vec<NodeId> {
        let order = self.rank(stripe, k + m);
        self.ids(self.select(&order, k, m))
    }

    fn without(&self, order: Vec<usize>, exclude: &[NodeId]) -> Vec<usize> {
        if exclude.is_empty() {
            return order;
        }
        order
            .into_iter()
            .filter(|&i| !exclude.contains(&self.nodes[i].id))
            .collect()
    }

    /// Walks the ranked `order` taking nodes whose zone is under its cap,
    /// relaxing the cap by one until n nodes are taken or none are left;
    /// then appends the untaken nodes in rank order.
    fn select(&self, order: &[usize], k: usize, m: usize) -> Vec<usize> {
        let n = k + m;
        let mut zone_seen = vec![false; self.zone_count];
        for &i in order {
            zone_seen[self.nodes[i].zone] = true;
        }
        let zones = zone_seen.iter().filter(|z| **z).count();
        let mut cap = zone_cap(k, m, zones);
        let mut taken = vec![false; self.nodes.len()];
        let mut per_zone = vec![0usize; self.zone_count];
        let mut out = Vec::with_capacity(order.len());
        let want = n.min(order.len());
        while out.len() < want {
            for &i in order {
                if out.len() == want {
                    break;
                }
                let zone = self.nodes[i].zone;
                if !taken[i] && per_zone[zone] < cap {
                    taken[i] = true;
                    per_zone[zone] += 1;
                    out.push(i);
                }
            }
            cap += 1;
        }
        out.extend(order.iter().copied().filter(|&i| !taken[i]));
        out
    }

    fn ids(&self, indices: Vec<usize>) -> Vec<NodeId> {
        indices
            .into_iter()
            .map(|i| self.nodes[i].id.clone())
            .collect()
    }
}

/// One-shot convenience: the k + m targets of `stripe` among the up nodes
/// of `map`. Build a [`Placement`] instead when placing many stripes.
pub fn place(map: &ClusterMap, stripe: &StripeId, k: usize, m: usize) -> Vec<NodeId> {
    Placement::from_cluster_map(map).place(stripe, k, m)
}

/// SplitMix64's finaliser: a bijective 64-bit mix with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64-bit key of a node id (BLAKE3 in derive-key mode), computed once per
/// node when a [`Placement`] is built.
fn node_key(id: &NodeId) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("tessera placement node key v1");
    h.update(id.as_str().as_bytes());
    let bytes = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// 64-bit digest of a stripe id, mixed so that sequential ids also spread.
fn stripe_key(stripe: &StripeId) -> u64 {
    let (lo, hi) = stripe.0.split_at(8);
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(lo);
    b.copy_from_slice(hi);
    mix64(u64::from_le_bytes(a) ^ mix64(u64::from_le_bytes(b) ^ 0x9e37_79b9_7f4a_7c15))
}

/// Weighted rendezvous score: `-w / ln(h)` with h the (stripe, node) hash
/// mapped into the open interval (0, 1). Highest wins; node i wins a single
/// pick with probability `w_i / sum(w)`.
fn score(stripe_key: u64, node_key: u64, weight: f64) -> f64 {
    let u = mix64(mix64(stripe_key ^ node_key).wrapping_add(node_key));
    // 53 high bits + 1/2: strictly inside (0, 1), so ln(h) < 0.
    let h = ((u >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
    -weight / h.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_caps() {
        // RS(4,2): three zones are enough for cap m = 2.
        assert_eq!(zone_cap(4, 2, 3), 2);
        assert_eq!(zone_cap(4, 2, 6), 2);
        // Two zones: 3 each.
        assert_eq!(zone_cap(4, 2, 2), 3);
        assert_eq!(zone_cap(4, 2, 1), 6);
        assert_eq!(zone_cap(10, 4, 3), 5);
        assert_eq!(zone_cap(3, 0, 3), 1);
    }

    #[test]
    fn scores_are_finite_and_positive() {
        for (s, k) in [(0, 0), (u64::MAX, 0), (0, u64::MAX), (12345, 678)] {
            let v = score(s, k, 1.0);
            assert!(v.is_finite() && v > 0.0, "{v}");
        }
    }

    #[test]
    fn candidate_errors() {
        let c = |id: &str, w: f64| Candidate {
            id: NodeId::from(id),
            zone: "z".into(),
            weight: w,
        };
        assert!(matches!(
            Placement::from_candidates([c("a", 1.0), c("a", 1.0)]),
            Err(PlacementError::DuplicateNode(_))
        ));
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                Placement::from_candidates([c("a", w)]),
                Err(PlacementError::InvalidWeight { .. })
            ));
        }
    }

    #[test]
    fn too_few_nodes_returns_what_exists() {
        let p = Placement::from_candidates((0..3).map(|i| Candidate {
            id: NodeId(format!("n{i}")),
            zone: "z".into(),
            weight: 1.0,
        }))
        .unwrap();
        let got = p.place(&StripeId([7; 16]), 4, 2);
        assert_eq!(got.len(), 3);
        assert!(Placement::from_candidates([])
            .unwrap()
            .place(&StripeId([7; 16]), 4, 2)
            .is_empty());
    }
}
