//! Gates: the only way a machine reaches the shared Postgres, Redis and
//! NATS servers.
//!
//! A machine lives in its own network namespace; the node DNATs its
//! connections to a declared resource to a gate listening on the host's
//! loopback. The gate sees the machine's own address (there is no SNAT),
//! asks the [`Directory`] whose machine that is, and enforces one rule
//! whatever the server's own auth configuration says (trust auth on
//! 127.0.0.1, a passwordless `default` Redis user, NATS without auth): **a
//! machine may use only its own app's credentials and subjects.**
//!
//! - [`postgres`]: the startup message must name the app's role and
//!   database; nothing that changes the role rides along (`options`,
//!   `replication`, `role`, `session_authorization`, preload libraries).
//!   Then the bytes are spliced both ways.
//! - [`redis`]: until the client has authenticated as the app's ACL user
//!   (the password checked by the gate itself, in constant time), only
//!   `AUTH`, `HELLO … AUTH`, `PING` and `QUIT` pass. Every later request is
//!   still parsed, so a pipelined second `AUTH`, a `RESET` (which falls back
//!   to `default`) or an admin command is refused.
//! - [`nats`]: every op is parsed; `SUB`, `PUB` and `HPUB` (reply subjects
//!   included) must stay under the app's subject prefix.
//!
//! Every request the gate forwards to Redis or NATS is re-encoded from what
//! the gate parsed, so the server can never read a request differently from
//! the gate (no parser differential to smuggle a second command through).
//!
//! Resource use is bounded: a cap on concurrent connections per gate and
//! per peer ([`Limits`]), a deadline on the handshake (until the client is
//! admitted: Postgres until `ReadyForQuery`, Redis until authenticated,
//! NATS until `CONNECT`), a connect timeout towards the server, and
//! bounded buffers for everything the gate parses.

pub mod nats;
pub mod postgres;
pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Who a peer address belongs to, as far as the gates care.
pub trait Directory: Send + Sync + 'static {
    /// The grant of the machine whose address is `peer` (the machine's own
    /// IP: the gates see it unchanged, there is no SNAT).
    fn lookup(&self, peer: IpAddr) -> Option<Grant>;
}

/// What one machine may use.
#[derive(Clone, Debug)]
pub struct Grant {
    pub app: String,
    pub postgres: Option<PostgresGrant>,
    pub redis: Option<RedisGrant>,
    pub nats: Option<NatsGrant>,
}

/// The app's role and database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresGrant {
    pub user: String,
    pub database: String,
}

/// The app's Redis ACL user, and the prefix of every key and channel it
/// may touch (as recorded in its credentials: see
/// [`crate::ResourceKey::redis_prefix`]).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisGrant {
    pub user: String,
    pub password: String,
    pub prefix: String,
}

impl std::fmt::Debug for RedisGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGrant")
            .field("user", &self.user)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The app's NATS subject prefix, e.g. `hangar.app_3f9a0c1d2e4b5a69.`
/// (see [`crate::ResourceKey::pubsub_prefix`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsGrant {
    pub prefix: String,
}

/// Which protocol a gate speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Redis,
    Nats,
}

/// Bounds on what one gate lets its clients hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Concurrent connections through one gate.
    pub max_connections: usize,
    /// Concurrent connections from one peer address through one gate.
    pub max_per_peer: usize,
    /// From accept until the client is admitted (see the module docs).
    pub handshake_timeout: Duration,
    /// Connecting to the real server.
    pub connect_timeout: Duration,
    /// The most of one request the gate holds in memory: a Redis request's
    /// leading arguments (a whole request before `AUTH`), an inline
    /// command, a NATS `CONNECT` line. (A Postgres startup message is capped
    /// at 10 000 bytes, as Postgres caps it.)
    pub max_request_head: usize,
    /// The largest Redis bulk string after authentication (streamed, not
    /// held).
    pub redis_max_bulk: usize,
    /// The longest NATS op line other than `CONNECT`.
    pub nats_max_line: usize,
    /// The largest NATS payload (lowered to the server's `max_payload`).
    pub nats_max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            max_per_peer: 64,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_request_head: 64 << 10,
            redis_max_bulk: 512 << 20,
            nats_max_line: 4 << 10,
            nats_max_payload: 1 << 20,
        }
    }
}

