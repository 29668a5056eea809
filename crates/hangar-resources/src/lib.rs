//! Resources declared in code, provisioned by Hangar, and the app's secrets.
//!
//! - [`Vault`]: seals values (ChaCha20-Poly1305, a random nonce per value,
//!   the owner and name as associated data so a sealed value cannot be moved
//!   to another row) with a key kept in the data dir. Secrets and resource
//!   credentials are stored only sealed.
//! - [`Resources`]: provisions what an app declares (a Postgres database
//!   and a role of its own per app), lists it, drops it, and renders the
//!   per-machine resources file the runtime reads.

pub mod gate;
mod local_daemon;
pub mod local_nats;
pub mod local_pg;
pub mod local_redis;
pub mod redis;
pub mod shuttle;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hangar_core::resource::ResourceKind;
use hangar_store::{App, ResourceRow, Store, StoreError};
use serde::{Deserialize, Serialize};

pub use crate::redis::{RedisCredentials, RedisServer};

/// Everything that can go wrong here.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("the secrets key {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the secrets key {path} is missing, but the store holds {sealed} values sealed with it \
         (secrets and resource credentials); a new key could read none of them. Restore the \
         key file from a backup, or move state.db away to start empty"
    )]
    KeyMissing { path: String, sealed: i64 },
    #[error("the secrets key {0} is not 64 hex digits")]
    BadKey(String),
    #[error("a sealed value could not be opened (wrong key, or tampered with)")]
    Unseal,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Postgres: {0}")]
    Postgres(String),
    #[error(
        "this app declares a Postgres database, but Hangar has no Postgres server configured (start hangar with --postgres-url, or install PostgreSQL so that Hangar runs its own)"
    )]
    NoPostgres,
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    #[error("Redis: {0}")]
    Redis(String),
    #[error(
        "this app declares Redis, but Hangar has no Redis server configured (start hangar with --redis-url, or install redis-server so that Hangar runs its own)"
    )]
    NoRedis,
    #[error("NATS: {0}")]
    Nats(String),
    #[error(
        "this app declares PubSub, but Hangar has no NATS server configured (start hangar with --nats-url, or install nats-server so that Hangar runs its own)"
    )]
    NoNats,
    #[error("invalid secret name {0:?}: use letters, digits and '_', not starting with a digit")]
    SecretName(String),
}

type Result<T, E = ResourceError> = std::result::Result<T, E>;

/// Seals and opens values with the node's key.
#[derive(Clone)]
pub struct Vault {
    cipher: ChaCha20Poly1305,
    /// For tokens (HMAC-SHA256), derived from the key so the same bytes
    /// never serve two algorithms.
    mac_key: [u8; 32],
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault")
    }
}

const NONCE_LEN: usize = 12;

impl Vault {
    /// Opens the key at `path`, creating it (mode 0600) on first use.
    pub fn open(path: &Path) -> Result<Vault> {
        Self::open_with(path, 0)
    }

    /// Like [`Vault::open`], but with `sealed` values already stored under
    /// a key, a missing key file is an error: a new key could read none of
    /// them, and every secret would silently be lost.
    pub fn open_with(path: &Path, sealed: i64) -> Result<Vault> {
        let key_err = |source| ResourceError::Key {
            path: path.display().to_string(),
            source,
        };
        let hex_key = match std::fs::read_to_string(path) {
            Ok(text) => text.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && sealed > 0 => {
                return Err(ResourceError::KeyMissing {
                    path: path.display().to_string(),
                    sealed,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| key_err(std::io::Error::other(e.to_string())))?;
                let text = hex::encode(key);
                write_private_file(path, text.as_bytes(), 0o600, None).map_err(key_err)?;
                text
            }
            Err(e) => return Err(key_err(e)),
        };
        let bytes = hex::decode(&hex_key)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| ResourceError::BadKey(path.display().to_string()))?;
        use sha2::Digest;
        let mac_key: [u8; 32] = sha2::Sha256::new()
            .chain_update(b"hangar vault token key\0")
            .chain_update(&bytes)
            .finalize()
            .into();
        Ok(Vault {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
            mac_key,
        })
    }

    /// A bearer token for `context` (who it is for and what it opens):
    /// the same for the same key and context, unguessable without the key,
    /// so nothing needs storing.
    pub fn token(&self, context: &str) -> String {
        use hmac::Mac;
        hex::encode(self.mac(context).finalize().into_bytes())
    }

    /// Whether `token` is [`Self::token`]'s for `context` (constant time).
    pub fn verify_token(&self, context: &str, token: &str) -> bool {
        use hmac::Mac;
        match hex::decode(token) {
            Ok(bytes) => self.mac(context).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    fn mac(&self, context: &str) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        // HMAC takes keys of any length: this cannot fail.
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.mac_key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(context.as_bytes());
        mac
    }

    /// Seals `plain`, bound to `context` (who owns it and what it is).
    pub fn seal(&self, context: &str, plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        // The OS generator failing is not recoverable; an all-zero nonce
        // would be reused, so refuse rather than seal with it.
        if getrandom::fill(&mut nonce).is_err() {
            panic!("the operating system's random number generator failed");
        }
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            // Encryption only fails for inputs beyond 256 GiB.
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`Vault::seal`] sealed with the same `context`.
    pub fn unseal(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return Err(ResourceError::Unseal);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| ResourceError::Unseal)
    }
}

/// Writes `path` atomically (a sibling temporary file, synced, renamed)
/// with permissions `mode` from the start, handed to `owner` (uid, gid)
/// when given. The chown is best effort: only root can give a file away,
/// and a hangar that is not root runs machines as itself anyway.
pub fn write_private_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    if let Some((uid, gid)) = owner {
        let _ = std::os::unix::fs::chown(&tmp, Some(uid), Some(gid));
    }
    std::fs::rename(&tmp, path)
}

/// A secret name is an environment-variable-like identifier.
pub fn valid_secret_name(name: &str) -> bool {
    name.len() <= 128 && hangar_core::name::is_env_name(name)
}

/// The first name that is not a valid secret name, as an error.
pub fn check_secret_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<()> {
    match names.into_iter().find(|n| !valid_secret_name(n)) {
        Some(bad) => Err(ResourceError::SecretName(bad.clone())),
        None => Ok(()),
    }
}

