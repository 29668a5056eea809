//! The Fly-compatible Machines API (`/v1/apps`, `/v1/apps/{app}/machines`):
//! the endpoints, JSON field names and state names Fly documents, so tools
//! written for Fly work against Hangar by changing the base URL and token.
//!
//! Unknown request fields are ignored, as Fly does; a malformed body is a
//! 400 naming the field (`config.guest.cpus: …`), an out-of-range value or
//! an unknown image a 422; an action that does not fit the machine's state
//! a 412 (`failed_precondition`).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hangar_core::machine::MachineConfig;
use hangar_core::name::AppName;
use hangar_core::status::MachineState;
use hangar_store::{App, Machine};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::access::{AuditNote, Caller, find_app, noted};
use crate::{ApiError, ApiState};

/// The Fly-compatible routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/apps", get(list_apps).post(create_app))
        .route("/v1/apps/{app}", get(get_app).delete(delete_app))
        .route(
            "/v1/apps/{app}/machines",
            get(list_machines).post(create_machine),
        )
        .route(
            "/v1/apps/{app}/machines/{id}",
            get(get_machine).post(update_machine).delete(delete_machine),
        )
        .route("/v1/apps/{app}/machines/{id}/cordon", post(cordon))
        .route("/v1/apps/{app}/machines/{id}/uncordon", post(uncordon))
        .route(
            "/v1/apps/{app}/machines/{id}/lease",
            get(get_lease).post(acquire_lease).delete(release_lease),
        )
        .route("/v1/apps/{app}/machines/{id}/metadata", get(get_metadata))
        .route(
            "/v1/apps/{app}/machines/{id}/metadata/{key}",
            post(set_metadata).delete(delete_metadata),
        )
        .route("/v1/apps/{app}/machines/{id}/exec", post(exec))
        .route("/v1/apps/{app}/machines/{id}/start", post(start))
        .route("/v1/apps/{app}/machines/{id}/stop", post(stop))
        .route("/v1/apps/{app}/machines/{id}/suspend", post(suspend))
        .route("/v1/apps/{app}/machines/{id}/restart", post(restart))
        .route("/v1/apps/{app}/machines/{id}/wait", get(wait))
        .route("/v1/apps/{app}/machines/{id}/events", get(events))
}

/// Parses a JSON body; errors name the offending field.
pub(crate) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return serde_json::from_str("{}")
            .map_err(|e| ApiError::bad_request(format!("a JSON body is required: {e}")));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })
}

/// The app's machine `id` (destroyed ones too), or 404.
async fn find_machine(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    id: &str,
) -> Result<(App, Machine), ApiError> {
    let app = find_app(state, caller, app).await?;
    match state.store.machine(id).await? {
        Some(m) if m.app_id == app.id => Ok((app, m)),
        _ => Err(ApiError::not_found(format!("machine not found: {id}"))),
    }
}

// ---- apps ----

#[derive(Deserialize)]
struct CreateApp {
    app_name: String,
    #[serde(default)]
    org_slug: Option<String>,
}

async fn create_app(
    caller: Caller,
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateApp = parse(&body)?;
    let name = AppName::parse(&req.app_name)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("app_name: {e}")))?;
    if let Some(slug) = &req.org_slug
        && slug != &caller.org.name
        && slug != "personal"
    {
        return Err(ApiError::not_found(format!(
            "organization not found: {slug}"
        )));
    }
    if state.store.app_by_name(name.as_str()).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("app_name: an app named {name:?} exists already"),
        ));
    }
    crate::quota::check_new_app(&state, &caller.org, name.as_str()).await?;
    let app = state
        .store
        .get_or_create_app(&caller.org.id, name.as_str())
        .await?;
    let note = AuditNote {
        app: Some(app.name.clone()),
        summary: app.id.clone(),
        ..AuditNote::default()
    };
    Ok(noted(
        (
            StatusCode::CREATED,
            Json(json!({"id": app.id, "name": app.name})),
        ),
        note,
    ))
}

