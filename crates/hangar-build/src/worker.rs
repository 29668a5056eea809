//! The queue's side of the builder: enqueueing (superseding older queued
//! builds of the app), the workers that claim builds, and cancelling.
//!
//! `BuildConfig::workers` workers run at once, each claiming the next
//! build from the store (fair across orgs, one build per app: see
//! `hangar_store`'s build queue) and running it in a task of its own, so
//! a panic fails only that build. A cancelled running build's task is
//! aborted: dropping it kills and deletes its build container (or, on the
//! host, the worker kills cargo's process group first); then whatever is
//! left in the build's cgroups is killed (`sandbox::stop_build`).

use std::time::Duration;

use hangar_core::status::BuildStatus;
use hangar_store::{Build, Enqueued};
use tokio::sync::watch;
use tracing::{error, warn};

use hangar_core::supervise::panic_text;

use crate::{BuildError, Builder, append, cargo};

/// The most builds a builder runs at once (`hangar up --build-workers`).
pub const MAX_WORKERS: usize = 32;

/// The default number of workers: 2, or 1 on a one-CPU host.
pub fn default_workers() -> usize {
    crate::sandbox::host_cpus().clamp(1, 2)
}

/// How long a cancel waits for a running build's processes to be gone.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// What [`Builder::cancel`] did.
#[derive(Debug)]
pub enum Cancel {
    /// No such build.
    NotFound,
    /// It was queued or running, and is now cancelled (the row after).
    Cancelled { was: BuildStatus, build: Build },
    /// It had finished already; nothing changed (its row).
    Finished(Build),
}

/// Keeps a running build's log under `rate` bytes a second (each second
/// what it grew by past that is cut, with a note: see
/// [`hangar_core::log_rate`]) and resolves once it is larger than `max`
/// bytes (checked every 250 ms); never while it stays under.
async fn watch_log(log: &std::path::Path, max: u64, rate: u64) {
    let len = async || tokio::fs::metadata(log).await.map_or(0, |m| m.len());
    let mut before = len().await;
    let mut tick: u32 = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        tick = tick.wrapping_add(1);
        let mut now = len().await;
        // Once a second, what it grew by past its rate is cut (the file
        // is opened only when it did).
        if tick.is_multiple_of(4) {
            if now.saturating_sub(before) > rate {
                let path = log.to_owned();
                let cut = tokio::task::spawn_blocking(move || {
                    hangar_core::log_rate::cut_to_rate(&path, before, rate)
                })
                .await;
                if let Ok(Ok(Some(dropped))) = cut {
                    warn!(log = %log.display(), dropped, "build log over its rate: cut");
                }
                now = len().await;
            }
            before = now;
        }
        if now > max {
            return;
        }
    }
}

impl Builder {
    /// Stops a running build: on the host cargo's whole process group; in
    /// the sandbox, dropping the task kills and deletes its container, then
    /// whatever is left in its cgroups is killed.
    async fn kill_build(&self, id: &str, task: tokio::task::JoinHandle<()>) {
        if let Ok(Some(b)) = self.inner.store.build(id).await
            && let Some(pgid) = b.builder_pgid
        {
            cargo::kill_orphan(pgid);
        }
        task.abort();
        let _ = task.await;
        if let crate::BuildSandbox::Runc(sb) = &self.inner.cfg.sandbox {
            crate::sandbox::stop_build(sb, id, CANCEL_WAIT / 2).await;
        }
    }

    /// Queues a build of `source_digest` for the app, superseding its
    /// queued builds (each gets a line naming the newer one in its log),
    /// and wakes a worker. Refused with `StoreError::QueueFull` past the
    /// per-org cap.
    pub async fn enqueue(&self, app_id: &str, source_digest: &str) -> Result<Enqueued, BuildError> {
        let queued = self
            .inner
            .store
            .enqueue_build(app_id, source_digest, self.inner.cfg.max_queued_per_org)
            .await?;
        for old in &queued.superseded {
            append(
                &self.log_path(old),
                &format!(
                    "==> superseded by build {}, a newer deploy of this app, before it started\n",
                    queued.build.id
                ),
            )
            .await;
        }
        self.notify();
        Ok(queued)
    }

    /// [`Builder::enqueue`] of commit `sha`'s source (a push, a poll or
    /// `hangar git deploy`). A running build of another commit of the app
    /// is superseded by it and stopped: the newer commit deploys sooner,
    /// and the older one can no longer complete after it.
    pub async fn enqueue_commit(
        &self,
        app_id: &str,
        source_digest: &str,
        sha: &str,
    ) -> Result<Enqueued, BuildError> {
        let queued = self
            .inner
            .store
            .enqueue_commit_build(
                app_id,
                source_digest,
                self.inner.cfg.max_queued_per_org,
                Some(sha),
            )
            .await?;
        let note = format!(
            "==> superseded by build {} of commit {sha}, a newer commit of this app\n",
            queued.build.id
        );
        for old in &queued.superseded {
            append(&self.log_path(old), &note).await;
        }
        let running = self
            .inner
            .store
            .supersede_running_commit_build(app_id, &queued.build.id, sha)
            .await?;
        if let Some(old) = running {
            append(&self.log_path(&old), &note).await;
            if !self.inner.running.cancel(&old, CANCEL_WAIT).await {
                warn!(build = %old, "superseded a build no worker here was running");
            }
        }
        self.notify();
        Ok(queued)
    }