/// A resource as users see it: never its credentials.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResourceInfo {
    pub kind: String,
    pub name: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub updated_at: i64,
}

/// What a machine gets (the file `$HANGAR_RESOURCES` names).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MachineResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubsub: Option<PubSubConfig>,
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
}

/// Where an app publishes and subscribes: a NATS server and the subject
/// prefix its messages live under.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct PubSubConfig {
    /// On Hangar's own server, with the app's user and password in it
    /// (`nats://<user>:<password>@127.0.0.1:<port>`).
    pub url: String,
    /// `hangar.<app>.`: the runtime puts it in front of every subject.
    pub prefix: String,
}

impl std::fmt::Debug for PubSubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may carry a password.
        f.debug_struct("PubSubConfig")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The NATS subject prefix of an app.
pub fn pubsub_prefix(app: &str) -> String {
    format!("hangar.{app}.")
}

/// How an app reaches its database.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct PostgresCredentials {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for PostgresCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCredentials")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The Postgres server apps get their databases on.
#[derive(Clone)]
pub struct PostgresServer {
    /// A superuser connection string. (CREATEROLE + CREATEDB is enough to
    /// create roles and databases, but not to set `temp_file_limit` on
    /// them or to change the attributes of a role that exists.)
    admin_url: String,
    /// Where apps connect (from the admin URL).
    host: String,
    port: u16,
    /// Hangar's own cluster ([`local_pg`]), where every database is
    /// Hangar's: the shared ones (`postgres`, `template1`) are closed to
    /// PUBLIC. On an operator's server they are left as they are.
    own_cluster: bool,
}

impl std::fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the admin URL: it may carry a password.
        f.debug_struct("PostgresServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("own_cluster", &self.own_cluster)
            .finish_non_exhaustive()
    }
}

impl PostgresServer {
    /// The server at `admin_url` (`postgres://user[:pw]@host[:port]/db`).
    pub fn new(admin_url: &str) -> Result<PostgresServer> {
        let config: tokio_postgres::Config = admin_url
            .parse()
            .map_err(|e| ResourceError::Postgres(format!("--postgres-url: {e}")))?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => {
                return Err(ResourceError::Postgres(
                    "--postgres-url must name a TCP host (machines connect over TCP)".into(),
                ));
            }
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        Ok(PostgresServer {
            admin_url: admin_url.to_owned(),
            host,
            port,
            own_cluster: false,
        })
    }

    /// The admin connection, to the admin URL's database.
    async fn connect(&self) -> Result<tokio_postgres::Client> {
        self.connect_to(None).await
    }

    /// The admin connection, to `database` (else the admin URL's).
    async fn connect_to(&self, database: Option<&str>) -> Result<tokio_postgres::Client> {
        let mut config: tokio_postgres::Config = self
            .admin_url
            .parse()
            .map_err(|e| ResourceError::Postgres(format!("--postgres-url: {e}")))?;
        if let Some(db) = database {
            config.dbname(db);
        }
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| ResourceError::Postgres(format!("cannot connect as admin: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres admin connection ended");
            }
        });
        Ok(client)
    }
}

/// What each app's role may use of a shared Postgres server. They are set
/// on the role (`CONNECTION LIMIT`, `ALTER ROLE … SET`), so they hold for
/// every session it opens, and provisioning puts them back each time.
///
/// `connections` and `temp_file_limit_kb` are hard limits: the app's role
/// cannot change them. The two timeouts are the role's defaults: Postgres
/// lets any role `SET` them in its own sessions, so they stop runaway
/// queries and forgotten transactions, not an app set on holding a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresLimits {
    /// The role's `CONNECTION LIMIT`: 1 to [`PostgresLimits::MAX_CONNECTIONS`].
    pub connections: u32,
    /// `statement_timeout`: a statement running longer is cancelled.
    pub statement_timeout: std::time::Duration,
    /// `idle_in_transaction_session_timeout`: a session idle this long
    /// inside a transaction is ended, freeing its locks.
    pub idle_in_transaction_timeout: std::time::Duration,
    /// `temp_file_limit`, in kB: the temporary files (sorts and hashes
    /// spilled to disk) one session may hold at once.
    pub temp_file_limit_kb: u32,
}

impl Default for PostgresLimits {
    /// 20 connections, 30 s statements, 60 s idle in a transaction, 1 GiB
    /// of temporary files.
    fn default() -> PostgresLimits {
        PostgresLimits {
            connections: 20,
            statement_timeout: std::time::Duration::from_secs(30),
            idle_in_transaction_timeout: std::time::Duration::from_secs(60),
            temp_file_limit_kb: 1 << 20,
        }
    }
}

impl PostgresLimits {
    /// The most connections one app's role may be given.
    pub const MAX_CONNECTIONS: u32 = 10_000;

    /// Every limit within what it means and what Postgres takes: at least
    /// one connection and at most [`Self::MAX_CONNECTIONS`], timeouts from
    /// 1 ms to `i32::MAX` ms (0 would mean none), and `temp_file_limit`
    /// from 1 MiB to `i32::MAX` kB.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(ResourceError::Postgres(format!("limits: {what}")));
        if !(1..=Self::MAX_CONNECTIONS).contains(&self.connections) {
            return bad(format!(
                "connections must be 1 to {}, not {}",
                Self::MAX_CONNECTIONS,
                self.connections
            ));
        }
        for (what, d) in [
            ("statement_timeout", self.statement_timeout),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_timeout,
            ),
        ] {
            if !(1..=i32::MAX as u128).contains(&d.as_millis()) {
                return bad(format!("{what} must be 1 ms to {} ms, not {d:?}", i32::MAX));
            }
        }
        if !(1024..=i32::MAX as u32).contains(&self.temp_file_limit_kb) {
            return bad(format!(
                "temp_file_limit must be 1024 kB to {} kB, not {} kB",
                i32::MAX,
                self.temp_file_limit_kb
            ));
        }
        Ok(())
    }

    /// The role settings, as `(parameter, value)`.
    fn settings(&self) -> [(&'static str, String); 2] {
        [
            (
                "statement_timeout",
                format!("{}ms", self.statement_timeout.as_millis()),
            ),
            (
                "idle_in_transaction_session_timeout",
                format!("{}ms", self.idle_in_transaction_timeout.as_millis()),
            ),
        ]
    }
}

