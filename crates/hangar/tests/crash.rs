//! kill -9 at the interesting moments (ARCHITECTURE "Crash safety"): under
//! load, in the middle of a stop whose grace is long, and with machines that
//! die while hangar is down. Each checks the recovery the docs promise, on
//! real runc.

mod support;

use std::time::{Duration, Instant};

use hangar_core::status::MachineState;
use serde_json::{Value, json};
use support::{TestPlatform, example, free_port, wait_for};

/// A platform whose proxy keeps its port across restarts, so a load (or a
/// client) pointed at it before a crash finds it again after.
fn platform_on_a_fixed_port() -> TestPlatform {
    support::require_runc_and_root();
    let proxy = format!("127.0.0.1:{}", free_port());
    TestPlatform::start_with(&["--driver", "runc", "--proxy-listen", &proxy])
}

/// `(id, pid)` of every started machine of `app`, sorted.
fn started(p: &TestPlatform, app: &str) -> Vec<(String, i64)> {
    let status = p.api_get(&format!("/api/v1/apps/{app}"));
    let mut out: Vec<(String, i64)> = status["machines"]
        .as_array()
        .expect("machines in the app's status")
        .iter()
        .filter(|m| m["state"] == "started")
        .map(|m| {
            (
                m["id"].as_str().expect("a machine id").to_owned(),
                m["pid"].as_i64().expect("a started machine's pid"),
            )
        })
        .collect();
    out.sort();
    out
}

/// Everything a crash must not lose, as the API shows it: apps, each app's
/// releases (id, version, status), secret names, machine rows.
fn inventory(p: &TestPlatform, apps: &[&str]) -> Value {
    let mut all = serde_json::Map::new();
    let list = p.api_get("/api/v1/apps");
    let apps_now: Vec<Value> = list["apps"]
        .as_array()
        .expect("an app list")
        .iter()
        .map(|a| json!({"name": a["name"], "active": a["active_release"]["id"], "builds": a["builds"]}))
        .collect();
    all.insert("apps".into(), Value::Array(apps_now));
    for app in apps {
        let releases: Vec<Value> = p.api_get(&format!("/api/v1/apps/{app}/releases"))["releases"]
            .as_array()
            .expect("a release list")
            .iter()
            .map(|r| json!({"id": r["id"], "version": r["version"], "status": r["status"]}))
            .collect();
        let secrets = p.api_get(&format!("/api/v1/apps/{app}/secrets"));
        let (_, machines) = p.call("GET", &format!("/v1/apps/{app}/machines"), Value::Null);
        let mut rows: Vec<Value> = machines
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|m| json!({"id": m["id"], "state": m["state"], "instance_id": m["instance_id"]}))
            .collect();
        rows.sort_by_key(|m| m["id"].as_str().unwrap_or_default().to_owned());
        all.insert(
            (*app).to_owned(),
            json!({"releases": releases, "secrets": secrets, "machines": rows}),
        );
    }
    Value::Object(all)
}

