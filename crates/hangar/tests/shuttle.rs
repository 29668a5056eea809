//! Coming from Shuttle: examples/shuttle-compat is an app written for
//! Shuttle (`#[shuttle_runtime::main]`, `shuttle_shared_db::Postgres`,
//! `shuttle_runtime::Secrets`, Secrets.toml), built against the real
//! shuttle crates, unchanged. Hangar sets the runtime's environment and
//! answers its calls for secrets and the database; the database is the
//! app's own on the real Postgres server (127.0.0.1:5432).

mod support;

use support::{StopCluster, TestPlatform, example, require_runc_and_root};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The environment of the running process called `name` (root reads any).
/// The environment of `app`'s machine process on platform `p`. Another
/// test may run an app of the same name on its own platform at the same
/// time: the process is the one whose HANGAR_MACHINE_ID is this
/// platform's machine.
fn environ_of(p: &TestPlatform, name: &str) -> Vec<(String, String)> {
    let status = p.api_get(&format!("/api/v1/apps/{name}"));
    let ids: Vec<String> = status["machines"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    let out = std::process::Command::new("pgrep")
        .args(["-x", name])
        .output()
        .expect("pgrep");
    let pids = String::from_utf8_lossy(&out.stdout).into_owned();
    pids.lines()
        .map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            raw.split(|b| *b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.to_owned()))
                })
                .collect::<Vec<_>>()
        })
        .find(|env| {
            env.iter()
                .any(|(k, v)| k == "HANGAR_MACHINE_ID" && ids.contains(v))
        })
        .unwrap_or_else(|| panic!("no process {name} of this platform's machines {ids:?}"))
}

#[test]
fn a_shuttle_app_deploys_unchanged() {
    require_runc_and_root();
    let p = TestPlatform::start_with(&["--postgres-url", ADMIN_URL]);
    let app = "shuttle-compat";

    let out = p.deploy(&example(app));
    assert!(
        out.contains("Setting 1 secret(s) from") && out.contains("GREETING"),
        "Secrets.toml is read and set: {out}"
    );
    assert!(
        out.contains("resources declared in code: postgres, secrets"),
        "{out}"
    );
    assert!(out.contains("is live"), "{out}");

    // The secret from Secrets.toml and the shared database both work.
    assert_eq!(p.get(app, "/"), (200, "hello from Secrets.toml".to_owned()));
    let (code, body) = p.post_json(app, "/guests", r#"{"name": "ada"}"#);
    assert_eq!(code, 201, "{body}");
    let (code, body) = p.get(app, "/guests");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ada\""), "{body}");
    let listed = p.hangar(&["resources", app]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("postgres") && listed.contains("ready"),
        "{listed}"
    );

    // The runtime's contract: its environment, and the API answering only
    // with the app's own token.
    let env = environ_of(&p, app);
    let var = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} is not set"))
    };
    assert_eq!(var("SHUTTLE_ENV"), "production");
    assert_eq!(var("SHUTTLE_RUNTIME_PORT"), var("PORT"));
    let project = var("SHUTTLE_PROJECT_ID");
    // The database is named by the app's id (Shuttle's project id), not
    // by its name.
    let database = format!("hangar_{project}");
    assert!(listed.contains(&database), "{listed}");
    let key = var("SHUTTLE_API_KEY");
    let api = var("SHUTTLE_API");
    let path = format!("/shuttle/projects/{project}/resources/secrets");
    assert!(api.ends_with("/shuttle"), "{api}");
    let (code, body) = p.api_request("GET", &path, Some(&key), Vec::new());
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "secrets");
    assert_eq!(v["output"]["GREETING"], "hello from Secrets.toml");
    for token in [None, Some("00ff"), Some(p.token.as_str())] {
        let (code, body) = p.api_request("GET", &path, token, Vec::new());
        assert_eq!(code, 401, "token {token:?}: {body}");
        assert!(!body.contains("Secrets.toml"), "{body}");
    }
    let (code, body) = p.api_request(
        "POST",
        &format!("/shuttle/projects/{project}/resources"),
        Some(&key),
        br#"{"type": "database::aws_rds::mysql", "config": null}"#.to_vec(),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not supported"), "{body}");

    // The runtime's token is rotated: the old one is refused at once, and
    // the machines of the next deploy get the new one.
    let out = p.hangar(&["tokens", "rotate-shuttle", app]);
    assert!(out.status.success());
    let (code, body) = p.api_request("GET", &path, Some(&key), Vec::new());
    assert_eq!(code, 401, "the rotated-out token: {body}");

    // Redeploy: the guestbook survives; destroy drops the database.
    let out = p.deploy(&example(app));
    assert!(out.contains("is live"), "{out}");
    let env = environ_of(&p, app);
    let new_key = env
        .iter()
        .find(|(n, _)| n == "SHUTTLE_API_KEY")
        .map(|(_, v)| v.clone())
        .expect("SHUTTLE_API_KEY is set");
    assert_ne!(new_key, key, "a new token after the rotation");
    let (code, body) = p.api_request("GET", &path, Some(&new_key), Vec::new());
    assert_eq!(code, 200, "the new token: {body}");
    let (_, body) = p.get(app, "/guests");
    assert!(body.contains("\"ada\""), "{body}");
    let out = p.hangar(&["destroy", app, "--yes"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains(&database), "{text}");
}

/// The embedded default: with no --postgres-url but PostgreSQL installed,
/// Hangar runs its own cluster under its data dir, started when the first
/// app needs a database.
#[test]
fn without_a_postgres_url_hangar_runs_its_own_cluster() {
    require_runc_and_root();
    let bins = hangar_resources::local_pg::PostgresBinaries::find()
        .expect("this test needs PostgreSQL's binaries (initdb, pg_ctl, postgres): apt-get install postgresql");
    let p = TestPlatform::start();
    let cluster = p.data_dir().join("postgres");
    let _stop_on_panic = StopCluster {
        bins: bins.clone(),
        dir: cluster.clone(),
    };
    assert!(
        !cluster.join("data/PG_VERSION").exists(),
        "not set up before an app needs it"
    );
    let app = "shuttle-compat";
    let out = p.deploy(&example(app));
    assert!(out.contains("is live"), "{out}");
    let (code, body) = p.post_json(app, "/guests", r#"{"name": "grace"}"#);
    assert_eq!(code, 201, "{body}");
    let (_, body) = p.get(app, "/guests");
    assert!(body.contains("\"grace\""), "{body}");
    assert!(cluster.join("data/PG_VERSION").is_file());
    let port: u16 = std::fs::read_to_string(cluster.join("port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(port, 5432);
    // The cluster outlives hangar (machines may still use it): stop it
    // while its directory is still there. Postgres reaches it through its
    // view (the data dir is 0700 and Postgres is not root).
    let view = support::view_of(&cluster).expect("the cluster's dir is reached through a mount");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pg = hangar_resources::local_pg::LocalPostgres::start(&bins, &view)
            .await
            .unwrap();
        assert_eq!(pg.port(), port, "the running cluster");
        pg.stop().await.unwrap();
    });
    drop(p);
}
