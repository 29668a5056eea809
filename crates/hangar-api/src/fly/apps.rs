//! Apps: create, list, get, delete.

use super::*;

// ---- apps ----

#[derive(Deserialize)]
pub(super) struct CreateApp {
    /// Fly's current name for it; `app_name` is the older one, still sent
    /// by some clients.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    app_name: Option<String>,
    #[serde(default)]
    org_slug: Option<String>,
}

pub(super) async fn create_app(
    caller: Caller,
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateApp = parse(&body)?;
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
            format!("{field}: an app named {name:?} exists already"),
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
            Json(json!({"id": app.id, "name": app.name})),
        ),
        note,
    ))
}

#[derive(Deserialize)]
pub(super) struct ListAppsQuery {
    #[serde(default)]
    org_slug: Option<String>,
}

pub(super) async fn list_apps(
    caller: Caller,
    State(state): State<ApiState>,
    Query(q): Query<ListAppsQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(slug) = &q.org_slug
        && slug != &caller.org.name
        && slug != "personal"
    {
        return Ok(Json(
            json!({"total_apps": 0, "apps": [], "next_cursor": null}),
        ));
    }
    let mut apps = Vec::new();
    for app in state.store.apps(&caller.org.id).await? {
        if !caller.sees(&app.name) {
            continue;
        }
        let count = state.store.machines_for_app(&app.id).await?.len();
        apps.push(
            json!({"id": app.id, "name": app.name, "machine_count": count, "network": "default"}),
        );
    }
    // One page holds them all: no cursor to follow.
    Ok(Json(
        json!({"total_apps": apps.len(), "apps": apps, "next_cursor": null}),
    ))
}

pub(super) async fn get_app(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    let machines = state.store.machines_for_app(&app.id).await?;
    let status = if machines.is_empty() {
        "pending"
    } else {
        "deployed"
    };
    Ok(Json(json!({
        "id": app.id,
        "name": app.name,
        "organization": {"name": caller.org.name, "slug": caller.org.name},
        "status": status,
    })))
}

pub(super) async fn delete_app(
    caller: Caller,
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let app = find_app(&state, &caller, &name).await?;
    crate::routes::delete_app_everywhere(&state, &app).await?;
    Ok(StatusCode::ACCEPTED)
}
