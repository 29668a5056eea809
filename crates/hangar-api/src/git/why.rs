//! `hangar why APP SHA`: one answer per commit, from what the store knows
//! of it, its build and its releases.

use hangar_api_types::hangar as api;
use hangar_core::rfc3339;
use hangar_core::status::{BuildStatus, CommitState, ReleaseStatus};
use hangar_store::{App, GitCommit, Release};

use crate::{ApiError, ApiState};

/// Lines of a failed build's log shown.
const LOG_TAIL_LINES: usize = 20;

/// What became of `commit`.
pub async fn explain(
    state: &ApiState,
    app: &App,
    commit: &GitCommit,
) -> Result<api::CommitVerdict, ApiError> {
    let mut v = api::CommitVerdict {
        commit: commit.sha.clone(),
        state: String::new(),
        detail: String::new(),
        via: commit.via.clone(),
        message: commit.message.clone(),
        build: commit.build_id.clone(),
        release: None,
        superseded_by: commit.superseded_by.clone(),
        queue_position: None,
        step: None,
        log_tail: None,
        heard_at: rfc3339(commit.first_seen),
    };
    let said = |v: &mut api::CommitVerdict, s: &str, d: String| {
        v.state = s.to_owned();
        v.detail = d;
    };
    let detail = commit.detail.clone().unwrap_or_default();
    match commit.state {
        CommitState::Received => said(&mut v, "received", "being fetched and checked".into()),
        CommitState::Ignored => said(&mut v, "ignored", detail),
        CommitState::Failed => {
            v.step = Some("fetch".into());
            said(&mut v, "failed", detail);
        }
        CommitState::Superseded => {
            let by = commit.superseded_by.clone().unwrap_or_default();
            said(&mut v, "superseded", format!("by {by}: {detail}"));
        }
        CommitState::Built => {
            let Some(build_id) = &commit.build_id else {
                said(&mut v, "received", "its build is being queued".into());
                return Ok(v);
            };
            let Some(build) = state.store.build(build_id).await? else {
                said(&mut v, "failed", format!("its build {build_id} is gone"));
                return Ok(v);
            };
            let log = state.builder.log_path(&build.id);
            match build.status {
                BuildStatus::Queued => {
                    let ahead = state.store.builds_ahead(&build.id).await?;
                    v.queue_position = Some(ahead.len() as u64 + 1);
                    let names: Vec<String> = ahead
                        .iter()
                        .take(5)
                        .map(|b| format!("{} ({})", b.id, b.status))
                        .collect();
                    let behind = if names.is_empty() {
                        "next to start".to_owned()
                    } else {
                        format!("behind {}", names.join(", "))
                    };
                    said(
                        &mut v,
                        "queued",
                        format!(
                            "build {}, position {} in the queue, {behind}",
                            build.id,
                            ahead.len() + 1
                        ),
                    );
                }
                BuildStatus::Building => {
                    let step = last_step(&log).await;
                    v.step = step.clone();
                    said(
                        &mut v,
                        "building",
                        format!(
                            "build {}: {}",
                            build.id,
                            step.unwrap_or_else(|| "starting".into())
                        ),
                    );
                }
                BuildStatus::Failed => {
                    v.step = last_step(&log).await;
                    v.log_tail = tail(&log).await;
                    let why = build.error.clone().unwrap_or_default();
                    said(
                        &mut v,
                        "failed",
                        format!("build {} failed: {why}", build.id),
                    );
                }
                BuildStatus::Cancelled => {
                    let why = build.error.clone().unwrap_or_default();
                    said(&mut v, "cancelled", format!("build {}: {why}", build.id));
                }
                BuildStatus::Superseded => {
                    let newer = state.store.last_commit_build(&app.id).await?;
                    v.superseded_by = newer.and_then(|b| b.git_sha).filter(|s| *s != commit.sha);
                    let why = build.error.clone().unwrap_or_default();
                    said(&mut v, "superseded", format!("build {}: {why}", build.id));
                }
                BuildStatus::Succeeded => {
                    let releases = state.store.releases_for_app(&app.id).await?;
                    released(&mut v, &build.id, &releases);
                }
            }
        }
    }
    Ok(v)
}

