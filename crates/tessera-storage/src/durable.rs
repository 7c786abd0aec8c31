//! Crash-safe file writes.
//!
//! Small files (format, node id, scrub position) are written under a temp
//! name in the target's directory, fsynced, renamed over the target, and
//! the directory is fsynced; a drop guard removes the temp file on every
//! path that does not commit it.
//!
//! Shard files are written to an anonymous file (`O_TMPFILE`) in the
//! target's directory, `fdatasync`ed, linked under their name (never over
//! an existing one) and the directory is fsynced. An anonymous file that
//! is never linked vanishes when it is closed or, after a crash, when the
//! file system is mounted: there is no name to create, rename or clean
//! up. Where `O_TMPFILE` is not supported (or `/proc` is missing), shard
//! files fall back to the temp-name scheme.
//!
//! Shard files are opened with `O_DIRECT` as well (unless the store asks
//! for buffered writes): their bytes go from an aligned buffer straight to
//! the disk instead of being copied into fresh page-cache pages (a large
//! share of a storage node's CPU on a put) that would then push hot data
//! out of the cache. Every direct write must start at a file offset, from
//! a buffer address, and have a length that are multiples of
//! [`DIRECT_ALIGN`] ([`AlignedBuf`], [`TempFile::write_blocks`]); shard
//! files are laid out in whole blocks for that (`store.rs`). A file
//! system that refuses `O_DIRECT` (`EINVAL` at open, or at a write) gets
//! a buffered file instead: [`TempFile::is_direct`] tells the caller,
//! which stops asking for that directory.

use std::alloc::Layout;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Prefix of every temp file; startup removes leftovers from a crash.
pub(crate) const TEMP_PREFIX: &str = ".tmp.";

/// Alignment of `O_DIRECT` writes (buffer address, file offset, length):
/// a multiple of the logical block size of every common disk (512 or
/// 4096 bytes) and of the page size.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// Whether a shard file is asked to be opened with `O_DIRECT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direct {
    /// Buffered writes.
    Off,
    /// `O_DIRECT`, unless the file system refuses it.
    On,
    /// `O_DIRECT`, and the file system refuses it at open as one without
    /// support does (test only: the machine's file systems all accept it).
    #[cfg(test)]
    RefusedAtOpen,
    /// `O_DIRECT` is accepted at open and every direct write fails with
    /// `EINVAL` (test only).
    #[cfg(test)]
    RefusedAtWrite,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Set once a data directory refused `O_TMPFILE`: from then on every
/// shard file takes the temp-name path (a node's directories are usually
/// on one kind of file system; asking again each time would cost a failed
/// open per shard).
static NO_TMPFILE: AtomicBool = AtomicBool::new(false);

/// Whether `/proc/self/fd` exists, which linking an anonymous file
/// without `CAP_DAC_READ_SEARCH` needs.
fn proc_fd_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

/// A file being written that becomes visible under its final name only
/// when committed; until then it is removed (or, when anonymous, never
/// named) on drop.
pub(crate) struct TempFile {
    /// The temp name; `None` for an anonymous (`O_TMPFILE`) file, and once
    /// the name was renamed to the target.
    path: Option<PathBuf>,
    file: Option<File>,
    /// Whether the file descriptor has `O_DIRECT`.
    direct: bool,
    /// Direct writes fail with `EINVAL` (test only).
    #[cfg(test)]
    refuse_direct_writes: bool,
}

impl TempFile {
    /// Creates a fresh temp file in `dir`; `stem` names what it will become
    /// (for humans reading a directory listing after a crash).
    pub(crate) fn create(dir: &Path, stem: &str) -> io::Result<TempFile> {
        Self::create_named(dir, stem, Direct::Off)
    }

