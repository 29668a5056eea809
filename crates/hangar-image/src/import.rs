//! Importing images made elsewhere: an OCI image layout or a `docker save`
//! archive, given as a tar.

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use hangar_core::archive::{self, Limits};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::{Descriptor, ImageConfig, ImageError, ImageStore, Manifest, io_err, media};

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

impl ImageStore {
    /// Imports the image in `archive` (an uncompressed tar of an OCI layout
    /// or of `docker save`), unpacking it first into `staging` (which is
    /// removed after). Returns the manifest digest. Blocking.
    pub fn import_archive(
        &self,
        archive_path: &Path,
        staging: &Path,
    ) -> Result<String, ImageError> {
        let result = self.import_inner(archive_path, staging);
        let _ = fs::remove_dir_all(staging);
        result
    }

    fn import_inner(&self, archive_path: &Path, staging: &Path) -> Result<String, ImageError> {
        let file = fs::File::open(archive_path).map_err(io_err(archive_path))?;
        let limits = Limits {
            max_unpacked_bytes: 32 << 30,
            max_entries: 100_000,
            ..Limits::default()
        };
        archive::unpack_tar(io::BufReader::new(file), staging, limits).map_err(|source| {
            ImageError::Layer {
                digest: "(import archive)".into(),
                source,
            }
        })?;
        let digest = if staging.join("index.json").is_file() {
            self.import_oci(staging)?
        } else if staging.join("manifest.json").is_file() {
            self.import_docker(staging)?
        } else {
            return Err(malformed(
                "neither an OCI image layout (index.json) nor a `docker save` archive (manifest.json)",
            ));
        };
        // Fail now, not at the first machine start, if it does not unpack.
        self.config(&digest)?;
        self.rootfs(&digest)?;
        Ok(digest)
    }

    fn import_oci(&self, dir: &Path) -> Result<String, ImageError> {
        let index: Index = read_json(&dir.join("index.json"))?;
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
            self.copy_verified(dir, d)?;
        }
        Ok(self.put_blob(media::MANIFEST, &manifest_bytes)?.digest)
    }

    fn import_docker(&self, dir: &Path) -> Result<String, ImageError> {
        let entries: Vec<DockerEntry> = read_json(&dir.join("manifest.json"))?;
        let entry = entries
            .into_iter()
            .next()
            .ok_or_else(|| malformed("manifest.json lists no image"))?;
        let config_path = inside(dir, &entry.config)?;
        let config_bytes = fs::read(&config_path).map_err(io_err(&config_path))?;
        serde_json::from_slice::<ImageConfig>(&config_bytes)
            .map_err(|e| malformed(format!("image config: {e}")))?;
        let config = self.put_blob(media::CONFIG, &config_bytes)?;
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let path = inside(dir, layer)?;
            let file = fs::File::open(&path).map_err(io_err(&path))?;
            // docker save layers are uncompressed tars; they are stored as is.
            layers.push(self.put_blob_stream(media::LAYER_TAR, io::BufReader::new(file))?);
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

    /// Copies a blob of an OCI layout into the store, checking its digest.
    fn copy_verified(&self, dir: &Path, d: &Descriptor) -> Result<(), ImageError> {
        if self.has_blob(&d.digest) {
            return Ok(());
        }
        let path = layout_blob_path(dir, &d.digest)?;
        let file = fs::File::open(&path)
            .map_err(|_| malformed(format!("blob {} is missing", d.digest)))?;
        let stored = self.put_blob_stream(&d.media_type, io::BufReader::new(file))?;
        if stored.digest != d.digest {
            let _ = fs::remove_file(self.blob_path(&stored.digest)?);
            return Err(malformed(format!(
                "blob {} has the content of {}: the layout is corrupt",
                d.digest, stored.digest
            )));
        }
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

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ImageError> {
    let mut data = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path))?;
    serde_json::from_slice(&data).map_err(|e| malformed(format!("{}: {e}", path.display())))
}

/// `<layout>/blobs/sha256/<hex>`, with the digest validated.
fn layout_blob_path(dir: &Path, digest: &str) -> Result<std::path::PathBuf, ImageError> {
    let hex = crate::digest_hex(digest)?;
    Ok(dir.join("blobs/sha256").join(hex))
}

