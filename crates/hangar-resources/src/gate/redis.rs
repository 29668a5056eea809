//! The Redis gate.
//!
//! Every client request is parsed (RESP arrays of bulk strings, and inline
//! commands) and re-encoded as a RESP array before it reaches the server,
//! so the server executes exactly what the gate checked.
//!
//! **Before authentication** each request is read whole (at most
//! [`Limits::max_request_head`](super::Limits) bytes and 16 arguments, as
//! Redis bounds unauthenticated clients) and answered one at a time:
//!
//! - `AUTH <user> <password>` and `HELLO <ver> [AUTH <user> <password>]
//!   [SETNAME <name>]`: the user must be the grant's, and the gate checks
//!   the password itself, in constant time, so a passwordless `default` user
//!   on the server never matters. `AUTH <password>` (the default user) is
//!   refused. Only then is the request sent to the server (connected on
//!   first need), and its reply relayed; the client counts as authenticated
//!   only if the server said `+OK` (or a HELLO map), since a failed `AUTH`
//!   would leave the server-side connection logged in as `default`.
//! - `PING` and `QUIT` are answered by the gate.
//! - Anything else: `-NOAUTH hangar: authenticate as <user> first`, never
//!   forwarded.
//!
//! **After authentication** replies are streamed back unparsed, while
//! requests are still parsed: the leading arguments a rule needs are held
//! (the rest, up to [`Limits::redis_max_bulk`](super::Limits), streamed
//! through), so pipelining and RESP3 pushes keep working. Refused: an
//! `AUTH`/`HELLO … AUTH` naming another user or a wrong password, `RESET`
//! (it logs the connection back in as `default`), what `-@admin` and
//! `-@dangerous` cover (`ACL`, `CONFIG`, `DEBUG`, `MODULE`, `SHUTDOWN`,
//! `REPLICAOF`, `MIGRATE`, `SYNC`, `FAILOVER`, `MONITOR`, `INFO`, `KEYS`,
//! `FLUSHALL`, …), what lists or changes other tenants' data (`RANDOMKEY`,
//! `PUBSUB`, `FUNCTION`, `SCRIPT FLUSH|KILL`, `SCAN` without a `MATCH` under
//! the app's key prefix), and every `CLIENT` subcommand but the
//! connection's own (`CLIENT TRACKING … BCAST` only with `PREFIX`es under
//! the key prefix). The server's ACL refuses most of these too: the gate
//! is a second wall.
//!
//! A refused request after authentication cannot be answered by the gate
//! without breaking the order of replies (earlier pipelined requests may
//! still be in flight). It is replaced, in place, by a command whose name is
//! the refusal (`NOPERM hangar: CONFIG is not allowed through the gate`):
//! no command has a space in its name, so the server answers it with one
//! error in order (`-ERR unknown command 'NOPERM hangar: …'`), inside
//! `MULTI` it aborts the transaction, and the connection stays open.
//! Malformed requests close the connection.
//!
//! Channels are left to the server's ACL (`&<prefix>*`).

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, timeout_at};

use super::{GateError, Grant, Inbound, Shared, one_line, proto, secret_eq};

/// Redis' own bound on an unauthenticated request's arguments is 10.
const PRE_AUTH_ARGS: usize = 16;
/// Arguments of one request after authentication.
const MAX_ARGS: usize = 1 << 24;
/// Commands refused outright after authentication: Redis 7's `@admin`
/// and `@dangerous`, `RESET`, and what lists or changes other tenants'
/// data.
const DENIED: &str = "ACL BGREWRITEAOF BGSAVE CLUSTER CONFIG DEBUG FAILOVER FLUSHALL FLUSHDB \
    FUNCTION INFO KEYS LASTSAVE LATENCY MIGRATE MODULE MONITOR PFDEBUG PFSELFTEST PSYNC PUBSUB \
    RANDOMKEY REPLCONF REPLICAOF RESET RESTORE RESTORE-ASKING ROLE SAVE SHUTDOWN SLAVEOF \
    SLOWLOG SORT SORT_RO SWAPDB SYNC";
/// The `CLIENT` subcommands about the connection itself.
const CLIENT_OWN: &str = "CACHING GETNAME GETREDIR HELP ID INFO NO-TOUCH REPLY SETINFO SETNAME \
    TRACKING TRACKINGINFO";

