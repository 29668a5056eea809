//! Builds run tenant code (build scripts, proc macros) in a runc sandbox:
//! examples/hostile-build's build.rs tries to read the platform's secrets,
//! reach its services and the internet, plant files and leave a daemon
//! behind, and reports each attempt in the build log; every one must fail,
//! and nothing of the build may outlive it. Builds run offline after a
//! fetch step, so a dependency that is not to be had fails clearly. A
//! build container left by a hangar killed mid-build is deleted at start.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{TestPlatform, copy_example, require_runc_and_root, wait_for};

const APP: &str = "hostile-build";

/// A number no other run of these tests uses (the daemon's tag).
fn nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000
}

/// The `HOSTILE <op>:<arg> <outcome>` lines of a build log: (attempt, outcome).
fn attempts(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|l| l.split_once("HOSTILE ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(what, outcome)| (what.to_owned(), outcome.to_owned()))
        .collect()
}

/// The build id named in the CLI's streamed log (`==> building APP (build ID, …`).
fn build_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split_once("(build ").map(|(_, rest)| rest))
        .and_then(|rest| rest.split([',', ')']).next())
        .unwrap_or_else(|| panic!("no build id in:\n{out}"))
        .to_owned()
}

/// Host pids whose command line is exactly `argv`.
fn processes(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// The runc containers in a runc state root.
fn containers(root: &Path) -> Vec<String> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_hostile_build_script_reaches_nothing_and_leaves_nothing() {
    let p = TestPlatform::start();
    let data = p.data_dir();
    let api_port = p.api.rsplit(':').next().unwrap().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let app = copy_example(APP, tmp.path());
    let tag = format!("600.{}", nonce());
    let mut list = String::new();
    for f in ["secrets.key", "admin-token", "state.db"] {
        list += &format!("read {}\n", data.join(f).display());
    }
    list += "read /etc/shadow\n";
    for target in [
        "/src/planted",
        "/cargo/registry/planted",
        "/toolchain/planted",
    ] {
        list += &format!("write {target}\n");
    }
    for port in ["5432", "6379", "4222", &api_port, &p.proxy_port.to_string()] {
        list += &format!("connect 127.0.0.1:{port}\n");
    }
    list += "connect 1.1.1.1:80\nconnect index.crates.io:443\n";
    list += &format!("daemon {tag}\nlist /\nlist /tmp\n");
    std::fs::write(app.join("attacks.txt"), &list).unwrap();

    let out = p.deploy(&app);
    assert!(out.contains(&format!("==> v1 of {APP} is live")), "{out}");
    assert_eq!(p.get(APP, "/"), (200, "harmless\n".to_owned()));
    let id = build_id(&out);
    let log = std::fs::read_to_string(data.join("build-logs").join(format!("{id}.log"))).unwrap();
    assert!(
        log.contains("==> sandboxed build (runc, uid 64055"),
        "{log}"
    );

    // Every attempt happened, and every read, write and connect failed.
    let seen = attempts(&log);
    let expected = list.lines().count();
    assert_eq!(seen.len(), expected, "one line per attempt:\n{log}");
    for (what, outcome) in &seen {
        if what.starts_with("read:") || what.starts_with("write:") || what.starts_with("connect:") {
            assert!(outcome.starts_with("denied"), "{what} {outcome}\n{log}");
        }
    }
    // What the build sees of the root: mount points and system dirs only;
    // its /tmp is a fresh tmpfs, not the host's (which holds the data dir).
    let listing = |dir: &str| {
        seen.iter()
            .find(|(w, _)| w == &format!("list:{dir}"))
            .map(|(_, o)| o.clone())
            .unwrap()
    };
    let root = listing("/");
    assert!(root.starts_with("ok: "), "{root}");
    for hidden in ["root", "var", "run", "home", "work", "opt", "mnt"] {
        assert!(
            !root.split([' ', ',']).any(|n| n == hidden),
            "/{hidden} is visible: {root}"
        );
    }
    let tmp_listing = listing("/tmp");
    assert!(
        !tmp_listing.contains(".tmp"),
        "the host's /tmp: {tmp_listing}"
    );

    // The daemon started, and did not outlive the build.
    let daemon = &seen
        .iter()
        .find(|(w, _)| w.starts_with("daemon:"))
        .unwrap()
        .1;
    assert!(daemon.starts_with("ok: started"), "{daemon}");
    assert_eq!(
        processes(&["sleep", &tag]),
        Vec::<u32>::new(),
        "the daemon survived the build"
    );
    // Nothing is left in the build's cgroups, nor runc containers.
    for ctl in ["pids", "memory", "cpu"] {
        for suffix in ["", "-fetch", "-meta"] {
            let cg = format!("/sys/fs/cgroup/{ctl}/hangar-builds/build-{id}{suffix}");
            let procs = std::fs::read_to_string(format!("{cg}/cgroup.procs")).unwrap_or_default();
            assert!(procs.trim().is_empty(), "{cg} still has {procs}");
        }
    }
    assert_eq!(containers(&data.join("build-runc")), Vec::<String>::new());

    // The secret key's bytes appear nowhere in the log, raw or in hex.
    let key = std::fs::read(data.join("secrets.key")).unwrap();
    assert!(key.len() >= 16);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!log.contains(&hex[..32]), "secrets.key leaked (hex)");
    let raw = std::fs::read(data.join("build-logs").join(format!("{id}.log"))).unwrap();
    assert!(
        !raw.windows(16).any(|w| w == &key[..16]),
        "secrets.key leaked (raw)"
    );
    // The read-only source got nothing planted.
    assert!(!data.join(format!("builds/{APP}/src/planted")).exists());
}

