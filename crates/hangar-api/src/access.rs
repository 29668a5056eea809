//! Who may do what, and the record of what was done.
//!
//! One middleware ([`guard`]) sits in front of every org route: it resolves
//! the bearer token (`Authorization: Bearer <token>`, or `FlyV1 <token>` as
//! Fly's clients send it), refuses an unknown, expired or revoked one (401),
//! checks the token's scope against what the route needs (403 naming the
//! missing scope; [`need_of`] is the one table of what each route needs),
//! and, once a mutation has succeeded, records it in the audit log with the
//! acting token, the target and a summary the handler may add
//! ([`AuditNote`]; never a secret value).
//!
//! Handlers take the resolved [`Caller`] and find what they act on through
//! the one org-scoped lookup ([`find_app`], [`find_build`]): another org's
//! app or build answers 404, exactly as one that does not exist.

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_core::scope::{Need, Scope};
use hangar_store::{App, AuditEntry, Build, Org, Token};

use crate::{ApiError, ApiState};

/// The authenticated caller: its org, the token it used and that token's
/// scope. Every query of a handler is scoped to `org`.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org: Org,
    pub token: Token,
    pub scope: Scope,
}

impl Caller {
    /// 403 unless the token's scope grants `need`.
    pub fn require(&self, need: Need<'_>) -> Result<(), ApiError> {
        if self.scope.allows(need) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this token ({}, scope {}) lacks the scope {}",
                self.token.name,
                self.scope,
                need.scope_name()
            ),
        ))
    }

    /// Whether lists show the app named `name` (a `deploy:APP` token sees
    /// its app only).
    pub fn sees(&self, name: &str) -> bool {
        self.scope.app().is_none_or(|mine| mine == name)
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Caller, ApiError> {
        // Put there by `guard`, which every route taking a Caller is behind.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a route taking a caller is not behind the guard"))
    }
}

/// What a route needs of its token, before the handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule<'a> {
    /// Checked here.
    Need(Need<'a>),
    /// A list: every scope may ask; the handler shows what the scope reaches.
    List,
    /// Of a build: the handler checks the build's app once it is found
    /// (`deploy`: a change, such as a cancel; else a read).
    Build { deploy: bool },
}

/// The one table of what each route needs. `path` is the route as
/// registered (`/api/v1/apps/{app}`), `app` the `{app}` it was called with.
/// Reads need `read` (of the app, when the route names one); deploys,
/// rollbacks and build cancels need `deploy:APP`; every other change needs
/// `admin`, as do the org-wide routes (tokens, audit).
pub fn need_of<'a>(method: &Method, path: &str, app: Option<&'a str>) -> Rule<'a> {
    let read = *method == Method::GET || *method == Method::HEAD;
    match (read, path) {
        (_, "/api/v1/tokens" | "/api/v1/tokens/{id}" | "/api/v1/audit") => Rule::Need(Need::Admin),
        (true, "/api/v1/apps" | "/v1/apps") => Rule::List,
        (_, "/api/v1/builds/{id}" | "/api/v1/builds/{id}/log") if read => {
            Rule::Build { deploy: false }
        }
        (false, "/api/v1/builds/{id}/cancel") => Rule::Build { deploy: true },
        (
            false,
            "/api/v1/apps/{app}/deploys"
            | "/api/v1/apps/{app}/rollback"
            | "/api/v1/apps/{app}/git/deploy",
        ) => match app {
            Some(app) => Rule::Need(Need::Deploy(app)),
            None => Rule::Need(Need::Admin),
        },
        (true, _) => Rule::Need(Need::Read(app)),
        (false, _) => Rule::Need(Need::Admin),
    }
}

