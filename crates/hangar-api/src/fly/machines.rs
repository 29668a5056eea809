//! Machines: create, update, list, get, exec, start, stop, suspend,
//! restart, destroy.

use super::*;

/// A region as Fly names them (`iad`, `lhr`, `ams`…): any short name is
/// taken, since every machine runs on this node; it is recorded and echoed.
fn check_region(region: &str) -> Result<(), ApiError> {
    let ok = region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "region: {region:?} is not a region name (up to 32 lowercase letters, digits and '-')"
            ),
        ))
    }
}

/// Validates a create/update body and resolves its image for the caller.
async fn checked_request(
    state: &ApiState,
    caller: &Caller,
    body: &Bytes,
) -> Result<(fly::CreateMachine, String), ApiError> {
    let req: fly::CreateMachine = parse(body)?;
    req.config
        .validate()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    if let Some(region) = req.region.as_deref().filter(|r| !r.is_empty()) {
        check_region(region)?;
    }
    let digest = state
        .store
        .resolve_image(&caller.org.id, &req.config.image)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "config.image: no image {:?} in Hangar's store for your organisation; deploy an app (its images are <app>:vN) or `hangar image import` one",
                    req.config.image
                ),
            )
        })?;
    Ok((req, digest))
}

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name")),
    request_body(content = fly::CreateMachine),
    responses((status = 200, body = fly::Machine), (status = 412, body = ErrorBody, description = "the machine's state does not allow it (failed_precondition)"), crate::openapi::Refusals),
)]
pub(crate) async fn create_machine(
    caller: Caller,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = find_app(&state, &caller, &app).await?;
    let (req, digest) = checked_request(&state, &caller, &body).await?;
    crate::quota::check_machine(&state, &caller.org, req.config.guest().memory_mb, None).await?;
    let m = state
        .agent
        .create(
            &app,
            None,
            hangar_node::Naming {
                name: req.name,
                region: req.region.filter(|r| !r.is_empty()),
            },
            req.config,
            digest,
            req.skip_launch,
        )
        .await?;
    let mut answer = machine_json(&state, &m).await?;
    if let Some(ttl) = req.lease_ttl.filter(|t| *t > 0) {
        let lease = new_lease(
            &caller.org.name,
            "lease_ttl at create".to_owned(),
            ttl.min(MAX_LEASE_TTL),
        );
        answer.nonce = Some(lease.nonce.clone());
        state.store.set_machine_lease(&m.id, Some(lease)).await?;
    }
    let note = AuditNote {
        target: Some(m.id.clone()),
        summary: format!("image {}", m.config.image),
        ..AuditNote::default()
    };
    Ok(noted(Json(answer), note))
}

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines/{id}",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    request_body(content = fly::CreateMachine),
    responses((status = 200, body = fly::Machine), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), (status = 412, body = ErrorBody, description = "the machine's state does not allow it (failed_precondition)"), crate::openapi::Refusals),
)]
pub(crate) async fn update_machine(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<fly::Machine>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    let (req, digest) = checked_request(&state, &caller, &body).await?;
    crate::quota::check_machine(&state, &caller.org, req.config.guest().memory_mb, Some(&id))
        .await?;
    let m = state
        .agent
        .update(&id, req.config, digest, req.name, req.skip_launch)
        .await?;
    Ok(Json(machine_json(&state, &m).await?))
}

/// The header a lease holder passes.

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines/{id}/exec",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    request_body(content = fly::ExecRequest),
    responses((status = 200, body = fly::ExecResult), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), (status = 412, body = ErrorBody, description = "the machine's state does not allow it (failed_precondition)"), crate::openapi::Refusals),
)]
pub(crate) async fn exec(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<fly::ExecResult>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    let req: fly::ExecRequest = parse(&body)?;
    let argv: Vec<String> = match (req.command, req.cmd) {
        (Some(c), _) if !c.is_empty() => c,
        (_, Some(c)) if !c.trim().is_empty() => c.split_whitespace().map(str::to_owned).collect(),
        _ => {
            return Err(ApiError::bad_request(
                "cmd: give the command as \"command\": [argv] or \"cmd\": \"string\"",
            ));
        }
    };
    let timeout = req.timeout.unwrap_or(30);
    if !(1..=600).contains(&timeout) {
        return Err(ApiError::bad_request("timeout: must be 1 to 600 seconds"));
    }
    // Each stream is capped (the node keeps the first MiB of each).
    let out = state
        .agent
        .exec(&id, &argv, Duration::from_secs(timeout))
        .await?;
    Ok(Json(fly::ExecResult {
        exit_code: i64::from(out.code),
        exit_signal: 0,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        truncated: out.truncated,
    }))
}

