//! Custom domains (`hangar domains`): hosts outside the platform's domain
//! that an app answers for at the edge.
//! - `POST /api/v1/apps/{app}/domains` `{"host"}`: 201 with the DNS record
//!   to create (409 when another app has it)
//! - `GET /api/v1/apps/{app}/domains`
//! - `DELETE /api/v1/apps/{app}/domains/{host}`: the domains left
//! - `POST /api/v1/apps/{app}/domains/{host}/renew`: a new certificate now
//!   (the host may also be the app's own name)
//! - `PUT /api/v1/apps/{app}/hsts` `{"enabled"}`: HSTS on its HTTPS answers
//!
//! The edge learns every change at once ([`publish`]). A domain added gets
//! a certificate ordered at once when an ACME CA is configured, or serves
//! the one the user uploads with it.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use hangar_api_types::ErrorBody;
use hangar_api_types::hangar as api;

use crate::access::{AuditNote, Caller, find_app, noted};
use crate::{ApiError, ApiState};

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/apps/{app}/domains", get(list).post(add))
        .route("/api/v1/apps/{app}/domains/{host}", delete(remove))
        .route("/api/v1/apps/{app}/domains/{host}/renew", post(renew))
        .route("/api/v1/apps/{app}/hsts", put(set_hsts))
}

/// Tells the edge every custom domain; called after each change and at
/// start.
pub async fn publish(state: &ApiState) -> Result<(), ApiError> {
    let domains = state.store.routed_domains().await?;
    state.routes.set_aliases(domains);
    if let Some(certs) = &state.certs {
        certs.set_hsts(state.store.hsts_apps().await?);
    }
    Ok(())
}

/// A certificate's state as the API shows it.
fn certificate_json(status: hangar_tls::CertStatus) -> api::Certificate {
    api::Certificate {
        state: status.state.to_owned(),
        source: status.source,
        issuer: status.issuer,
        not_after: status.not_after.map(hangar_core::rfc3339),
        serial: status.serial,
        error: status.error,
        next_try: status.next_try.map(hangar_core::rfc3339),
        renewal_alarm: status.renewal_alarm,
    }
}

/// `host`'s certificate state (`none` without TLS).
async fn certificate_of(state: &ApiState, host: &str) -> Result<api::Certificate, ApiError> {
    let status = match &state.certs {
        Some(certs) => certs.status(host).await.map_err(tls_error)?,
        None => hangar_tls::CertStatus {
            state: "none",
            source: None,
            issuer: None,
            not_after: None,
            serial: None,
            error: None,
            next_try: None,
            renewal_alarm: false,
        },
    };
    Ok(certificate_json(status))
}

/// A certificate failure as an API error: the user's certificate is a
/// 422; the CA's refusal a 502 naming it; the rest the server's.
fn tls_error(e: hangar_tls::TlsError) -> ApiError {
    use hangar_tls::TlsError as E;
    match e {
        E::BadCertificate(_) | E::NoAcme => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        E::Acme(_) | E::BackingOff { .. } => ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()),
        E::Store(e) => e.into(),
        other => ApiError::internal(other.to_string()),
    }
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

async fn domain_json(
    state: &ApiState,
    d: &hangar_store::Domain,
    app: &str,
) -> Result<api::Domain, ApiError> {
    Ok(api::Domain {
        host: d.host.clone(),
        app: app.to_owned(),
        created_at: hangar_core::rfc3339(d.created_at),
        status: "routed".to_owned(),
        dns: vec![api::DnsRecord {
            kind: "CNAME".to_owned(),
            name: d.host.clone(),
            value: state.cfg.app_host(app),
        }],
        certificate: certificate_of(state, &d.host).await?,
    })
}

