//! The one place where Hangar unpacks tar archives it did not write itself:
//! uploaded sources (`.tar.gz`) and image layers.
//!
//! Architecture Invariant: nothing is ever written outside `dest`. Entries with
//! absolute paths or `..` components, links that point outside the tree,
//! hard links, device files and FIFOs are rejected, and the unpacked size and
//! entry count are capped, before or while anything is written.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;

/// Caps that bound what one archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sum of the sizes of all regular files, in bytes.
    pub max_unpacked_bytes: u64,
    /// Number of entries of any kind.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked_bytes: 1 << 30,
            max_entries: 200_000,
        }
    }
}

/// Why an archive was refused. Every variant is the uploader's fault and
/// maps to a 4xx, except [`ArchiveError::Io`] on the destination side.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive entry {0:?} has an absolute path; entries must be relative")]
    AbsolutePath(String),
    #[error("archive entry {0:?} contains '..'; entries must stay inside the archive root")]
    ParentDir(String),
    #[error("archive entry {path:?} is a link to {target:?}, which points outside the archive")]
    LinkOutside { path: String, target: String },
    #[error("archive entry {0:?} is a hard link; hard links are not accepted")]
    HardLink(String),
    #[error(
        "archive entry {path:?} is a {kind}; only files, directories and symlinks are accepted"
    )]
    SpecialFile { path: String, kind: &'static str },
    #[error("archive unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("archive is not a valid tar file (an upload must be a gzip-compressed tar): {0}")]
    Corrupt(io::Error),
    #[error("could not write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl ArchiveError {
    /// True when the archive itself is at fault (a 4xx), false when the
    /// server failed to write (a 5xx).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, ArchiveError::Io { .. })
    }

    /// True for the size and count caps (HTTP 413 rather than 400).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            ArchiveError::TooLarge { .. } | ArchiveError::TooManyEntries { .. }
        )
    }
}

/// Checks a `.tar.gz` without writing anything; the same checks as
/// [`unpack_tar_gz`]. Used to answer an upload with 4xx before queueing it.
pub fn validate_tar_gz(reader: impl Read, limits: Limits) -> Result<(), ArchiveError> {
    walk(
        tar::Archive::new(GzDecoder::new(reader)),
        None,
        limits,
        Mode::Source,
    )
}

/// Unpacks a `.tar.gz` into `dest` (created if missing).
pub fn unpack_tar_gz(reader: impl Read, dest: &Path, limits: Limits) -> Result<(), ArchiveError> {
    unpack_tar(GzDecoder::new(reader), dest, limits)
}

/// Unpacks an uncompressed tar into `dest` (created if missing).
pub fn unpack_tar(reader: impl Read, dest: &Path, limits: Limits) -> Result<(), ArchiveError> {
    fs::create_dir_all(dest).map_err(|source| ArchiveError::Io {
        path: dest.to_owned(),
        source,
    })?;
    walk(tar::Archive::new(reader), Some(dest), limits, Mode::Source)
}

/// Applies one OCI image layer (an uncompressed tar) onto `dest`, the
/// root filesystem being assembled: whiteouts (`.wh.NAME`, `.wh..wh..opq`)
/// delete from lower layers, hard links within the tree are made, and
/// symlinks may point anywhere (they are resolved inside the machine at run
/// time; the unpacker never writes through one). Device nodes and FIFOs are
/// skipped: the runtime provides `/dev`.
pub fn unpack_layer(reader: impl Read, dest: &Path, limits: Limits) -> Result<(), ArchiveError> {
    fs::create_dir_all(dest).map_err(|source| ArchiveError::Io {
        path: dest.to_owned(),
        source,
    })?;
    walk(tar::Archive::new(reader), Some(dest), limits, Mode::Layer)
}

/// What kind of archive is being unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Uploaded source: strict (no links out, no hard links, no devices).
    Source,
    /// An image layer applied onto a root filesystem.
    Layer,
}

