//! Mirrors a freshly unpacked tree onto the app's stable source directory,
//! touching only files whose content changed. Unchanged files keep their
//! mtimes, so cargo's fingerprints see them as fresh and a one-line change
//! rebuilds one crate.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What a sync changed, for the build log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub written: usize,
    pub unchanged: usize,
    pub removed: usize,
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} files changed, {} unchanged, {} removed",
            self.written, self.unchanged, self.removed
        )
    }
}

/// Makes `dest` an exact copy of `src` (files, directories, symlinks).
pub fn sync_tree(src: &Path, dest: &Path) -> io::Result<Changes> {
    let mut changes = Changes::default();
    fs::create_dir_all(dest)?;
    sync_dir(src, dest, &mut changes)?;
    Ok(changes)
}

fn sync_dir(src: &Path, dest: &Path, changes: &mut Changes) -> io::Result<()> {
    let mut seen = BTreeSet::new();
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        seen.insert(name.clone());
        let (from, to) = (entry.path(), dest.join(&name));
        let kind = entry.file_type()?;
        let existing = fs::symlink_metadata(&to).ok();
        if kind.is_dir() {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                fs::remove_file(&to)?;
            }
            if !to.is_dir() {
                fs::create_dir(&to)?;
            }
            sync_dir(&from, &to, changes)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(&from)?;
            if fs::read_link(&to).ok().as_ref() == Some(&target) {
                changes.unchanged += 1;
                continue;
            }
            remove(&to, existing.as_ref())?;
            std::os::unix::fs::symlink(&target, &to)?;
            changes.written += 1;
        } else {
            let same =
                existing.as_ref().is_some_and(|m| m.is_file()) && same_file_content(&from, &to)?;
            if same {
                // Modes can change without content (chmod +x build script).
                let mode = fs::metadata(&from)?.permissions();
                if fs::metadata(&to)?.permissions() != mode {
                    fs::set_permissions(&to, mode)?;
                }
                changes.unchanged += 1;
                continue;
            }
            remove(&to, existing.as_ref())?;
            fs::rename(&from, &to).or_else(|_| fs::copy(&from, &to).map(|_| ()))?;
            changes.written += 1;
        }
    }
    // Remove what the new tree no longer has.
    for entry in fs::read_dir(dest)? {
        let entry = entry?;
        if !seen.contains(&entry.file_name()) {
            let path: PathBuf = entry.path();
            remove(&path, Some(&fs::symlink_metadata(&path)?))?;
            changes.removed += 1;
        }
    }
    Ok(())
}

/// Adds read permission for everyone to every file and directory under
/// `root` (and search permission to directories), so the build user can
/// read a source whatever modes its archive carried. Links are left alone.
pub fn make_readable(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            continue;
        }
        let path = entry.path();
        let mode = entry.metadata()?.permissions().mode() & 0o7777;
        let want = if kind.is_dir() {
            mode | 0o755
        } else {
            mode | 0o644
        };
        if want != mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(want))?;
        }
        if kind.is_dir() {
            make_readable(&path)?;
        }
    }
    Ok(())
}

fn remove(path: &Path, meta: Option<&fs::Metadata>) -> io::Result<()> {
    match meta {
        Some(m) if m.is_dir() => fs::remove_dir_all(path),
        Some(_) => fs::remove_file(path),
        None => Ok(()),
    }
}

fn same_file_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (ma, mb) = (fs::metadata(a)?, fs::metadata(b)?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    Ok(fs::read(a)? == fs::read(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn rewrites_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir_all(a.join("src")).unwrap();
        fs::write(a.join("Cargo.toml"), "x").unwrap();
        fs::write(a.join("src/main.rs"), "fn main() {}").unwrap();
        assert_eq!(sync_tree(&a, &b).unwrap().written, 2);

        // Age the synced copy, then sync a tree with one change and one removal.
        let old = SystemTime::now() - Duration::from_secs(3600);
        for f in ["Cargo.toml", "src/main.rs"] {
            fs::File::options()
                .write(true)
                .open(b.join(f))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        fs::remove_dir_all(&a).unwrap();
        fs::create_dir_all(a.join("src")).unwrap();
        fs::write(a.join("Cargo.toml"), "x").unwrap();
        fs::write(a.join("lib.rs"), "// new").unwrap();
        let changes = sync_tree(&a, &b).unwrap();
        assert_eq!(
            changes,
            Changes {
                written: 1,
                unchanged: 1,
                removed: 1
            }
        );
        let mtime = fs::metadata(b.join("Cargo.toml"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(mtime, old, "an unchanged file keeps its mtime");
        assert!(!b.join("src/main.rs").exists());
        assert_eq!(fs::read_to_string(b.join("lib.rs")).unwrap(), "// new");
    }
}
