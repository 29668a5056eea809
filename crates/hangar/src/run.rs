//! `hangar run [DIR]`: runs a hangar-runtime app on this machine, without
//! Docker or a platform, with the resources it gets when deployed.
//!
//! - The resources are read from the code as the builder reads them
//!   (`hangar_build::resources::declared`, nothing is run) and provisioned
//!   by the same `Resources`, on a state store of its own under
//!   `<data-dir>/local/` (org `local`, the app named after the package).
//! - Postgres: `--postgres-url`, else a cluster of Hangar's own under
//!   `<data-dir>/local/postgres`, left running so the next run is instant.
//!   Redis and PubSub: `--redis-url` / `--nats-url`, else nothing is
//!   provisioned and the runtime uses its in-memory stand-ins. Secrets:
//!   `Secrets.dev.toml`, else `Secrets.toml`.
//! - The app is built with `cargo build` (patched onto the runtime this
//!   binary embeds) and its binary run directly, not through `cargo run`,
//!   so Ctrl-C and SIGTERM reach the app, which shuts down gracefully;
//!   `hangar run` exits with its status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hangar_build::resources::{self, Runtime};
use hangar_core::resource::ResourceKind;
use hangar_resources::local_pg::{LocalPostgres, PostgresBinaries};
use hangar_resources::{PostgresServer, RedisServer, Resources, Vault};
use hangar_store::Store;
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};

/// The secrets files of a local run, the first found wins.
const SECRETS_FILES: [&str; 2] = ["Secrets.dev.toml", "Secrets.toml"];

/// Settings the app must not inherit: they carry admin credentials.
const WITHHELD_ENV: [&str; 4] = [
    "HANGAR_POSTGRES_URL",
    "HANGAR_REDIS_URL",
    "HANGAR_NATS_URL",
    "HANGAR_DATA_DIR",
];

/// Options of `hangar run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The cargo project.
    pub dir: PathBuf,
    /// `$PORT` of the app.
    pub port: u16,
    /// Build with `--release`.
    pub release: bool,
    /// Hangar's data dir; local runs keep their state under `local/`.
    pub data_dir: PathBuf,
    /// A Postgres server to use instead of the local cluster.
    pub postgres_url: Option<String>,
    /// A Redis server (else the app gets an in-memory cache).
    pub redis_url: Option<String>,
    /// A NATS server (else the app gets in-process pub/sub).
    pub nats_url: Option<String>,
}

