//! Machine lifecycle and rollouts on this node.
//!
//! Every state change goes through the store first, then the driver: a
//! crash in between leaves a state `reconcile` knows how to finish.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_core::machine::{MachineConfig, RestartPolicy};
use hangar_core::route::{Activity, Limits as RouteLimits, RouteSink};
use hangar_core::status::{MachineState, ReleaseStatus};
use hangar_image::{ImageError, ImageStore};
use hangar_store::{App, Machine, NewMachine, Release, Store, StoreError};
use tracing::{error, info, warn};

/// What a background halt does to a machine ([`Agent::spawn_halt`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Halt {
    /// `stop` with its stop_config (the idle loop's autostop).
    Stop,
    /// Freeze (the idle loop's autosuspend).
    Suspend,
    /// Finish a stop or destroy a crash interrupted (reconcile).
    Finish { destroy: bool },
}

/// Time runc may take beyond a stop's grace before a background stop is
/// given up on (and logged as an error).
const STOP_MARGIN: Duration = Duration::from_secs(30);

use crate::driver::{self, Driver, DriverError, Limits, ProcState};
use crate::network::{Network, NetworkError};

mod health;
mod launch;
mod logs;
mod net;
mod procs;
mod rollout;
mod wake;

pub use health::{CheckReport, HealthReport, HealthStatus};
pub use logs::LogLimits;
use rollout::Gate;
pub use rollout::plan;

/// What a new machine is called: its name, and the region it was asked
/// for (default: this node's).
#[derive(Debug, Clone, Default)]
pub struct Naming {
    pub name: Option<String>,
    pub region: Option<String>,
}

/// Settings of the node agent.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Per-machine private directories (runc bundles).
    pub machines_dir: PathBuf,
    /// Machine output, `<app>/<machine>.log`; outlives the machines.
    pub logs_dir: PathBuf,
    /// Limits of machines made by deploys (Machines API machines bring
    /// their own `guest`); `pids` applies to every machine.
    pub limits: Limits,
    /// SIGTERM → SIGKILL grace when stopping a deploy machine.
    pub stop_grace: Duration,
    /// The region label of this node.
    pub region: String,
    /// Where machines' resources files go (a tmpfs such as
    /// `/run/hangar/<node>`: credentials and secrets are never at rest).
    pub run_dir: PathBuf,
    /// Where runc machines see the image store's unpacked root filesystems
    /// (a bind mount outside the private data dir; `None`: where the store
    /// keeps them).
    pub rootfs_view: Option<PathBuf>,
    /// Machine logs: bytes kept per app, bytes a second per machine
    /// (`None`: neither, no keeper).
    pub log_limits: Option<LogLimits>,
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
    #[error("machine network: {0}")]
    Network(#[from] NetworkError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("release v{version} of {app} failed: {reason}")]
    RolloutFailed {
        app: String,
        version: i64,
        reason: String,
    },
    /// The machine is in a state the action does not apply to.
    #[error("machine {id} is {state}; cannot {action} it{hint}")]
    InvalidState {
        id: String,
        state: MachineState,
        action: &'static str,
        hint: &'static str,
    },
    /// The machine asks for GPUs this node does not have.
    #[error("config.guest.gpus: {wanted} GPU(s) requested but this node has {available} free")]
    NoGpu { wanted: u32, available: u32 },
    /// The app's resources could not be handed to the machine.
    #[error("resources: {0}")]
    Resources(String),
    /// The app has no live release to scale or roll back from.
    #[error("{0} has no live release; deploy it first")]
    NotDeployed(String),
    /// New machines of a scale-up did not pass their checks.
    #[error("scaling {app} failed: {reason}")]
    ScaleFailed { app: String, reason: String },
    /// A request found the machine crashed with its restart policy spent.
    #[error("machine {id}: {why}")]
    GaveUp { id: String, why: String },
}

