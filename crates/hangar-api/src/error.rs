//! API errors: a status code and a message for the user, sent as
//! `{"error": "<message>"}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hangar_store::StoreError;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong and, for 4xx, what to do about it.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {message}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {message}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NameTaken(name) => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the app name {name:?} is taken by another organisation; choose another with --app"
                ),
            ),
            StoreError::OrgExists(name) => ApiError::new(
                StatusCode::CONFLICT,
                format!("an organisation named {name:?} exists already"),
            ),
            other => ApiError::internal(other),
        }
    }
}

impl From<hangar_node::NodeError> for ApiError {
    fn from(e: hangar_node::NodeError) -> ApiError {
        use hangar_node::NodeError as N;
        match e {
            N::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            e @ N::InvalidState { .. } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                format!("failed_precondition: {e}"),
            ),
            e @ N::NoGpu { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            e @ N::NotDeployed(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            // The app's new machines failed their checks: the app's
            // problem, worded for its owner; the old count keeps serving.
            e @ (N::ScaleFailed { .. } | N::RolloutFailed { .. }) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            N::Store(e) => e.into(),
            // The caller's command outlived the timeout the caller chose.
            e @ N::Driver(hangar_node::driver::DriverError::ExecTimedOut { .. }) => {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, e.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<hangar_resources::ResourceError> for ApiError {
    fn from(e: hangar_resources::ResourceError) -> ApiError {
        use hangar_resources::ResourceError as R;
        match e {
            e @ R::SecretName(_) => ApiError::bad_request(e.to_string()),
            R::Store(e) => e.into(),
            // Provisioning and key problems are the platform's, not the
            // caller's, but their message is what the operator needs.
            other => ApiError::new(StatusCode::BAD_GATEWAY, other.to_string()),
        }
    }
}