/// Runs the app until it exits (or is stopped by Ctrl-C / SIGTERM) and
/// returns the exit code `hangar run` should exit with.
pub async fn run(opts: RunOptions) -> Result<i32> {
    // Before anything: a signal from here on is handled, never fatal, so
    // the resources file is always removed.
    let mut signals = Signals::new()?;
    let manifest = opts.dir.join("Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "{} has no Cargo.toml: run `hangar run` in a cargo project or pass its directory",
            opts.dir.display()
        );
    }
    let dir = opts
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", opts.dir.display()))?;
    let declared = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || resources::declared(&dir)).await?
    };
    let cargo = PathBuf::from(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));

    let mut prepared = None;
    match declared.runtime {
        Some(Runtime::Shuttle) => bail!(
            "{} is a Shuttle app (#[shuttle_runtime::main]): `hangar run` does not run Shuttle apps locally yet; \
             deploy it with `hangar deploy`, which does",
            dir.display()
        ),
        None => println!(
            "==> no #[hangar_runtime::main] in {}: running it as a plain app (PORT={}, no resources)",
            dir.display(),
            opts.port
        ),
        Some(Runtime::Hangar) => {
            let app = crate::commands::app_name(&dir, None)?;
            tokio::select! {
                p = prepare(&opts, &dir, &app, &declared.kinds) => prepared = Some(p?),
                _ = signals.next() => {
                    println!("==> stopped");
                    return Ok(130);
                }
            }
        }
    }

    let bin = hangar_build::cargo::pick_binary(&cargo, &dir)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut extra_args = Vec::new();
    if let Some(p) = &prepared {
        extra_args.extend(hangar_build::runtime_patch_args(&p.runtime_dir));
    }
    let Some(binary) = build(&cargo, &dir, &bin, opts.release, &extra_args, &mut signals).await?
    else {
        println!("==> stopped");
        return Ok(130);
    };

    let mut cmd = tokio::process::Command::new(&binary);
    cmd.current_dir(&dir)
        .env("PORT", opts.port.to_string())
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    for var in WITHHELD_ENV {
        cmd.env_remove(var);
    }
    // Written only now, and removed when the app exits: credentials are on
    // disk only while the app runs.
    let mut _file_guard = None;
    if let Some(p) = &prepared {
        let json = serde_json::to_vec_pretty(&p.machine)?;
        hangar_resources::write_private_file(&p.resources_file, &json, 0o600, None)
            .with_context(|| format!("writing {}", p.resources_file.display()))?;
        _file_guard = Some(RemoveOnDrop(p.resources_file.clone()));
        cmd.env("HANGAR_RESOURCES", &p.resources_file)
            .env("HANGAR_APP", &p.app);
    } else {
        cmd.env_remove("HANGAR_RESOURCES");
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().context("the app exited at once")?;
    println!(
        "==> running {} on http://127.0.0.1:{}/ (pid {pid}; Ctrl-C stops it)",
        bin, opts.port
    );

    let mut signalled = 0;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the app")?,
            _ = signals.next() => {
                signalled += 1;
                let sig = if signalled == 1 { libc::SIGTERM } else { libc::SIGKILL };
                if signalled == 1 {
                    println!("==> stopping {bin} (SIGTERM; again to kill it)");
                }
                // SAFETY: kill has no memory-safety preconditions; the pid
                // is our unreaped child, so it is not reused.
                unsafe { libc::kill(pid as i32, sig) };
            }
        }
    };
    drop(_file_guard);
    let code = exit_code(&status);
    println!("==> {bin} exited ({status})");
    Ok(code)
}

/// What a Hangar app's run needs, made ready before the build.
struct Prepared {
    app: String,
    runtime_dir: PathBuf,
    resources_file: PathBuf,
    machine: hangar_resources::MachineResources,
}

