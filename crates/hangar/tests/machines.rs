//! The Fly-compatible Machines API on real runc: lifecycle, wait semantics,
//! cgroup limits that hold (OOM, fork bomb, CPU quota), suspend with the
//! freezer, restart policies, org isolation and clear errors.

mod support;

use serde_json::{Value, json};
use support::{TestPlatform, example, wait_for};

/// A platform with examples/toolbox deployed, so `toolbox:v1` exists.
fn platform() -> TestPlatform {
    let p = TestPlatform::start();
    p.deploy(&example("toolbox"));
    p
}

fn create(p: &TestPlatform, config: Value) -> Value {
    let (code, m) = p.call(
        "POST",
        "/v1/apps/toolbox/machines",
        json!({ "config": config }),
    );
    assert_eq!(code, 200, "{m}");
    m
}

fn wait_state(p: &TestPlatform, id: &str, state: &str) {
    let (code, body) = p.call(
        "GET",
        &format!("/v1/apps/toolbox/machines/{id}/wait?state={state}&timeout=30"),
        Value::Null,
    );
    assert_eq!(code, 200, "waiting for {state}: {body}");
}

/// POST /v1/apps/toolbox/machines/{id}/{verb} with no body.
fn act(p: &TestPlatform, id: &str, verb: &str) -> (u16, Value) {
    p.call(
        "POST",
        &format!("/v1/apps/toolbox/machines/{id}/{verb}"),
        Value::Null,
    )
}

fn machine(p: &TestPlatform, id: &str) -> Value {
    let (code, m) = p.call(
        "GET",
        &format!("/v1/apps/toolbox/machines/{id}"),
        Value::Null,
    );
    assert_eq!(code, 200, "{m}");
    m
}

fn cgroup_file(ctl: &str, id: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{ctl}/hangar/{id}/{file}"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[test]
fn lifecycle_through_the_http_api() {
    let p = platform();
    let m = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["sleep"]},
                              "guest": {"cpus": 2, "memory_mb": 128},
                              "metadata": {"role": "worker"}, "some_future_field": {"x": 1}}),
    );
    let id = m["id"].as_str().unwrap().to_owned();
    assert_eq!(m["state"], "started");
    assert_eq!(m["config"]["guest"]["cpus"], 2);
    assert_eq!(m["region"], "local");
    assert!(m["created_at"].as_str().unwrap().ends_with('Z'));
    wait_state(&p, &id, "started");
    // cpus sets the CPU quota; memory_mb the memory limit.
    assert_eq!(cgroup_file("cpu", &id, "cpu.cfs_quota_us"), "200000");
    assert_eq!(
        cgroup_file("memory", &id, "memory.limit_in_bytes"),
        (128u64 << 20).to_string()
    );

    // List with filters.
    let (_, list) = p.call(
        "GET",
        "/v1/apps/toolbox/machines?metadata.role=worker",
        Value::Null,
    );
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, list) = p.call(
        "GET",
        "/v1/apps/toolbox/machines?metadata.role=web",
        Value::Null,
    );
    assert_eq!(list.as_array().unwrap().len(), 0);
    let (_, list) = p.call(
        "GET",
        "/v1/apps/toolbox/machines?region=elsewhere",
        Value::Null,
    );
    assert_eq!(list.as_array().unwrap().len(), 0);

    // stop → stopped; wait semantics.
    let (code, _) = p.call(
        "POST",
        &format!("/v1/apps/toolbox/machines/{id}/stop"),
        json!({"timeout": "2s"}),
    );
    assert_eq!(code, 200);
    wait_state(&p, &id, "stopped");
    let (code, body) = p.call(
        "GET",
        &format!("/v1/apps/toolbox/machines/{id}/wait?state=started&timeout=1"),
        Value::Null,
    );
    assert_eq!(code, 408, "{body}");
    let (code, _) = p.call(
        "GET",
        &format!("/v1/apps/toolbox/machines/{id}/wait?state=bogus"),
        Value::Null,
    );
    assert_eq!(code, 400);

    // start → started again.
    let (code, body) = act(&p, &id, "start");
    assert_eq!(
        (code, body["previous_state"].as_str()),
        (200, Some("stopped"))
    );
    wait_state(&p, &id, "started");

    // suspend freezes its processes (memory kept); start thaws them.
    let (code, _) = act(&p, &id, "suspend");
    assert_eq!(code, 200);
    wait_state(&p, &id, "suspended");
    assert_eq!(cgroup_file("freezer", &id, "freezer.state"), "FROZEN");
    let (code, body) = act(&p, &id, "start");
    assert_eq!(
        (code, body["previous_state"].as_str()),
        (200, Some("suspended"))
    );
    wait_state(&p, &id, "started");
    assert_eq!(cgroup_file("freezer", &id, "freezer.state"), "THAWED");

    // A started machine is only destroyed with force.
    let (code, body) = p.call(
        "DELETE",
        &format!("/v1/apps/toolbox/machines/{id}"),
        Value::Null,
    );
    assert_eq!(code, 412, "{body}");
    assert!(body["error"].as_str().unwrap().contains("force"), "{body}");
    let (code, _) = p.call(
        "DELETE",
        &format!("/v1/apps/toolbox/machines/{id}?force=true"),
        Value::Null,
    );
    assert_eq!(code, 200);
    wait_state(&p, &id, "destroyed");
    let (_, list) = p.call("GET", "/v1/apps/toolbox/machines", Value::Null);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|m| m["id"] != id.as_str())
    );
    let (_, list) = p.call(
        "GET",
        "/v1/apps/toolbox/machines?include_deleted=true",
        Value::Null,
    );
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str())
    );

    // The event log tells the story, newest first.
    let events = machine(&p, &id)["events"].clone();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"destroyed"));
    assert!(
        kinds.contains(&"suspended") && kinds.contains(&"stopped"),
        "{kinds:?}"
    );
}

