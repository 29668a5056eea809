//! Opening a file of an unpacked tree without ever leaving the tree.
//!
//! The unpacker writes nothing outside its destination, but what it wrote
//! is the uploader's: symlinks may point anywhere (image layers keep them
//! as they are) or chain through each other. Every later reader of an
//! unpacked tree opens through [`open_beneath`], so the kernel, not a
//! lexical check, keeps the resolution inside the tree.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// Flags every open of a tree's file is made with: `O_NONBLOCK` so a FIFO
/// cannot hang the reader (only regular files are returned anyway).
const FILE_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK;

/// Opens the regular file `rel` of the tree at `root` for reading, never
/// resolving outside `root`: with `openat2(2)` and `RESOLVE_BENEATH |
/// RESOLVE_NO_MAGICLINKS` (symlinks inside the tree are followed only
/// while they stay in it; absolute ones, `..` above the root and
/// `/proc/self/...` links are refused), or, on a kernel without
/// `openat2`, component by component with `O_NOFOLLOW` (every symlink
/// refused). `rel` must be relative. Anything but a regular file (a
/// directory, a FIFO, a device) is refused too.
///
/// The errors are `io::Error`s: `EXDEV`/`ELOOP`/`ENOTDIR` for a way out,
/// `InvalidInput` for an absolute `rel` or a file that is not regular.
pub fn open_beneath(root: &Path, rel: &Path) -> io::Result<File> {
    let dir = open_root(root)?;
    // EAGAIN: a rename raced a `..`; the kernel asks for a retry.
    let mut opened = openat2_beneath(&dir, rel);
    for _ in 0..3 {
        match &opened {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                opened = openat2_beneath(&dir, rel);
            }
            _ => break,
        }
    }
    let file = match opened {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => openat_nofollow(&dir, rel)?,
        other => other?,
    };
    regular_only(file, rel)
}

/// The whole of the regular file `rel` beneath `root` (opened by
/// [`open_beneath`]), refused with `InvalidData` past `max` bytes.
pub fn read_file_beneath(root: &Path, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    open_beneath(root, rel)?
        .take(max.saturating_add(1))
        .read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", rel.display()),
        ));
    }
    Ok(data)
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    let c = cstring(root.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path; the descriptor returned
    // is owned by the `OwnedFd` below and nobody else.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    owned(fd)
}

fn relative_bytes(rel: &Path) -> io::Result<&[u8]> {
    if rel.is_absolute() || rel.as_os_str().is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a relative path", rel.display()),
        ));
    }
    Ok(rel.as_os_str().as_bytes())
}

/// `openat2(dir, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.
fn openat2_beneath(dir: &OwnedFd, rel: &Path) -> io::Result<File> {
    let c = cstring(relative_bytes(rel)?)?;
    // SAFETY: `open_how` is plain integers; all-zero is its empty value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = FILE_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the pointers are valid for the call (`c` NUL-terminated,
    // `how` with its exact size); the returned descriptor is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("openat2: bad descriptor"))?;
    owned(fd).map(File::from)
}

/// The fallback: each directory opened with `O_DIRECTORY | O_NOFOLLOW`
/// from its parent's descriptor, the file with `O_NOFOLLOW`; `..` and
/// every symlink are refused.
fn openat_nofollow(dir: &OwnedFd, rel: &Path) -> io::Result<File> {
    relative_bytes(rel)?;
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(io::Error::from_raw_os_error(libc::EXDEV));
            }
        }
    }
    let Some((last, parents)) = names.split_last() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", rel.display()),
        ));
    };
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mut held: Option<OwnedFd> = None;
    for name in parents {
        let at = held.as_ref().unwrap_or(dir);
        held = Some(openat(at, name.as_bytes(), dir_flags)?);
    }
    let at = held.as_ref().unwrap_or(dir);
    openat(at, last.as_bytes(), FILE_FLAGS | libc::O_NOFOLLOW).map(File::from)
}

fn openat(at: &OwnedFd, name: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    // SAFETY: `c` is NUL-terminated and `at` an open descriptor; the
    // returned descriptor is owned below.
    let fd = unsafe { libc::openat(at.as_raw_fd(), c.as_ptr(), flags) };
    owned(fd)
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL"))
}

fn regular_only(file: File, rel: &Path) -> io::Result<File> {
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", rel.display()),
        ))
    }
}

/// True when an error of [`open_beneath`] means the path tried to leave
/// the tree (or to pass through a symlink the fallback refuses), rather
/// than naming a missing file.
pub fn is_way_out(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV) | Some(libc::ELOOP) | Some(libc::ENOTDIR)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/file"), b"inside").unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        dir
    }

    fn read(f: io::Result<File>) -> io::Result<String> {
        let mut s = String::new();
        f?.read_to_string(&mut s)?;
        Ok(s)
    }

    #[test]
    fn a_regular_nested_file_opens() {
        let dir = tree();
        let root = dir.path().join("root");
        assert_eq!(
            read(open_beneath(&root, Path::new("a/b/file"))).unwrap(),
            "inside"
        );
        let fd = open_root(&root).unwrap();
        assert_eq!(
            read(openat_nofollow(&fd, Path::new("a/b/file"))).unwrap(),
            "inside"
        );
    }

    #[test]
    fn links_and_dots_out_of_the_tree_are_refused() {
        let dir = tree();
        let root = dir.path().join("root");
        symlink("/etc", root.join("etc")).unwrap();
        symlink("../../secret", root.join("a/up")).unwrap();
        // `a -> .` chains: lexically fine at each step, outside in the end.
        symlink(".", root.join("loop")).unwrap();
        symlink("loop/loop/../../secret", root.join("chain")).unwrap();
        let fd = open_root(&root).unwrap();
        for rel in [
            "etc/hostname",
            "a/../../secret",
            "a/up",
            "chain",
            "/etc/hostname",
        ] {
            let e = open_beneath(&root, Path::new(rel)).unwrap_err();
            assert!(
                is_way_out(&e) || e.kind() == io::ErrorKind::InvalidInput,
                "{rel}: {e}"
            );
            let e = openat_nofollow(&fd, Path::new(rel)).unwrap_err();
            assert!(
                is_way_out(&e) || e.kind() == io::ErrorKind::InvalidInput,
                "fallback {rel}: {e}"
            );
        }
    }

    #[test]
    fn reads_are_capped() {
        let dir = tree();
        let root = dir.path().join("root");
        assert_eq!(
            read_file_beneath(&root, Path::new("a/b/file"), 6).unwrap(),
            b"inside"
        );
        let e = read_file_beneath(&root, Path::new("a/b/file"), 5).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn only_regular_files_open() {
        let dir = tree();
        let root = dir.path().join("root");
        let e = open_beneath(&root, Path::new("a/b")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        // A FIFO would block a plain open(2) for ever.
        let fifo = cstring(root.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let e = open_beneath(&root, Path::new("fifo")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }

    #[test]
    fn links_inside_the_tree_are_followed_by_openat2() {
        let dir = tree();
        let root = dir.path().join("root");
        symlink("a/b", root.join("short")).unwrap();
        let fd = open_root(&root).unwrap();
        if openat2_beneath(&fd, Path::new("a/b/file"))
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOSYS))
        {
            return; // the fallback refuses every link, by design
        }
        assert_eq!(
            read(open_beneath(&root, Path::new("short/file"))).unwrap(),
            "inside"
        );
    }
}
