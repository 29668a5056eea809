//! Org isolation, route by route: org B, holding its own valid token,
//! tries every route of Hangar's API, the Machines API and the Shuttle
//! endpoints against org A's app, machines, builds and releases. Each is a
//! 404 that reads exactly like the 404 for something that does not exist
//! (so nothing says A's objects are there), no answer carries A's data,
//! and afterwards A's app is as it was and still serving.
//!
//! The exceptions are by design and asserted as such: app names are one
//! namespace for all orgs (each is a DNS label under the platform's
//! domain), so claiming A's name (a deploy, setting secrets, creating the
//! app) is a 409 "taken by another organisation"; and the Shuttle
//! endpoints answer a token that is not the project's own with 401.

mod support;

use serde_json::{Value, json};
use support::{TestPlatform, example};

/// A's app (deployed by the admin, whose default org is A).
const APP: &str = "hello";
/// An app name nobody has: the "does not exist" answer to compare with.
const GHOST_APP: &str = "ghost-app";
/// B's own app, created empty through the Machines API.
const B_APP: &str = "b-own-app";
/// A's secret, by name and value: neither may reach B.
const A_SECRET: &str = "A_ONLY_SECRET_NAME";
const A_SECRET_VALUE: &str = "a-only-secret-value-7f3c";
/// A metadata value on A's machine.
const A_META_KEY: &str = "a-note";
const A_META_VALUE: &str = "a-only-metadata-value-91d2";

/// What org A has, as the admin sees it.
struct Victim {
    app_id: String,
    machine_ids: Vec<String>,
    release_ids: Vec<String>,
    build_ids: Vec<String>,
    /// Everything of A's that must never appear in an answer to B.
    private: Vec<String>,
}

/// A's observable state; equal before and after B's attempts.
fn snapshot(p: &TestPlatform) -> Value {
    let status = p.api_get(&format!("/api/v1/apps/{APP}"));
    let machines: Vec<Value> = status["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            json!({
                "id": m["id"], "state": m["state"], "instance_id": m["instance_id"],
                "pid": m["pid"], "restarts": m["restarts"], "cordoned": m["cordoned"],
                "lease": m["lease"], "config": m["config"], "updated_at": m["updated_at"],
                "release_id": m["release_id"],
            })
        })
        .collect();
    let fly = p.api_get(&format!("/v1/apps/{APP}/machines?include_deleted=true"));
    let fly: Vec<Value> = fly
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!({"id": m["id"], "state": m["state"], "instance_id": m["instance_id"]}))
        .collect();
    json!({
        "machines": machines,
        "fly_machines": fly,
        "releases": p.api_get(&format!("/api/v1/apps/{APP}/releases")),
        "builds": status["builds"],
        "scale": status["scale"],
        "status": status["status"],
        "secrets": p.api_get(&format!("/api/v1/apps/{APP}/secrets")),
        "resources": p.api_get(&format!("/api/v1/apps/{APP}/resources")),
    })
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x[key].as_str().map(str::to_owned))
        .collect()
}

fn victim(p: &TestPlatform) -> Victim {
    let status = p.api_get(&format!("/api/v1/apps/{APP}"));
    let fly_app = p.api_get(&format!("/v1/apps/{APP}"));
    let app_id = fly_app["id"].as_str().unwrap().to_owned();
    let machine_ids = strings(&status["machines"], "id");
    let release_ids = strings(&status["releases"], "id");
    let build_ids = strings(&status["builds"], "id");
    assert!(
        !machine_ids.is_empty() && !release_ids.is_empty() && !build_ids.is_empty(),
        "A's deploy left a machine, a release and a build: {status:#}"
    );
    let mut private = vec![
        app_id.clone(),
        A_SECRET.to_owned(),
        A_SECRET_VALUE.to_owned(),
        A_META_VALUE.to_owned(),
    ];
    private.extend(machine_ids.iter().cloned());
    private.extend(release_ids.iter().cloned());
    private.extend(build_ids.iter().cloned());
    for m in status["machines"].as_array().unwrap() {
        for key in ["instance_id", "image_digest"] {
            private.extend(m[key].as_str().map(str::to_owned));
        }
        // The machine's address as the Machines API shows it.
        private.extend(m["address"].as_str().map(str::to_owned));
    }
    for b in status["builds"].as_array().unwrap() {
        for key in ["source_digest", "image_digest"] {
            private.extend(b[key].as_str().map(str::to_owned));
        }
    }
    private.retain(|s| !s.is_empty());
    private.sort();
    private.dedup();
    Victim {
        app_id,
        machine_ids,
        release_ids,
        build_ids,
        private,
    }
}

