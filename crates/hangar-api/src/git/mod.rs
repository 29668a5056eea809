//! Deploy on push. `POST /api/v1/apps/{app}/git` connects an app to a
//! repository (creating the app if need be) and hands back the webhook
//! secret once; `GET` shows the connection, its newest deliveries and
//! commits; `DELETE` disconnects; `POST …/git/deploy` deploys the
//! branch's head now; `GET …/git/commits/{sha}` says what became of a
//! commit (`hangar why`).
//!
//! Webhooks arrive at `POST /hooks/{forge}/{app}` with no token: the
//! signature is the authentication, checked before the body is parsed. A
//! bad or missing one is a 401 that changes nothing but the delivery log;
//! a replayed delivery id is a no-op.

mod pipeline;
pub mod previews;
mod why;

pub use pipeline::{GitDeploys, Trigger};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hangar_api_types::ErrorBody;
use hangar_api_types::hangar as api;
use hangar_core::name::AppName;
use hangar_core::now_unix;
use hangar_core::status::CommitState;
use hangar_git::{Forge, hook};
use hangar_store::{App, GitConnection, NewDelivery};
use http_body_util::BodyExt;
use tracing::warn;

use crate::access::{AuditNote, Caller, find_app, noted};
use crate::{ApiError, ApiState};

/// Deliveries and commits `GET …/git` shows.
const SHOWN: i64 = 10;

/// The org routes (behind the access guard).
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/api/v1/apps/{app}/git",
            get(status).post(connect).delete(disconnect),
        )
        .route("/api/v1/apps/{app}/git/deploy", post(deploy))
        .route("/api/v1/apps/{app}/git/commits/{sha}", get(why_commit))
        .merge(previews::routes())
}

/// The webhook route (no token: signed deliveries).
pub(crate) fn hook_routes() -> Router<ApiState> {
    Router::new().route("/hooks/{forge}/{app}", post(hook))
}

fn hook_paths(app: &str) -> Vec<String> {
    ["github", "gitea", "gitlab", "git"]
        .iter()
        .map(|f| format!("/hooks/{f}/{app}"))
        .collect()
}

/// The URL without its user and password.
fn shown_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

async fn connection_json(
    state: &ApiState,
    app: &App,
    conn: &GitConnection,
    secret: Option<String>,
) -> Result<api::GitConnection, ApiError> {
    let deliveries = state
        .store
        .git_deliveries(&app.id, SHOWN)
        .await?
        .into_iter()
        .map(|d| api::GitDelivery {
            source: d.source,
            delivery: d.delivery,
            event: d.event,
            git_ref: d.git_ref,
            commit: d.sha,
            verdict: d.verdict,
            detail: d.detail,
            received_at: hangar_core::rfc3339(d.received_at),
        })
        .collect();
    let mut commits = Vec::new();
    for c in state.store.recent_commits(&app.id, SHOWN).await? {
        commits.push(why::explain(state, app, &c).await?);
    }
    Ok(api::GitConnection {
        app: app.name.clone(),
        repo: conn.repo_shown.clone(),
        branch: conn.branch.clone(),
        path: conn.subdir.clone(),
        hook_paths: hook_paths(&app.name),
        secret,
        head: conn.head.clone(),
        checked_at: conn.polled_at.map(hangar_core::rfc3339),
        check_error: conn.poll_error.clone(),
        poll_secs: state.git.poll_secs(),
        deliveries,
        commits,
    })
}

