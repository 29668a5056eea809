//! Per-tenant limits on the shared Postgres servers, against the real ones:
//! the operator's kind (127.0.0.1:5432, superuser `postgres`, trust auth)
//! and Hangar's own cluster (started here in a temp dir, SCRAM passwords).
//!
//! - Each app's role has its connection limit, timeouts and
//!   `temp_file_limit`, none of the powerful attributes, and gets them back
//!   when provisioning runs again over a role made before.
//! - On Hangar's own cluster an app's role cannot connect to `postgres` or
//!   `template1`.
//! - A long app name gets a database name Postgres keeps whole, and
//!   deprovisioning never drops the database its truncation would name.
//! - A role (or database) named like an app's that Hangar did not make for
//!   that app is refused, never taken over, and never dropped.

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Fixture, fixture};
use hangar_core::resource::ResourceKind;
use hangar_resources::{
    PG_IDENTIFIER_MAX, PostgresCredentials, PostgresLimits, PostgresServer, Resources,
    database_name,
};
use hangar_store::ResourceRow;
use tokio_postgres::error::SqlState;

mod common;
#[path = "common/local_cluster.rs"]
mod local_cluster;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn admin() -> tokio_postgres::Client {
    match connect(ADMIN_URL).await {
        Ok(c) => c,
        Err(e) => panic!(
            "this test needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth): {e}; \
             start it as the env skill says"
        ),
    }
}

/// `postgres://user:password@host:port/<database>` for `creds`.
fn url_to(creds: &PostgresCredentials, database: &str) -> String {
    format!(
        "postgres://{}:{}@{}:{}/{database}",
        creds.user, creds.password, creds.host, creds.port
    )
}

fn postgres_only() -> BTreeSet<ResourceKind> {
    [ResourceKind::Postgres].into()
}

/// What provisioning wrote to the build log.
#[derive(Default)]
struct Log(std::sync::Mutex<Vec<String>>);

impl Log {
    fn sink(&self) -> impl Fn(String) + Send + Sync + '_ {
        |line| self.0.lock().unwrap().push(line)
    }

    fn has(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// The role as the catalog has it.
#[derive(Debug, PartialEq)]
struct RoleState {
    connlimit: i32,
    powers: [bool; 5],
    config: Option<Vec<String>>,
    comment: Option<String>,
    password: Option<String>,
}

async fn role_state(admin: &tokio_postgres::Client, role: &str) -> Option<RoleState> {
    admin
        .query_opt(
            "SELECT r.rolconnlimit, r.rolsuper, r.rolcreatedb, r.rolcreaterole, \
                    r.rolreplication, r.rolbypassrls, r.rolconfig, \
                    shobj_description(r.oid, 'pg_authid'), a.rolpassword \
             FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = $1::text",
            &[&role],
        )
        .await
        .unwrap()
        .map(|r| RoleState {
            connlimit: r.get(0),
            powers: [r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)],
            config: r.get(6),
            comment: r.get(7),
            password: r.get(8),
        })
}

async fn database_exists(admin: &tokio_postgres::Client, name: &str) -> bool {
    admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1::text",
            &[&name],
        )
        .await
        .unwrap()
        .is_some()
}

/// A session setting as the role's session sees it, in its base unit.
async fn setting(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one("SELECT setting FROM pg_settings WHERE name = $1", &[&name])
        .await
        .unwrap()
        .get(0)
}

fn expected_config(limits: &PostgresLimits) -> Vec<String> {
    vec![
        format!(
            "statement_timeout={}ms",
            limits.statement_timeout.as_millis()
        ),
        format!(
            "idle_in_transaction_session_timeout={}ms",
            limits.idle_in_transaction_timeout.as_millis()
        ),
        format!("temp_file_limit={}kB", limits.temp_file_limit_kb),
    ]
}

