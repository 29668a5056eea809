//! The API contract, walked from the OpenAPI document the server serves:
//! every operation × every token scope. A scope that lacks what an
//! operation needs gets a 403 naming the scope; one that has it gets past
//! the guard (its answer is the handler's, never 401 or 403). What each
//! scope may do is written here from the rules in the README, not taken
//! from the server's own table, so a route added without its rule fails.
//! Then every mutating operation is called for real with the narrowest
//! scope that allows it, and answers 2xx.

mod support;

use serde_json::{Value, json};
use support::TestPlatform;

/// Scopes tried, by name.
const SCOPES: [&str; 3] = ["admin", "read", "deploy:web"];

/// Whether `scope` may call `method path` (path as the document writes it).
fn allowed(scope: &str, method: &str, path: &str) -> bool {
    let read = method == "get";
    let org_wide_admin = ["/api/v1/tokens", "/api/v1/tokens/{id}", "/api/v1/audit"];
    match scope {
        "admin" => true,
        "read" => read && !org_wide_admin.contains(&path),
        "deploy:web" => {
            if read {
                // Reads of its app, its app's builds, and lists (filtered).
                path.contains("{app}")
                    || ["/api/v1/apps", "/v1/apps"].contains(&path)
                    || path.starts_with("/api/v1/builds/")
            } else {
                [
                    "/api/v1/apps/{app}/deploys",
                    "/api/v1/apps/{app}/rollback",
                    "/api/v1/apps/{app}/git/deploy",
                    "/api/v1/builds/{id}/cancel",
                ]
                .contains(&path)
            }
        }
        _ => false,
    }
}

/// `path` with its parameters filled with objects that do not exist (so
/// an allowed call changes nothing), in app `app`.
fn fill(path: &str, app: &str) -> String {
    path.replace("{app}", app)
        .replace("{id}", "ghost_1")
        .replace("{key}", "k")
        .replace("{name}", "S")
        .replace("{host}", "ghost.example")
        .replace("{sha}", "abcd1234")
        .replace("{number}", "7")
}

#[test]
fn every_operation_answers_each_scope_as_the_scope_says() {
    let p = TestPlatform::start_with(&["--driver", "process"]);
    let (code, doc) = p.call_as("", "GET", "/openapi.json", Value::Null);
    assert_eq!(code, 200, "the document needs no token");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut tokens = std::collections::BTreeMap::new();
    tokens.insert("admin", p.token.clone());
    for scope in ["read", "deploy:web"] {
        let (code, t) = p.call(
            "POST",
            "/api/v1/tokens",
            json!({"name": scope, "scope": scope}),
        );
        assert_eq!(code, 201, "{t}");
        tokens.insert(scope, t["token"].as_str().unwrap().to_owned());
    }

    let mut operations = 0;
    let mut mutating = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            if path == "/api/v1/health" {
                continue;
            }
            if method != "get" {
                mutating += 1;
            }
            // Every org operation documents the guard's answers.
            for status in ["401", "403"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{method} {path} does not document {status}"
                );
            }
            for scope in SCOPES {
                // The deploy token is tried on its own app; the others on
                // an app that does not exist.
                let app = if scope == "deploy:web" {
                    "web"
                } else {
                    "ghost-app"
                };
                let url = fill(path, app);
                let body = if method == "get" || method == "delete" {
                    Vec::new()
                } else {
                    b"{}".to_vec()
                };
                let (code, answer) =
                    p.api_request(&method.to_uppercase(), &url, Some(&tokens[scope]), body);
                let what = format!("{} {url} with {scope}", method.to_uppercase());
                assert!(
                    !answer.contains("no such API route"),
                    "{what}: the document names a route the router lacks: {answer}"
                );
                if allowed(scope, method, path) {
                    assert!(
                        code != 401 && code != 403,
                        "{what}: refused ({code}) though its scope allows it: {answer}"
                    );
                    assert!(code < 500, "{what}: {code} {answer}");
                } else {
                    assert_eq!(code, 403, "{what}: {answer}");
                    assert!(answer.contains("lacks the scope"), "{what}: {answer}");
                }
            }
        }
    }
    // The document covers Hangar's API and the Machines API.
    assert!(operations >= 50, "only {operations} operations documented");
    assert!(
        mutating >= 30,
        "only {mutating} mutating operations documented"
    );
    // And nothing above changed anything: only the two tokens were made.
    let audit = p.api_get("/api/v1/audit");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["token.create", "token.create"], "{audit}");
}

