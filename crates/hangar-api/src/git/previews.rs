//! Preview environments: a pull request of a connected app runs as an app
//! of its own, `<app>-pr-<n>`, built from the PR's head commit with the
//! PR's own `hangar.toml` and declared resources. Being its own app, it
//! gets its own database and role, Redis user and NATS permissions, and no
//! secrets: nothing of production's opens to it. It scales to zero (the
//! rollout's preview defaults), lives until the PR closes or its time to
//! live passes, and goes like any deleted app: machines, routes,
//! certificates, resources, rows.
//!
//! A PR from a fork, or by an author without write access, is not built
//! until a maintainer approves its exact head commit.

use axum::extract::{Path, State};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use hangar_api_types::hangar as api;
use hangar_core::name::AppName;
use hangar_core::now_unix;
use hangar_git::{Mirror, PrAction, PullRequest};
use hangar_store::{App, GitConnection, Preview, PreviewPush};
use tracing::{info, warn};

use crate::access::{Caller, find_app};
use crate::{ApiError, ApiState};

/// A preview's time to live without a push or a request.
pub const DEFAULT_TTL_SECS: i64 = 7 * 24 * 3600;
/// The most `hangar previews extend` may add at once.
pub const MAX_EXTEND_SECS: i64 = 90 * 24 * 3600;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/apps/{app}/previews", get(list))
        .route("/api/v1/apps/{app}/previews/{number}", delete(destroy))
        .route(
            "/api/v1/apps/{app}/previews/{number}/approve",
            post(approve),
        )
        .route("/api/v1/apps/{app}/previews/{number}/extend", post(extend))
}

/// The preview app's name: `<app>-pr-<n>`.
pub fn preview_name(app: &str, number: i64) -> Result<AppName, String> {
    AppName::parse(&format!("{app}-pr-{number}")).map_err(|e| e.to_string())
}

/// What a `pull_request` delivery does; the verdict in words.
pub(crate) async fn on_pull_request(
    state: &ApiState,
    app: &App,
    conn: &GitConnection,
    pr: &PullRequest,
) -> Result<(&'static str, String), ApiError> {
    let number = i64::try_from(pr.number).map_err(ApiError::internal)?;
    match pr.action {
        PrAction::Other => Ok((
            "ignored",
            format!("pull request #{number} {}: nothing to do", pr.action_name),
        )),
        PrAction::Close => {
            // The forge waits a few seconds at most; a teardown stops
            // machines and drops databases.
            let (state, app) = (state.clone(), app.clone());
            let lock = state.git.lock_of(&app.id);
            tokio::spawn(async move {
                let _held = lock.lock().await;
                let why = format!("pull request #{number} was closed");
                if let Err(e) = teardown(&state, &app, number, &why).await {
                    warn!(app = %app.name, pr = number, "tearing the preview down: {}", e.message);
                }
            });
            Ok((
                "accepted",
                format!("pull request #{number} closed: its preview is being torn down"),
            ))
        }
        PrAction::Update => {
            let push = PreviewPush {
                number,
                head_sha: &pr.head_sha,
                head_ref: &pr.head_ref,
                author: &pr.author,
                trusted: pr.trusted,
                ttl_secs: state.git.preview_ttl_secs(),
            };
            let preview = state.store.preview_pushed(&app.id, push).await?;
            if !allowed(&preview) {
                let why = format!(
                    "{} by {} is not built until a maintainer approves it: hangar previews approve {} {number} --sha {}",
                    if pr.fork {
                        "a pull request from a fork"
                    } else {
                        "a pull request"
                    },
                    pr.author,
                    app.name,
                    pr.head_sha
                );
                state
                    .store
                    .set_preview_state(&app.id, number, "awaiting approval", Some(&why), None)
                    .await?;
                return Ok(("accepted", why));
            }
            spawn_build(state, app, conn, number);
            Ok((
                "accepted",
                format!("pull request #{number}: building {}", pr.head_sha),
            ))
        }
    }
}