/// The verdict of a commit whose build succeeded, from the app's
/// releases (newest first).
fn released(v: &mut api::CommitVerdict, build_id: &str, releases: &[Release]) {
    let Some(own) = releases
        .iter()
        .rev()
        .find(|r| r.build_id == build_id && r.description == "deploy")
    else {
        v.state = "building".into();
        v.step = Some("creating the release".into());
        v.detail = format!("build {build_id} succeeded; its release is being made");
        return;
    };
    v.release = Some(own.version);
    let later: Vec<&Release> = releases
        .iter()
        .filter(|r| r.version > own.version)
        .collect();
    let (state, detail) = match own.status {
        ReleaseStatus::Pending | ReleaseStatus::Deploying => (
            "deploying",
            format!("release v{} is rolling out", own.version),
        ),
        ReleaseStatus::Active => (
            "deployed",
            format!(
                "release v{}, serving since {}",
                own.version,
                rfc3339(own.created_at)
            ),
        ),
        ReleaseStatus::Failed => (
            "rolled back",
            format!(
                "release v{}'s rollout failed and the previous release kept serving: {}",
                own.version,
                own.error.clone().unwrap_or_default()
            ),
        ),
        ReleaseStatus::Superseded => {
            // The oldest later release that went live says what replaced it.
            match later
                .iter()
                .rev()
                .find(|r| r.status != ReleaseStatus::Failed)
            {
                Some(r) if r.description.starts_with("rollback") => (
                    "rolled back",
                    format!(
                        "release v{} was deployed, then rolled back by v{} ({})",
                        own.version, r.version, r.description
                    ),
                ),
                Some(r) => (
                    "deployed",
                    format!(
                        "release v{} was deployed at {}, since replaced by v{}{}",
                        own.version,
                        rfc3339(own.created_at),
                        r.version,
                        r.git_sha
                            .as_deref()
                            .map(|s| format!(" (commit {s})"))
                            .unwrap_or_default()
                    ),
                ),
                None => (
                    "deployed",
                    format!("release v{} was deployed, since replaced", own.version),
                ),
            }
        }
    };
    v.state = state.into();
    v.detail = detail;
}

/// The last `==> step` line of a build's log.
async fn last_step(log: &std::path::Path) -> Option<String> {
    let text = read_end(log, 256 * 1024).await?;
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("==> "))
        .map(|s| s.chars().take(200).collect())
}

/// The last lines of a build's log.
async fn tail(log: &std::path::Path) -> Option<String> {
    let text = read_end(log, 64 * 1024).await?;
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    Some(lines[from..].join("\n"))
}

/// Up to `max` bytes from the end of a file.
async fn read_end(path: &std::path::Path, max: u64) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await.ok()?;
    let len = f.metadata().await.ok()?.len();
    f.seek(std::io::SeekFrom::Start(len.saturating_sub(max)))
        .await
        .ok()?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).await.ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(version: i64, build: &str, status: ReleaseStatus, description: &str) -> Release {
        Release {
            id: format!("rel_{version}"),
            app_id: "app".into(),
            version,
            build_id: build.into(),
            image_digest: "sha256:x".into(),
            status,
            error: Some("check failed".into()),
            created_at: 0,
            config: None,
            description: description.into(),
            git_sha: Some(format!("sha{version}")),
            git_message: None,
        }
    }

    fn verdict() -> api::CommitVerdict {
        api::CommitVerdict {
            commit: "sha1".into(),
            state: String::new(),
            detail: String::new(),
            via: "poll".into(),
            message: None,
            build: Some("b1".into()),
            release: None,
            superseded_by: None,
            queue_position: None,
            step: None,
            log_tail: None,
            heard_at: String::new(),
        }
    }

    #[test]
    fn releases_say_deployed_replaced_or_rolled_back() {
        use ReleaseStatus::*;
        let mut v = verdict();
        released(&mut v, "b1", &[rel(1, "b1", Active, "deploy")]);
        assert_eq!((v.state.as_str(), v.release), ("deployed", Some(1)));

        let mut v = verdict();
        let rs = [
            rel(2, "b2", Active, "deploy"),
            rel(1, "b1", Superseded, "deploy"),
        ];
        released(&mut v, "b1", &rs);
        assert_eq!(v.state, "deployed");
        assert!(
            v.detail.contains("replaced by v2 (commit sha2)"),
            "{}",
            v.detail
        );

        let mut v = verdict();
        let rs = [
            rel(3, "b0", Active, "rollback to v1"),
            rel(2, "b1", Superseded, "deploy"),
        ];
        released(&mut v, "b1", &rs);
        assert_eq!(v.state, "rolled back");
        assert!(v.detail.contains("v3 (rollback to v1)"), "{}", v.detail);

        let mut v = verdict();
        released(&mut v, "b1", &[rel(2, "b1", Failed, "deploy")]);
        assert_eq!(v.state, "rolled back");
        assert!(v.detail.contains("check failed"), "{}", v.detail);

        let mut v = verdict();
        released(&mut v, "b1", &[rel(2, "b1", Deploying, "deploy")]);
        assert_eq!(v.state, "deploying");
    }
}
