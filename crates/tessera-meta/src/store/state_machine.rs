//! The replicated state machine in sled.
//!
//! Trees (all values codec-encoded, so versioned):
//! - `sm_buckets`: bucket name -> [`Bucket`]
//! - `sm_objects`: `bucket \0 key` -> [`ObjectManifest`] (bucket names hold
//!   no NUL, so a prefix scan of `bucket\0` lists one bucket in UTF-8 byte
//!   order of keys)
//! - `sm_access_keys`: key id -> [`AccessKey`]
//! - `sm_nodes`: storage node id -> [`NodeInfo`]
//! - `sm_uploads`: `bucket \0 key \0 upload id` -> [`Upload`] (multipart
//!   uploads in progress, listed in order of key then upload id)
//! - `sm_parts`: `upload id \0` + big-endian part number -> [`PartRecord`]
//! - `sm_gc`: commit time (sortable) + log index + seq -> [`GcItem`]
//! - `sm_stripes`: stripe id -> [`StripeOwner`] (every live stripe)
//! - `sm_node_shards`: `node \0 stripe id shard index` -> () (node -> shard
//!   index, for repair after a node is lost and for the orphan scan)
//! - `sm_grants`: `bucket \0 access key` -> [`Grant`] (what keys other than
//!   the owner may do in a bucket)
//! - `sm_repair`: surviving shards (u8) + queue time + stripe id ->
//!   [`RepairItem`] (riskiest first); `sm_repair_idx`: stripe id -> its key
//!   (see `durability.rs`)
//! - `sm_meta`: last applied log id, last membership, cluster map epoch,
//!   state machine clock
//! - `sm_snapshot`: the current snapshot (meta and data)
//! - `sm_redo`: the redo record of the last group of writes (`redo.rs`)
//!
//! Each log entry is applied as one atomic group of writes over all state
//! trees (its effects and `last_applied` together: a redo record, then the
//! writes, see `redo.rs`; not a sled transaction, which cost two device
//! writes each); a [`MetaCommand::Batch`] entry as one group per command,
//! or per run of PUTs to distinct keys (see
//! [`StateMachineStore::apply_batch`]).
//! Application is deterministic: times come from commands.
//!
//! ## Why applying does not flush
//!
//! `apply` writes to sled without a flush or sync: sled's background flush
//! and the fsync when a snapshot is recorded make the writes durable, and
//! none is needed for correctness, because every applied entry is durable
//! in the Raft log first (one `fdatasync` per appended batch of entries on
//! each node, not two). After a crash the state machine may be behind what
//! it had applied, and acknowledged, but it is restored exactly:
//!
//! 1. The state machine is the only user of its sled database, and sled
//!    recovers a prefix of its write-ahead log (recovery stops at the
//!    first torn or missing segment, so a later write is never recovered
//!    without an earlier one: sled `pagecache/segment.rs`), and a group of
//!    writes wholly, once its redo record is replayed at open (`redo.rs`).
//!    So the recovered state trees are exactly the state after some entry
//!    `k`, their `last_applied`; never half an entry.
//! 2. Every entry applied here was durable in this node's log (its own
//!    segment files, `store/logfile.rs`) before it was applied:
//!    `LogStore::append` calls back, and returns, only after its
//!    `fdatasync`, and
//!    openraft applies an entry only after it is stored and committed.
//!    Committed entries are never truncated. So every entry after `k`
//!    whose application was lost is still in the log ...
//! 3. ... unless purged: openraft purges only entries covered by a
//!    snapshot, and recording a snapshot (`save_snapshot_meta`, when one
//!    is built, installed or returned) flushes and fsyncs the state it
//!    covers first,
//!    so the recovered `k` is at or after the snapshot, hence after every
//!    purged index.
//! 4. On restart openraft reads `last_applied` ([`SmTrees::applied_state`])
//!    and re-applies the committed entries after it (at start up to the
//!    saved committed id, the rest once a leader sends its commit index,
//!    as for any follower); application is
//!    deterministic, so the result is the state that was acknowledged
//!    (the replies go to nobody). Until then this node is behind, as a
//!    lagging follower is; reads wait for the leader's applied index
//!    (`ensure_linearizable`).
//!
//! sled's own background flush (every 500 ms by default) bounds how much
//! is re-applied. `tests/crash.rs` kills meta processes right after
//! acknowledged writes and checks that every one of them is there.
//!
//! ## Snapshots
//!
//! The state trees are durable in sled, so they are their own snapshot: a
//! snapshot is a record (`sm_snapshot`, meta only) that the trees cover
//! the log up to its `last_log_id`, made after a flush. Building one is a
//! flush, whatever the size of the state, and runs beside the applier.
//! Only when a follower needs a snapshot (or at start-up, once) does
//! [`RaftStateMachine::get_current_snapshot`] copy the trees into bytes, on
//! the state machine task, so the copy is consistent; if entries were
//! applied since the recorded snapshot, the copy is recorded as a newer
//! one. (Earlier versions copied the whole state every `snapshot-every`
//! entries on the applier and kept the copy in sled: the applier stalled
//! for the copy, and the cost per write grew with the state.) The bytes on
//! the wire are unchanged.

use std::collections::HashSet;
use std::io::Cursor;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use sled::transaction::{TransactionError, Transactional};
use tessera_types::meta::{
    Grant, MetaCommand, MetaError, MetaReply, PartRecord, Upload, WriteCondition,
};
use tessera_types::{
    AccessKey, Bucket, NodeId, NodeInfo, NodeState, ObjectManifest, Stripe, UnixMillis,
};

use super::counts::{Counted, Counts, Tally};
use super::durability::{object_owner, Effects, NodeStates};
use super::redo::{self, TreeWrites};
use super::{dec, enc, flush, RaftNodeId, StoreError, TypeConfig};
use crate::MetaNodeError;
use tessera_types::repair::{RepairReason, StripeOwner};

pub(crate) const META_LAST_APPLIED: &[u8] = b"last_applied";
pub(crate) const META_MEMBERSHIP: &[u8] = b"last_membership";
pub(crate) const META_EPOCH: &[u8] = b"epoch";
pub(crate) const META_CLOCK: &[u8] = b"clock";
/// `(log index, commands applied)` of a batch entry being applied (absent
/// between entries; see [`StateMachineStore::apply_batch`]).
pub(crate) const META_BATCH_PROGRESS: &[u8] = b"batch_progress";
const SNAP_META: &[u8] = b"meta";
const SNAP_DATA: &[u8] = b"data";

/// Stripes of a replaced or deleted object, waiting for the GC worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GcItem {
    /// State machine time of the replacement (the new manifest's creation
    /// time, or the latest time seen in the log for a delete).
    pub at: UnixMillis,
    pub bucket: String,
    pub key: String,
    pub version_id: String,
    pub stripes: Vec<Stripe>,
    /// GC worker holding the item, and until when.
    pub lease: Option<(String, UnixMillis)>,
}

/// Last applied log id and the membership in effect.
pub type AppliedState = (
    Option<LogId<RaftNodeId>>,
    StoredMembership<RaftNodeId, openraft::BasicNode>,
);

/// Key/value pairs of one tree.
type TreeDump = Vec<(Vec<u8>, Vec<u8>)>;

/// Serialized form of a snapshot: every state tree, key/value pairs as
/// stored (values are themselves versioned).
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    trees: Vec<(String, TreeDump)>,
}

