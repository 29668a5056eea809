//! The gates against the real servers this machine runs: Postgres
//! (127.0.0.1:5432, trust auth, superuser `postgres`), Redis
//! (127.0.0.1:6379, passwordless `default` user) and NATS (127.0.0.1:4222,
//! no auth). Each test connects from loopback, which the test directory
//! maps to one app's grant, and attempts what a machine could: log in as
//! the superuser, as another role or user, read other apps' subjects.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_resources::gate::{
    self, Directory, Grant, Kind, Limits, NatsGrant, PostgresGrant, RedisGrant,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

const PG: &str = "127.0.0.1:5432";
const REDIS: &str = "127.0.0.1:6379";
const NATS: &str = "127.0.0.1:4222";
const WAIT: Duration = Duration::from_secs(5);

/// Maps loopback (where the tests connect from) to one grant.
struct Loopback(Option<Grant>);

impl Directory for Loopback {
    fn lookup(&self, peer: IpAddr) -> Option<Grant> {
        (peer == IpAddr::V4(Ipv4Addr::LOCALHOST))
            .then(|| self.0.clone())
            .flatten()
    }
}

/// A gate serving in the background until dropped.
struct Gate {
    addr: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(kind: Kind, upstream: &str, grant: Option<Grant>, limits: Limits) -> Gate {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gate::serve(
        kind,
        listener,
        upstream.parse().unwrap(),
        Arc::new(Loopback(grant)),
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    Gate { addr, _stop: stop }
}

async fn require(what: &str, addr: &str) {
    if let Err(e) = TcpStream::connect(addr).await {
        panic!("this test needs {what} on {addr}: {e}; start it as the env skill says");
    }
}

/// Runs `body`, then `cleanup` even if `body` panicked.
async fn with_cleanup<C: Future<Output = ()>>(
    body: impl Future<Output = ()> + Send + 'static,
    cleanup: C,
) {
    let outcome = tokio::spawn(body).await;
    cleanup.await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

fn tag() -> u32 {
    std::process::id()
}

/// A line-oriented raw client (Redis and NATS).
struct Raw(BufReader<TcpStream>);

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw(BufReader::new(TcpStream::connect(addr).await.unwrap()))
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.0.get_mut().write_all(bytes).await.unwrap();
    }

    /// The next line without its CRLF; "" at EOF.
    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(WAIT, self.0.read_line(&mut line))
            .await
            .expect("no reply in time")
            .unwrap_or(0);
        line.trim_end_matches("\r\n").to_owned()
    }

    /// A Redis reply's first line, plus the value of a bulk reply.
    async fn reply(&mut self) -> String {
        let first = self.line().await;
        match first.strip_prefix('$') {
            Some(n) if n != "-1" => format!("{first} {}", self.line().await),
            _ => first,
        }
    }

