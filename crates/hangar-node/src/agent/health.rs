//! Health checks: running them, remembering their results, and the loop
//! that keeps checking started machines.
//!
//! A machine's *service* checks (`config.services[].checks`) gate routing,
//! as in Fly: a machine whose service checks fail is taken out of the
//! proxy's rotation until they pass again. Top-level `config.checks` are
//! only monitored and reported. Results live in memory: after a restart of
//! hangar every machine starts again as `unknown`, which routes (a
//! re-adopted machine keeps serving until a check says otherwise).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hangar_core::check::{Check, CheckKind};
use hangar_core::status::MachineState;
use hangar_store::Machine;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::Agent;

/// What the checks of a machine say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Not checked yet, or failing within the grace period.
    #[default]
    Unknown,
    /// Every check passed on its latest run.
    Passing,
    /// A check failed after the grace period.
    Critical,
}

/// One check's latest result, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// `servicecheck-<service>-<n>` for service checks, the table's name for
    /// top-level ones.
    pub name: String,
    /// Its status.
    pub status: HealthStatus,
    /// What it saw: `HTTP 200`, `connection refused`, ...
    pub output: String,
    /// Unix seconds of the result.
    pub updated_at: i64,
}

/// A machine's health as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// The service checks taken together: what routing goes by.
    pub status: HealthStatus,
    /// Every check's latest result.
    pub checks: Vec<CheckReport>,
}

/// A check of a machine, with whether it gates routing.
#[derive(Debug, Clone)]
pub(super) struct NamedSpec {
    /// See [`CheckReport::name`].
    pub name: String,
    /// What to run.
    pub spec: Check,
    /// A service check (gates routing) rather than a top-level one.
    pub gating: bool,
}

/// The checks of `m`: its service checks, else a TCP connect when it has
/// a service without checks or is a deploy machine; then top-level ones.
pub(super) fn checks_of(m: &Machine) -> Vec<NamedSpec> {
    let mut out = Vec::new();
    for (i, s) in m.config.services.iter().enumerate() {
        for (j, c) in s.checks.iter().enumerate() {
            out.push(NamedSpec {
                name: format!("servicecheck-{i}-{j}"),
                spec: c.spec(),
                gating: true,
            });
        }
    }
    out.extend(m.config.checks.iter().map(|(name, c)| NamedSpec {
        name: name.clone(),
        spec: c.spec(),
        gating: false,
    }));
    out
}

/// The checks a new deploy machine must pass before it is routed: its
/// service checks, or (none declared) that it accepts TCP on `$PORT`.
pub(super) fn gating_checks(m: &Machine) -> Vec<Check> {
    let gating: Vec<Check> = checks_of(m)
        .into_iter()
        .filter(|c| c.gating)
        .map(|c| c.spec)
        .collect();
    if gating.is_empty() {
        let mut tcp = Check::new(CheckKind::Tcp);
        tcp.timeout = Duration::from_secs(1);
        vec![tcp]
    } else {
        gating
    }
}

