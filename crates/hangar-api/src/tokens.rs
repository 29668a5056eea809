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

use crate::access::{AuditNote, Caller, noted};
use crate::wire;
use crate::{ApiError, ApiState};
use hangar_api_types::hangar as api;

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

#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    request_body(content = api::CreateToken),
    responses((status = 201, body = api::TokenCreated), crate::openapi::Refusals),
)]
pub(crate) async fn create(
    caller: Caller,
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: api::CreateToken = crate::fly::parse(&body)?;
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
    let body = api::TokenCreated {
        info: wire::token(&token),
        token: secret,
    };
    let note = AuditNote {
        app: scope.app().map(str::to_owned),
        target: Some(token.id.clone()),
        summary: format!("{} ({scope})", token.name),
    };
    Ok(noted((StatusCode::CREATED, Json(body)), note))
}

#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    responses((status = 200, body = api::TokenList), crate::openapi::Refusals),
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<ApiState>,
) -> Result<Json<api::TokenList>, ApiError> {
    let tokens = state.store.tokens(&caller.org.id).await?;
    Ok(Json(api::TokenList {
        tokens: tokens.iter().map(wire::token).collect(),
    }))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = String, Path, description = "the token's id")),
    responses((status = 200, body = api::Token), crate::openapi::Refusals),
)]
pub(crate) async fn revoke(
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
    Ok(noted(Json(wire::token(&token)), note))
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "tokens",
    params(api::AuditQuery),
    responses((status = 200, body = api::AuditList), crate::openapi::Refusals),
)]
pub(crate) async fn audit(
    caller: Caller,
    State(state): State<ApiState>,
    Query(q): Query<api::AuditQuery>,
) -> Result<Json<api::AuditList>, ApiError> {
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
    Ok(Json(api::AuditList {
        entries: entries.iter().map(wire::audit_entry).collect(),
    }))
}
