//! Cordons, leases and metadata.

use super::*;

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines/{id}/cordon",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    responses((status = 200, body = OkBody), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), crate::openapi::Refusals),
)]
pub(crate) async fn cordon(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<OkBody>, ApiError> {
    set_cordon(&state, &caller, &app, &id, &headers, true).await
}

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines/{id}/uncordon",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    responses((status = 200, body = OkBody), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), crate::openapi::Refusals),
)]
pub(crate) async fn uncordon(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<OkBody>, ApiError> {
    set_cordon(&state, &caller, &app, &id, &headers, false).await
}

pub(super) async fn set_cordon(
    state: &ApiState,
    caller: &Caller,
    app: &str,
    id: &str,
    headers: &HeaderMap,
    cordoned: bool,
) -> Result<Json<OkBody>, ApiError> {
    machine_to_change(state, caller, app, id, headers).await?;
    state.agent.cordon(id, cordoned).await?;
    Ok(Json(OkBody::YES))
}

/// Longest lease, in seconds.
pub(super) const MAX_LEASE_TTL: u64 = 3600;

/// A lease with a fresh nonce held by `owner` for `ttl` seconds from now.
pub(super) fn new_lease(owner: &str, description: String, ttl: u64) -> hangar_store::Lease {
    hangar_store::Lease {
        nonce: hangar_core::id::new_token().replace("hgr_", ""),
        owner: owner.to_owned(),
        description,
        expires_at: hangar_core::now_unix() + ttl as i64,
    }
}

/// `POST …/lease[?ttl=N]`: fly-go sends the ttl in the query and no body;
/// Fly's spec puts `ttl` and `description` in a JSON body. 201 for a new
/// lease, 200 for a refresh (the holder's nonce given).
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines/{id}/lease",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id"), fly::LeaseQuery),
    request_body(content = Option<fly::LeaseRequest>),
    responses((status = 201, body = fly::Lease, description = "a new lease"), (status = 200, body = fly::Lease, description = "the holder's lease, refreshed"), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), crate::openapi::Refusals),
)]
pub(crate) async fn acquire_lease(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<fly::LeaseQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    let req: fly::LeaseRequest = parse(&body)?;
    let ttl = req.ttl.or(q.ttl).unwrap_or(30);
    if !(1..=MAX_LEASE_TTL).contains(&ttl) {
        return Err(ApiError::bad_request(format!(
            "ttl: must be 1 to {MAX_LEASE_TTL} seconds"
        )));
    }
    // Held by someone else: 409. Held by the caller (nonce given): refreshed.
    check_lease(&headers, &m)?;
    let mut lease = new_lease(&caller.org.name, req.description.unwrap_or_default(), ttl);
    let status = match (&m.lease, headers.get(LEASE_HEADER)) {
        (Some(l), Some(_)) if l.expires_at > hangar_core::now_unix() => {
            lease.nonce = l.nonce.clone();
            StatusCode::OK
        }
        _ => StatusCode::CREATED,
    };
    state.store.set_machine_lease(&id, Some(lease)).await?;
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    Ok((status, Json(crate::wire::lease(&m))).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}/machines/{id}/lease",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    responses((status = 200, body = fly::Lease), crate::openapi::Refusals),
)]
pub(crate) async fn get_lease(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<fly::Lease>, ApiError> {
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    match crate::wire::lease(&m) {
        Some(l) if l.data.expires_at > hangar_core::now_unix() => Ok(Json(l)),
        _ => Err(ApiError::not_found(format!("machine {id} has no lease"))),
    }
}

#[utoipa::path(
    delete,
    path = "/v1/apps/{app}/machines/{id}/lease",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    responses((status = 200, body = OkBody), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), crate::openapi::Refusals),
)]
pub(crate) async fn release_lease(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<OkBody>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    state.store.set_machine_lease(&id, None).await?;
    Ok(Json(OkBody::YES))
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}/machines/{id}/metadata",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    responses((status = 200, body = std::collections::BTreeMap<String, String>), crate::openapi::Refusals),
)]
pub(crate) async fn get_metadata(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    Ok(Json(m.config.metadata))
}

