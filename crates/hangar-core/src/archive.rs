//! The one place where Hangar unpacks tar archives it did not write itself:
//! uploaded sources (`.tar.gz`) and image layers.
//!
//! Architecture Invariant: nothing is ever written outside `dest`. Entries with
//! absolute paths or `..` components, links that point outside the tree
//! (resolved through the other links of the tree, so no chain leaves it),
//! hard links, device files and FIFOs are rejected, and the unpacked size and
//! entry count are capped, before or while anything is written.
//!
//! Entries are read raw: the extension headers (GNU long names and links,
//! PAX local and global headers) are entries like the others, their bodies
//! count against the size cap and are read only up to
//! [`MAX_HEADER_BODY`], so a header claiming gigabytes is refused before a
//! byte of it is held in memory.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use flate2::read::GzDecoder;

mod beneath;

pub use beneath::{is_way_out, open_beneath, read_file_beneath};

/// Caps that bound what one archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sum of the sizes of all regular files, in bytes.
    pub max_unpacked_bytes: u64,
    /// Number of entries of any kind.
    pub max_entries: u64,
    /// When set, the moment past which unpacking stops with
    /// [`ArchiveError::TimedOut`]; checked at every entry and every 64 KiB
    /// written, so decompressing a bomb cannot hold a worker for long.
    pub deadline: Option<Instant>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_unpacked_bytes: 1 << 30,
            max_entries: 200_000,
            deadline: None,
        }
    }
}

/// What an unpack used of its [`Limits`], so a caller applying several
/// archives (an image's layers) can give the next one only what is left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes counted against `max_unpacked_bytes`.
    pub bytes: u64,
    /// Entries counted against `max_entries`.
    pub entries: u64,
}

impl Limits {
    /// These limits less what `used` took (the deadline unchanged).
    pub fn less(self, used: Usage) -> Limits {
        Limits {
            max_unpacked_bytes: self.max_unpacked_bytes.saturating_sub(used.bytes),
            max_entries: self.max_entries.saturating_sub(used.entries),
            deadline: self.deadline,
        }
    }

    /// `Err(TimedOut)` once the deadline has passed.
    pub fn check_deadline(&self) -> Result<(), ArchiveError> {
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(ArchiveError::TimedOut),
            _ => Ok(()),
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
    #[error(
        "archive has a {kind} header of {size} bytes before {after:?}; at most {limit} are accepted"
    )]
    HeaderTooLarge {
        kind: &'static str,
        size: u64,
        limit: u64,
        after: String,
    },
    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("archive took longer to unpack than its time budget")]
    TimedOut,
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

    /// True for the size, count and time caps (HTTP 413 rather than 400).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            ArchiveError::TooLarge { .. }
                | ArchiveError::TooManyEntries { .. }
                | ArchiveError::HeaderTooLarge { .. }
                | ArchiveError::TimedOut
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
    .map(|_| ())
}

/// Unpacks a `.tar.gz` into `dest` (created if missing).
pub fn unpack_tar_gz(reader: impl Read, dest: &Path, limits: Limits) -> Result<(), ArchiveError> {
    unpack_tar(GzDecoder::new(reader), dest, limits).map(|_| ())
}

/// Unpacks an uncompressed tar into `dest` (created if missing).
pub fn unpack_tar(reader: impl Read, dest: &Path, limits: Limits) -> Result<Usage, ArchiveError> {
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
pub fn unpack_layer(reader: impl Read, dest: &Path, limits: Limits) -> Result<Usage, ArchiveError> {
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

/// The most bytes an extension header's body may have (a long name, a
/// long link target, a PAX header): real ones are a few hundred bytes.
pub const MAX_HEADER_BODY: u64 = 64 * 1024;

/// Extension headers seen since the last real entry: they describe the
/// next one.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Pax>,
}

/// The keys of a PAX header Hangar reads (a later record of a key wins).
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<Vec<u8>>,
}