/// The audit log's name for a mutation of `path`.
pub fn action_of(method: &Method, path: &str) -> String {
    let fixed = match (method.as_str(), path) {
        ("POST", "/api/v1/apps/{app}/deploys") => "deploy",
        ("DELETE", "/api/v1/apps/{app}" | "/v1/apps/{app}") => "app.destroy",
        ("PUT", "/api/v1/apps/{app}/secrets") => "secrets.set",
        ("DELETE", "/api/v1/apps/{app}/secrets/{name}") => "secrets.unset",
        ("POST", "/api/v1/apps/{app}/rollback") => "rollback",
        ("POST", "/api/v1/apps/{app}/scale") => "scale",
        ("POST", "/api/v1/apps/{app}/shuttle-token/rotate") => "shuttle-token.rotate",
        ("POST", "/api/v1/apps/{app}/domains") => "domain.add",
        ("DELETE", "/api/v1/apps/{app}/domains/{host}") => "domain.remove",
        ("POST", "/api/v1/apps/{app}/domains/{host}/renew") => "domain.renew",
        ("PUT", "/api/v1/apps/{app}/hsts") => "hsts.set",
        ("POST", "/api/v1/apps/{app}/git") => "git.connect",
        ("DELETE", "/api/v1/apps/{app}/git") => "git.disconnect",
        ("POST", "/api/v1/apps/{app}/git/deploy") => "git.deploy",
        ("POST", "/api/v1/apps/{app}/previews/{number}/approve") => "preview.approve",
        ("POST", "/api/v1/apps/{app}/previews/{number}/extend") => "preview.extend",
        ("DELETE", "/api/v1/apps/{app}/previews/{number}") => "preview.destroy",
        ("POST", "/api/v1/orgs") => "org.create",
        ("POST", "/api/v1/images") => "image.import",
        ("POST", "/api/v1/builds/{id}/cancel") => "build.cancel",
        ("POST", "/api/v1/tokens") => "token.create",
        ("DELETE", "/api/v1/tokens/{id}") => "token.revoke",
        ("POST", "/v1/apps") => "app.create",
        ("POST", "/v1/apps/{app}/machines") => "machine.create",
        ("POST", "/v1/apps/{app}/machines/{id}") => "machine.update",
        ("DELETE", "/v1/apps/{app}/machines/{id}") => "machine.destroy",
        _ => "",
    };
    if !fixed.is_empty() {
        return fixed.to_owned();
    }
    // The other machine actions: `machine.<verb>` (`machine.stop`,
    // `machine.lease`, `machine.metadata.delete`…).
    let verb = path
        .strip_prefix("/v1/apps/{app}/machines/{id}/")
        .map(|rest| rest.replace("/{key}", "").replace('/', "."))
        .unwrap_or_else(|| path.trim_start_matches('/').replace('/', "."));
    match *method {
        Method::DELETE => format!("machine.{verb}.delete"),
        _ => format!("machine.{verb}"),
    }
}

/// What a handler adds to the audit entry of its mutation.
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    /// The app, when the route does not name it (a build's, a new machine's).
    pub app: Option<String>,
    /// The target, when the route does not name it (a new token's id).
    pub target: Option<String>,
    /// Details; never a secret value.
    pub summary: String,
}

/// `response` with `note` for the audit log.
pub fn noted(response: impl IntoResponse, note: AuditNote) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(note);
    response
}

/// The token of `header` (`Bearer`, or `FlyV1` as Fly's clients send it).
fn token_of(header: &str) -> &str {
    ["Bearer ", "bearer ", "FlyV1 "]
        .iter()
        .find_map(|p| header.strip_prefix(p))
        .map(str::trim)
        .unwrap_or_default()
}

/// The caller of `parts`, or 401 saying why not.
async fn authenticate(state: &ApiState, parts: &Parts) -> Result<Caller, ApiError> {
    let unauthorized = |m: String| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let Some(header) = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthorized(
            "missing bearer token: send `Authorization: Bearer <token>` (the CLI does after `hangar login --token`)".into(),
        ));
    };
    let token = token_of(header);
    if token.is_empty() {
        return Err(unauthorized("invalid token: it is unknown".into()));
    }
    let hash = hangar_core::id::hash_token(token);
    let Some((org, token)) = state.store.token_by_hash(&hash).await? else {
        return Err(unauthorized(
            "invalid token: it is unknown or was deleted".into(),
        ));
    };
    if let Some(at) = token.revoked_at {
        return Err(unauthorized(format!(
            "token {} ({}) was revoked at {}",
            token.id,
            token.name,
            hangar_core::rfc3339(at)
        )));
    }
    if let Some(at) = token.expires_at.filter(|&at| at <= hangar_core::now_unix()) {
        return Err(unauthorized(format!(
            "token {} ({}) expired at {}; create another with `hangar tokens create`",
            token.id,
            token.name,
            hangar_core::rfc3339(at)
        )));
    }
    let scope = token
        .scope
        .parse::<Scope>()
        .map_err(|e| ApiError::internal(format!("token {}: {e}", token.id)))?;
    Ok(Caller { org, token, scope })
}

