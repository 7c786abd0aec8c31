//! `tessera admin`: cluster status, access keys, repair settings and node
//! lifecycle, through the meta client (which follows the leader).

pub mod durability;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tessera_proto::meta::RaftStatusResponse;
use tessera_proto::{ClusterAuth, MetaClient, RpcError};
use tessera_types::meta::{MetaCommand, MetaError, MetaQuery, MetaReply, QueryReply};
use tessera_types::{AccessKey, ClusterMap, NodeState};
use tokio::task::JoinSet;

use crate::cli::{AdminArgs, AdminCommand, BucketCommand, KeyCommand, MetaTarget};
use crate::dev::ClusterInfo;
use crate::fsutil::{human_bytes, percent};

/// Deadline of one admin request, retries included.
const REQUEST_DEADLINE: Duration = Duration::from_secs(8);
/// Where `tessera dev` writes cluster.json by default.
const DEFAULT_CLUSTER_FILE: &str = "./tessera-data/cluster.json";

/// Runs an admin command; the exit code tells scripts whether it worked.
pub async fn run(args: AdminArgs) -> Result<ExitCode> {
    let addrs = resolve_meta(&args.target)?;
    let auth = resolve_auth(&args.target)?;
    match args.command {
        AdminCommand::Status { json } => {
            let report = status(&addrs, auth).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AdminCommand::Key(cmd) => {
            let client = MetaClient::with_auth(addrs, REQUEST_DEADLINE, auth);
            key(&client, cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::Repair(a) => {
            let client = MetaClient::with_auth(addrs, REQUEST_DEADLINE, auth);
            durability::repair(&client, a).await
        }
        AdminCommand::Node(cmd) => {
            let client = MetaClient::with_auth(addrs, REQUEST_DEADLINE, auth);
            durability::node(&client, cmd).await
        }
        AdminCommand::Bucket(cmd) => {
            let client = MetaClient::with_auth(addrs, REQUEST_DEADLINE, auth);
            bucket(&client, cmd).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The cluster secret from --cluster-secret-file or
/// $TESSERA_CLUSTER_SECRET, else from the `cluster-secret` file that
/// `tessera dev` keeps beside its cluster.json (--cluster,
/// $TESSERA_CLUSTER, ./tessera-data/cluster.json).
pub fn resolve_auth(t: &MetaTarget) -> Result<Arc<ClusterAuth>> {
    if let Some(s) = crate::config::resolve_secret(&t.secret, None)? {
        return Ok(ClusterAuth::new(s));
    }
    let cluster_file = t
        .cluster
        .clone()
        .or_else(|| {
            std::env::var("TESSERA_CLUSTER")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CLUSTER_FILE));
    let beside = cluster_file
        .parent()
        .unwrap_or(Path::new("."))
        .join(crate::dev::SECRET_FILE);
    if beside.exists() {
        let text = std::fs::read_to_string(&beside)
            .with_context(|| format!("reading {}", beside.display()))?;
        let secret = tessera_proto::ClusterSecret::new(&text)
            .with_context(|| format!("{} holds no usable secret", beside.display()))?;
        return Ok(ClusterAuth::new(secret));
    }
    bail!("{}", tessera_proto::auth::MISSING_SECRET_HELP)
}

/// Meta addresses from, in order: --meta, --cluster, $TESSERA_META,
/// $TESSERA_CLUSTER, ./tessera-data/cluster.json.
pub fn resolve_meta(t: &MetaTarget) -> Result<Vec<String>> {
    fn split(s: &str) -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    }
    fn from_file(path: PathBuf) -> Result<Vec<String>> {
        let addrs = ClusterInfo::load(&path)?.meta_addrs();
        if addrs.is_empty() {
            bail!("{} lists no meta nodes", path.display());
        }
        Ok(addrs)
    }
    let meta: Vec<String> = t.meta.iter().flat_map(|m| split(m)).collect();
    if !meta.is_empty() {
        return Ok(meta);
    }
    if let Some(p) = &t.cluster {
        return from_file(p.clone());
    }
    if let Ok(v) = std::env::var("TESSERA_META") {
        let meta = split(&v);
        if !meta.is_empty() {
            return Ok(meta);
        }
    }
    if let Ok(v) = std::env::var("TESSERA_CLUSTER") {
        if !v.trim().is_empty() {
            return from_file(PathBuf::from(v));
        }
    }
    let default = PathBuf::from(DEFAULT_CLUSTER_FILE);
    if default.exists() {
        return from_file(default);
    }
    bail!(
        "no meta nodes given: use --meta HOST:PORT,..., --cluster DIR/cluster.json \
         or set TESSERA_META"
    )
}

/// What `admin status` reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    /// A leader was found and the cluster map was read.
    pub healthy: bool,
    pub leader: Option<LeaderRef>,
    pub meta: Vec<MetaMemberStatus>,
    pub cluster_map_epoch: Option<u64>,
    pub storage: Vec<StorageNodeStatus>,
    /// Why the cluster map could not be read, if it could not.
    pub storage_error: Option<String>,
    /// Repair queue, repair rate, GC backlog (None: meta did not answer).
    pub durability: Option<durability::DurabilityReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRef {
    pub id: u64,
    pub addr: String,
}

/// One meta member as it sees itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MetaMemberStatus {
    pub id: Option<u64>,
    pub addr: String,
    pub reachable: bool,
    /// Leader, Follower, Candidate, Learner.
    pub state: Option<String>,
    pub term: Option<u64>,
    /// The leader this member follows (None: unknown).
    pub leader_id: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StorageNodeStatus {
    pub id: String,
    pub addr: String,
    pub zone: String,
    /// up, suspect, down, draining.
    pub state: String,
    pub weight: f64,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub used_percent: f64,
    pub shard_count: u64,
    /// Shards meta places on this node (drain progress: 0 = drained).
    pub indexed_shards: u64,
    pub last_heartbeat: i64,
    /// Scrubber and orphan-scan figures from the node itself (None: it did
    /// not answer).
    pub scrub: Option<ScrubStatus>,
}

/// A storage node's scrubber and orphan scan, as it reports them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScrubStatus {
    pub passes: u64,
    /// Of the pass in progress (100 between passes).
    pub progress_percent: f64,
    pub bytes_total: u64,
    pub shards_total: u64,
    pub corrupt_total: u64,
    pub last_pass_ms: u64,
    pub orphans_deleted_total: u64,
    pub orphan_last_scan_unix_ms: i64,
}

/// Asks every meta node (those given and the members they report) for its
/// Raft view, and the leader for the cluster map.
pub async fn status(addrs: &[String], auth: Arc<ClusterAuth>) -> StatusReport {
    let auth_for_storage = auth.clone();
    let client = MetaClient::with_auth(addrs.to_vec(), REQUEST_DEADLINE, auth);
    let mut views: BTreeMap<String, Result<RaftStatusResponse, RpcError>> = BTreeMap::new();
    let mut known_ids: BTreeMap<String, u64> = BTreeMap::new();
    let mut pending: BTreeSet<String> = addrs.iter().cloned().collect();
    while !pending.is_empty() {
        let mut set = JoinSet::new();
        for addr in std::mem::take(&mut pending) {
            let c = client.clone();
            set.spawn(async move {
                let r = c.raft_status(&addr).await;
                (addr, r)
            });
        }
        while let Some(joined) = set.join_next().await {
            let Ok((addr, r)) = joined else { continue };
            if let Ok(st) = &r {
                known_ids.insert(addr.clone(), st.id);
                for m in &st.members {
                    known_ids.entry(m.addr.clone()).or_insert(m.id);
                    if !m.addr.is_empty() && !views.contains_key(&m.addr) && m.addr != addr {
                        pending.insert(m.addr.clone());
                    }
                }
            }
            views.insert(addr, r);
        }
        pending.retain(|a| !views.contains_key(a));
    }

    let mut meta: Vec<MetaMemberStatus> = views
        .iter()
        .map(|(addr, r)| match r {
            Ok(st) => MetaMemberStatus {
                id: Some(st.id),
                addr: addr.clone(),
                reachable: true,
                state: Some(st.state.clone()),
                term: Some(st.current_term),
                leader_id: (st.leader_id != 0).then_some(st.leader_id),
                last_log_index: Some(st.last_log_index),
                last_applied: Some(st.last_applied),
                error: None,
            },
            Err(e) => MetaMemberStatus {
                id: known_ids.get(addr).copied(),
                addr: addr.clone(),
                reachable: false,
                state: None,
                term: None,
                leader_id: None,
                last_log_index: None,
                last_applied: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    meta.sort_by(|a, b| (a.id.is_none(), a.id, &a.addr).cmp(&(b.id.is_none(), b.id, &b.addr)));
    let leader = pick_leader(&views);

    let (map, storage_error) = match client.query(&MetaQuery::ClusterMap).await {
        Ok(QueryReply::ClusterMap(map)) => (Some(map), None),
        Ok(other) => (None, Some(format!("unexpected answer: {other:?}"))),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut storage = map.as_ref().map(storage_rows).unwrap_or_default();
    scrub_figures(&mut storage, auth_for_storage).await;
    let durability = if map.is_some() {
        durability::report(&client).await.ok()
    } else {
        None
    };
    if let Some(d) = &durability {
        for row in storage.iter_mut() {
            row.indexed_shards = d
                .status
                .shards_by_node
                .iter()
                .find(|(id, _)| id.as_str() == row.id)
                .map(|(_, n)| *n)
                .unwrap_or(0);
        }
    }
    StatusReport {
        durability,
        healthy: leader.is_some() && map.is_some(),
        leader,
        meta,
        cluster_map_epoch: map.map(|m| m.epoch),
        storage,
        storage_error,
    }
}

/// Asks every storage node for its scrubber figures, all at once.
async fn scrub_figures(rows: &mut [StorageNodeStatus], auth: Arc<ClusterAuth>) {
    let pool = Arc::new(tessera_proto::StoragePool::with_auth(auth));
    let mut set = JoinSet::new();
    for (i, row) in rows.iter().enumerate() {
        let (pool, addr) = (pool.clone(), row.addr.clone());
        set.spawn(async move { (i, pool.node_info(&addr).await) });
    }
    while let Some(joined) = set.join_next().await {
        let Ok((i, Ok(info))) = joined else { continue };
        if let Some(row) = rows.get_mut(i) {
            row.scrub = Some(ScrubStatus {
                passes: info.scrub_passes,
                progress_percent: f64::from(info.scrub_pass_progress_permille.min(1000)) / 10.0,
                bytes_total: info.scrub_bytes_total,
                shards_total: info.scrub_shards_total,
                corrupt_total: info.scrub_corrupt_total,
                last_pass_ms: info.scrub_last_pass_ms,
                orphans_deleted_total: info.orphans_deleted_total,
                orphan_last_scan_unix_ms: info.orphan_last_scan_unix_ms,
            });
        }
    }
}

/// The node that says it leads (highest term wins); otherwise the leader
/// most members point at.
fn pick_leader(
    views: &BTreeMap<String, Result<RaftStatusResponse, RpcError>>,
) -> Option<LeaderRef> {
    let ok = views
        .iter()
        .filter_map(|(a, r)| r.as_ref().ok().map(|s| (a, s)));
    if let Some((addr, st)) = ok
        .clone()
        .filter(|(_, s)| s.leader_id != 0 && s.leader_id == s.id)
        .max_by_key(|(_, s)| s.current_term)
    {
        return Some(LeaderRef {
            id: st.id,
            addr: addr.clone(),
        });
    }
    let mut votes: BTreeMap<(u64, String), usize> = BTreeMap::new();
    for (_, s) in ok {
        if s.leader_id != 0 {
            *votes
                .entry((s.leader_id, s.leader_addr.clone()))
                .or_default() += 1;
        }
    }
    votes
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|((id, addr), _)| LeaderRef { id, addr })
}

fn storage_rows(map: &ClusterMap) -> Vec<StorageNodeStatus> {
    let mut rows: Vec<StorageNodeStatus> = map
        .nodes
        .iter()
        .map(|n| StorageNodeStatus {
            id: n.id.to_string(),
            addr: n.addr.clone(),
            zone: n.zone.clone(),
            state: n.state.as_str().to_string(),
            weight: n.weight,
            capacity_bytes: n.capacity_bytes,
            used_bytes: n.used_bytes,
            used_percent: (percent(n.used_bytes, n.capacity_bytes) * 10.0).round() / 10.0,
            shard_count: n.shard_count,
            indexed_shards: 0,
            last_heartbeat: n.last_heartbeat,
            scrub: None,
        })
        .collect();
    rows.sort_by(|a, b| (&a.zone, &a.addr).cmp(&(&b.zone, &b.addr)));
    rows
}

impl StatusReport {
    /// Human-readable tables.
    pub fn render(&self) -> String {
        let mut out = String::new();
        match &self.leader {
            Some(l) => out.push_str(&format!("Meta group: leader {} at {}\n", l.id, l.addr)),
            None => out.push_str("Meta group: NO LEADER\n"),
        }
        let rows = self
            .meta
            .iter()
            .map(|m| {
                let id = m.id.map(|i| i.to_string()).unwrap_or_else(|| "?".into());
                if m.reachable {
                    vec![
                        id,
                        m.addr.clone(),
                        m.state.clone().unwrap_or_default(),
                        opt(m.term),
                        opt(m.leader_id),
                        opt(m.last_log_index),
                        opt(m.last_applied),
                    ]
                } else {
                    let why = m.error.clone().unwrap_or_default();
                    vec![id, m.addr.clone(), format!("UNREACHABLE ({why})")]
                }
            })
            .collect();
        out.push_str(&table(
            &[
                "ID", "ADDRESS", "STATE", "TERM", "LEADER", "LAST LOG", "APPLIED",
            ],
            rows,
        ));
        out.push('\n');
        match &self.storage_error {
            Some(e) => out.push_str(&format!("Storage nodes: cluster map unavailable: {e}\n")),
            None => {
                let count = |s: NodeState| {
                    self.storage
                        .iter()
                        .filter(|n| n.state == s.as_str())
                        .count()
                };
                let used: u64 = self.storage.iter().map(|n| n.used_bytes).sum();
                let cap: u64 = self.storage.iter().map(|n| n.capacity_bytes).sum();
                out.push_str(&format!(
                    "Storage nodes (map epoch {}): {} up, {} suspect, {} down, {} draining; \
                     {} of {} used ({:.1}%)\n",
                    opt(self.cluster_map_epoch),
                    count(NodeState::Up),
                    count(NodeState::Suspect),
                    count(NodeState::Down),
                    count(NodeState::Draining),
                    human_bytes(used),
                    human_bytes(cap),
                    percent(used, cap)
                ));
                let rows = self
                    .storage
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.clone(),
                            n.addr.clone(),
                            n.zone.clone(),
                            n.state.clone(),
                            human_bytes(n.used_bytes),
                            human_bytes(n.capacity_bytes),
                            format!("{:.1}%", n.used_percent),
                            n.shard_count.to_string(),
                            n.indexed_shards.to_string(),
                            n.scrub
                                .as_ref()
                                .map(|s| {
                                    format!(
                                        "{} passes, {:.0}%, {} bad",
                                        s.passes, s.progress_percent, s.corrupt_total
                                    )
                                })
                                .unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                out.push_str(&table(
                    &[
                        "ID", "ADDRESS", "ZONE", "STATE", "USED", "CAPACITY", "USE%", "SHARDS",
                        "PLACED", "SCRUB",
                    ],
                    rows,
                ));
            }
        }
        if let Some(d) = &self.durability {
            out.push('\n');
            out.push_str(&d.render());
        }
        out
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Left-aligned columns, two spaces apart; short rows are fine.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        // A row's last cell runs free (e.g. an error message), so it never
        // widens its column.
        let bounded = r
            .len()
            .saturating_sub(1)
            .min(widths.len().saturating_sub(1));
        for (i, c) in r.iter().enumerate().take(bounded) {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::from("  ");
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(&c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// What `admin key create` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreatedKey {
    pub access_key: String,
    pub secret_key: String,
    pub name: String,
    pub created: i64,
}

async fn key(client: &MetaClient, cmd: KeyCommand) -> Result<()> {
    match cmd {
        KeyCommand::Create {
            name,
            access_key,
            secret_key,
            if_not_exists,
        } => {
            let mut key = AccessKey::generate(&name, tessera_types::now_millis());
            if let Some(id) = access_key {
                check_key_id(&id)?;
                key.id = id;
            }
            let secret_given = secret_key.is_some();
            if let Some(secret) = secret_key {
                check_secret(&secret)?;
                key.secret = secret;
            }
            match client
                .query(&MetaQuery::GetAccessKey { id: key.id.clone() })
                .await
                .context("looking up the access key")?
            {
                QueryReply::AccessKey(None) => {}
                QueryReply::AccessKey(Some(old)) if if_not_exists => {
                    if secret_given && old.secret != key.secret {
                        bail!(
                            "access key {} already exists with a different secret",
                            key.id
                        );
                    }
                    // The secret is not printed again: the caller has it.
                    let out = serde_json::json!({
                        "access_key": old.id,
                        "name": old.name,
                        "created": old.created,
                        "existed": true,
                    });
                    println!("{}", serde_json::to_string_pretty(&out)?);
                    return Ok(());
                }
                QueryReply::AccessKey(Some(_)) => bail!("access key {} already exists", key.id),
                QueryReply::Err(e) => bail!("meta refused the lookup: {e}"),
                other => bail!("unexpected answer: {other:?}"),
            }
            let reply = client
                .write(&MetaCommand::PutAccessKey(key.clone()))
                .await
                .context("creating the access key")?;
            expect_ok(reply)?;
            let out = CreatedKey {
                access_key: key.id,
                secret_key: key.secret,
                name: key.name,
                created: key.created,
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        KeyCommand::List { json } => {
            let keys = match client
                .query(&MetaQuery::ListAccessKeys)
                .await
                .context("listing access keys")?
            {
                QueryReply::AccessKeys(keys) => keys,
                QueryReply::Err(e) => bail!("meta refused the listing: {e}"),
                other => bail!("unexpected answer: {other:?}"),
            };
            if json {
                let v: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "access_key": k.id, "name": k.name, "created": k.created
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rows = keys
                    .iter()
                    .map(|k| vec![k.id.clone(), k.name.clone(), format_millis(k.created)])
                    .collect();
                print!("{}", table(&["ACCESS KEY", "NAME", "CREATED (UTC)"], rows));
            }
        }
        KeyCommand::Delete { id } => {
            let reply = client
                .write(&MetaCommand::DeleteAccessKey { id: id.clone() })
                .await
                .context("deleting the access key")?;
            match reply {
                MetaReply::Err(MetaError::NoSuchAccessKey) => bail!("no such access key: {id}"),
                other => expect_ok(other)?,
            }
            println!("deleted access key {id}");
        }
    }
    Ok(())
}

/// One bucket as `admin bucket list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BucketRow {
    pub name: String,
    pub owner: String,
    pub created: i64,
    /// Access key -> "read", "write" or "read,write".
    pub grants: BTreeMap<String, String>,
}

fn grant_text(g: &tessera_types::meta::Grant) -> String {
    match (g.read, g.write) {
        (true, true) => "read,write".into(),
        (true, false) => "read".into(),
        (false, true) => "write".into(),
        (false, false) => "none".into(),
    }
}

async fn bucket(client: &MetaClient, cmd: BucketCommand) -> Result<()> {
    use tessera_types::meta::Grant;
    match cmd {
        BucketCommand::List { json } => {
            let buckets = match client.query(&MetaQuery::ListBuckets).await? {
                QueryReply::Buckets(b) => b,
                other => bail!("unexpected answer: {other:?}"),
            };
            let mut rows = Vec::with_capacity(buckets.len());
            for b in buckets {
                let grants = match client
                    .query(&MetaQuery::ListGrants {
                        bucket: b.name.clone(),
                    })
                    .await?
                {
                    QueryReply::Grants(g) => g,
                    // Deleted meanwhile.
                    QueryReply::Err(MetaError::NoSuchBucket) => continue,
                    other => bail!("unexpected answer: {other:?}"),
                };
                rows.push(BucketRow {
                    name: b.name,
                    owner: b.owner,
                    created: b.created,
                    grants: grants
                        .iter()
                        .map(|(k, g)| (k.clone(), grant_text(g)))
                        .collect(),
                });
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let table_rows = rows
                    .iter()
                    .map(|r| {
                        let grants: Vec<String> =
                            r.grants.iter().map(|(k, g)| format!("{k}:{g}")).collect();
                        vec![
                            r.name.clone(),
                            r.owner.clone(),
                            format_millis(r.created),
                            if grants.is_empty() {
                                "-".into()
                            } else {
                                grants.join(" ")
                            },
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["BUCKET", "OWNER", "CREATED", "GRANTS"], table_rows)
                );
            }
        }
        BucketCommand::Allow {
            bucket,
            key,
            read,
            write,
        } => {
            if !read && !write {
                bail!(
                    "say what to allow: --read, --write or both (`bucket deny` takes grants back)"
                );
            }
            let grant = Grant { read, write };
            let cmd = MetaCommand::SetGrant {
                bucket: bucket.clone(),
                access_key: key.clone(),
                grant,
            };
            expect_ok(client.write(&cmd).await?)?;
            println!(
                "{key} may now {} in {bucket}",
                grant_text(&grant).replace(',', " and ")
            );
        }
        BucketCommand::Deny { bucket, key } => {
            let cmd = MetaCommand::SetGrant {
                bucket: bucket.clone(),
                access_key: key.clone(),
                grant: Grant::default(),
            };
            expect_ok(client.write(&cmd).await?)?;
            println!("{key} has no grant on {bucket}; only its owner can use it");
        }
    }
    Ok(())
}

fn expect_ok(reply: MetaReply) -> Result<()> {
    match reply {
        MetaReply::Ok | MetaReply::Replaced(_) | MetaReply::Released(_) => Ok(()),
        MetaReply::Err(e) => bail!("meta refused the change: {e}"),
        other => bail!("unexpected answer: {other:?}"),
    }
}

/// Access key ids: 3-128 of `A-Z a-z 0-9 _ -`.
pub fn check_key_id(id: &str) -> Result<()> {
    let ok = (3..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        bail!("access key id must be 3-128 characters of A-Z, a-z, 0-9, '_' or '-'");
    }
    Ok(())
}

/// Secrets: 8-128 printable ASCII characters, no spaces.
pub fn check_secret(secret: &str) -> Result<()> {
    let ok = (8..=128).contains(&secret.len()) && secret.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        bail!("secret key must be 8-128 printable ASCII characters without spaces");
    }
    Ok(())
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn format_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::meta::RaftMember;

    #[test]
    fn dates() {
        assert_eq!(format_millis(0), "1970-01-01 00:00:00");
        assert_eq!(format_millis(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_millis(1_700_000_000_123), "2023-11-14 22:13:20");
    }

    #[test]
    fn key_shapes() {
        check_key_id("TK0123456789").unwrap();
        assert!(check_key_id("a b").is_err());
        assert!(check_key_id("ab").is_err());
        check_secret("abcdefgh+/").unwrap();
        assert!(check_secret("short").is_err());
        assert!(check_secret("with space inside").is_err());
    }

    #[test]
    fn explicit_meta_wins() {
        let t = MetaTarget {
            meta: vec!["a:1,b:2".into(), "c:3".into()],
            cluster: Some("/nonexistent.json".into()),
            secret: Default::default(),
        };
        assert_eq!(resolve_meta(&t).unwrap(), vec!["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn cluster_file_gives_meta_addrs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cluster.json");
        std::fs::write(
            &p,
            r#"{"s3_endpoint":"http://127.0.0.1:9000","region":"us-east-1",
                "access_key":"a","secret_key":"s","nodes":[
                {"role":"meta","id":"1","pid":1,"addr":"127.0.0.1:9011"},
                {"role":"storage","id":"s-1","pid":2,"addr":"127.0.0.1:9021"},
                {"role":"meta","id":"2","pid":3,"addr":"127.0.0.1:9012"}]}"#,
        )
        .unwrap();
        let t = MetaTarget {
            meta: vec![],
            cluster: Some(p),
            secret: Default::default(),
        };
        assert_eq!(
            resolve_meta(&t).unwrap(),
            vec!["127.0.0.1:9011", "127.0.0.1:9012"]
        );
        // The secret comes from the file `tessera dev` keeps beside it.
        if std::env::var_os(crate::config::SECRET_ENV).is_none() {
            assert!(resolve_auth(&t).is_err());
            std::fs::write(dir.path().join("cluster-secret"), "0123456789abcdef0123\n").unwrap();
            resolve_auth(&t).unwrap();
        }
    }

    fn view(id: u64, leader: u64, term: u64) -> RaftStatusResponse {
        RaftStatusResponse {
            id,
            current_term: term,
            leader_id: leader,
            leader_addr: format!("h:{leader}"),
            last_log_index: 10,
            last_applied: 10,
            members: vec![RaftMember {
                id,
                addr: format!("h:{id}"),
            }],
            state: if id == leader { "Leader" } else { "Follower" }.into(),
        }
    }

    #[test]
    fn leader_is_the_self_declared_one_or_the_majority_view() {
        let mut v = BTreeMap::new();
        v.insert("h:1".to_string(), Ok(view(1, 2, 3)));
        v.insert("h:2".to_string(), Ok(view(2, 2, 3)));
        v.insert(
            "h:3".to_string(),
            Err(RpcError::Timeout { addr: "h:3".into() }),
        );
        assert_eq!(
            pick_leader(&v),
            Some(LeaderRef {
                id: 2,
                addr: "h:2".into()
            })
        );
        v.remove("h:2");
        assert_eq!(
            pick_leader(&v),
            Some(LeaderRef {
                id: 2,
                addr: "h:2".into()
            })
        );
        v.remove("h:1");
        assert_eq!(pick_leader(&v), None);
    }

    #[test]
    fn render_shows_unreachable_members_and_usage() {
        let r = StatusReport {
            healthy: true,
            leader: Some(LeaderRef {
                id: 1,
                addr: "h:1".into(),
            }),
            meta: vec![MetaMemberStatus {
                id: Some(3),
                addr: "h:3".into(),
                reachable: false,
                state: None,
                term: None,
                leader_id: None,
                last_log_index: None,
                last_applied: None,
                error: Some("refused".into()),
            }],
            cluster_map_epoch: Some(4),
            storage: vec![StorageNodeStatus {
                id: "s-1".into(),
                addr: "h:21".into(),
                zone: "z1".into(),
                state: "up".into(),
                weight: 1.0,
                capacity_bytes: 100 << 30,
                used_bytes: 25 << 30,
                used_percent: 25.0,
                shard_count: 7,
                indexed_shards: 7,
                last_heartbeat: 0,
                scrub: Some(ScrubStatus {
                    passes: 3,
                    progress_percent: 42.0,
                    corrupt_total: 1,
                    ..Default::default()
                }),
            }],
            storage_error: None,
            durability: Some(durability::DurabilityReport {
                status: tessera_types::repair::DurabilityStatus {
                    stripes: 10,
                    queued: 3,
                    queued_by_surviving: vec![(4, 1), (5, 2)],
                    ..Default::default()
                },
                repair_rate_bytes_per_sec: Some(2048.0),
                repair_eta_secs: Some(90.0),
            }),
        };
        let text = r.render();
        assert!(text.contains("leader 1 at h:1"), "{text}");
        assert!(text.contains("UNREACHABLE (refused)"), "{text}");
        assert!(text.contains("1 up, 0 suspect"), "{text}");
        assert!(text.contains("25.0 GiB"), "{text}");
        assert!(text.contains("25.0%"), "{text}");
        assert!(
            text.contains("7 whole, 3 queued for repair (1 with 4 shards left, 2 with 5"),
            "{text}"
        );
        assert!(text.contains("now 2.0 KiB/s, ETA 1m30s"), "{text}");
        assert!(text.contains("3 passes, 42%, 1 bad"), "{text}");
    }
}