fn walk<R: Read>(
    mut archive: tar::Archive<R>,
    dest: Option<&Path>,
    limits: Limits,
    mode: Mode,
) -> Result<(), ArchiveError> {
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    let entries = archive.entries().map_err(ArchiveError::Corrupt)?;
    for entry in entries {
        let mut entry = entry.map_err(ArchiveError::Corrupt)?;
        count += 1;
        if count > limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw = entry.path().map_err(ArchiveError::Corrupt)?.into_owned();
        let shown = raw.display().to_string();
        let rel = checked_relative(&raw, &shown)?;
        let kind = entry.header().entry_type();
        let size = entry.header().size().map_err(ArchiveError::Corrupt)?;
        if kind.is_file() || kind.is_contiguous() {
            total = total.saturating_add(size);
            if total > limits.max_unpacked_bytes {
                return Err(ArchiveError::TooLarge {
                    limit: limits.max_unpacked_bytes,
                });
            }
        }
        let target = match kind {
            tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::Directory
            | tar::EntryType::GNULongName
            | tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader => None,
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(ArchiveError::Corrupt)?
                    .ok_or_else(|| ArchiveError::LinkOutside {
                        path: shown.clone(),
                        target: String::new(),
                    })?
                    .into_owned();
                if mode == Mode::Source {
                    check_link(&rel, &link, &shown)?;
                }
                Some(link)
            }
            tar::EntryType::Link if mode == Mode::Layer => {
                let link = entry
                    .link_name()
                    .map_err(ArchiveError::Corrupt)?
                    .ok_or_else(|| ArchiveError::HardLink(shown.clone()))?
                    .into_owned();
                // The target is another entry of the tree: same rules as a path.
                Some(checked_relative(&link, &shown)?)
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
                if mode == Mode::Layer =>
            {
                continue;
            }
            tar::EntryType::Link => return Err(ArchiveError::HardLink(shown)),
            tar::EntryType::Char => return Err(special(shown, "character device")),
            tar::EntryType::Block => return Err(special(shown, "block device")),
            tar::EntryType::Fifo => return Err(special(shown, "FIFO")),
            _ => return Err(special(shown, "special entry")),
        };
        if rel.as_os_str().is_empty() {
            continue; // "./" itself
        }
        let Some(dest) = dest else { continue };
        let out = dest.join(&rel);
        let io_err = |source| ArchiveError::Io {
            path: out.clone(),
            source,
        };
        // Parents are created by us, as real directories: an earlier symlink
        // entry can never redirect a later file (we refuse to write through it).
        if let Some(parent) = out.parent() {
            ensure_real_dirs(dest, parent).map_err(io_err)?;
        }
        // Whiteouts act only below real directories (checked just above).
        if mode == Mode::Layer
            && let Some(name) = rel.file_name().and_then(|n| n.to_str())
            && let Some(hidden) = name.strip_prefix(".wh.")
        {
            let parent = out.parent().unwrap_or(dest);
            if hidden == ".wh..opq" {
                // Opaque directory: nothing of the lower layers shows through.
                if let Ok(children) = fs::read_dir(parent) {
                    for child in children.flatten() {
                        remove_existing(&child.path()).map_err(io_err)?;
                    }
                }
            } else if !hidden.is_empty() && hidden != "." && hidden != ".." {
                remove_existing(&parent.join(hidden)).map_err(io_err)?;
            }
            continue;
        }
        match kind {
            tar::EntryType::Directory => {
                if !out.is_dir() {
                    fs::create_dir(&out).map_err(io_err)?;
                }
            }
            tar::EntryType::Symlink => {
                remove_existing(&out).map_err(io_err)?;
                let link = target.unwrap_or_default();
                std::os::unix::fs::symlink(&link, &out).map_err(io_err)?;
            }
            tar::EntryType::Link => {
                let rel_target = target.unwrap_or_default();
                // link(2) follows symlinks in the directories of the path:
                // they must all be real, or the link could reach the host.
                if let Some(parent) = dest.join(&rel_target).parent() {
                    ensure_real_dirs(dest, parent).map_err(io_err)?;
                }
                remove_existing(&out).map_err(io_err)?;
                let original = dest.join(rel_target);
                // link(2) does not follow a symlink at `original`.
                fs::hard_link(&original, &out).map_err(io_err)?;
            }
            _ => {
                remove_existing(&out).map_err(io_err)?;
                let mut file = fs::File::create(&out).map_err(io_err)?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut file).map_err(io_err)?;
                if copied != size {
                    return Err(ArchiveError::Corrupt(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("entry {shown:?} is truncated"),
                    )));
                }
                let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&out, fs::Permissions::from_mode(mode)).map_err(io_err)?;
            }
        }
    }
    Ok(())
}

