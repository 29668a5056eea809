//! Per-organisation quotas: how many apps and machines an org may have,
//! and how much machine memory in all. Checked before anything is created;
//! past a limit the answer is a 422 naming the limit, what is in use and
//! the `hangar up` flag that sets it. The build queue's cap (builds of an
//! org waiting at once) is a 429 in the same words: it clears by itself
//! as builds start.

use axum::http::StatusCode;
use hangar_store::{Machine, Org};

use crate::{ApiError, ApiState};

/// The limits each org lives under (the same for every org).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Apps per org.
    pub apps: u32,
    /// Machines per org (not destroyed: stopped ones count, they keep
    /// their address and can start at any time).
    pub machines: u32,
    /// Memory of all of an org's machines, in MiB.
    pub memory_mb: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            apps: 100,
            machines: 200,
            memory_mb: 64 * 1024,
        }
    }
}

/// The org's machines that are not destroyed.
async fn org_machines(state: &ApiState, org: &Org) -> Result<Vec<Machine>, ApiError> {
    let mut out = Vec::new();
    for app in state.store.apps(&org.id).await? {
        out.extend(state.store.machines_for_app(&app.id).await?);
    }
    Ok(out)
}

fn refused(msg: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, msg)
}

/// Refuses an app past the org's app quota (nothing to check when the
/// app exists already).
pub async fn check_new_app(state: &ApiState, org: &Org, name: &str) -> Result<(), ApiError> {
    let apps = state.store.apps(&org.id).await?;
    if apps.iter().any(|a| a.name == name) {
        return Ok(());
    }
    let limit = state.cfg.quotas.apps;
    if apps.len() as u64 >= u64::from(limit) {
        return Err(refused(format!(
            "quota: organisation {} may have at most {limit} apps and has {} (hangar up --org-max-apps)",
            org.name,
            apps.len()
        )));
    }
    Ok(())
}

/// Refuses a machine of `memory_mb` past the org's machine or memory
/// quota; `replacing` is the machine an update changes (its memory is
/// given back first).
pub async fn check_machine(
    state: &ApiState,
    org: &Org,
    memory_mb: u64,
    replacing: Option<&str>,
) -> Result<(), ApiError> {
    let machines = org_machines(state, org).await?;
    let others: Vec<&Machine> = machines
        .iter()
        .filter(|m| Some(m.id.as_str()) != replacing)
        .collect();
    let q = state.cfg.quotas;
    if replacing.is_none() && others.len() as u64 >= u64::from(q.machines) {
        return Err(refused(format!(
            "quota: organisation {} may have at most {} machines and has {} (hangar up --org-max-machines)",
            org.name,
            q.machines,
            others.len()
        )));
    }
    let used: u64 = others.iter().map(|m| m.config.guest().memory_mb).sum();
    if used.saturating_add(memory_mb) > q.memory_mb {
        return Err(refused(format!(
            "quota: organisation {} may have at most {} MiB of machine memory; {used} MiB are in use and this machine asks for {memory_mb} MiB (hangar up --org-max-memory-mb)",
            org.name, q.memory_mb
        )));
    }
    Ok(())
}

/// Refuses scaling an app to `count` machines of `memory_mb` each past
/// the org's quotas (the app's current machines are given back first).
pub async fn check_scale(
    state: &ApiState,
    org: &Org,
    app_id: &str,
    count: u32,
    memory_mb: u64,
) -> Result<(), ApiError> {
    let machines = org_machines(state, org).await?;
    let others: Vec<&Machine> = machines.iter().filter(|m| m.app_id != app_id).collect();
    let q = state.cfg.quotas;
    if others.len() as u64 + u64::from(count) > u64::from(q.machines) {
        return Err(refused(format!(
            "quota: organisation {} may have at most {} machines; its other apps have {} (hangar up --org-max-machines)",
            org.name,
            q.machines,
            others.len()
        )));
    }
    let used: u64 = others.iter().map(|m| m.config.guest().memory_mb).sum();
    let wanted = u64::from(count).saturating_mul(memory_mb);
    if used.saturating_add(wanted) > q.memory_mb {
        return Err(refused(format!(
            "quota: organisation {} may have at most {} MiB of machine memory; its other apps use {used} MiB and {count} machines of {memory_mb} MiB ask for {wanted} (hangar up --org-max-memory-mb)",
            org.name, q.memory_mb
        )));
    }
    Ok(())
}

/// The answer past the org's build queue cap: a 429 naming the limit and
/// the flag.
pub fn queue_full(org: &Org, queued: u64, limit: u32) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "queue: organisation {} may have at most {limit} builds waiting and has {queued} (hangar up --org-max-queued-builds); deploy again once one has started, or cancel one with `hangar builds cancel BUILD`",
            org.name
        ),
    )
}

/// Refuses a deploy past the org's build queue cap; `app_id` is the app
/// being deployed, if it exists (its own queued build would be
/// superseded, so it does not count).
pub async fn check_queue(
    state: &ApiState,
    org: &Org,
    app_id: Option<&str>,
) -> Result<(), ApiError> {
    let limit = state.builder.max_queued_per_org();
    let queued = state
        .store
        .queued_builds_of_org(&org.id)
        .await?
        .iter()
        .filter(|b| Some(b.app_id.as_str()) != app_id)
        .count() as u64;
    if queued >= u64::from(limit) {
        return Err(queue_full(org, queued, limit));
    }
    Ok(())
}