#[test]
fn limits_contain_oom_and_fork_bombs() {
    let p = platform();
    let bystander = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["sleep"]}}),
    );
    // Allocates 512 MiB in a 64 MiB machine: the OOM killer ends it, alone.
    let hog = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["alloc", "512"]},
                                "guest": {"memory_mb": 64}, "restart": {"policy": "no"}}),
    );
    let hog_id = hog["id"].as_str().unwrap();
    wait_state(&p, hog_id, "stopped");
    let m = machine(&p, hog_id);
    let exit = &m["events"][0]["request"]["exit_event"];
    assert_eq!(exit["oom_killed"], true, "{m:#}");
    assert_eq!(exit["exit_code"], 137, "{m:#}");
    let b = machine(&p, bystander["id"].as_str().unwrap());
    assert_eq!(b["state"], "started", "the other machine is untouched");

    // A fork bomb hits the pids limit and goes no further.
    let bomb = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["forkbomb"]},
                                 "guest": {"memory_mb": 512}, "restart": {"policy": "no"}}),
    );
    let bomb_id = bomb["id"].as_str().unwrap().to_owned();
    let log = p.data_dir().join(format!("logs/toolbox/{bomb_id}.log"));
    let line = wait_for(60, "the fork bomb to be stopped", || {
        std::fs::read_to_string(&log)
            .ok()
            .and_then(|t| t.lines().find(|l| l.contains("spawned")).map(str::to_owned))
    });
    let spawned: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(spawned < 512, "{line}");
    assert!(
        line.contains("then:"),
        "spawning failed rather than running out: {line}"
    );
    assert_eq!(cgroup_file("pids", &bomb_id, "pids.max"), "512");
    // The platform still answers.
    assert_eq!(machine(&p, &bomb_id)["state"], "started");
    let (code, _) = p.call(
        "DELETE",
        &format!("/v1/apps/toolbox/machines/{bomb_id}?force=true"),
        Value::Null,
    );
    assert_eq!(code, 200);
}

#[test]
fn restart_policies_and_auto_destroy() {
    let p = platform();
    // on-failure with 2 retries: 3 runs in all, then it stays stopped.
    let m = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["exit", "3"]},
                              "restart": {"policy": "on-failure", "max_retries": 2}}),
    );
    let id = m["id"].as_str().unwrap().to_owned();
    let events = wait_for(30, "three exits", || {
        let (_, ev) = p.call(
            "GET",
            &format!("/v1/apps/toolbox/machines/{id}/events"),
            Value::Null,
        );
        let exits = ev
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "exit")
            .count();
        (exits >= 3).then_some(ev)
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (_, after) = p.call(
        "GET",
        &format!("/v1/apps/toolbox/machines/{id}/events"),
        Value::Null,
    );
    assert_eq!(
        after.as_array().unwrap().len(),
        events.as_array().unwrap().len(),
        "no fourth run"
    );
    assert_eq!(machine(&p, &id)["state"], "stopped");

    // policy no + exit 0 + auto_destroy: destroyed once it exits.
    let m = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["exit", "0"]},
                              "restart": {"policy": "no"}, "auto_destroy": true}),
    );
    wait_state(&p, m["id"].as_str().unwrap(), "destroyed");

    // always: restarted even after a clean exit.
    let m = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["exit", "0"]},
                              "restart": {"policy": "always", "max_retries": 1}}),
    );
    let id = m["id"].as_str().unwrap().to_owned();
    wait_for(30, "a restart after a clean exit", || {
        let (_, ev) = p.call(
            "GET",
            &format!("/v1/apps/toolbox/machines/{id}/events"),
            Value::Null,
        );
        (ev.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "exit")
            .count()
            >= 2)
            .then_some(())
    });
}