#[test]
fn a_dependency_missing_from_the_cargo_home_fails_with_the_offline_reason() {
    require_runc_and_root();
    // Offline builds: the fetch step may not use the network either.
    let p = TestPlatform::start_with(&["--driver", "runc", "--build-offline"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("needs-absent");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"needs-absent\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nhangar-absent-dependency-for-tests = \"0.0.1\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").unwrap();
    let out = p.hangar(&["deploy", dir.to_str().unwrap()]);
    assert!(!out.status.success(), "the deploy must fail");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("hangar-absent-dependency-for-tests") && text.contains("offline"),
        "cargo's own offline error: {text}"
    );
    assert!(
        text.contains("==> hangar: builds run offline"),
        "hangar explains: {text}"
    );
    assert!(text.contains("cargo fetch failed"), "{text}");
}

#[test]
fn a_build_container_left_by_a_killed_hangar_is_deleted_at_start() {
    let mut p = TestPlatform::start();
    let tmp = tempfile::tempdir().unwrap();
    let app = copy_example(APP, tmp.path());
    let tag = format!("600.{}", nonce());
    std::fs::write(app.join("attacks.txt"), format!("daemon {tag}\nsleep 60\n")).unwrap();
    let out = p.hangar(&["deploy", app.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success());
    let state = p.data_dir().join("build-runc");
    // The build script holds the build: its container runs.
    let id = wait_for(120, "the build container", || {
        containers(&state)
            .into_iter()
            .find(|c| c.starts_with("build-") && !c.ends_with("-fetch") && !c.ends_with("-meta"))
    });
    wait_for(60, "the daemon", || {
        (!processes(&["sleep", &tag]).is_empty()).then_some(())
    });
    p.restart();
    assert!(
        !containers(&state).contains(&id),
        "{id} survived the restart: {:?}",
        containers(&state)
    );
    wait_for(10, "the daemon to die", || {
        processes(&["sleep", &tag]).is_empty().then_some(())
    });
    // The build was re-queued and runs again (and sleeps again): stop
    // hangar and remove what it runs, before the data dir goes.
    p.kill9();
    std::thread::sleep(Duration::from_millis(200));
    for c in containers(&state) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(["delete", "--force", &c])
            .output();
    }
}
