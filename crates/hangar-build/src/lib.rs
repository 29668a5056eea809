//! The builder: a durable queue of source archives turned into images.
//!
//! Lifecycle of a build (the row lives in the state store):
//! 1. The API stores the uploaded archive with [`Builder::accept_source`]
//!    (validated, content-addressed) and enqueues a `queued` build with
//!    [`Builder::enqueue`] (capped per org; the app's older queued builds
//!    become `superseded`). [`Builder::cancel`] stops a queued or running
//!    one (`cancelled`).
//! 2. A worker ([`Builder::run`] runs `BuildConfig::workers` of them) claims
//!    the next build (round-robin by org, oldest first within an org, one
//!    build per app at a time; see [`worker`]), unpacks it
//!    into the app's stable source directory (only changed files are
//!    rewritten, so cargo's fingerprints stay valid), runs
//!    `cargo build --release` with the app's persistent target dir (in the
//!    runc sandbox of [`sandbox`]: a fetch step with network, then metadata
//!    and build without; or on the host with [`BuildSandbox::Host`]),
//!    packages the binary as an OCI image, and marks the build `succeeded`
//!    together with a new `pending` release, in one transaction.
//! 3. The release id goes to the rollout channel (the node agent).
//!
//! A crash at any point leaves a row the next start can act on:
//! [`Builder::recover`] deletes orphaned build containers (or kills an
//! orphaned host cargo's process group) and re-queues the build (or fails
//! it, with the reason, after repeated crashes).

pub mod cargo;
mod housekeeping;
pub mod resources;
mod running;
pub mod sandbox;
mod sandboxed;
mod sync;
mod target_lock;
mod worker;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hangar_core::archive::{self, ArchiveError, Limits};
use hangar_image::{BinaryImage, ImageStore};
use hangar_store::{Build, Store, StoreError};
pub use sandbox::{BUILD_UID, BuildLimits, BuildSandbox, SandboxConfig};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};
pub use worker::{Cancel, MAX_WORKERS, default_workers};

/// Settings of the builder.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// Uploaded archives, `<sha256 hex>.tar.gz`.
    pub sources_dir: PathBuf,
    /// Per-app working trees: `<app>/src` (stable path, for cargo) and
    /// `<app>/incoming` (staging).
    pub work_dir: PathBuf,
    /// Per-app persistent cargo target dirs, `<app>/`: what makes a redeploy
    /// rebuild only the app's own crate.
    pub target_root: PathBuf,
    /// Build logs, `<build id>.log`.
    pub logs_dir: PathBuf,
    /// The cargo to run.
    pub cargo: PathBuf,
    /// Claims of one build before a crash-looping build is failed.
    pub max_attempts: i64,
    /// Wall-clock limit of one `cargo build`.
    pub timeout: Duration,
    /// Caps on what an uploaded archive may unpack to.
    pub limits: Limits,
    /// Hangar's copy of the `hangar-runtime` crates: apps that use it are
    /// built against it (a cargo `[patch]`).
    pub runtime_dir: Option<PathBuf>,
    /// Where cargo runs: in runc build containers, or on the host.
    pub sandbox: BuildSandbox,
    /// Builds never use the network: the fetch step finds dependencies
    /// only in the cargo home (`cargo fetch --offline`).
    pub offline: bool,
    /// A program that scans a source dir for declared resources in a
    /// process of its own (`hangar __scan-resources DIR`, see
    /// [`resources::scan_main`]): a source nested deeply enough to overflow
    /// the parser's stack kills that process, not hangar. `None`: scanned
    /// in-process (tests).
    pub resource_scanner: Option<PathBuf>,
    /// Builds run at once, 1 to [`MAX_WORKERS`] (see [`default_workers`]).
    pub workers: usize,
    /// Builds of one org's apps that may wait in the queue.
    pub max_queued_per_org: u32,
    /// A build whose log grows past this many bytes is stopped (a build
    /// that prints without end would fill the disk).
    pub max_log_bytes: u64,
    /// Bytes a second a running build's log may grow by; the rest of that
    /// second's output is dropped, with a note.
    pub log_rate: u64,
    /// An app's build logs together: past it, its oldest logs are removed
    /// after each build (its newest is always kept).
    pub app_logs_cap: u64,
    /// `target_root` is shared on purpose (`--build-target-root`, e.g. a
    /// test suite's cache): its dirs are not cleared when an app of the
    /// same name but another id builds there. Off, a dir left by a deleted
    /// app is cleared before its name's next owner builds in it.
    pub shared_target_root: bool,
}

