//! Turning a compiled binary into an OCI image.
//!
//! The binary comes out of a tenant's build, so nothing here trusts it: it
//! is read through a descriptor opened component by component beneath the
//! target dir without following a link ([`read_beneath`]), and its shared
//! libraries are found by parsing its ELF headers (`crate::elf`), never by
//! running `ldd` (which runs the binary's own loader) on it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};

use crate::{ImageConfig, ImageError, ImageStore, RootFs, RunConfig, elf, io_err, media};

/// The user machines run as: `nobody`, so an app is never root on the host.
const RUN_AS: &str = "65534:65534";

/// The largest binary packaging accepts (2 GiB).
pub const MAX_BINARY_BYTES: u64 = 2 << 30;

/// A request to package one binary.
#[derive(Debug, Clone)]
pub struct BinaryImage<'a> {
    /// The directory the binary is read from, e.g. an app's cargo target
    /// dir; opened without following a link.
    pub dir: &'a Path,
    /// The binary's path under `dir`, e.g. `release/app`: every component
    /// a plain name and no symlink, the file a regular one of at most
    /// [`MAX_BINARY_BYTES`].
    pub path: &'a Path,
    /// Its name inside the image: `/app/<name>`.
    pub name: &'a str,
    /// Labels recorded in the image config's environment (e.g. the app).
    pub env: Vec<String>,
}

/// A file to put into a layer: path inside the image → content and mode.
type LayerFiles = BTreeMap<PathBuf, (Vec<u8>, u32)>;

impl ImageStore {
    /// Builds and stores a two-layer image (shared libraries + binary);
    /// returns the manifest digest. Blocking: call from a blocking context.
    pub fn build_from_binary(&self, req: &BinaryImage<'_>) -> Result<String, ImageError> {
        let binary = req.dir.join(req.path);
        // From here on, only this copy is used: the file itself may be
        // changed or replaced by whatever can write the target dir.
        let data = read_beneath(req.dir, req.path, MAX_BINARY_BYTES)?;
        let libs =
            elf::closure(&data, &elf::library_dirs()).map_err(|reason| ImageError::Libraries {
                binary: binary.clone(),
                reason,
            })?;
        let mut base = LayerFiles::new();
        for lib in libs {
            let data = fs::read(&lib).map_err(io_err(&lib))?;
            base.insert(lib, (data, 0o755));
        }
        for (path, body) in [
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
            ),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
            ("etc/nsswitch.conf", "hosts: files dns\n"),
            ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
            // Mount point for the host's resolver config (the rootfs is read-only).
            ("etc/resolv.conf", ""),
        ] {
            base.insert(
                PathBuf::from("/").join(path),
                (body.as_bytes().to_vec(), 0o644),
            );
        }
        // Apps that speak TLS to the outside need the CA bundle.
        let certs = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if let Ok(data) = fs::read(certs) {
            base.insert(certs.to_owned(), (data, 0o644));
        }
        let mut app = LayerFiles::new();
        app.insert(PathBuf::from("/app").join(req.name), (data, 0o755));

        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for files in [base, app] {
            let (tar, gz) = write_layer(&files).map_err(io_err(&binary))?;
            diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(&tar))));
            layers.push(self.put_blob(media::LAYER_GZIP, &gz)?);
        }
        let mut env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_owned()];
        env.extend(req.env.iter().cloned());
        let config = ImageConfig {
            architecture: oci_arch().to_owned(),
            os: "linux".to_owned(),
            config: RunConfig {
                entrypoint: Some(vec![format!("/app/{}", req.name)]),
                cmd: None,
                env: Some(env),
                working_dir: Some("/app".to_owned()),
                user: Some(RUN_AS.to_owned()),
            },
            rootfs: RootFs {
                kind: "layers".to_owned(),
                diff_ids,
            },
        };
        self.put_image(&config, layers)
    }
}

