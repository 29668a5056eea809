//! A Postgres cluster of Hangar's own, under its data dir, for apps'
//! databases when no `--postgres-url` is given (and for `hangar run`).
//!
//! Layout of the cluster's `dir` (e.g. `<data-dir>/postgres`):
//! - `data/` — the cluster (PGDATA), made by initdb on first use;
//!   `data/hangar.conf` and `data/pg_hba.conf` are rewritten on every start.
//! - `port` — the TCP port, chosen once so that apps' stored database URLs
//!   stay valid across restarts.
//! - `superuser.password` — the password of the superuser `hangar` (0600).
//! - `postgres.log` — the server's log.
//! - `.s.PGSQL.<port>` — its unix socket (when the path fits in a socket
//!   address), never the system's `/var/run/postgresql`.
//!
//! The server listens on 127.0.0.1 only, and every connection, TCP or
//! socket, must give a password (SCRAM); nothing is trusted. It outlives
//! the Hangar that started it: a later [`LocalPostgres::start`] finds it
//! running and uses it; [`LocalPostgres::stop`] stops it.
//!
//! Postgres refuses to run as root, so a root Hangar runs initdb and pg_ctl
//! as the `postgres` user (else `nobody`), which owns `dir`; a cluster keeps
//! the owner it was made with. Files Hangar writes into `dir` as root are
//! written without following links, since that user could plant them.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::ResourceError;
use crate::local_daemon::{
    RunAs, output_text, pid_alive, read_limited, user_by_name, user_by_uid, write_new,
};

type Result<T, E = ResourceError> = std::result::Result<T, E>;

/// The cluster's superuser, the role in [`LocalPostgres::admin_url`].
pub const SUPERUSER: &str = "hangar";
const DATA_DIR: &str = "data";
const PORT_FILE: &str = "port";
const PASSWORD_FILE: &str = "superuser.password";
const LOG_FILE: &str = "postgres.log";
/// Hangar's settings, included from `postgresql.conf`.
const CONF_FILE: &str = "hangar.conf";
const INCLUDE_LINE: &str = "include_if_exists = 'hangar.conf'";
/// How long pg_ctl waits for the server to start or stop, in seconds.
const PG_CTL_TIMEOUT_S: &str = "30";
/// How long a server that is already running gets to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// `sizeof(sun_path)`: Postgres refuses socket paths this long or longer.
const SOCKET_PATH_MAX: usize = 108;

fn pg_err(msg: impl Into<String>) -> ResourceError {
    ResourceError::Postgres(msg.into())
}

/// Where the Postgres server binaries are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresBinaries {
    /// Holds `initdb`, `pg_ctl` and `postgres` (pg_ctl runs the `postgres`
    /// next to itself, so all three must be here).
    pub bin_dir: PathBuf,
    /// As `postgres --version` prints it, e.g. `15.13`.
    pub version: String,
}

