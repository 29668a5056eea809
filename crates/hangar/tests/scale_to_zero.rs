//! Scale to zero: idle machines are stopped or suspended after their idle
//! timeout, and the next request wakes one (single-flight) and is served.

mod support;

use serde_json::{Value, json};
use support::{TestPlatform, example, wait_for};

/// A platform with the toolbox image and an empty app `app`.
fn platform(app: &str) -> TestPlatform {
    let p = TestPlatform::start();
    p.deploy(&example("toolbox"));
    let (code, body) = p.call("POST", "/v1/apps", json!({"app_name": app}));
    assert_eq!(code, 201, "{body}");
    p
}

fn serving_machine(p: &TestPlatform, app: &str, autostop: &str, min_running: u32) -> String {
    let (code, m) = p.call(
        "POST",
        &format!("/v1/apps/{app}/machines"),
        json!({"config": {"image": "toolbox:v1", "restart": {"policy": "no"},
               "services": [{"internal_port": 8080, "autostart": true, "autostop": autostop,
                             "min_machines_running": min_running, "idle_timeout": "1s"}]}}),
    );
    assert_eq!(code, 200, "{m}");
    m["id"].as_str().unwrap().to_owned()
}

fn wait_state(p: &TestPlatform, app: &str, id: &str, state: &str) {
    let (code, body) = p.call(
        "GET",
        &format!("/v1/apps/{app}/machines/{id}/wait?state={state}&timeout=30"),
        Value::Null,
    );
    assert_eq!(code, 200, "waiting for {state}: {body}");
}

/// How many times the machine entered `status`.
fn transitions(p: &TestPlatform, app: &str, id: &str, status: &str) -> usize {
    let (_, events) = p.call(
        "GET",
        &format!("/v1/apps/{app}/machines/{id}/events"),
        Value::Null,
    );
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == status)
        .count()
}

#[test]
fn an_idle_app_stops_and_fifty_requests_wake_it_once() {
    let p = platform("sleepy");
    let id = serving_machine(&p, "sleepy", "stop", 0);
    wait_for(10, "the machine to answer", || {
        (p.get("sleepy", "/").0 == 200).then_some(())
    });
    // No request for its 1 s idle timeout: stopped.
    wait_state(&p, "sleepy", &id, "stopped");
    let starts_before = transitions(&p, "sleepy", &id, "starting");

    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50).map(|_| s.spawn(|| p.get("sleepy", "/"))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        answers.iter().all(|a| *a == (200, "toolbox\n".to_owned())),
        "{answers:?}"
    );
    assert_eq!(
        transitions(&p, "sleepy", &id, "starting"),
        starts_before + 1,
        "exactly one start"
    );
    // The admin port tells the same story in Prometheus' words.
    let metrics = p.metrics();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
    };
    assert!(value("hangar_proxy_requests_total{app=\"sleepy\",code=\"2xx\"}") >= 51);
    assert!(value("hangar_proxy_wakes_total{app=\"sleepy\"}") >= 1);
    assert!(value("hangar_proxy_wake_duration_seconds_count{app=\"sleepy\"}") >= 1);
    assert_eq!(value("hangar_proxy_in_flight{app=\"sleepy\"}"), 0);
}

