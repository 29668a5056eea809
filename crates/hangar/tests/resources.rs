//! Infrastructure from code: examples/todo declares a Postgres database,
//! Redis, PubSub and its secrets on `main`; Hangar reads that from the
//! source at deploy, provisions the database and the Redis user on the real
//! servers (127.0.0.1:5432, :6379; NATS at :4222), hands the credentials
//! and secrets to the machine, keeps the data across deploys, and drops it
//! all on destroy.

mod support;

use serde_json::Value;
use support::inventory::{ADMIN_URL, Inventory, admin_query, database_exists, redis_keys};
use support::{TestPlatform, example, wait_for};

/// Tests that deploy examples/todo as `todo` on the shared servers take
/// turns, so two builds never share the app's cargo target dir at once
/// (another name would get a cold one of its own). Their databases, Redis
/// users and subjects are named by the app's id, so they never meet.
static TODO_ON_SHARED_POSTGRES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A platform whose apps get the host's Postgres, Redis and NATS.
fn on_the_hosts_servers() -> TestPlatform {
    TestPlatform::start_with(&[
        "--postgres-url",
        ADMIN_URL,
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--nats-url",
        "nats://127.0.0.1:4222",
    ])
}

/// What `hangar resources` lists for `app`: kind → the name provisioned
/// (the database and role, the Redis user, the subject prefix).
fn provisioned(p: &TestPlatform, app: &str) -> std::collections::BTreeMap<String, String> {
    let (code, listed) = p.call("GET", &format!("/api/v1/apps/{app}/resources"), Value::Null);
    assert_eq!(code, 200, "{listed}");
    listed["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The app's id (the Machines API shows it).
fn app_id(p: &TestPlatform, app: &str) -> String {
    let (code, v) = p.call("GET", &format!("/v1/apps/{app}"), Value::Null);
    assert_eq!(code, 200, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

#[test]
fn todo_gets_a_database_and_secrets_that_survive_redeploys() {
    let _turn = TODO_ON_SHARED_POSTGRES
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    // Fails loudly, naming what is missing, when Postgres is down.
    let _ = admin_query("SELECT $1::text", "ping");
    let p = on_the_hosts_servers();
    let app = "todo";

    let out = p.deploy(&example("todo"));
    assert!(out.contains("is live"), "{out}");
    // Named by the app's id (a later app of the same name meets none).
    let names = provisioned(&p, app);
    let id = app_id(&p, app);
    let database = names["postgres"].clone();
    assert_eq!(database, format!("hangar_{id}"));
    assert_eq!(names["redis"], format!("hangar_{id}"));
    assert_eq!(names["pubsub"], format!("hangar.{id}."));
    let database = database.as_str();
    assert!(database_exists(database), "database provisioned at deploy");

    // The app works against its database through the proxy. (Counters
    // are compared with their first values: an interrupted earlier run
    // may have left some in Redis.)
    let stats = |p: &TestPlatform| -> (i64, i64) {
        let (code, body) = p.get(app, "/stats");
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        (
            v["views"].as_i64().unwrap(),
            v["created_events"].as_i64().unwrap(),
        )
    };
    let (views0, created0) = stats(&p);
    assert_eq!(p.get(app, "/greeting"), (200, "no greeting set".to_owned()));
    let (code, body) = p.post_json(app, "/todos", r#"{"title": "buy milk"}"#);
    assert_eq!(code, 201, "{body}");
    let (code, body) = p.post_json(app, "/todos", r#"{"title": ""}"#);
    assert_eq!(code, 400, "{body}");
    let (code, body) = p.get(app, "/todos");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("buy milk"), "{body}");
    // The cache (Redis, the app's own user) counted the view, and the
    // event published on NATS came back to the app's subscriber.
    let (views, _) = wait_for(10, "the todos.created event", || {
        let s = stats(&p);
        (s.1 == created0 + 1).then_some(s)
    });
    assert_eq!(views, views0 + 1);

    // A secret: listed by name only, handed to machines at their next start.
    let secret = "s3cr3t-greeting-4242";
    let out = p.hangar(&["secrets", "set", app, &format!("GREETING={secret}")]);
    assert!(out.status.success());
    let out = p.hangar(&["secrets", "list", app]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains("GREETING"), "{listed}");
    assert!(!listed.contains(secret), "values are never listed");
    let bad = p.hangar(&["secrets", "set", app, "1BAD=x"]);
    assert!(!bad.status.success(), "invalid names are refused");
    // Not at rest in the clear: the state store holds it sealed.
    let db_bytes = std::fs::read(p.data_dir().join("state.db")).unwrap();
    let wal = std::fs::read(p.data_dir().join("state.db-wal")).unwrap_or_default();
    for bytes in [&db_bytes, &wal] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is in the store in the clear"
        );
    }

    // Redeploy: the data is still there and the secret has arrived.
    let out = p.deploy(&example("todo"));
    assert!(out.contains("is live"), "{out}");
    let (code, body) = p.get(app, "/todos");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("buy milk"),
        "data survives a redeploy: {body}"
    );
    assert_eq!(p.get(app, "/greeting"), (200, secret.to_owned()));
    assert_eq!(stats(&p).0, views0 + 2, "the cache survives a redeploy");

    // Never in API answers or logs.
    let status = p.api_get(&format!("/api/v1/apps/{app}")).to_string();
    assert!(!status.contains(secret));
    let logs = p.hangar(&["logs", app]);
    assert!(!String::from_utf8_lossy(&logs.stdout).contains(secret));

    // Resources are listed with their state, without credentials.
    let out = p.hangar(&["resources", app]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("postgres") && text.contains(database) && text.contains("ready"),
        "{text}"
    );
    assert!(
        text.contains("redis") && text.contains(&names["redis"]),
        "{text}"
    );
    assert!(
        text.contains("pubsub") && text.contains(&names["pubsub"]),
        "{text}"
    );
    let (code, listed) = p.call("GET", &format!("/api/v1/apps/{app}/resources"), Value::Null);
    assert_eq!(code, 200);
    assert!(!listed.to_string().contains("password"), "{listed}");

    // Destroy drops the database and its role.
    let out = p.hangar(&["destroy", app, "--yes"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(database));
    wait_for(10, "the database to be dropped", || {
        (!database_exists(database)).then_some(())
    });
    assert!(
        admin_query(
            "SELECT rolname::text FROM pg_roles WHERE rolname = $1",
            database
        )
        .is_empty(),
        "role dropped"
    );
    // And the Redis user with the app's keys.
    let out = std::process::Command::new("redis-cli")
        .args(["ACL", "GETUSER", &names["redis"]])
        .output()
        .expect("redis-cli");
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "Redis user dropped: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Stops the servers a platform started itself (they outlive hangar on
/// purpose), so a test leaves none running. Drop it while the data dir
/// still exists.
struct StopOwnServers(std::path::PathBuf);

impl Drop for StopOwnServers {
    fn drop(&mut self) {
        use hangar_resources::{local_nats, local_pg, local_redis};
        let data = self.0.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            if let Some(bin) = local_redis::RedisBinary::find() {
                let redis = local_redis::LocalRedis::new(
                    bin,
                    support::view_of(&data.join("redis")).unwrap_or_else(|| data.join("redis")),
                    local_redis::LocalRedisOptions::default(),
                );
                let _ = redis.stop_all().await;
            }
            if let Some(bin) = local_nats::NatsBinary::find() {
                let nats = local_nats::LocalNats::new(
                    bin,
                    support::view_of(&data.join("nats")).unwrap_or_else(|| data.join("nats")),
                    local_nats::LocalNatsOptions::default(),
                );
                let _ = nats.stop().await;
            }
            if let Some(bins) = local_pg::PostgresBinaries::find()
                && data.join("postgres/data/postmaster.pid").exists()
                && let Ok(pg) = local_pg::LocalPostgres::start(
                    &bins,
                    &support::view_of(&data.join("postgres"))
                        .unwrap_or_else(|| data.join("postgres")),
                )
                .await
            {
                let _ = pg.stop().await;
            }
        });
    }
}

#[test]
fn todo_deploys_with_no_flags_on_hangars_own_servers() {
    // As a new user would: `hangar up` with no resource flags, then deploy.
    let p = TestPlatform::start();
    let _stop = StopOwnServers(p.data_dir());
    let out = p.deploy(&example("todo"));
    assert!(out.contains("is live"), "{out}");
    let (code, body) = p.post_json("todo", "/todos", r#"{"title": "no flags"}"#);
    assert_eq!(code, 201, "{body}");
    let (code, body) = p.get("todo", "/todos");
    assert!(code == 200 && body.contains("no flags"), "{body}");
    // The cache and the event bus work too: on Hangar's own Redis and NATS.
    let (_, body) = p.get("todo", "/stats");
    let first: Value = serde_json::from_str(&body).unwrap();
    let (code, _) = p.post_json("todo", "/todos", r#"{"title": "again"}"#);
    assert_eq!(code, 201);
    assert_eq!(p.get("todo", "/todos").0, 200, "a view, counted in Redis");
    wait_for(10, "the todos.created event on Hangar's NATS", || {
        let (_, body) = p.get("todo", "/stats");
        let now: Value = serde_json::from_str(&body).ok()?;
        (now["created_events"].as_i64()? > first["created_events"].as_i64()?
            && now["views"].as_i64()? > first["views"].as_i64()?)
        .then_some(())
    });
    for dir in ["postgres", "redis", "nats"] {
        assert!(p.data_dir().join(dir).is_dir(), "Hangar runs its own {dir}");
    }
    // Its own Redis server's directory is named by the app's id.
    let own_redis = p.data_dir().join("redis").join(app_id(&p, "todo"));
    assert!(own_redis.is_dir(), "{}", own_redis.display());
    // Destroyed while its servers run (the guard stops them after).
    let out = p.hangar(&["destroy", "todo", "--yes"]);
    assert!(out.status.success());
    assert!(
        !own_redis.exists(),
        "destroy stops and removes the app's own Redis"
    );
}

#[test]
fn a_lost_secrets_key_stops_hangar_up_instead_of_losing_every_secret() {
    let mut p = TestPlatform::start_with(&["--driver", "runc", "--postgres-url", ADMIN_URL]);
    let (code, body) = p.call("POST", "/v1/apps", serde_json::json!({"app_name": "keyed"}));
    assert!(code == 200 || code == 201, "{code} {body}");
    let out = p.hangar(&["secrets", "set", "keyed", "TOKEN=s3cret-value"]);
    assert!(out.status.success());
    p.kill9();
    let key = p.data_dir().join("secrets.key");
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();

    // Started again without its key, hangar refuses, and makes no new one.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hangar"))
        .arg("up")
        .arg("--data-dir")
        .arg(p.data_dir())
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--machine-subnet",
            &p.subnet,
        ])
        .args(["--driver", "runc", "--postgres-url", ADMIN_URL])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(60, "hangar up to give up without its key", || {
        child.try_wait().unwrap()
    });
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "hangar up started without its key");
    assert!(
        stderr.contains("secrets key") && stderr.contains("is missing"),
        "{stderr}"
    );
    assert!(!key.exists(), "a new key was made");

    // The key back: everything reads again.
    std::fs::write(&key, saved).unwrap();
    p.restart();
    let out = p.hangar(&["secrets", "list", "keyed"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("TOKEN"));
}

#[test]
fn deleting_an_app_through_the_machines_api_drops_its_database() {
    let _turn = TODO_ON_SHARED_POSTGRES
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let _ = admin_query("SELECT $1::text", "ping");
    let p = on_the_hosts_servers();
    let app = "todo";
    p.deploy(&example("todo"));
    let database = provisioned(&p, app)["postgres"].clone();
    let database = database.as_str();
    assert!(database_exists(database), "database provisioned at deploy");
    let (code, body) = p.call("DELETE", &format!("/v1/apps/{app}"), Value::Null);
    assert_eq!(code, 202, "{body}");
    assert!(
        !database_exists(database),
        "Fly's DELETE left the database for the next owner of the name"
    );
    let roles = admin_query(
        "SELECT rolname::text FROM pg_roles WHERE rolname = $1",
        database,
    );
    assert!(roles.is_empty(), "its role is gone too: {roles:?}");
}

/// `hangar ARGS` as the org whose token is `token`.
fn hangar_with_token(p: &TestPlatform, token: &str, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_CONFIG", p.dir.path().join("cli.json"))
        .env("HANGAR_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running the hangar CLI");
    eprintln!(
        "$ HANGAR_TOKEN=… hangar {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn destroy_leaves_nothing_and_the_next_owner_of_the_name_starts_empty() {
    let _turn = TODO_ON_SHARED_POSTGRES
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let _ = admin_query("SELECT $1::text", "ping");
    let p = on_the_hosts_servers();
    let app = "todo";
    let out = p.deploy(&example("todo"));
    assert!(out.contains("is live"), "{out}");
    // Data in the database and keys in Redis (a view, and the event the
    // app counts once NATS brings it back).
    let (code, body) = p.post_json(app, "/todos", r#"{"title": "left for nobody"}"#);
    assert_eq!(code, 201, "{body}");
    let (code, body) = p.get(app, "/todos");
    assert!(code == 200 && body.contains("left for nobody"), "{body}");

    // Everything is there before the destroy (so the checks after it can
    // fail): each machine's container, cgroup, bundle and log, the
    // database, the role, the Redis user and its keys.
    let first = Inventory::of(&p, &p.token, app);
    let before = first.present(&p);
    let missing: Vec<_> = before.iter().filter(|(_, there)| !there).collect();
    assert!(
        missing.is_empty(),
        "not there before the destroy: {missing:?}"
    );
    eprintln!("inventory of {app}: {} items", before.len());

    let out = p.hangar(&["destroy", app, "--yes"]);
    assert!(out.status.success());
    let left: Vec<String> = first
        .present(&p)
        .into_iter()
        .filter(|(_, there)| *there)
        .map(|(what, _)| what)
        .collect();
    assert!(left.is_empty(), "destroy left: {left:?}");
    p.assert_no_leaks();
    assert!(
        !p.data_dir().join("logs").join(app).exists(),
        "the app's log dir is gone"
    );

    // Another org takes the name: its app gets a database and a Redis
    // user of its own, empty; nothing of the first app's reaches it.
    let (code, org) = p.call(
        "POST",
        "/api/v1/orgs",
        serde_json::json!({"name": "second"}),
    );
    assert_eq!(code, 201, "{org}");
    let token = org["token"].as_str().unwrap().to_owned();
    let out = hangar_with_token(&p, &token, &["deploy", example("todo").to_str().unwrap()]);
    assert!(out.status.success(), "the second org's deploy");
    let second = Inventory::of(&p, &token, app);
    assert_ne!(second.database, first.database);
    assert_ne!(second.redis_user, first.redis_user);
    assert_ne!(second.redis_prefix, first.redis_prefix);
    assert!(!database_exists(&first.database));
    assert!(redis_keys(&first.redis_prefix).is_empty());
    let (code, body) = p.get(app, "/stats");
    assert_eq!(code, 200, "{body}");
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (stats["views"].as_i64(), stats["created_events"].as_i64()),
        (Some(0), Some(0)),
        "no keys of the first app's: {body}"
    );
    let (code, body) = p.get(app, "/todos");
    assert_eq!((code, body.as_str()), (200, "[]"), "an empty database");

    // Its own destroy (the harness destroys only the admin org's apps).
    let out = hangar_with_token(&p, &token, &["destroy", app, "--yes"]);
    assert!(out.status.success());
    let left: Vec<String> = second
        .present(&p)
        .into_iter()
        .filter(|(_, there)| *there)
        .map(|(what, _)| what)
        .collect();
    assert!(left.is_empty(), "the second destroy left: {left:?}");
    p.assert_no_leaks();
}
