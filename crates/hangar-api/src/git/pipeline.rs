//! From a commit to a queued build: fetch the branch, decide, archive,
//! enqueue. One app's commits are handled one at a time (a lock per app),
//! and only the branch's head as fetched now is ever built, so a late,
//! replayed or out-of-order delivery can never put an older commit in
//! front of a newer one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_core::status::{BuildStatus, CommitState};
use hangar_git::{GitConfig, Mirror, Push};
use hangar_resources::Vault;
use hangar_store::{App, GitCommit, GitConnection, NewDelivery, StoreError};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{ApiError, ApiState};

/// Deploys from git: the mirrors, the vault that seals URLs and secrets,
/// and one lock per app. Cheap to clone.
#[derive(Clone)]
pub struct GitDeploys(Arc<Inner>);

struct Inner {
    cfg: GitConfig,
    mirrors: PathBuf,
    vault: Vault,
    poll_every: Option<Duration>,
    preview_ttl_secs: i64,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Why a commit is looked at.
pub struct Trigger<'a> {
    /// How it was heard of, as `hangar why` says it (`github webhook`).
    pub via: &'a str,
    /// The push that reported it, if one did.
    pub push: Option<&'a Push>,
    /// Build the head even when a build of it exists (a manual deploy
    /// after a failure).
    pub rebuild: bool,
}

impl GitDeploys {
    /// `mirrors` is the directory of the apps' bare mirrors; `poll_every`
    /// None turns polling off.
    pub fn new(
        cfg: GitConfig,
        mirrors: PathBuf,
        vault: Vault,
        poll_every: Option<Duration>,
        preview_ttl_secs: i64,
    ) -> GitDeploys {
        GitDeploys(Arc::new(Inner {
            cfg,
            mirrors,
            vault,
            poll_every,
            preview_ttl_secs,
            locks: Mutex::default(),
        }))
    }

    pub fn config(&self) -> &GitConfig {
        &self.0.cfg
    }

    /// A new preview's time to live, in seconds.
    pub fn preview_ttl_secs(&self) -> i64 {
        self.0.preview_ttl_secs
    }

    /// Seconds between polls (0: off).
    pub fn poll_secs(&self) -> u64 {
        self.0.poll_every.map_or(0, |d| d.as_secs())
    }

    pub fn seal(&self, app_id: &str, what: &str, plain: &[u8]) -> Vec<u8> {
        self.0.vault.seal(&context(app_id, what), plain)
    }

    pub fn unseal(&self, app_id: &str, what: &str, sealed: &[u8]) -> Result<Vec<u8>, ApiError> {
        Ok(self.0.vault.unseal(&context(app_id, what), sealed)?)
    }

    pub(crate) fn lock_of(&self, app_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Locks nobody holds or waits for are dropped as others are made.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(app_id.to_owned()).or_default().clone()
    }

    /// Removes the app's mirror (its app is gone).
    pub async fn forget(&self, app_id: &str) {
        let dir = self.mirror_dir(app_id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(app = %app_id, "removing the app's git mirror: {e}");
        }
    }

    pub(crate) fn mirror_dir(&self, app_id: &str) -> PathBuf {
        self.0.mirrors.join(format!("{app_id}.git"))
    }

