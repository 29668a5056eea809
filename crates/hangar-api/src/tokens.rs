//! The org's tokens and audit log (admin scope only):
//! - `POST /api/v1/tokens` `{"name", "scope", "expires_in_secs"?}`: 201 with
//!   the token, shown this once (only its hash is kept)
//! - `GET /api/v1/tokens`: every token, without secrets
//! - `DELETE /api/v1/tokens/{id}`: revoked at once
//! - `GET /api/v1/audit?app=APP&limit=N`: the newest mutations

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Json, Router};
use hangar_core::scope::Scope;
use hangar_store::{AuditEntry, Token};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{AuditNote, Caller, noted};
use crate::{ApiError, ApiState};

/// Longest a token may be made to last: ten years.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 3650 * 24 * 3600;

/// Longest token name.
const MAX_NAME: usize = 64;

/// Most audit entries one answer holds.
const MAX_AUDIT_LIMIT: u32 = 1000;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{id}", delete(revoke))
        .route("/api/v1/audit", get(audit))
}

fn token_json(t: &Token) -> Value {
    let now = hangar_core::now_unix();
    let status = match (t.revoked_at, t.expires_at) {
        (Some(_), _) => "revoked",
        (None, Some(at)) if at <= now => "expired",
        _ => "active",
    };
    json!({
        "id": t.id,
        "name": t.name,
        "scope": t.scope,
        "status": status,
        "created_at": hangar_core::rfc3339(t.created_at),
        "expires_at": t.expires_at.map(hangar_core::rfc3339),
        "revoked_at": t.revoked_at.map(hangar_core::rfc3339),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    scope: String,
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

async fn create(
    caller: Caller,
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateToken = crate::fly::parse(&body)?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "name: 1 to {MAX_NAME} characters, no control characters"
        )));
    }
    let scope: Scope = req
        .scope
        .parse()
        .map_err(|e: hangar_core::scope::InvalidScope| ApiError::bad_request(e.to_string()))?;
    let expires_at = match req.expires_in_secs {
        None => None,
        Some(s) if (1..=MAX_TOKEN_LIFETIME_SECS).contains(&s) => {
            Some(hangar_core::now_unix() + s as i64)
        }
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "expires_in_secs: must be 1 to {MAX_TOKEN_LIFETIME_SECS} (ten years), not {s}"
            )));
        }
    };
    let secret = hangar_core::id::new_token();
    let token = state
        .store
        .create_token(
            &caller.org.id,
            name,
            &scope.to_string(),
            &hangar_core::id::hash_token(&secret),
            expires_at,
        )
        .await?;
    let mut body = token_json(&token);
    body["token"] = json!(secret);
    let note = AuditNote {
        app: scope.app().map(str::to_owned),
        target: Some(token.id.clone()),
        summary: format!("{} ({scope})", token.name),
    };
    Ok(noted((StatusCode::CREATED, Json(body)), note))
}

async fn list(caller: Caller, State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let tokens = state.store.tokens(&caller.org.id).await?;
    Ok(Json(
        json!({"tokens": tokens.iter().map(token_json).collect::<Vec<_>>()}),
    ))
}

async fn revoke(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let token = state
        .store
        .revoke_token(&caller.org.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no token {id:?} in your organisation")))?;
    let note = AuditNote {
        summary: format!("{} ({})", token.name, token.scope),
        ..AuditNote::default()
    };
    Ok(noted(Json(token_json(&token)), note))
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

fn entry_json(e: &AuditEntry) -> Value {
    json!({
        "id": e.id,
        "at": hangar_core::rfc3339(e.at),
        "token": {"id": e.token_id, "name": e.token_name},
        "action": e.action,
        "app": e.app,
        "target": e.target,
        "summary": e.summary,
    })
}

async fn audit(
    caller: Caller,
    State(state): State<ApiState>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_AUDIT_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be 1 to {MAX_AUDIT_LIMIT}"
        )));
    }
    let entries = state
        .store
        .audit(&caller.org.id, q.app.as_deref(), limit)
        .await?;
    Ok(Json(
        json!({"entries": entries.iter().map(entry_json).collect::<Vec<_>>()}),
    ))
}
