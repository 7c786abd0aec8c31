//! Space of the file system holding a path (`statvfs`), for the nodes'
//! capacity figures and the meta node's space guard.

use std::io;
use std::path::Path;

/// Sizes of a file system, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    /// Free blocks, including those reserved for root.
    pub free: u64,
    /// Free blocks an unprivileged process may use.
    pub available: u64,
}

/// The space of the file system holding `path`.
// The statvfs field types differ between platforms (u32 on some 32-bit
// targets): the casts are needed there.
#[allow(clippy::unnecessary_cast)]
pub fn space(path: &Path) -> io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated string and `st` points to
    // writable memory of the right type for the duration of the call.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize as u64;
    Ok(Space {
        total: (st.f_blocks as u64).saturating_mul(frsize),
        free: (st.f_bfree as u64).saturating_mul(frsize),
        available: (st.f_bavail as u64).saturating_mul(frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_file_system() {
        let s = space(Path::new("/")).unwrap();
        assert!(s.total > 0 && s.available <= s.free && s.free <= s.total);
        assert!(space(Path::new("/no/such/dir/here")).is_err());
    }
}