#[test]
fn a_machine_with_a_request_in_flight_is_not_stopped_past_its_idle_timeout() {
    let p = platform("busy");
    let id = serving_machine(&p, "busy", "stop", 0);
    wait_for(10, "the machine to answer", || {
        (p.get("busy", "/").0 == 200).then_some(())
    });
    // One request held for 5 s, five times the idle timeout: the idle loop
    // (every 500 ms) must see it in flight and leave the machine alone.
    let state_during = std::thread::scope(|s| {
        let held = s.spawn(|| p.try_get("busy", "/hold/5000", std::time::Duration::from_secs(20)));
        std::thread::sleep(std::time::Duration::from_secs(3));
        let (code, m) = p.call("GET", &format!("/v1/apps/busy/machines/{id}"), Value::Null);
        assert_eq!(code, 200, "{m}");
        let answer = held.join().unwrap();
        assert_eq!(
            answer.as_ref().map(|(c, b)| (*c, b.as_str())),
            Ok((200, "toolbox\n")),
            "the held request was cut"
        );
        m["state"].as_str().unwrap_or_default().to_owned()
    });
    assert_eq!(state_during, "started", "stopped with a request in flight");
    assert_eq!(transitions(&p, "busy", &id, "stopping"), 0);
    // Once it is answered and the machine idles, it stops (the positive
    // control: autostop works here).
    wait_state(&p, "busy", &id, "stopped");
}

#[test]
fn an_idle_app_is_suspended_and_resumed_by_a_request() {
    let p = platform("frozen");
    let id = serving_machine(&p, "frozen", "suspend", 0);
    wait_for(10, "the machine to answer", || {
        (p.get("frozen", "/").0 == 200).then_some(())
    });
    wait_state(&p, "frozen", &id, "suspended");
    let pid_before = p.api_get("/api/v1/apps/frozen")["machines"][0]["pid"].clone();
    assert_eq!(p.get("frozen", "/"), (200, "toolbox\n".to_owned()));
    wait_state(&p, "frozen", &id, "started");
    // Resumed, not restarted: the same process.
    assert_eq!(
        p.api_get("/api/v1/apps/frozen")["machines"][0]["pid"],
        pid_before
    );
}

#[test]
fn min_machines_running_keeps_one_up() {
    let p = platform("steady");
    let a = serving_machine(&p, "steady", "stop", 1);
    let b = serving_machine(&p, "steady", "stop", 1);
    wait_for(10, "the app to answer", || {
        (p.get("steady", "/").0 == 200).then_some(())
    });
    let states = wait_for(30, "one machine to stop", || {
        let s: Vec<String> = [&a, &b]
            .iter()
            .map(|id| {
                let (_, m) = p.call(
                    "GET",
                    &format!("/v1/apps/steady/machines/{id}"),
                    Value::Null,
                );
                m["state"].as_str().unwrap().to_owned()
            })
            .collect();
        s.contains(&"stopped".to_owned()).then_some(s)
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let still: usize = [&a, &b]
        .iter()
        .filter(|id| {
            let (_, m) = p.call(
                "GET",
                &format!("/v1/apps/steady/machines/{id}"),
                Value::Null,
            );
            m["state"] == "started"
        })
        .count();
    assert_eq!(still, 1, "one stays up: {states:?}");
    assert_eq!(p.get("steady", "/").0, 200);
}

#[test]
fn past_the_soft_limit_a_stopped_machine_is_started() {
    let p = platform("crowded");
    let config = json!({"image": "toolbox:v1", "restart": {"policy": "no"},
        "services": [{"internal_port": 8080, "autostart": true, "autostop": "off",
                      "concurrency": {"type": "requests", "soft_limit": 1, "hard_limit": 8}}]});
    let create = |skip_launch: bool| {
        let (code, m) = p.call(
            "POST",
            "/v1/apps/crowded/machines",
            json!({"config": config, "skip_launch": skip_launch}),
        );
        assert_eq!(code, 200, "{m}");
        m["id"].as_str().unwrap().to_owned()
    };
    let _running = create(false);
    let spare = create(true);
    wait_for(10, "the app to answer", || {
        (p.get("crowded", "/").0 == 200).then_some(())
    });
    let (_, m) = p.call(
        "GET",
        &format!("/v1/apps/crowded/machines/{spare}"),
        Value::Null,
    );
    assert_eq!(m["state"], "created", "{m}");
    // Four requests held 400 ms each on one machine with soft limit 1.
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| p.get("crowded", "/slow")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| a.0 == 200), "{answers:?}");
    wait_state(&p, "crowded", &spare, "started");
}
