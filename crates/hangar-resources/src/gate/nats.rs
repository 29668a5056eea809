//! The NATS gate.
//!
//! The gate connects to the server, relays its `INFO` line, and then
//! parses every client op (text protocol: one line, names case-insensitive,
//! arguments split on spaces and tabs, at most
//! [`Limits::nats_max_line`](super::Limits) bytes; `CONNECT` up to
//! `max_request_head`). The first op must be `CONNECT`, within the
//! handshake deadline. Every op is re-encoded from what the gate parsed
//! (`CONNECT`'s JSON re-serialised), and a line with a `\r` anywhere but
//! before its `\n`, or another control character, is a protocol error, so
//! the server cannot read an op differently from the gate.
//!
//! The rule, with `P` the grant's prefix (e.g. `hangar.todo.`):
//!
//! - `SUB <subject> [queue] <sid>`: the subject must start with `P` and
//!   have something after it; wildcards are fine after it (`hangar.todo.>`),
//!   so `>`, `hangar.>` and `hangar.other.x` are refused.
//! - `PUB`/`HPUB <subject> [reply-to] …`: the subject, and the reply-to
//!   subject if any, must start with `P`. Request/reply inboxes must
//!   therefore be under the prefix too (e.g. async-nats'
//!   `custom_inbox_prefix("hangar.todo._INBOX")`); the default `_INBOX.` is
//!   refused. Payloads are capped at the smaller of
//!   [`Limits::nats_max_payload`](super::Limits) and the server's
//!   `max_payload`; over it the connection is closed, as nats-server does.
//! - `UNSUB`, `PING`, `PONG`, `CONNECT`: relayed.
//!
//! A refused op gets `-ERR 'Permissions Violation for Subscription to
//! "<subject>"'` (or `… for Publish to …`, `… for Publish with Reply of …`),
//! as nats-server words it, and **the connection stays open**, as
//! nats-server keeps it open; a refused `PUB`'s payload is read and dropped.
//! Unknown ops and malformed lines get an `-ERR` and close.
//!
//! Server→client bytes are relayed unchanged: deliveries (`MSG`/`HMSG`) are
//! for the client's own SIDs only, since its `SUB`s were filtered. The gate
//! follows just their framing (op line, then the payload length the line
//! names) so that its own `-ERR` lines go in between two server ops, never
//! into the middle of one.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::io::{BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};

use super::{GateError, Grant, Inbound, Shared, proto};

/// The longest server op line the gate follows (`INFO` can be long).
const MAX_SERVER_LINE: usize = 1 << 20;

/// One client op, as the gate parsed it.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    /// The `CONNECT` options, re-serialised.
    Connect(String),
    Ping,
    Pong,
    Sub {
        subject: String,
        queue: Option<String>,
        sid: String,
    },
    Unsub {
        sid: String,
        max: Option<u64>,
    },
    /// `PUB` (`headers: None`) or `HPUB` (`Some(header bytes)`); `size` is
    /// the whole payload's.
    Pub {
        subject: String,
        reply: Option<String>,
        headers: Option<usize>,
        size: usize,
    },
}

impl Op {
    /// The canonical op line, `\r\n` included.
    pub fn encode(&self) -> String {
        let opt = |o: &Option<String>| o.as_ref().map(|s| format!(" {s}")).unwrap_or_default();
        match self {
            Op::Connect(json) => format!("CONNECT {json}\r\n"),
            Op::Ping => "PING\r\n".into(),
            Op::Pong => "PONG\r\n".into(),
            Op::Sub {
                subject,
                queue,
                sid,
            } => format!("SUB {subject}{} {sid}\r\n", opt(queue)),
            Op::Unsub { sid, max } => match max {
                Some(m) => format!("UNSUB {sid} {m}\r\n"),
                None => format!("UNSUB {sid}\r\n"),
            },
            Op::Pub {
                subject,
                reply,
                headers: None,
                size,
            } => format!("PUB {subject}{} {size}\r\n", opt(reply)),
            Op::Pub {
                subject,
                reply,
                headers: Some(h),
                size,
            } => format!("HPUB {subject}{} {h} {size}\r\n", opt(reply)),
        }
    }
}

/// Why an op line was not understood: the `-ERR` text, and the connection
/// closes.
#[derive(Debug, PartialEq, Eq)]
pub struct BadOp(pub String);

fn bad(msg: &str) -> BadOp {
    BadOp(msg.into())
}

