//! Hostile clients against the one hangar process every tenant shares:
//! thousands of silent connections to the API and to the proxy must not
//! take the platform from anyone else (issue 13).

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{TestPlatform, example};

/// Opens `n` connections to `to` from `from` (another loopback address,
/// so the caps per client see one hostile client) and sends nothing.
fn silent_connections(from: &str, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    use std::os::fd::FromRawFd;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        // In batches, so the listen backlog never overflows (the kernel
        // would drop those without telling the client).
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let local: SocketAddr = format!("{from}:0").parse().unwrap();
        socket
            .bind(&local.into())
            .expect("binding a loopback source address");
        if socket.connect(&to.into()).is_ok() {
            // SAFETY: into_raw_fd hands over the only owner of the fd.
            held.push(unsafe {
                TcpStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(socket))
            });
        }
    }
    held
}

/// How many of `conns` the server has closed (EOF within `wait`).
fn closed(conns: &mut [TcpStream], wait: Duration) -> usize {
    let mut n = 0;
    for c in conns {
        c.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => n += 1,
            _ => {}
        }
    }
    n
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn three_thousand_silent_connections_take_nothing_from_other_clients() {
    let p = TestPlatform::start();
    p.deploy(&example("hello"));
    let api: SocketAddr = p.api.trim_start_matches("http://").parse().unwrap();
    let proxy: SocketAddr = format!("127.0.0.1:{}", p.proxy_port).parse().unwrap();
    let fds_before = open_fds(p.pid());

    let mut on_api = silent_connections("127.0.0.2", api, 3000);
    let mut on_proxy = silent_connections("127.0.0.3", proxy, 3000);
    assert!(
        on_api.len() > 2000 && on_proxy.len() > 2000,
        "the kernel took the connections"
    );

    // Everyone else is served, at once.
    let t = Instant::now();
    let apps = p.api_get("/api/v1/apps");
    let api_took = t.elapsed();
    assert!(apps.to_string().contains("hello"), "{apps}");
    let t = Instant::now();
    let (code, body) = p.get("hello", "/");
    let proxy_took = t.elapsed();
    assert_eq!(code, 200, "{body}");
    eprintln!("with 3,000 + 3,000 silent connections: API {api_took:?}, app {proxy_took:?}");
    assert!(api_took < Duration::from_secs(1), "API took {api_took:?}");
    assert!(
        proxy_took < Duration::from_secs(1),
        "app took {proxy_took:?}"
    );

    // Past its cap, the hostile client's connections were closed; hangar
    // holds a bounded number of descriptors, and of memory, for it.
    let rss = p.rss_kb();
    eprintln!("hangar RSS with the silent connections held: {rss} KiB");
    assert!(rss < 256 * 1024, "hangar's RSS is {rss} KiB");
    let fds = open_fds(p.pid());
    assert!(
        fds < fds_before + 256 + 512 + 100,
        "hangar holds {fds} descriptors (it had {fds_before})"
    );
    let refused_api = closed(&mut on_api[2500..], Duration::from_millis(200));
    let refused_proxy = closed(&mut on_proxy[2500..], Duration::from_millis(200));
    eprintln!("closed at once, of the last 500: API {refused_api}, proxy {refused_proxy}");
    assert!(
        refused_api >= 450,
        "API connections past the per-client cap are closed: {refused_api} of 500"
    );
    assert!(
        refused_proxy >= 450,
        "proxy connections past the per-client cap are closed: {refused_proxy} of 500"
    );

    // The admitted silent ones are closed at the API's header deadline.
    let timed_out = closed(&mut on_api[..10], Duration::from_secs(20));
    assert_eq!(
        timed_out, 10,
        "silent API connections outlived the header timeout"
    );
    drop(on_api);
    drop(on_proxy);
    let (code, _) = p.get("hello", "/");
    assert_eq!(code, 200);
}

/// A `.tar.gz` of one extension header of `kind` claiming `claimed` bytes,
/// followed by 10 MiB of `a`: about 10 KiB on the wire.
fn lying_header(kind: tar::EntryType, claimed: u64) -> Vec<u8> {
    use std::io::Write as _;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(claimed);
    h.set_path("././@LongLink").unwrap();
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(h.as_bytes()).unwrap();
    gz.write_all(&vec![b'a'; 10 << 20]).unwrap();
    gz.finish().unwrap()
}

