//! The sources of `hangar-runtime` (and its macro crate), built into the
//! hangar binary and written to the data dir at start. Apps depend on
//! `hangar-runtime = "0.1"`; the builder (and `hangar run`) point cargo at
//! these copies with a `[patch]`, so an app always builds against the
//! runtime of the Hangar that runs it.

use std::path::{Path, PathBuf};

/// (path under the runtime dir, contents)
const FILES: [(&str, &str); 4] = [
    (
        "hangar-runtime/Cargo.toml",
        include_str!("../../../runtime/hangar-runtime/Cargo.toml"),
    ),
    (
        "hangar-runtime/src/lib.rs",
        include_str!("../../../runtime/hangar-runtime/src/lib.rs"),
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