/// Whether `word` is one of `list`'s.
fn listed(list: &str, word: &str) -> bool {
    list.split_ascii_whitespace().any(|w| w == word)
}

/// What a machine may authenticate as, and its keys.
#[derive(Clone)]
pub struct Policy {
    pub user: String,
    pub password: String,
    /// Every key the app may touch starts with this (`<key>:`, from the
    /// grant: what the app's credentials record).
    pub key_prefix: String,
}

/// A user name and password, as a request carries them.
pub type Credentials<'a> = (&'a [u8], &'a [u8]);

/// What the gate does with a request before authentication.
#[derive(Debug, PartialEq, Eq)]
pub enum PreAuth {
    /// Send it to the server, and learn whether it authenticated.
    Authenticate { hello: bool },
    /// Answer it with these bytes.
    Reply(Vec<u8>),
    /// `+OK`, then close.
    Quit,
}

/// A request's length and the leading arguments the gate holds; the rest
/// (`argc - args.len()`) are still on the wire.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub argc: usize,
    pub args: Vec<Vec<u8>>,
}

/// Bounds on reading a request.
#[derive(Clone, Copy)]
struct Caps {
    /// Bytes held (arguments plus 32 per argument).
    head: usize,
    bulk: usize,
    args: usize,
}

fn upper(arg: &[u8]) -> String {
    if arg.len() > 32 {
        return String::new();
    }
    String::from_utf8_lossy(arg).to_ascii_uppercase()
}

/// Decimal, optionally negative; nothing else (no `+`, no spaces).
fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(if neg { -n } else { n })
}

