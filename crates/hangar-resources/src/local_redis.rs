//! Redis servers of Hangar's own, one per app that declares Redis, when no
//! `--redis-url` is given: each app's memory is capped by its own server's
//! `maxmemory`, so one app filling its cache cannot take another's room.
//!
//! Layout of `dir` (e.g. `<data-dir>/redis`), one directory per app,
//! named by its [`ResourceKey`] (`<key>`: the app's id, or its name for a
//! server made before keys were ids; written `<app>` below):
//! - `<app>/port` — the app's server's TCP port on 127.0.0.1, chosen once
//!   so that the app's stored Redis URL stays valid across restarts.
//! - `<app>/admin.password` — the password of `hangar-admin`, the user
//!   Hangar changes ACLs and stops the server with (0600); only Hangar
//!   knows it.
//! - `<app>/users.acl` — the server's ACL file: `default` off, the admin
//!   (its password as a SHA-256 hash) and the app's user as
//!   [`crate::redis`] makes it on a shared server (`~<key>:* &<key>:*`,
//!   no admin or dangerous commands), saved by the server (`ACL SAVE`)
//!   after every change so that it survives a restart.
//! - `<app>/redis.conf` — written by Hangar on every start: 127.0.0.1
//!   only, protected mode, `maxmemory` with `noeviction` (a full cache
//!   answers OOM errors rather than lose keys), no RDB snapshots but the
//!   append-only file (`appendonlydir/`) so data survives restarts, one I/O
//!   thread, a modest `maxclients`, daemonized.
//! - `<app>/redis.pid`, `<app>/redis.log` — the daemon's pid and log.
//!
//! Servers start on first need (provisioning, a machine's start) and
//! outlive the Hangar that started them: a later start finds one running
//! through its pid file and uses it; a stale pid file (after a crash or a
//! reboot) is removed and the server started again. A root Hangar runs
//! them as the `redis` user (else `nobody`), which owns `dir`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::local_daemon::{self as daemon, RunAs};
use crate::redis::{RedisCredentials, RedisServer};
use crate::{ResourceError, ResourceKey};

type Result<T, E = ResourceError> = std::result::Result<T, E>;

/// The user Hangar administers each server as.
pub const ADMIN_USER: &str = "hangar-admin";
const PORT_FILE: &str = "port";
const ADMIN_PASSWORD_FILE: &str = "admin.password";
const ACL_FILE: &str = "users.acl";
const CONF_FILE: &str = "redis.conf";
const PID_FILE: &str = "redis.pid";
const LOG_FILE: &str = "redis.log";
/// How long a server gets to answer after it starts, or when found running
/// (it may be loading its append-only file).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one admin exchange may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server gets to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn redis_err(msg: impl Into<String>) -> ResourceError {
    ResourceError::Redis(msg.into())
}

/// Where `redis-server` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBinary {
    pub path: PathBuf,
    /// As `redis-server --version` prints it (`v=7.0.15`): `7.0.15`.
    pub version: String,
}

impl RedisBinary {
    /// `redis-server` on `$PATH`, else in `/usr/bin`, `/usr/sbin`,
    /// `/usr/local/bin`. None if absent.
    pub fn find() -> Option<RedisBinary> {
        find_program("redis-server").and_then(|p| RedisBinary::at(&p))
    }

    /// The binary at `path`, if it runs and says its version.
    pub fn at(path: &Path) -> Option<RedisBinary> {
        let out = std::process::Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .split_whitespace()
            .find_map(|t| t.strip_prefix("v="))?
            .to_owned();
        Some(RedisBinary {
            path: path.to_path_buf(),
            version,
        })
    }
}

/// An executable `name` on `$PATH` or in the usual system directories.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// What each app's server may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRedisOptions {
    /// `maxmemory`, in bytes: past it, writes get OOM errors (`noeviction`).
    pub max_memory: u64,
    /// `maxclients`.
    pub max_clients: u32,
}

impl Default for LocalRedisOptions {
    fn default() -> Self {
        LocalRedisOptions {
            max_memory: 64 << 20,
            max_clients: 256,
        }
    }
}

/// An app's running server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The daemon's pid.
    pub pid: i32,
    /// Its directory.
    pub dir: PathBuf,
}