#[test]
fn kill9_under_load_loses_nothing_starts_nothing_twice_and_serves_within_2s() {
    let mut p = platform_on_a_fixed_port();
    p.deploy(&example("hello"));
    p.deploy(&example("toolbox"));
    let out = p.hangar(&[
        "secrets",
        "set",
        "hello",
        "CRASH_TEST_SECRET=kept-across-kill9",
    ]);
    assert!(out.status.success(), "setting a secret");
    // A Machines API machine with a service, routed like a deploy's.
    let (code, m) = p.call(
        "POST",
        "/v1/apps/toolbox/machines",
        json!({"config": {"image": "toolbox:v1",
                           "services": [{"internal_port": 8080, "protocol": "tcp",
                                         "ports": [{"port": 80}]}]}}),
    );
    assert_eq!(code, 200, "{m}");
    wait_for(30, "toolbox's machine to serve", || {
        (p.get("toolbox", "/").0 == 200).then_some(())
    });
    let apps = ["hello", "toolbox"];
    let before = inventory(&p, &apps);
    let machines_before = (started(&p, "hello"), started(&p, "toolbox"));

    let load = p.load("hello", "/", 4);
    std::thread::sleep(Duration::from_secs(1));
    p.kill9();
    let restart_began = Instant::now();
    p.restart();
    let ready_after = restart_began.elapsed();
    // The first answer of each app after the restart began.
    let mut answered = std::collections::HashMap::new();
    while answered.len() < apps.len() && restart_began.elapsed() < Duration::from_secs(10) {
        for app in apps {
            if !answered.contains_key(app)
                && p.try_get(app, "/", Duration::from_millis(500))
                    .is_ok_and(|(code, _)| code == 200)
            {
                answered.insert(app, restart_began.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    eprintln!(
        "crash under load: ready after {ready_after:?}, first answers {answered:?}; {report}"
    );
    for app in apps {
        let at = answered
            .get(app)
            .unwrap_or_else(|| panic!("{app} never answered within 10 s of the restart"));
        assert!(
            *at <= Duration::from_secs(2),
            "{app} answered {at:?} after the restart began (goal ≤ 2 s)"
        );
    }
    // Requests sent once hangar was back were all answered: the failures
    // are the ones sent while nothing listened on the proxy's port.
    let back = report.elapsed.as_secs_f64() - 2.0;
    assert!(report.ok > 0, "{report}");
    let late: Vec<_> = report
        .error_samples
        .iter()
        .filter(|(at, _)| *at > back)
        .collect();
    assert!(
        late.is_empty(),
        "requests failed after the restart: {late:?}"
    );
    assert!(
        report.statuses.iter().all(|(at, _, _)| *at <= back),
        "non-2xx answers after the restart: {:?}",
        report.statuses
    );

    // Nothing lost, nothing started twice: same rows, same processes.
    assert_eq!(inventory(&p, &apps), before, "state after kill -9");
    assert_eq!(
        (started(&p, "hello"), started(&p, "toolbox")),
        machines_before,
        "the same machines with the same pids"
    );
    let (code, env) = p.get("hello", "/");
    assert_eq!((code, env.as_str()), (200, "Hello from Hangar!\n"));
    let secrets = p.api_get("/api/v1/apps/hello/secrets").to_string();
    assert!(secrets.contains("CRASH_TEST_SECRET"), "{secrets}");
}

/// The Fly machine `id` of toolbox.
fn machine(p: &TestPlatform, id: &str) -> Value {
    let (code, m) = p.call(
        "GET",
        &format!("/v1/apps/toolbox/machines/{id}"),
        Value::Null,
    );
    assert_eq!(code, 200, "{m}");
    m
}

fn create(p: &TestPlatform, config: Value) -> String {
    let (code, m) = p.call(
        "POST",
        "/v1/apps/toolbox/machines",
        json!({ "config": config }),
    );
    assert_eq!(code, 200, "{m}");
    m["id"].as_str().expect("a machine id").to_owned()
}

fn pid(p: &TestPlatform, app: &str, id: &str) -> Option<i64> {
    started(p, app)
        .into_iter()
        .find(|(m, _)| m == id)
        .map(|(_, pid)| pid)
}

fn kill(pid: i64) {
    // SAFETY: kill(2) on a pid this test read from the API.
    let r = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {pid}");
}

#[test]
fn kill9_mid_stop_and_machines_dying_while_down_are_recovered() {
    let mut p = platform_on_a_fixed_port();
    p.deploy(&example("hello"));
    p.deploy(&example("toolbox"));
    // `sleep` as a container's init ignores SIGTERM: its stop takes the
    // whole grace (20 s) before the SIGKILL.
    let slow = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["sleep"]},
               "stop_config": {"timeout": "20s"}, "restart": {"policy": "no"}}),
    );
    let dies_while_down = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["sleep"]},
               "restart": {"policy": "on-failure", "max_retries": 3}}),
    );
    let dies_after = create(
        &p,
        json!({"image": "toolbox:v1", "init": {"cmd": ["sleep"]},
               "restart": {"policy": "always", "max_retries": 3}}),
    );
    // A machine that hangar dies suspending (the row already says
    // `suspending`, the freeze not yet done), alone behind its app's host.
    let (code, body) = p.call("POST", "/v1/apps", json!({"app_name": "sleeper"}));
    assert_eq!(code, 201, "{body}");
    let (code, m) = p.call(
        "POST",
        "/v1/apps/sleeper/machines",
        json!({"config": {"image": "toolbox:v1", "env": {"TOOLBOX_REPLY": "awake"},
               "guest": {"memory_mb": 64},
               "services": [{"internal_port": 8080, "autostop": "suspend",
                             "autostart": true, "idle_timeout": "1h"}]}}),
    );
    assert_eq!(code, 200, "{m}");
    let sleeper = m["id"].as_str().expect("a machine id").to_owned();
    wait_for(20, "sleeper to answer", || {
        p.try_get("sleeper", "/", Duration::from_secs(2))
            .ok()
            .filter(|(code, body)| *code == 200 && body.contains("awake"))
    });
    let slow_pid = pid(&p, "toolbox", &slow).expect("the slow machine runs");
    let down_pid = pid(&p, "toolbox", &dies_while_down).expect("a machine runs");
    let after_pid = pid(&p, "toolbox", &dies_after).expect("a machine runs");
    let (hello_machine, hello_pid) = started(&p, "hello")
        .into_iter()
        .next()
        .expect("hello runs a machine");

    // A stop that hangar is killed in the middle of.
    let api = p.api.clone();
    let token = p.token.clone();
    let url = format!("{api}/v1/apps/toolbox/machines/{slow}/stop");
    let stopper = std::thread::spawn(move || {
        let _ = std::process::Command::new("curl")
            .args(["-s", "-m", "60", "-X", "POST", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(&url)
            .output();
    });
    wait_for(10, "the slow machine to be stopping", || {
        (machine(&p, &slow)["state"] == "stopping").then_some(())
    });
    p.kill9();
    let _ = stopper.join();
    // Two machines die while nobody watches.
    kill(down_pid);
    kill(hello_pid);
    // And what a crash between a store write and a delete leaves: a
    // container no machine owns (made here from a copy of a machine's
    // bundle, in a cgroup of its own) and the directories of a machine
    // that is gone.
    let data = p.data_dir();
    let orphan = "mch_0rphan0000000000";
    let bundle = data.join("machines").join(orphan);
    std::fs::create_dir_all(&bundle).unwrap();
    let mut config: Value = serde_json::from_slice(
        &std::fs::read(data.join("machines").join(&dies_after).join("config.json")).unwrap(),
    )
    .unwrap();
    config["linux"]["cgroupsPath"] = json!(format!("hangar/{orphan}"));
    config["process"]["args"] = json!(["/app/toolbox", "sleep"]);
    std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
    // The container's init keeps runc's stdio: nothing is piped, or
    // waiting for the pipe's end would never return.
    let errors = bundle.join("runc.err");
    let made = std::process::Command::new("runc")
        .arg("--root")
        .arg(data.join("runc"))
        .args(["create", "--bundle", bundle.to_str().unwrap(), orphan])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&errors).unwrap())
        .status()
        .expect("running runc");
    assert!(
        made.success(),
        "making the orphan: {}",
        std::fs::read_to_string(&errors).unwrap_or_default()
    );
    let listed = || {
        let out = std::process::Command::new("runc")
            .arg("--root")
            .arg(data.join("runc"))
            .args(["list", "-q"])
            .output()
            .expect("runc list");
        String::from_utf8_lossy(&out.stdout).contains(orphan)
    };
    assert!(listed());
    // And what a crash between deleting an app's rows and its files
    // leaves: the log of a build the store no longer has, and the work
    // dir of an app that is gone (its owner file names no app).
    let stale_log = data.join("build-logs").join("bld_0rphan0000000000.log");
    std::fs::write(&stale_log, "==> a deleted app's build\n").unwrap();
    let stale_work = data.join("builds").join("deleted-app");
    std::fs::create_dir_all(stale_work.join("src")).unwrap();
    std::fs::write(stale_work.join(".hangar-app-id"), "app_0rphan0000000000").unwrap();
    let live_work = data.join("builds").join("hello");
    assert!(live_work.exists(), "hello's work dir");
    // The suspend hangar died in: its row was written, the freeze not done.
    p.set_machine_state(&sleeper, MachineState::Suspending);
    assert_eq!(frozen(&sleeper), Some(false));

    let restart_began = Instant::now();
    p.restart();
    let ready_after = restart_began.elapsed();
    eprintln!("ready {ready_after:?} after the restart began, with a 20 s stop pending");
    assert!(
        ready_after < Duration::from_secs(10),
        "hangar up waited for the interrupted stop: ready after {ready_after:?}"
    );
    assert!(!listed(), "the orphan container is still there");
    assert!(!bundle.exists(), "the orphan's directory is still there");
    assert!(!stale_log.exists(), "a deleted build's log is still there");
    assert!(
        !stale_work.exists(),
        "a deleted app's work dir is still there"
    );
    assert!(live_work.exists(), "a live app's work dir was collected");

    // The interrupted suspend is finished: the row says suspended only
    // once the processes are frozen, and a request wakes it.
    let (code, m) = p.call(
        "GET",
        &format!("/v1/apps/sleeper/machines/{sleeper}"),
        Value::Null,
    );
    assert_eq!((code, m["state"].as_str()), (200, Some("suspended")), "{m}");
    assert_eq!(frozen(&sleeper), Some(true), "suspended but not frozen");
    let (code, body) = p.get("sleeper", "/");
    assert_eq!((code, body.contains("awake")), (200, true), "{body}");
    assert_eq!(frozen(&sleeper), Some(false), "woken but still frozen");

    // The interrupted stop is finished, in the direction it was going.
    wait_for(45, "the interrupted stop to finish", || {
        (machine(&p, &slow)["state"] == "stopped").then_some(())
    });
    assert!(
        driver_gone(slow_pid),
        "the stopped machine's process {slow_pid} is still alive"
    );

    // Died while down, on-failure: recorded and restarted by the new hangar.
    let restarted = wait_for(20, "the machine that died while down to restart", || {
        pid(&p, "toolbox", &dies_while_down).filter(|new| *new != down_pid)
    });
    assert_ne!(restarted, down_pid);
    let (_, events) = p.call(
        "GET",
        &format!("/v1/apps/toolbox/machines/{dies_while_down}/events"),
        Value::Null,
    );
    assert!(
        events
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["type"] == "exit")),
        "the exit is recorded: {events:#}"
    );

    // The deploy's machine died while down: the active release runs again.
    wait_for(30, "hello to serve again", || {
        p.try_get("hello", "/", Duration::from_secs(2))
            .ok()
            .filter(|(code, _)| *code == 200)
    });
    let now = started(&p, "hello");
    assert_eq!(now.len(), 1, "exactly one machine for hello: {now:?}");
    assert!(
        now[0] != (hello_machine.clone(), hello_pid),
        "a new process serves hello"
    );

    // Re-adopted, and still watched: its exit after the restart is seen and
    // its policy applied by the new hangar, which is not its parent.
    assert_eq!(
        pid(&p, "toolbox", &dies_after),
        Some(after_pid),
        "re-adopted"
    );
    kill(after_pid);
    wait_for(20, "the re-adopted machine to be restarted", || {
        pid(&p, "toolbox", &dies_after).filter(|new| *new != after_pid)
    });
}