#[test]
fn machines_survive_a_hangar_restart_exactly_once() {
    let mut p = platform();
    let m = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["sleep"]}}),
    );
    let id = m["id"].as_str().unwrap().to_owned();
    let pid_of = |p: &TestPlatform| {
        let status = p.api_get("/api/v1/apps/toolbox");
        status["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id.as_str())
            .unwrap()["pid"]
            .as_i64()
    };
    let before = pid_of(&p);
    p.restart();
    assert_eq!(machine(&p, &id)["state"], "started");
    assert_eq!(pid_of(&p), before, "re-adopted, not restarted");
    let (_, list) = p.call("GET", "/v1/apps/toolbox/machines", Value::Null);
    let started = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "started")
        .count();
    assert_eq!(
        started, 2,
        "the deploy's machine and ours, none doubled: {list:#}"
    );
}

#[test]
fn orgs_are_isolated_and_errors_are_clear() {
    let p = platform();
    let m = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["sleep"]}}),
    );
    let id = m["id"].as_str().unwrap().to_owned();

    let (code, org) = p.call("POST", "/api/v1/orgs", json!({"name": "other"}));
    assert_eq!(code, 201, "{org}");
    let other = org["token"].as_str().unwrap().to_owned();
    // Not an admin: cannot create orgs.
    let (code, _) = p.call_as(&other, "POST", "/api/v1/orgs", json!({"name": "third"}));
    assert_eq!(code, 403);
    // Another org sees nothing of ours and touches nothing: 404 everywhere.
    for (method, path) in [
        ("GET", "/v1/apps/toolbox".to_owned()),
        ("GET", "/v1/apps/toolbox/machines".to_owned()),
        ("GET", format!("/v1/apps/toolbox/machines/{id}")),
        ("POST", format!("/v1/apps/toolbox/machines/{id}/stop")),
        (
            "DELETE",
            format!("/v1/apps/toolbox/machines/{id}?force=true"),
        ),
        ("GET", "/api/v1/apps/toolbox".to_owned()),
    ] {
        let (code, body) = p.call_as(&other, method, &path, Value::Null);
        assert_eq!(code, 404, "{method} {path}: {body}");
    }
    let (_, apps) = p.call_as(&other, "GET", "/v1/apps", Value::Null);
    assert_eq!(apps["total_apps"], 0);
    // Its own app cannot run our image either.
    let (code, _) = p.call_as(
        &other,
        "POST",
        "/v1/apps",
        json!({"app_name": "theirs", "org_slug": "other"}),
    );
    assert_eq!(code, 201);
    let (code, body) = p.call_as(
        &other,
        "POST",
        "/v1/apps/theirs/machines",
        json!({"config": {"image": "toolbox:v1"}}),
    );
    assert_eq!(code, 422, "{body}");
    assert_eq!(machine(&p, &id)["state"], "started");

    // Bad input names the field.
    let bad = |body: Value| p.call("POST", "/v1/apps/toolbox/machines", body);
    let (code, body) = bad(json!({"config": {"image": "toolbox:v1", "guest": {"cpus": "two"}}}));
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("config.guest.cpus"),
        "{body}"
    );
    let (code, body) = bad(json!({"config": {"image": "toolbox:v1", "guest": {"memory_mb": 1}}}));
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("config.guest.memory_mb"),
        "{body}"
    );
    let (code, body) = bad(json!({"config": {"image": "nope:v9"}}));
    assert_eq!(code, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no image"),
        "{body}"
    );
    let (code, body) =
        bad(json!({"config": {"image": "toolbox:v1", "restart": {"policy": "sometimes"}}}));
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("config.restart.policy"),
        "{body}"
    );
    // No GPU on this node: a clear 422.
    let (code, body) = bad(json!({"config": {"image": "toolbox:v1", "guest": {"gpus": 1}}}));
    if std::path::Path::new("/dev/nvidia0").exists() {
        assert_eq!(code, 200, "{body}");
    } else {
        assert_eq!(code, 422, "{body}");
        assert!(body["error"].as_str().unwrap().contains("GPU"), "{body}");
    }
    // Hostile durations are 4xx naming the field, and hangar stays up.
    for config in [
        json!({"image": "toolbox:v1", "stop_config": {"timeout": 1e20}}),
        json!({"image": "toolbox:v1", "stop_config": {"timeout": "87600h"}}),
        json!({"image": "toolbox:v1",
               "services": [{"internal_port": 8080, "idle_timeout": "inf"}]}),
    ] {
        let (code, body) = bad(json!({ "config": config }));
        assert!(code == 400 || code == 422, "{code} {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("stop_config.timeout") || error.contains("idle_timeout"),
            "{body}"
        );
    }
    let (code, body) = p.call(
        "POST",
        &format!("/v1/apps/toolbox/machines/{id}/stop"),
        json!({"timeout": 1e20}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("timeout"),
        "{body}"
    );
    assert_eq!(
        machine(&p, &id)["state"],
        "started",
        "still up, still running"
    );
    let (code, _) = p.call("GET", "/v1/apps/toolbox/machines/mch_nope", Value::Null);
    assert_eq!(code, 404);
}

