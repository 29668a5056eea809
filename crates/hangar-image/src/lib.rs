//! The image store: OCI images (manifest + config + layers) in a
//! content-addressed blob directory, and their unpacked root filesystems.
//!
//! Layout on disk, under the store's root:
//! - `oci-layout`, `blobs/sha256/<hex>`: the OCI image-layout blob tree. Refs
//!   (which image a release runs) live in the state store, not in `index.json`.
//! - `rootfs/<manifest hex>/`: a layer stack unpacked once and shared,
//!   read-only, by every machine of that image.
//! - `tmp/`: staging for atomic writes (write, then rename into place).
//!
//! Images built by Hangar have two layers: a *base* layer with the shared
//! libraries the binary links against (read from its ELF headers, never by
//! running it or `ldd`) and a few `/etc`
//! files, and an *app* layer with the binary at `/app/<name>`. Layers are
//! written deterministically (sorted, zero mtimes, root owner), so the base
//! layer of every app on a host is one blob.
//!
//! Images from elsewhere come in through [`ImageStore::import_archive`]: an
//! OCI image layout (as a tar) or a `docker save` archive. The store's
//! interface is blob- and manifest-shaped, so a registry pull can feed it
//! the same way later.

mod blob;
mod build;
mod elf;
mod import;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hangar_core::archive::{self, ArchiveError, Limits};
use serde::{Deserialize, Serialize};

use blob::TempPath;
pub use build::{BinaryImage, MAX_BINARY_BYTES, read_beneath, shared_libraries};
pub use import::ImportSlot;

/// Media types of the OCI image spec.
pub mod media {
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
}

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image store I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no image {0} in the store")]
    NotFound(String),
    #[error("{0:?} is not a sha256 digest")]
    BadDigest(String),
    #[error("image {digest} is malformed: {reason}")]
    Malformed { digest: String, reason: String },
    #[error("unpacking layer {digest}: {source}")]
    Layer {
        digest: String,
        source: ArchiveError,
    },
    #[error("finding the shared libraries of {binary}: {reason}")]
    Libraries { binary: PathBuf, reason: String },
    #[error("refusing to package {path}: {reason}")]
    Binary { path: PathBuf, reason: String },
    #[error("blob {claimed} is not what its descriptor says: {reason}")]
    DigestMismatch { claimed: String, reason: String },
    #[error("the image unpacks to more than {limit} bytes (its layers and the import together)")]
    TooLarge { limit: u64 },
    #[error("the image has more than {limit} entries (its layers and the import together)")]
    TooManyEntries { limit: u64 },
    #[error("importing the image took longer than its time budget of {secs} s")]
    TimedOut { secs: u64 },
    #[error(
        "{running} image imports of this organisation are running; at most {limit} may run at once: wait for one to finish"
    )]
    Busy { running: usize, limit: usize },
}

impl ImageError {
    /// True for the caps on size, entry count and time: the image is too
    /// much to take (HTTP 413).
    pub fn is_too_large(&self) -> bool {
        match self {
            ImageError::TooLarge { .. }
            | ImageError::TooManyEntries { .. }
            | ImageError::TimedOut { .. } => true,
            ImageError::Layer { source, .. } => source.is_too_large(),
            _ => false,
        }
    }
}

/// The default cap on one image's unpacked bytes: all its layers together
/// (its root filesystem), and at import the unpacked archive as well.
pub const MAX_IMAGE_UNPACKED_BYTES: u64 = 8 << 30;

/// What one image, and one import, may take.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Bytes, summed over all of an image's layers when its root
    /// filesystem is unpacked; an import's unpacked archive counts too.
    pub max_unpacked_bytes: u64,
    /// Entries, summed the same way.
    pub max_entries: u64,
    /// How long one import may take, from unpacking the archive to its
    /// root filesystem.
    pub import_budget: Duration,
    /// Imports one owner (an org) may run at once.
    pub imports_per_owner: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_unpacked_bytes: MAX_IMAGE_UNPACKED_BYTES,
            max_entries: 2_000_000,
            import_budget: Duration::from_secs(600),
            imports_per_owner: 2,
        }
    }
}