async fn connection_of(state: &ApiState, app: &App) -> Result<GitConnection, ApiError> {
    state.store.git_connection(&app.id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "{} is not connected to a repository (hangar git connect)",
            app.name
        ))
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/git",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    request_body = api::GitConnect,
    responses((status = 201, body = api::GitConnection, description = "connected; `secret` is shown this once"), (status = 409, body = ErrorBody, description = "the app name is another organisation's"), crate::openapi::Refusals),
)]
pub(crate) async fn connect(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Json(req): Json<api::GitConnect>,
) -> Result<Response, ApiError> {
    let name = AppName::parse(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let branch = req.branch.unwrap_or_else(|| "main".to_owned());
    let bad = |e: hangar_git::GitError| ApiError::bad_request(e.to_string());
    hangar_git::repo::check_url(&req.repo, state.git.config().allow_file).map_err(bad)?;
    hangar_git::repo::check_branch(&branch).map_err(bad)?;
    let subdir = hangar_git::repo::check_subdir(req.path.as_deref().unwrap_or("")).map_err(bad)?;
    hangar_git::repo::check_host(&req.repo, state.git.config())
        .await
        .map_err(bad)?;
    if let Some(app) = state.store.app_by_name(name.as_str()).await?
        && app.org_id != caller.org.id
    {
        return Err(hangar_store::StoreError::NameTaken(name.to_string()).into());
    }
    crate::quota::check_new_app(&state, &caller.org, name.as_str()).await?;
    let app = state
        .store
        .get_or_create_app(&caller.org.id, name.as_str())
        .await?;
    let secret = hangar_core::id::new_token();
    let conn = GitConnection {
        app_id: app.id.clone(),
        repo_sealed: state.git.seal(&app.id, "repo", req.repo.as_bytes()),
        repo_shown: shown_url(&req.repo),
        branch,
        subdir,
        secret_sealed: state.git.seal(&app.id, "secret", secret.as_bytes()),
        head: None,
        polled_at: None,
        poll_error: None,
        created_at: now_unix(),
    };
    state.store.set_git_connection(conn.clone()).await?;
    // The branch's head now is the baseline: the first deploy comes with
    // the next push (or `hangar git deploy`). A repository that cannot be
    // reached is said at once, not at the first push.
    let head = hangar_git::repo::ls_remote(state.git.config(), &req.repo, &conn.branch).await;
    let (head, error) = match head {
        Ok(Some(h)) => (Some(h), None),
        Ok(None) => (
            None,
            Some(format!(
                "{} has no branch {} yet",
                conn.repo_shown, conn.branch
            )),
        ),
        Err(e) => (None, Some(format!("{}: {e}", conn.repo_shown))),
    };
    state
        .store
        .set_git_head(&app.id, head.as_deref(), error.as_deref())
        .await?;
    let conn = connection_of(&state, &app).await?;
    let note = AuditNote {
        summary: format!(
            "connected to {} branch {}{}",
            conn.repo_shown,
            conn.branch,
            if conn.subdir.is_empty() {
                String::new()
            } else {
                format!(" path {}", conn.subdir)
            }
        ),
        ..AuditNote::default()
    };
    let body = connection_json(&state, &app, &conn, Some(secret)).await?;
    Ok(noted((StatusCode::CREATED, Json(body)), note))
}

#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/git",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 200, body = api::GitConnection), crate::openapi::Refusals),
)]
pub(crate) async fn status(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<api::GitConnection>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let conn = connection_of(&state, &app).await?;
    Ok(Json(connection_json(&state, &app, &conn, None).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/apps/{app}/git",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 200, body = api::GitConnection, description = "disconnected; what it was"), crate::openapi::Refusals),
)]
pub(crate) async fn disconnect(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<api::GitConnection>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let conn = connection_of(&state, &app).await?;
    let body = connection_json(&state, &app, &conn, None).await?;
    state.store.delete_git_connection(&app.id).await?;
    state.git.forget(&app.id).await;
    Ok(Json(body))
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/git/deploy",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 202, body = api::CommitVerdict, description = "the branch's head, fetched and queued (or why not)"), (status = 502, body = ErrorBody, description = "the repository could not be fetched"), crate::openapi::Refusals),
)]
pub(crate) async fn deploy(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let conn = connection_of(&state, &app).await?;
    state
        .store
        .record_delivery(
            &app.id,
            NewDelivery {
                source: "manual",
                event: "deploy",
                verdict: "accepted",
                detail: Some("hangar git deploy"),
                ..NewDelivery::default()
            },
        )
        .await?;
    let trigger = Trigger {
        via: "hangar git deploy",
        push: None,
        rebuild: true,
    };
    let commit = state.git.deploy_head(&state, &app, &conn, trigger).await?;
    let verdict = why::explain(&state, &app, &commit).await?;
    let note = AuditNote {
        summary: format!("deploy of commit {}", commit.sha),
        ..AuditNote::default()
    };
    Ok(noted((StatusCode::ACCEPTED, Json(verdict)), note))
}

