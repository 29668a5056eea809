//! The sources of `hangar-runtime` (and its macro crate), built into the
//! hangar binary and written to the data dir at start. Apps depend on
//! `hangar-runtime = "0.1"`; the builder (and `hangar run`) point cargo at
//! these copies with a `[patch]`, so an app always builds against the
//! runtime of the Hangar that runs it.

use std::path::{Path, PathBuf};

/// (path under the runtime dir, contents)
const FILES: [(&str, &str); 6] = [
    (
        "hangar-runtime/Cargo.toml",
        include_str!("../../../runtime/hangar-runtime/Cargo.toml"),
    ),
    (
        "hangar-runtime/src/lib.rs",
        include_str!("../../../runtime/hangar-runtime/src/lib.rs"),
    ),
    (
        "hangar-runtime/src/cache.rs",
        include_str!("../../../runtime/hangar-runtime/src/cache.rs"),
    ),
    (
        "hangar-runtime/src/pubsub.rs",
        include_str!("../../../runtime/hangar-runtime/src/pubsub.rs"),
    ),
    (
        "hangar-runtime-macros/Cargo.toml",
        include_str!("../../../runtime/hangar-runtime-macros/Cargo.toml"),
    ),
    (
        "hangar-runtime-macros/src/lib.rs",
        include_str!("../../../runtime/hangar-runtime-macros/src/lib.rs"),
    ),
];

/// Writes the runtime crates under `dir` (rewriting only what differs, so
/// cargo's fingerprints stay valid) and returns `dir`.
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    for (rel, contents) in FILES {
        let path = dir.join(rel);
        if std::fs::read(&path).is_ok_and(|old| old == contents.as_bytes()) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)?;
    }
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every source file of the runtime crates is embedded: a module added
    /// there and forgotten here would break every app's build.
    #[test]
    fn every_runtime_source_file_is_embedded() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runtime");
        for krate in ["hangar-runtime", "hangar-runtime-macros"] {
            let src = root.join(krate).join("src");
            for entry in std::fs::read_dir(&src).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                let rel = format!("{krate}/src/{name}");
                assert!(
                    FILES.iter().any(|(p, _)| *p == rel),
                    "{rel} is not in runtime_src::FILES"
                );
            }
        }
    }
}