/// Why a gated connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the handshake took longer than {0:?}")]
    Timeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("cannot reach the server at {addr}: {reason}")]
    Upstream { addr: SocketAddr, reason: String },
}

/// What every connection of one gate shares.
pub(crate) struct Shared {
    pub(crate) upstream: SocketAddr,
    pub(crate) limits: Limits,
    pub(crate) cancels: postgres::CancelKeys,
    peers: Mutex<HashMap<IpAddr, usize>>,
}

impl Shared {
    /// Connects to the real server, bounded by the connect timeout.
    pub(crate) async fn connect_upstream(&self) -> Result<TcpStream, GateError> {
        let addr = self.upstream;
        let stream = tokio::time::timeout(self.limits.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| GateError::Upstream {
                addr,
                reason: "connect timed out".into(),
            })?
            .map_err(|e| GateError::Upstream {
                addr,
                reason: e.to_string(),
            })?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Takes a slot for `peer`, or `None` when it has its share already.
    fn take_peer_slot(self: &Arc<Self>, peer: IpAddr) -> Option<PeerSlot> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let n = peers.entry(peer).or_insert(0);
        if *n >= self.limits.max_per_peer {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            shared: self.clone(),
            peer,
        })
    }
}

/// One of a peer's connection slots; given back when dropped.
struct PeerSlot {
    shared: Arc<Shared>,
    peer: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self
            .shared
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = peers.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                peers.remove(&self.peer);
            }
        }
    }
}

/// Serves one gate: accepts on `listener` (127.0.0.1:0, bound by the
/// caller), and for each connection looks the peer up, enforces the
/// protocol rule, then splices to `upstream` (the real server). Ends when
/// `shutdown` resolves, aborting the connections still open.
pub async fn serve(
    kind: Kind,
    listener: TcpListener,
    upstream: SocketAddr,
    directory: Arc<dyn Directory>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let total = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let shared = Arc::new(Shared {
        upstream,
        limits,
        cancels: postgres::CancelKeys::default(),
        peers: Mutex::new(HashMap::new()),
    });
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors, most likely: back off rather
                        // than spin.
                        tracing::warn!(?kind, error = %e, "gate: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let peer = addr.ip().to_canonical();
                let slots = match admit(&total, &shared, peer) {
                    Ok(slots) => slots,
                    Err(why) => {
                        tracing::info!(?kind, %peer, why, "gate: connection refused");
                        refuse_busy(kind, &stream, why);
                        continue;
                    }
                };
                let directory = directory.clone();
                let shared = shared.clone();
                tasks.spawn(async move {
                    let _slots = slots;
                    let _ = stream.set_nodelay(true);
                    let grant = directory.lookup(peer);
                    let result = match kind {
                        Kind::Postgres => postgres::handle(stream, peer, grant, &shared).await,
                        Kind::Redis => redis::handle(stream, grant, &shared).await,
                        Kind::Nats => nats::handle(stream, grant, &shared).await,
                    };
                    match result {
                        Ok(()) => tracing::debug!(?kind, %peer, "gate: connection closed"),
                        Err(e) => tracing::info!(?kind, %peer, error = %e, "gate: connection ended"),
                    }
                });
            }
        }
    }
    tasks.shutdown().await;
}

/// Takes a gate slot and a peer slot, or neither (and says which cap).
fn admit(
    total: &Arc<Semaphore>,
    shared: &Arc<Shared>,
    peer: IpAddr,
) -> Result<(OwnedSemaphorePermit, PeerSlot), &'static str> {
    let permit = (total.clone().try_acquire_owned())
        .map_err(|_| "too many connections through this gate")?;
    let slot = (shared.take_peer_slot(peer)).ok_or("too many connections from this machine")?;
    Ok((permit, slot))
}

/// Tells a client over the cap why it is closed, if its socket takes the
/// bytes at once (it is fresh, so it does); never waits.
fn refuse_busy(kind: Kind, stream: &TcpStream, why: &str) {
    let msg = format!("hangar: {why}");
    let bytes = match kind {
        Kind::Postgres => postgres::error_response("53300", &msg),
        Kind::Redis => format!("-ERR {msg}\r\n").into_bytes(),
        Kind::Nats => b"-ERR 'maximum connections exceeded'\r\n".to_vec(),
    };
    let _ = stream.try_write(&bytes);
}