/// The app's custom domains, by host, and its own name's certificate.
async fn domains_of(
    state: &ApiState,
    app: &hangar_store::App,
) -> Result<api::DomainList, ApiError> {
    let mut domains = Vec::new();
    for d in state.store.domains_for_app(&app.id).await? {
        domains.push(domain_json(state, &d, &app.name).await?);
    }
    let app_host = state.cfg.app_host(&app.name);
    Ok(api::DomainList {
        domains,
        app_certificate: certificate_of(state, &app_host).await?,
        app_host,
        hsts: state.store.hsts(&app.id).await?,
    })
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
    let uploaded = match (req.certificate, req.private_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "certificate and private_key go together (both PEM)",
            ));
        }
    };
    if uploaded.is_some() && state.certs.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "this server has no TLS port (hangar up --tls-listen): a certificate would not be served",
        ));
    }
    if let Some((cert, key)) = &uploaded {
        // Checked before the domain is added: a refused certificate adds
        // nothing.
        let parsed = hangar_tls::certs::parse(cert, key).map_err(tls_error)?;
        if !parsed.info.covers(&host) {
            return Err(tls_error(hangar_tls::TlsError::BadCertificate(format!(
                "the certificate is for {:?}, not {host}",
                parsed.info.names
            ))));
        }
    }
    let domain = state.store.add_domain(&app.id, &host).await?;
    if let Some(certs) = &state.certs {
        match &uploaded {
            Some((cert, key)) => {
                if let Err(e) = certs.upload(&host, &app.id, cert, key).await {
                    let _ = state.store.remove_domain(&app.id, &host).await;
                    return Err(tls_error(e));
                }
            }
            None => certs.order_soon(&host, Some(app.id.clone())),
        }
    }
    publish(&state).await?;
    let note = AuditNote {
        summary: host.clone(),
        ..AuditNote::default()
    };
    Ok(noted(
        (
            StatusCode::CREATED,
            Json(domain_json(&state, &domain, &app.name).await?),
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
    if let Some(certs) = &state.certs {
        certs.forget(&host);
    }
    publish(&state).await?;
    Ok(Json(domains_of(&state, &app).await?))
}

/// Orders a new certificate for one of the app's names now, whatever its
/// renewal schedule or back-off; answers once it is issued (or refused).
#[utoipa::path(
    post,
    path = "/api/v1/apps/{app}/domains/{host}/renew",
    tag = "hangar",
    params(
        ("app" = String, Path, description = "the app's name"),
        ("host" = String, Path, description = "a custom domain of the app, or its own name")
    ),
    responses(
        (status = 200, body = api::Certificate, description = "the new certificate"),
        (status = 502, body = ErrorBody, description = "the CA refused or failed"),
        crate::openapi::Refusals
    ),
)]
pub(crate) async fn renew(
    caller: Caller,
    State(state): State<ApiState>,
    Path((name, host)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let own = host == state.cfg.app_host(&app.name);
    if !own && state.store.domain_app(&host).await?.as_deref() != Some(app.id.as_str()) {
        return Err(ApiError::not_found(format!(
            "{} has no custom domain {host:?}",
            app.name
        )));
    }
    let Some(certs) = state.certs.as_ref().filter(|c| c.acme()) else {
        return Err(tls_error(hangar_tls::TlsError::NoAcme));
    };
    if let Some(rec) = state.store.certificate(&host).await?
        && rec.source == "uploaded"
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{host} serves an uploaded certificate: upload a new one (remove and add the domain with --cert)"
            ),
        ));
    }
    certs
        .renew_now(&host, Some(app.id.clone()))
        .await
        .map_err(tls_error)?;
    let note = AuditNote {
        summary: host.clone(),
        ..AuditNote::default()
    };
    Ok(noted(Json(certificate_of(&state, &host).await?), note))
}

/// Turns HSTS on or off for the app's HTTPS answers (`max-age` a year).
#[utoipa::path(
    put,
    path = "/api/v1/apps/{app}/hsts",
    tag = "hangar",
    params(("app" = String, Path, description = "the app's name")),
    request_body(content = api::SetHsts),
    responses((status = 200, body = api::DomainList), crate::openapi::Refusals),
)]
pub(crate) async fn set_hsts(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let req: api::SetHsts = crate::fly::parse(&body)?;
    state.store.set_hsts(&app.id, req.enabled).await?;
    publish(&state).await?;
    let note = AuditNote {
        summary: format!("hsts {}", if req.enabled { "on" } else { "off" }),
        ..AuditNote::default()
    };
    Ok(noted(Json(domains_of(&state, &app).await?), note))
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