#[tokio::test]
async fn app_roles_get_their_limits_and_get_them_back() {
    let admin = admin().await;
    let app_name = format!("lim-{}", std::process::id());
    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&[&app_name]).await;
    let app = apps[0].clone();
    // Short timeouts and a small limit, to see them act.
    let limits = PostgresLimits {
        connections: 3,
        statement_timeout: Duration::from_millis(300),
        idle_in_transaction_timeout: Duration::from_secs(1),
        ..PostgresLimits::default()
    };
    let res = Resources::new(store, vault, Some(PostgresServer::new(ADMIN_URL).unwrap()))
        .with_postgres_limits(limits)
        .unwrap();
    let public_may_connect = "SELECT has_database_privilege('public', 'postgres', 'CONNECT')";
    let before: bool = admin
        .query_one(public_may_connect, &[])
        .await
        .unwrap()
        .get(0);
    let log = Log::default();
    res.provision(&app, &postgres_only(), &log.sink())
        .await
        .unwrap();
    let creds = res.postgres_credentials(&app.id).await.unwrap().unwrap();
    let role = &creds.user;
    assert_eq!(role, &database_name(&app, None).unwrap());

    let state = role_state(&admin, role).await.unwrap();
    assert_eq!(state.connlimit, 3);
    assert_eq!(
        state.powers, [false; 5],
        "super/createdb/createrole/replication/bypassrls"
    );
    assert_eq!(state.config, Some(expected_config(&limits)));
    assert_eq!(state.comment, Some(format!("hangar app {}", app.id)));
    assert!(log.has("at most 3 connections"), "{}", log.text());

    // As the app: the settings are the session's, a long statement is
    // cancelled, an idle transaction ended.
    let client = connect(&creds.url).await.unwrap();
    assert_eq!(setting(&client, "statement_timeout").await, "300");
    assert_eq!(
        setting(&client, "idle_in_transaction_session_timeout").await,
        "1000"
    );
    assert_eq!(setting(&client, "temp_file_limit").await, "1048576");
    let shown: String = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "300ms");
    let e = client
        .batch_execute("SELECT pg_sleep(5)")
        .await
        .expect_err("cancelled by statement_timeout");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e}");
    // It can still create in its database; PUBLIC cannot.
    client
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .unwrap();
    let public_creates: bool = client
        .query_one(
            "SELECT has_schema_privilege('public', 'public', 'CREATE')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!public_creates);
    let idle = connect(&creds.url).await.unwrap();
    idle.batch_execute("BEGIN").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        idle.batch_execute("SELECT 1").await.is_err(),
        "an idle transaction outlived idle_in_transaction_session_timeout"
    );
    // Three connections at most (`client` is one).
    let second = connect(&creds.url).await.unwrap();
    let third = connect(&creds.url).await.unwrap();
    let e = connect(&creds.url)
        .await
        .expect_err("a fourth connection is refused");
    assert_eq!(e.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{e}");
    drop((client, idle, second, third));

    // An operator's shared databases are left as they were, and said so.
    let after: bool = admin
        .query_one(public_may_connect, &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, after);
    if before {
        assert!(
            log.has("note: on this server PUBLIC") && log.has("postgres"),
            "{}",
            log.text()
        );
    }

    // A role made before limits (and markers): provisioning again puts them
    // back and marks it, and the app keeps its credentials.
    admin
        .batch_execute(&format!(
            "ALTER ROLE \"{role}\" CONNECTION LIMIT -1 CREATEDB; ALTER ROLE \"{role}\" RESET ALL; \
             COMMENT ON ROLE \"{role}\" IS NULL; COMMENT ON DATABASE \"{role}\" IS NULL"
        ))
        .await
        .unwrap();
    let log = Log::default();
    res.provision(&app, &postgres_only(), &log.sink())
        .await
        .unwrap();
    assert!(log.has("postgres: ready"), "{}", log.text());
    let again = role_state(&admin, role).await.unwrap();
    assert_eq!(again.connlimit, 3);
    assert_eq!(again.powers, [false; 5]);
    assert_eq!(again.config, Some(expected_config(&limits)));
    assert_eq!(again.comment, Some(format!("hangar app {}", app.id)));
    assert_eq!(again.password, state.password, "the password is kept");
    assert_eq!(
        res.postgres_credentials(&app.id).await.unwrap().unwrap(),
        creds
    );

    res.deprovision(&app).await.unwrap();
    assert!(role_state(&admin, role).await.is_none());
    assert!(!database_exists(&admin, role).await);
}