/// An id of the same shape as `id` that names nothing.
fn ghost_id(id: &str) -> String {
    let (prefix, rest) = id.split_at(id.rfind('_').map_or(0, |i| i + 1));
    format!("{prefix}{}", rest.chars().rev().collect::<String>())
}

/// One request: `{app}`, `{mid}`, `{bid}`, `{rid}` and `{secret}` in the
/// path are filled in from A's objects, or from names of nothing.
struct Probe {
    method: &'static str,
    path: String,
    body: Value,
}

fn probe(method: &'static str, path: &str, body: Value) -> Probe {
    Probe {
        method,
        path: path.to_owned(),
        body,
    }
}

/// What the placeholders stand for.
struct Names {
    app: String,
    mid: String,
    bid: String,
    rid: String,
    secret: String,
}

fn fill(s: &str, n: &Names) -> String {
    s.replace("{app}", &n.app)
        .replace("{mid}", &n.mid)
        .replace("{bid}", &n.bid)
        .replace("{rid}", &n.rid)
        .replace("{secret}", &n.secret)
}

/// Panics if `body` carries any of A's private strings that the request
/// did not itself send (an error echoing the caller's own input is no leak).
fn assert_no_leak(what: &str, sent: &str, body: &str, private: &[String]) {
    for s in private {
        if sent.contains(s.as_str()) {
            continue;
        }
        assert!(
            !body.contains(s.as_str()),
            "{what}: the answer to org B carries A's {s:?}: {body}"
        );
    }
}

/// Every route that names an app, a machine, a build or a release, with a
/// body each accepts from an owner (so a missing check would act).
fn routes_by_app() -> Vec<Probe> {
    let app = "/api/v1/apps/{app}";
    let fly = "/v1/apps/{app}";
    let m = "/v1/apps/{app}/machines/{mid}";
    let none = Value::Null;
    vec![
        // Hangar's API.
        probe("GET", app, none.clone()),
        probe("GET", &format!("{app}/logs"), none.clone()),
        probe("GET", &format!("{app}/logs?follow=true"), none.clone()),
        probe("GET", &format!("{app}/secrets"), none.clone()),
        probe("DELETE", &format!("{app}/secrets/{{secret}}"), none.clone()),
        probe("GET", &format!("{app}/resources"), none.clone()),
        probe("GET", &format!("{app}/releases"), none.clone()),
        probe("POST", &format!("{app}/rollback"), json!({})),
        probe("POST", &format!("{app}/rollback"), json!({"version": 1})),
        probe("POST", &format!("{app}/scale"), json!({"count": 2})),
        probe("GET", "/api/v1/builds/{bid}", none.clone()),
        probe("GET", "/api/v1/builds/{bid}/log", none.clone()),
        probe("GET", "/api/v1/builds/{bid}/log?follow=true", none.clone()),
        probe("POST", "/api/v1/builds/{bid}/cancel", none.clone()),
        // A release id where a build id goes finds nothing either.
        probe("GET", "/api/v1/builds/{rid}", none.clone()),
        // The Machines API.
        probe("GET", fly, none.clone()),
        probe("GET", &format!("{fly}/machines"), none.clone()),
        probe(
            "GET",
            &format!("{fly}/machines?include_deleted=true"),
            none.clone(),
        ),
        probe(
            "POST",
            &format!("{fly}/machines"),
            json!({"config": {"image": "hello:v1"}}),
        ),
        probe("GET", m, none.clone()),
        probe("POST", m, json!({"config": {"image": "hello:v1"}})),
        probe("POST", &format!("{m}/start"), none.clone()),
        probe("POST", &format!("{m}/stop"), json!({})),
        probe("POST", &format!("{m}/suspend"), none.clone()),
        probe("POST", &format!("{m}/restart"), none.clone()),
        probe("POST", &format!("{m}/restart?signal=SIGKILL"), none.clone()),
        probe(
            "POST",
            &format!("{m}/exec"),
            json!({"command": ["cat", "/proc/self/environ"]}),
        ),
        probe(
            "GET",
            &format!("{m}/wait?state=stopped&timeout=1"),
            none.clone(),
        ),
        probe("GET", &format!("{m}/events"), none.clone()),
        probe("GET", &format!("{m}/lease"), none.clone()),
        probe("POST", &format!("{m}/lease"), json!({"ttl": 60})),
        probe("DELETE", &format!("{m}/lease"), none.clone()),
        probe("GET", &format!("{m}/metadata"), none.clone()),
        probe(
            "POST",
            &format!("{m}/metadata/b-note"),
            json!({"value": "b"}),
        ),
        probe(
            "DELETE",
            &format!("{m}/metadata/{A_META_KEY}"),
            none.clone(),
        ),
        probe("POST", &format!("{m}/cordon"), none.clone()),
        probe("POST", &format!("{m}/uncordon"), none.clone()),
        probe("DELETE", m, none.clone()),
        probe("DELETE", &format!("{m}?force=true"), none.clone()),
        // Destroying last: were it allowed, everything above still ran.
        probe("DELETE", fly, none.clone()),
        probe("DELETE", app, none.clone()),
    ]
}