/// True once `pid` is gone or a zombie.
/// Whether a machine's processes are frozen (cgroup v1 or v2 freezer).
fn frozen(id: &str) -> Option<bool> {
    let v1 = format!("/sys/fs/cgroup/freezer/hangar/{id}/freezer.state");
    if let Ok(s) = std::fs::read_to_string(v1) {
        return Some(s.trim() == "FROZEN");
    }
    let v2 = format!("/sys/fs/cgroup/hangar/{id}/cgroup.freeze");
    std::fs::read_to_string(v2).ok().map(|s| s.trim() == "1")
}

fn driver_gone(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.contains(") Z") || stat.contains(") X"),
    }
}

/// A hangar.toml for hello: two machines, rolled one at a time, gated by
/// an HTTP check on `check` (hello's `/slow/{ms}` makes a slow one).
fn hello_toml(check: &str, interval: &str, timeout: &str) -> String {
    format!(
        "[deploy]\nstrategy = \"rolling\"\nmax_unavailable = 1\nwait_timeout = \"2m\"\ndrain_timeout = \"5s\"\n\n\
         [[services]]\ninternal_port = 8080\nprotocol = \"tcp\"\n  [[services.http_checks]]\n  path = \"{check}\"\n  \
         interval = \"{interval}\"\n  timeout = \"{timeout}\"\n  grace_period = \"1s\"\n\n[scale]\ncount = 2\n"
    )
}