#[derive(Deserialize)]
struct ListAppsQuery {
    #[serde(default)]
    org_slug: Option<String>,
}

async fn list_apps(
    caller: Caller,
    State(state): State<ApiState>,
    Query(q): Query<ListAppsQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(slug) = &q.org_slug
        && slug != &caller.org.name
        && slug != "personal"
    {
        return Ok(Json(json!({"total_apps": 0, "apps": []})));
    }
    let mut apps = Vec::new();
    for app in state.store.apps(&caller.org.id).await? {
        if !caller.sees(&app.name) {
            continue;
        }
        let count = state.store.machines_for_app(&app.id).await?.len();
        apps.push(
            json!({"id": app.id, "name": app.name, "machine_count": count, "network": "default"}),
        );
    }
    Ok(Json(json!({"total_apps": apps.len(), "apps": apps})))
}

async fn get_app(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let machines = state.store.machines_for_app(&app.id).await?;
    let status = if machines.is_empty() {
        "pending"
    } else {
        "deployed"
    };
    Ok(Json(json!({
        "id": app.id,
        "name": app.name,
        "organization": {"name": caller.org.name, "slug": caller.org.name},
        "status": status,
    })))
}

async fn delete_app(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    crate::routes::delete_app_everywhere(&state, &app).await?;
    Ok(StatusCode::ACCEPTED)
}

// ---- machines ----

/// A machine as Fly's API shows it.
async fn machine_json(state: &ApiState, m: &Machine) -> Result<Value, ApiError> {
    let mut events = Vec::new();
    for (i, e) in state
        .store
        .machine_events(&m.id, 20)
        .await?
        .into_iter()
        .enumerate()
    {
        let mut ev = json!({
            "type": e.kind, "status": e.status, "source": e.source, "timestamp": e.timestamp,
        });
        // The newest exit carries the exit status, as Fly's exit events do.
        if i == 0 && e.kind == "exit" {
            ev["request"] = json!({"exit_event": {
                "exit_code": m.exit_code, "oom_killed": m.oom_killed,
                "requested_stop": false, "restarting": false,
            }});
        }
        events.push(ev);
    }
    let (repository, tag) = match m.config.image.split_once(':') {
        Some((r, t)) if !m.config.image.starts_with("sha256:") => (r.to_owned(), t.to_owned()),
        _ => (m.config.image.clone(), String::new()),
    };
    Ok(json!({
        "id": m.id,
        "name": m.name,
        "state": m.state,
        "region": m.region,
        "instance_id": m.instance_id,
        "private_ip": m.address.to_string(),
        "config": m.config,
        "image_ref": {"registry": "hangar", "repository": repository, "tag": tag,
                      "digest": m.image_digest, "labels": {}},
        "created_at": hangar_core::rfc3339(m.created_at),
        "updated_at": hangar_core::rfc3339(m.updated_at),
        "events": events,
        "host_status": "ok",
        "incomplete_config": null,
    }))
}

#[derive(Deserialize)]
struct CreateMachine {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    skip_launch: bool,
    config: MachineConfig,
}

/// Validates a create/update body and resolves its image for the caller.
async fn checked_request(
    state: &ApiState,
    caller: &Caller,
    body: &Bytes,
) -> Result<(CreateMachine, String), ApiError> {
    let req: CreateMachine = parse(body)?;
    req.config
        .validate()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    if let Some(region) = &req.region
        && !region.is_empty()
        && region != state.agent.region()
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "region: {region:?} is not served here; this node's region is {:?}",
                state.agent.region()
            ),
        ));
    }
    let digest = state
        .store
        .resolve_image(&caller.org.id, &req.config.image)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "config.image: no image {:?} in Hangar's store for your organisation; deploy an app (its images are <app>:vN) or `hangar image import` one",
                    req.config.image
                ),
            )
        })?;
    Ok((req, digest))
}