fn special(path: String, kind: &'static str) -> ArchiveError {
    ArchiveError::SpecialFile { path, kind }
}

/// Normalises an entry path: drops `./`, refuses absolute paths and `..`.
fn checked_relative(raw: &Path, shown: &str) -> Result<PathBuf, ArchiveError> {
    let mut rel = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => rel.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(ArchiveError::ParentDir(shown.to_owned())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(ArchiveError::AbsolutePath(shown.to_owned()));
            }
        }
    }
    Ok(rel)
}

/// A symlink at `rel` pointing at `link` must resolve inside the archive root.
fn check_link(rel: &Path, link: &Path, shown: &str) -> Result<(), ArchiveError> {
    let outside = || ArchiveError::LinkOutside {
        path: shown.to_owned(),
        target: link.display().to_string(),
    };
    if link.is_absolute() {
        return Err(outside());
    }
    // Depth of the directory holding the link, then walk the target.
    let mut depth: i64 = rel.components().count() as i64 - 1;
    for c in link.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return Err(outside());
                }
            }
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    Ok(())
}

/// Creates `dir` and its parents below `root`, refusing to pass through a
/// symlink (which could lead outside `root`).
fn ensure_real_dirs(root: &Path, dir: &Path) -> io::Result<()> {
    let rel = dir.strip_prefix(root).map_err(io::Error::other)?;
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is not a directory", cur.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&cur)?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Test support: archives with hostile entries, which the tar crate's safe
/// builder API refuses to write. Used by this crate's tests and, through the
/// `testing` feature, by the end-to-end tests.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use flate2::Compression;
    use flate2::write::GzEncoder;

    /// A `.tar.gz` of `(path, kind, data, link target)` entries, names
    /// written verbatim (`..` and absolute paths included).
    pub fn raw_targz(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                let ln = &mut h.as_old_mut().linkname;
                ln[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, *data).expect("appending to an in-memory tar");
        }
        b.into_inner()
            .and_then(|gz| gz.finish())
            .expect("finishing an in-memory tar.gz")
    }
}

#[cfg(test)]
mod tests {
    use super::testing::raw_targz as targz;
    use super::*;

