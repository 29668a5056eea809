//! `hangar up`: every role (API, builder, node agent, edge proxy) in one
//! process, on the embedded defaults (SQLite, local image store).
//!
//! Start-up order matters for crash safety: listeners are bound first (so a
//! port clash fails fast, before touching state), then interrupted builds
//! are recovered and machines reconciled, and only then are the queue and
//! the servers started.
//!
//! Shutdown: Ctrl-C or SIGTERM flips one `watch` channel that every task
//! listens on. Machines are left running on purpose: the next `hangar up`
//! re-adopts them, as a node agent restart should.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hangar_api::{ApiConfig, ApiState};
use hangar_build::{BuildConfig, BuildLimits, BuildSandbox, Builder, SandboxConfig};
use hangar_core::archive::Limits as ArchiveLimits;
use hangar_image::ImageStore;
use hangar_node::{Agent, Driver, DriverChoice, Limits, NodeConfig};
use hangar_proxy::RouteTable;
use hangar_resources::{PostgresServer, RedisServer, Resources, Vault};
use hangar_store::Store;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::CliConfig;

/// Options of `hangar up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Where state, images, sources, build caches and logs live.
    pub data_dir: PathBuf,
    /// API listen address.
    pub api_listen: SocketAddr,
    /// Edge proxy listen address.
    pub proxy_listen: SocketAddr,
    /// Admin listen address (Prometheus `/metrics`).
    pub admin_listen: SocketAddr,
    /// Apps are served at `<app>.<domain>`.
    pub domain: String,
    /// Runtime driver preference.
    pub driver: DriverChoice,
    /// Largest accepted upload.
    pub max_upload_bytes: u64,
    /// Largest accepted image archive.
    pub max_image_bytes: u64,
    /// Per-app cargo target dirs (default: under the data dir).
    pub build_target_root: Option<PathBuf>,
    /// Machine memory limit.
    pub memory_mb: u64,
    /// cgroup limits of each build container.
    pub build_limits: BuildLimits,
    /// Host uid and gid of sandboxed builds.
    pub build_uid: u32,
    /// Builds never use the network.
    pub build_offline: bool,
    /// Builds run at once (1 to `hangar_build::MAX_WORKERS`).
    pub build_workers: usize,
    /// Builds of one org that may wait in the queue.
    pub org_max_queued_builds: u32,
    /// A build whose log passes this many MiB is stopped.
    pub build_log_max_mb: u64,
    /// KiB a second one machine's log may grow by; the rest is dropped.
    pub app_log_rate_kb: u64,
    /// Seconds an API request body may go without a byte (408 past it).
    pub api_body_progress_secs: u64,
    /// An app's build logs together, in MiB (0: only its newest is kept).
    pub build_logs_per_app_mb: u64,
    /// KiB a second a running build's log may grow by.
    pub build_log_rate_kb: u64,
    /// Postgres server for apps' databases (none: Hangar's own cluster
    /// under the data dir if PostgreSQL is installed, else apps declaring
    /// one fail to deploy with a message saying so).
    pub postgres_url: Option<String>,
    /// Redis server for apps' users (none: Hangar's own, one per app, if
    /// redis-server is installed; else apps declaring Redis fail to deploy
    /// with a message saying so).
    pub redis_url: Option<String>,
    /// NATS server for apps' PubSub (none: Hangar's own if nats-server is
    /// installed).
    pub nats_url: Option<String>,
    /// Where runc machines' own addresses come from.
    pub machine_subnet: hangar_node::Subnet,
    /// Peers whose X-Forwarded-For chain the proxy extends.
    pub trusted_proxies: Vec<hangar_proxy::IpNet>,
    /// Machine logs kept per app, in MiB.
    pub app_log_max_mb: u64,
    /// What machines may reach outside the host.
    pub egress: hangar_node::Egress,
    /// What each org may have.
    pub quotas: hangar_api::quota::Quotas,
    /// Memory of all machines together, in MiB (none: the host's less a
    /// reserve for hangar, its servers and the builds).
    pub machines_memory_mb: Option<u64>,
    /// HTTPS for apps and the API.
    pub tls: crate::tls_up::TlsArgs,
    /// Deploys from git.
    pub git: crate::git::GitArgs,
}

/// The default data dir: `/var/lib/hangar` for root, else under the user's
/// data home.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/hangar");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("hangar")
}

