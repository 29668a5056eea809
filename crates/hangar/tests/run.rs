//! `hangar run`: the todo example on this machine, without Docker, with a
//! local Postgres cluster, in-memory cache and pub/sub, and the secrets of
//! its `Secrets.dev.toml`; stopped with SIGTERM; its data still there on
//! the next run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_resources::local_pg::PostgresBinaries;
use support::{StopCluster, copy_example, free_port, workspace};

mod support;

/// A plain HTTP/1.1 request: (status, body), None if nothing answers.
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A running `hangar run`, its output collected (and echoed).
struct HangarRun {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl HangarRun {
    fn start(app: &Path, data: &Path, port: u16) -> HangarRun {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .arg("run")
            .arg(app)
            .args(["--release", "--port", &port.to_string(), "--data-dir"])
            .arg(data)
            // A target dir of its own: the deploy tests' sandboxed builds
            // of todo (another cargo home, source path and environment)
            // share no fingerprint with a host build, so sharing theirs
            // only made each side rebuild every dependency after the other,
            // and, with the test lanes side by side, wait on its lock.
            .env(
                "CARGO_TARGET_DIR",
                workspace().join("target/hangar-apps/todo-local"),
            )
            .env_remove("HANGAR_POSTGRES_URL")
            .env_remove("HANGAR_REDIS_URL")
            .env_remove("HANGAR_NATS_URL")
            .env_remove("HANGAR_DATA_DIR")
            .env_remove("PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting hangar run");
        let output = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, tag) in [
            (Box::new(stdout) as Box<dyn Read + Send>, "out"),
            (Box::new(stderr), "err"),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[hangar run {tag}] {line}");
                    output.lock().unwrap().push(line);
                }
            });
        }
        HangarRun { child, output }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Waits until the app answers `GET /`; fails early if hangar exits.
    fn wait_until_up(&mut self, port: u16, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some((200, _)) = http(port, "GET", "/", None) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "hangar run exited ({status}) before the app answered:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the app did not answer on port {port} within {secs} s:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, then its exit within 10 s.
    fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill has no memory-safety preconditions; the child is
        // not reaped yet, so its pid is not reused.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "hangar run did not exit within 10 s of SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HangarRun {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: as in `terminate`.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

#[test]
fn runs_todo_locally_with_local_postgres_memory_cache_and_dev_secrets() {
    let bins = PostgresBinaries::find().expect(
        "this test needs PostgreSQL's server binaries (initdb, pg_ctl and postgres, on $PATH \
         or in /usr/lib/postgresql/<N>/bin): apt-get install postgresql",
    );
    let tmp = tempfile::tempdir().unwrap();
    // The cluster runs as `postgres` when the test runs as root: it must
    // be able to reach its dir, though the data dir is private, as
    // `hangar up` leaves it (0700).
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(tmp.path().join("data")).unwrap();
        std::fs::set_permissions(
            tmp.path().join("data"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
    }
    let app = copy_example("todo", tmp.path());
    std::fs::write(
        app.join("Secrets.dev.toml"),
        "GREETING = \"hello from local\"\n",
    )
    .unwrap();
    let data = tmp.path().join("data");
    let _cluster = StopCluster {
        bins,
        dir: data.join("local/postgres"),
    };
    let resources_file = data.join("local/run/todo/resources.json");

    // First run: builds (long only the first time), provisions, serves.
    let started = Instant::now();
    let port = free_port();
    let mut run = HangarRun::start(&app, &data, port);
    run.wait_until_up(port, 600);
    eprintln!("first run up in {:.1} s", started.elapsed().as_secs_f64());
    let (status, body) = http(port, "POST", "/todos", Some(r#"{"title":"local"}"#)).unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(port, "GET", "/todos", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""title":"local""#), "{body}");
    assert_eq!(
        http(port, "GET", "/greeting", None).unwrap(),
        (200, "hello from local".to_owned())
    );
    let (status, body) = http(port, "GET", "/stats", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""views":1"#), "{body}");
    let out = run.output();
    assert!(out.contains("in-memory cache"), "{out}");
    assert!(out.contains("in-memory pub/sub"), "{out}");
    assert!(out.contains("secrets: 1 from Secrets.dev.toml"), "{out}");
    assert!(
        !out.contains("hello from local"),
        "secret values are never printed:\n{out}"
    );
    assert!(resources_file.is_file());
    let status = run.terminate();
    assert!(status.success(), "hangar run exited with {status}");
    assert!(
        !resources_file.exists(),
        "the resources file is removed when the app exits"
    );
    drop(run);

    // Second run, same data dir: the cluster is still up and kept the data.
    let started = Instant::now();
    let port = free_port();
    let mut run = HangarRun::start(&app, &data, port);
    run.wait_until_up(port, 120);
    eprintln!("second run up in {:.1} s", started.elapsed().as_secs_f64());
    let (status, body) = http(port, "GET", "/todos", None).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""title":"local""#), "{body}");
    let status = run.terminate();
    assert!(status.success(), "hangar run exited with {status}");
}
