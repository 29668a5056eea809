//! Store rows to wire types ([`hangar_api_types`]): the one place that
//! decides what of a row a client sees.

use hangar_api_types::{fly, hangar as api};
use hangar_store as store;

pub fn build(b: &store::Build) -> api::Build {
    api::Build {
        id: b.id.clone(),
        status: b.status,
        source_digest: b.source_digest.clone(),
        image_digest: b.image_digest.clone(),
        error: b.error.clone(),
        attempts: b.attempts,
        created_at: b.created_at,
        started_at: b.started_at,
        finished_at: b.finished_at,
        commit: b.git_sha.clone(),
    }
}

pub fn release(r: &store::Release) -> api::Release {
    api::Release {
        id: r.id.clone(),
        app_id: r.app_id.clone(),
        version: r.version,
        build_id: r.build_id.clone(),
        image_digest: r.image_digest.clone(),
        status: r.status,
        error: r.error.clone(),
        created_at: r.created_at,
        config: r.config.clone(),
        description: r.description.clone(),
        commit: r.git_sha.clone(),
        commit_message: r.git_message.clone(),
    }
}

pub fn releases<'a>(rs: impl IntoIterator<Item = &'a store::Release>) -> Vec<api::Release> {
    rs.into_iter().map(release).collect()
}

pub fn check_status(s: hangar_node::agent::HealthStatus) -> api::CheckStatus {
    use hangar_node::agent::HealthStatus as H;
    match s {
        H::Unknown => api::CheckStatus::Unknown,
        H::Passing => api::CheckStatus::Passing,
        H::Critical => api::CheckStatus::Critical,
    }
}

pub fn check(c: &hangar_node::agent::CheckReport) -> api::CheckResult {
    api::CheckResult {
        name: c.name.clone(),
        status: check_status(c.status),
        output: c.output.clone(),
        updated_at: c.updated_at,
    }
}

/// A machine of an app with what its checks say (`health`: the checks
/// taken together while it runs, else its state).
pub fn app_machine(
    m: &store::Machine,
    health: Option<&hangar_node::agent::HealthReport>,
) -> api::AppMachine {
    use hangar_core::status::MachineState;
    let word = |s: api::CheckStatus| match s {
        api::CheckStatus::Unknown => "unknown",
        api::CheckStatus::Passing => "passing",
        api::CheckStatus::Critical => "critical",
    };
    let (health, checks) = match (m.state, health) {
        (MachineState::Started, Some(h)) => (
            word(check_status(h.status)).to_owned(),
            h.checks.iter().map(check).collect(),
        ),
        (MachineState::Started, None) => ("unknown".to_owned(), Vec::new()),
        (state, _) => (state.to_string(), Vec::new()),
    };
    app_machine_in(m, health, checks)
}

fn app_machine_in(
    m: &store::Machine,
    health: String,
    checks: Vec<api::CheckResult>,
) -> api::AppMachine {
    api::AppMachine {
        id: m.id.clone(),
        name: m.name.clone(),
        state: m.state,
        region: m.region.clone(),
        instance_id: m.instance_id.clone(),
        release_id: m.release_id.clone(),
        image_digest: m.image_digest.clone(),
        address: m.address.to_string(),
        port: m.port,
        pid: m.pid,
        exit_code: m.exit_code,
        oom_killed: m.oom_killed,
        restarts: m.restarts,
        cordoned: m.cordoned,
        created_at: m.created_at,
        updated_at: m.updated_at,
        health,
        checks,
    }
}

pub fn token(t: &store::Token) -> api::Token {
    let now = hangar_core::now_unix();
    let status = match (t.revoked_at, t.expires_at) {
        (Some(_), _) => api::TokenStatus::Revoked,
        (None, Some(at)) if at <= now => api::TokenStatus::Expired,
        _ => api::TokenStatus::Active,
    };
    api::Token {
        id: t.id.clone(),
        name: t.name.clone(),
        scope: t.scope.clone(),
        status,
        created_at: hangar_core::rfc3339(t.created_at),
        expires_at: t.expires_at.map(hangar_core::rfc3339),
        revoked_at: t.revoked_at.map(hangar_core::rfc3339),
    }
}

pub fn audit_entry(e: &store::AuditEntry) -> api::AuditEntry {
    api::AuditEntry {
        id: e.id,
        at: hangar_core::rfc3339(e.at),
        token: api::Actor {
            id: e.token_id.clone(),
            name: e.token_name.clone(),
        },
        action: e.action.clone(),
        app: e.app.clone(),
        target: e.target.clone(),
        summary: e.summary.clone(),
    }
}

/// One event of a machine's log, as Fly shows it: `timestamp` in Unix
/// milliseconds; an exit carries how the process exited.
pub fn event(e: &store::MachineEvent) -> fly::MachineEvent {
    let request = (e.kind == "exit").then(|| fly::EventRequest {
        exit_event: fly::ExitEvent {
            // None: ended by a signal (Fly's clients read a number).
            exit_code: e.exit_code.unwrap_or(-1),
            oom_killed: e.oom_killed.unwrap_or(false),
            requested_stop: false,
            restarting: false,
            exited_at: hangar_core::rfc3339(e.timestamp / 1000),
        },
    });
    fly::MachineEvent {
        id: e.id.to_string(),
        kind: e.kind.clone(),
        status: e.status.clone(),
        source: e.source.clone(),
        timestamp: e.timestamp,
        request,
    }
}

pub fn lease(m: &store::Machine) -> Option<fly::Lease> {
    m.lease.as_ref().map(|l| fly::Lease {
        status: "success".to_owned(),
        data: fly::LeaseData {
            nonce: l.nonce.clone(),
            expires_at: l.expires_at,
            owner: l.owner.clone(),
            description: l.description.clone(),
            version: m.instance_id.clone(),
        },
    })
}
