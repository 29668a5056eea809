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
use hangar_store::{Build, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{AuditNote, Caller, find_build, noted};
use crate::routes::{save_upload, text};
use crate::tail::{Done, DoneFuture, tail};
use crate::{ApiError, ApiState};

/// The build routes.
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/apps/{app}/deploys", post(deploy))
        .route("/api/v1/builds/{id}", get(build_status))
        .route("/api/v1/builds/{id}/log", get(build_log))
        .route("/api/v1/builds/{id}/cancel", post(cancel_build))
}

async fn deploy(
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
    let slot = state
        .builder
        .validation_slot(&caller.org.id)
        .map_err(|e| ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()))?;
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
            return Err(match e {
                hangar_build::BuildError::Archive(a) if a.is_too_large() => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the source archive was refused: {a}"),
                ),
                hangar_build::BuildError::Archive(a) if a.is_client_error() => {
                    ApiError::bad_request(format!("the source archive was refused: {a}"))
                }
                other => ApiError::internal(other),
            });
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
        Err(BuildError::Store(e)) => return Err(e.into()),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let note = AuditNote {
        summary: format!("build {} of source {}", build.id, build.source_digest),
        ..AuditNote::default()
    };
    let body = json!({
        "app": app.name,
        "url": state.cfg.app_url(&app.name),
        "build": build_json(&build),
    });
    Ok(noted((StatusCode::ACCEPTED, Json(body)), note))
}

/// A build as the API sends it.
pub(crate) fn build_json(b: &Build) -> Value {
    json!({
        "id": b.id,
        "status": b.status,
        "source_digest": b.source_digest,
        "image_digest": b.image_digest,
        "error": b.error,
        "attempts": b.attempts,
        "created_at": b.created_at,
        "started_at": b.started_at,
        "finished_at": b.finished_at,
    })
}

async fn build_status(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (build, app) = find_build(&state, &caller, &id, false).await?;
    let release = state.store.release_for_build(&build.id).await?;
    Ok(Json(json!({
        "app": app.name,
        "url": state.cfg.app_url(&app.name),
        "build": build_json(&build),
        "release": release,
    })))
}

#[derive(Deserialize)]
struct FollowQuery {
    #[serde(default)]
    follow: bool,
}

async fn build_log(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<FollowQuery>,
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
async fn cancel_build(
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
            let body = json!({"app": app.name, "was": was, "build": build_json(&build)});
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
