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
use hangar_core::name::AppName;
use hangar_core::status::MachineState;
use hangar_store::{App, Machine};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::access::{AuditNote, Caller, find_app, noted};
use crate::{ApiError, ApiState};
use hangar_api_types::{ErrorBody, OkBody, fly};

pub(crate) mod apps;
pub(crate) mod leases;
pub(crate) mod machines;
pub(crate) mod wait;

use apps::*;
use leases::*;
use machines::*;
use wait::*;

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
        .route(
            "/v1/apps/{app}/machines/{id}/metadata",
            get(get_metadata)
                .put(update_metadata)
                .patch(update_metadata),
        )
        .route(
            "/v1/apps/{app}/machines/{id}/metadata/{key}",
            get(get_metadata_key)
                .post(set_metadata)
                .delete(delete_metadata),
        )
        .route("/v1/apps/{app}/machines/{id}/exec", post(exec))
        .route("/v1/apps/{app}/machines/{id}/start", post(start))
        .route("/v1/apps/{app}/machines/{id}/stop", post(stop))
        .route("/v1/apps/{app}/machines/{id}/suspend", post(suspend))
        .route("/v1/apps/{app}/machines/{id}/restart", post(restart))
        .route("/v1/apps/{app}/machines/{id}/wait", get(wait))
        .route("/v1/apps/{app}/machines/{id}/signal", post(signal))
        .route("/v1/apps/{app}/machines/{id}/ps", get(ps))
        .route("/v1/apps/{app}/machines/{id}/versions", get(versions))
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

// ---- machines ----

/// A machine as Fly's API shows it.
pub(crate) async fn machine_json(state: &ApiState, m: &Machine) -> Result<fly::Machine, ApiError> {
    let events = state
        .store
        .machine_events(&m.id, 20)
        .await?
        .iter()
        .map(crate::wire::event)
        .collect();
    let (repository, tag) = match m.config.image.split_once(':') {
        Some((r, t)) if !m.config.image.starts_with("sha256:") => (r.to_owned(), t.to_owned()),
        _ => (m.config.image.clone(), String::new()),
    };
    // Each check's latest result, while the machine runs.
    let checks = match m.state {
        MachineState::Started => state
            .agent
            .health(&m.id)
            .map(|h| h.checks)
            .unwrap_or_default()
            .iter()
            .map(|c| {
                let status = match c.status {
                    hangar_node::agent::HealthStatus::Passing => "passing",
                    hangar_node::agent::HealthStatus::Unknown => "warning",
                    _ => "critical",
                };
                fly::MachineCheck {
                    name: c.name.clone(),
                    status: status.to_owned(),
                    output: c.output.clone(),
                    updated_at: hangar_core::rfc3339(c.updated_at),
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(fly::Machine {
        id: m.id.clone(),
        name: m.name.clone(),
        state: m.state,
        region: m.region.clone(),
        instance_id: m.instance_id.clone(),
        version: m.instance_id.clone(),
        private_ip: m.address.to_string(),
        config: m.config.clone(),
        image_ref: fly::ImageRef {
            registry: "hangar".to_owned(),
            repository,
            tag,
            digest: m.image_digest.clone(),
            labels: BTreeMap::new(),
        },
        created_at: hangar_core::rfc3339(m.created_at),
        updated_at: hangar_core::rfc3339(m.updated_at),
        events,
        checks,
        cordoned: m.cordoned,
        host_status: "ok".to_owned(),
        incomplete_config: None,
        nonce: None,
    })
}

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
