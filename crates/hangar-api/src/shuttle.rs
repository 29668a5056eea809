//! The endpoints Shuttle's runtime calls at start (see
//! `hangar_resources::shuttle`), under `/shuttle/projects/{project}`:
//!
//! - `GET …/resources/secrets` — the app's secrets
//! - `POST …/resources` — `{"type": "database::shared::postgres", "config": …}`:
//!   the app's database, as a connection URL
//!
//! Answers have the runtime's shape, `{"type", "state", "config", "output"}`,
//! and errors `{"message", "status_code"}`. The project is the app's id and
//! the bearer token is the app's own (the node puts it in the machine's
//! environment), so a machine can read only its own app's resources.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hangar_resources::shuttle::{API_PREFIX, SECRETS, SHARED_POSTGRES};
use hangar_store::App;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiState;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            &format!("{API_PREFIX}/projects/{{project}}/resources/secrets"),
            get(secrets),
        )
        .route(
            &format!("{API_PREFIX}/projects/{{project}}/resources"),
            post(provision),
        )
}

/// An error as the runtime's client reads it.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({"message": message.into(), "status_code": status.as_u16()});
    (status, Json(body)).into_response()
}

fn ready(kind: &str, config: Value, output: Value) -> Response {
    Json(json!({"type": kind, "state": "ready", "config": config, "output": output}))
        .into_response()
}

/// The app behind `project`, if the bearer token is its own.
async fn authorised(state: &ApiState, project: &str, headers: &HeaderMap) -> Result<App, Response> {
    let denied = || error(StatusCode::UNAUTHORIZED, "not this project's token");
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(denied)?;
    if !state
        .resources
        .verify_shuttle_token(project, token.trim())
        .await
    {
        return Err(denied());
    }
    match state.store.app(project).await {
        Ok(Some(app)) => Ok(app),
        Ok(None) => Err(error(
            StatusCode::NOT_FOUND,
            "this project no longer exists",
        )),
        Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

async fn secrets(
    State(state): State<ApiState>,
    Path(project): Path<String>,
    headers: HeaderMap,
) -> Response {
    let app = match authorised(&state, &project, &headers).await {
        Ok(app) => app,
        Err(resp) => return resp,
    };
    match state.resources.secret_values(&app.id).await {
        Ok(secrets) => ready(SECRETS, Value::Null, json!(secrets)),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

#[derive(Deserialize)]
struct ProvisionRequest {
    r#type: String,
    #[serde(default)]
    config: Value,
}

async fn provision(
    State(state): State<ApiState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let app = match authorised(&state, &project, &headers).await {
        Ok(app) => app,
        Err(resp) => return resp,
    };
    let req: ProvisionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"type\": …, \"config\": …}}: {e}"),
            );
        }
    };
    match req.r#type.as_str() {
        SHARED_POSTGRES => match state.resources.shuttle_postgres(&app).await {
            // The app runs in a network namespace of its own: it reaches
            // its database at the node's service address, through the gate.
            Ok(url) => {
                let url = state.agent.postgres_url_for_machines(&url).await;
                ready(SHARED_POSTGRES, req.config, Value::String(url))
            }
            Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
        },
        SECRETS => match state.resources.secret_values(&app.id).await {
            Ok(secrets) => ready(SECRETS, req.config, json!(secrets)),
            Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
        },
        other => error(
            StatusCode::BAD_REQUEST,
            format!(
                "Hangar provides {SHARED_POSTGRES} and {SECRETS} to Shuttle apps; \
                 {other:?} is not supported (yet)"
            ),
        ),
    }
}