    fn unpack(data: &[u8]) -> (tempfile::TempDir, Result<(), ArchiveError>) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let r = unpack_tar_gz(data, &dest, Limits::default());
        (dir, r)
    }

    use tar::EntryType as T;

    #[test]
    fn unpacks_files_dirs_and_inner_links() {
        let data = targz(&[
            ("src/", T::Directory, b"", None),
            ("src/main.rs", T::Regular, b"fn main() {}", None),
            ("link.rs", T::Symlink, b"", Some("src/main.rs")),
        ]);
        let (dir, r) = unpack(&data);
        r.unwrap();
        let out = dir.path().join("out");
        assert_eq!(fs::read(out.join("src/main.rs")).unwrap(), b"fn main() {}");
        assert_eq!(fs::read(out.join("link.rs")).unwrap(), b"fn main() {}");
        validate_tar_gz(&data[..], Limits::default()).unwrap();
    }

    #[test]
    fn rejects_parent_dir_and_writes_nothing_outside() {
        let data = targz(&[("../evil", T::Regular, b"x", None)]);
        let (dir, r) = unpack(&data);
        assert!(matches!(r, Err(ArchiveError::ParentDir(_))), "{r:?}");
        assert!(!dir.path().join("evil").exists());
        assert!(validate_tar_gz(&data[..], Limits::default()).is_err());
    }

    #[test]
    fn rejects_absolute_paths() {
        let data = targz(&[("/tmp/evil", T::Regular, b"x", None)]);
        assert!(matches!(
            unpack(&data).1,
            Err(ArchiveError::AbsolutePath(_))
        ));
    }

    #[test]
    fn rejects_links_pointing_outside() {
        for target in ["/etc/passwd", "../../etc", "a/../../x"] {
            let data = targz(&[("l", T::Symlink, b"", Some(target))]);
            let r = unpack(&data).1;
            assert!(
                matches!(r, Err(ArchiveError::LinkOutside { .. })),
                "{target}: {r:?}"
            );
        }
        let data = targz(&[("h", T::Link, b"", Some("x"))]);
        assert!(matches!(unpack(&data).1, Err(ArchiveError::HardLink(_))));
    }

    #[test]
    fn refuses_to_write_through_a_symlinked_directory() {
        // `d -> .` is inside, but a later `d/x` must not be written through it.
        let data = targz(&[
            ("d", T::Symlink, b"", Some(".")),
            ("d/x", T::Regular, b"x", None),
        ]);
        assert!(matches!(unpack(&data).1, Err(ArchiveError::Io { .. })));
    }

    #[test]
    fn rejects_devices_and_fifos() {
        for kind in [T::Char, T::Block, T::Fifo] {
            let data = targz(&[("dev", kind, b"", None)]);
            assert!(matches!(
                unpack(&data).1,
                Err(ArchiveError::SpecialFile { .. })
            ));
        }
    }

    #[test]
    fn enforces_size_and_count_caps() {
        let big = vec![0u8; 4096];
        let data = targz(&[("a", T::Regular, &big, None), ("b", T::Regular, &big, None)]);
        let limits = Limits {
            max_unpacked_bytes: 5000,
            max_entries: 10,
        };
        let err = validate_tar_gz(&data[..], limits).unwrap_err();
        assert!(err.is_too_large(), "{err}");
        let limits = Limits {
            max_unpacked_bytes: 1 << 20,
            max_entries: 1,
        };
        assert!(matches!(
            validate_tar_gz(&data[..], limits),
            Err(ArchiveError::TooManyEntries { .. })
        ));
    }

    fn plain_tar(entries: &[(&str, T, &[u8], Option<&str>)]) -> Vec<u8> {
        let gz = targz(entries);
        let mut out = Vec::new();
        io::copy(&mut GzDecoder::new(&gz[..]), &mut out).unwrap();
        out
    }

    #[test]
    fn layers_apply_whiteouts_hard_links_and_absolute_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        let lower = plain_tar(&[
            ("etc/", T::Directory, b"", None),
            ("etc/keep", T::Regular, b"k", None),
            ("etc/gone", T::Regular, b"g", None),
            ("var/", T::Directory, b"", None),
            ("var/cache/", T::Directory, b"", None),
            ("var/cache/a", T::Regular, b"a", None),
            ("bin/", T::Directory, b"", None),
            ("bin/busy", T::Regular, b"#!", None),
            ("dev/", T::Directory, b"", None),
            ("dev/null", T::Char, b"", None),
        ]);
        let upper = plain_tar(&[
            ("etc/.wh.gone", T::Regular, b"", None),
            ("var/cache/.wh..wh..opq", T::Regular, b"", None),
            ("var/cache/b", T::Regular, b"b", None),
            ("bin/sh", T::Link, b"", Some("bin/busy")),
            ("lib", T::Symlink, b"", Some("/usr/lib")),
        ]);
        unpack_layer(&lower[..], &root, Limits::default()).unwrap();
        unpack_layer(&upper[..], &root, Limits::default()).unwrap();
        assert!(root.join("etc/keep").exists());
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("var/cache/a").exists());
        assert!(root.join("var/cache/b").exists());
        assert!(!root.join("dev/null").exists(), "device nodes are skipped");
        assert_eq!(fs::read(root.join("bin/sh")).unwrap(), b"#!");
        assert_eq!(
            fs::read_link(root.join("lib")).unwrap(),
            Path::new("/usr/lib")
        );
        // Still no escape through names or hard links.
        let evil = plain_tar(&[("x", T::Link, b"", Some("../../etc/passwd"))]);
        assert!(unpack_layer(&evil[..], &root, Limits::default()).is_err());
        let evil = plain_tar(&[("../x", T::Regular, b"x", None)]);
        assert!(unpack_layer(&evil[..], &root, Limits::default()).is_err());
        // Through a symlinked directory (lib -> /usr/lib): neither a hard
        // link's target nor a whiteout may reach the host.
        let evil = plain_tar(&[("y", T::Link, b"", Some("lib/os-release"))]);
        assert!(unpack_layer(&evil[..], &root, Limits::default()).is_err());
        let evil = plain_tar(&[("lib/.wh.os-release", T::Regular, b"", None)]);
        assert!(unpack_layer(&evil[..], &root, Limits::default()).is_err());
        assert!(Path::new("/usr/lib/os-release").exists());
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let r = validate_tar_gz(&b"not a tarball at all"[..], Limits::default());
        assert!(matches!(r, Err(ArchiveError::Corrupt(_))));
    }
}