    /// Whether the other side closes within `within`.
    async fn closes_within(&mut self, within: Duration) -> bool {
        let mut sink = Vec::new();
        tokio::time::timeout(within, self.0.read_to_end(&mut sink))
            .await
            .is_ok()
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    out.into_bytes()
}

// ---------------------------------------------------------------- Postgres

async fn pg(conn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn pg_admin() -> tokio_postgres::Client {
    pg("host=127.0.0.1 port=5432 user=postgres dbname=postgres")
        .await
        .unwrap_or_else(|e| {
            panic!("this test needs Postgres on {PG} (user postgres, trust auth): {e}")
        })
}

fn refusal(result: Result<tokio_postgres::Client, tokio_postgres::Error>) -> String {
    let err = result.expect_err("the gate let it through");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    assert_eq!(db.code(), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    db.message().to_owned()
}

#[tokio::test]
async fn postgres_admits_only_the_apps_role_to_its_database() {
    let admin = pg_admin().await;
    let (app, other) = (
        format!("gate_app_{}", tag()),
        format!("gate_other_{}", tag()),
    );
    for stmt in [
        format!("DROP DATABASE IF EXISTS {app} WITH (FORCE)"),
        format!("DROP ROLE IF EXISTS {app}"),
        format!("DROP ROLE IF EXISTS {other}"),
        format!("CREATE ROLE {app} LOGIN"),
        format!("CREATE ROLE {other} LOGIN"),
        format!("CREATE DATABASE {app} OWNER {app}"),
    ] {
        admin.batch_execute(&stmt).await.unwrap();
    }
    let grant = Grant {
        app: app.clone(),
        postgres: Some(PostgresGrant {
            user: app.clone(),
            database: app.clone(),
        }),
        redis: None,
        nats: None,
    };
    let body = {
        let (app, other) = (app.clone(), other.clone());
        async move {
            let gate = start(Kind::Postgres, PG, Some(grant), Limits::default()).await;
            let port = gate.addr.port();
            let url = |user: &str, db: &str| {
                format!("host=127.0.0.1 port={port} user={user} dbname={db}")
            };
            let rule = format!("hangar: this machine may connect only as {app} to {app}");
            for (user, db) in [
                ("postgres", "postgres"),
                ("postgres", app.as_str()),
                (other.as_str(), app.as_str()),
                (app.as_str(), "postgres"),
                (app.as_str(), "template1"),
            ] {
                assert_eq!(refusal(pg(&url(user, db)).await), rule, "{user} to {db}");
            }
            // `options` could carry `-c role=...` or `session_authorization`.
            let with_options = format!("{} options='-c role=postgres'", url(&app, &app));
            let msg = refusal(pg(&with_options).await);
            assert!(msg.starts_with(&rule) && msg.contains("options"), "{msg}");

            // Raw: SSL and GSS are declined, and a second `user` (Postgres
            // would take the last one) is refused.
            let mut raw = TcpStream::connect(gate.addr).await.unwrap();
            for code in [80_877_103u32, 80_877_104] {
                let mut req = 8u32.to_be_bytes().to_vec();
                req.extend_from_slice(&code.to_be_bytes());
                raw.write_all(&req).await.unwrap();
                assert_eq!(raw.read_u8().await.unwrap(), b'N');
            }
            let mut body = 196_608u32.to_be_bytes().to_vec();
            body.extend_from_slice(format!("user\0{app}\0user\0postgres\0\0").as_bytes());
            raw.write_all(&(body.len() as u32 + 4).to_be_bytes())
                .await
                .unwrap();
            raw.write_all(&body).await.unwrap();
            let mut reply = Vec::new();
            raw.read_to_end(&mut reply).await.unwrap();
            assert_eq!(reply.first(), Some(&b'E'));
            let text = String::from_utf8_lossy(&reply);
            assert!(
                text.contains("the startup parameter \"user\" is repeated"),
                "{text}"
            );

            let client = pg(&url(&app, &app)).await.expect("the app's own role");
            let row = client
                .query_one("SELECT 1::int4, current_user", &[])
                .await
                .unwrap();
            assert_eq!(
                (row.get::<_, i32>(0), row.get::<_, String>(1)),
                (1, app.clone())
            );

            // Cancelling goes through the gate too (it relayed this key).
            let token = client.cancel_token();
            let sleeping =
                tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(NoTls).await.unwrap();
            let err = tokio::time::timeout(WAIT, sleeping)
                .await
                .expect("the cancel did not arrive")
                .unwrap()
                .expect_err("the query was not cancelled");
            assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
        }
    };
    with_cleanup(body, async {
        for stmt in [
            format!("DROP DATABASE IF EXISTS {app} WITH (FORCE)"),
            format!("DROP ROLE IF EXISTS {app}"),
            format!("DROP ROLE IF EXISTS {other}"),
        ] {
            admin.batch_execute(&stmt).await.unwrap();
        }
    })
    .await;
}

// ------------------------------------------------------------------- Redis

/// Runs commands as the server's `default` user (the tests' admin).
async fn redis_admin(commands: &[&[&str]]) -> Vec<String> {
    let stream = TcpStream::connect(REDIS)
        .await
        .unwrap_or_else(|e| panic!("this test needs Redis on {REDIS}: {e}"));
    let mut c = Raw(BufReader::new(stream));
    let mut out = Vec::new();
    for args in commands {
        c.send(&resp(args)).await;
        out.push(c.reply().await);
    }
    out
}

#[tokio::test]
async fn redis_admits_only_the_apps_user() {
    let app = format!("gatea{}", tag());
    let user = format!("hangar_{app}");
    let key = format!("{app}:greeting");
    let pass = ">s3cret-pw".to_owned();
    let got = redis_admin(&[&[
        "ACL",
        "SETUSER",
        &user,
        "reset",
        "on",
        &pass,
        &format!("~{app}:*"),
        &format!("&{app}:*"),
        "+@all",
        "-@admin",
        "-@dangerous",
    ]])
    .await;
    assert_eq!(got, ["+OK"]);
    // The key prefix is the grant's (what the app's credentials record,
    // made from its id), whatever the app is called.
    let grant = |password: &str| Grant {
        app: "named-otherwise".into(),
        postgres: None,
        redis: Some(RedisGrant {
            user: user.clone(),
            password: password.to_owned(),
            prefix: format!("{app}:"),
        }),
        nats: None,
    };
    let (good, stale) = (grant("s3cret-pw"), grant("stale-pw"));
    let body = {
        let (user, key) = (user.clone(), key.clone());
        async move {
            let gate = start(Kind::Redis, REDIS, Some(good), Limits::default()).await;
            let mut c = Raw::connect(gate.addr).await;
            let mut ask = async |args: &[&str]| {
                c.send(&resp(args)).await;
                c.reply().await
            };
            let noauth = format!("-NOAUTH hangar: authenticate as {user} first");
            assert_eq!(ask(&["GET", &key]).await, noauth);
            assert_eq!(ask(&["SET", &key, "x"]).await, noauth);
            assert_eq!(ask(&["PING"]).await, "+PONG");
            for bad in [
                &["AUTH", "default", ""][..],
                &["AUTH", "s3cret-pw"],
                &["AUTH", "someone", "x"],
                &["HELLO", "3", "AUTH", "default", ""],
            ] {
                assert!(ask(bad).await.starts_with("-NOPERM hangar:"), "{bad:?}");
            }
            assert!(
                ask(&["AUTH", &user, "wrong"])
                    .await
                    .starts_with("-WRONGPASS")
            );
            assert_eq!(ask(&["GET", &key]).await, noauth);
            assert_eq!(ask(&["AUTH", &user, "s3cret-pw"]).await, "+OK");
            assert_eq!(ask(&["SET", &key, "hi"]).await, "+OK");
            assert_eq!(ask(&["GET", &key]).await, "$2 hi");
            for refused in [
                &["CONFIG", "GET", "*"][..],
                &["CLIENT", "LIST"],
                &["RESET"],
                &["KEYS", "*"],
                &["SCAN", "0"],
                &["AUTH", "default", ""],
            ] {
                let r = ask(refused).await;
                assert!(
                    r.starts_with("-ERR unknown command 'NOPERM hangar:"),
                    "{refused:?}: {r}"
                );
            }
            // Still open, still the app's user.
            assert_eq!(ask(&["GET", &key]).await, "$2 hi");
            assert_eq!(
                ask(&["ACL", "WHOAMI"]).await.split(' ').next(),
                Some("-ERR")
            );

            // A second AUTH pipelined behind a correct one, in one write.
            let mut c = Raw::connect(gate.addr).await;
            let mut burst = resp(&["AUTH", &user, "s3cret-pw"]);
            burst.extend_from_slice(b"AUTH x\r\n");
            burst.extend_from_slice(&resp(&["AUTH", "default", ""]));
            burst.extend_from_slice(b"PING\r\n");
            burst.extend_from_slice(&resp(&["GET", &key]));
            c.send(&burst).await;
            assert_eq!(c.reply().await, "+OK");
            assert!(
                c.reply()
                    .await
                    .contains("NOPERM hangar: AUTH <password> is the default")
            );
            assert!(
                c.reply()
                    .await
                    .contains("NOPERM hangar: this machine may authenticate")
            );
            assert_eq!(c.reply().await, "+PONG");
            assert_eq!(c.reply().await, "$2 hi");

            // HELLO 3 with AUTH logs in too (and answers a RESP3 map).
            let mut c = Raw::connect(gate.addr).await;
            c.send(&resp(&["HELLO", "3", "AUTH", &user, "s3cret-pw"]))
                .await;
            assert!(c.line().await.starts_with('%'));

            // A grant out of step with the server: the gate's check passes,
            // the server's fails, and the connection (which Redis keeps
            // logged in as `default`) stays closed to everything else.
            let gate = start(Kind::Redis, REDIS, Some(stale), Limits::default()).await;
            let mut c = Raw::connect(gate.addr).await;
            c.send(&resp(&["AUTH", &user, "stale-pw"])).await;
            assert!(c.reply().await.starts_with("-WRONGPASS"));
            c.send(&resp(&["GET", &key])).await;
            assert_eq!(c.reply().await, noauth);
        }
    };
    with_cleanup(body, async {
        redis_admin(&[&["ACL", "DELUSER", &user], &["DEL", &key]]).await;
    })
    .await;
}

// -------------------------------------------------------------------- NATS

/// A NATS client past `CONNECT`: the INFO line read, a PING answered.
async fn nats_client(addr: SocketAddr) -> Raw {
    let mut c = Raw::connect(addr).await;
    assert!(c.line().await.starts_with("INFO "));
    c.send(b"CONNECT {\"verbose\":false,\"headers\":true}\r\nPING\r\n")
        .await;
    assert_eq!(c.line().await, "PONG");
    c
}

#[tokio::test]
async fn nats_keeps_each_app_under_its_prefix() {
    require("NATS", NATS).await;
    let (a, b) = (
        format!("hangar.ga{}.", tag()),
        format!("hangar.gb{}.", tag()),
    );
    let grant = Grant {
        app: "a".into(),
        postgres: None,
        redis: None,
        nats: Some(NatsGrant { prefix: a.clone() }),
    };
    let gate = start(Kind::Nats, NATS, Some(grant), Limits::default()).await;
    let mut c = nats_client(gate.addr).await;
    let sub_err = |s: &str| format!("-ERR 'Permissions Violation for Subscription to \"{s}\"'");
    let pub_err = |s: &str| format!("-ERR 'Permissions Violation for Publish to \"{s}\"'");
    for subject in [
        ">",
        "hangar.>",
        "hangar.*.x",
        &format!("{b}x"),
        &format!("{b}>"),
    ] {
        c.send(format!("SUB {subject} 1\r\n").as_bytes()).await;
        assert_eq!(c.line().await, sub_err(subject));
    }
    c.send(format!("PUB {b}x 2\r\nhi\r\n").as_bytes()).await;
    assert_eq!(c.line().await, pub_err(&format!("{b}x")));
    c.send(format!("PUB {a}x _INBOX.abc 2\r\nhi\r\n").as_bytes())
        .await;
    assert_eq!(
        c.line().await,
        "-ERR 'Permissions Violation for Publish with Reply of \"_INBOX.abc\"'"
    );
    // Still open: its own prefix works.
    c.send(format!("SUB {a}> 3\r\nPING\r\n").as_bytes()).await;
    assert_eq!(c.line().await, "PONG");

    // App B, straight on the server, publishes on its own subjects.
    let mut direct = Raw::connect(NATS.parse().unwrap()).await;
    assert!(direct.line().await.starts_with("INFO "));
    direct
        .send(
            format!("CONNECT {{\"verbose\":false}}\r\nPUB {b}x 5\r\nfromb\r\nPING\r\n").as_bytes(),
        )
        .await;
    assert_eq!(direct.line().await, "PONG");

    c.send(
        format!("PUB {a}x 5\r\nfroma\r\nHPUB {a}h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n")
            .as_bytes(),
    )
    .await;
    // A sees its own messages, and nothing of B's, which came first.
    assert_eq!(c.line().await, format!("MSG {a}x 3 5"));
    assert_eq!(c.line().await, "froma");
    assert_eq!(c.line().await, format!("HMSG {a}h 3 12 14"));
    assert_eq!(c.line().await, "NATS/1.0");
    assert_eq!(c.line().await, "");
    assert_eq!(c.line().await, "hi");
    assert_eq!(c.line().await, "PONG");

    // Ops before CONNECT, and unknown ops, close the connection.
    let mut c = Raw::connect(gate.addr).await;
    assert!(c.line().await.starts_with("INFO "));
    c.send(b"SUB > 1\r\n").await;
    assert_eq!(c.line().await, "-ERR 'Authorization Violation'");
    assert!(c.closes_within(WAIT).await);
    let mut c = nats_client(gate.addr).await;
    c.send(b"MSG x 1 1\r\n").await;
    assert_eq!(c.line().await, "-ERR 'Unknown Protocol Operation'");
    assert!(c.closes_within(WAIT).await);
}

// --------------------------------------------------------------- all three

#[tokio::test]
async fn unknown_peers_are_refused_by_all_three() {
    require("Postgres", PG).await;
    require("Redis", REDIS).await;
    require("NATS", NATS).await;
    let bare = Grant {
        app: "bare".into(),
        postgres: None,
        redis: None,
        nats: None,
    };
    for grant in [None, Some(bare)] {
        let pg_gate = start(Kind::Postgres, PG, grant.clone(), Limits::default()).await;
        let url = format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            pg_gate.addr.port()
        );
        assert_eq!(
            refusal(pg(&url).await),
            "hangar: this machine has no database"
        );

        let redis_gate = start(Kind::Redis, REDIS, grant.clone(), Limits::default()).await;
        let mut c = Raw::connect(redis_gate.addr).await;
        c.send(&resp(&["PING"])).await;
        assert_eq!(c.line().await, "-NOPERM hangar: this machine has no Redis");
        assert!(c.closes_within(WAIT).await);

        let nats_gate = start(Kind::Nats, NATS, grant.clone(), Limits::default()).await;
        let mut c = Raw::connect(nats_gate.addr).await;
        assert_eq!(c.line().await, "-ERR 'Authorization Violation'");
        assert!(c.closes_within(WAIT).await);
    }
}

fn full_grant() -> Grant {
    Grant {
        app: "capped".into(),
        postgres: Some(PostgresGrant {
            user: "capped".into(),
            database: "capped".into(),
        }),
        redis: Some(RedisGrant {
            user: "hangar_capped".into(),
            password: "pw".into(),
            prefix: "capped:".into(),
        }),
        nats: Some(NatsGrant {
            prefix: "hangar.capped.".into(),
        }),
    }
}

#[tokio::test]
async fn each_peer_gets_a_bounded_share_of_a_gate() {
    require("Redis", REDIS).await;
    let limits = Limits {
        max_per_peer: 2,
        ..Limits::default()
    };
    let gate = start(Kind::Redis, REDIS, Some(full_grant()), limits).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::connect(gate.addr).await;
        c.send(&resp(&["PING"])).await;
        assert_eq!(c.line().await, "+PONG");
        held.push(c);
    }
    let mut third = Raw::connect(gate.addr).await;
    assert_eq!(
        third.line().await,
        "-ERR hangar: too many connections from this machine"
    );
    assert!(third.closes_within(WAIT).await);
    // A slot comes back when its connection ends.
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = Raw::connect(gate.addr).await;
        c.send(&resp(&["PING"])).await;
        if c.line().await == "+PONG" {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // And the gate as a whole is bounded too.
    let limits = Limits {
        max_connections: 1,
        ..Limits::default()
    };
    let gate = start(Kind::Redis, REDIS, Some(full_grant()), limits).await;
    let _first = Raw::connect(gate.addr).await;
    let mut second = Raw::connect(gate.addr).await;
    assert_eq!(
        second.line().await,
        "-ERR hangar: too many connections through this gate"
    );
}

#[tokio::test]
async fn idle_and_slow_clients_are_dropped_after_the_handshake_timeout() {
    require("Postgres", PG).await;
    require("Redis", REDIS).await;
    require("NATS", NATS).await;
    let limits = Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    for (kind, upstream) in [
        (Kind::Postgres, PG),
        (Kind::Redis, REDIS),
        (Kind::Nats, NATS),
    ] {
        let gate = start(kind, upstream, Some(full_grant()), limits.clone()).await;
        let started = Instant::now();
        let mut c = Raw::connect(gate.addr).await;
        assert!(
            c.closes_within(WAIT).await,
            "{kind:?}: an idle client was kept"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250),
            "{kind:?}: closed after {took:?}"
        );
    }
    // A Redis client that keeps talking but never authenticates: the
    // deadline covers the whole handshake, not each request.
    let gate = start(Kind::Redis, REDIS, Some(full_grant()), limits).await;
    let mut c = Raw::connect(gate.addr).await;
    let started = Instant::now();
    let mut pongs = 0;
    while started.elapsed() < Duration::from_secs(3) {
        c.send(b"PING\r\n").await;
        match c.line().await.as_str() {
            "+PONG" => pongs += 1,
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "kept for {pongs} PINGs"
    );
}