#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/git/commits/{sha}",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name"), ("sha" = String, Path, description = "the commit, or at least 4 hex digits of it")),
    responses((status = 200, body = api::CommitVerdict), crate::openapi::Refusals),
)]
pub(crate) async fn why_commit(
    caller: Caller,
    State(state): State<ApiState>,
    Path((name, sha)): Path<(String, String)>,
) -> Result<Json<api::CommitVerdict>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let sha = sha.to_ascii_lowercase();
    if sha.len() < 4 || sha.len() > 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "{sha:?} is not a commit id (4 to 64 hex digits)"
        )));
    }
    let found = state.store.commits_by_prefix(&app.id, &sha).await?;
    match found.as_slice() {
        [one] => Ok(Json(why::explain(&state, &app, one).await?)),
        [] => {
            let rejected: Vec<_> = state
                .store
                .git_deliveries(&app.id, hangar_store::MAX_GIT_HISTORY)
                .await?
                .into_iter()
                .filter(|d| d.verdict == "rejected")
                .collect();
            let hint = match rejected.first() {
                Some(last) => format!(
                    "; {} deliveries were rejected, the latest at {} ({}): check the webhook's secret",
                    rejected.len(),
                    hangar_core::rfc3339(last.received_at),
                    last.detail.as_deref().unwrap_or("bad signature")
                ),
                None => String::new(),
            };
            Err(ApiError::not_found(format!(
                "Hangar has not heard of commit {sha} for {}{hint}",
                app.name
            )))
        }
        many => Err(ApiError::bad_request(format!(
            "{sha} names {} commits; give more digits",
            many.len()
        ))),
    }
}

