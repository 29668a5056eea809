//! Custom domains: a host an app adds is answered by that app at the edge
//! at once, by no other, and goes when it is removed or its app is
//! destroyed. HTTPS for them: https.rs.

mod support;

use hangar_api_types::hangar as api;
use serde_json::{Value, json};
use support::{TestPlatform, copy_example};

#[test]
fn a_custom_domain_reaches_its_app_and_only_while_it_is_added() {
    // runc: a second organisation is tried below (the process driver
    // serves one).
    let p = TestPlatform::start();
    let dir = tempfile::tempdir().unwrap();
    let app_dir = copy_example("hello", dir.path());
    let out = p.hangar(&["deploy", app_dir.to_str().unwrap(), "--app", "web"]);
    assert!(out.status.success());
    let (_, greeting) = p.get("web", "/");

    // Foreign before it is added.
    let (code, body) = p.get_host("www.example.test", "/");
    assert_eq!(code, 404, "{body}");

    let out = p.hangar(&["domains", "add", "web", "WWW.Example.test."]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("CNAME")
            && text.contains("www.example.test")
            && text.contains("web.localhost"),
        "the DNS record to create: {text}"
    );
    let (code, body) = p.get_host("www.example.test:80", "/");
    assert_eq!((code, &body), (200, &greeting), "the app answers for it");

    // Another org cannot take it, nor reach it through the API.
    let other = p.create_org("other");
    let (code, taken) = p.call_as(
        &other,
        "POST",
        "/api/v1/apps/theirs/domains",
        json!({"host": "www.example.test"}),
    );
    assert_eq!(code, 404, "their app does not exist yet: {taken}");
    let (code, _) = p.call_as(&other, "POST", "/v1/apps", json!({"name": "theirs"}));
    assert_eq!(code, 201);
    let (code, taken) = p.call_as(
        &other,
        "POST",
        "/api/v1/apps/theirs/domains",
        json!({"host": "www.example.test"}),
    );
    assert_eq!(code, 409, "{taken}");
    let (code, _) = p.call_as(&other, "GET", "/api/v1/apps/web/domains", Value::Null);
    assert_eq!(code, 404);

    // Bad hosts: a clear 4xx naming the rule.
    for (host, want) in [
        ("not a host", 400),
        ("localhost", 400),
        ("10.1.2.3", 400),
        ("app.localhost", 422),
    ] {
        let (code, body) = p.call("POST", "/api/v1/apps/web/domains", json!({ "host": host }));
        assert_eq!(code, want, "{host}: {body}");
    }

    // Listed, typed.
    let list: api::DomainList =
        serde_json::from_value(p.api_get("/api/v1/apps/web/domains")).unwrap();
    assert_eq!(list.domains.len(), 1);
    assert_eq!(list.domains[0].host, "www.example.test");
    assert_eq!(list.domains[0].dns[0].kind, "CNAME");

    // A restart keeps it.
    let mut p = p;
    p.restart();
    let (code, _) = p.get_host("www.example.test", "/");
    assert_eq!(code, 200, "routed again after a restart");

    // Removed: foreign again, at once.
    let out = p.hangar(&["domains", "remove", "web", "www.example.test"]);
    assert!(out.status.success());
    let (code, _) = p.get_host("www.example.test", "/");
    assert_eq!(code, 404);

    // Destroying the app takes its domains with it: the name is free.
    let out = p.hangar(&["domains", "add", "web", "api.example.test"]);
    assert!(out.status.success());
    let out = p.hangar(&["destroy", "web", "--yes"]);
    assert!(out.status.success());
    let (code, _) = p.get_host("api.example.test", "/");
    assert_eq!(code, 404);
    let (code, body) = p.call_as(
        &other,
        "POST",
        "/api/v1/apps/theirs/domains",
        json!({"host": "api.example.test"}),
    );
    assert_eq!(code, 201, "free again: {body}");
    let (code, _) = p.get_host("api.example.test", "/");
    assert_ne!(code, 200, "theirs has no machine to answer");

    // Each change is in the audit log.
    let audit: api::AuditList = serde_json::from_value(p.api_get("/api/v1/audit")).unwrap();
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert!(
        actions.contains(&"domain.add") && actions.contains(&"domain.remove"),
        "{actions:?}"
    );
}