fn size(s: &str) -> Result<u64, BadOp> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("Protocol Error"));
    }
    s.parse().map_err(|_| bad("Protocol Error"))
}

/// Parses one op line (without its line end), `max_line` bytes at most
/// unless it is `CONNECT`, payloads at most `max_payload`.
pub fn parse_op(line: &[u8], max_line: usize, max_payload: usize) -> Result<Op, BadOp> {
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(bad("hangar: control characters in an op"));
    }
    let line = std::str::from_utf8(line).map_err(|_| bad("hangar: an op that is not UTF-8"))?;
    let mut words = line.split([' ', '\t']).filter(|w| !w.is_empty());
    let name = words.next().unwrap_or_default().to_ascii_uppercase();
    if name == "CONNECT" {
        let json = line.trim_start_matches([' ', '\t'])[7..].trim_matches([' ', '\t']);
        return match serde_json::from_str::<Value>(json) {
            Ok(v @ Value::Object(_)) => Ok(Op::Connect(v.to_string())),
            _ => Err(bad("hangar: CONNECT without a JSON object")),
        };
    }
    if line.len() > max_line {
        return Err(bad("Maximum Control Line Exceeded"));
    }
    let args: Vec<String> = words.map(str::to_owned).collect();
    let payload = |n: &str| match size(n)? {
        n if n <= max_payload as u64 => Ok(n as usize),
        _ => Err(bad("Maximum Payload Violation")),
    };
    let mut args = args.into_iter();
    let (a, b, c, d) = (args.next(), args.next(), args.next(), args.next());
    if args.next().is_some() {
        return Err(bad("Protocol Error"));
    }
    Ok(match (name.as_str(), a, b, c, d) {
        ("PING", None, ..) => Op::Ping,
        ("PONG", None, ..) => Op::Pong,
        ("SUB", Some(subject), Some(sid), None, None) => Op::Sub {
            subject,
            queue: None,
            sid,
        },
        ("SUB", Some(subject), Some(queue), Some(sid), None) => Op::Sub {
            subject,
            queue: Some(queue),
            sid,
        },
        ("UNSUB", Some(sid), max, None, None) => Op::Unsub {
            sid,
            max: max.map(|m| size(&m)).transpose()?,
        },
        ("PUB", Some(subject), Some(n), None, None) => Op::Pub {
            subject,
            reply: None,
            headers: None,
            size: payload(&n)?,
        },
        ("PUB", Some(subject), Some(reply), Some(n), None) => Op::Pub {
            subject,
            reply: Some(reply),
            headers: None,
            size: payload(&n)?,
        },
        ("HPUB", Some(subject), reply, Some(h), Some(n))
        | ("HPUB", Some(subject), Some(h), Some(n), reply @ None) => {
            let (h, size) = (size(&h)?, payload(&n)?);
            if h > size as u64 {
                return Err(bad("Protocol Error"));
            }
            Op::Pub {
                subject,
                reply,
                headers: Some(h as usize),
                size,
            }
        }
        ("PING" | "PONG" | "SUB" | "UNSUB" | "PUB" | "HPUB", ..) => {
            return Err(bad("Protocol Error"));
        }
        _ => return Err(bad("Unknown Protocol Operation")),
    })
}

/// Whether `subject` is under `prefix` (something after it, no whitespace).
pub fn under(subject: &str, prefix: &str) -> bool {
    subject.len() > prefix.len() && subject.starts_with(prefix)
}

/// Whether a grant's prefix is one the rule can hold to: dot-separated
/// literal tokens ending in a dot.
pub fn valid_prefix(prefix: &str) -> bool {
    prefix.ends_with('.')
        && prefix[..prefix.len() - 1]
            .split('.')
            .all(|t| !t.is_empty() && !t.contains(['*', '>']) && !t.contains(char::is_whitespace))
}

/// The rule: `Err` is the `-ERR` text for a refused op (the connection
/// stays open).
pub fn check(op: &Op, prefix: &str) -> Result<(), String> {
    match op {
        Op::Sub { subject, .. } if !under(subject, prefix) => Err(format!(
            "Permissions Violation for Subscription to \"{subject}\""
        )),
        Op::Pub { subject, .. } if !under(subject, prefix) => Err(format!(
            "Permissions Violation for Publish to \"{subject}\""
        )),
        Op::Pub {
            reply: Some(reply), ..
        } if !under(reply, prefix) => Err(format!(
            "Permissions Violation for Publish with Reply of \"{reply}\""
        )),
        _ => Ok(()),
    }
}