/// The file in an app's work and target dirs naming the app (by id) they
/// belong to.
const OWNER_FILE: &str = ".hangar-app-id";

/// Makes `dir` the app `app_id`'s: if another app (a deleted one whose name
/// was taken again) left it, it is cleared first, so no file or compiled
/// artifact of one tenant reaches the next.
fn claim_dir(dir: &Path, app_id: &str) -> Result<(), String> {
    let owner = dir.join(OWNER_FILE);
    match std::fs::read_to_string(&owner) {
        Ok(id) if id.trim() == app_id => return Ok(()),
        Ok(_) => {
            warn!(dir = %dir.display(), "clearing a build dir an earlier app of this name left");
            std::fs::remove_dir_all(dir).map_err(|e| format!("clearing {}: {e}", dir.display()))?;
        }
        // A dir from before owners were recorded is kept (its app is the
        // one of that name then); only a foreign owner clears it.
        Err(_) => {}
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::write(&owner, app_id).map_err(|e| format!("writing {}: {e}", owner.display()))
}

/// Errors of the builder that are not a build failing (which is recorded
/// on the build, not returned).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("build settings: {0}")]
    Config(String),
    /// The org already has this many uploads being checked.
    #[error(
        "this organisation already has {running} source uploads being checked; at most {limit} may run at once: retry when one is done"
    )]
    Busy { running: usize, limit: usize },
}

/// Source uploads of one org checked at once ([`Builder::validation_slot`]).
pub const VALIDATIONS_PER_ORG: usize = 2;

/// How long checking one source upload may take (gunzip and walk).
pub const VALIDATION_BUDGET: std::time::Duration = std::time::Duration::from_secs(120);

/// One of an org's validation places; given back on drop.
pub type ValidationSlot = hangar_core::admission::OwnerSlot;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// The builder; cheap to clone.
#[derive(Clone)]
pub struct Builder {
    inner: Arc<Inner>,
}

struct Inner {
    /// The durable queue and the build rows.
    store: Store,
    /// Where images are written.
    images: ImageStore,
    /// Settings.
    cfg: BuildConfig,
    /// Wakes an idle worker when a build is enqueued.
    wake: Notify,
    /// The builds the workers run: cancels reach them here.
    running: running::Running,
    /// Receives the id of each release a build created, for rollout.
    releases: mpsc::UnboundedSender<String>,
    /// Provisions what an app's code declares, before its image exists.
    resources: std::sync::OnceLock<hangar_resources::Resources>,
    /// Source uploads being checked, per org.
    validating: hangar_core::admission::PerOwner,
}

impl Builder {
    /// A builder sending created releases to `releases`.
    pub fn new(
        store: Store,
        images: ImageStore,
        cfg: BuildConfig,
        releases: mpsc::UnboundedSender<String>,
    ) -> Result<Builder, BuildError> {
        for d in [
            &cfg.sources_dir,
            &cfg.work_dir,
            &cfg.target_root,
            &cfg.logs_dir,
        ] {
            std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
        }
        if !(1..=MAX_WORKERS).contains(&cfg.workers) {
            return Err(BuildError::Config(format!(
                "build workers must be 1 to {MAX_WORKERS}, not {}",
                cfg.workers
            )));
        }
        if cfg.max_queued_per_org == 0 {
            return Err(BuildError::Config(
                "at least one build per organisation must be able to wait".into(),
            ));
        }
        if let BuildSandbox::Runc(sb) = &cfg.sandbox {
            sb.limits.check().map_err(BuildError::Config)?;
            if sb.user.0 == 0 || sb.user.1 == 0 {
                return Err(BuildError::Config(
                    "builds must not run as uid or gid 0".into(),
                ));
            }
        }
        Ok(Builder {
            inner: Arc::new(Inner {
                store,
                images,
                cfg,
                wake: Notify::new(),
                running: running::Running::default(),
                releases,
                resources: std::sync::OnceLock::new(),
                validating: Default::default(),
            }),
        })
    }