/// The node agent; cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    /// Desired and observed state.
    store: Store,
    /// Where images and their root filesystems come from.
    images: ImageStore,
    /// How machine processes are started and stopped.
    driver: Driver,
    /// Machines' own network namespaces, addresses and firewall (runc);
    /// `None`: machines share the host's network (process driver).
    network: Option<Arc<Network>>,
    /// The gates machines reach their resources through.
    resource_gates: net::Gates,
    /// Where the current upstreams of each app are published.
    routes: Arc<dyn RouteSink>,
    /// Settings.
    cfg: NodeConfig,
    /// NVIDIA GPUs on this node, detected at start.
    gpus: u32,
    /// Which GPU indexes each running machine holds.
    gpu_holders: Mutex<HashMap<String, Vec<u32>>>,
    /// One operation at a time per app (`app:<id>`: rollouts, destroy) and
    /// per machine (`mch:<id>`: start, stop, suspend, destroy).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Serialises route publication so a slower, older computation never
    /// overwrites a newer one.
    publish: tokio::sync::Mutex<()>,
    /// The runtime the agent was created on. Wakes arrive from the proxy's
    /// own worker threads; their work (store, runc, monitors) runs here so
    /// nothing the agent spawns lives on a proxy worker.
    runtime: Option<tokio::runtime::Handle>,
    /// Declared resources and secrets, handed to machines at start.
    resources: std::sync::OnceLock<hangar_resources::Resources>,
    /// Routing gates of deploy machines that rollouts and scale-ups have
    /// started but not yet put in rotation (see [`Gate`]). In memory: after
    /// a restart an interrupted rollout starts over.
    gates: Mutex<HashMap<String, Gate>>,
    /// Latest health check results per started machine.
    health: Mutex<HashMap<String, health::MachineHealth>>,
    /// The proxy's request counts, for draining replaced machines (set
    /// once at start; without it a drain waits its settle time only).
    activity: std::sync::OnceLock<Arc<dyn Activity>>,
    /// Machines a background stop (idle loop, reconcile) is working on, so
    /// the next pass does not start a second one.
    stopping: Mutex<std::collections::HashSet<String>>,
    /// Per app, how many request-driven starts it may still make now
    /// ([`wake::WakeBudget`]).
    wake_budgets: Mutex<HashMap<String, wake::WakeBudget>>,
}

