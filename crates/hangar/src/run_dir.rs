//! Where machines' resources files (database credentials and secrets,
//! unsealed) are written: a directory on tmpfs, so they are never at rest on
//! a disk. `/run` is tmpfs on most hosts but not all (seen: ext4 in a
//! container), so `/run/hangar` is made a tmpfs of its own when it is not
//! one already.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tracing::warn;

/// The kernel's magic number for tmpfs in `statfs.f_type`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Size of the tmpfs Hangar mounts at `/run/hangar`: resources files are a
/// few KiB each.
const TMPFS_OPTIONS: &str = "mode=0711,size=64m";

/// `/run/hangar/<tag of the data dir>` on tmpfs (one directory per data
/// dir, so several hangars on one host stay apart); under the data dir when
/// that cannot be had, said loudly: then credentials are on disk.
pub fn run_dir(data: &Path) -> PathBuf {
    use sha2::Digest;
    let tag = hex::encode(&sha2::Sha256::digest(data.as_os_str().as_encoded_bytes())[..6]);
    let root = Path::new("/run/hangar");
    let fallback = data.join("run");
    if let Err(e) = ensure_tmpfs(root) {
        warn!(
            "cannot keep machines' resources files off disk ({e}); they go to {} instead",
            fallback.display()
        );
        return fallback;
    }
    let dir = root.join(tag);
    match std::fs::create_dir_all(&dir) {
        Ok(()) => dir,
        Err(e) => {
            warn!(
                "cannot use {} ({e}): machines' resources files go to {} (on disk)",
                dir.display(),
                fallback.display()
            );
            fallback
        }
    }
}

/// True when `path` is on tmpfs.
pub fn is_tmpfs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes only into `buf`, a valid zeroed struct.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    r == 0 && buf.f_type as i64 == TMPFS_MAGIC
}

/// Makes `root` a tmpfs unless it is one. Serialised across processes by a
/// lock file, so two hangars starting at once mount it once.
fn ensure_tmpfs(root: &Path) -> Result<(), String> {
    std::fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    if is_tmpfs(root) {
        return Ok(());
    }
    let lock_path = root.with_extension("lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("creating {}: {e}", lock_path.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function owns; released on drop.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!("locking {}", lock_path.display()));
    }
    if is_tmpfs(root) {
        return Ok(());
    }
    let target = CString::new(root.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let (fstype, options) = (
        c"tmpfs",
        CString::new(TMPFS_OPTIONS).map_err(|e| e.to_string())?,
    );
    // SAFETY: mount(2) with valid NUL-terminated strings.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            options.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(format!(
            "{} is not tmpfs and mounting one there failed: {}",
            root.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