    /// Takes one of `org`'s places for checking an upload
    /// ([`VALIDATIONS_PER_ORG`]), or [`BuildError::Busy`]: one org's
    /// uploads cannot keep every blocking thread gunzipping.
    pub fn validation_slot(&self, org: &str) -> Result<ValidationSlot, BuildError> {
        self.inner
            .validating
            .take(org, VALIDATIONS_PER_ORG)
            .map_err(|running| BuildError::Busy {
                running,
                limit: VALIDATIONS_PER_ORG,
            })
    }

    /// Lets builds provision the resources apps declare (set once, at start).
    pub fn set_resources(&self, resources: hangar_resources::Resources) {
        let _ = self.inner.resources.set(resources);
    }

    /// Validates an uploaded `.tar.gz` (already on disk at `upload`),
    /// within [`VALIDATION_BUDGET`], and moves it into the source store
    /// (synced, name and all, before a build row refers to it); returns
    /// its digest. Blocking.
    pub fn accept_source(&self, upload: &Path) -> Result<String, BuildError> {
        let file = std::fs::File::open(upload).map_err(io("reading the upload"))?;
        let limits = archive::Limits {
            deadline: Some(std::time::Instant::now() + VALIDATION_BUDGET),
            ..self.inner.cfg.limits
        };
        archive::validate_tar_gz(std::io::BufReader::new(file), limits)?;
        let mut file = std::fs::File::open(upload).map_err(io("reading the upload"))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io("reading the upload"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let hex = hex::encode(hasher.finalize());
        let dest = self.inner.cfg.sources_dir.join(format!("{hex}.tar.gz"));
        file.sync_all().map_err(io("storing the upload"))?;
        std::fs::rename(upload, &dest).map_err(io("storing the upload"))?;
        std::fs::File::open(&self.inner.cfg.sources_dir)
            .and_then(|d| d.sync_all())
            .map_err(io("storing the upload"))?;
        Ok(format!("sha256:{hex}"))
    }

    /// Wakes an idle worker (after a build was enqueued).
    pub fn notify(&self) {
        self.inner.wake.notify_one();
    }

    /// The log file of a build.
    pub fn log_path(&self, build_id: &str) -> PathBuf {
        self.inner.cfg.logs_dir.join(format!("{build_id}.log"))
    }

    /// After a crash: deletes the build containers a previous hangar left
    /// (every one in the sandbox's runc state root), kills host cargo runs
    /// it orphaned, and re-queues (or fails) their builds.
    pub async fn recover(&self) -> Result<(), BuildError> {
        if let BuildSandbox::Runc(sb) = &self.inner.cfg.sandbox {
            for id in sandbox::delete_leftovers(sb).await {
                warn!(container = %id, "deleted a build container left by a previous hangar");
            }
        }
        let stuck = self
            .inner
            .store
            .recover_builds(self.inner.cfg.max_attempts)
            .await?;
        for (b, now) in stuck {
            if let Some(pgid) = b.builder_pgid {
                cargo::kill_orphan(pgid);
            }
            let note = match now.status {
                hangar_core::status::BuildStatus::Queued => {
                    "==> hangar stopped during this build; it was re-queued and will run again\n"
                        .to_owned()
                }
                _ => format!(
                    "==> hangar stopped during this build: {}\n",
                    now.error.as_deref().unwrap_or("it will not run again")
                ),
            };
            append(&self.log_path(&b.id), &note).await;
            warn!(build = %b.id, "recovered build interrupted by a restart");
        }
        Ok(())
    }

    /// Runs one claimed build to a terminal state.
    async fn build(&self, build: Build) {
        let log = self.log_path(&build.id);
        let started = std::time::Instant::now();
        match self.try_build(&build, &log).await {
            Ok(version) => {
                let secs = started.elapsed().as_secs_f64();
                append(
                    &log,
                    &format!(
                        "==> build succeeded in {secs:.1} s; release v{version} is rolling out\n"
                    ),
                )
                .await;
                info!(build = %build.id, secs, "build succeeded");
            }
            Err(reason) => {
                append(&log, &format!("==> build failed: {reason}\n")).await;
                warn!(build = %build.id, "build failed: {reason}");
                if let Err(e) = self.inner.store.fail_build(&build.id, &reason).await {
                    warn!(build = %build.id, "recording failure: {e}");
                }
            }
        }
        if let Err(e) = self.prune_app_logs(&build.app_id).await {
            warn!(build = %build.id, "keeping the app's build logs under their cap: {e}");
        }
    }

    /// The steps of a build; an error is the reason, worded for the user.
    async fn try_build(&self, build: &Build, log: &Path) -> Result<i64, String> {
        let inner = &self.inner;
        let app = inner
            .store
            .app(&build.app_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the app was destroyed")?;
        append(
            log,
            &format!(
                "==> building {} (build {}, attempt {})\n",
                app.name, build.id, build.attempts
            ),
        )
        .await;

        // Unpack into the app's stable source dir, rewriting only what changed.
        let hex = build.source_digest.trim_start_matches("sha256:");
        let archive_path = inner.cfg.sources_dir.join(format!("{hex}.tar.gz"));
        let app_dir = inner.cfg.work_dir.join(&app.name);
        claim_dir(&app_dir, &app.id)?;
        let src = app_dir.join("src");
        let limits = inner.cfg.limits;
        let unpacked = tokio::task::spawn_blocking({
            let (archive_path, app_dir, src) = (archive_path.clone(), app_dir.clone(), src.clone());
            move || -> Result<sync::Changes, String> {
                let incoming = app_dir.join("incoming");
                let _ = std::fs::remove_dir_all(&incoming);
                let file = std::fs::File::open(&archive_path)
                    .map_err(|e| format!("the uploaded source is gone: {e}"))?;
                archive::unpack_tar_gz(std::io::BufReader::new(file), &incoming, limits)
                    .map_err(|e| e.to_string())?;
                // The sandboxed build reads it as another user.
                sync::make_readable(&incoming).map_err(|e| e.to_string())?;
                let changes = sync::sync_tree(&incoming, &src).map_err(|e| e.to_string())?;
                let _ = std::fs::remove_dir_all(&incoming);
                Ok(changes)
            }
        })
        .await
        .map_err(|e| format!("unpacking: {e}"))??;
        append(log, &format!("==> source unpacked: {unpacked}\n")).await;

        // The deploy configuration travels with the release, so a rollback
        // re-applies it with the image. Checked before cargo runs.
        let config = read_app_config(&src, &app.name, log).await?;

        // What the code declares, read without running it; provisioned
        // before cargo runs, so a misconfiguration fails in seconds.
        let declared =
            resources::declared_isolated(inner.cfg.resource_scanner.as_deref(), &src).await?;
        let mut patch_runtime = None;
        if let Some(runtime) = declared.runtime {
            let kinds: Vec<&str> = declared.kinds.iter().map(|k| k.as_str()).collect();
            let list = if kinds.is_empty() {
                "none".to_owned()
            } else {
                kinds.join(", ")
            };
            append(log, &format!("==> resources declared in code: {list}\n")).await;
            if !declared.kinds.is_empty() {
                let Some(res) = inner.resources.get() else {
                    return Err(
                        "this app declares resources, but this Hangar provisions none".into(),
                    );
                };
                let (tx, mut rx) = mpsc::unbounded_channel::<String>();
                let progress = move |line: String| {
                    let _ = tx.send(line);
                };
                let provisioned = res.provision(&app, &declared.kinds, &progress).await;
                drop(progress);
                while let Some(line) = rx.recv().await {
                    append(log, &format!("    {line}\n")).await;
                }
                provisioned.map_err(|e| format!("provisioning: {e}"))?;
            }
            if runtime == resources::Runtime::Hangar {
                patch_runtime = inner.cfg.runtime_dir.as_deref();
            }
        }

        // A trusted pull request's preview builds in its app's target dir
        // (same organisation, same repository: its dependencies are
        // compiled already). An approved fork's gets its own, so code from
        // outside never writes into the cache production builds from.
        let (target_name, target_owner) = match inner.store.preview_of_app(&app.id).await {
            Ok(Some(p)) if p.trusted => match inner.store.app(&p.app_id).await {
                Ok(Some(parent)) => (parent.name, parent.id),
                _ => (app.name.clone(), app.id.clone()),
            },
            _ => (app.name.clone(), app.id.clone()),
        };
        let target_dir = inner.cfg.target_root.join(&target_name);
        if target_owner != app.id {
            append(
                log,
                &format!("==> a preview: building in {target_name}'s target dir\n"),
            )
            .await;
        }
        if !inner.cfg.shared_target_root {
            claim_dir(&target_dir, &target_owner)?;
        }
        // Held until the image is written: in a shared root another
        // hangar, and in any root an app's preview (or the app, for a
        // preview), could otherwise uplift its own binary in between.
        let _target_lock = {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let lock = target_lock::TargetLock::take(&target_dir, move || {
                let _ = tx.send(());
            });
            let mut lock = std::pin::pin!(lock);
            let lock = tokio::select! {
                l = &mut lock => l,
                Ok(()) = rx => {
                    append(log, "==> waiting for another build in this app's shared target dir\n").await;
                    lock.await
                }
            };
            lock.map_err(|e| format!("locking {}: {e}", target_dir.display()))?
        };
        let bin = match &inner.cfg.sandbox {
            BuildSandbox::Host => {
                self.build_on_host(build, &src, &target_dir, patch_runtime, log)
                    .await?
            }
            BuildSandbox::Runc(sb) => {
                self.build_in_sandbox(sb, build, &src, &target_dir, patch_runtime, log)
                    .await?
            }
        };

        let images = inner.images.clone();
        let mut env = vec![format!("HANGAR_APP={}", app.name)];
        if declared.runtime == Some(resources::Runtime::Shuttle) {
            // The fixed part of Shuttle's runtime contract; the node adds
            // the per-machine part at launch.
            env.extend(hangar_resources::shuttle::image_env(&app));
        }
        let bin_name = bin.clone();
        let binary = Path::new("release").join(&bin);
        let digest = tokio::task::spawn_blocking(move || {
            // Read beneath the target dir without following links: the
            // build wrote that tree and may have planted them.
            images.build_from_binary(&BinaryImage {
                dir: &target_dir,
                path: &binary,
                name: &bin_name,
                env,
            })
        })
        .await
        .map_err(|e| format!("packaging: {e}"))?
        .map_err(|e| format!("packaging the binary as an image: {e}"))?;
        append(log, &format!("==> image {digest}\n")).await;

        let release = match inner.store.complete_build(&build.id, &digest, config).await {
            Ok(release) => release,
            Err(StoreError::BuildNotRunning { status, .. }) => {
                return Err(format!("the build was {status} before it could complete"));
            }
            Err(e) => return Err(e.to_string()),
        };
        // The receiver lives as long as hangar; if it is gone we are shutting
        // down and the pending release is resumed at the next start.
        let _ = inner.releases.send(release.id.clone());
        Ok(release.version)
    }
}

impl Builder {
    /// Picks and builds the binary with cargo on the host (no sandbox), as
    /// hangar's own user; returns the binary's name.
    async fn build_on_host(
        &self,
        build: &Build,
        src: &Path,
        target_dir: &Path,
        patch_runtime: Option<&Path>,
        log: &Path,
    ) -> Result<String, String> {
        let inner = &self.inner;
        let extra_args = patch_runtime
            .map(|dir| runtime_patch_args(dir).to_vec())
            .unwrap_or_default();
        let bin = cargo::pick_binary(&inner.cfg.cargo, src).await?;
        append(
            log,
            &format!("==> cargo build --release --bin {bin} (unsandboxed, on the host)\n"),
        )
        .await;
        let store = inner.store.clone();
        let build_id = build.id.clone();
        cargo::build(
            &inner.cfg.cargo,
            src,
            target_dir,
            &bin,
            &extra_args,
            log,
            inner.cfg.timeout,
            move |pgid| {
                let (store, build_id) = (store.clone(), build_id.clone());
                async move {
                    let _ = store.set_build_pgid(&build_id, pgid).await;
                }
            },
        )
        .await?;
        Ok(bin)
    }

    /// Fetches, picks and builds the binary in runc build containers
    /// (`sandboxed`); returns the binary's name.
    async fn build_in_sandbox(
        &self,
        sb: &SandboxConfig,
        build: &Build,
        src: &Path,
        target_dir: &Path,
        patch_runtime: Option<&Path>,
        log: &Path,
    ) -> Result<String, String> {
        let cfg = &self.inner.cfg;
        let runner = sandboxed::Sandboxed::prepare(
            sb,
            &build.id,
            &cfg.cargo,
            src,
            target_dir,
            patch_runtime,
            cfg.offline,
            cfg.timeout,
        )
        .await?;
        // Inside, the runtime crates are at a fixed path.
        let patch = match patch_runtime {
            Some(_) => runtime_patch_args(Path::new(sandbox::paths::RUNTIME)).to_vec(),
            None => Vec::new(),
        };
        let net = if cfg.offline {
            "offline, from the cargo home only"
        } else {
            "with network; none of the project's code runs"
        };
        append(
            log,
            &format!(
                "==> sandboxed build (runc, uid {}, toolchain {}): cargo fetch ({net})\n",
                sb.user.0,
                runner.toolchain().display()
            ),
        )
        .await;
        if let Err(e) = runner.fetch(&patch, log).await {
            append(log, &sandboxed::offline_hint(cfg.offline)).await;
            return Err(e);
        }
        let bin = runner.pick_binary(log).await?;
        append(
            log,
            &format!("==> cargo build --release --bin {bin} (sandboxed, no network)\n"),
        )
        .await;
        if let Err(e) = runner.build(&bin, &patch, log).await {
            if sandboxed::wanted_network(log) {
                append(log, &sandboxed::offline_hint(cfg.offline)).await;
            }
            return Err(e);
        }
        Ok(bin)
    }
}

/// The text of `src/hangar.toml`, validated (its warnings go to the build
/// log), or None when the app has none. `Err` is the reason the build
/// fails: the error names the line and the key.
async fn read_app_config(src: &Path, app: &str, log: &Path) -> Result<Option<String>, String> {
    use hangar_core::app_config::{AppConfig, FILE_NAME};
    // Beneath the source, never through a link out of it; small.
    let read = archive::read_file_beneath(src, Path::new(FILE_NAME), 1 << 20)
        .and_then(|b| String::from_utf8(b).map_err(std::io::Error::other));
    let text = match read {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {FILE_NAME}: {e}")),
    };
    let config = AppConfig::parse_for(&text, app).map_err(|e| e.to_string())?;
    for warning in &config.warnings {
        append(log, &format!("warning: {warning}\n")).await;
    }
    append(
        log,
        &format!(
            "==> {FILE_NAME}: {} machine(s), {} deploys\n",
            config.count,
            config.deploy.strategy.as_str()
        ),
    )
    .await;
    Ok(Some(text))
}

/// The cargo arguments that build an app against Hangar's copy of the
/// runtime crates in `runtime_dir` (what `hangar-runtime = "0.1"` resolves
/// to), for the builder and for `hangar run`.
pub fn runtime_patch_args(runtime_dir: &std::path::Path) -> [String; 2] {
    let path = runtime_dir.join("hangar-runtime");
    [
        "--config".to_owned(),
        format!(
            "patch.crates-io.hangar-runtime.path={}",
            toml_string(&path.to_string_lossy())
        ),
    ]
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Appends a line to a build log (best effort: a log write failing must not
/// fail the build).
async fn append(path: &Path, text: &str) {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await;
    if let Ok(mut f) = file {
        let _ = f.write_all(text.as_bytes()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_dir_left_by_another_app_of_the_name_is_cleared() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("hello");
        // The first owner builds, leaving an artifact.
        claim_dir(&dir, "app_first").unwrap();
        std::fs::write(dir.join("poisoned.rlib"), b"first owner's bytes").unwrap();
        claim_dir(&dir, "app_first").unwrap();
        assert!(dir.join("poisoned.rlib").exists(), "its own dir is kept");
        // The name is deleted and taken again: nothing of the first is left.
        claim_dir(&dir, "app_second").unwrap();
        assert!(!dir.join("poisoned.rlib").exists());
        assert_eq!(
            std::fs::read_to_string(dir.join(OWNER_FILE)).unwrap(),
            "app_second"
        );
        // A dir from before owners were recorded is kept and claimed.
        let legacy = root.path().join("legacy");
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(legacy.join("cache"), b"x").unwrap();
        claim_dir(&legacy, "app_third").unwrap();
        assert!(legacy.join("cache").exists());
    }
}
