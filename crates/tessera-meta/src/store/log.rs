//! The Raft log, vote and committed id in sled.
//!
//! Trees: `raft_log` (big-endian index -> encoded entry) and `raft_meta`
//! (`vote`, `committed`, `last_purged`). The vote and appended entries are
//! flushed to disk before openraft is told they are saved.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};

use super::{dec, enc, flush, index_key, key_index, RaftNodeId, StoreError, TypeConfig};
use crate::MetaNodeError;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The Raft log store (also its own log reader: sled trees are shared
/// handles, so clones see the same data).
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    pub(crate) fn new(db: sled::Db) -> Result<Self, MetaNodeError> {
        Ok(LogStore {
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            db,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, MetaNodeError> {
        match self.meta.get(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(dec(&v)?)),
        }
    }

    async fn flush(&self) -> Result<(), sled::Error> {
        flush(&self.db).await
    }
}

/// Converts an index range into sled key bounds.
fn key_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let start = match range.start_bound() {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => match i.checked_add(1) {
            Some(j) => Bound::Included(index_key(j)),
            None => Bound::Excluded(index_key(u64::MAX)),
        },
        Bound::Unbounded => Bound::Unbounded,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => Bound::Included(index_key(*i)),
        Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let (start, end) = key_bounds(&range);
        if let (Bound::Included(s), Bound::Excluded(e)) = (&start, &end) {
            if s >= e {
                return Ok(Vec::new());
            }
        }
        let mut out = Vec::new();
        for item in self.log.range((start, end)) {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let entry: Entry<TypeConfig> = dec(&v).map_err(|e| match key_index(&k) {
                Some(i) => StorageIOError::read_log_at_index(i, &e),
                None => StorageIOError::read_logs(&e),
            })?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged: Option<LogId<RaftNodeId>> = self
            .get_meta(KEY_LAST_PURGED)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            None => None,
            Some((_, v)) => {
                let e: Entry<TypeConfig> = dec(&v).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(e.log_id)
            }
        };
        Ok(LogState {
            last_log_id: last.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftNodeId>) -> Result<(), StoreError> {
        self.meta
            .insert(KEY_VOTE, enc(vote))
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftNodeId>>, StoreError> {
        match self
            .meta
            .get(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?
        {
            None => Ok(None),
            Some(v) => dec(&v)
                .map(Some)
                .map_err(|e| StorageIOError::read_vote(&e).into()),
        }
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<RaftNodeId>>,
    ) -> Result<(), StoreError> {
        // Not flushed: it is only a hint that saves re-applying on restart.
        self.meta
            .insert(KEY_COMMITTED, enc(&committed))
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<RaftNodeId>>, StoreError> {
        Ok(self
            .get_meta::<Option<LogId<RaftNodeId>>>(KEY_COMMITTED)
            .map_err(|e| StorageIOError::read(&e))?
            .flatten())
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&index_key(entry.log_id.index), enc(&entry));
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Durable before openraft may acknowledge the entries.
        let res = self.flush().await.map_err(std::io::Error::other);
        let failed = res.as_ref().err().map(StorageIOError::write_logs);
        callback.log_io_completed(res);
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<RaftNodeId>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (k, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flush()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<RaftNodeId>) -> Result<(), StoreError> {
        // Record the purge point first: a crash in between leaves entries
        // that are merely ignored, never a gap that is not accounted for.
        self.meta
            .insert(KEY_LAST_PURGED, enc(&log_id))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (k, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