/// The canonical RESP encoding of a request's head.
pub fn encode(argc: usize, args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{argc}\r\n").into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Inbound<R, W> {
    /// A bulk string's `$<len>` line.
    async fn bulk_len(&mut self, max: usize) -> Result<usize, GateError> {
        let line = self
            .line(32, true)
            .await?
            .ok_or_else(|| proto("the connection closed in a request"))?;
        match line.split_first() {
            Some((b'$', n)) => match parse_int(n) {
                Some(n) if n >= 0 && n as u64 <= max as u64 => Ok(n as usize),
                _ => Err(proto(format!(
                    "a bulk length {:?}",
                    String::from_utf8_lossy(n)
                ))),
            },
            _ => Err(proto("expected '$' in a request")),
        }
    }

    /// Reads a request's head: its first arguments, as many as `need` asks
    /// for once it knows the command and the argument count (everything for
    /// an inline command). `None` at EOF.
    async fn head(
        &mut self,
        caps: Caps,
        need: impl Fn(&str, usize) -> usize,
    ) -> Result<Option<Head>, GateError> {
        loop {
            if self.fill().await? == 0 {
                return Ok(None);
            }
            if self.r.buffer()[0] != b'*' {
                let Some(line) = self.line(caps.head, false).await? else {
                    return Ok(None);
                };
                if line.iter().any(|&b| b == b'"' || b == b'\'') {
                    return Err(proto("quoted inline commands are not supported"));
                }
                let args: Vec<Vec<u8>> = line
                    .split(|b| b.is_ascii_whitespace() || *b == 0x0b)
                    .filter(|a| !a.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect();
                if args.len() > caps.args {
                    return Err(proto("too many arguments"));
                }
                if args.is_empty() {
                    continue; // Redis skips empty lines too.
                }
                return Ok(Some(Head {
                    argc: args.len(),
                    args,
                }));
            }
            let line = self
                .line(32, true)
                .await?
                .ok_or_else(|| proto("the connection closed in a request"))?;
            let argc = match parse_int(&line[1..]) {
                Some(n) if n <= 0 => continue, // Redis skips `*0` and `*-1`.
                Some(n) if n as u64 <= caps.args as u64 => n as usize,
                _ => return Err(proto("a bad or too large argument count")),
            };
            let mut args = Vec::new();
            let (mut wanted, mut held) = (1, 0);
            while args.len() < wanted.min(argc) {
                let len = self.bulk_len(caps.bulk.min(caps.head)).await?;
                held += len + 32;
                if held > caps.head {
                    return Err(proto("a request head over the gate's limit"));
                }
                let arg = self.take(len, false, true).await?;
                self.crlf().await?;
                args.push(arg);
                if args.len() == 1 {
                    wanted = need(&upper(&args[0]), argc).max(1);
                }
            }
            return Ok(Some(Head { argc, args }));
        }
    }

    /// Streams (or drops) a request's remaining `n` arguments.
    async fn rest(&mut self, n: usize, forward: bool, max: usize) -> Result<(), GateError> {
        for _ in 0..n {
            let len = self.bulk_len(max).await?;
            if forward && let Some(up) = &mut self.up {
                up.write_all(format!("${len}\r\n").as_bytes()).await?;
            }
            self.take(len, forward, false).await?;
            self.crlf().await?;
            if forward && let Some(up) = &mut self.up {
                up.write_all(b"\r\n").await?;
            }
        }
        Ok(())
    }
}

/// How many leading arguments a rule needs to see.
fn needed(cmd: &str, argc: usize) -> usize {
    match cmd {
        "AUTH" | "HELLO" | "SCAN" | "CLIENT" => argc,
        "SCRIPT" => 2,
        _ => 1,
    }
}

fn check_creds(user: &[u8], password: &[u8], policy: &Policy) -> Result<(), String> {
    if user != policy.user.as_bytes() {
        return Err(format!(
            "NOPERM hangar: this machine may authenticate only as {}",
            one_line(&policy.user)
        ));
    }
    if !secret_eq(password, policy.password.as_bytes()) {
        return Err("WRONGPASS invalid username-password pair or user is disabled.".into());
    }
    Ok(())
}

/// `AUTH`'s rule; the error is the refusal.
fn check_auth(args: &[Vec<u8>], policy: &Policy) -> Result<(), String> {
    match args {
        [_, _] => Err(format!(
            "NOPERM hangar: AUTH <password> is the default user; this machine may \
             authenticate only as {}",
            one_line(&policy.user)
        )),
        [_, user, password] => check_creds(user, password, policy),
        _ => Err("ERR wrong number of arguments for 'auth' command".into()),
    }
}

/// `HELLO`'s `AUTH` option, parsed as Redis does (`helloCommand`): the
/// protocol version first, then `AUTH <user> <pass>` and `SETNAME <name>`
/// in any order; anything else is a syntax error (Redis then authenticates
/// no one). More than one `AUTH` is refused (Redis would take the last).
pub fn hello_auth(args: &[Vec<u8>]) -> Result<Option<Credentials<'_>>, String> {
    let mut auth = None;
    let mut j = 2;
    while j < args.len() {
        let more = args.len() - 1 - j;
        match upper(&args[j]).as_str() {
            "AUTH" if more >= 2 => {
                if auth.is_some() {
                    return Err("ERR hangar: HELLO with more than one AUTH".into());
                }
                auth = Some((args[j + 1].as_slice(), args[j + 2].as_slice()));
                j += 3;
            }
            "SETNAME" if more >= 1 => j += 2,
            _ => {
                let opt = one_line(&String::from_utf8_lossy(&args[j]));
                return Err(format!("ERR Syntax error in HELLO option '{opt}'"));
            }
        }
    }
    Ok(auth)
}

/// The rule before authentication.
pub fn pre_auth(args: &[Vec<u8>], policy: &Policy) -> PreAuth {
    let reply = |msg: String| PreAuth::Reply(format!("-{msg}\r\n").into_bytes());
    let noauth = || {
        reply(format!(
            "NOAUTH hangar: authenticate as {} first",
            one_line(&policy.user)
        ))
    };
    let Some(first) = args.first() else {
        return noauth();
    };
    match (upper(first).as_str(), args) {
        ("PING", [_]) => PreAuth::Reply(b"+PONG\r\n".to_vec()),
        ("PING", [_, msg]) => {
            let mut out = format!("${}\r\n", msg.len()).into_bytes();
            out.extend_from_slice(msg);
            out.extend_from_slice(b"\r\n");
            PreAuth::Reply(out)
        }
        ("PING", _) => reply("ERR wrong number of arguments for 'ping' command".into()),
        ("QUIT", _) => PreAuth::Quit,
        ("AUTH", _) => match check_auth(args, policy) {
            Ok(()) => PreAuth::Authenticate { hello: false },
            Err(msg) => reply(msg),
        },
        ("HELLO", _) => match hello_auth(args) {
            Ok(Some((user, password))) => match check_creds(user, password, policy) {
                Ok(()) => PreAuth::Authenticate { hello: true },
                Err(msg) => reply(msg),
            },
            Ok(None) => noauth(),
            Err(msg) => reply(msg),
        },
        _ => noauth(),
    }
}

