//! One build at a time in a shared target dir, across processes.
//!
//! Inside one hangar the worker pool never runs two builds of an app at
//! once. A target root shared on purpose (`--build-target-root`, e.g. a
//! test suite's cache used by several hangars) has no such guard: cargo
//! locks the dir only while it runs, so between one build's cargo exit and
//! its packaging of `release/<bin>` another hangar's cargo could uplift a
//! different binary there. [`TargetLock`] holds an exclusive `flock` on
//! `<target dir>.lock` (beside the dir, which a new owner may clear) from
//! before cargo starts until the image is written; dropping it unlocks.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// How often a waiting build tries the lock again; polling keeps the wait
/// cancellable (a blocking `flock` would hold a thread until it returned).
const RETRY: Duration = Duration::from_millis(200);

/// An exclusive lock on one target dir; released on drop (the file closes).
#[derive(Debug)]
pub struct TargetLock {
    _file: File,
}

impl TargetLock {
    /// Takes the lock of `target_dir`, calling `waiting` once if another
    /// process holds it, and waiting for as long as that takes.
    pub async fn take(target_dir: &Path, waiting: impl FnOnce()) -> std::io::Result<TargetLock> {
        let mut path = target_dir.as_os_str().to_owned();
        path.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let mut waiting = Some(waiting);
        loop {
            // SAFETY: flock on a descriptor this function owns.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(TargetLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err);
            }
            if let Some(w) = waiting.take() {
                w();
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_until_the_first_drops_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("app");
        let first = TargetLock::take(&target, || panic!("nobody held it"))
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let second = tokio::spawn({
            let target = target.clone();
            async move {
                TargetLock::take(&target, move || tx.send(()).unwrap())
                    .await
                    .unwrap()
            }
        });
        // It waits (flock locks are per open file, so this holds within
        // one process too) ...
        rx.recv().await.expect("the second one was told to wait");
        tokio::time::sleep(RETRY * 2).await;
        assert!(!second.is_finished(), "it took a held lock");
        // ... until the first is dropped.
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("it got the lock once it was free")
            .unwrap();
    }
}
