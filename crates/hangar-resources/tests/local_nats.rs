//! Hangar's own NATS server, against the real `nats-server`: one user per
//! app confined to `hangar.<app>.>` by the server itself, users added and
//! removed by reloading (never restarting) it, and a new handle re-adopts
//! the running server.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::{Fixture, fixture};
use hangar_core::resource::ResourceKind;
use hangar_resources::local_nats::{LocalNats, LocalNatsOptions, NatsBinary};
use hangar_resources::{PubSubConfig, Resources};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod common;

fn binary() -> NatsBinary {
    NatsBinary::find().unwrap_or_else(|| {
        panic!(
            "this test needs nats-server (on $PATH, or in /usr/sbin, /usr/bin, /usr/local/bin); \
             none was found: install it (apt-get install nats-server)"
        )
    })
}

/// A temporary dir the `nats` user can reach (a root test's tempdir is
/// 0700 root).
fn reachable_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
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

/// Stops the server under the dir when the test ends, passed or not.
struct StopServer(PathBuf);

impl Drop for StopServer {
    fn drop(&mut self) {
        let Some(pid) = std::fs::read_to_string(self.0.join("nats.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        else {
            return;
        };
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
}

/// `nats://user:pass@127.0.0.1:port` → (user, pass, port).
fn parts(config: &PubSubConfig) -> (String, String, u16) {
    let rest = config.url.strip_prefix("nats://").unwrap();
    let (auth, hostport) = rest.rsplit_once('@').unwrap();
    let (user, pass) = auth.split_once(':').unwrap();
    let port = hostport
        .strip_prefix("127.0.0.1:")
        .unwrap()
        .parse()
        .unwrap();
    (user.to_owned(), pass.to_owned(), port)
}

/// A raw NATS client connection.
struct Nats(BufReader<TcpStream>);

impl Nats {
    /// Connects as `user`: `Err` with the server's `-ERR` if refused.
    async fn connect(port: u16, user: &str, pass: &str) -> Result<Nats, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut n = Nats(BufReader::new(stream));
        let info = n.line().await;
        assert!(info.starts_with("INFO "), "{info}");
        let connect = serde_json::json!({
            "verbose": false, "pedantic": false, "user": user, "pass": pass, "protocol": 1,
        });
        n.send(&format!("CONNECT {connect}\r\nPING\r\n")).await;
        let reply = n.line().await;
        if reply == "PONG" { Ok(n) } else { Err(reply) }
    }

    async fn send(&mut self, text: &str) {
        self.0.get_mut().write_all(text.as_bytes()).await.unwrap();
    }

    /// The next line, PINGs answered; "" when the server closed.
    async fn line(&mut self) -> String {
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(Duration::from_secs(5), self.0.read_line(&mut line))
                .await
                .expect("the server answers");
            if read.unwrap_or(0) == 0 {
                return String::new();
            }
            let line = line.trim_end().to_owned();
            if line == "PING" {
                self.send("PONG\r\n").await;
                continue;
            }
            return line;
        }
    }

    /// Sends `ops` and a PING; the replies up to the PONG.
    async fn roundtrip(&mut self, ops: &str) -> Vec<String> {
        self.send(&format!("{ops}PING\r\n")).await;
        let mut out = Vec::new();
        loop {
            let line = self.line().await;
            if line == "PONG" || line.is_empty() {
                return out;
            }
            if line.starts_with("MSG ") {
                let len: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
                let mut payload = vec![0; len + 2];
                self.0.read_exact(&mut payload).await.unwrap();
                payload.truncate(len);
                out.push(format!("{line} {}", String::from_utf8_lossy(&payload)));
                continue;
            }
            out.push(line);
        }
    }
}