#[tokio::test]
async fn a_long_app_name_never_reaches_its_truncated_namesake() {
    let admin = admin().await;
    let pid = std::process::id().to_string();
    // 60 characters; `hangar_` + it is 67 bytes, which Postgres truncates.
    let long = format!("long-{pid}-{}", "x".repeat(60 - 6 - pid.len()));
    assert_eq!(long.len(), 60);
    let namesake: String = format!("hangar_{}", long.replace('-', "_"))
        .chars()
        .take(PG_IDENTIFIER_MAX)
        .collect();
    // Another app (`long-<pid>-xxx…`, 56 characters) whose database is
    // exactly that truncation.
    for sql in [
        format!("DROP DATABASE IF EXISTS \"{namesake}\""),
        format!("CREATE DATABASE \"{namesake}\""),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }

    let stale = format!("stale-{pid}");
    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&[&long, &stale]).await;
    let res = Resources::new(
        store.clone(),
        vault,
        Some(PostgresServer::new(ADMIN_URL).unwrap()),
    );
    res.provision(&apps[0], &postgres_only(), &|_| {})
        .await
        .unwrap();
    let creds = res
        .postgres_credentials(&apps[0].id)
        .await
        .unwrap()
        .unwrap();
    // Named by the app's id, not its name: short by construction.
    let name = database_name(&apps[0], None).unwrap();
    assert_eq!(name, format!("hangar_{}", apps[0].id));
    assert_eq!(
        (creds.database.as_str(), creds.user.as_str()),
        (&*name, &*name)
    );
    assert!(name.len() <= PG_IDENTIFIER_MAX);
    assert_ne!(name, namesake);
    assert!(database_exists(&admin, &name).await);
    assert_eq!(
        role_state(&admin, &name).await.unwrap().connlimit,
        PostgresLimits::default().connections as i32
    );
    // The app's own database works.
    let client = connect(&creds.url).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .unwrap();
    drop(client);

    res.deprovision(&apps[0]).await.unwrap();
    assert!(!database_exists(&admin, &name).await);
    assert!(role_state(&admin, &name).await.is_none());
    assert!(
        database_exists(&admin, &namesake).await,
        "the namesake was dropped"
    );

    // A row an older Hangar left for such a name (its provisioning failed,
    // the row stayed): deprovisioning it drops nothing.
    store
        .put_resource(ResourceRow {
            app_id: apps[1].id.clone(),
            kind: ResourceKind::Postgres.as_str().into(),
            name: format!("hangar_{}", long.replace('-', "_")),
            status: "failed".into(),
            detail: None,
            sealed: None,
            updated_at: 0,
        })
        .await
        .unwrap();
    res.deprovision(&apps[1]).await.unwrap();
    assert!(
        database_exists(&admin, &namesake).await,
        "the namesake was dropped"
    );
    assert!(res.list(&apps[1].id).await.unwrap().is_empty());

    admin
        .batch_execute(&format!("DROP DATABASE \"{namesake}\""))
        .await
        .unwrap();
}

#[tokio::test]
async fn roles_and_databases_hangar_did_not_make_are_not_taken_over() {
    let admin = admin().await;
    let pid = std::process::id();
    let (victim, marked, dbonly) = (
        format!("victim-{pid}"),
        format!("marked-{pid}"),
        format!("dbonly-{pid}"),
    );
    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&[&victim, &marked, &dbonly]).await;
    // The names Hangar would give the apps' databases and roles.
    let name = |i: usize| database_name(&apps[i], None).unwrap();
    let (victim_role, marked_role, dbonly_db) = (name(0), name(1), name(2));
    // A role of the operator's that happens to have an app's name; one
    // marked for another (deleted) app; a database nobody's role owns.
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{victim_role}\" LOGIN PASSWORD 'theirs' CONNECTION LIMIT 5; \
             CREATE ROLE \"{marked_role}\" LOGIN PASSWORD 'old-app'; \
             COMMENT ON ROLE \"{marked_role}\" IS 'hangar app app_0000000000000000'"
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE \"{dbonly_db}\""))
        .await
        .unwrap();
    let victim_before = role_state(&admin, &victim_role).await.unwrap();
    let marked_before = role_state(&admin, &marked_role).await.unwrap();

    let res = Resources::new(store, vault, Some(PostgresServer::new(ADMIN_URL).unwrap()));
    for (app, role) in [(&apps[0], &victim_role), (&apps[1], &marked_role)] {
        let e = res
            .provision(app, &postgres_only(), &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(role.as_str()) && e.contains("does not take over"),
            "{e}"
        );
        let listed = res.list(&app.id).await.unwrap();
        assert_eq!(listed[0].status, "failed");
        assert!(res.postgres_credentials(&app.id).await.unwrap().is_none());
    }
    let e = res
        .provision(&apps[2], &postgres_only(), &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("database {dbonly_db}")) && e.contains("does not take over"),
        "{e}"
    );
    // Untouched: password, limit, settings, comment.
    assert_eq!(
        role_state(&admin, &victim_role).await.unwrap(),
        victim_before
    );
    assert_eq!(
        role_state(&admin, &marked_role).await.unwrap(),
        marked_before
    );

    // Deprovisioning the apps leaves them too (but drops the role Hangar
    // did make for `dbonly`).
    for app in &apps {
        res.deprovision(app).await.unwrap();
    }
    assert_eq!(
        role_state(&admin, &victim_role).await.unwrap(),
        victim_before
    );
    assert_eq!(
        role_state(&admin, &marked_role).await.unwrap(),
        marked_before
    );
    assert!(database_exists(&admin, &dbonly_db).await);
    assert!(role_state(&admin, &dbonly_db).await.is_none());

    admin
        .batch_execute(&format!(
            "DROP ROLE \"{victim_role}\"; DROP ROLE \"{marked_role}\""
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE \"{dbonly_db}\""))
        .await
        .unwrap();
}

