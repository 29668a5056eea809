//! Waiting for a state, and the event log.

use super::*;

/// What a wait waits for: one of several states (`settled`: any state a
/// machine rests in), of one version of the machine, reached after one
/// event.
#[derive(Debug, PartialEq)]
pub(crate) struct WaitFor {
    states: Vec<String>,
    timeout_secs: u64,
    version: Option<String>,
    after_event: Option<i64>,
}

/// States a wait may name.
const WAIT_STATES: &[&str] = &[
    "started",
    "stopped",
    "suspended",
    "destroyed",
    "failed",
    "settled",
];

/// Longest wait, in seconds (Fly's cap).
const MAX_WAIT_SECS: u64 = 60;

impl WaitFor {
    /// Parses the query as Fly's clients send it: `state` repeated
    /// (fly-go) or comma-separated (Fly's spec), `version` (or the older
    /// `instance_id`), `from_event_id`, `timeout` in seconds.
    pub(crate) fn parse(query: &str) -> Result<WaitFor, ApiError> {
        let mut w = WaitFor {
            states: Vec::new(),
            timeout_secs: MAX_WAIT_SECS,
            version: None,
            after_event: None,
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "state" => {
                    for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        if !WAIT_STATES.contains(&s) {
                            return Err(ApiError::bad_request(format!(
                                "state: {s:?} is not one of {}",
                                WAIT_STATES.join(", ")
                            )));
                        }
                        w.states.push(s.to_owned());
                    }
                }
                "timeout" => {
                    let secs = v
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=MAX_WAIT_SECS).contains(s));
                    w.timeout_secs = secs.ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "timeout: must be 1 to {MAX_WAIT_SECS} seconds"
                        ))
                    })?;
                }
                "version" | "instance_id" if !v.is_empty() => w.version = Some(v.into_owned()),
                "from_event_id" if !v.is_empty() => {
                    w.after_event = Some(v.parse().map_err(|_| {
                        ApiError::bad_request(format!("from_event_id: {v:?} is no event id"))
                    })?);
                }
                _ => {}
            }
        }
        if w.states.is_empty() {
            w.states.push("started".to_owned());
        }
        Ok(w)
    }

    /// Whether a machine in `state` is what this waits for.
    fn matches(&self, state: &str) -> bool {
        let settled = !matches!(
            state,
            "created" | "starting" | "stopping" | "suspending" | "destroying"
        );
        self.states
            .iter()
            .any(|s| s == state || (s == "settled" && settled))
    }
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}/machines/{id}/wait",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id"), fly::WaitQuery),
    responses((status = 200, body = fly::WaitResult), crate::openapi::Refusals),
)]
pub(crate) async fn wait(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    find_machine(&state, &caller, &app, &id).await?;
    let want = WaitFor::parse(query.as_deref().unwrap_or(""))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(want.timeout_secs);
    loop {
        let m = state
            .store
            .machine(&id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("machine not found: {id}")))?;
        let version_ok = want.version.as_ref().is_none_or(|v| v == &m.instance_id);
        // After an event: one newer than it must have led to the state.
        let (reached, event) = match want.after_event {
            Some(after) => {
                let newer = state.store.machine_events_after(&id, after, 50).await?;
                match newer.iter().find(|e| want.matches(&e.status)) {
                    Some(e) => (true, Some(e.id)),
                    None => (false, None),
                }
            }
            None => (want.matches(m.state.as_str()), None),
        };
        if reached && version_ok {
            // The event that led here: asked for once, not on every poll.
            let event = match event {
                Some(e) => Some(e),
                None => state
                    .store
                    .machine_events(&id, 1)
                    .await?
                    .first()
                    .map(|e| e.id),
            };
            return Ok(Json(fly::WaitResult {
                ok: true,
                state: m.state,
                version: m.instance_id,
                event_id: event.map(|e| e.to_string()),
            })
            .into_response());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "deadline_exceeded: machine {id} is {} (version {}) after {} s, not {}",
                    m.state,
                    m.instance_id,
                    want.timeout_secs,
                    want.states.join(" or ")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[utoipa::path(
    get,
    path = "/v1/apps/{app}/machines/{id}/events",
    tag = "machines",
    params(("app" = String, Path, description = "the app's name"), ("id" = String, Path, description = "the machine's id")),
    responses((status = 200, body = Vec<fly::MachineEvent>), crate::openapi::Refusals),
)]
pub(crate) async fn events(
    caller: Caller,
    State(state): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Json<Vec<fly::MachineEvent>>, ApiError> {
    let (_, m) = find_machine(&state, &caller, &app, &id).await?;
    let events = state.store.machine_events(&m.id, 100).await?;
    Ok(Json(events.iter().map(crate::wire::event).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_come_repeated_or_comma_separated() {
        let w = WaitFor::parse("state=stopped&state=suspended&timeout=5&version=v1").unwrap();
        assert_eq!(w.states, ["stopped", "suspended"]);
        assert_eq!((w.timeout_secs, w.version.as_deref()), (5, Some("v1")));
        let w = WaitFor::parse("state=started,stopped&from_event_id=42").unwrap();
        assert_eq!(w.states, ["started", "stopped"]);
        assert_eq!(w.after_event, Some(42));
        assert_eq!(WaitFor::parse("").unwrap().states, ["started"]);
        for bad in [
            "state=running",
            "timeout=61",
            "timeout=0",
            "from_event_id=x",
        ] {
            assert!(WaitFor::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settled_is_any_resting_state() {
        let w = WaitFor::parse("state=settled").unwrap();
        for s in ["started", "stopped", "suspended", "destroyed", "failed"] {
            assert!(w.matches(s), "{s}");
        }
        for s in ["starting", "stopping", "created"] {
            assert!(!w.matches(s), "{s}");
        }
    }
}