impl PostgresBinaries {
    /// initdb, pg_ctl and postgres: first through `$PATH` (the directory
    /// `initdb` resolves to, links followed, else the `$PATH` entry itself),
    /// else the highest `/usr/lib/postgresql/<N>/bin`. None if absent.
    pub fn find() -> Option<PostgresBinaries> {
        let mut candidates = Vec::new();
        if let Some(path) = std::env::var_os("PATH") {
            for entry in std::env::split_paths(&path) {
                let initdb = entry.join("initdb");
                if !is_executable(&initdb) {
                    continue;
                }
                if let Some(real) = initdb.canonicalize().ok().and_then(|p| {
                    let parent = p.parent()?;
                    Some(parent.to_path_buf())
                }) {
                    candidates.push(real);
                }
                candidates.push(entry);
            }
        }
        let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let key = name
                    .split('.')
                    .map(|n| n.parse().ok())
                    .collect::<Option<Vec<u32>>>()?;
                Some((key, e.path().join("bin")))
            })
            .collect();
        versions.sort_by(|a, b| b.0.cmp(&a.0));
        candidates.extend(versions.into_iter().map(|(_, dir)| dir));
        candidates.iter().find_map(|dir| PostgresBinaries::at(dir))
    }

    /// The binaries in `bin_dir`, if all three are there and `postgres`
    /// says its version.
    pub fn at(bin_dir: &Path) -> Option<PostgresBinaries> {
        if !["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| is_executable(&bin_dir.join(b)))
        {
            return None;
        }
        let out = std::process::Command::new(bin_dir.join("postgres"))
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let version = parse_version(&String::from_utf8_lossy(&out.stdout))?;
        Some(PostgresBinaries {
            bin_dir: bin_dir.to_path_buf(),
            version,
        })
    }

    /// The major version, as a cluster's `PG_VERSION` file holds it
    /// (`15`; `9.6` before 10).
    pub fn major_version(&self) -> String {
        major_version(&self.version)
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// `postgres (PostgreSQL) 15.13 (Debian 15.13-1.pgdg120+1)` → `15.13`.
fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().next()?;
    let rest = match line.find("(PostgreSQL)") {
        Some(i) => &line[i + "(PostgreSQL)".len()..],
        None => line,
    };
    rest.split_whitespace()
        .find(|t| t.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
}

fn major_version(version: &str) -> String {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let first = parts.next().unwrap_or_default();
    match first.parse::<u32>() {
        Ok(n) if n < 10 => format!("{n}.{}", parts.next().unwrap_or("0")),
        _ => first.to_owned(),
    }
}

/// A running Postgres cluster of Hangar's own.
pub struct LocalPostgres {
    /// The cluster's directory (canonical).
    dir: PathBuf,
    /// Where `pg_ctl` is, to stop the server.
    bin_dir: PathBuf,
    /// The port it listens on, on 127.0.0.1.
    port: u16,
    /// The superuser's password (hex).
    password: String,
    /// Who runs initdb and pg_ctl: None for the current user.
    run_as: Option<RunAs>,
}

impl std::fmt::Debug for LocalPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the password.
        f.debug_struct("LocalPostgres")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .field("run_as", &self.run_as)
            .finish_non_exhaustive()
    }
}