impl Agent {
    /// A new agent. Call [`Agent::reconcile`] once before serving.
    pub fn new(
        store: Store,
        images: ImageStore,
        driver: Driver,
        routes: Arc<dyn RouteSink>,
        cfg: NodeConfig,
        network: Option<Arc<Network>>,
    ) -> Agent {
        driver::become_subreaper();
        Agent {
            inner: Arc::new(Inner {
                store,
                images,
                driver,
                network,
                resource_gates: net::Gates::default(),
                routes,
                cfg,
                gpus: driver::detect_gpus(),
                gpu_holders: Mutex::new(HashMap::new()),
                locks: Mutex::new(HashMap::new()),
                publish: tokio::sync::Mutex::new(()),
                runtime: tokio::runtime::Handle::try_current().ok(),
                resources: std::sync::OnceLock::new(),
                gates: Mutex::new(HashMap::new()),
                health: Mutex::new(HashMap::new()),
                activity: std::sync::OnceLock::new(),
                stopping: Mutex::new(Default::default()),
                wake_budgets: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Lets rollouts see the proxy's in-flight requests per machine, so a
    /// replaced machine is stopped only once it has answered them.
    pub fn set_activity(&self, activity: Arc<dyn Activity>) {
        let _ = self.inner.activity.set(activity);
    }

    /// The driver machines are started with.
    pub fn driver(&self) -> &Driver {
        &self.inner.driver
    }

    /// NVIDIA GPUs this node advertises.
    pub fn gpus(&self) -> u32 {
        self.inner.gpus
    }

    /// The region label of this node.
    pub fn region(&self) -> &str {
        &self.inner.cfg.region
    }

    fn lock(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key).or_default().clone()
    }

    /// After a (re)start of hangar: re-adopts machines that kept running,
    /// records the ones that died (applying their restart policy), restarts
    /// what the active releases need, and publishes every app's routes.
    /// Returns releases whose rollout was interrupted, for the caller to resume.
    pub async fn reconcile(&self) -> Result<Vec<Release>, NodeError> {
        let store = &self.inner.store;
        self.reconcile_networks().await?;
        for m in store.live_machines().await? {
            let alive = m.pid.is_some_and(|pid| self.is_ours(&m, pid as u32));
            if alive && m.driver == self.inner.driver.name() {
                info!(machine = %m.id, state = %m.state, "re-adopted running machine");
                // An interrupted transition is finished in the direction it was going.
                match m.state {
                    MachineState::Stopping | MachineState::Destroying => {
                        // Its grace is the tenant's (up to 5 minutes): hangar
                        // serves meanwhile instead of waiting for it here.
                        let destroy = m.state == MachineState::Destroying;
                        self.spawn_halt(m, Halt::Finish { destroy });
                        continue;
                    }
                    MachineState::Suspending => {
                        // Hangar may have died before the freeze: the row
                        // says suspended only once the processes are frozen.
                        let driver = &self.inner.driver;
                        let state = if driver.is_frozen(&m.id) == Some(true) {
                            MachineState::Suspended
                        } else {
                            match driver.pause(&m.id, pid_of(&m)).await {
                                Ok(()) => MachineState::Suspended,
                                Err(e) => {
                                    warn!(machine = %m.id, "finishing an interrupted suspend: {e}; it keeps running");
                                    MachineState::Started
                                }
                            }
                        };
                        info!(machine = %m.id, %state, "finished an interrupted suspend");
                        store.set_machine_state(&m.id, state, m.pid, None).await?;
                    }
                    MachineState::Starting => {
                        store
                            .set_machine_state(&m.id, MachineState::Started, m.pid, None)
                            .await?;
                    }
                    _ => {}
                }
                if let Err(e) = self.regrant(&m).await {
                    warn!(machine = %m.id, "re-granting its resources: {e}");
                }
                self.spawn_monitor(m.clone(), m.pid.unwrap_or_default() as u32);
            } else {
                warn!(machine = %m.id, "machine died while hangar was down");
                let oom = self.inner.driver.reap(&m.id).await;
                let final_state = m.state;
                store.record_exit(&m.id, None, oom).await?;
                if final_state == MachineState::Destroying {
                    store
                        .set_machine_state(&m.id, MachineState::Destroyed, None, None)
                        .await?;
                } else if m.release_id.is_none() && final_state == MachineState::Started {
                    self.after_exit(m, None, oom).await;
                }
            }
        }
        self.collect_leftovers().await;
        for app in store.all_apps().await? {
            if let Some(release) = self.active_release(&app.id).await? {
                let running = store.machines_for_app(&app.id).await?.iter().any(|m| {
                    m.release_id.as_deref() == Some(&release.id)
                        && matches!(m.state, MachineState::Started | MachineState::Suspended)
                });
                if !running {
                    info!(app = %app.name, version = release.version, "restarting the active release");
                    if let Err(e) = self.restart_release(&app, &release).await {
                        warn!(app = %app.name, "could not restart: {e}");
                    }
                }
            }
            self.publish_routes(&app.id).await?;
        }
        Ok(store.unfinished_releases().await?)
    }

    /// What a crash can leave behind that no machine row owns: runc
    /// containers of machines that are stopped, destroyed or unknown (a
    /// kill between the store write and the delete), and the private and
    /// resources directories of destroyed machines. Each is logged.
    async fn collect_leftovers(&self) {
        let inner = &self.inner;
        let (live, kept) = match (
            inner.store.live_machines().await,
            inner.store.undestroyed_machines().await,
        ) {
            (Ok(live), Ok(kept)) => (live, kept),
            (Err(e), _) | (_, Err(e)) => {
                warn!("collecting leftovers: {e}");
                return;
            }
        };
        let live: std::collections::HashSet<String> = live.into_iter().map(|m| m.id).collect();
        let kept: std::collections::HashSet<String> = kept.into_iter().map(|m| m.id).collect();
        match inner.driver.containers().await {
            Ok(containers) => {
                for id in containers.into_iter().filter(|c| !live.contains(c)) {
                    warn!(container = %id, "removing a container no running machine owns");
                    if let Err(e) = inner.driver.remove_orphan(&id).await {
                        warn!(container = %id, "removing it: {e}");
                    }
                }
            }
            Err(e) => warn!("listing containers: {e}"),
        }
        // A stopped machine keeps its private directory; only a running
        // one has a resources file (its secrets, unsealed).
        for (dir, owners) in [
            (&inner.cfg.machines_dir, &kept),
            (&inner.cfg.run_dir, &live),
        ] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("mch_") && !owners.contains(&name) {
                    warn!(path = %e.path().display(), "removing a directory no machine owns");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }

    async fn active_release(&self, app_id: &str) -> Result<Option<Release>, NodeError> {
        Ok(self
            .inner
            .store
            .releases_for_app(app_id)
            .await?
            .into_iter()
            .find(|r| r.status == ReleaseStatus::Active))
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
                .map(|exe| exe.starts_with(self.inner.images.rootfs_root()))
                .unwrap_or(false),
        }
    }

    // ---- machines ----

    /// Creates a machine (and launches it unless `skip_launch`).
    pub async fn create(
        &self,
        app: &App,
        release_id: Option<String>,
        naming: Naming,
        config: MachineConfig,
        image_digest: String,
        skip_launch: bool,
    ) -> Result<Machine, NodeError> {
        self.check_gpus(&config)?;
        let (address, port) = self.new_address(&config)?;
        let m = self
            .inner
            .store
            .create_machine(NewMachine {
                app_id: app.id.clone(),
                release_id,
                name: naming.name,
                // Placed on this node whatever was asked; the request is
                // kept and shown, as a client that chose it expects.
                region: naming
                    .region
                    .unwrap_or_else(|| self.inner.cfg.region.clone()),
                config,
                image_digest,
                driver: self.inner.driver.name().to_owned(),
                port,
                address,
            })
            .await;
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                self.forget_address(address);
                return Err(e.into());
            }
        };
        if skip_launch {
            // Not started, but the proxy knows the app: a request wakes it.
            if m.release_id.is_none() {
                self.publish_routes(&m.app_id).await?;
            }
            return Ok(m);
        }
        let lock = self.lock(format!("mch:{}", m.id));
        let _guard = lock.lock().await;
        let m = self.launch(&m, app).await?;
        if m.release_id.is_none() {
            self.publish_routes(&m.app_id).await?;
        }
        Ok(m)
    }

    async fn load(&self, id: &str) -> Result<(Machine, App), NodeError> {
        let store = &self.inner.store;
        let m = store
            .machine(id)
            .await?
            .filter(|m| m.state != MachineState::Destroyed)
            .ok_or_else(|| NodeError::NotFound(format!("machine {id}")))?;
        let app = store
            .app(&m.app_id)
            .await?
            .ok_or_else(|| NodeError::NotFound(format!("app of machine {id}")))?;
        Ok((m, app))
    }

    /// Starts a created or stopped machine, or resumes a suspended one.
    /// Starting a started machine is a no-op.
    pub async fn start(&self, id: &str) -> Result<Machine, NodeError> {
        self.start_inner(id, true, false).await
    }

    /// [`Agent::start`]; `publish` false leaves the route to the caller
    /// (a wake publishes only once the machine accepts connections).
    /// `for_a_request`: a wake, which neither resets the restart policy's
    /// count (requests must not keep a crash loop going) nor starts a
    /// machine whose policy gave up.
    async fn start_inner(
        &self,
        id: &str,
        publish: bool,
        for_a_request: bool,
    ) -> Result<Machine, NodeError> {
        let lock = self.lock(format!("mch:{id}"));
        let _guard = lock.lock().await;
        let (m, app) = self.load(id).await?;
        match m.state {
            MachineState::Started => Ok(m),
            MachineState::Suspended => {
                self.inner.driver.resume(&m.id, pid_of(&m)).await?;
                self.inner
                    .store
                    .set_machine_state(&m.id, MachineState::Started, m.pid, None)
                    .await?;
                if publish {
                    self.publish_routes(&m.app_id).await?;
                }
                Ok(Machine {
                    state: MachineState::Started,
                    ..m
                })
            }
            MachineState::Created | MachineState::Stopped | MachineState::Failed => {
                if for_a_request {
                    if let Some(why) = wake::gave_up(&m) {
                        return Err(NodeError::GaveUp { id: m.id, why });
                    }
                } else {
                    self.inner.store.set_machine_restarts(&m.id, 0).await?;
                }
                let m = self.launch(&m, &app).await?;
                if publish {
                    self.publish_routes(&m.app_id).await?;
                }
                Ok(m)
            }
            state => Err(NodeError::InvalidState {
                id: m.id,
                state,
                action: "start",
                hint: "; wait for it to settle",
            }),
        }
    }

    /// Stops a machine with its stop_config (or the given signal/grace).
    /// Stopping a stopped machine is a no-op.
    pub async fn stop(
        &self,
        id: &str,
        signal: Option<i32>,
        grace: Option<Duration>,
    ) -> Result<Machine, NodeError> {
        let lock = self.lock(format!("mch:{id}"));
        let _guard = lock.lock().await;
        let (m, _) = self.load(id).await?;
        match m.state {
            MachineState::Started | MachineState::Suspended | MachineState::Starting => {
                let (sig, g) = m.config.stop();
                self.stop_with(&m, false, signal.unwrap_or(sig), grace.unwrap_or(g))
                    .await?;
            }
            MachineState::Created | MachineState::Stopped | MachineState::Failed => {}
            state => {
                return Err(NodeError::InvalidState {
                    id: m.id,
                    state,
                    action: "stop",
                    hint: "",
                });
            }
        }
        Ok(self.load(id).await?.0)
    }

    /// Freezes a started machine (cgroup freezer); memory is kept and
    /// `start` resumes it.
    pub async fn suspend(&self, id: &str) -> Result<Machine, NodeError> {
        let lock = self.lock(format!("mch:{id}"));
        let _guard = lock.lock().await;
        let (m, _) = self.load(id).await?;
        match m.state {
            MachineState::Suspended => return Ok(m),
            MachineState::Started => {}
            state => {
                return Err(NodeError::InvalidState {
                    id: m.id,
                    state,
                    action: "suspend",
                    hint: "; only a started machine can be suspended",
                });
            }
        }
        let store = &self.inner.store;
        store
            .set_machine_state(&m.id, MachineState::Suspending, m.pid, None)
            .await?;
        if let Err(e) = self.inner.driver.pause(&m.id, pid_of(&m)).await {
            store
                .set_machine_state(&m.id, MachineState::Started, m.pid, None)
                .await?;
            return Err(e.into());
        }
        store
            .set_machine_state(&m.id, MachineState::Suspended, m.pid, None)
            .await?;
        self.publish_routes(&m.app_id).await?;
        Ok(self.load(id).await?.0)
    }

    /// Destroys a machine. A started or suspended one only with `force`.
    pub async fn destroy(&self, id: &str, force: bool) -> Result<(), NodeError> {
        let lock = self.lock(format!("mch:{id}"));
        let _guard = lock.lock().await;
        let (m, _) = self.load(id).await?;
        let running = matches!(
            m.state,
            MachineState::Started | MachineState::Suspended | MachineState::Starting
        );
        if running && !force {
            return Err(NodeError::InvalidState {
                id: m.id,
                state: m.state,
                action: "destroy",
                hint: "; stop it first or pass force=true",
            });
        }
        self.stop_machine(
            &m,
            true,
            Some(Duration::from_secs(if force { 2 } else { 10 })),
        )
        .await
    }

    /// Replaces a machine's config: a new instance id; a running machine is
    /// restarted on the new config (unless `skip_launch`).
    pub async fn update(
        &self,
        id: &str,
        config: MachineConfig,
        image_digest: String,
        name: Option<String>,
        skip_launch: bool,
    ) -> Result<Machine, NodeError> {
        self.check_gpus(&config)?;
        let lock = self.lock(format!("mch:{id}"));
        let _guard = lock.lock().await;
        let (m, app) = self.load(id).await?;
        let was_running = matches!(m.state, MachineState::Started | MachineState::Suspended);
        if was_running {
            let (sig, grace) = m.config.stop();
            self.stop_with(&m, false, sig, grace).await?;
        }
        let updated = self
            .inner
            .store
            .update_machine_config(id, &config, &image_digest, name.as_deref())
            .await?
            .ok_or_else(|| NodeError::NotFound(format!("machine {id}")))?;
        if was_running && !skip_launch {
            self.inner.store.set_machine_restarts(id, 0).await?;
            let m = self.launch(&updated, &app).await?;
            self.publish_routes(&m.app_id).await?;
            return Ok(m);
        }
        Ok(updated)
    }

    /// Takes a machine out of (or back into) the proxy's rotation.
    pub async fn cordon(&self, id: &str, cordoned: bool) -> Result<(), NodeError> {
        let (m, _) = self.load(id).await?;
        self.inner.store.set_machine_cordoned(id, cordoned).await?;
        self.publish_routes(&m.app_id).await
    }

    /// Runs `argv` inside a started machine: (exit code, stdout, stderr).
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<driver::ExecOutput, NodeError> {
        let (m, _) = self.load(id).await?;
        if m.state != MachineState::Started {
            return Err(NodeError::InvalidState {
                id: m.id,
                state: m.state,
                action: "exec in",
                hint: "; start it first",
            });
        }
        let (rootfs, _, env) = self.image_of(&m).await?;
        Ok(self
            .inner
            .driver
            .exec(&m.id, &rootfs, argv, &env, timeout)
            .await?)
    }

    /// Watches a machine's process; handles an exit that nobody asked for.
    fn spawn_monitor(&self, m: Machine, pid: u32) {
        let agent = self.clone();
        tokio::spawn(async move {
            let code = loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let ProcState::Exited(code) = driver::probe(pid) {
                    break code;
                }
            };
            // A stop on purpose records `stopping` before signalling, so an
            // exit seen while the machine is still `started` (or frozen) is
            // one nobody asked for.
            let store = &agent.inner.store;
            match store.machine(&m.id).await {
                Ok(Some(cur))
                    if matches!(cur.state, MachineState::Started | MachineState::Suspended)
                        && cur.pid == Some(i64::from(pid)) => {}
                _ => return,
            }
            let oom = agent.inner.driver.reap(&m.id).await;
            agent.release_gpus(&m.id);
            warn!(machine = %m.id, ?code, oom, "machine exited");
            if let Err(e) = store.record_exit(&m.id, code, oom).await {
                warn!(machine = %m.id, "recording exit: {e}");
            }
            if let Err(e) = agent.publish_routes(&m.app_id).await {
                warn!(machine = %m.id, "publishing routes: {e}");
            }
            agent.after_exit(m, code, oom).await;
        });
    }