/// The rule after authentication; the error is the refusal.
pub fn after_auth(args: &[Vec<u8>], policy: &Policy) -> Result<(), String> {
    let cmd = args.first().map(|a| upper(a)).unwrap_or_default();
    let refuse = |what: &str| {
        Err(format!(
            "NOPERM hangar: {what} is not allowed through the gate"
        ))
    };
    let sub = args.get(1).map(|a| upper(a)).unwrap_or_default();
    match cmd.as_str() {
        "AUTH" => check_auth(args, policy),
        "HELLO" => match hello_auth(args)? {
            Some((user, password)) => check_creds(user, password, policy),
            None => Ok(()),
        },
        "CLIENT" if !listed(CLIENT_OWN, &sub) => refuse(&format!("CLIENT {sub}")),
        "CLIENT" if sub == "TRACKING" => {
            let (mut bcast, mut prefixes, mut j) = (false, Vec::new(), 3);
            while j < args.len() {
                match upper(&args[j]).as_str() {
                    "PREFIX" | "REDIRECT" if j + 1 >= args.len() => break,
                    "PREFIX" => {
                        prefixes.push(&args[j + 1]);
                        j += 2;
                    }
                    "REDIRECT" => j += 2,
                    opt => {
                        bcast |= opt == "BCAST";
                        j += 1;
                    }
                }
            }
            let own = |p: &&Vec<u8>| p.starts_with(policy.key_prefix.as_bytes());
            match bcast && (prefixes.is_empty() || !prefixes.iter().all(own)) {
                true => refuse(&format!(
                    "CLIENT TRACKING BCAST without a PREFIX under {}",
                    one_line(&policy.key_prefix)
                )),
                false => Ok(()),
            }
        }
        "SCRIPT" if sub == "FLUSH" || sub == "KILL" => refuse(&format!("SCRIPT {sub}")),
        "SCAN" => {
            // Every SCAN option takes one value, so the options are pairs.
            let patterns: Vec<&Vec<u8>> = args
                .get(2..)
                .unwrap_or_default()
                .chunks(2)
                .filter(|pair| upper(&pair[0]) == "MATCH")
                .filter_map(|pair| pair.get(1))
                .collect();
            let own = patterns
                .iter()
                .all(|p| p.starts_with(policy.key_prefix.as_bytes()));
            match own && !patterns.is_empty() {
                true => Ok(()),
                false => refuse(&format!(
                    "SCAN without MATCH {}*",
                    one_line(&policy.key_prefix)
                )),
            }
        }
        c if listed(DENIED, c) => refuse(c),
        _ => Ok(()),
    }
}

/// Reads one whole reply (RESP2 or RESP3) from the server, at most `max`
/// bytes, for the gate to judge and relay before authentication.
pub async fn read_reply(
    r: &mut (impl AsyncBufRead + Unpin),
    max: usize,
) -> Result<Vec<u8>, GateError> {
    let mut out = Vec::new();
    let mut pending: usize = 1;
    while pending > 0 {
        pending -= 1;
        let start = out.len();
        let budget = (max + 1).saturating_sub(start) as u64;
        (&mut *r).take(budget).read_until(b'\n', &mut out).await?;
        if !out.ends_with(b"\r\n") || out.len() > max {
            return Err(proto("a truncated or oversized reply from the server"));
        }
        let line = &out[start..out.len() - 2];
        let (&tag, rest) = line.split_first().ok_or_else(|| proto("an empty reply"))?;
        let count = || match parse_int(rest) {
            Some(n) if n <= max as i64 => Ok(n),
            _ => Err(proto("a bad length in a reply")),
        };
        match tag {
            b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let n = count()?;
                if n >= 0 {
                    let mut bulk = vec![0u8; n as usize + 2];
                    r.read_exact(&mut bulk).await?;
                    if !bulk.ends_with(b"\r\n") {
                        return Err(proto("a bulk reply not ended by CRLF"));
                    }
                    out.extend_from_slice(&bulk);
                }
            }
            b'*' | b'~' | b'>' => pending += count()?.max(0) as usize,
            b'%' => pending += 2 * count()?.max(0) as usize,
            b'|' => pending += 2 * count()?.max(0) as usize + 1,
            _ => return Err(proto("an unknown reply type")),
        }
        if out.len() > max {
            return Err(proto("an oversized reply from the server"));
        }
    }
    Ok(out)
}

