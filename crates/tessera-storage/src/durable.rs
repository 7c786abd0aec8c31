//! Crash-safe file writes: temp file in the target's directory, fsync,
//! rename, fsync the directory. A temp file is removed by its drop guard on
//! every path that does not commit it, so a failed or abandoned write
//! leaves nothing behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every temp file; startup removes leftovers from a crash.
pub(crate) const TEMP_PREFIX: &str = ".tmp.";

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A file being written under a temporary name, removed on drop unless
/// committed.
pub(crate) struct TempFile {
    path: PathBuf,
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
                        path,
                        file: Some(file),
                    })
                }
                // A leftover from an earlier process with the same pid.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("temp file already closed"))
    }

    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the written bytes durable under `target` (in the same
    /// directory): fsync the file, rename it, fsync the directory.
    pub(crate) fn commit(self, target: &Path) -> io::Result<()> {
        self.commit_at(target, None)
    }

    /// [`Self::commit`] with a crash failpoint between the file fsync and
    /// the rename (crash-consistency tests).
    pub(crate) fn commit_at(mut self, target: &Path, failpoint: Option<&str>) -> io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("temp file already closed"))?;
        file.sync_all()?;
        drop(file);
        if let Some(name) = failpoint {
            tessera_observe::failpoint::hit(name);
        }
        fs::rename(&self.path, target)?;
        // The name now belongs to `target`: nothing left to clean up, even
        // if the directory fsync below fails.
        self.path = PathBuf::new();
        fsync_parent(target)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.path.as_os_str().is_empty() {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not remove temp file");
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
        let path = tmp.path().to_path_buf();
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
}
