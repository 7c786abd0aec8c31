//! The shard store: shard files on one or more data directories.
//!
//! Layout of a data directory:
//!
//! ```text
//! <dir>/format                      "tessera-storage <version>"
//! <dir>/node-id                     first data dir only
//! <dir>/scrub-state                 first data dir only: the scrubber's position
//! <dir>/shards/<hh>/<stripe>.<idx>  hh = first byte of the stripe id in hex
//! <dir>/quarantine/<stripe>.<idx>.<unix-millis>[.unreported]
//! ```
//!
//! A shard file is a [`HEADER_LEN`]-byte header in a block of its own
//! ([`DATA_OFFSET`] bytes), then the shard bytes, zero-padded to a whole
//! block:
//!
//! ```text
//! 0..4        magic "TSHD"
//! 4           format version (2)
//! 5..8        reserved, zero
//! 8..16       shard length, u64 little endian
//! 16..48      BLAKE3 of the shard bytes
//! 48..4096    zero
//! 4096..      the shard bytes, then zeros up to a multiple of 4096
//! ```
//!
//! So every byte of the file is written in whole aligned blocks (see
//! below). The file system allocates whole blocks anyway: the layout
//! costs at most one block more than header and bytes packed together.
//! Version 1 files (written before version 2) are still read: the same
//! header, the shard bytes right after it at offset 48, no padding
//! ([`ShardFormat`]).
//!
//! Paths are built only from the 16-byte stripe id and the shard index, so
//! no request can name a file outside the store. Every blocking operation
//! (file I/O, hashing) runs on tokio's blocking pool.
//!
//! ## How a shard file is written
//!
//! A [`ShardWriter`] keeps the frames it receives in memory until
//! [`SPILL_BYTES`] of them are pending or the shard is complete, then, in
//! one trip to the blocking pool, writes them (behind the header, in the
//! first trip) to an anonymous temp file in the shard's directory and
//! hashes them. [`ShardWriter::finish`] checks length and hash, and
//! commits: `fdatasync`, link under the shard's name (never over another
//! file), fsync the directory. The name is not looked up first: with one
//! data directory the link's `EEXIST` is what finds a stored copy. A
//! retried put of an identical shard then finds it and succeeds without
//! keeping the new file.
//!
//! The temp file is opened with `O_DIRECT` (config `direct-io`, on by
//! default): written once and read rarely, shard bytes gain nothing from
//! the page cache, and copying them into fresh cache pages (allocated,
//! and on a busy node reclaimed, for every write) costs a storage node
//! more kernel CPU per byte than anything else on a put; the pages would
//! also push hot data out of the cache. Direct writes must be aligned to
//! [`durable::DIRECT_ALIGN`] (4096) in buffer address, file offset and
//! length, so a spill copies the header block and frames (hashing them as
//! it goes) into an aligned buffer from a small pool kept by the store
//! and writes whole blocks only; the bytes past the last whole block
//! (under 4 KiB) are carried over to the next spill, and the last spill
//! pads them with zeros to a whole block. No byte of a shard file goes
//! through the page cache, so the commit's `fdatasync` has no dirty page
//! to write back: it only makes the size and block map durable.
//! (Version 1 files ended right after the shard bytes, so their last
//! partial block went through the page cache: one buffered write and its
//! writeback in the `fdatasync`, per shard; about 7% of a storage node's
//! CPU samples under 1 MiB PUTs.
//! Padding that block and cutting the file back with `ftruncate` was
//! measured too: on ext4 the truncate cost as much kernel CPU as direct
//! I/O saved.) Reads stay buffered: the first read of a shard comes from
//! the disk, later ones from the cache.
//!
//! A file system that refuses `O_DIRECT` (`EINVAL` when the file is
//! opened, or at its first write) gets buffered writes instead: the put
//! goes on, and the data directory is written buffered from then on
//! (logged once). Buffered files have the same layout, written with one
//! `writev` of the header block (first time), the frames and the padding
//! (last time) per spill.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use tessera_types::{NodeId, StripeId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::durable::{self, BufPool, Direct, TempFile, DIRECT_ALIGN, TEMP_PREFIX};
use crate::error::{ShardKey, StorageError};

/// Magic bytes opening every shard file.
pub const MAGIC: [u8; 4] = *b"TSHD";
/// Version of the shard file format written (version 1 is still read).
pub const SHARD_FORMAT_VERSION: u8 = 2;
/// Size of the encoded shard file header.
pub const HEADER_LEN: usize = 48;
/// Where the shard bytes start in a file of the current format: the
/// header has a block to itself, so the bytes are block-aligned.
pub const DATA_OFFSET: usize = DIRECT_ALIGN;
/// Version of the data directory layout, kept in `<dir>/format`.
pub const DIR_FORMAT_VERSION: u32 = 1;

const FORMAT_FILE: &str = "format";
const NODE_ID_FILE: &str = "node-id";
const SHARDS_DIR: &str = "shards";
const QUARANTINE_DIR: &str = "quarantine";
/// Suffix of a quarantined file the scrubber has not reported to meta yet
/// (dropped once it has: a restart reports what a crash left unreported).
const UNREPORTED: &str = ".unreported";
/// Number of lock stripes serialising commits, deletes and quarantines of
/// the same shard name (keeps the shard counter exact under races).
const NAME_LOCKS: usize = 64;
/// Read budget is counted in KiB so that large budgets fit the semaphore.
const BUDGET_UNIT: u64 = 1024;
/// A shard is read (and hashed) in pieces of this size, each hashed while
/// it is still in the CPU cache.
const READ_CHUNK: usize = 64 << 10;
/// Largest shard [`ShardStore::read_cached`] reads on the executor: a copy
/// of 1 MiB from the page cache takes about 0.1 ms. Larger ones go to the
/// blocking pool, where a hand-off costs little next to the read.
const CACHED_READ_MAX: u64 = (1 << 20) + DATA_OFFSET as u64;
/// The same when the node hashes the shard too (BLAKE3 of 256 KiB is
/// about 50 us; of 1 MiB, too long to hold an executor thread).
const CACHED_HASHED_READ_MAX: u64 = (256 << 10) + DATA_OFFSET as u64;

type Result<T> = std::result::Result<T, StorageError>;

/// How a read checks a shard's bytes before it hands them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadCheck {
    /// BLAKE3 against the file header and, when given, against this hash
    /// (from the manifest). A mismatch quarantines the file.
    Hash(Option<[u8; 32]>),
    /// Header and length only: the caller hashes every byte itself (the
    /// gateway checks each shard against its manifest, end to end), so a
    /// second hash here would only cost CPU. Corruption is then found by
    /// the caller, which reports it to meta, and by the scrubber.
    CallerVerifies,
}