    /// Applies the restart policy (with exponential backoff) or auto_destroy
    /// to a machine whose process exited on its own.
    async fn after_exit(&self, m: Machine, code: Option<i64>, oom: bool) {
        // The count of restarts so far comes from the store, not from the
        // snapshot the monitor was given at launch.
        let restarts = match self.inner.store.machine(&m.id).await {
            Ok(Some(cur)) => cur.restarts,
            _ => return,
        };
        let (policy, max_retries) = m.config.restart();
        let failed = oom || code != Some(0);
        let restart = match policy {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Always => true,
        } && restarts < i64::from(max_retries);
        if restart {
            let backoff = Duration::from_millis(250 << restarts.clamp(0, 7) as u32);
            tokio::time::sleep(backoff.min(Duration::from_secs(30))).await;
            let lock = self.lock(format!("mch:{}", m.id));
            let _guard = lock.lock().await;
            // Only if nobody touched it meanwhile.
            let Ok((cur, app)) = self.load(&m.id).await else {
                return;
            };
            if cur.state != MachineState::Stopped || cur.instance_id != m.instance_id {
                return;
            }
            if let Err(e) = self
                .inner
                .store
                .set_machine_restarts(&m.id, restarts + 1)
                .await
            {
                warn!(machine = %m.id, "recording a restart: {e}");
                return;
            }
            info!(machine = %m.id, attempt = restarts + 1, "restarting after exit");
            match self.launch(&cur, &app).await {
                Ok(m) => {
                    let _ = self.publish_routes(&m.app_id).await;
                }
                Err(e) => warn!(machine = %m.id, "restart failed: {e}"),
            }
        } else if m.config.auto_destroy {
            let lock = self.lock(format!("mch:{}", m.id));
            let _guard = lock.lock().await;
            if let Ok((cur, _)) = self.load(&m.id).await
                && let Err(e) = self.stop_machine(&cur, true, None).await
            {
                warn!(machine = %m.id, "auto_destroy: {e}");
            }
        }
    }