/// The middleware in front of every org route (see the module's text).
pub async fn guard(
    State(state): State<ApiState>,
    matched: MatchedPath,
    params: RawPathParams,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = match authenticate(&state, &parts).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
    let app = param("app").map(str::to_owned);
    let path = matched.as_str().to_owned();
    let method = parts.method.clone();
    match need_of(&method, &path, app.as_deref()) {
        Rule::Need(need) => {
            if let Err(e) = caller.require(need) {
                return e.into_response();
            }
        }
        // A read token never changes a build, whatever its app: refused
        // before the lookup, as every other change of a read token is.
        Rule::Build { deploy: true } if caller.scope == Scope::Read => {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this token ({}, scope read) lacks the scope deploy:APP (of the build's app)",
                    caller.token.name
                ),
            )
            .into_response();
        }
        Rule::Build { .. } | Rule::List => {}
    }
    let target = param("id")
        .or(param("name"))
        .or(param("host"))
        .map(str::to_owned);
    parts.extensions.insert(caller.clone());
    let response = next.run(Request::from_parts(parts, body)).await;

    let mutation = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if mutation && response.status().is_success() {
        let note = response
            .extensions()
            .get::<AuditNote>()
            .cloned()
            .unwrap_or_default();
        let app = note.app.or(app);
        let entry = AuditEntry {
            id: 0,
            at: hangar_core::now_unix(),
            token_id: caller.token.id.clone(),
            token_name: caller.token.name.clone(),
            action: action_of(&method, &path),
            target: note
                .target
                .or(target)
                .or_else(|| app.clone())
                .unwrap_or_else(|| caller.org.name.clone()),
            app,
            summary: note.summary,
        };
        // The change is made; a failure to record it is the operator's to
        // see, not the caller's.
        let action = entry.action.clone();
        if let Err(e) = state.store.record_audit(&caller.org.id, entry).await {
            tracing::error!(%action, "recording an audit entry: {e}");
        }
    }
    response
}

/// The caller's app named `name`, or 404 (also for another org's app).
pub async fn find_app(state: &ApiState, caller: &Caller, name: &str) -> Result<App, ApiError> {
    match state.store.app_by_name(name).await? {
        Some(app) if app.org_id == caller.org.id => Ok(app),
        _ => Err(ApiError::not_found(format!(
            "no app named {name:?} in your organisation"
        ))),
    }
}

/// The caller's build `id` and its app, or 404; then 403 unless the token
/// may read the app (or, with `deploy`, deploy it).
pub async fn find_build(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    deploy: bool,
) -> Result<(Build, App), ApiError> {
    let not_found = || ApiError::not_found(format!("no build {id:?} in your organisation"));
    let build = state.store.build(id).await?.ok_or_else(not_found)?;
    let app = match state.store.app(&build.app_id).await? {
        Some(app) if app.org_id == caller.org.id => app,
        _ => return Err(not_found()),
    };
    caller.require(match deploy {
        true => Need::Deploy(&app.name),
        false => Need::Read(Some(&app.name)),
    })?;
    Ok((build, app))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_read_from_bearer_and_flyv1() {
        assert_eq!(token_of("Bearer hgr_1"), "hgr_1");
        assert_eq!(token_of("bearer  hgr_1 "), "hgr_1");
        assert_eq!(token_of("FlyV1 hgr_1"), "hgr_1");
        assert_eq!(token_of("Basic abc"), "");
    }

    #[test]
    fn actions_are_named_by_route() {
        let post = Method::POST;
        assert_eq!(action_of(&post, "/api/v1/apps/{app}/deploys"), "deploy");
        assert_eq!(
            action_of(&post, "/v1/apps/{app}/machines/{id}/stop"),
            "machine.stop"
        );
        assert_eq!(
            action_of(
                &Method::DELETE,
                "/v1/apps/{app}/machines/{id}/metadata/{key}"
            ),
            "machine.metadata.delete"
        );
        assert_eq!(
            action_of(&Method::DELETE, "/v1/apps/{app}/machines/{id}/lease"),
            "machine.lease.delete"
        );
    }

    #[test]
    fn the_table_asks_admin_of_every_change_but_deploys() {
        let web = Some("web");
        assert_eq!(
            need_of(&Method::POST, "/api/v1/apps/{app}/deploys", web),
            Rule::Need(Need::Deploy("web"))
        );
        assert_eq!(
            need_of(&Method::GET, "/api/v1/apps/{app}", web),
            Rule::Need(Need::Read(web))
        );
        assert_eq!(
            need_of(&Method::GET, "/api/v1/tokens", None),
            Rule::Need(Need::Admin)
        );
        for path in [
            "/api/v1/apps/{app}/scale",
            "/v1/apps/{app}/machines",
            "/api/v1/orgs",
        ] {
            assert_eq!(
                need_of(&Method::POST, path, web),
                Rule::Need(Need::Admin),
                "{path}"
            );
        }
    }
}