/// Reads up to `max` bytes from `file`'s position into `buf`'s spare
/// capacity, without zeroing it first; returns how many were read.
/// `nowait`: `preadv2(RWF_NOWAIT)`, which fails with `EAGAIN` instead of
/// waiting for the disk (only bytes already in the page cache are read).
fn read_into_spare(file: &File, buf: &mut Vec<u8>, max: usize, nowait: bool) -> io::Result<usize> {
    buf.reserve(max);
    loop {
        let spare = buf.spare_capacity_mut();
        let len = max.min(spare.len());
        // SAFETY: `read(2)` / `preadv2(2)` write at most `len` bytes into
        // the spare capacity, which is allocated and owned by `buf`; the
        // bytes reported written are initialised before `set_len` counts
        // them. Offset -1: the file position, as `read` uses.
        let n = unsafe {
            if nowait {
                let iov = libc::iovec {
                    iov_base: spare.as_mut_ptr().cast(),
                    iov_len: len,
                };
                libc::preadv2(file.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT)
            } else {
                libc::read(file.as_raw_fd(), spare.as_mut_ptr().cast(), len)
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        // SAFETY: see above: `n <= len <= spare capacity` bytes are
        // initialised by the read.
        unsafe { buf.set_len(buf.len() + n) };
        return Ok(n);
    }
}

/// Opens `path` read-only only if every component of it is in the
/// kernel's lookup cache (`openat2` with `RESOLVE_CACHED`, Linux 5.12):
/// `EAGAIN` when that would take a disk read.
fn open_cached(path: &Path) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `open_how` is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_CACHED;
    // SAFETY: `c` is a NUL-terminated path and `how` a valid `open_how`
    // of the size passed, both alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else
    // owns it.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// The decoded header of a shard file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub length: u64,
    pub blake3: [u8; 32],
}

impl ShardHeader {
    /// The header of a file of the current format.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        self.encode_as(ShardFormat::V2)
    }

    /// The header of a file of `format`.
    pub fn encode_as(&self, format: ShardFormat) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = format as u8;
        h[8..16].copy_from_slice(&self.length.to_le_bytes());
        h[16..48].copy_from_slice(&self.blake3);
        h
    }

    /// Parses a header; the error says why it is not one.
    pub fn decode(b: &[u8]) -> std::result::Result<ShardHeader, String> {
        Self::parse(b).map(|(h, _)| h)
    }

    /// Parses a header and tells the file format it belongs to.
    pub fn parse(b: &[u8]) -> std::result::Result<(ShardHeader, ShardFormat), String> {
        if b.len() < HEADER_LEN {
            return Err(format!("file too short for a header ({} bytes)", b.len()));
        }
        if b[0..4] != MAGIC {
            return Err("bad magic".into());
        }
        let format = match b[4] {
            1 => ShardFormat::V1,
            2 => ShardFormat::V2,
            v => return Err(format!("unknown shard format version {v}")),
        };
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[8..16]);
        let mut blake3 = [0u8; 32];
        blake3.copy_from_slice(&b[16..48]);
        let header = ShardHeader {
            length: u64::from_le_bytes(len),
            blake3,
        };
        Ok((header, format))
    }

    /// Parses the header at the start of a file of `size` bytes and checks
    /// that the size is the one the header's format and length give.
    pub fn parse_sized(
        b: &[u8],
        size: u64,
    ) -> std::result::Result<(ShardHeader, ShardFormat), String> {
        let (h, format) = Self::parse(b)?;
        if format.file_len(h.length) != Some(size) {
            return Err(format!(
                "header says {} bytes, file is {size} bytes",
                h.length
            ));
        }
        Ok((h, format))
    }
}

/// The layout of a shard file, from its header's version (see the module
/// documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ShardFormat {
    /// The shard bytes right after the header, no padding.
    V1 = 1,
    /// The header in a block of its own, the shard bytes padded to whole
    /// blocks.
    V2 = 2,
}

impl ShardFormat {
    /// Where the shard bytes start.
    pub fn data_offset(self) -> u64 {
        match self {
            ShardFormat::V1 => HEADER_LEN as u64,
            ShardFormat::V2 => DATA_OFFSET as u64,
        }
    }

    /// The size of a file holding `length` shard bytes (`None` past
    /// `u64`).
    pub fn file_len(self, length: u64) -> Option<u64> {
        match self {
            ShardFormat::V1 => length.checked_add(HEADER_LEN as u64),
            ShardFormat::V2 => length
                .checked_next_multiple_of(DIRECT_ALIGN as u64)?
                .checked_add(DATA_OFFSET as u64),
        }
    }
}

/// A whole shard file of format 1 holding `data`, as that format was
/// written (tests of the reading side).
#[cfg(test)]
pub(crate) fn format_1_file(data: &[u8]) -> Vec<u8> {
    let header = ShardHeader {
        length: data.len() as u64,
        blake3: *blake3::hash(data).as_bytes(),
    };
    let mut file = header.encode_as(ShardFormat::V1).to_vec();
    file.extend_from_slice(data);
    file
}

/// The size of a shard file of the current format holding `length` bytes
/// (saturating: larger than any file can be).
pub(crate) fn file_len(length: u64) -> u64 {
    ShardFormat::V2.file_len(length).unwrap_or(u64::MAX)
}

/// Disk usage summed over the data directories' file systems.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub shard_count: u64,
}

/// A verified shard held in memory, with the read budget it occupies;
/// the budget returns when this is dropped.
pub struct ShardData {
    pub bytes: Bytes,
    _budget: OwnedSemaphorePermit,
}

impl ShardData {
    /// Splits into the bytes and the guard that holds their budget.
    pub fn into_parts(self) -> (Bytes, OwnedSemaphorePermit) {
        (self.bytes, self._budget)
    }
}

/// Options of [`ShardStore::open`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub max_shard_bytes: u64,
    pub read_buffer_bytes: u64,
    /// Limit on the bytes held by shard files (headers included); a write
    /// that would exceed it fails as if the disk were full.
    pub capacity_bytes: Option<u64>,
}

/// What became of a file found bad.
#[derive(Debug)]
pub(crate) enum Quarantine {
    /// Moved to the quarantine directory, under this name.
    Done(PathBuf),
    /// The name no longer holds the file that was found bad (deleted,
    /// already quarantined, or replaced by a good copy): nothing to do.
    Gone,
    /// The file could not be moved; it stays where it is.
    Failed,
}

/// Shard files on one or more data directories.
pub struct ShardStore {
    dirs: Vec<PathBuf>,
    node_id: NodeId,
    shard_count: AtomicU64,
    /// Bytes held by shard files, headers included.
    shard_bytes: AtomicU64,
    /// Bytes promised to writes in progress (checked against
    /// `capacity_limit` only).
    reserved: AtomicU64,
    capacity_limit: Option<u64>,
    max_shard_bytes: u64,
    read_budget: Arc<Semaphore>,
    read_budget_units: u64,
    name_locks: Vec<Mutex<()>>,
    /// Per data directory: whether shard files there are written with
    /// `O_DIRECT` (off by config, or once the file system refused it).
    direct_io: Vec<AtomicBool>,
    /// Aligned buffers that spills copy frames into for direct writes.
    write_buffers: BufPool,
    /// Whether reads try [`ShardStore::read_cached`] first; off for good
    /// once the kernel (or a seccomp filter) refuses `openat2` or
    /// `RWF_NOWAIT`.
    nowait_reads: AtomicBool,
    /// Reads served by [`ShardStore::read_cached`].
    cached_reads: AtomicU64,
    #[cfg(test)]
    pub(crate) faults: faults::Faults,
}

/// Runs blocking disk work off the async executor.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
}

impl ShardStore {
    /// Opens (creating if needed) the data directories, loads or creates
    /// the node id, removes temp files left by a crash and counts shards.
    pub async fn open(dirs: Vec<PathBuf>, opts: StoreOptions) -> Result<Arc<ShardStore>> {
        blocking(move || Self::open_blocking(dirs, opts)).await
    }

    fn open_blocking(dirs: Vec<PathBuf>, opts: StoreOptions) -> Result<Arc<ShardStore>> {
        let Some(first) = dirs.first() else {
            return Err(StorageError::Config("no data directories".into()));
        };
        let mut count = 0u64;
        let mut bytes = 0u64;
        for dir in &dirs {
            prepare_dir(dir)?;
            let (c, b) = scan_dir(dir)?;
            count += c;
            bytes += b;
        }
        let node_id = load_or_create_node_id(&first.join(NODE_ID_FILE))?;
        let dirs_len = dirs.len();
        let units = opts.read_buffer_bytes.div_ceil(BUDGET_UNIT).max(1);
        let units = units.min(Semaphore::MAX_PERMITS as u64);
        tracing::info!(node_id = %node_id, shards = count, dirs = dirs.len(), "shard store opened");
        Ok(Arc::new(ShardStore {
            dirs,
            node_id,
            shard_count: AtomicU64::new(count),
            shard_bytes: AtomicU64::new(bytes),
            reserved: AtomicU64::new(0),
            capacity_limit: opts.capacity_bytes,
            max_shard_bytes: opts.max_shard_bytes,
            read_budget: Arc::new(Semaphore::new(units as usize)),
            read_budget_units: units,
            name_locks: (0..NAME_LOCKS).map(|_| Mutex::new(())).collect(),
            direct_io: (0..dirs_len).map(|_| AtomicBool::new(true)).collect(),
            write_buffers: BufPool::new(WRITE_BUFFERS_KEPT, WRITE_BUFFER_BYTES),
            nowait_reads: AtomicBool::new(true),
            cached_reads: AtomicU64::new(0),
            #[cfg(test)]
            faults: faults::Faults::default(),
        }))
    }

