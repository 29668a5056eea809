//! HTTPS at the edge against a real ACME server (Pebble): certificates
//! ordered for custom domains and, on demand, for apps' own names; HTTP/2;
//! the redirect; unknown names refused without an order; certificates
//! kept across a restart; a forced renewal under load; an uploaded
//! certificate chosen by SNI beside ACME ones; HSTS. And the API over
//! TLS, trusted by a pinned fingerprint, deploying.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::tls::{HttpsAnswer, Pebble, client_config, connect, https_get};
use support::{TestPlatform, copy_example, wait_for};

/// Logs the CLI in trusting `root` (as a user would their private CA's:
/// apps' URLs are https, and a deploy checks it is live there), then
/// deploys `app_dir` as `app`: what the deploy printed.
fn login_trusting_and_deploy(
    p: &TestPlatform,
    dir: &Path,
    root: &str,
    app_dir: &Path,
    app: &str,
) -> std::process::Output {
    let root_file = dir.join("pebble-root.pem");
    std::fs::write(&root_file, root).unwrap();
    let (api, token) = (p.api_url(), p.admin_token());
    let login = [
        "login",
        "--api",
        &api,
        "--token",
        &token,
        "--ca-cert",
        root_file.to_str().unwrap(),
    ];
    assert!(p.hangar(&login).status.success());
    let out = p.hangar(&["deploy", app_dir.to_str().unwrap(), "--app", app]);
    assert!(out.status.success(), "deploy");
    out
}

