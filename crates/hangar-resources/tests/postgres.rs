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
    res.provision(&app_a, &kinds, &log).await.unwrap();
    res.provision(&app_b, &kinds, &log).await.unwrap();
    // Again: idempotent, nothing re-created.
    res.provision(&app_a, &kinds, &log).await.unwrap();
    assert!(lines.lock().unwrap().iter().any(|l| l == "postgres: ready"));

    let creds_a = res.for_machine(&app_a.id).await.unwrap().postgres.unwrap();
    let creds_b = res.for_machine(&app_b.id).await.unwrap().postgres.unwrap();
    assert_eq!(creds_a.database, database_name(&a));
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
    for name in [database_name(&a), database_name(&b)] {
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
