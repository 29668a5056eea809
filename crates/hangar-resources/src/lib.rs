//! Resources declared in code, provisioned by Hangar, and the app's secrets.
//!
//! - [`Vault`]: seals values (ChaCha20-Poly1305, a random nonce per value,
//!   the owner and name as associated data so a sealed value cannot be moved
//!   to another row) with a key kept in the data dir. Secrets and resource
//!   credentials are stored only sealed.
//! - [`Resources`]: provisions what an app declares (a Postgres database
//!   and a role of its own per app), lists it, drops it, and renders the
//!   per-machine resources file the runtime reads.
//!
//! Layout: `ident` (the names of an app's objects on the servers, made
//! from its id, length-checked), `vault` (sealing, tokens, private
//! files), `postgres` (the server, role limits, provisioning and dropping
//! a database), `redis` (ACL users on a shared server), `local_pg`, `local_redis`,
//! `local_nats` and `local_daemon` (the servers Hangar runs itself),
//! `gate` (the protocol gates between machines and the servers),
//! `shuttle` (Shuttle's runtime contract); this file holds the error
//! type, [`Resources`] and what it hands to machines.

pub mod gate;
pub mod ident;
mod local_daemon;
pub mod local_nats;
pub mod local_pg;
pub mod local_redis;
mod postgres;
pub mod redis;
pub mod shuttle;
mod vault;

use std::collections::{BTreeMap, BTreeSet};

use hangar_core::resource::ResourceKind;
use hangar_store::{App, ResourceRow, Store, StoreError};
use serde::{Deserialize, Serialize};

pub use crate::ident::{IdentError, PG_IDENTIFIER_MAX, ResourceKey};
use crate::postgres::LocalCluster;
pub use crate::postgres::{PostgresCredentials, PostgresLimits, PostgresServer, database_name};
pub use crate::redis::{RedisCredentials, RedisServer};
pub use crate::vault::{Vault, write_private_file};

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
    #[error(transparent)]
    Ident(#[from] IdentError),
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
    /// `hangar.<key>.` ([`ResourceKey::pubsub_prefix`]): the runtime puts
    /// it in front of every subject.
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

/// The key of `app`'s Redis or PubSub resource: the one its row
/// `recorded` (read back with `of_recorded` from the name it records),
/// else the app's id's. A recorded name Hangar would not make is not
/// kept.
fn recorded_key(
    app: &App,
    recorded: Option<&ResourceRow>,
    of_recorded: fn(&str) -> Result<ResourceKey, IdentError>,
) -> Result<ResourceKey> {
    if let Some(key) = recorded.and_then(|r| of_recorded(&r.name).ok()) {
        return Ok(key);
    }
    Ok(ResourceKey::of_app(&app.id)?)
}

/// A fresh password: 24 random bytes, hex.
fn random_password() -> Result<String> {
    let mut pw = [0u8; 24];
    getrandom::fill(&mut pw).map_err(|e| ResourceError::Random(e.to_string()))?;
    Ok(hex::encode(pw))
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
    async fn ensure_redis_user(
        &self,
        key: &ResourceKey,
        password: &str,
    ) -> Result<RedisCredentials> {
        match (&self.redis, &self.local_redis) {
            (Some(server), _) => server.ensure_user(key, password).await,
            (None, Some(local)) => local.ensure_app(key.as_str(), password).await,
            (None, None) => Err(ResourceError::NoRedis),
        }
    }

    /// Sets the app's Redis user again, as it was made; on Hangar's own
    /// server for the app, that server is started first if it is down.
    async fn reassert_redis(&self, creds: &RedisCredentials) -> Result<()> {
        if let Some(server) = &self.redis {
            return server.reassert(creds).await;
        }
        if let Some(local) = &self.local_redis {
            // The server's directory is named by the key the user was made
            // from (the app's id; its name for one made before).
            let key = ResourceKey::of_redis_user(&creds.user)?;
            return local.reassert(key.as_str(), creds).await;
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
            // What an earlier attempt recorded: its names are kept.
            let recorded = existing.iter().find(|r| r.kind == kind.as_str());
            let ready = recorded.filter(|r| r.status == "ready");
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
                    let key = recorded_key(app, recorded, ResourceKey::of_redis_user)?;
                    let user = key.redis_user()?;
                    progress(format!("redis: creating user {user}"));
                    match self.ensure_redis_user(&key, &random_password()?).await {
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
                    let key = recorded_key(app, recorded, ResourceKey::of_pubsub_prefix)?;
                    let prefix = key.pubsub_prefix()?;
                    match (&self.nats_url, &self.local_nats) {
                        (Some(_), _) => {
                            self.put(app, *kind, &prefix, "ready", None, None).await?;
                        }
                        (None, Some(local)) => {
                            let user = key.nats_user()?;
                            progress(format!("pubsub: creating NATS user {user}"));
                            match local.add_app(key.as_str(), &random_password()?).await {
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
                    let name = database_name(app, recorded)?;
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

    /// Drops everything provisioned for `app` (its database and role, its
    /// Redis user and keys, its NATS user) and forgets its resources and
    /// secrets. What is dropped is what each row records (named by the
    /// app's id, or by its name if made before), never a name worked out
    /// again from the app's name now. A row whose recorded name Hangar
    /// would not have made names nothing on the server: nothing is dropped
    /// there for it.
    pub async fn deprovision(&self, app: &App) -> Result<()> {
        for r in self.store.resources(&app.id).await? {
            if r.kind == ResourceKind::Postgres.as_str() {
                self.drop_postgres(app, &r).await?;
            }
            if r.kind == ResourceKind::Redis.as_str() {
                match ResourceKey::of_redis_user(&r.name) {
                    Ok(key) => match (&self.redis, &self.local_redis) {
                        (Some(server), _) => server.drop_user(&key).await?,
                        // The app's own server: stopped, its data removed.
                        (None, Some(local)) => local.remove_app(key.as_str()).await?,
                        (None, None) => return Err(ResourceError::NoRedis),
                    },
                    Err(e) => {
                        tracing::warn!(app = %app.name, error = %e, "no Redis user dropped");
                    }
                }
            }
            if r.kind == ResourceKind::PubSub.as_str()
                && r.sealed.is_some()
                && let Some(local) = &self.local_nats
            {
                match ResourceKey::of_pubsub_prefix(&r.name) {
                    Ok(key) => local.remove_app(key.as_str()).await?,
                    Err(e) => {
                        tracing::warn!(app = %app.name, error = %e, "no NATS user dropped");
                    }
                }
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
                if let Err(e) = self.reassert_redis(&creds).await {
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
    fn secret_names() {
        for ok in ["A", "API_KEY", "_x1"] {
            assert!(valid_secret_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "é"] {
            assert!(!valid_secret_name(bad), "{bad}");
        }
    }
}