impl LocalPostgres {
    /// Initialises `dir` on first use, starts the server unless it is
    /// already running (from an earlier Hangar, or an earlier call), waits
    /// until it accepts connections, and returns it.
    pub async fn start(bins: &PostgresBinaries, dir: &Path) -> Result<LocalPostgres> {
        std::fs::create_dir_all(dir)
            .map_err(|e| pg_err(format!("cannot create {}: {e}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| pg_err(format!("cannot resolve {}: {e}", dir.display())))?;
        let data = dir.join(DATA_DIR);
        let run_as = choose_run_as(&data)?;
        prepare_dir(&dir, run_as.as_ref())?;
        let owner = run_as.as_ref().map(|r| (r.uid, r.gid));
        let initialised = data.join("PG_VERSION").exists();
        let password = load_or_create_password(&dir, initialised, owner)?;
        let port = load_or_choose_port(&dir, owner)?;
        let pg = LocalPostgres {
            dir,
            bin_dir: bins.bin_dir.clone(),
            port,
            password,
            run_as,
        };
        if initialised {
            pg.check_version(bins)?;
        } else {
            pg.initdb().await?;
        }
        pg.write_config(owner)?;

        if let Some(pid) = pg.postmaster_pid()? {
            // Running already: it gets a while to answer (it may be
            // starting, or recovering after a crash). One that exits
            // meanwhile is started below.
            match pg.wait_until_answering(ANSWER_TIMEOUT, Some(pid)).await {
                Ok(()) => {
                    tracing::info!(port = pg.port, pid, "local Postgres already running");
                    return Ok(pg);
                }
                Err(e) if pid_alive(pid) => {
                    return Err(pg_err(format!(
                        "the local Postgres (pid {pid}, {}) is running but does not answer on 127.0.0.1:{}: {e}{}",
                        pg.data().display(),
                        pg.port,
                        pg.log_note()
                    )));
                }
                Err(e) => {
                    tracing::warn!(pid, error = %e, "the local Postgres exited; starting it again");
                    // Clears its lock files if it lingers as a zombie.
                    pg.postmaster_pid()?;
                }
            }
        }

        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", pg.port)) {
            return Err(pg_err(format!(
                "the local Postgres cannot listen on 127.0.0.1:{} (the port kept in {}, which apps' database URLs name): {e}; \
                 another program holds it: stop that program, or remove {} to choose a new port (apps then need new credentials)",
                pg.port,
                pg.dir.join(PORT_FILE).display(),
                pg.dir.join(PORT_FILE).display(),
            )));
        }
        let out = pg
            .command("pg_ctl")
            .args(["start", "-w", "-s", "-t", PG_CTL_TIMEOUT_S, "-D"])
            .arg(pg.data())
            .arg("-l")
            .arg(pg.log_path())
            .output()
            .await
            .map_err(|e| pg_err(format!("cannot run {}: {e}", pg.bin("pg_ctl").display())))?;
        if !out.status.success() {
            return Err(pg_err(format!(
                "pg_ctl start of {} failed ({}): {}{}",
                pg.data().display(),
                out.status,
                output_text(&out),
                pg.log_note()
            )));
        }
        pg.wait_until_answering(Duration::from_secs(5), None)
            .await
            .map_err(|e| {
                pg_err(format!(
                    "the local Postgres started but does not answer on 127.0.0.1:{}: {e}{}",
                    pg.port,
                    pg.log_note()
                ))
            })?;
        tracing::info!(port = pg.port, dir = %pg.dir.display(), "local Postgres started");
        Ok(pg)
    }

    /// `postgres://hangar:<password>@127.0.0.1:<port>/postgres`, for
    /// [`crate::PostgresServer::new`].
    pub fn admin_url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Stops the server (`pg_ctl stop -m fast`: open sessions are ended).
    /// Stopping a server that is not running is no error.
    pub async fn stop(self) -> Result<()> {
        if self.postmaster_pid()?.is_none() {
            return Ok(());
        }
        let out = self
            .command("pg_ctl")
            .args([
                "stop",
                "-w",
                "-s",
                "-m",
                "fast",
                "-t",
                PG_CTL_TIMEOUT_S,
                "-D",
            ])
            .arg(self.data())
            .output()
            .await
            .map_err(|e| pg_err(format!("cannot run {}: {e}", self.bin("pg_ctl").display())))?;
        if !out.status.success() {
            return Err(pg_err(format!(
                "pg_ctl stop of {} failed ({}): {}{}",
                self.data().display(),
                out.status,
                output_text(&out),
                self.log_note()
            )));
        }
        tracing::info!(dir = %self.dir.display(), "local Postgres stopped");
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.join(DATA_DIR)
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A Postgres program, run as the cluster's owner, in `dir`, with no
    /// `PG*` variables to steer it elsewhere.
    fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.bin(program));
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .env("LC_ALL", "C");
        for var in [
            "PGDATA",
            "PGPORT",
            "PGHOST",
            "PGUSER",
            "PGOPTIONS",
            "PGPASSWORD",
            "PGPASSFILE",
        ] {
            cmd.env_remove(var);
        }
        if let Some(r) = &self.run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
        cmd
    }

    async fn initdb(&self) -> Result<()> {
        let data = self.data();
        if std::fs::read_dir(&data).is_ok_and(|mut d| d.next().is_some()) {
            return Err(pg_err(format!(
                "{} is not empty but holds no cluster (no PG_VERSION; an interrupted initdb?): remove it and start again",
                data.display()
            )));
        }
        let mut pwfile = OsString::from("--pwfile=");
        pwfile.push(self.dir.join(PASSWORD_FILE));
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .arg(format!("--username={SUPERUSER}"))
            .arg(pwfile)
            .args([
                "--encoding=UTF8",
                "--locale=C",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
            ])
            .output()
            .await
            .map_err(|e| pg_err(format!("cannot run {}: {e}", self.bin("initdb").display())))?;
        if !out.status.success() {
            return Err(pg_err(format!(
                "initdb of {} failed ({}): {}",
                data.display(),
                out.status,
                output_text(&out)
            )));
        }
        tracing::info!(dir = %data.display(), "local Postgres cluster created");
        Ok(())
    }

    /// The cluster was made by the binaries' major version.
    fn check_version(&self, bins: &PostgresBinaries) -> Result<()> {
        let path = self.data().join("PG_VERSION");
        let made_by = read_small(&path)
            .map_err(|e| pg_err(format!("cannot read {}: {e}", path.display())))?
            .unwrap_or_default();
        let made_by = made_by.trim();
        if made_by != bins.major_version() {
            return Err(pg_err(format!(
                "{} was made by PostgreSQL {made_by}, but the binaries in {} are PostgreSQL {}: \
                 install PostgreSQL {made_by}, or upgrade the cluster with pg_upgrade",
                self.data().display(),
                bins.bin_dir.display(),
                bins.version
            )));
        }
        Ok(())
    }

    /// Writes `hangar.conf` and `pg_hba.conf` (every start, so that a
    /// changed port or an edited file is put right) and makes sure
    /// `postgresql.conf` includes the former.
    fn write_config(&self, owner: Option<(u32, u32)>) -> Result<()> {
        let data = self.data();
        let io = |what: &Path, e: std::io::Error| {
            pg_err(format!("cannot write {}: {e}", what.display()))
        };
        let socket_dir = match self.dir.to_str() {
            Some(d)
                if d.len() + "/.s.PGSQL.".len() + self.port.to_string().len() < SOCKET_PATH_MAX
                    && !d.contains([',', '"', '\'', '\\']) =>
            {
                d
            }
            // No socket rather than one elsewhere: TCP is what apps use.
            _ => "",
        };
        let conf = format!(
            "# Written by Hangar on every start: edits here are lost.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{socket_dir}'\n\
             password_encryption = 'scram-sha-256'\n\
             max_connections = 100\n\
             shared_buffers = 32MB\n",
            self.port
        );
        let conf_path = data.join(CONF_FILE);
        write_new(&conf_path, conf.as_bytes(), 0o600, owner).map_err(|e| io(&conf_path, e))?;
        let hba = "# Written by Hangar on every start: edits here are lost.\n\
                   # Every connection gives a password; nothing is trusted.\n\
                   local all all scram-sha-256\n\
                   host  all all 127.0.0.1/32 scram-sha-256\n";
        let hba_path = data.join("pg_hba.conf");
        write_new(&hba_path, hba.as_bytes(), 0o600, owner).map_err(|e| io(&hba_path, e))?;

        let main_path = data.join("postgresql.conf");
        let main = read_limited(&main_path, 1 << 20)
            .map_err(|e| pg_err(format!("cannot read {}: {e}", main_path.display())))?
            .ok_or_else(|| pg_err(format!("{} is missing", main_path.display())))?;
        if !main.lines().any(|l| l.trim() == INCLUDE_LINE) {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&main_path)
                .map_err(|e| io(&main_path, e))?;
            f.write_all(format!("\n# Hangar's settings\n{INCLUDE_LINE}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| io(&main_path, e))?;
        }
        Ok(())
    }

    /// The postmaster's pid, if one runs on this cluster. A pid file left
    /// behind whose pid now belongs to another program (after a reboot)
    /// is removed, since Postgres would refuse to start over it.
    fn postmaster_pid(&self) -> Result<Option<i32>> {
        let path = self.data().join("postmaster.pid");
        let text = read_small(&path)
            .map_err(|e| pg_err(format!("cannot read {}: {e}", path.display())))?;
        let Some(pid) = text
            .as_deref()
            .and_then(|t| t.lines().next())
            .and_then(|l| l.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 0)
        else {
            return Ok(None);
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let exists = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !exists {
            // Postgres clears such a file itself.
            return Ok(None);
        }
        // A postmaster's working directory is its data dir. Unreadable
        // (another user's process, no /proc): take it as ours.
        let foreign =
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd != self.data());
        if foreign || !pid_alive(pid) {
            // Postgres would refuse to start over these lock files: their
            // pid is a zombie (its parent gone, nothing reaping it), or
            // belongs to another program now (after a reboot).
            tracing::warn!(
                pid,
                file = %path.display(),
                "stale postmaster.pid: its process is a zombie or another program; removing it"
            );
            let socket_lock = self.dir.join(format!(".s.PGSQL.{}.lock", self.port));
            for stale in [&path, &socket_lock] {
                match std::fs::remove_file(stale) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(pg_err(format!(
                            "cannot remove the stale {}: {e}",
                            stale.display()
                        )));
                    }
                    _ => {}
                }
            }
            return Ok(None);
        }
        Ok(Some(pid))
    }

