//! Hangar's own Postgres cluster, against the real binaries: it starts in
//! a fresh dir, asks for the password, starts again idempotently, and
//! restarts on the same port with the same credentials.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hangar_resources::local_pg::{LocalPostgres, PostgresBinaries};

fn binaries() -> PostgresBinaries {
    match PostgresBinaries::find() {
        Some(b) => b,
        None => panic!(
            "this test needs the PostgreSQL server binaries (initdb, pg_ctl, postgres) \
             on $PATH or in /usr/lib/postgresql/<N>/bin; none were found"
        ),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A temporary dir the Postgres user can reach (a root test's tempdir is
/// 0700 root).
fn reachable_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// Stops a cluster a failed test left running (SIGQUIT: immediate).
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid_file = self.0.join("data/postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok())
        {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGQUIT) };
        }
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn select_one(url: &str) {
    let client = connect(url).await.unwrap();
    let row = client.query_one("SELECT 1::int4", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn starts_asks_for_passwords_and_restarts_on_the_same_port() {
    let bins = binaries();
    let tmp = reachable_tempdir();
    let dir = tmp.path().join("postgres");
    let _guard = KillOnDrop(dir.clone());

    let pg = LocalPostgres::start(&bins, &dir).await.unwrap();
    let (url, port) = (pg.admin_url(), pg.port());
    assert!(
        url.starts_with("postgres://hangar:")
            && url.ends_with(&format!("@127.0.0.1:{port}/postgres")),
        "{url}"
    );
    assert!(!format!("{pg:?}").contains(url.split([':', '@']).nth(2).unwrap()));
    select_one(&url).await;
    assert_eq!(mode(&dir.join("superuser.password")), 0o600);
    assert_eq!(mode(&dir), 0o700);

    // No password, or a wrong one: refused.
    let no_password = format!("postgres://hangar@127.0.0.1:{port}/postgres");
    assert!(connect(&no_password).await.is_err());
    let wrong = format!(
        "postgres://hangar:{}@127.0.0.1:{port}/postgres",
        "0".repeat(48)
    );
    let e = connect(&wrong)
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
        "{e}"
    );

    // Again while running: the same server.
    let again = LocalPostgres::start(&bins, &dir).await.unwrap();
    assert_eq!(again.port(), port);
    assert_eq!(again.admin_url(), url);

    pg.stop().await.unwrap();
    assert!(connect(&url).await.is_err(), "stopped");
    // Stopping a stopped server is no error.
    again.stop().await.unwrap();

    // A restart: same port, same password.
    let pg = LocalPostgres::start(&bins, &dir).await.unwrap();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.admin_url(), url);
    select_one(&url).await;
    pg.stop().await.unwrap();
}

#[tokio::test]
async fn a_taken_port_is_reported() {
    let bins = binaries();
    let tmp = reachable_tempdir();
    let dir = tmp.path().join("postgres");
    let _guard = KillOnDrop(dir.clone());
    let pg = LocalPostgres::start(&bins, &dir).await.unwrap();
    let port = pg.port();
    pg.stop().await.unwrap();

    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let e = LocalPostgres::start(&bins, &dir)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("127.0.0.1:{port}")) && e.contains("another program"),
        "{e}"
    );
    drop(squatter);
}

#[tokio::test]
async fn a_root_hangar_needs_a_dir_the_postgres_user_can_reach() {
    if !is_root() {
        return; // Only root hands the cluster to another user.
    }
    let bins = binaries();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let e = LocalPostgres::start(&bins, &tmp.path().join("postgres"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot reach") && e.contains("chmod o+x"), "{e}");
}