    /// Turns `O_DIRECT` shard writes on or off (config `direct-io`; on
    /// when opened) for every data directory.
    pub fn set_direct_io(&self, on: bool) {
        for d in &self.direct_io {
            d.store(on, Ordering::Relaxed);
        }
        if !on {
            tracing::info!("direct-io off: shard files are written through the page cache");
        }
    }

    /// Whether shard files in data directory `dir` are written with
    /// `O_DIRECT`.
    pub(crate) fn direct_io(&self, dir: usize) -> bool {
        self.direct_io[dir].load(Ordering::Relaxed)
    }

    /// Aligned write buffers kept for reuse.
    #[cfg(test)]
    pub(crate) fn write_buffers_kept(&self) -> usize {
        self.write_buffers.kept()
    }

    /// Data directory `dir` refused `O_DIRECT`: write it buffered from now
    /// on (logged the first time).
    fn direct_io_refused(&self, dir: usize, at: &str) {
        if self.direct_io[dir].swap(false, Ordering::Relaxed) {
            tracing::info!(dir = %self.dirs[dir].display(), at, "O_DIRECT refused: shard files in this directory are written through the page cache");
        }
    }

    /// Reads served on the executor, with no trip to the blocking pool
    /// (see [`ShardStore::read`]).
    pub fn cached_reads(&self) -> u64 {
        self.cached_reads.load(Ordering::Relaxed)
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub fn max_shard_bytes(&self) -> u64 {
        self.max_shard_bytes
    }

    /// The longest shard a read hands out: the largest that could have
    /// been written. A header that says more is damage, not a reason to
    /// run out of memory.
    fn longest_readable(&self) -> u64 {
        self.max_shard_bytes
            .max(tessera_proto::MAX_MESSAGE_BYTES as u64)
    }

    pub fn shard_count(&self) -> u64 {
        self.shard_count.load(Ordering::Relaxed)
    }

    /// Bytes held by shard files, headers included.
    pub fn shard_bytes(&self) -> u64 {
        self.shard_bytes.load(Ordering::Relaxed)
    }

    /// The first data directory (node id, scrub position).
    pub(crate) fn first_dir(&self) -> &Path {
        &self.dirs[0]
    }

    /// Number of data directories.
    pub(crate) fn dir_count(&self) -> usize {
        self.dirs.len()
    }

    /// The shard files of sub-directory `sub` of data directory `dir`
    /// (names only: a listing holds about 1/256 of a directory's shards).
    /// Temp files and foreign names are left out. Blocking.
    pub(crate) fn list_shards(&self, dir: usize, sub: u8) -> io::Result<Vec<(ShardKey, PathBuf)>> {
        let path = self.dirs[dir].join(SHARDS_DIR).join(hex::encode([sub]));
        let mut out = Vec::new();
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(key) = name.to_str().and_then(parse_shard_name) else {
                continue;
            };
            out.push((key, entry.path()));
        }
        Ok(out)
    }