    fn create_named(dir: &Path, stem: &str, direct: Direct) -> io::Result<TempFile> {
        let mut want_direct = direct != Direct::Off;
        loop {
            let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
            let name = format!("{TEMP_PREFIX}{stem}.{}.{seq}", std::process::id());
            let path = dir.join(name);
            match open_new(&path, false, want_direct, direct) {
                Ok(file) => return Ok(TempFile::new(Some(path), file, want_direct, direct)),
                // A leftover from an earlier process with the same pid.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                // O_DIRECT refused. The kernel checks it after creating
                // the name: remove it (ours: the name was new) and ask
                // again for a buffered file.
                Err(e) if want_direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    if let Err(e) = fs::remove_file(&path) {
                        if e.kind() != io::ErrorKind::NotFound {
                            return Err(e);
                        }
                    }
                    want_direct = false;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn new(path: Option<PathBuf>, file: File, is_direct: bool, asked: Direct) -> TempFile {
        #[cfg(not(test))]
        let _ = asked;
        TempFile {
            path,
            file: Some(file),
            direct: is_direct,
            #[cfg(test)]
            refuse_direct_writes: asked == Direct::RefusedAtWrite,
        }
    }

    /// Creates an anonymous file in `dir` (`O_TMPFILE`), or a named temp
    /// file where that is not supported; with `O_DIRECT` if `direct` asks
    /// for it and the file system accepts it ([`Self::is_direct`]).
    /// Commit it with [`Self::commit_new_unless_exists`]: it never
    /// replaces an existing file.
    pub(crate) fn create_anonymous(dir: &Path, stem: &str, direct: Direct) -> io::Result<TempFile> {
        if !NO_TMPFILE.load(Ordering::Relaxed) && proc_fd_available() {
            let mut want_direct = direct != Direct::Off;
            loop {
                match open_new(dir, true, want_direct, direct) {
                    Ok(file) => return Ok(TempFile::new(None, file, want_direct, direct)),
                    // EINVAL is also how some kernels refuse O_TMPFILE: ask
                    // again without O_DIRECT to tell which one it was.
                    Err(e) if want_direct && e.raw_os_error() == Some(libc::EINVAL) => {
                        want_direct = false;
                    }
                    // Kernels and file systems without O_TMPFILE answer with
                    // one of these (an old kernel sees O_DIRECTORY and a
                    // directory opened for writing).
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                        ) =>
                    {
                        tracing::info!(dir = %dir.display(), error = %e, "no O_TMPFILE: shard files use temp names");
                        NO_TMPFILE.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Self::create_named(dir, stem, direct)
    }

    /// Whether the file is written with `O_DIRECT`: writes must then be
    /// aligned ([`Self::write_blocks`]). It may stop being so at a write.
    pub(crate) fn is_direct(&self) -> bool {
        self.direct
    }

    /// Writes all of `buf` at the file position. While the file is direct,
    /// the position, `buf`'s address and its length must be multiples of
    /// [`DIRECT_ALIGN`]. If the file system refuses a direct write
    /// (`EINVAL`), the file carries on buffered and the write is repeated;
    /// the answer is `true` when that happened in this call.
    pub(crate) fn write_blocks(&mut self, buf: &[u8]) -> io::Result<bool> {
        let mut fell_back = false;
        let mut done = 0;
        while done < buf.len() {
            #[cfg(test)]
            let refused = self.direct && self.refuse_direct_writes;
            #[cfg(not(test))]
            let refused = false;
            let r = if refused {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                self.file()?.write(&buf[done..])
            };
            match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    self.set_buffered()?;
                    fell_back = true;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(fell_back)
    }

    /// Drops `O_DIRECT` from the file descriptor.
    fn set_buffered(&mut self) -> io::Result<()> {
        let fd = self.file()?.as_raw_fd();
        // SAFETY: `fd` is the open descriptor of `self.file`; F_GETFL
        // takes no argument.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above; F_SETFL takes an int of flags.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.direct = false;
        Ok(())
    }

    pub(crate) fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("temp file already closed"))
    }

    /// Whether this file has no name (`O_TMPFILE`).
    pub(crate) fn is_anonymous(&self) -> bool {
        self.path.is_none()
    }

    #[cfg(test)]
    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Makes the written bytes durable under `target` (in the same
    /// directory), replacing what is there: fsync the file, rename it,
    /// fsync the directory.
    pub(crate) fn commit(mut self, target: &Path) -> io::Result<()> {
        let file = self.take_file()?;
        file.sync_all()?;
        drop(file);
        self.rename_to(target)?;
        fsync_parent(target)
    }

    /// Makes the written bytes durable under `target` (in the same
    /// directory), which must not exist: `fdatasync` the file (its data
    /// and the size needed to read it back; timestamps need not survive),
    /// give it the name, fsync the directory. `failpoint` is hit between
    /// the data sync and the naming (crash-consistency tests).
    #[cfg(test)]
    pub(crate) fn commit_new(self, target: &Path, failpoint: Option<&str>) -> io::Result<()> {
        match self.commit_new_unless_exists(target, failpoint)? {
            None => Ok(()),
            Some(_) => Err(io::ErrorKind::AlreadyExists.into()),
        }
    }

    /// [`TempFile::commit_new`] for a caller that has not looked whether
    /// `target` exists (a lookup of a name not there costs as much as the
    /// link, which looks anyway): when it does, the file comes back with
    /// its data synced and without a name, for the caller to compare and
    /// try again. Only an anonymous file can tell; a named one is renamed,
    /// which replaces `target`.
    pub(crate) fn commit_new_unless_exists(
        mut self,
        target: &Path,
        failpoint: Option<&str>,
    ) -> io::Result<Option<TempFile>> {
        self.file()?.sync_data()?;
        if let Some(name) = failpoint {
            tessera_observe::failpoint::hit(name);
        }
        if self.path.is_some() {
            drop(self.take_file()?);
            self.rename_to(target)?;
        } else {
            match link_anonymous(self.file()?, target) {
                Ok(()) => drop(self.take_file()?),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Some(self)),
                Err(e) => return Err(e),
            }
        }
        fsync_parent(target)?;
        Ok(None)
    }

    fn take_file(&mut self) -> io::Result<File> {
        self.file
            .take()
            .ok_or_else(|| io::Error::other("temp file already closed"))
    }

    fn rename_to(&mut self, target: &Path) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Err(io::Error::other("an anonymous file cannot be renamed"));
        };
        fs::rename(path, target)?;
        // The name now belongs to `target`: nothing left to clean up, even
        // if the directory fsync that follows fails.
        self.path = None;
        Ok(())
    }
}

/// Opens a new file for writing: an anonymous one in the directory
/// `path` if `tmpfile`, else the new name `path`; with `O_DIRECT` if
/// `direct`. `asked` simulates a file system that refuses it (tests).
fn open_new(path: &Path, tmpfile: bool, direct: bool, asked: Direct) -> io::Result<File> {
    let options = |direct: bool| {
        let mut opts = OpenOptions::new();
        opts.write(true);
        let mut flags = if direct { libc::O_DIRECT } else { 0 };
        if tmpfile {
            opts.mode(0o644);
            flags |= libc::O_TMPFILE;
        } else {
            opts.create_new(true);
        }
        opts.custom_flags(flags);
        opts
    };
    #[cfg(test)]
    if direct && asked == Direct::RefusedAtOpen {
        // As the kernel does: the file is created, then refused.
        drop(options(false).open(path)?);
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    #[cfg(not(test))]
    let _ = asked;
    options(direct).open(path)
}

/// A zeroed heap buffer whose address is a multiple of [`DIRECT_ALIGN`],
/// as `O_DIRECT` writes need.
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: an `AlignedBuf` owns its allocation alone (like a `Box<[u8]>`);
// nothing else points into it.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` bytes (rounded up to a multiple of [`DIRECT_ALIGN`]).
    pub(crate) fn new(len: usize) -> io::Result<AlignedBuf> {
        let len = len.max(1).next_multiple_of(DIRECT_ALIGN);
        let layout = Layout::from_size_align(len, DIRECT_ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("could not allocate a {len}-byte write buffer"),
            )
        })?;
        Ok(AlignedBuf { ptr, layout })
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised (zeroed,
        // then only written through `&mut [u8]`) bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A few [`AlignedBuf`]s of one size kept for reuse: a fresh buffer's
/// pages cost a fault and a clear at first touch, a reused one's don't.
/// Takes beyond what it keeps allocate; gives beyond it free.
pub(crate) struct BufPool {
    free: Mutex<Vec<AlignedBuf>>,
    keep: usize,
    buf_len: usize,
}

impl BufPool {
    pub(crate) fn new(keep: usize, buf_len: usize) -> BufPool {
        BufPool {
            free: Mutex::new(Vec::with_capacity(keep)),
            keep,
            buf_len: buf_len.next_multiple_of(DIRECT_ALIGN),
        }
    }

    pub(crate) fn take(&self) -> io::Result<AlignedBuf> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match reused {
            Some(b) => Ok(b),
            None => AlignedBuf::new(self.buf_len),
        }
    }

    pub(crate) fn give(&self, buf: AlignedBuf) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < self.keep && buf.len() == self.buf_len {
            free.push(buf);
        }
    }

    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Gives an `O_TMPFILE` file the name `target` (fails with `EEXIST` if
/// the name is taken).
fn link_anonymous(file: &File, target: &Path) -> io::Result<()> {
    let src = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::other("fd path contains a NUL byte"))?;
    let dst = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: both are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for TempFile {
    fn drop(&mut self) {
        drop(self.file.take());
        if let Some(path) = &self.path {
            if let Err(e) = fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove temp file");
                }
            }
        }
    }
}

/// Fsyncs a directory, making renames and creations in it durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Fsyncs the directory holding `path`.
pub(crate) fn fsync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => fsync_dir(p),
        _ => fsync_dir(Path::new(".")),
    }
}

