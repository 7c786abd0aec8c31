//! The console's JSON snapshot of the cluster, made from meta queries.
//!
//! Cost control: one snapshot is made at most every [`SNAPSHOT_TTL`] however
//! many browsers poll (they share it), and bucket statistics, which meta
//! computes by scanning each bucket's objects, at most every
//! [`BUCKETS_TTL`] and for at most [`MAX_BUCKETS`] buckets.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tessera_proto::MetaClient;
use tessera_types::meta::{MetaQuery, QueryReply};
use tessera_types::repair::DurabilityStatus;
use tessera_types::{now_millis, ClusterMap, UnixMillis};
use tokio::time::Instant;

use super::GatewayInfo;

/// A snapshot younger than this is served again.
const SNAPSHOT_TTL: Duration = Duration::from_millis(1000);
/// Bucket statistics younger than this are reused.
const BUCKETS_TTL: Duration = Duration::from_secs(10);
/// Buckets whose statistics are shown (the rest are listed as truncated).
const MAX_BUCKETS: usize = 100;
/// Longest wait for one meta answer; the page shows an error instead.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// The repair rate is measured over repaired-byte samples this old at most.
const RATE_WINDOW: Duration = Duration::from_secs(30);

/// One snapshot, as the page receives it.
#[derive(Clone, Debug, Serialize)]
pub struct StatusView {
    pub generated_unix_ms: UnixMillis,
    pub gateway: GatewayInfo,
    pub meta: MetaView,
    pub storage: StorageView,
    pub buckets: BucketsView,
    /// `None` with `durability_error` set when meta did not answer.
    pub durability: Option<DurabilityView>,
    pub durability_error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MetaView {
    pub leader: Option<u64>,
    pub members: Vec<MetaMember>,
}

/// One meta node as it sees itself.
#[derive(Clone, Debug, Serialize)]
pub struct MetaMember {
    pub addr: String,
    pub id: Option<u64>,
    pub reachable: bool,
    /// Leader, Follower, Candidate, Learner.
    pub state: Option<String>,
    pub term: Option<u64>,
    pub leader_id: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StorageView {
    pub epoch: Option<u64>,
    /// Sorted by zone, then address.
    pub nodes: Vec<NodeView>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeView {
    pub id: String,
    pub addr: String,
    pub zone: String,
    /// up, suspect, down, draining.
    pub state: &'static str,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// Shard files the node reports.
    pub shard_count: u64,
    /// Shards live manifests place on the node (meta's index).
    pub placed_shards: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BucketsView {
    pub items: Vec<BucketView>,
    /// More buckets exist than [`MAX_BUCKETS`].
    pub truncated: bool,
    pub as_of_unix_ms: UnixMillis,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BucketView {
    pub name: String,
    pub created_unix_ms: UnixMillis,
    /// `None`: meta did not answer for this bucket.
    pub objects: Option<u64>,
    pub bytes: Option<u64>,
}

/// Meta's durability figures, with a repair rate measured by the console
/// across its polls.
#[derive(Clone, Debug, Serialize)]
pub struct DurabilityView {
    #[serde(flatten)]
    pub status: DurabilityStatus,
    /// Stripes not queued for repair.
    pub whole: u64,
    /// Rebuilt shard bytes per second over the last polls (`None`: not
    /// measured yet).
    pub repair_rate_bytes_per_sec: Option<f64>,
    /// Seconds to full redundancy at that rate (`None`: unknown).
    pub repair_eta_secs: Option<f64>,
}

/// Makes snapshots, shared by every poller.
pub struct StatusSource {
    meta: MetaClient,
    info: GatewayInfo,
    state: tokio::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    snapshot: Option<(Instant, Bytes)>,
    buckets: Option<(Instant, BucketsView)>,
    /// (when, repaired bytes) of recent durability answers.
    repaired: VecDeque<(Instant, u64)>,
}

impl StatusSource {
    pub fn new(meta: MetaClient, info: GatewayInfo) -> Self {
        StatusSource {
            meta,
            info,
            state: tokio::sync::Mutex::new(Cache::default()),
        }
    }

    /// The current snapshot as JSON (at most [`SNAPSHOT_TTL`] old).
    pub async fn snapshot(&self) -> Bytes {
        // Held across the meta queries on purpose: concurrent pollers wait
        // for one snapshot instead of each querying meta.
        let mut cache = self.state.lock().await;
        if let Some((at, json)) = &cache.snapshot {
            if at.elapsed() < SNAPSHOT_TTL {
                return json.clone();
            }
        }
        let view = self.collect(&mut cache).await;
        let json = Bytes::from(serde_json::to_vec(&view).unwrap_or_else(|e| {
            format!("{{\"error\":\"cannot encode the status: {e}\"}}").into_bytes()
        }));
        cache.snapshot = Some((Instant::now(), json.clone()));
        json
    }

    async fn query(&self, q: &MetaQuery) -> Result<QueryReply, String> {
        match tokio::time::timeout(QUERY_TIMEOUT, self.meta.query(q)).await {
            Ok(Ok(QueryReply::Err(e))) => Err(format!("meta refused: {e:?}")),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("meta did not answer within {QUERY_TIMEOUT:?}")),
        }
    }

    async fn collect(&self, cache: &mut Cache) -> StatusView {
        let (meta, map, durability) = tokio::join!(
            self.meta_members(),
            self.query(&MetaQuery::ClusterMap),
            self.query(&MetaQuery::Durability),
        );
        let durability = match durability {
            Ok(QueryReply::Durability(d)) => Ok(d),
            Ok(other) => Err(format!("unexpected answer: {other:?}")),
            Err(e) => Err(e),
        };
        let storage = match map {
            Ok(QueryReply::ClusterMap(map)) => storage_view(&map, durability.as_ref().ok()),
            Ok(other) => storage_error(format!("unexpected answer: {other:?}")),
            Err(e) => storage_error(e),
        };
        let buckets = match &cache.buckets {
            Some((at, b)) if at.elapsed() < BUCKETS_TTL && b.error.is_none() => b.clone(),
            _ => {
                let b = self.buckets().await;
                cache.buckets = Some((Instant::now(), b.clone()));
                b
            }
        };
        let (durability, durability_error) = match durability {
            Ok(d) => (Some(durability_view(d, &mut cache.repaired)), None),
            Err(e) => (None, Some(e)),
        };
        StatusView {
            generated_unix_ms: now_millis(),
            gateway: self.info.clone(),
            meta,
            storage,
            buckets,
            durability,
            durability_error,
        }
    }

    /// Every configured meta address's own Raft view; the leader is the
    /// member that says it leads with the highest term, else the one most
    /// members follow.
    async fn meta_members(&self) -> MetaView {
        let asks = self.meta.addrs().iter().map(|addr| async move {
            let r = tokio::time::timeout(QUERY_TIMEOUT, self.meta.raft_status(addr)).await;
            match r {
                Ok(Ok(st)) => MetaMember {
                    addr: addr.clone(),
                    id: Some(st.id),
                    reachable: true,
                    state: Some(st.state),
                    term: Some(st.current_term),
                    leader_id: (st.leader_id != 0).then_some(st.leader_id),
                    last_log_index: Some(st.last_log_index),
                    last_applied: Some(st.last_applied),
                    error: None,
                },
                Ok(Err(e)) => unreachable_member(addr, e.to_string()),
                Err(_) => unreachable_member(addr, "no answer".into()),
            }
        });
        let mut members = futures::future::join_all(asks).await;
        members
            .sort_by(|a, b| (a.id.is_none(), a.id, &a.addr).cmp(&(b.id.is_none(), b.id, &b.addr)));
        MetaView {
            leader: pick_leader(&members),
            members,
        }
    }

    async fn buckets(&self) -> BucketsView {
        let as_of_unix_ms = now_millis();
        let list = match self.query(&MetaQuery::ListBuckets).await {
            Ok(QueryReply::Buckets(b)) => b,
            Ok(other) => return buckets_error(format!("unexpected answer: {other:?}")),
            Err(e) => return buckets_error(e),
        };
        let truncated = list.len() > MAX_BUCKETS;
        let mut items = Vec::new();
        // One at a time: each is a scan on the meta leader.
        for b in list.into_iter().take(MAX_BUCKETS) {
            let stats = self
                .query(&MetaQuery::BucketStats {
                    name: b.name.clone(),
                })
                .await;
            let (objects, bytes) = match stats {
                Ok(QueryReply::BucketStats(s)) => (Some(s.objects), Some(s.bytes)),
                _ => (None, None),
            };
            items.push(BucketView {
                name: b.name,
                created_unix_ms: b.created,
                objects,
                bytes,
            });
        }
        BucketsView {
            items,
            truncated,
            as_of_unix_ms,
            error: None,
        }
    }
}

fn unreachable_member(addr: &str, error: String) -> MetaMember {
    MetaMember {
        addr: addr.to_string(),
        id: None,
        reachable: false,
        state: None,
        term: None,
        leader_id: None,
        last_log_index: None,
        last_applied: None,
        error: Some(error),
    }
}

fn pick_leader(members: &[MetaMember]) -> Option<u64> {
    let claims = members
        .iter()
        .filter(|m| m.id.is_some() && m.leader_id == m.id)
        .max_by_key(|m| m.term);
    if let Some(m) = claims {
        return m.id;
    }
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for id in members.iter().filter_map(|m| m.leader_id) {
        *votes.entry(id).or_default() += 1;
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(id, _)| id)
}

fn storage_error(error: String) -> StorageView {
    StorageView {
        epoch: None,
        nodes: Vec::new(),
        error: Some(error),
    }
}

fn buckets_error(error: String) -> BucketsView {
    BucketsView {
        items: Vec::new(),
        truncated: false,
        as_of_unix_ms: now_millis(),
        error: Some(error),
    }
}

fn storage_view(map: &ClusterMap, durability: Option<&DurabilityStatus>) -> StorageView {
    let placed: BTreeMap<&str, u64> = durability
        .map(|d| {
            d.shards_by_node
                .iter()
                .map(|(id, n)| (id.0.as_str(), *n))
                .collect()
        })
        .unwrap_or_default();
    let mut nodes: Vec<NodeView> = map
        .nodes
        .iter()
        .map(|n| NodeView {
            id: n.id.0.clone(),
            addr: n.addr.clone(),
            zone: n.zone.clone(),
            state: n.state.as_str(),
            capacity_bytes: n.capacity_bytes,
            used_bytes: n.used_bytes,
            shard_count: n.shard_count,
            placed_shards: durability.map(|_| placed.get(n.id.0.as_str()).copied().unwrap_or(0)),
        })
        .collect();
    nodes.sort_by(|a, b| (&a.zone, &a.addr).cmp(&(&b.zone, &b.addr)));
    StorageView {
        epoch: Some(map.epoch),
        nodes,
        error: None,
    }
}

fn durability_view(
    status: DurabilityStatus,
    samples: &mut VecDeque<(Instant, u64)>,
) -> DurabilityView {
    let now = Instant::now();
    // Repaired totals only grow; a smaller one means a new meta state
    // (restored cluster): start measuring again.
    if samples
        .back()
        .is_some_and(|(_, b)| *b > status.repaired_bytes)
    {
        samples.clear();
    }
    samples.push_back((now, status.repaired_bytes));
    while samples
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
    {
        samples.pop_front();
    }
    let rate = match samples.front() {
        Some((t, b)) if now.duration_since(*t) >= Duration::from_millis(500) => Some(
            status.repaired_bytes.saturating_sub(*b) as f64 / now.duration_since(*t).as_secs_f64(),
        ),
        _ => None,
    };
    let eta = eta_secs(&status, rate);
    DurabilityView {
        whole: status.stripes.saturating_sub(status.queued),
        repair_rate_bytes_per_sec: rate,
        repair_eta_secs: eta,
        status,
    }
}

/// Queued stripes times the mean rebuilt bytes per repaired stripe, at
/// `rate` (the estimate `tessera admin status` prints).
fn eta_secs(s: &DurabilityStatus, rate: Option<f64>) -> Option<f64> {
    if s.queued == 0 {
        return Some(0.0);
    }
    let rate = rate?;
    if rate <= 0.0 || s.repaired_stripes == 0 {
        return None;
    }
    let per_stripe = s.repaired_bytes as f64 / s.repaired_stripes as f64;
    Some(s.queued as f64 * per_stripe / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, term: u64, leader: Option<u64>) -> MetaMember {
        MetaMember {
            addr: format!("m{id}:7001"),
            id: Some(id),
            reachable: true,
            state: None,
            term: Some(term),
            leader_id: leader,
            last_log_index: None,
            last_applied: None,
            error: None,
        }
    }

    #[test]
    fn the_leader_is_who_claims_it_with_the_highest_term_else_the_most_followed() {
        let m = [
            member(1, 3, Some(1)),
            member(2, 4, Some(2)),
            member(3, 4, Some(2)),
        ];
        assert_eq!(pick_leader(&m), Some(2));
        // Nobody reachable claims to lead: the one most members follow.
        let m = [member(2, 4, Some(1)), member(3, 4, Some(1))];
        assert_eq!(pick_leader(&m), Some(1));
        assert_eq!(pick_leader(&[member(2, 4, None)]), None);
    }

    #[test]
    fn repair_rate_and_eta_come_from_successive_polls() {
        let mut samples = VecDeque::new();
        let at = |queued, stripes, bytes| DurabilityStatus {
            stripes: 100,
            queued,
            repaired_stripes: stripes,
            repaired_bytes: bytes,
            ..Default::default()
        };
        let first = durability_view(at(10, 0, 0), &mut samples);
        assert_eq!(first.repair_rate_bytes_per_sec, None);
        assert_eq!(first.whole, 90);
        // A second sample 1 s later: 10 stripes of 1000 bytes rebuilt.
        if let Some(s) = samples.front_mut() {
            s.0 -= Duration::from_secs(1);
        }
        let second = durability_view(at(10, 10, 10_000), &mut samples);
        let rate = second.repair_rate_bytes_per_sec.expect("rate");
        assert!((rate - 10_000.0).abs() < 200.0, "{rate}");
        let eta = second.repair_eta_secs.expect("eta");
        assert!((eta - 1.0).abs() < 0.05, "{eta}");
        // Nothing queued: done.
        let done = durability_view(at(0, 20, 20_000), &mut samples);
        assert_eq!(done.repair_eta_secs, Some(0.0));
    }
}