fn err_line(msg: &str) -> Vec<u8> {
    format!("-ERR '{msg}'\r\n").into_bytes()
}

/// Follows the framing of the server's ops.
#[derive(Default)]
pub struct Framer {
    /// Payload bytes (and their `\r\n`) still to come.
    pending: usize,
    line: Vec<u8>,
}

impl Framer {
    pub fn at_boundary(&self) -> bool {
        self.pending == 0 && self.line.is_empty()
    }

    /// Takes in the next bytes from the server; returns the offset just
    /// after the last op that ends in them, if any.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<Option<usize>, GateError> {
        let (mut at, mut last) = (0, None);
        while !chunk.is_empty() {
            if self.pending > 0 {
                let k = self.pending.min(chunk.len());
                self.pending -= k;
                (at, chunk) = (at + k, &chunk[k..]);
                if self.pending == 0 {
                    last = Some(at);
                }
                continue;
            }
            let Some(i) = chunk.iter().position(|&b| b == b'\n') else {
                self.line.extend_from_slice(chunk);
                if self.line.len() > MAX_SERVER_LINE {
                    return Err(proto("a server op line over 1 MiB"));
                }
                return Ok(last);
            };
            self.line.extend_from_slice(&chunk[..i]);
            (at, chunk) = (at + i + 1, &chunk[i + 1..]);
            self.pending = payload_len(&self.line)?;
            self.line.clear();
            if self.pending == 0 {
                last = Some(at);
            }
        }
        Ok(last)
    }
}

/// How many bytes follow a server op line (`MSG`, `HMSG`: the payload and
/// its `\r\n`).
fn payload_len(line: &[u8]) -> Result<usize, GateError> {
    let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
    let words: Vec<&str> = line.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
    let total = match (words.first().map(|w| w.to_ascii_uppercase()), words.len()) {
        (Some(op), 4 | 5) if op == "MSG" => words[words.len() - 1],
        (Some(op), 5 | 6) if op == "HMSG" => words[words.len() - 1],
        (Some(op), _) if op == "MSG" || op == "HMSG" => {
            return Err(proto("a malformed MSG from the server"));
        }
        _ => return Ok(0),
    };
    let n: usize = total
        .parse()
        .map_err(|_| proto("a bad MSG size from the server"))?;
    Ok(n + 2)
}

/// Relays the server's bytes to the client, putting the gate's own lines
/// between ops.
async fn relay_server(
    mut ur: impl AsyncRead + Unpin,
    mut cw: impl AsyncWrite + Unpin,
    mut inject: mpsc::Receiver<Vec<u8>>,
) -> Result<(), GateError> {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 32 << 10];
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            msg = inject.recv(), if open && framer.at_boundary() => match msg {
                Some(m) => cw.write_all(&m).await?,
                None => open = false,
            },
            n = ur.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    break;
                }
                let chunk = &buf[..n];
                match framer.feed(chunk)? {
                    Some(end) if !inject.is_empty() => {
                        cw.write_all(&chunk[..end]).await?;
                        while let Ok(m) = inject.try_recv() {
                            cw.write_all(&m).await?;
                        }
                        cw.write_all(&chunk[end..]).await?;
                    }
                    _ => cw.write_all(chunk).await?,
                }
            }
        }
    }
    // What the gate had left to say (e.g. the error it closed on).
    while let Ok(m) = inject.try_recv() {
        cw.write_all(&m).await?;
    }
    let _ = cw.shutdown().await;
    Ok(())
}