/// Key of an object: `bucket \0 key`.
pub fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(bucket.len() + 1 + key.len());
    k.extend_from_slice(bucket.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Key of an upload: `bucket \0 key \0 upload_id`.
pub fn upload_key(bucket: &str, key: &str, upload_id: &str) -> Vec<u8> {
    let mut k = object_key(bucket, key);
    k.push(0);
    k.extend_from_slice(upload_id.as_bytes());
    k
}

/// Prefix of all parts of an upload: `upload_id \0`.
pub fn parts_prefix(upload_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(upload_id.len() + 5);
    k.extend_from_slice(upload_id.as_bytes());
    k.push(0);
    k
}

/// Key of a part: `upload_id \0` + big-endian part number (byte order is
/// part order).
pub fn part_key(upload_id: &str, number: u32) -> Vec<u8> {
    let mut k = parts_prefix(upload_id);
    k.extend_from_slice(&number.to_be_bytes());
    k
}

/// Prefix of all objects of a bucket.
pub fn bucket_prefix(bucket: &str) -> Vec<u8> {
    object_key(bucket, "")
}

/// Sortable big-endian encoding of a signed time.
pub(crate) fn time_key(t: UnixMillis) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// Handles on the state machine trees; cheap to clone, shared by the
/// state machine (writer) and the query path (readers).
#[derive(Clone)]
pub struct SmTrees {
    pub(crate) db: sled::Db,
    /// sled's data file (`<dir>/db`), fsynced when a snapshot is recorded.
    sled_file: std::sync::Arc<std::path::PathBuf>,
    pub(crate) buckets: sled::Tree,
    pub(crate) objects: sled::Tree,
    pub(crate) access_keys: sled::Tree,
    pub(crate) nodes: sled::Tree,
    pub(crate) uploads: sled::Tree,
    pub(crate) parts: sled::Tree,
    pub(crate) gc: sled::Tree,
    pub(crate) stripes: sled::Tree,
    pub(crate) node_shards: sled::Tree,
    pub(crate) repair: sled::Tree,
    pub(crate) repair_idx: sled::Tree,
    pub(crate) grants: sled::Tree,
    pub(crate) meta: sled::Tree,
    snapshot: sled::Tree,
    /// The redo record of the last group of writes (see `redo.rs`).
    redo: sled::Tree,
    /// Entry counts of the stripe index, shard index and GC queue
    /// (`counts.rs`).
    counts: std::sync::Arc<Counts>,
    /// The states of the nodes tree, read once and kept until a commit
    /// writes the tree (see [`SmTrees::node_states`]).
    node_states: std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<NodeStates>>>>,
}

/// Number of trees in the replicated state.
const STATE_TREES: usize = 13;

/// Pending writes of one entry (or of one command of a batch entry),
/// committed atomically (see `redo.rs`). Within a batch the last write to
/// a key wins.
#[derive(Default)]
pub(crate) struct Writes {
    /// Position of the command in a [`MetaCommand::Batch`] entry: part of
    /// the GC keys it queues, which are otherwise unique per log index.
    pub(crate) batch_pos: Option<u32>,
    pub(crate) buckets: TreeWrites,
    pub(crate) objects: TreeWrites,
    pub(crate) access_keys: TreeWrites,
    pub(crate) nodes: TreeWrites,
    pub(crate) uploads: TreeWrites,
    pub(crate) parts: TreeWrites,
    pub(crate) gc: TreeWrites,
    pub(crate) stripes: TreeWrites,
    pub(crate) node_shards: TreeWrites,
    pub(crate) repair: TreeWrites,
    pub(crate) repair_idx: TreeWrites,
    pub(crate) grants: TreeWrites,
    pub(crate) meta: TreeWrites,
    /// The state machine clock: in, as the commands before this one in the
    /// same group left it (`None`: read it from the trees); out, as
    /// this command leaves it.
    pub(crate) clock: Option<UnixMillis>,
}

impl Writes {
    /// The writes in the order of [`SmTrees::state_trees`].
    fn batches_mut(&mut self) -> [&mut TreeWrites; STATE_TREES] {
        [
            &mut self.buckets,
            &mut self.objects,
            &mut self.access_keys,
            &mut self.nodes,
            &mut self.uploads,
            &mut self.parts,
            &mut self.gc,
            &mut self.stripes,
            &mut self.node_shards,
            &mut self.repair,
            &mut self.repair_idx,
            &mut self.grants,
            &mut self.meta,
        ]
    }
}

impl SmTrees {
    fn open(db: sled::Db, dir: &std::path::Path) -> Result<Self, sled::Error> {
        let trees = SmTrees {
            sled_file: std::sync::Arc::new(dir.join("db")),
            buckets: db.open_tree("sm_buckets")?,
            objects: db.open_tree("sm_objects")?,
            access_keys: db.open_tree("sm_access_keys")?,
            nodes: db.open_tree("sm_nodes")?,
            uploads: db.open_tree("sm_uploads")?,
            parts: db.open_tree("sm_parts")?,
            gc: db.open_tree("sm_gc")?,
            stripes: db.open_tree("sm_stripes")?,
            node_shards: db.open_tree("sm_node_shards")?,
            repair: db.open_tree("sm_repair")?,
            repair_idx: db.open_tree("sm_repair_idx")?,
            grants: db.open_tree("sm_grants")?,
            meta: db.open_tree("sm_meta")?,
            snapshot: db.open_tree("sm_snapshot")?,
            redo: db.open_tree("sm_redo")?,
            counts: Default::default(),
            node_states: Default::default(),
            db,
        };
        // Completes the last group of writes, if a crash cut it short.
        let state: Vec<&sled::Tree> = trees.state_trees().iter().map(|(_, t)| *t).collect();
        redo::replay(&trees.redo, &state)?;
        trees.recount()?;
        Ok(trees)
    }

    /// Counts the stripe index, shard index and GC queue afresh.
    fn recount(&self) -> Result<(), sled::Error> {
        let t = Tally::scan(&self.stripes, &self.node_shards, &self.gc)?;
        self.counts.set(t);
        Ok(())
    }

    /// Entry counts of the stripe index, the shard index (per node) and
    /// the GC queue, kept as writes commit: no scan.
    pub(crate) fn counts(&self) -> Tally {
        self.counts.get()
    }

    /// The trees that make up the replicated state, by snapshot name.
    fn state_trees(&self) -> [(&'static str, &sled::Tree); STATE_TREES] {
        [
            ("buckets", &self.buckets),
            ("objects", &self.objects),
            ("access_keys", &self.access_keys),
            ("nodes", &self.nodes),
            ("uploads", &self.uploads),
            ("parts", &self.parts),
            ("gc", &self.gc),
            ("stripes", &self.stripes),
            ("node_shards", &self.node_shards),
            ("repair", &self.repair),
            ("repair_idx", &self.repair_idx),
            ("grants", &self.grants),
            ("meta", &self.meta),
        ]
    }

    pub(crate) fn get<T: serde::de::DeserializeOwned>(
        tree: &sled::Tree,
        key: &[u8],
    ) -> Result<Option<T>, MetaNodeError> {
        match tree.get(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(dec(&v)?)),
        }
    }

    pub fn bucket(&self, name: &str) -> Result<Option<Bucket>, MetaNodeError> {
        Self::get(&self.buckets, name.as_bytes())
    }

    pub fn object(&self, bucket: &str, key: &str) -> Result<Option<ObjectManifest>, MetaNodeError> {
        Self::get(&self.objects, &object_key(bucket, key))
    }

    pub fn access_key(&self, id: &str) -> Result<Option<AccessKey>, MetaNodeError> {
        Self::get(&self.access_keys, id.as_bytes())
    }

    /// What `access_key` may do in `bucket` (the owner: everything).
    pub fn bucket_access(
        &self,
        bucket: &str,
        access_key: &str,
    ) -> Result<Option<(Bucket, Grant)>, MetaNodeError> {
        let Some(b) = self.bucket(bucket)? else {
            return Ok(None);
        };
        let grant = if b.owner == access_key {
            Grant {
                read: true,
                write: true,
            }
        } else {
            Self::get(&self.grants, &object_key(bucket, access_key))?.unwrap_or_default()
        };
        Ok(Some((b, grant)))
    }

    /// Every grant on `bucket`, by access key.
    pub fn grants(&self, bucket: &str) -> Result<Vec<(String, Grant)>, MetaNodeError> {
        let prefix = bucket_prefix(bucket);
        let mut out = Vec::new();
        for item in self.grants.scan_prefix(&prefix) {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            out.push((key, dec(&v)?));
        }
        Ok(out)
    }

    pub fn upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<Upload>, MetaNodeError> {
        Self::get(&self.uploads, &upload_key(bucket, key, upload_id))
    }

    /// Every stored part of an upload, in part order.
    pub fn upload_parts(&self, upload_id: &str) -> Result<Vec<PartRecord>, MetaNodeError> {
        let mut out = Vec::new();
        for item in self.parts.scan_prefix(parts_prefix(upload_id)) {
            let (_, v) = item?;
            out.push(dec(&v)?);
        }
        Ok(out)
    }

    pub fn node(&self, id: &NodeId) -> Result<Option<NodeInfo>, MetaNodeError> {
        Self::get(&self.nodes, id.as_str().as_bytes())
    }

    /// All storage nodes, by id.
    pub fn all_nodes(&self) -> Result<Vec<NodeInfo>, MetaNodeError> {
        let mut out = Vec::new();
        for item in self.nodes.iter() {
            let (_, v) = item?;
            out.push(dec(&v)?);
        }
        Ok(out)
    }

    pub fn epoch(&self) -> Result<u64, MetaNodeError> {
        Ok(Self::get(&self.meta, META_EPOCH)?.unwrap_or(0))
    }

    fn clock(&self) -> Result<UnixMillis, MetaNodeError> {
        Ok(Self::get(&self.meta, META_CLOCK)?.unwrap_or(0))
    }

    /// Entries of the GC queue, oldest first (for tests and the future GC
    /// lease API).
    pub fn gc_items(&self) -> Result<Vec<GcItem>, MetaNodeError> {
        let mut out = Vec::new();
        for item in self.gc.iter() {
            let (_, v) = item?;
            out.push(dec(&v)?);
        }
        Ok(out)
    }

    /// The state of every node, as the nodes tree has it. Placing a stripe
    /// needs it for every object PUT, and reading it means decoding every
    /// node's record (8.7% of an apply with 8 nodes, more with hundreds),
    /// so it is kept between entries: only the applier writes the trees,
    /// and every commit that writes the nodes tree drops it first.
    pub(crate) fn node_states(&self) -> Result<std::sync::Arc<NodeStates>, MetaNodeError> {
        let mut cached = self
            .node_states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(states) = cached.as_ref() {
            return Ok(states.clone());
        }
        let states: std::sync::Arc<NodeStates> = std::sync::Arc::new(
            self.all_nodes()?
                .into_iter()
                .map(|n| (n.id, n.state))
                .collect(),
        );
        *cached = Some(states.clone());
        Ok(states)
    }

    /// Drops the cached node states (the nodes tree is about to change).
    fn forget_node_states(&self) {
        *self
            .node_states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Last applied log id and last membership.
    pub fn applied_state(&self) -> Result<AppliedState, MetaNodeError> {
        let last: Option<Option<LogId<RaftNodeId>>> = Self::get(&self.meta, META_LAST_APPLIED)?;
        let membership = Self::get(&self.meta, META_MEMBERSHIP)?.unwrap_or_default();
        Ok((last.flatten(), membership))
    }

    /// Commits `w` atomically over all state trees.
    fn commit(&self, w: &mut Writes) -> Result<(), sled::Error> {
        self.commit_all(std::slice::from_mut(w))
    }

    /// Commits the writes of several commands, in order, as one atomic
    /// group: their redo record first, then each write (see `redo.rs`).
    fn commit_all(&self, ws: &mut [Writes]) -> Result<(), sled::Error> {
        self.commit_cut(ws, usize::MAX)
    }

    /// [`SmTrees::commit_all`], stopping after `limit` writes (tests cut a
    /// group short as a crash would).
    fn commit_cut(&self, ws: &mut [Writes], limit: usize) -> Result<(), sled::Error> {
        if ws.iter().any(|w| !w.nodes.is_empty()) {
            self.forget_node_states();
        }
        let parts: Vec<[&TreeWrites; STATE_TREES]> = ws
            .iter_mut()
            .map(|w| w.batches_mut().map(|b| &*b))
            .collect();
        let record = redo::encode(STATE_TREES, &parts);
        self.redo.insert(redo::REDO_KEY, record)?;
        let trees = self.state_trees();
        let writes = parts.iter().flat_map(|part| {
            trees.iter().zip(part.iter()).flat_map(|((name, tree), w)| {
                let counted = Counted::of(name);
                w.iter().map(move |kv| (*tree, counted, kv))
            })
        });
        for (tree, counted, (k, v)) in writes.take(limit) {
            let old = match v {
                Some(v) => tree.insert(k, v.clone())?,
                None => tree.remove(k)?,
            };
            if let Some(c) = counted {
                self.counts.record(c, k, old.as_deref(), v.as_deref());
            }
        }
        Ok(())
    }

    /// Commits `w` in one sled transaction, and drops the redo record in
    /// it (a snapshot install: the whole state, too big for a record; an
    /// older record must not be replayed over it).
    fn commit_transaction(&self, w: &mut Writes) -> Result<(), sled::Error> {
        self.forget_node_states();
        let mut trees: Vec<&sled::Tree> = self.state_trees().iter().map(|(_, t)| *t).collect();
        trees.push(&self.redo);
        let batches: Vec<sled::Batch> = w.batches_mut().iter().map(|b| b.to_batch()).collect();
        trees
            .as_slice()
            .transaction(|views| {
                for (view, batch) in views.iter().zip(&batches) {
                    view.apply_batch(batch)?;
                }
                if let Some(redo) = views.last() {
                    redo.remove(redo::REDO_KEY)?;
                }
                Ok(())
            })
            .map_err(|e: TransactionError<()>| match e {
                TransactionError::Storage(e) => e,
                TransactionError::Abort(()) => {
                    sled::Error::ReportableBug("state machine transaction aborted".into())
                }
            })?;
        // A whole new state (a snapshot): count it.
        self.recount()
    }

    /// Why `access_key` may not write objects into `bucket`, if it may not
    /// (the bucket is missing, or it is another key's without a write
    /// grant).
    fn write_refusal(
        &self,
        bucket: &str,
        access_key: &str,
    ) -> Result<Option<MetaError>, MetaNodeError> {
        Ok(match self.bucket_access(bucket, access_key)? {
            None => Some(MetaError::NoSuchBucket),
            Some((_, grant)) if !grant.write => Some(MetaError::AccessDenied),
            Some(_) => None,
        })
    }

    /// Computes the effects of one command into `w` and its reply. Reads
    /// see the state before this entry; the single applier makes that
    /// consistent.
    fn apply_command(
        &self,
        cmd: &MetaCommand,
        index: u64,
        w: &mut Writes,
    ) -> Result<MetaReply, MetaNodeError> {
        let clock = match w.clock {
            Some(c) => c,
            None => self.clock()?,
        };
        let mut new_clock = clock;
        let mut bump_epoch = false;
        let mut fx = Effects::default();
        let reply = match cmd {
            MetaCommand::CreateBucket(bucket) => {
                if bucket.name.is_empty() || bucket.name.contains('\0') {
                    MetaReply::Err(MetaError::Invalid("bad bucket name".into()))
                } else if let Some(existing) = self.bucket(&bucket.name)? {
                    MetaReply::Err(MetaError::BucketAlreadyExists {
                        owner: existing.owner,
                    })
                } else {
                    new_clock = new_clock.max(bucket.created);
                    w.buckets.insert(bucket.name.as_bytes(), enc(bucket));
                    MetaReply::Ok
                }
            }
            MetaCommand::DeleteBucket { name } => {
                if self.bucket(name)?.is_none() {
                    MetaReply::Err(MetaError::NoSuchBucket)
                } else if self
                    .objects
                    .scan_prefix(bucket_prefix(name))
                    .next()
                    .transpose()?
                    .is_some()
                {
                    MetaReply::Err(MetaError::BucketNotEmpty)
                } else {
                    w.buckets.remove(name.as_bytes());
                    for g in self.grants.scan_prefix(bucket_prefix(name)) {
                        let (k, _) = g?;
                        w.grants.remove(k);
                    }
                    // Uploads in progress go with the bucket; their parts'
                    // stripes are released.
                    let released = self.drop_uploads(name, w)?;
                    self.index_remove(w, &mut fx, &released);
                    if released.is_empty() {
                        MetaReply::Ok
                    } else {
                        push_gc_stripes(w, index, 0, clock, name, "", "", &released);
                        MetaReply::Released(released)
                    }
                }
            }
            MetaCommand::PutObject {
                manifest,
                condition,
            }
            | MetaCommand::PutObjectChecked {
                manifest,
                condition,
                ..
            } => {
                tessera_observe::failpoint::hit("meta.apply.put_object");
                let refused = match cmd {
                    MetaCommand::PutObjectChecked { access_key, .. } => {
                        self.write_refusal(&manifest.bucket, access_key)?
                    }
                    _ => None,
                };
                if let Some(e) = refused {
                    MetaReply::Err(e)
                } else if self.bucket(&manifest.bucket)?.is_none() {
                    MetaReply::Err(MetaError::NoSuchBucket)
                } else {
                    let old = self.object(&manifest.bucket, &manifest.key)?;
                    let ok = match (condition, &old) {
                        (WriteCondition::None, _) => true,
                        (WriteCondition::IfNoneMatch, existing) => existing.is_none(),
                        (WriteCondition::IfMatch(etag), Some(o)) => etag_matches(etag, &o.etag),
                        (WriteCondition::IfMatch(_), None) => false,
                    };
                    if !ok {
                        MetaReply::Err(MetaError::PreconditionFailed)
                    } else {
                        new_clock = new_clock.max(manifest.created);
                        w.objects
                            .insert(object_key(&manifest.bucket, &manifest.key), enc(manifest));
                        if let Some(old) = &old {
                            let keep: HashSet<_> = manifest.stripes().map(|s| s.id).collect();
                            push_gc(w, index, 0, new_clock, old, &keep);
                            let gone = dropped(old, &keep);
                            self.index_remove(w, &mut fx, &gone);
                        }
                        let stripes: Vec<Stripe> = manifest.stripes().cloned().collect();
                        self.index_add(w, &mut fx, &object_owner(manifest), &stripes, new_clock)?;
                        MetaReply::Replaced(old.map(Box::new))
                    }
                }
            }
            MetaCommand::SetObjectTagging {
                bucket,
                key,
                tagging,
            } => {
                if self.bucket(bucket)?.is_none() {
                    MetaReply::Err(MetaError::NoSuchBucket)
                } else if let Some(mut m) = self.object(bucket, key)? {
                    let name = tessera_types::TAGGING_HEADER.to_string();
                    match tagging {
                        Some(t) => m.headers.insert(name, t.clone()),
                        None => m.headers.remove(&name),
                    };
                    w.objects.insert(object_key(bucket, key), enc(&m));
                    MetaReply::Ok
                } else {
                    MetaReply::Err(MetaError::NoSuchKey)
                }
            }
            MetaCommand::DeleteObject { bucket, key } => {
                if self.bucket(bucket)?.is_none() {
                    MetaReply::Err(MetaError::NoSuchBucket)
                } else {
                    let old = self.object(bucket, key)?;
                    if let Some(old) = &old {
                        w.objects.remove(object_key(bucket, key));
                        push_gc(w, index, 0, clock, old, &HashSet::new());
                        let gone = dropped(old, &HashSet::new());
                        self.index_remove(w, &mut fx, &gone);
                    }
                    MetaReply::Replaced(old.map(Box::new))
                }
            }
            MetaCommand::PutAccessKey(key) => {
                new_clock = new_clock.max(key.created);
                w.access_keys.insert(key.id.as_bytes(), enc(key));
                MetaReply::Ok
            }
            MetaCommand::DeleteAccessKey { id } => {
                if self.access_key(id)?.is_none() {
                    MetaReply::Err(MetaError::NoSuchAccessKey)
                } else {
                    w.access_keys.remove(id.as_bytes());
                    MetaReply::Ok
                }
            }
            MetaCommand::UpsertNode(info) => {
                let mut node = info.clone();
                let before = self.node(&info.id)?;
                match &before {
                    None => {
                        bump_epoch = true;
                        // A node the cluster never had: existing stripes
                        // should follow placement (see rebalance.rs).
                        let wanted: u64 =
                            Self::get(&self.meta, super::durability::META_REBALANCE_WANTED)?
                                .unwrap_or(0);
                        w.meta
                            .insert(super::durability::META_REBALANCE_WANTED, enc(&(wanted + 1)));
                    }
                    Some(old) => {
                        // A node that heartbeats again is up, unless an
                        // operator is draining it.
                        node.state = if old.state == NodeState::Draining {
                            NodeState::Draining
                        } else {
                            NodeState::Up
                        };
                        bump_epoch = old.addr != node.addr
                            || old.zone != node.zone
                            || old.weight != node.weight
                            || old.state != node.state;
                    }
                }
                new_clock = new_clock.max(node.last_heartbeat);
                let old_state = before.map(|b| b.state).unwrap_or(NodeState::Up);
                self.node_state_changed(&mut fx, &node.id, old_state, node.state, new_clock)?;
                w.nodes.insert(node.id.as_str().as_bytes(), enc(&node));
                MetaReply::Ok
            }
            MetaCommand::SetNodeState { id, state, at } => match self.node(id)? {
                None => MetaReply::Err(MetaError::NoSuchNode),
                Some(mut node) => {
                    new_clock = new_clock.max(*at);
                    if node.state != *state {
                        self.node_state_changed(&mut fx, id, node.state, *state, new_clock)?;
                        node.state = *state;
                        bump_epoch = true;
                        w.nodes.insert(id.as_str().as_bytes(), enc(&node));
                    }
                    MetaReply::Ok
                }
            },
            MetaCommand::RemoveNode { id } => {
                let held = self.node_shard_count(id);
                match self.node(id)? {
                    None => MetaReply::Err(MetaError::NoSuchNode),
                    // A live node's shards must move off first (drain); a
                    // node that is down has its stripes queued already.
                    Some(n) if held > 0 && n.state != NodeState::Down => {
                        MetaReply::Err(MetaError::Invalid(format!(
                            "node {id} still holds {held} shards: drain it first"
                        )))
                    }
                    Some(_) => {
                        w.nodes.remove(id.as_str().as_bytes());
                        self.set_state_in(&mut fx, id, None)?;
                        bump_epoch = true;
                        MetaReply::Ok
                    }
                }
            }
            MetaCommand::CreateUpload { upload } => {
                if self.bucket(&upload.bucket)?.is_none() {
                    MetaReply::Err(MetaError::NoSuchBucket)
                } else if upload.upload_id.is_empty() || upload.upload_id.contains('\0') {
                    MetaReply::Err(MetaError::Invalid("bad upload id".into()))
                } else {
                    new_clock = new_clock.max(upload.initiated);
                    w.uploads.insert(
                        upload_key(&upload.bucket, &upload.key, &upload.upload_id),
                        enc(upload),
                    );
                    MetaReply::Ok
                }
            }
            MetaCommand::PutPart {
                bucket,
                key,
                upload_id,
                part,
            } => {
                if self.upload(bucket, key, upload_id)?.is_none() {
                    MetaReply::Err(MetaError::NoSuchUpload)
                } else {
                    new_clock = new_clock.max(part.uploaded);
                    let pk = part_key(upload_id, part.part.number);
                    let old: Option<PartRecord> = Self::get(&self.parts, &pk)?;
                    w.parts.insert(pk, enc(part));
                    let released: Vec<Stripe> = old
                        .map(|o| o.part.stripes)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|s| part.part.stripes.iter().all(|n| n.id != s.id))
                        .collect();
                    push_gc_stripes(w, index, 0, new_clock, bucket, key, upload_id, &released);
                    self.index_remove(w, &mut fx, &released);
                    let owner = StripeOwner::Part {
                        bucket: bucket.clone(),
                        key: key.clone(),
                        upload_id: upload_id.clone(),
                        number: part.part.number,
                    };
                    self.index_add(w, &mut fx, &owner, &part.part.stripes, new_clock)?;
                    MetaReply::Released(released)
                }
            }
            MetaCommand::CompleteUpload {
                upload_id,
                manifest,
                condition,
            } => self.complete_upload(
                upload_id,
                manifest,
                condition,
                index,
                &mut new_clock,
                w,
                &mut fx,
            )?,
            MetaCommand::AbortUpload {
                bucket,
                key,
                upload_id,
            } => {
                if self.upload(bucket, key, upload_id)?.is_none() {
                    MetaReply::Err(MetaError::NoSuchUpload)
                } else {
                    w.uploads.remove(upload_key(bucket, key, upload_id));
                    let mut released = Vec::new();
                    for item in self.parts.scan_prefix(parts_prefix(upload_id)) {
                        let (k, v) = item?;
                        let rec: PartRecord = dec(&v)?;
                        released.extend(rec.part.stripes);
                        w.parts.remove(k);
                    }
                    push_gc_stripes(w, index, 0, clock, bucket, key, upload_id, &released);
                    self.index_remove(w, &mut fx, &released);
                    MetaReply::Released(released)
                }
            }
            MetaCommand::ReportShards { problems, at } => {
                new_clock = new_clock.max(*at);
                self.report_shards(&mut fx, problems, new_clock)?
            }
            MetaCommand::LeaseRepairs {
                worker,
                max,
                lease_ms,
                at,
            } => {
                new_clock = new_clock.max(*at);
                self.lease_repairs(&mut fx, worker, *max, *lease_ms, new_clock)?
            }
            MetaCommand::CommitRepair {
                worker: _,
                owner,
                stripe,
                expected,
                shards,
                bytes,
                at,
            } => {
                new_clock = new_clock.max(*at);
                self.commit_repair(
                    w, &mut fx, index, owner, stripe, expected, shards, *bytes, new_clock,
                )?
            }
            MetaCommand::ReleaseRepair {
                worker,
                stripe,
                outcome,
                at,
            } => {
                new_clock = new_clock.max(*at);
                self.release_repair(&mut fx, worker, stripe, *outcome, new_clock)?
            }
            MetaCommand::SetRepairConfig(config) => {
                w.meta
                    .insert(super::durability::META_REPAIR_CONFIG, enc(config));
                MetaReply::Ok
            }
            MetaCommand::LeaseGc {
                worker,
                max,
                before,
                lease_ms,
                at,
            } => {
                new_clock = new_clock.max(*at);
                self.lease_gc(w, worker, *max, *before, *lease_ms, new_clock)?
            }
            MetaCommand::AckGc { keys } => self.ack_gc(w, keys),
            MetaCommand::QueueRebalance { after, max, at } => {
                new_clock = new_clock.max(*at);
                self.queue_rebalance(w, &mut fx, *after, *max, new_clock)?
            }
            MetaCommand::SetGrant {
                bucket,
                access_key,
                grant,
            } => {
                if self.bucket(bucket)?.is_none() {
                    MetaReply::Err(MetaError::NoSuchBucket)
                } else if self.access_key(access_key)?.is_none() {
                    MetaReply::Err(MetaError::NoSuchAccessKey)
                } else {
                    let k = object_key(bucket, access_key);
                    if grant.read || grant.write {
                        w.grants.insert(k, enc(grant));
                    } else {
                        w.grants.remove(k);
                    }
                    MetaReply::Ok
                }
            }
            MetaCommand::ReleaseLeases {
                worker,
                repairs,
                gc,
            } => self.release_leases(w, &mut fx, worker, *repairs, *gc)?,
            // Batches are applied by `StateMachineStore::apply_batch`; one
            // inside a batch is refused.
            MetaCommand::Batch(_) => {
                MetaReply::Err(MetaError::Invalid("nested command batch".into()))
            }
            MetaCommand::CheckNode { id, at } => {
                if self.node(id)?.is_none() {
                    MetaReply::Err(MetaError::NoSuchNode)
                } else {
                    new_clock = new_clock.max(*at);
                    self.queue_node(&mut fx, id, RepairReason::Check(id.clone()), new_clock)?;
                    MetaReply::Ok
                }
            }
        };
        self.flush_effects(w, fx)?;
        if bump_epoch {
            w.meta.insert(META_EPOCH, enc(&(self.epoch()? + 1)));
        }
        if new_clock != clock {
            w.meta.insert(META_CLOCK, enc(&new_clock));
        }
        w.clock = Some(new_clock);
        Ok(reply)
    }
}

impl SmTrees {
    /// Removes every upload of `bucket` and its parts into `w`; returns
    /// the parts' stripes.
    fn drop_uploads(&self, bucket: &str, w: &mut Writes) -> Result<Vec<Stripe>, MetaNodeError> {
        let mut released = Vec::new();
        for item in self.uploads.scan_prefix(bucket_prefix(bucket)) {
            let (k, v) = item?;
            let upload: Upload = dec(&v)?;
            w.uploads.remove(k);
            for part in self.parts.scan_prefix(parts_prefix(&upload.upload_id)) {
                let (pk, pv) = part?;
                let rec: PartRecord = dec(&pv)?;
                released.extend(rec.part.stripes);
                w.parts.remove(pk);
            }
        }
        Ok(released)
    }

    /// CompleteUpload: see [`MetaCommand::CompleteUpload`]. Parts are
    /// matched by number, size, ETag and stripe ids; the object gets the
    /// stored parts (a repair may have moved shards since the gateway read
    /// them).
    #[allow(clippy::too_many_arguments)]
    fn complete_upload(
        &self,
        upload_id: &str,
        manifest: &ObjectManifest,
        condition: &WriteCondition,
        index: u64,
        new_clock: &mut UnixMillis,
        w: &mut Writes,
        fx: &mut Effects,
    ) -> Result<MetaReply, MetaNodeError> {
        let (bucket, key) = (&manifest.bucket, &manifest.key);
        if self.bucket(bucket)?.is_none() {
            return Ok(MetaReply::Err(MetaError::NoSuchBucket));
        }
        if self.upload(bucket, key, upload_id)?.is_none() {
            return Ok(MetaReply::Err(MetaError::NoSuchUpload));
        }
        let parts: &[tessera_types::Part] = match &manifest.data {
            tessera_types::ObjectData::Parts(p) => p,
            tessera_types::ObjectData::Inline(_) => {
                return Ok(MetaReply::Err(MetaError::Invalid(
                    "a multipart object has parts".into(),
                )))
            }
        };
        let mut stored: std::collections::BTreeMap<u32, PartRecord> = self
            .upload_parts(upload_id)?
            .into_iter()
            .map(|r| (r.part.number, r))
            .collect();
        let mut final_parts = Vec::with_capacity(parts.len());
        for p in parts {
            match stored.remove(&p.number) {
                Some(rec) if same_part(&rec.part, p) => final_parts.push(rec.part),
                _ => return Ok(MetaReply::Err(MetaError::InvalidPart { number: p.number })),
            }
        }
        let mut manifest = manifest.clone();
        manifest.data = tessera_types::ObjectData::Parts(final_parts);
        let manifest = &manifest;
        let old = self.object(bucket, key)?;
        let ok = match (condition, &old) {
            (WriteCondition::None, _) => true,
            (WriteCondition::IfNoneMatch, existing) => existing.is_none(),
            (WriteCondition::IfMatch(etag), Some(o)) => etag_matches(etag, &o.etag),
            (WriteCondition::IfMatch(_), None) => false,
        };
        if !ok {
            return Ok(MetaReply::Err(MetaError::PreconditionFailed));
        }
        *new_clock = (*new_clock).max(manifest.created);
        w.uploads.remove(upload_key(bucket, key, upload_id));
        for p in parts {
            w.parts.remove(part_key(upload_id, p.number));
        }
        let mut released = Vec::new();
        for (number, rec) in stored {
            w.parts.remove(part_key(upload_id, number));
            released.extend(rec.part.stripes);
        }
        push_gc_stripes(w, index, 0, *new_clock, bucket, key, upload_id, &released);
        w.objects.insert(object_key(bucket, key), enc(manifest));
        if let Some(old) = &old {
            let keep: HashSet<_> = manifest.stripes().map(|s| s.id).collect();
            push_gc(w, index, 1, *new_clock, old, &keep);
            released.extend(dropped(old, &keep));
        }
        self.index_remove(w, fx, &released);
        let stripes: Vec<Stripe> = manifest.stripes().cloned().collect();
        self.index_add(w, fx, &object_owner(manifest), &stripes, *new_clock)?;
        Ok(MetaReply::Released(released))
    }
}

/// Stripes of `old` not in `keep`.
fn dropped(old: &ObjectManifest, keep: &HashSet<tessera_types::StripeId>) -> Vec<Stripe> {
    old.stripes()
        .filter(|s| !keep.contains(&s.id))
        .cloned()
        .collect()
}

/// A part named in CompleteMultipartUpload is the stored part: same
/// number, size, ETag and stripes (shard lists may differ after repairs).
fn same_part(stored: &tessera_types::Part, named: &tessera_types::Part) -> bool {
    stored.number == named.number
        && stored.size == named.size
        && stored.etag == named.etag
        && stored.stripes.len() == named.stripes.len()
        && stored
            .stripes
            .iter()
            .zip(&named.stripes)
            .all(|(a, b)| a.id == b.id && a.len == b.len)
}

/// `If-Match` compares ETags without quotes; `*` matches any object.
fn etag_matches(cond: &str, etag: &str) -> bool {
    let c = cond.trim().trim_matches('"');
    c == "*" || c == etag.trim_matches('"')
}

/// Queues the stripes of `old` that `keep` does not reuse.
fn push_gc(
    w: &mut Writes,
    index: u64,
    seq: u8,
    at: UnixMillis,
    old: &ObjectManifest,
    keep: &HashSet<tessera_types::StripeId>,
) {
    let stripes: Vec<Stripe> = old
        .stripes()
        .filter(|s| !keep.contains(&s.id))
        .cloned()
        .collect();
    push_gc_stripes(
        w,
        index,
        seq,
        at,
        &old.bucket,
        &old.key,
        &old.version_id,
        &stripes,
    );
}

/// Queues `stripes` (of an object version, or of an upload's parts, then
/// `version` is the upload id). `seq` tells apart the items one entry
/// (one command of a batch entry, `w.batch_pos`) queues; the key of item 0
/// of a single-command entry is the 16-byte key of earlier versions.
#[allow(clippy::too_many_arguments)]
pub(crate) fn push_gc_stripes(
    w: &mut Writes,
    index: u64,
    seq: u8,
    at: UnixMillis,
    bucket: &str,
    key: &str,
    version: &str,
    stripes: &[Stripe],
) {
    if stripes.is_empty() {
        return;
    }
    let item = GcItem {
        at,
        bucket: bucket.to_string(),
        key: key.to_string(),
        version_id: version.to_string(),
        stripes: stripes.to_vec(),
        lease: None,
    };
    let mut gc_key = Vec::with_capacity(21);
    gc_key.extend_from_slice(&time_key(at));
    gc_key.extend_from_slice(&index.to_be_bytes());
    match w.batch_pos {
        // A command of a batch entry: 21 bytes, never equal to the 16- or
        // 17-byte keys of single-command entries.
        Some(pos) => {
            gc_key.push(seq);
            gc_key.extend_from_slice(&pos.to_be_bytes());
        }
        None if seq > 0 => gc_key.push(seq),
        None => {}
    }
    w.gc.insert(gc_key, enc(&item));
}

/// The state machine half of the Raft storage.
pub struct StateMachineStore {
    trees: SmTrees,
}

impl StateMachineStore {
    pub(crate) fn new(db: sled::Db, dir: &std::path::Path) -> Result<Self, MetaNodeError> {
        Ok(StateMachineStore {
            trees: SmTrees::open(db, dir)?,
        })
    }

    /// Read handles for queries.
    pub fn trees(&self) -> SmTrees {
        self.trees.clone()
    }

    /// Applies one entry atomically and returns its reply.
    fn apply_entry(&self, entry: &Entry<TypeConfig>) -> Result<MetaReply, MetaNodeError> {
        let log_id = entry.log_id;
        if let EntryPayload::Normal(MetaCommand::Batch(cmds)) = &entry.payload {
            return self.apply_batch(log_id, cmds);
        }
        let mut w = Writes::default();
        let reply = match &entry.payload {
            EntryPayload::Blank => MetaReply::Ok,
            EntryPayload::Normal(cmd) => self.trees.apply_command(cmd, log_id.index, &mut w)?,
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m.clone());
                w.meta.insert(META_MEMBERSHIP, enc(&stored));
                MetaReply::Ok
            }
        };
        w.meta.insert(META_LAST_APPLIED, enc(&Some(log_id)));
        self.trees.commit(&mut w)?;
        Ok(reply)
    }

    /// Applies the commands of a batch entry in order, each seeing the
    /// effects of the ones before it (commands read the trees, not pending
    /// writes), a refused one leaving the others alone. Commands go in one
    /// atomic group of writes each, except runs of object PUTs to distinct
    /// keys, which share one ([`independent_puts`]). Each group also records
    /// how many commands of the entry are applied; the last one records
    /// `last_applied` instead. Groups are recovered atomically and in order
    /// (`redo.rs`), so after a crash in the middle of the entry its re-apply
    /// skips the commands already applied: none is applied twice (a
    /// PutObject applied twice would queue its own stripes for GC).
    pub(crate) fn apply_batch(
        &self,
        log_id: LogId<RaftNodeId>,
        cmds: &[MetaCommand],
    ) -> Result<MetaReply, MetaNodeError> {
        let done = match SmTrees::get::<(u64, u32)>(&self.trees.meta, META_BATCH_PROGRESS)? {
            Some((index, n)) if index == log_id.index => (n as usize).min(cmds.len()),
            _ => 0,
        };
        // Applied before a restart; nobody waits for these replies.
        let mut replies = vec![MetaReply::Ok; done];
        let mut pos = done;
        while pos < cmds.len() {
            let end = pos + independent_puts(&cmds[pos..]).max(1);
            let mut ws = Vec::with_capacity(end - pos);
            let mut clock = None;
            for (i, cmd) in cmds.iter().enumerate().take(end).skip(pos) {
                let mut w = Writes {
                    batch_pos: Some(i as u32),
                    clock,
                    ..Writes::default()
                };
                replies.push(self.trees.apply_command(cmd, log_id.index, &mut w)?);
                clock = w.clock;
                ws.push(w);
            }
            if let Some(last) = ws.last_mut() {
                if end == cmds.len() {
                    last.meta.remove(META_BATCH_PROGRESS);
                    last.meta.insert(META_LAST_APPLIED, enc(&Some(log_id)));
                } else {
                    last.meta
                        .insert(META_BATCH_PROGRESS, enc(&(log_id.index, end as u32)));
                }
            }
            self.trees.commit_all(&mut ws)?;
            pos = end;
        }
        if done == cmds.len() {
            // Nothing left to apply: an empty batch (the proposer never
            // sends one, a forged request might), or one wholly applied
            // before a crash that came before its last record.
            let mut w = Writes::default();
            w.meta.remove(META_BATCH_PROGRESS);
            w.meta.insert(META_LAST_APPLIED, enc(&Some(log_id)));
            self.trees.commit(&mut w)?;
        }
        Ok(MetaReply::Batch(replies))
    }

    /// Copies the whole state into snapshot bytes (a consistent view: the
    /// applier is not running while this is called).
    fn dump(&self) -> Result<Vec<u8>, MetaNodeError> {
        let mut trees = Vec::new();
        for (name, tree) in self.trees.state_trees() {
            let mut kvs = Vec::new();
            for item in tree.iter() {
                let (k, v) = item?;
                kvs.push((k.to_vec(), v.to_vec()));
            }
            trees.push((name.to_string(), kvs));
        }
        Ok(enc(&SnapshotBody { trees }))
    }

    /// Makes everything written to sled so far durable. sled's `flush`
    /// writes its log with `sync_file_range`, which neither flushes the
    /// device's write cache nor the file's metadata (sled fsyncs only in
    /// its background flusher), so the data file is fsynced here too
    /// (fsync acts on the file, whichever descriptor names it).
    async fn make_durable(trees: &SmTrees) -> Result<(), std::io::Error> {
        flush(&trees.db).await.map_err(std::io::Error::other)?;
        let file = trees.sled_file.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(&*file)?.sync_all())
            .await
            .map_err(std::io::Error::other)?
    }

    /// Records `meta` as the current snapshot once the state it covers is
    /// durable: makes the state durable first (the log before
    /// `meta.last_log_id` may be purged once this returns), then writes the
    /// meta and makes it durable too. Drops the data blob older versions
    /// kept next to it.
    async fn save_snapshot_meta(
        trees: &SmTrees,
        meta: &SnapshotMeta<RaftNodeId, openraft::BasicNode>,
    ) -> Result<(), StoreError> {
        let sig = Some(meta.signature());
        Self::make_durable(trees)
            .await
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        let mut batch = sled::Batch::default();
        batch.insert(SNAP_META, enc(meta));
        batch.remove(SNAP_DATA);
        trees
            .snapshot
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        Self::make_durable(trees)
            .await
            .map_err(|e| StorageIOError::write_snapshot(sig, &e))?;
        Ok(())
    }

    /// A fresh snapshot id for a snapshot ending at `last`.
    fn snapshot_id(
        trees: &SmTrees,
        last: &Option<LogId<RaftNodeId>>,
    ) -> Result<String, sled::Error> {
        let unique = trees.db.generate_id()?;
        Ok(match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, unique),
            None => format!("0-0-{unique}"),
        })
    }
}