    /// Connects as the superuser until it works or `timeout` passes; a
    /// refused password fails at once.
    async fn wait_until_answering(
        &self,
        timeout: Duration,
        pid: Option<i32>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pid) = pid.filter(|pid| !pid_alive(*pid)) {
                return Err(format!("it exited (pid {pid})"));
            }
            match self.ping().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let auth = e.code().is_some_and(|c| {
                        *c == tokio_postgres::error::SqlState::INVALID_PASSWORD
                            || *c
                                == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                    });
                    if auth {
                        return Err(format!(
                            "{} (the superuser password in {} does not match the cluster's)",
                            hangar_core::error_chain(&e),
                            self.dir.join(PASSWORD_FILE).display()
                        ));
                    }
                    if Instant::now() >= deadline {
                        return Err(hangar_core::error_chain(&e));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ping(&self) -> Result<(), tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .password(&self.password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
        let task = tokio::spawn(conn);
        let result = client.simple_query("SELECT 1").await.map(|_| ());
        drop(client);
        let _ = task.await;
        result
    }

    /// `; see <log>: <its last lines>` for error messages.
    fn log_note(&self) -> String {
        let path = self.log_path();
        let tail = log_tail(&path, 8).unwrap_or_default();
        if tail.is_empty() {
            format!("; see {}", path.display())
        } else {
            format!("; see {}, which ends:\n{tail}", path.display())
        }
    }
}

/// Postgres refuses to run as root: a root Hangar runs it as the owner of
/// an existing cluster, else as `postgres`, else as `nobody`.
fn choose_run_as(data: &Path) -> Result<Option<RunAs>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    if let Ok(meta) = std::fs::symlink_metadata(data) {
        if meta.uid() != 0 {
            let name = user_by_uid(meta.uid()).unwrap_or_else(|| format!("uid {}", meta.uid()));
            return Ok(Some(RunAs {
                uid: meta.uid(),
                gid: meta.gid(),
                name,
            }));
        }
        if data.join("PG_VERSION").exists() {
            return Err(pg_err(format!(
                "{} is owned by root, and Postgres refuses to run as root: chown -R postgres: {}",
                data.display(),
                data.display()
            )));
        }
    }
    for name in ["postgres", "nobody"] {
        if let Some((uid, gid)) = user_by_name(name).filter(|(uid, _)| *uid != 0) {
            return Ok(Some(RunAs {
                uid,
                gid,
                name: name.to_owned(),
            }));
        }
    }
    Err(pg_err(
        "Hangar runs as root and Postgres refuses to, but there is neither a `postgres` nor a `nobody` user to run it as \
         (create one: useradd --system postgres)",
    ))
}