/// Serves one connection of the NATS gate.
pub(crate) async fn handle(
    stream: TcpStream,
    grant: Option<Grant>,
    shared: &Shared,
) -> Result<(), GateError> {
    let (cr, mut cw) = stream.into_split();
    let prefix = match grant.and_then(|g| g.nats) {
        Some(n) if valid_prefix(&n.prefix) => n.prefix,
        other => {
            if let Some(n) = other {
                tracing::error!(prefix = %n.prefix, "nats gate: a grant with an unusable prefix");
            }
            cw.write_all(&err_line("Authorization Violation")).await?;
            return Err(GateError::Refused("no NATS grant".into()));
        }
    };
    let limits = &shared.limits;
    let deadline = Instant::now() + limits.handshake_timeout;
    let upstream = match shared.connect_upstream().await {
        Ok(u) => u,
        Err(e) => {
            cw.write_all(&err_line("hangar: the NATS server cannot be reached"))
                .await?;
            return Err(e);
        }
    };
    let (ur, uw) = upstream.into_split();
    let mut ur = BufReader::new(ur);
    let mut info = Vec::new();
    timeout_at(
        deadline,
        (&mut ur)
            .take(MAX_SERVER_LINE as u64)
            .read_until(b'\n', &mut info),
    )
    .await
    .map_err(|_| GateError::Timeout(limits.handshake_timeout))??;
    let json = info
        .strip_prefix(b"INFO ")
        .filter(|_| info.ends_with(b"\r\n"))
        .ok_or_else(|| proto("the server did not start with INFO"))?;
    let server_max = serde_json::from_slice::<Value>(json)
        .ok()
        .and_then(|v| v.get("max_payload")?.as_u64());
    let max_payload = match server_max {
        Some(m) if (m as usize) < limits.nats_max_payload => m as usize,
        _ => limits.nats_max_payload,
    };
    cw.write_all(&info).await?;

    let mut client = Inbound {
        r: BufReader::new(cr),
        up: Some(BufWriter::new(uw)),
    };
    let first = timeout_at(deadline, client.line(limits.max_request_head, false))
        .await
        .map_err(|_| GateError::Timeout(limits.handshake_timeout))??;
    let Some(first) = first else { return Ok(()) };
    match parse_op(&first, limits.nats_max_line, max_payload) {
        Ok(op @ Op::Connect(_)) => {
            if let Some(up) = &mut client.up {
                up.write_all(op.encode().as_bytes()).await?;
            }
        }
        Ok(_) => {
            cw.write_all(&err_line("Authorization Violation")).await?;
            return Err(GateError::Refused("an op before CONNECT".into()));
        }
        Err(BadOp(msg)) => {
            cw.write_all(&err_line(&msg)).await?;
            return Err(GateError::Protocol(msg));
        }
    }

    let (tx, rx) = mpsc::channel(64);
    let c2s = async {
        let result = relay_client(
            &mut client,
            &tx,
            &prefix,
            limits.max_request_head,
            max_payload,
            limits.nats_max_line,
        )
        .await;
        if let Some(up) = &mut client.up {
            let _ = up.flush().await;
            let _ = up.shutdown().await;
        }
        drop(tx);
        result
    };
    let s2c = relay_server(ur, cw, rx);
    tokio::pin!(c2s, s2c);
    tokio::select! {
        r = &mut s2c => r,
        r = &mut c2s => {
            // Let the server's last ops (and the gate's last error) through.
            let _ = timeout(limits.handshake_timeout, s2c).await;
            r
        }
    }
}

