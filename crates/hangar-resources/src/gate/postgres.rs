//! The Postgres gate.
//!
//! The client speaks first. The gate reads its first packets (each a
//! 4-byte length and a 4-byte code, at most 10 000 bytes like Postgres):
//!
//! - `SSLRequest` / `GSSENCRequest`: answered `N` (no TLS, no GSS: the hop
//!   is the host's own loopback), then the next packet is read; at most two.
//! - `CancelRequest`: forwarded only if its backend pid and secret key are
//!   ones this gate relayed (in a `BackendKeyData`) to a connection from the
//!   **same peer** that is still open; anything else is dropped silently, as
//!   Postgres does. Passing every cancel through would let one machine try
//!   keys against other tenants' backends; refusing them all would break
//!   query cancellation (statement timeouts in clients, Ctrl-C).
//! - `StartupMessage` (protocol 3.x): parsed strictly, as Postgres does
//!   (name/value pairs, then a single terminating NUL as the last byte), and
//!   refused if a parameter name repeats (Postgres keeps the last `user`,
//!   so `user=app user=postgres` must never pass). `user` must be the
//!   grant's role and `database` (the user when absent or empty) the
//!   grant's database; `options`, `replication`, `role`,
//!   `session_authorization`, `local_preload_libraries`,
//!   `session_preload_libraries` and `_pq_.*` protocol extensions are
//!   refused. A refusal is an `ErrorResponse` (SQLSTATE 28000) naming the
//!   rule, then close.
//!
//! An admitted startup message is forwarded byte for byte. Client→server is
//! then spliced unparsed; server→client is read message by message (type,
//! length) until `ReadyForQuery`, to learn the `BackendKeyData` for the
//! cancel rule, then spliced unparsed too.
//!
//! After startup the client could `SET ROLE` or `SET SESSION
//! AUTHORIZATION`: that is the server's privilege business (the app role is
//! not a member of other roles and is not a superuser), so it is not parsed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::{GateError, Grant, PostgresGrant, Shared, secret_eq};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Postgres' own cap on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP: usize = 10_000;
/// The largest server message relayed before `ReadyForQuery`.
const MAX_SERVER_MESSAGE: usize = 1 << 20;
/// Startup parameters the gate never lets through.
const REFUSED_PARAMS: [&str; 6] = [
    "options",
    "replication",
    "role",
    "session_authorization",
    "local_preload_libraries",
    "session_preload_libraries",
];

/// A startup message's parameters (name, value), in order.
pub type Params = Vec<(Vec<u8>, Vec<u8>)>;

/// One of the client's first packets, as the gate reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    /// `SSLRequest` or `GSSENCRequest`.
    Negotiate,
    Cancel {
        pid: u32,
        key: Vec<u8>,
    },
    /// A protocol 3.x startup message's parameters, in order.
    Startup {
        params: Params,
    },
}

/// Parses a packet's body (after the length word): the code, then its
/// contents.
pub fn parse_packet(body: &[u8]) -> Result<Packet, String> {
    let Some((code, rest)) = body.split_first_chunk::<4>() else {
        return Err("a packet shorter than its code".into());
    };
    let code = u32::from_be_bytes(*code);
    match code {
        SSL_REQUEST | GSSENC_REQUEST if rest.is_empty() => Ok(Packet::Negotiate),
        CANCEL_REQUEST => match rest.split_first_chunk::<4>() {
            Some((pid, key)) if (4..=256).contains(&key.len()) => Ok(Packet::Cancel {
                pid: u32::from_be_bytes(*pid),
                key: key.to_vec(),
            }),
            _ => Err("a malformed CancelRequest".into()),
        },
        _ if code >> 16 == 3 => Ok(Packet::Startup {
            params: parse_params(rest)?,
        }),
        _ => Err(format!(
            "unsupported frontend protocol {}.{}",
            code >> 16,
            code & 0xffff
        )),
    }
}

