//! Hangar's runtime: say in `main` what your app needs, and Hangar
//! provisions it before the first machine starts.
//!
//! ```ignore
//! #[hangar_runtime::main]
//! async fn main(
//!     #[hangar_runtime::Postgres] db: sqlx::PgPool,
//!     #[hangar_runtime::Secrets] secrets: hangar_runtime::SecretStore,
//! ) -> hangar_runtime::Result<axum::Router> {
//!     let greeting = secrets.get("GREETING").unwrap_or_else(|| "hello".into());
//!     Ok(axum::Router::new().route("/", axum::routing::get(move || async move { greeting })))
//! }
//! ```
//!
//! - `#[hangar_runtime::Postgres]`: a database and a role of its own, for
//!   this app only. Takes a `sqlx::PgPool` (feature `postgres`) or a
//!   `String` connection URL.
//! - `#[hangar_runtime::Redis]`: a Redis user of the app's own, limited to
//!   the app's keys, as an `Arc<dyn Cache>` (feature `redis`; an in-memory
//!   cache in a local run without Redis) or a `String` URL.
//! - `#[hangar_runtime::PubSub]`: publish/subscribe between the app's
//!   machines on NATS, as an `Arc<dyn PubSub>` (feature `nats`; in-process
//!   in a local run).
//! - `#[hangar_runtime::Secrets]`: the app's secrets (`hangar secrets set`),
//!   as a [`SecretStore`].
//!
//! Hangar reads these attributes from the source at deploy (it never runs
//! your code to find out) and hands the resources to the machine in a file
//! named by `$HANGAR_RESOURCES`. The returned [`Service`] (an
//! `axum::Router` with the default `axum` feature) is served on
//! `0.0.0.0:$PORT` and shut down gracefully on SIGTERM or Ctrl-C.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;

pub use hangar_runtime_macros::main;

pub mod cache;
pub mod pubsub;

#[cfg(feature = "redis")]
pub use cache::RedisCache;
pub use cache::{Cache, FromRedis, MemoryCache};
#[cfg(feature = "nats")]
pub use pubsub::NatsPubSub;
pub use pubsub::{FromPubSub, MemoryPubSub, Message, PubSub, Subscription};

/// The future a [`Cache`] or [`PubSub`] method returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What `main` returns: any error converts into [`Error`] with `?`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from the app or from the runtime; any `std::error::Error`
/// converts into it, so `?` works on everything.
pub struct Error(Box<dyn std::error::Error + Send + Sync + 'static>);

impl Error {
    /// An error with just a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Error(message.into().into())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(err: E) -> Self {
        Error(Box::new(err))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The app's secrets, by name. Values never appear in `Debug` output.
#[derive(Clone, Default)]
pub struct SecretStore {
    secrets: BTreeMap<String, String>,
}

impl SecretStore {
    /// A store holding `secrets` (for tests and local runs).
    pub fn new(secrets: BTreeMap<String, String>) -> Self {
        SecretStore { secrets }
    }

    /// The secret called `key`, if set.
    pub fn get(&self, key: &str) -> Option<String> {
        self.secrets.get(key).cloned()
    }

    /// The names of every secret.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("names", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl IntoIterator for SecretStore {
    type Item = (String, String);
    type IntoIter = std::collections::btree_map::IntoIter<String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.secrets.into_iter()
    }
}

/// What a `#[Postgres]` parameter can be.
pub trait FromPostgres: Sized {
    /// Connects (or just hands over) the database at `url`.
    fn from_url(url: String) -> impl Future<Output = Result<Self>> + Send;
}

impl FromPostgres for String {
    async fn from_url(url: String) -> Result<Self> {
        Ok(url)
    }
}

#[cfg(feature = "postgres")]
impl FromPostgres for sqlx::PgPool {
    async fn from_url(url: String) -> Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(|e| {
                Error::msg(format!(
                    "cannot connect to the app's Postgres database: {e}"
                ))
            })?;
        Ok(pool)
    }
}

/// What a `#[Secrets]` parameter can be.
pub trait FromSecrets: Sized {
    /// Builds the value from the app's secrets.
    fn from_secrets(secrets: BTreeMap<String, String>) -> Self;
}

