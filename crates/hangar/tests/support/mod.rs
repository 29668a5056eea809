//! A test harness that runs the real `hangar` binary, so tests read like a
//! user's session: `TestPlatform::start()`, `.deploy(dir)`, `.get(app)`.
//!
//! Each platform gets a temp data dir and free ports. The cargo target dirs
//! of the apps it builds are shared across tests and runs
//! (`target/hangar-apps`), so only the first build of an example compiles
//! its dependencies.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// An example app's directory.
pub fn example(name: &str) -> PathBuf {
    workspace().join("examples").join(name)
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops a local Postgres cluster (hangar's own, or `hangar run`'s) when
/// dropped, so a test that fails half-way leaves none running. Drop it
/// while the cluster's directory still exists.
pub struct StopCluster {
    pub bins: hangar_resources::local_pg::PostgresBinaries,
    pub dir: PathBuf,
}

impl Drop for StopCluster {
    fn drop(&mut self) {
        if !self.dir.join("data/postmaster.pid").exists() {
            return;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            match hangar_resources::local_pg::LocalPostgres::start(&self.bins, &self.dir).await {
                Ok(pg) => {
                    if let Err(e) = pg.stop().await {
                        eprintln!("stopping the local cluster: {e}");
                    }
                }
                Err(e) => eprintln!("finding the local cluster: {e}"),
            }
        });
    }
}

/// Copies an example to a temp dir (without `target/`), for tests that edit it.
pub fn copy_example(name: &str, into: &Path) -> PathBuf {
    let dest = into.join(name);
    copy_dir(&example(name), &dest);
    dest
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "target" {
            continue;
        }
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// Fails the test, naming what is missing, unless runc and root are there.
pub fn require_runc_and_root() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let runc = [
        "/usr/sbin/runc",
        "/usr/bin/runc",
        "/sbin/runc",
        "/usr/local/bin/runc",
        "/usr/local/sbin/runc",
    ]
    .iter()
    .any(|p| Path::new(p).is_file());
    assert!(
        root && runc,
        "this test needs {}: run the suite as root with runc installed (`scripts/dev test` installs it)",
        match (root, runc) {
            (false, false) => "root and runc",
            (false, true) => "root",
            _ => "runc (apt-get install runc)",
        }
    );
}

/// A running `hangar up` with its own data dir.
pub struct TestPlatform {
    /// The `hangar up` process.
    child: Option<Child>,
    /// Holds the data dir and CLI config; removed on drop.
    pub dir: tempfile::TempDir,
    /// Extra `hangar up` arguments, kept for restarts.
    args: Vec<String>,
    /// `http://127.0.0.1:PORT` of the API.
    pub api: String,
    /// Port of the edge proxy.
    pub proxy_port: u16,
    /// `http://127.0.0.1:PORT/metrics` of the admin listener.
    pub metrics_url: String,
    /// The admin token.
    pub token: String,
    /// Everything `hangar up` printed on stdout.
    pub stdout: Vec<String>,
}

impl TestPlatform {
    /// Starts hangar with the runc driver (fails without root and runc).
    pub fn start() -> TestPlatform {
        require_runc_and_root();
        Self::start_with(&["--driver", "runc"])
    }

    /// Starts hangar with extra `up` arguments.
    pub fn start_with(args: &[&str]) -> TestPlatform {
        let dir = tempfile::tempdir().unwrap();
        let mut p = TestPlatform {
            child: None,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            api: String::new(),
            proxy_port: 0,
            metrics_url: String::new(),
            token: String::new(),
            stdout: Vec::new(),
        };
        p.launch();
        p
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("cli.json")
    }

