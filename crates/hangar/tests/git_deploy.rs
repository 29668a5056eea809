//! Deploy on push, with real git: a bare repository (`file://`, allowed by
//! `--git-allow-file-urls`), real commits and pushes, and webhook
//! deliveries in GitHub's and Gitea's shapes, signed as those send them,
//! and the documented `post-receive` hook (`scripts/post-receive`) run by
//! git itself. Covers: a push deploys exactly that commit with no
//! failed request; a bad signature is a 401 that changes nothing; a
//! replayed delivery is a no-op; a newer commit supersedes one being
//! built; an older commit's late delivery never replaces a newer one;
//! another branch is ignored; a push no webhook reported is found by the
//! poller; `hangar why` answers for each.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use hangar_git::hook::sign;
use support::{TestPlatform, git, wait_for};

/// Commits the work tree with `greeting` in the app and pushes it to
/// `branch`: the new commit's id.
fn commit_greeting(work: &Path, greeting: &str, message: &str, branch: &str) -> String {
    let main = work.join("src/main.rs");
    let src = std::fs::read_to_string(&main).unwrap();
    let start = src.find("const GREETING: &str = \"").unwrap() + "const GREETING: &str = \"".len();
    let end = start + src[start..].find('"').unwrap();
    let edited = format!("{}{greeting}{}", &src[..start], &src[end..]);
    std::fs::write(&main, edited).unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "--quiet", "-m", message]);
    git(
        work,
        &["push", "--quiet", "origin", &format!("HEAD:{branch}")],
    );
    git(work, &["rev-parse", "HEAD"])
}

fn github_push(branch: &str, sha: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "created": false,
        "deleted": false,
        "forced": false,
        "repository": {"full_name": "dev/web", "default_branch": "main"},
        "pusher": {"name": "dev"},
        "commits": [{"id": sha, "message": "m", "added": [], "removed": [],
                     "modified": ["src/main.rs"]}],
        "head_commit": {"id": sha, "message": "m"}
    }))
    .unwrap()
}

/// Delivers a push as GitHub signs it: (status, body).
fn deliver_github(p: &TestPlatform, secret: &str, id: &str, body: &[u8]) -> (u16, String) {
    let sig = format!("sha256={}", sign(secret.as_bytes(), body));
    p.api_request_headers(
        "POST",
        "/hooks/github/web",
        "none",
        &[
            ("x-github-event", "push"),
            ("x-github-delivery", id),
            ("x-hub-signature-256", &sig),
        ],
        body.to_vec(),
    )
}

/// `hangar why web SHA` as JSON.
fn why(p: &TestPlatform, sha: &str) -> serde_json::Value {
    p.api_get(&format!("/api/v1/apps/web/git/commits/{sha}"))
}

fn wait_state(p: &TestPlatform, sha: &str, state: &str, secs: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let (code, v) = p.call(
            "GET",
            &format!("/api/v1/apps/web/git/commits/{sha}"),
            serde_json::Value::Null,
        );
        if code == 200 && v["state"] == state {
            return v;
        }
        if code == 200 && v["state"] == "failed" {
            panic!("commit {sha} failed: {v:#}\n{}", p.hangar_log());
        }
        last = v;
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("commit {sha} is not {state} after {secs} s: {last:#}");
}

fn builds_of_web(p: &TestPlatform) -> usize {
    let v = p.api_get("/api/v1/apps/web/git");
    v["commits"]
        .as_array()
        .map_or(0, |c| c.iter().filter(|c| !c["build"].is_null()).count())
}