    /// Stops, destroys or suspends a machine in the background under its
    /// lock, with a deadline of its grace plus a margin for runc, so a loop
    /// that asks for it never waits on a duration the tenant chose. A
    /// machine already being halted this way is left alone.
    pub(crate) fn spawn_halt(&self, m: Machine, halt: Halt) {
        {
            let mut stopping = self
                .inner
                .stopping
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !stopping.insert(m.id.clone()) {
                return;
            }
        }
        let agent = self.clone();
        tokio::spawn(async move {
            let (_, grace) = m.config.stop();
            let deadline = grace.max(agent.inner.cfg.stop_grace) + STOP_MARGIN;
            let work = {
                let agent = agent.clone();
                let m = m.clone();
                async move {
                    match halt {
                        Halt::Stop => agent.stop(&m.id, None, None).await.map(|_| ()),
                        Halt::Suspend => agent.suspend(&m.id).await.map(|_| ()),
                        Halt::Finish { destroy } => agent.stop_locked(&m, destroy).await,
                    }
                }
            };
            match tokio::time::timeout(deadline, hangar_core::supervise::guarded(work)).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => warn!(machine = %m.id, "{halt:?}: {e}"),
                Ok(Err(why)) => error!(machine = %m.id, "{halt:?} {why}"),
                Err(_) => error!(machine = %m.id, "{halt:?} did not finish within {deadline:?}"),
            }
            agent
                .inner
                .stopping
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&m.id);
        });
    }

    /// True while a background stop of the machine runs.
    pub(crate) fn is_being_stopped(&self, id: &str) -> bool {
        self.inner
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// [`Agent::stop_machine`] under the machine's lock, on its current row.
    async fn stop_locked(&self, m: &Machine, destroy: bool) -> Result<(), NodeError> {
        let lock = self.lock(format!("mch:{}", m.id));
        let _guard = lock.lock().await;
        let current = self.inner.store.machine(&m.id).await?;
        match current {
            Some(cur) if cur.state != MachineState::Destroyed => {
                self.stop_machine(&cur, destroy, None).await
            }
            _ => Ok(()),
        }
    }

    /// Stops a machine with its configured signal and grace.
    async fn stop_machine(
        &self,
        m: &Machine,
        destroy: bool,
        grace: Option<Duration>,
    ) -> Result<(), NodeError> {
        let (sig, g) = if m.release_id.is_some() {
            (libc::SIGTERM, self.inner.cfg.stop_grace)
        } else {
            m.config.stop()
        };
        self.stop_with(m, destroy, sig, grace.unwrap_or(g)).await
    }

    /// `signal`, grace, SIGKILL; `destroy` also removes its private
    /// directory (its log is kept).
    async fn stop_with(
        &self,
        m: &Machine,
        destroy: bool,
        signal: i32,
        grace: Duration,
    ) -> Result<(), NodeError> {
        let inner = &self.inner;
        // Recorded before any signal: the monitor then knows the exit is ours.
        let transitional = if destroy {
            MachineState::Destroying
        } else {
            MachineState::Stopping
        };
        inner
            .store
            .set_machine_state(&m.id, transitional, m.pid, None)
            .await?;
        let driver = if m.driver == inner.driver.name() {
            inner.driver.clone()
        } else {
            Driver::Process
        };
        driver.stop(&m.id, pid_of(m), signal, grace).await?;
        self.release_gpus(&m.id);
        self.remove_resources(&m.id);
        inner
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&m.id);
        let state = if destroy {
            let _ = std::fs::remove_dir_all(inner.cfg.machines_dir.join(&m.id));
            self.remove_network(m).await;
            self.set_gates(std::slice::from_ref(m), None);
            MachineState::Destroyed
        } else {
            MachineState::Stopped
        };
        inner
            .store
            .set_machine_state(&m.id, state, None, None)
            .await?;
        self.publish_routes(&m.app_id).await?;
        Ok(())
    }

    /// Publishes the app's routable machines: started, not cordoned, and
    /// either of the active release or (Machines API) with a service.
    pub async fn publish_routes(&self, app_id: &str) -> Result<(), NodeError> {
        let _serial = self.inner.publish.lock().await;
        let store = &self.inner.store;
        let Some(app) = store.app(app_id).await? else {
            return Ok(());
        };
        let active = self.active_release(app_id).await?.map(|r| r.id);
        let machines: Vec<Machine> = store
            .machines_for_app(app_id)
            .await?
            .into_iter()
            .filter(|m| self.routable(m, active.as_ref()))
            .collect();
        let started: Vec<&Machine> = machines
            .iter()
            .filter(|m| m.state == MachineState::Started)
            .collect();
        // Machines failing their service checks leave the rotation, unless
        // every one fails: then all stay (a check too strict for the app
        // should not take the whole app down).
        let healthy: Vec<&Machine> = started
            .iter()
            .copied()
            .filter(|m| self.health_status(&m.id) != HealthStatus::Critical)
            .collect();
        let serving = if healthy.is_empty() && !started.is_empty() {
            warn!(app = %app.name, "every machine fails its checks; routing to all of them");
            started
        } else {
            healthy
        };
        let upstreams = serving.iter().map(|m| m.socket_addr()).collect();
        self.inner
            .routes
            .publish(&app.name, upstreams, limits(&machines));
        Ok(())
    }

    /// Whether a machine takes the app's traffic when started: not
    /// cordoned, not waiting for its first checks, and of the active
    /// release, admitted by the rollout of a new one, or (Machines API)
    /// with a service.
    fn routable(&self, m: &Machine, active_release: Option<&String>) -> bool {
        if m.cordoned {
            return false;
        }
        match &m.release_id {
            Some(r) => match self.gate(&m.id) {
                Some(Gate::Pending) => false,
                Some(Gate::Admitted) => true,
                None => Some(r) == active_release,
            },
            None => !m.config.services.is_empty(),
        }
    }

    /// Stops and destroys all of the app's machines and removes its route.
    /// The caller deletes the app's rows afterwards.
    pub async fn destroy_app(&self, app: &App) -> Result<(), NodeError> {
        let lock = self.lock(format!("app:{}", app.id));
        let _guard = lock.lock().await;
        for m in self.inner.store.machines_for_app(&app.id).await? {
            self.stop_locked(&m, true).await?;
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

/// The per-machine concurrency limits of an app: those of the first
/// routable machine whose service declares any (Fly sets them per service;
/// Hangar routes one service per app).
fn limits(machines: &[Machine]) -> RouteLimits {
    machines
        .iter()
        .filter_map(|m| service(m)?.concurrency.as_ref())
        .map(|c| RouteLimits {
            soft: c.soft_limit,
            hard: c.hard_limit,
        })
        .next()
        .unwrap_or_default()
}

/// The machine's first service, which carries its autostop settings.
fn service(m: &Machine) -> Option<&hangar_core::machine::Service> {
    m.config.services.first()
}

fn pid_of(m: &Machine) -> Option<u32> {
    m.pid.map(|p| p as u32)
}