#[tokio::test]
async fn each_app_gets_a_user_confined_to_its_subjects() {
    let bin = binary();
    let tmp = reachable_tempdir();
    let dir = tmp.path().join("nats");
    let _stop = StopServer(dir.clone());
    let Fixture {
        dir: _fixture,
        store,
        vault,
        apps,
    } = fixture(&["ln-a", "ln-b", "ln-c"]).await;
    let (app_a, app_b, app_c) = (apps[0].clone(), apps[1].clone(), apps[2].clone());
    let (ka, kb, kc) = (&app_a.id, &app_b.id, &app_c.id);
    let res = Resources::new(store.clone(), vault.clone(), None)
        .with_local_nats(bin.clone(), dir.clone());
    assert!(!dir.exists(), "nothing runs before an app needs it");
    let kinds: BTreeSet<_> = [ResourceKind::PubSub].into();
    let log = |_: String| {};
    res.provision(&app_a, &kinds, &log).await.unwrap();
    res.provision(&app_b, &kinds, &log).await.unwrap();

    let pa = res.for_machine(&app_a.id).await.unwrap().pubsub.unwrap();
    let pb = res.for_machine(&app_b.id).await.unwrap().pubsub.unwrap();
    // Named by the app's id, not its name.
    assert_eq!(pa.prefix, format!("hangar.{}.", app_a.id));
    let (user_a, pass_a, port) = parts(&pa);
    let (user_b, pass_b, port_b) = parts(&pb);
    assert_eq!(port, port_b, "one server for all apps");
    assert_eq!(user_a, format!("hangar_{}", app_a.id));
    assert!(
        !format!("{pa:?}").contains(&pass_a),
        "Debug hides the password"
    );
    // The credentials are sealed in the store, not in the clear.
    let row = store
        .resources(&app_a.id)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.kind == "pubsub")
        .unwrap();
    let sealed = row.sealed.expect("sealed credentials");
    assert!(!sealed.windows(pass_a.len()).any(|w| w == pass_a.as_bytes()));
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let pid = LocalNats::new(bin.clone(), dir.clone(), LocalNatsOptions::default())
        .running()
        .unwrap()
        .expect("running")
        .pid;

    // A publishes and subscribes under its prefix.
    let mut a = Nats::connect(port, &user_a, &pass_a).await.unwrap();
    let got = a
        .roundtrip(&format!(
            "SUB hangar.{ka}.> 1\r\nPUB hangar.{ka}.x 2\r\nhi\r\n"
        ))
        .await;
    assert_eq!(got, [format!("MSG hangar.{ka}.x 1 2 hi")]);
    // Nothing else: the server says why and keeps the connection.
    let got = a.roundtrip("SUB > 2\r\n").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].contains("Permissions Violation for Subscription to \">\""),
        "{got:?}"
    );
    let got = a.roundtrip(&format!("PUB hangar.{kb}.x 2\r\nhi\r\n")).await;
    assert!(
        got.iter().any(|l| l.contains(&format!(
            "Permissions Violation for Publish to \"hangar.{kb}.x\""
        ))),
        "{got:?}"
    );
    // B's subscriber sees nothing of that; B's own messages reach B.
    let mut b = Nats::connect(port, &user_b, &pass_b).await.unwrap();
    let got = b
        .roundtrip(&format!(
            "SUB hangar.{kb}.> 1\r\nPUB hangar.{kb}.y 3\r\nyes\r\n"
        ))
        .await;
    assert_eq!(got, [format!("MSG hangar.{kb}.y 1 3 yes")]);
    // No user, a wrong password, or A's password for B: refused.
    for (user, pass) in [
        ("", ""),
        (user_a.as_str(), "wrong"),
        (user_b.as_str(), pass_a.as_str()),
    ] {
        let e = Nats::connect(port, user, pass).await.err().unwrap();
        assert!(e.contains("Authorization Violation"), "{e}");
    }

    // A new app: the server rereads its config, and is not restarted.
    res.provision(&app_c, &kinds, &log).await.unwrap();
    let pc = res.for_machine(&app_c.id).await.unwrap().pubsub.unwrap();
    let (user_c, pass_c, _) = parts(&pc);
    let mut c = Nats::connect(port, &user_c, &pass_c).await.unwrap();
    let got = c
        .roundtrip(&format!(
            "SUB hangar.{kc}.* 1\r\nPUB hangar.{kc}.z 1\r\nc\r\n"
        ))
        .await;
    assert_eq!(got, [format!("MSG hangar.{kc}.z 1 1 c")]);
    assert!(alive(pid));
    // Existing connections were kept across the reload.
    let got = a
        .roundtrip(&format!("PUB hangar.{ka}.x 3\r\nend\r\n"))
        .await;
    assert_eq!(got, [format!("MSG hangar.{ka}.x 1 3 end")]);

    // A new handle (Hangar restarted) re-adopts the running server.
    let res2 = Resources::new(store.clone(), vault.clone(), None)
        .with_local_nats(bin.clone(), dir.clone());
    assert_eq!(
        res2.for_machine(&app_a.id).await.unwrap().pubsub.unwrap(),
        pa
    );
    let local = LocalNats::new(bin.clone(), dir.clone(), LocalNatsOptions::default());
    let adopted = local.start().await.unwrap();
    assert_eq!((adopted.port, adopted.pid), (port, pid));

    // Removing an app: its user is refused from then on.
    res2.deprovision(&app_b).await.unwrap();
    let e = Nats::connect(port, &user_b, &pass_b).await.err().unwrap();
    assert!(e.contains("Authorization Violation"), "{e}");
    let mut left = vec![app_a.id.clone(), app_c.id.clone()];
    left.sort();
    assert_eq!(local.apps().unwrap(), left);
    assert!(Nats::connect(port, &user_a, &pass_a).await.is_ok());
    assert!(alive(pid), "reloaded, not restarted");

    local.stop().await.unwrap();
    assert!(!alive(pid));
    // Stopping a stopped server is no error; the next need starts it on
    // the same port, with the users it had.
    local.stop().await.unwrap();
    let restarted = local.start().await.unwrap();
    assert_eq!(restarted.port, port);
    assert_ne!(restarted.pid, pid);
    assert!(Nats::connect(port, &user_c, &pass_c).await.is_ok());
    local.stop().await.unwrap();
}

#[tokio::test]
async fn a_stale_pid_file_is_recovered() {
    let bin = binary();
    let tmp = reachable_tempdir();
    let dir = tmp.path().join("nats");
    let _stop = StopServer(dir.clone());
    let local = LocalNats::new(bin.clone(), dir.clone(), LocalNatsOptions::default());
    let config = local.add_app("ln-stale", "00aa11bb22cc").await.unwrap();
    let first = local.running().unwrap().unwrap();
    local.stop().await.unwrap();
    // A pid file left behind whose pid is another program now.
    std::fs::write(dir.join("nats.pid"), std::process::id().to_string()).unwrap();
    let local = LocalNats::new(bin, dir.clone(), LocalNatsOptions::default());
    let second = local.start().await.unwrap();
    assert_eq!(second.port, first.port);
    assert_ne!(second.pid, std::process::id() as i32);
    let (user, pass, port) = parts(&config);
    assert!(Nats::connect(port, &user, &pass).await.is_ok());
    local.stop().await.unwrap();
}

#[tokio::test]
async fn without_a_server_or_the_binary_declaring_pubsub_is_a_clear_error() {
    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&["ln-none"]).await;
    let res = Resources::new(store, vault, None);
    let err = res
        .provision(&apps[0], &[ResourceKind::PubSub].into(), &|_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("this app declares PubSub, but Hangar has no NATS server configured"),
        "{err}"
    );
}
