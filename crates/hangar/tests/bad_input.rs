//! The API refuses bad input with a clear 4xx and writes nothing it should not.

mod support;

use support::{TestPlatform, raw_targz};
use tar::EntryType as T;

fn deploys(app: &str) -> String {
    format!("/api/v1/apps/{app}/deploys")
}

#[test]
fn bad_input_gets_clear_4xx_answers() {
    // Upload cap of 1 MiB for this platform. The process driver: nothing
    // here starts a machine, so this test needs neither root nor runc.
    let p = TestPlatform::start_with(&["--driver", "process", "--max-upload-bytes", "1048576"]);
    let token = p.token.clone();
    let ok_archive = raw_targz(&[("Cargo.toml", T::Regular, b"[package]\nname = \"x\"\n", None)]);

    // No token, a wrong token → 401.
    let (code, body) = p.api_request("POST", &deploys("app"), None, ok_archive.clone());
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("missing bearer token"), "{body}");
    let (code, body) = p.api_request("GET", "/api/v1/apps", Some("hgr_wrong"), vec![]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("invalid token"), "{body}");

    // The router's own refusals are JSON errors too: an unknown route, a
    // wrong method, a query or path
    // that does not parse.
    let json_error = |method: &str, path: &str, want: u16| {
        let (code, body) = p.api_request(method, path, Some(&token), vec![]);
        assert_eq!(code, want, "{method} {path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body:?}"));
        let error = v["error"].as_str().unwrap_or_default().to_owned();
        assert!(!error.is_empty(), "{method} {path}: {body}");
        error
    };
    json_error("GET", "/api/v1/nowhere", 404);
    let wrong = json_error("PATCH", "/api/v1/apps", 405);
    assert!(wrong.contains("method not allowed"), "{wrong}");
    json_error("GET", "/api/v1/audit?limit=many", 400);
    json_error("GET", "/api/v1/apps/x/logs?follow=perhaps", 400);

    // An invalid app name → 400 naming the rule.
    for bad in ["Bad_Name", "-x", "a.b"] {
        let (code, body) = p.api_request("POST", &deploys(bad), Some(&token), ok_archive.clone());
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body.contains("DNS label"), "{body}");
    }

    // Hostile archives → 400, and nothing written outside the data dir.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            raw_targz(&[("../evil", T::Regular, b"pwned", None)]),
            "'..'",
        ),
        (
            raw_targz(&[("/tmp/hangar-evil-abs", T::Regular, b"pwned", None)]),
            "absolute",
        ),
        (
            raw_targz(&[("link", T::Symlink, b"", Some("/etc/passwd"))]),
            "outside",
        ),
        (
            raw_targz(&[("up", T::Symlink, b"", Some("../../.."))]),
            "outside",
        ),
        (
            raw_targz(&[("dev", T::Char, b"", None)]),
            "character device",
        ),
        (b"this is not a tarball".to_vec(), "not a valid tar"),
    ];
    for (archive, needle) in cases {
        let (code, body) = p.api_request("POST", &deploys("evil"), Some(&token), archive);
        assert_eq!(code, 400, "{body}");
        assert!(body.contains(needle), "expected {needle:?} in {body}");
    }
    assert!(!p.dir.path().join("evil").exists());
    assert!(!p.data_dir().join("evil").exists());
    assert!(!std::path::Path::new("/tmp/hangar-evil-abs").exists());
    // A refused upload leaves no app, build or stored source behind.
    assert_eq!(p.api_get("/api/v1/apps")["apps"], serde_json::json!([]));
    let sources = std::fs::read_dir(p.data_dir().join("sources"))
        .unwrap()
        .count();
    assert_eq!(sources, 0);

    // An oversize upload → 413.
    let big = vec![7u8; 2 * 1024 * 1024];
    let (code, body) = p.api_request("POST", &deploys("big"), Some(&token), big);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("1048576 bytes"), "{body}");

    // Unknown app / build → 404, not 500.
    let (code, _) = p.api_request("GET", "/api/v1/apps/nope", Some(&token), vec![]);
    assert_eq!(code, 404);
    let (code, _) = p.api_request("GET", "/api/v1/builds/bld_nope/log", Some(&token), vec![]);
    assert_eq!(code, 404);

    // The CLI refuses a directory that is not a cargo project, clearly.
    let tmp = tempfile::tempdir().unwrap();
    let out = p.hangar(&["deploy", tmp.path().to_str().unwrap(), "--app", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Cargo.toml"));
}