/// Parses a startup message's parameters as Postgres does
/// (`ProcessStartupPacket`), but refuses a repeated name.
pub fn parse_params(mut rest: &[u8]) -> Result<Params, String> {
    let mut params = Params::new();
    let cstr = |b: &[u8]| -> Option<(Vec<u8>, usize)> {
        let end = b.iter().position(|&c| c == 0)?;
        Some((b[..end].to_vec(), end + 1))
    };
    loop {
        match rest {
            [0] => return Ok(params),
            [] => return Err("the startup message lacks its terminator".into()),
            _ => {}
        }
        let (name, n) = cstr(rest).ok_or("a parameter name without its NUL")?;
        if name.is_empty() {
            // An empty name ends the list, so this NUL must be the last byte.
            return Err("data after the startup message's terminator".into());
        }
        rest = &rest[n..];
        let (value, n) = cstr(rest).ok_or("a parameter without its value")?;
        rest = &rest[n..];
        if params.iter().any(|(seen, _)| *seen == name) {
            return Err(format!(
                "the startup parameter {:?} is repeated",
                String::from_utf8_lossy(&name)
            ));
        }
        params.push((name, value));
    }
}

/// Checks a startup message against the machine's grant; the error is the
/// message the client gets.
pub fn check_startup(
    params: &[(Vec<u8>, Vec<u8>)],
    grant: Option<&PostgresGrant>,
) -> Result<(), String> {
    let Some(grant) = grant else {
        return Err("hangar: this machine has no database".into());
    };
    let rule = format!(
        "hangar: this machine may connect only as {} to {}",
        super::one_line(&grant.user),
        super::one_line(&grant.database)
    );
    for (name, _) in params {
        let refused = REFUSED_PARAMS
            .iter()
            .any(|r| r.as_bytes() == name.as_slice())
            || name.starts_with(b"_pq_.");
        if refused {
            return Err(format!(
                "{rule}, without the startup parameter \"{}\"",
                super::one_line(&String::from_utf8_lossy(name))
            ));
        }
    }
    let get = |key: &str| {
        params
            .iter()
            .find(|(n, _)| n.as_slice() == key.as_bytes())
            .map(|(_, v)| v.as_slice())
    };
    let user = get("user").unwrap_or_default();
    let database = match get("database") {
        Some(d) if !d.is_empty() => d,
        _ => user,
    };
    if user != grant.user.as_bytes() || database != grant.database.as_bytes() {
        return Err(rule);
    }
    Ok(())
}