/// The local state, the runtime sources, the resources and the secrets.
async fn prepare(
    opts: &RunOptions,
    dir: &Path,
    app_name: &str,
    kinds: &BTreeSet<ResourceKind>,
) -> Result<Prepared> {
    let list: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    println!(
        "==> app {app_name}: resources declared in code: {}",
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    );
    let secrets = read_secrets(dir)?;
    let local = opts.data_dir.join("local");
    std::fs::create_dir_all(&local).with_context(|| format!("creating {}", local.display()))?;
    let local = local
        .canonicalize()
        .with_context(|| format!("resolving {}", local.display()))?;
    let store = Store::open(&local.join("state.db")).context("opening the local state store")?;
    let vault = Vault::open(&local.join("secrets.key")).context("opening the secrets key")?;
    let runtime_dir = crate::runtime_src::install(&local.join("runtime"))
        .context("installing hangar-runtime's sources")?;

    // The org `local`, found again by a token derived from the key: the
    // store finds orgs by token only.
    let token_hash = hangar_core::id::hash_token(&vault.token("hangar run: org local"));
    let org = match store.org_for_token(&token_hash).await? {
        Some(org) => org,
        None => store
            .create_org_with_token("local", "hangar run", &token_hash)
            .await
            .with_context(|| format!("creating the org `local` in {}", local.display()))?,
    };
    let app = store.get_or_create_app(&org.id, app_name).await?;

    let postgres = if kinds.contains(&ResourceKind::Postgres) {
        Some(postgres_server(opts, &local).await?)
    } else {
        None
    };
    let mut res = Resources::new(store.clone(), vault, postgres);
    let mut wanted = BTreeSet::new();
    for kind in kinds {
        match kind {
            ResourceKind::Postgres | ResourceKind::Secrets => {
                wanted.insert(*kind);
            }
            ResourceKind::Redis => match &opts.redis_url {
                Some(url) => {
                    res = res.with_redis(RedisServer::new(url)?);
                    wanted.insert(*kind);
                }
                None => println!(
                    "==> redis: no --redis-url: the app gets an in-memory cache (this process only, not kept)"
                ),
            },
            ResourceKind::PubSub => match &opts.nats_url {
                Some(url) => {
                    res = res.with_nats(url.clone());
                    wanted.insert(*kind);
                }
                None => println!(
                    "==> pubsub: no --nats-url: the app gets in-memory pub/sub (this process only)"
                ),
            },
        }
    }
    // Servers may differ from one local run to the next (a flag given or
    // not, a cluster made afresh): the server-backed resources are
    // provisioned again each time (idempotent: a database is kept). Their
    // rows stay, marked not ready, so the names they record are kept:
    // a database made by an older Hangar, named after the app's name,
    // keeps its data.
    for mut row in store.resources(&app.id).await? {
        if row.kind != ResourceKind::Secrets.as_str() {
            row.status = "provisioning".to_owned();
            row.detail = None;
            row.sealed = None;
            store.put_resource(row).await?;
        }
    }
    // Secrets are the secrets file's here, said by `sync_secrets`.
    let progress = |line: String| {
        if !line.starts_with("secrets:") {
            println!("==> {line}");
        }
    };
    res.provision(&app, &wanted, &progress)
        .await
        .context("provisioning")?;
    sync_secrets(
        &res,
        &app.id,
        dir,
        secrets,
        kinds.contains(&ResourceKind::Secrets),
    )
    .await?;

    let machine = res.for_machine(&app.id).await?;
    Ok(Prepared {
        resources_file: local.join("run").join(&app.name).join("resources.json"),
        app: app.name,
        runtime_dir,
        machine,
    })
}

/// `--postgres-url`, else the local cluster (started if it is not running).
async fn postgres_server(opts: &RunOptions, local: &Path) -> Result<PostgresServer> {
    if let Some(url) = &opts.postgres_url {
        let server = PostgresServer::new(url)?;
        println!("==> postgres: the server of --postgres-url");
        return Ok(server);
    }
    let Some(bins) = PostgresBinaries::find() else {
        bail!(
            "this app declares a Postgres database, and there is neither a PostgreSQL installation \
             (initdb, pg_ctl and postgres, on $PATH or in /usr/lib/postgresql/<N>/bin) for a local cluster \
             nor a --postgres-url: install PostgreSQL's server (e.g. apt-get install postgresql) \
             or pass --postgres-url postgres://USER:PASSWORD@HOST:PORT/postgres"
        );
    };
    let mut dir = local.join("postgres");
    // As root, the cluster runs as its own user, which a private data dir
    // (`hangar up` makes it 0700) does not let through: it is given a view
    // under /run/hangar, as `hangar up` gives its own servers.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let run = crate::run_dir::run_dir(local);
        if !run.starts_with(local) {
            dir = crate::run_dir::expose(&dir, "postgres", &run, local).map_err(|e| {
                anyhow::anyhow!("making {} reachable by Postgres: {e}", dir.display())
            })?;
        }
    }
    let pg = LocalPostgres::start(&bins, &dir)
        .await
        .context("starting the local Postgres cluster")?;
    println!(
        "==> postgres: local cluster (PostgreSQL {}) on 127.0.0.1:{} in {}; it keeps running after `hangar run` exits, so the next run starts at once",
        bins.version,
        pg.port(),
        dir.display()
    );
    Ok(PostgresServer::new(&pg.admin_url())?)
}

