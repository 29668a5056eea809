//! The API's OpenAPI 3.1 document, generated from the wire types
//! ([`hangar_api_types`]) and the handlers' `#[utoipa::path]` attributes,
//! served at `/openapi.json`.

use std::sync::OnceLock;

use axum::Json;
use hangar_api_types::ErrorBody;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

/// The refusals any org route may answer, each as `{"error": "..."}`.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum Refusals {
    /// A body, query or path that does not parse, or a value out of range:
    /// the message names the field.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No token, or one that is unknown, expired or revoked.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token's scope lacks what the route needs (the message names it).
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such app, build, machine or token in the caller's organisation.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The request body stopped arriving.
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// A value the request may hold but this server refuses (a quota, an
    /// unknown image, a name taken).
    #[response(status = 422)]
    Unprocessable(ErrorBody),
    /// The server's fault; the message says what failed.
    #[response(status = 500)]
    Internal(ErrorBody),
}

/// An uploaded archive (`.tar.gz` source, OCI layout or `docker save` tar).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Archive(Vec<u8>);

/// Adds the bearer token scheme every org route asks for.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hangar",
        description = "Hangar's own API (`/api/v1`) and its Fly-compatible Machines API (`/v1`).",
        version = "1"
    ),
    modifiers(&Bearer),
    security(("bearer" = [])),
    paths(
        crate::routes::health,
        crate::routes::list_apps,
        crate::routes::app_status,
        crate::routes::destroy_app,
        crate::routes::app_logs,
        crate::routes::list_secrets,
        crate::routes::set_secrets,
        crate::routes::unset_secret,
        crate::routes::list_resources,
        crate::routes::rotate_shuttle_token,
        crate::routes::list_releases,
        crate::routes::rollback,
        crate::routes::scale,
        crate::routes::create_org,
        crate::routes::import_image,
        crate::builds::deploy,
        crate::builds::build_status,
        crate::builds::build_log,
        crate::builds::cancel_build,
        crate::domains::add,
        crate::domains::list,
        crate::domains::remove,
        crate::domains::renew,
        crate::domains::set_hsts,
        crate::git::connect,
        crate::git::status,
        crate::git::disconnect,
        crate::git::deploy,
        crate::git::why_commit,
        crate::git::previews::list,
        crate::git::previews::approve,
        crate::git::previews::extend,
        crate::git::previews::destroy,
        crate::tokens::list,
        crate::tokens::create,
        crate::tokens::revoke,
        crate::tokens::audit,
        crate::fly::apps::list_apps,
        crate::fly::apps::create_app,
        crate::fly::apps::get_app,
        crate::fly::apps::delete_app,
        crate::fly::machines::list_machines,
        crate::fly::machines::create_machine,
        crate::fly::machines::get_machine,
        crate::fly::machines::update_machine,
        crate::fly::machines::delete_machine,
        crate::fly::machines::exec,
        crate::fly::machines::start,
        crate::fly::machines::stop,
        crate::fly::machines::suspend,
        crate::fly::machines::restart,
        crate::fly::machines::signal,
        crate::fly::machines::ps,
        crate::fly::machines::versions,
        crate::fly::leases::cordon,
        crate::fly::leases::uncordon,
        crate::fly::leases::get_lease,
        crate::fly::leases::acquire_lease,
        crate::fly::leases::release_lease,
        crate::fly::leases::get_metadata,
        crate::fly::leases::update_metadata,
        crate::fly::leases::get_metadata_key,
        crate::fly::leases::set_metadata,
        crate::fly::leases::delete_metadata,
        crate::fly::wait::wait,
        crate::fly::wait::events,
    )
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// `GET /openapi.json` (no token needed).
pub async fn serve() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(document())
}
