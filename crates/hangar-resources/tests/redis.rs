//! Provisioning against the real Redis server (127.0.0.1:6379): each app
//! gets an ACL user of its own that can touch only its key prefix, a user
//! Redis forgot is re-asserted at the next machine start, and
//! deprovisioning drops the user and the app's keys.

use std::collections::BTreeSet;

use common::{Fixture, fixture};
use hangar_core::resource::ResourceKind;
use hangar_resources::{RedisServer, Resources};

mod common;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ADDR: &str = "127.0.0.1:6379";

/// Runs each command in turn on one connection and returns the replies'
/// first lines (plus the value of a bulk reply), e.g. "+OK", "$2 hi",
/// "-NOPERM ...".
async fn redis(commands: &[&[&str]]) -> Vec<String> {
    let stream = TcpStream::connect(ADDR).await.unwrap_or_else(|e| {
        panic!("this test needs Redis at {ADDR}: {e}; start it as the env skill says")
    });
    let mut io = BufReader::new(stream);
    let mut out = Vec::new();
    for args in commands {
        let mut req = format!("*{}\r\n", args.len());
        for a in *args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        io.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        io.read_line(&mut line).await.unwrap();
        let mut reply = line.trim_end().to_owned();
        if reply.starts_with('$') && reply != "$-1" {
            let mut value = String::new();
            io.read_line(&mut value).await.unwrap();
            reply = format!("{reply} {}", value.trim_end());
        }
        out.push(reply);
    }
    out
}

/// RESP2's null reply (as a bulk string or an array).
fn is_nil(reply: &str) -> bool {
    reply == "$-1" || reply == "*-1"
}

#[tokio::test]
async fn each_app_gets_a_user_confined_to_its_prefix() {
    redis(&[&["PING"]]).await;
    let pid = std::process::id();
    let (a, b) = (format!("rd-a-{pid}"), format!("rd-b-{pid}"));
    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&[&a, &b]).await;
    let (app_a, app_b) = (apps[0].clone(), apps[1].clone());
    let res = Resources::new(store, vault, None)
        .with_redis(RedisServer::new("redis://127.0.0.1:6379").unwrap());
    let kinds: BTreeSet<_> = [ResourceKind::Redis].into();
    let log = |_: String| {};
    res.provision(&app_a, &kinds, &log).await.unwrap();
    res.provision(&app_b, &kinds, &log).await.unwrap();

    let ca = res.for_machine(&app_a.id).await.unwrap().redis.unwrap();
    let cb = res.for_machine(&app_b.id).await.unwrap().redis.unwrap();
    assert_eq!(ca.prefix, format!("{a}:"));
    assert!(ca.url.starts_with(&format!("redis://{}:", ca.user)));
    let key_a = format!("{a}:greeting");
    let got = redis(&[
        &["AUTH", &ca.user, &ca.password],
        &["SET", &key_a, "hi"],
        &["GET", &key_a],
        &["GET", &format!("{b}:x")],
        &["SET", "unprefixed", "x"],
        &["FLUSHALL"],
        &["KEYS", "*"],
    ])
    .await;
    assert_eq!(got[..3], ["+OK", "+OK", "$2 hi"]);
    for (i, r) in got[3..].iter().enumerate() {
        assert!(
            r.starts_with("-NOPERM"),
            "command {} was allowed: {r}",
            i + 3
        );
    }
    // B cannot read A's key; a wrong password is refused.
    let got = redis(&[&["AUTH", &cb.user, &cb.password], &["GET", &key_a]]).await;
    assert_eq!(got[0], "+OK");
    assert!(got[1].starts_with("-NOPERM"), "{}", got[1]);
    let got = redis(&[&["AUTH", &ca.user, "wrong"]]).await;
    assert!(got[0].starts_with("-WRONGPASS"), "{}", got[0]);

    // Redis forgets the user (a restart without an ACL file); the next
    // machine start brings it back with the same password.
    assert_eq!(redis(&[&["ACL", "DELUSER", &ca.user]]).await, [":1"]);
    let again = res.for_machine(&app_a.id).await.unwrap().redis.unwrap();
    assert_eq!(again, ca);
    let got = redis(&[&["AUTH", &ca.user, &ca.password], &["GET", &key_a]]).await;
    assert_eq!(got, ["+OK", "$2 hi"]);

    // Deprovision: user and keys gone; B untouched.
    res.deprovision(&app_a).await.unwrap();
    let got = redis(&[
        &["EXISTS", &key_a],
        &["ACL", "GETUSER", &ca.user],
        &["AUTH", &ca.user, &ca.password],
    ])
    .await;
    assert_eq!(got[0], ":0");
    assert!(is_nil(&got[1]), "{}", got[1]);
    assert!(got[2].starts_with("-WRONGPASS"), "{}", got[2]);
    assert!(res.list(&app_a.id).await.unwrap().is_empty());
    res.deprovision(&app_b).await.unwrap();
    let got = redis(&[&["ACL", "GETUSER", &cb.user]]).await;
    assert!(is_nil(&got[0]), "{}", got[0]);
}

#[tokio::test]
async fn without_a_redis_server_declaring_redis_is_a_clear_error() {
    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&["no-redis"]).await;
    let app = &apps[0];
    let res = Resources::new(store, vault, None);
    for (kind, flag) in [
        (ResourceKind::Redis, "--redis-url"),
        (ResourceKind::PubSub, "--nats-url"),
    ] {
        let err = res
            .provision(app, &[kind].into(), &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(flag), "{err}");
    }
}