    /// The most builds of one org that may wait in the queue.
    pub fn max_queued_per_org(&self) -> u32 {
        self.inner.cfg.max_queued_per_org
    }

    /// Cancels build `id`: a queued one at once; a running one once its
    /// worker has killed what it runs (bounded wait). The caller checks
    /// that the build is its org's.
    pub async fn cancel(&self, id: &str) -> Result<Cancel, BuildError> {
        let reason = "cancelled by its organisation (hangar builds cancel)";
        let Some((was, build)) = self.inner.store.cancel_build(id, reason).await? else {
            return Ok(Cancel::NotFound);
        };
        match was {
            BuildStatus::Queued => {
                append(
                    &self.log_path(id),
                    "==> build cancelled before it started\n",
                )
                .await;
            }
            BuildStatus::Building => {
                if !self.inner.running.cancel(id, CANCEL_WAIT).await {
                    warn!(build = %id, "cancelled a build no worker here was running");
                }
            }
            _ => return Ok(Cancel::Finished(build)),
        }
        Ok(Cancel::Cancelled { was, build })
    }

    /// The workers: `BuildConfig::workers` of them, until `shutdown`
    /// becomes true. A build cut off by shutdown stays `building` and is
    /// re-queued by [`Builder::recover`] on the next start.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.inner.cfg.workers {
            workers.spawn(self.clone().worker(shutdown.clone()));
        }
        while let Some(ended) = workers.join_next().await {
            // A worker only ends at shutdown; one that panicked is
            // replaced, so the builder keeps its capacity.
            if let Err(e) = ended
                && e.is_panic()
                && !*shutdown.borrow()
            {
                error!("a build worker panicked: {}", panic_text(e.into_panic()));
                workers.spawn(self.clone().worker(shutdown.clone()));
            }
        }
    }

    /// One worker: claim, build, repeat.
    async fn worker(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let claimed = match self.inner.store.claim_next_build().await {
                Ok(b) => b,
                Err(e) => {
                    warn!("builder: claiming a build: {e}");
                    None
                }
            };
            match claimed {
                Some(build) => {
                    // Another build may be waiting for an idle worker.
                    self.inner.wake.notify_one();
                    if !self.work(build, &mut shutdown).await {
                        return;
                    }
                }
                None => {
                    tokio::select! {
                        _ = self.inner.wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// Runs one claimed build to its end; false at shutdown.
    async fn work(&self, build: Build, shutdown: &mut watch::Receiver<bool>) -> bool {
        let (id, log) = (build.id.clone(), self.log_path(&build.id));
        let mut ticket = self.inner.running.enter(&id, &build.app_id).await;
        // A cancel between the claim and `enter` found no ticket to
        // signal, but the row says so.
        match self.inner.store.build(&id).await {
            Ok(Some(b)) if b.status == BuildStatus::Building => {}
            Ok(_) => return true,
            Err(e) => warn!(build = %id, "reading the claimed build: {e}"),
        }
        // Its own task: a panic anywhere in one build fails that build,
        // with a reason, and the worker goes on.
        let this = self.clone();
        let mut task = tokio::spawn(async move { this.build(build).await });
        tokio::select! {
            done = &mut task => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    let reason = format!(
                        "internal error in hangar while building ({}); this build is \
                         failed, the next ones run",
                        panic_text(e.into_panic())
                    );
                    error!(build = %id, "{reason}");
                    append(&log, &format!("==> build failed: {reason}\n")).await;
                    if let Err(e) = self.inner.store.fail_build(&id, &reason).await {
                        warn!(build = %id, "recording failure: {e}");
                    }
                }
            }
            _ = ticket.cancelled() => {
                self.kill_build(&id, task).await;
                append(&log, "==> build cancelled; everything it ran was killed\n").await;
            }
            _ = watch_log(&log, self.inner.cfg.max_log_bytes, self.inner.cfg.log_rate) => {
                self.kill_build(&id, task).await;
                let reason = format!(
                    "its log passed {} MiB (hangar up --build-log-max-mb); everything it ran was killed",
                    self.inner.cfg.max_log_bytes >> 20
                );
                append(&log, &format!("\n==> build failed: {reason}\n")).await;
                warn!(build = %id, "build failed: {reason}");
                if let Err(e) = self.inner.store.fail_build(&id, &reason).await {
                    warn!(build = %id, "recording failure: {e}");
                }
            }
            _ = shutdown.changed() => {
                task.abort();
                return false;
            }
        }
        drop(ticket);
        true
    }
}