#[test]
fn pushes_deploy_exactly_their_commit_and_every_commit_has_an_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let (origin, work) = support::example_repo("hello", tmp.path());
    let a = commit_greeting(&work, "Hello from commit A", "first: A", "main");

    let p = TestPlatform::start_with(&["--git-allow-file-urls", "--git-poll-secs", "2"]);
    let url = format!("file://{}", origin.display());
    // A tenant's URL is checked: no transport helpers, no local paths.
    let out = p.hangar(&["git", "connect", "web", "--repo", "ext::sh -c id"]);
    assert!(!out.status.success());
    let secret = support::git_connect(&p, "web", &url);

    // A push, delivered as GitHub sends it, deploys exactly its commit.
    let started = Instant::now();
    let (code, body) = deliver_github(&p, &secret, "d-a", &github_push("main", &a));
    assert_eq!(code, 202, "{body}");
    let v = wait_state(&p, &a, "deployed", 300);
    println!(
        "FIGURE: first push -> serving (cached dependencies): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(v["via"], "github webhook");
    assert_eq!(v["message"], "first: A");
    let release = v["release"].as_i64().unwrap();
    let releases = p.api_get("/api/v1/apps/web/releases");
    let rel = releases["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == release)
        .unwrap()
        .clone();
    assert_eq!(rel["commit"], a.as_str());
    assert_eq!(rel["commit_message"], "first: A");
    assert_eq!(p.get("web", "/"), (200, "Hello from commit A\n".to_owned()));

    // A bad signature: 401, nothing changes, and the log says so.
    let b = commit_greeting(&work, "Hello from commit B", "second: B", "main");
    let before = builds_of_web(&p);
    let forged = github_push("main", &b);
    let (code, _) = p.api_request_headers(
        "POST",
        "/hooks/github/web",
        "none",
        &[
            ("x-github-event", "push"),
            ("x-github-delivery", "d-forged"),
            (
                "x-hub-signature-256",
                &format!("sha256={}", sign(b"wrong", &forged)),
            ),
        ],
        forged.clone(),
    );
    assert_eq!(code, 401);
    let (code, _) = p.api_request_headers(
        "POST",
        "/hooks/github/web",
        "none",
        &[("x-github-event", "push")],
        forged.clone(),
    );
    assert_eq!(code, 401, "an unsigned delivery");
    let status = p.api_get("/api/v1/apps/web/git");
    assert_eq!(status["deliveries"][0]["verdict"], "rejected");
    assert_eq!(
        builds_of_web(&p),
        before,
        "a rejected delivery builds nothing"
    );

    // B is pushed; while it builds, C lands. C deploys, B is superseded,
    // and requests keep being answered throughout.
    let load = p.load("web", "/", 2);
    let (code, _) = deliver_github(&p, &secret, "d-b", &github_push("main", &b));
    assert_eq!(code, 202);
    wait_for(60, "B's build to start", || {
        let v = why(&p, &b);
        (v["state"] == "building" || v["state"] == "queued").then_some(())
    });
    let c = commit_greeting(&work, "Hello from commit C", "third: C", "main");
    let pushed_c = Instant::now();
    let (code, _) = deliver_github(&p, &secret, "d-c", &github_push("main", &c));
    assert_eq!(code, 202);
    wait_state(&p, &c, "deployed", 300);
    println!(
        "FIGURE: push -> new release serving (warm caches, hello): {:.1} s",
        pushed_c.elapsed().as_secs_f64()
    );
    let report = load.stop();
    report.assert_clean("two pushes deploying under load");
    assert_eq!(p.get("web", "/"), (200, "Hello from commit C\n".to_owned()));
    let vb = why(&p, &b);
    assert_eq!(vb["state"], "superseded", "{vb:#}");

    // A replay of C's delivery is a no-op.
    let builds = builds_of_web(&p);
    let (code, body) = deliver_github(&p, &secret, "d-c", &github_push("main", &c));
    assert_eq!((code, body.contains("replayed")), (200, true), "{body}");
    // A's push delivered late (a new delivery id, correctly signed) never
    // replaces C: the branch's head is C.
    let (code, _) = deliver_github(&p, &secret, "d-a-late", &github_push("main", &a));
    assert_eq!(code, 202);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        builds_of_web(&p),
        builds,
        "no build for a replay or an older commit"
    );
    assert_eq!(p.get("web", "/"), (200, "Hello from commit C\n".to_owned()));
    let va = why(&p, &a);
    assert_eq!(va["state"], "deployed");
    assert!(
        va["detail"].as_str().unwrap().contains("replaced by"),
        "{va:#}"
    );

    // Another branch: ignored, and `why` says so.
    let f = commit_greeting(&work, "Hello from a feature", "feature work", "feature");
    let (code, body) = deliver_github(&p, &secret, "d-f", &github_push("feature", &f));
    assert_eq!(code, 200, "{body}");
    let vf = why(&p, &f);
    assert_eq!(vf["state"], "ignored");
    assert!(vf["detail"].as_str().unwrap().contains("feature"), "{vf:#}");
    git(&work, &["reset", "--quiet", "--hard", &c]);

    // A push no webhook reports: the poller finds and deploys it.
    let d = commit_greeting(&work, "Hello from commit D", "fourth: D", "main");
    let vd = wait_state(&p, &d, "deployed", 300);
    assert!(
        vd["via"].as_str().unwrap().contains("detected via poll"),
        "{vd:#}"
    );
    let status = p.api_get("/api/v1/apps/web/git");
    assert!(
        status["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["source"] == "poll"
                && x["commit"] == d.as_str()
                && x["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("detected via poll")),
        "{status:#}"
    );

    // Gitea's signature and the plain git hook deploy too.
    let e = commit_greeting(&work, "Hello from commit E", "fifth: E", "main");
    let body = github_push("main", &e);
    let (code, text) = p.api_request_headers(
        "POST",
        "/hooks/gitea/web",
        "none",
        &[
            ("x-gitea-event", "push"),
            ("x-gitea-delivery", "g-e"),
            ("x-gitea-signature", &sign(secret.as_bytes(), &body)),
        ],
        body,
    );
    assert_eq!(code, 202, "{text}");
    assert_eq!(wait_state(&p, &e, "deployed", 300)["via"], "gitea webhook");
    // The documented post-receive hook, installed in the bare repository,
    // delivers the next push itself.
    let hook = origin.join("hooks/post-receive");
    std::fs::copy(support::workspace().join("scripts/post-receive"), &hook).unwrap();
    git(&origin, &["config", "hangar.url", &p.api]);
    git(&origin, &["config", "hangar.app", "web"]);
    git(&origin, &["config", "hangar.secret", &secret]);
    let g = commit_greeting(&work, "Hello from commit G", "sixth: G", "main");
    assert_eq!(wait_state(&p, &g, "deployed", 300)["via"], "git webhook");
    assert_eq!(p.get("web", "/"), (200, "Hello from commit G\n".to_owned()));

    // The CLI's answers.
    let out = p.hangar(&["why", "web", &b[..10]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("superseded"),
        "{text}"
    );
    let out = p.hangar(&["why", "web", "abcdef12"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("rejected"), "{err}");
    let out = p.hangar(&["git", "status", "web"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&g), "{text}");
}