impl StoreLimits {
    fn archive_limits(&self, deadline: Option<Instant>) -> Limits {
        Limits {
            max_unpacked_bytes: self.max_unpacked_bytes,
            max_entries: self.max_entries,
            deadline,
        }
    }
}

/// An archive error of one image, with the image's own caps named (a
/// layer sees only what the layers before it left).
fn image_limit_error(limits: &StoreLimits, digest: &str, e: ArchiveError) -> ImageError {
    match e {
        ArchiveError::TooLarge { .. } => ImageError::TooLarge {
            limit: limits.max_unpacked_bytes,
        },
        ArchiveError::TooManyEntries { .. } => ImageError::TooManyEntries {
            limit: limits.max_entries,
        },
        ArchiveError::TimedOut => ImageError::TimedOut {
            secs: limits.import_budget.as_secs(),
        },
        source => ImageError::Layer {
            digest: digest.to_owned(),
            source,
        },
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A reference to a blob, as manifests hold them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// An OCI image manifest (the fields Hangar reads and writes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The runtime part of an OCI image config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// An OCI image config (the fields Hangar reads and writes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
}

/// The uncompressed layer digests of an image config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    /// The argv a machine of this image runs: Entrypoint followed by Cmd.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = self.config.entrypoint.clone().unwrap_or_default();
        argv.extend(self.config.cmd.clone().unwrap_or_default());
        argv
    }
}

/// The image store; cheap to clone (a path, its limits and the count of
/// imports running, shared by the clones).
#[derive(Debug, Clone)]
pub struct ImageStore {
    /// The store's root directory (see the crate doc for its layout).
    root: PathBuf,
    limits: StoreLimits,
    /// Imports running, by owner.
    imports: hangar_core::admission::PerOwner,
}