async fn create_machine(
    caller: Caller,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = find_app(&state, &caller, &app).await?;
    let (req, digest) = checked_request(&state, &caller, &body).await?;
    crate::quota::check_machine(&state, &caller.org, req.config.guest().memory_mb, None).await?;
    let m = state
        .agent
        .create(&app, None, req.name, req.config, digest, req.skip_launch)
        .await?;
    let note = AuditNote {
        target: Some(m.id.clone()),
        summary: format!("image {}", m.config.image),
        ..AuditNote::default()
    };
    Ok(noted(Json(machine_json(&state, &m).await?), note))
}

async fn update_machine(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    let (req, digest) = checked_request(&state, &caller, &body).await?;
    crate::quota::check_machine(&state, &caller.org, req.config.guest().memory_mb, Some(&id))
        .await?;
    let m = state
        .agent
        .update(&id, req.config, digest, req.name, req.skip_launch)
        .await?;
    Ok(Json(machine_json(&state, &m).await?))
}

/// The header a lease holder passes.
const LEASE_HEADER: &str = "fly-machine-lease-nonce";

/// A leased machine only takes changes from the lease holder.
fn check_lease(headers: &HeaderMap, m: &Machine) -> Result<(), ApiError> {
    let Some(lease) = &m.lease else { return Ok(()) };
    if lease.expires_at <= hangar_core::now_unix() {
        return Ok(());
    }
    let given = headers.get(LEASE_HEADER).and_then(|v| v.to_str().ok());
    if given == Some(lease.nonce.as_str()) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "machine {} is leased by {:?} until {}; pass the lease's nonce in the {LEASE_HEADER} header",
            m.id,
            lease.owner,
            hangar_core::rfc3339(lease.expires_at)
        ),
    ))
}

/// The app's machine `id`, not destroyed, or 404.
async fn find_live_machine(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    id: &str,
) -> Result<(App, Machine), ApiError> {
    let (app, m) = find_machine(state, caller, app, id).await?;
    if m.state == MachineState::Destroyed {
        return Err(ApiError::not_found(format!("machine not found: {id}")));
    }
    Ok((app, m))
}

/// The app's live machine `id`, for a change: refused (409) while another
/// holder's lease is on it.
async fn machine_to_change(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    id: &str,
    headers: &HeaderMap,
) -> Result<Machine, ApiError> {
    let (_, m) = find_live_machine(state, caller, app, id).await?;
    check_lease(headers, &m)?;
    Ok(m)
}

async fn cordon(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    set_cordon(&state, &caller, &app, &id, &headers, true).await
}

async fn uncordon(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    set_cordon(&state, &caller, &app, &id, &headers, false).await
}

async fn set_cordon(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    id: &str,
    headers: &HeaderMap,
    cordoned: bool,
) -> Result<Json<Value>, ApiError> {
    machine_to_change(state, caller, app, id, headers).await?;
    state.agent.cordon(id, cordoned).await?;
    Ok(Json(json!({"ok": true})))
}

fn lease_json(m: &Machine) -> Value {
    match &m.lease {
        Some(l) => json!({"status": "success", "data": {
            "nonce": l.nonce, "expires_at": l.expires_at, "owner": l.owner,
            "description": l.description, "version": m.instance_id,
        }}),
        None => Value::Null,
    }
}

#[derive(Deserialize)]
struct LeaseRequest {
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(default)]
    description: Option<String>,
}

async fn acquire_lease(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    let req: LeaseRequest = parse(&body)?;
    let ttl = req.ttl.unwrap_or(30);
    if !(1..=3600).contains(&ttl) {
        return Err(ApiError::bad_request("ttl: must be 1 to 3600 seconds"));
    }
    // Held by someone else: 409. Held by the caller (nonce given): refreshed.
    check_lease(&headers, &m)?;
    let nonce = match (&m.lease, headers.get(LEASE_HEADER)) {
        (Some(l), Some(_)) if l.expires_at > hangar_core::now_unix() => l.nonce.clone(),
        _ => hangar_core::id::new_token().replace("hgr_", ""),
    };
    let lease = hangar_store::Lease {
        nonce,
        owner: caller.org.name.clone(),
        description: req.description.unwrap_or_default(),
        expires_at: hangar_core::now_unix() + ttl as i64,
    };
    state.store.set_machine_lease(&id, Some(lease)).await?;
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    Ok(Json(lease_json(&m)))
}

