//! Bearer-token authentication.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use hangar_store::Org;

use crate::{ApiError, ApiState};

/// The authenticated caller: the org its token belongs to.
pub struct Caller {
    /// Every query of the handler is scoped to this org.
    pub org: Org,
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(header) = header else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing bearer token: send `Authorization: Bearer <token>` (the CLI does after `hangar login --token`)",
            ));
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .unwrap_or_default();
        let hash = hangar_core::id::hash_token(token);
        match state.store.org_for_token(&hash).await? {
            Some(org) if !token.is_empty() => Ok(Caller { org }),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid token: it is unknown or was revoked",
            )),
        }
    }
}