/// The image `digest` of the platform's store as an OCI layout tar, as
/// `hangar image import` sends one.
fn oci_tar(p: &TestPlatform, digest: &str) -> Vec<u8> {
    let blobs = p.data_dir().join("images/blobs/sha256");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&digest[7..])).unwrap()).unwrap();
    let mut wanted = vec![
        digest.to_owned(),
        manifest["config"]["digest"].as_str().unwrap().to_owned(),
    ];
    for l in manifest["layers"].as_array().unwrap() {
        wanted.push(l["digest"].as_str().unwrap().to_owned());
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 1}]});
    add("index.json", index.to_string().as_bytes());
    for d in &wanted {
        add(
            &format!("blobs/sha256/{}", &d[7..]),
            &std::fs::read(blobs.join(&d[7..])).unwrap(),
        );
    }
    tar.into_inner().unwrap()
}

/// Every mutating operation of the document, called once with the
/// narrowest scope that allows it and a request that should succeed: it
/// answers 2xx. (The first test proves every other scope gets a 403.) The
/// steps are listed here, in an order that keeps the fixtures alive until
/// they are deleted; an operation of the document that no step calls
/// fails the test.
#[test]
fn every_mutating_operation_succeeds_with_the_narrowest_scope_that_allows_it() {
    use std::collections::BTreeSet;
    support::require_runc_and_root();
    let p = TestPlatform::start_with(&[
        "--driver",
        "runc",
        "--git-allow-file-urls",
        "--git-poll-secs",
        "0",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let src = support::copy_example("toolbox", dir.path());
    // Two releases of `web` (a rollback needs an earlier one).
    for _ in 0..2 {
        let out = p.hangar(&["deploy", src.to_str().unwrap(), "--app", "web"]);
        assert!(out.status.success());
    }
    let (code, t) = p.call(
        "POST",
        "/api/v1/tokens",
        json!({"name": "ci", "scope": "deploy:web"}),
    );
    assert_eq!(code, 201, "{t}");
    let deployer = t["token"].as_str().unwrap().to_owned();
    let admin = p.token.clone();
    let web = p.api_get("/api/v1/apps/web");
    let digest = web["active_release"]["image_digest"]
        .as_str()
        .unwrap()
        .to_owned();

    let (_, doc) = p.call_as("", "GET", "/openapi.json", Value::Null);
    let mut uncalled: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["post", "put", "patch", "delete"].contains(&method.as_str()) {
                uncalled.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let total = uncalled.len();

    // One step: `method template` filled as `url`, with `token`, a body
    // and extra headers; answers `want`.
    let mut step = |method: &str,
                    template: &str,
                    url: &str,
                    token: &str,
                    body: Vec<u8>,
                    headers: &[(&str, &str)],
                    want: u16|
     -> String {
        uncalled.remove(&(method.to_owned(), template.to_owned()));
        let auth = format!("Bearer {token}");
        let mut all = headers.to_vec();
        if !body.is_empty() && !headers.iter().any(|(k, _)| *k == "content-type") {
            all.push(("content-type", "application/json"));
        }
        let (code, answer) = p.api_request_headers(method, url, &auth, &all, body);
        assert_eq!(code, want, "{method} {url}: {answer}");
        answer
    };
    let j = |v: Value| v.to_string().into_bytes();
    let wait = |id: &str, state: &str| {
        let (code, body) = p.call(
            "GET",
            &format!("/v1/apps/web/machines/{id}/wait?state={state}&timeout=60"),
            Value::Null,
        );
        assert_eq!(code, 200, "waiting for {state}: {body}");
    };

    // Deploy (deploy:web), cancelled at once (deploy:web).
    let packed = hangar::pack::pack(&src, hangar::pack::DEFAULT_MAX_BYTES).unwrap();
    let gz = [("content-type", "application/gzip")];
    let d = step(
        "POST",
        "/api/v1/apps/{app}/deploys",
        "/api/v1/apps/web/deploys",
        &deployer,
        packed.data,
        &gz,
        202,
    );
    let build: Value = serde_json::from_str(&d).unwrap();
    let build = build["build"]["id"].as_str().unwrap().to_owned();
    step(
        "POST",
        "/api/v1/builds/{id}/cancel",
        &format!("/api/v1/builds/{build}/cancel"),
        &deployer,
        Vec::new(),
        &[],
        200,
    );
    // The app's settings (admin).
    step(
        "PUT",
        "/api/v1/apps/{app}/secrets",
        "/api/v1/apps/web/secrets",
        &admin,
        j(json!({"K": "v"})),
        &[],
        200,
    );
    step(
        "DELETE",
        "/api/v1/apps/{app}/secrets/{name}",
        "/api/v1/apps/web/secrets/K",
        &admin,
        Vec::new(),
        &[],
        200,
    );
    step(
        "POST",
        "/api/v1/apps/{app}/scale",
        "/api/v1/apps/web/scale",
        &admin,
        j(json!({"count": 1})),
        &[],
        200,
    );
    step(
        "POST",
        "/api/v1/apps/{app}/shuttle-token/rotate",
        "/api/v1/apps/web/shuttle-token/rotate",
        &admin,
        Vec::new(),
        &[],
        200,
    );
    step(
        "POST",
        "/api/v1/apps/{app}/domains",
        "/api/v1/apps/web/domains",
        &admin,
        j(json!({"host": "www.example.test"})),
        &[],
        201,
    );
    step(
        "PUT",
        "/api/v1/apps/{app}/hsts",
        "/api/v1/apps/web/hsts",
        &admin,
        j(json!({"enabled": true})),
        &[],
        200,
    );
    step(
        "DELETE",
        "/api/v1/apps/{app}/domains/{host}",
        "/api/v1/apps/web/domains/www.example.test",
        &admin,
        Vec::new(),
        &[],
        200,
    );
    // Roll back to v1 (deploy:web).
    step(
        "POST",
        "/api/v1/apps/{app}/rollback",
        "/api/v1/apps/web/rollback",
        &deployer,
        j(json!({})),
        &[],
        202,
    );
    // The org's own (admin).
    step(
        "POST",
        "/api/v1/orgs",
        "/api/v1/orgs",
        &admin,
        j(json!({"name": "second"})),
        &[],
        201,
    );
    let tarball = oci_tar(&p, &digest);
    let raw = [("content-type", "application/x-tar")];
    step(
        "POST",
        "/api/v1/images",
        "/api/v1/images?name=imported:1",
        &admin,
        tarball,
        &raw,
        201,
    );
    let t = step(
        "POST",
        "/api/v1/tokens",
        "/api/v1/tokens",
        &admin,
        j(json!({"name": "x", "scope": "read"})),
        &[],
        201,
    );
    let t: Value = serde_json::from_str(&t).unwrap();
    let tok = t["id"].as_str().unwrap().to_owned();
    step(
        "DELETE",
        "/api/v1/tokens/{id}",
        &format!("/api/v1/tokens/{tok}"),
        &admin,
        Vec::new(),
        &[],
        200,
    );

    // The Machines API (admin).
    step(
        "POST",
        "/v1/apps",
        "/v1/apps",
        &admin,
        j(json!({"name": "fly2"})),
        &[],
        201,
    );
    let m = step(
        "POST",
        "/v1/apps/{app}/machines",
        "/v1/apps/web/machines",
        &admin,
        j(json!({"config": {"image": "imported:1", "init": {"cmd": ["sleep"]}}})),
        &[],
        200,
    );
    let m: Value = serde_json::from_str(&m).unwrap();
    let id = m["id"].as_str().unwrap().to_owned();
    let at = |rest: &str| format!("/v1/apps/web/machines/{id}{rest}");
    const M: &str = "/v1/apps/{app}/machines/{id}";
    wait(&id, "started");
    step(
        "POST",
        M,
        &at(""),
        &admin,
        j(
            json!({"config": {"image": "imported:1", "init": {"cmd": ["sleep"]}, "metadata": {"a": "b"}}}),
        ),
        &[],
        200,
    );
    wait(&id, "started");
    step(
        "POST",
        &format!("{M}/cordon"),
        &at("/cordon"),
        &admin,
        Vec::new(),
        &[],
        200,
    );
    step(
        "POST",
        &format!("{M}/uncordon"),
        &at("/uncordon"),
        &admin,
        Vec::new(),
        &[],
        200,
    );
    step(
        "POST",
        &format!("{M}/exec"),
        &at("/exec"),
        &admin,
        j(json!({"command": ["/app/toolbox", "echo", "hi"]})),
        &[],
        200,
    );
    step(
        "POST",
        &format!("{M}/metadata/{{key}}"),
        &at("/metadata/k"),
        &admin,
        j(json!({"value": "v"})),
        &[],
        204,
    );
    step(
        "DELETE",
        &format!("{M}/metadata/{{key}}"),
        &at("/metadata/k"),
        &admin,
        Vec::new(),
        &[],
        204,
    );
    step(
        "PUT",
        &format!("{M}/metadata"),
        &at("/metadata"),
        &admin,
        j(json!({"metadata": {"x": "y"}})),
        &[],
        204,
    );
    step(
        "PATCH",
        &format!("{M}/metadata"),
        &at("/metadata"),
        &admin,
        j(json!({"metadata": {"x": null}})),
        &[],
        204,
    );
    let lease = step(
        "POST",
        &format!("{M}/lease"),
        &at("/lease?ttl=30"),
        &admin,
        Vec::new(),
        &[],
        201,
    );
    let lease: Value = serde_json::from_str(&lease).unwrap();
    let nonce = lease["data"]["nonce"].as_str().unwrap().to_owned();
    step(
        "DELETE",
        &format!("{M}/lease"),
        &at("/lease"),
        &admin,
        Vec::new(),
        &[("fly-machine-lease-nonce", nonce.as_str())],
        200,
    );
    step(
        "POST",
        &format!("{M}/stop"),
        &at("/stop"),
        &admin,
        j(json!({"timeout": "5s"})),
        &[],
        200,
    );
    wait(&id, "stopped");
    step(
        "POST",
        &format!("{M}/start"),
        &at("/start"),
        &admin,
        Vec::new(),
        &[],
        200,
    );
    wait(&id, "started");
    step(
        "POST",
        &format!("{M}/restart"),
        &at("/restart?timeout=5s"),
        &admin,
        Vec::new(),
        &[],
        200,
    );
    wait(&id, "started");
    step(
        "POST",
        &format!("{M}/suspend"),
        &at("/suspend"),
        &admin,
        Vec::new(),
        &[],
        200,
    );
    wait(&id, "suspended");
    step(
        "POST",
        &format!("{M}/start"),
        &at("/start"),
        &admin,
        Vec::new(),
        &[],
        200,
    );
    wait(&id, "started");
    step(
        "POST",
        &format!("{M}/signal"),
        &at("/signal"),
        &admin,
        j(json!({"signal": "SIGTERM"})),
        &[],
        200,
    );
    step("DELETE", M, &at("?kill=true"), &admin, Vec::new(), &[], 200);
    step(
        "DELETE",
        "/v1/apps/{app}",
        "/v1/apps/fly2",
        &admin,
        Vec::new(),
        &[],
        202,
    );
    // Deploy on push: connect (admin), deploy the head (deploy:web; the
    // commit has no Cargo.toml, so its build fails at once), disconnect.
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("README"), "not an app\n").unwrap();
    for args in [
        &["init", "--quiet", "-b", "main"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "--quiet",
            "-m",
            "x",
        ],
    ] {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .status()
            .expect("git must be installed")
            .success();
        assert!(ok, "git {args:?}");
    }
    let url = format!("file://{}", repo.display());
    let connected = step(
        "POST",
        "/api/v1/apps/{app}/git",
        "/api/v1/apps/web/git",
        &admin,
        j(json!({"repo": url})),
        &[],
        201,
    );
    let secret = serde_json::from_str::<Value>(&connected).unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    step(
        "POST",
        "/api/v1/apps/{app}/git/deploy",
        "/api/v1/apps/web/git/deploy",
        &deployer,
        Vec::new(),
        &[],
        202,
    );
    // A fork's pull request (the webhook is signed, not scoped), then its
    // preview approved, extended and destroyed (admin).
    let sha = support::git(&repo, &["rev-parse", "HEAD"]);
    support::git(&repo, &["update-ref", "refs/pull/1/head", &sha]);
    let pr = j(json!({
        "action": "opened",
        "number": 1,
        "pull_request": {
            "head": {"sha": sha, "ref": "x", "repo": {"id": 2, "full_name": "them/web"}},
            "base": {"sha": sha, "ref": "main", "repo": {"id": 1, "full_name": "us/web"}},
            "user": {"login": "them"},
            "author_association": "NONE",
        },
    }));
    let sig = format!("sha256={}", hangar_git::hook::sign(secret.as_bytes(), &pr));
    let (code, answer) = p.api_request_headers(
        "POST",
        "/hooks/github/web",
        "none",
        &[
            ("x-github-event", "pull_request"),
            ("x-github-delivery", "contract-1"),
            ("x-hub-signature-256", &sig),
        ],
        pr,
    );
    assert_eq!(code, 202, "{answer}");
    step(
        "POST",
        "/api/v1/apps/{app}/previews/{number}/approve",
        "/api/v1/apps/web/previews/1/approve",
        &admin,
        j(json!({"sha": sha})),
        &[],
        200,
    );
    step(
        "POST",
        "/api/v1/apps/{app}/previews/{number}/extend",
        "/api/v1/apps/web/previews/1/extend",
        &admin,
        j(json!({"seconds": 3600})),
        &[],
        200,
    );
    step(
        "DELETE",
        "/api/v1/apps/{app}/previews/{number}",
        "/api/v1/apps/web/previews/1",
        &admin,
        Vec::new(),
        &[],
        200,
    );
    step(
        "DELETE",
        "/api/v1/apps/{app}/git",
        "/api/v1/apps/web/git",
        &admin,
        Vec::new(),
        &[],
        200,
    );
    // Last: the app itself.
    step(
        "DELETE",
        "/api/v1/apps/{app}",
        "/api/v1/apps/web",
        &admin,
        Vec::new(),
        &[],
        200,
    );

    // A renewal needs an ACME CA: its 2xx is walked in https.rs, against
    // a real one (Pebble).
    uncalled.remove(&(
        "POST".to_owned(),
        "/api/v1/apps/{app}/domains/{host}/renew".to_owned(),
    ));
    assert!(
        uncalled.is_empty(),
        "mutating operations no step calls: {uncalled:?}"
    );
    assert!(total >= 30, "only {total} mutating operations documented");
}