#[test]
fn hostile_archives_leave_hangar_up_small_and_deploying() {
    use tar::EntryType as T;
    let p = TestPlatform::start();
    let rss_before = p.rss_kb();
    let deploy = |archive: Vec<u8>| {
        p.api_request("POST", "/api/v1/apps/evil/deploys", Some(&p.token), archive)
    };
    // Extension headers claiming 10 GiB (40 GiB for a global one): refused
    // on the claim, nothing of it held in memory or written.
    for (kind, claimed, what) in [
        (T::GNULongName, 10u64 << 30, "GNU long name"),
        (T::GNULongLink, 10 << 30, "GNU long link"),
        (T::XHeader, 10 << 30, "PAX"),
        (T::XGlobalHeader, 40 << 30, "PAX global"),
        (T::XHeader, 100 << 20, "PAX of 100 MiB"),
    ] {
        let archive = lying_header(kind, claimed);
        assert!(archive.len() < 64 << 10, "{} bytes", archive.len());
        let (code, body) = deploy(archive);
        // Refused on its claim: by the archive's size cap when the claim
        // passes it, by the 64 KiB cap on header bodies otherwise.
        assert_eq!(code, 413, "{what}: {body}");
        assert!(body.contains("refused"), "{what}: {body}");
    }
    // A link chain that resolves out of the tree through its own links.
    let chain = support::raw_targz(&[
        (
            "Cargo.toml",
            T::Regular,
            b"[package]\nname = \"evil\"\n",
            None,
        ),
        ("a", T::Symlink, b"", Some(".")),
        ("x", T::Symlink, b"", Some("a/a/a/../../../../etc/hostname")),
    ]);
    let (code, body) = deploy(chain);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("outside"), "{body}");

    // Hangar is up, small, and kept nothing.
    let rss_after = p.rss_kb();
    eprintln!("hangar RSS: {rss_before} KiB before the hostile archives, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "hangar grew from {rss_before} to {rss_after} KiB"
    );
    for dir in ["uploads", "sources"] {
        let left = std::fs::read_dir(p.data_dir().join(dir)).unwrap().count();
        assert_eq!(left, 0, "{dir}/ kept {left} files");
    }
    assert_eq!(p.api_get("/api/v1/apps")["apps"], serde_json::json!([]));
    // And the next legitimate deploy and request work.
    let out = p.deploy(&example("hello"));
    assert!(out.contains("is live"), "{out}");
    assert_eq!(p.get("hello", "/").0, 200);
}

#[test]
fn a_source_nested_too_deeply_fails_its_build_not_hangar() {
    let p = TestPlatform::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = support::copy_example("hello", tmp.path());
    // Not even compiled (no `mod deep;`), but scanned for resources.
    let depth = 100_000;
    let deep = format!(
        "pub fn f() -> i32 {{ {}1{} }}\n",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    std::fs::write(dir.join("src/deep.rs"), deep).unwrap();
    let out = p.hangar(&["deploy", dir.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("nests expressions or types too deeply"),
        "{text}"
    );
    // Hangar is up, and the next deploy of the same app works.
    std::fs::remove_file(dir.join("src/deep.rs")).unwrap();
    p.deploy(&dir);
    let (code, body) = p.get("hello", "/");
    assert_eq!(code, 200, "{body}");
}

/// Bytes of all of an app's log files.
fn app_log_bytes(p: &TestPlatform, app: &str) -> u64 {
    std::fs::read_dir(p.data_dir().join("logs").join(app))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_chatty_app_is_kept_under_its_log_cap_and_rate() {
    let p = TestPlatform::start_with(&[
        "--driver",
        "runc",
        "--app-log-max-mb",
        "1",
        "--app-log-rate-kb",
        "256",
    ]);
    p.deploy(&example("toolbox"));
    let (code, m) = p.call(
        "POST",
        "/v1/apps/toolbox/machines",
        serde_json::json!({"config": {"image": "toolbox:v1", "init": {"cmd": ["spam"]},
                                      "guest": {"memory_mb": 64}}}),
    );
    assert_eq!(code, 200, "{m}");
    // About 1 MiB a second for 8 s: 8 MiB written, 256 KiB a second kept,
    // and at most the cap plus about a second's worth of that on disk.
    let mut most = 0;
    for _ in 0..16 {
        std::thread::sleep(Duration::from_millis(500));
        most = most.max(app_log_bytes(&p, "toolbox"));
    }
    eprintln!("toolbox logs: at most {most} bytes on disk while writing ~8 MiB");
    assert!(
        most <= (1 << 20) + (3 << 19),
        "{most} bytes of logs for a 1 MiB cap"
    );
    // What is shown is the newest output.
    let out = p.hangar(&["logs", "toolbox"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let last: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("spam ")?.get(..10)?.parse().ok())
        .max()
        .expect("spam lines in the logs");
    assert!(
        last > 4 * 1024,
        "the newest lines, not the first ones: {last}"
    );
    // Each second past the rate says what it dropped.
    let dir = p.data_dir().join("logs").join("toolbox");
    let notes: usize = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let text =
                String::from_utf8_lossy(&std::fs::read(e.path()).unwrap_or_default()).into_owned();
            text.lines()
                .filter(|l| {
                    l.starts_with("[hangar] ")
                        && l.ends_with(
                            "bytes of output dropped: over the log rate limit of 256 KiB/s",
                        )
                })
                .count()
        })
        .sum();
    assert!(notes >= 1, "no rate-limit note in the kept logs");
}

/// A deploy upload to `app` announcing 1 MiB of which only `first` is
/// sent; the connection stays open.
fn start_upload(p: &TestPlatform, app: &str, first: &[u8]) -> TcpStream {
    let addr: SocketAddr = p
        .api
        .trim_start_matches("http://")
        .parse()
        .expect("the API's address");
    let mut conn = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /api/v1/apps/{app}/deploys HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/gzip\r\nContent-Length: 1048576\r\n\r\n",
        p.token
    );
    std::io::Write::write_all(&mut conn, head.as_bytes()).unwrap();
    std::io::Write::write_all(&mut conn, first).unwrap();
    conn
}

/// Reads what the server sends on `conn` until it closes (at most 60 s):
/// the answer, and how long after `since` it closed.
fn answer_until_closed(conn: &mut TcpStream, since: Instant) -> (String, Duration) {
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        since.elapsed(),
    )
}