    /// Fetches the connected branch and builds its head if it needs a
    /// build; the commit `trigger.push` reported, when it is not the head,
    /// is marked superseded by it. Returns the head's commit as it is
    /// after.
    pub async fn deploy_head(
        &self,
        state: &ApiState,
        app: &App,
        conn: &GitConnection,
        trigger: Trigger<'_>,
    ) -> Result<GitCommit, ApiError> {
        let lock = self.lock_of(&app.id);
        let _held = lock.lock().await;
        let store = &state.store;
        let pushed = trigger.push.map(|p| p.after.as_str());
        // The pushed commit's row as it was before this look (its state
        // decides below whether it may be marked superseded).
        let pushed_commit = match pushed {
            Some(sha) => Some(store.commit_heard(&app.id, sha, trigger.via).await?.0),
            None => None,
        };
        let url = String::from_utf8(self.unseal(&app.id, "repo", &conn.repo_sealed)?)
            .map_err(ApiError::internal)?;
        let fetched = async {
            let mirror = Mirror::open(&self.mirror_dir(&app.id), self.0.cfg.clone()).await?;
            let head = mirror.fetch_branch(&url, &conn.branch).await?;
            Ok::<_, hangar_git::GitError>((mirror, head))
        }
        .await;
        let (mirror, head) = match fetched {
            Ok(ok) => ok,
            Err(e) => {
                let why = format!("fetching {} from {}: {e}", conn.branch, conn.repo_shown);
                store.set_git_head(&app.id, None, Some(&why)).await?;
                if let Some(sha) = pushed {
                    store
                        .set_commit_state(&app.id, sha, CommitState::Failed, Some(&why), None)
                        .await?;
                }
                return Err(ApiError::new(http::StatusCode::BAD_GATEWAY, why));
            }
        };
        store.set_git_head(&app.id, Some(&head), None).await?;
        if let Some(old) = pushed_commit.filter(|c| c.sha != head) {
            let sha = old.sha.as_str();
            if old.state != CommitState::Built {
                let detail = if mirror.is_ancestor(sha, &head).await.unwrap_or(false) {
                    format!("{} moved on to {head} before it was fetched", conn.branch)
                } else {
                    format!(
                        "{} is at {head}; this commit is not in its history",
                        conn.branch
                    )
                };
                store
                    .set_commit_state(
                        &app.id,
                        sha,
                        CommitState::Superseded,
                        Some(&detail),
                        Some(&head),
                    )
                    .await?;
            }
        }
        let via = match pushed {
            Some(sha) if sha != head => format!("{} (head of {})", trigger.via, conn.branch),
            _ => trigger.via.to_owned(),
        };
        let (commit, _) = store.commit_heard(&app.id, &head, &via).await?;
        // Built already (its build and release say the rest), unless a
        // rebuild was asked for; never twice at once.
        if commit.state == CommitState::Built && !trigger.rebuild {
            return Ok(commit);
        }
        if let Some(last) = store.last_commit_build(&app.id).await?
            && last.git_sha.as_deref() == Some(head.as_str())
            && matches!(last.status, BuildStatus::Queued | BuildStatus::Building)
        {
            return Ok(commit);
        }
        if let Some(push) = trigger.push.filter(|p| p.after == head)
            && !push.touches(&conn.subdir)
        {
            let detail = format!("no file under {}/ changed", conn.subdir);
            store
                .set_commit_state(&app.id, &head, CommitState::Ignored, Some(&detail), None)
                .await?;
            return self.commit(state, app, &head).await;
        }
        if let Err(why) = self.build(state, app, conn, &mirror, &head).await {
            store
                .set_commit_state(&app.id, &head, CommitState::Failed, Some(&why), None)
                .await?;
        }
        self.commit(state, app, &head).await
    }

    async fn commit(&self, state: &ApiState, app: &App, sha: &str) -> Result<GitCommit, ApiError> {
        let found = state.store.commits_by_prefix(&app.id, sha).await?;
        found
            .into_iter()
            .find(|c| c.sha == sha)
            .ok_or_else(|| ApiError::internal(format!("commit {sha} vanished")))
    }