/// How many commands at the head of `cmds` are object PUTs to distinct
/// keys, which may share one group of writes without changing any outcome: a
/// PUT reads the bucket, its grants and access key, the node states, its
/// own key's manifest and the index entries of that manifest's stripes and
/// of its own new ones (stripe ids are never reused), and writes only its
/// key, those stripes' entries, GC items keyed by its batch position, and
/// the clock, which is carried from command to command. No PUT writes what
/// another PUT to another key reads. Other commands go alone.
fn independent_puts(cmds: &[MetaCommand]) -> usize {
    let mut keys: HashSet<(&str, &str)> = HashSet::new();
    cmds.iter()
        .take_while(|cmd| match cmd {
            MetaCommand::PutObject { manifest, .. }
            | MetaCommand::PutObjectChecked { manifest, .. } => {
                keys.insert((manifest.bucket.as_str(), manifest.key.as_str()))
            }
            _ => false,
        })
        .count()
}

/// "Builds" a snapshot: the state is already durable in sled, so a
/// snapshot is only a promise that the state trees cover the log up to
/// `last_applied` (see "Snapshots" in the module docs).
pub struct SnapshotBuilder {
    trees: SmTrees,
    applied: Result<AppliedState, MetaNodeError>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Flushes and records the snapshot meta. Returns no data: openraft
    /// 0.9 keeps only the meta of a built snapshot (`core/sm/worker.rs`,
    /// `storage/helper.rs`) and asks [`RaftStateMachine::get_current_snapshot`]
    /// when it has to send one.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let (last_applied, membership) =
            std::mem::replace(&mut self.applied, Ok((None, StoredMembership::default())))
                .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: StateMachineStore::snapshot_id(&self.trees, &last_applied)
                .map_err(|e| StorageIOError::write_snapshot(None, &e))?,
        };
        StateMachineStore::save_snapshot_meta(&self.trees, &meta).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<AppliedState, StoreError> {
        self.trees
            .applied_state()
            .map_err(|e| StorageIOError::read_state_machine(&e).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<MetaReply>, StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // No flush: every entry is durable in the log already (see "Why
        // applying does not flush" in the module docs).
        let mut replies = Vec::new();
        for entry in entries {
            let reply = self.apply_entry(&entry).map_err(|e| {
                super::crash_stop("applying a committed log entry", &e);
                StorageIOError::apply(entry.log_id, &e)
            })?;
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            trees: self.trees.clone(),
            applied: self.trees.applied_state(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StoreError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftNodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let sig = Some(meta.signature());
        let data = snapshot.into_inner();
        let body: SnapshotBody =
            dec(&data).map_err(|e| StorageIOError::read_snapshot(sig.clone(), &e))?;
        let mut w = Writes::default();
        {
            let trees = self.trees.state_trees();
            for ((name, tree), batch) in trees.into_iter().zip(w.batches_mut()) {
                for item in tree.iter() {
                    let (k, _) =
                        item.map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
                    batch.remove(k);
                }
                if let Some((_, kvs)) = body.trees.iter().find(|(n, _)| n == name) {
                    for (k, v) in kvs {
                        batch.insert(k.as_slice(), v.as_slice());
                    }
                }
            }
        }
        w.meta.insert(META_LAST_APPLIED, enc(&meta.last_log_id));
        w.meta.insert(META_MEMBERSHIP, enc(&meta.last_membership));
        self.trees
            .commit_transaction(&mut w)
            .map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        Self::save_snapshot_meta(&self.trees, meta).await?;
        Ok(())
    }

    /// The current snapshot, its data copied now from the state trees
    /// (the applier is not running while this is called, so the copy is
    /// consistent). If entries were applied since the recorded snapshot,
    /// the copy is newer than it: it is recorded, with a fresh id, as the
    /// current snapshot before it is returned.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let t = &self.trees.snapshot;
        let saved: Option<SnapshotMeta<RaftNodeId, openraft::BasicNode>> =
            SmTrees::get(t, SNAP_META).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let Some(saved) = saved else {
            return Ok(None);
        };
        let (last_applied, membership) = self
            .trees
            .applied_state()
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let meta = if last_applied == saved.last_log_id {
            saved
        } else {
            let meta = SnapshotMeta {
                last_log_id: last_applied,
                last_membership: membership,
                snapshot_id: Self::snapshot_id(&self.trees, &last_applied)
                    .map_err(|e| StorageIOError::write_snapshot(None, &e))?,
            };
            Self::save_snapshot_meta(&self.trees, &meta).await?;
            meta
        };
        let data = self
            .dump()
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the store; retries for a while when the previous instance
    /// of this test still holds sled's file lock (its flusher thread lets
    /// go of it shortly after the drop: a CI run failed on that race),
    /// as `store::open` does for a restarted node.
    fn open(dir: &std::path::Path) -> Result<StateMachineStore, MetaNodeError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => break db,
                Err(e) if crate::store::lock_held(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        StateMachineStore::new(db, dir)
    }

    /// Random groups of writes to the counted trees: overwrites, removes
    /// of absent keys, several writes to one key in a group, GC items of
    /// different sizes.
    fn random_counted_writes(seed: &mut u64, groups: usize) -> Vec<Writes> {
        let mut next = move |n: u64| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed % n
        };
        let gc_item = |stripes: u64| GcItem {
            at: 1,
            bucket: "b".into(),
            key: "k".into(),
            version_id: "v".into(),
            stripes: (0..stripes)
                .map(|_| Stripe {
                    id: tessera_types::StripeId::random(),
                    len: 1,
                    shard_len: 1,
                    class: tessera_types::StorageClass::rs(2, 1, 10),
                    shards: vec![],
                })
                .collect(),
            lease: None,
        };
        (0..groups)
            .map(|_| {
                let mut w = Writes::default();
                for _ in 0..next(12) {
                    let key = next(16) as u8;
                    let remove = next(3) == 0;
                    match next(3) {
                        0 if remove => w.stripes.remove(vec![key]),
                        0 => w.stripes.insert(vec![key], b"owner".to_vec()),
                        1 => {
                            let node = [b"n1".as_slice(), b"n2", b"node-three"][next(3) as usize];
                            let mut k = node.to_vec();
                            k.extend_from_slice(&[0, key, key / 4]);
                            if remove {
                                w.node_shards.remove(k);
                            } else {
                                w.node_shards.insert(k, Vec::new());
                            }
                        }
                        _ if remove => w.gc.remove(vec![key]),
                        _ => w.gc.insert(vec![key], enc(&gc_item(next(4)))),
                    }
                }
                w
            })
            .collect()
    }

    fn scanned(t: &SmTrees) -> Tally {
        Tally::scan(&t.stripes, &t.node_shards, &t.gc).unwrap()
    }

    /// The counts the metrics report, kept as writes commit, always equal
    /// a scan of the trees: after every group, after a group cut short by
    /// a crash and completed at open, and after a snapshot replaced the
    /// state.
    #[test]
    fn counts_kept_as_writes_commit_equal_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        {
            let sm = open(dir.path()).unwrap();
            assert_eq!(sm.trees.counts(), Tally::default());
            for mut w in random_counted_writes(&mut seed, 200) {
                sm.trees.commit_all(std::slice::from_mut(&mut w)).unwrap();
                assert_eq!(sm.trees.counts(), scanned(&sm.trees));
            }
            let c = sm.trees.counts();
            assert!(c.stripes > 0 && c.gc_items > 0 && c.gc_stripes > 0, "{c:?}");
            assert!(c.node_shards.len() > 1, "{c:?}");
            // Several groups at once, as a batch entry commits them.
            let mut ws = random_counted_writes(&mut seed, 5);
            sm.trees.commit_all(&mut ws).unwrap();
            assert_eq!(sm.trees.counts(), scanned(&sm.trees));
            // A group cut short: the counts follow what was written ...
            let mut ws = random_counted_writes(&mut seed, 3);
            sm.trees.commit_cut(&mut ws, 7).unwrap();
            assert_eq!(sm.trees.counts(), scanned(&sm.trees));
            sm.trees.db.flush().unwrap();
        }
        // ... and the open that completes it counts afresh.
        let sm = open(dir.path()).unwrap();
        assert_eq!(sm.trees.counts(), scanned(&sm.trees));
        for mut w in random_counted_writes(&mut seed, 50) {
            sm.trees.commit_all(std::slice::from_mut(&mut w)).unwrap();
        }
        assert_eq!(sm.trees.counts(), scanned(&sm.trees));

        // A snapshot's state, written in one transaction, is counted too.
        let mut w = Writes::default();
        for (k, _) in sm.trees.stripes.iter().flatten().skip(1) {
            w.stripes.remove(k);
        }
        w.node_shards.insert(b"n9\0ab".to_vec(), Vec::new());
        sm.trees.commit_transaction(&mut w).unwrap();
        let after = sm.trees.counts();
        assert_eq!(after, scanned(&sm.trees));
        assert!(after.stripes <= 1 && after.node_shards.contains_key(&b"n9"[..]));
    }

    /// A group of writes cut short by a crash (its redo record and some of
    /// its writes recovered) is completed when the store opens, whatever
    /// the cut; opening again changes nothing; a damaged record refuses
    /// the open rather than be half applied.
    #[test]
    fn a_group_cut_short_is_completed_at_open() {
        let log_id = LogId::new(openraft::CommittedLeaderId::new(3, 1), 42);
        for cut in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            {
                let sm = open(dir.path()).unwrap();
                sm.trees
                    .objects
                    .insert(b"b\0old", b"gone soon".to_vec())
                    .unwrap();
                let mut w = Writes::default();
                w.objects.insert(b"b\0new".to_vec(), b"manifest".to_vec());
                w.objects.remove(b"b\0old".to_vec());
                w.stripes.insert(b"stripe".to_vec(), b"owner".to_vec());
                w.meta.insert(META_LAST_APPLIED, enc(&Some(log_id)));
                sm.trees.commit_cut(&mut [w], cut).unwrap();
                sm.trees.db.flush().unwrap();
            }
            for _ in 0..2 {
                let sm = open(dir.path()).unwrap();
                let t = &sm.trees;
                assert_eq!(
                    t.objects.get(b"b\0new").unwrap().as_deref(),
                    Some(&b"manifest"[..]),
                    "cut {cut}"
                );
                assert_eq!(t.objects.get(b"b\0old").unwrap(), None, "cut {cut}");
                assert_eq!(
                    t.stripes.get(b"stripe").unwrap().as_deref(),
                    Some(&b"owner"[..]),
                    "cut {cut}"
                );
                assert_eq!(t.applied_state().unwrap().0, Some(log_id), "cut {cut}");
            }
        }

        let dir = tempfile::tempdir().unwrap();
        {
            let sm = open(dir.path()).unwrap();
            sm.trees
                .redo
                .insert(redo::REDO_KEY, vec![1, STATE_TREES as u8, 0, 1, 9])
                .unwrap();
            sm.trees.db.flush().unwrap();
        }
        assert!(open(dir.path()).is_err());
    }
}
