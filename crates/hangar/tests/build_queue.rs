//! The build queue shared by every tenant: several workers, turns taken
//! round-robin by org, a cap on what one org may queue, a newer deploy of
//! an app superseding its queued one, and cancelling a queued or running
//! build (its sandbox killed). Slow builds are examples/hostile-build with
//! a build script that sleeps; they are cancelled, never waited for.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{TestPlatform, copy_example, example, wait_for};

/// A copy of examples/hostile-build whose build script holds the build
/// (`sleep 600`) after starting a detached `sleep TAG` (found on the host
/// by its command line); no attacks.
fn slow_app(tmp: &Path, tag: &str) -> PathBuf {
    let dir = copy_example("hostile-build", tmp);
    std::fs::write(
        dir.join("attacks.txt"),
        format!("daemon {tag}\nsleep 600\n"),
    )
    .unwrap();
    dir
}

/// A tag no other run of these tests uses (`sleep` takes it as seconds).
fn tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("700.{}", nanos % 1_000_000_000_000)
}

/// `hangar deploy DIR --app APP --no-wait` (as `token`'s org, or the
/// admin's): the queued build's id.
fn queue(p: &TestPlatform, token: Option<&str>, dir: &Path, app: &str) -> String {
    let args = ["deploy", dir.to_str().unwrap(), "--app", app, "--no-wait"];
    let out = match token {
        Some(t) => p.hangar_as(t, &args),
        None => p.hangar(&args),
    };
    assert!(out.status.success(), "deploying {app}");
    build_id(&String::from_utf8_lossy(&out.stdout))
}

/// The id in the CLI's `==> Build bld_… queued` line.
fn build_id(out: &str) -> String {
    out.split_whitespace()
        .find(|w| w.starts_with("bld_"))
        .unwrap_or_else(|| panic!("no build id in:\n{out}"))
        .to_owned()
}

/// A build's row as the API answers it (with the admin token).
fn build(p: &TestPlatform, token: &str, id: &str) -> Value {
    let (code, b) = p.call_as(token, "GET", &format!("/api/v1/builds/{id}"), Value::Null);
    assert_eq!(code, 200, "{b}");
    b["build"].clone()
}

fn status(p: &TestPlatform, token: &str, id: &str) -> String {
    build(p, token, id)["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn wait_status(p: &TestPlatform, token: &str, id: &str, want: &str, secs: u64) {
    wait_for(secs, &format!("build {id} to be {want}"), || {
        let s = status(p, token, id);
        assert!(
            s == want || !["succeeded", "failed", "superseded", "cancelled"].contains(&s.as_str()),
            "build {id} is {s}, not {want}: {}",
            build(p, token, id)
        );
        (s == want).then_some(())
    });
}

/// `hangar builds cancel ID` (as `token`'s org, or the admin's).
fn cancel(p: &TestPlatform, token: Option<&str>, id: &str) -> std::process::Output {
    let args = ["builds", "cancel", id];
    match token {
        Some(t) => p.hangar_as(t, &args),
        None => p.hangar(&args),
    }
}

/// Host pids whose command line is exactly `argv`.
fn processes(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    pids()
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// Host pids in one of the build's cgroups (`/hangar-builds/build-<id>…`),
/// with whether each is a zombie (dead, not yet reaped).
fn in_build_cgroups(id: &str) -> Vec<(u32, bool)> {
    let needle = format!("hangar-builds/build-{id}");
    pids()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&needle))
        })
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let zombie = status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'));
            (pid, zombie)
        })
        .collect()
}

/// Nothing of the build runs once its cancel has answered, and what died
/// is reaped (no pid is held) soon after.
fn assert_gone(id: &str) {
    let running: Vec<u32> = in_build_cgroups(id)
        .into_iter()
        .filter(|(_, zombie)| !zombie)
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(running, Vec::<u32>::new(), "build {id} still runs these");
    wait_for(
        5,
        &format!("build {id}'s dead processes to be reaped"),
        || in_build_cgroups(id).is_empty().then_some(()),
    );
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
}

