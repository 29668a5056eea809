//! What the builder keeps on disk, kept bounded and collected.
//!
//! - **Build logs under a per-app cap.** Each build's log is capped on its
//!   own (`max_log_bytes`); after every build the app's logs are walked
//!   newest first and, once their sum passes `app_logs_cap`, the older
//!   ones are removed (the newest is always kept). A removed log reads as
//!   empty; its build row stays.
//! - **An app's leftovers go with it.** [`Builder::forget_app`] removes the
//!   logs of its builds and its work dir (and its target dir, unless the
//!   target root is shared on purpose) when the app is deleted.
//! - **Collected at start.** [`Builder::collect_leftovers`] removes logs
//!   of builds the store no longer has and work and target dirs whose
//!   owner ([`super::OWNER_FILE`]) is no app any more: what a crash
//!   between deleting an app's rows and its files leaves.

use std::collections::HashSet;
use std::path::Path;

use hangar_store::App;
use tracing::{info, warn};

use super::{BuildError, Builder, OWNER_FILE};

/// How many of an app's builds the per-app pass looks at: older ones than
/// that are removed by it.
const BUILDS_LOOKED_AT: i64 = 10_000;

impl Builder {
    /// Removes the app's oldest build logs while their sum is over the
    /// per-app cap; returns how many were removed.
    pub async fn prune_app_logs(&self, app_id: &str) -> Result<usize, BuildError> {
        let builds = self
            .inner
            .store
            .builds_for_app(app_id, BUILDS_LOOKED_AT)
            .await?;
        let cap = self.inner.cfg.app_logs_cap;
        let mut total: u64 = 0;
        let mut removed = 0;
        for (i, b) in builds.iter().enumerate() {
            let path = self.log_path(&b.id);
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            total = total.saturating_add(meta.len());
            // The newest log stays whatever its size (it has its own cap);
            // a running build's log is never cut from under it.
            if i > 0 && total > cap && b.status.is_terminal() && std::fs::remove_file(&path).is_ok()
            {
                removed += 1;
            }
        }
        if removed > 0 {
            info!(
                app = app_id,
                removed, "build logs over the app's cap removed, oldest first"
            );
        }
        Ok(removed)
    }

    /// Removes what the builder kept for an app that is being deleted: the
    /// logs of its builds, its work dir and (unless shared) its target dir.
    pub async fn forget_app(&self, app: &App) -> Result<(), BuildError> {
        for b in self
            .inner
            .store
            .builds_for_app(&app.id, BUILDS_LOOKED_AT)
            .await?
        {
            let _ = std::fs::remove_file(self.log_path(&b.id));
        }
        let cfg = &self.inner.cfg;
        remove_owned(&cfg.work_dir.join(&app.name), &app.id);
        if !cfg.shared_target_root {
            remove_owned(&cfg.target_root.join(&app.name), &app.id);
        }
        Ok(())
    }

    /// At start: removes build logs no build row names, and work and
    /// target dirs whose owning app is gone.
    pub async fn collect_leftovers(&self) -> Result<(), BuildError> {
        let store = &self.inner.store;
        let builds = store.build_ids().await?;
        let mut live_apps = HashSet::new();
        for app in store.all_apps().await? {
            live_apps.insert(app.id);
        }
        let cfg = self.inner.cfg.clone();
        tokio::task::spawn_blocking(move || {
            let logs = orphan_logs(&cfg.logs_dir, &builds);
            let mut dirs = orphan_dirs(&cfg.work_dir, &live_apps);
            if !cfg.shared_target_root {
                dirs += orphan_dirs(&cfg.target_root, &live_apps);
            }
            if logs + dirs > 0 {
                warn!(
                    logs,
                    dirs, "removed build logs and dirs of deleted apps left by an earlier hangar"
                );
            }
        })
        .await
        .map_err(|e| BuildError::Config(format!("collecting leftovers: {e}")))?;
        Ok(())
    }
}

/// Removes `dir` if its owner file names `app_id` (or it has none).
fn remove_owned(dir: &Path, app_id: &str) {
    match std::fs::read_to_string(dir.join(OWNER_FILE)) {
        Ok(owner) if owner.trim() != app_id => {}
        _ => {
            if let Err(e) = std::fs::remove_dir_all(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(dir = %dir.display(), "removing a deleted app's build dir: {e}");
            }
        }
    }
}

/// Removes `<id>.log` files of `dir` whose build is not in `builds`.
fn orphan_logs(dir: &Path, builds: &HashSet<String>) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if !builds.contains(id) && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// Removes the per-app dirs of `root` whose owner file names an app not
/// in `live`. A dir with no owner file (made before owners were recorded)
/// is left alone: its app cannot be told from its name alone.
fn orphan_dirs(root: &Path, live: &HashSet<String>) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(e.path().join(OWNER_FILE)) else {
            continue;
        };
        if !live.contains(owner.trim()) && std::fs::remove_dir_all(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_logs_and_dirs_of_what_is_gone_are_collected() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        for id in ["bld_kept", "bld_gone"] {
            std::fs::write(logs.join(format!("{id}.log")), "x").unwrap();
        }
        std::fs::write(logs.join("notes.txt"), "not a log").unwrap();
        let builds: HashSet<String> = ["bld_kept".to_owned()].into();
        assert_eq!(orphan_logs(&logs, &builds), 1);
        assert!(logs.join("bld_kept.log").exists());
        assert!(!logs.join("bld_gone.log").exists());
        assert!(logs.join("notes.txt").exists());

        let work = tmp.path().join("work");
        for (name, owner) in [
            ("live", Some("app_1")),
            ("dead", Some("app_2")),
            ("old", None),
        ] {
            let d = work.join(name);
            std::fs::create_dir_all(d.join("src")).unwrap();
            if let Some(o) = owner {
                std::fs::write(d.join(OWNER_FILE), o).unwrap();
            }
        }
        let live: HashSet<String> = ["app_1".to_owned()].into();
        assert_eq!(orphan_dirs(&work, &live), 1);
        assert!(work.join("live/src").exists());
        assert!(!work.join("dead").exists());
        assert!(
            work.join("old/src").exists(),
            "an unowned dir is left alone"
        );

        // Forgetting an app removes its own dir, never another owner's.
        remove_owned(&work.join("live"), "app_9");
        assert!(work.join("live").exists());
        remove_owned(&work.join("live"), "app_1");
        assert!(!work.join("live").exists());
    }
}
