//! Scale to zero: waking an app's stopped or suspended machine for a
//! request (the proxy's [`Waker`]), and the idle loop that stops or
//! suspends machines nobody has asked anything of for a while.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_core::machine::Autostop;
use hangar_core::machine::RestartPolicy;
use hangar_core::route::{Activity, WakeError, WakeFuture, Waker};
use hangar_core::status::MachineState;
use hangar_store::Machine;
use tracing::{error, info, warn};

use super::{Agent, Halt, NodeError, service};

/// Request-driven starts an app may make at once (a burst), and how
/// often one more is allowed: enough for real traffic after an idle stop,
/// too few for anonymous requests to keep a crashing or quickly-exiting
/// app cycling through starts.
const WAKE_BURST: f64 = 10.0;
const WAKE_REFILL: Duration = Duration::from_secs(3);

/// A token bucket of request-driven starts of one app.
pub(super) struct WakeBudget {
    tokens: f64,
    at: Instant,
}

impl WakeBudget {
    fn new(now: Instant) -> Self {
        WakeBudget {
            tokens: WAKE_BURST,
            at: now,
        }
    }

    /// Takes one start, or says how long until one is allowed.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let refilled =
            now.saturating_duration_since(self.at).as_secs_f64() / WAKE_REFILL.as_secs_f64();
        self.tokens = (self.tokens + refilled).min(WAKE_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) * WAKE_REFILL.as_secs_f64();
            Err(Duration::from_secs_f64(wait.ceil()))
        }
    }
}

/// Why a request may not start `m`, if its last exit was a crash (a
/// non-zero code or the OOM killer) and its restart policy has no retry
/// left; worded for the client, naming nothing internal. It holds until
/// the owner deploys, starts or restarts it (those reset the count and
/// the exit).
pub(super) fn gave_up(m: &Machine) -> Option<String> {
    if m.state != MachineState::Stopped {
        return None;
    }
    let code = m.exit_code?;
    if code == 0 && !m.oom_killed {
        return None;
    }
    let (policy, max_retries) = m.config.restart();
    let retries_left = match policy {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure | RestartPolicy::Always => m.restarts < i64::from(max_retries),
    };
    if retries_left {
        return None;
    }
    let how = if m.oom_killed {
        "was killed for using more memory than it has".to_owned()
    } else {
        format!("exited with code {code}")
    };
    Some(format!(
        "its machine {how} and its restart policy gave up; its owner must deploy, start or restart it"
    ))
}

impl Waker for Agent {
    fn wake(&self, app: &str) -> WakeFuture {
        let (agent, app) = (self.clone(), app.to_owned());
        self.on_own_runtime(async move { agent.wake_app(&app, false).await })
    }

    fn wake_another(&self, app: &str) -> WakeFuture {
        let (agent, app) = (self.clone(), app.to_owned());
        self.on_own_runtime(async move { agent.wake_app(&app, true).await })
    }
}

impl Agent {
    /// Starts (or resumes) one of the app's stopped machines for a request
    /// and returns once it accepts connections and is routed.
    /// Runs `work` on the agent's runtime (see `Inner::runtime`) and
    /// resolves to its outcome wherever it is awaited.
    fn on_own_runtime(
        &self,
        work: impl std::future::Future<Output = Result<(), WakeError>> + Send + 'static,
    ) -> WakeFuture {
        match &self.inner.runtime {
            Some(runtime) => {
                let task = runtime.spawn(work);
                Box::pin(async move {
                    task.await.unwrap_or_else(|e| {
                        Err(WakeError::Failed(format!("the wake did not finish: {e}")))
                    })
                })
            }
            None => Box::pin(work),
        }
    }