async fn get_lease(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    match &m.lease {
        Some(l) if l.expires_at > hangar_core::now_unix() => Ok(Json(lease_json(&m))),
        _ => Err(ApiError::not_found(format!("machine {id} has no lease"))),
    }
}

async fn release_lease(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    state.store.set_machine_lease(&id, None).await?;
    Ok(Json(json!({"ok": true})))
}

async fn get_metadata(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    Ok(Json(json!(m.config.metadata)))
}

#[derive(Deserialize)]
struct MetadataValue {
    value: String,
}

fn check_metadata_key(key: &str) -> Result<(), ApiError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "metadata key {key:?}: use 1 to 128 letters, digits, '_', '-' or '.'"
        )))
    }
}

async fn set_metadata(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let m = machine_to_change(&state, &caller, &app, &id, &headers).await?;
    check_metadata_key(&key)?;
    let req: MetadataValue = parse(&body)?;
    let mut metadata = m.config.metadata.clone();
    metadata.insert(key, req.value);
    state.store.set_machine_metadata(&id, metadata).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_metadata(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let m = machine_to_change(&state, &caller, &app, &id, &headers).await?;
    let mut metadata = m.config.metadata.clone();
    if metadata.remove(&key).is_none() {
        return Err(ApiError::not_found(format!(
            "machine {id} has no metadata key {key:?}"
        )));
    }
    state.store.set_machine_metadata(&id, metadata).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ExecRequest {
    /// The command as argv (preferred).
    #[serde(default)]
    command: Option<Vec<String>>,
    /// The command as one string, split on whitespace (Fly's older field).
    #[serde(default)]
    cmd: Option<String>,
    /// Seconds before the command is killed.
    #[serde(default)]
    timeout: Option<u64>,
}

async fn exec(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    let req: ExecRequest = parse(&body)?;
    let argv: Vec<String> = match (req.command, req.cmd) {
        (Some(c), _) if !c.is_empty() => c,
        (_, Some(c)) if !c.trim().is_empty() => c.split_whitespace().map(str::to_owned).collect(),
        _ => {
            return Err(ApiError::bad_request(
                "cmd: give the command as \"command\": [argv] or \"cmd\": \"string\"",
            ));
        }
    };
    let timeout = req.timeout.unwrap_or(30);
    if !(1..=600).contains(&timeout) {
        return Err(ApiError::bad_request("timeout: must be 1 to 600 seconds"));
    }
    // Each stream is capped (the node keeps the first MiB of each).
    let out = state
        .agent
        .exec(&id, &argv, Duration::from_secs(timeout))
        .await?;
    Ok(Json(json!({
        "exit_code": out.code,
        "exit_signal": 0,
        "stdout": String::from_utf8_lossy(&out.stdout),
        "stderr": String::from_utf8_lossy(&out.stderr),
        "truncated": out.truncated,
    })))
}

#[derive(Deserialize)]
struct ListMachinesQuery {
    #[serde(default)]
    include_deleted: bool,
    #[serde(default)]
    region: Option<String>,
    /// `metadata.{key}=value` filters.
    #[serde(flatten)]
    rest: BTreeMap<String, String>,
}

async fn list_machines(
    caller: Caller,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(q): Query<ListMachinesQuery>,
) -> Result<Json<Value>, ApiError> {
    let app = find_app(&state, &caller, &app).await?;
    let wanted: Vec<(&str, &str)> = q
        .rest
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("metadata.").map(|k| (k, v.as_str())))
        .collect();
    let mut out = Vec::new();
    for m in state
        .store
        .machines_for_app_all(&app.id, q.include_deleted)
        .await?
    {
        if q.region.as_ref().is_some_and(|r| r != &m.region) {
            continue;
        }
        if !wanted
            .iter()
            .all(|(k, v)| m.config.metadata.get(*k).map(String::as_str) == Some(*v))
        {
            continue;
        }
        out.push(machine_json(&state, &m).await?);
    }
    Ok(Json(Value::Array(out)))
}

async fn get_machine(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, m) = find_machine(&state, &caller, &app, &id).await?;
    Ok(Json(machine_json(&state, &m).await?))
}

