//! Rollouts and scaling: replacing an app's machines with a new release's,
//! gated by health checks, without dropping a request.
//!
//! A rollout goes in batches (the strategy decides their sizes). For each
//! batch: start its machines (out of rotation), wait until every one
//! passes its service checks, then in one route publication put the batch
//! in and take as many old machines out (cordoned), wait until the proxy
//! has no request in flight to those (bounded by `drain_timeout`), and
//! stop them. New machines come before old ones go, so capacity never
//! drops. Any failure, and the previous release is brought back to its
//! full count before the new machines leave: it keeps serving.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hangar_core::app_config::{AppConfig, DeployConfig, Strategy};
use hangar_core::machine::Guest;
use hangar_core::status::{MachineState, ReleaseStatus};
use hangar_store::{App, Machine, Release};
use tracing::{info, warn};

use super::health::{gating_checks, run_check};
use super::{Agent, NodeError};
use crate::driver::{self, ProcState};

/// Where a deploy machine stands with routing, beyond its release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// Started by a rollout or a scale-up, its checks not yet passed:
    /// never routed.
    Pending,
    /// Of a release still rolling out, passed: routed with the active
    /// release's machines.
    Admitted,
}

/// The sizes of the batches of new machines a strategy starts, in order.
pub fn plan(deploy: &DeployConfig, count: u32) -> Vec<u32> {
    if count == 0 {
        return Vec::new();
    }
    let step = deploy.max_unavailable.of(count).max(1);
    let batches = |mut left: u32| {
        let mut out = Vec::new();
        while left > 0 {
            let n = step.min(left);
            out.push(n);
            left -= n;
        }
        out
    };
    match deploy.strategy {
        Strategy::BlueGreen | Strategy::Immediate => vec![count],
        Strategy::Rolling => batches(count),
        Strategy::Canary => {
            let mut out = vec![1];
            out.extend(batches(count - 1));
            out
        }
    }
}

/// The release's `hangar.toml`, parsed (the builder validated it).
pub(super) fn release_config(release: &Release) -> Result<AppConfig, String> {
    match &release.config {
        None => Ok(AppConfig::default()),
        Some(text) => AppConfig::parse(text).map_err(|e| e.to_string()),
    }
}

/// How long a preview's machines stay up without a request, unless its
/// `hangar.toml` says otherwise.
pub const PREVIEW_IDLE: Duration = Duration::from_secs(15 * 60);

/// A preview environment scales to zero unless its `hangar.toml` says how
/// its services stop: idle machines stop after [`PREVIEW_IDLE`] and the
/// next request starts one.
pub(super) fn preview_defaults(config: &mut AppConfig) {
    for s in &mut config.services {
        if s.autostop.is_none() {
            s.autostop = Some(hangar_core::machine::Autostop::Stop);
            s.idle_timeout.get_or_insert(PREVIEW_IDLE);
            s.autostart.get_or_insert(true);
        }
    }
}

/// How many machines an app runs: `hangar scale`'s count, else the file's.
fn wanted(app: &App, config: &AppConfig) -> u32 {
    app.scale
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(config.count)
        .max(1)
}

/// The last lines a machine printed, for a failure's reason.
fn output_tail(log: &std::path::Path) -> String {
    let tail = driver::tail_of(log, 20);
    if tail.trim().is_empty() {
        "(it printed nothing)".to_owned()
    } else {
        tail
    }
}