    /// Reserves room for a new shard file of `bytes` against the
    /// `capacity-bytes` limit, if there is one.
    fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Option<Reservation>> {
        let Some(limit) = self.capacity_limit else {
            return Ok(None);
        };
        // Reserve only if it fits: adding first and taking it back on a
        // refusal let concurrent refused writes crowd out one that fit
        // (a spurious NoSpace while there was room). `used` is read after
        // the reservations: a finished write adds its bytes to `used`
        // before it releases its reservation (Release, see `Drop`), so a
        // write is counted twice for a moment, never missed.
        let mut used = 0;
        let reserved = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |before| {
                used = self.shard_bytes();
                let total = used.saturating_add(before).saturating_add(bytes);
                (total <= limit).then_some(before + bytes)
            });
        match reserved {
            Ok(_) => Ok(Some(Reservation {
                store: self.clone(),
                bytes,
            })),
            Err(before) => Err(StorageError::NoSpace(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "capacity-bytes limit of {limit} bytes reached ({used} used, {before} reserved, {bytes} asked)"
                ),
            ))),
        }
    }

    /// Index of the data directory a stripe's shards are written to:
    /// rendezvous hashing over directory positions, so adding a directory
    /// at the end moves only about 1/N of new placements.
    fn home_dir(&self, stripe: &StripeId) -> usize {
        if self.dirs.len() == 1 {
            return 0;
        }
        let mut best = (0usize, 0u64);
        for i in 0..self.dirs.len() {
            let mut h = blake3::Hasher::new();
            h.update(b"tessera-storage-dir");
            h.update(&stripe.0);
            h.update(&(i as u32).to_le_bytes());
            let mut score = [0u8; 8];
            score.copy_from_slice(&h.finalize().as_bytes()[..8]);
            let score = u64::from_le_bytes(score);
            if i == 0 || score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }

    /// Path of a shard in data directory `dir`.
    fn path_in(&self, dir: usize, key: &ShardKey) -> PathBuf {
        let hex = key.stripe.to_hex();
        self.dirs[dir]
            .join(SHARDS_DIR)
            .join(&hex[0..2])
            .join(format!("{hex}.{}", key.index))
    }

    /// Where a new shard is written.
    pub(crate) fn home_path(&self, key: &ShardKey) -> PathBuf {
        self.path_in(self.home_dir(&key.stripe), key)
    }

    /// Where the shard is, looking in its home directory first and then in
    /// the others (the directory list may have changed since it was written).
    /// Whether a file for `key` is in any data directory (blocking).
    pub(crate) fn has_file(&self, key: &ShardKey) -> bool {
        self.locate(key).is_some()
    }

    fn locate(&self, key: &ShardKey) -> Option<PathBuf> {
        let home = self.home_dir(&key.stripe);
        let order = std::iter::once(home).chain((0..self.dirs.len()).filter(|&i| i != home));
        order
            .map(|i| self.path_in(i, key))
            .find(|p| fs::symlink_metadata(p).is_ok())
    }

    fn lock_name(&self, key: &ShardKey) -> MutexGuard<'_, ()> {
        let slot = (key.stripe.0[15] as usize ^ (key.index as usize).wrapping_mul(31)) % NAME_LOCKS;
        self.name_locks[slot]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Starts receiving a shard of `length` bytes whose BLAKE3 is `blake3`.
    pub async fn begin_put(
        self: &Arc<Self>,
        key: ShardKey,
        length: u64,
        blake3: [u8; 32],
    ) -> Result<ShardWriter> {
        if length > self.max_shard_bytes {
            return Err(StorageError::InvalidRequest(format!(
                "shard of {length} bytes exceeds the limit of {} bytes",
                self.max_shard_bytes
            )));
        }
        let reservation = self.reserve(file_len(length))?;
        let header = ShardHeader { length, blake3 };
        // Nothing touches the disk yet: the frames are kept until the shard
        // is complete (or SPILL_BYTES of them are), then written, hashed,
        // fsynced and linked in one trip to the blocking pool.
        Ok(ShardWriter {
            store: self.clone(),
            key,
            header,
            received: 0,
            state: Some(WriterState {
                tmp: None,
                dir: 0,
                aligned: false,
                hasher: blake3::Hasher::new(),
                pending: Vec::new(),
                pending_len: 0,
                tail: Vec::new(),
            }),
            _reservation: reservation,
        })
    }

    /// Reads a shard, verified against the hash in its file header and,
    /// when given, against `expected`. A shard that fails is quarantined.
    pub async fn get(
        self: &Arc<Self>,
        key: ShardKey,
        expected: Option<[u8; 32]>,
    ) -> Result<ShardData> {
        self.read(key, ReadCheck::Hash(expected)).await
    }

    /// Reads a shard, checked as `check` says.
    ///
    /// A shard whose path and bytes are cached by the kernel is read and
    /// verified right here (see [`ShardStore::read_cached`]). Otherwise:
    /// one trip to the blocking pool when the read budget has room (open,
    /// take the budget, read and verify); only a read that has to wait for
    /// budget comes back to wait for it and reads in a second trip.
    pub async fn read(self: &Arc<Self>, key: ShardKey, check: ReadCheck) -> Result<ShardData> {
        if let Some(data) = self.read_cached(key, check) {
            return Ok(data);
        }
        let store = self.clone();
        let opened = blocking(move || {
            let (file, path, len) = store.open_shard(key)?;
            match store
                .read_budget
                .clone()
                .try_acquire_many_owned(store.budget_units(len))
            {
                Ok(budget) => {
                    let bytes = store.read_checked(key, file, &path, len, check)?;
                    Ok(Opened::Read(ShardData {
                        bytes,
                        _budget: budget,
                    }))
                }
                Err(_) => Ok(Opened::NoBudget(file, path, len)),
            }
        })
        .await?;
        let (file, path, len) = match opened {
            Opened::Read(data) => return Ok(data),
            Opened::NoBudget(file, path, len) => (file, path, len),
        };
        let budget = self
            .read_budget
            .clone()
            .acquire_many_owned(self.budget_units(len))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?;
        let store = self.clone();
        let bytes = blocking(move || store.read_checked(key, file, &path, len, check)).await?;
        Ok(ShardData {
            bytes,
            _budget: budget,
        })
    }

    /// Opens a shard and gives `send` the file, where its bytes start and
    /// how many there are, in one blocking-pool trip: for `sendfile(2)`,
    /// which sends them from the page cache without their entering this
    /// process (so no read budget is taken). Checks what a
    /// [`ReadCheck::CallerVerifies`] read checks (the header and the
    /// length; a file that fails is quarantined), not the hash: the
    /// caller hashes what it receives. The outer error is the store's
    /// (nothing was sent), the inner one `send`'s.
    pub async fn send_shard<T, F>(self: &Arc<Self>, key: ShardKey, send: F) -> Result<io::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&File, u64, u64) -> io::Result<T> + Send + 'static,
    {
        use std::os::unix::fs::FileExt;
        let store = self.clone();
        blocking(move || {
            let (file, path, size) = store.open_shard(key)?;
            let limit = store.longest_readable();
            let mut head = [0u8; HEADER_LEN];
            let checked = match file.read_exact_at(&mut head, 0) {
                Ok(()) => ShardHeader::parse_sized(&head, size).and_then(|(h, format)| {
                    if h.length > limit {
                        Err(format!(
                            "header says {} bytes, more than any shard",
                            h.length
                        ))
                    } else {
                        Ok((format.data_offset(), h.length))
                    }
                }),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Err(format!("file of {size} bytes is shorter than a header"))
                }
                Err(e) => return Err(StorageError::io(e)),
            };
            match checked {
                Ok((offset, len)) => Ok(send(&file, offset, len)),
                Err(reason) => {
                    store.quarantine(key, &path, &file, &reason, false);
                    Err(StorageError::Corrupt { shard: key, reason })
                }
            }
        })
        .await
    }

    /// Read budget units a file of `len` bytes takes.
    fn budget_units(&self, len: u64) -> u32 {
        len.div_ceil(BUDGET_UNIT).clamp(1, self.read_budget_units) as u32
    }

    /// Opens a shard file, trying its home directory first and then the
    /// others (the directory list may have changed since it was written).
    /// Blocking.
    fn open_shard(&self, key: ShardKey) -> Result<(File, PathBuf, u64)> {
        let home = self.home_dir(&key.stripe);
        let order = std::iter::once(home).chain((0..self.dirs.len()).filter(|&i| i != home));
        for i in order {
            let path = self.path_in(i, &key);
            match File::open(&path) {
                Ok(file) => {
                    let len = file.metadata().map_err(StorageError::io)?.len();
                    return Ok((file, path, len));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io(e)),
            }
        }
        Err(StorageError::NotFound { shard: key })
    }

    /// Reads and verifies a shard file. The shard bytes are hashed chunk
    /// by chunk as they are read, while they are still in the CPU cache,
    /// instead of in a second pass over the whole buffer.
    /// The whole read on the calling thread (the executor), when it cannot
    /// block: the path resolves from the dentry cache (`openat2` with
    /// `RESOLVE_CACHED`), the bytes are in the page cache (`RWF_NOWAIT`),
    /// the read budget is free, the shard is small (see [`CACHED_READ_MAX`])
    /// and it verifies. `None` otherwise:
    /// the caller takes the blocking path, which also deals with missing
    /// and corrupt shards. Saves two thread hand-offs per cached read
    /// (measured: 15% of a storage node's CPU under 1 MiB GETs).
    fn read_cached(&self, key: ShardKey, check: ReadCheck) -> Option<ShardData> {
        if !self.nowait_reads.load(Ordering::Relaxed) {
            return None;
        }
        let path = self.path_in(self.home_dir(&key.stripe), &key);
        let file = match open_cached(&path) {
            Ok(f) => f,
            Err(e) => {
                if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOENT)) {
                    self.no_nowait_reads(&e);
                }
                return None;
            }
        };
        let len = file.metadata().ok()?.len();
        let max = match check {
            ReadCheck::CallerVerifies => CACHED_READ_MAX,
            ReadCheck::Hash(_) => CACHED_HASHED_READ_MAX,
        };
        if len > max {
            return None;
        }
        let budget = self
            .read_budget
            .clone()
            .try_acquire_many_owned(self.budget_units(len))
            .ok()?;
        match self.read_verified(&file, len, check, true) {
            Ok(Ok(bytes)) => {
                self.cached_reads.fetch_add(1, Ordering::Relaxed);
                Some(ShardData {
                    bytes,
                    _budget: budget,
                })
            }
            Ok(Err(_corrupt)) => None,
            Err(e) => {
                if e.raw_os_error() != Some(libc::EAGAIN) {
                    self.no_nowait_reads(&e);
                }
                None
            }
        }
    }

    fn no_nowait_reads(&self, e: &io::Error) {
        if matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::EINVAL | libc::EPERM | libc::EOPNOTSUPP)
        ) && self.nowait_reads.swap(false, Ordering::Relaxed)
        {
            tracing::info!(error = %e, "non-blocking cached reads unavailable; every read goes through the blocking pool");
        }
    }

    fn read_checked(
        &self,
        key: ShardKey,
        file: File,
        path: &Path,
        len: u64,
        check: ReadCheck,
    ) -> Result<Bytes> {
        match self.read_verified(&file, len, check, false) {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(reason)) => {
                self.quarantine(key, path, &file, &reason, false);
                Err(StorageError::Corrupt { shard: key, reason })
            }
            Err(e) => Err(StorageError::io(e)),
        }
    }

    /// Reads a shard file of `len` bytes and checks it: the data, or why
    /// it is corrupt. `nowait`: see [`read_into_spare`].
    fn read_verified(
        &self,
        file: &File,
        len: u64,
        check: ReadCheck,
        nowait: bool,
    ) -> io::Result<std::result::Result<Bytes, String>> {
        let limit = self.longest_readable();
        // The size is known: read into a buffer of that size with one
        // read per chunk (read_to_end would start at 8 KiB reads), each
        // chunk hashed while it is still in the CPU cache. The first
        // chunk brings the header, which says where the bytes are.
        let want = len.min(file_len(limit)) as usize;
        let mut buf = Vec::with_capacity(want);
        while buf.len() < HEADER_LEN.min(want) {
            let room = READ_CHUNK.min(want - buf.len());
            if read_into_spare(file, &mut buf, room, nowait)? == 0 {
                break;
            }
        }
        let (h, format) = match ShardHeader::parse_sized(&buf, len) {
            Ok(parsed) => parsed,
            Err(reason) => return Ok(Err(reason)),
        };
        if h.length > limit {
            return Ok(Err(format!(
                "header says {} bytes, more than any shard",
                h.length
            )));
        }
        let start = format.data_offset() as usize;
        let end = start + h.length as usize;
        let mut hasher = matches!(check, ReadCheck::Hash(_)).then(blake3::Hasher::new);
        let mut hashed = start;
        loop {
            if let Some(hasher) = hasher.as_mut() {
                let upto = buf.len().min(end);
                if upto > hashed {
                    hasher.update(&buf[hashed..upto]);
                    hashed = upto;
                }
            }
            if buf.len() >= end {
                break;
            }
            let room = READ_CHUNK.min(end - buf.len());
            if read_into_spare(file, &mut buf, room, nowait)? == 0 {
                // Shorter than its size said (cut while being read).
                return Ok(Err(format!(
                    "file ended after {} of {} bytes",
                    buf.len(),
                    len
                )));
            }
        }
        if let (Some(hasher), ReadCheck::Hash(expected)) = (hasher, check) {
            let actual = hasher.finalize();
            if actual.as_bytes() != &h.blake3 {
                return Ok(Err("BLAKE3 does not match the file header".into()));
            }
            if let Some(e) = expected {
                if actual.as_bytes() != &e {
                    return Ok(Err("BLAKE3 does not match the expected hash".into()));
                }
            }
        }
        let mut bytes = Bytes::from(buf).split_off(start);
        bytes.truncate(h.length as usize);
        Ok(Ok(bytes))
    }

    /// Moves a bad shard file out of the way (if `path` still names the
    /// file that was found bad), so that it reads as missing from now on.
    /// `unreported`: the caller reports it to meta itself and marks it
    /// reported with [`ShardStore::mark_reported`] (the read path leaves the
    /// report to the gateway that read it).
    pub(crate) fn quarantine(
        &self,
        key: ShardKey,
        path: &Path,
        bad: &File,
        reason: &str,
        unreported: bool,
    ) -> Quarantine {
        let _guard = self.lock_name(&key);
        let same_file = match (bad.metadata(), fs::symlink_metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !same_file {
            // Already quarantined, deleted or replaced by a concurrent call.
            return Quarantine::Gone;
        }
        self.quarantine_checked(key, path, reason, unreported)
    }

    /// Quarantines whatever `path` names: for a file that cannot even be
    /// opened, so there is no inode to compare.
    pub(crate) fn quarantine_path(
        &self,
        key: ShardKey,
        path: &Path,
        reason: &str,
        unreported: bool,
    ) -> Quarantine {
        let _guard = self.lock_name(&key);
        if fs::symlink_metadata(path).is_err() {
            return Quarantine::Gone;
        }
        self.quarantine_checked(key, path, reason, unreported)
    }

    fn quarantine_checked(
        &self,
        key: ShardKey,
        path: &Path,
        reason: &str,
        unreported: bool,
    ) -> Quarantine {
        match self.quarantine_locked(key, path, reason, unreported) {
            Ok(dest) => Quarantine::Done(dest),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Quarantine::Gone,
            Err(e) => {
                tracing::error!(shard = %key, reason, error = %e, "could not quarantine corrupt shard");
                Quarantine::Failed
            }
        }
    }

    /// Moves `path` to its data directory's quarantine. Called with the
    /// name lock held.
    fn quarantine_locked(
        &self,
        key: ShardKey,
        path: &Path,
        reason: &str,
        unreported: bool,
    ) -> io::Result<PathBuf> {
        let dir = self
            .dirs
            .iter()
            .find(|d| path.starts_with(d))
            .ok_or_else(|| io::Error::other("shard path outside the data directories"))?;
        let qdir = dir.join(QUARANTINE_DIR);
        let dest = qdir.join(format!(
            "{}.{}.{}{}",
            key.stripe,
            key.index,
            tessera_types::now_millis(),
            if unreported { UNREPORTED } else { "" }
        ));
        let size = fs::symlink_metadata(path)?.len();
        fs::rename(path, &dest)?;
        self.forget(size);
        tracing::warn!(shard = %key, reason, dest = %dest.display(), "corrupt shard quarantined");
        durable::fsync_dir(&qdir)?;
        durable::fsync_parent(path)?;
        Ok(dest)
    }

    /// Quarantined files whose report to meta a crash may have lost.
    /// Blocking.
    pub(crate) fn unreported_quarantine(&self) -> io::Result<Vec<(ShardKey, PathBuf)>> {
        let mut out = Vec::new();
        for dir in &self.dirs {
            for entry in fs::read_dir(dir.join(QUARANTINE_DIR))? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(UNREPORTED)) else {
                    continue;
                };
                // <stripe>.<idx>.<millis>
                let Some((shard, _millis)) = stem.rsplit_once('.') else {
                    continue;
                };
                if let Some(key) = parse_shard_name(shard) {
                    out.push((key, entry.path()));
                }
            }
        }
        Ok(out)
    }

    /// Marks a quarantined file reported (drops its suffix). Blocking. Not
    /// made durable: after a crash it is reported once more, harmlessly.
    pub(crate) fn mark_reported(path: &Path) -> io::Result<()> {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Ok(());
        };
        let Some(stem) = name.strip_suffix(UNREPORTED) else {
            return Ok(());
        };
        match fs::rename(path, path.with_file_name(stem)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Deletes a shard; `false` if there was none.
    pub async fn delete(self: &Arc<Self>, key: ShardKey) -> Result<bool> {
        let store = self.clone();
        blocking(move || {
            let _guard = store.lock_name(&key);
            let mut existed = false;
            for i in 0..store.dirs.len() {
                let path = store.path_in(i, &key);
                existed |= store.remove_locked(&path)?;
            }
            Ok(existed)
        })
        .await
    }

    /// Deletes a shard only if every copy of it was last modified before
    /// `cutoff` (the orphan scan's safety age, checked again under the
    /// name lock: a put of the same shard since the scan refreshed it).
    /// `false` if nothing was deleted.
    pub(crate) async fn delete_if_older(
        self: &Arc<Self>,
        key: ShardKey,
        cutoff: SystemTime,
    ) -> Result<bool> {
        let store = self.clone();
        blocking(move || {
            let _guard = store.lock_name(&key);
            let paths: Vec<PathBuf> = (0..store.dirs.len())
                .map(|i| store.path_in(i, &key))
                .collect();
            for p in &paths {
                match fs::symlink_metadata(p) {
                    Ok(m) if m.modified().map_err(StorageError::io)? >= cutoff => return Ok(false),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io(e)),
                }
            }
            let mut deleted = false;
            for p in &paths {
                deleted |= store.remove_locked(p)?;
            }
            Ok(deleted)
        })
        .await
    }

    /// Removes one shard file, keeping the counters exact. Called with the
    /// name lock held.
    ///
    /// The unlink is not made durable (no directory fsync): a file that a
    /// crash brings back is a shard no manifest places on this node any
    /// more, which the orphan scan deletes again (or, if meta has placed
    /// the same shard here again since, the same immutable bytes); the
    /// counters are rebuilt by the scan at open. The fsync cost a device
    /// cache flush per deleted shard: under GC after mass deletes, more
    /// than half of a storage node's context switches (perf, 1 MiB PUTs
    /// while the previous run's objects were collected).
    fn remove_locked(&self, path: &Path) -> Result<bool> {
        let size = match fs::symlink_metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StorageError::io(e)),
        };
        match fs::remove_file(path) {
            Ok(()) => {
                self.forget(size);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io(e)),
        }
    }

    /// Takes a shard file of `size` bytes off the counters.
    fn forget(&self, size: u64) {
        self.shard_count.fetch_sub(1, Ordering::Relaxed);
        self.shard_bytes.fetch_sub(size, Ordering::Relaxed);
    }

    /// The header of a stored shard, `None` if there is none. A file with
    /// a malformed header or the wrong size is quarantined.
    pub async fn stat(self: &Arc<Self>, key: ShardKey) -> Result<Option<ShardHeader>> {
        let store = self.clone();
        blocking(move || {
            let Some(path) = store.locate(&key) else {
                return Ok(None);
            };
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StorageError::io(e)),
            };
            let len = file.metadata().map_err(StorageError::io)?.len();
            let mut buf = Vec::with_capacity(HEADER_LEN);
            (&mut file)
                .take(HEADER_LEN as u64)
                .read_to_end(&mut buf)
                .map_err(StorageError::io)?;
            let verdict = ShardHeader::parse_sized(&buf, len).map(|(h, _)| h);
            match verdict {
                Ok(h) => Ok(Some(h)),
                Err(reason) => {
                    store.quarantine(key, &path, &file, &reason, false);
                    Err(StorageError::Corrupt { shard: key, reason })
                }
            }
        })
        .await
    }

    /// Capacity and used bytes of the file systems holding the data
    /// directories (each file system counted once), and the shard count.
    pub async fn usage(self: &Arc<Self>) -> Result<Usage> {
        let store = self.clone();
        blocking(move || {
            let mut seen = Vec::new();
            let mut usage = Usage {
                shard_count: store.shard_count(),
                ..Usage::default()
            };
            for dir in &store.dirs {
                let dev = fs::metadata(dir).map_err(StorageError::io)?.dev();
                if seen.contains(&dev) {
                    continue;
                }
                seen.push(dev);
                let fs = tessera_observe::disk::space(dir).map_err(StorageError::io)?;
                let (cap, used) = (fs.total, fs.total.saturating_sub(fs.free));
                usage.capacity_bytes += cap;
                usage.used_bytes += used;
            }
            if let Some(limit) = store.capacity_limit {
                // The configured limit is the node's capacity as far as
                // placement is concerned: report it, and what counts
                // against it.
                usage.capacity_bytes = usage.capacity_bytes.min(limit);
                usage.used_bytes = store.shard_bytes();
            }
            Ok(usage)
        })
        .await
    }

    /// Commits a fully received temp file as the shard `key`.
    fn commit(&self, key: ShardKey, header: ShardHeader, tmp: TempFile) -> Result<()> {
        let target = self.home_path(&key);
        let _guard = self.lock_name(&key);
        // A copy in the home directory is found by the link itself
        // (`EEXIST`), which spares a lookup per shard (3-4% of a storage
        // node's CPU under 1 MiB PUTs, measured in session 23). Other
        // directories, and a named temp file (its rename would replace the
        // copy), are looked at first.
        let mut look_first = self.dirs.len() > 1 || !tmp.is_anonymous();
        let mut tmp = Some(tmp);
        let mut failpoint = true;
        for _ in 0..3 {
            if look_first {
                if let Some(existing) = self.locate(&key) {
                    match self.check_existing(key, &existing, &header)? {
                        Existing::Same => {
                            // The write is acknowledged as if it stored the
                            // shard, so the stored copy must count as new:
                            // refresh its mtime, or an orphan scan that
                            // asked meta before this write was committed
                            // could still delete it.
                            touch(&existing).map_err(StorageError::io)?;
                            return Ok(());
                        }
                        Existing::Different => return Err(StorageError::Conflict { shard: key }),
                        Existing::Gone => {}
                    }
                }
            }
            if std::mem::take(&mut failpoint) {
                tessera_observe::failpoint::hit("storage.put.before_fsync");
            }
            let file = tmp
                .take()
                .ok_or_else(|| StorageError::Task("shard commit lost its temp file".into()))?;
            match file
                .commit_new_unless_exists(&target, Some("storage.put.before_rename"))
                .map_err(StorageError::io)?
            {
                None => {
                    self.shard_count.fetch_add(1, Ordering::Relaxed);
                    self.shard_bytes
                        .fetch_add(file_len(header.length), Ordering::Relaxed);
                    return Ok(());
                }
                // A copy is there: compare it (under the name lock, so
                // nothing else changes it meanwhile), then link again if it
                // was quarantined.
                Some(back) => {
                    tmp = Some(back);
                    look_first = true;
                }
            }
        }
        Err(StorageError::Task(format!(
            "shard {key}: its name stayed taken by a copy that was neither kept nor quarantined"
        )))
    }

    /// Compares a stored shard with an incoming one of the same name. A
    /// stored copy that fails its own checksum is quarantined so the
    /// incoming one can replace it. Called with the name lock held.
    fn check_existing(
        &self,
        key: ShardKey,
        path: &Path,
        incoming: &ShardHeader,
    ) -> Result<Existing> {
        let buf = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Gone),
            Err(e) => return Err(StorageError::io(e)),
        };
        let verdict = ShardHeader::parse_sized(&buf, buf.len() as u64).and_then(|(h, format)| {
            let start = format.data_offset() as usize;
            let data = &buf[start..start + h.length as usize];
            if blake3::hash(data).as_bytes() == &h.blake3 {
                Ok(h)
            } else {
                Err("stored copy fails its checksum".to_string())
            }
        });
        match verdict {
            Ok(h) if h == *incoming => Ok(Existing::Same),
            Ok(_) => Ok(Existing::Different),
            Err(reason) => {
                self.quarantine_locked(key, path, &reason, false)
                    .map_err(StorageError::io)?;
                Ok(Existing::Gone)
            }
        }
    }
}

