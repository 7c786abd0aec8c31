//! Raft storage of a meta node, in its data directory: the state machine
//! ([`StateMachineStore`]) in a sled database, the Raft log, vote and
//! committed id ([`LogStore`]) in append-only files of their own under
//! `raft-log/` (see [`log`]), synced with `fdatasync` before openraft is
//! told they are saved.
//!
//! The state machine does not flush when it applies: every entry it
//! applies was durable in the log first, sled recovers a prefix of the
//! state machine's own writes, and the log is purged only below a
//! snapshot whose state was made durable (see `state_machine.rs`).
//!
//! Every value is written with [`tessera_types::codec`] (version byte +
//! bincode), openraft's own types included.

mod counts;
pub mod durability;
pub mod log;
mod logfile;
pub mod query;
mod redo;
pub mod state_machine;

use std::path::Path;
use std::time::Duration;

use openraft::StorageError;
use serde::{de::DeserializeOwned, Serialize};
use tessera_types::codec;
use tessera_types::meta::{MetaCommand, MetaReply};

pub use log::{LogOptions, LogReader, LogStore};
pub use state_machine::{SmTrees, StateMachineStore};

use crate::MetaNodeError;

/// Raft node id of a meta node.
pub type RaftNodeId = u64;

openraft::declare_raft_types!(
    /// Openraft type configuration of the meta group.
    pub TypeConfig:
        D = MetaCommand,
        R = MetaReply,
        NodeId = RaftNodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Storage error as openraft wants it.
pub type StoreError = StorageError<RaftNodeId>;

/// Opens (or creates) the database under `dir` and returns its two halves.
/// Retries for a few seconds while a previous instance in this process
/// still holds the file lock (a restarted node).
pub async fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), MetaNodeError> {
    let dir = dir.to_path_buf();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let db = loop {
        let d = dir.clone();
        let res = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&d)?;
            sled::Config::new()
                .path(&d)
                .mode(sled::Mode::HighThroughput)
                .open()
                .map_err(MetaNodeError::from)
        })
        .await
        .map_err(|e| MetaNodeError::Io(std::io::Error::other(e)))?;
        match res {
            Ok(db) => break db,
            // Real I/O failures (permissions, missing disk) fail at once.
            Err(MetaNodeError::Storage(e))
                if lock_held(&e) && tokio::time::Instant::now() < deadline =>
            {
                tracing::debug!(error = %e, "sled open failed, retrying (lock held?)");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    tokio::task::spawn_blocking(move || open_db(db, &dir))
        .await
        .map_err(|e| MetaNodeError::Io(std::io::Error::other(e)))?
}

/// Builds both halves over an already opened database; `dir` is the
/// directory sled was opened in, the log goes in `dir/raft-log` (imported
/// from the database if an older version kept it there). Blocking.
pub fn open_db(db: sled::Db, dir: &Path) -> Result<(LogStore, StateMachineStore), MetaNodeError> {
    let log = LogStore::open(&db, dir)?;
    let sm = StateMachineStore::new(db, dir)?;
    Ok((log, sm))
}

static CRASH_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes a failed log or state machine write end the process (see
/// [`crash_stop`]); a serving node arms it, unit tests of the stores do not.
pub fn arm_crash_stop() {
    CRASH_STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Ends the process, as a crash would, after a write to the Raft log or
/// the state machine failed (when armed; otherwise returns and the caller
/// reports the error to openraft).
///
/// Why not stop gracefully. openraft treats such an error as fatal: its
/// core stops and the node serves nothing until it restarts, even once
/// the cause (a full disk, say) is gone. And sled, after an I/O error,
/// cannot flush, and dropping it panics: the graceful path ended in an
/// abort (seen on a full disk). Exiting at once is a crash, which the
/// node is built to survive: everything acknowledged is in the synced Raft
/// log, and the state machine catches up from it at restart.
pub(crate) fn crash_stop(what: &str, err: &dyn std::fmt::Display) {
    if !CRASH_STOP.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    tessera_observe::crash::stop_for_restart("meta", format_args!("{what} failed: {err}"));
}

/// Flushes the whole database on the blocking pool.
pub(crate) async fn flush(db: &sled::Db) -> Result<(), sled::Error> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.flush().map(|_| ()))
        .await
        .map_err(|e| sled::Error::Io(std::io::Error::other(e)))?
}

/// Whether a failed sled open is another instance still holding the
/// database's file lock (sled reports it as `Other`/`WouldBlock`), which
/// lets go shortly after that instance is dropped.
pub(crate) fn lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if matches!(
        io.kind(),
        std::io::ErrorKind::Other | std::io::ErrorKind::WouldBlock
    ))
}

/// Encodes a value for sled.
pub(crate) fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    codec::encode(v)
}

/// Decodes a value from sled.
pub(crate) fn dec<T: DeserializeOwned>(buf: &[u8]) -> Result<T, codec::CodecError> {
    codec::decode(buf)
}

pub(crate) fn key_index(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// Flushes the database (used at shutdown).
pub async fn flush_db(db: &sled::Db) -> Result<(), MetaNodeError> {
    flush(db).await.map_err(MetaNodeError::from)
}
