//! The state store: everything Hangar must remember across restarts.
//!
//! Layout:
//! - [`Store`]: the handle; each method is one short transaction.
//! - [`model`]: the rows (orgs, tokens, apps, builds, releases, machines).
//! - `schema.sql`, `schema2.sql`…: the schema, applied by numbered
//!   migrations on open.
//! - `sqlite::access`: orgs, scoped tokens and the audit log.
//! - `sqlite::domains`: custom domains.
//! - `sqlite::builds`: the durable build queue (fair claims, superseding,
//!   cancelling, crash recovery).
//!
//! The embedded default is SQLite in WAL mode under the data dir. Calls run on
//! tokio's blocking pool so a slow disk never stalls the reactor.
//!
//! Architecture Invariant: only this crate writes SQL. Other crates speak in
//! the methods below, so a Postgres implementation can replace SQLite behind
//! the same signatures.

mod model;
mod sqlite;

pub use model::*;
pub use sqlite::Store;
pub use sqlite::{MAX_GIT_HISTORY, MAX_PREVIEWS_PER_APP, NewDelivery, PreviewPush};

/// Errors from the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state store holds an unexpected value: {0}")]
    Corrupt(String),
    #[error("state store task failed: {0}")]
    Join(String),
    #[error("app name {0:?} is taken by another organisation")]
    NameTaken(String),
    #[error("an organisation named {0:?} exists already")]
    OrgExists(String),
    #[error(
        "{queued} builds of the organisation's other apps are queued; at most {limit} may wait"
    )]
    QueueFull { queued: u64, limit: u32 },
    #[error("build {id} is {status}, no longer building")]
    BuildNotRunning {
        id: String,
        status: hangar_core::status::BuildStatus,
    },
    #[error("{0} is another app's domain already")]
    DomainTaken(String),
    #[error("the app has {limit} open previews already; close one first")]
    TooManyPreviews { limit: i64 },
    #[error("the app has {limit} custom domains already; remove one first")]
    TooManyDomains { limit: u64 },
    #[error("the organisation holds {limit} live tokens already; revoke some first")]
    TooManyTokens { limit: u64 },
    #[error("state store schema version {found} is newer than this hangar ({supported})")]
    TooNew { found: i64, supported: i64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
