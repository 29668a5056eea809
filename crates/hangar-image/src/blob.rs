//! Writing blobs: always into `tmp/` first, hashed on the way, and renamed
//! into `blobs/sha256/` only once the content is known to be the digest it
//! goes under. A blob already in the store is never replaced or removed
//! here (the same digest is the same bytes; another image may use it), and
//! every temp file is removed on every exit path, a panic's included.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest as _, Sha256};

use crate::{Descriptor, ImageError, ImageStore, io_err};

/// A file or directory under `tmp/`, removed when dropped unless kept.
pub(crate) struct TempPath {
    path: PathBuf,
    keep: bool,
}

impl TempPath {
    pub(crate) fn new(path: PathBuf) -> TempPath {
        TempPath { path, keep: false }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames it to `to` and syncs `to`'s directory, so the name survives
    /// a power loss before anything (a manifest, a release row) refers to
    /// it; from then on it is not removed.
    pub(crate) fn persist(mut self, to: &Path) -> io::Result<()> {
        fs::rename(&self.path, to)?;
        self.keep = true;
        if let Some(dir) = to.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_dir() => {
                let _ = fs::remove_dir_all(&self.path);
            }
            Ok(_) => {
                let _ = fs::remove_file(&self.path);
            }
            Err(_) => {}
        }
    }
}

/// What the caller says a blob is: its digest and size, from a manifest.
pub(crate) struct Expected<'a> {
    pub digest: &'a str,
    pub size: u64,
}

impl ImageStore {
    /// Stores `data`; returns its descriptor.
    pub fn put_blob(&self, media_type: &str, data: &[u8]) -> Result<Descriptor, ImageError> {
        let digest = hangar_core::id::sha256_digest(data);
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            let tmp = TempPath::new(self.tmp_path());
            let mut file = fs::File::create(tmp.path()).map_err(io_err(tmp.path()))?;
            file.write_all(data).map_err(io_err(tmp.path()))?;
            file.sync_all().map_err(io_err(tmp.path()))?;
            tmp.persist(&path).map_err(io_err(&path))?;
        }
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: data.len() as u64,
        })
    }

    /// Stores a blob by streaming `reader`; returns its descriptor (the
    /// digest is that of what was read).
    pub fn put_blob_stream(
        &self,
        media_type: &str,
        reader: impl Read,
    ) -> Result<Descriptor, ImageError> {
        self.store_stream(media_type, reader, None, None)
    }

    /// Streams `reader` into a temp file, hashing it, then, if `expected`
    /// is given and the content is not what it names, removes only the
    /// temp file and fails: a blob that is already in the store (maybe
    /// another org's) is never touched. When the digest's blob is already
    /// there, the temp file is dropped (dedupe), else renamed into place.
    /// Past `deadline`, it stops with [`ImageError::TimedOut`].
    pub(crate) fn store_stream(
        &self,
        media_type: &str,
        reader: impl Read,
        expected: Option<Expected<'_>>,
        deadline: Option<(Instant, u64)>,
    ) -> Result<Descriptor, ImageError> {
        let tmp = TempPath::new(self.tmp_path());
        let mut file = fs::File::create(tmp.path()).map_err(io_err(tmp.path()))?;
        // Never read more than the caller said, plus one byte to tell.
        let cap = expected
            .as_ref()
            .map_or(u64::MAX, |e| e.size.saturating_add(1));
        let mut reader = reader.take(cap);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            if let Some((at, secs)) = deadline
                && Instant::now() >= at
            {
                return Err(ImageError::TimedOut { secs });
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(tmp.path())(e)),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io_err(tmp.path()))?;
            size += n as u64;
        }
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(e) = &expected
            && (e.digest != digest || e.size != size)
        {
            // `tmp` is removed as it drops; nothing else is.
            return Err(ImageError::DigestMismatch {
                claimed: e.digest.to_owned(),
                reason: if e.digest != digest {
                    format!("its content is {digest}")
                } else {
                    format!(
                        "it has {size} bytes, not the {} its descriptor says",
                        e.size
                    )
                },
            });
        }
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            file.sync_all().map_err(io_err(tmp.path()))?;
            tmp.persist(&path).map_err(io_err(&path))?;
        }
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
        })
    }

    /// Empties `tmp/`: what a previous run left half-written (blobs,
    /// root filesystems being unpacked). Call at start, before anything
    /// uses the store.
    pub fn clear_tmp(&self) -> Result<(), ImageError> {
        let tmp = self.root.join("tmp");
        let entries = fs::read_dir(&tmp).map_err(io_err(&tmp))?;
        for entry in entries {
            let entry = entry.map_err(io_err(&tmp))?;
            let path = entry.path();
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            removed.map_err(io_err(&path))?;
        }
        Ok(())
    }

    pub(crate) fn tmp_path(&self) -> PathBuf {
        self.root.join("tmp").join(hangar_core::id::new_id("t"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_is_empty(store: &ImageStore) -> bool {
        fs::read_dir(store.root.join("tmp")).unwrap().count() == 0
    }

    #[test]
    fn a_digest_mismatch_never_touches_an_existing_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        // Org A's blob.
        let a = store.put_blob("x", b"org a's config").unwrap();
        // Org B sends the same bytes under a digest of its choosing.
        let claimed = format!("sha256:{}", "1".repeat(64));
        let err = store
            .store_stream(
                "x",
                &b"org a's config"[..],
                Some(Expected {
                    digest: &claimed,
                    size: 14,
                }),
                None,
            )
            .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert_eq!(store.read_blob(&a.digest).unwrap(), b"org a's config");
        assert!(!store.has_blob(&claimed));
        assert!(tmp_is_empty(&store));
        // The right digest with a wrong size is refused as well, and the
        // read stops one byte past the size claimed.
        let err = store
            .store_stream(
                "x",
                &b"org a's config"[..],
                Some(Expected {
                    digest: &a.digest,
                    size: 3,
                }),
                None,
            )
            .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert_eq!(store.read_blob(&a.digest).unwrap(), b"org a's config");
        assert!(tmp_is_empty(&store));
        // The right claim dedupes onto the blob already there.
        let again = store
            .store_stream(
                "x",
                &b"org a's config"[..],
                Some(Expected {
                    digest: &a.digest,
                    size: 14,
                }),
                None,
            )
            .unwrap();
        assert_eq!(again, a);
        assert!(tmp_is_empty(&store));
    }

    #[test]
    fn a_failing_reader_or_a_passed_deadline_leaves_no_temp_file() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        assert!(store.put_blob_stream("x", Broken).is_err());
        assert!(tmp_is_empty(&store));
        let err = store
            .store_stream("x", &b"abc"[..], None, Some((Instant::now(), 7)))
            .unwrap_err();
        assert!(matches!(err, ImageError::TimedOut { secs: 7 }), "{err}");
        assert!(tmp_is_empty(&store));
    }

    #[test]
    fn clear_tmp_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        fs::write(store.tmp_path(), b"half a blob").unwrap();
        let staging = store.tmp_path();
        fs::create_dir_all(staging.join("usr/lib")).unwrap();
        let kept = store.put_blob("x", b"kept").unwrap();
        store.clear_tmp().unwrap();
        assert!(tmp_is_empty(&store));
        assert!(store.has_blob(&kept.digest));
    }
}
