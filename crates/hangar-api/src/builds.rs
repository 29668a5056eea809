//! Deploys and builds: `POST /api/v1/apps/{app}/deploys` (an upload becomes
//! a queued build), `GET /api/v1/builds/{id}`, its log, and
//! `POST /api/v1/builds/{id}/cancel`. Every build is found through its
//! app's org: another org's build is a 404, like a missing one.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use hangar_build::{BuildError, Cancel};
use hangar_core::name::AppName;
use hangar_store::StoreError;

use crate::access::{AuditNote, Caller, find_build, noted};
use crate::routes::{save_upload, text};
use crate::tail::{Done, DoneFuture, tail};
use crate::wire;
use crate::{ApiError, ApiState};
use hangar_api_types::ErrorBody;
use hangar_api_types::hangar as api;

/// The build routes.
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/apps/{app}/deploys", post(deploy))
        .route("/api/v1/builds/{id}", get(build_status))
        .route("/api/v1/builds/{id}/log", get(build_log))
        .route("/api/v1/builds/{id}/cancel", post(cancel_build))
}

#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/deploys",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    request_body(content = crate::openapi::Archive, content_type = "application/octet-stream", description = "the source, as a .tar.gz"),
    responses((status = 202, body = api::Deployed), (status = 409, body = ErrorBody, description = "the app name is another organisation's"), (status = 413, body = ErrorBody, description = "the upload is over the cap"), (status = 429, body = ErrorBody, description = "the organisation's build queue is full, or too many uploads are being checked"), crate::openapi::Refusals),
)]
pub(crate) async fn deploy(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = AppName::parse(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // Refuse early, before reading the body, when the name is another org's.
    if let Some(app) = state.store.app_by_name(name.as_str()).await?
        && app.org_id != caller.org.id
    {
        return Err(hangar_store::StoreError::NameTaken(name.to_string()).into());
    }
    // Refuse early, before reading the body, past the org's queue cap (the
    // enqueue checks it again, atomically).
    let app_id = state
        .store
        .app_by_name(name.as_str())
        .await?
        .map(|app| app.id);
    crate::quota::check_queue(&state, &caller.org, app_id.as_deref()).await?;
    // At most a few of one org's uploads are checked at once; the slot goes
    // with the blocking check, so a client that disconnects frees nothing
    // early.
    let slot = state.builder.validation_slot(&caller.org.id)?;
    let upload = save_upload(
        &state,
        &headers,
        body,
        state.cfg.max_upload_bytes,
        "--max-upload-bytes",
    )
    .await?;
    let builder = state.builder.clone();
    let up = upload.clone();
    let accepted = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        builder.accept_source(&up)
    })
    .await
    .map_err(ApiError::internal)?;
    let digest = match accepted {
        Ok(d) => d,
        Err(e) => {
            let _ = tokio::fs::remove_file(&upload).await;
            return Err(e.into());
        }
    };
    crate::quota::check_new_app(&state, &caller.org, name.as_str()).await?;
    let app = state
        .store
        .get_or_create_app(&caller.org.id, name.as_str())
        .await?;
    let build = match state.builder.enqueue(&app.id, &digest).await {
        Ok(queued) => queued.build,
        Err(BuildError::Store(StoreError::QueueFull { queued, limit })) => {
            return Err(crate::quota::queue_full(&caller.org, queued, limit));
        }
        Err(e) => return Err(e.into()),
    };
    let note = AuditNote {
        summary: format!("build {} of source {}", build.id, build.source_digest),
        ..AuditNote::default()
    };
    let body = api::Deployed {
        url: state.cfg.app_url(&app.name),
        app: app.name,
        build: wire::build(&build),
    };
    Ok(noted((StatusCode::ACCEPTED, Json(body)), note))
}

#[utoipa::path(
    get,
    path = "/api/v1/builds/{id}",
    tag = "hangar",
    params(("id" = String, Path, description = "the build's id")),
    responses((status = 200, body = api::BuildDetail), crate::openapi::Refusals),
)]
pub(crate) async fn build_status(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<api::BuildDetail>, ApiError> {
    let (build, app) = find_build(&state, &caller, &id, false).await?;
    let release = state.store.release_for_build(&build.id).await?;
    Ok(Json(api::BuildDetail {
        url: state.cfg.app_url(&app.name),
        app: app.name,
        build: wire::build(&build),
        release: release.as_ref().map(wire::release),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/builds/{id}/log",
    tag = "hangar",
    params(("id" = String, Path, description = "the build's id"), api::FollowQuery),
    responses((status = 200, body = String, content_type = "text/plain", description = "the build log; streamed while ?follow=true"), crate::openapi::Refusals),
)]
pub(crate) async fn build_log(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<api::FollowQuery>,
) -> Result<Response, ApiError> {
    let (build, _) = find_build(&state, &caller, &id, false).await?;
    let path = state.builder.log_path(&build.id);
    let done: Option<Done> = q.follow.then(|| {
        let store = state.store.clone();
        let id = build.id.clone();
        Box::new(move || -> DoneFuture {
            let (store, id) = (store.clone(), id.clone());
            Box::pin(async move {
                match store.build(&id).await {
                    Ok(Some(b)) => b.status.is_terminal(),
                    _ => true,
                }
            })
        }) as Done
    });
    Ok(text(tail(path, 0, done)))
}

/// `POST /api/v1/builds/{id}/cancel`: a queued build is cancelled at once,
/// a running one once its processes are gone; a finished one is a 409.
#[utoipa::path(
    post,
    path = "/api/v1/builds/{id}/cancel",
    tag = "hangar",
    params(("id" = String, Path, description = "the build's id")),
    responses((status = 200, body = api::BuildCancelled), (status = 409, body = ErrorBody, description = "the build has finished"), crate::openapi::Refusals),
)]
pub(crate) async fn cancel_build(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (build, app) = find_build(&state, &caller, &id, true).await?;
    match state.builder.cancel(&build.id).await {
        Ok(Cancel::Cancelled { was, build }) => {
            let note = AuditNote {
                app: Some(app.name.clone()),
                summary: format!("was {was}"),
                ..AuditNote::default()
            };
            let body = api::BuildCancelled {
                app: app.name,
                was,
                build: wire::build(&build),
            };
            Ok(noted(Json(body), note))
        }
        Ok(Cancel::Finished(build)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "build {} has finished ({}): only a queued or running build can be cancelled",
                build.id, build.status
            ),
        )),
        Ok(Cancel::NotFound) => Err(ApiError::not_found(format!(
            "no build {id:?} in your organisation"
        ))),
        Err(e) => Err(ApiError::internal(e)),
    }
}