#[test]
fn request_bodies_that_stop_arriving_are_abandoned_and_leave_no_file() {
    support::require_runc_and_root();
    let p = TestPlatform::start_with(&["--driver", "runc", "--api-body-progress-secs", "3"]);
    // An upload announcing 1 MiB sends 10 bytes, then nothing.
    let mut conn = start_upload(&p, "trickle", &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
    let (answer, took) = answer_until_closed(&mut conn, Instant::now());
    eprintln!("a stalled upload was answered after {took:?}: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("stopped arriving: no byte for 3 s"),
        "{answer}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let left: Vec<_> = std::fs::read_dir(p.data_dir().join("uploads"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "the stalled upload left {left:?}");

    // So does a small JSON body (read whole by its handler): 40 bytes
    // announced, 12 sent.
    let addr: SocketAddr = p.api.trim_start_matches("http://").parse().unwrap();
    let mut conn = TcpStream::connect(addr).unwrap();
    let head = format!(
        "PUT /api/v1/apps/trickle/secrets HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"NAME\": \"va",
        p.token
    );
    std::io::Write::write_all(&mut conn, head.as_bytes()).unwrap();
    let (answer, took) = answer_until_closed(&mut conn, Instant::now());
    eprintln!("a stalled JSON body was answered after {took:?}: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Nothing was set, and the API answers everyone else.
    let (code, body) = p.call(
        "GET",
        "/api/v1/apps/trickle/secrets",
        serde_json::Value::Null,
    );
    assert!(
        code == 404 || !body.to_string().contains("NAME"),
        "{code} {body}"
    );
    let apps = p.api_get("/api/v1/apps");
    assert!(apps.is_object(), "{apps}");
}

#[test]
fn one_org_checks_at_most_two_uploads_at_once() {
    support::require_runc_and_root();
    let p = TestPlatform::start();
    // Two uploads that are still arriving hold the org's two places.
    let held = [
        start_upload(&p, "one", &[0x1f, 0x8b]),
        start_upload(&p, "two", &[0x1f, 0x8b]),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let (code, body) = p.api_request(
        "POST",
        "/api/v1/apps/three/deploys",
        Some(&p.token),
        vec![1],
    );
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("at most 2"), "{body}");
    // Once they are gone, the org deploys again.
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let out = p.deploy(&example("hello"));
    assert!(out.contains("is live"), "{out}");
}

#[test]
fn a_build_that_prints_without_end_is_stopped_at_its_log_cap() {
    support::require_runc_and_root();
    let p = TestPlatform::start_with(&[
        "--driver",
        "runc",
        "--build-log-max-mb",
        "1",
        "--build-logs-per-app-mb",
        "0",
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = support::copy_example("hello", tmp.path());
    // 100,000 calls of a deprecated function, each a warning of its own
    // (distinct spans, so rustc prints every one): tens of megabytes of
    // diagnostics, over seconds, from a source of about 1 MB.
    let mut src = String::from(
        "#[deprecated(note = \"a test of the build log cap\")]\nfn old() {}\nfn main() {\n",
    );
    for _ in 0..100_000 {
        src.push_str("    old();\n");
    }
    src.push_str("}\n");
    std::fs::write(dir.join("src/main.rs"), src).unwrap();
    let out = p.hangar(&["deploy", dir.to_str().unwrap(), "--app", "chatty-build"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let biggest = std::fs::read_dir(p.data_dir().join("build-logs"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .max()
        .unwrap_or(0);
    eprintln!("the chatty build's log stopped at {biggest} bytes (cap 1 MiB)");
    assert!(biggest < 32 << 20, "the log grew to {biggest} bytes");
    assert!(!out.status.success(), "the build passed?");
    assert!(
        text.contains("--build-log-max-mb"),
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );
    // The next build of anyone works.
    let out = p.deploy(&example("hello"));
    assert!(out.contains("is live"), "{out}");
    // With no room for older build logs, each app keeps only its newest:
    // hello's second build removes its first one's log.
    let out = p.deploy(&example("hello"));
    assert!(out.contains("is live"), "{out}");
    let logs: Vec<_> = std::fs::read_dir(p.data_dir().join("build-logs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        logs.len(),
        2,
        "the chatty build's and hello's newest: {logs:?}"
    );
}