impl Agent {
    /// Rolls out a release (see the module docs). On failure the release is
    /// marked failed with the reason and the previous release serves on.
    pub async fn rollout(&self, release_id: &str) -> Result<(), NodeError> {
        let store = &self.inner.store;
        let release = store
            .release(release_id)
            .await?
            .ok_or_else(|| NodeError::NotFound(format!("release {release_id}")))?;
        let Some(app) = store.app(&release.app_id).await? else {
            return Err(NodeError::NotFound(format!("app of release {release_id}")));
        };
        let lock = self.lock(format!("app:{}", app.id));
        let _guard = lock.lock().await;
        // Re-read under the lock: a queued duplicate finds it done, and a
        // `hangar scale` that ran meanwhile has its count seen.
        match store.release(release_id).await? {
            Some(r) if !r.status.is_terminal() => {}
            _ => return Ok(()),
        }
        let Some(app) = store.app(&release.app_id).await? else {
            return Err(NodeError::NotFound(format!("app of release {release_id}")));
        };
        store
            .set_release_status(&release.id, ReleaseStatus::Deploying, None)
            .await?;
        let started = Instant::now();
        info!(app = %app.name, version = release.version, "rolling out");
        match self.replace(&app, &release).await {
            Ok(()) => {
                store.activate_release(&app.id, &release.id).await?;
                self.clear_gates(&app.id, &release.id).await;
                self.publish_routes(&app.id).await?;
                info!(
                    app = %app.name,
                    version = release.version,
                    secs = started.elapsed().as_secs_f64(),
                    "release is live"
                );
                Ok(())
            }
            Err(reason) => {
                warn!(app = %app.name, version = release.version, "rollout failed: {reason}");
                self.restore(&app, &release).await;
                store
                    .set_release_status(&release.id, ReleaseStatus::Failed, Some(&reason))
                    .await?;
                Err(NodeError::RolloutFailed {
                    app: app.name,
                    version: release.version,
                    reason,
                })
            }
        }
    }