/// Serves one connection of the Redis gate.
pub(crate) async fn handle(
    stream: TcpStream,
    grant: Option<Grant>,
    shared: &Shared,
) -> Result<(), GateError> {
    let (cr, mut cw) = stream.into_split();
    let Some(redis) = grant.and_then(|g| g.redis) else {
        cw.write_all(b"-NOPERM hangar: this machine has no Redis\r\n")
            .await?;
        return Err(GateError::Refused("no Redis grant".into()));
    };
    let policy = Policy {
        user: redis.user,
        password: redis.password,
        key_prefix: redis.prefix,
    };
    let limits = &shared.limits;
    let mut client = Inbound {
        r: BufReader::new(cr),
        up: None,
    };
    let timeout = limits.handshake_timeout;
    let deadline = Instant::now() + timeout;
    let authed = timeout_at(
        deadline,
        authenticate(&mut client, &mut cw, &policy, shared),
    )
    .await
    .map_err(|_| GateError::Timeout(timeout));
    let (mut ur, uw) = match authed {
        Ok(Ok(Some(upstream))) => upstream,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) | Err(e) => {
            let msg = one_line(&e.to_string());
            let _ = cw
                .write_all(format!("-ERR hangar: {msg}\r\n").as_bytes())
                .await;
            return Err(e);
        }
    };
    client.up = Some(BufWriter::new(uw));
    let caps = Caps {
        head: limits.max_request_head,
        bulk: limits.redis_max_bulk,
        args: MAX_ARGS,
    };
    let c2s = async {
        while let Some(head) = client.head(caps, needed).await? {
            let rest = head.argc - head.args.len();
            let verdict = after_auth(&head.args, &policy);
            let up = client.up.as_mut().ok_or_else(|| proto("no server"))?;
            match &verdict {
                Ok(()) => up.write_all(&encode(head.argc, &head.args)).await?,
                Err(why) => {
                    tracing::debug!(user = %policy.user, refusal = %why, "redis gate: refused");
                    // In place of the request: an error reply in order.
                    let name = why.chars().take(120).collect::<String>().into_bytes();
                    up.write_all(&encode(1, &[name])).await?;
                }
            }
            client.rest(rest, verdict.is_ok(), caps.bulk).await?;
        }
        if let Some(up) = &mut client.up {
            up.flush().await?;
            up.shutdown().await?;
        }
        Ok::<(), GateError>(())
    };
    let s2c = async {
        tokio::io::copy(&mut ur, &mut cw).await?;
        Ok::<(), GateError>(())
    };
    tokio::pin!(c2s, s2c);
    tokio::select! {
        r = &mut s2c => r,
        r = &mut c2s => {
            r?;
            s2c.await
        }
    }
}

type Upstream = (BufReader<OwnedReadHalf>, OwnedWriteHalf);