async fn start(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let before = machine_to_change(&state, &caller, &app, &id, &headers).await?;
    state.agent.start(&id).await?;
    Ok(Json(
        json!({"previous_state": before.state, "migrated": false, "new_host": ""}),
    ))
}

#[derive(Deserialize, Default)]
struct StopRequest {
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    timeout: Option<Value>,
}

impl StopRequest {
    fn resolve(&self) -> Result<(Option<i32>, Option<Duration>), ApiError> {
        let signal = match &self.signal {
            None => None,
            Some(s) => Some(
                hangar_core::machine::STOP_SIGNALS
                    .iter()
                    .find(|(n, _)| n == s)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("signal: {s:?} is not a signal Hangar sends"))
                    })?,
            ),
        };
        let timeout = match &self.timeout {
            None => None,
            Some(Value::Number(n)) => n.as_f64().and_then(hangar_core::duration::seconds),
            Some(Value::String(s)) => hangar_core::duration::parse(s),
            Some(_) => None,
        };
        if self.timeout.is_some() && timeout.is_none() {
            return Err(ApiError::bad_request(
                "timeout: must be a duration such as \"10s\" or seconds",
            ));
        }
        if let Some(t) = timeout {
            hangar_core::duration::Bounds::STOP_GRACE
                .check(t)
                .map_err(|why| ApiError::bad_request(format!("timeout: {why}")))?;
        }
        Ok((signal, timeout))
    }
}

async fn stop(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    let req: StopRequest = parse(&body)?;
    let (signal, timeout) = req.resolve()?;
    state.agent.stop(&id, signal, timeout).await?;
    Ok(Json(json!({"ok": true})))
}

async fn suspend(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    state.agent.suspend(&id).await?;
    Ok(Json(json!({"ok": true})))
}

async fn restart(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<StopRequestQuery>,
) -> Result<Json<Value>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    let req = StopRequest {
        signal: q.signal,
        timeout: q.timeout.map(Value::String),
    };
    let (signal, timeout) = req.resolve()?;
    state.agent.stop(&id, signal, timeout).await?;
    state.agent.start(&id).await?;
    Ok(Json(json!({"ok": true})))
}

#[derive(Deserialize)]
struct StopRequestQuery {
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn delete_machine(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    state.agent.destroy(&id, q.force).await?;
    Ok(Json(json!({"ok": true})))
}

#[derive(Deserialize)]
struct WaitQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    instance_id: Option<String>,
}

async fn wait(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    find_machine(&state, &caller, &app, &id).await?;
    let target: MachineState = q
        .state
        .as_deref()
        .unwrap_or("started")
        .parse()
        .map_err(|_| {
            ApiError::bad_request("state: must be one of started, stopped, suspended, destroyed")
        })?;
    if !matches!(
        target,
        MachineState::Started
            | MachineState::Stopped
            | MachineState::Suspended
            | MachineState::Destroyed
    ) {
        return Err(ApiError::bad_request(
            "state: must be one of started, stopped, suspended, destroyed",
        ));
    }
    let secs = q.timeout.unwrap_or(60);
    if !(1..=60).contains(&secs) {
        return Err(ApiError::bad_request("timeout: must be 1 to 60 seconds"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let m = state
            .store
            .machine(&id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("machine not found: {id}")))?;
        let instance_ok = q.instance_id.as_ref().is_none_or(|i| i == &m.instance_id);
        if m.state == target && instance_ok {
            return Ok(Json(json!({"ok": true, "state": m.state})).into_response());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "deadline_exceeded: machine {id} is {} after {secs} s, not {target}",
                    m.state
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn events(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (_, m) = find_machine(&state, &caller, &app, &id).await?;
    let events = state.store.machine_events(&m.id, 100).await?;
    Ok(Json(json!(events)))
}