#[test]
fn orgs_take_turns_and_one_org_queues_at_most_its_cap() {
    let p = TestPlatform::start_with(&[
        "--driver",
        "runc",
        "--build-workers",
        "2",
        "--org-max-queued-builds",
        "2",
    ]);
    let other = p.create_org("fair-b");
    let tmp = tempfile::tempdir().unwrap();
    let slow = slow_app(tmp.path(), &tag());
    // Org A fills both workers, then queues two more: its cap.
    let a: Vec<String> = (1..=4)
        .map(|i| queue(&p, None, &slow, &format!("fair-a{i}")))
        .collect();
    for id in &a[..2] {
        wait_status(&p, &p.token, id, "building", 120);
    }
    // Two workers: both of A's first builds run at once.
    assert_eq!(status(&p, &p.token, &a[0]), "building");
    assert_eq!(status(&p, &p.token, &a[2]), "queued");
    // The cap: a fifth waiting build of A is refused, naming the flag.
    let out = p.hangar(&[
        "deploy",
        slow.to_str().unwrap(),
        "--app",
        "fair-a5",
        "--no-wait",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("429")
            && err.contains("at most 2 builds")
            && err.contains("--org-max-queued-builds"),
        "the cap is named: {err}"
    );
    // The API says the same, as JSON, to the raw upload.
    let (code, body) = p.api_request(
        "POST",
        "/api/v1/apps/fair-a5/deploys",
        Some(&p.token.clone()),
        b"not read".to_vec(),
    );
    assert_eq!(code, 429, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--org-max-queued-builds")
    );
    // Another org still deploys.
    let b = queue(&p, Some(&other), &example("toolbox"), "fair-b1");
    assert_eq!(status(&p, &other, &b), "queued");

    // When a worker frees up, org B's one build goes before A's third.
    let out = cancel(&p, None, &a[0]);
    assert!(out.status.success());
    wait_for(120, "the freed worker to start a build", || {
        let started = |token: &str, id: &str| status(&p, token, id) != "queued";
        (started(&other, &b) || started(&p.token, &a[2])).then_some(())
    });
    assert_eq!(
        (
            status(&p, &p.token, &a[2]).as_str(),
            status(&p, &other, &b) != "queued"
        ),
        ("queued", true),
        "org B's build starts first; org A's third waits"
    );
    wait_status(&p, &other, &b, "succeeded", 180);
    // Then A's next one, oldest first.
    wait_status(&p, &p.token, &a[2], "building", 60);
    assert_eq!(status(&p, &p.token, &a[3]), "queued");
    for id in &a[1..] {
        assert!(cancel(&p, None, id).status.success());
    }
}

#[test]
fn a_newer_deploy_supersedes_the_queued_one() {
    let p = TestPlatform::start_with(&["--driver", "runc", "--build-workers", "1"]);
    let tmp = tempfile::tempdir().unwrap();
    let blocker = queue(&p, None, &slow_app(tmp.path(), &tag()), "sup-block");
    wait_status(&p, &p.token, &blocker, "building", 120);
    let toolbox = example("toolbox");
    let dir = toolbox.to_str().unwrap();
    let first = p.spawn_hangar(&["deploy", dir, "--app", "sup-app"]);
    let first_id = wait_for(30, "the first deploy's build", || {
        let (code, a) = p.call("GET", "/api/v1/apps/sup-app", Value::Null);
        (code == 200)
            .then(|| a["builds"][0]["id"].as_str().map(str::to_owned))
            .flatten()
    });
    assert_eq!(status(&p, &p.token, &first_id), "queued");
    let second = p.spawn_hangar(&["deploy", dir, "--app", "sup-app"]);

    // The first deploy ends, naming the build that superseded it.
    let out = first.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("first deploy:\n{text}");
    assert!(!out.status.success(), "a superseded deploy did not deploy");
    let row = build(&p, &p.token, &first_id);
    assert_eq!(row["status"], "superseded", "{row}");
    let reason = row["error"].as_str().unwrap().to_owned();
    let second_id = reason
        .split_whitespace()
        .find(|w| w.starts_with("bld_"))
        .map(|w| w.trim_end_matches(','))
        .unwrap_or_else(|| panic!("the reason names the newer build: {reason}"))
        .to_owned();
    assert_ne!(second_id, first_id);
    assert!(
        text.trim_end().ends_with(&reason) && text.contains(&second_id),
        "the stream ends with the reason: {text}"
    );

    // The second deploys once the worker is free.
    assert!(cancel(&p, None, &blocker).status.success());
    let out = second.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("second deploy:\n{text}");
    assert!(out.status.success(), "the newer deploy goes live");
    assert!(
        text.contains(&second_id) && text.contains("is live"),
        "{text}"
    );
    assert_eq!(status(&p, &p.token, &second_id), "succeeded");
}

#[test]
fn cancelling_a_running_build_kills_its_sandbox() {
    let p = TestPlatform::start();
    let other = p.create_org("cancel-b");
    let tmp = tempfile::tempdir().unwrap();
    let tag = tag();
    let dir = slow_app(tmp.path(), &tag);
    let deploying = p.spawn_hangar(&["deploy", dir.to_str().unwrap(), "--app", "cancel-app"]);
    let id = wait_for(30, "the build", || {
        let (code, a) = p.call("GET", "/api/v1/apps/cancel-app", Value::Null);
        (code == 200)
            .then(|| a["builds"][0]["id"].as_str().map(str::to_owned))
            .flatten()
    });
    // The build script runs (its detached sleep is up).
    wait_for(180, "the build script to run", || {
        (!processes(&["sleep", &tag]).is_empty()).then_some(())
    });
    assert_eq!(status(&p, &p.token, &id), "building");
    assert!(!in_build_cgroups(&id).is_empty());

    // Another org's build is not found.
    let out = cancel(&p, Some(&other), &id);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    assert_eq!(status(&p, &p.token, &id), "building");

    let out = cancel(&p, None, &id);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("processes were killed"));
    // Nothing of it is left: no process in its cgroups, not the daemon,
    // no container.
    assert_gone(&id);
    assert_eq!(processes(&["sleep", &tag]), Vec::<u32>::new());
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(p.data_dir().join("build-runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&runc.stdout).trim(), "");
    let row = build(&p, &p.token, &id);
    assert_eq!(row["status"], "cancelled", "{row}");
    // The deploy that was following it says so.
    let out = deploying.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cancelled"), "{err}");
    // A finished build cannot be cancelled.
    let (code, body) = p.call("POST", &format!("/api/v1/builds/{id}/cancel"), Value::Null);
    assert_eq!(code, 409, "{body}");

    // The next deploy of the app builds and goes live.
    std::fs::write(dir.join("attacks.txt"), "").unwrap();
    let out = p.hangar(&["deploy", dir.to_str().unwrap(), "--app", "cancel-app"]);
    assert!(out.status.success(), "the next deploy works");
}

#[test]
fn builds_running_on_several_workers_are_requeued_once_after_a_crash() {
    let mut p = TestPlatform::start_with(&["--driver", "runc", "--build-workers", "2"]);
    let tmp = tempfile::tempdir().unwrap();
    let slow = slow_app(tmp.path(), &tag());
    let ids: Vec<String> = ["crash-a", "crash-b"]
        .iter()
        .map(|app| queue(&p, None, &slow, app))
        .collect();
    for id in &ids {
        wait_status(&p, &p.token, id, "building", 120);
    }
    p.restart();
    // Both run again, each claimed once more, and the log says why.
    for id in &ids {
        wait_status(&p, &p.token, id, "building", 60);
        assert_eq!(build(&p, &p.token, id)["attempts"], 2);
        let log =
            std::fs::read_to_string(p.data_dir().join(format!("build-logs/{id}.log"))).unwrap();
        assert!(log.contains("re-queued"), "{log}");
    }
    for id in &ids {
        assert!(cancel(&p, None, id).status.success());
        assert_gone(id);
    }
}
