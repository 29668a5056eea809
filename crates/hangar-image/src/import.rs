//! Importing images made elsewhere: an OCI image layout or a `docker save`
//! archive, given as a tar.
//!
//! The archive is the uploader's, so:
//! - every file of its unpacked tree is opened beneath the tree
//!   (`archive::open_beneath`): no link leads a read out of it;
//! - every blob a manifest names must be in the archive and hash to its
//!   digest, even when the store has that digest already: naming a digest
//!   is not having it (the store may hold another org's private layer);
//! - one cap on bytes and entries covers the unpacked archive and the
//!   image's root filesystem together, one time budget the whole import,
//!   and an owner runs at most `imports_per_owner` imports at once;
//! - the staging tree and every temp file are removed on every way out.

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::time::Instant;

use hangar_core::archive;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::blob::{Expected, TempPath};
use crate::{
    Descriptor, ImageConfig, ImageError, ImageStore, Manifest, digest_hex, image_limit_error,
    io_err, media,
};

/// The largest JSON document read from an archive (index, manifests,
/// configs): real ones are kilobytes.
const MAX_JSON_BYTES: u64 = 8 << 20;

/// One of an owner's import places, held for the whole import; given back
/// when dropped.
pub type ImportSlot = hangar_core::admission::OwnerSlot;

/// `index.json` of an OCI layout (and the body of an image index blob).
#[derive(Deserialize)]
struct Index {
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

/// One entry of a `docker save` `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    layers: Vec<String>,
}

fn malformed(reason: impl Into<String>) -> ImageError {
    ImageError::Malformed {
        digest: "(import)".into(),
        reason: reason.into(),
    }
}

/// The import's deadline and its budget in seconds (for the error).
type Deadline = (Instant, u64);

impl ImageStore {
    /// Takes one of `owner`'s import places, or fails with
    /// [`ImageError::Busy`] when it already runs as many imports as the
    /// store's `imports_per_owner`.
    pub fn import_slot(&self, owner: &str) -> Result<ImportSlot, ImageError> {
        let limit = self.limits.imports_per_owner;
        self.imports
            .take(owner, limit)
            .map_err(|running| ImageError::Busy { running, limit })
    }

    /// Imports the image in `archive` (an uncompressed tar of an OCI layout
    /// or of `docker save`), unpacking it first into `staging` (which is
    /// removed after, whatever happens). Returns the manifest digest.
    /// Blocking.
    pub fn import_archive(
        &self,
        archive_path: &Path,
        staging: &Path,
    ) -> Result<String, ImageError> {
        let staging = TempPath::new(staging.to_owned());
        let budget = self.limits.import_budget;
        let deadline = (Instant::now() + budget, budget.as_secs());
        self.import_inner(archive_path, staging.path(), deadline)
    }

    fn import_inner(
        &self,
        archive_path: &Path,
        staging: &Path,
        deadline: Deadline,
    ) -> Result<String, ImageError> {
        let file = fs::File::open(archive_path).map_err(io_err(archive_path))?;
        let limits = self.limits.archive_limits(Some(deadline.0));
        let used = archive::unpack_tar(io::BufReader::new(file), staging, limits)
            .map_err(|e| image_limit_error(&self.limits, "(import archive)", e))?;
        self.import_tree(staging, limits.less(used), deadline)
    }

    /// Imports from an unpacked archive; `left` is what its unpacking left
    /// of the caps, for the root filesystem.
    fn import_tree(
        &self,
        staging: &Path,
        left: archive::Limits,
        deadline: Deadline,
    ) -> Result<String, ImageError> {
        let digest = if let Some(index) = open_if_there(staging, "index.json")? {
            self.import_oci(staging, index, deadline)?
        } else if let Some(manifest) = open_if_there(staging, "manifest.json")? {
            self.import_docker(staging, manifest, deadline)?
        } else {
            return Err(malformed(
                "neither an OCI image layout (index.json) nor a `docker save` archive (manifest.json)",
            ));
        };
        // Fail now, not at the first machine start, if it does not unpack;
        // with what the archive left of the caps.
        self.config(&digest)?;
        self.rootfs_within(&digest, left)?;
        Ok(digest)
    }

