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
        // Opened beneath the source: a link never leads the read out of it.
        let Ok(rel) = file.strip_prefix(src_dir) else {
            continue;
        };
        let Ok(data) = hangar_core::archive::read_file_beneath(src_dir, rel, MAX_FILE_BYTES) else {
            continue;
        };
        let Ok(text) = String::from_utf8(data) else {
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

/// The most time a scan may take.
const SCAN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// [`declared`], in a process of its own when `scanner` is given (see
/// [`scan_main`]): an error is a build failure, worded for the user.
pub async fn declared_isolated(scanner: Option<&Path>, src_dir: &Path) -> Result<Declared, String> {
    let Some(scanner) = scanner else {
        let src = src_dir.to_owned();
        return tokio::task::spawn_blocking(move || declared(&src))
            .await
            .map_err(|e| format!("reading the source: {e}"));
    };
    let run = tokio::process::Command::new(scanner)
        .arg(SCAN_COMMAND)
        .arg(src_dir)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SCAN_TIMEOUT, run)
        .await
        .map_err(|_| {
            format!(
                "reading the resources your code declares took over {} s; is a source file huge?",
                SCAN_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("reading the resources your code declares: {e}"))?;
    if !out.status.success() {
        use std::os::unix::process::ExitStatusExt;
        let how = match out.status.signal() {
            Some(sig) => format!("killed by signal {sig}"),
            None => format!("exit status {}", out.status.code().unwrap_or(-1)),
        };
        return Err(format!(
            "reading the resources your code declares failed ({how}): a source file under src/ \
             nests expressions or types too deeply for Hangar's parser; split it up"
        ));
    }
    parse_scan(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| "reading the resources your code declares: a garbled answer".to_owned())
}

/// The hidden subcommand of the `hangar` binary that runs [`scan_main`].
pub const SCAN_COMMAND: &str = "__scan-resources";

/// The scanner process: prints what `src_dir` declares, one line each
/// (`runtime hangar|shuttle`, `kind <resource>`), then `end`. It runs on a
/// thread with a fixed 64 MiB stack, so that how deep a tenant's source
/// may nest is the same on every host.
pub fn scan_main(src_dir: &Path) -> std::process::ExitCode {
    let dir = src_dir.to_owned();
    let scanned = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || declared(&dir))
        .ok()
        .and_then(|t| t.join().ok());
    let Some(d) = scanned else {
        return std::process::ExitCode::FAILURE;
    };
    let mut out = String::new();
    if let Some(r) = d.runtime {
        out.push_str(match r {
            Runtime::Hangar => "runtime hangar\n",
            Runtime::Shuttle => "runtime shuttle\n",
        });
    }
    for k in &d.kinds {
        out.push_str(&format!("kind {}\n", k.as_str()));
    }
    out.push_str("end\n");
    print!("{out}");
    std::process::ExitCode::SUCCESS
}

fn parse_scan(text: &str) -> Option<Declared> {
    let mut d = Declared::default();
    let mut ended = false;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("runtime", "hangar")) => d.runtime = Some(Runtime::Hangar),
            Some(("runtime", "shuttle")) => d.runtime = Some(Runtime::Shuttle),
            Some(("kind", k)) => {
                d.kinds.insert(k.parse().ok()?);
            }
            None if line == "end" => ended = true,
            _ => return None,
        }
    }
    ended.then_some(d)
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
    fn scan_answers_round_trip_and_garbage_is_refused() {
        let d = parse_scan("runtime shuttle\nkind postgres\nend\n").unwrap();
        assert_eq!(d.runtime, Some(Runtime::Shuttle));
        assert_eq!(d.kinds.len(), 1);
        assert_eq!(parse_scan("end\n"), Some(Declared::default()));
        // Cut short (the scanner died mid-way) or garbled: no answer.
        assert_eq!(parse_scan("runtime hangar\n"), None);
        assert_eq!(parse_scan("kind nonsense\nend\n"), None);
        assert_eq!(parse_scan("hello\nend\n"), None);
    }

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