/// The client side of a connection: requests in, and the server-bound
/// writer, flushed whenever the gate is about to wait on the client (so
/// pipelined requests go out together, and none waits in the buffer).
pub(crate) struct Inbound<R, W> {
    pub(crate) r: BufReader<R>,
    pub(crate) up: Option<BufWriter<W>>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Inbound<R, W> {
    /// Fills the read buffer (flushing first if it would wait); 0 at EOF.
    pub(crate) async fn fill(&mut self) -> std::io::Result<usize> {
        if self.r.buffer().is_empty()
            && let Some(up) = &mut self.up
        {
            up.flush().await?;
        }
        Ok(self.r.fill_buf().await?.len())
    }

    /// One line without its `\n` (and `\r`, required when `crlf`), at most
    /// `max` bytes; `None` at EOF before any byte.
    pub(crate) async fn line(
        &mut self,
        max: usize,
        crlf: bool,
    ) -> Result<Option<Vec<u8>>, GateError> {
        let mut line = Vec::new();
        loop {
            if self.fill().await? == 0 {
                return match line.is_empty() {
                    true => Ok(None),
                    false => Err(proto("the connection closed in a line")),
                };
            }
            let buf = self.r.buffer();
            let (end, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(&buf[..end]);
            self.r.consume(end + usize::from(done));
            if line.len() > max + 1 {
                return Err(proto(format!("a line longer than {max} bytes")));
            }
            if done {
                break;
            }
        }
        match line.last() {
            Some(b'\r') => {
                line.pop();
            }
            _ if crlf => return Err(proto("a line not ended by CRLF")),
            _ => {}
        }
        if line.len() > max {
            return Err(proto(format!("a line longer than {max} bytes")));
        }
        Ok(Some(line))
    }

    /// Passes `n` bytes to the server (`forward`), drops them, or (`hold`)
    /// returns them.
    pub(crate) async fn take(
        &mut self,
        mut n: usize,
        forward: bool,
        hold: bool,
    ) -> Result<Vec<u8>, GateError> {
        let mut held = Vec::new();
        while n > 0 {
            if self.fill().await? == 0 {
                return Err(proto("the connection closed in a payload"));
            }
            let Inbound { r, up } = self;
            let buf = r.buffer();
            let k = buf.len().min(n);
            if hold {
                held.extend_from_slice(&buf[..k]);
            } else if let (true, Some(up)) = (forward, up) {
                up.write_all(&buf[..k]).await?;
            }
            r.consume(k);
            n -= k;
        }
        Ok(held)
    }

    /// The `\r\n` that ends a payload.
    pub(crate) async fn crlf(&mut self) -> Result<(), GateError> {
        let mut end = [0u8; 2];
        for b in &mut end {
            if self.fill().await? == 0 {
                return Err(proto("the connection closed in a request"));
            }
            *b = self.r.buffer()[0];
            self.r.consume(1);
        }
        match &end {
            b"\r\n" => Ok(()),
            _ => Err(proto("a payload not ended by CRLF")),
        }
    }
}

pub(crate) fn proto(msg: impl Into<String>) -> GateError {
    GateError::Protocol(msg.into())
}

/// `s` with control characters replaced, safe inside a one-line reply.
pub(crate) fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Compares two secrets in time independent of their contents: both are
/// hashed first (so their lengths leak nothing either), then the digests
/// are compared without an early exit.
pub(crate) fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(secret_eq(b"s3cret", b"s3cret"));
        assert!(!secret_eq(b"s3cret", b"s3creT"));
        assert!(!secret_eq(b"", b"x"));
        assert!(secret_eq(b"", b""));
    }

    #[test]
    fn peer_slots_are_given_back() {
        let shared = Arc::new(Shared {
            upstream: "127.0.0.1:1".parse().unwrap(),
            limits: Limits {
                max_per_peer: 2,
                ..Limits::default()
            },
            cancels: postgres::CancelKeys::default(),
            peers: Mutex::new(HashMap::new()),
        });
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let a = shared.take_peer_slot(peer).unwrap();
        let _b = shared.take_peer_slot(peer).unwrap();
        assert!(shared.take_peer_slot(peer).is_none());
        assert!(shared.take_peer_slot("10.0.0.3".parse().unwrap()).is_some());
        drop(a);
        assert!(shared.take_peer_slot(peer).is_some());
    }

    #[test]
    fn replies_stay_on_one_line() {
        assert_eq!(one_line("a\r\nb"), "a??b");
    }
}
