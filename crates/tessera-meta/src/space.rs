//! The meta node's disk-space guard: writes are refused while the data
//! directory's file system is nearly full, before the Raft log or sled
//! ever meets `ENOSPC`.
//!
//! Why refuse early. A committed entry that cannot be applied because the
//! disk is full is fatal to openraft (its state machine worker stops), and
//! sled treats an I/O error as the end of the database in that process: a
//! meta node that runs out of space mid-write stops serving until it is
//! restarted, even after space comes back (seen with `tessera dev` on a
//! full file system: two of three meta nodes stopped, the group had no
//! quorum, every S3 request failed until a restart). So the leader checks
//! the free space before it proposes, like etcd's space quota and TiKV's
//! reserved space:
//!
//! - below the reserve, writes that add data (objects, parts, buckets,
//!   keys, tags) are refused with `RESOURCE_EXHAUSTED`, which the gateway
//!   answers with a 503 that says why;
//! - writes that remove data or keep the cluster running (deletes, aborts,
//!   GC and repair bookkeeping, node states) still go, so an operator can
//!   free space through S3 and repair keeps its promises, until a floor of
//!   a quarter of the reserve, below which every write is refused.
//!
//! The guard reads `statvfs` at most every [`REFRESH`]; a meta node's
//! writes are small, so that staleness is worth far less than the reserve.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tessera_types::meta::MetaCommand;
use tonic::Status;

/// How long a free-space reading is reused.
pub const REFRESH: Duration = Duration::from_millis(250);
/// Largest automatic reserve (`min-free-bytes` = 0): 1 GiB, or 5% of the
/// file system when that is less.
pub const MAX_AUTO_RESERVE: u64 = 1 << 30;

/// Bytes available to the node and total size of a file system.
pub type Probe = Box<dyn Fn(&Path) -> std::io::Result<(u64, u64)> + Send + Sync>;

/// What a write does to the space the node needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// Adds data (an object, a part, a bucket, ...): refused below the
    /// reserve.
    Grows,
    /// Removes data, or keeps the cluster and its repairs going: refused
    /// only below the floor.
    Frees,
}

/// Classifies a command; a batch grows if any of its commands does.
pub fn kind(cmd: &MetaCommand) -> WriteKind {
    use MetaCommand as C;
    match cmd {
        C::CreateBucket(_)
        | C::PutObject { .. }
        | C::PutObjectChecked { .. }
        | C::PutAccessKey(_)
        | C::CreateUpload { .. }
        | C::PutPart { .. }
        | C::CompleteUpload { .. }
        | C::SetObjectTagging { .. }
        | C::SetGrant { .. }
        | C::SetRepairConfig(_)
        | C::QueueRebalance { .. } => WriteKind::Grows,
        C::DeleteBucket { .. }
        | C::DeleteObject { .. }
        | C::DeleteAccessKey { .. }
        | C::UpsertNode(_)
        | C::SetNodeState { .. }
        | C::RemoveNode { .. }
        | C::AbortUpload { .. }
        | C::ReportShards { .. }
        | C::LeaseRepairs { .. }
        | C::CommitRepair { .. }
        | C::ReleaseRepair { .. }
        | C::LeaseGc { .. }
        | C::AckGc { .. }
        | C::CheckNode { .. }
        | C::ReleaseLeases { .. } => WriteKind::Frees,
        C::Batch(cmds) => {
            if cmds.iter().any(|c| kind(c) == WriteKind::Grows) {
                WriteKind::Grows
            } else {
                WriteKind::Frees
            }
        }
    }
}

/// The guard of one meta node's data directory.
pub struct SpaceGuard {
    dir: PathBuf,
    /// Configured reserve; 0 = automatic (see [`MAX_AUTO_RESERVE`]).
    min_free: u64,
    probe: Probe,
    /// Last reading: when, bytes available, file system size.
    last: Mutex<Option<(Instant, u64, u64)>>,
}

impl SpaceGuard {
    /// A guard of `dir` keeping `min_free` bytes free (0: automatic).
    pub fn new(dir: impl Into<PathBuf>, min_free: u64) -> Self {
        Self::with_probe(
            dir,
            min_free,
            Box::new(|dir| tessera_observe::disk::space(dir).map(|s| (s.available, s.total))),
        )
    }

    /// A guard that reads free space with `probe` (tests).
    pub fn with_probe(dir: impl Into<PathBuf>, min_free: u64, probe: Probe) -> Self {
        SpaceGuard {
            dir: dir.into(),
            min_free,
            probe,
            last: Mutex::new(None),
        }
    }