fn check_metadata_key(key: &str) -> Result<(), ApiError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "metadata key {key:?}: use 1 to 128 letters, digits, '_', '-' or '.'"
        )))
    }
}

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines/{id}/metadata/{key}",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id"), ("key" = String, Path, description = "the metadata key")),
    request_body(content = fly::MetadataValue),
    responses((status = 204, description = "set"), crate::openapi::Refusals),
)]
pub(crate) async fn set_metadata(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id, key)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    // Fly takes metadata writes without the lease's nonce.
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    check_metadata_key(&key)?;
    let req: fly::MetadataValue = parse(&body)?;
    let mut metadata = m.config.metadata.clone();
    metadata.insert(key, req.value);
    check_metadata(&metadata)?;
    state.store.set_machine_metadata(&id, metadata).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Most keys a machine's metadata holds, and the longest value.
const MAX_METADATA_KEYS: usize = 128;
const MAX_METADATA_VALUE: usize = 4096;

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(ApiError::bad_request(format!(
            "metadata: at most {MAX_METADATA_KEYS} keys"
        )));
    }
    if let Some((k, _)) = metadata.iter().find(|(_, v)| v.len() > MAX_METADATA_VALUE) {
        return Err(ApiError::bad_request(format!(
            "metadata.{k}: at most {MAX_METADATA_VALUE} bytes"
        )));
    }
    metadata.keys().try_for_each(|k| check_metadata_key(k))
}

/// `GET …/metadata/{key}`: `{"value": …}`, or 404.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/machines/{id}/metadata/{key}",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id"), ("key" = String, Path, description = "the metadata key")),
    responses((status = 200, body = fly::MetadataValue), crate::openapi::Refusals),
)]
pub(crate) async fn get_metadata_key(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id, key)): Path<(String, String, String)>,
) -> Result<Json<fly::MetadataValue>, ApiError> {
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    match m.config.metadata.get(&key) {
        Some(v) => Ok(Json(fly::MetadataValue { value: v.clone() })),
        None => Err(ApiError::not_found(format!(
            "machine {id} has no metadata key {key:?}"
        ))),
    }
}

/// `PUT`/`PATCH …/metadata` with `{"metadata": {…}}`: `PATCH` merges,
/// `PUT` replaces; null or empty values remove keys. 204.
#[utoipa::path(
    method(put, patch),
    path = "/v1/apps/{app}/machines/{id}/metadata",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    request_body(content = fly::MetadataUpdate),
    responses((status = 204, description = "updated"), (status = 412, body = ErrorBody, description = "machine_version is not the machine's version"), crate::openapi::Refusals),
)]
pub(crate) async fn update_metadata(
    caller: Caller,
    State(state): State<ApiState>,
    method: axum::http::Method,
    Path((app, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    let req: fly::MetadataUpdate = parse(&body)?;
    if let Some(v) = &req.machine_version
        && v != &m.instance_id
    {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            format!("machine {id} is at version {}, not {v}", m.instance_id),
        ));
    }
    let mut metadata = match method {
        axum::http::Method::PUT => BTreeMap::new(),
        _ => m.config.metadata.clone(),
    };
    for (k, v) in req.metadata {
        match v.filter(|v| !v.is_empty()) {
            Some(v) => metadata.insert(k, v),
            None => metadata.remove(&k),
        };
    }
    check_metadata(&metadata)?;
    state.store.set_machine_metadata(&id, metadata).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    delete,
    path = "/v1/apps/{app}/machines/{id}/metadata/{key}",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id"), ("key" = String, Path, description = "the metadata key")),
    responses((status = 204, description = "removed"), crate::openapi::Refusals),
)]
pub(crate) async fn delete_metadata(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id, key)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let (_, m) = find_live_machine(&state, &caller, &app, &id).await?;
    let mut metadata = m.config.metadata.clone();
    if metadata.remove(&key).is_none() {
        return Err(ApiError::not_found(format!(
            "machine {id} has no metadata key {key:?}"
        )));
    }
    state.store.set_machine_metadata(&id, metadata).await?;
    Ok(StatusCode::NO_CONTENT)
}