/// `POST /hooks/{forge}/{app}`.
pub(crate) async fn hook(
    State(state): State<ApiState>,
    Path((forge, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let forge = Forge::parse(&forge).ok_or_else(|| {
        ApiError::not_found("no such forge: github, gitea, forgejo, gitlab or git")
    })?;
    let unknown = || ApiError::not_found(format!("no app {name:?} connected to a repository"));
    let app = state.store.app_by_name(&name).await?.ok_or_else(unknown)?;
    let conn = state
        .store
        .git_connection(&app.id)
        .await?
        .ok_or_else(unknown)?;
    let body = http_body_util::Limited::new(body, hook::MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a delivery is at most {} bytes", hook::MAX_BODY_BYTES),
            )
        })?
        .to_bytes();
    let secret = state.git.unseal(&app.id, "secret", &conn.secret_sealed)?;
    let event = forge.event(&headers);
    let delivery = forge.delivery_id(&headers);
    let record = |verdict: &'static str,
                  git_ref: Option<String>,
                  sha: Option<String>,
                  detail: Option<String>| {
        let (state, app_id, event, delivery) = (
            state.clone(),
            app.id.clone(),
            event.clone(),
            delivery.clone(),
        );
        async move {
            state
                .store
                .record_delivery(
                    &app_id,
                    NewDelivery {
                        source: forge.name(),
                        delivery: delivery.as_deref(),
                        event: &event,
                        git_ref: git_ref.as_deref(),
                        sha: sha.as_deref(),
                        verdict,
                        detail: detail.as_deref(),
                    },
                )
                .await
        }
    };
    if let Err(e) = forge.verify(&headers, &body, &secret) {
        record("rejected", None, None, Some(e.to_string())).await?;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    let answer = |code: StatusCode, verdict: &str, detail: Option<String>| {
        (
            code,
            Json(api::HookAnswer {
                verdict: verdict.to_owned(),
                detail,
            }),
        )
            .into_response()
    };
    match event.as_str() {
        "ping" => {
            if !record("pong", None, None, None).await? {
                return Ok(answer(StatusCode::OK, "replayed", None));
            }
            Ok(answer(StatusCode::OK, "pong", None))
        }
        "push" => {
            let pushes = match forge.pushes(&event, &body) {
                Ok(p) => p,
                Err(e) => {
                    record("ignored", None, None, Some(e.to_string())).await?;
                    return Err(ApiError::bad_request(e.to_string()));
                }
            };
            let ours = pushes
                .iter()
                .find(|p| p.branch() == Some(conn.branch.as_str()));
            let Some(push) = ours else {
                let first = &pushes[0];
                let detail = format!(
                    "{} is not the connected branch {}",
                    first.git_ref, conn.branch
                );
                if !record(
                    "ignored",
                    Some(first.git_ref.clone()),
                    Some(first.after.clone()),
                    Some(detail.clone()),
                )
                .await?
                {
                    return Ok(answer(StatusCode::OK, "replayed", None));
                }
                for p in pushes.iter().filter(|p| !p.deleted) {
                    let via = format!("{} webhook", forge.name());
                    let (c, _) = state.store.commit_heard(&app.id, &p.after, &via).await?;
                    if c.state == CommitState::Received {
                        let why = format!("pushed to {}, not to {}", p.git_ref, conn.branch);
                        state
                            .store
                            .set_commit_state(
                                &app.id,
                                &p.after,
                                CommitState::Ignored,
                                Some(&why),
                                None,
                            )
                            .await?;
                    }
                }
                return Ok(answer(StatusCode::OK, "ignored", Some(detail)));
            };
            if push.deleted {
                let detail = format!("{} was deleted; the app keeps running", push.git_ref);
                if !record(
                    "ignored",
                    Some(push.git_ref.clone()),
                    None,
                    Some(detail.clone()),
                )
                .await?
                {
                    return Ok(answer(StatusCode::OK, "replayed", None));
                }
                return Ok(answer(StatusCode::OK, "ignored", Some(detail)));
            }
            if !record(
                "accepted",
                Some(push.git_ref.clone()),
                Some(push.after.clone()),
                None,
            )
            .await?
            {
                return Ok(answer(StatusCode::OK, "replayed", None));
            }
            // Heard of now, so the poller never claims it; the forge waits
            // a few seconds at most: fetching and queueing go on after the
            // answer.
            let via = format!("{} webhook", forge.name());
            state.store.commit_heard(&app.id, &push.after, &via).await?;
            let (state2, push, app2) = (state.clone(), push.clone(), app.clone());
            tokio::spawn(async move {
                let trigger = Trigger {
                    via: &via,
                    push: Some(&push),
                    rebuild: false,
                };
                if let Err(e) = state2.git.deploy_head(&state2, &app2, &conn, trigger).await {
                    warn!(app = %app2.name, "deploying a pushed commit: {e:?}");
                }
            });
            Ok(answer(StatusCode::ACCEPTED, "accepted", None))
        }
        "pull_request" => {
            let pr = match forge.pull_request(&body) {
                Ok(pr) => pr,
                Err(e) => {
                    record("ignored", None, None, Some(e.to_string())).await?;
                    return Err(ApiError::bad_request(e.to_string()));
                }
            };
            let git_ref = format!("refs/pull/{}/head", pr.number);
            if !record(
                "accepted",
                Some(git_ref.clone()),
                Some(pr.head_sha.clone()),
                Some(format!("pull request #{} {}", pr.number, pr.action_name)),
            )
            .await?
            {
                return Ok(answer(StatusCode::OK, "replayed", None));
            }
            let (verdict, detail) = previews::on_pull_request(&state, &app, &conn, &pr).await?;
            Ok(answer(StatusCode::ACCEPTED, verdict, Some(detail)))
        }
        other => {
            let detail = format!("{other:?} events do not deploy");
            if !record("ignored", None, None, Some(detail.clone())).await? {
                return Ok(answer(StatusCode::OK, "replayed", None));
            }
            Ok(answer(StatusCode::OK, "ignored", Some(detail)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_drop_their_credentials() {
        assert_eq!(
            shown_url("https://x-token:ghp_abc@github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(
            shown_url("https://github.com/o/r"),
            "https://github.com/o/r"
        );
        assert_eq!(shown_url("file:///srv/r.git"), "file:///srv/r.git");
        assert_eq!(shown_url("https://u:p@host"), "https://host");
    }
}