/// Hangar's per-app Redis servers under one directory.
pub struct LocalRedis {
    bin: RedisBinary,
    dir: PathBuf,
    options: LocalRedisOptions,
    /// One lock per app: starting, changing and stopping its server.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for LocalRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRedis")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl LocalRedis {
    /// The servers under `dir` (nothing is started or created yet).
    pub fn new(bin: RedisBinary, dir: PathBuf, options: LocalRedisOptions) -> LocalRedis {
        LocalRedis {
            bin,
            dir,
            options,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The directory the servers live under.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the app's server unless it runs already (set up on first
    /// use), waits until it answers, and returns it.
    pub async fn start(&self, app: &str) -> Result<AppRedis> {
        let app = parse_app(app)?;
        let lock = self.lock(app.as_str());
        let _held = lock.lock().await;
        Ok(self.start_locked(&app).await?.0)
    }

    /// Starts the app's server if needed and creates (or resets) the app's
    /// user on it with `password`, as on a shared server.
    pub async fn ensure_app(&self, app: &str, password: &str) -> Result<RedisCredentials> {
        let app = parse_app(app)?;
        let lock = self.lock(app.as_str());
        let _held = lock.lock().await;
        let (server, admin) = self.start_locked(&app).await?;
        let creds = admin.server()?.ensure_user(&app, password).await?;
        admin.call(&["ACL", "SAVE"]).await?;
        tracing::info!(
            app = app.as_str(),
            port = server.port,
            "local Redis user ready"
        );
        Ok(creds)
    }

    /// Starts the app's server if needed (after a reboot, or a crash) and
    /// sets the app's user as `creds` describe it (rules as they are now).
    pub async fn reassert(&self, app: &str, creds: &RedisCredentials) -> Result<()> {
        let app = parse_app(app)?;
        let lock = self.lock(app.as_str());
        let _held = lock.lock().await;
        let (_, admin) = self.start_locked(&app).await?;
        admin.server()?.reassert(creds).await?;
        admin.call(&["ACL", "SAVE"]).await?;
        Ok(())
    }

    /// The app's server, if it is running (nothing is started).
    pub fn running(&self, app: &str) -> Result<Option<AppRedis>> {
        let app = parse_app(app)?;
        let dir = self.dir.join(app.as_str());
        let Some(port) = daemon::read_port(&dir.join(PORT_FILE)) else {
            return Ok(None);
        };
        let pid = self.pid_of(&dir)?;
        Ok(pid.map(|pid| AppRedis { port, pid, dir }))
    }

    /// The apps that have a server here (running or not).
    pub fn apps(&self) -> Vec<String> {
        daemon::app_dirs(&self.dir)
    }

    /// Stops the app's server (its data stays). Stopping a server that is
    /// not running is no error.
    pub async fn stop(&self, app: &str) -> Result<()> {
        let app = parse_app(app)?;
        let lock = self.lock(app.as_str());
        let _held = lock.lock().await;
        self.stop_locked(&app).await
    }

    /// Stops every server here (their data stays).
    pub async fn stop_all(&self) -> Result<()> {
        for app in self.apps() {
            self.stop(&app).await?;
        }
        Ok(())
    }

    /// Stops the app's server and removes its directory: its data and its
    /// user are gone.
    pub async fn remove_app(&self, app: &str) -> Result<()> {
        let app = parse_app(app)?;
        let lock = self.lock(app.as_str());
        let _held = lock.lock().await;
        self.stop_locked(&app).await?;
        let dir = self.dir.join(app.as_str());
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(redis_err(format!("cannot remove {}: {e}", dir.display())));
            }
            _ => {}
        }
        tracing::info!(app = app.as_str(), "local Redis of the app removed");
        Ok(())
    }