impl Pax {
    fn parse(body: &[u8]) -> Result<Pax, ArchiveError> {
        let mut pax = Pax::default();
        for ext in tar::PaxExtensions::new(body) {
            let ext = ext.map_err(|e| corrupt(format!("bad PAX header: {e}")))?;
            let slot = match ext.key_bytes() {
                b"path" => &mut pax.path,
                b"linkpath" => &mut pax.linkpath,
                b"size" => &mut pax.size,
                _ => continue,
            };
            *slot = Some(ext.value_bytes().to_vec());
        }
        Ok(pax)
    }
}

/// Keeps an extension header for the next entry; two of a kind for one
/// entry are refused.
fn keep<T>(slot: &mut Option<T>, value: T, what: &str, last: &str) -> Result<(), ArchiveError> {
    if slot.is_some() {
        return Err(corrupt(format!(
            "two {what} headers describe the same entry (after {last:?})"
        )));
    }
    *slot = Some(value);
    Ok(())
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

fn corrupt(msg: String) -> ArchiveError {
    ArchiveError::Corrupt(io::Error::new(io::ErrorKind::InvalidData, msg))
}

/// A GNU long name or link body: the bytes up to the first NUL.
fn c_string(mut body: Vec<u8>) -> PathBuf {
    if let Some(end) = body.iter().position(|b| *b == 0) {
        body.truncate(end);
    }
    PathBuf::from(OsString::from_vec(body))
}

fn walk<R: Read>(
    mut archive: tar::Archive<R>,
    dest: Option<&Path>,
    limits: Limits,
    mode: Mode,
) -> Result<Usage, ArchiveError> {
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    let mut pending = Pending::default();
    // Source mode: every symlink of the tree (its path → its target),
    // resolved once the tree is complete.
    let mut links: HashMap<PathBuf, PathBuf> = HashMap::new();
    let entries = archive.entries().map_err(ArchiveError::Corrupt)?.raw(true);
    let mut last = String::new();
    for entry in entries {
        let mut entry = entry.map_err(ArchiveError::Corrupt)?;
        limits.check_deadline()?;
        count += 1;
        if count > limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let kind = entry.header().entry_type();
        let size = entry.header().entry_size().map_err(ArchiveError::Corrupt)?;
        // Every entry's body counts, extension headers' too.
        total = total.saturating_add(size);
        if total > limits.max_unpacked_bytes {
            return Err(ArchiveError::TooLarge {
                limit: limits.max_unpacked_bytes,
            });
        }
        let header_kind = match kind {
            tar::EntryType::GNULongName => Some("GNU long name"),
            tar::EntryType::GNULongLink => Some("GNU long link"),
            tar::EntryType::XHeader => Some("PAX"),
            tar::EntryType::XGlobalHeader => Some("PAX global"),
            _ => None,
        };
        if let Some(what) = header_kind {
            if size > MAX_HEADER_BODY {
                return Err(ArchiveError::HeaderTooLarge {
                    kind: what,
                    size,
                    limit: MAX_HEADER_BODY,
                    after: last,
                });
            }
            let mut body = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(size)
                .read_to_end(&mut body)
                .map_err(ArchiveError::Corrupt)?;
            match kind {
                tar::EntryType::GNULongName => keep(&mut pending.long_name, body, what, &last)?,
                tar::EntryType::GNULongLink => keep(&mut pending.long_link, body, what, &last)?,
                tar::EntryType::XHeader => keep(&mut pending.pax, Pax::parse(&body)?, what, &last)?,
                // Global headers set defaults Hangar does not use.
                _ => {}
            }
            continue;
        }
        let ext = std::mem::take(&mut pending);
        let pax = ext.pax.unwrap_or_default();
        let raw = match (pax.path, ext.long_name) {
            (Some(p), _) => PathBuf::from(OsString::from_vec(p)),
            (None, Some(n)) => c_string(n),
            (None, None) => entry
                .header()
                .path()
                .map_err(ArchiveError::Corrupt)?
                .into_owned(),
        };
        let shown = raw.display().to_string();
        last = shown.clone();
        if let Some(v) = &pax.size
            && std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                != Some(size)
        {
            // Parsers that disagree on an entry's size disagree on
            // everything after it: refused, not guessed.
            return Err(corrupt(format!(
                "entry {shown:?}: its PAX size disagrees with its header's"
            )));
        }
        let link_name = || -> Result<Option<PathBuf>, ArchiveError> {
            if let Some(v) = &pax.linkpath {
                return Ok(Some(PathBuf::from(OsString::from_vec(v.clone()))));
            }
            if let Some(l) = &ext.long_link {
                return Ok(Some(c_string(l.clone())));
            }
            Ok(entry
                .header()
                .link_name()
                .map_err(ArchiveError::Corrupt)?
                .map(|l| l.into_owned()))
        };
        let rel = checked_relative(&raw, &shown)?;
        let target = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {
                None
            }
            tar::EntryType::Symlink => {
                let link = link_name()?.ok_or_else(|| ArchiveError::LinkOutside {
                    path: shown.clone(),
                    target: String::new(),
                })?;
                if mode == Mode::Source {
                    check_link(&rel, &link, &shown)?;
                }
                Some(link)
            }
            tar::EntryType::Link if mode == Mode::Layer => {
                let link = link_name()?.ok_or_else(|| ArchiveError::HardLink(shown.clone()))?;
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
        if mode == Mode::Source {
            match (&kind, &target) {
                (tar::EntryType::Symlink, Some(t)) => {
                    links.insert(rel.clone(), t.clone());
                }
                _ => {
                    links.remove(&rel);
                }
            }
        }
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
                let copied = copy_body(&mut (&mut entry).take(size), &mut file, &limits).map_err(
                    |e| match e {
                        // The archive's side: truncated or corrupt input.
                        CopyError::Read(e) => ArchiveError::Corrupt(e),
                        CopyError::Write(e) => io_err(e),
                        CopyError::Deadline(e) => e,
                    },
                )?;
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
    if !pending.is_empty() {
        return Err(corrupt(format!(
            "the archive ends with extension headers but no entry (after {last:?})"
        )));
    }
    // Each link alone stays inside (checked above); through the others, a
    // chain could still leave (`a -> .`, `x -> a/a/../../etc`).
    let mut sorted: Vec<(&PathBuf, &PathBuf)> = links.iter().collect();
    sorted.sort();
    for (at, target) in sorted {
        if resolves_outside(&links, at, target) {
            return Err(ArchiveError::LinkOutside {
                path: at.display().to_string(),
                target: target.display().to_string(),
            });
        }
    }
    Ok(Usage {
        bytes: total,
        entries: count,
    })
}

/// Why [`copy_body`] stopped.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Deadline(ArchiveError),
}

/// Copies an entry's body, 64 KiB at a time, checking the deadline at
/// each chunk; returns the bytes copied.
fn copy_body(
    from: &mut impl Read,
    to: &mut impl io::Write,
    limits: &Limits,
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        limits.check_deadline().map_err(CopyError::Deadline)?;
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        copied += n as u64;
    }
}

/// Most links followed while resolving one (Linux's own limit).
const MAX_LINK_HOPS: usize = 40;

/// Whether the symlink at `at` (relative to the root) pointing at `target`
/// leaves the root once the tree's other symlinks are followed, or loops.
fn resolves_outside(links: &HashMap<PathBuf, PathBuf>, at: &Path, target: &Path) -> bool {
    let mut stack: Vec<OsString> = at
        .parent()
        .map(|p| p.iter().map(|c| c.to_owned()).collect())
        .unwrap_or_default();
    let mut todo: Vec<OsString> = Vec::new();
    let push_front = |todo: &mut Vec<OsString>, path: &Path| -> bool {
        // `todo` is a stack: the next component is at its end.
        let mut comps = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(n) => comps.push(n.to_owned()),
                Component::ParentDir => comps.push(OsString::from("..")),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return false,
            }
        }
        todo.extend(comps.into_iter().rev());
        true
    };
    if !push_front(&mut todo, target) {
        return true;
    }
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            if stack.pop().is_none() {
                return true;
            }
            continue;
        }
        stack.push(c);
        let here: PathBuf = stack.iter().collect();
        if let Some(next) = links.get(&here) {
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return true;
            }
            stack.pop();
            if !push_front(&mut todo, next) {
                return true;
            }
        }
    }
    false
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
mod tests;