/// An `ErrorResponse` (severity FATAL) with `code` and `message`.
pub(crate) fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(tag);
        body.extend(value.bytes().filter(|&b| b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The cancel keys this gate relayed, by backend pid, with the peer whose
/// connection got them.
#[derive(Clone, Default)]
pub(crate) struct CancelKeys(Arc<Mutex<HashMap<u32, CancelEntry>>>);

struct CancelEntry {
    key: Vec<u8>,
    peer: IpAddr,
    conn: u64,
}

/// Keeps a connection's cancel key known while it lives.
pub(crate) struct CancelRegistration {
    keys: CancelKeys,
    pid: u32,
    conn: u64,
}

impl CancelKeys {
    pub(crate) fn register(&self, pid: u32, key: &[u8], peer: IpAddr) -> CancelRegistration {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let conn = NEXT.fetch_add(1, Ordering::Relaxed);
        let entry = CancelEntry {
            key: key.to_vec(),
            peer,
            conn,
        };
        self.lock().insert(pid, entry);
        CancelRegistration {
            keys: self.clone(),
            pid,
            conn,
        }
    }

    /// Whether `peer` may cancel backend `pid` with `key`.
    pub(crate) fn allows(&self, pid: u32, key: &[u8], peer: IpAddr) -> bool {
        match self.lock().get(&pid) {
            Some(e) => e.peer == peer && secret_eq(&e.key, key),
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, CancelEntry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        let mut map = self.keys.lock();
        // The pid may have been reused by a newer connection since.
        if map.get(&self.pid).is_some_and(|e| e.conn == self.conn) {
            map.remove(&self.pid);
        }
    }
}

/// Reads one client packet: its raw bytes (length included) and its parse.
async fn read_packet(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<(Vec<u8>, Result<Packet, String>), GateError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if !(8..=MAX_STARTUP).contains(&n) {
        return Err(GateError::Protocol(format!(
            "a first packet of {n} bytes (TLS without SSLRequest is not offered)"
        )));
    }
    let mut raw = vec![0u8; n];
    raw[..4].copy_from_slice(&len);
    r.read_exact(&mut raw[4..]).await?;
    let parsed = parse_packet(&raw[4..]);
    Ok((raw, parsed))
}

/// Reads packets until one that is not an SSL/GSS negotiation.
async fn read_first(
    r: &mut (impl AsyncRead + Unpin),
    w: &mut (impl AsyncWrite + Unpin),
) -> Result<(Vec<u8>, Result<Packet, String>), GateError> {
    for _ in 0..2 {
        let (raw, packet) = read_packet(r).await?;
        if packet != Ok(Packet::Negotiate) {
            return Ok((raw, packet));
        }
        w.write_all(b"N").await?;
    }
    read_packet(r).await
}

/// Serves one connection of the Postgres gate.
pub(crate) async fn handle(
    stream: TcpStream,
    peer: IpAddr,
    grant: Option<Grant>,
    shared: &Shared,
) -> Result<(), GateError> {
    let timeout = shared.limits.handshake_timeout;
    let deadline = Instant::now() + timeout;
    let (mut cr, mut cw) = stream.into_split();
    let (raw, packet) = timeout_at(deadline, read_first(&mut cr, &mut cw))
        .await
        .map_err(|_| GateError::Timeout(timeout))??;
    let params = match packet {
        Ok(Packet::Startup { params }) => params,
        Ok(Packet::Cancel { pid, key }) => {
            if !shared.cancels.allows(pid, &key, peer) {
                return Err(GateError::Refused(format!(
                    "a cancel for backend {pid} this peer did not open"
                )));
            }
            let mut up = shared.connect_upstream().await?;
            up.write_all(&raw).await?;
            up.shutdown().await?;
            return Ok(());
        }
        Ok(Packet::Negotiate) => {
            return Err(GateError::Protocol("a third negotiation request".into()));
        }
        Err(why) => {
            cw.write_all(&error_response("08P01", &format!("hangar: {why}")))
                .await?;
            return Err(GateError::Protocol(why));
        }
    };
    let pg = grant.and_then(|g| g.postgres);
    if let Err(msg) = check_startup(&params, pg.as_ref()) {
        cw.write_all(&error_response("28000", &msg)).await?;
        return Err(GateError::Refused(msg));
    }
    let upstream = match shared.connect_upstream().await {
        Ok(u) => u,
        Err(e) => {
            let msg = "hangar: the database server cannot be reached";
            cw.write_all(&error_response("08006", msg)).await?;
            return Err(e);
        }
    };
    let (mut ur, mut uw) = upstream.into_split();
    uw.write_all(&raw).await?;

    let c2s = async {
        let copied = tokio::io::copy(&mut cr, &mut uw).await;
        let _ = uw.shutdown().await;
        copied.map(drop)
    };
    let s2c = async {
        let mut registration = None;
        timeout_at(
            deadline,
            relay_until_ready(&mut ur, &mut cw, |pid, key| {
                registration = Some(shared.cancels.register(pid, key, peer));
            }),
        )
        .await
        .map_err(|_| GateError::Timeout(timeout))??;
        tokio::io::copy(&mut ur, &mut cw).await?;
        drop(registration);
        Ok::<(), GateError>(())
    };
    tokio::pin!(c2s, s2c);
    tokio::select! {
        r = &mut s2c => r,
        r = &mut c2s => {
            r?;
            // The client is done sending: let the server's last words through.
            s2c.await
        }
    }
}

/// Relays server messages until `ReadyForQuery` (or an error, after which
/// the server closes), reporting each `BackendKeyData`.
async fn relay_until_ready(
    r: &mut (impl AsyncRead + Unpin),
    w: &mut (impl AsyncWrite + Unpin),
    mut on_key: impl FnMut(u32, &[u8]),
) -> Result<(), GateError> {
    loop {
        let mut head = [0u8; 5];
        r.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=MAX_SERVER_MESSAGE).contains(&len) {
            return Err(GateError::Protocol(format!(
                "a server message of {len} bytes"
            )));
        }
        let mut body = vec![0u8; len - 4];
        r.read_exact(&mut body).await?;
        if head[0] == b'K'
            && let Some((pid, key)) = body.split_first_chunk::<4>()
        {
            on_key(u32::from_be_bytes(*pid), key);
        }
        w.write_all(&head).await?;
        w.write_all(&body).await?;
        if matches!(head[0], b'Z' | b'E') {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut b = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in pairs {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        match parse_packet(&startup(pairs)).unwrap() {
            Packet::Startup { params } => params,
            other => panic!("{other:?}"),
        }
    }

    fn grant() -> PostgresGrant {
        PostgresGrant {
            user: "hangar_todo".into(),
            database: "hangar_todo".into(),
        }
    }

    #[test]
    fn packets() {
        assert_eq!(
            parse_packet(&SSL_REQUEST.to_be_bytes()),
            Ok(Packet::Negotiate)
        );
        assert_eq!(
            parse_packet(&GSSENC_REQUEST.to_be_bytes()),
            Ok(Packet::Negotiate)
        );
        let mut cancel = CANCEL_REQUEST.to_be_bytes().to_vec();
        cancel.extend_from_slice(&[0, 0, 0, 7, 1, 2, 3, 4]);
        assert_eq!(
            parse_packet(&cancel),
            Ok(Packet::Cancel {
                pid: 7,
                key: vec![1, 2, 3, 4]
            })
        );
        assert!(parse_packet(&CANCEL_REQUEST.to_be_bytes()).is_err());
        assert!(parse_packet(&0x0002_0000u32.to_be_bytes()).is_err());
        assert!(parse_packet(&[1, 2]).is_err());
        assert_eq!(
            params(&[("user", "a"), ("database", "b")]),
            vec![
                (b"user".to_vec(), b"a".to_vec()),
                (b"database".to_vec(), b"b".to_vec())
            ]
        );
    }

    #[test]
    fn startup_layout_is_strict() {
        let mut b = startup(&[("user", "a")]);
        b.pop();
        assert!(parse_packet(&b).is_err(), "no terminator");
        let mut b = startup(&[("user", "a")]);
        b.extend_from_slice(b"user\0postgres\0\0");
        assert!(parse_packet(&b).is_err(), "data after the terminator");
        let mut b = 196_608u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"user\0");
        assert!(parse_packet(&b).is_err(), "a name without a value");
        let b = startup(&[("user", "hangar_todo"), ("user", "postgres")]);
        let err = parse_packet(&b).unwrap_err();
        assert!(err.contains("repeated"), "{err}");
    }

    #[test]
    fn startup_rules() {
        let g = grant();
        assert_eq!(
            check_startup(&params(&[("user", "hangar_todo")]), Some(&g)),
            Ok(())
        );
        let ok = params(&[
            ("user", "hangar_todo"),
            ("database", "hangar_todo"),
            ("application_name", "x"),
        ]);
        assert_eq!(check_startup(&ok, Some(&g)), Ok(()));
        let empty_db = params(&[("user", "hangar_todo"), ("database", "")]);
        assert_eq!(check_startup(&empty_db, Some(&g)), Ok(()));
        let rule = "hangar: this machine may connect only as hangar_todo to hangar_todo";
        for bad in [
            vec![("user", "postgres")],
            vec![("user", "hangar_todo"), ("database", "postgres")],
            vec![("user", "hangar_todo"), ("database", "template1")],
            vec![("user", "HANGAR_TODO")],
            vec![("database", "hangar_todo")],
        ] {
            assert_eq!(
                check_startup(&params(&bad), Some(&g)),
                Err(rule.into()),
                "{bad:?}"
            );
        }
        for param in [
            "options",
            "replication",
            "role",
            "session_authorization",
            "_pq_.x",
        ] {
            let p = params(&[("user", "hangar_todo"), (param, "postgres")]);
            let err = check_startup(&p, Some(&g)).unwrap_err();
            assert!(err.starts_with(rule) && err.contains(param), "{err}");
        }
        assert_eq!(
            check_startup(&ok, None),
            Err("hangar: this machine has no database".into())
        );
    }

    #[test]
    fn error_responses() {
        let e = error_response("28000", "no");
        assert_eq!(e[0], b'E');
        assert_eq!(
            u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize,
            e.len() - 1
        );
        assert_eq!(&e[5..], b"SFATAL\0VFATAL\0C28000\0Mno\0\0");
    }

    #[test]
    fn cancels_only_from_the_peer_that_got_the_key() {
        let keys = CancelKeys::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let reg = keys.register(42, &[1, 2, 3, 4], a);
        assert!(keys.allows(42, &[1, 2, 3, 4], a));
        assert!(!keys.allows(42, &[1, 2, 3, 4], b), "another peer");
        assert!(!keys.allows(42, &[1, 2, 3, 5], a), "a wrong key");
        assert!(!keys.allows(43, &[1, 2, 3, 4], a), "another pid");
        // The pid is reused by a newer connection: the old one's end must
        // not forget the new key.
        let newer = keys.register(42, &[9, 9, 9, 9], a);
        drop(reg);
        assert!(keys.allows(42, &[9, 9, 9, 9], a));
        drop(newer);
        assert!(!keys.allows(42, &[9, 9, 9, 9], a));
    }
}