    /// Archives the commit, stores it as a source and queues its build;
    /// the reason in words if any step fails.
    pub(crate) async fn build(
        &self,
        state: &ApiState,
        app: &App,
        conn: &GitConnection,
        mirror: &Mirror,
        sha: &str,
    ) -> Result<(), String> {
        let message = mirror
            .message(sha)
            .await
            .map_err(|e| format!("reading the commit: {e}"))?;
        state
            .store
            .set_commit_message(&app.id, sha, &message)
            .await
            .map_err(|e| e.to_string())?;
        let upload = state
            .cfg
            .uploads_dir
            .join(format!("{}.tar.gz", hangar_core::id::new_id("git")));
        mirror
            .archive(sha, &conn.subdir, &upload)
            .await
            .map_err(|e| format!("packing the commit's source: {e}"))?;
        let builder = state.builder.clone();
        let up = upload.clone();
        let accepted = tokio::task::spawn_blocking(move || builder.accept_source(&up))
            .await
            .map_err(|e| e.to_string())?;
        let digest = match accepted {
            Ok(d) => d,
            Err(e) => {
                let _ = tokio::fs::remove_file(&upload).await;
                return Err(format!("the commit's source was refused: {e}"));
            }
        };
        let queued = match state.builder.enqueue_commit(&app.id, &digest, sha).await {
            Ok(q) => q,
            Err(hangar_build::BuildError::Store(StoreError::QueueFull { queued, limit })) => {
                return Err(format!(
                    "the organisation's build queue is full ({queued} of {limit} builds waiting)"
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        state
            .store
            .commit_built(&app.id, sha, &queued.build.id)
            .await
            .map_err(|e| e.to_string())?;
        info!(app = %app.name, commit = %sha, build = %queued.build.id, "build of a commit queued");
        Ok(())
    }

    /// Until `stop`: polls every connected branch (a head no webhook
    /// reported is deployed, and its delivery says `detected via poll`),
    /// and tears down previews past their time to live; every poll
    /// interval, or every minute without polling.
    pub fn spawn_poller(&self, state: ApiState, mut stop: watch::Receiver<bool>) {
        let this = self.clone();
        let every = self.0.poll_every.unwrap_or(Duration::from_secs(60));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                if this.0.poll_every.is_some()
                    && let Err(e) = this.poll_once(&state).await
                {
                    warn!("polling git repositories: {e:?}");
                }
                if let Err(e) = super::previews::sweep(&state).await {
                    warn!("tearing down expired previews: {e:?}");
                }
            }
        });
    }

    /// One look at every connected branch.
    pub async fn poll_once(&self, state: &ApiState) -> Result<(), ApiError> {
        for conn in state.store.git_connections().await? {
            let Some(app) = state.store.app(&conn.app_id).await? else {
                continue;
            };
            let url = String::from_utf8(self.unseal(&app.id, "repo", &conn.repo_sealed)?)
                .map_err(ApiError::internal)?;
            let head = match hangar_git::repo::ls_remote(&self.0.cfg, &url, &conn.branch).await {
                Ok(Some(head)) => head,
                Ok(None) => {
                    let why = format!("{} has no branch {}", conn.repo_shown, conn.branch);
                    state.store.set_git_head(&app.id, None, Some(&why)).await?;
                    continue;
                }
                Err(e) => {
                    let why = format!("polling {}: {e}", conn.repo_shown);
                    state.store.set_git_head(&app.id, None, Some(&why)).await?;
                    continue;
                }
            };
            // The head at connect time is the baseline (the first deploy
            // comes with the first push); a head a webhook already
            // reported is being handled.
            let heard = state
                .store
                .commits_by_prefix(&app.id, &head)
                .await?
                .iter()
                .any(|c| c.sha == head);
            if conn.head.is_none() || conn.head.as_deref() == Some(head.as_str()) || heard {
                state.store.set_git_head(&app.id, Some(&head), None).await?;
                continue;
            }
            let git_ref = format!("refs/heads/{}", conn.branch);
            state
                .store
                .record_delivery(
                    &app.id,
                    NewDelivery {
                        source: "poll",
                        event: "push",
                        git_ref: Some(&git_ref),
                        sha: Some(&head),
                        verdict: "accepted",
                        detail: Some("detected via poll: no webhook reported it"),
                        ..NewDelivery::default()
                    },
                )
                .await?;
            let trigger = Trigger {
                via: "poll (detected via poll: no webhook reported it)",
                push: None,
                rebuild: false,
            };
            if let Err(e) = self.deploy_head(state, &app, &conn, trigger).await {
                warn!(app = %app.name, "deploying the polled head: {e:?}");
            }
        }
        Ok(())
    }
}

/// The vault context of an app's git secret (`repo` or `secret`).
fn context(app_id: &str, what: &str) -> String {
    format!("git:{app_id}:{what}")
}
