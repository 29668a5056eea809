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

mod build;
mod elf;
mod import;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use hangar_core::archive::{self, ArchiveError, Limits};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use build::{BinaryImage, MAX_BINARY_BYTES, read_beneath, shared_libraries};

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

/// The image store; cheap to clone (it is a path).
#[derive(Debug, Clone)]
pub struct ImageStore {
    /// The store's root directory (see the crate doc for its layout).
    root: PathBuf,
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
        })
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

    /// Stores `data`; returns its descriptor.
    pub fn put_blob(&self, media_type: &str, data: &[u8]) -> Result<Descriptor, ImageError> {
        let digest = hangar_core::id::sha256_digest(data);
        let path = self.blob_path(&digest)?;
        if !path.exists() {
            let tmp = self.tmp_path();
            fs::write(&tmp, data).map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
        }
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: data.len() as u64,
        })
    }

    /// Stores a blob by streaming `reader`; returns its descriptor.
    pub fn put_blob_stream(
        &self,
        media_type: &str,
        mut reader: impl Read,
    ) -> Result<Descriptor, ImageError> {
        let tmp = self.tmp_path();
        let mut file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(io_err(&tmp))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io_err(&tmp))?;
            size += n as u64;
        }
        file.sync_all().map_err(io_err(&tmp))?;
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        let path = self.blob_path(&digest)?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
        })
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
    pub fn rootfs(&self, manifest_digest: &str) -> Result<PathBuf, ImageError> {
        let dest = self.root.join("rootfs").join(digest_hex(manifest_digest)?);
        if dest.is_dir() {
            mount_points(&dest)?;
            return Ok(dest);
        }
        let manifest = self.manifest(manifest_digest)?;
        let staging = self.tmp_path();
        let limits = Limits {
            max_unpacked_bytes: 32 << 30,
            max_entries: 2_000_000,
            ..Limits::default()
        };
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
                archive::unpack_layer(flate2::read::GzDecoder::new(file), &staging, limits)
            } else {
                archive::unpack_layer(file, &staging, limits)
            };
            applied.map_err(|source| ImageError::Layer {
                digest: layer.digest.clone(),
                source,
            })?;
        }
        fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        mount_points(&staging)?;
        match fs::rename(&staging, &dest) {
            Ok(()) => Ok(dest),
            // Another caller unpacked the same image first: use theirs.
            Err(_) if dest.is_dir() => {
                let _ = fs::remove_dir_all(&staging);
                Ok(dest)
            }
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

    fn tmp_path(&self) -> PathBuf {
        self.root.join("tmp").join(hangar_core::id::new_id("t"))
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
