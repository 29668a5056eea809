//! Provisioning against the real Redis server (127.0.0.1:6379): each app
//! gets an ACL user of its own that can touch only its key prefix, cannot
//! list, count or change what other tenants have, and can run what apps
//! need; a user Redis forgot is re-asserted at the next machine start, and
//! deprovisioning drops the user and the app's keys.

use std::collections::BTreeSet;

use common::{Fixture, fixture};
use hangar_core::resource::ResourceKind;
use hangar_resources::{RedisServer, Resources};

mod common;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ADDR: &str = "127.0.0.1:6379";

/// One connection to the test Redis.
struct Conn(BufReader<TcpStream>);

impl Conn {
    async fn open() -> Conn {
        let stream = TcpStream::connect(ADDR).await.unwrap_or_else(|e| {
            panic!("this test needs Redis at {ADDR}: {e}; start it as the env skill says")
        });
        Conn(BufReader::new(stream))
    }

    /// Sends one command and reads its reply (see [`Conn::read`]).
    async fn call(&mut self, args: &[&str]) -> String {
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.0.get_mut().write_all(req.as_bytes()).await.unwrap();
        self.read().await
    }

    /// One whole reply, RESP2 or RESP3, as text: a line reply as it came
    /// ("+OK", ":1", "-NOPERM ...", "$-1"), a bulk one as "$2 hi", an
    /// aggregate as "*3 [a, b, c]" ("%" for a map, ">" for a push).
    async fn read(&mut self) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.0.read_line(&mut line),
        )
        .await
        .expect("Redis answers within 5 s")
        .unwrap();
        assert!(n > 0, "Redis closed the connection");
        let line = line.trim_end().to_owned();
        let (tag, rest) = line.split_at(1);
        match tag {
            "$" | "=" | "!" if rest != "-1" => {
                let len: usize = rest.parse().unwrap();
                let mut value = vec![0; len + 2];
                self.0.read_exact(&mut value).await.unwrap();
                value.truncate(len);
                format!("{line} {}", String::from_utf8_lossy(&value))
            }
            "*" | "~" | ">" | "%" if rest != "-1" => {
                let len: usize = rest.parse().unwrap();
                let count = if tag == "%" { 2 * len } else { len };
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(Box::pin(self.read()).await);
                }
                format!("{line} [{}]", items.join(", "))
            }
            _ => line,
        }
    }
}