/// The OCI name of this host's architecture.
pub(crate) fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A deterministic tar (sorted, zero mtimes, root-owned, parent dirs
/// included) and its gzip; returns (tar, gzip).
fn write_layer(files: &LayerFiles) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut tar = tar::Builder::new(Vec::new());
    // Mount points the runtime needs on a read-only root filesystem.
    let mut dirs: std::collections::BTreeSet<PathBuf> = ["proc", "dev", "sys", "tmp"]
        .iter()
        .map(PathBuf::from)
        .collect();
    for path in files.keys() {
        let mut acc = PathBuf::new();
        if let Some(parent) = path.parent() {
            for c in parent.components().skip(1) {
                acc.push(c);
                dirs.insert(acc.clone());
            }
        }
    }
    for dir in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        tar.append_data(&mut h, dir, std::io::empty())?;
    }
    for (path, (data, mode)) in files {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        tar.append_data(&mut h, rel, data.as_slice())?;
    }
    let tar = tar.into_inner()?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    std::io::Write::write_all(&mut gz, &tar)?;
    let gz = gz.finish()?;
    Ok((tar, gz))
}

/// Absolute paths of the shared objects `binary` loads (its loader and
/// its `DT_NEEDED` closure in the host's library directories), read from
/// its ELF headers without running anything; empty for a static binary.
/// For host binaries (e.g. `nvidia-smi`); a tenant's goes through
/// [`ImageStore::build_from_binary`].
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let data = fs::read(binary).map_err(io_err(binary))?;
    elf::closure(&data, &elf::library_dirs()).map_err(|reason| ImageError::Libraries {
        binary: binary.to_owned(),
        reason,
    })
}

/// Reads the regular file at `rel` beneath `dir` without following a
/// symbolic link anywhere (`dir` itself included): each directory is
/// opened with `openat(O_DIRECTORY | O_NOFOLLOW)` from its parent's
/// descriptor, the file with `O_NOFOLLOW | O_NONBLOCK` (a FIFO cannot hang
/// us), then `fstat` must say regular file of at most `max` bytes. The
/// bytes are copied out through that descriptor, so a rename or a link
/// swapped in meanwhile changes nothing.
pub fn read_beneath(dir: &Path, rel: &Path, max: u64) -> Result<Vec<u8>, ImageError> {
    let shown = dir.join(rel);
    let bad = |reason: String| ImageError::Binary {
        path: shown.clone(),
        reason,
    };
    let names: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(bad("its path must be relative, without `..`".into())),
        })
        .collect::<Result<_, _>>()?;
    let Some((last, dirs)) = names.split_last() else {
        return Err(bad("no file name".into()));
    };
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let mut fd = openat(None, dir.as_os_str(), dir_flags).map_err(|e| why(&bad, e, dir))?;
    let mut walked = dir.to_owned();
    for name in dirs {
        walked.push(name);
        fd = openat(Some(&fd), name, dir_flags).map_err(|e| why(&bad, e, &walked))?;
    }
    let file_flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let fd = openat(Some(&fd), last, file_flags).map_err(|e| why(&bad, e, &shown))?;
    let file = fs::File::from(fd);
    let meta = file.metadata().map_err(io_err(&shown))?;
    if !meta.file_type().is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(bad(format!(
            "{} bytes, more than the {max} bytes an image may hold",
            meta.len()
        )));
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(io_err(&shown))?;
    if data.len() as u64 > max {
        return Err(bad(format!("it grew past {max} bytes while being read")));
    }
    Ok(data)
}