/// The machine routes again, under B's own app with A's machine id.
fn machine_routes_under_own_app() -> Vec<Probe> {
    routes_by_app()
        .into_iter()
        .filter(|p| p.path.contains("{mid}"))
        .map(|p| Probe {
            path: p.path.replace("{app}", B_APP),
            ..p
        })
        .collect()
}

/// B's request: (status, body text).
fn send(p: &TestPlatform, token: &str, probe: &Probe, names: &Names) -> (u16, String, String) {
    let path = fill(&probe.path, names);
    let body = if probe.body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&probe.body).unwrap()
    };
    let (status, text) = p.api_request(probe.method, &path, Some(token), body);
    (status, text, format!("{path} {}", probe.body))
}

#[test]
fn another_org_gets_404_everywhere_and_changes_nothing() {
    let p = TestPlatform::start();
    p.deploy(&example("hello"));
    let (code, body) = p.get(APP, "/");
    assert_eq!(code, 200, "{body}");

    // A's secret and a metadata value on A's machine, so there is
    // something to leak and something to delete.
    let (code, body) = p.call(
        "PUT",
        &format!("/api/v1/apps/{APP}/secrets"),
        json!({ A_SECRET: A_SECRET_VALUE }),
    );
    assert_eq!(code, 200, "{body}");
    let a = victim(&p);
    let (code, body) = p.call(
        "POST",
        &format!(
            "/v1/apps/{APP}/machines/{}/metadata/{A_META_KEY}",
            a.machine_ids[0]
        ),
        json!({"value": A_META_VALUE}),
    );
    assert_eq!(code, 204, "{body}");
    let before = snapshot(&p);

    // Org B, with a valid token of its own and an app of its own.
    let b = p.create_org("org-b");
    let (code, body) = p.call_as(&b, "GET", "/api/v1/apps", Value::Null);
    assert_eq!(code, 200, "B's token works: {body}");
    assert_eq!(body["apps"], json!([]), "B sees none of A's apps: {body}");
    let (code, body) = p.call_as(&b, "POST", "/v1/apps", json!({"app_name": B_APP}));
    assert_eq!(code, 201, "{body}");
    let b_app_id = body["id"].as_str().unwrap().to_owned();

    let real = Names {
        app: APP.to_owned(),
        mid: a.machine_ids[0].clone(),
        bid: a.build_ids[0].clone(),
        rid: a.release_ids[0].clone(),
        secret: A_SECRET.to_owned(),
    };
    let ghost = Names {
        app: GHOST_APP.to_owned(),
        mid: ghost_id(&real.mid),
        bid: ghost_id(&real.bid),
        rid: ghost_id(&real.rid),
        secret: "NO_SUCH_SECRET_NAME".to_owned(),
    };
    // Undoes `fill` with the ghost names, so a ghost answer can be
    // compared with the real one word for word.
    let unghost = |s: &str| {
        s.replace(&ghost.mid, &real.mid)
            .replace(&ghost.bid, &real.bid)
            .replace(&ghost.rid, &real.rid)
            .replace(&ghost.secret, &real.secret)
            .replace(GHOST_APP, APP)
    };

    let mut probes = routes_by_app();
    probes.extend(machine_routes_under_own_app());
    let mut tried = 0;
    for probe in &probes {
        let (code, body, sent) = send(&p, &b, probe, &real);
        let what = format!("{} {sent}", probe.method);
        assert_eq!(code, 404, "{what}: org B must get a 404: {body}");
        let parsed: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what}: a JSON error body, not {body:?}: {e}"));
        assert!(parsed["error"].is_string(), "{what}: {body}");
        assert_no_leak(&what, &sent, &body, &a.private);
        // The same request for names of nothing: the same answer.
        let (ghost_code, ghost_body, _) = send(&p, &b, probe, &ghost);
        assert_eq!(
            (ghost_code, unghost(&ghost_body)),
            (code, body.clone()),
            "{what}: A's objects must answer exactly as missing ones do"
        );
        tried += 1;
    }

    // Hangar's listings show B only its own.
    let (_, apps) = p.call_as(&b, "GET", "/api/v1/apps", Value::Null);
    assert_no_leak("GET /api/v1/apps", "", &apps.to_string(), &a.private);
    let names: Vec<String> = strings(&apps["apps"], "name");
    assert_eq!(names, vec![B_APP.to_owned()], "{apps}");
    let (_, apps) = p.call_as(&b, "GET", "/v1/apps", Value::Null);
    assert_eq!(apps["total_apps"], 1, "{apps}");
    assert_no_leak("GET /v1/apps", "", &apps.to_string(), &a.private);
    let admin_org = p.api_get(&format!("/v1/apps/{APP}"))["organization"]["slug"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/apps?org_slug={admin_org}");
    let (code, apps) = p.call_as(&b, "GET", &path, Value::Null);
    assert_eq!(
        (code, &apps["total_apps"]),
        (200, &json!(0)),
        "{path}: {apps}"
    );

    // B's own app cannot run A's image, by name or by digest.
    let digest = before["releases"]["releases"][0]["image_digest"]
        .as_str()
        .unwrap()
        .to_owned();
    for image in [format!("{APP}:v1"), digest.clone()] {
        let path = format!("/v1/apps/{B_APP}/machines");
        let (code, body) = p.call_as(&b, "POST", &path, json!({"config": {"image": image}}));
        assert_eq!(code, 422, "B runs A's image {image}: {body}");
        assert_no_leak(&path, &image, &body.to_string(), &a.private);
        tried += 1;
    }

    // Names are one namespace: claiming A's is a 409, before any body is
    // read, and touches nothing of A's.
    let taken = |code: u16, body: &str, what: &str| {
        assert_eq!(code, 409, "{what}: {body}");
        assert!(
            body.contains("taken by another organisation"),
            "{what}: {body}"
        );
        assert_no_leak(what, "", body, &a.private);
    };
    // Refused before the body is read, so any body will do.
    let upload = b"\x1f\x8b not read: refused first".to_vec();
    let (code, body) = p.api_request(
        "POST",
        &format!("/api/v1/apps/{APP}/deploys"),
        Some(&b),
        upload,
    );
    taken(code, &body, "POST /api/v1/apps/hello/deploys");
    let (code, body) = p.api_request(
        "PUT",
        &format!("/api/v1/apps/{APP}/secrets"),
        Some(&b),
        serde_json::to_vec(&json!({ A_SECRET: "overwritten-by-b" })).unwrap(),
    );
    taken(code, &body, "PUT /api/v1/apps/hello/secrets");
    // The Machines API answers a taken name as Fly does: 422 name_taken.
    let (code, body) = p.call_as(&b, "POST", "/v1/apps", json!({"app_name": APP}));
    assert_eq!(code, 422, "POST /v1/apps {APP}: {body}");
    assert_eq!(body["status"], "name_taken", "{body}");
    assert_no_leak("POST /v1/apps", "", &body.to_string(), &a.private);
    tried += 3;

    // The Shuttle endpoints take the app's own token only: B's app's
    // valid token (the one its machines get) opens B's project, not A's.
    let key = p.data_dir().join("secrets.key");
    assert!(key.is_file(), "the platform's key is at {key:?}");
    let vault = hangar_resources::Vault::open(&key).unwrap();
    let b_token = vault.token(&format!("{b_app_id}/shuttle-api"));
    let secrets = |project: &str| format!("/shuttle/projects/{project}/resources/secrets");
    let (code, body) = p.api_request("GET", &secrets(&b_app_id), Some(&b_token), Vec::new());
    assert_eq!(code, 200, "B's app token is valid for B's project: {body}");
    let ghost_project = ghost_id(&a.app_id);
    for (method, path, payload) in [
        ("GET", secrets(&a.app_id), Value::Null),
        (
            "POST",
            format!("/shuttle/projects/{}/resources", a.app_id),
            json!({"type": "secrets"}),
        ),
        (
            "POST",
            format!("/shuttle/projects/{}/resources", a.app_id),
            json!({"type": "database::shared::postgres"}),
        ),
    ] {
        let bytes = if payload.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&payload).unwrap()
        };
        let (code, body) = p.api_request(method, &path, Some(&b_token), bytes.clone());
        let what = format!("{method} {path} with B's app token");
        assert_eq!(code, 401, "{what}: {body}");
        assert_no_leak(&what, &path, &body, &a.private);
        let ghost_path = path.replace(&a.app_id, &ghost_project);
        let (ghost_code, ghost_body) = p.api_request(method, &ghost_path, Some(&b_token), bytes);
        assert_eq!((ghost_code, ghost_body), (code, body), "{what}");
        tried += 1;
    }

    // A is as it was, and still serving.
    let after = snapshot(&p);
    assert_eq!(after, before, "A's state changed under B's attempts");
    let (code, body) = p.get(APP, "/");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Hello from Hangar!"), "{body}");
    eprintln!("org B was refused on {tried} requests");
}