/// `dir` private (0700) and, when Postgres runs as another user, owned by
/// it and reachable by it.
fn prepare_dir(dir: &Path, run_as: Option<&RunAs>) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| pg_err(format!("cannot inspect {}: {e}", dir.display())))?;
    if let Some(r) = run_as {
        if meta.uid() != r.uid || meta.gid() != r.gid {
            std::os::unix::fs::lchown(dir, Some(r.uid), Some(r.gid)).map_err(|e| {
                pg_err(format!(
                    "cannot give {} to user {}: {e}",
                    dir.display(),
                    r.name
                ))
            })?;
        }
        for ancestor in dir.ancestors().skip(1) {
            let m = std::fs::metadata(ancestor)
                .map_err(|e| pg_err(format!("cannot inspect {}: {e}", ancestor.display())))?;
            // Supplementary groups do not count: the child drops them.
            let bit = if m.uid() == r.uid {
                0o100
            } else if m.gid() == r.gid {
                0o010
            } else {
                0o001
            };
            if m.mode() & bit == 0 {
                return Err(pg_err(format!(
                    "the local Postgres runs as user {} (Postgres refuses to run as root), which cannot reach {}: \
                     {} is mode {:o}, owner uid {}; let it through (chmod o+x {}) or use a data dir it can reach",
                    r.name,
                    dir.display(),
                    ancestor.display(),
                    m.mode() & 0o7777,
                    m.uid(),
                    ancestor.display()
                )));
            }
        }
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| pg_err(format!("cannot make {} private: {e}", dir.display())))?;
    }
    Ok(())
}

