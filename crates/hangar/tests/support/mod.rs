//! A test harness that runs the real `hangar` binary, so tests read like a
//! user's session: `TestPlatform::start()`, `.deploy(dir)`, `.get(app)`.
//!
//! Each platform gets a temp data dir and free ports. The cargo target dirs
//! of the apps it builds are shared across tests and runs
//! (`target/hangar-apps`), so only the first build of an example compiles
//! its dependencies.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod inventory;
pub mod tls;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
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
/// Where `dir` (inside a platform's private data dir) is mounted for the
/// users who reach it (`/run/hangar/<kind>/<tag>`, see `run_dir::expose`).
#[allow(dead_code)]
pub fn view_of(dir: &Path) -> Option<PathBuf> {
    let dir = dir.canonicalize().ok()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(3) == Some(&dir.to_str()?) && f.get(4)?.starts_with("/run/hangar/"))
            .then(|| PathBuf::from(f[4]))
    })
}

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
            // Postgres reaches its dir through its view when it has one.
            let dir = view_of(&self.dir).unwrap_or_else(|| self.dir.clone());
            match hangar_resources::local_pg::LocalPostgres::start(&self.bins, &dir).await {
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

/// `git ARGS` in `dir` as a fixed author: its stdout, trimmed. Fails the
/// test, naming git, if git is missing.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .output()
        .expect("git must be installed (apt-get install git)");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A bare repository `origin.git` under `dir` and a work tree with a copy
/// of example `name` (no commit yet) whose `origin` it is: (origin, work).
pub fn example_repo(name: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let origin = dir.join("origin.git");
    std::fs::create_dir_all(&origin).unwrap();
    git(&origin, &["init", "--quiet", "--bare", "-b", "main"]);
    let work = copy_example(name, dir);
    std::fs::write(work.join(".gitignore"), "target/\n").unwrap();
    git(&work, &["init", "--quiet", "-b", "main"]);
    git(
        &work,
        &["remote", "add", "origin", origin.to_str().unwrap()],
    );
    (origin, work)
}

/// `hangar git connect APP --repo URL` on `p`: the webhook secret it
/// printed.
pub fn git_connect(p: &TestPlatform, app: &str, url: &str) -> String {
    let out = p.hangar(&["git", "connect", app, "--repo", url]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains(&format!("/hooks/github/{app}")), "{text}");
    text.lines()
        .skip_while(|l| !l.starts_with("Webhook secret"))
        .nth(1)
        .expect("the secret is printed")
        .trim()
        .to_owned()
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
    /// The private subnet its machines' addresses come from: each
    /// platform of a test run gets its own, so their routes never clash.
    pub subnet: String,
    /// `RUST_LOG` of `hangar up` (`warn` unless [`TestPlatform::start_logging`]).
    rust_log: String,
}

/// A /22 of 10.0.0.0/8 no other platform of this test run uses, in this
/// process or another test binary running beside it: each process holds a
/// `flock` on the second octets it uses (`/tmp/hangar-test-subnets/<a>`)
/// for as long as it lives, and takes a fresh octet every 64 platforms.
fn next_subnet() -> String {
    use std::os::fd::AsRawFd;
    static HELD: std::sync::Mutex<(Vec<std::fs::File>, u32, u32)> =
        std::sync::Mutex::new((Vec::new(), 0, 0));
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    let (files, octet, used) = &mut *held;
    if files.is_empty() || *used == 64 {
        let dir = Path::new("/tmp/hangar-test-subnets");
        std::fs::create_dir_all(dir).unwrap();
        let start = std::process::id() % 100;
        let found = (0..100).map(|i| 100 + (start + i) % 100).find_map(|a| {
            let f = std::fs::File::create(dir.join(a.to_string())).ok()?;
            // SAFETY: flock on a descriptor we own; kept open below.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            (rc == 0).then_some((a, f))
        });
        let (a, f) = found.expect("every 10.100-199 octet is taken by other test processes");
        files.push(f);
        *octet = a;
        *used = 0;
    }
    let n = *used;
    *used += 1;
    format!("10.{octet}.{}.0/22", n * 4)
}

impl TestPlatform {
    /// Starts hangar with the runc driver (fails without root and runc).
    pub fn start() -> TestPlatform {
        require_runc_and_root();
        Self::start_with(&["--driver", "runc"])
    }

    /// Starts hangar with extra `up` arguments.
    pub fn start_with(args: &[&str]) -> TestPlatform {
        Self::start_logging(args, "warn")
    }

    /// [`TestPlatform::start_with`], with hangar's `RUST_LOG` set to `filter`.
    pub fn start_logging(args: &[&str], filter: &str) -> TestPlatform {
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
            subnet: next_subnet(),
            rust_log: filter.to_owned(),
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
        // Listeners on loopback, unless the test chose its own.
        let mut listen = Vec::new();
        for flag in ["--api-listen", "--proxy-listen", "--admin-listen"] {
            if !self.args.iter().any(|a| a == flag) {
                listen.extend([flag, "127.0.0.1:0"]);
            }
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .arg("up")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(listen)
            .arg("--build-target-root")
            .arg(&target_root)
            .args(["--machine-subnet", &self.subnet])
            .args(&self.args)
            .env("HANGAR_CONFIG", self.config_path())
            .env("RUST_LOG", &self.rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting hangar up");
        // hangar's own log: shown as the test runs, and kept in
        // `hangar-up.log` for tests that search it (see `hangar_log`).
        let stderr = child.stderr.take().unwrap();
        let log_path = self.dir.path().join("hangar-up.log");
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
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
                let url = url.split_whitespace().next().unwrap_or_default();
                self.metrics_url = url.to_owned();
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

    /// Everything `hangar up` wrote on stderr (its log) so far, across restarts.
    #[allow(dead_code)]
    pub fn hangar_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hangar-up.log")).unwrap_or_default()
    }

    /// The `hangar up` process's pid.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("hangar up is running")
    }

    /// Writes a machine's state (its pid kept) straight into the store,
    /// behind hangar's back: what a crash right after that write leaves,
    /// or a row that lies about its machine.
    #[allow(dead_code)]
    pub fn set_machine_state(&self, id: &str, state: hangar_core::status::MachineState) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = hangar_store::Store::open(&self.data_dir().join("state.db")).unwrap();
            let m = store.machine(id).await.unwrap().expect("the machine's row");
            let pid = if state == hangar_core::status::MachineState::Destroyed {
                None
            } else {
                m.pid
            };
            store.set_machine_state(id, state, pid, None).await.unwrap();
        });
    }

    /// The `hangar up` process's resident memory, in KiB (`VmRSS`).
    #[allow(dead_code)]
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("hangar up is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
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

    /// What `hangar up` printed on stdout (its last start).
    #[allow(dead_code)]
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.clone()
    }

    /// The API's URL as `hangar up` printed it.
    #[allow(dead_code)]
    pub fn api_url(&self) -> String {
        self.api.clone()
    }

    /// The admin token.
    #[allow(dead_code)]
    pub fn admin_token(&self) -> String {
        self.token.clone()
    }

    /// Runs the CLI with the config file `config` (not the platform's).
    #[allow(dead_code)]
    pub fn hangar_with_config(&self, config: &Path, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_CONFIG", config)
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

    /// GET `path` through the edge proxy with the Host header `host`.
    #[allow(dead_code)]
    pub fn get_host(&self, host: &str, path: &str) -> (u16, String) {
        self.request(
            &format!("http://127.0.0.1:{}{path}", self.proxy_port),
            "GET",
            Some(host),
            None,
            Bytes::new(),
        )
    }

    /// GET `path` of `app` through the edge proxy on a fresh connection,
    /// giving up after `timeout`: (status, body), or why there is none.
    /// Unlike [`TestPlatform::get`] it neither panics nor waits forever,
    /// for tests where an upstream may hang.
    pub fn try_get(
        &self,
        app: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let url = format!("http://127.0.0.1:{}{path}", self.proxy_port);
        let host = format!("{app}.localhost:{}", self.proxy_port);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let req = http::Request::get(&url)
                .header(http::header::HOST, &host)
                .body(Empty::new())
                .map_err(|e| format!("GET {url}: {e}"))?;
            let answer = async {
                let (status, body) = fetch(&client, req).await?;
                Ok((status, String::from_utf8_lossy(&body).into_owned()))
            };
            tokio::time::timeout(timeout, answer)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
                .map_err(|e| format!("GET {path} (Host: {host}): {e}"))
        })
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
        let token = std::fs::read_to_string(self.data_dir().join("metrics-token")).unwrap();
        let (status, body) = self.request(
            &self.metrics_url,
            "GET",
            None,
            Some(token.trim()),
            Bytes::new(),
        );
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

    /// An API request with a whole `Authorization` value and extra headers.
    pub fn api_request_headers(
        &self,
        method: &str,
        path: &str,
        authorization: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, String) {
        self.request_with(
            &format!("{}{path}", self.api),
            method,
            None,
            Some(authorization),
            headers,
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
        self.request_with(url, method, host, token, &[], body)
    }

    fn request_with(
        &self,
        url: &str,
        method: &str,
        host: Option<&str>,
        token: Option<&str>,
        headers: &[(&str, &str)],
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
            // A token with a space is a whole header value (`FlyV1 …`).
            if let Some(t) = token {
                let value = match t.contains(' ') {
                    true => t.to_owned(),
                    false => format!("Bearer {t}"),
                };
                req = req.header(http::header::AUTHORIZATION, value);
            }
            if !body.is_empty() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
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

/// Leaks: what a destroy left behind.
impl TestPlatform {
    /// The ids of this platform's runc containers (its `runc` root).
    pub fn runc_containers(&self) -> Vec<String> {
        let out = Command::new("runc")
            .arg("--root")
            .arg(self.data_dir().join("runc"))
            .args(["list", "-q"])
            .output();
        match out {
            Ok(out) => String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .filter(|l| !l.is_empty())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The runc containers whose machine the state store says is
    /// destroyed, or no longer has at all (its app was destroyed): a
    /// destroy that left them. Hangar marks a machine destroyed only once
    /// its container is deleted, so none of these is on its way out; a
    /// few seconds are still given to one being deleted right now.
    /// (Apps left running have their machines: they never count.)
    pub fn leaked_containers(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let leaked = self.containers_without_machines();
            if leaked.is_empty() || Instant::now() >= deadline {
                return leaked;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn containers_without_machines(&self) -> Vec<String> {
        let containers = self.runc_containers();
        if containers.is_empty() {
            return containers;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let live = rt.block_on(async {
            let store = hangar_store::Store::open(&self.data_dir().join("state.db"))?;
            store.undestroyed_machines().await
        });
        match live {
            Ok(live) => {
                let live: std::collections::HashSet<String> =
                    live.into_iter().map(|m| m.id).collect();
                containers
                    .into_iter()
                    .filter(|c| !live.contains(c))
                    .collect()
            }
            Err(e) => {
                eprintln!("leak check skipped: cannot read the state store: {e}");
                Vec::new()
            }
        }
    }

    /// Fails the test unless every destroyed machine's container is gone
    /// ([`Self::leaked_containers`]). Drop checks the same, after the test.
    pub fn assert_no_leaks(&self) {
        let leaked = self.leaked_containers();
        assert!(
            leaked.is_empty(),
            "runc containers of destroyed machines are still there: {leaked:?}"
        );
    }
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        // What the test's own destroys left, before the harness cleans up
        // (only while hangar runs: a test that killed it stopped it from
        // finishing).
        // (The harness's own client speaks plain HTTP: an API over TLS is
        // cleaned up by its test and the forced removal below.)
        let plain_api = !self.api.is_empty() && !self.api.starts_with("https://");
        let leaked = if self.child.is_some() && plain_api {
            self.leaked_containers()
        } else {
            Vec::new()
        };
        // Apps first, so their machines are stopped by hangar itself.
        if self.child.is_some() && plain_api {
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
        // And its firewall table and its subnet's route.
        let _ = Command::new("ip")
            .args(["route", "del", "unreachable", &self.subnet])
            .output();
        if let Ok(data) = self.data_dir().canonicalize() {
            use sha2::Digest;
            let tag = hex::encode(&sha2::Sha256::digest(data.as_os_str().as_encoded_bytes())[..3]);
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &format!("hangar_{tag}")])
                .output();
        }
        // Cleaned up, the leak fails the test (unless it failed already).
        if !leaked.is_empty() {
            let msg = format!(
                "runc containers of destroyed machines were still there when the test ended \
                 (removed by force now): {leaked:?}"
            );
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
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

/// An error and its sources, `: `-separated (hyper's own messages are terse).
pub use hangar_core::error_chain;

/// How long a [`Load`] runs at most, even if the test never stops it.
pub const LOAD_HARD_LIMIT: Duration = Duration::from_secs(600);
/// How long one request of a [`Load`] may take, headers and body.
pub const LOAD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How many failed requests a [`LoadReport`] keeps, of each kind.
const LOAD_SAMPLES: usize = 5;

/// Steady traffic through the edge proxy, for tests that must see no
/// request fail while the platform changes things underneath: `connections`
/// keep-alive HTTP/1.1 clients, each sending GETs back to back (the next as
/// soon as the last body has arrived), on a thread of its own with its own
/// tokio runtime. [`Load::stop`] ends it and reports; it stops by itself
/// after [`LOAD_HARD_LIMIT`], and when dropped.
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<LoadReport>>,
}

/// What a [`Load`] saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// `GET http://HOST/PATH, N connections`.
    pub target: String,
    /// Requests sent (every one is counted once: 2xx, non-2xx or error).
    pub total: u64,
    /// Answered 2xx, body read in full.
    pub ok: u64,
    /// Answered with another status.
    pub non_2xx: u64,
    /// No complete answer: connection errors, broken bodies, timeouts.
    pub errors: u64,
    /// The first non-2xx answers: (seconds into the load, status, body).
    pub statuses: Vec<(f64, u16, String)>,
    /// The first errors: (seconds into the load, what went wrong).
    pub error_samples: Vec<(f64, String)>,
    /// From the start of the load to its end.
    pub elapsed: Duration,
    /// Every request's time, sorted, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl Load {
    /// Starts the load against `path` of an app through the proxy on
    /// 127.0.0.1:`proxy_port`. `app_host` is the app's name (the Host header
    /// is then `<app>.localhost:<proxy_port>`) or, if it has a dot, the Host
    /// header itself.
    pub fn start(proxy_port: u16, app_host: &str, path: &str, connections: usize) -> Load {
        assert!(connections > 0, "a load needs at least one connection");
        let host = if app_host.contains('.') {
            app_host.to_owned()
        } else {
            format!("{app_host}.localhost:{proxy_port}")
        };
        let uri: http::Uri = format!("http://127.0.0.1:{proxy_port}{path}")
            .parse()
            .expect("a valid load URL");
        let target = format!("GET http://{host}{path}, {connections} connection(s)");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("load".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the load's runtime");
                rt.block_on(run_load(target, uri, host, connections, flag))
            })
            .expect("starting the load thread");
        Load {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the load (requests in flight finish, within their timeout)
    /// and reports.
    pub fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("a load is stopped once");
        match thread.join() {
            Ok(report) => report,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl TestPlatform {
    /// A [`Load`] on `path` of `app` through this platform's proxy.
    pub fn load(&self, app: &str, path: &str, connections: usize) -> Load {
        Load::start(self.proxy_port, app, path, connections)
    }
}

/// One client's count, merged into the report at the end.
#[derive(Default)]
struct Tally {
    total: u64,
    ok: u64,
    non_2xx: u64,
    errors: u64,
    statuses: Vec<(f64, u16, String)>,
    error_samples: Vec<(f64, String)>,
    latencies_us: Vec<u32>,
}

async fn run_load(
    target: String,
    uri: http::Uri,
    host: String,
    connections: usize,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let started = Instant::now();
    let deadline = started + LOAD_HARD_LIMIT;
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            tokio::spawn(load_client(
                uri.clone(),
                host.clone(),
                stop.clone(),
                started,
                deadline,
            ))
        })
        .collect();
    let mut report = LoadReport {
        target,
        ..LoadReport::default()
    };
    for client in clients {
        let t = match client.await {
            Ok(t) => t,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a load client was cancelled: {e}"),
        };
        report.total += t.total;
        report.ok += t.ok;
        report.non_2xx += t.non_2xx;
        report.errors += t.errors;
        report.statuses.extend(t.statuses);
        report.error_samples.extend(t.error_samples);
        report.latencies_us.extend(t.latencies_us);
    }
    report.elapsed = started.elapsed();
    report.statuses.sort_by(|a, b| a.0.total_cmp(&b.0));
    report.statuses.truncate(LOAD_SAMPLES);
    report.error_samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    report.error_samples.truncate(LOAD_SAMPLES);
    report.latencies_us.sort_unstable();
    report
}

/// One keep-alive connection's worth of back-to-back GETs. The legacy
/// client keeps one pooled connection (requests are sequential) and opens a
/// new one when the server closed it.
async fn load_client(
    uri: http::Uri,
    host: String,
    stop: Arc<AtomicBool>,
    started: Instant,
    deadline: Instant,
) -> Tally {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build_http();
    let mut t = Tally::default();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let req = http::Request::get(uri.clone())
            .header(http::header::HOST, &host)
            .body(Empty::new())
            .expect("a valid load request");
        let sent = Instant::now();
        let result = tokio::time::timeout(LOAD_REQUEST_TIMEOUT, fetch(&client, req)).await;
        let took = sent.elapsed();
        let at = sent.duration_since(started).as_secs_f64();
        let failed = matches!(result, Ok(Err(_)));
        t.total += 1;
        t.latencies_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        match result {
            Ok(Ok((status, _))) if (200..300).contains(&status) => t.ok += 1,
            Ok(Ok((status, body))) => {
                t.non_2xx += 1;
                if t.statuses.len() < LOAD_SAMPLES {
                    let body = String::from_utf8_lossy(&body);
                    t.statuses
                        .push((at, status, body.chars().take(300).collect()));
                }
            }
            Ok(Err(e)) => {
                t.errors += 1;
                if t.error_samples.len() < LOAD_SAMPLES {
                    t.error_samples.push((at, e));
                }
            }
            Err(_) => {
                t.errors += 1;
                if t.error_samples.len() < LOAD_SAMPLES {
                    t.error_samples
                        .push((at, format!("no answer within {LOAD_REQUEST_TIMEOUT:?}")));
                }
            }
        }
        if failed {
            // Do not spin on a refused connection.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    t
}

impl LoadReport {
    /// The `q` quantile (0..=1, nearest rank) of the request times.
    pub fn latency(&self, q: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.latencies_us.len() as f64).ceil() as usize)
            .clamp(1, self.latencies_us.len());
        Duration::from_micros(u64::from(self.latencies_us[rank - 1]))
    }

    /// Panics, showing the samples, unless the load sent requests and every
    /// one was answered 2xx in full within its timeout.
    pub fn assert_clean(&self, what: &str) {
        assert!(self.total > 0, "{what}: the load sent no request: {self}");
        assert!(
            self.non_2xx == 0 && self.errors == 0,
            "{what}: {} of {} requests failed: {self}\nfirst non-2xx answers (s into the load, status, body): {:?}\nfirst errors (s into the load, error): {:?}",
            self.non_2xx + self.errors,
            self.total,
            self.statuses,
            self.error_samples
        );
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "{} for {secs:.1} s: {} requests ({:.0}/s), {} 2xx, {} non-2xx, {} errors; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.target,
            self.total,
            if secs > 0.0 {
                self.total as f64 / secs
            } else {
                0.0
            },
            self.ok,
            self.non_2xx,
            self.errors,
            ms(self.latency(0.5)),
            ms(self.latency(0.99)),
            ms(self.latency(1.0)),
        )
    }
}

/// Sends `req` and reads the whole answer: (status, body), or the error
/// with its causes.
async fn fetch(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    req: http::Request<Empty<Bytes>>,
) -> Result<(u16, Bytes), String> {
    let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the body: {}", error_chain(&e)))?
        .to_bytes();
    Ok((status, body))
}

/// Other organisations and CLI runs in the background.
impl TestPlatform {
    /// Creates an organisation (the admin token may) and returns its token.
    pub fn create_org(&self, name: &str) -> String {
        let (code, org) = self.call("POST", "/api/v1/orgs", serde_json::json!({ "name": name }));
        assert_eq!(code, 201, "creating org {name}: {org}");
        org["token"].as_str().unwrap().to_owned()
    }

    /// Runs the CLI against this platform with another organisation's token.
    pub fn hangar_as(&self, token: &str, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_CONFIG", self.config_path())
            .env("HANGAR_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .expect("running the hangar CLI");
        eprintln!(
            "$ HANGAR_TOKEN=… hangar {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts the CLI in the background (stdout and stderr captured), for
    /// commands that wait; collect it with `wait_with_output`.
    pub fn spawn_hangar(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_CONFIG", self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running the hangar CLI")
    }
}
