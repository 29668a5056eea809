//! Provisioning against the real Postgres server (127.0.0.1:5432, user
//! postgres, trust auth in CI): each app gets its own database and role,
//! other apps' roles cannot open it, and deprovisioning drops both.

use std::collections::BTreeSet;

use common::{Fixture, fixture};
use hangar_core::resource::ResourceKind;
use hangar_resources::{PostgresServer, Resources, database_name};

mod common;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn require_postgres() {
    if let Err(e) = connect(ADMIN_URL).await {
        panic!(
            "this test needs PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth): {e}; \
             start it as the env skill says"
        );
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

#[tokio::test]
async fn each_app_gets_its_own_database_closed_to_others() {
    require_postgres().await;
    let (a, b) = (unique("pg-a"), unique("pg-b"));
    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&[&a, &b]).await;
    let (app_a, app_b) = (apps[0].clone(), apps[1].clone());
    let res = Resources::new(
        store.clone(),
        vault,
        Some(PostgresServer::new(ADMIN_URL).unwrap()),
    );
    let kinds: BTreeSet<_> = [ResourceKind::Postgres, ResourceKind::Secrets].into();
    let lines = std::sync::Mutex::new(Vec::new());
    let log = |l: String| lines.lock().unwrap().push(l);
    let legacy = format!("hangar_{}", b.replace('-', "_"));
    store
        .put_resource(hangar_store::ResourceRow {
            app_id: app_b.id.clone(),
            kind: ResourceKind::Postgres.as_str().into(),
            name: legacy.clone(),
            status: "provisioning".into(),
            detail: None,
            sealed: None,
            updated_at: 0,
        })
        .await
        .unwrap();
    res.provision(&app_a, &kinds, &log).await.unwrap();
    res.provision(&app_b, &kinds, &log).await.unwrap();
    // Again: idempotent, nothing re-created.
    res.provision(&app_a, &kinds, &log).await.unwrap();
    assert!(lines.lock().unwrap().iter().any(|l| l == "postgres: ready"));

    let creds_a = res.for_machine(&app_a.id).await.unwrap().postgres.unwrap();
    let creds_b = res.for_machine(&app_b.id).await.unwrap().postgres.unwrap();
    // Named by the app's id, not its (reusable) name.
    assert_eq!(creds_a.database, format!("hangar_{}", app_a.id));
    assert_eq!(creds_a.database, database_name(&app_a, None).unwrap());
    // B's database was begun by an older Hangar, under B's name (its row
    // records it): provisioning finishes that one, it does not start anew.
    assert_eq!(creds_b.database, format!("hangar_{}", b.replace('-', "_")));
    assert_eq!(creds_b.user, creds_b.database);
    assert_ne!(creds_a.password, creds_b.password);

    // A's role works in A's database.
    let client = connect(&creds_a.url).await.unwrap();
    client
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // B's role cannot even connect to A's database.
    let b_into_a = format!(
        "postgres://{}:{}@127.0.0.1:5432/{}",
        creds_b.user, creds_b.password, creds_a.database
    );
    let Err(err) = connect(&b_into_a).await else {
        panic!("B must not open A's database");
    };
    assert!(
        err.to_string().contains("permission denied")
            || format!("{err:?}").contains("permission denied"),
        "{err:?}"
    );
    // Resources are listed without credentials; the store holds them sealed.
    let listed = res.list(&app_a.id).await.unwrap();
    let json = serde_json_string(&listed);
    assert!(json.contains("\"status\":\"ready\""), "{json}");
    assert!(!json.contains(&creds_a.password));

    // Deprovision: database and role are gone.
    drop(client);
    res.deprovision(&app_a).await.unwrap();
    res.deprovision(&app_b).await.unwrap();
    let admin = connect(ADMIN_URL).await.unwrap();
    for name in [creds_a.database.clone(), legacy] {
        let db = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .unwrap();
        let role = admin
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
            .await
            .unwrap();
        assert!(db.is_none() && role.is_none(), "{name} left behind");
    }
    assert!(res.list(&app_a.id).await.unwrap().is_empty());
}

fn serde_json_string(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap()
}

/// What an older Hangar (objects named after the app's name) left when an
/// app's deletion skipped or failed its deprovisioning: a database and
/// role `hangar_<name>` with the old owner's rows in it, marked for the old
/// app's id. A new app of that name (another org's, say) gets its own,
/// empty database, and the leftover stays as it was, not taken over.
#[tokio::test]
async fn a_new_app_of_a_deleted_apps_name_never_gets_its_leftovers() {
    require_postgres().await;
    let name = unique("pg-reused");
    let leftover = format!("hangar_{}", name.replace('-', "_"));
    let admin = connect(ADMIN_URL).await.unwrap();
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{leftover}\" WITH (FORCE)"
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS \"{leftover}\"; \
             CREATE ROLE \"{leftover}\" LOGIN PASSWORD 'old-owner'; \
             COMMENT ON ROLE \"{leftover}\" IS 'hangar app app_00000000000000dd'"
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "CREATE DATABASE \"{leftover}\" OWNER \"{leftover}\""
        ))
        .await
        .unwrap();
    // Closed to PUBLIC, as Hangar made it.
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE \"{leftover}\" FROM PUBLIC; \
             GRANT ALL ON DATABASE \"{leftover}\" TO \"{leftover}\""
        ))
        .await
        .unwrap();
    let old = ADMIN_URL.replace("/postgres", &format!("/{leftover}"));
    connect(&old)
        .await
        .unwrap()
        .batch_execute("CREATE TABLE orders (card text); INSERT INTO orders VALUES ('4242')")
        .await
        .unwrap();

    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&[&name]).await;
    let res = Resources::new(store, vault, Some(PostgresServer::new(ADMIN_URL).unwrap()));
    let kinds: BTreeSet<_> = [ResourceKind::Postgres].into();
    res.provision(&apps[0], &kinds, &|_| {}).await.unwrap();
    let creds = res
        .postgres_credentials(&apps[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.database, format!("hangar_{}", apps[0].id));
    assert_ne!(creds.database, leftover);
    let mine = connect(&creds.url).await.unwrap();
    let tables = mine
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap();
    assert!(tables.is_empty(), "an empty database");
    // The leftover is out of reach of the new app's role.
    let into_old = format!(
        "postgres://{}:{}@127.0.0.1:5432/{leftover}",
        creds.user, creds.password
    );
    assert!(connect(&into_old).await.is_err(), "the old database opened");
    drop(mine);

    // Destroying the new app drops its own database, never the leftover.
    res.deprovision(&apps[0]).await.unwrap();
    let exists = |db: String| {
        let admin = &admin;
        async move {
            admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
                .await
                .unwrap()
                .is_some()
        }
    };
    assert!(!exists(creds.database.clone()).await);
    assert!(exists(leftover.clone()).await, "the leftover was dropped");
    for sql in [
        format!("DROP DATABASE \"{leftover}\" WITH (FORCE)"),
        format!("DROP ROLE \"{leftover}\""),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
}
