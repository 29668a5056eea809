//! A NATS server of Hangar's own, shared by every app that declares
//! PubSub, when no `--nats-url` is given. Each app gets a user of its own
//! that may publish and subscribe only under its subject prefix
//! (`hangar.<key>.>`, the app's [`ResourceKey`]: its id, or its name for
//! a user made before keys were ids); the server enforces it, whatever a
//! client sends.
//!
//! Layout of `dir` (e.g. `<data-dir>/nats`):
//! - `port` — the TCP port on 127.0.0.1, chosen once so that apps' stored
//!   NATS URLs stay valid across restarts.
//! - `admin.password` — the password of `hangar-admin`, Hangar's own user
//!   (0600).
//! - `apps.json` — each app's key and password (0600): what `nats.conf`
//!   is written from.
//! - `nats.conf` — written by Hangar whenever apps come and go (0600):
//!   127.0.0.1 only, `max_payload` 1 MiB, a `max_connections` cap, no
//!   JetStream (so nothing is persisted), and `authorization { users }`.
//!   The server rereads it on SIGHUP; Hangar waits until an added user is
//!   accepted, or a removed one refused, before it goes on.
//! - `nats.pid`, `nats.log` — the server's pid and log (its stderr too).
//!
//! The server starts on first need and outlives the Hangar that started it
//! (its own process group, no terminal): a later start finds it running
//! through its pid file and uses it; a stale pid file is removed and the
//! server started again. A root Hangar runs it as the `nats` user (else
//! `nobody`), which owns `dir`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::local_daemon::{self as daemon, RunAs};
use crate::{PubSubConfig, ResourceError, ResourceKey};

type Result<T, E = ResourceError> = std::result::Result<T, E>;

/// Hangar's own user on the server.
pub const ADMIN_USER: &str = "hangar-admin";
const PORT_FILE: &str = "port";
const ADMIN_PASSWORD_FILE: &str = "admin.password";
const APPS_FILE: &str = "apps.json";
const CONF_FILE: &str = "nats.conf";
const PID_FILE: &str = "nats.pid";
const LOG_FILE: &str = "nats.log";
/// The largest message (1 MiB).
pub const MAX_PAYLOAD: u32 = 1 << 20;
/// How long the server gets to answer after it starts, and to put a
/// changed configuration into effect.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one probe may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server gets to stop on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn nats_err(msg: impl Into<String>) -> ResourceError {
    ResourceError::Nats(msg.into())
}

/// Where `nats-server` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsBinary {
    pub path: PathBuf,
    /// As `nats-server --version` prints it (`nats-server: v2.9.10`):
    /// `2.9.10`.
    pub version: String,
}

impl NatsBinary {
    /// `nats-server` on `$PATH`, else in `/usr/sbin`, `/usr/bin`,
    /// `/usr/local/bin`. None if absent.
    pub fn find() -> Option<NatsBinary> {
        crate::local_redis::find_program("nats-server").and_then(|p| NatsBinary::at(&p))
    }

    /// The binary at `path`, if it runs and says its version.
    pub fn at(path: &Path) -> Option<NatsBinary> {
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
            .find_map(|t| t.strip_prefix('v'))
            .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))?
            .to_owned();
        Some(NatsBinary {
            path: path.to_path_buf(),
            version,
        })
    }
}

/// Limits of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNatsOptions {
    /// `max_connections`, all apps together.
    pub max_connections: u32,
}

impl Default for LocalNatsOptions {
    fn default() -> Self {
        LocalNatsOptions {
            max_connections: 4096,
        }
    }
}

/// The running server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningNats {
    /// Its port on 127.0.0.1.
    pub port: u16,
    pub pid: i32,
}