    /// The reserve for a file system of `total` bytes.
    pub fn reserve(&self, total: u64) -> u64 {
        if self.min_free > 0 {
            self.min_free
        } else {
            MAX_AUTO_RESERVE.min(total / 20)
        }
    }

    /// Bytes available and file system size, at most [`REFRESH`] old.
    /// `None` when the file system cannot be read (the write then goes
    /// ahead: the guard must never be why a healthy node refuses).
    fn reading(&self) -> Option<(u64, u64)> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, avail, total)) = *last {
            if at.elapsed() < REFRESH {
                return Some((avail, total));
            }
        }
        match (self.probe)(&self.dir) {
            Ok((avail, total)) => {
                *last = Some((Instant::now(), avail, total));
                Some((avail, total))
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e,
                    "cannot read the meta data directory's free space");
                None
            }
        }
    }

    /// Whether `cmd` may be proposed now; the refusal says why.
    pub fn check(&self, cmd: &MetaCommand) -> Result<(), Status> {
        let Some((avail, total)) = self.reading() else {
            return Ok(());
        };
        let reserve = self.reserve(total);
        let (limit, what) = match kind(cmd) {
            WriteKind::Grows => (
                reserve,
                "writes that add data are refused until space is freed (deletes still work)",
            ),
            WriteKind::Frees => (reserve / 4, "every write is refused until space is freed"),
        };
        if avail >= limit {
            return Ok(());
        }
        tracing::warn!(cmd = cmd.name(), avail, reserve, dir = %self.dir.display(),
            "meta disk nearly full: write refused");
        Err(Status::resource_exhausted(format!(
            "meta disk nearly full: {} free, below the {} kept in reserve; {what}",
            mib(avail),
            mib(limit),
        )))
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tessera_types::meta::MetaCommand;

    const MIB: u64 = 1 << 20;

    fn guard(min_free: u64, avail: Arc<AtomicU64>, total: u64) -> SpaceGuard {
        SpaceGuard::with_probe(
            "/meta",
            min_free,
            Box::new(move |_| Ok((avail.load(Ordering::SeqCst), total))),
        )
    }

    fn delete() -> MetaCommand {
        MetaCommand::DeleteObject {
            bucket: "b".into(),
            key: "k".into(),
        }
    }

    fn create() -> MetaCommand {
        MetaCommand::CreateBucket(tessera_types::Bucket {
            name: "b".into(),
            owner: "o".into(),
            created: 0,
        })
    }

    #[test]
    fn refuses_growth_below_the_reserve_and_everything_below_the_floor() {
        let avail = Arc::new(AtomicU64::new(500 * MIB));
        let g = guard(100 * MIB, avail.clone(), 10_000 * MIB);
        assert!(g.check(&create()).is_ok());
        assert!(g.check(&delete()).is_ok());

        avail.store(99 * MIB, Ordering::SeqCst);
        std::thread::sleep(REFRESH);
        let e = g.check(&create()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("deletes still work"),
            "{}",
            e.message()
        );
        assert!(g.check(&delete()).is_ok());
        // A batch with one growing command grows.
        let e = g
            .check(&MetaCommand::Batch(vec![delete(), create()]))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(g.check(&MetaCommand::Batch(vec![delete()])).is_ok());

        avail.store(24 * MIB, Ordering::SeqCst);
        std::thread::sleep(REFRESH);
        let e = g.check(&delete()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("every write is refused"),
            "{}",
            e.message()
        );

        // Space comes back: writes go again.
        avail.store(101 * MIB, Ordering::SeqCst);
        std::thread::sleep(REFRESH);
        assert!(g.check(&create()).is_ok());
    }

    #[test]
    fn automatic_reserve_is_5_percent_up_to_1_gib() {
        let avail = Arc::new(AtomicU64::new(0));
        assert_eq!(
            guard(0, avail.clone(), 400 * MIB).reserve(400 * MIB),
            20 * MIB
        );
        assert_eq!(guard(0, avail.clone(), 1 << 40).reserve(1 << 40), 1 << 30);
        assert_eq!(guard(7 * MIB, avail, 1 << 40).reserve(1 << 40), 7 * MIB);
    }

    #[test]
    fn an_unreadable_file_system_does_not_refuse() {
        let g = SpaceGuard::with_probe(
            "/meta",
            0,
            Box::new(|_| Err(std::io::Error::other("no statvfs"))),
        );
        assert!(g.check(&create()).is_ok());
    }

    #[test]
    fn the_default_probe_reads_the_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let g = SpaceGuard::new(dir.path(), 0);
        let (avail, total) = g.reading().unwrap();
        assert!(total > 0 && avail <= total);
        assert!(SpaceGuard::new(dir.path().join("missing"), 0)
            .reading()
            .is_none());
    }
}