fn load_or_create_password(
    dir: &Path,
    initialised: bool,
    owner: Option<(u32, u32)>,
) -> Result<String> {
    let path = dir.join(PASSWORD_FILE);
    let file = |e: std::io::Error| pg_err(format!("{}: {e}", path.display()));
    if let Some(text) = read_small(&path).map_err(file)? {
        let password = text.trim();
        if !(32..=128).contains(&password.len()) || !password.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(pg_err(format!(
                "{} does not hold a password Hangar wrote (hex digits)",
                path.display()
            )));
        }
        // Keep it private, whatever happened to it.
        let meta = std::fs::symlink_metadata(&path).map_err(file)?;
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(file)?;
        }
        return Ok(password.to_owned());
    }
    if initialised {
        return Err(pg_err(format!(
            "{} is gone, and without it Hangar cannot log in to the cluster in {}: \
             restore it, or remove {} to start afresh (apps' databases are then lost)",
            path.display(),
            dir.join(DATA_DIR).display(),
            dir.display()
        )));
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| pg_err(format!("no randomness: {e}")))?;
    let password = hex::encode(bytes);
    write_new(&path, password.as_bytes(), 0o600, owner).map_err(file)?;
    Ok(password)
}

fn load_or_choose_port(dir: &Path, owner: Option<(u32, u32)>) -> Result<u16> {
    let path = dir.join(PORT_FILE);
    let file = |e: std::io::Error| pg_err(format!("{}: {e}", path.display()));
    if let Some(text) = read_small(&path).map_err(file)? {
        return text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                pg_err(format!(
                    "{} does not hold a port number: {:?}",
                    path.display(),
                    text.trim()
                ))
            });
    }
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| pg_err(format!("cannot find a free port on 127.0.0.1: {e}")))?
        .port();
    write_new(&path, format!("{port}\n").as_bytes(), 0o644, owner).map_err(file)?;
    Ok(port)
}

/// A small file's text, None if absent; links are not followed.
fn read_small(path: &Path) -> std::io::Result<Option<String>> {
    read_limited(path, 4096)
}

/// The last `lines` lines of a log (its last few KiB), links not followed.
fn log_tail(path: &Path, lines: usize) -> std::io::Result<String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096)))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.13 (Debian 15.13-1.pgdg120+1)\n").as_deref(),
            Some("15.13")
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 9.6.24").as_deref(),
            Some("9.6.24")
        );
        assert_eq!(parse_version("nonsense"), None);
        assert_eq!(major_version("15.13"), "15");
        assert_eq!(major_version("17beta1"), "17");
        assert_eq!(major_version("9.6.24"), "9.6");
    }
}