    async fn wake_app(&self, app_name: &str, another: bool) -> Result<(), WakeError> {
        let store = &self.inner.store;
        let app = store
            .app_by_name(app_name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the app no longer exists")?;
        let lock = self.lock(format!("wake:{}", app.id));
        let _guard = lock.lock().await;
        let active = self
            .active_release(&app.id)
            .await
            .map_err(|e| e.to_string())?
            .map(|r| r.id);
        let machines: Vec<Machine> = store
            .machines_for_app(&app.id)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|m| self.routable(m, active.as_ref()))
            .collect();
        if !another && machines.iter().any(|m| m.state == MachineState::Started) {
            // Woken meanwhile by someone else.
            return self
                .publish_routes(&app.id)
                .await
                .map_err(|e| WakeError::Failed(e.to_string()));
        }
        // Autostart on, and not crashed with its restart policy spent: a
        // request never restarts what the policy gave up on.
        let autostart = |m: &&Machine| {
            service(m).is_none_or(|s| s.autostart != Some(false)) && gave_up(m).is_none()
        };
        // A suspended machine resumes in milliseconds: prefer it.
        let candidate = machines
            .iter()
            .filter(autostart)
            .find(|m| m.state == MachineState::Suspended)
            .or_else(|| {
                machines
                    .iter()
                    .filter(autostart)
                    .find(|m| matches!(m.state, MachineState::Stopped | MachineState::Created))
            })
            .ok_or_else(|| match machines.iter().find_map(gave_up) {
                Some(why) => WakeError::Refused(why),
                None => WakeError::Failed(
                    "none of its machines can be started (none is stopped with autostart on)"
                        .into(),
                ),
            })?;
        // Resuming costs little; a start is rate-limited per app.
        if candidate.state != MachineState::Suspended {
            self.take_wake(&app.id)?;
        }
        let started = Instant::now();
        let m = self
            .start_inner(&candidate.id, false, true)
            .await
            .map_err(|e| match e {
                NodeError::GaveUp { why, .. } => WakeError::Refused(why),
                e => WakeError::Failed(e.to_string()),
            })?;
        // The machine's own address: only it can accept there.
        let addr = m.socket_addr();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if tokio::time::Instant::now() >= deadline {
                return Err(WakeError::Failed(format!(
                    "machine {} did not accept connections on $PORT within 30 s",
                    m.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.publish_routes(&app.id)
            .await
            .map_err(|e| e.to_string())?;
        info!(app = %app.name, machine = %m.id, ms = started.elapsed().as_millis() as u64, "woke for a request");
        Ok(())
    }

    /// Every `interval`, stops or suspends machines whose app has had no
    /// request for their service's idle timeout, keeping
    /// `min_machines_running` of each app started.
    pub fn spawn_idle_loop(
        &self,
        activity: Arc<dyn Activity>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let agent = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => return,
                }
                // A pass that panics is that pass lost, not the loop.
                let pass = {
                    let agent = agent.clone();
                    let activity = activity.clone();
                    async move { agent.idle_pass(&*activity).await }
                };
                match hangar_core::supervise::guarded(pass).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("idle check: {e}"),
                    Err(why) => error!("idle check {why}"),
                }
            }
        });
    }

    /// Takes one request-driven start from the app's budget, or says when
    /// the next is allowed.
    fn take_wake(&self, app_id: &str) -> Result<(), WakeError> {
        let mut budgets = self
            .inner
            .wake_budgets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let budget = budgets
            .entry(app_id.to_owned())
            .or_insert_with(|| WakeBudget::new(now));
        budget.take(now).map_err(|retry_after| {
            warn!(
                app = app_id,
                "wake refused: the app was started too often lately"
            );
            WakeError::Throttled { retry_after }
        })
    }

    async fn idle_pass(&self, activity: &dyn Activity) -> Result<(), NodeError> {
        let store = &self.inner.store;
        // One query for the apps that have a started machine that may
        // stop: with a thousand apps scaled to zero, a pass costs two
        // queries, not two per app (it shares the store with every wake).
        let candidates: std::collections::HashSet<String> = store
            .live_machines()
            .await?
            .into_iter()
            .filter(|m| {
                m.state == MachineState::Started
                    && service(m).is_some_and(|s| {
                        matches!(s.autostop, Some(Autostop::Stop) | Some(Autostop::Suspend))
                    })
            })
            .map(|m| m.app_id)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        for app in store.all_apps().await? {
            if !candidates.contains(&app.id) {
                continue;
            }
            let active = self.active_release(&app.id).await?.map(|r| r.id);
            let started: Vec<Machine> = store
                .machines_for_app(&app.id)
                .await?
                .into_iter()
                .filter(|m| m.state == MachineState::Started && self.routable(m, active.as_ref()))
                .collect();
            let stoppable: Vec<&Machine> = started
                .iter()
                .filter(|m| {
                    service(m).is_some_and(|s| {
                        matches!(s.autostop, Some(Autostop::Stop) | Some(Autostop::Suspend))
                    })
                })
                .collect();
            if stoppable.is_empty() {
                continue;
            }
            let Some(idle) = activity.idle_for(&app.name) else {
                continue; // requests in flight
            };
            let keep = stoppable
                .iter()
                .filter_map(|m| service(m).and_then(|s| s.min_machines_running))
                .max()
                .unwrap_or(0) as usize;
            let mut running = started.len();
            for m in stoppable {
                if running <= keep {
                    break;
                }
                let Some(s) = service(m) else { continue };
                if idle < s.idle_timeout() {
                    continue;
                }
                // One already on its way down counts as down.
                running -= 1;
                if self.is_being_stopped(&m.id) {
                    continue;
                }
                info!(app = %app.name, machine = %m.id, idle_ms = idle.as_millis() as u64, "idle: {:?}", s.autostop);
                // In the background, each with a deadline: one tenant's long
                // stop grace never holds up the pass for everyone else.
                let halt = if s.autostop == Some(Autostop::Suspend) {
                    Halt::Suspend
                } else {
                    Halt::Stop
                };
                self.spawn_halt(m.clone(), halt);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_limited_to_a_burst_then_one_per_refill() {
        let t0 = Instant::now();
        let mut b = WakeBudget::new(t0);
        for _ in 0..WAKE_BURST as usize {
            assert_eq!(b.take(t0), Ok(()));
        }
        assert_eq!(b.take(t0), Err(WAKE_REFILL), "the burst is spent");
        assert!(b.take(t0 + WAKE_REFILL / 2).is_err());
        assert_eq!(b.take(t0 + WAKE_REFILL), Ok(()), "one more per refill");
        assert!(b.take(t0 + WAKE_REFILL).is_err());
        // A long quiet spell refills only up to the burst.
        let later = t0 + WAKE_REFILL * 1000;
        for _ in 0..WAKE_BURST as usize {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }
}