impl ImageStore {
    /// Opens the store at `root`, creating its layout if needed.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in ["blobs/sha256", "rootfs", "tmp"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(&layout))?;
        }
        Ok(ImageStore {
            root: root.to_owned(),
            limits: StoreLimits::default(),
            imports: Default::default(),
        })
    }

    /// The same store with other limits.
    pub fn with_limits(mut self, limits: StoreLimits) -> ImageStore {
        self.limits = limits;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// Path of a blob (which may not exist).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = digest_hex(digest)?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    /// True when the blob is in the store.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.exists()).unwrap_or(false)
    }

    /// Reads a whole blob.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest)?;
        fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageError::NotFound(digest.to_owned()),
            _ => ImageError::Io { path, source: e },
        })
    }

    /// The manifest stored under `digest`.
    pub fn manifest(&self, digest: &str) -> Result<Manifest, ImageError> {
        let data = self.read_blob(digest)?;
        serde_json::from_slice(&data).map_err(|e| ImageError::Malformed {
            digest: digest.to_owned(),
            reason: format!("manifest: {e}"),
        })
    }

    /// The config of the image whose manifest is `digest`.
    pub fn config(&self, manifest_digest: &str) -> Result<ImageConfig, ImageError> {
        let manifest = self.manifest(manifest_digest)?;
        let data = self.read_blob(&manifest.config.digest)?;
        serde_json::from_slice(&data).map_err(|e| ImageError::Malformed {
            digest: manifest_digest.to_owned(),
            reason: format!("config: {e}"),
        })
    }

    /// Stores a config and a manifest over already-stored layers; returns the
    /// manifest's digest, which names the image.
    pub fn put_image(
        &self,
        config: &ImageConfig,
        layers: Vec<Descriptor>,
    ) -> Result<String, ImageError> {
        let config_json = serde_json::to_vec(config).map_err(|e| ImageError::Malformed {
            digest: String::new(),
            reason: e.to_string(),
        })?;
        let config = self.put_blob(media::CONFIG, &config_json)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.to_owned()),
            config,
            layers,
        };
        let json = serde_json::to_vec(&manifest).map_err(|e| ImageError::Malformed {
            digest: String::new(),
            reason: e.to_string(),
        })?;
        Ok(self.put_blob(media::MANIFEST, &json)?.digest)
    }

    /// The image's root filesystem, unpacked on first use and shared after.
    /// Machines mount it read-only.
    /// All its layers together unpack to at most the store's
    /// `max_unpacked_bytes` and `max_entries`.
    pub fn rootfs(&self, manifest_digest: &str) -> Result<PathBuf, ImageError> {
        self.rootfs_within(manifest_digest, self.limits.archive_limits(None))
    }

    /// [`ImageStore::rootfs`] under `limits`, shared by all the layers:
    /// each layer gets what the ones before it left.
    fn rootfs_within(
        &self,
        manifest_digest: &str,
        mut limits: Limits,
    ) -> Result<PathBuf, ImageError> {
        let dest = self.root.join("rootfs").join(digest_hex(manifest_digest)?);
        if dest.is_dir() {
            mount_points(&dest)?;
            return Ok(dest);
        }
        let manifest = self.manifest(manifest_digest)?;
        // Removed on every way out but the rename into place.
        let staging = TempPath::new(self.tmp_path());
        for layer in &manifest.layers {
            let gzip = match layer.media_type.as_str() {
                media::LAYER_GZIP | "application/vnd.docker.image.rootfs.diff.tar.gzip" => true,
                media::LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => false,
                other => {
                    return Err(ImageError::Malformed {
                        digest: manifest_digest.to_owned(),
                        reason: format!(
                            "layer media type {other} is not supported (gzip or uncompressed tar only)"
                        ),
                    });
                }
            };
            let path = self.blob_path(&layer.digest)?;
            let file = io::BufReader::new(fs::File::open(&path).map_err(io_err(&path))?);
            let applied = if gzip {
                archive::unpack_layer(flate2::read::GzDecoder::new(file), staging.path(), limits)
            } else {
                archive::unpack_layer(file, staging.path(), limits)
            };
            let used = applied.map_err(|e| image_limit_error(&self.limits, &layer.digest, e))?;
            limits = limits.less(used);
        }
        fs::create_dir_all(staging.path()).map_err(io_err(staging.path()))?;
        mount_points(staging.path())?;
        match staging.persist(&dest) {
            Ok(()) => Ok(dest),
            // Another caller unpacked the same image first: use theirs.
            Err(_) if dest.is_dir() => Ok(dest),
            Err(e) => Err(ImageError::Io {
                path: dest,
                source: e,
            }),
        }
    }

    /// The directory holding every unpacked root filesystem.
    pub fn rootfs_root(&self) -> PathBuf {
        self.root.join("rootfs")
    }
}

/// What a machine's runtime mounts over: made in the root filesystem ahead,
/// since a machine in a user namespace cannot create them in a root
/// filesystem owned by the host's root. Never through a link: an image's
/// `tmp -> /` is replaced by a directory.
fn mount_points(root: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    for (dir, mode) in [
        ("proc", 0o555),
        ("dev", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("run", 0o755),
        ("run/hangar", 0o755),
        ("etc", 0o755),
    ] {
        let path = root.join(dir);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => fs::remove_file(&path).map_err(io_err(&path))?,
            Err(_) => {}
        }
        fs::create_dir(&path).map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err(&path))?;
    }
    let resolv = root.join("etc/resolv.conf");
    match fs::symlink_metadata(&resolv) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            fs::remove_file(&resolv).map_err(io_err(&resolv))?;
            fs::write(&resolv, b"").map_err(io_err(&resolv))?;
        }
        Err(_) => fs::write(&resolv, b"").map_err(io_err(&resolv))?,
    }
    Ok(())
}

/// The hex part of a `sha256:<64 hex>` digest, validated (it becomes a path).
fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
        _ => Err(ImageError::BadDigest(digest.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_content_addressed_and_digests_validated() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let a = store.put_blob("x", b"hello").unwrap();
        let b = store.put_blob_stream("x", &b"hello"[..]).unwrap();
        assert_eq!(a, b);
        assert_eq!(store.read_blob(&a.digest).unwrap(), b"hello");
        assert!(matches!(
            store.read_blob("sha256:../../etc"),
            Err(ImageError::BadDigest(_))
        ));
        let missing = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(
            store.manifest(&missing),
            Err(ImageError::NotFound(_))
        ));
    }
}