/// Runs one check against a machine listening on `addr` (its address and
/// `$PORT`): `Ok(output)` when it passes, `Err(output)` when it fails.
pub(super) async fn run_check(spec: &Check, addr: SocketAddr) -> Result<String, String> {
    let timeout = spec.timeout;
    let port = addr.port();
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to $PORT ({port}): {e}"))?;
        let (method, path) = match &spec.kind {
            CheckKind::Tcp => return Ok("accepting connections".to_owned()),
            CheckKind::Http { method, path } => (method, path),
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost:{port}\r\nUser-Agent: hangar-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending {method} {path}: {e}"))?;
        // Only the status line matters; read until it is complete.
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading the answer to {method} {path}: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or_default();
        let code: Option<u16> = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|c| c.parse().ok());
        match code {
            Some(c) if (200..300).contains(&c) => Ok(format!("{method} {path}: HTTP {c}")),
            Some(c) => Err(format!("{method} {path}: HTTP {c}")),
            None => Err(format!("{method} {path}: not an HTTP answer: {line:?}")),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// The health state of one started machine.
#[derive(Debug)]
pub(super) struct MachineHealth {
    /// The process the results are about; a restart starts afresh.
    pid: Option<i64>,
    /// When that process was first seen: grace periods count from here.
    since: Instant,
    /// Each check's latest result and schedule, by name.
    checks: BTreeMap<String, CheckState>,
    /// The service checks taken together.
    pub(super) status: HealthStatus,
}

#[derive(Debug, Clone)]
struct CheckState {
    status: HealthStatus,
    output: String,
    updated_at: i64,
    /// When it is next due.
    next: Instant,
    /// A run is under way (so a slow check never overlaps itself).
    running: bool,
}

impl MachineHealth {
    fn new(pid: Option<i64>) -> MachineHealth {
        MachineHealth {
            pid,
            since: Instant::now(),
            checks: BTreeMap::new(),
            status: HealthStatus::Unknown,
        }
    }

    fn report(&self) -> HealthReport {
        HealthReport {
            status: self.status,
            checks: self
                .checks
                .iter()
                .map(|(name, c)| CheckReport {
                    name: name.clone(),
                    status: c.status,
                    output: c.output.clone(),
                    updated_at: c.updated_at,
                })
                .collect(),
        }
    }
}

/// The service status from the gating checks' latest results.
fn overall(health: &MachineHealth, gating: &[String]) -> HealthStatus {
    let mut status = HealthStatus::Passing;
    for name in gating {
        match health.checks.get(name).map(|c| c.status) {
            Some(HealthStatus::Critical) => return HealthStatus::Critical,
            Some(HealthStatus::Passing) => {}
            _ => status = HealthStatus::Unknown,
        }
    }
    status
}

impl Agent {
    /// A machine's health, if it is started and has been looked at.
    pub fn health(&self, machine_id: &str) -> Option<HealthReport> {
        let health = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
        health.get(machine_id).map(MachineHealth::report)
    }

    /// The routing status of a machine (unknown when never checked).
    pub(super) fn health_status(&self, machine_id: &str) -> HealthStatus {
        let health = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
        health
            .get(machine_id)
            .map_or(HealthStatus::Unknown, |h| h.status)
    }

    /// Records that a new machine just passed its gating checks (the rollout
    /// ran them), so the loop starts from `passing`.
    pub(super) fn mark_passing(&self, m: &Machine) {
        let mut health = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
        let h = health
            .entry(m.id.clone())
            .or_insert_with(|| MachineHealth::new(m.pid));
        let now = Instant::now();
        for spec in checks_of(m).into_iter().filter(|c| c.gating) {
            h.checks.insert(
                spec.name,
                CheckState {
                    status: HealthStatus::Passing,
                    output: "passed before the machine was routed".into(),
                    updated_at: hangar_core::now_unix(),
                    next: now + spec.spec.interval,
                    running: false,
                },
            );
        }
        h.status = HealthStatus::Passing;
    }

    /// Every `tick`, runs the checks that are due on every started machine
    /// and republishes an app's routes when a machine's service status
    /// flips between passing and critical.
    pub fn spawn_health_loop(
        &self,
        tick: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let agent = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = shutdown.changed() => return,
                }
                // A pass that panics is that pass lost, not the loop.
                let pass = {
                    let agent = agent.clone();
                    async move { agent.health_pass().await }
                };
                match hangar_core::supervise::guarded(pass).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("health checks: {e}"),
                    Err(why) => tracing::error!("health checks {why}"),
                }
            }
        });
    }

    async fn health_pass(&self) -> Result<(), super::NodeError> {
        let machines: Vec<Machine> = self
            .inner
            .store
            .live_machines()
            .await?
            .into_iter()
            .filter(|m| m.state == MachineState::Started)
            .collect();
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut health = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
            health.retain(|id, _| machines.iter().any(|m| &m.id == id));
            for m in &machines {
                let specs = checks_of(m);
                if specs.is_empty() {
                    continue;
                }
                let h = health
                    .entry(m.id.clone())
                    .or_insert_with(|| MachineHealth::new(m.pid));
                if h.pid != m.pid {
                    *h = MachineHealth::new(m.pid);
                }
                for spec in specs {
                    let state = h.checks.entry(spec.name.clone()).or_insert(CheckState {
                        status: HealthStatus::Unknown,
                        output: "not checked yet".into(),
                        updated_at: 0,
                        next: now,
                        running: false,
                    });
                    if !state.running && state.next <= now {
                        state.running = true;
                        due.push((m.clone(), spec));
                    }
                }
            }
        }
        for (m, spec) in due {
            let agent = self.clone();
            tokio::spawn(async move {
                let result = run_check(&spec.spec, m.socket_addr()).await;
                agent.record_check(&m, &spec, result).await;
            });
        }
        Ok(())
    }

    /// Stores one check's result and republishes routes if the machine's
    /// service status flipped.
    async fn record_check(&self, m: &Machine, spec: &NamedSpec, result: Result<String, String>) {
        let flipped = {
            let mut health = self.inner.health.lock().unwrap_or_else(|p| p.into_inner());
            let Some(h) = health.get_mut(&m.id) else {
                return; // stopped meanwhile
            };
            if h.pid != m.pid {
                return; // a result about an earlier process
            }
            let in_grace = h.since.elapsed() < spec.spec.grace_period;
            let (status, output) = match result {
                Ok(o) => (HealthStatus::Passing, o),
                Err(o) if in_grace => (HealthStatus::Unknown, o),
                Err(o) => (HealthStatus::Critical, o),
            };
            if let Some(state) = h.checks.get_mut(&spec.name) {
                state.status = status;
                state.output = output.clone();
                state.updated_at = hangar_core::now_unix();
                state.next = Instant::now() + spec.spec.interval;
                state.running = false;
            }
            if !spec.gating {
                return;
            }
            let gating: Vec<String> = checks_of(m)
                .into_iter()
                .filter(|c| c.gating)
                .map(|c| c.name)
                .collect();
            let before = h.status;
            h.status = overall(h, &gating);
            let routed = |s: HealthStatus| s != HealthStatus::Critical;
            (routed(before) != routed(h.status)).then_some((h.status, output))
        };
        if let Some((status, output)) = flipped {
            match status {
                HealthStatus::Critical => {
                    warn!(machine = %m.id, "failing its checks ({output}): out of rotation")
                }
                _ => info!(machine = %m.id, "passing its checks again: back in rotation"),
            }
            if let Err(e) = self.publish_routes(&m.app_id).await {
                warn!(machine = %m.id, "publishing routes: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve_once(answer: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    fn http(path: &str) -> Check {
        let mut c = Check::new(CheckKind::Http {
            method: "GET".into(),
            path: path.into(),
        });
        c.timeout = Duration::from_millis(500);
        c
    }

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn http_checks_pass_on_2xx_only() {
        let ok = serve_once("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(
            run_check(&http("/healthz"), at(ok)).await,
            Ok("GET /healthz: HTTP 204".into())
        );
        let bad = serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(
            run_check(&http("/healthz"), at(bad)).await,
            Err("GET /healthz: HTTP 503".into())
        );
        let garbage = serve_once("SSH-2.0-OpenSSH\r\n").await;
        assert!(
            run_check(&http("/"), at(garbage))
                .await
                .unwrap_err()
                .contains("not an HTTP answer")
        );
    }

    #[tokio::test]
    async fn tcp_checks_and_timeouts() {
        let open = serve_once("").await;
        assert!(
            run_check(&Check::new(CheckKind::Tcp), at(open))
                .await
                .is_ok()
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = run_check(&Check::new(CheckKind::Tcp), at(closed))
            .await
            .unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
        // Accepts but never answers: the timeout decides.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = listener.local_addr().unwrap().port();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let mut slow = http("/");
        slow.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let err = run_check(&slow, at(silent)).await.unwrap_err();
        assert!(err.contains("no answer within 200 ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn overall_status_needs_every_gating_check() {
        let mut h = MachineHealth::new(Some(1));
        let names = vec!["a".to_owned(), "b".to_owned()];
        let state = |status| CheckState {
            status,
            output: String::new(),
            updated_at: 0,
            next: Instant::now(),
            running: false,
        };
        h.checks.insert("a".into(), state(HealthStatus::Passing));
        assert_eq!(overall(&h, &names), HealthStatus::Unknown);
        h.checks.insert("b".into(), state(HealthStatus::Passing));
        assert_eq!(overall(&h, &names), HealthStatus::Passing);
        h.checks.insert("b".into(), state(HealthStatus::Critical));
        assert_eq!(overall(&h, &names), HealthStatus::Critical);
    }
}
