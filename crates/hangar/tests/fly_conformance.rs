//! The Machines API as Fly's own clients use it: each request below is
//! shaped as fly-go (Fly's Go client, what flyctl uses) or Fly's published
//! spec sends it (field names, nulls, query parameters, headers, bodiless
//! POSTs), and each answer is checked against the types fly-go decodes it
//! into (a string where it wants a string: a number there fails its decode).

mod support;

use hangar_api_types::fly;
use serde_json::{Value, json};
use support::{TestPlatform, example};

/// Checks that `v` has each field of `shape` with the JSON type named
/// (`string`, `integer`, `bool`, `object`, `array`, `string|null`).
fn conforms(what: &str, v: &Value, shape: &[(&str, &str)]) {
    for (field, want) in shape {
        let got = &v[*field];
        let ok = want.split('|').any(|t| match t {
            "string" => got.is_string(),
            "integer" => got.is_i64() || got.is_u64(),
            "bool" => got.is_boolean(),
            "object" => got.is_object(),
            "array" => got.is_array(),
            "null" => got.is_null(),
            _ => false,
        });
        assert!(ok, "{what}.{field} should be {want}, is {got}\n{v:#}");
    }
}

/// What fly-go's `Machine` struct reads.
const MACHINE: &[(&str, &str)] = &[
    ("id", "string"),
    ("name", "string"),
    ("state", "string"),
    ("region", "string"),
    ("instance_id", "string"),
    ("version", "string"),
    ("private_ip", "string"),
    ("created_at", "string"),
    ("updated_at", "string"),
    ("config", "object"),
    ("image_ref", "object"),
    ("events", "array"),
    ("checks", "array"),
    ("cordoned", "bool"),
    ("host_status", "string"),
];

/// What fly-go's `MachineEvent` reads (timestamp: Unix milliseconds).
const EVENT: &[(&str, &str)] = &[
    ("type", "string"),
    ("status", "string"),
    ("source", "string"),
    ("timestamp", "integer"),
    ("id", "string"),
];