#[test]
fn kill9_mid_rollout_rolls_the_release_out_again_once() {
    let mut p = platform_on_a_fixed_port();
    let tmp = tempfile::tempdir().unwrap();
    let dir = support::copy_example("hello", tmp.path());
    std::fs::write(
        dir.join("hangar.toml"),
        hello_toml("/healthz", "1s", "500ms"),
    )
    .unwrap();
    p.deploy(&dir);
    let v1 = started(&p, "hello");
    assert_eq!(v1.len(), 2, "{v1:?}");
    // v2's machines pass their check only after 3 s each: the rollout
    // takes a while, and hangar is killed in the middle of it.
    std::fs::write(
        dir.join("hangar.toml"),
        hello_toml("/slow/3000", "6s", "5s"),
    )
    .unwrap();
    let out = p.hangar(&["deploy", dir.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success());
    let release = |p: &TestPlatform, version: i64| -> Value {
        p.api_get("/api/v1/apps/hello/releases")["releases"]
            .as_array()
            .expect("a release list")
            .iter()
            .find(|r| r["version"] == version)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let v2 = wait_for(120, "v2 to be deploying with a machine of its own", || {
        let r = release(&p, 2);
        let id = r["id"].as_str()?.to_owned();
        let status = p.api_get("/api/v1/apps/hello");
        let mine = status["machines"]
            .as_array()?
            .iter()
            .any(|m| m["release_id"] == id.as_str());
        (r["status"] == "deploying" && mine).then_some(id)
    });
    p.kill9();
    p.restart();
    // Rolled out again: live, on exactly two machines of v2, uncordoned;
    // nothing of v1 runs, and no machine of v2 is left over or doubled.
    wait_for(120, "v2 to be live after the restart", || {
        (release(&p, 2)["status"] == "active").then_some(())
    });
    let status = p.api_get("/api/v1/apps/hello");
    let machines = status["machines"].as_array().unwrap();
    let started: Vec<&Value> = machines
        .iter()
        .filter(|m| m["state"] == "started")
        .collect();
    assert_eq!(started.len(), 2, "{status:#}");
    for m in &started {
        assert_eq!(m["release_id"], v2.as_str(), "{m:#}");
        assert_eq!(m["cordoned"], false, "{m:#}");
    }
    let of_v2_not_destroyed = machines
        .iter()
        .filter(|m| m["release_id"] == v2.as_str() && m["state"] != "destroyed")
        .count();
    assert_eq!(of_v2_not_destroyed, 2, "{status:#}");
    for (id, _) in &v1 {
        let row = machines.iter().find(|m| m["id"] == id.as_str());
        assert!(
            row.is_none_or(|m| m["state"] != "started"),
            "v1's {id} still runs: {status:#}"
        );
    }
    assert_eq!(release(&p, 1)["status"], "superseded");
    assert_eq!(p.get("hello", "/").0, 200);
}