/// Answers requests until the client has authenticated as the grant's user
/// (the server connection, logged in) or left (`None`).
async fn authenticate<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    client: &mut Inbound<R, W>,
    cw: &mut (impl AsyncWrite + Unpin),
    policy: &Policy,
    shared: &Shared,
) -> Result<Option<Upstream>, GateError> {
    let caps = Caps {
        head: shared.limits.max_request_head,
        bulk: shared.limits.max_request_head,
        args: PRE_AUTH_ARGS,
    };
    let mut upstream: Option<Upstream> = None;
    while let Some(head) = client.head(caps, |_, argc| argc).await? {
        let hello = match pre_auth(&head.args, policy) {
            PreAuth::Reply(bytes) => {
                cw.write_all(&bytes).await?;
                continue;
            }
            PreAuth::Quit => {
                cw.write_all(b"+OK\r\n").await?;
                return Ok(None);
            }
            PreAuth::Authenticate { hello } => hello,
        };
        let (ur, uw) = match &mut upstream {
            Some(u) => u,
            None => {
                let (r, w) = shared.connect_upstream().await?.into_split();
                upstream.insert((BufReader::new(r), w))
            }
        };
        uw.write_all(&encode(head.argc, &head.args)).await?;
        let reply = read_reply(ur, shared.limits.max_request_head).await?;
        cw.write_all(&reply).await?;
        let ok = match hello {
            true => matches!(reply.first(), Some(b'%' | b'*')),
            false => reply == b"+OK\r\n",
        };
        if ok {
            return Ok(upstream);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            user: "hangar_todo".into(),
            password: "pw".into(),
            key_prefix: "todo:".into(),
        }
    }

    fn head(argc: usize, line: &str) -> Head {
        Head {
            argc,
            args: words(line),
        }
    }

    /// Reads every request in `input` as the gate does after
    /// authentication: what it forwards, and the error it stopped on.
    async fn heads(input: &[u8], forward: bool) -> (Vec<Head>, Vec<u8>, Option<String>) {
        let (mut out, mut got) = (Vec::new(), Vec::new());
        let caps = Caps {
            head: 1024,
            bulk: 1 << 20,
            args: 64,
        };
        let mut client = Inbound {
            r: BufReader::new(input),
            up: Some(BufWriter::new(&mut out)),
        };
        let run = async {
            while let Some(h) = client.head(caps, needed).await? {
                if forward && let Some(up) = &mut client.up {
                    up.write_all(&encode(h.argc, &h.args)).await?;
                }
                client
                    .rest(h.argc - h.args.len(), forward, caps.bulk)
                    .await?;
                got.push(h);
            }
            Ok::<(), GateError>(())
        };
        let err = run.await.err().map(|e| e.to_string());
        if let Some(up) = &mut client.up {
            up.flush().await.unwrap();
        }
        drop(client);
        (got, out, err)
    }

    #[tokio::test]
    async fn requests_are_parsed_and_re_encoded() {
        let input = b"*3\r\n$3\r\nSET\r\n$6\r\ntodo:k\r\n$2\r\nhi\r\nPING  x\r\n\r\n*0\r\nget\tk\n";
        let (got, out, err) = heads(input, true).await;
        assert_eq!(err, None);
        assert_eq!(got, [head(3, "SET"), head(2, "PING x"), head(2, "get k")]);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$6\r\ntodo:k\r\n$2\r\nhi\r\n\
              *2\r\n$4\r\nPING\r\n$1\r\nx\r\n*2\r\n$3\r\nget\r\n$1\r\nk\r\n"
        );
        // AUTH is held whole, so its rule sees the user.
        let (got, _, _) = heads(b"*3\r\n$4\r\nauth\r\n$1\r\nu\r\n$1\r\np\r\n", true).await;
        assert_eq!(got[0].args, words("auth u p"));
        // Dropped arguments are read, not forwarded.
        let (_, out, err) = heads(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", false).await;
        assert_eq!((out.as_slice(), err), (&b""[..], None));
    }

    #[tokio::test]
    async fn malformed_requests_are_errors() {
        for bad in [
            &b"*2\r\n$3\r\nGET\r\n$1\r\nkX\r\n"[..],
            b"*1\r\n$3\r\nGETXX",
            b"*1\r\n+GET\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$+3\r\nGET\r\n",
            b"*x\r\n",
            b"*1\n$3\r\nGET\r\n",
            b"SET \"a b\" c\r\n",
            b"*1\r\n$2000\r\n",
        ] {
            let (_, _, err) = heads(bad, true).await;
            assert!(err.is_some(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// Space-separated words, `''` for an empty one.
    fn words(line: &str) -> Vec<Vec<u8>> {
        line.split(' ')
            .map(|w| w.trim_matches('\'').as_bytes().to_vec())
            .collect()
    }

    #[test]
    fn before_auth() {
        let p = policy();
        for case in [
            "PING => +PONG\r\n",
            "ping hi => $2\r\nhi\r\n",
            "QUIT => Quit",
            "GET todo:k => -NOAUTH hangar: authenticate as hangar_todo first\r\n",
            "AUTH pw => -NOPERM hangar: AUTH <password> is the default user",
            "AUTH default '' => -NOPERM hangar: this machine may authenticate only as",
            "AUTH hangar_todo nope => -WRONGPASS",
            "auth hangar_todo pw => Authenticate { hello: false }",
            "HELLO 3 SETNAME x AUTH hangar_todo pw => Authenticate { hello: true }",
            "HELLO 3 => -NOAUTH",
            "HELLO 3 AUTH default pw => -NOPERM",
            "HELLO 3 AUTH hangar_todo => -ERR Syntax error in HELLO option 'AUTH'",
            "HELLO 3 AUTH hangar_todo pw AUTH default x => -ERR hangar: HELLO with more",
        ] {
            let (request, reply) = case.split_once(" => ").unwrap();
            let got = match pre_auth(&words(request), &p) {
                PreAuth::Reply(b) => String::from_utf8(b).unwrap(),
                other => format!("{other:?}"),
            };
            assert!(got.starts_with(reply), "{request}: {got}");
        }
    }

    #[test]
    fn after_auth_rules() {
        let p = policy();
        for fine in [
            "GET todo:k",
            "AUTH hangar_todo pw",
            "HELLO 3",
            "CLIENT SETNAME x",
            "CLIENT TRACKING ON BCAST PREFIX todo:a",
            "CLIENT TRACKING on",
            "SCRIPT LOAD x",
            "SCAN 0 MATCH todo:* COUNT 10",
            "EVAL x 0",
        ] {
            assert_eq!(after_auth(&words(fine), &p), Ok(()), "{fine}");
        }
        for refused in [
            "AUTH x",
            "AUTH default ''",
            "AUTH hangar_todo wrong",
            "HELLO 3 AUTH default ''",
            "RESET",
            "ACL WHOAMI",
            "FLUSHALL",
            "KEYS *",
            "CLIENT LIST",
            "CLIENT KILL ID 1",
            "CLIENT TRACKING ON BCAST",
            "CLIENT TRACKING ON BCAST PREFIX todo: PREFIX other:",
            "SCRIPT FLUSH",
            "FUNCTION LIST",
            "PUBSUB CHANNELS",
            "SCAN 0",
            "SCAN 0 MATCH todo:* MATCH *",
            "SCAN 0 MATCH *",
        ] {
            assert!(after_auth(&words(refused), &p).is_err(), "{refused}");
        }
        assert_eq!(
            after_auth(&words("config get *"), &p),
            Err("NOPERM hangar: CONFIG is not allowed through the gate".into())
        );
    }

    #[tokio::test]
    async fn replies_are_read_whole() {
        let auth = b"+OK\r\nrest";
        assert_eq!(read_reply(&mut &auth[..], 100).await.unwrap(), b"+OK\r\n");
        let hello = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nmodules\r\n*0\r\n+next";
        let got = read_reply(&mut &hello[..], 1000).await.unwrap();
        assert_eq!(got, &hello[..hello.len() - 5]);
        let attr = b"|1\r\n+a\r\n:1\r\n*2\r\n$-1\r\n_\r\n";
        assert_eq!(read_reply(&mut &attr[..], 1000).await.unwrap(), attr);
        assert!(read_reply(&mut &b"+OK"[..], 100).await.is_err());
        assert!(read_reply(&mut &b"$10\r\nabc\r\n"[..], 100).await.is_err());
        assert!(read_reply(&mut &b"+0123456789\r\n"[..], 8).await.is_err());
        assert!(read_reply(&mut &b"?\r\n"[..], 8).await.is_err());
    }

    #[test]
    fn ints() {
        assert_eq!(parse_int(b"12"), Some(12));
        assert_eq!(parse_int(b"-1"), Some(-1));
        let bad: [&[u8]; 7] = [
            b"",
            b"-",
            b"+1",
            b" 1",
            b"1 ",
            b"0x1",
            b"9999999999999999999",
        ];
        for bad in bad {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }
}