/// Whether the preview's head may be built.
fn allowed(p: &Preview) -> bool {
    p.trusted || p.approved_sha.as_deref() == Some(p.head_sha.as_str())
}

fn spawn_build(state: &ApiState, app: &App, conn: &GitConnection, number: i64) {
    let (state, app, conn) = (state.clone(), app.clone(), conn.clone());
    tokio::spawn(async move {
        if let Err(e) = build(&state, &app, &conn, number).await {
            let why = e.message.clone();
            warn!(app = %app.name, pr = number, "preview: {why}");
            let _ = state
                .store
                .set_preview_state(&app.id, number, "failed", Some(&why), None)
                .await;
        }
    });
}

/// Fetches the PR's head, makes (or reuses) its app and queues the build.
async fn build(
    state: &ApiState,
    parent: &App,
    conn: &GitConnection,
    number: i64,
) -> Result<(), ApiError> {
    let lock = state.git.lock_of(&parent.id);
    let _held = lock.lock().await;
    let Some(preview) = state.store.preview(&parent.id, number).await? else {
        return Ok(());
    };
    if preview.state == "closed" || !allowed(&preview) {
        return Ok(());
    }
    let name = preview_name(&parent.name, number).map_err(ApiError::bad_request)?;
    let org = state
        .store
        .org(&parent.org_id)
        .await?
        .ok_or_else(|| ApiError::internal("the app's organisation is gone"))?;
    let own = match state.store.app_by_name(name.as_str()).await? {
        Some(a) if preview.preview_app_id.as_deref() == Some(a.id.as_str()) => a,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "an app named {name} exists already, so pull request #{number} cannot have its preview there"
            )));
        }
        None => {
            crate::quota::check_new_app(state, &org, name.as_str()).await?;
            state
                .store
                .get_or_create_app(&org.id, name.as_str())
                .await?
        }
    };
    state
        .store
        .set_preview_state(&parent.id, number, "building", None, Some(Some(&own.id)))
        .await?;
    let url = String::from_utf8(state.git.unseal(&parent.id, "repo", &conn.repo_sealed)?)
        .map_err(ApiError::internal)?;
    let mirror = Mirror::open(
        &state.git.mirror_dir(&parent.id),
        state.git.config().clone(),
    )
    .await
    .map_err(|e| ApiError::new(http::StatusCode::BAD_GATEWAY, e.to_string()))?;
    let head = mirror.fetch_pull(&url, number as u64).await.map_err(|e| {
        ApiError::new(
            http::StatusCode::BAD_GATEWAY,
            format!("fetching pull request #{number}: {e}"),
        )
    })?;
    // Only the commit the delivery named (and, for an untrusted author,
    // the one approved) is built: a head that moved on waits for its own
    // delivery.
    if head != preview.head_sha {
        return Err(ApiError::bad_request(format!(
            "pull request #{number}'s head is {head}, not {}: waiting for its delivery",
            preview.head_sha
        )));
    }
    let via = format!("pull request #{number}");
    state.store.commit_heard(&own.id, &head, &via).await?;
    if let Err(why) = state.git.build(state, &own, conn, &mirror, &head).await {
        return Err(ApiError::bad_request(why));
    }
    state
        .store
        .set_preview_state(&parent.id, number, "deploying", None, None)
        .await?;
    info!(app = %parent.name, pr = number, preview = %own.name, commit = %head, "preview build queued");
    Ok(())
}

/// Tears pull request `number`'s preview down (idempotent): its app and
/// everything that came with it.
pub(crate) async fn teardown(
    state: &ApiState,
    parent: &App,
    number: i64,
    why: &str,
) -> Result<(), ApiError> {
    let Some(preview) = state.store.preview(&parent.id, number).await? else {
        return Ok(());
    };
    if let Some(id) = &preview.preview_app_id
        && let Some(own) = state.store.app(id).await?
    {
        crate::routes::delete_app_everywhere(state, &own).await?;
    }
    state
        .store
        .set_preview_state(&parent.id, number, "closed", Some(why), Some(None))
        .await?;
    info!(app = %parent.name, pr = number, "preview torn down: {why}");
    Ok(())
}