    fn launch(&mut self) {
        let target_root = workspace().join("target/hangar-apps");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .arg("up")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args([
                "--api-listen",
                "127.0.0.1:0",
                "--proxy-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--build-target-root")
            .arg(&target_root)
            .args(&self.args)
            .env("HANGAR_CONFIG", self.config_path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting hangar up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[hangar up] {line}");
                if tx.send(line).is_err() {
                    // Keep draining so hangar never blocks on a full pipe.
                }
            }
        });
        self.child = Some(child);
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("hangar up did not print `hangar: ready` within 60 s");
            if let Some(url) = line.strip_prefix("hangar: API listening on ") {
                self.api = url.trim().to_owned();
            }
            if let Some(rest) = line.strip_prefix("hangar: proxy listening on http://") {
                let addr = rest.split_whitespace().next().unwrap();
                self.proxy_port = addr.rsplit(':').next().unwrap().parse().unwrap();
            }
            if let Some(url) = line.strip_prefix("hangar: metrics on ") {
                self.metrics_url = url.trim().to_owned();
            }
            let ready = line == "hangar: ready";
            self.stdout.push(line);
            if ready {
                break;
            }
        }
        self.token = std::fs::read_to_string(self.data_dir().join("admin-token"))
            .unwrap()
            .trim()
            .to_owned();
    }

    /// Kills hangar with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts hangar again on the same data dir (new ports).
    pub fn restart(&mut self) {
        self.kill9();
        self.stdout.clear();
        self.launch();
    }

    /// Runs the CLI against this platform.
    pub fn hangar(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_CONFIG", self.config_path())
            .stdin(Stdio::null())
            .output()
            .expect("running the hangar CLI");
        eprintln!(
            "$ hangar {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `hangar deploy DIR`, asserting success; returns its stdout.
    pub fn deploy(&self, dir: &Path) -> String {
        let out = self.hangar(&["deploy", dir.to_str().unwrap()]);
        assert!(out.status.success(), "hangar deploy failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// GET `path` of `app` through the edge proxy: (status, body).
    pub fn get(&self, app: &str, path: &str) -> (u16, String) {
        let (status, body) = self.request(
            &format!("http://127.0.0.1:{}{path}", self.proxy_port),
            "GET",
            Some(&format!("{app}.localhost:{}", self.proxy_port)),
            None,
            Bytes::new(),
        );
        (status, body)
    }

    /// POST a JSON `body` to `path` of `app` through the edge proxy.
    pub fn post_json(&self, app: &str, path: &str, body: &str) -> (u16, String) {
        self.request(
            &format!("http://127.0.0.1:{}{path}", self.proxy_port),
            "POST",
            Some(&format!("{app}.localhost:{}", self.proxy_port)),
            None,
            Bytes::from(body.to_owned()),
        )
    }

    /// The Prometheus text of the admin port.
    pub fn metrics(&self) -> String {
        let (status, body) = self.request(&self.metrics_url, "GET", None, None, Bytes::new());
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A request to the API with an explicit token (or none).
    pub fn api_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, String) {
        self.request(
            &format!("{}{path}", self.api),
            method,
            None,
            token,
            Bytes::from(body),
        )
    }

    /// A JSON request with the admin token: (status, parsed body or Null).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.call_as(&self.token.clone(), method, path, body)
    }

    /// A JSON request with the given token: (status, parsed body or Null).
    pub fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).unwrap()
        };
        let (status, text) = self.api_request(method, path, Some(token), bytes);
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The API's JSON answer to GET `path` with the admin token.
    pub fn api_get(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.api_request("GET", path, Some(&self.token.clone()), Vec::new());
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn request(
        &self,
        url: &str,
        method: &str,
        host: Option<&str>,
        token: Option<&str>,
        body: Bytes,
    ) -> (u16, String) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let mut req = http::Request::builder().method(method).uri(url);
            if let Some(h) = host {
                req = req.header(http::header::HOST, h);
            }
            if let Some(t) = token {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            if !body.is_empty() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            let resp = client
                .request(req.body(Full::new(body)).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        })
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        // Apps first, so their machines are stopped by hangar itself.
        if self.child.is_some() && !self.api.is_empty() {
            let (status, body) =
                self.api_request("GET", "/api/v1/apps", Some(&self.token.clone()), Vec::new());
            if status == 200
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
            {
                for app in v["apps"].as_array().cloned().unwrap_or_default() {
                    let name = app["name"].as_str().unwrap_or_default().to_owned();
                    let _ = self.hangar(&["destroy", &name, "--yes"]);
                }
            }
        }
        self.kill9();
        // Anything left (a test that failed half-way): remove by force.
        let runc_root = self.data_dir().join("runc");
        if let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
    }
}

#[allow(unused_imports)]
pub use hangar_core::archive::testing::raw_targz;

/// Polls `f` every 100 ms until it returns Some, or panics after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
