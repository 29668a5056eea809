//! Hangar's own Redis servers, one per app, against the real
//! `redis-server`: provisioning starts the app's server, its user reaches
//! its keys and nothing else, `default` is off, each app has its own port
//! and memory cap (one app's full cache is that app's OOM only), a new
//! handle re-adopts running servers, a stale pid file is recovered, data
//! survives a restart, and deprovisioning stops the server and removes it.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Fixture, fixture};
use hangar_core::resource::ResourceKind;
use hangar_resources::local_redis::{LocalRedis, LocalRedisOptions, RedisBinary};
use hangar_resources::{RedisCredentials, Resources};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod common;

fn binary() -> RedisBinary {
    RedisBinary::find().unwrap_or_else(|| {
        panic!(
            "this test needs redis-server (on $PATH, or in /usr/bin, /usr/sbin, /usr/local/bin); \
             none was found: install it (apt-get install redis-server)"
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A temporary dir the `redis` user can reach (a root test's tempdir is
/// 0700 root).
fn reachable_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// Stops every server under the dir when the test ends, passed or not.
struct StopServers(PathBuf);

impl Drop for StopServers {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let pid = std::fs::read_to_string(entry.path().join("redis.pid"))
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                stop_pid(pid);
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    });
    exists && !zombie
}

fn stop_pid(pid: i32) {
    // SAFETY: sending signals has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..250 {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// One connection to a server, speaking RESP.
struct Conn(BufReader<TcpStream>);

impl Conn {
    async fn open(port: u16) -> std::io::Result<Conn> {
        Ok(Conn(BufReader::new(
            TcpStream::connect(("127.0.0.1", port)).await?,
        )))
    }

    /// The reply's first line (plus a bulk reply's value): "+OK",
    /// "$2 hi", "-NOPERM ...".
    async fn call(&mut self, args: &[&str]) -> String {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.0.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).await.unwrap();
        let mut reply = line.trim_end().to_owned();
        if let Some(len) = reply
            .strip_prefix('$')
            .and_then(|l| l.parse::<usize>().ok())
        {
            let mut value = vec![0; len + 2];
            self.0.read_exact(&mut value).await.unwrap();
            value.truncate(len);
            reply = format!("{reply} {}", String::from_utf8_lossy(&value));
        }
        reply
    }
}

/// Each command in turn on one new connection.
async fn redis(port: u16, commands: &[&[&str]]) -> Vec<String> {
    let mut conn = Conn::open(port).await.unwrap();
    let mut out = Vec::new();
    for args in commands {
        out.push(conn.call(args).await);
    }
    out
}

fn port_of(creds: &RedisCredentials) -> u16 {
    let authority = creds.url.strip_prefix("redis://").unwrap();
    let hostport = authority.rsplit_once('@').unwrap().1.trim_end_matches('/');
    assert!(hostport.starts_with("127.0.0.1:"), "{}", creds.url);
    hostport.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn each_app_gets_a_capped_server_of_its_own() {
    let bin = binary();
    let tmp = reachable_tempdir();
    let dir = tmp.path().join("redis");
    let _stop = StopServers(dir.clone());
    let Fixture {
        dir: _fixture,
        store,
        vault,
        apps,
    } = fixture(&["lr-a", "lr-b"]).await;
    let (app_a, app_b) = (apps[0].clone(), apps[1].clone());
    let options = LocalRedisOptions {
        max_memory: 4 * MIB,
        max_clients: 64,
    };
    let res = Resources::new(store.clone(), vault.clone(), None).with_local_redis(
        bin.clone(),
        dir.clone(),
        options.clone(),
    );
    // Nothing runs before an app needs it.
    assert!(!dir.exists());
    let kinds: BTreeSet<_> = [ResourceKind::Redis].into();
    let log = |_: String| {};
    res.provision(&app_a, &kinds, &log).await.unwrap();
    res.provision(&app_b, &kinds, &log).await.unwrap();

    let ca = res.for_machine(&app_a.id).await.unwrap().redis.unwrap();
    let cb = res.for_machine(&app_b.id).await.unwrap().redis.unwrap();
    // Named by the app's id, not its name: user, key prefix, server dir.
    let (ka, kb) = (app_a.id.clone(), app_b.id.clone());
    assert_eq!(
        (ca.user.clone(), ca.prefix.clone()),
        (format!("hangar_{ka}"), format!("{ka}:"))
    );
    assert!(
        ca.url
            .starts_with(&format!("redis://{}:{}@", ca.user, ca.password))
    );
    let (port_a, port_b) = (port_of(&ca), port_of(&cb));
    assert_ne!(port_a, port_b, "each app has a server of its own");

    // Private: the dirs are 0700, the ACL file and admin password 0600,
    // owned by the redis user (else nobody) when Hangar is root.
    let app_dir = dir.join(&ka);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&app_dir), 0o700);
    assert_eq!(mode(&app_dir.join("users.acl")), 0o600);
    assert_eq!(mode(&app_dir.join("admin.password")), 0o600);
    if is_root() {
        let uid = std::fs::metadata(&app_dir).unwrap().uid();
        assert_ne!(uid, 0, "run unprivileged");
        let pid: i32 = std::fs::read_to_string(app_dir.join("redis.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let ruid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap();
        assert_eq!(ruid, uid.to_string(), "the server runs as the dir's owner");
    }
    // No plaintext app password at rest.
    let acl = std::fs::read_to_string(app_dir.join("users.acl")).unwrap();
    assert!(!acl.contains(&ca.password), "{acl}");
    assert!(acl.contains("user default off"), "{acl}");

    // The app's user reaches its own keys only.
    let got = redis(
        port_a,
        &[
            &["AUTH", &ca.user, &ca.password],
            &["SET", &*format!("{ka}:greeting"), "hi"],
            &["GET", &*format!("{ka}:greeting")],
            &["SET", "unprefixed", "x"],
            &["CONFIG", "SET", "maxmemory", "0"],
            &["SHUTDOWN"],
        ],
    )
    .await;
    assert_eq!(got[..3], ["+OK", "+OK", "$2 hi"]);
    for r in &got[3..] {
        assert!(r.starts_with("-NOPERM"), "{got:?}");
    }
    // `default` is off: nothing without AUTH, and it cannot log in.
    let got = redis(
        port_a,
        &[
            &["PING"],
            &["GET", &*format!("{ka}:greeting")],
            &["AUTH", "default", "x"],
        ],
    )
    .await;
    assert!(got[0].starts_with("-NOAUTH"), "{got:?}");
    assert!(got[1].starts_with("-NOAUTH"), "{got:?}");
    assert!(got[2].starts_with("-WRONGPASS"), "{got:?}");
    // B's user is not A's server's.
    let got = redis(port_a, &[&["AUTH", &cb.user, &cb.password]]).await;
    assert!(got[0].starts_with("-WRONGPASS"), "{got:?}");

    // A fills its cache: OOM for A, while B's server still takes writes.
    let big = "x".repeat(100 << 10);
    let mut conn = Conn::open(port_a).await.unwrap();
    assert_eq!(conn.call(&["AUTH", &ca.user, &ca.password]).await, "+OK");
    let mut oom = None;
    for i in 0..400 {
        let reply = conn.call(&["SET", &format!("{ka}:fill:{i}"), &big]).await;
        if reply != "+OK" {
            oom = Some(reply);
            break;
        }
    }
    let oom = oom.expect("past maxmemory, writes are refused");
    assert!(oom.starts_with("-OOM"), "{oom}");
    let got = redis(
        port_b,
        &[
            &["AUTH", &cb.user, &cb.password],
            &["SET", &*format!("{kb}:k"), &big],
            &["GET", &*format!("{kb}:missing")],
        ],
    )
    .await;
    assert_eq!(got[..2], ["+OK", "+OK"], "B is unaffected");
    // A can free its room again (noeviction keeps keys, DEL still works).
    assert!(
        conn.call(&["DEL", &*format!("{ka}:fill:0")])
            .await
            .starts_with(':')
    );
    drop(conn);

    // A new handle (Hangar restarted): the running servers are re-adopted,
    // same port, same pid, same credentials.
    let before = LocalRedis::new(bin.clone(), dir.clone(), options.clone())
        .running(&ka)
        .unwrap()
        .expect("running");
    assert_eq!(before.port, port_a);
    let res2 = Resources::new(store.clone(), vault.clone(), None).with_local_redis(
        bin.clone(),
        dir.clone(),
        options.clone(),
    );
    let again = res2.for_machine(&app_a.id).await.unwrap().redis.unwrap();
    assert_eq!(again, ca);
    let local = LocalRedis::new(bin.clone(), dir.clone(), options.clone());
    let adopted = local.start(&ka).await.unwrap();
    assert_eq!(adopted, before, "re-adopted, not restarted");
    let got = redis(
        port_a,
        &[
            &["AUTH", &ca.user, &ca.password],
            &["GET", &*format!("{ka}:greeting")],
        ],
    )
    .await;
    assert_eq!(got, ["+OK", "$2 hi"]);

    // Deprovision A: its server stops and its dir goes; B keeps running.
    res2.deprovision(&app_a).await.unwrap();
    assert!(!app_dir.exists());
    assert!(!alive(before.pid), "A's server stopped");
    assert!(TcpStream::connect(("127.0.0.1", port_a)).await.is_err());
    let got = redis(port_b, &[&["AUTH", &cb.user, &cb.password], &["PING"]]).await;
    assert_eq!(got, ["+OK", "+PONG"]);
    res2.deprovision(&app_b).await.unwrap();
    assert!(local.apps().is_empty(), "{:?}", local.apps());
}

#[tokio::test]
async fn data_and_users_survive_a_restart_and_a_stale_pid_file_is_recovered() {
    let bin = binary();
    let tmp = reachable_tempdir();
    let dir = tmp.path().join("redis");
    let _stop = StopServers(dir.clone());
    let local = LocalRedis::new(bin.clone(), dir.clone(), LocalRedisOptions::default());
    let creds = local
        .ensure_app("lr-keep", "00aa11bb22cc33dd")
        .await
        .unwrap();
    let port = port_of(&creds);
    let first = local.running("lr-keep").unwrap().unwrap();
    let got = redis(
        port,
        &[
            &["AUTH", &creds.user, &creds.password],
            &["SET", "lr-keep:k", "v"],
        ],
    )
    .await;
    assert_eq!(got, ["+OK", "+OK"]);

    local.stop("lr-keep").await.unwrap();
    assert!(!alive(first.pid));
    assert!(local.running("lr-keep").unwrap().is_none());
    // Stopping a stopped server is no error.
    local.stop("lr-keep").await.unwrap();

    // A pid file left behind whose pid is another program now.
    let pid_file = dir.join("lr-keep/redis.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    let local = LocalRedis::new(bin, dir.clone(), LocalRedisOptions::default());
    let second = local.start("lr-keep").await.unwrap();
    assert_eq!(second.port, port, "the port is kept");
    assert_ne!(second.pid, std::process::id() as i32);
    // The user (saved to its ACL file) and the data (append-only file)
    // are back without Hangar setting anything again.
    let got = redis(
        port,
        &[
            &["AUTH", &creds.user, &creds.password],
            &["GET", "lr-keep:k"],
        ],
    )
    .await;
    assert_eq!(got, ["+OK", "$1 v"]);
    local.remove_app("lr-keep").await.unwrap();
    assert!(!alive(second.pid));
    assert!(!dir.join("lr-keep").exists());
}

#[tokio::test]
async fn without_a_server_or_the_binary_declaring_redis_is_a_clear_error() {
    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&["lr-none"]).await;
    let res = Resources::new(store, vault, None);
    let err = res
        .provision(&apps[0], &[ResourceKind::Redis].into(), &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("this app declares Redis, but Hangar has no Redis server configured"),
        "{err}"
    );
}