/// Tears down every preview of `parent` (the app is being deleted).
pub(crate) async fn teardown_all(state: &ApiState, parent: &App) -> Result<(), ApiError> {
    for p in state.store.previews(&parent.id).await? {
        if p.preview_app_id.is_some() {
            Box::pin(teardown(state, parent, p.number, "its app was deleted")).await?;
        }
    }
    Ok(())
}

/// Tears down previews past their time to live: no push since, and no
/// request through the edge since.
pub(crate) async fn sweep(state: &ApiState) -> Result<(), ApiError> {
    use hangar_core::route::Activity;
    let now = now_unix();
    for p in state.store.live_previews().await? {
        let Some(own_id) = &p.preview_app_id else {
            continue;
        };
        let Some(own) = state.store.app(own_id).await? else {
            continue;
        };
        // Never while it is fetched, built or rolled out; a deploy counts
        // as the push it came from.
        let building = p.state == "building"
            || state
                .store
                .builds_for_app(&own.id, 1)
                .await?
                .first()
                .is_some_and(|b| !b.status.is_terminal());
        let releases = state.store.releases_for_app(&own.id).await?;
        if building || releases.iter().any(|r| !r.status.is_terminal()) {
            continue;
        }
        let deployed = releases.first().map(|r| r.created_at);
        // A request since the push pushes the end back; one in flight
        // keeps it. An app the edge has no route for has had none.
        let last_request = match state.routes.idle_for(&own.name) {
            Some(idle) => Some(now - idle.as_secs() as i64),
            None if state.routes.upstreams(&own.name).is_some() => Some(now),
            None => None,
        };
        let end = [last_request, deployed]
            .into_iter()
            .flatten()
            .fold(p.expires_at, |end, t| end.max(t + p.ttl_secs));
        if now < end {
            continue;
        }
        let Some(parent) = state.store.app(&p.app_id).await? else {
            continue;
        };
        teardown(state, &parent, p.number, "its time to live passed").await?;
    }
    Ok(())
}

