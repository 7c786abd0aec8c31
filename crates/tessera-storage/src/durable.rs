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

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// Prefix of every temp file; startup removes leftovers from a crash.
pub(crate) const TEMP_PREFIX: &str = ".tmp.";

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
}

impl TempFile {
    /// Creates a fresh temp file in `dir`; `stem` names what it will become
    /// (for humans reading a directory listing after a crash).
    pub(crate) fn create(dir: &Path, stem: &str) -> io::Result<TempFile> {
        loop {
            let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
            let name = format!("{TEMP_PREFIX}{stem}.{}.{seq}", std::process::id());
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    return Ok(TempFile {
                        path: Some(path),
                        file: Some(file),
                    })
                }
                // A leftover from an earlier process with the same pid.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates an anonymous file in `dir` (`O_TMPFILE`), or a named temp
    /// file where that is not supported. Commit it with
    /// [`Self::commit_new`]: it never replaces an existing file.
    pub(crate) fn create_anonymous(dir: &Path, stem: &str) -> io::Result<TempFile> {
        if !NO_TMPFILE.load(Ordering::Relaxed) && proc_fd_available() {
            match OpenOptions::new()
                .write(true)
                .mode(0o644)
                .custom_flags(libc::O_TMPFILE)
                .open(dir)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path: None,
                        file: Some(file),
                    })
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
                }
                Err(e) => return Err(e),
            }
        }
        Self::create(dir, stem)
    }

    pub(crate) fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("temp file already closed"))
    }

    /// Whether this file has no name (`O_TMPFILE`).
    #[cfg(test)]
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
    pub(crate) fn commit_new(mut self, target: &Path, failpoint: Option<&str>) -> io::Result<()> {
        let file = self.take_file()?;
        file.sync_data()?;
        if let Some(name) = failpoint {
            tessera_observe::failpoint::hit(name);
        }
        if self.path.is_some() {
            drop(file);
            self.rename_to(target)?;
        } else {
            link_anonymous(&file, target)?;
        }
        fsync_parent(target)
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
        let mut tmp = TempFile::create_anonymous(dir.path(), "s").unwrap();
        // ext4, xfs and tmpfs all support O_TMPFILE: the fallback would
        // hide a regression here.
        assert!(tmp.is_anonymous());
        tmp.file().unwrap().write_all(b"first").unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        tmp.commit_new(&target, None).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"first");

        let mut second = TempFile::create_anonymous(dir.path(), "s").unwrap();
        second.file().unwrap().write_all(b"second").unwrap();
        let err = second.commit_new(&target, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&target).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropped_anonymous_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut tmp = TempFile::create_anonymous(dir.path(), "s").unwrap();
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
}
