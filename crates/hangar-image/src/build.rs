//! Turning a compiled binary into an OCI image.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};

use crate::{ImageConfig, ImageError, ImageStore, RootFs, RunConfig, io_err, media};

/// The user machines run as: `nobody`, so an app is never root on the host.
const RUN_AS: &str = "65534:65534";

/// A request to package one binary.
#[derive(Debug, Clone)]
pub struct BinaryImage<'a> {
    /// The compiled binary on the host.
    pub binary: &'a Path,
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
        let mut base = LayerFiles::new();
        for lib in shared_libraries(req.binary)? {
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
        let data = fs::read(req.binary).map_err(io_err(req.binary))?;
        app.insert(PathBuf::from("/app").join(req.name), (data, 0o755));

        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for files in [base, app] {
            let (tar, gz) = write_layer(&files).map_err(io_err(req.binary))?;
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

/// Absolute paths of the shared objects `binary` loads (its `ldd` closure),
/// including the dynamic loader; empty for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let err = |reason: String| ImageError::Libraries {
        binary: binary.to_owned(),
        reason,
    };
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| err(format!("cannot run ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(err(format!("ldd failed: {}", stderr.trim())));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("statically linked") {
            return Ok(Vec::new());
        }
        if line.contains("=> not found") {
            return Err(err(format!("missing library: {line}")));
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x…)"; "linux-vdso.so.1 (0x…)" has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_a_dynamic_binary_with_its_libraries() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let req = BinaryImage {
            binary: Path::new("/bin/true"),
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
        let libs = shared_libraries(Path::new("/bin/true")).unwrap();
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")));
        for lib in libs {
            assert!(rootfs.join(lib.strip_prefix("/").unwrap()).is_file());
        }
    }
}
