//! The one tar unpacker, fed arbitrary bytes as a source upload (gzip and
//! plain) and as an image layer: it must refuse or unpack, never panic, and
//! never write outside its destination.
#![no_main]

use std::path::Path;

use hangar_core::archive::{self, Limits};
use libfuzzer_sys::fuzz_target;

/// Small caps, so a run explores headers rather than writing gigabytes.
const LIMITS: Limits = Limits {
    max_unpacked_bytes: 1 << 20,
    max_entries: 256,
    deadline: None,
};

fuzz_target!(|data: &[u8]| {
    let _ = archive::validate_tar_gz(data, LIMITS);
    let Ok(dir) = tempfile::tempdir() else { return };
    let root = dir.path().join("root");
    let _ = archive::unpack_tar(data, &root.join("src"), LIMITS);
    let _ = archive::unpack_layer(data, &root.join("layer"), LIMITS);
    // Nothing lands beside the two trees.
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        beside.len() <= 1,
        "written outside the destination: {beside:?}"
    );
    assert_inside(&root.join("src"), &root.join("src"));
});

/// Every symlink an upload leaves resolves inside its tree.
fn assert_inside(root: &Path, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(real) = std::fs::canonicalize(&path) {
                let base = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
                assert!(real.starts_with(&base), "{path:?} resolves to {real:?}");
            }
        } else if meta.is_dir() {
            assert_inside(root, &path);
        }
    }
}