#[test]
fn fly_go_shaped_requests_get_answers_fly_go_can_read() {
    let p = TestPlatform::start();
    // The org's image `toolbox:v1`, for the machines below.
    p.deploy(&example("toolbox"));
    // fly-go sends FlyV1 when its token is a macaroon, Bearer otherwise.
    let fly = format!("FlyV1 {}", p.token);
    let call = |method: &str, path: &str, body: Option<Value>| -> (u16, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (code, text) = p.api_request(method, path, Some(&fly), bytes);
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        (code, v)
    };

    // Apps: fly-go's create body (`name`, empty network and role), `?wait`.
    let create_app = json!({"name": "flyapp", "org_slug": "personal", "network": "",
                            "app_role_id": ""});
    let (code, app) = call("POST", "/v1/apps?wait=true", Some(create_app.clone()));
    assert!((200..300).contains(&code), "{code} {app}");
    conforms("app", &app, &[("id", "string"), ("name", "string")]);
    let (code, taken) = call("POST", "/v1/apps?wait=true", Some(create_app));
    assert_eq!(code, 422, "{taken}");
    assert_eq!(taken["status"], "name_taken", "{taken}");
    conforms("error", &taken, &[("error", "string")]);
    let (code, apps) = call("GET", "/v1/apps?org_slug=personal&limit=5000", None);
    assert_eq!(code, 200);
    conforms(
        "apps",
        &apps,
        &[
            ("apps", "array"),
            ("total_apps", "integer"),
            ("next_cursor", "null|string"),
        ],
    );
    let (code, got) = call("GET", "/v1/apps/flyapp", None);
    assert_eq!(code, 200);
    conforms(
        "app",
        &got,
        &[
            ("id", "string"),
            ("name", "string"),
            ("status", "string"),
            ("organization", "object"),
        ],
    );

    // Create, as fly-go marshals LaunchMachineInput: `init` always present,
    // `skip_secrets` always sent, durations as Go strings or nanoseconds,
    // a region of Fly's, nulls where Fly's own answers have them, a lease.
    let config = json!({
        "image": "toolbox:v1", "init": {"cmd": ["sleep"]}, "env": null, "metadata": null,
        "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": 128, "gpus": null},
        "restart": {"policy": "no"}, "stop_config": {"timeout": "5s", "signal": "SIGTERM"},
        "checks": {"alive": {"type": "tcp", "port": 8080, "interval": 15_000_000_000u64,
                             "timeout": "2s", "grace_period": null}},
        "services": null,
    });
    let (code, m) = call(
        "POST",
        "/v1/apps/flyapp/machines",
        Some(
            json!({"config": config, "region": "iad", "skip_secrets": false,
                    "lease_ttl": 30}),
        ),
    );
    assert_eq!(code, 200, "{m}");
    conforms("machine", &m, MACHINE);
    // And it reads back into the server's own wire type.
    let typed: fly::Machine = serde_json::from_value(m.clone()).expect("a fly::Machine");
    assert_eq!(typed.region, "iad");
    conforms("machine", &m, &[("nonce", "string")]);
    assert_eq!(
        m["region"], "iad",
        "the requested region is recorded and echoed"
    );
    assert_eq!(m["config"]["checks"]["alive"]["interval"], "15s");
    for e in m["events"].as_array().unwrap() {
        conforms("event", e, EVENT);
    }
    let id = m["id"].as_str().unwrap().to_owned();
    let nonce = m["nonce"].as_str().unwrap().to_owned();
    let at = |rest: &str| format!("/v1/apps/flyapp/machines/{id}{rest}");

    // Wait: fly-go repeats `state`; the spec also allows commas.
    let (code, w) = call(
        "GET",
        &at("/wait?state=started&state=failed&timeout=30"),
        None,
    );
    assert_eq!(code, 200, "{w}");
    conforms(
        "wait",
        &w,
        &[("ok", "bool"), ("state", "string"), ("version", "string")],
    );
    let (code, _) = call(
        "GET",
        &at(&format!(
            "/wait?state=settled&version={}",
            m["instance_id"].as_str().unwrap()
        )),
        None,
    );
    assert_eq!(code, 200);

    // Leases: the create's lease holds; fly-go's bodiless `?ttl=` with the
    // nonce header refreshes it; the envelope is `{status, data: {nonce}}`.
    let (code, _) = call("POST", &at("/lease?ttl=30"), None);
    assert_eq!(code, 409, "another holder is refused");
    let (code, lease) = p.api_request_headers(
        "POST",
        &at("/lease?ttl=30"),
        &fly,
        &[("fly-machine-lease-nonce", &nonce)],
        vec![],
    );
    assert_eq!(code, 200, "{lease}");
    let lease: Value = serde_json::from_str(&lease).unwrap();
    assert_eq!(lease["data"]["nonce"], nonce.as_str());
    conforms(
        "lease.data",
        &lease["data"],
        &[("nonce", "string"), ("expires_at", "integer")],
    );
    // Metadata writes need no nonce, even while leased.
    let (code, body) = call(
        "POST",
        &at("/metadata/role"),
        Some(json!({"value": "worker"})),
    );
    assert_eq!(code, 204, "{body}");
    let (code, v) = call("GET", &at("/metadata/role"), None);
    assert_eq!((code, &v), (200, &json!({"value": "worker"})));
    let (code, _) = call(
        "PATCH",
        &at("/metadata"),
        Some(json!({"metadata": {"role": null, "tier": "a"}})),
    );
    assert_eq!(code, 204);
    let (code, v) = call("GET", &at("/metadata"), None);
    assert_eq!((code, &v), (200, &json!({"tier": "a"})));
    let (code, _) = call("GET", &at("/metadata/role"), None);
    assert_eq!(code, 404);
    let (code, _) = p.api_request_headers(
        "DELETE",
        &at("/lease"),
        &fly,
        &[("fly-machine-lease-nonce", &nonce)],
        vec![],
    );
    assert_eq!(code, 200);
    let (code, lease) = call("POST", &at("/lease?ttl=30"), None);
    assert_eq!(code, 201, "a new lease: {lease}");
    let nonce = lease["data"]["nonce"].as_str().unwrap().to_owned();
    let (code, _) = p.api_request_headers(
        "DELETE",
        &at("/lease"),
        &fly,
        &[("fly-machine-lease-nonce", &nonce)],
        vec![],
    );
    assert_eq!(code, 200);

    // ps and versions.
    let (code, ps) = call("GET", &at("/ps"), None);
    assert_eq!(code, 200, "{ps}");
    let first = &ps[0];
    conforms(
        "ps[0]",
        first,
        &[
            ("pid", "integer"),
            ("command", "string"),
            ("rss", "integer"),
            ("cpu", "integer"),
            ("listen_sockets", "array"),
        ],
    );
    assert!(first["command"].as_str().unwrap().contains("sleep"), "{ps}");
    let (code, versions) = call("GET", &at("/versions"), None);
    assert_eq!(code, 200);
    assert_eq!(versions[0]["version"], m["instance_id"]);

    // Restart as fly-go sends it (query only, no body, force_stop always).
    let (code, body) = call("POST", &at("/restart?force_stop=false&timeout=5s"), None);
    assert_eq!(code, 200, "{body}");
    // Stop as fly-go sends it: the id, and "0s" when no timeout was chosen
    // (the machine's own stop_config then applies, not an instant kill).
    let (code, body) = call(
        "POST",
        &at("/stop"),
        Some(json!({"id": id, "timeout": "0s"})),
    );
    assert_eq!(code, 200, "{body}");
    let (code, _) = call("GET", &at("/wait?state=stopped&timeout=30"), None);
    assert_eq!(code, 200);
    let (code, body) = call("POST", &at("/start"), None);
    assert_eq!(code, 200, "{body}");
    conforms("start", &body, &[("previous_state", "string")]);
    call("GET", &at("/wait?state=started&timeout=30"), None);
    // Kill: fly-go's `{"signal": 9}`; the exit is in the event log.
    let (code, body) = call("POST", &at("/signal"), Some(json!({"signal": 9})));
    assert_eq!(code, 200, "{body}");
    let (code, _) = call("GET", &at("/wait?state=stopped,failed&timeout=30"), None);
    assert_eq!(code, 200);
    let (code, body) = call("POST", &at("/signal"), Some(json!({"signal": "SIGNOPE"})));
    assert_eq!(code, 400, "{body}");

    // A job's exit code outlives it (auto_destroy) in its events.
    let (code, job) = call(
        "POST",
        "/v1/apps/flyapp/machines",
        Some(json!({"config": {
        "image": "toolbox:v1", "init": {"cmd": ["exit", "3"]},
        "restart": {"policy": "no"}, "auto_destroy": true}})),
    );
    assert_eq!(code, 200, "{job}");
    let job_id = job["id"].as_str().unwrap();
    let (code, _) = call(
        "GET",
        &format!("/v1/apps/flyapp/machines/{job_id}/wait?state=destroyed&timeout=30"),
        None,
    );
    assert_eq!(code, 200);
    let (code, events) = call(
        "GET",
        &format!("/v1/apps/flyapp/machines/{job_id}/events"),
        None,
    );
    assert_eq!(code, 200);
    let exit = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "exit")
        .unwrap_or_else(|| panic!("no exit event: {events}"));
    conforms("exit", exit, EVENT);
    assert_eq!(exit["request"]["exit_event"]["exit_code"], 3, "{exit}");
    conforms(
        "exit_event",
        &exit["request"]["exit_event"],
        &[("exited_at", "string"), ("oom_killed", "bool")],
    );
    let ids: Vec<i64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // Destroy a running machine as fly-go does: `?kill=true`.
    call("POST", &at("/start"), None);
    call("GET", &at("/wait?state=started&timeout=30"), None);
    let (code, body) = call("DELETE", &at("?kill=true"), None);
    assert_eq!(code, 200, "{body}");
    let (code, _) = call("GET", &at("/wait?state=destroyed&timeout=30"), None);
    assert_eq!(code, 200);

    // Errors are `{"error": "..."}`, the router's own too.
    let (code, body) = call("PUT", "/v1/apps/flyapp/machines", None);
    assert_eq!(code, 405);
    conforms("error", &body, &[("error", "string")]);
    let (code, body) = call("GET", "/v1/apps/nope/machines", None);
    assert_eq!(code, 404);
    conforms("error", &body, &[("error", "string")]);
    // Deleting the app deprovisions through the same path as `hangar destroy`.
    let (code, _) = call("DELETE", "/v1/apps/flyapp", None);
    assert!((200..300).contains(&code));
    let (code, _) = call("GET", "/v1/apps/flyapp", None);
    assert_eq!(code, 404);
}
