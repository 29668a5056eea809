//! Reading what an app declares from its source, without running it: the
//! parameters of its `#[hangar_runtime::main]` (or `#[shuttle_runtime::main]`)
//! function and their resource attributes, found with `syn`.

use std::collections::BTreeSet;
use std::path::Path;

use hangar_core::resource::ResourceKind;
use syn::{FnArg, Item};

/// Source files larger than this are not parsed (no `main` is that long).
const MAX_FILE_BYTES: u64 = 2 << 20;
/// How many `.rs` files under `src/` are looked at, at most.
const MAX_FILES: usize = 2_000;

/// Which runtime crate the app's entry point comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `#[hangar_runtime::main]`.
    Hangar,
    /// `#[shuttle_runtime::main]`: an app written for Shuttle.
    Shuttle,
}

/// What the source declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// The runtime whose `main` attribute was found, if any.
    pub runtime: Option<Runtime>,
    /// The resources its parameters ask for.
    pub kinds: BTreeSet<ResourceKind>,
}

/// Scans `src_dir/src/**/*.rs` for the entry point and its resources.
/// Files that do not parse are skipped: cargo reports those properly.
pub fn declared(src_dir: &Path) -> Declared {
    let mut files = Vec::new();
    collect_rs(&src_dir.join("src"), &mut files);
    files.sort();
    let mut found = Declared::default();
    for file in files {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.len() > MAX_FILE_BYTES {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let d = declared_in(&text);
        if d.runtime.is_some() {
            found.runtime = found.runtime.or(d.runtime);
            found.kinds.extend(d.kinds);
        }
    }
    found
}

/// Every `.rs` file under `dir`, not following symlinks.
fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if out.len() >= MAX_FILES {
            return;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            collect_rs(&path, out);
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// What one source file declares.
pub fn declared_in(source: &str) -> Declared {
    let Ok(file) = syn::parse_file(source) else {
        return Declared::default();
    };
    let mut found = Declared::default();
    for item in file.items {
        let Item::Fn(f) = item else { continue };
        let Some(runtime) = f.attrs.iter().find_map(|a| entry_attribute(a.path())) else {
            continue;
        };
        found.runtime = Some(runtime);
        for input in &f.sig.inputs {
            let FnArg::Typed(param) = input else { continue };
            for attr in &param.attrs {
                if let Some(kind) = attr
                    .path()
                    .segments
                    .last()
                    .and_then(|s| ResourceKind::from_attribute(&s.ident.to_string()))
                {
                    found.kinds.insert(kind);
                }
            }
        }
    }
    found
}

/// `hangar_runtime::main` or `shuttle_runtime::main`.
fn entry_attribute(path: &syn::Path) -> Option<Runtime> {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    match segments.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["hangar_runtime", "main"] => Some(Runtime::Hangar),
        ["shuttle_runtime", "main"] => Some(Runtime::Shuttle),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hangar_resources() {
        let d = declared_in(
            r#"
            use axum::Router;
            #[hangar_runtime::main]
            async fn main(
                #[hangar_runtime::Postgres] db: sqlx::PgPool,
                #[hangar_runtime::Secrets] secrets: hangar_runtime::SecretStore,
            ) -> hangar_runtime::Result<Router> { todo!() }
            "#,
        );
        assert_eq!(d.runtime, Some(Runtime::Hangar));
        assert_eq!(
            d.kinds.into_iter().collect::<Vec<_>>(),
            vec![ResourceKind::Postgres, ResourceKind::Secrets]
        );
    }

    #[test]
    fn finds_shuttle_resources() {
        let d = declared_in(
            r#"
            #[shuttle_runtime::main]
            async fn main(
                #[shuttle_shared_db::Postgres] pool: sqlx::PgPool,
            ) -> shuttle_axum::ShuttleAxum { todo!() }
            "#,
        );
        assert_eq!(d.runtime, Some(Runtime::Shuttle));
        assert_eq!(
            d.kinds.into_iter().collect::<Vec<_>>(),
            vec![ResourceKind::Postgres]
        );
    }

    #[test]
    fn plain_programs_and_broken_files_declare_nothing() {
        assert_eq!(declared_in("fn main() {}"), Declared::default());
        assert_eq!(
            declared_in("#[tokio::main] async fn main() {}"),
            Declared::default()
        );
        assert_eq!(declared_in("fn main( {"), Declared::default());
        // An attribute in a comment or a string is not a declaration.
        assert_eq!(
            declared_in(
                "// #[hangar_runtime::main]\nfn main() { let _ = \"#[hangar_runtime::Postgres]\"; }"
            ),
            Declared::default()
        );
    }

    #[test]
    fn scans_the_source_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/bin")).unwrap();
        std::fs::write(dir.path().join("src/lib.rs"), "pub fn x() {}").unwrap();
        std::fs::write(
            dir.path().join("src/bin/app.rs"),
            "#[hangar_runtime::main] async fn main(#[hangar_runtime::Secrets] s: hangar_runtime::SecretStore) -> hangar_runtime::Result<axum::Router> { todo!() }",
        )
        .unwrap();
        let d = declared(dir.path());
        assert_eq!(d.runtime, Some(Runtime::Hangar));
        assert!(d.kinds.contains(&ResourceKind::Secrets));
        assert!(!d.kinds.contains(&ResourceKind::Postgres));
    }
}
