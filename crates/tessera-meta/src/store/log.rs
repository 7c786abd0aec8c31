//! The Raft log, vote and committed id, in files of their own under
//! `<data dir>/raft-log/`:
//!
//! - `*.log`: the entries, in append-only segments ([`SegmentedLog`]).
//!   An append writes its batch and returns (the entries are readable, so
//!   the leader replicates them at once); the [`Syncer`] thread then
//!   `fdatasync`s, once for every batch written meanwhile, and only then
//!   tells openraft the entries are saved. So the leader's sync overlaps
//!   the followers' (instead of preceding their whole round trip), and a
//!   burst of appends costs one sync, not one each.
//! - `meta`: vote and last purged log id, replaced atomically and durably
//!   (temp file, `fdatasync`, rename, directory fsync) before `save_vote`
//!   or `purge` returns.
//! - `committed`: the committed log id, a hint that saves re-applying
//!   entries on restart. Written in place without a sync by the syncer,
//!   after the sync that follows the next append (or vote, or purge); a
//!   torn copy reads as none. Since it only names synced entries, a damaged
//!   last batch at or below it is refused at open rather than cut as torn.
//!
//! Earlier versions kept the log in the sled trees `raft_log`/`raft_meta`,
//! whose `flush` is not power-loss durable (sled 0.34 syncs its log with
//! `sync_file_range`, which flushes neither the device cache nor file
//! metadata). [`LogStore::open`] imports such a log once.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

pub use super::logfile::LogOptions;
use super::logfile::{sync_dir, Batch, Planned, SegmentedLog};
use super::{dec, enc, key_index, RaftNodeId, StoreError, TypeConfig};
use crate::MetaNodeError;

/// Directory of the log, under the meta data directory.
pub const LOG_DIR: &str = "raft-log";
const META_FILE: &str = "meta";
const COMMITTED_FILE: &str = "committed";
const TMP_SUFFIX: &str = ".tmp";
const META_MAGIC: [u8; 4] = *b"TRLM";
const META_VERSION: u8 = 1;
const META_HEADER: usize = 16;
/// Sled trees of the log before it moved to files.
const SLED_LOG_TREE: &str = "raft_log";
const SLED_META_TREE: &str = "raft_meta";
/// Entries imported from sled per append.
const IMPORT_BATCH_BYTES: usize = 4 << 20;

/// What `meta` holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct LogMeta {
    vote: Option<Vote<RaftNodeId>>,
    last_purged: Option<LogId<RaftNodeId>>,
}