#[derive(Deserialize)]
pub(crate) struct ListMachinesQuery {
    #[serde(default)]
    include_deleted: bool,
    #[serde(default)]
    region: Option<String>,
    /// `metadata.{key}=value` filters.
    #[serde(flatten)]
    rest: BTreeMap<String, String>,
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}/machines",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), fly::ListMachinesQuery),
    responses((status = 200, body = Vec<fly::Machine>), crate::openapi::Refusals),
)]
pub(crate) async fn list_machines(
    caller: Caller,
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(q): Query<ListMachinesQuery>,
) -> Result<Json<Vec<fly::Machine>>, ApiError> {
    let app = find_app(&state, &caller, &app).await?;
    let wanted: Vec<(&str, &str)> = q
        .rest
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("metadata.").map(|k| (k, v.as_str())))
        .collect();
    let mut out = Vec::new();
    for m in state
        .store
        .machines_for_app_all(&app.id, q.include_deleted)
        .await?
    {
        if q.region.as_ref().is_some_and(|r| r != &m.region) {
            continue;
        }
        if !wanted
            .iter()
            .all(|(k, v)| m.config.metadata.get(*k).map(String::as_str) == Some(*v))
        {
            continue;
        }
        out.push(machine_json(&state, &m).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}/machines/{id}",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    responses((status = 200, body = fly::Machine), crate::openapi::Refusals),
)]
pub(crate) async fn get_machine(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<fly::Machine>, ApiError> {
    let (_, m) = find_machine(&state, &caller, &app, &id).await?;
    Ok(Json(machine_json(&state, &m).await?))
}

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines/{id}/start",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    responses((status = 200, body = fly::Started), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), (status = 412, body = ErrorBody, description = "the machine's state does not allow it (failed_precondition)"), crate::openapi::Refusals),
)]
pub(crate) async fn start(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<fly::Started>, ApiError> {
    let before = machine_to_change(&state, &caller, &app, &id, &headers).await?;
    state.agent.start(&id).await?;
    Ok(Json(fly::Started {
        previous_state: before.state,
        migrated: false,
        new_host: String::new(),
    }))
}

/// The signal and grace of a stop or restart.
fn resolve_stop(req: &fly::StopRequest) -> Result<(Option<i32>, Option<Duration>), ApiError> {
    let signal = match &req.signal {
        None => None,
        Some(s) => Some(
            hangar_core::machine::STOP_SIGNALS
                .iter()
                .find(|(n, _)| n == s)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("signal: {s:?} is not a signal Hangar sends"))
                })?,
        ),
    };
    // A Go duration string, or nanoseconds (Go's time.Duration), as
    // Fly's clients send it; fly-go sends "0s" when none was chosen,
    // which means the machine's own stop_config, not an instant kill.
    let timeout = match &req.timeout {
        None | Some(Value::Null) => None,
        Some(v) => Some(hangar_core::machine::fly_duration(v).ok_or_else(|| {
            ApiError::bad_request("timeout: must be a duration such as \"10s\", or nanoseconds")
        })?),
    }
    .filter(|t| !t.is_zero());
    if let Some(t) = timeout {
        hangar_core::duration::Bounds::STOP_GRACE
            .check(t)
            .map_err(|why| ApiError::bad_request(format!("timeout: {why}")))?;
    }
    Ok((signal, timeout))
}

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines/{id}/stop",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    request_body(content = fly::StopRequest),
    responses((status = 200, body = OkBody), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), (status = 412, body = ErrorBody, description = "the machine's state does not allow it (failed_precondition)"), crate::openapi::Refusals),
)]
pub(crate) async fn stop(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<hangar_api_types::OkBody>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    let req: fly::StopRequest = parse(&body)?;
    let (signal, timeout) = resolve_stop(&req)?;
    state.agent.stop(&id, signal, timeout).await?;
    Ok(Json(hangar_api_types::OkBody::YES))
}

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines/{id}/suspend",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    responses((status = 200, body = OkBody), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), (status = 412, body = ErrorBody, description = "the machine's state does not allow it (failed_precondition)"), crate::openapi::Refusals),
)]
pub(crate) async fn suspend(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<hangar_api_types::OkBody>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    state.agent.suspend(&id).await?;
    Ok(Json(hangar_api_types::OkBody::YES))
}

#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines/{id}/restart",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id"), fly::RestartQuery),
    responses((status = 200, body = OkBody), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), (status = 412, body = ErrorBody, description = "the machine's state does not allow it (failed_precondition)"), crate::openapi::Refusals),
)]
pub(crate) async fn restart(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<fly::RestartQuery>,
) -> Result<Json<hangar_api_types::OkBody>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    // `timeout` is a Go duration string, or integer nanoseconds (older
    // clients); `force_stop` is accepted (the stop is as forceful as the
    // signal and timeout make it).
    let req = fly::StopRequest {
        signal: q.signal,
        timeout: q.timeout.map(|t| match t.parse::<u64>() {
            Ok(ns) => json!(ns),
            Err(_) => Value::String(t),
        }),
    };
    let (signal, timeout) = resolve_stop(&req)?;
    state.agent.stop(&id, signal, timeout).await?;
    state.agent.start(&id).await?;
    Ok(Json(hangar_api_types::OkBody::YES))
}