/// The project's secrets file (the first of [`SECRETS_FILES`]), if any,
/// with its secrets: read, and their names checked, before anything is
/// provisioned.
type SecretsFile = Option<(PathBuf, BTreeMap<String, String>)>;

fn read_secrets(dir: &Path) -> Result<SecretsFile> {
    let found = crate::secrets_file::find(dir, &SECRETS_FILES)?;
    if let Some((path, values)) = &found {
        hangar_resources::check_secret_names(values.keys())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(found)
}

/// Makes the app's secrets those of the project's secrets file: set its
/// values, unset names it no longer has.
async fn sync_secrets(
    res: &Resources,
    app_id: &str,
    dir: &Path,
    file: SecretsFile,
    declared: bool,
) -> Result<()> {
    let (path, values) = match file {
        Some((path, values)) => (Some(path), values),
        None => (None, BTreeMap::new()),
    };
    let names: Vec<String> = values.keys().cloned().collect();
    if !values.is_empty() {
        res.set_secrets(app_id, values).await?;
    }
    let stale: Vec<String> = res
        .secret_names(app_id)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !names.contains(n))
        .collect();
    if !stale.is_empty() {
        res.unset_secrets(app_id, stale).await?;
    }
    match path {
        Some(path) => println!(
            "==> secrets: {} from {}{}",
            names.len(),
            path.file_name().unwrap_or_default().to_string_lossy(),
            if names.is_empty() {
                String::new()
            } else {
                format!(" ({})", names.join(", "))
            }
        ),
        None if declared => println!(
            "==> secrets: none (no {} or {} in {})",
            SECRETS_FILES[0],
            SECRETS_FILES[1],
            dir.display()
        ),
        None => {}
    }
    Ok(())
}

/// `cargo build [--release] --bin BIN`, output on the terminal; the built
/// executable, or None when a signal stopped the build.
async fn build(
    cargo: &Path,
    dir: &Path,
    bin: &str,
    release: bool,
    extra_args: &[String],
    signals: &mut Signals,
) -> Result<Option<PathBuf>> {
    let mut cmd = tokio::process::Command::new(cargo);
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    cmd.args(["--bin", bin, "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .args(extra_args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for var in WITHHELD_ENV {
        cmd.env_remove(var);
    }
    println!(
        "==> cargo build{} --bin {bin}",
        if release { " --release" } else { "" }
    );
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", cargo.display()))?;
    let mut stdout = child.stdout.take().context("cargo's stdout")?;
    // Read concurrently with the wait, so cargo never blocks on the pipe.
    let reader = tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut bytes).await;
        bytes
    });
    let status = tokio::select! {
        status = child.wait() => status.context("waiting for cargo")?,
        _ = signals.next() => {
            if let Some(pid) = child.id() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            return Ok(None);
        }
    };
    let bytes = reader.await.unwrap_or_default();
    if !status.success() {
        bail!("cargo build failed ({status}); see its output above");
    }
    executable(&bytes, bin)
        .with_context(|| format!("cargo built no executable named {bin}"))
        .map(Some)
}

/// The executable of bin target `bin` in cargo's JSON messages.
fn executable(messages: &[u8], bin: &str) -> Option<PathBuf> {
    String::from_utf8_lossy(messages)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
}

/// The shell's convention: the code, or 128 + the signal that ended it.
fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Ctrl-C and SIGTERM, as one stream.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            term: signal(SignalKind::terminate()).context("handling SIGTERM")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Removes a file when dropped (best effort).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_in_cargo_messages() {
        let messages = br#"{"reason":"compiler-artifact","target":{"name":"serde","kind":["lib"]},"executable":null}
not json
{"reason":"compiler-artifact","target":{"name":"todo","kind":["bin"]},"executable":"/t/release/todo"}
{"reason":"build-finished","success":true}
"#;
        assert_eq!(
            executable(messages, "todo"),
            Some(PathBuf::from("/t/release/todo"))
        );
        assert_eq!(executable(messages, "other"), None);
    }
}