/// Frames a small value: magic, version, 3 zero bytes, length u32, crc32
/// u32 of the payload, then the codec-encoded payload.
fn frame<T: Serialize>(v: &T) -> Vec<u8> {
    let payload = enc(v);
    let mut out = Vec::with_capacity(META_HEADER + payload.len());
    out.extend_from_slice(&META_MAGIC);
    out.extend_from_slice(&[META_VERSION, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Reads a value written by [`frame`]; `None` if torn or damaged.
fn unframe<T: serde::de::DeserializeOwned>(buf: &[u8]) -> Option<T> {
    let hdr = buf.get(..META_HEADER)?;
    if hdr[0..4] != META_MAGIC || hdr[4] != META_VERSION {
        return None;
    }
    let len = u32::from_le_bytes(hdr[8..12].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(hdr[12..16].try_into().ok()?);
    let payload = buf.get(META_HEADER..META_HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    dec(payload).ok()
}

/// Replaces `dir/name` with `bytes` atomically and durably.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, dir.join(name))?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn read_meta(dir: &Path) -> Result<LogMeta, MetaNodeError> {
    match std::fs::read(dir.join(META_FILE)) {
        Ok(buf) => unframe(&buf).ok_or_else(|| MetaNodeError::Corrupt {
            what: "raft log meta (vote, last purged)",
            message: format!("{} fails its checksum", dir.join(META_FILE).display()),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LogMeta::default()),
        Err(e) => Err(e.into()),
    }
}

/// Shared by the store and its readers.
struct Shared {
    log: SegmentedLog,
    /// Lowest readable index: last purged + 1 (entries below it may still
    /// sit in a kept segment; they are not returned).
    read_from: AtomicU64,
}

/// One job for the [`Syncer`]: what an append wrote (or a committed hint
/// alone), and whom to tell once it is durable.
struct SyncJob {
    /// The segment the batch went to.
    file: Option<Arc<File>>,
    /// The committed hint to write after the sync.
    committed: Option<(Arc<File>, Vec<u8>)>,
    done: Option<LogFlushed<TypeConfig>>,
    /// Told when the job is complete (a hint-only job's writer waits).
    ack: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Makes written batches durable off the append path, in order, on a
/// thread of its own: it takes every job queued, syncs each segment they
/// wrote to once, writes the latest committed hint, then completes them
/// all. A failed sync fails every job taken with it and the log (what
/// reached the disk is unknown), as a failed write does.
struct Syncer {
    tx: mpsc::Sender<SyncJob>,
}

impl Syncer {
    fn start(shared: Arc<Shared>) -> io::Result<Syncer> {
        let (tx, rx) = mpsc::channel::<SyncJob>();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    jobs.extend(rx.try_iter());
                    Self::complete(&shared, jobs);
                }
            })?;
        Ok(Syncer { tx })
    }

    fn complete(shared: &Shared, jobs: Vec<SyncJob>) {
        let mut synced: Vec<&Arc<File>> = Vec::new();
        let mut res = Ok(());
        for file in jobs.iter().filter_map(|j| j.file.as_ref()) {
            if res.is_err() || synced.iter().any(|f| Arc::ptr_eq(f, file)) {
                continue;
            }
            res = file.sync_data();
            synced.push(file);
        }
        match &res {
            Ok(()) => write_committed(jobs.iter().rev().find_map(|j| j.committed.clone())),
            Err(e) => {
                super::crash_stop("raft log fdatasync", e);
                tracing::error!(error = %e, "raft log: fdatasync failed; no more writes until restart");
                shared.log.fail();
            }
        }
        for job in jobs {
            if let Some(done) = job.done {
                let r = match &res {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                done.log_io_completed(r);
            }
            if let Some(ack) = job.ack {
                let _ = ack.send(());
            }
        }
    }

    /// Queues `job`; if the thread is gone, fails its callback.
    fn submit(&self, job: SyncJob) -> io::Result<()> {
        self.tx.send(job).map_err(|mpsc::SendError(job)| {
            let e = || io::Error::other("raft log: the sync thread is gone");
            if let Some(done) = job.done {
                done.log_io_completed(Err(e()));
            }
            e()
        })
    }
}

/// The Raft log store.
pub struct LogStore {
    shared: Arc<Shared>,
    syncer: Syncer,
    dir: PathBuf,
    meta: LogMeta,
    committed: Option<LogId<RaftNodeId>>,
    /// What the `committed` file holds (as far as this process wrote it).
    committed_written: Option<LogId<RaftNodeId>>,
    committed_file: Arc<File>,
}

/// Reads the log (cheap to clone; one per replication stream).
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogStore {
    /// Opens the log in `dir` (the meta data directory; the log lives in
    /// `dir/raft-log`). If that does not exist yet and `db` holds a log in
    /// its old sled trees, the log is imported first; the old trees are
    /// removed once the import is durable.
    pub fn open(db: &sled::Db, dir: &Path) -> Result<LogStore, MetaNodeError> {
        Self::open_with(db, dir, LogOptions::default())
    }

    /// [`LogStore::open`] with segment and cache sizes of its own.
    pub fn open_with(
        db: &sled::Db,
        dir: &Path,
        opts: LogOptions,
    ) -> Result<LogStore, MetaNodeError> {
        let log_dir = dir.join(LOG_DIR);
        if !log_dir.exists() {
            create_from_sled(db, dir, &log_dir)?;
        }
        drop_sled_trees(db)?;
        let _ = std::fs::remove_file(log_dir.join(format!("{META_FILE}{TMP_SUFFIX}")));
        let meta = read_meta(&log_dir)?;
        let committed_file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(log_dir.join(COMMITTED_FILE))?,
        );
        let committed = {
            let mut buf = Vec::new();
            let mut f: &File = &committed_file;
            io::Read::read_to_end(&mut f, &mut buf)?;
            unframe::<Option<LogId<RaftNodeId>>>(&buf).flatten()
        };
        // The committed hint is written only after the entries it names
        // were synced, so a damaged batch at or below it is not torn.
        let log = SegmentedLog::open(
            &log_dir,
            meta.last_purged.map(|l| l.index),
            committed.map(|l| l.index),
            opts,
        )?;
        let read_from = meta.last_purged.map_or(0, |l| l.index + 1);
        let shared = Arc::new(Shared {
            log,
            read_from: AtomicU64::new(read_from),
        });
        Ok(LogStore {
            syncer: Syncer::start(shared.clone())?,
            shared,
            dir: log_dir,
            meta,
            committed,
            committed_written: committed,
            committed_file,
        })
    }

    fn reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    /// A blocking job for the write side: the `committed` hint (if it
    /// changed) goes along with it.
    fn committed_job(&mut self) -> Option<(Arc<File>, Vec<u8>)> {
        if self.committed == self.committed_written {
            return None;
        }
        self.committed_written = self.committed;
        Some((self.committed_file.clone(), frame(&self.committed)))
    }

    /// Writes the meta file durably on the blocking pool.
    async fn write_meta(&mut self, meta: LogMeta) -> io::Result<()> {
        let dir = self.dir.clone();
        let bytes = frame(&meta);
        blocking(move || write_atomic(&dir, META_FILE, &bytes)).await?;
        self.meta = meta;
        // The hint may name entries whose sync is still queued: it goes
        // after them (a vote or purge is rare: wait for it).
        if let Some(committed) = self.committed_job() {
            let (ack, written) = tokio::sync::oneshot::channel();
            self.syncer.submit(SyncJob {
                file: None,
                committed: Some(committed),
                done: None,
                ack: Some(ack),
            })?;
            written
                .await
                .map_err(|_| io::Error::other("raft log: the sync thread is gone"))?;
        }
        Ok(())
    }
}

/// Writes the committed hint in place, unsynced; a failure only costs
/// re-applying entries after a restart.
fn write_committed(job: Option<(Arc<File>, Vec<u8>)>) {
    if let Some((file, bytes)) = job {
        let res = file
            .write_all_at(&bytes, 0)
            .and_then(|()| file.set_len(bytes.len() as u64));
        if let Err(e) = res {
            tracing::warn!(error = %e, "raft log: writing the committed hint failed");
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// Builds `log_dir` in a temp directory beside it and renames it in:
/// empty, or with the log found in sled's old trees.
fn create_from_sled(db: &sled::Db, dir: &Path, log_dir: &Path) -> Result<(), MetaNodeError> {
    let tmp = dir.join(format!("{LOG_DIR}{TMP_SUFFIX}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let names = db.tree_names();
    let has = |n: &str| names.iter().any(|t| t.as_ref() == n.as_bytes());
    if has(SLED_META_TREE) || has(SLED_LOG_TREE) {
        import_sled(db, &tmp)?;
    }
    sync_dir(&tmp)?;
    std::fs::rename(&tmp, log_dir)?;
    sync_dir(dir)?;
    Ok(())
}

/// Copies vote, committed, last purged and entries from sled into `tmp`,
/// durably.
fn import_sled(db: &sled::Db, tmp: &Path) -> Result<(), MetaNodeError> {
    let meta_tree = db.open_tree(SLED_META_TREE)?;
    let log_tree = db.open_tree(SLED_LOG_TREE)?;
    let get = |key: &[u8]| -> Result<Option<sled::IVec>, MetaNodeError> { Ok(meta_tree.get(key)?) };
    let vote: Option<Vote<RaftNodeId>> = get(b"vote")?.map(|v| dec(&v)).transpose()?;
    let last_purged: Option<LogId<RaftNodeId>> =
        get(b"last_purged")?.map(|v| dec(&v)).transpose()?;
    let committed: Option<LogId<RaftNodeId>> = get(b"committed")?
        .map(|v| dec::<Option<LogId<RaftNodeId>>>(&v))
        .transpose()?
        .flatten();
    let log = SegmentedLog::open(tmp, None, None, LogOptions::default())?;
    let mut pending: Vec<(LogId<RaftNodeId>, sled::IVec)> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut prev: Option<u64> = None;
    let mut count = 0u64;
    let flush = |pending: &mut Vec<(LogId<RaftNodeId>, sled::IVec)>| {
        let batch = Batch::encode(pending.iter().map(|(id, v)| (*id, v.as_ref())))?;
        log.append(&batch)?;
        pending.clear();
        Ok::<(), MetaNodeError>(())
    };
    for item in log_tree.iter() {
        let (k, v) = item?;
        let entry: Entry<TypeConfig> = dec(&v)?;
        let index = entry.log_id.index;
        if key_index(&k) != Some(index) || prev.is_some_and(|p| p + 1 != index) {
            return Err(MetaNodeError::Corrupt {
                what: "sled raft log",
                message: format!("key {k:?} holds entry {index} after entry {prev:?}"),
            });
        }
        prev = Some(index);
        pending_bytes += v.len();
        pending.push((entry.log_id, v));
        count += 1;
        if pending_bytes >= IMPORT_BATCH_BYTES {
            flush(&mut pending)?;
            pending_bytes = 0;
        }
    }
    flush(&mut pending)?;
    drop(log);
    write_atomic(tmp, META_FILE, &frame(&LogMeta { vote, last_purged }))?;
    std::fs::write(tmp.join(COMMITTED_FILE), frame(&committed))?;
    File::open(tmp.join(COMMITTED_FILE))?.sync_data()?;
    tracing::info!(
        entries = count,
        ?last_purged,
        ?vote,
        "raft log: imported from sled trees"
    );
    Ok(())
}

/// Removes the old sled trees (after an import, or left by a crash right
/// after one) and makes that durable.
fn drop_sled_trees(db: &sled::Db) -> Result<(), MetaNodeError> {
    let names = db.tree_names();
    let mut dropped = false;
    for t in [SLED_LOG_TREE, SLED_META_TREE] {
        if names.iter().any(|n| n.as_ref() == t.as_bytes()) {
            dropped |= db.drop_tree(t)?;
        }
    }
    if dropped {
        db.flush()?;
    }
    Ok(())
}

/// Converts an index range into `start..end` (end exclusive).
fn index_range<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl LogReader {
    async fn read(&self, start: u64, end: u64) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let start = start.max(self.shared.read_from.load(Ordering::Acquire));
        if start >= end {
            return Ok(Vec::new());
        }
        let plan = self.shared.log.plan(start, end);
        let payloads = if plan.iter().any(|p| p.on_disk()) {
            // Older entries: `pread`s, off the executor.
            drop(plan);
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || shared.log.read(start, end))
                .await
                .map_err(|e| StorageIOError::read_logs(&e))?
                .map_err(|e| StorageIOError::read_log_at_index(e.index, &e))?
        } else {
            plan.into_iter()
                .filter_map(|p| match p {
                    Planned::Cached(b) => Some(b),
                    Planned::Disk { .. } => None,
                })
                .collect()
        };
        let mut out = Vec::with_capacity(payloads.len());
        for (i, p) in payloads.iter().enumerate() {
            let entry: Entry<TypeConfig> =
                dec(p).map_err(|e| StorageIOError::read_log_at_index(start + i as u64, &e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let (start, end) = index_range(&range);
        self.read(start, end).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let (start, end) = index_range(&range);
        self.reader().read(start, end).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged = self.meta.last_purged;
        let last = self
            .shared
            .log
            .last_log_id()
            .filter(|l| last_purged.is_none_or(|p| l.index > p.index));
        Ok(LogState {
            last_log_id: last.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftNodeId>) -> Result<(), StoreError> {
        let meta = LogMeta {
            vote: Some(*vote),
            ..self.meta.clone()
        };
        self.write_meta(meta)
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftNodeId>>, StoreError> {
        Ok(self.meta.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<RaftNodeId>>,
    ) -> Result<(), StoreError> {
        // Only a hint: written with the next append, vote or purge.
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<RaftNodeId>>, StoreError> {
        Ok(self.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Vec<(LogId<RaftNodeId>, Vec<u8>)> =
            entries.into_iter().map(|e| (e.log_id, enc(&e))).collect();
        let batch = Batch::encode(encoded.iter().map(|(id, v)| (*id, v.as_slice())))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        drop(encoded);
        if batch.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let shared = self.shared.clone();
        // Readable when this returns; durable (synced by the syncer)
        // before the callback, so before openraft may acknowledge them.
        let file = match blocking(move || shared.log.write(&batch)).await {
            Ok(file) => file,
            Err(e) => {
                super::crash_stop("raft log write", &e);
                let err = StorageIOError::write_logs(&e);
                callback.log_io_completed(Err(e));
                return Err(err.into());
            }
        };
        let committed = self.committed_job();
        self.syncer
            .submit(SyncJob {
                file,
                committed,
                done: Some(callback),
                ack: None,
            })
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<RaftNodeId>) -> Result<(), StoreError> {
        let shared = self.shared.clone();
        blocking(move || shared.log.truncate(log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<RaftNodeId>) -> Result<(), StoreError> {
        // Record the purge point durably first: a crash in between leaves
        // entries that are merely ignored (and their segments are removed
        // at the next open), never a gap that is not accounted for.
        if self
            .meta
            .last_purged
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        let meta = LogMeta {
            last_purged: Some(log_id),
            ..self.meta.clone()
        };
        self.write_meta(meta)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.shared
            .read_from
            .fetch_max(log_id.index + 1, Ordering::AcqRel);
        let shared = self.shared.clone();
        blocking(move || shared.log.purge(log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