/// Parses, checks and forwards the client's ops after `CONNECT`.
async fn relay_client<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    client: &mut Inbound<R, W>,
    tx: &mpsc::Sender<Vec<u8>>,
    prefix: &str,
    max_head: usize,
    max_payload: usize,
    max_line: usize,
) -> Result<(), GateError> {
    let closed = || proto("the connection was closed");
    while let Some(line) = client.line(max_head, false).await? {
        if line.is_empty() {
            continue;
        }
        let op = match parse_op(&line, max_line, max_payload) {
            Ok(op) => op,
            Err(BadOp(msg)) => {
                tx.send(err_line(&msg)).await.map_err(|_| closed())?;
                return Err(GateError::Protocol(msg));
            }
        };
        let verdict = check(&op, prefix);
        if let Err(why) = &verdict {
            tracing::debug!(%prefix, refusal = %why, "nats gate: refused");
            tx.send(err_line(why)).await.map_err(|_| closed())?;
        } else if let Some(up) = &mut client.up {
            up.write_all(op.encode().as_bytes()).await?;
        }
        if let Op::Pub { size, .. } = op {
            client.take(size, verdict.is_ok(), false).await?;
            client.crlf().await?;
            if let (Ok(()), Some(up)) = (&verdict, &mut client.up) {
                up.write_all(b"\r\n").await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "hangar.todo.";

    fn op(line: &str) -> Result<Op, BadOp> {
        parse_op(line.as_bytes(), 4096, 1 << 20)
    }

    #[test]
    fn ops_parse_and_re_encode() {
        for (line, canonical) in [
            ("PING", "PING\r\n"),
            ("pong", "PONG\r\n"),
            ("sub  hangar.todo.>\t7", "SUB hangar.todo.> 7\r\n"),
            (
                "SUB hangar.todo.x workers 7",
                "SUB hangar.todo.x workers 7\r\n",
            ),
            ("UNSUB 7", "UNSUB 7\r\n"),
            ("UNSUB 7 10", "UNSUB 7 10\r\n"),
            ("PUB hangar.todo.x 5", "PUB hangar.todo.x 5\r\n"),
            (
                "pub hangar.todo.x hangar.todo.r 0",
                "PUB hangar.todo.x hangar.todo.r 0\r\n",
            ),
            ("HPUB hangar.todo.x 12 14", "HPUB hangar.todo.x 12 14\r\n"),
            (
                "HPUB hangar.todo.x hangar.todo.r 12 14",
                "HPUB hangar.todo.x hangar.todo.r 12 14\r\n",
            ),
            (
                "CONNECT {\"verbose\":false, \"name\":\"a\\nb\"}",
                "CONNECT {\"name\":\"a\\nb\",\"verbose\":false}\r\n",
            ),
        ] {
            assert_eq!(op(line).unwrap().encode(), canonical, "{line}");
        }
        for (line, err) in [
            ("FOO x", "Unknown Protocol Operation"),
            ("SUB x", "Protocol Error"),
            ("SUB a b c d", "Protocol Error"),
            ("PUB x -1", "Protocol Error"),
            ("PUB x +1", "Protocol Error"),
            ("PUB x 2000000", "Maximum Payload Violation"),
            ("HPUB x 5 4", "Protocol Error"),
            ("PING x", "Protocol Error"),
            (
                "SUB hangar.todo.x\r1",
                "hangar: control characters in an op",
            ),
            ("CONNECT [1]", "hangar: CONNECT without a JSON object"),
            ("CONNECT", "hangar: CONNECT without a JSON object"),
        ] {
            assert_eq!(op(line), Err(BadOp(err.into())), "{line}");
        }
        let long = format!("SUB hangar.todo.{} 1", "x".repeat(5000));
        assert_eq!(
            op(&long),
            Err(BadOp("Maximum Control Line Exceeded".into()))
        );
    }

    #[test]
    fn subjects_stay_under_the_prefix() {
        let verdict = |line: &str| check(&op(line).unwrap(), P);
        for fine in [
            "SUB hangar.todo.> 1",
            "SUB hangar.todo.* 1",
            "SUB hangar.todo.a.b q 1",
            "PUB hangar.todo.x 1",
            "PUB hangar.todo.x hangar.todo._INBOX.abc 1",
            "HPUB hangar.todo.x hangar.todo.r 1 1",
            "UNSUB 1",
        ] {
            assert_eq!(verdict(fine), Ok(()), "{fine}");
        }
        assert_eq!(
            verdict("SUB > 1"),
            Err("Permissions Violation for Subscription to \">\"".into())
        );
        for refused in [
            "SUB hangar.> 1",
            "SUB hangar.* 1",
            "SUB hangar.todo. 1",
            "SUB hangar.other.x 1",
            "SUB hangar.todox.x 1",
            "SUB *.todo.x 1",
            "PUB hangar.other.x 1",
            "PUB hangar.todo.x _INBOX.abc 1",
            "HPUB hangar.other.x 1 1",
        ] {
            assert!(verdict(refused).is_err(), "{refused}");
        }
        assert_eq!(
            verdict("PUB hangar.todo.x _INBOX.a 1"),
            Err("Permissions Violation for Publish with Reply of \"_INBOX.a\"".into())
        );
        assert!(valid_prefix(P));
        for bad in [
            "",
            ".",
            "hangar.todo",
            "hangar.*.",
            "hangar..",
            ">.",
            "a b.",
        ] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn server_framing() {
        let mut f = Framer::default();
        let stream = b"INFO {}\r\nMSG a.b 1 5\r\nhello\r\nHMSG a 2 r 3 5\r\nh\r\nxy\r\nPING\r\n";
        assert_eq!(f.feed(stream).unwrap(), Some(stream.len()));
        assert!(f.at_boundary());
        // Split in the middle of a payload: no boundary until it ends.
        let msg = b"MSG a.b 1 5\r\nhe";
        assert_eq!(f.feed(msg).unwrap(), None);
        assert!(!f.at_boundary());
        assert_eq!(f.feed(b"llo\r\nPI").unwrap(), Some(5));
        assert!(!f.at_boundary());
        assert_eq!(f.feed(b"NG\r\n").unwrap(), Some(4));
        assert!(f.at_boundary());
        assert!(Framer::default().feed(b"MSG a 1 x\r\n").is_err());
        assert!(Framer::default().feed(b"MSG a\r\n").is_err());
    }
}