    fn lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(app.to_owned())
            .or_default()
            .clone()
    }

    fn pid_of(&self, app_dir: &Path) -> Result<Option<i32>> {
        daemon::running_pid(&app_dir.join(PID_FILE), "redis-server", app_dir).map_err(redis_err)
    }

    async fn stop_locked(&self, app: &ResourceKey) -> Result<()> {
        let dir = self.dir.join(app.as_str());
        if !dir.exists() {
            return Ok(());
        }
        let Some(pid) = self.pid_of(&dir)? else {
            return Ok(());
        };
        let killed = daemon::terminate(pid, STOP_GRACE).await;
        if daemon::pid_alive(pid) {
            return Err(redis_err(format!(
                "the local Redis of {} (pid {pid}) does not stop",
                app.as_str()
            )));
        }
        if killed {
            tracing::warn!(
                app = app.as_str(),
                pid,
                "local Redis killed (it did not stop on SIGTERM)"
            );
            let _ = std::fs::remove_file(dir.join(PID_FILE));
        }
        tracing::info!(app = app.as_str(), pid, "local Redis stopped");
        Ok(())
    }

    async fn start_locked(&self, app: &ResourceKey) -> Result<(AppRedis, Admin)> {
        let root_run_as = daemon::choose_run_as(&self.dir, "redis").map_err(redis_err)?;
        daemon::prepare_dir(&self.dir, root_run_as.as_ref(), "Redis").map_err(redis_err)?;
        let root = self
            .dir
            .canonicalize()
            .map_err(|e| redis_err(format!("cannot resolve {}: {e}", self.dir.display())))?;
        let dir = root.join(app.as_str());
        let run_as = daemon::choose_run_as(&dir, "redis")
            .map_err(redis_err)?
            .or(root_run_as);
        daemon::prepare_dir(&dir, run_as.as_ref(), "Redis").map_err(redis_err)?;
        let owner = RunAs::owner(run_as.as_ref());
        let password = daemon::load_or_create_secret(&dir.join(ADMIN_PASSWORD_FILE), owner)
            .map_err(redis_err)?;
        let others: Vec<u16> = daemon::app_dirs(&root)
            .iter()
            .filter(|a| *a != app.as_str())
            .filter_map(|a| daemon::read_port(&root.join(a).join(PORT_FILE)))
            .collect();
        let port =
            daemon::load_or_choose_port(&dir.join(PORT_FILE), owner, &others).map_err(redis_err)?;
        let admin = Admin { port, password };

        if let Some(pid) = self.pid_of(&dir)? {
            match admin.wait_until_answering(ANSWER_TIMEOUT, Some(pid)).await {
                Ok(()) => {
                    // Options may have changed since it started.
                    admin
                        .call(&[
                            "CONFIG",
                            "SET",
                            "maxmemory",
                            &self.options.max_memory.to_string(),
                        ])
                        .await?;
                    tracing::debug!(app = app.as_str(), port, pid, "local Redis already running");
                    return Ok((AppRedis { port, pid, dir }, admin));
                }
                Err(e) if daemon::pid_alive(pid) => {
                    return Err(redis_err(format!(
                        "the local Redis of {} (pid {pid}) is running but does not answer on 127.0.0.1:{port}: {e}{}",
                        app.as_str(),
                        daemon::log_note(&dir.join(LOG_FILE))
                    )));
                }
                Err(e) => {
                    tracing::warn!(app = app.as_str(), pid, error = %e, "the local Redis exited; starting it again");
                    self.pid_of(&dir)?;
                }
            }
        }

        self.write_config(app, &dir, port, &admin.password, owner)?;
        if let Err(e) = daemon::port_free(port) {
            let file = dir.join(PORT_FILE);
            return Err(redis_err(format!(
                "the local Redis of {} cannot listen on 127.0.0.1:{port} (the port kept in {}, which the app's Redis URL names): {e}; \
                 another program holds it: stop that program, or remove {} to choose a new port (the app then needs a new deploy)",
                app.as_str(),
                file.display(),
                file.display(),
            )));
        }
        let mut cmd = tokio::process::Command::new(&self.bin.path);
        cmd.arg(dir.join(CONF_FILE))
            .current_dir(&dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        if let Some(r) = &run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
        daemon::private_umask(&mut cmd);
        // `daemonize yes`: it forks, and the parent exits once the config
        // is read (a bad one fails here, with the reason on stdout).
        let out = tokio::time::timeout(ANSWER_TIMEOUT, cmd.output())
            .await
            .map_err(|_| redis_err(format!("{} did not daemonize", self.bin.path.display())))?
            .map_err(|e| redis_err(format!("cannot run {}: {e}", self.bin.path.display())))?;
        if !out.status.success() {
            return Err(redis_err(format!(
                "{} {} failed ({}): {}{}",
                self.bin.path.display(),
                dir.join(CONF_FILE).display(),
                out.status,
                daemon::output_text(&out),
                daemon::log_note(&dir.join(LOG_FILE))
            )));
        }
        admin
            .wait_until_answering(ANSWER_TIMEOUT, None)
            .await
            .map_err(|e| {
                redis_err(format!(
                    "the local Redis of {} started but does not answer on 127.0.0.1:{port}: {e}{}",
                    app.as_str(),
                    daemon::log_note(&dir.join(LOG_FILE))
                ))
            })?;
        let pid = self.pid_of(&dir)?.ok_or_else(|| {
            redis_err(format!(
                "the local Redis of {} answers but wrote no pid file {}",
                app.as_str(),
                dir.join(PID_FILE).display()
            ))
        })?;
        tracing::info!(app = app.as_str(), port, pid, dir = %dir.display(), "local Redis started");
        Ok((AppRedis { port, pid, dir }, admin))
    }

    /// Writes `redis.conf` and `users.acl` (keeping the app's user as the
    /// server last saved it).
    fn write_config(
        &self,
        app: &ResourceKey,
        dir: &Path,
        port: u16,
        admin_password: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        let q = |name: &str| daemon::quoted_path(&dir.join(name)).map_err(redis_err);
        let conf = format!(
            "# Written by Hangar on every start: edits here are lost.\n\
             bind 127.0.0.1\n\
             protected-mode yes\n\
             port {port}\n\
             tcp-backlog 128\n\
             daemonize yes\n\
             supervised no\n\
             pidfile {pid}\n\
             logfile {log}\n\
             loglevel notice\n\
             dir {dir}\n\
             save \"\"\n\
             appendonly yes\n\
             appendfsync everysec\n\
             maxmemory {max_memory}\n\
             maxmemory-policy noeviction\n\
             maxclients {max_clients}\n\
             io-threads 1\n\
             aclfile {acl}\n\
             enable-protected-configs no\n\
             enable-debug-command no\n\
             enable-module-command no\n",
            pid = q(PID_FILE)?,
            log = q(LOG_FILE)?,
            dir = daemon::quoted_path(dir).map_err(redis_err)?,
            acl = q(ACL_FILE)?,
            max_memory = self.options.max_memory,
            max_clients = self.options.max_clients,
        );
        let conf_path = dir.join(CONF_FILE);
        daemon::write_new(&conf_path, conf.as_bytes(), 0o600, owner)
            .map_err(|e| redis_err(format!("cannot write {}: {e}", conf_path.display())))?;

        let acl_path = dir.join(ACL_FILE);
        let previous = daemon::read_limited(&acl_path, 1 << 20)
            .map_err(|e| redis_err(format!("cannot read {}: {e}", acl_path.display())))?
            .unwrap_or_default();
        let acl = acl_file(&app.redis_user()?, admin_password, &previous);
        daemon::write_new(&acl_path, acl.as_bytes(), 0o600, owner)
            .map_err(|e| redis_err(format!("cannot write {}: {e}", acl_path.display())))?;
        Ok(())
    }
}