#[tokio::test]
async fn on_hangars_own_cluster_an_app_reaches_only_its_database() {
    let bins = local_cluster::binaries();
    let tmp = local_cluster::reachable_tempdir();
    let dir = tmp.path().join("postgres");
    let _guard = local_cluster::KillOnDrop(dir.clone());
    let Fixture {
        dir: _store_dir,
        store,
        vault,
        apps,
    } = fixture(&["own-a", "own-b"]).await;
    let res = Resources::new(store, vault, None).with_local_postgres(bins.clone(), dir.clone());
    let log = Log::default();
    res.provision(&apps[0], &postgres_only(), &log.sink())
        .await
        .unwrap();
    assert!(
        log.has("closed postgres, template1 to PUBLIC"),
        "{}",
        log.text()
    );
    res.provision(&apps[1], &postgres_only(), &|_| {})
        .await
        .unwrap();
    let creds = res
        .postgres_credentials(&apps[0].id)
        .await
        .unwrap()
        .unwrap();
    let other = res
        .postgres_credentials(&apps[1].id)
        .await
        .unwrap()
        .unwrap();

    let client = connect(&creds.url).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .unwrap();
    for database in ["postgres", "template1", other.database.as_str()] {
        let e = connect(&url_to(&creds, database))
            .await
            .err()
            .unwrap_or_else(|| panic!("the app's role connected to {database}"));
        assert_eq!(
            e.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{database}: {e}"
        );
    }
    drop(client);

    // A role from before limits and markers, on a cluster that checks
    // passwords: provisioning again restores them and keeps its password.
    let cluster = hangar_resources::local_pg::LocalPostgres::start(&bins, &dir)
        .await
        .unwrap();
    let admin = connect(&cluster.admin_url()).await.unwrap();
    let role = &creds.user;
    admin
        .batch_execute(&format!(
            "ALTER ROLE \"{role}\" CONNECTION LIMIT -1; ALTER ROLE \"{role}\" RESET ALL; \
             COMMENT ON ROLE \"{role}\" IS NULL"
        ))
        .await
        .unwrap();
    res.provision(&apps[0], &postgres_only(), &|_| {})
        .await
        .unwrap();
    let state = role_state(&admin, role).await.unwrap();
    assert_eq!(
        state.connlimit,
        PostgresLimits::default().connections as i32
    );
    assert_eq!(state.comment, Some(format!("hangar app {}", apps[0].id)));
    assert_eq!(
        state.config,
        Some(expected_config(&PostgresLimits::default()))
    );
    let client = connect(&creds.url).await.unwrap();
    client.batch_execute("SELECT * FROM t").await.unwrap();
    drop(client);

    for app in &apps {
        res.deprovision(app).await.unwrap();
    }
    assert!(role_state(&admin, role).await.is_none());
    drop(admin);
    cluster.stop().await.unwrap();
}
