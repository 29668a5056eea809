//! Scale to zero: waking an app's stopped or suspended machine for a
//! request (the proxy's [`Waker`]), and the idle loop that stops or
//! suspends machines nobody has asked anything of for a while.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_core::machine::Autostop;
use hangar_core::route::{Activity, WakeFuture, Waker};
use hangar_core::status::MachineState;
use hangar_store::Machine;
use tracing::{error, info, warn};

use super::{Agent, Halt, NodeError, service};

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
        work: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
    ) -> WakeFuture {
        match &self.inner.runtime {
            Some(runtime) => {
                let task = runtime.spawn(work);
                Box::pin(async move {
                    task.await
                        .unwrap_or_else(|e| Err(format!("the wake did not finish: {e}")))
                })
            }
            None => Box::pin(work),
        }
    }

    async fn wake_app(&self, app_name: &str, another: bool) -> Result<(), String> {
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
                .map_err(|e| e.to_string());
        }
        let autostart = |m: &&Machine| service(m).is_none_or(|s| s.autostart != Some(false));
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
            .ok_or("none of its machines can be started (none is stopped with autostart on)")?;
        let started = Instant::now();
        let m = self
            .start_inner(&candidate.id, false)
            .await
            .map_err(|e| e.to_string())?;
        // The machine's own address: only it can accept there.
        let addr = m.socket_addr();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "machine {} did not accept connections on $PORT within 30 s",
                    m.id
                ));
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