#[test]
fn update_cordon_lease_metadata_and_exec() {
    let p = platform();
    let m = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["sleep"]},
                              "guest": {"memory_mb": 64}, "metadata": {"team": "a"}}),
    );
    let id = m["id"].as_str().unwrap().to_owned();
    let path = |rest: &str| format!("/v1/apps/toolbox/machines/{id}{rest}");

    // exec: argv or a string; exit code, stdout and stderr come back.
    let (code, out) = p.call(
        "POST",
        &path("/exec"),
        json!({"command": ["/app/toolbox", "echo", "hello", "world"]}),
    );
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        (out["exit_code"].as_i64(), out["stdout"].as_str()),
        (Some(0), Some("hello world\n"))
    );
    assert!(out["stderr"].as_str().unwrap().contains("echo done"));
    let (_, out) = p.call(
        "POST",
        &path("/exec"),
        json!({"cmd": "/app/toolbox exit 7"}),
    );
    assert_eq!(out["exit_code"], 7);
    let (code, _) = p.call("POST", &path("/exec"), json!({}));
    assert_eq!(code, 400);

    // metadata: set, read, filter, delete; the instance does not change.
    let instance = m["instance_id"].clone();
    let (code, _) = p.call("POST", &path("/metadata/env"), json!({"value": "prod"}));
    assert_eq!(code, 204);
    let (_, meta) = p.call("GET", &path("/metadata"), Value::Null);
    assert_eq!(meta, json!({"team": "a", "env": "prod"}));
    let (_, list) = p.call(
        "GET",
        "/v1/apps/toolbox/machines?metadata.env=prod",
        Value::Null,
    );
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (code, _) = p.call("DELETE", &path("/metadata/env"), Value::Null);
    assert_eq!(code, 204);
    let (code, _) = p.call("DELETE", &path("/metadata/env"), Value::Null);
    assert_eq!(code, 404);
    assert_eq!(machine(&p, &id)["instance_id"], instance);

    // update: a new instance, restarted on the new config.
    let (code, updated) = p.call(
        "POST",
        &path(""),
        json!({"config": {"image": "toolbox:v1",
        "init": {"cmd": ["sleep"]}, "guest": {"memory_mb": 96}}}),
    );
    assert_eq!(code, 200, "{updated}");
    assert_ne!(updated["instance_id"], instance);
    assert_eq!(updated["state"], "started");
    let new_instance = updated["instance_id"].as_str().unwrap();
    let (code, _) = p.call(
        "GET",
        &path(&format!(
            "/wait?state=started&instance_id={new_instance}&timeout=10"
        )),
        Value::Null,
    );
    assert_eq!(code, 200);
    assert_eq!(
        cgroup_file("memory", &id, "memory.limit_in_bytes"),
        (96u64 << 20).to_string()
    );

    // lease: only the holder may change the machine.
    let (code, lease) = p.call(
        "POST",
        &path("/lease"),
        json!({"ttl": 60, "description": "deploying"}),
    );
    assert_eq!(code, 201, "a new lease: {lease}");
    let nonce = lease["data"]["nonce"].as_str().unwrap().to_owned();
    let (code, body) = p.call("POST", &path("/stop"), Value::Null);
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("fly-machine-lease-nonce")
    );
    let (code, _) = p.call("POST", &path("/lease"), json!({"ttl": 60}));
    assert_eq!(code, 409, "a second holder is refused");
    let (code, got) = p.call("GET", &path("/lease"), Value::Null);
    assert_eq!(
        (code, got["data"]["description"].as_str()),
        (200, Some("deploying"))
    );
    let with_nonce = |method: &str, rest: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", p.api, path(rest)))
            .header("authorization", format!("Bearer {}", p.token))
            .header("fly-machine-lease-nonce", &nonce)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            client.request(req).await.unwrap().status().as_u16()
        })
    };
    assert_eq!(with_nonce("POST", "/stop"), 200);
    wait_state(&p, &id, "stopped");
    assert_eq!(with_nonce("DELETE", "/lease"), 200);
    let (code, _) = p.call("GET", &path("/lease"), Value::Null);
    assert_eq!(code, 404);
    let (code, _) = p.call("POST", &path("/start"), Value::Null);
    assert_eq!(code, 200, "free again once released");

    // cordon takes the app's deploy machine out of the proxy's rotation.
    assert_eq!(p.get("toolbox", "/"), (200, "toolbox\n".to_owned()));
    let deployed = p.api_get("/api/v1/apps/toolbox")["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["release_id"].is_string() && m["state"] == "started")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, _) = p.call(
        "POST",
        &format!("/v1/apps/toolbox/machines/{deployed}/cordon"),
        Value::Null,
    );
    assert_eq!(code, 200);
    assert_eq!(p.get("toolbox", "/").0, 503);
    let (code, _) = p.call(
        "POST",
        &format!("/v1/apps/toolbox/machines/{deployed}/uncordon"),
        Value::Null,
    );
    assert_eq!(code, 200);
    assert_eq!(p.get("toolbox", "/"), (200, "toolbox\n".to_owned()));
}