/// An app's server is named by its [`ResourceKey`] (the app's id; its
/// name for one made before keys were ids).
fn parse_app(app: &str) -> Result<ResourceKey> {
    Ok(ResourceKey::parse(app)?)
}

/// The ACL file: `default` off, the admin, and the app's `user` as the
/// server saved it in `previous` (the last such line), if it did.
fn acl_file(user: &str, admin_password: &str, previous: &str) -> String {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(admin_password.as_bytes()));
    let mut out = format!(
        "user default off resetpass resetkeys resetchannels -@all\n\
         user {ADMIN_USER} on #{hash} ~* &* +@all\n"
    );
    let kept = previous.lines().rev().find(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some("user") && words.next() == Some(user)
    });
    if let Some(line) = kept {
        out.push_str(line.trim());
        out.push('\n');
    }
    out
}

/// Hangar's admin connection details for one server.
#[derive(Clone)]
struct Admin {
    port: u16,
    password: String,
}

impl Admin {
    fn server(&self) -> Result<RedisServer> {
        RedisServer::new(&format!(
            "redis://{ADMIN_USER}:{}@127.0.0.1:{}",
            self.password, self.port
        ))
    }

    /// Authenticates as the admin, runs one command, returns its reply's
    /// first line; an error reply is an error.
    async fn call(&self, args: &[&str]) -> Result<String> {
        let what = match args {
            ["ACL", sub, ..] | ["CONFIG", sub, ..] => format!("{} {sub}", args[0]),
            [cmd, ..] => (*cmd).to_owned(),
            [] => String::new(),
        };
        let exchange = async {
            let mut io = self.connect().await?;
            match exchange(&mut io, &["AUTH", ADMIN_USER, &self.password]).await? {
                Ok(_) => {}
                Err(e) => return Ok(Err(format!("AUTH as {ADMIN_USER}: {e}"))),
            }
            exchange(&mut io, args).await
        };
        let reply = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| redis_err(format!("{what} timed out")))?
            .map_err(|e| redis_err(format!("{what}: {e}")))?;
        reply.map_err(|msg| redis_err(format!("{what}: {msg}")))
    }

    async fn connect(&self) -> std::io::Result<BufReader<TcpStream>> {
        Ok(BufReader::new(
            TcpStream::connect(("127.0.0.1", self.port)).await?,
        ))
    }

    /// PING as the admin until it answers or `timeout` passes; a refused
    /// password fails at once.
    async fn wait_until_answering(
        &self,
        timeout: Duration,
        pid: Option<i32>,
    ) -> std::result::Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pid) = pid.filter(|pid| !daemon::pid_alive(*pid)) {
                return Err(format!("it exited (pid {pid})"));
            }
            match self.call(&["PING"]).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let text = e.to_string();
                    if text.contains("WRONGPASS") {
                        return Err(format!(
                            "{text} (the admin password in {ADMIN_PASSWORD_FILE} does not match the server's ACL file)"
                        ));
                    }
                    if Instant::now() >= deadline {
                        return Err(text);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends one command and reads its reply's first line (and a bulk
/// string's value): `Ok(Err(msg))` for an error reply.
async fn exchange(
    io: &mut BufReader<TcpStream>,
    args: &[&str],
) -> std::io::Result<std::result::Result<String, String>> {
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    io.get_mut().write_all(&req).await?;
    let mut line = String::new();
    if io.read_line(&mut line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    let line = line.trim_end().to_owned();
    if let Some(msg) = line.strip_prefix('-') {
        return Ok(Err(msg.to_owned()));
    }
    if let Some(len) = line.strip_prefix('$').and_then(|l| l.parse::<usize>().ok()) {
        if len > 1 << 20 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "reply too long",
            ));
        }
        let mut buf = vec![0; len + 2];
        io.read_exact(&mut buf).await?;
        buf.truncate(len);
        return Ok(Ok(String::from_utf8_lossy(&buf).into_owned()));
    }
    Ok(Ok(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_files_keep_only_the_apps_user() {
        let previous = "user default on nopass ~* &* +@all\n\
                        user hangar-admin on #00 ~* &* +@all\n\
                        user hangar_other on #11 ~* +@all\n\
                        user hangar_a on sanitize-payload #22 ~a:* &a:* +@all -@admin -@dangerous\n";
        let acl = acl_file("hangar_a", "pw", previous);
        let lines: Vec<&str> = acl.lines().collect();
        assert_eq!(lines.len(), 3, "{acl}");
        assert!(lines[0].starts_with("user default off "), "{acl}");
        assert!(lines[1].starts_with("user hangar-admin on #"), "{acl}");
        assert!(!lines[1].contains("pw"), "only its hash");
        assert!(
            lines[2].starts_with("user hangar_a on sanitize-payload #22"),
            "{acl}"
        );
        // A first start: no app user yet.
        assert_eq!(acl_file("hangar_a", "pw", "").lines().count(), 2);
    }

    #[test]
    fn versions() {
        if let Some(bin) = RedisBinary::find() {
            assert!(
                bin.version.starts_with(|c: char| c.is_ascii_digit()),
                "{bin:?}"
            );
        }
    }
}