/// A blob of an OCI layout, checked against its digest.
fn layout_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, ImageError> {
    let path = layout_blob_path(dir, digest)?;
    let data = fs::read(&path).map_err(|_| malformed(format!("blob {digest} is missing")))?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    if actual != digest {
        return Err(malformed(format!(
            "blob {digest} has the content of {actual}"
        )));
    }
    Ok(data)
}

/// A path named inside an archive's manifest, kept inside the archive.
fn inside(dir: &Path, rel: &str) -> Result<std::path::PathBuf, ImageError> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(malformed(format!(
            "manifest.json names {rel:?}, outside the archive"
        )));
    }
    Ok(dir.join(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BinaryImage;

    /// Exports an image of `store` as an OCI layout tar, the way other tools write one.
    fn export_oci(store: &ImageStore, digest: &str, out: &Path) {
        let manifest = store.manifest(digest).unwrap();
        let mut tar = tar::Builder::new(fs::File::create(out).unwrap());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, path, data).unwrap();
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": media::MANIFEST, "digest": digest, "size": 1,
             "platform": {"os": "linux", "architecture": crate::build::oci_arch()}}]});
        add("index.json", index.to_string().as_bytes());
        for d in std::iter::once(digest.to_owned())
            .chain(std::iter::once(manifest.config.digest.clone()))
            .chain(manifest.layers.iter().map(|l| l.digest.clone()))
        {
            let hex = d.trim_start_matches("sha256:");
            add(
                &format!("blobs/sha256/{hex}"),
                &store.read_blob(&d).unwrap(),
            );
        }
        tar.finish().unwrap();
    }

    #[test]
    fn oci_layouts_and_docker_save_archives_import() {
        let dir = tempfile::tempdir().unwrap();
        let source = ImageStore::open(&dir.path().join("a")).unwrap();
        let digest = source
            .build_from_binary(&BinaryImage {
                dir: Path::new("/usr/bin"),
                path: Path::new("true"),
                name: "true",
                env: vec![],
            })
            .unwrap();
        let target = ImageStore::open(&dir.path().join("b")).unwrap();

        // OCI layout.
        let oci = dir.path().join("oci.tar");
        export_oci(&source, &digest, &oci);
        let imported = target
            .import_archive(&oci, &dir.path().join("staging1"))
            .unwrap();
        assert_eq!(imported, digest, "same manifest, same digest");
        assert!(target.rootfs(&imported).unwrap().join("app/true").is_file());

        // docker save: manifest.json, a config file and uncompressed layer tars.
        let manifest = source.manifest(&digest).unwrap();
        let docker = dir.path().join("docker.tar");
        let mut tar = tar::Builder::new(fs::File::create(&docker).unwrap());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            tar.append_data(&mut h, path, data).unwrap();
        };
        add(
            "cfg.json",
            &source.read_blob(&manifest.config.digest).unwrap(),
        );
        let mut layers = Vec::new();
        for (i, l) in manifest.layers.iter().enumerate() {
            let gz = source.read_blob(&l.digest).unwrap();
            let mut raw = Vec::new();
            io::copy(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
            add(&format!("l{i}/layer.tar"), &raw);
            layers.push(format!("l{i}/layer.tar"));
        }
        let m = serde_json::json!([{"Config": "cfg.json", "RepoTags": ["x:1"], "Layers": layers}]);
        add("manifest.json", m.to_string().as_bytes());
        tar.finish().unwrap();
        let imported = target
            .import_archive(&docker, &dir.path().join("staging2"))
            .unwrap();
        assert!(target.rootfs(&imported).unwrap().join("app/true").is_file());
        assert_eq!(target.config(&imported).unwrap().argv(), ["/app/true"]);

        // Neither format: a clear error.
        let junk = dir.path().join("junk.tar");
        let mut tar = tar::Builder::new(fs::File::create(&junk).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        tar.append_data(&mut h, "hello.txt", &b"x"[..]).unwrap();
        tar.finish().unwrap();
        let err = target
            .import_archive(&junk, &dir.path().join("staging3"))
            .unwrap_err();
        assert!(
            err.to_string().contains("neither an OCI image layout"),
            "{err}"
        );
    }
}
