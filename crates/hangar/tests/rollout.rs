//! Zero-downtime rollouts: with `hangar.toml` asking for two machines
//! gated by an HTTP check, redeploys and a rollback drop no request of a
//! steady load; a release whose checks fail, or whose machines crash, is
//! failed with the reason while the previous one keeps serving; `hangar
//! scale` balances over the new machines; a machine that stops answering
//! its checks leaves the rotation and comes back once it passes; an invalid
//! `hangar.toml` is refused before anything is uploaded.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hangar_core::app_config::AppConfig;
use serde_json::Value;
use support::{TestPlatform, copy_example, wait_for};

const APP: &str = "hello";
const GREETING: &str = "Hello from Hangar!\n";
/// What the release v11 of the first test says instead.
const V11_GREETING: &str = "Hello from v11!\n";

/// Held by each test that builds hello: they share its cargo target dir
/// (`target/hangar-apps/hello`) and two of them edit its source, so two
/// concurrent builds could hand each other's binary over (cargo uplifts
/// `release/hello` from whichever unit it built last).
fn one_build_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A `hangar.toml`: rolling, one machine at a time, `count` machines,
/// gated by an HTTP check of `check_path` every second (500 ms timeout).
fn hangar_toml(count: u32, check_path: &str, wait_timeout: &str) -> String {
    let text = format!(
        r#"[deploy]
strategy = "rolling"        # rolling | bluegreen | canary | immediate
max_unavailable = 1
wait_timeout = "{wait_timeout}"
drain_timeout = "10s"

[[services]]
internal_port = 8080
protocol = "tcp"
  [[services.http_checks]]
  path = "{check_path}"
  interval = "1s"
  timeout = "500ms"
  grace_period = "1s"

[scale]
count = {count}
"#
    );
    if let Err(e) = AppConfig::parse(&text) {
        panic!("the test's own hangar.toml is invalid: {e}\n{text}");
    }
    text
}

/// The healthy configuration most tests deploy.
fn good_toml(count: u32) -> String {
    hangar_toml(count, "/healthz", "30s")
}

/// A copy of examples/hello with `toml` as its `hangar.toml`.
fn hello_with(tmp: &Path, toml: &str) -> std::path::PathBuf {
    let dir = copy_example(APP, tmp);
    write_toml(&dir, toml);
    dir
}

fn write_toml(dir: &Path, toml: &str) {
    std::fs::write(dir.join("hangar.toml"), toml).unwrap();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `hangar deploy DIR`, timed; the output whatever the outcome.
fn deploy_timed(p: &TestPlatform, dir: &Path) -> (Output, Duration) {
    let started = Instant::now();
    let out = p.hangar(&["deploy", dir.to_str().unwrap()]);
    (out, started.elapsed())
}

/// Now, in unix seconds.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The app's machines in state `started`.
fn started_machines(p: &TestPlatform) -> Vec<Value> {
    let status = p.api_get(&format!("/api/v1/apps/{APP}"));
    status["machines"]
        .as_array()
        .unwrap_or_else(|| panic!("no machines array in the app status: {status:#}"))
        .iter()
        .filter(|m| m["state"] == "started")
        .cloned()
        .collect()
}

/// Waits until exactly `n` machines are started and all pass their checks.
fn wait_started_passing(p: &TestPlatform, n: usize, secs: u64) -> Vec<Value> {
    let mut last = Vec::new();
    let found = wait_for_or_none(secs, || {
        last = started_machines(p);
        (last.len() == n && last.iter().all(|m| m["health"] == "passing")).then(|| last.clone())
    });
    found.unwrap_or_else(|| {
        panic!(
            "after {secs} s, want {n} started machines passing their checks, have: {:#}",
            Value::Array(last.clone())
        )
    })
}

/// The health of machine `id` as the app status reports it.
fn health_of(p: &TestPlatform, id: &str) -> String {
    let status = p.api_get(&format!("/api/v1/apps/{APP}"));
    status["machines"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == id))
        .map(|m| m["health"].as_str().unwrap_or("(none)").to_owned())
        .unwrap_or_else(|| format!("(machine {id} missing from {status:#})"))
}

/// Like [`wait_for`], but None instead of a panic, so the caller can say
/// what it last saw.
fn wait_for_or_none<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The app's releases, newest first, from the releases API.
fn releases(p: &TestPlatform) -> Vec<Value> {
    let body = p.api_get(&format!("/api/v1/apps/{APP}/releases"));
    let list = body["releases"]
        .as_array()
        .unwrap_or_else(|| panic!("no releases array: {body:#}"))
        .clone();
    let versions: Vec<i64> = list.iter().filter_map(|r| r["version"].as_i64()).collect();
    assert_eq!(
        versions.len(),
        list.len(),
        "every release has a version: {body:#}"
    );
    assert!(
        versions.windows(2).all(|w| w[0] > w[1]),
        "releases are listed newest first: {versions:?}"
    );
    list
}

