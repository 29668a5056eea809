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
    /// A machine-readable reason, sent as `status` (Fly's `name_taken`…).
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            code: None,
        }
    }
    /// The same error with a machine-readable reason.
    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
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
        let body = hangar_api_types::ErrorBody {
            error: self.message,
            status: self.code.map(str::to_owned),
        };
        (self.status, Json(body)).into_response()
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
            e @ (StoreError::DomainTaken(_)
            | StoreError::TooManyDomains { .. }
            | StoreError::TooManyPreviews { .. }) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
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

impl From<hangar_build::BuildError> for ApiError {
    fn from(e: hangar_build::BuildError) -> ApiError {
        use hangar_build::BuildError as B;
        match e {
            B::Archive(a) if a.is_too_large() => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the source archive was refused: {a}"),
            ),
            B::Archive(a) if a.is_client_error() => {
                ApiError::bad_request(format!("the source archive was refused: {a}"))
            }
            e @ B::Busy { .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            B::Store(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

/// A refused image import: 429 past the org's concurrent imports, 413 past
/// the image's size or time caps, 422 for a bad archive.
impl From<hangar_image::ImageError> for ApiError {
    fn from(e: hangar_image::ImageError) -> ApiError {
        use hangar_image::ImageError as I;
        match e {
            e @ I::Busy { .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            e if e.is_too_large() => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the image archive was refused: {e}"),
            ),
            e @ I::Io { .. } => ApiError::internal(e),
            other => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("the image archive was refused: {other}"),
            ),
        }
    }
}

/// Makes every error answer `{"error": "..."}` JSON: axum's own (a 405 for
/// a wrong method, a query or path that does not parse) are plain text or
/// empty. Answers that are JSON already pass untouched.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            match parts
                .headers
                .get(axum::http::header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
            {
                Some(allow) => format!("method not allowed on this route; it allows {allow}"),
                None => "method not allowed on this route".to_owned(),
            }
        }
        (_, true) => status.canonical_reason().unwrap_or("error").to_lowercase(),
        (_, false) => text,
    };
    let mut answer = ApiError::new(status, message).into_response();
    if let Some(allow) = parts.headers.get(axum::http::header::ALLOW) {
        answer
            .headers_mut()
            .insert(axum::http::header::ALLOW, allow.clone());
    }
    answer
}