/// Runs each command in turn on one connection and returns the replies
/// (see [`Conn::read`]), e.g. "+OK", "$2 hi", "-NOPERM ...".
async fn redis(commands: &[&[&str]]) -> Vec<String> {
    let mut conn = Conn::open().await;
    let mut out = Vec::new();
    for args in commands {
        out.push(conn.call(args).await);
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
    // Keyed by the app's id, not its name (another app may take the name).
    let (a, b) = (app_a.id.clone(), app_b.id.clone());
    assert_eq!(ca.prefix, format!("{a}:"));
    assert_eq!(ca.user, format!("hangar_{a}"));
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

#[tokio::test]
async fn an_app_user_sees_nothing_of_other_tenants_and_keeps_what_apps_need() {
    redis(&[&["PING"]]).await;
    let pid = std::process::id();
    let (a, b) = (format!("rd-own-{pid}"), format!("rd-other-{pid}"));
    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&[&a, &b]).await;
    let res = Resources::new(store, vault, None)
        .with_redis(RedisServer::new("redis://127.0.0.1:6379").unwrap());
    let kinds: BTreeSet<_> = [ResourceKind::Redis].into();
    res.provision(&apps[0], &kinds, &|_| {}).await.unwrap();
    res.provision(&apps[1], &kinds, &|_| {}).await.unwrap();
    let ca = res.for_machine(&apps[0].id).await.unwrap().redis.unwrap();
    let cb = res.for_machine(&apps[1].id).await.unwrap().redis.unwrap();
    let (a, b) = (&apps[0].id, &apps[1].id);
    let (mine, theirs) = (|k: &str| format!("{a}:{k}"), |k: &str| format!("{b}:{k}"));
    // The other tenant has a key and a subscriber on a channel.
    let mut other = Conn::open().await;
    assert_eq!(other.call(&["AUTH", &cb.user, &cb.password]).await, "+OK");
    assert_eq!(other.call(&["SET", &theirs("secret"), "x"]).await, "+OK");
    assert!(
        other
            .call(&["SUBSCRIBE", &theirs("news")])
            .await
            .starts_with("*3")
    );
    let (list, key) = (mine("list"), mine("k"));
    let (their_key, their_all, their_news) = (theirs("secret"), theirs("*"), theirs("news"));
    let my_all = mine("*");
    let my_prefix = ca.prefix.clone();
    let lib = "#!lua name=hangartest\nredis.register_function('f', function() return 1 end)";
    let refused: &[&[&str]] = &[
        &["KEYS", "*"],
        &["SCAN", "0"],
        &["SCAN", "0", "MATCH", &my_all],
        &["RANDOMKEY"],
        &["DBSIZE"],
        &["SORT", &list],
        &["SORT", &list, "BY", &their_all],
        &["SORT_RO", &list],
        &["INFO"],
        &["INFO", "keyspace"],
        &["PUBSUB", "CHANNELS"],
        &["PUBSUB", "NUMSUB", &their_news],
        &["PUBSUB", "NUMPAT"],
        &["PUBSUB", "SHARDCHANNELS"],
        &["FUNCTION", "LIST"],
        &["FUNCTION", "DUMP"],
        &["FUNCTION", "STATS"],
        &["FUNCTION", "LOAD", lib],
        &["FUNCTION", "FLUSH"],
        &["SCRIPT", "FLUSH"],
        &["SCRIPT", "KILL"],
        &["SCRIPT", "DEBUG", "NO"],
        &["CLIENT", "TRACKING", "ON", "BCAST"],
        &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", &my_prefix],
        &["CLIENT", "LIST"],
        &["CLIENT", "KILL", "ID", "1"],
        &["SELECT", "1"],
        &["MOVE", &key, "1"],
        &["SWAPDB", "0", "1"],
        &["MIGRATE", "127.0.0.1", "1", &key, "0", "100"],
        &["CLUSTER", "INFO"],
        &["CLUSTER", "GETKEYSINSLOT", "0", "10"],
        &["CLUSTER", "COUNTKEYSINSLOT", "0"],
        &["MEMORY", "STATS"],
        &["MEMORY", "DOCTOR"],
        &["MEMORY", "MALLOC-STATS"],
        &["MEMORY", "PURGE"],
        &["CONFIG", "GET", "*"],
        &["CONFIG", "SET", "maxmemory", "1"],
        &["MONITOR"],
        &["DEBUG", "SLEEP", "0"],
        &["FLUSHALL"],
        &["FLUSHDB"],
        &["ACL", "USERS"],
        &["ACL", "LIST"],
        &["GET", &their_key],
        &["SET", "unprefixed", "x"],
        &["PUBLISH", &their_news, "x"],
        &["SUBSCRIBE", &their_news],
        &["PSUBSCRIBE", "*"],
    ];
    // First as a dry run (the server's verdict, nothing executed), so that a
    // rule gone missing cannot flush or swap the shared server below.
    let mut admin = Conn::open().await;
    for args in refused {
        let mut dry = vec!["ACL", "DRYRUN", &ca.user];
        dry.extend_from_slice(args);
        let verdict = admin.call(&dry).await;
        assert!(
            verdict.contains("no permissions"),
            "{args:?} would be allowed: {verdict}"
        );
    }
    // Then for real, as the app.
    let mut app = Conn::open().await;
    assert_eq!(app.call(&["AUTH", &ca.user, &ca.password]).await, "+OK");
    assert_eq!(app.call(&["RPUSH", &list, "2", "1"]).await, ":2");
    assert_eq!(app.call(&["SET", &key, "v"]).await, "+OK");
    for args in refused {
        let reply = app.call(args).await;
        // DEBUG is refused before the ACL is asked unless the server
        // enables it (`enable-debug-command`); the dry run above has the
        // ACL's verdict.
        let refused_earlier =
            args[0] == "DEBUG" && reply.starts_with("-ERR DEBUG command not allowed");
        assert!(
            reply.starts_with("-NOPERM") || refused_earlier,
            "{args:?} was allowed: {reply}"
        );
    }
    // Nothing of the other tenant's was touched.
    assert_eq!(app.call(&["PING"]).await, "+PONG");
    assert_eq!(admin.call(&["GET", &their_key]).await, "$1 x");

    // What apps need, on a RESP3 connection.
    let mut app = Conn::open().await;
    let hello = app
        .call(&[
            "HELLO",
            "3",
            "AUTH",
            &ca.user,
            &ca.password,
            "SETNAME",
            "web-1",
        ])
        .await;
    assert!(hello.starts_with('%') && hello.contains("redis"), "{hello}");
    let (n, gone) = (mine("n"), mine("gone"));
    let needed: &[(&[&str], &str)] = &[
        (&["PING"], "+PONG"),
        (&["CLIENT", "SETNAME", "web-2"], "+OK"),
        (&["CLIENT", "GETNAME"], "$5 web-2"),
        (&["SET", &key, "hi"], "+OK"),
        (&["GET", &key], "$2 hi"),
        (&["EXISTS", &key], ":1"),
        (&["INCR", &n], ":1"),
        (&["EXPIRE", &key, "100"], ":1"),
        (&["TTL", &key], ":100"),
        (&["SET", &gone, "x"], "+OK"),
        (&["DEL", &gone], ":1"),
        (&["MULTI"], "+OK"),
        (&["INCR", &n], "+QUEUED"),
        (&["GET", &key], "+QUEUED"),
        (&["EXEC"], "*2 [:2, $2 hi]"),
        (
            &["EVAL", "return redis.call('INCR', KEYS[1])", "1", &n],
            ":3",
        ),
        (&["PUBLISH", &mine("news"), "hello"], ":0"),
    ];
    for (args, want) in needed {
        assert_eq!(&app.call(args).await, want, "{args:?}");
    }
    let id = app.call(&["CLIENT", "ID"]).await;
    assert!(id.starts_with(':'), "{id}");
    // Subscribing to its own channels, and getting what it publishes.
    let mut sub = Conn::open().await;
    assert_eq!(sub.call(&["AUTH", &ca.user, &ca.password]).await, "+OK");
    let news = mine("news");
    assert_eq!(
        sub.call(&["SUBSCRIBE", &news]).await,
        format!("*3 [$9 subscribe, ${} {news}, :1]", news.len())
    );
    assert!(
        sub.call(&["PSUBSCRIBE", &my_all])
            .await
            .starts_with("*3 [$10 psubscribe")
    );
    assert_eq!(app.call(&["PUBLISH", &news, "hello"]).await, ":2");
    assert_eq!(
        sub.read().await,
        format!("*3 [$7 message, ${} {news}, $5 hello]", news.len())
    );
    drop((sub, other));

    res.deprovision(&apps[0]).await.unwrap();
    res.deprovision(&apps[1]).await.unwrap();
    assert_eq!(
        admin.call(&["EXISTS", &their_key, &key, &n, &list]).await,
        ":0"
    );
}

/// What an older Hangar left when an app's deletion skipped or failed its
/// deprovisioning: the user `hangar_<name>` and keys under `<name>:`. A new
/// app of that name gets a user and a prefix of its own (its id's): it
/// cannot read them, and destroying it leaves them as they were.
#[tokio::test]
async fn a_new_app_of_a_deleted_apps_name_never_gets_its_keys() {
    redis(&[&["PING"]]).await;
    let name = format!("rd-reused-{}", std::process::id());
    let (old_user, old_key) = (format!("hangar_{name}"), format!("{name}:card"));
    let got = redis(&[
        &["ACL", "SETUSER", &old_user, "reset", "on", ">old-owner"],
        &["ACL", "SETUSER", &old_user, &format!("~{name}:*"), "+@all"],
        &["SET", &old_key, "4242"],
    ])
    .await;
    assert_eq!(got, ["+OK", "+OK", "+OK"]);
    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&[&name]).await;
    let res = Resources::new(store, vault, None)
        .with_redis(RedisServer::new("redis://127.0.0.1:6379").unwrap());
    let kinds: BTreeSet<_> = [ResourceKind::Redis].into();
    res.provision(&apps[0], &kinds, &|_| {}).await.unwrap();
    let creds = res.for_machine(&apps[0].id).await.unwrap().redis.unwrap();
    assert_eq!(creds.user, format!("hangar_{}", apps[0].id));
    assert_eq!(creds.prefix, format!("{}:", apps[0].id));
    let got = redis(&[
        &["AUTH", &creds.user, &creds.password],
        &["GET", &old_key],
        &["GET", &format!("{}card", creds.prefix)],
    ])
    .await;
    assert_eq!(got[0], "+OK");
    assert!(got[1].starts_with("-NOPERM"), "{got:?}");
    assert!(is_nil(&got[2]), "nothing under its own prefix yet: {got:?}");

    res.deprovision(&apps[0]).await.unwrap();
    let got = redis(&[
        &["ACL", "GETUSER", &creds.user],
        &["GET", &old_key],
        &["ACL", "DELUSER", &old_user],
        &["DEL", &old_key],
    ])
    .await;
    assert!(is_nil(&got[0]), "its user is dropped: {got:?}");
    assert_eq!(got[1], "$4 4242", "the leftover keys are left as they were");
}

