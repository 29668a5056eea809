//! Packing a cargo project for upload.
//!
//! What goes in: every file under the project directory that git would not
//! ignore (`.gitignore`, `.git/info/exclude`, and `.hangarignore`, whether
//! or not the directory is a git repository). What never goes in: `.git/`
//! and the root `target/`. Symlinks are packed as symlinks (the server
//! refuses any that point outside the project).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;

/// Default cap on the packed archive; the server has its own.
pub const DEFAULT_MAX_BYTES: u64 = 50 * 1024 * 1024;

/// A packed project.
pub struct Packed {
    /// The `.tar.gz` bytes.
    pub data: Vec<u8>,
    /// Number of files packed.
    pub files: usize,
}

/// Packs `dir` into a `.tar.gz`, failing clearly past `max_bytes`.
pub fn pack(dir: &Path, max_bytes: u64) -> Result<Packed> {
    let root = dir
        .canonicalize()
        .with_context(|| format!("{} does not exist", dir.display()))?;
    if !root.join("Cargo.toml").is_file() {
        bail!(
            "{} has no Cargo.toml: run `hangar deploy` in a cargo project (or pass its directory)",
            root.display()
        );
    }
    let target = root.join("target");
    let walker = ignore::WalkBuilder::new(&root)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .parents(false)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(".hangarignore")
        .filter_entry(move |e| {
            e.file_name() != ".git"
                && e.path() != target
                // Secrets travel through the secrets API, sealed; never
                // in the source archive.
                && !(e.depth() == 1
                    && crate::secrets_file::FILES
                        .iter()
                        .any(|f| e.file_name() == std::ffi::OsStr::new(f)))
        })
        .build();
    let mut entries = Vec::new();
    for entry in walker {
        let entry = entry.context("walking the project")?;
        if entry.depth() == 0 {
            continue;
        }
        entries.push(entry.into_path());
    }
    entries.sort();

    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    tar.follow_symlinks(false);
    let mut files = 0;
    let mut raw_total: u64 = 0;
    let mut sizes: Vec<(u64, String)> = Vec::new();
    for path in &entries {
        let rel = path.strip_prefix(&root).unwrap_or(path);
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("reading {}", path.display()))?;
        if meta.is_file() {
            files += 1;
            raw_total += meta.len();
            sizes.push((meta.len(), rel.display().to_string()));
            // Cheap early exit: even well-compressed data this large is over.
            if raw_total > max_bytes.saturating_mul(20) {
                break;
            }
        }
        tar.append_path_with_name(path, rel)
            .with_context(|| format!("packing {}", rel.display()))?;
    }
    let gz = tar.into_inner().context("packing")?;
    let mut data = gz.finish().context("compressing")?;
    data.flush().ok();
    if data.len() as u64 > max_bytes || raw_total > max_bytes.saturating_mul(20) {
        sizes.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
        let biggest: Vec<String> = sizes
            .iter()
            .take(5)
            .map(|(n, p)| format!("  {} {p}", human_bytes(*n)))
            .collect();
        bail!(
            "the project packs to more than the cap of {}; is a build output or data directory missing from .gitignore (or .hangarignore)?\nlargest files:\n{}",
            human_bytes(max_bytes),
            biggest.join("\n")
        );
    }
    Ok(Packed { data, files })
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn names(data: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(data));
        let mut v: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn respects_gitignore_and_skips_target_git_and_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("src/target")).unwrap();
        fs::create_dir_all(d.join("target/release")).unwrap();
        fs::create_dir_all(d.join(".git")).unwrap();
        fs::create_dir_all(d.join("data")).unwrap();
        fs::write(d.join("Cargo.toml"), "[package]").unwrap();
        fs::write(d.join("src/main.rs"), "fn main(){}").unwrap();
        fs::write(d.join("src/target/mod.rs"), "// a module named target").unwrap();
        fs::write(d.join("target/release/app"), "binary").unwrap();
        fs::write(d.join(".git/HEAD"), "ref").unwrap();
        fs::write(d.join(".gitignore"), "data/\n*.log\n").unwrap();
        fs::write(d.join("data/big.bin"), "x").unwrap();
        fs::write(d.join("debug.log"), "x").unwrap();
        fs::write(d.join("Secrets.toml"), "A = 'x'").unwrap();
        fs::write(d.join("Secrets.dev.toml"), "A = 'y'").unwrap();
        let packed = pack(d, DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(
            names(&packed.data),
            [
                ".gitignore",
                "Cargo.toml",
                "src",
                "src/main.rs",
                "src/target",
                "src/target/mod.rs"
            ]
        );
        assert_eq!(packed.files, 4);
    }

    #[test]
    fn over_the_cap_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("Cargo.toml"), "[package]").unwrap();
        // Incompressible data, so the archive really is large.
        let mut noise = Vec::with_capacity(64 * 1024);
        let mut x: u32 = 12345;
        for _ in 0..64 * 1024 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            noise.push(x as u8);
        }
        fs::write(d.join("blob.bin"), &noise).unwrap();
        let err = pack(d, 16 * 1024).err().unwrap().to_string();
        assert!(
            err.contains("cap of 16.0 KiB") && err.contains("blob.bin"),
            "{err}"
        );
    }

    #[test]
    fn a_directory_without_cargo_toml_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = pack(dir.path(), DEFAULT_MAX_BYTES)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no Cargo.toml"), "{err}");
    }
}