    fn import_oci(
        &self,
        dir: &Path,
        index: fs::File,
        deadline: Deadline,
    ) -> Result<String, ImageError> {
        let index: Index = parse_json("index.json", &read_capped(index, "index.json")?)?;
        let first = pick(&index.manifests)?;
        let (mut digest, mut kind) = (first.digest.clone(), first.media_type.clone());
        // An index of indexes/manifests: descend to this platform's manifest.
        for _ in 0..4 {
            let k = kind.as_deref().unwrap_or(media::MANIFEST);
            if k != media::INDEX && k != media::DOCKER_LIST {
                break;
            }
            let nested: Index = serde_json::from_slice(&layout_blob(dir, &digest)?)
                .map_err(|e| malformed(format!("image index {digest}: {e}")))?;
            let e = pick_owned(nested.manifests)?;
            (digest, kind) = (e.digest, e.media_type);
        }
        let manifest_bytes = layout_blob(dir, &digest)?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| malformed(format!("manifest {digest}: {e}")))?;
        for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
            self.copy_verified(dir, d, deadline)?;
        }
        Ok(self.put_blob(media::MANIFEST, &manifest_bytes)?.digest)
    }

    fn import_docker(
        &self,
        dir: &Path,
        manifest: fs::File,
        deadline: Deadline,
    ) -> Result<String, ImageError> {
        let entries: Vec<DockerEntry> =
            parse_json("manifest.json", &read_capped(manifest, "manifest.json")?)?;
        let entry = entries
            .into_iter()
            .next()
            .ok_or_else(|| malformed("manifest.json lists no image"))?;
        let config_bytes = read_capped(open_named(dir, &entry.config)?, &entry.config)?;
        serde_json::from_slice::<ImageConfig>(&config_bytes)
            .map_err(|e| malformed(format!("image config: {e}")))?;
        let config = self.put_blob(media::CONFIG, &config_bytes)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let file = open_named(dir, layer)?;
            // docker save layers are uncompressed tars; they are stored as
            // is, under the digest of what was read.
            layers.push(self.store_stream(
                media::LAYER_TAR,
                io::BufReader::new(file),
                None,
                Some(deadline),
            )?);
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media::MANIFEST.to_owned()),
            config,
            layers,
        };
        let json = serde_json::to_vec(&manifest).map_err(|e| malformed(e.to_string()))?;
        Ok(self.put_blob(media::MANIFEST, &json)?.digest)
    }

    /// Copies a blob of an OCI layout into the store, checking its digest
    /// and size. The archive must hold it, even when the store has the
    /// digest already (then nothing is written: the bytes were proven).
    fn copy_verified(
        &self,
        dir: &Path,
        d: &Descriptor,
        deadline: Deadline,
    ) -> Result<(), ImageError> {
        let rel = format!("blobs/sha256/{}", digest_hex(&d.digest)?);
        let file = open_if_there(dir, &rel)?.ok_or_else(|| {
            malformed(format!(
                "blob {} is not in the archive: an import must include every blob its manifest names",
                d.digest
            ))
        })?;
        self.store_stream(
            &d.media_type,
            io::BufReader::new(file),
            Some(Expected {
                digest: &d.digest,
                size: d.size,
            }),
            Some(deadline),
        )?;
        Ok(())
    }
}

/// The manifest for this host's platform (or the only one).
fn pick(entries: &[IndexEntry]) -> Result<&IndexEntry, ImageError> {
    let arch = crate::build::oci_arch();
    entries
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| entries.iter().find(|e| e.platform.is_none()))
        .or(entries.first())
        .ok_or_else(|| malformed("index.json lists no manifest"))
}

fn pick_owned(entries: Vec<IndexEntry>) -> Result<IndexEntry, ImageError> {
    let digest = pick(&entries)?.digest.clone();
    entries
        .into_iter()
        .find(|e| e.digest == digest)
        .ok_or_else(|| malformed("index lists no manifest"))
}

/// Opens `rel` of the unpacked archive beneath it; `None` when it is not
/// there. A link out, a FIFO or a directory is the archive's fault.
fn open_if_there(dir: &Path, rel: &str) -> Result<Option<fs::File>, ImageError> {
    match archive::open_beneath(dir, Path::new(rel)) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if archive::is_way_out(&e) => Err(malformed(format!(
            "{rel} leads outside the archive (through a link or '..')"
        ))),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(malformed(format!("{rel}: {e}"))),
        Err(e) => Err(io_err(&dir.join(rel))(e)),
    }
}

/// A path named inside `manifest.json`: relative, without `..`, and there.
fn open_named(dir: &Path, rel: &str) -> Result<fs::File, ImageError> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(malformed(format!(
            "manifest.json names {rel:?}, outside the archive"
        )));
    }
    open_if_there(dir, rel)?.ok_or_else(|| {
        malformed(format!(
            "manifest.json names {rel:?}, which is not in the archive"
        ))
    })
}

/// The whole of a small file of the archive, refused past [`MAX_JSON_BYTES`].
fn read_capped(file: fs::File, what: &str) -> Result<Vec<u8>, ImageError> {
    let mut data = Vec::new();
    file.take(MAX_JSON_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| malformed(format!("reading {what}: {e}")))?;
    if data.len() as u64 > MAX_JSON_BYTES {
        return Err(malformed(format!(
            "{what} is larger than {MAX_JSON_BYTES} bytes"
        )));
    }
    Ok(data)
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, data: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(data).map_err(|e| malformed(format!("{what}: {e}")))
}

/// A blob of an OCI layout, read beneath it and checked against its digest.
fn layout_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let rel = format!("blobs/sha256/{}", digest_hex(digest)?);
    let file = open_if_there(dir, &rel)?
        .ok_or_else(|| malformed(format!("blob {digest} is not in the archive")))?;
    let data = read_capped(file, &format!("blob {digest}"))?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    if actual != digest {
        return Err(ImageError::DigestMismatch {
            claimed: digest.to_owned(),
            reason: format!("its content is {actual}"),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests;