/// At most `max` characters of `text`, for messages.
fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// A fresh password: 24 random bytes, hex.
fn random_password() -> Result<String> {
    let mut pw = [0u8; 24];
    getrandom::fill(&mut pw).map_err(|e| ResourceError::Random(e.to_string()))?;
    Ok(hex::encode(pw))
}

/// The longest identifier Postgres keeps (`NAMEDATALEN` - 1 bytes): DDL
/// truncates longer ones silently, and a bound `name` parameter that long
/// is refused.
pub const PG_IDENTIFIER_MAX: usize = 63;

/// Role and database name of an app: `hangar_` + the name with `-` → `_`
/// (app names are DNS labels, so the result is a plain identifier) when
/// that fits in [`PG_IDENTIFIER_MAX`] bytes (names of up to 56
/// characters). A longer name gets `hangar__`, its first 42 characters,
/// `_` and 12 hex digits of the SHA-256 of the whole name: exactly 63
/// bytes, never truncated by Postgres, so it names no other app's
/// objects. A short form never starts `hangar__` (app names start with a
/// letter), so the two forms cannot meet, and long names that share their
/// first characters differ in the hash.
pub fn database_name(app: &str) -> String {
    let plain = app.replace('-', "_");
    let short = format!("hangar_{plain}");
    if short.len() <= PG_IDENTIFIER_MAX {
        return short;
    }
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(app.as_bytes()));
    let head: String = plain.chars().take(42).collect();
    format!("hangar__{head}_{}", &hash[..12])
}

/// What marks a role or database as Hangar's, made for the app `app_id`
/// (its `COMMENT`). Only a superuser or a CREATEROLE role can comment on
/// a role, so an app cannot forge the mark on its own role.
fn pg_marker(app_id: &str) -> Result<String> {
    if app_id.is_empty()
        || !app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ResourceError::Postgres(format!(
            "unexpected app id {app_id:?}"
        )));
    }
    Ok(format!("hangar app {app_id}"))
}

/// `name` is an identifier Hangar made ([`database_name`]): lowercase
/// letters, digits and `_`, at most [`PG_IDENTIFIER_MAX`] bytes, so it can
/// be put between double quotes in DDL (which takes no bind parameters)
/// and Postgres keeps it whole.
fn hangar_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= PG_IDENTIFIER_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Any identifier, double-quoted (`"` doubled).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn pg_err(e: tokio_postgres::Error) -> ResourceError {
    match e.as_db_error() {
        Some(db) => ResourceError::Postgres(db.message().to_owned()),
        None => ResourceError::Postgres(e.to_string()),
    }
}

/// Hangar's own Postgres cluster, started on first need.
struct LocalCluster {
    bins: local_pg::PostgresBinaries,
    dir: std::path::PathBuf,
    server: tokio::sync::OnceCell<PostgresServer>,
}