/// Waits for `host` to answer 200 over HTTPS, verified against `roots`.
fn wait_https(port: u16, host: &str, roots: &[String], secs: u64) -> HttpsAnswer {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let last = match https_get(port, host, "/", roots, true) {
            Ok(a) if a.status == 200 => return a,
            Ok(a) => format!("{} {}", a.status, a.body),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{host} did not answer over verified HTTPS within {secs} s: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Orders the platform started, judging by its log.
fn orders(p: &TestPlatform) -> usize {
    p.hangar_log().matches("ordering a certificate").count()
}

/// A test CA's certificate for `host`: (CA PEM, chain PEM, key PEM).
fn uploaded_pair(host: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "a user's own CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.as_ref().pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn certificates_from_a_real_acme_server_serve_https_and_survive_renewal_and_restart() {
    let ports = support::tls::distinct_ports(2, &[]);
    let (http_port, tls_port) = (ports[0], ports[1]);
    let pebble = Pebble::start(http_port, tls_port);
    let proxy = format!("127.0.0.1:{http_port}");
    let tls = format!("127.0.0.1:{tls_port}");
    let ca_root = pebble.ca_root.to_str().unwrap().to_owned();
    // Outlives the platform: its CLI reads the root in the file at the end.
    let dir = tempfile::tempdir().unwrap();
    let mut p = TestPlatform::start_logging(
        &[
            "--proxy-listen",
            &proxy,
            "--tls-listen",
            &tls,
            "--acme-directory",
            &pebble.directory,
            "--acme-ca-root",
            &ca_root,
            "--acme-email",
            "ops@example.test",
            "--acme-renew-check-secs",
            "1",
        ],
        "warn,hangar_tls=info",
    );
    let app_dir = copy_example("hello", dir.path());
    // Apps' URLs are https now: the CLI checks a deploy is live there,
    // trusting Pebble's root as a user would their private CA's.
    let roots = [pebble.issuing_root()];
    let out = login_trusting_and_deploy(&p, dir.path(), &roots[0], &app_dir, "web");
    assert!(String::from_utf8_lossy(&out.stdout).contains("is live at https://web.localhost:"));

    // A custom domain: ordered at once, served verified, over HTTP/2.
    let added = Instant::now();
    let out = p.hangar(&["domains", "add", "web", "www.example.test"]);
    assert!(out.status.success());
    let first = wait_https(tls_port, "www.example.test", &roots, 30);
    println!(
        "FIGURE: domains add -> first verified HTTPS answer: {:.2} s",
        added.elapsed().as_secs_f64()
    );
    let greeting = first.body.clone();
    assert!(greeting.starts_with("Hello"), "{greeting}");
    assert_eq!(first.alpn.as_deref(), Some("h2"), "HTTP/2 negotiated");
    assert!(first.issuer.contains("Pebble"), "{}", first.issuer);
    assert!(
        first.headers.get("strict-transport-security").is_none(),
        "HSTS is opt-in"
    );
    let h1 = https_get(tls_port, "www.example.test", "/", &roots, false).unwrap();
    assert_eq!((h1.status, h1.alpn.as_deref()), (200, Some("http/1.1")));
    assert_eq!(h1.serial, first.serial);
    let list = String::from_utf8_lossy(&p.hangar(&["domains", "list", "web"]).stdout).into_owned();
    assert!(
        list.contains("www.example.test") && list.contains("issued by") && list.contains("Pebble"),
        "{list}"
    );

    // Plain HTTP for it goes to https, except ACME's challenges.
    let (code, _) = p.get_host("www.example.test", "/x?y=1");
    assert_eq!(code, 308);
    let (code, _) = p.get_host("www.example.test", "/.well-known/acme-challenge/unknown");
    assert_eq!(code, 404, "a challenge path is answered, never redirected");
    let (code, body) = p.get_host("unknown.example.test", "/");
    assert_eq!(code, 404, "no certificate, no redirect: {body}");

    // The app's own name got one at its first handshake (the deploy's
    // check that it is live).
    assert!(
        p.hangar_log()
            .contains("certificate issued host=web.localhost")
            || orders(&p) >= 2
    );
    let own = wait_https(tls_port, "web.localhost", &roots, 30);
    assert_eq!(own.body, greeting);
    assert_ne!(own.serial, first.serial);
    let (code, _) = p.get("web", "/");
    assert_eq!(code, 308, "its plain HTTP goes to https too");

    // Names nobody added are refused at once and order nothing.
    let before = orders(&p);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let slowest = rt.block_on(async {
        let cfg = client_config(&roots, true);
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (cfg, next) = (cfg.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= 10_000 {
                        return slowest;
                    }
                    // Half outside any domain, half unknown apps' names.
                    let host = if n % 2 == 0 {
                        format!("r{n}x.example.test")
                    } else {
                        format!("nobody{n}.localhost")
                    };
                    let started = Instant::now();
                    let refused = connect(tls_port, &host, cfg.clone()).await;
                    slowest = slowest.max(started.elapsed());
                    assert!(refused.is_err(), "{host} was served");
                }
            }));
        }
        let mut slowest = Duration::ZERO;
        for t in tasks {
            slowest = slowest.max(t.await.unwrap());
        }
        slowest
    });
    println!("FIGURE: 10,000 unknown SNIs refused, slowest {slowest:?}");
    assert_eq!(orders(&p), before, "10,000 unknown names caused no order");
    let started = Instant::now();
    assert!(
        rt.block_on(connect(
            tls_port,
            "stranger.example.test",
            client_config(&roots, true)
        ))
        .is_err()
    );
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "an unknown name is refused in under 50 ms: {:?}",
        started.elapsed()
    );

    // An uploaded certificate, chosen by SNI beside the ACME ones.
    let (user_ca, chain, key) = uploaded_pair("shop.example.test");
    let files = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (files.path().join("c.pem"), files.path().join("k.pem"));
    std::fs::write(&cert_file, &chain).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let out = p.hangar(&[
        "domains",
        "add",
        "web",
        "other.example.test",
        "--cert",
        cert_file.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success(),
        "a certificate for another name is refused"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not other.example.test"));
    let out = p.hangar(&[
        "domains",
        "add",
        "web",
        "shop.example.test",
        "--cert",
        cert_file.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let shop = wait_https(
        tls_port,
        "shop.example.test",
        std::slice::from_ref(&user_ca),
        10,
    );
    assert!(shop.issuer.contains("a user's own CA"), "{}", shop.issuer);
    let www = https_get(tls_port, "www.example.test", "/", &roots, true).unwrap();
    assert_eq!(www.serial, first.serial, "the ACME one beside it");

    // HSTS once the app asks for it.
    assert!(p.hangar(&["domains", "hsts", "web", "on"]).status.success());
    let hsts = https_get(tls_port, "www.example.test", "/", &roots, true).unwrap();
    assert_eq!(
        hsts.headers
            .get("strict-transport-security")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("max-age=31536000".to_owned())
    );

    // A forced renewal under load: nothing fails, a connection up before
    // keeps its certificate, new handshakes get the new one.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, failures, served, roots) = (
            stop.clone(),
            failures.clone(),
            served.clone(),
            roots.clone(),
        );
        load.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match https_get(tls_port, "www.example.test", "/", &roots, true) {
                    Ok(a) if a.status == 200 => served.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed under renewal: {other:?}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // One connection kept alive across the swap.
    let kept = {
        let (stop, roots) = (stop.clone(), roots.clone());
        std::thread::spawn(move || kept_alive(tls_port, "www.example.test", &roots, &stop))
    };
    std::thread::sleep(Duration::from_millis(500));
    let out = p.hangar(&["domains", "renew", "web", "www.example.test"]);
    assert!(out.status.success(), "renew");
    let renewed = wait_for(10, "new handshakes to get the new certificate", || {
        let a = https_get(tls_port, "www.example.test", "/", &roots, true).ok()?;
        (a.serial != first.serial).then_some(a)
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let (kept_serial, kept_requests, kept_failures) = kept.join().unwrap();
    println!(
        "FIGURE: renewal under load: {} requests on new connections, {} on one kept-alive, {} failed",
        served.load(Ordering::Relaxed),
        kept_requests,
        failures.load(Ordering::Relaxed) + kept_failures
    );
    assert_eq!(failures.load(Ordering::Relaxed) + kept_failures, 0);
    assert!(served.load(Ordering::Relaxed) > 0 && kept_requests > 0);
    assert_eq!(
        kept_serial, first.serial,
        "the connection up kept its certificate"
    );

    // A restart serves what it had and orders nothing.
    let issued = pebble.issued();
    let before = orders(&p);
    p.restart();
    let again = wait_https(tls_port, "www.example.test", &roots, 20);
    assert_eq!(again.serial, renewed.serial);
    let own_again = https_get(tls_port, "web.localhost", "/", &roots, true).unwrap();
    assert_eq!(own_again.serial, own.serial);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pebble.issued(),
        issued,
        "no new certificate after a restart"
    );
    assert_eq!(orders(&p), before, "no new order after a restart");

    // Removing the domain stops serving it.
    assert!(
        p.hangar(&["domains", "remove", "web", "www.example.test"])
            .status
            .success()
    );
    assert!(https_get(tls_port, "www.example.test", "/", &roots, true).is_err());
}

/// Requests on one HTTPS connection until `stop`: (its certificate's
/// serial, requests answered 200, requests failed).
fn kept_alive(
    port: u16,
    host: &str,
    roots: &[String],
    stop: &AtomicBool,
) -> (String, usize, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use http_body_util::{BodyExt, Empty};
        let tls = connect(port, host, client_config(roots, false))
            .await
            .unwrap();
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let serial = hangar_tls::certs::inspect(&leaf).unwrap().serial;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let req = http::Request::get("/")
                .header(http::header::HOST, host)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            match send.send_request(req).await {
                Ok(resp) if resp.status() == 200 => {
                    let _ = resp.into_body().collect().await;
                    ok += 1;
                }
                _ => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (serial, ok, failed)
    })
}

#[test]
fn the_cli_deploys_over_https_to_an_api_it_trusts_by_fingerprint() {
    let p = TestPlatform::start_with(&["--api-tls"]);
    let line = p
        .stdout_lines()
        .into_iter()
        .find_map(|l| {
            l.strip_prefix("hangar: API certificate (self-signed) fingerprint ")
                .map(str::to_owned)
        })
        .expect("hangar up prints the API's fingerprint");
    let api = p.api_url();
    assert!(api.starts_with("https://"), "{api}");
    let token = p.admin_token();
    let dir = tempfile::tempdir().unwrap();
    let app_dir = copy_example("hello", dir.path());

    // Without the pin, the self-signed certificate is not trusted.
    let cfg = dir.path().join("cli.json");
    let cli = |args: &[&str]| p.hangar_with_config(&cfg, args);
    assert!(
        cli(&["login", "--api", &api, "--token", &token])
            .status
            .success()
    );
    let out = cli(&["apps"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A wrong pin is refused, naming both.
    let wrong = format!("sha256:{}", "00".repeat(32));
    assert!(
        cli(&[
            "login",
            "--api",
            &api,
            "--token",
            &token,
            "--fingerprint",
            &wrong
        ])
        .status
        .success()
    );
    let out = cli(&["apps"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the one pinned"));

    // The printed pin: the CLI deploys over HTTPS.
    assert!(
        cli(&[
            "login",
            "--api",
            &api,
            "--token",
            &token,
            "--fingerprint",
            &line
        ])
        .status
        .success()
    );
    let out = cli(&["deploy", app_dir.to_str().unwrap(), "--app", "pinned"]);
    assert!(out.status.success(), "deploy over HTTPS");
    let (code, _) = p.get("pinned", "/");
    assert_eq!(code, 200);
    let out = cli(&["destroy", "pinned", "--yes"]);
    assert!(out.status.success());
}

#[test]
fn tls_alpn_01_proves_a_name_on_the_tls_port_and_a_failed_order_says_why() {
    let ports = support::tls::distinct_ports(3, &[]);
    let (http_port, tls_port, closed) = (ports[0], ports[1], ports[2]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = format!("127.0.0.1:{http_port}");
    let tls = format!("127.0.0.1:{tls_port}");
    // Pebble validates TLS-ALPN-01 on Hangar's TLS port; HTTP-01 on a port
    // nobody listens on, so a platform that used it would fail.
    let pebble = Pebble::start(closed, tls_port);
    let ca_root = pebble.ca_root.to_str().unwrap().to_owned();
    let p = TestPlatform::start_with(&[
        "--proxy-listen",
        &proxy,
        "--tls-listen",
        &tls,
        "--acme-directory",
        &pebble.directory,
        "--acme-ca-root",
        &ca_root,
        "--acme-challenge",
        "tls-alpn-01",
    ]);
    let app_dir = copy_example("hello", dir.path());
    let roots = [pebble.issuing_root()];
    login_trusting_and_deploy(&p, dir.path(), &roots[0], &app_dir, "alpn");
    assert!(
        p.hangar(&["domains", "add", "alpn", "alpn.example.test"])
            .status
            .success()
    );
    let got = wait_https(tls_port, "alpn.example.test", &roots, 30);
    assert!(got.issuer.contains("Pebble"), "{}", got.issuer);
    assert!(got.body.starts_with("Hello"), "{}", got.body);
    drop(pebble);

    // With the CA gone, an order fails: the list says why and when next.
    assert!(
        p.hangar(&["domains", "add", "alpn", "later.example.test"])
            .status
            .success()
    );
    let list = wait_for(30, "the failed order in the list", || {
        let out = p.hangar(&["domains", "list", "alpn"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("failed:").then_some(text)
    });
    assert!(list.contains("next try"), "{list}");
    let out = p.hangar(&["destroy", "alpn", "--yes"]);
    assert!(out.status.success());
    // The destroyed app's certificate leaves the edge with it.
    assert!(https_get(tls_port, "alpn.example.test", "/", &roots, true).is_err());
}