fn release(list: &[Value], version: i64) -> &Value {
    list.iter()
        .find(|r| r["version"] == version)
        .unwrap_or_else(|| panic!("no release v{version} in {:#}", Value::Array(list.to_vec())))
}

/// The version in `release vN failed, the previous release keeps serving:`.
fn failed_version(stderr: &str) -> i64 {
    let marker = "failed, the previous release keeps serving:";
    let line = stderr
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no `release vN {marker}` in:\n{stderr}"));
    let before = &line[..line.find(marker).unwrap()];
    before
        .trim_end()
        .rsplit("release v")
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `release vN` before `{marker}` in: {line}"))
}

/// The `release vN failed, …: REASON` text after the colon.
fn failure_reason(stderr: &str) -> String {
    let marker = "the previous release keeps serving:";
    let at = stderr.find(marker).expect("the failure line") + marker.len();
    stderr[at..].trim().to_owned()
}

/// The app's builds as its status lists them (the last few).
fn builds(p: &TestPlatform) -> Vec<Value> {
    let status = p.api_get(&format!("/api/v1/apps/{APP}"));
    status["builds"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no builds in the app status: {status:#}"))
}

/// The newest build of the app.
fn newest_build(p: &TestPlatform) -> Value {
    builds(p)
        .into_iter()
        .max_by_key(|b| b["created_at"].as_i64())
        .expect("the app has a build")
}

/// The machine logs of `app` (every machine, stopped ones too) that
/// contain `needle`.
fn logs_containing(p: &TestPlatform, needle: &str) -> Vec<String> {
    let dir = p.data_dir().join("logs").join(APP);
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        if text.contains(needle) {
            found.push(text);
        }
    }
    found
}

#[test]
fn ten_redeploys_rollback_and_a_failing_check_drop_no_request() {
    let _serial = one_build_at_a_time();
    let p = TestPlatform::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = hello_with(tmp.path(), &good_toml(2));
    let mut deploy_times = Vec::new();

    let (out, took) = deploy_timed(&p, &dir);
    assert!(out.status.success(), "the first deploy failed");
    assert!(
        text(&out.stdout).contains("==> v1 of hello is live at http://hello.localhost:"),
        "{}",
        text(&out.stdout)
    );
    // The first deploy may compile hello's dependencies: not timed.
    eprintln!("rollout: v1 took {:.1} s", took.as_secs_f64());
    wait_started_passing(&p, 2, 10);
    assert_eq!(p.get(APP, "/"), (200, GREETING.to_owned()));

    let load = p.load(APP, "/", 4);

    // A request in flight across the first rollout: the machine serving it
    // must be told to stop only once it has answered (hello logs both).
    let (slow, slow_took) = std::thread::scope(|scope| {
        let slow = scope.spawn(|| {
            let started = Instant::now();
            let answer = p.try_get(APP, "/slow/8000", Duration::from_secs(30));
            (answer, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        let (out, took) = deploy_timed(&p, &dir);
        assert!(out.status.success(), "redeploy 1 failed");
        deploy_times.push(("redeploy with a request in flight", took));
        slow.join().expect("the slow request's thread")
    });
    assert_eq!(
        slow,
        Ok((200, "slow 8000\n".to_owned())),
        "the request in flight through the rollout"
    );
    eprintln!("rollout: an 8 s request spanned v2's rollout and took {slow_took:?}");
    let logs = logs_containing(&p, "slow request of 8000 ms done");
    assert_eq!(logs.len(), 1, "one machine served it: {logs:?}");
    let log = &logs[0];
    let (done, term) = (
        log.find("slow request of 8000 ms done").unwrap(),
        log.find("SIGTERM received"),
    );
    let term = term.unwrap_or_else(|| panic!("the v1 machine that served it was stopped: {log}"));
    assert!(
        done < term,
        "the machine was told to stop with the request still in flight:\n{log}"
    );

    // Ten rollouts of the same dir, each replacing both machines: eight of
    // the same source, then one with a new greeting, so that v11's image
    // differs from the one the rollback below goes back to.
    for n in 3..=11 {
        if n == 11 {
            let main = dir.join("src/main.rs");
            let src = std::fs::read_to_string(&main).unwrap();
            assert!(src.contains("Hello from Hangar!"));
            std::fs::write(&main, src.replace("Hello from Hangar!", "Hello from v11!")).unwrap();
        }
        let (out, took) = deploy_timed(&p, &dir);
        assert!(out.status.success(), "redeploy {} failed", n - 1);
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains(&format!("==> v{n} of hello is live at ")),
            "{stdout}"
        );
        eprintln!("rollout: v{n} took {:.1} s", took.as_secs_f64());
        deploy_times.push(("redeploy", took));
    }
    // Live means routed: only v11's machines answer.
    assert_eq!(p.get(APP, "/"), (200, V11_GREETING.to_owned()));
    let list = releases(&p);
    let active = release(&list, 11);
    assert_eq!(active["status"], "active", "{active:#}");
    for v in 1..=10 {
        assert_eq!(release(&list, v)["status"], "superseded", "v{v}");
    }
    // Back to two machines, both of the active release.
    let machines = wait_started_passing(&p, 2, 30);
    if let Some(id) = active["id"].as_str() {
        for m in &machines {
            assert_eq!(m["release_id"], id, "{m:#}");
        }
    }

    // A release whose machines never pass their check fails within its
    // wait_timeout, naming the check; v11 keeps serving.
    write_toml(&dir, &hangar_toml(2, "/missing", "5s"));
    let (out, took) = deploy_timed(&p, &dir);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a release failing its checks was deployed"
    );
    assert_eq!(failed_version(&stderr), 12, "{stderr}");
    assert!(!failure_reason(&stderr).is_empty(), "no reason: {stderr}");
    deploy_times.push(("failing check", took));
    let list = releases(&p);
    let failed = release(&list, 12);
    assert_eq!(failed["status"], "failed", "{failed:#}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("/missing") || error.to_lowercase().contains("check"),
        "the error names the failing check: {failed:#}"
    );
    assert_eq!(release(&list, 11)["status"], "active");
    assert_eq!(p.get(APP, "/"), (200, V11_GREETING.to_owned()));
    wait_started_passing(&p, 2, 30);

    // Rollback to v9: a new release v13 with v9's image, no build.
    write_toml(&dir, &good_toml(2));
    let builds_before = builds(&p);
    let started = Instant::now();
    let out = p.hangar(&["rollback", APP, "9"]);
    let took = started.elapsed();
    assert!(out.status.success(), "hangar rollback failed");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("==> v13 (rollback to v9) of hello is live"),
        "{stdout}"
    );
    deploy_times.push(("rollback", took));
    assert_eq!(builds(&p), builds_before, "a rollback does not build");
    let list = releases(&p);
    let rollback = release(&list, 13);
    assert_eq!(rollback["status"], "active", "{rollback:#}");
    assert_eq!(rollback["description"], "rollback to v9", "{rollback:#}");
    let v9 = release(&list, 9);
    assert!(v9["image_digest"].is_string(), "{v9:#}");
    assert_eq!(rollback["image_digest"], v9["image_digest"]);
    assert_ne!(rollback["image_digest"], release(&list, 11)["image_digest"]);
    assert_eq!(release(&list, 11)["status"], "superseded");
    assert_eq!(release(&list, 12)["status"], "failed");
    assert_eq!(release(&list, 2)["description"], "deploy");
    // v9's code serves again, and only it.
    assert_eq!(p.get(APP, "/"), (200, GREETING.to_owned()));
    wait_started_passing(&p, 2, 30);

    let report = load.stop();
    eprintln!("rollout: load during 10 redeploys, a failed one and a rollback: {report}");
    // Machines left the route before they were stopped: no request found
    // one gone and had to be sent elsewhere (the proxy's failover would
    // otherwise hide it from the load's count).
    let metrics = p.metrics();
    let failovers = metrics
        .lines()
        .find(|l| l.starts_with("hangar_proxy_failovers_total{app=\"hello\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("0")
        .to_owned();
    assert_eq!(
        failovers, "0",
        "requests failed over during rollouts:\n{metrics}"
    );
    for (what, took) in &deploy_times {
        eprintln!("rollout: {what}: {:.1} s", took.as_secs_f64());
    }
    report.assert_clean("10 redeploys, a failing check and a rollback");
    for (what, took) in &deploy_times {
        assert!(
            *took < Duration::from_secs(60),
            "{what} took {:.1} s",
            took.as_secs_f64()
        );
    }

    // The CLI lists the releases with their status.
    let out = p.hangar(&["releases", APP]);
    assert!(out.status.success(), "hangar releases failed");
    let table = text(&out.stdout);
    let line_of = |v: i64| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&format!("v{v}")))
            .unwrap_or_else(|| panic!("no line for v{v} in:\n{table}"))
            .to_owned()
    };
    for v in 1..=13 {
        line_of(v);
    }
    assert!(line_of(13).contains("active"), "{table}");
    assert!(line_of(12).contains("failed"), "{table}");
    assert!(line_of(11).contains("superseded"), "{table}");
    assert!(line_of(9).contains("superseded"), "{table}");
    let newest_first: Vec<usize> = [13, 12, 11, 9]
        .iter()
        .map(|v| {
            let line = line_of(*v);
            table.lines().position(|l| l == line).unwrap()
        })
        .collect();
    assert!(newest_first.windows(2).all(|w| w[0] < w[1]), "{table}");
}

