//! Handlers.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use hangar_core::name::AppName;
use hangar_core::status::{MachineState, ReleaseStatus};
use hangar_store::App;
use tokio::io::AsyncWriteExt;

use crate::access::{AuditNote, Caller, find_app, noted};
use crate::tail::{Done, DoneFuture, tail};
use crate::wire;
use crate::{ApiError, ApiState};
use hangar_api_types::ErrorBody;
use hangar_api_types::hangar as api;

/// The API's router.
pub fn router(state: ApiState) -> Router {
    // Every org route is behind the guard (token, scope, audit log).
    let org_routes = Router::new()
        .route("/api/v1/apps", get(list_apps))
        .route("/api/v1/apps/{app}", get(app_status).delete(destroy_app))
        .route("/api/v1/apps/{app}/logs", get(app_logs))
        .route(
            "/api/v1/apps/{app}/secrets",
            get(list_secrets).put(set_secrets),
        )
        .route(
            "/api/v1/apps/{app}/secrets/{name}",
            axum::routing::delete(unset_secret),
        )
        .route("/api/v1/apps/{app}/resources", get(list_resources))
        .route(
            "/api/v1/apps/{app}/shuttle-token/rotate",
            post(rotate_shuttle_token),
        )
        .route("/api/v1/apps/{app}/releases", get(list_releases))
        .route("/api/v1/apps/{app}/rollback", post(rollback))
        .route("/api/v1/apps/{app}/scale", post(scale))
        .route("/api/v1/orgs", post(create_org))
        .route("/api/v1/images", post(import_image))
        .merge(crate::builds::routes())
        .merge(crate::tokens::routes())
        .merge(crate::domains::routes())
        .merge(crate::git::routes())
        .merge(crate::fly::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::access::guard,
        ));
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/openapi.json", get(crate::openapi::serve))
        .merge(org_routes)
        .merge(crate::shuttle::routes())
        .merge(crate::git::hook_routes())
        .fallback(|| async { ApiError::not_found("no such API route") })
        .layer(axum::middleware::map_response(crate::error::json_errors))
        .with_state(state)
}

/// Streams the upload into `uploads_dir`, enforcing the size cap. An
/// upload that stops arriving fails its read here (the file is removed)
/// and the listener answers 408 (see [`crate::listen`]).
pub(crate) async fn save_upload(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
    cap: u64,
    flag: &str,
) -> Result<std::path::PathBuf, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the upload is larger than this server's cap of {cap} bytes; check what the archive includes (.gitignore) or raise {flag}"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > cap) {
        drain(&mut stream).await;
        return Err(too_large());
    }
    let path = state
        .cfg
        .uploads_dir
        .join(format!("{}.tar.gz", hangar_core::id::new_id("upload")));
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(ApiError::internal)?;
    let mut total: u64 = 0;
    let result = async {
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
            total += chunk.len() as u64;
            if total > cap {
                drain(&mut stream).await;
                return Err(too_large());
            }
            file.write_all(&chunk).await.map_err(ApiError::internal)?;
        }
        file.flush().await.map_err(ApiError::internal)?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e);
    }
    if total == 0 {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(ApiError::bad_request(
            "the upload is empty: send the source as a .tar.gz body",
        ));
    }
    Ok(path)
}

/// Reads and discards the rest of a refused upload (bounded in bytes and
/// time) before answering: a server that answers and closes while the
/// client is still sending makes most clients see a broken pipe instead of
/// the 413 that explains it.
async fn drain(stream: &mut axum::body::BodyDataStream) {
    const LIMIT: u64 = 256 * 1024 * 1024;
    let mut drained: u64 = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while drained < LIMIT {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => drained += chunk.len() as u64,
            _ => return,
        }
    }
}