/// Writes a small file durably (all or nothing).
pub(crate) fn write_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file")
        .to_string();
    let mut tmp = TempFile::create(dir, &stem)?;
    tmp.file()?.write_all(contents)?;
    tmp.commit(path)
}

/// Creates `dir` (and parents) and makes its entry durable in its parent.
pub(crate) fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    fsync_parent(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_temp_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut tmp = TempFile::create(dir.path(), "x").unwrap();
        tmp.file().unwrap().write_all(b"abc").unwrap();
        let path = tmp.path().unwrap().to_path_buf();
        assert!(path.exists());
        drop(tmp);
        assert!(!path.exists());
    }

    #[test]
    fn committed_temp_file_is_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        write_file(&target, b"hello").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn anonymous_file_is_invisible_until_committed_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("s");
        let mut tmp = TempFile::create_anonymous(dir.path(), "s", Direct::Off).unwrap();
        // ext4, xfs and tmpfs all support O_TMPFILE: the fallback would
        // hide a regression here.
        assert!(tmp.is_anonymous());
        tmp.file().unwrap().write_all(b"first").unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        tmp.commit_new(&target, None).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"first");

        let mut second = TempFile::create_anonymous(dir.path(), "s", Direct::Off).unwrap();
        second.file().unwrap().write_all(b"second").unwrap();
        let err = second.commit_new(&target, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&target).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_taken_name_hands_the_file_back_for_another_try() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("s");
        fs::write(&target, b"old").unwrap();
        let mut tmp = TempFile::create_anonymous(dir.path(), "s", Direct::Off).unwrap();
        tmp.file().unwrap().write_all(b"new").unwrap();
        let back = tmp
            .commit_new_unless_exists(&target, None)
            .unwrap()
            .expect("the name is taken: the file comes back");
        assert!(back.is_anonymous());
        assert_eq!(fs::read(&target).unwrap(), b"old");

        fs::remove_file(&target).unwrap();
        assert!(back
            .commit_new_unless_exists(&target, None)
            .unwrap()
            .is_none());
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_anonymous_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut tmp = TempFile::create_anonymous(dir.path(), "s", Direct::Off).unwrap();
        tmp.file().unwrap().write_all(b"abc").unwrap();
        drop(tmp);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn named_fallback_commits_as_new_too() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("s");
        let mut tmp = TempFile::create(dir.path(), "s").unwrap();
        tmp.file().unwrap().write_all(b"abc").unwrap();
        tmp.commit_new(&target, None).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"abc");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn fd_has_o_direct(tmp: &mut TempFile) -> bool {
        let fd = tmp.file().unwrap().as_raw_fd();
        // SAFETY: `fd` is open; F_GETFL takes no argument.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert!(flags >= 0);
        flags & libc::O_DIRECT != 0
    }

    #[test]
    fn direct_file_takes_aligned_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("s");
        let mut tmp = TempFile::create_anonymous(dir.path(), "s", Direct::On).unwrap();
        // ext4, xfs, btrfs and tmpfs (since Linux 6.6) all take O_DIRECT.
        assert!(tmp.is_direct(), "the test directory refused O_DIRECT");
        assert!(fd_has_o_direct(&mut tmp));
        let mut buf = AlignedBuf::new(2 * DIRECT_ALIGN).unwrap();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        assert!(!tmp.write_blocks(&buf).unwrap(), "fell back to buffered");
        assert!(!tmp.write_blocks(&buf[..DIRECT_ALIGN]).unwrap());
        assert!(tmp.is_direct());
        assert!(fd_has_o_direct(&mut tmp));
        tmp.commit_new(&target, None).unwrap();
        let mut want = buf.to_vec();
        want.extend_from_slice(&buf[..DIRECT_ALIGN]);
        assert_eq!(fs::read(&target).unwrap(), want);
        assert_eq!(fs::metadata(&target).unwrap().len(), 3 * 4096);
    }

    #[test]
    fn unaligned_direct_write_goes_on_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("s");
        let mut tmp = TempFile::create_anonymous(dir.path(), "s", Direct::On).unwrap();
        assert!(tmp.is_direct(), "the test directory refused O_DIRECT");
        // ext4 refuses an unaligned direct write (EINVAL): the file
        // carries on buffered instead of failing (tmpfs takes it as is).
        tmp.write_blocks(b"xyz").unwrap();
        tmp.commit_new(&target, None).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"xyz");
    }

    #[test]
    fn refused_direct_open_gives_a_buffered_file_and_leaves_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let anon = TempFile::create_anonymous(dir.path(), "a", Direct::RefusedAtOpen).unwrap();
        assert!(anon.is_anonymous());
        assert!(!anon.is_direct());
        let mut named = TempFile::create_named(dir.path(), "n", Direct::RefusedAtOpen).unwrap();
        assert!(!named.is_direct());
        assert!(!fd_has_o_direct(&mut named));
        // The refused name was removed: only the buffered file's is left.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        named.write_blocks(b"abc").unwrap();
        let target = dir.path().join("n");
        named.commit_new(&target, None).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"abc");
        drop(anon);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refused_direct_write_goes_on_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let mut tmp = TempFile::create_anonymous(dir.path(), "s", Direct::RefusedAtWrite).unwrap();
        assert!(tmp.is_direct(), "the test directory refused O_DIRECT");
        let buf = AlignedBuf::new(DIRECT_ALIGN).unwrap();
        assert!(tmp.write_blocks(&buf).unwrap());
        assert!(!tmp.is_direct());
        assert!(!fd_has_o_direct(&mut tmp));
        assert!(!tmp.write_blocks(b"tail").unwrap());
        let target = dir.path().join("s");
        tmp.commit_new(&target, None).unwrap();
        assert_eq!(
            fs::metadata(&target).unwrap().len(),
            DIRECT_ALIGN as u64 + 4
        );
    }

    #[test]
    fn aligned_buffers_are_aligned_zeroed_and_pooled() {
        let b = AlignedBuf::new(10_000).unwrap();
        assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0);
        assert_eq!(b.len(), 3 * DIRECT_ALIGN);
        assert!(b.iter().all(|&x| x == 0));
        let pool = BufPool::new(2, 10_000);
        let taken: Vec<_> = (0..3).map(|_| pool.take().unwrap()).collect();
        assert!(taken.iter().all(|b| b.len() == 3 * DIRECT_ALIGN));
        for b in taken {
            pool.give(b);
        }
        assert_eq!(pool.kept(), 2);
        // A buffer of another size is not kept.
        pool.take().unwrap();
        pool.give(AlignedBuf::new(1).unwrap());
        assert_eq!(pool.kept(), 1);
    }
}