#[test]
fn a_crash_looping_release_is_failed_quickly_and_the_old_one_keeps_serving() {
    let _serial = one_build_at_a_time();
    let p = TestPlatform::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = hello_with(tmp.path(), &good_toml(1));
    let out = p.deploy(&dir);
    assert!(out.contains("==> v1 of hello is live"), "{out}");
    let old = wait_started_passing(&p, 1, 10)[0]["id"].clone();

    let load = p.load(APP, "/", 4);

    // v2 exits with status 3 as soon as it starts.
    let main = dir.join("src/main.rs");
    let src = std::fs::read_to_string(&main).unwrap();
    let head = "async fn main() {\n";
    assert!(src.contains(head), "examples/hello has no `{head}`");
    std::fs::write(
        &main,
        src.replacen(head, &format!("{head}    std::process::exit(3);\n"), 1),
    )
    .unwrap();
    let (out, took) = deploy_timed(&p, &dir);
    let returned_at = unix_now();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a crashing release was deployed");
    assert_eq!(failed_version(&stderr), 2, "{stderr}");
    eprintln!(
        "rollout: the crashing deploy took {:.1} s: {}",
        took.as_secs_f64(),
        failure_reason(&stderr)
    );

    let list = releases(&p);
    let failed = release(&list, 2);
    assert_eq!(failed["status"], "failed", "{failed:#}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("exited"),
        "the error says it exited: {failed:#}"
    );
    assert_eq!(release(&list, 1)["status"], "active");

    // Failed on the crash, not at wait_timeout (30 s): within 15 s of the
    // build's end (deploy returns once the CLI sees the failure, so this
    // bounds it from above).
    let build = newest_build(&p);
    assert_eq!(build["status"], "succeeded", "{build:#}");
    let finished = build["finished_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("no finished_at: {build:#}"));
    let after_build = returned_at - finished as f64;
    eprintln!("rollout: the failure was reported {after_build:.1} s after the build finished");
    assert!(
        after_build <= 15.0,
        "the crash loop was reported {after_build:.1} s after the build finished"
    );

    assert_eq!(p.get(APP, "/"), (200, GREETING.to_owned()));
    let report = load.stop();
    eprintln!("rollout: load during the crashing deploy: {report}");
    report.assert_clean("a crash-looping release");
    // The old machine still serves, alone.
    let ms = wait_started_passing(&p, 1, 10);
    assert_eq!(ms[0]["id"], old, "the v1 machine keeps serving");
}

/// Sends SIGCONT to a stopped process when dropped, so a failing test does
/// not leave a frozen machine behind for the platform's teardown.
struct Thaw(i32);

impl Drop for Thaw {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Which machine answered `GET /machine` (the id examples/hello reports).
fn machine_answering(p: &TestPlatform) -> String {
    match p.try_get(APP, "/machine", Duration::from_secs(5)) {
        Ok((200, body)) => body.trim().to_owned(),
        other => panic!("GET /machine: {other:?}"),
    }
}

#[test]
fn scale_balances_and_unhealthy_machines_leave_rotation() {
    let _serial = one_build_at_a_time();
    let p = TestPlatform::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = hello_with(tmp.path(), &good_toml(2));
    let out = p.deploy(&dir);
    assert!(out.contains("==> v1 of hello is live"), "{out}");
    wait_started_passing(&p, 2, 10);

    let out = p.hangar(&["scale", APP, "3"]);
    assert!(out.status.success(), "hangar scale failed");
    assert!(
        text(&out.stdout).contains("==> hello runs 3 machines"),
        "{}",
        text(&out.stdout)
    );
    // It returns once all three are started and passing.
    let machines = started_machines(&p);
    assert_eq!(machines.len(), 3, "{:#}", Value::Array(machines.clone()));
    let machines = wait_started_passing(&p, 3, 10);
    let mut ids: Vec<String> = machines
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();

    // Sixty requests reach all three.
    let mut answered: Vec<String> = (0..60).map(|_| machine_answering(&p)).collect();
    answered.sort();
    answered.dedup();
    assert_eq!(
        answered, ids,
        "60 requests are balanced over the 3 machines"
    );

    // Freeze one: it fails its checks and leaves the rotation.
    let frozen = &machines[0];
    let frozen_id = frozen["id"].as_str().unwrap().to_owned();
    let pid = i32::try_from(frozen["pid"].as_i64().expect("a started machine has a pid")).unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGSTOP) },
        0,
        "SIGSTOP {pid}"
    );
    let thaw = Thaw(pid);
    let mut health = String::new();
    let critical = wait_for_or_none(10, || {
        health = health_of(&p, &frozen_id);
        (health == "critical").then_some(())
    });
    assert!(
        critical.is_some(),
        "10 s after SIGSTOP the frozen machine's health is {health}"
    );

    let load = p.load(APP, "/machine", 4);
    let until = Instant::now() + Duration::from_secs(3);
    let mut served_by = Vec::new();
    for _ in 0..30 {
        let id = machine_answering(&p);
        assert_ne!(id, frozen_id, "the frozen machine answered");
        served_by.push(id);
    }
    if let Some(left) = until.checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
    let report = load.stop();
    eprintln!("rollout: load with one machine frozen: {report}");
    report.assert_clean("one of three machines frozen");
    served_by.sort();
    served_by.dedup();
    assert!(
        served_by
            .iter()
            .all(|id| ids.contains(id) && *id != frozen_id),
        "{served_by:?}"
    );

    // Thawed, it passes again and is routed to again.
    drop(thaw);
    let passing = wait_for_or_none(10, || {
        health = health_of(&p, &frozen_id);
        (health == "passing").then_some(())
    });
    assert!(
        passing.is_some(),
        "10 s after SIGCONT the thawed machine's health is {health}"
    );
    wait_for(10, "the thawed machine to answer again", || {
        (machine_answering(&p) == frozen_id).then_some(())
    });
    assert_eq!(started_machines(&p).len(), 3);
}