#[utoipa::path(
    delete,
    path = "/v1/apps/{app}/machines/{id}",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id"), fly::DestroyQuery),
    responses((status = 200, body = OkBody), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), (status = 412, body = ErrorBody, description = "the machine's state does not allow it (failed_precondition)"), crate::openapi::Refusals),
)]
pub(crate) async fn delete_machine(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<fly::DestroyQuery>,
) -> Result<Json<hangar_api_types::OkBody>, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    state.agent.destroy(&id, q.force || q.kill).await?;
    Ok(Json(hangar_api_types::OkBody::YES))
}

/// Signals a machine may be sent (Fly's list), by name and number.
const SIGNALS: &[(&str, i32)] = &[
    ("SIGABRT", libc_signal::ABRT),
    ("SIGALRM", libc_signal::ALRM),
    ("SIGFPE", libc_signal::FPE),
    ("SIGHUP", libc_signal::HUP),
    ("SIGILL", libc_signal::ILL),
    ("SIGINT", libc_signal::INT),
    ("SIGKILL", libc_signal::KILL),
    ("SIGPIPE", libc_signal::PIPE),
    ("SIGQUIT", libc_signal::QUIT),
    ("SIGSEGV", libc_signal::SEGV),
    ("SIGTERM", libc_signal::TERM),
    ("SIGTRAP", libc_signal::TRAP),
    ("SIGUSR1", libc_signal::USR1),
    ("SIGUSR2", libc_signal::USR2),
];

/// Linux's signal numbers (x86_64 and aarch64 agree on these).
mod libc_signal {
    pub const HUP: i32 = 1;
    pub const INT: i32 = 2;
    pub const QUIT: i32 = 3;
    pub const ILL: i32 = 4;
    pub const TRAP: i32 = 5;
    pub const ABRT: i32 = 6;
    pub const FPE: i32 = 8;
    pub const KILL: i32 = 9;
    pub const USR1: i32 = 10;
    pub const SEGV: i32 = 11;
    pub const USR2: i32 = 12;
    pub const PIPE: i32 = 13;
    pub const ALRM: i32 = 14;
    pub const TERM: i32 = 15;
}

/// `POST …/signal` with `{"signal": "SIGUSR1"}` or `{"signal": 9}`.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/machines/{id}/signal",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    request_body(content = fly::SignalRequest),
    responses((status = 200, body = OkBody), (status = 409, body = ErrorBody, description = "the machine is leased by another holder: pass its nonce in fly-machine-lease-nonce"), (status = 412, body = ErrorBody, description = "the machine's state does not allow it (failed_precondition)"), crate::openapi::Refusals),
)]
pub(crate) async fn signal(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    machine_to_change(&state, &caller, &app, &id, &headers).await?;
    let req: fly::SignalRequest = parse(&body)?;
    let found = match &req.signal {
        Value::String(name) => SIGNALS.iter().find(|(n, _)| n == name),
        Value::Number(n) => SIGNALS
            .iter()
            .find(|(_, v)| Some(i64::from(*v)) == n.as_i64()),
        _ => None,
    };
    let Some((name, number)) = found else {
        return Err(ApiError::bad_request(format!(
            "signal: {} is not one of {}",
            req.signal,
            SIGNALS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    state.agent.signal(&id, *number).await?;
    let note = AuditNote {
        summary: (*name).to_owned(),
        ..AuditNote::default()
    };
    Ok(noted(Json(hangar_api_types::OkBody::YES), note))
}

/// `GET …/ps`: the machine's processes, main process first.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/machines/{id}/ps",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    responses((status = 200, body = Vec<fly::ProcessStat>), (status = 412, body = ErrorBody, description = "the machine's state does not allow it (failed_precondition)"), crate::openapi::Refusals),
)]
pub(crate) async fn ps(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Vec<fly::ProcessStat>>, ApiError> {
    find_live_machine(&state, &caller, &app, &id).await?;
    let now_ms = hangar_core::now_unix().saturating_mul(1000);
    let boot_ms = now_ms.saturating_sub(uptime_ms());
    let list = state
        .agent
        .processes(&id)
        .await?
        .into_iter()
        .map(|p| {
            let started = boot_ms.saturating_add(p.start_ms as i64);
            fly::ProcessStat {
                pid: p.pid,
                command: p.command,
                directory: p.directory,
                cpu: p.cpu_ms,
                rss: p.rss,
                stime: started,
                rtime: now_ms.saturating_sub(started),
                listen_sockets: Vec::new(),
            }
        })
        .collect();
    Ok(Json(list))
}

/// Milliseconds since the host booted.
fn uptime_ms() -> i64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|secs| (secs * 1000.0) as i64)
        .unwrap_or(0)
}

/// `GET …/versions`: the machine's versions, newest first. Hangar keeps
/// the current one only.
#[utoipa::path(
    get,
    path = "/v1/apps/{app}/machines/{id}/versions",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    responses((status = 200, body = Vec<fly::MachineVersion>), crate::openapi::Refusals),
)]
pub(crate) async fn versions(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Vec<fly::MachineVersion>>, ApiError> {
    let (_, m) = find_machine(&state, &caller, &app, &id).await?;
    Ok(Json(vec![fly::MachineVersion {
        version: m.instance_id,
        user_config: m.config,
    }]))
}