/// `openat(2)` relative to `at` (or the working directory for `None`).
fn openat(at: Option<&OwnedFd>, name: &std::ffi::OsStr, flags: i32) -> std::io::Result<OwnedFd> {
    let c = CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a path"))?;
    let base = at.map_or(libc::AT_FDCWD, |fd| fd.as_raw_fd());
    // SAFETY: `c` is a valid NUL-terminated string and `base` a descriptor
    // we own (or AT_FDCWD); the returned descriptor is owned by us alone.
    let fd = unsafe { libc::openat(base, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is not owned by anything else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The reason an `openat` failed, worded for the build log.
fn why(bad: &impl Fn(String) -> ImageError, e: std::io::Error, at: &Path) -> ImageError {
    // O_NOFOLLOW on a symlink: ELOOP (or ENOTDIR with O_DIRECTORY).
    let reason = match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
            format!("{} is a symbolic link or not a directory", at.display())
        }
        _ => format!("opening {}: {e}", at.display()),
    };
    bad(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_a_dynamic_binary_with_its_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let req = BinaryImage {
            dir: Path::new("/usr/bin"),
            path: Path::new("true"),
            name: "true",
            env: vec!["HANGAR_APP=t".into()],
        };
        let digest = store.build_from_binary(&req).unwrap();
        // Deterministic: the same input gives the same image.
        assert_eq!(store.build_from_binary(&req).unwrap(), digest);
        let config = store.config(&digest).unwrap();
        assert_eq!(config.argv(), vec!["/app/true".to_string()]);
        assert_eq!(config.rootfs.diff_ids.len(), 2);
        let rootfs = store.rootfs(&digest).unwrap();
        assert!(rootfs.join("app/true").is_file());
        // The loader and libc came along, so the binary can run in a chroot.
        let libs = shared_libraries(Path::new("/usr/bin/true")).unwrap();
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")));
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("/ld-")));
        for lib in libs {
            assert!(rootfs.join(lib.strip_prefix("/").unwrap()).is_file());
        }
    }

    /// A target dir laid out like cargo's, with `release/app` a real binary.
    fn target_with_binary() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("release")).unwrap();
        fs::copy("/usr/bin/true", dir.path().join("release/app")).unwrap();
        dir
    }

    fn refused(dir: &Path, rel: &str) -> String {
        let store_dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(store_dir.path()).unwrap();
        let err = store
            .build_from_binary(&BinaryImage {
                dir,
                path: Path::new(rel),
                name: "app",
                env: vec![],
            })
            .unwrap_err();
        assert!(matches!(err, ImageError::Binary { .. }), "{err}");
        err.to_string()
    }

    #[test]
    fn refuses_a_binary_that_is_a_symlink() {
        let target = target_with_binary();
        assert!(read_beneath(target.path(), Path::new("release/app"), MAX_BINARY_BYTES).is_ok());
        let bin = target.path().join("release/app");
        fs::remove_file(&bin).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &bin).unwrap();
        let err = refused(target.path(), "release/app");
        assert!(err.contains("symbolic link"), "{err}");
        // A relative link within the tree is refused the same way.
        fs::remove_file(&bin).unwrap();
        fs::copy("/usr/bin/true", target.path().join("real")).unwrap();
        std::os::unix::fs::symlink("../real", &bin).unwrap();
        refused(target.path(), "release/app");
    }

    #[test]
    fn refuses_a_release_dir_that_is_a_symlink() {
        let target = target_with_binary();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::rename(
            target.path().join("release"),
            elsewhere.path().join("release"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            elsewhere.path().join("release"),
            target.path().join("release"),
        )
        .unwrap();
        let err = refused(target.path(), "release/app");
        assert!(err.contains("symbolic link"), "{err}");
        // And a target dir that is itself a link.
        let link = elsewhere.path().join("target-link");
        std::os::unix::fs::symlink(target.path(), &link).unwrap();
        refused(&link, "release/app");
    }

    #[test]
    fn refuses_what_is_not_a_small_regular_file() {
        let target = target_with_binary();
        fs::create_dir(target.path().join("release/dir")).unwrap();
        assert!(refused(target.path(), "release/dir").contains("not a regular file"));
        let fifo = CString::new(target.path().join("release/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path string; mkfifo touches nothing else.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(refused(target.path(), "release/fifo").contains("not a regular file"));
        assert!(refused(target.path(), "../etc/passwd").contains("relative"));
        let err = read_beneath(target.path(), Path::new("release/app"), 10).unwrap_err();
        assert!(err.to_string().contains("more than the 10 bytes"), "{err}");
        // Not an ELF executable: no image.
        fs::write(target.path().join("release/script"), "#!/bin/sh\n").unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(store_dir.path()).unwrap();
        let err = store
            .build_from_binary(&BinaryImage {
                dir: target.path(),
                path: Path::new("release/script"),
                name: "app",
                env: vec![],
            })
            .unwrap_err();
        assert!(err.to_string().contains("not an ELF file"), "{err}");
    }
}