/// What the first trip of a read brings back.
enum Opened {
    Read(ShardData),
    /// The read budget is taken: wait for it, then read.
    NoBudget(File, PathBuf, u64),
}

enum Existing {
    Same,
    Different,
    Gone,
}

struct WriterState {
    /// The temp file, created at the first spill (or at finish).
    tmp: Option<TempFile>,
    /// The data directory it is in.
    dir: usize,
    /// Whether the file is written in whole aligned blocks (it was opened
    /// with `O_DIRECT`; stays so if a write falls back to buffered).
    aligned: bool,
    hasher: blake3::Hasher,
    /// Frames received and not yet written.
    pending: Vec<Bytes>,
    pending_len: usize,
    /// Aligned files: the bytes after the last whole block written (fewer
    /// than `DIRECT_ALIGN`), written by the next spill.
    tail: Vec<u8>,
}

/// Frames a writer keeps in memory before it writes them out: a shard of
/// up to this size costs one blocking call (create, write, hash, fsync,
/// link) instead of one per frame plus two.
pub(crate) const SPILL_BYTES: usize = 2 << 20;

/// Size of the aligned buffers of direct writes: a spill (a carried tail,
/// the header and `SPILL_BYTES` of frames) fits in one, so it is one
/// write; a larger spill (its last frame went past `SPILL_BYTES`) takes
/// more.
const WRITE_BUFFER_BYTES: usize = SPILL_BYTES + (8 << 10);
/// Aligned buffers the store keeps for reuse (more are allocated while
/// more spills run at once, and freed after).
const WRITE_BUFFERS_KEPT: usize = 8;
/// Frames are copied into the aligned buffer and hashed in pieces of this
/// size, each hashed while it is still in the CPU cache.
const COPY_CHUNK: usize = 64 << 10;

