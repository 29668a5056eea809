//! Machine lifecycle and rollouts on this node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_core::route::RouteSink;
use hangar_core::status::{MachineState, ReleaseStatus};
use hangar_image::{ImageError, ImageStore};
use hangar_store::{App, Machine, Release, Store, StoreError};
use tracing::{info, warn};

use crate::driver::{self, Driver, DriverError, Limits, MachineSpec, ProcState};

/// Settings of the node agent.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Per-machine private directories (runc bundles).
    pub machines_dir: PathBuf,
    /// Machine output, `<app>/<machine>.log`; outlives the machines.
    pub logs_dir: PathBuf,
    /// cgroup limits given to every machine.
    pub limits: Limits,
    /// How long a new machine may take to accept TCP on `$PORT`.
    pub ready_timeout: Duration,
    /// SIGTERM → SIGKILL grace when stopping a machine.
    pub stop_grace: Duration,
    /// How long old machines keep running after the route switched away
    /// from them, so requests already sent to them finish.
    pub drain: Duration,
}

/// Errors of the node agent.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("release v{version} of {app} failed: {reason}")]
    RolloutFailed {
        app: String,
        version: i64,
        reason: String,
    },
}

/// The node agent; cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    /// Desired and observed state.
    store: Store,
    /// Where release images and their root filesystems come from.
    images: ImageStore,
    /// How machine processes are started and stopped.
    driver: Driver,
    /// Where the current upstreams of each app are published.
    routes: Arc<dyn RouteSink>,
    /// Settings.
    cfg: NodeConfig,
    /// One rollout (or destroy) per app at a time.
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises route publication so a slower, older computation never
    /// overwrites a newer one.
    publish: tokio::sync::Mutex<()>,
}