impl FromSecrets for SecretStore {
    fn from_secrets(secrets: BTreeMap<String, String>) -> Self {
        SecretStore { secrets }
    }
}

impl FromSecrets for BTreeMap<String, String> {
    fn from_secrets(secrets: BTreeMap<String, String>) -> Self {
        secrets
    }
}

/// What `main` returns: something that serves on an address until told
/// to stop.
pub trait Service: Send + 'static {
    /// Serves on `addr` until `shutdown` resolves, then finishes in-flight
    /// work and returns.
    fn serve(
        self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = Result<()>> + Send;
}

#[cfg(feature = "axum")]
impl Service for axum::Router {
    async fn serve(
        self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::msg(format!("cannot listen on {addr}: {e}")))?;
        axum::serve(listener, self)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

/// Not public API: what `#[hangar_runtime::main]` expands to calls these.
#[doc(hidden)]
pub mod __private {
    use super::*;
    pub use tokio;

    /// The resources file Hangar writes for each machine.
    #[derive(Debug, Default, serde::Deserialize)]
    pub struct Resources {
        #[serde(default)]
        postgres: Option<Postgres>,
        #[serde(default)]
        redis: Option<Prefixed>,
        #[serde(default)]
        pubsub: Option<Prefixed>,
        #[serde(default)]
        secrets: BTreeMap<String, String>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Postgres {
        url: String,
    }

    /// A server URL and the prefix of everything the app owns there.
    #[derive(Debug, Clone, serde::Deserialize)]
    struct Prefixed {
        url: String,
        prefix: String,
    }

    impl Resources {
        /// Reads `$HANGAR_RESOURCES`; without it (a plain `cargo run`) the
        /// app gets no resources and says so when it asks for one.
        pub fn load() -> Result<Resources> {
            let Some(path) = std::env::var_os("HANGAR_RESOURCES") else {
                return Ok(Resources::default());
            };
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::msg(format!(
                    "cannot read the resources file {}: {e}",
                    std::path::Path::new(&path).display()
                ))
            })?;
            serde_json::from_str(&text)
                .map_err(|e| Error::msg(format!("the resources file is not valid: {e}")))
        }

        pub async fn postgres<T: FromPostgres>(&self) -> Result<T> {
            match &self.postgres {
                Some(pg) => T::from_url(pg.url.clone()).await,
                None => Err(Error::msg(
                    "no Postgres database was provisioned for this app: \
                     deploy it with `hangar deploy`, or run it with `hangar run`",
                )),
            }
        }

        pub async fn redis<T: FromRedis>(&self) -> Result<T> {
            T::from_redis(self.redis.clone().map(|r| (r.url, r.prefix))).await
        }

        pub async fn pubsub<T: FromPubSub>(&self) -> Result<T> {
            T::from_pubsub(self.pubsub.clone().map(|r| (r.url, r.prefix))).await
        }

        pub fn secrets<T: FromSecrets>(&self) -> T {
            T::from_secrets(self.secrets.clone())
        }
    }

    /// The address to serve on: `0.0.0.0:$PORT` (8000 without `$PORT`).
    pub fn address() -> Result<SocketAddr> {
        let port = match std::env::var("PORT") {
            Ok(p) => p
                .parse::<u16>()
                .map_err(|_| Error::msg(format!("$PORT is not a port number: {p:?}")))?,
            Err(_) => 8000,
        };
        Ok(SocketAddr::from(([0, 0, 0, 0], port)))
    }

    /// Resolves on SIGTERM (what Hangar sends to stop a machine) or Ctrl-C.
    pub async fn shutdown_signal() {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }

    /// Serves what `main` returned, until SIGTERM.
    pub async fn serve<S: Service>(service: S) -> Result<()> {
        let addr = address()?;
        println!("hangar-runtime: serving on {addr}");
        service.serve(addr, shutdown_signal()).await?;
        println!("hangar-runtime: shut down");
        Ok(())
    }

    /// Runs the app: the entry point the macro generates calls this.
    pub fn run<F, Fut>(app: F) -> !
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("hangar-runtime: cannot start the async runtime: {e}");
                std::process::exit(1);
            }
        };
        match runtime.block_on(app()) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("hangar-runtime: {e}");
                std::process::exit(1);
            }
        }
    }
}