#[test]
fn invalid_hangar_toml_is_refused_before_upload() {
    let p = TestPlatform::start();
    let tmp = tempfile::tempdir().unwrap();
    let toml = good_toml(2).replacen("strategy = \"rolling\"", "strategy = \"blue-green\"", 1);
    let e = AppConfig::parse(&toml).expect_err("blue-green is not a strategy");
    assert_eq!((e.line(), e.key()), (2, Some("deploy.strategy")), "{e}");
    let dir = hello_with(tmp.path(), &toml);

    let (out, _) = deploy_timed(&p, &dir);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "an invalid hangar.toml was deployed");
    assert!(
        stderr.contains("hangar.toml line 2: deploy.strategy: unknown strategy"),
        "{stderr}"
    );

    // Nothing was uploaded: no app, or one without builds.
    let apps = p.api_get("/api/v1/apps");
    let hello = apps["apps"]
        .as_array()
        .unwrap_or_else(|| panic!("{apps:#}"))
        .iter()
        .find(|a| a["name"] == APP);
    if let Some(app) = hello {
        let builds = app["builds"].as_array().map_or(0, Vec::len);
        assert_eq!(builds, 0, "a build was queued: {app:#}");
    }
}

/// The load itself sees what it is there to catch: refused connections,
/// non-2xx answers and answers that never come.
#[test]
fn the_load_counts_refusals_non_2xx_and_timeouts() {
    use std::io::{Read, Write};

    // Nothing listens: every request is an error.
    let report = support::Load::start(support::free_port(), "nothing", "/", 2);
    std::thread::sleep(Duration::from_millis(300));
    let report = report.stop();
    assert!(
        report.total > 0 && report.errors == report.total,
        "{report}"
    );
    assert!(!report.error_samples.is_empty(), "{report}");
    let caught = std::panic::catch_unwind(|| report.assert_clean("refused"));
    assert!(caught.is_err(), "assert_clean passed a load of refusals");

    // A server that answers 503 to the first request on each connection
    // and then never answers again.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nbusy\n",
                );
                // Keep the connection open and silent.
                std::thread::sleep(Duration::from_secs(30));
            });
        }
    });
    let load = support::Load::start(port, "app", "/", 1);
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    assert_eq!(report.non_2xx, 1, "{report}");
    assert_eq!(report.statuses[0].1, 503, "{report}");
    assert_eq!(report.statuses[0].2, "busy\n", "{report}");
    assert_eq!(report.errors, 1, "the second request timed out: {report}");
    assert!(
        report.error_samples[0].1.contains("no answer within 5s"),
        "{report}: {:?}",
        report.error_samples
    );
}
