//! Preview environments with real git and the host's Postgres, Redis and
//! NATS: a pull request of examples/todo gets its own app with its own,
//! empty database; a fork's pull request waits for a maintainer's
//! approval of its exact head; closing tears down everything the preview
//! held (each item checked there before, gone after) and leaves
//! production as it was; a preview past its time to live goes by itself;
//! reopening brings one back.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use hangar_git::hook::sign;
use serde_json::{Value, json};
use support::inventory::{Inventory, admin_query};
use support::{TestPlatform, git, wait_for};

/// Commits a change to the work tree and publishes it as pull request
/// `n`'s head (`refs/pull/<n>/head`, as GitHub does): its commit id.
fn push_pr(work: &Path, n: u64, note: &str) -> String {
    std::fs::write(work.join("PR_NOTE"), note).unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "--quiet", "-m", note]);
    git(
        work,
        &[
            "push",
            "--quiet",
            "--force",
            "origin",
            &format!("HEAD:refs/pull/{n}/head"),
        ],
    );
    git(work, &["rev-parse", "HEAD"])
}

/// A `pull_request` delivery as GitHub sends and signs it.
fn deliver_pr(
    p: &TestPlatform,
    secret: &str,
    id: &str,
    action: &str,
    n: u64,
    sha: &str,
    fork: bool,
) -> (u16, String) {
    let body = serde_json::to_vec(&json!({
        "action": action,
        "number": n,
        "pull_request": {
            "number": n,
            "head": {"sha": sha, "ref": format!("pr-{n}"),
                     "repo": {"id": if fork { 99 } else { 1 }, "full_name": if fork { "stranger/todo" } else { "dev/todo" }}},
            "base": {"sha": sha, "ref": "main", "repo": {"id": 1, "full_name": "dev/todo"}},
            "user": {"login": if fork { "stranger" } else { "dev" }},
            "author_association": if fork { "NONE" } else { "MEMBER" },
        },
    }))
    .unwrap();
    let sig = format!("sha256={}", sign(secret.as_bytes(), &body));
    p.api_request_headers(
        "POST",
        "/hooks/github/todo",
        "none",
        &[
            ("x-github-event", "pull_request"),
            ("x-github-delivery", id),
            ("x-hub-signature-256", &sig),
        ],
        body,
    )
}

fn preview(p: &TestPlatform, n: u64) -> Value {
    let list = p.api_get("/api/v1/apps/todo/previews");
    list["previews"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["number"] == n)
        .cloned()
        .unwrap_or(Value::Null)
}