/// A preview as the API shows it: `deploying` turns `live` once its app's
/// active release is of the pull request's head.
async fn preview_json(
    state: &ApiState,
    parent: &App,
    p: &Preview,
) -> Result<api::PreviewInfo, ApiError> {
    let name = preview_name(&parent.name, p.number)
        .map(|n| n.to_string())
        .unwrap_or_default();
    let mut shown = p.state.clone();
    let mut detail = p.detail.clone();
    if shown == "deploying"
        && let Some(id) = &p.preview_app_id
        && let Some(b) = state.store.builds_for_app(id, 1).await?.first()
        && matches!(
            b.status,
            hangar_core::status::BuildStatus::Failed | hangar_core::status::BuildStatus::Cancelled
        )
    {
        shown = "failed".into();
        detail = Some(format!(
            "build {} {}: {}",
            b.id,
            b.status,
            b.error.as_deref().unwrap_or("")
        ));
    }
    if shown == "deploying"
        && let Some(id) = &p.preview_app_id
    {
        let live = state
            .store
            .releases_for_app(id)
            .await?
            .into_iter()
            .any(|r| {
                r.status == hangar_core::status::ReleaseStatus::Active
                    && r.git_sha.as_deref() == Some(p.head_sha.as_str())
            });
        if live {
            shown = "live".into();
        }
    }
    Ok(api::PreviewInfo {
        number: p.number,
        url: (p.preview_app_id.is_some()).then(|| state.cfg.app_url(&name)),
        app: name,
        state: shown,
        detail,
        head: p.head_sha.clone(),
        head_ref: p.head_ref.clone(),
        author: p.author.clone(),
        trusted: p.trusted,
        approved: p.approved_sha.clone(),
        expires_at: hangar_core::rfc3339(p.expires_at),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/previews",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 200, body = api::PreviewList), crate::openapi::Refusals),
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<api::PreviewList>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let mut previews = Vec::new();
    for p in state.store.previews(&app.id).await? {
        previews.push(preview_json(&state, &app, &p).await?);
    }
    Ok(Json(api::PreviewList { previews }))
}

async fn find_preview(state: &ApiState, app: &App, number: &str) -> Result<Preview, ApiError> {
    let n: i64 =
        number.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            ApiError::bad_request(format!("{number:?} is not a pull request number"))
        })?;
    state.store.preview(&app.id, n).await?.ok_or_else(|| {
        ApiError::not_found(format!("{} has no preview of pull request #{n}", app.name))
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/previews/{number}/approve",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name"), ("number" = i64, Path, description = "the pull request")),
    request_body = api::ApprovePreview,
    responses((status = 200, body = api::PreviewInfo), (status = 409, body = hangar_api_types::ErrorBody, description = "the commit is not the pull request's head"), crate::openapi::Refusals),
)]
pub(crate) async fn approve(
    caller: Caller,
    State(state): State<ApiState>,
    Path((name, number)): Path<(String, String)>,
    Json(req): Json<api::ApprovePreview>,
) -> Result<Json<api::PreviewInfo>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let p = find_preview(&state, &app, &number).await?;
    let sha = req.sha.to_ascii_lowercase();
    if sha != p.head_sha {
        return Err(ApiError::new(
            http::StatusCode::CONFLICT,
            format!(
                "pull request #{} is at {}, not {sha}: approve the commit you reviewed",
                p.number, p.head_sha
            ),
        ));
    }
    if p.state == "closed" {
        return Err(ApiError::new(
            http::StatusCode::CONFLICT,
            format!("pull request #{} is closed", p.number),
        ));
    }
    state.store.approve_preview(&app.id, p.number, &sha).await?;
    let conn = state.store.git_connection(&app.id).await?.ok_or_else(|| {
        ApiError::not_found(format!("{} is not connected to a repository", app.name))
    })?;
    state
        .store
        .set_preview_state(&app.id, p.number, "building", None, None)
        .await?;
    spawn_build(&state, &app, &conn, p.number);
    let p = find_preview(&state, &app, &number).await?;
    Ok(Json(preview_json(&state, &app, &p).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/previews/{number}/extend",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name"), ("number" = i64, Path, description = "the pull request")),
    request_body = api::ExtendPreview,
    responses((status = 200, body = api::PreviewInfo), crate::openapi::Refusals),
)]
pub(crate) async fn extend(
    caller: Caller,
    State(state): State<ApiState>,
    Path((name, number)): Path<(String, String)>,
    Json(req): Json<api::ExtendPreview>,
) -> Result<Json<api::PreviewInfo>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let p = find_preview(&state, &app, &number).await?;
    let secs = i64::try_from(req.seconds).unwrap_or(i64::MAX);
    if secs <= 0 || secs > MAX_EXTEND_SECS {
        return Err(ApiError::bad_request(format!(
            "extend by 1 s to {} days",
            MAX_EXTEND_SECS / 86_400
        )));
    }
    let until = p.expires_at.max(now_unix()) + secs;
    state.store.extend_preview(&app.id, p.number, until).await?;
    let p = find_preview(&state, &app, &number).await?;
    Ok(Json(preview_json(&state, &app, &p).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/apps/{app}/previews/{number}",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name"), ("number" = i64, Path, description = "the pull request")),
    responses((status = 200, body = api::PreviewInfo, description = "torn down"), crate::openapi::Refusals),
)]
pub(crate) async fn destroy(
    caller: Caller,
    State(state): State<ApiState>,
    Path((name, number)): Path<(String, String)>,
) -> Result<Json<api::PreviewInfo>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let p = find_preview(&state, &app, &number).await?;
    teardown(
        &state,
        &app,
        p.number,
        "destroyed with hangar previews destroy",
    )
    .await?;
    let p = find_preview(&state, &app, &number).await?;
    Ok(Json(preview_json(&state, &app, &p).await?))
}
