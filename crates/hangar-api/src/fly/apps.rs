//! Apps: create, list, get, delete.

use super::*;

// ---- apps ----

#[utoipa::path(
    post,
    path = "/v1/apps",
    tag = "machines",
    request_body(content = fly::CreateApp),
    responses((status = 201, body = fly::AppCreated), crate::openapi::Refusals),
)]
pub(crate) async fn create_app(
    caller: Caller,
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: fly::CreateApp = parse(&body)?;
    let (field, raw) = match (&req.name, &req.app_name) {
        (Some(n), _) => ("name", n.as_str()),
        (None, Some(n)) => ("app_name", n.as_str()),
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "name: the app's name is required",
            ));
        }
    };
    let name = AppName::parse(raw)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{field}: {e}")))?;
    if let Some(slug) = &req.org_slug
        && slug != &caller.org.name
        && slug != "personal"
    {
        return Err(ApiError::not_found(format!(
            "organization not found: {slug}"
        )));
    }
    // Taken (by this org or another): 422 `name_taken`, as Fly answers.
    if state.store.app_by_name(name.as_str()).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            // Fly's words, which its clients also match on.
            format!(
                "{field}: Name has already been taken (an app named {:?} exists)",
                name.as_str()
            ),
        )
        .with_code("name_taken"));
    }
    crate::quota::check_new_app(&state, &caller.org, name.as_str()).await?;
    let app = state
        .store
        .get_or_create_app(&caller.org.id, name.as_str())
        .await?;
    let note = AuditNote {
        app: Some(app.name.clone()),
        summary: app.id.clone(),
        ..AuditNote::default()
    };
    Ok(noted(
        (
            StatusCode::CREATED,
            Json(fly::AppCreated {
                id: app.id,
                name: app.name,
            }),
        ),
        note,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/apps",
    tag = "machines",
    params(fly::ListAppsQuery),
    responses((status = 200, body = fly::AppsPage), crate::openapi::Refusals),
)]
pub(crate) async fn list_apps(
    caller: Caller,
    State(state): State<ApiState>,
    Query(q): Query<fly::ListAppsQuery>,
) -> Result<Json<fly::AppsPage>, ApiError> {
    if let Some(slug) = &q.org_slug
        && slug != &caller.org.name
        && slug != "personal"
    {
        return Ok(Json(fly::AppsPage {
            total_apps: 0,
            apps: Vec::new(),
            next_cursor: None,
        }));
    }
    let mut apps = Vec::new();
    for app in state.store.apps(&caller.org.id).await? {
        if !caller.sees(&app.name) {
            continue;
        }
        let count = state.store.machines_for_app(&app.id).await?.len();
        apps.push(fly::AppSummary {
            id: app.id,
            name: app.name,
            machine_count: count as u64,
            network: "default".to_owned(),
        });
    }
    // One page holds them all: no cursor to follow.
    Ok(Json(fly::AppsPage {
        total_apps: apps.len() as u64,
        apps,
        next_cursor: None,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 200, body = fly::App), crate::openapi::Refusals),
)]
pub(crate) async fn get_app(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<fly::App>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let machines = state.store.machines_for_app(&app.id).await?;
    let status = if machines.is_empty() {
        "pending"
    } else {
        "deployed"
    };
    Ok(Json(fly::App {
        id: app.id,
        name: app.name,
        organization: fly::Organization {
            name: caller.org.name.clone(),
            slug: caller.org.name,
        },
        status: status.to_owned(),
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/apps/{app}",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name")),
    responses((status = 202, description = "deleted, with its machines and resources"), (status = 502, body = ErrorBody, description = "a resource server (Postgres, Redis, NATS) failed"), crate::openapi::Refusals),
)]
pub(crate) async fn delete_app(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    crate::routes::delete_app_everywhere(&state, &app).await?;
    Ok(StatusCode::ACCEPTED)
}
