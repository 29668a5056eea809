//! Per-app Redis users: an ACL user of its own per app, allowed only the
//! app's key prefix and channel prefix, on the configured Redis server.
//!
//! Hangar needs four admin commands (`AUTH`, `ACL SETUSER`, `ACL DELUSER`,
//! `SCAN`/`UNLINK`), so it speaks RESP itself over one short-lived
//! connection rather than pulling in a client library.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{ResourceError, ResourceKey};

/// How long one admin exchange may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Replies larger than this are refused (SCAN pages are small).
const MAX_BULK: usize = 16 << 20;

/// How an app reaches its Redis user.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct RedisCredentials {
    /// `redis://<user>:<password>@host:port/`
    pub url: String,
    pub user: String,
    pub password: String,
    /// Every key the app may touch starts with this (`<key>:`, see
    /// [`ResourceKey::redis_prefix`]).
    pub prefix: String,
}

impl std::fmt::Debug for RedisCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCredentials")
            .field("user", &self.user)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The Redis server apps get their users on.
#[derive(Clone)]
pub struct RedisServer {
    host: String,
    port: u16,
    /// Admin user and password from the URL, if any.
    auth: Option<(Option<String>, String)>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

fn redis_err(msg: impl Into<String>) -> ResourceError {
    ResourceError::Redis(msg.into())
}

/// What an app's user may run, after `+@all -@admin -@dangerous`
/// (checked against Redis 7.0 with real attempts, `tests/redis.rs`). Key
/// and channel patterns confine commands that name keys or channels; these
/// name none, yet list, count or change what other tenants have, or reach
/// keys outside what deprovisioning cleans:
///
/// - `scan`, `randomkey`, `dbsize`: other tenants' key names and counts
///   (key patterns do not filter them). `keys`, `sort`, `sort_ro` (whose
///   `BY`/`GET` read other keys), `info` are in `@dangerous` in 7.0, and
///   denied by name as well in case a version moves them.
/// - `pubsub`: the channels in use and their subscribers.
/// - `function`: libraries are server-wide (list, dump, flush, load over
///   another tenant's). `script|flush`, `script|kill`: the script cache and
///   the running script are everyone's. `script|debug`: `SYNC` stops the
///   whole server while one app steps through its script.
/// - `client|tracking`: `BCAST` pushes invalidations of every key written
///   on the server, other tenants' names included (a `PREFIX` is not
///   checked against the key patterns). `client|list`, `client|kill`
///   (also `@admin`): other connections.
/// - `select`, `move`, `swapdb`: other databases, which deprovisioning
///   does not empty. `migrate`, `cluster` (`getkeysinslot`,
///   `countkeysinslot`, `nodes`): other servers' and slots' keys.
/// - `memory|stats`, `memory|doctor`, `memory|malloc-stats`,
///   `memory|purge`: server-wide figures and work (`memory|usage` is
///   per key, and kept).
/// - `config`, `monitor` (every command of every client), `debug`: also
///   `@admin`.
///
/// Kept: everything on the app's own keys and channels (`GET`, `SET`,
/// `INCR`, `EXPIRE`, `MULTI`/`EXEC`, `EVAL`, `PUBLISH`, `SUBSCRIBE`, …)
/// and its own connection (`PING`, `HELLO`, `CLIENT SETNAME`, `CLIENT ID`,
/// `CLIENT INFO`). Left: `COPY … DB <n>` writes into another database an
/// app can never read back (`SELECT` and `MOVE` are denied), and
/// `SCRIPT EXISTS` tells whether a script of a known hash was loaded. A
/// script that loops holds the server (Redis runs one at a time) until it
/// ends or an admin kills it: Redis has no per-user CPU limit.
pub const DENIED: &[&str] = &[
    "keys",
    "scan",
    "randomkey",
    "dbsize",
    "sort",
    "sort_ro",
    "info",
    "pubsub",
    "function",
    "script|flush",
    "script|kill",
    "script|debug",
    "client|tracking",
    "client|list",
    "client|kill",
    "select",
    "move",
    "swapdb",
    "migrate",
    "cluster",
    "memory|stats",
    "memory|doctor",
    "memory|malloc-stats",
    "memory|purge",
    "config",
    "monitor",
    "debug",
];

impl RedisServer {
    /// The server at `url` (`redis://[user[:password]@]host[:port][/]`).
    pub fn new(url: &str) -> Result<RedisServer, ResourceError> {
        let bad = |why: &str| redis_err(format!("--redis-url {why}"));
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| bad("must start with redis://"))?;
        let rest = rest.split('/').next().unwrap_or_default();
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((auth, hp)) => {
                let (user, pw) = match auth.split_once(':') {
                    Some((u, p)) => ((!u.is_empty()).then(|| u.to_owned()), p.to_owned()),
                    None => (None, auth.to_owned()),
                };
                (Some((user, pw)), hp)
            }
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse::<u16>()
                    .map_err(|_| bad(&format!("has a bad port {p:?}")))?,
            ),
            None => (hostport.to_owned(), 6379),
        };
        if host.is_empty() {
            return Err(bad("names no host"));
        }
        Ok(RedisServer { host, port, auth })
    }

    async fn connect(&self) -> Result<Conn, ResourceError> {
        let addr = format!("{}:{}", self.host, self.port);
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(&addr))
            .await
            .map_err(|_| redis_err(format!("connecting to {addr} timed out")))?
            .map_err(|e| redis_err(format!("cannot connect to {addr}: {e}")))?;
        let mut conn = Conn {
            io: BufReader::new(stream),
        };
        if let Some((user, pw)) = &self.auth {
            let mut args = vec!["AUTH"];
            if let Some(u) = user {
                args.push(u);
            }
            args.push(pw);
            conn.call(&args).await?;
        }
        Ok(conn)
    }

    /// Creates (or resets) the app's user with a new `password`: on, that
    /// password only, keys and channels under the app's prefix, every
    /// command but the admin and dangerous ones and [`DENIED`].
    pub async fn ensure_user(
        &self,
        key: &ResourceKey,
        password: &str,
    ) -> Result<RedisCredentials, ResourceError> {
        let creds = RedisCredentials {
            url: String::new(),
            user: key.redis_user()?,
            password: password.to_owned(),
            prefix: key.redis_prefix(),
        };
        self.reassert(&creds).await?;
        Ok(RedisCredentials {
            url: format!(
                "redis://{}:{password}@{}:{}/",
                creds.user, self.host, self.port
            ),
            ..creds
        })
    }

    /// Sets the user `creds` describes, as [`Self::ensure_user`] made it
    /// (Redis forgets ACL users on restart unless it has an ACL file).
    pub async fn reassert(&self, creds: &RedisCredentials) -> Result<(), ResourceError> {
        let mut conn = self.connect().await?;
        let keys = format!("~{}*", creds.prefix);
        let channels = format!("&{}*", creds.prefix);
        let pass = format!(">{}", creds.password);
        let denied: Vec<String> = DENIED.iter().map(|c| format!("-{c}")).collect();
        let mut args = vec![
            "ACL",
            "SETUSER",
            &creds.user,
            "reset",
            "on",
            &pass,
            &keys,
            &channels,
            "+@all",
            "-@admin",
            "-@dangerous",
        ];
        args.extend(denied.iter().map(String::as_str));
        match conn.call(&args).await {
            Ok(_) => Ok(()),
            // Subcommand rules (`-script|flush`) and FUNCTION are 7.0's.
            Err(ResourceError::Redis(e)) => Err(redis_err(format!(
                "{e} (Hangar needs Redis 7.0 or newer for its per-app ACL rules)"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Drops the user made from `key` and every key under its prefix.
    pub async fn drop_user(&self, key: &ResourceKey) -> Result<(), ResourceError> {
        let user = key.redis_user()?;
        let pattern = format!("{}*", key.redis_prefix());
        let mut conn = self.connect().await?;
        conn.call(&["ACL", "DELUSER", &user]).await?;
        let mut cursor = "0".to_owned();
        loop {
            let reply = conn
                .call(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", "500"])
                .await?;
            let Reply::Array(parts) = reply else {
                return Err(redis_err("SCAN: unexpected reply"));
            };
            let (Some(Reply::Bulk(Some(next))), Some(Reply::Array(keys))) =
                (parts.first(), parts.get(1))
            else {
                return Err(redis_err("SCAN: unexpected reply"));
            };
            let keys: Vec<String> = keys
                .iter()
                .filter_map(|k| match k {
                    Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                })
                .collect();
            if !keys.is_empty() {
                let mut args = vec!["UNLINK"];
                args.extend(keys.iter().map(String::as_str));
                conn.call(&args).await?;
            }
            cursor = String::from_utf8_lossy(next).into_owned();
            if cursor == "0" {
                return Ok(());
            }
        }
    }
}

struct Conn {
    io: BufReader<TcpStream>,
}

impl Conn {
    /// Sends one command and reads its reply; an error reply is an error.
    async fn call(&mut self, args: &[&str]) -> Result<Reply, ResourceError> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        let exchange = async {
            self.io.get_mut().write_all(&req).await?;
            read_reply(&mut self.io).await
        };
        // Named by its command word (and ACL's subcommand) only: other
        // arguments may be passwords.
        let what = match args {
            ["ACL", sub, ..] => format!("ACL {sub}"),
            [cmd, ..] => (*cmd).to_owned(),
            [] => String::new(),
        };
        let reply = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| redis_err(format!("{what} timed out")))?
            .map_err(|e| redis_err(format!("{what}: {e}")))?;
        reply.map_err(|msg| redis_err(format!("{what}: {msg}")))
    }
}

/// Reads one reply: `Ok(Err(msg))` for an error reply.
async fn read_reply(io: &mut BufReader<TcpStream>) -> std::io::Result<Result<Reply, String>> {
    // Iterative over nested arrays (SCAN's reply is two levels deep).
    enum Frame {
        Array(usize, Vec<Reply>),
    }
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = io.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        let line = String::from_utf8_lossy(line.trim_ascii_end()).into_owned();
        let (tag, rest) = line.split_at(line.len().min(1));
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad RESP reply");
        let mut value = match tag {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => return Ok(Err(rest.to_owned())),
            ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let len = usize::try_from(len).map_err(|_| bad())?;
                    if len > MAX_BULK {
                        return Err(bad());
                    }
                    let mut buf = vec![0; len + 2];
                    io.read_exact(&mut buf).await?;
                    buf.truncate(len);
                    Reply::Bulk(Some(buf))
                }
            }
            "*" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len <= 0 {
                    Reply::Array(Vec::new())
                } else {
                    let len = usize::try_from(len).map_err(|_| bad())?;
                    stack.push(Frame::Array(len, Vec::new()));
                    continue;
                }
            }
            _ => return Err(bad()),
        };
        // Fold the value into the arrays it completes.
        loop {
            match stack.pop() {
                None => return Ok(Ok(value)),
                Some(Frame::Array(len, mut items)) => {
                    items.push(value);
                    if items.len() < len {
                        stack.push(Frame::Array(len, items));
                        break;
                    }
                    value = Reply::Array(items);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let s = RedisServer::new("redis://127.0.0.1:6379/0").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.auth.is_none()),
            ("127.0.0.1", 6379, true)
        );
        let s = RedisServer::new("redis://admin:pw@db.internal").unwrap();
        assert_eq!(s.port, 6379);
        assert_eq!(s.auth, Some((Some("admin".into()), "pw".into())));
        let s = RedisServer::new("redis://:pw@h:1").unwrap();
        assert_eq!(s.auth, Some((None, "pw".into())));
        for bad in ["http://h", "redis://", "redis://h:notaport"] {
            assert!(RedisServer::new(bad).is_err(), "{bad}");
        }
    }
}