/// An app whose Redis user an older Hangar made, named after the app's
/// name (`hangar_<name>`, keys under `<name>:`): after the upgrade its
/// machines get the same credentials, provisioning leaves them as they
/// are, and deprovisioning drops exactly that user and those keys.
#[tokio::test]
async fn a_user_made_by_name_before_the_upgrade_keeps_working_and_is_dropped() {
    redis(&[&["PING"]]).await;
    let name = format!("rd-legacy-{}", std::process::id());
    let Fixture {
        dir: _dir,
        store,
        vault,
        apps,
    } = fixture(&[&name]).await;
    let app = apps[0].clone();
    // What the older Hangar made and recorded.
    let server = RedisServer::new("redis://127.0.0.1:6379").unwrap();
    let key = hangar_resources::ResourceKey::parse(&name).unwrap();
    let creds = server.ensure_user(&key, "0011aabbccddeeff").await.unwrap();
    assert_eq!(
        (creds.user.as_str(), creds.prefix.as_str()),
        (&*format!("hangar_{name}"), &*format!("{name}:"))
    );
    let sealed = vault.seal(
        &format!("{}/redis", app.id),
        &serde_json::to_vec(&creds).unwrap(),
    );
    store
        .put_resource(hangar_store::ResourceRow {
            app_id: app.id.clone(),
            kind: ResourceKind::Redis.as_str().into(),
            name: creds.user.clone(),
            status: "ready".into(),
            detail: None,
            sealed: Some(sealed),
            updated_at: 0,
        })
        .await
        .unwrap();
    let kept = format!("{name}:cart");
    let got = redis(&[
        &["AUTH", &creds.user, &creds.password],
        &["SET", &kept, "3 items"],
    ])
    .await;
    assert_eq!(got, ["+OK", "+OK"]);

    let res = Resources::new(store, vault, None).with_redis(server);
    let kinds: BTreeSet<_> = [ResourceKind::Redis].into();
    res.provision(&app, &kinds, &|_| {}).await.unwrap();
    let now = res.for_machine(&app.id).await.unwrap().redis.unwrap();
    assert_eq!(now, creds, "the same user, password and prefix");
    let got = redis(&[&["AUTH", &now.user, &now.password], &["GET", &kept]]).await;
    assert_eq!(got, ["+OK", "$7 3 items"], "its data is still its own");

    res.deprovision(&app).await.unwrap();
    let got = redis(&[&["ACL", "GETUSER", &creds.user], &["EXISTS", &kept]]).await;
    assert!(is_nil(&got[0]), "the user is dropped: {got:?}");
    assert_eq!(got[1], ":0", "its keys are dropped");
}
