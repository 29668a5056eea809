//! The API contract, walked from the OpenAPI document the server serves:
//! every operation × every token scope. A scope that lacks what an
//! operation needs gets a 403 naming the scope; one that has it gets past
//! the guard (its answer is the handler's, never 401 or 403). What each
//! scope may do is written here from the rules in the README, not taken
//! from the server's own table, so a route added without its rule fails.

mod support;

use serde_json::{Value, json};
use support::TestPlatform;

/// Scopes tried, by name.
const SCOPES: [&str; 3] = ["admin", "read", "deploy:web"];

/// Whether `scope` may call `method path` (path as the document writes it).
fn allowed(scope: &str, method: &str, path: &str) -> bool {
    let read = method == "get";
    let org_wide_admin = ["/api/v1/tokens", "/api/v1/tokens/{id}", "/api/v1/audit"];
    match scope {
        "admin" => true,
        "read" => read && !org_wide_admin.contains(&path),
        "deploy:web" => {
            if read {
                // Reads of its app, its app's builds, and lists (filtered).
                path.contains("{app}")
                    || ["/api/v1/apps", "/v1/apps"].contains(&path)
                    || path.starts_with("/api/v1/builds/")
            } else {
                [
                    "/api/v1/apps/{app}/deploys",
                    "/api/v1/apps/{app}/rollback",
                    "/api/v1/builds/{id}/cancel",
                ]
                .contains(&path)
            }
        }
        _ => false,
    }
}

/// `path` with its parameters filled with objects that do not exist (so
/// an allowed call changes nothing), in app `app`.
fn fill(path: &str, app: &str) -> String {
    path.replace("{app}", app)
        .replace("{id}", "ghost_1")
        .replace("{key}", "k")
        .replace("{name}", "S")
        .replace("{host}", "ghost.example")
}

#[test]
fn every_operation_answers_each_scope_as_the_scope_says() {
    let p = TestPlatform::start_with(&["--driver", "process"]);
    let (code, doc) = p.call_as("", "GET", "/openapi.json", Value::Null);
    assert_eq!(code, 200, "the document needs no token");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut tokens = std::collections::BTreeMap::new();
    tokens.insert("admin", p.token.clone());
    for scope in ["read", "deploy:web"] {
        let (code, t) = p.call(
            "POST",
            "/api/v1/tokens",
            json!({"name": scope, "scope": scope}),
        );
        assert_eq!(code, 201, "{t}");
        tokens.insert(scope, t["token"].as_str().unwrap().to_owned());
    }

    let mut operations = 0;
    let mut mutating = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            operations += 1;
            if path == "/api/v1/health" {
                continue;
            }
            if method != "get" {
                mutating += 1;
            }
            // Every org operation documents the guard's answers.
            for status in ["401", "403"] {
                assert!(
                    op["responses"].get(status).is_some(),
                    "{method} {path} does not document {status}"
                );
            }
            for scope in SCOPES {
                // The deploy token is tried on its own app; the others on
                // an app that does not exist.
                let app = if scope == "deploy:web" {
                    "web"
                } else {
                    "ghost-app"
                };
                let url = fill(path, app);
                let body = if method == "get" || method == "delete" {
                    Vec::new()
                } else {
                    b"{}".to_vec()
                };
                let (code, answer) =
                    p.api_request(&method.to_uppercase(), &url, Some(&tokens[scope]), body);
                let what = format!("{} {url} with {scope}", method.to_uppercase());
                assert!(
                    !answer.contains("no such API route"),
                    "{what}: the document names a route the router lacks: {answer}"
                );
                if allowed(scope, method, path) {
                    assert!(
                        code != 401 && code != 403,
                        "{what}: refused ({code}) though its scope allows it: {answer}"
                    );
                    assert!(code < 500, "{what}: {code} {answer}");
                } else {
                    assert_eq!(code, 403, "{what}: {answer}");
                    assert!(answer.contains("lacks the scope"), "{what}: {answer}");
                }
            }
        }
    }
    // The document covers Hangar's API and the Machines API.
    assert!(operations >= 50, "only {operations} operations documented");
    assert!(
        mutating >= 30,
        "only {mutating} mutating operations documented"
    );
    // And nothing above changed anything: only the two tokens were made.
    let audit = p.api_get("/api/v1/audit");
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["token.create", "token.create"], "{audit}");
}