impl WriterState {
    /// Writes the pending frames to the temp file (creating it, with the
    /// header, first) and hashes them; `last`: the shard is complete, the
    /// file gets its final length. Blocking.
    fn spill(
        &mut self,
        store: &ShardStore,
        key: ShardKey,
        header: &ShardHeader,
        last: bool,
    ) -> Result<()> {
        let fresh = self.tmp.is_none();
        if fresh {
            self.create(store, key)?;
            #[cfg(test)]
            store
                .faults
                .before_write(HEADER_LEN)
                .map_err(StorageError::io)?;
        }
        // A full disk (injected) refuses the spill before it writes.
        #[cfg(test)]
        for frame in &self.pending {
            store
                .faults
                .before_write(frame.len())
                .map_err(StorageError::io)?;
        }
        if self.aligned {
            let mut buf = store.write_buffers.take().map_err(StorageError::io)?;
            let result = self.spill_aligned(store, header, fresh, last, &mut buf);
            store.write_buffers.give(buf);
            result
        } else {
            self.spill_buffered(header, fresh, last)
        }
    }

    /// Creates the temp file in the shard's home directory.
    fn create(&mut self, store: &ShardStore, key: ShardKey) -> Result<()> {
        self.dir = store.home_dir(&key.stripe);
        let target = store.path_in(self.dir, &key);
        let dir = target
            .parent()
            .ok_or_else(|| StorageError::Task("shard path has no parent".into()))?;
        let direct = match store.direct_io(self.dir) {
            false => Direct::Off,
            #[cfg(not(test))]
            true => Direct::On,
            #[cfg(test)]
            true => store.faults.direct(),
        };
        let tmp = TempFile::create_anonymous(dir, &format!("{}.{}", key.stripe, key.index), direct)
            .map_err(StorageError::io)?;
        if direct != Direct::Off && !tmp.is_direct() {
            store.direct_io_refused(self.dir, "open");
        }
        self.aligned = tmp.is_direct();
        self.tmp = Some(tmp);
        Ok(())
    }