/// Provisions, lists and drops the resources of apps.
#[derive(Clone)]
pub struct Resources {
    store: Store,
    vault: Vault,
    postgres: Option<PostgresServer>,
    /// With no server configured: Hangar's own cluster, started the first
    /// time an app needs a database.
    local_postgres: Option<std::sync::Arc<LocalCluster>>,
    /// What each app's role may use of the Postgres server.
    postgres_limits: PostgresLimits,
    redis: Option<RedisServer>,
    nats_url: Option<String>,
    /// With no Redis server configured: a server of Hangar's own per app
    /// ([`local_redis`]), each started on first need.
    local_redis: Option<std::sync::Arc<local_redis::LocalRedis>>,
    /// With no NATS server configured: Hangar's own ([`local_nats`]).
    local_nats: Option<std::sync::Arc<local_nats::LocalNats>>,
    /// Hangar's API as machines reach it (the Shuttle contract).
    platform_api: Option<String>,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources")
            .field("postgres", &self.postgres)
            .field(
                "local_postgres",
                &self.local_postgres.as_ref().map(|l| &l.dir),
            )
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl Resources {
    pub fn new(store: Store, vault: Vault, postgres: Option<PostgresServer>) -> Resources {
        Resources {
            store,
            vault,
            postgres,
            local_postgres: None,
            postgres_limits: PostgresLimits::default(),
            redis: None,
            nats_url: None,
            local_redis: None,
            local_nats: None,
            platform_api: None,
        }
    }

    /// Without a Postgres server, apps that declare one get their database
    /// on a cluster Hangar runs itself under `dir` (started on first need,
    /// left running for the machines that use it).
    pub fn with_local_postgres(
        mut self,
        bins: local_pg::PostgresBinaries,
        dir: std::path::PathBuf,
    ) -> Resources {
        self.local_postgres = Some(std::sync::Arc::new(LocalCluster {
            bins,
            dir,
            server: tokio::sync::OnceCell::new(),
        }));
        self
    }

    /// Apps' roles get `limits` rather than [`PostgresLimits::default`]
    /// (refused unless [`PostgresLimits::check`] passes). Roles made
    /// before get them at the app's next provisioning.
    pub fn with_postgres_limits(mut self, limits: PostgresLimits) -> Result<Resources> {
        limits.check()?;
        self.postgres_limits = limits;
        Ok(self)
    }

    /// The server apps' databases live on.
    async fn postgres_server(&self) -> Result<PostgresServer> {
        if let Some(server) = &self.postgres {
            return Ok(server.clone());
        }
        let Some(local) = &self.local_postgres else {
            return Err(ResourceError::NoPostgres);
        };
        local
            .server
            .get_or_try_init(|| async {
                let cluster = local_pg::LocalPostgres::start(&local.bins, &local.dir).await?;
                tracing::info!(
                    port = cluster.port(),
                    dir = %local.dir.display(),
                    "started the local Postgres cluster"
                );
                let mut server = PostgresServer::new(&cluster.admin_url())?;
                server.own_cluster = true;
                Ok(server)
            })
            .await
            .cloned()
    }

    /// Apps that declare Redis get a user of their own on `server`.
    pub fn with_redis(mut self, server: RedisServer) -> Resources {
        self.redis = Some(server);
        self
    }

    /// Apps that declare PubSub publish on the NATS server at `url`.
    pub fn with_nats(mut self, url: String) -> Resources {
        self.nats_url = Some(url);
        self
    }

    /// Without a Redis server, each app that declares Redis gets a server
    /// of its own under `dir`, capped by `options` (started on first need,
    /// left running for the machines that use it).
    pub fn with_local_redis(
        mut self,
        bin: local_redis::RedisBinary,
        dir: std::path::PathBuf,
        options: local_redis::LocalRedisOptions,
    ) -> Resources {
        self.local_redis = Some(std::sync::Arc::new(local_redis::LocalRedis::new(
            bin, dir, options,
        )));
        self
    }

    /// Without a NATS server, apps that declare PubSub get a user of their
    /// own on a server Hangar runs itself under `dir` (started on first
    /// need, left running).
    pub fn with_local_nats(
        mut self,
        bin: local_nats::NatsBinary,
        dir: std::path::PathBuf,
    ) -> Resources {
        self.local_nats = Some(std::sync::Arc::new(local_nats::LocalNats::new(
            bin,
            dir,
            local_nats::LocalNatsOptions::default(),
        )));
        self
    }

    /// Creates (or resets) the app's Redis user: on the configured server,
    /// else on the app's own server (started for it).
    async fn ensure_redis_user(&self, app: &str, password: &str) -> Result<RedisCredentials> {
        match (&self.redis, &self.local_redis) {
            (Some(server), _) => server.ensure_user(app, password).await,
            (None, Some(local)) => local.ensure_app(app, password).await,
            (None, None) => Err(ResourceError::NoRedis),
        }
    }

    /// Sets the app's Redis user again, as it was made; on Hangar's own
    /// server for the app, that server is started first if it is down.
    async fn reassert_redis(&self, app_id: &str, creds: &RedisCredentials) -> Result<()> {
        if let Some(server) = &self.redis {
            return server.reassert(creds).await;
        }
        if let Some(local) = &self.local_redis {
            let app = self
                .store
                .app(app_id)
                .await?
                .ok_or_else(|| ResourceError::Redis(format!("no app {app_id}")))?;
            return local.reassert(&app.name, creds).await;
        }
        Ok(())
    }

    /// Where a machine of the app publishes: its own user on Hangar's
    /// server (sealed at provisioning; the server started if it is down),
    /// else the configured server.
    async fn pubsub_for_machine(
        &self,
        app_id: &str,
        r: &ResourceRow,
    ) -> Result<Option<PubSubConfig>> {
        if let Some(local) = &self.local_nats
            && let Some(config) = self.opened::<PubSubConfig>(r, &Self::pubsub_context(app_id))?
        {
            if let Err(e) = local.start().await {
                tracing::warn!(app_id, error = %e, "could not start the local NATS");
            }
            return Ok(Some(config));
        }
        Ok(self.nats_url.as_ref().map(|url| PubSubConfig {
            url: url.clone(),
            prefix: r.name.clone(),
        }))
    }

    /// What a sealed NATS credential (on Hangar's own server) is bound to.
    fn pubsub_context(app_id: &str) -> String {
        format!("{app_id}/pubsub")
    }

    /// What a sealed Redis credential is bound to.
    fn redis_context(app_id: &str) -> String {
        format!("{app_id}/redis")
    }

    /// What a sealed Postgres credential is bound to; sealing and
    /// unsealing both go through here so they cannot drift apart.
    fn postgres_context(app_id: &str) -> String {
        format!("{app_id}/postgres")
    }

    /// What a sealed secret is bound to (see [`Self::postgres_context`]).
    fn secret_context(app_id: &str, name: &str) -> String {
        format!("{app_id}/secret/{name}")
    }

    /// Makes sure every resource in `kinds` exists for `app`; `progress`
    /// gets one line per step, for the build log. Idempotent: a ready
    /// resource is left as it is.
    pub async fn provision(
        &self,
        app: &App,
        kinds: &BTreeSet<ResourceKind>,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<()> {
        let existing = self.store.resources(&app.id).await?;
        for kind in kinds {
            let ready = existing
                .iter()
                .find(|r| r.kind == kind.as_str() && r.status == "ready");
            if let Some(row) = ready {
                if *kind == ResourceKind::Postgres {
                    self.refresh_postgres(app, row, progress).await;
                }
                progress(format!("{kind}: ready"));
                continue;
            }
            match kind {
                ResourceKind::Secrets => {
                    self.put(app, *kind, "secrets", "ready", None, None).await?;
                    progress("secrets: ready (set them with `hangar secrets set`)".into());
                }
                ResourceKind::Redis => {
                    if self.redis.is_none() && self.local_redis.is_none() {
                        return Err(ResourceError::NoRedis);
                    }
                    let user = redis::redis_user(&app.name);
                    progress(format!("redis: creating user {user}"));
                    match self.ensure_redis_user(&app.name, &random_password()?).await {
                        Ok(creds) => {
                            let json = serde_json::to_vec(&creds).unwrap_or_default();
                            let sealed = self.vault.seal(&Self::redis_context(&app.id), &json);
                            self.put(app, *kind, &user, "ready", None, Some(sealed))
                                .await?;
                            progress(format!(
                                "redis: user {user} ready (keys under {})",
                                creds.prefix
                            ));
                        }
                        Err(e) => {
                            self.put(app, *kind, &user, "failed", Some(e.to_string()), None)
                                .await?;
                            return Err(e);
                        }
                    }
                }
                ResourceKind::PubSub => {
                    let prefix = pubsub_prefix(&app.name);
                    match (&self.nats_url, &self.local_nats) {
                        (Some(_), _) => {
                            self.put(app, *kind, &prefix, "ready", None, None).await?;
                        }
                        (None, Some(local)) => {
                            let user = local_nats::nats_user(&app.name);
                            progress(format!("pubsub: creating NATS user {user}"));
                            match local.add_app(&app.name, &random_password()?).await {
                                Ok(config) => {
                                    let json = serde_json::to_vec(&config).unwrap_or_default();
                                    let sealed =
                                        self.vault.seal(&Self::pubsub_context(&app.id), &json);
                                    self.put(app, *kind, &prefix, "ready", None, Some(sealed))
                                        .await?;
                                }
                                Err(e) => {
                                    self.put(
                                        app,
                                        *kind,
                                        &prefix,
                                        "failed",
                                        Some(e.to_string()),
                                        None,
                                    )
                                    .await?;
                                    return Err(e);
                                }
                            }
                        }
                        (None, None) => return Err(ResourceError::NoNats),
                    }
                    progress(format!("pubsub: subjects under {prefix}"));
                }
                ResourceKind::Postgres => {
                    let name = database_name(&app.name);
                    progress(format!("postgres: creating database {name} and its role"));
                    self.put(app, *kind, &name, "provisioning", None, None)
                        .await?;
                    match self.ensure_postgres(app, &name, None, progress).await {
                        Ok(creds) => {
                            let json = serde_json::to_vec(&creds).unwrap_or_default();
                            let sealed = self.vault.seal(&Self::postgres_context(&app.id), &json);
                            self.put(app, *kind, &name, "ready", None, Some(sealed))
                                .await?;
                            progress(format!("postgres: database {name} ready"));
                        }
                        Err(e) => {
                            self.put(app, *kind, &name, "failed", Some(e.to_string()), None)
                                .await?;
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn put(
        &self,
        app: &App,
        kind: ResourceKind,
        name: &str,
        status: &str,
        detail: Option<String>,
        sealed: Option<Vec<u8>>,
    ) -> Result<()> {
        self.store
            .put_resource(ResourceRow {
                app_id: app.id.clone(),
                kind: kind.as_str().to_owned(),
                name: name.to_owned(),
                status: status.to_owned(),
                detail,
                sealed,
                updated_at: 0,
            })
            .await?;
        Ok(())
    }

    /// Puts the limits back on the role of a ready database (made before,
    /// perhaps before there were limits), keeping its password. A failure
    /// is reported in the build log and leaves the database as it was: the
    /// app's credentials still work, so it is no reason to fail a build.
    async fn refresh_postgres(
        &self,
        app: &App,
        row: &ResourceRow,
        progress: &(dyn Fn(String) + Send + Sync),
    ) {
        let outcome = async {
            let context = Self::postgres_context(&app.id);
            let Some(creds) = self.opened::<PostgresCredentials>(row, &context)? else {
                return Ok(());
            };
            let server = self.postgres_server().await?;
            if (creds.host.as_str(), creds.port) != (server.host.as_str(), server.port) {
                // Made on another server than the one configured now: its
                // credentials name that one, so nothing is made here.
                progress(format!(
                    "postgres: warning: {} is on {}:{}, not on the server configured now; its limits are left as they are",
                    row.name, creds.host, creds.port
                ));
                return Ok(());
            }
            self.ensure_postgres(app, &row.name, Some(&creds), progress)
                .await
                .map(drop)
        }
        .await;
        if let Err(e) = outcome {
            tracing::warn!(app = %app.name, error = %e, "could not re-apply the Postgres limits");
            progress(format!(
                "postgres: warning: the limits could not be re-applied to {}: {e}",
                row.name
            ));
        }
    }

    /// Makes `name` (a role and its database, owned by it and closed to
    /// everyone else) what this app's database should be, and returns its
    /// credentials. With `ready` (the credentials it was given before) the
    /// password stays; without, it gets a new one.
    ///
    /// A role or database that exists is changed only if it is Hangar's
    /// for this app: a role carrying this app's marker ([`pg_marker`]), or,
    /// for an app whose database is ready, an unmarked role of the ready
    /// row's name (made before there were markers; it gets one). Anything
    /// else is refused: Hangar never takes over a role it did not make for
    /// this app (its password, memberships and data would be handed over).
    async fn ensure_postgres(
        &self,
        app: &App,
        name: &str,
        ready: Option<&PostgresCredentials>,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<PostgresCredentials> {
        if !hangar_identifier(name) {
            return Err(ResourceError::Postgres(format!(
                "{name:?} is not a name Hangar gives databases"
            )));
        }
        let marker = pg_marker(&app.id)?;
        let limits = self.postgres_limits;
        let server = self.postgres_server().await?;
        let client = server.connect().await?;
        // `name` is hangar_[a-z0-9_]+, the marker `hangar app <id>` and the
        // password hex: all safe to quote into DDL.
        let role = client
            .query_opt(
                "SELECT oid, shobj_description(oid, 'pg_authid'), rolsuper, rolcreatedb, \
                        rolcreaterole, rolreplication, rolbypassrls, rolcanlogin, rolconnlimit \
                 FROM pg_roles WHERE rolname = $1::text",
                &[&name],
            )
            .await
            .map_err(pg_err)?;
        let password = match ready {
            Some(creds) => creds.password.clone(),
            None => random_password()?,
        };
        match &role {
            None => {
                // One implicit transaction: the role never exists unmarked.
                client
                    .batch_execute(&format!(
                        "CREATE ROLE \"{name}\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE \
                         NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {} PASSWORD '{password}'; \
                         COMMENT ON ROLE \"{name}\" IS '{marker}'",
                        limits.connections
                    ))
                    .await
                    .map_err(pg_err)?;
            }
            Some(row) => {
                let comment: Option<String> = row.get(1);
                match comment {
                    Some(c) if c == marker => {}
                    None if ready.is_some_and(|c| c.user == name) => {
                        client
                            .batch_execute(&format!("COMMENT ON ROLE \"{name}\" IS '{marker}'"))
                            .await
                            .map_err(pg_err)?;
                    }
                    other => {
                        let whose = match other {
                            Some(c) => format!("its comment is {:?}", truncated(&c, 80)),
                            None => "it carries no Hangar marker".to_owned(),
                        };
                        return Err(ResourceError::Postgres(format!(
                            "a role {name} already exists on the Postgres server and Hangar did not \
                             make it for this app ({whose}): Hangar does not take over roles it did \
                             not create. Drop or rename that role; or, if it is this app's own from an \
                             older Hangar, mark it with COMMENT ON ROLE \"{name}\" IS '{marker}'"
                        )));
                    }
                }
                let mut attrs = Vec::new();
                for (i, attr) in [
                    (2, "NOSUPERUSER"),
                    (3, "NOCREATEDB"),
                    (4, "NOCREATEROLE"),
                    (5, "NOREPLICATION"),
                    (6, "NOBYPASSRLS"),
                ] {
                    if row.get::<_, bool>(i) {
                        attrs.push(attr.to_owned());
                    }
                }
                if !row.get::<_, bool>(7) {
                    attrs.push("LOGIN".into());
                }
                if row.get::<_, i32>(8) != limits.connections as i32 {
                    attrs.push(format!("CONNECTION LIMIT {}", limits.connections));
                }
                if ready.is_none() {
                    // Not handed out yet (an earlier attempt failed): a new one.
                    attrs.push(format!("PASSWORD '{password}'"));
                }
                if !attrs.is_empty() {
                    client
                        .batch_execute(&format!("ALTER ROLE \"{name}\" {}", attrs.join(" ")))
                        .await
                        .map_err(pg_err)?;
                }
            }
        }
        let mut sets = String::new();
        for (param, value) in limits.settings() {
            sets.push_str(&format!("ALTER ROLE \"{name}\" SET {param} = '{value}'; "));
        }
        client.batch_execute(&sets).await.map_err(pg_err)?;
        // Only a superuser may set it (it is not the session's to change).
        let temp_files = format!("{}kB", limits.temp_file_limit_kb);
        let temp_note = match client
            .batch_execute(&format!(
                "ALTER ROLE \"{name}\" SET temp_file_limit = '{temp_files}'"
            ))
            .await
        {
            Ok(()) => format!("temp_file_limit {temp_files}"),
            Err(e) => {
                let e = pg_err(e);
                tracing::warn!(role = name, error = %e, "could not set temp_file_limit");
                progress(format!(
                    "postgres: warning: temp_file_limit is not set on role {name} ({e}): it takes \
                     a superuser admin connection; this app's temporary files are not limited"
                ));
                "no temp_file_limit".to_owned()
            }
        };
        progress(format!(
            "postgres: role {name}: at most {} connections, statement_timeout {} and \
             idle_in_transaction_session_timeout {} by default, {temp_note}",
            limits.connections,
            limits.settings()[0].1,
            limits.settings()[1].1,
        ));

        let role_oid: u32 = client
            .query_one(
                "SELECT oid FROM pg_roles WHERE rolname = $1::text",
                &[&name],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        let db = client
            .query_opt(
                "SELECT datdba, shobj_description(oid, 'pg_database') \
                 FROM pg_database WHERE datname = $1::text",
                &[&name],
            )
            .await
            .map_err(pg_err)?;
        let db_marked = match db {
            None => {
                // CREATE DATABASE runs alone (no transaction block); a
                // database left unmarked by a failure here is still
                // recognised by its owner next time.
                client
                    .batch_execute(&format!("CREATE DATABASE \"{name}\" OWNER \"{name}\""))
                    .await
                    .map_err(pg_err)?;
                false
            }
            Some(row) if row.get::<_, u32>(0) == role_oid => {
                row.get::<_, Option<String>>(1).as_deref() == Some(marker.as_str())
            }
            Some(_) => {
                return Err(ResourceError::Postgres(format!(
                    "a database {name} already exists on the Postgres server and belongs to another \
                     role: Hangar does not take over databases it did not create. Drop or rename it"
                )));
            }
        };
        if !db_marked {
            client
                .batch_execute(&format!("COMMENT ON DATABASE \"{name}\" IS '{marker}'"))
                .await
                .map_err(pg_err)?;
        }
        client
            .batch_execute(&format!(
                "REVOKE ALL ON DATABASE \"{name}\" FROM PUBLIC; \
                 GRANT ALL ON DATABASE \"{name}\" TO \"{name}\""
            ))
            .await
            .map_err(pg_err)?;
        // Inside it: on PostgreSQL 14 and older PUBLIC may create in
        // `public`; only the app may (the schema's owner is the bootstrap
        // superuser there, the database's owner from 15 on).
        let inside = server.connect_to(Some(name)).await?;
        let has_public = inside
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = 'public'", &[])
            .await
            .map_err(pg_err)?
            .is_some();
        if has_public {
            inside
                .batch_execute(&format!(
                    "REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
                     GRANT USAGE, CREATE ON SCHEMA public TO \"{name}\""
                ))
                .await
                .map_err(pg_err)?;
        }
        drop(inside);
        self.close_shared_databases(&server, &client, name, progress)
            .await?;

        Ok(PostgresCredentials {
            url: format!(
                "postgres://{name}:{password}@{}:{}/{name}",
                server.host, server.port
            ),
            host: server.host.clone(),
            port: server.port,
            database: name.to_owned(),
            user: name.to_owned(),
            password,
        })
    }

    /// The databases other than `own` that PUBLIC (so every app's role)
    /// may connect to. On Hangar's own cluster every database is Hangar's,
    /// and these are the shared ones (`postgres`, `template1`): they are
    /// closed to PUBLIC (superusers still connect; `CREATE DATABASE` needs
    /// no `CONNECT` on its template).
    ///
    /// On an operator's server they are left as they are, and listed in
    /// the build log. Postgres has no per-role deny, so closing `postgres`
    /// to the app roles means revoking it from PUBLIC, which would lock
    /// out the operator's own non-superuser roles (monitoring, other
    /// programs) and any made later; granting it back to the roles there
    /// are today would miss those. Machines reach the server only through
    /// Hangar's gate, which admits a role to its own database alone; the
    /// operator can close the rest server-side with `REVOKE CONNECT ON
    /// DATABASE … FROM PUBLIC` and grants to the roles that need it.
    async fn close_shared_databases(
        &self,
        server: &PostgresServer,
        client: &tokio_postgres::Client,
        own: &str,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<()> {
        let open: Vec<String> = client
            .query(
                "SELECT datname::text FROM pg_database \
                 WHERE datallowconn AND datname <> $1::text \
                   AND has_database_privilege('public', oid, 'CONNECT') \
                 ORDER BY 1",
                &[&own],
            )
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        if server.own_cluster {
            for db in &open {
                client
                    .batch_execute(&format!(
                        "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
                        quote_ident(db)
                    ))
                    .await
                    .map_err(pg_err)?;
            }
            progress(format!(
                "postgres: closed {} to PUBLIC (apps connect only to their own database)",
                open.join(", ")
            ));
        } else {
            progress(format!(
                "postgres: note: on this server PUBLIC, and so every app's role, may connect to {} \
                 (Hangar's gate keeps machines to their own database; Hangar leaves the \
                 operator's databases as they are)",
                open.join(", ")
            ));
        }
        Ok(())
    }

    /// Drops the database and role of `row` if they are what Hangar made
    /// for `app` under exactly that name: its marker on them, or (made
    /// before markers) the role unmarked while the row is ready, and a
    /// database that role owns. Anything else of that name is left alone
    /// and logged. A name Postgres would truncate was never created (it
    /// refuses such a name as a bound parameter), so nothing is dropped
    /// for it: Postgres would drop whatever the truncation names.
    async fn drop_postgres(&self, app: &App, row: &ResourceRow) -> Result<()> {
        let name = row.name.as_str();
        if !hangar_identifier(name) {
            tracing::warn!(app = %app.name, name, "not a database name Hangar makes: nothing dropped on the server");
            return Ok(());
        }
        let marker = pg_marker(&app.id)?;
        let server = self.postgres_server().await?;
        let client = server.connect().await?;
        let role = client
            .query_opt(
                "SELECT oid, shobj_description(oid, 'pg_authid') FROM pg_roles \
                 WHERE rolname = $1::text",
                &[&name],
            )
            .await
            .map_err(pg_err)?;
        let role_oid = role.as_ref().and_then(|r| {
            let comment: Option<String> = r.get(1);
            let ours = match comment {
                Some(c) => c == marker,
                None => row.status == "ready",
            };
            ours.then(|| r.get::<_, u32>(0))
        });
        let db = client
            .query_opt(
                "SELECT datdba, shobj_description(oid, 'pg_database') FROM pg_database \
                 WHERE datname = $1::text",
                &[&name],
            )
            .await
            .map_err(pg_err)?;
        if let Some(db) = db {
            let ours = role_oid.is_some_and(|oid| db.get::<_, u32>(0) == oid)
                || db.get::<_, Option<String>>(1).as_deref() == Some(marker.as_str());
            if ours {
                // Alone: DROP DATABASE refuses to run in the implicit
                // transaction of a multi-statement batch.
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .map_err(pg_err)?;
            } else {
                tracing::warn!(app = %app.name, database = name, "a database of this name is not this app's: left as it is");
            }
        }
        match (role, role_oid) {
            (Some(_), Some(_)) => client
                .batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\""))
                .await
                .map_err(pg_err)?,
            (Some(_), None) => {
                tracing::warn!(app = %app.name, role = name, "a role of this name is not this app's: left as it is");
            }
            (None, _) => {}
        }
        Ok(())
    }

    /// Drops everything provisioned for `app` (its database and role, its
    /// Redis user and keys) and
    /// forgets its resources and secrets.
    pub async fn deprovision(&self, app: &App) -> Result<()> {
        for r in self.store.resources(&app.id).await? {
            if r.kind == ResourceKind::Postgres.as_str() {
                self.drop_postgres(app, &r).await?;
            }
            if r.kind == ResourceKind::Redis.as_str() {
                match (&self.redis, &self.local_redis) {
                    (Some(server), _) => server.drop_user(&app.name).await?,
                    // The app's own server: stopped, its data removed.
                    (None, Some(local)) => local.remove_app(&app.name).await?,
                    (None, None) => return Err(ResourceError::NoRedis),
                }
            }
            if r.kind == ResourceKind::PubSub.as_str()
                && r.sealed.is_some()
                && let Some(local) = &self.local_nats
            {
                local.remove_app(&app.name).await?;
            }
            self.store.delete_resource(&app.id, &r.kind).await?;
        }
        let names = self
            .store
            .secrets(&app.id)
            .await?
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        self.store.unset_secrets(&app.id, names).await?;
        Ok(())
    }

    /// The app's resources as users see them.
    pub async fn list(&self, app_id: &str) -> Result<Vec<ResourceInfo>> {
        Ok(self
            .store
            .resources(app_id)
            .await?
            .into_iter()
            .map(|r| ResourceInfo {
                kind: r.kind,
                name: r.name,
                status: r.status,
                detail: r.detail,
                updated_at: r.updated_at,
            })
            .collect())
    }

    /// Sets secrets (sealed before they reach the store).
    pub async fn set_secrets(&self, app_id: &str, values: BTreeMap<String, String>) -> Result<()> {
        check_secret_names(values.keys())?;
        let mut sealed = Vec::new();
        for (name, value) in values {
            let s = self
                .vault
                .seal(&Self::secret_context(app_id, &name), value.as_bytes());
            sealed.push((name, s));
        }
        self.store.set_secrets(app_id, sealed).await?;
        Ok(())
    }

    /// Removes secrets; returns the names that existed.
    pub async fn unset_secrets(&self, app_id: &str, names: Vec<String>) -> Result<Vec<String>> {
        Ok(self.store.unset_secrets(app_id, names).await?)
    }

    /// Secret names and when each was last set; never the values.
    pub async fn secret_names(&self, app_id: &str) -> Result<Vec<(String, i64)>> {
        Ok(self
            .store
            .secrets(app_id)
            .await?
            .into_iter()
            .map(|(n, _, t)| (n, t))
            .collect())
    }

    /// What a machine of the app gets: its database credentials (if
    /// provisioned) and every secret, unsealed.
    pub async fn for_machine(&self, app_id: &str) -> Result<MachineResources> {
        let mut out = MachineResources::default();
        for r in self.store.resources(app_id).await? {
            if r.kind == ResourceKind::Postgres.as_str() {
                out.postgres = self.opened(&r, &Self::postgres_context(app_id))?;
            }
            if r.kind == ResourceKind::Redis.as_str()
                && let Some(creds) =
                    self.opened::<RedisCredentials>(&r, &Self::redis_context(app_id))?
            {
                // Redis keeps ACL users in memory unless it has an ACL
                // file: after a Redis restart the user is gone. Re-assert
                // it (same password) at every start; a Redis that is down
                // now is the app's to retry, not a reason not to start.
                // (Hangar's own server for the app is started if it is down.)
                if let Err(e) = self.reassert_redis(app_id, &creds).await {
                    tracing::warn!(app_id, error = %e, "could not re-assert the app's Redis user");
                }
                out.redis = Some(creds);
            }
            if r.kind == ResourceKind::PubSub.as_str() {
                out.pubsub = self.pubsub_for_machine(app_id, &r).await?;
            }
        }
        out.secrets = self.secret_values(app_id).await?;
        Ok(out)
    }

    /// The app's database credentials, if its database is ready.
    pub async fn postgres_credentials(&self, app_id: &str) -> Result<Option<PostgresCredentials>> {
        for r in self.store.resources(app_id).await? {
            if r.kind == ResourceKind::Postgres.as_str() {
                return self.opened(&r, &Self::postgres_context(app_id));
            }
        }
        Ok(None)
    }

    /// Every secret of the app, unsealed.
    pub async fn secret_values(&self, app_id: &str) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (name, sealed, _) in self.store.secrets(app_id).await? {
            let plain = self
                .vault
                .unseal(&Self::secret_context(app_id, &name), &sealed)?;
            out.insert(name, String::from_utf8_lossy(&plain).into_owned());
        }
        Ok(out)
    }

    /// The sealed credentials of a ready resource, opened (none while it
    /// is not ready).
    fn opened<T: serde::de::DeserializeOwned>(
        &self,
        r: &ResourceRow,
        context: &str,
    ) -> Result<Option<T>> {
        match &r.sealed {
            Some(sealed) if r.status == "ready" => {
                let json = self.vault.unseal(context, sealed)?;
                serde_json::from_slice(&json)
                    .map(Some)
                    .map_err(|_| ResourceError::Unseal)
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_with_sealed_values_stored_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secrets.key");
        let Err(err) = Vault::open_with(&key, 3) else {
            panic!("opened without its key");
        };
        assert!(
            matches!(err, ResourceError::KeyMissing { sealed: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("Restore the key file"), "{err}");
        assert!(!key.exists(), "no new key was written");
        // Nothing sealed yet: a first start makes the key.
        Vault::open_with(&key, 0).unwrap();
        assert!(key.exists());
        Vault::open_with(&key, 3).unwrap();
    }

    #[test]
    fn sealed_values_open_only_in_their_context_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secrets.key");
        let vault = Vault::open(&key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sealed = vault.seal("app1/secret/A", b"hunter2");
        assert!(
            !sealed.windows(7).any(|w| w == b"hunter2"),
            "not in the clear"
        );
        assert_eq!(vault.unseal("app1/secret/A", &sealed).unwrap(), b"hunter2");
        // Moved to another row, or tampered with: refused.
        assert!(vault.unseal("app2/secret/A", &sealed).is_err());
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(vault.unseal("app1/secret/A", &bad).is_err());
        // The same key reopens; another key does not.
        assert!(
            Vault::open(&key)
                .unwrap()
                .unseal("app1/secret/A", &sealed)
                .is_ok()
        );
        let other = Vault::open(&dir.path().join("other.key")).unwrap();
        assert!(other.unseal("app1/secret/A", &sealed).is_err());
        std::fs::write(&key, "nothex").unwrap();
        assert!(matches!(Vault::open(&key), Err(ResourceError::BadKey(_))));
    }

    #[test]
    fn secret_names() {
        for ok in ["A", "API_KEY", "_x1"] {
            assert!(valid_secret_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "é"] {
            assert!(!valid_secret_name(bad), "{bad}");
        }
        assert_eq!(database_name("my-app"), "hangar_my_app");
    }

    #[test]
    fn database_names_always_fit_and_never_meet() {
        // Up to 56 characters: `hangar_` + the name.
        let n56 = "a".repeat(56);
        assert_eq!(database_name(&n56), format!("hangar_{n56}"));
        assert_eq!(database_name(&n56).len(), PG_IDENTIFIER_MAX);
        // Longer: 63 bytes, the same every time, not what Postgres would
        // truncate `hangar_<name>` to, and apart for a shared prefix.
        let long = |tail: &str| format!("{}{tail}", "a".repeat(56));
        let (x, y) = (database_name(&long("b")), database_name(&long("c")));
        for n in [&x, &y] {
            assert_eq!(n.len(), PG_IDENTIFIER_MAX, "{n}");
            assert!(hangar_identifier(n), "{n}");
            assert!(n.starts_with("hangar__"), "{n}");
        }
        assert_ne!(x, y);
        assert_eq!(x, database_name(&long("b")));
        assert_ne!(x, format!("hangar_{n56}"));
        assert_eq!(database_name(&"z".repeat(63)).len(), PG_IDENTIFIER_MAX);
        // A short name spelling out a long one's form stays distinct: app
        // names start with a letter, so `hangar__` is never a short form.
        let hash = x.rsplit('_').next().unwrap();
        let mimic = format!("{}-{hash}", "a".repeat(42));
        assert!(mimic.len() <= 56);
        assert_ne!(database_name(&mimic), x);
    }

    #[test]
    fn limits_are_bounded() {
        assert!(PostgresLimits::default().check().is_ok());
        let d = PostgresLimits::default();
        for bad in [
            PostgresLimits {
                connections: 0,
                ..d
            },
            PostgresLimits {
                connections: PostgresLimits::MAX_CONNECTIONS + 1,
                ..d
            },
            PostgresLimits {
                statement_timeout: std::time::Duration::ZERO,
                ..d
            },
            PostgresLimits {
                idle_in_transaction_timeout: std::time::Duration::from_secs(1 << 40),
                ..d
            },
            PostgresLimits {
                temp_file_limit_kb: 0,
                ..d
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert!(pg_marker("app_0123abcd").is_ok());
        assert!(pg_marker("x'; DROP ROLE postgres; --").is_err());
    }
}