/// Hangar's NATS server under one directory.
pub struct LocalNats {
    bin: NatsBinary,
    dir: PathBuf,
    options: LocalNatsOptions,
    /// Held while starting, reconfiguring or stopping.
    lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for LocalNats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNats")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Everything about the server but whether it runs.
struct Setup {
    dir: PathBuf,
    owner: Option<(u32, u32)>,
    run_as: Option<RunAs>,
    port: u16,
    admin_password: String,
    apps: BTreeMap<String, String>,
}

impl LocalNats {
    /// The server under `dir` (nothing is started or created yet).
    pub fn new(bin: NatsBinary, dir: PathBuf, options: LocalNatsOptions) -> LocalNats {
        LocalNats {
            bin,
            dir,
            options,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the server unless it runs already (set up on first use) and
    /// waits until it answers.
    pub async fn start(&self) -> Result<RunningNats> {
        let _held = self.lock.lock().await;
        let setup = self.setup()?;
        self.start_locked(&setup).await
    }

    /// The server, if it is running (nothing is started).
    pub fn running(&self) -> Result<Option<RunningNats>> {
        let Some(port) = daemon::read_port(&self.dir.join(PORT_FILE)) else {
            return Ok(None);
        };
        let dir = match self.dir.canonicalize() {
            Ok(d) => d,
            Err(_) => return Ok(None),
        };
        Ok(self.pid_of(&dir)?.map(|pid| RunningNats { port, pid }))
    }

    /// The apps that have a user.
    pub fn apps(&self) -> Result<Vec<String>> {
        Ok(load_apps(&self.dir.join(APPS_FILE))?.into_keys().collect())
    }

    /// Gives `app` a user with `password` (a new password replaces an
    /// older one), starting the server if needed; returns once the server
    /// accepts it.
    pub async fn add_app(&self, app: &str, password: &str) -> Result<PubSubConfig> {
        let app = ResourceKey::parse(app)?;
        if password.is_empty() || !password.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(nats_err("a NATS password must be letters and digits"));
        }
        let _held = self.lock.lock().await;
        let mut setup = self.setup()?;
        setup
            .apps
            .insert(app.as_str().to_owned(), password.to_owned());
        self.save_apps(&setup)?;
        let running = self.start_locked(&setup).await?;
        let user = app.nats_user()?;
        wait_for(ANSWER_TIMEOUT, || async {
            match probe(running.port, &user, password).await {
                Ok(Ok(())) => Ok(true),
                Ok(Err(_)) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| {
            nats_err(format!(
                "the local NATS does not accept the new user {user}: {e}{}",
                daemon::log_note(&setup.dir.join(LOG_FILE))
            ))
        })?;
        tracing::info!(
            app = app.as_str(),
            port = running.port,
            "local NATS user ready"
        );
        Ok(PubSubConfig {
            url: format!("nats://{user}:{password}@127.0.0.1:{}", running.port),
            prefix: app.pubsub_prefix()?,
        })
    }

    /// Removes the app's user; a running server refuses it (and closes its
    /// connections) before this returns. No error if it had none.
    pub async fn remove_app(&self, app: &str) -> Result<()> {
        let app = ResourceKey::parse(app)?;
        let _held = self.lock.lock().await;
        let mut setup = self.setup()?;
        let Some(password) = setup.apps.remove(app.as_str()) else {
            return Ok(());
        };
        self.save_apps(&setup)?;
        self.write_config(&setup)?;
        let Some(pid) = self.pid_of(&setup.dir)? else {
            return Ok(());
        };
        reload(pid)?;
        let user = app.nats_user()?;
        wait_for(ANSWER_TIMEOUT, || async {
            match probe(setup.port, &user, &password).await {
                Ok(Ok(())) => Ok(false),
                Ok(Err(_)) => Ok(true),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| {
            nats_err(format!(
                "the local NATS still accepts the removed user {user}: {e}{}",
                daemon::log_note(&setup.dir.join(LOG_FILE))
            ))
        })?;
        tracing::info!(app = app.as_str(), "local NATS user removed");
        Ok(())
    }

    /// Stops the server. Stopping a server that is not running is no error.
    pub async fn stop(&self) -> Result<()> {
        let _held = self.lock.lock().await;
        let Ok(dir) = self.dir.canonicalize() else {
            return Ok(());
        };
        let Some(pid) = self.pid_of(&dir)? else {
            return Ok(());
        };
        let killed = daemon::terminate(pid, STOP_GRACE).await;
        if daemon::pid_alive(pid) {
            return Err(nats_err(format!(
                "the local NATS (pid {pid}) does not stop"
            )));
        }
        if killed {
            tracing::warn!(pid, "local NATS killed (it did not stop on SIGTERM)");
        }
        let _ = std::fs::remove_file(dir.join(PID_FILE));
        tracing::info!(pid, "local NATS stopped");
        Ok(())
    }

    fn pid_of(&self, dir: &Path) -> Result<Option<i32>> {
        daemon::running_pid(&dir.join(PID_FILE), "nats-server", dir).map_err(nats_err)
    }

    fn setup(&self) -> Result<Setup> {
        let run_as = daemon::choose_run_as(&self.dir, "nats").map_err(nats_err)?;
        daemon::prepare_dir(&self.dir, run_as.as_ref(), "NATS").map_err(nats_err)?;
        let dir = self
            .dir
            .canonicalize()
            .map_err(|e| nats_err(format!("cannot resolve {}: {e}", self.dir.display())))?;
        let owner = RunAs::owner(run_as.as_ref());
        let admin_password = daemon::load_or_create_secret(&dir.join(ADMIN_PASSWORD_FILE), owner)
            .map_err(nats_err)?;
        let port =
            daemon::load_or_choose_port(&dir.join(PORT_FILE), owner, &[]).map_err(nats_err)?;
        let apps = load_apps(&dir.join(APPS_FILE))?;
        Ok(Setup {
            dir,
            owner,
            run_as,
            port,
            admin_password,
            apps,
        })
    }

    fn save_apps(&self, setup: &Setup) -> Result<()> {
        let path = setup.dir.join(APPS_FILE);
        let json = serde_json::to_vec_pretty(&setup.apps).unwrap_or_default();
        daemon::write_new(&path, &json, 0o600, setup.owner)
            .map_err(|e| nats_err(format!("cannot write {}: {e}", path.display())))
    }

    /// Writes `nats.conf`; whether it changed.
    fn write_config(&self, setup: &Setup) -> Result<bool> {
        let q = |name: &str| daemon::quoted_path(&setup.dir.join(name)).map_err(nats_err);
        let mut users = format!(
            "    {{ user: \"{ADMIN_USER}\", password: \"{}\" }}\n",
            setup.admin_password
        );
        for (app, password) in &setup.apps {
            let key = ResourceKey::parse(app)?;
            let subjects = format!("{}>", key.pubsub_prefix()?);
            users.push_str(&format!(
                "    {{ user: \"{}\", password: \"{password}\", permissions: {{ publish: [\"{subjects}\"], subscribe: [\"{subjects}\"] }} }}\n",
                key.nats_user()?
            ));
        }
        let conf = format!(
            "# Written by Hangar whenever apps come and go: edits here are lost.\n\
             listen: \"127.0.0.1:{port}\"\n\
             pid_file: {pid}\n\
             log_file: {log}\n\
             max_payload: {MAX_PAYLOAD}\n\
             max_connections: {max_connections}\n\
             authorization {{\n  users = [\n{users}  ]\n}}\n",
            port = setup.port,
            pid = q(PID_FILE)?,
            log = q(LOG_FILE)?,
            max_connections = self.options.max_connections,
        );
        let path = setup.dir.join(CONF_FILE);
        let before = daemon::read_limited(&path, 16 << 20).ok().flatten();
        if before.as_deref() == Some(conf.as_str()) {
            return Ok(false);
        }
        daemon::write_new(&path, conf.as_bytes(), 0o600, setup.owner)
            .map_err(|e| nats_err(format!("cannot write {}: {e}", path.display())))?;
        Ok(true)
    }

    /// Writes the configuration; a running server rereads it if it
    /// changed, else one is started.
    async fn start_locked(&self, setup: &Setup) -> Result<RunningNats> {
        let changed = self.write_config(setup)?;
        let port = setup.port;
        let log = setup.dir.join(LOG_FILE);
        if let Some(pid) = self.pid_of(&setup.dir)? {
            let answered = wait_for(ANSWER_TIMEOUT, || async {
                if !daemon::pid_alive(pid) {
                    return Err(format!("it exited (pid {pid})"));
                }
                admin_probe(port, &setup.admin_password).await
            })
            .await;
            match answered {
                Ok(()) => {
                    if changed {
                        reload(pid)?;
                    }
                    tracing::debug!(port, pid, "local NATS already running");
                    return Ok(RunningNats { port, pid });
                }
                Err(e) if daemon::pid_alive(pid) => {
                    return Err(nats_err(format!(
                        "the local NATS (pid {pid}) is running but does not answer on 127.0.0.1:{port}: {e}{}",
                        daemon::log_note(&log)
                    )));
                }
                Err(e) => {
                    tracing::warn!(pid, error = %e, "the local NATS exited; starting it again");
                    self.pid_of(&setup.dir)?;
                }
            }
        }

        if let Err(e) = daemon::port_free(port) {
            let file = setup.dir.join(PORT_FILE);
            return Err(nats_err(format!(
                "the local NATS cannot listen on 127.0.0.1:{port} (the port kept in {}, which apps' NATS URLs name): {e}; \
                 another program holds it: stop that program, or remove {} to choose a new port (apps then need a new deploy)",
                file.display(),
                file.display(),
            )));
        }
        let stderr = daemon::open_append(&log, setup.owner)
            .map_err(|e| nats_err(format!("cannot open {}: {e}", log.display())))?;
        let mut cmd = tokio::process::Command::new(&self.bin.path);
        cmd.arg("-c")
            .arg(setup.dir.join(CONF_FILE))
            .current_dir(&setup.dir)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group: a Ctrl-C to Hangar is not for it.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(r) = &setup.run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
        daemon::private_umask(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| nats_err(format!("cannot run {}: {e}", self.bin.path.display())))?;
        let child_pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let answered = wait_for(ANSWER_TIMEOUT, || {
            let exited = child.try_wait();
            async move {
                match exited {
                    Ok(Some(status)) => Err(format!("it exited ({status})")),
                    _ => admin_probe(port, &setup.admin_password).await,
                }
            }
        })
        .await;
        if let Err(e) = answered {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            return Err(nats_err(format!(
                "{} -c {} did not start: {e}{}",
                self.bin.path.display(),
                setup.dir.join(CONF_FILE).display(),
                daemon::log_note(&log)
            )));
        }
        // Not waited for: tokio reaps it when it exits while Hangar runs.
        drop(child);
        let pid = self.pid_of(&setup.dir)?.unwrap_or(child_pid);
        tracing::info!(port, pid, dir = %setup.dir.display(), "local NATS started");
        Ok(RunningNats { port, pid })
    }
}

fn load_apps(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = daemon::read_limited(path, 16 << 20)
        .map_err(|e| nats_err(format!("cannot read {}: {e}", path.display())))?;
    let Some(text) = text else {
        return Ok(BTreeMap::new());
    };
    let apps: BTreeMap<String, String> = serde_json::from_str(&text)
        .map_err(|e| nats_err(format!("{} is not what Hangar wrote: {e}", path.display())))?;
    // Only what Hangar itself writes goes into the config file.
    let valid = apps.iter().all(|(app, pw)| {
        ResourceKey::parse(app).is_ok()
            && !pw.is_empty()
            && pw.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if !valid {
        return Err(nats_err(format!(
            "{} holds an app name or password Hangar would not write",
            path.display()
        )));
    }
    Ok(apps)
}

/// Asks the server to reread its configuration.
fn reload(pid: i32) -> Result<()> {
    daemon::signal(pid, libc::SIGHUP).map_err(|e| {
        nats_err(format!(
            "cannot signal the local NATS (pid {pid}) to reload: {e}"
        ))
    })
}

/// Retries `attempt` until it says done (`Ok(true)`), or `timeout`
/// passes; the last `Err` is the reason given.
async fn wait_for<F, Fut>(timeout: Duration, mut attempt: F) -> std::result::Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<bool, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = "timed out".to_owned();
    loop {
        match attempt().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin_probe(port: u16, password: &str) -> std::result::Result<bool, String> {
    match probe(port, ADMIN_USER, password).await? {
        Ok(()) => Ok(true),
        Err(e) => Err(format!(
            "{e} (the admin password in {ADMIN_PASSWORD_FILE} does not match the config)"
        )),
    }
}

/// Connects as `user` and PINGs: `Ok(Ok)` for a PONG, `Ok(Err(msg))` when
/// the server refuses (`-ERR 'Authorization Violation'`), `Err` when it
/// cannot be reached.
pub(crate) async fn probe(
    port: u16,
    user: &str,
    password: &str,
) -> std::result::Result<std::result::Result<(), String>, String> {
    let exchange = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut io = BufReader::new(stream);
        let mut line = String::new();
        io.read_line(&mut line).await?;
        if !line.starts_with("INFO ") {
            return Ok::<_, std::io::Error>(Err(format!(
                "no INFO from the server: {:?}",
                line.trim_end()
            )));
        }
        let connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "user": user,
            "pass": password,
            "name": "hangar",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
        });
        io.get_mut()
            .write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
            .await?;
        loop {
            line.clear();
            if io.read_line(&mut line).await? == 0 {
                return Ok(Err("the server closed the connection".to_owned()));
            }
            let l = line.trim_end();
            if l == "PONG" {
                return Ok(Ok(()));
            }
            if let Some(e) = l.strip_prefix("-ERR ") {
                return Ok(Err(e.trim_matches('\'').to_owned()));
            }
            // PING, +OK, INFO updates: read on.
        }
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Err(_) => Err("timed out".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(Err(refused))) => Ok(Err(refused)),
        Ok(Ok(Ok(()))) => Ok(Ok(())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_names() {
        if let Some(bin) = NatsBinary::find() {
            assert!(
                bin.version.starts_with(|c: char| c.is_ascii_digit()),
                "{bin:?}"
            );
        }
        let key = ResourceKey::parse("my-app").unwrap();
        assert_eq!(key.nats_user().unwrap(), "hangar_my-app");
    }

    #[test]
    fn only_what_hangar_writes_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(APPS_FILE);
        assert!(load_apps(&path).unwrap().is_empty());
        std::fs::write(&path, r#"{"a": "00ff"}"#).unwrap();
        assert_eq!(load_apps(&path).unwrap().len(), 1);
        for bad in [
            r#"{"a": "pw\" }, { user: \"x"}"#,
            r#"{"A B": "00"}"#,
            r#"{"a": ""}"#,
            "not json",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(load_apps(&path).is_err(), "{bad}");
        }
    }
}