    /// The buffered way: one `writev` of the header block (first time),
    /// the pending frames and the padding (last time).
    fn spill_buffered(&mut self, header: &ShardHeader, fresh: bool, last: bool) -> Result<()> {
        let file = self
            .tmp
            .as_mut()
            .ok_or_else(|| StorageError::Task("no temp file".into()))?
            .file()
            .map_err(StorageError::io)?;
        // The header block goes first, in the same write as the first
        // frames.
        let head = fresh.then(|| header.encode());
        let mut bufs: Vec<&[u8]> = Vec::with_capacity(self.pending.len() + 3);
        if let Some(h) = &head {
            bufs.push(h);
            bufs.push(&ZEROS[..DATA_OFFSET - HEADER_LEN]);
        }
        for frame in &self.pending {
            self.hasher.update(frame);
            bufs.push(frame);
        }
        if last {
            bufs.push(&ZEROS[..padding(header.length)]);
        }
        write_all_vectored(file, &bufs).map_err(StorageError::io)?;
        self.pending.clear();
        self.pending_len = 0;
        Ok(())
    }

    /// The direct way: the carried tail, the header block (first time)
    /// and the pending frames are copied into `buf` (and the frames
    /// hashed), and whole blocks are written; the rest is carried over or,
    /// at the `last` spill, padded with zeros to a whole block.
    fn spill_aligned(
        &mut self,
        store: &ShardStore,
        header: &ShardHeader,
        fresh: bool,
        last: bool,
        buf: &mut [u8],
    ) -> Result<()> {
        let tmp = self
            .tmp
            .as_mut()
            .ok_or_else(|| StorageError::Task("no temp file".into()))?;
        let cap = buf.len();
        // Both fit: the tail is under one block, the buffer over two.
        let mut filled = self.tail.len();
        buf[..filled].copy_from_slice(&self.tail);
        self.tail.clear();
        if fresh {
            // A fresh file: no tail yet. The pool's buffers are reused, so
            // the header block's zeros are written here.
            buf[..HEADER_LEN].copy_from_slice(&header.encode());
            buf[HEADER_LEN..DATA_OFFSET].fill(0);
            filled = DATA_OFFSET;
        }
        let mut fell_back = false;
        for frame in &self.pending {
            let mut rest: &[u8] = frame;
            while !rest.is_empty() {
                if filled == cap {
                    fell_back |= tmp.write_blocks(buf).map_err(StorageError::io)?;
                    filled = 0;
                }
                let n = rest.len().min(cap - filled).min(COPY_CHUNK);
                let (piece, more) = rest.split_at(n);
                buf[filled..filled + n].copy_from_slice(piece);
                self.hasher.update(piece);
                filled += n;
                rest = more;
            }
        }
        let mut end = filled - filled % DIRECT_ALIGN;
        if last && end < filled {
            // The last partial block, padded (the buffer has room: its size
            // is a multiple of the block, `filled` is under it).
            end += DIRECT_ALIGN;
            buf[filled..end].fill(0);
            filled = end;
        }
        if end > 0 {
            fell_back |= tmp.write_blocks(&buf[..end]).map_err(StorageError::io)?;
        }
        self.tail.extend_from_slice(&buf[end..filled]);
        if fell_back {
            store.direct_io_refused(self.dir, "write");
        }
        self.pending.clear();
        self.pending_len = 0;
        Ok(())
    }
}

/// Zeros for the header block and the padding of buffered files.
static ZEROS: [u8; DATA_OFFSET] = [0; DATA_OFFSET];

/// The zeros after `length` shard bytes, up to a whole block.
fn padding(length: u64) -> usize {
    (length.wrapping_neg() % DIRECT_ALIGN as u64) as usize
}