pub(crate) fn text(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/v1/health`: no token needed.
#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "hangar",
    responses((status = 200, body = api::Health)),
    security(()),
)]
pub(crate) async fn health() -> Json<api::Health> {
    Json(api::Health { ok: true })
}

/// An app's status: its releases, machines (with their checks) and builds.
async fn app_status_of(state: &ApiState, app: &App) -> Result<api::AppStatus, ApiError> {
    let releases = state.store.releases_for_app(&app.id).await?;
    let machines = state.store.machines_for_app(&app.id).await?;
    let builds = state.store.builds_for_app(&app.id, 5).await?;
    let active = releases.iter().find(|r| r.status == ReleaseStatus::Active);
    let started = machines
        .iter()
        .filter(|m| m.state == MachineState::Started)
        .count();
    Ok(api::AppStatus {
        name: app.name.clone(),
        url: state.cfg.app_url(&app.name),
        created_at: app.created_at,
        scale: app.scale,
        status: match (active, started) {
            (Some(_), n) if n > 0 => api::AppState::Running,
            (Some(_), _) => api::AppState::Down,
            (None, _) => api::AppState::NotDeployed,
        },
        active_release: active.map(wire::release),
        releases: wire::releases(releases.iter().take(10)),
        machines: machines
            .iter()
            .map(|m| wire::app_machine(m, state.agent.health(&m.id).as_ref()))
            .collect(),
        builds: builds.iter().map(wire::build).collect(),
        driver: state.agent.driver().name().to_owned(),
    })
}

/// `GET /api/v1/apps/{app}/releases`: every release, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/releases",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 200, body = api::ReleaseList), crate::openapi::Refusals),
)]
pub(crate) async fn list_releases(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<api::ReleaseList>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let releases = state.store.releases_for_app(&app.id).await?;
    Ok(Json(api::ReleaseList {
        app: app.name,
        releases: wire::releases(&releases),
    }))
}

/// `POST /api/v1/apps/{app}/rollback` with `{"version": N}` (optional):
/// a new release with vN's image and config, rolled out like a deploy
/// (no build). 202 with the new release; poll it like a deploy's.
#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/rollback",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    request_body(content = api::RollbackRequest),
    responses((status = 202, body = api::ReleaseStarted), (status = 409, body = ErrorBody, description = "nothing to roll back to, or that release is live or never served"), crate::openapi::Refusals),
)]
pub(crate) async fn rollback(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let req: api::RollbackRequest = crate::fly::parse(&body)?;
    let releases = state.store.releases_for_app(&app.id).await?;
    let active = releases.iter().find(|r| r.status == ReleaseStatus::Active);
    let target = match req.version {
        Some(v) => {
            let r = releases.iter().find(|r| r.version == v).ok_or_else(|| {
                ApiError::not_found(format!(
                    "{} has no release v{v}; `hangar releases {}` lists them",
                    app.name, app.name
                ))
            })?;
            match r.status {
                ReleaseStatus::Active => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("v{v} is the live release of {} already", app.name),
                    ));
                }
                ReleaseStatus::Superseded => r,
                other => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "v{v} never served ({other}); roll back to a release that did (`hangar releases {}`)",
                            app.name
                        ),
                    ));
                }
            }
        }
        None => releases
            .iter()
            .filter(|r| active.is_none_or(|a| r.version < a.version))
            .find(|r| r.status == ReleaseStatus::Superseded)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    format!("{} has no earlier release to roll back to", app.name),
                )
            })?,
    };
    let to = target.version;
    let release = state.store.rollback_release(target).await?;
    state.agent.spawn_rollout(release.id.clone());
    let note = AuditNote {
        summary: format!("v{} with the image and config of v{to}", release.version),
        ..AuditNote::default()
    };
    let body = api::ReleaseStarted {
        url: state.cfg.app_url(&app.name),
        app: app.name,
        release: wire::release(&release),
    };
    Ok(noted((StatusCode::ACCEPTED, Json(body)), note))
}

/// Largest machine count `scale` accepts.
const MAX_SCALE: u32 = 100;

/// `POST /api/v1/apps/{app}/scale` with `{"count": N}`: returns once the
/// app runs N machines of its live release (new ones passing their checks).
#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/scale",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    request_body(content = api::ScaleRequest),
    responses((status = 200, body = api::AppStatus), (status = 409, body = ErrorBody, description = "the app is not deployed"), (status = 412, body = ErrorBody, description = "the machine's state does not allow it (failed_precondition)"), crate::openapi::Refusals),
)]
pub(crate) async fn scale(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let req: api::ScaleRequest = crate::fly::parse(&body)?;
    if !(1..=MAX_SCALE).contains(&req.count) {
        return Err(ApiError::bad_request(format!(
            "count: must be 1 to {MAX_SCALE}, not {}",
            req.count
        )));
    }
    let memory_mb = state
        .store
        .machines_for_app(&app.id)
        .await?
        .iter()
        .map(|m| m.config.guest().memory_mb)
        .max()
        .unwrap_or(state.cfg.default_memory_mb);
    crate::quota::check_scale(&state, &caller.org, &app.id, req.count, memory_mb).await?;
    state.agent.scale(&app, req.count).await?;
    let app = find_app(&state, &caller, &name).await?;
    let note = AuditNote {
        summary: format!("to {} machines", req.count),
        ..AuditNote::default()
    };
    Ok(noted(Json(app_status_of(&state, &app).await?), note))
}

#[utoipa::path(
    get,
    path = "/api/v1/apps",
    tag = "hangar",
    responses((status = 200, body = api::AppList), crate::openapi::Refusals),
)]
pub(crate) async fn list_apps(
    caller: Caller,
    State(state): State<ApiState>,
) -> Result<Json<api::AppList>, ApiError> {
    let mut apps = Vec::new();
    for app in state.store.apps(&caller.org.id).await? {
        if !caller.sees(&app.name) {
            continue;
        }
        apps.push(app_status_of(&state, &app).await?);
    }
    Ok(Json(api::AppList { apps }))
}

#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 200, body = api::AppStatus), crate::openapi::Refusals),
)]
pub(crate) async fn app_status(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<api::AppStatus>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    Ok(Json(app_status_of(&state, &app).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/apps/{app}",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 200, body = api::Destroyed), (status = 502, body = ErrorBody, description = "a resource server (Postgres, Redis, NATS) failed"), crate::openapi::Refusals),
)]
pub(crate) async fn destroy_app(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<api::Destroyed>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let dropped = delete_app_everywhere(&state, &app).await?;
    Ok(Json(api::Destroyed {
        destroyed: app.name,
        resources_dropped: dropped,
    }))
}

/// The one way an app is deleted, from either API: machines first (they
/// hold connections to the database), then what was provisioned for it
/// (database, role, Redis user, secrets), then its rows. Returns what was
/// dropped. A later app of the same name, in any org, starts empty.
pub(crate) async fn delete_app_everywhere(
    state: &ApiState,
    app: &hangar_store::App,
) -> Result<Vec<String>, ApiError> {
    // Its pull requests' previews are apps of their own: they go first.
    crate::git::previews::teardown_all(state, app).await?;
    state.agent.destroy_app(app).await?;
    let resources = state.resources.list(&app.id).await?;
    state.resources.deprovision(app).await?;
    // Its build logs and dirs; a crash before this leaves them for the
    // next start's collection.
    if let Err(e) = state.builder.forget_app(app).await {
        tracing::warn!(app = %app.name, "removing the app's build logs and dirs: {e}");
    }
    let domains = state.store.domains_for_app(&app.id).await?;
    state.store.delete_app(&app.id).await?;
    state.git.forget(&app.id).await;
    // Its custom domains and certificate rows went with its row; the edge
    // stops presenting their certificates now, not at the next restart.
    if let Some(certs) = &state.certs {
        for d in &domains {
            certs.forget(&d.host);
        }
        certs.forget(&state.cfg.app_host(&app.name));
    }
    crate::domains::publish(state).await?;
    Ok(resources
        .into_iter()
        .map(|r| format!("{} {}", r.kind, r.name))
        .collect())
}

/// `GET /api/v1/apps/{app}/secrets`: names and when each was set; values
/// never leave the platform through the API.
#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/secrets",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 200, body = api::SecretList), (status = 502, body = ErrorBody, description = "a resource server (Postgres, Redis, NATS) failed"), crate::openapi::Refusals),
)]
pub(crate) async fn list_secrets(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<api::SecretList>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let secrets = state
        .resources
        .secret_names(&app.id)
        .await?
        .into_iter()
        .map(|(name, t)| api::SecretName {
            name,
            updated_at: hangar_core::rfc3339(t),
        })
        .collect();
    Ok(Json(api::SecretList { secrets }))
}

/// `PUT /api/v1/apps/{app}/secrets` with `{"NAME": "value", ...}`: sets
/// them (sealed at rest); machines get them at their next start.
#[utoipa::path(
    put,
    path = "/api/v1/apps/{app}/secrets",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    request_body(content = std::collections::BTreeMap<String, String>, description = "secret names to values"),
    responses((status = 200, body = api::SecretsSet), (status = 409, body = ErrorBody, description = "the app name is another organisation's"), (status = 502, body = ErrorBody, description = "a resource server (Postgres, Redis, NATS) failed"), crate::openapi::Refusals),
)]
pub(crate) async fn set_secrets(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // Secrets may be set before the first deploy (as `hangar deploy` does
    // with a Shuttle project's Secrets.toml): the app is created if need be.
    let name = AppName::parse(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(app) = state.store.app_by_name(name.as_str()).await?
        && app.org_id != caller.org.id
    {
        return Err(hangar_store::StoreError::NameTaken(name.to_string()).into());
    }
    let values: std::collections::BTreeMap<String, String> = serde_json::from_slice(&body)
        .map_err(|e| {
            ApiError::bad_request(format!(
                "the body must be a JSON object of secret names to string values: {e}"
            ))
        })?;
    if values.is_empty() {
        return Err(ApiError::bad_request("no secrets given"));
    }
    let names: Vec<String> = values.keys().cloned().collect();
    // Checked before the app is created.
    hangar_resources::check_secret_names(&names)?;
    crate::quota::check_new_app(&state, &caller.org, name.as_str()).await?;
    let app = state
        .store
        .get_or_create_app(&caller.org.id, name.as_str())
        .await?;
    state.resources.set_secrets(&app.id, values).await?;
    // Names only: a value never reaches the audit log.
    let note = AuditNote {
        summary: names.join(", "),
        ..AuditNote::default()
    };
    Ok(noted(Json(api::SecretsSet { set: names }), note))
}

/// `DELETE /api/v1/apps/{app}/secrets/{name}`.
#[utoipa::path(
    delete,
    path = "/api/v1/apps/{app}/secrets/{name}",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name"), ("name" = String, Path, description = "the secret's name")),
    responses((status = 200, body = api::SecretsUnset), (status = 502, body = ErrorBody, description = "a resource server (Postgres, Redis, NATS) failed"), crate::openapi::Refusals),
)]
pub(crate) async fn unset_secret(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app_name, secret)): Path<(String, String)>,
) -> Result<Json<api::SecretsUnset>, ApiError> {
    let app = find_app(&state, &caller, &app_name).await?;
    let removed = state
        .resources
        .unset_secrets(&app.id, vec![secret.clone()])
        .await?;
    if removed.is_empty() {
        return Err(ApiError::not_found(format!(
            "app {app_name:?} has no secret named {secret:?}"
        )));
    }
    Ok(Json(api::SecretsUnset { unset: removed }))
}

/// `GET /api/v1/apps/{app}/resources`: what the app's code declared and
/// its state; never credentials.
#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/resources",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 200, body = api::ResourceList), (status = 502, body = ErrorBody, description = "a resource server (Postgres, Redis, NATS) failed"), crate::openapi::Refusals),
)]
pub(crate) async fn list_resources(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<api::ResourceList>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let resources = state
        .resources
        .list(&app.id)
        .await?
        .into_iter()
        .map(|r| api::Resource {
            kind: r.kind,
            name: r.name,
            status: r.status,
            detail: r.detail,
            updated_at: r.updated_at,
        })
        .collect();
    Ok(Json(api::ResourceList { resources }))
}

/// `POST /api/v1/apps/{app}/shuttle-token/rotate`: a new token for the
/// Shuttle runtime of the app's machines; the old one is refused at once,
/// and machines get the new one at their next start.
#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/shuttle-token/rotate",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 200, body = api::ShuttleTokenRotated), (status = 502, body = ErrorBody, description = "a resource server (Postgres, Redis, NATS) failed"), crate::openapi::Refusals),
)]
pub(crate) async fn rotate_shuttle_token(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let generation = state.resources.rotate_shuttle_token(&app.id).await?;
    let note = AuditNote {
        summary: format!("generation {generation}"),
        ..AuditNote::default()
    };
    let body = api::ShuttleTokenRotated {
        app: app.name,
        generation,
        note: "machines running now hold the old token until they restart (`hangar deploy` or a machine restart hands the new one over)".to_owned(),
    };
    Ok(noted(Json(body), note))
}

#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/logs",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name"), api::LogsQuery),
    responses((status = 200, body = String, content_type = "text/plain", description = "the newest machine's output; streamed while ?follow=true"), crate::openapi::Refusals),
)]
pub(crate) async fn app_logs(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<api::LogsQuery>,
) -> Result<Response, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let machines = state.store.machines_for_app(&app.id).await?;
    // The newest machine that runs, else the newest one there is.
    let machine = machines
        .iter()
        .find(|m| m.state == MachineState::Started)
        .or(machines.first());
    let Some(machine) = machine else {
        return Err(ApiError::not_found(format!(
            "app {name:?} has no machine yet, so no logs: deploy it first"
        )));
    };
    let path = state.agent.log_path(&app.name, &machine.id);
    let len = tokio::fs::metadata(&path)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let start = len.saturating_sub(q.tail_bytes.unwrap_or(64 * 1024));
    let done: Option<Done> = q
        .follow
        .then(|| Box::new(|| -> DoneFuture { Box::pin(async { false }) }) as Done);
    Ok(text(tail(path, start, done)))
}

/// Creates an org and its first token (the platform's admin org only).
#[utoipa::path(
    post,
    path = "/api/v1/orgs",
    tag = "hangar",
    request_body(content = api::CreateOrg),
    responses((status = 201, body = api::OrgCreated), (status = 409, body = ErrorBody, description = "the name is taken, or this Hangar serves one organisation"), crate::openapi::Refusals),
)]
pub(crate) async fn create_org(
    caller: Caller,
    State(state): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: api::CreateOrg = crate::fly::parse(&body)?;
    if !caller.org.admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only the platform's admin organisation may create organisations",
        ));
    }
    if state.cfg.single_tenant {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "this Hangar runs with --driver process (no isolation between tenants): it serves one organisation only",
        ));
    }
    let name = AppName::parse(&req.name).map_err(|e| {
        ApiError::bad_request(format!(
            "name: {}",
            e.to_string().replace("app name", "organisation name")
        ))
    })?;
    let token = hangar_core::id::new_token();
    let org = state
        .store
        .create_org_with_token(name.as_str(), "first", &hangar_core::id::hash_token(&token))
        .await?;
    let note = AuditNote {
        target: Some(org.name.clone()),
        summary: format!("organisation {} ({})", org.name, org.id),
        ..AuditNote::default()
    };
    Ok(noted(
        (
            StatusCode::CREATED,
            Json(api::OrgCreated {
                org: org.name,
                id: org.id,
                token,
            }),
        ),
        note,
    ))
}

/// `name[:tag]` of an imported image; the tag defaults to `latest`.
fn image_name(raw: &str) -> Result<String, ApiError> {
    let (name, tag) = raw.rsplit_once(':').unwrap_or((raw, "latest"));
    let name_ok = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b));
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if name_ok && tag_ok && !raw.starts_with("sha256:") {
        Ok(format!("{name}:{tag}"))
    } else {
        Err(ApiError::bad_request(format!(
            "name: {raw:?} is not an image name: lowercase letters, digits, '.', '_', '-' and '/', then an optional :tag"
        )))
    }
}

/// Imports an image archive under a name of the caller's org.
#[utoipa::path(
    post,
    path = "/api/v1/images",
    tag = "hangar",
    params(api::ImportQuery),
    request_body(content = crate::openapi::Archive, content_type = "application/octet-stream", description = "an OCI layout or `docker save` tar"),
    responses((status = 201, body = api::ImageImported), (status = 413, body = ErrorBody, description = "the archive is over the image cap"), (status = 429, body = ErrorBody, description = "too many imports of this organisation at once"), crate::openapi::Refusals),
)]
pub(crate) async fn import_image(
    caller: Caller,
    State(state): State<ApiState>,
    Query(q): Query<api::ImportQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = image_name(&q.name)?;
    // A few imports per org at once, refused before the body is read.
    let slot = state.images.import_slot(&caller.org.id)?;
    let upload = save_upload(
        &state,
        &headers,
        body,
        state.cfg.max_image_bytes,
        "--max-image-bytes",
    )
    .await?;
    let images = state.images.clone();
    let staging = state
        .cfg
        .uploads_dir
        .join(hangar_core::id::new_id("import"));
    /// The upload, removed when the import ends however it ends.
    struct Upload(std::path::PathBuf);
    impl Drop for Upload {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let upload = Upload(upload);
    // The slot and the upload go with the blocking task: held until the
    // import ends, even if the client goes away first.
    let imported = tokio::task::spawn_blocking(move || {
        let (_slot, upload) = (slot, upload);
        images.import_archive(&upload.0, &staging)
    })
    .await
    .map_err(ApiError::internal)?;
    let digest = imported?;
    state
        .store
        .set_image_ref(&caller.org.id, &name, &digest)
        .await?;
    let note = AuditNote {
        target: Some(name.clone()),
        summary: digest.clone(),
        ..AuditNote::default()
    };
    Ok(noted(
        (
            StatusCode::CREATED,
            Json(api::ImageImported { name, digest }),
        ),
        note,
    ))
}
