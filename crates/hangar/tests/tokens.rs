//! Scoped tokens and the audit log, tried as their holders would: a CI
//! token scoped to one app deploys it and can touch nothing else, a read
//! token changes nothing, expired and revoked tokens are refused, and every
//! change is recorded with the token that made it, secret values never.

mod support;

use hangar_api_types::hangar as api;
use serde_json::{Value, json};
use support::{TestPlatform, copy_example};

/// `hangar tokens create …` as the admin; returns (id, secret).
fn create_token(p: &TestPlatform, args: &[&str]) -> (String, String) {
    let mut all = vec!["tokens", "create"];
    all.extend_from_slice(args);
    let out = p.hangar(&all);
    assert!(out.status.success(), "tokens create {args:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let id = text
        .split_whitespace()
        .find(|w| w.starts_with("tok_"))
        .expect("the id is printed")
        .to_owned();
    let secret = text
        .lines()
        .find(|l| l.starts_with("hgr_"))
        .expect("the secret is printed once")
        .to_owned();
    (id, secret)
}

fn error_of(v: &Value) -> String {
    v["error"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn scoped_tokens_do_what_their_scope_says_and_every_change_is_audited() {
    let p = TestPlatform::start_with(&["--driver", "process"]);
    let dir = tempfile::tempdir().unwrap();
    let app_dir = copy_example("hello", dir.path());
    let app_dir = app_dir.to_str().unwrap();
    // Two apps of the org, made by the admin: web (deployed below by CI)
    // and api, which the CI token must not reach.
    let (code, v) = p.call("POST", "/v1/apps", json!({"app_name": "api"}));
    assert_eq!(code, 201, "{v}");

    let (ci_id, ci) = create_token(&p, &["--scope", "deploy:web", "--name", "CI"]);
    let (_, reader) = create_token(&p, &["--scope", "read", "--name", "dash"]);

    // The CI token deploys its app, as the CLI does, end to end.
    let out = p.hangar_as(&ci, &["deploy", app_dir, "--app", "web"]);
    assert!(out.status.success(), "a deploy:web token deploys web");
    let (code, _) = p.call_as(&ci, "GET", "/api/v1/apps/web", Value::Null);
    assert_eq!(code, 200);
    let (code, list) = p.call_as(&ci, "GET", "/api/v1/apps", Value::Null);
    assert_eq!(code, 200);
    let names: Vec<&str> = list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["web"], "its list shows its app only");
    let build = p.api_get("/api/v1/apps/web")["builds"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, _) = p.call_as(&ci, "GET", &format!("/api/v1/builds/{build}"), Value::Null);
    assert_eq!(code, 200, "it reads its app's builds");

    // Everything else is a 403 naming the scope it lacks.
    let refused: &[(&str, &str, Value, &str)] = &[
        (
            "POST",
            "/api/v1/apps/api/deploys",
            Value::Null,
            "deploy:api",
        ),
        (
            "GET",
            "/api/v1/apps/api",
            Value::Null,
            "read (or deploy:api)",
        ),
        (
            "PUT",
            "/api/v1/apps/web/secrets",
            json!({"K": "v"}),
            "admin",
        ),
        (
            "POST",
            "/api/v1/apps/web/scale",
            json!({"count": 2}),
            "admin",
        ),
        ("DELETE", "/api/v1/apps/web", Value::Null, "admin"),
        (
            "POST",
            "/v1/apps/web/machines",
            json!({"config": {"image": "x"}}),
            "admin",
        ),
        ("GET", "/api/v1/tokens", Value::Null, "admin"),
        (
            "POST",
            "/api/v1/tokens",
            json!({"name": "x", "scope": "admin"}),
            "admin",
        ),
        ("GET", "/api/v1/audit", Value::Null, "admin"),
    ];
    for (method, path, body, scope) in refused {
        let (code, v) = p.call_as(&ci, method, path, body.clone());
        assert_eq!(code, 403, "{method} {path} with deploy:web: {v}");
        assert!(
            error_of(&v).contains(&format!("lacks the scope {scope}")),
            "{v}"
        );
    }

    // The read token reads the whole org and changes nothing.
    for path in ["/api/v1/apps", "/api/v1/apps/api", "/v1/apps/web/machines"] {
        let (code, v) = p.call_as(&reader, "GET", path, Value::Null);
        assert_eq!(code, 200, "{path}: {v}");
    }
    let (code, v) = p.call_as(&reader, "POST", "/api/v1/apps/web/rollback", json!({}));
    assert_eq!(code, 403, "{v}");
    assert!(error_of(&v).contains("deploy:web"), "{v}");
    let (code, _) = p.call_as(&reader, "DELETE", "/v1/apps/api", Value::Null);
    assert_eq!(code, 403);
    assert_eq!(
        p.api_get("/api/v1/apps")["apps"].as_array().unwrap().len(),
        2
    );

    // Secrets set by the admin: the audit log has the name, never the value.
    let out = p.hangar(&["secrets", "set", "web", "AUDIT_CANARY=hunter2-7d1c"]);
    assert!(out.status.success());

    // Revoked: refused at once, saying so.
    let out = p.hangar(&["tokens", "revoke", &ci_id]);
    assert!(out.status.success());
    let (code, v) = p.call_as(&ci, "GET", "/api/v1/apps/web", Value::Null);
    assert_eq!(code, 401, "{v}");
    assert!(error_of(&v).contains("revoked"), "{v}");
    // Expired: refused, saying so.
    let (code, v) = p.call(
        "POST",
        "/api/v1/tokens",
        json!({"name": "brief", "scope": "read", "expires_in_secs": 1}),
    );
    assert_eq!(code, 201, "{v}");
    let brief = v["token"].as_str().unwrap().to_owned();
    let (code, _) = p.call_as(&brief, "GET", "/api/v1/apps", Value::Null);
    assert_eq!(code, 200, "alive before it expires");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (code, v) = p.call_as(&brief, "GET", "/api/v1/apps", Value::Null);
    assert_eq!(code, 401, "{v}");
    assert!(error_of(&v).contains("expired"), "{v}");
    // Bad input is a 400 naming the field, never a 500.
    for body in [
        json!({"name": "x", "scope": "write"}),
        json!({"name": "", "scope": "read"}),
        json!({"name": "x", "scope": "read", "expires_in_secs": 0}),
        json!({"name": "x", "scope": "read", "expires_in_secs": u64::MAX}),
    ] {
        let (code, v) = p.call("POST", "/api/v1/tokens", body.clone());
        assert_eq!(code, 400, "{body}: {v}");
    }

    // The list shows every token without a secret.
    let raw = p.api_get("/api/v1/tokens");
    assert!(
        !raw.to_string().contains("hgr_"),
        "no secret in the list: {raw}"
    );
    let tokens: api::TokenList = serde_json::from_value(raw).expect("a token list");
    let ci_row = tokens.tokens.iter().find(|t| t.id == ci_id).unwrap();
    assert_eq!(ci_row.status, api::TokenStatus::Revoked);
    assert_eq!(ci_row.scope, "deploy:web");

    // The audit log: who did what, newest first.
    let raw = p.api_get("/api/v1/audit");
    assert!(!raw.to_string().contains("hunter2-7d1c"), "no secret value");
    let audit: api::AuditList = serde_json::from_value(raw).expect("an audit list");
    let find = |action: &str| {
        audit
            .entries
            .iter()
            .find(|e| e.action == action)
            .unwrap_or_else(|| panic!("no {action} in {audit:?}"))
            .clone()
    };
    let deploy = find("deploy");
    assert_eq!(deploy.token.id, ci_id, "the CI token deployed");
    assert_eq!(deploy.token.name, "CI");
    assert_eq!(deploy.app.as_deref(), Some("web"));
    assert!(deploy.summary.contains(&build));
    assert_eq!(find("secrets.set").summary, "AUDIT_CANARY");
    assert_eq!(find("token.revoke").target, ci_id);
    assert!(
        audit
            .entries
            .iter()
            .any(|e| e.action == "token.create" && e.summary == "CI (deploy:web)"),
        "{audit:?}"
    );
    assert_eq!(find("app.create").app.as_deref(), Some("api"));
    let ids: Vec<i64> = audit.entries.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    // No refused request is recorded as a change.
    assert!(
        audit.entries.iter().all(|e| e.action != "scale"),
        "{audit:?}"
    );
    // Only web's, through the CLI.
    let out = p.hangar(&["audit", "--app", "web"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("deploy") && text.contains("secrets.set"),
        "{text}"
    );
    assert!(
        !text.contains("app.create"),
        "api's entry is not web's: {text}"
    );
}

#[test]
fn fly_clients_may_send_their_flyv1_scheme() {
    let p = TestPlatform::start_with(&["--driver", "process"]);
    let (_, reader) = create_token(&p, &["--scope", "read", "--name", "fly"]);
    let (code, body) = p.api_request("GET", "/v1/apps", None, Vec::new());
    assert_eq!(code, 401, "{body}");
    let flyv1 = format!("FlyV1 {reader}");
    let (code, body) = p.api_request("GET", "/v1/apps", Some(&flyv1), Vec::new());
    assert_eq!(code, 200, "{body}");
    let (code, body) = p.api_request("POST", "/v1/apps", Some(&flyv1), b"{}".to_vec());
    assert_eq!(code, 403, "the scheme changes nothing of the scope: {body}");
}
