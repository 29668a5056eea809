//! Per-app Postgres: the server apps get their databases on, the limits
//! on each app's role, and provisioning (create-only, marked as Hangar's
//! for the app) and dropping of a role and its database.

use hangar_store::{App, ResourceRow};
use serde::{Deserialize, Serialize};

use crate::ident::{ResourceKey, pg_identifier};
use crate::{ResourceError, Resources, Result, local_pg, random_password};

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

/// The role and database name of `app`'s Postgres resource: the name its
/// row `recorded` (an earlier attempt for this app, or a database made
/// before names came from ids, named after the app's name: kept, never
/// renamed), else `hangar_<app id>` ([`ResourceKey::postgres`]). A
/// recorded name Postgres would truncate was never created (a bound name
/// that long is refused), so it is not kept.
pub fn database_name(app: &App, recorded: Option<&ResourceRow>) -> Result<String> {
    if let Some(row) = recorded
        && pg_identifier(&row.name).is_ok()
    {
        return Ok(row.name.clone());
    }
    Ok(ResourceKey::of_app(&app.id)?.postgres()?)
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
pub(crate) struct LocalCluster {
    pub(crate) bins: local_pg::PostgresBinaries,
    pub(crate) dir: std::path::PathBuf,
    pub(crate) server: tokio::sync::OnceCell<PostgresServer>,
}

impl Resources {
    /// The server apps' databases live on.
    pub(crate) async fn postgres_server(&self) -> Result<PostgresServer> {
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

    /// Puts the limits back on the role of a ready database (made before,
    /// perhaps before there were limits), keeping its password. A failure
    /// is reported in the build log and leaves the database as it was: the
    /// app's credentials still work, so it is no reason to fail a build.
    pub(crate) async fn refresh_postgres(
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
    pub(crate) async fn ensure_postgres(
        &self,
        app: &App,
        name: &str,
        ready: Option<&PostgresCredentials>,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<PostgresCredentials> {
        pg_identifier(name)?;
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
    pub(crate) async fn drop_postgres(&self, app: &App, row: &ResourceRow) -> Result<()> {
        let name = row.name.as_str();
        if let Err(e) = pg_identifier(name) {
            tracing::warn!(app = %app.name, name, error = %e, "nothing dropped on the server");
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, name: &str) -> App {
        App {
            id: id.into(),
            org_id: "org_1".into(),
            name: name.into(),
            created_at: 0,
            scale: None,
        }
    }

    fn row(app: &App, name: &str, status: &str) -> ResourceRow {
        ResourceRow {
            app_id: app.id.clone(),
            kind: "postgres".into(),
            name: name.into(),
            status: status.into(),
            detail: None,
            sealed: None,
            updated_at: 0,
        }
    }

    #[test]
    fn databases_are_named_by_app_id_and_recorded_names_are_kept() {
        // Two apps whose names share the 63 bytes Postgres would keep of
        // `hangar_<name>` get databases and roles of their own.
        let shared = "a".repeat(56);
        let one = app("app_00000000000000a1", &format!("{shared}bbbbbbb"));
        let two = app("app_00000000000000a2", &format!("{shared}ccccccc"));
        assert_eq!(
            format!("hangar_{}", one.name)[..63],
            format!("hangar_{}", two.name)[..63]
        );
        let (x, y) = (
            database_name(&one, None).unwrap(),
            database_name(&two, None).unwrap(),
        );
        assert_eq!(x, "hangar_app_00000000000000a1");
        assert_eq!(y, "hangar_app_00000000000000a2");
        assert!(x.len() <= crate::ident::PG_IDENTIFIER_MAX);
        // A later app of the same name (another id) meets neither.
        let namesake = app("app_00000000000000b1", &one.name);
        assert_ne!(database_name(&namesake, None).unwrap(), x);
        // A database made by name before an upgrade keeps its recorded
        // name (the app's data is there); so does an earlier attempt's.
        let old = app("app_00000000000000c1", "todo");
        for status in ["ready", "failed", "provisioning"] {
            let r = row(&old, "hangar_todo", status);
            assert_eq!(database_name(&old, Some(&r)).unwrap(), "hangar_todo");
        }
        // A recorded name Postgres would truncate was never created: the
        // app gets its id's name, never a cut one.
        let r = row(&old, &format!("hangar_{}", "z".repeat(57)), "failed");
        assert_eq!(
            database_name(&old, Some(&r)).unwrap(),
            "hangar_app_00000000000000c1"
        );
        // An id that would not make a plain identifier is refused, typed.
        let odd = app("APP; drop", "odd");
        assert!(matches!(
            database_name(&odd, None),
            Err(ResourceError::Ident(
                crate::ident::IdentError::Invalid { .. }
            ))
        ));
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