impl Agent {
    /// A new agent. Call [`Agent::reconcile`] once before serving.
    pub fn new(
        store: Store,
        images: ImageStore,
        driver: Driver,
        routes: Arc<dyn RouteSink>,
        cfg: NodeConfig,
    ) -> Agent {
        driver::become_subreaper();
        Agent {
            inner: Arc::new(Inner {
                store,
                images,
                driver,
                routes,
                cfg,
                app_locks: Mutex::new(HashMap::new()),
                publish: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The driver machines are started with.
    pub fn driver(&self) -> &Driver {
        &self.inner.driver
    }

    fn app_lock(&self, app_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .app_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        locks.entry(app_id.to_owned()).or_default().clone()
    }

    /// After a (re)start of hangar: re-adopts machines that kept running,
    /// records the ones that died, restarts what the active releases need,
    /// and publishes every app's routes. Returns releases whose rollout was
    /// interrupted, for the caller to resume.
    pub async fn reconcile(&self) -> Result<Vec<Release>, NodeError> {
        let store = &self.inner.store;
        for m in store.live_machines().await? {
            let alive = m.pid.is_some_and(|pid| self.is_ours(&m, pid as u32));
            if alive && m.driver == self.inner.driver.name() {
                info!(machine = %m.id, "re-adopted running machine");
                self.spawn_monitor(m.clone(), m.pid.unwrap_or_default() as u32);
            } else {
                warn!(machine = %m.id, "machine died while hangar was down");
                let _ = self.inner.driver.stop(&m.id, None, Duration::ZERO).await;
                store
                    .set_machine_state(&m.id, MachineState::Stopped, None, None)
                    .await?;
            }
        }
        for app in store.all_apps().await? {
            let active = store
                .releases_for_app(&app.id)
                .await?
                .into_iter()
                .find(|r| r.status == ReleaseStatus::Active);
            if let Some(release) = active {
                let running = store
                    .machines_for_app(&app.id)
                    .await?
                    .iter()
                    .any(|m| m.release_id == release.id && m.state == MachineState::Started);
                if !running {
                    info!(app = %app.name, version = release.version, "restarting the active release");
                    if let Err(e) = self.start_checked(&app, &release).await {
                        warn!(app = %app.name, "could not restart: {e}");
                    }
                }
            }
            self.publish_routes(&app.id).await?;
        }
        Ok(store.unfinished_releases().await?)
    }

    /// True when `pid` is alive and is this machine's process (not a reused pid).
    fn is_ours(&self, m: &Machine, pid: u32) -> bool {
        if driver::probe(pid) != ProcState::Running {
            return false;
        }
        match m.driver.as_str() {
            "runc" => std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .map(|c| c.contains(&m.id))
                .unwrap_or(false),
            _ => std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|exe| exe.starts_with(self.inner.images_root_hint()))
                .unwrap_or(false),
        }
    }

    /// Rolls out a release: start a machine, wait until it accepts
    /// connections, switch the route, drain and stop the old machines. On any
    /// failure the release is marked failed with the reason and the old
    /// machines keep serving.
    pub async fn rollout(&self, release_id: &str) -> Result<(), NodeError> {
        let store = &self.inner.store;
        let release = store
            .release(release_id)
            .await?
            .ok_or_else(|| NodeError::NotFound(format!("release {release_id}")))?;
        if release.status.is_terminal() {
            return Ok(());
        }
        let Some(app) = store.app(&release.app_id).await? else {
            return Err(NodeError::NotFound(format!("app of release {release_id}")));
        };
        let lock = self.app_lock(&app.id);
        let _guard = lock.lock().await;
        store
            .set_release_status(&release.id, ReleaseStatus::Deploying, None)
            .await?;
        info!(app = %app.name, version = release.version, "rolling out");
        let new = match self.start_checked(&app, &release).await {
            Ok(m) => m,
            Err(reason) => {
                store
                    .set_release_status(&release.id, ReleaseStatus::Failed, Some(&reason))
                    .await?;
                warn!(app = %app.name, version = release.version, "rollout failed: {reason}");
                return Err(NodeError::RolloutFailed {
                    app: app.name,
                    version: release.version,
                    reason,
                });
            }
        };
        store.activate_release(&app.id, &release.id).await?;
        self.publish_routes(&app.id).await?;
        info!(app = %app.name, version = release.version, machine = %new.id, "release is live");
        let old: Vec<Machine> = store
            .machines_for_app(&app.id)
            .await?
            .into_iter()
            .filter(|m| m.id != new.id)
            .collect();
        if !old.is_empty() {
            tokio::time::sleep(self.inner.cfg.drain).await;
        }
        for m in old {
            if let Err(e) = self.stop_machine(&m, true).await {
                warn!(machine = %m.id, "stopping old machine: {e}");
            }
        }
        Ok(())
    }

    /// Starts a machine of `release` and waits until it accepts connections
    /// on its port. On failure the machine is destroyed and the reason,
    /// worded for the user, returned.
    async fn start_checked(&self, app: &App, release: &Release) -> Result<Machine, String> {
        let m = self
            .start_machine(app, release)
            .await
            .map_err(|e| e.to_string())?;
        let pid = m.pid.unwrap_or_default() as u32;
        let log = self.log_path(&app.name, &m.id);
        let deadline = tokio::time::Instant::now() + self.inner.cfg.ready_timeout;
        let addr = SocketAddr::from(([127, 0, 0, 1], m.port as u16));
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(m);
            }
            let exited = match driver::probe(pid) {
                ProcState::Exited(code) => Some(code),
                ProcState::Running => None,
            };
            // The monitor may have reaped it first; the store then knows.
            let stored = self.inner.store.machine(&m.id).await.ok().flatten();
            let exited = exited.or(stored
                .filter(|s| s.state != MachineState::Started)
                .map(|s| s.exit_code));
            if let Some(code) = exited {
                let _ = self.stop_machine(&m, true).await;
                let status = code.map_or("an unknown status".to_owned(), |c| format!("status {c}"));
                return Err(format!(
                    "the app exited with {status} before listening on $PORT ({}); last output:\n{}",
                    m.port,
                    driver::tail_of(&log, 20)
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = self.stop_machine(&m, true).await;
                return Err(format!(
                    "the app did not listen on $PORT ({}) within {} s; last output:\n{}",
                    m.port,
                    self.inner.cfg.ready_timeout.as_secs(),
                    driver::tail_of(&log, 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Creates and starts one machine of `release`.
    async fn start_machine(&self, app: &App, release: &Release) -> Result<Machine, NodeError> {
        let inner = &self.inner;
        let images = inner.images.clone();
        let digest = release.image_digest.clone();
        let (rootfs, config) = tokio::task::spawn_blocking(move || {
            Ok::<_, ImageError>((images.rootfs(&digest)?, images.config(&digest)?))
        })
        .await
        .map_err(|e| NodeError::NotFound(format!("image task: {e}")))??;
        let port = free_port().map_err(|source| DriverError::Io {
            what: "finding a free port".into(),
            source,
        })?;
        let m = inner
            .store
            .create_machine(&app.id, &release.id, inner.driver.name(), port)
            .await?;
        let mut env = config.config.env.clone().unwrap_or_default();
        env.extend([
            format!("PORT={port}"),
            format!("HANGAR_APP={}", app.name),
            format!("HANGAR_MACHINE_ID={}", m.id),
            format!("HANGAR_RELEASE_VERSION={}", release.version),
        ]);
        let spec = MachineSpec {
            id: m.id.clone(),
            hostname: app.name.clone(),
            rootfs,
            dir: inner.cfg.machines_dir.join(&m.id),
            argv: config.argv(),
            env,
            cwd: config
                .config
                .working_dir
                .clone()
                .unwrap_or_else(|| "/".into()),
            user: parse_user(config.config.user.as_deref()),
            log: self.log_path(&app.name, &m.id),
            limits: inner.cfg.limits,
        };
        inner
            .store
            .set_machine_state(&m.id, MachineState::Starting, None, None)
            .await?;
        let pid = match inner.driver.start(&spec).await {
            Ok(pid) => pid,
            Err(e) => {
                inner
                    .store
                    .set_machine_state(&m.id, MachineState::Failed, None, None)
                    .await?;
                return Err(e.into());
            }
        };
        inner
            .store
            .set_machine_state(&m.id, MachineState::Started, Some(i64::from(pid)), None)
            .await?;
        let m = Machine {
            state: MachineState::Started,
            pid: Some(i64::from(pid)),
            ..m
        };
        self.spawn_monitor(m.clone(), pid);
        Ok(m)
    }

    /// Watches a machine's process; records an exit that nobody asked for
    /// and takes the machine out of its app's routes.
    fn spawn_monitor(&self, m: Machine, pid: u32) {
        let agent = self.clone();
        tokio::spawn(async move {
            let code = loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let ProcState::Exited(code) = driver::probe(pid) {
                    break code;
                }
            };
            // A stop on purpose sets `stopping` before signalling, so an exit
            // seen while the machine is still `started` is one nobody asked for.
            let store = &agent.inner.store;
            match store.machine(&m.id).await {
                Ok(Some(cur))
                    if matches!(cur.state, MachineState::Started | MachineState::Starting) => {}
                _ => return,
            }
            warn!(machine = %m.id, ?code, "machine exited");
            if let Err(e) = store
                .set_machine_state(&m.id, MachineState::Stopped, None, code)
                .await
            {
                warn!(machine = %m.id, "recording exit: {e}");
            }
            if let Err(e) = agent.publish_routes(&m.app_id).await {
                warn!(machine = %m.id, "publishing routes: {e}");
            }
        });
    }

    /// Stops a machine (SIGTERM, grace, SIGKILL); `destroy` also removes its
    /// private directory (its log is kept).
    async fn stop_machine(&self, m: &Machine, destroy: bool) -> Result<(), NodeError> {
        let inner = &self.inner;
        // Recorded before any signal: the monitor then knows the exit is ours.
        inner
            .store
            .set_machine_state(&m.id, MachineState::Stopping, m.pid, None)
            .await?;
        let driver = if m.driver == inner.driver.name() {
            inner.driver.clone()
        } else {
            Driver::Process
        };
        driver
            .stop(&m.id, m.pid.map(|p| p as u32), inner.cfg.stop_grace)
            .await?;
        let state = if destroy {
            let _ = std::fs::remove_dir_all(inner.cfg.machines_dir.join(&m.id));
            MachineState::Destroyed
        } else {
            MachineState::Stopped
        };
        inner
            .store
            .set_machine_state(&m.id, state, None, None)
            .await?;
        Ok(())
    }

    /// Publishes the app's started machines of its active release.
    pub async fn publish_routes(&self, app_id: &str) -> Result<(), NodeError> {
        let _serial = self.inner.publish.lock().await;
        let store = &self.inner.store;
        let Some(app) = store.app(app_id).await? else {
            return Ok(());
        };
        let active = store
            .releases_for_app(app_id)
            .await?
            .into_iter()
            .find(|r| r.status == ReleaseStatus::Active);
        let upstreams = match active {
            Some(release) => store
                .machines_for_app(app_id)
                .await?
                .into_iter()
                .filter(|m| m.release_id == release.id && m.state == MachineState::Started)
                .map(|m| SocketAddr::from(([127, 0, 0, 1], m.port as u16)))
                .collect(),
            None => Vec::new(),
        };
        self.inner.routes.set_route(&app.name, upstreams);
        Ok(())
    }

    /// Stops and destroys all of the app's machines and removes its route.
    /// The caller deletes the app's rows afterwards.
    pub async fn destroy_app(&self, app: &App) -> Result<(), NodeError> {
        let lock = self.app_lock(&app.id);
        let _guard = lock.lock().await;
        for m in self.inner.store.machines_for_app(&app.id).await? {
            self.stop_machine(&m, true).await?;
        }
        self.inner.routes.remove_app(&app.name);
        let _ = std::fs::remove_dir_all(self.inner.cfg.logs_dir.join(&app.name));
        Ok(())
    }

    /// Where a machine's output goes.
    pub fn log_path(&self, app: &str, machine_id: &str) -> PathBuf {
        self.inner
            .cfg
            .logs_dir
            .join(app)
            .join(format!("{machine_id}.log"))
    }
}

impl Inner {
    /// Process-driver machines run binaries from the image store's rootfs
    /// tree; this is how an adopted pid is recognised as ours.
    fn images_root_hint(&self) -> PathBuf {
        self.images.rootfs_root()
    }
}

/// uid:gid from an image's `User` (numeric only); `nobody` otherwise.
fn parse_user(user: Option<&str>) -> (u32, u32) {
    let nobody = (65534, 65534);
    let Some(user) = user else { return nobody };
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    match (u.parse(), g.parse()) {
        (Ok(u), Ok(g)) => (u, g),
        _ => nobody,
    }
}

/// A TCP port nothing listens on right now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_parse_numerically() {
        assert_eq!(parse_user(Some("1000:1001")), (1000, 1001));
        assert_eq!(parse_user(Some("0")), (0, 0));
        assert_eq!(parse_user(Some("www-data")), (65534, 65534));
        assert_eq!(parse_user(None), (65534, 65534));
    }
}
