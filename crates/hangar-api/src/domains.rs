//! Custom domains (`hangar domains`): hosts outside the platform's domain
//! that an app answers for at the edge.
//! - `POST /api/v1/apps/{app}/domains` `{"host"}`: 201 with the DNS record
//!   to create (409 when another app has it)
//! - `GET /api/v1/apps/{app}/domains`
//! - `DELETE /api/v1/apps/{app}/domains/{host}`: the domains left
//!
//! The edge learns every change at once ([`publish`]); HTTPS for them is
//! not built yet.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Json, Router};
use hangar_api_types::ErrorBody;
use hangar_api_types::hangar as api;

use crate::access::{AuditNote, Caller, find_app, noted};
use crate::{ApiError, ApiState};

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/apps/{app}/domains", get(list).post(add))
        .route("/api/v1/apps/{app}/domains/{host}", delete(remove))
}

/// Tells the edge every custom domain; called after each change and at
/// start.
pub async fn publish(state: &ApiState) -> Result<(), ApiError> {
    let domains = state.store.routed_domains().await?;
    state.routes.set_aliases(domains);
    Ok(())
}

/// `host` lowercased without a trailing dot, if it is a hostname a custom
/// domain may be: 2 to 127 labels of letters, digits and inner hyphens,
/// at most 253 bytes, not an IP address, and not the platform's domain
/// nor under it (those are apps' own names).
pub(crate) fn check_host(raw: &str, platform: &str) -> Result<String, ApiError> {
    let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let labels: Vec<&str> = host.split('.').collect();
    let tld_ok = labels
        .last()
        .is_some_and(|t| !t.bytes().all(|b| b.is_ascii_digit()));
    if host.len() > 253 || labels.len() < 2 || !labels.iter().all(|l| label_ok(l)) || !tld_ok {
        return Err(ApiError::bad_request(format!(
            "host: {raw:?} is not a hostname (labels of letters, digits and '-', at least two, e.g. www.example.com)"
        )));
    }
    let platform = platform.trim_end_matches('.').to_ascii_lowercase();
    if host == platform || host.ends_with(&format!(".{platform}")) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "host: names under {platform} are apps' own (<app>.{platform}); add a domain of yours"
            ),
        ));
    }
    Ok(host)
}

fn domain_json(state: &ApiState, d: &hangar_store::Domain, app: &str) -> api::Domain {
    let target = state
        .cfg
        .app_url(app)
        .trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
        .to_owned();
    api::Domain {
        host: d.host.clone(),
        app: app.to_owned(),
        created_at: hangar_core::rfc3339(d.created_at),
        status: "routed".to_owned(),
        dns: vec![api::DnsRecord {
            kind: "CNAME".to_owned(),
            name: d.host.clone(),
            value: target,
        }],
    }
}

/// The app's custom domains, by host.
async fn domains_of(
    state: &ApiState,
    app: &hangar_store::App,
) -> Result<api::DomainList, ApiError> {
    let domains = state
        .store
        .domains_for_app(&app.id)
        .await?
        .iter()
        .map(|d| domain_json(state, d, &app.name))
        .collect();
    Ok(api::DomainList { domains })
}

/// Adds a custom domain to the app: the edge answers for it at once.
#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/domains",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    request_body(content = api::AddDomain),
    responses(
        (status = 201, body = api::Domain),
        (status = 409, body = ErrorBody, description = "another app has this host, or the app has its cap of domains"),
        crate::openapi::Refusals
    ),
)]
pub(crate) async fn add(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let req: api::AddDomain = crate::fly::parse(&body)?;
    let host = check_host(&req.host, &state.cfg.domain)?;
    let domain = state.store.add_domain(&app.id, &host).await?;
    publish(&state).await?;
    let note = AuditNote {
        summary: host.clone(),
        ..AuditNote::default()
    };
    Ok(noted(
        (
            StatusCode::CREATED,
            Json(domain_json(&state, &domain, &app.name)),
        ),
        note,
    ))
}

/// The app's custom domains.
#[utoipa::path(
    get,
    path = "/api/v1/apps/{app}/domains",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 200, body = api::DomainList), crate::openapi::Refusals),
)]
pub(crate) async fn list(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<api::DomainList>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    Ok(Json(domains_of(&state, &app).await?))
}

/// Removes a custom domain: the edge stops answering for it at once.
#[utoipa::path(
    delete,
    path = "/api/v1/apps/{app}/domains/{host}",
    tag = "hangar",
    params(
        ("app" = String, Path, description = "the app's name"),
        ("host" = String, Path, description = "the custom domain")
    ),
    responses(
        (status = 200, body = api::DomainList, description = "removed; the app's domains left"),
        crate::openapi::Refusals
    ),
)]
pub(crate) async fn remove(
    caller: Caller,
    State(state): State<ApiState>,
    Path((name, host)): Path<(String, String)>,
) -> Result<Json<api::DomainList>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if !state.store.remove_domain(&app.id, &host).await? {
        return Err(ApiError::not_found(format!(
            "{} has no custom domain {host:?}",
            app.name
        )));
    }
    publish(&state).await?;
    Ok(Json(domains_of(&state, &app).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_and_normalised() {
        assert_eq!(
            check_host("WWW.Example.com.", "hangar.test").unwrap(),
            "www.example.com"
        );
        for bad in [
            "",
            "localhost",
            "-a.com",
            "a..com",
            "a.com/x",
            "10.0.0.1",
            "a b.com",
        ] {
            assert_eq!(
                check_host(bad, "hangar.test").unwrap_err().status,
                400,
                "{bad}"
            );
        }
        let long = format!("{}.com", "a".repeat(64));
        assert_eq!(check_host(&long, "hangar.test").unwrap_err().status, 400);
        for platform in ["hangar.test", "web.hangar.test", "x.y.hangar.test"] {
            assert_eq!(
                check_host(platform, "hangar.test").unwrap_err().status,
                422,
                "{platform}"
            );
        }
    }
}