fn wait_preview(p: &TestPlatform, n: u64, state: &str, secs: u64) -> Value {
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        last = preview(p, n);
        if last["state"] == state {
            return last;
        }
        assert_ne!(last["state"], "failed", "preview #{n} failed: {last:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("preview #{n} is not {state} after {secs} s: {last:#}");
}

/// Waits until `app` answers `GET /todos` with 200: the body.
fn wait_todos(p: &TestPlatform, app: &str, secs: u64) -> String {
    wait_for(secs, &format!("{app} to answer"), || {
        let (code, body) = p.get(app, "/todos");
        (code == 200).then_some(body)
    })
}

fn app_exists(p: &TestPlatform, app: &str) -> bool {
    let (code, _) = p.call("GET", &format!("/api/v1/apps/{app}"), Value::Null);
    code == 200
}

#[test]
fn a_pull_request_gets_its_own_environment_and_leaves_nothing_when_closed() {
    let _ = admin_query("SELECT $1::text", "ping");
    let tmp = tempfile::tempdir().unwrap();
    let (origin, work) = support::example_repo("todo", tmp.path());
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "production"]);
    git(&work, &["push", "--quiet", "origin", "HEAD:main"]);

    let p = TestPlatform::start_with(&[
        "--postgres-url",
        support::inventory::ADMIN_URL,
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--nats-url",
        "nats://127.0.0.1:4222",
        "--git-allow-file-urls",
        "--git-poll-secs",
        "2",
        "--git-preview-ttl-secs",
        "20",
    ]);
    let url = format!("file://{}", origin.display());
    let secret = support::git_connect(&p, "todo", &url);
    // Production, deployed from main, with a row of its own.
    let out = p.hangar(&["git", "deploy", "todo"]);
    assert!(out.status.success(), "{out:?}");
    wait_todos(&p, "todo", 300);
    let (code, body) = p.post_json("todo", "/todos", r#"{"title": "production data"}"#);
    assert_eq!(code, 201, "{body}");
    let prod = Inventory::of(&p, &p.token, "todo");
    let prod_before = prod.present(&p);

    // PR #1 by a member: built from its head, its own app and database.
    let head1 = push_pr(&work, 1, "feature one");
    let opened = Instant::now();
    let (code, body) = deliver_pr(&p, &secret, "pr1-open", "opened", 1, &head1, false);
    assert_eq!(code, 202, "{body}");
    let out = p.hangar(&["previews", "extend", "todo", "1", "--hours", "1"]);
    assert!(out.status.success(), "{out:?}");
    let todos = wait_todos(&p, "todo-pr-1", 300);
    println!(
        "FIGURE: PR opened -> first 200 from its preview: {:.1} s",
        opened.elapsed().as_secs_f64()
    );
    assert_eq!(todos, "[]", "the preview's database is its own, and empty");
    let v = wait_preview(&p, 1, "live", 30);
    assert!(v["url"].as_str().unwrap().contains("todo-pr-1."), "{v:#}");
    let (code, body) = p.post_json("todo-pr-1", "/todos", r#"{"title": "preview data"}"#);
    assert_eq!(code, 201, "{body}");
    let (_, prod_todos) = p.get("todo", "/todos");
    assert!(!prod_todos.contains("preview data"), "{prod_todos}");
    let pv = Inventory::of(&p, &p.token, "todo-pr-1");
    assert_ne!(pv.database, prod.database);
    assert_ne!(pv.redis_user, prod.redis_user);
    let held = pv.present(&p);
    let missing: Vec<_> = held.iter().filter(|(_, there)| !there).collect();
    assert!(
        missing.is_empty(),
        "not there before the close: {missing:?}"
    );
    let secrets = p.api_get("/api/v1/apps/todo-pr-1/secrets");
    assert_eq!(
        secrets["secrets"],
        json!([]),
        "no production secret is copied"
    );
    let why = p.api_get(&format!("/api/v1/apps/todo-pr-1/git/commits/{head1}"));
    assert_eq!(why["via"], "pull request #1");

    // PR #2 from a fork: nothing is built until its exact head is approved.
    git(&work, &["checkout", "--quiet", "-b", "fork", "main"]);
    let head2 = push_pr(&work, 2, "a stranger's change");
    let (code, body) = deliver_pr(&p, &secret, "pr2-open", "opened", 2, &head2, true);
    assert_eq!(code, 202, "{body}");
    let v = wait_preview(&p, 2, "awaiting approval", 10);
    assert!(v["detail"].as_str().unwrap().contains("approve"), "{v:#}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !app_exists(&p, "todo-pr-2"),
        "a fork's PR is not built unapproved"
    );
    let out = p.hangar(&["previews", "approve", "todo", "2", "--sha", &head1]);
    assert!(!out.status.success(), "approving another commit is refused");
    let out = p.hangar(&["previews", "approve", "todo", "2", "--sha", &head2]);
    assert!(out.status.success(), "{out:?}");
    // Approved, it is built (in a target dir of its own, so cold: the
    // build is cancelled once queued, to spare the CI's two cores).
    let build = wait_for(60, "PR #2's build", || {
        let (code, v) = p.call("GET", "/api/v1/apps/todo-pr-2", Value::Null);
        (code == 200)
            .then(|| v["builds"][0]["id"].as_str().map(str::to_owned))
            .flatten()
    });
    let (code, b) = p.call("GET", &format!("/api/v1/builds/{build}"), Value::Null);
    assert_eq!(
        (code, b["build"]["commit"].as_str()),
        (200, Some(head2.as_str())),
        "{b}"
    );
    let (code, body) = p.call(
        "POST",
        &format!("/api/v1/builds/{build}/cancel"),
        Value::Null,
    );
    assert_eq!(code, 200, "{body}");
    // A new push needs a new approval.
    let head2b = push_pr(&work, 2, "more from the stranger");
    let (code, _) = deliver_pr(&p, &secret, "pr2-sync", "synchronize", 2, &head2b, true);
    assert_eq!(code, 202);
    wait_preview(&p, 2, "awaiting approval", 10);

    // Closing PR #1: everything the preview held is gone within 10 s, and
    // production is as it was.
    let closed = Instant::now();
    let (code, body) = deliver_pr(&p, &secret, "pr1-close", "closed", 1, &head1, false);
    assert_eq!(code, 202, "{body}");
    let left = wait_for(10, "the preview's teardown", || {
        let left: Vec<String> = pv
            .present(&p)
            .into_iter()
            .filter(|(_, there)| *there)
            .map(|(what, _)| what)
            .collect();
        (left.is_empty() && !app_exists(&p, "todo-pr-1")).then_some(left)
    });
    assert!(left.is_empty());
    println!(
        "FIGURE: PR closed -> everything gone: {:.1} s",
        closed.elapsed().as_secs_f64()
    );
    assert_eq!(p.get("todo-pr-1", "/todos").0, 404, "its route is gone");
    assert_eq!(prod.present(&p), prod_before, "production is untouched");
    assert!(wait_todos(&p, "todo", 10).contains("production data"));
    // Closing again changes nothing.
    let (code, body) = deliver_pr(&p, &secret, "pr1-close-2", "closed", 1, &head1, false);
    assert_eq!(code, 202, "{body}");
    assert_eq!(wait_preview(&p, 1, "closed", 5)["url"], Value::Null);

    // PR #2 was not extended: past its time to live (20 s here, counted
    // from its last push or request) it goes by itself.
    wait_for(90, "PR #2's preview to expire", || {
        (preview(&p, 2)["state"] == "closed" && !app_exists(&p, "todo-pr-2")).then_some(())
    });

    // Reopening PR #1 brings its preview back; the CLI destroys it.
    let (code, body) = deliver_pr(&p, &secret, "pr1-reopen", "reopened", 1, &head1, false);
    assert_eq!(code, 202, "{body}");
    assert_eq!(wait_todos(&p, "todo-pr-1", 300), "[]");
    let out = p.hangar(&["previews", "destroy", "todo", "1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!app_exists(&p, "todo-pr-1"));
    let out = p.hangar(&["previews", "list", "todo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("#1") && text.contains("closed"),
        "{text}"
    );
}