/// Runs until Ctrl-C / SIGTERM.
pub async fn run(opts: UpOptions) -> Result<()> {
    raise_nofile();
    let data = &opts.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let data = data.canonicalize()?;
    // Every tenant's sources, state and logs: nobody else may list, read or
    // pass through them. Machines reach their root filesystems through a
    // mount under the run dir instead (see `expose_rootfs`).
    set_mode(&data, 0o700)?;
    let store = Store::open(&data.join("state.db")).context("opening the state store")?;
    let images = ImageStore::open(&data.join("images")).context("opening the image store")?;

    // Bind first: a port already in use is reported before anything else.
    let api_listener = tokio::net::TcpListener::bind(opts.api_listen)
        .await
        .with_context(|| format!("binding the API to {}", opts.api_listen))?;
    let proxy_listener = tokio::net::TcpListener::bind(opts.proxy_listen)
        .await
        .with_context(|| format!("binding the proxy to {}", opts.proxy_listen))?;
    let admin_listener = tokio::net::TcpListener::bind(opts.admin_listen)
        .await
        .with_context(|| format!("binding the admin port to {}", opts.admin_listen))?;
    let tls_listener = match opts.tls.tls_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the TLS edge to {addr}"))?,
        ),
        None => None,
    };
    let tls_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let admin_addr = admin_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    let proxy_addr = proxy_listener.local_addr()?;

    let token = admin_token(&store, &data).await?;

    let (driver, warning) = Driver::choose(opts.driver, &data.join("runc"))?;
    if let Some(w) = warning {
        eprintln!("\n!!! WARNING: {w}\n");
        warn!("{w}");
    }
    let run_dir = crate::run_dir::run_dir(&data);
    let views = Views::new(&run_dir, &data)?;
    let rootfs_view = match &driver {
        Driver::Runc { .. } => {
            let view = views.rootfs(&images.rootfs_root())?;
            check_traversable(&view)?;
            Some(view)
        }
        Driver::Process => None,
    };
    let network = match &driver {
        Driver::Runc { .. } => Some(Arc::new(
            machine_network(&store, &data, opts.machine_subnet, opts.egress).await?,
        )),
        Driver::Process => None,
    };
    let single_tenant = network.is_none();
    if let Driver::Runc { .. } = &driver {
        let host = hangar_node::driver::host_memory().unwrap_or(4 << 30);
        let all = match opts.machines_memory_mb {
            Some(mb) => mb.saturating_mul(1 << 20).min(host),
            // A tenth of the host (at least 1 GiB) stays outside machines.
            None => host.saturating_sub((host / 10).max(1 << 30)).max(256 << 20),
        };
        hangar_node::driver::limit_all_machines(all, 65_536)
            .context("limiting all machines' memory (the hangar parent cgroup)")?;
        info!(memory_mb = all >> 20, "all machines together are limited");
    }
    let routes = Arc::new(RouteTable::new(&opts.domain));
    let agent = Agent::new(
        store.clone(),
        images.clone(),
        driver.clone(),
        routes.clone(),
        NodeConfig {
            machines_dir: data.join("machines"),
            logs_dir: data.join("logs"),
            limits: Limits {
                memory_mb: opts.memory_mb,
                ..Limits::default()
            },
            stop_grace: Duration::from_secs(10),
            region: "local".to_owned(),
            run_dir,
            rootfs_view,
            log_limits: Some(hangar_node::LogLimits {
                cap: opts.app_log_max_mb.saturating_mul(1 << 20),
                rate: opts.app_log_rate_kb.saturating_mul(1024),
            }),
        },
        network,
    );
    let sealed = store.sealed_rows().await?;
    let vault =
        Vault::open_with(&data.join("secrets.key"), sealed).context("opening the secrets key")?;
    let postgres = opts
        .postgres_url
        .as_deref()
        .map(PostgresServer::new)
        .transpose()?;
    let no_server = postgres.is_none();
    let tls = opts.tls.setup(&opts.domain, &data, &store, &vault).await?;
    let api_url = format!(
        "{}://{api_addr}",
        if tls.api.is_some() { "https" } else { "http" }
    );
    remember_for_cli(&api_url, &token, tls.api_fingerprint.as_deref());
    let git = hangar_api::git::GitDeploys::new(
        opts.git.config(opts.max_upload_bytes),
        data.join("git"),
        vault.clone(),
        opts.git.poll_every(),
        opts.git.git_preview_ttl_secs,
    );
    let mut resources = Resources::new(store.clone(), vault, postgres);
    if no_server {
        match hangar_resources::local_pg::PostgresBinaries::find() {
            Some(bins) => {
                tracing::info!(
                    version = %bins.version,
                    "no --postgres-url: apps that declare a database get it on Hangar's own cluster (started on first need)"
                );
                let dir = views.daemon(&data.join("postgres"), "postgres")?;
                resources = resources.with_local_postgres(bins, dir);
            }
            None => tracing::info!(
                "no --postgres-url and no PostgreSQL installed: apps that declare a database will fail to deploy"
            ),
        }
    }
    if let Some(url) = &opts.redis_url {
        resources = resources.with_redis(RedisServer::new(url)?);
    } else {
        match hangar_resources::local_redis::RedisBinary::find() {
            Some(bin) => {
                tracing::info!(
                    version = %bin.version,
                    "no --redis-url: each app that declares Redis gets a Redis server of its own (started on first need)"
                );
                resources = resources.with_local_redis(
                    bin,
                    views.daemon(&data.join("redis"), "redis")?,
                    hangar_resources::local_redis::LocalRedisOptions::default(),
                );
            }
            None => tracing::info!(
                "no --redis-url and no redis-server installed: apps that declare Redis will fail to deploy"
            ),
        }
    }
    if let Some(url) = &opts.nats_url {
        resources = resources.with_nats(url.clone());
    } else {
        match hangar_resources::local_nats::NatsBinary::find() {
            Some(bin) => {
                tracing::info!(
                    version = %bin.version,
                    "no --nats-url: apps that declare PubSub get a user on Hangar's own NATS server (started on first need)"
                );
                let dir = views.daemon(&data.join("nats"), "nats")?;
                resources = resources.with_local_nats(bin, dir);
            }
            None => tracing::info!(
                "no --nats-url and no nats-server installed: apps that declare PubSub will fail to deploy"
            ),
        }
    }
    // Machines share the host's network: they reach the API where it
    // listens (loopback when it listens on every address).
    let mut reachable = api_addr;
    if reachable.ip().is_unspecified() {
        reachable.set_ip(match reachable {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    resources = resources.with_platform_api(format!("http://{reachable}"));
    agent.set_resources(resources.clone());
    let runtime_dir = crate::runtime_src::install(&data.join("runtime"))
        .context("installing hangar-runtime's sources")?;
    let (release_tx, release_rx) = mpsc::unbounded_channel::<String>();
    // Builds are sandboxed wherever machines are: runc, as root.
    let build_sandbox = match &driver {
        Driver::Runc { runc, .. } => BuildSandbox::Runc(SandboxConfig {
            runc: runc.clone(),
            state_root: data.join("build-runc"),
            dir: data.join("build-sandbox"),
            user: (opts.build_uid, opts.build_uid),
            limits: opts.build_limits,
        }),
        Driver::Process => BuildSandbox::Host,
    };
    if let Some(w) = build_sandbox.warning() {
        eprintln!("\n!!! WARNING: {w}\n");
        warn!("{w}");
    }
    let builder = Builder::new(
        store.clone(),
        images.clone(),
        BuildConfig {
            sources_dir: data.join("sources"),
            work_dir: data.join("builds"),
            target_root: opts
                .build_target_root
                .as_deref()
                // Absolute: build containers bind-mount it from their
                // bundle dir, where a relative path means something else.
                .map(std::path::absolute)
                .transpose()
                .context("resolving --build-target-root")?
                .unwrap_or_else(|| data.join("targets")),
            logs_dir: data.join("build-logs"),
            cargo: PathBuf::from(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())),
            max_attempts: 3,
            timeout: Duration::from_secs(30 * 60),
            limits: ArchiveLimits::default(),
            runtime_dir: Some(runtime_dir),
            sandbox: build_sandbox,
            offline: opts.build_offline,
            // This very binary, as `hangar __scan-resources DIR`.
            resource_scanner: std::env::current_exe().ok(),
            workers: opts.build_workers,
            max_queued_per_org: opts.org_max_queued_builds,
            max_log_bytes: opts.build_log_max_mb << 20,
            log_rate: opts.build_log_rate_kb << 10,
            app_logs_cap: opts.build_logs_per_app_mb << 20,
            shared_target_root: opts.build_target_root.is_some(),
        },
        release_tx.clone(),
    )?;
    builder.set_resources(resources.clone());
    let uploads = data.join("uploads");
    // Half-received uploads from a previous run are garbage.
    let _ = std::fs::remove_dir_all(&uploads);
    std::fs::create_dir_all(&uploads)?;
    // So are half-written blobs and root filesystems (imports stage in uploads/).
    images
        .clear_tmp()
        .context("emptying the image store's tmp/")?;

    // Crash recovery, before anything new starts.
    builder.recover().await.context("recovering builds")?;
    builder
        .collect_leftovers()
        .await
        .context("collecting deleted apps' build logs and dirs")?;
    for release in agent.reconcile().await.context("reconciling machines")? {
        info!(release = %release.id, "resuming an interrupted rollout");
        let _ = release_tx.send(release.id);
    }

    // Custom domains and HSTS choices, before the edge serves.
    routes.set_aliases(
        store
            .routed_domains()
            .await
            .context("reading custom domains")?,
    );
    if let Some(certs) = &tls.certs {
        certs.set_hsts(store.hsts_apps().await?);
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Scale to zero: the proxy wakes apps through the agent, and the agent
    // stops idle machines by the proxy's activity.
    routes.set_waker(Arc::new(agent.clone()));
    // Rollouts drain replaced machines by the proxy's in-flight counts.
    agent.set_activity(routes.clone());
    agent.spawn_health_loop(Duration::from_millis(250), shutdown_rx.clone());
    agent.spawn_log_keeper(shutdown_rx.clone());
    agent.spawn_idle_loop(
        routes.clone(),
        Duration::from_millis(500),
        shutdown_rx.clone(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    // The builder's and the rollouts' loops serve every tenant: a panic in
    // one is logged and the loop started again (each build and rollout is
    // contained on its own, too).
    let builder_loop = {
        let builder = builder.clone();
        let stop = shutdown_rx.clone();
        hangar_core::supervise::supervise("builder", move || builder.clone().run(stop.clone()))
    };
    tasks.spawn(async move {
        let _ = builder_loop.await;
    });
    let release_rx = Arc::new(tokio::sync::Mutex::new(release_rx));
    let rollout_loop = {
        let agent = agent.clone();
        let stop = shutdown_rx.clone();
        hangar_core::supervise::supervise("rollouts", move || {
            let agent = agent.clone();
            let mut stop = stop.clone();
            let release_rx = release_rx.clone();
            async move {
                let mut release_rx = release_rx.lock().await;
                loop {
                    tokio::select! {
                        id = release_rx.recv() => {
                            let Some(id) = id else { return };
                            // Different apps roll out concurrently; one app's
                            // rollouts are serialised by the agent.
                            agent.spawn_rollout(id);
                        }
                        _ = stop.changed() => return,
                    }
                }
            }
        })
    };
    tasks.spawn(async move {
        let _ = rollout_loop.await;
    });
    let https = match (&tls.certs, tls_addr) {
        (Some(certs), Some(addr)) => Some(hangar_proxy::Https {
            policy: Arc::new(certs.clone()),
            port: addr.port(),
        }),
        _ => None,
    };
    tasks.spawn({
        let stop = signal(shutdown_rx.clone());
        let routes = routes.clone();
        let trusted_proxies = opts.trusted_proxies.clone();
        async move {
            let options = hangar_proxy::EdgeOptions {
                trusted_proxies,
                https,
                ..hangar_proxy::EdgeOptions::default()
            };
            if let Err(e) = hangar_proxy::serve_with(proxy_listener, routes, options, stop).await {
                warn!("proxy: {e}");
            }
        }
    });
    if let (Some(listener), Some(certs)) = (tls_listener, &tls.certs) {
        certs.spawn_renewals(shutdown_rx.clone());
        let stop = signal(shutdown_rx.clone());
        let routes = routes.clone();
        let options = hangar_proxy::EdgeOptions {
            trusted_proxies: opts.trusted_proxies.clone(),
            ..hangar_proxy::EdgeOptions::default()
        };
        let policy: Arc<dyn hangar_proxy::TlsPolicy> = Arc::new(certs.clone());
        tasks.spawn(async move {
            if let Err(e) = hangar_proxy::serve_tls(listener, routes, options, policy, stop).await {
                warn!("TLS edge: {e}");
            }
        });
    }
    let metrics_token = metrics_token(&data)?;
    tasks.spawn({
        let stop = signal(shutdown_rx.clone());
        let routes = routes.clone();
        let hash = Some(hangar_core::id::hash_token(&metrics_token));
        async move {
            if let Err(e) = hangar_proxy::serve_metrics(admin_listener, routes, hash, stop).await {
                warn!("admin: {e}");
            }
        }
    });
    let state = ApiState {
        store,
        builder,
        agent,
        images,
        resources,
        routes: routes.clone(),
        certs: tls.certs.clone(),
        git,
        cfg: Arc::new(ApiConfig {
            max_upload_bytes: opts.max_upload_bytes,
            max_image_bytes: opts.max_image_bytes,
            uploads_dir: uploads,
            domain: opts.domain.clone(),
            proxy_port: proxy_addr.port(),
            tls_port: tls_addr.map(|a| a.port()),
            single_tenant,
            quotas: opts.quotas,
            default_memory_mb: opts.memory_mb,
            body_progress: Duration::from_secs(opts.api_body_progress_secs),
        }),
    };
    state.git.spawn_poller(state.clone(), shutdown_rx.clone());
    tasks.spawn({
        let stop = signal(shutdown_rx.clone());
        let api_tls = tls.api.clone();
        async move {
            if let Err(e) = hangar_api::serve_tls(api_listener, state, api_tls, stop).await {
                warn!("api: {e}");
            }
        }
    });

    println!("hangar: data dir {}", data.display());
    println!("hangar: runtime driver {}", driver.name());
    println!("hangar: API listening on {api_url}");
    if let Some(fingerprint) = &tls.api_fingerprint {
        println!("hangar: API certificate (self-signed) fingerprint {fingerprint}");
        println!(
            "hangar: from another machine: hangar login --api https://<this host>:{} --token <TOKEN> --fingerprint {fingerprint}",
            api_addr.port()
        );
    }
    println!(
        "hangar: proxy listening on http://{proxy_addr} (apps at http://<app>.{}:{}/)",
        opts.domain,
        proxy_addr.port()
    );
    if let Some(addr) = tls_addr {
        println!(
            "hangar: TLS edge listening on https://{addr} (apps at https://<app>.{}:{}/; {})",
            opts.domain,
            addr.port(),
            match tls.certs.as_ref().map(|c| c.acme()) {
                Some(true) => "certificates ordered through ACME",
                _ => "no ACME CA: the operator's and uploaded certificates only",
            }
        );
    }
    println!(
        "hangar: metrics on http://{admin_addr}/metrics (bearer token in {})",
        data.join("metrics-token").display()
    );
    println!("hangar: ready");

    wait_for_signal().await;
    println!("hangar: shutting down (machines keep running; the next `hangar up` re-adopts them)");
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// A future that resolves when the shutdown flag turns true.
async fn signal(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The token `/metrics` asks for (`Authorization: Bearer …`): made at first
/// start, kept in `<data>/metrics-token` (0600) for the operator's scraper.
fn metrics_token(data: &std::path::Path) -> Result<String> {
    let path = data.join("metrics-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    new_token_file(&path)
}

/// A new token, written to `path` (0600, synced) before it is used.
fn new_token_file(path: &std::path::Path) -> Result<String> {
    let token = hangar_core::id::new_token();
    hangar_resources::write_private_file(path, format!("{token}\n").as_bytes(), 0o600, None)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// The admin token: created with the first org on first start, kept in
/// `<data>/admin-token` (mode 0600); the store holds only its hash.
async fn admin_token(store: &Store, data: &std::path::Path) -> Result<String> {
    let path = data.join("admin-token");
    if store.has_orgs().await? {
        return Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned());
    }
    let token = new_token_file(&path)?;
    store
        .create_org_with_token("default", "admin", &hangar_core::id::hash_token(&token))
        .await?;
    println!(
        "hangar: created the admin token, stored in {}",
        path.display()
    );
    Ok(token)
}

/// Points the CLI on this machine at this server, unless its config is
/// already set up for another server.
fn remember_for_cli(api_url: &str, token: &str, fingerprint: Option<&str>) {
    let existing = CliConfig::load().unwrap_or_default();
    let ours = existing.token.as_deref().is_none_or(|t| t == token);
    if !ours {
        println!(
            "hangar: the CLI config ({}) points at another server; left as is",
            crate::config::config_path().display()
        );
        return;
    }
    let cfg = CliConfig {
        api_url: Some(api_url.to_owned()),
        token: Some(token.to_owned()),
        fingerprint: fingerprint.map(str::to_owned),
        ..CliConfig::default()
    };
    match cfg.save() {
        Ok(path) => println!("hangar: CLI configured in {}", path.display()),
        Err(e) => eprintln!("hangar: could not write the CLI config: {e:#}"),
    }
}

/// runc machines run in user namespaces as unprivileged host uids, so
/// they must be able to pass through the data dir (0711) and every
/// directory above it to reach their root filesystems (`images/rootfs`):
/// a parent that is not is reported, not changed.
fn set_mode(dir: &std::path::Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {} to {mode:o}", dir.display()))
}

/// How others reach what they need inside the private data dir: through
/// bind mounts under `/run/hangar` (see `run_dir::expose`), after the
/// mounts of data dirs that are gone are collected. When the run dir could
/// only be had inside the data dir, the data dir is opened for passing
/// through (0711) instead, loudly, and paths are used as they are.
struct Views {
    run_dir: PathBuf,
    data: PathBuf,
    mounted: bool,
}

impl Views {
    fn new(run_dir: &std::path::Path, data: &std::path::Path) -> Result<Views> {
        let mounted = !run_dir.starts_with(data);
        if mounted {
            if let Some(root) = run_dir.parent() {
                crate::run_dir::collect_stale(root);
            }
        } else {
            let w = format!(
                "no tmpfs run dir: {} is opened for passing through (0711) so machines and Hangar's own servers reach what they need in it",
                data.display()
            );
            eprintln!("\n!!! WARNING: {w}\n");
            warn!("{w}");
            set_mode(data, 0o711)?;
            check_traversable(data)?;
        }
        Ok(Views {
            run_dir: run_dir.to_owned(),
            data: data.to_owned(),
            mounted,
        })
    }

    /// Where machines see the unpacked images.
    fn rootfs(&self, images_rootfs: &std::path::Path) -> Result<PathBuf> {
        if !self.mounted {
            return Ok(images_rootfs.to_owned());
        }
        crate::run_dir::expose_rootfs(images_rootfs, &self.run_dir, &self.data)
            .map_err(|e| anyhow::anyhow!("making images reachable by machines: {e}"))
    }

    /// Where one of Hangar's own servers (`postgres`, `redis`, `nats`)
    /// keeps its files.
    fn daemon(&self, dir: &std::path::Path, kind: &str) -> Result<PathBuf> {
        if !self.mounted {
            return Ok(dir.to_owned());
        }
        crate::run_dir::expose(dir, kind, &self.run_dir, &self.data)
            .map_err(|e| anyhow::anyhow!("making {} reachable by its server: {e}", dir.display()))
    }
}

fn check_traversable(data: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for dir in data.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            anyhow::bail!(
                "{} (mode {:o}) cannot be passed through by other users, so machines (unprivileged uids in user namespaces) \
                 could not reach their root filesystems under {}; `chmod o+x {}`, or choose another --data-dir",
                dir.display(),
                mode & 0o7777,
                data.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Machines' networking: the node's firewall table, and the addresses
/// machines that exist already own.
async fn machine_network(
    store: &Store,
    data: &std::path::Path,
    subnet: hangar_node::Subnet,
    egress: hangar_node::Egress,
) -> Result<hangar_node::Network> {
    let taken = store
        .undestroyed_machines()
        .await?
        .into_iter()
        .filter_map(|m| match m.address {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        });
    let cfg = hangar_node::NetworkConfig {
        subnet,
        egress,
        tag: data_tag(data),
    };
    hangar_node::Network::setup(cfg, taken)
        .await
        .with_context(|| format!("setting up machine networking on {subnet}"))
}

/// A short, stable tag of a data dir: several hangars on one host keep
/// their run dirs, namespaces and firewall tables apart by it.
fn data_tag(data: &std::path::Path) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(data.as_os_str().as_encoded_bytes())[..3])
}

/// Raises hangar's open-file limit to the hard limit: every client
/// connection, upstream connection and machine log holds a descriptor,
/// and the listeners' caps (hangar_api::listen::LIMITS,
/// hangar_proxy::DEFAULT_LIMITS) assume the headroom.
fn raise_nofile() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `rl`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return;
        }
        let (had, wanted) = (rl.rlim_cur, rl.rlim_max);
        if had < wanted {
            rl.rlim_cur = wanted;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                tracing::warn!("cannot raise the open-file limit from {had} to {wanted}");
                return;
            }
        }
        if rl.rlim_cur < 8192 {
            tracing::warn!(
                limit = rl.rlim_cur,
                "the open-file limit is low: raise it (ulimit -n, LimitNOFILE=) for more connections"
            );
        }
    }
}