#[test]
fn imported_images_run_as_machines() {
    let p = platform();
    // Export the toolbox image as an OCI layout directory, as other tools
    // write one, then import it under a new name with the CLI.
    let digest = p.api_get("/api/v1/apps/toolbox")["active_release"]["image_digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let blobs = p.data_dir().join("images/blobs/sha256");
    let layout = p.dir.path().join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(blobs.join(&digest[7..])).unwrap()).unwrap();
    let mut wanted = vec![
        digest.clone(),
        manifest["config"]["digest"].as_str().unwrap().to_owned(),
    ];
    for l in manifest["layers"].as_array().unwrap() {
        wanted.push(l["digest"].as_str().unwrap().to_owned());
    }
    for d in &wanted {
        std::fs::copy(
            blobs.join(&d[7..]),
            layout.join("blobs/sha256").join(&d[7..]),
        )
        .unwrap();
    }
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 1}]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();

    let out = p.hangar(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "tools/imported:1.0",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Imported tools/imported:1.0"));

    let m = create(
        &p,
        json!({"image": "tools/imported:1.0", "init": {"cmd": ["sleep"]}}),
    );
    let id = m["id"].as_str().unwrap();
    assert_eq!(m["image_ref"]["repository"], "tools/imported");
    let (_, out) = p.call(
        "POST",
        &format!("/v1/apps/toolbox/machines/{id}/exec"),
        json!({"command": ["/app/toolbox", "echo", "imported"]}),
    );
    assert_eq!(out["stdout"], "imported\n");

    // Naming a digest is not having it: the same layout without one of its
    // layers is refused, though the store holds that layer.
    let partial = p.dir.path().join("partial");
    std::fs::create_dir_all(partial.join("blobs/sha256")).unwrap();
    for name in ["oci-layout", "index.json"] {
        std::fs::copy(layout.join(name), partial.join(name)).unwrap();
    }
    let left_out = wanted.last().unwrap();
    for d in wanted.iter().filter(|d| *d != left_out) {
        std::fs::copy(
            blobs.join(&d[7..]),
            partial.join("blobs/sha256").join(&d[7..]),
        )
        .unwrap();
    }
    let out = p.hangar(&[
        "image",
        "import",
        partial.to_str().unwrap(),
        "--name",
        "tools/claimed:1.0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("not in the archive"), "{err}");
    assert!(
        blobs.join(&left_out[7..]).is_file(),
        "the stored layer is kept"
    );
    let leftovers: Vec<_> = std::fs::read_dir(p.data_dir().join("images/tmp"))
        .unwrap()
        .chain(std::fs::read_dir(p.data_dir().join("uploads")).unwrap())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A file that is no image, and a bad name: clear refusals.
    let junk = p.dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar at all").unwrap();
    let out = p.hangar(&["image", "import", junk.to_str().unwrap(), "--name", "junk"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("422") || err.contains("400"), "{err}");
    let out = p.hangar(&[
        "image",
        "import",
        layout.to_str().unwrap(),
        "--name",
        "Bad Name",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an image name"));
}

#[test]
fn exec_is_killed_inside_the_machine_at_its_timeout() {
    let p = platform();
    let m = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["sleep"]}}),
    );
    let id = m["id"].as_str().unwrap().to_owned();
    let procs = || cgroup_procs(&id);
    let before = procs();
    assert_eq!(before.len(), 1, "only the machine's init: {before:?}");
    // Prints ~1 MB/s forever: the answer is a timeout, hangar holds at
    // most the capped output, and the command does not outlive it.
    let (code, out) = p.call(
        "POST",
        &format!("/v1/apps/toolbox/machines/{id}/exec"),
        json!({"command": ["/app/toolbox", "spam"], "timeout": 2}),
    );
    assert_eq!(code, 408, "{out}");
    assert!(
        out["error"].as_str().unwrap_or_default().contains("killed"),
        "{out}"
    );
    wait_for(5, "the exec'd command to be gone from the machine", || {
        (procs() == before).then_some(())
    });
    // The machine itself is untouched.
    assert_eq!(machine(&p, &id)["state"], "started");
}

/// The pids in a machine's cgroup (v1 pids controller, else v2).
fn cgroup_procs(id: &str) -> Vec<String> {
    let v1 = format!("/sys/fs/cgroup/pids/hangar/{id}/cgroup.procs");
    let v2 = format!("/sys/fs/cgroup/hangar/{id}/cgroup.procs");
    let text = std::fs::read_to_string(&v1)
        .or_else(|_| std::fs::read_to_string(&v2))
        .unwrap_or_else(|e| panic!("reading {v1} or {v2}: {e}"));
    text.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn requests_do_not_restart_a_machine_whose_restart_policy_gave_up() {
    let p = platform();
    // The deploy's machine leaves the route: only ours can serve.
    let status = p.api_get("/api/v1/apps/toolbox");
    let deployed = status["machines"][0]["id"].as_str().unwrap().to_owned();
    let (code, body) = act(&p, &deployed, "cordon");
    assert_eq!(code, 200, "{body}");
    let m = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["exit", "3"]},
               "restart": {"policy": "on-failure", "max_retries": 1},
               "services": [{"internal_port": 8080, "protocol": "tcp", "autostart": true,
                             "ports": [{"port": 80}]}]}),
    );
    let id = m["id"].as_str().unwrap().to_owned();
    let events = |p: &TestPlatform, kind: &str| {
        let (_, ev) = p.call(
            "GET",
            &format!("/v1/apps/toolbox/machines/{id}/events"),
            Value::Null,
        );
        ev.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == kind)
            .count()
    };
    let starts = |p: &TestPlatform| events(p, "start");
    // Exit 3, one restart, exit 3: the policy is spent.
    wait_for(30, "the restart policy to give up", || {
        let status = p.api_get("/api/v1/apps/toolbox");
        let row = status["machines"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == id.as_str())?
            .clone();
        (row["state"] == "stopped" && row["restarts"] == 1 && events(&p, "exit") >= 2).then_some(())
    });
    let before = starts(&p);
    for _ in 0..3 {
        let (code, body) = p.get("toolbox", "/");
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("exited with code 3") && body.contains("restart policy gave up"),
            "the answer names the crash: {body}"
        );
    }
    assert_eq!(starts(&p), before, "requests started the crashed machine");
    // Its owner can still start it.
    let (code, body) = act(&p, &id, "start");
    assert_eq!(code, 200, "{body}");
    wait_for(10, "the owner's start", || {
        (starts(&p) > before).then_some(())
    });
}
