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

/// The file in a run dir naming the data dir it belongs to, so a later
/// start can tell a dir whose data dir is gone.
const OWNER_FILE: &str = "data-dir";

/// What is reached through a view: the unpacked images (by machines, as
/// their user-namespaced uids) and the dirs of Hangar's own servers (by
/// the unprivileged users they run as).
pub const VIEWS: &[&str] = &["rootfs", "postgres", "redis", "nats"];

/// Makes `source` (a dir inside the private data dir) reachable at
/// `/run/hangar/<kind>/<tag>`, through a bind mount.
///
/// Why: the data dir is 0700, but some of what is in it is opened by path
/// by other users: a machine in a user namespace runs as an unprivileged
/// host uid, and runc looks its root filesystem up as that uid; Postgres,
/// Redis and NATS run as their own users. Every directory above such a
/// path must be passable by them. Through the mount, only
/// `/run/hangar/<kind>` (0711, on tmpfs) lies above it. The run dir stays
/// 0700 (runc hands machines their resources files by descriptor). An
/// existing mount of the same directory is kept (a restart); a stale one
/// is replaced.
pub fn expose(source: &Path, kind: &str, run: &Path, data: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (Some(root), Some(tag)) = (run.parent(), run.file_name()) else {
        return Err(format!("{} has no parent", run.display()));
    };
    if !VIEWS.contains(&kind) {
        return Err(format!("{kind} is not a view the start collects"));
    }
    let views = root.join(kind);
    let view = views.join(tag);
    let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", view.display());
    std::fs::write(run.join(OWNER_FILE), data.as_os_str().as_bytes())
        .map_err(|e| err("recording the owner of", e))?;
    std::fs::create_dir_all(source).map_err(|e| err("creating the source of", e))?;
    std::fs::create_dir_all(&view).map_err(|e| err("creating", e))?;
    std::fs::set_permissions(&views, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| err("opening the way to", e))?;
    let source_meta = std::fs::metadata(source).map_err(|e| err("reading the source of", e))?;
    let seen = std::fs::metadata(&view).map_err(|e| err("reading", e))?;
    if (seen.dev(), seen.ino()) == (source_meta.dev(), source_meta.ino()) {
        return Ok(view);
    }
    if is_mount_point(&view) {
        unmount(&view).map_err(|e| err("unmounting a stale", e))?;
    }
    let src = CString::new(source.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let dst = CString::new(view.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: mount(2) with valid NUL-terminated paths and no data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(err("bind-mounting", std::io::Error::last_os_error()));
    }
    Ok(view)
}

/// [`expose`] for the unpacked images, which machines only pass through.
pub fn expose_rootfs(images_rootfs: &Path, run: &Path, data: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(images_rootfs).map_err(|e| e.to_string())?;
    std::fs::set_permissions(images_rootfs, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("opening {} for machines: {e}", images_rootfs.display()))?;
    expose(images_rootfs, "rootfs", run, data)
}

/// Removes the run dirs (and their views' mounts) of data dirs that no
/// longer exist: a test's or a removed install's. A mount that cannot be
/// taken down is left, and its dir with it: nothing is ever removed through
/// a mount.
pub fn collect_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        let Ok(owner) = std::fs::read(dir.join(OWNER_FILE)) else {
            continue;
        };
        if Path::new(std::ffi::OsStr::from_bytes(&owner)).exists() {
            continue;
        }
        let Some(tag) = dir.file_name() else {
            continue;
        };
        let mut held = false;
        for kind in VIEWS {
            let view = root.join(kind).join(tag);
            if is_mount_point(&view) {
                let _ = unmount(&view);
            }
            if is_mount_point(&view) {
                warn!("cannot unmount {}: left in place", view.display());
                held = true;
                continue;
            }
            let _ = std::fs::remove_dir(&view);
        }
        if held {
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            warn!("cannot remove the stale run dir {}: {e}", dir.display());
        }
    }
}

/// True when something is mounted at `path` (by the mount table: a bind
/// mount of the same file system has the same device as its parent).
fn is_mount_point(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // The table escapes space, tab, newline and backslash as octal.
    let mut want = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => want.push_str(&format!("\\{:03o}", c as u32)),
            c => want.push(c),
        }
    }
    table
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Detaches the mount at `path`.
fn unmount(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: umount2(2) with a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mounts_at(path: &Path) -> usize {
        let all = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let at = path.display().to_string();
        all.lines()
            .filter(|l| l.split_whitespace().nth(4) == Some(at.as_str()))
            .count()
    }

    #[test]
    fn images_are_seen_through_one_mount_that_goes_with_its_data_dir() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this test needs root (it bind-mounts): run it as root, as CI does"
        );
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("tag1");
        std::fs::create_dir(&run).unwrap();
        let data = tempfile::tempdir().unwrap();
        let images = data.path().join("images/rootfs");
        std::fs::create_dir_all(images.join("abc")).unwrap();
        std::fs::write(images.join("abc/marker"), b"seen").unwrap();

        let view = expose_rootfs(&images, &run, data.path()).unwrap();
        assert_eq!(view, root.path().join("rootfs/tag1"));
        assert_eq!(std::fs::read(view.join("abc/marker")).unwrap(), b"seen");
        // What is unpacked later is seen too: it is the same directory.
        std::fs::create_dir(images.join("def")).unwrap();
        assert!(view.join("def").is_dir());
        // A restart keeps the mount it finds rather than stacking another.
        assert_eq!(expose_rootfs(&images, &run, data.path()).unwrap(), view);
        assert_eq!(mounts_at(&view), 1, "one mount");
        let mode = std::fs::metadata(root.path().join("rootfs"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o711);

        // While the data dir exists, its run dir and mount stay.
        collect_stale(root.path());
        assert_eq!(mounts_at(&view), 1);
        // Once it is gone (here: moved away, so its files still exist),
        // both go, and nothing is removed through the mount.
        let moved = root.path().join("moved");
        std::fs::rename(data.path(), &moved).unwrap();
        collect_stale(root.path());
        assert_eq!(mounts_at(&view), 0, "the stale mount is taken down");
        assert_eq!(
            std::fs::read(moved.join("images/rootfs/abc/marker")).unwrap(),
            b"seen",
            "the images are untouched"
        );
        assert!(!view.exists() && !run.exists());
    }
}