    /// Rolls a release out in the background (the builder's releases and
    /// rollbacks alike); a failure is logged, and recorded on the release.
    pub fn spawn_rollout(&self, release_id: String) {
        let agent = self.clone();
        tokio::spawn(async move {
            let work = {
                let agent = agent.clone();
                let id = release_id.clone();
                async move { agent.rollout(&id).await }
            };
            match hangar_core::supervise::guarded(work).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("{e}"),
                // Only this release fails; the app's lock went with the task.
                Err(why) => {
                    tracing::error!(release = %release_id, "rollout {why}");
                    let reason = format!("the rollout {why} (a bug in hangar)");
                    let store = &agent.inner.store;
                    if let Err(e) = store
                        .set_release_status(&release_id, ReleaseStatus::Failed, Some(&reason))
                        .await
                    {
                        warn!(release = %release_id, "recording the failure: {e}");
                    }
                }
            }
        });
    }

    /// The batches of a rollout; `Err` is the reason, worded for the user.
    async fn replace(&self, app: &App, release: &Release) -> Result<(), String> {
        let mut config = release_config(release)?;
        let store = &self.inner.store;
        if store
            .preview_of_app(&app.id)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            preview_defaults(&mut config);
        }
        let all = store
            .machines_for_app(&app.id)
            .await
            .map_err(|e| e.to_string())?;
        // Machines an interrupted attempt at this release left behind go.
        let leftovers: Vec<Machine> = all
            .iter()
            .filter(|m| m.release_id.as_deref() == Some(&release.id))
            .cloned()
            .collect();
        self.retire(app, leftovers, Duration::ZERO).await;
        // Deploy machines of other releases are replaced; those a crashed
        // rollout had cordoned serve again until their turn. Machines API
        // machines (no release) are not ours to touch.
        let mut old: Vec<Machine> = Vec::new();
        for m in all
            .into_iter()
            .filter(|m| m.release_id.as_ref().is_some_and(|r| *r != release.id))
        {
            if m.cordoned {
                store
                    .set_machine_cordoned(&m.id, false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            old.push(m);
        }
        // Those serving nothing leave first.
        old.sort_by_key(|m| m.state == MachineState::Started);
        let count = wanted(app, &config);
        let deploy = config.deploy;
        let gated = deploy.strategy != Strategy::Immediate;
        let batches = plan(&deploy, count);
        info!(
            app = %app.name,
            version = release.version,
            strategy = deploy.strategy.as_str(),
            count,
            ?batches,
            "rollout plan"
        );
        let mut new: Vec<Machine> = Vec::new();
        for (i, &size) in batches.iter().enumerate() {
            let batch = self.start_batch(app, release, &config, size).await?;
            new.extend(batch.iter().cloned());
            if gated {
                self.wait_all_passing(app, &batch, deploy.wait_timeout)
                    .await?;
                self.still_alive(app, &new).await?;
            }
            // The switch: this batch in, as many old machines out, in one
            // publication; the last batch takes every remaining old one.
            let out = if i + 1 == batches.len() {
                old.len()
            } else {
                (size as usize).min(old.len())
            };
            let leaving: Vec<Machine> = old.drain(..out).collect();
            self.set_gates(&batch, Some(super::Gate::Admitted));
            self.take_out(app, leaving, deploy.drain_timeout).await?;
        }
        if gated {
            self.still_alive(app, &new).await?;
        }
        Ok(())
    }

    /// After a failed rollout: the active release back to its count (its
    /// cordoned machines uncordoned, missing ones started), then the failed
    /// release's machines drained and destroyed.
    async fn restore(&self, app: &App, failed: &Release) {
        let store = &self.inner.store;
        if let Ok(Some(active)) = self.active_release(&app.id).await {
            if let Ok(machines) = store.machines_for_app(&app.id).await {
                for m in machines
                    .iter()
                    .filter(|m| m.cordoned && m.release_id.as_deref() == Some(&active.id))
                {
                    let _ = store.set_machine_cordoned(&m.id, false).await;
                }
            }
            match release_config(&active) {
                Ok(config) => {
                    let count = wanted(app, &config);
                    if let Err(e) = self.converge(app, &active, &config, count).await {
                        warn!(app = %app.name, "bringing v{} back to {count} machines: {e}", active.version);
                    }
                }
                Err(e) => warn!(app = %app.name, "v{}'s hangar.toml: {e}", active.version),
            }
        }
        let leaving: Vec<Machine> = match store.machines_for_app(&app.id).await {
            Ok(all) => all
                .into_iter()
                .filter(|m| m.release_id.as_deref() == Some(&failed.id))
                .collect(),
            Err(e) => {
                warn!(app = %app.name, "listing machines: {e}");
                return;
            }
        };
        let drain = release_config(failed)
            .map(|c| c.deploy.drain_timeout)
            .unwrap_or(DeployConfig::default().drain_timeout);
        if let Err(e) = self.take_out(app, leaving, drain).await {
            warn!(app = %app.name, "removing the failed release's machines: {e}");
        }
    }

    /// Starts one machine of the active release after a restart of hangar
    /// found none running, routed once it passes its checks.
    pub(super) async fn restart_release(&self, app: &App, release: &Release) -> Result<(), String> {
        let config = release_config(release)?;
        let lock = self.lock(format!("app:{}", app.id));
        let _guard = lock.lock().await;
        self.add_machines(app, release, &config, 1).await
    }

    /// Starts `n` more machines of the active `release` and routes them
    /// once they pass their checks; on failure they are destroyed.
    async fn add_machines(
        &self,
        app: &App,
        release: &Release,
        config: &AppConfig,
        n: u32,
    ) -> Result<(), String> {
        let batch = self.start_batch(app, release, config, n).await?;
        if let Err(e) = self
            .wait_all_passing(app, &batch, config.deploy.wait_timeout)
            .await
        {
            self.retire(app, batch, Duration::ZERO).await;
            return Err(e);
        }
        self.set_gates(&batch, None);
        self.publish_routes(&app.id)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sets the app's machine count (`hangar scale`) and brings its active
    /// release to it: new machines pass their checks before they are
    /// routed; surplus ones are drained, then destroyed.
    pub async fn scale(&self, app: &App, count: u32) -> Result<(), NodeError> {
        let lock = self.lock(format!("app:{}", app.id));
        let _guard = lock.lock().await;
        let active = self
            .active_release(&app.id)
            .await?
            .ok_or_else(|| NodeError::NotDeployed(app.name.clone()))?;
        let config = release_config(&active).map_err(|reason| NodeError::ScaleFailed {
            app: app.name.clone(),
            reason,
        })?;
        self.inner
            .store
            .set_app_scale(&app.id, Some(i64::from(count)))
            .await?;
        self.converge(app, &active, &config, count)
            .await
            .map_err(|reason| NodeError::ScaleFailed {
                app: app.name.clone(),
                reason,
            })
    }

    /// Brings `release` (the active one) to `count` machines.
    async fn converge(
        &self,
        app: &App,
        release: &Release,
        config: &AppConfig,
        count: u32,
    ) -> Result<(), String> {
        let mut mine: Vec<Machine> = self
            .inner
            .store
            .machines_for_app(&app.id)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|m| m.release_id.as_deref() == Some(&release.id))
            .collect();
        let have = mine.len() as u32;
        if have < count {
            info!(app = %app.name, have, count, "starting machines");
            self.add_machines(app, release, config, count - have)
                .await?;
        } else if have > count {
            info!(app = %app.name, have, count, "stopping surplus machines");
            // Those serving nothing go first, then the newest.
            mine.sort_by_key(|m| (m.state == MachineState::Started, -m.created_at));
            let leaving: Vec<Machine> = mine.drain(..(have - count) as usize).collect();
            self.take_out(app, leaving, config.deploy.drain_timeout)
                .await?;
        }
        Ok(())
    }

    /// Starts `n` machines of `release`, out of rotation until their gate
    /// is lifted. On failure the ones started are destroyed.
    async fn start_batch(
        &self,
        app: &App,
        release: &Release,
        config: &AppConfig,
        n: u32,
    ) -> Result<Vec<Machine>, String> {
        let limits = self.inner.cfg.limits;
        let default_guest = Guest {
            memory_mb: limits.memory_mb,
            cpus: limits.cpus.ceil().max(1.0) as u32,
            ..Guest::default()
        };
        let machine_config = config.machine_config(&release.image_digest, &default_guest);
        let mut batch = Vec::new();
        for _ in 0..n {
            let started = async {
                let m = self
                    .create(
                        app,
                        Some(release.id.clone()),
                        super::Naming::default(),
                        machine_config.clone(),
                        release.image_digest.clone(),
                        true,
                    )
                    .await?;
                // Gated before it runs, so no publication routes it early.
                self.set_gates(std::slice::from_ref(&m), Some(super::Gate::Pending));
                self.start_inner(&m.id, false, false).await
            }
            .await;
            match started {
                Ok(m) => batch.push(m),
                Err(e) => {
                    self.retire(app, batch, Duration::ZERO).await;
                    return Err(format!("starting a machine: {e}"));
                }
            }
        }
        Ok(batch)
    }

    /// Waits until every machine of `batch` passes its gating checks, all
    /// at once, each within `timeout`.
    async fn wait_all_passing(
        &self,
        app: &App,
        batch: &[Machine],
        timeout: Duration,
    ) -> Result<(), String> {
        let mut waits = tokio::task::JoinSet::new();
        for m in batch {
            let (agent, app, m) = (self.clone(), app.clone(), m.clone());
            waits.spawn(async move { agent.wait_passing(&app, &m, timeout).await });
        }
        let mut first_error = None;
        while let Some(done) = waits.join_next().await {
            let outcome = done.unwrap_or_else(|e| Err(format!("a check task failed: {e}")));
            if let Err(e) = outcome
                && first_error.is_none()
            {
                first_error = Some(e);
                // One failure fails the batch: stop waiting for the rest.
                waits.abort_all();
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs `m`'s gating checks until they all pass in one round, the
    /// machine exits (a crash loop is caught on its first exit), or
    /// `timeout` passes.
    async fn wait_passing(&self, app: &App, m: &Machine, timeout: Duration) -> Result<(), String> {
        let checks = gating_checks(m);
        let poll = checks
            .iter()
            .map(|c| c.interval)
            .min()
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(20), Duration::from_millis(200));
        let deadline = Instant::now() + timeout;
        let log = self.log_path(&app.name, &m.id);
        let mut last = String::from("no check has run yet");
        loop {
            if let Some(status) = self.exited(m).await {
                return Err(format!(
                    "machine {} exited with {status} before passing its checks; last output:\n{}",
                    m.id,
                    output_tail(&log)
                ));
            }
            let mut passed = true;
            for check in &checks {
                if let Err(e) = run_check(check, m.socket_addr()).await {
                    last = e;
                    passed = false;
                    break;
                }
            }
            if passed {
                self.mark_passing(m);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "machine {} did not pass its checks within {} s (last result: {last}); last output:\n{}",
                    m.id,
                    timeout.as_secs(),
                    output_tail(&log)
                ));
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Fails when a machine started by this rollout has exited or been
    /// restarted since (a release that crashes after passing its checks).
    async fn still_alive(&self, app: &App, machines: &[Machine]) -> Result<(), String> {
        for m in machines {
            if let Some(status) = self.exited(m).await {
                return Err(format!(
                    "machine {} exited with {status} after passing its checks; last output:\n{}",
                    m.id,
                    output_tail(&self.log_path(&app.name, &m.id))
                ));
            }
        }
        Ok(())
    }

    /// How `m`'s process ended, if it did (or was restarted) since `m` was
    /// read; None while it runs.
    async fn exited(&self, m: &Machine) -> Option<String> {
        let status = |code: Option<i64>| {
            code.map_or("an unknown status".to_owned(), |c| format!("status {c}"))
        };
        if let Some(pid) = m.pid
            && let ProcState::Exited(code) = driver::probe(pid as u32)
        {
            if code.is_some() {
                return Some(status(code));
            }
            // A container's status is known once the monitor has reaped
            // it: give it a moment to record it.
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(Some(cur)) = self.inner.store.machine(&m.id).await
                    && cur.state != MachineState::Started
                    && (cur.exit_code.is_some() || cur.oom_killed)
                {
                    return Some(if cur.oom_killed {
                        "an out-of-memory kill".to_owned()
                    } else {
                        status(cur.exit_code)
                    });
                }
            }
            return Some(status(code));
        }
        // The monitor may have reaped it (and the restart policy started it
        // again) first; the store then knows.
        match self.inner.store.machine(&m.id).await {
            Ok(Some(cur)) => {
                let restarted = cur.pid != m.pid || cur.restarts > m.restarts;
                (cur.state != MachineState::Started || restarted).then(|| {
                    if cur.oom_killed {
                        "an out-of-memory kill".to_owned()
                    } else {
                        status(cur.exit_code)
                    }
                })
            }
            Ok(None) => Some("its record gone".to_owned()),
            Err(_) => None,
        }
    }

    /// Takes `machines` out of the route (cordoned, in one publication
    /// with whatever else changed), drains and destroys them.
    async fn take_out(
        &self,
        app: &App,
        machines: Vec<Machine>,
        drain: Duration,
    ) -> Result<(), String> {
        for m in &machines {
            self.inner
                .store
                .set_machine_cordoned(&m.id, true)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.publish_routes(&app.id)
            .await
            .map_err(|e| e.to_string())?;
        self.retire(app, machines, drain).await;
        Ok(())
    }

    /// Waits (at most `drain`) until the proxy has no request in flight to
    /// any of `machines` (already out of the route), then destroys them
    /// (SIGTERM first: the app finishes what it still holds).
    pub(super) async fn retire(&self, app: &App, machines: Vec<Machine>, drain: Duration) {
        if machines.is_empty() {
            return;
        }
        let addrs: Vec<SocketAddr> = machines
            .iter()
            .filter(|m| m.state == MachineState::Started)
            .map(Machine::socket_addr)
            .collect();
        if !drain.is_zero() && !addrs.is_empty() {
            let started = Instant::now();
            let deadline = started + drain;
            // A request that looked the route up just before the switch
            // may still pick an old machine: give it a moment.
            let settle = Duration::from_millis(100).min(drain);
            loop {
                let busy: usize = match self.inner.activity.get() {
                    Some(activity) => addrs
                        .iter()
                        .map(|a| activity.in_flight_to(&app.name, *a))
                        .sum(),
                    None => 0,
                };
                let now = Instant::now();
                if busy == 0 && now >= started + settle {
                    break;
                }
                if now >= deadline {
                    warn!(app = %app.name, busy, "drain timeout: stopping machines with requests in flight");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut stops = tokio::task::JoinSet::new();
        for m in machines {
            let agent = self.clone();
            stops.spawn(async move {
                if let Err(e) = agent.stop_locked(&m, true).await {
                    warn!(machine = %m.id, "stopping a replaced machine: {e}");
                }
            });
        }
        while stops.join_next().await.is_some() {}
    }

    /// Sets (or with None lifts) the routing gate of `machines`.
    pub(super) fn set_gates(&self, machines: &[Machine], gate: Option<super::Gate>) {
        let mut gates = self.inner.gates.lock().unwrap_or_else(|p| p.into_inner());
        for m in machines {
            match gate {
                Some(g) => {
                    gates.insert(m.id.clone(), g);
                }
                None => {
                    gates.remove(&m.id);
                }
            }
        }
    }

    /// Lifts the gates of a release that became active.
    async fn clear_gates(&self, app_id: &str, release_id: &str) {
        let ids: HashSet<String> = match self.inner.store.machines_for_app(app_id).await {
            Ok(all) => all
                .into_iter()
                .filter(|m| m.release_id.as_deref() == Some(release_id))
                .map(|m| m.id)
                .collect(),
            Err(_) => return,
        };
        let mut gates = self.inner.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.retain(|id, _| !ids.contains(id));
    }

    /// The routing gate of a machine, if any.
    pub(super) fn gate(&self, machine_id: &str) -> Option<super::Gate> {
        let gates = self.inner.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.get(machine_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_core::app_config::MaxUnavailable;

    fn deploy(strategy: Strategy, max: MaxUnavailable) -> DeployConfig {
        DeployConfig {
            strategy,
            max_unavailable: max,
            ..DeployConfig::default()
        }
    }

    #[test]
    fn plans_by_strategy() {
        let one = MaxUnavailable::Count(1);
        assert_eq!(plan(&deploy(Strategy::Rolling, one), 3), vec![1, 1, 1]);
        assert_eq!(
            plan(&deploy(Strategy::Rolling, MaxUnavailable::Count(2)), 5),
            vec![2, 2, 1]
        );
        // Fly's default, a third, rounded up.
        assert_eq!(
            plan(&deploy(Strategy::Rolling, MaxUnavailable::default()), 6),
            vec![2, 2, 2]
        );
        assert_eq!(
            plan(&deploy(Strategy::Rolling, MaxUnavailable::Fraction(1.0)), 4),
            vec![4]
        );
        assert_eq!(plan(&deploy(Strategy::BlueGreen, one), 4), vec![4]);
        assert_eq!(plan(&deploy(Strategy::Immediate, one), 2), vec![2]);
        assert_eq!(
            plan(&deploy(Strategy::Canary, MaxUnavailable::Count(2)), 5),
            vec![1, 2, 2]
        );
        assert_eq!(plan(&deploy(Strategy::Canary, one), 1), vec![1]);
        assert!(plan(&deploy(Strategy::Rolling, one), 0).is_empty());
        let total: u32 = plan(&deploy(Strategy::Canary, MaxUnavailable::default()), 7)
            .iter()
            .sum();
        assert_eq!(total, 7);
    }

    #[test]
    fn a_release_without_hangar_toml_gets_the_defaults() {
        let mut r = Release {
            id: "rel_1".into(),
            app_id: "app_1".into(),
            version: 1,
            build_id: "bld_1".into(),
            image_digest: "sha256:x".into(),
            status: ReleaseStatus::Pending,
            error: None,
            created_at: 0,
            config: None,
            description: "deploy".into(),
            git_sha: None,
            git_message: None,
        };
        let c = release_config(&r).unwrap();
        assert_eq!(c.count, 1);
        assert_eq!(c.deploy.strategy, Strategy::Rolling);
        r.config = Some("[scale]\ncount = 3\n".into());
        assert_eq!(release_config(&r).unwrap().count, 3);
        r.config = Some("[deploy]\nstrategy = 1\n".into());
        assert!(release_config(&r).unwrap_err().contains("deploy.strategy"));
        // A preview scales to zero unless its file says how it stops.
        r.config = None;
        let mut c = release_config(&r).unwrap();
        preview_defaults(&mut c);
        let s = &c.services[0];
        assert_eq!(s.autostop, Some(hangar_core::machine::Autostop::Stop));
        assert_eq!(s.idle_timeout, Some(PREVIEW_IDLE));
        r.config =
            Some("[http_service]\ninternal_port = 8080\nauto_stop_machines = false\n".into());
        let mut c = release_config(&r).unwrap();
        preview_defaults(&mut c);
        assert_eq!(
            c.services[0].autostop,
            Some(hangar_core::machine::Autostop::Off)
        );
    }
}