/// Writes every buffer, in order, with as few `writev` calls as it takes.
fn write_all_vectored(file: &mut File, bufs: &[&[u8]]) -> io::Result<()> {
    let mut i = 0;
    let mut off = 0;
    while i < bufs.len() {
        if off == bufs[i].len() {
            i += 1;
            off = 0;
            continue;
        }
        let slices: Vec<io::IoSlice<'_>> = std::iter::once(io::IoSlice::new(&bufs[i][off..]))
            .chain(bufs[i + 1..].iter().map(|b| io::IoSlice::new(b)))
            .take(1024)
            .collect();
        let mut n = match file.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 && i < bufs.len() {
            let left = bufs[i].len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// A shard being received: frames are kept in memory and written to a
/// temp file (and hashed) in batches of [`SPILL_BYTES`], the last batch by
/// [`ShardWriter::finish`], which makes it visible only if the
/// length and the hash match the header. Dropping it removes the temp file.
pub struct ShardWriter {
    store: Arc<ShardStore>,
    key: ShardKey,
    header: ShardHeader,
    received: u64,
    state: Option<WriterState>,
    _reservation: Option<Reservation>,
}

/// Room promised to a write in progress under the `capacity-bytes` limit;
/// given back on drop (the committed file counts in its place).
struct Reservation {
    store: Arc<ShardStore>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Release: whoever sees the reservation gone sees the bytes the
        // write added to `shard_bytes` before it.
        self.store.reserved.fetch_sub(self.bytes, Ordering::Release);
    }
}

impl ShardWriter {
    /// Appends one frame.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        let total = self.received.saturating_add(data.len() as u64);
        if total > self.header.length {
            return Err(StorageError::Mismatch {
                shard: self.key,
                reason: format!("more than the announced {} bytes", self.header.length),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        let state = self
            .state
            .as_mut()
            .ok_or_else(|| StorageError::Task("shard writer used after a failure".into()))?;
        state.pending_len += data.len();
        state.pending.push(data);
        self.received = total;
        if state.pending_len < SPILL_BYTES {
            return Ok(());
        }
        let mut state = self
            .state
            .take()
            .ok_or_else(|| StorageError::Task("shard writer used after a failure".into()))?;
        let (store, key, header) = (self.store.clone(), self.key, self.header);
        let state = blocking(move || {
            state.spill(&store, key, &header, false)?;
            Ok(state)
        })
        .await?;
        self.state = Some(state);
        Ok(())
    }

    /// Checks length and hash, then makes the shard durable and visible.
    pub async fn finish(mut self) -> Result<()> {
        let key = self.key;
        if self.received != self.header.length {
            return Err(StorageError::Mismatch {
                shard: key,
                reason: format!(
                    "stream ended after {} of {} bytes",
                    self.received, self.header.length
                ),
            });
        }
        let state = self
            .state
            .take()
            .ok_or_else(|| StorageError::Task("shard writer used after a failure".into()))?;
        let header = self.header;
        let store = self.store.clone();
        blocking(move || {
            let mut state = state;
            state.spill(&store, key, &header, true)?;
            if state.hasher.finalize().as_bytes() != &header.blake3 {
                return Err(StorageError::Mismatch {
                    shard: key,
                    reason: "BLAKE3 of the received bytes does not match the header".into(),
                });
            }
            let tmp = state
                .tmp
                .ok_or_else(|| StorageError::Task("shard writer has no temp file".into()))?;
            store.commit(key, header, tmp)
        })
        .await
    }
}

/// Creates the directory tree of a data directory and checks its format.
fn prepare_dir(dir: &Path) -> Result<()> {
    durable::create_dir(dir).map_err(StorageError::io)?;
    let format_path = dir.join(FORMAT_FILE);
    match fs::read_to_string(&format_path) {
        Ok(s) => {
            let version = s
                .trim()
                .strip_prefix("tessera-storage ")
                .and_then(|v| v.parse::<u32>().ok());
            if version != Some(DIR_FORMAT_VERSION) {
                return Err(StorageError::BadState {
                    path: format_path.display().to_string(),
                    reason: format!(
                        "expected \"tessera-storage {DIR_FORMAT_VERSION}\", found {:?}",
                        s.trim()
                    ),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let body = format!("tessera-storage {DIR_FORMAT_VERSION}\n");
            durable::write_file(&format_path, body.as_bytes()).map_err(StorageError::io)?;
        }
        Err(e) => return Err(StorageError::io(e)),
    }
    let shards = dir.join(SHARDS_DIR);
    durable::create_dir(&shards).map_err(StorageError::io)?;
    let mut created = false;
    for b in 0..=255u8 {
        let sub = shards.join(hex::encode([b]));
        if !sub.is_dir() {
            fs::create_dir(&sub).map_err(StorageError::io)?;
            created = true;
        }
    }
    if created {
        durable::fsync_dir(&shards).map_err(StorageError::io)?;
    }
    durable::create_dir(&dir.join(QUARANTINE_DIR)).map_err(StorageError::io)?;
    Ok(())
}

/// Counts the shard files of a data directory and their bytes, and removes
/// temp files left by a crash.
fn scan_dir(dir: &Path) -> Result<(u64, u64)> {
    let mut count = 0;
    let mut bytes = 0;
    let shards = dir.join(SHARDS_DIR);
    for b in 0..=255u8 {
        let sub = shards.join(hex::encode([b]));
        for entry in fs::read_dir(&sub).map_err(StorageError::io)? {
            let entry = entry.map_err(StorageError::io)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(file = %entry.path().display(), "removed stale temp file")
                    }
                    Err(e) => {
                        tracing::warn!(file = %entry.path().display(), error = %e, "could not remove stale temp file")
                    }
                }
            } else if parse_shard_name(name).is_some() {
                count += 1;
                bytes += entry.metadata().map_err(StorageError::io)?.len();
            }
        }
    }
    Ok((count, bytes))
}

/// Sets a file's mtime to now.
fn touch(path: &Path) -> io::Result<()> {
    match File::open(path)?.set_modified(SystemTime::now()) {
        Ok(()) => Ok(()),
        // futimens on a read-only descriptor needs ownership; fall back
        // to a descriptor opened for writing (nothing is written).
        Err(_) => fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_modified(SystemTime::now()),
    }
}

/// Parses `<32 hex digits>.<index>` back into a shard key.
pub(crate) fn parse_shard_name(name: &str) -> Option<ShardKey> {
    let (stripe, index) = name.split_once('.')?;
    if stripe.len() != 32 || index.is_empty() || !index.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(ShardKey {
        stripe: StripeId::from_hex(stripe)?,
        index: index.parse().ok()?,
    })
}

/// Loads the node id from `path`, or generates and durably stores one.
fn load_or_create_node_id(path: &Path) -> Result<NodeId> {
    match fs::read_to_string(path) {
        Ok(s) => {
            let id = s.trim();
            let valid = !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
            if !valid {
                return Err(StorageError::BadState {
                    path: path.display().to_string(),
                    reason: format!("not a node id: {:?}", s),
                });
            }
            Ok(NodeId::from(id))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = NodeId::generate();
            durable::write_file(path, format!("{id}\n").as_bytes()).map_err(StorageError::io)?;
            tracing::info!(node_id = %id, "generated a new node id");
            Ok(id)
        }
        Err(e) => Err(StorageError::io(e)),
    }
}

/// Fault injection at the store's I/O boundary, for tests.
#[cfg(test)]
pub(crate) mod faults {
    use std::io;
    use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
    use std::sync::Arc;

    use crate::durable::Direct;

    /// Shared by the store and the writers it hands out.
    #[derive(Clone)]
    pub(crate) struct Faults {
        /// Bytes that may still be written before writes fail with
        /// ENOSPC; negative = no fault armed.
        enospc_after: Arc<AtomicI64>,
        /// How a file system refuses `O_DIRECT`: 0 = it does not, 1 = at
        /// open, 2 = at every direct write.
        refuse_direct: Arc<AtomicU8>,
    }

    impl Default for Faults {
        fn default() -> Self {
            Faults {
                enospc_after: Arc::new(AtomicI64::new(-1)),
                refuse_direct: Arc::new(AtomicU8::new(0)),
            }
        }
    }

    impl Faults {
        /// Every write past the next `bytes` fails with ENOSPC.
        pub(crate) fn disk_full_after(&self, bytes: i64) {
            self.enospc_after.store(bytes, Ordering::SeqCst);
        }
        pub(crate) fn clear(&self) {
            self.enospc_after.store(-1, Ordering::SeqCst);
            self.refuse_direct.store(0, Ordering::SeqCst);
        }
        /// New shard files' file system refuses `O_DIRECT` when they are
        /// opened.
        pub(crate) fn refuse_direct_at_open(&self) {
            self.refuse_direct.store(1, Ordering::SeqCst);
        }
        /// New shard files' file system accepts `O_DIRECT` at open and
        /// refuses every direct write.
        pub(crate) fn refuse_direct_at_write(&self) {
            self.refuse_direct.store(2, Ordering::SeqCst);
        }
        /// How to ask for `O_DIRECT`, given the armed refusal.
        pub(crate) fn direct(&self) -> Direct {
            match self.refuse_direct.load(Ordering::SeqCst) {
                1 => Direct::RefusedAtOpen,
                2 => Direct::RefusedAtWrite,
                _ => Direct::On,
            }
        }
        pub(crate) fn before_write(&self, n: usize) -> io::Result<()> {
            let left = self.enospc_after.load(Ordering::SeqCst);
            if left < 0 {
                return Ok(());
            }
            if (n as i64) > left {
                self.enospc_after.store(0, Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.enospc_after.fetch_sub(n as i64, Ordering::SeqCst);
            Ok(())
        }
    }
}
