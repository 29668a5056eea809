//! Keep-alive connections to upstreams, one pool per proxy worker thread.
//!
//! A worker's pool only ever holds connections whose driving task runs on
//! that worker's runtime, so a request and its upstream connection never
//! cross threads. A connection goes back to the pool when the response body
//! it carried has been read to its end ([`Lease`] dropped with the body);
//! a response abandoned half-way leaves its connection to close.
//!
//! The idle connections are bounded ([`PoolLimits`]): per upstream for each
//! worker, and in total for the whole edge (one counter shared by the
//! workers' pools); past a bound a finished connection is closed instead of
//! kept. [`Pool::reap`], run by the worker on a timer, closes those idle
//! longer than the idle timeout and those the upstream already closed, so
//! an idle pool shrinks to nothing and its descriptors come back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::deadline::{ProgressBody, caused_by_stall};
use crate::options::PoolLimits;

/// The body of a request on its way upstream.
pub(crate) type ReqBody = ProgressBody;

/// Bound on establishing an upstream TCP connection, so a blackholed
/// machine yields a 502 instead of hanging the client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an upstream exchange failed; its `Display` is one line, safe to show
/// to the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The TCP connect failed (refused, reset, unreachable).
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The TCP connect did not complete within [`CONNECT_TIMEOUT`].
    #[error("cannot connect: no answer within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    /// The HTTP exchange failed (handshake, write, or no valid response).
    #[error("{0}")]
    Http(#[source] hyper::Error),
    /// The client stopped sending the request body; the exchange was
    /// abandoned and the upstream connection closed.
    #[error("{0}")]
    ClientStalled(#[source] hyper::Error),
}

impl UpstreamError {
    /// A failed exchange, told apart by whose fault it was.
    fn exchange(err: hyper::Error) -> Self {
        if caused_by_stall(&err) {
            UpstreamError::ClientStalled(err)
        } else {
            UpstreamError::Http(err)
        }
    }
}

/// A failed [`Pool::send`], handing the request back when it certainly
/// never reached the upstream.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub(crate) struct SendError {
    /// What failed; the client's 502 names it if no other machine takes
    /// the request.
    #[source]
    pub(crate) error: UpstreamError,
    /// The request, when not a byte of it was written (the connect failed or
    /// timed out, or the new connection closed before taking it), so the
    /// caller may try another upstream. `None` once it may have been sent:
    /// a sent request never goes to another upstream (only the one resend
    /// of a safe request in [`Pool::send`]).
    pub(crate) unsent: Option<Request<ReqBody>>,
}

impl SendError {
    /// A failure before the request was handed to any connection.
    fn unsent(error: UpstreamError, req: Request<ReqBody>) -> Self {
        SendError {
            error,
            unsent: Some(req),
        }
    }

    /// A failure after the request may have been written.
    fn sent(error: UpstreamError) -> Self {
        SendError {
            error,
            unsent: None,
        }
    }
}

/// An idle connection and when it was last used.
struct Idle {
    /// The connection's request handle; its driver task runs on this worker.
    sender: SendRequest<ReqBody>,
    /// When it was handed back, for the idle timeout.
    since: Instant,
}

/// One worker's upstream connections, keyed by upstream address. The lock
/// is only ever taken by the worker's own thread, so it is uncontended.
pub(crate) struct Pool {
    /// Idle keep-alive connections per upstream, most recently used last.
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    limits: PoolLimits,
    /// Idle connections in every worker's pool: this pool adds one before
    /// it keeps a connection (refusing past `limits.idle_total`) and takes
    /// one off for each it lets go.
    idle_total: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// A connection on loan for one exchange; hand it back with
/// [`Pool::give_back`] once the response body has ended.
pub(crate) struct Lease {
    /// The upstream the connection goes to: the pool's key on return.
    pub(crate) addr: SocketAddr,
    /// The connection's request handle.
    pub(crate) sender: SendRequest<ReqBody>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("addr", &self.addr).finish()
    }
}

impl Pool {
    /// An empty pool counting its idle connections in `idle_total` (shared
    /// by all the workers' pools).
    pub(crate) fn new(limits: PoolLimits, idle_total: Arc<AtomicUsize>) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            limits,
            idle_total,
        }
    }

    /// Sends `req` to `addr` over a pooled connection, or a new one.
    ///
    /// A pooled connection may have been closed by the upstream a moment
    /// before the request went out on it. If hyper hands the request back
    /// (none of it written), it goes out on a new connection. If it was
    /// written but the connection ended without an answer, it goes out
    /// again only when that is safe: a `GET`, `HEAD`, `OPTIONS` or `TRACE`
    /// without a body (RFC 9110 §9.2.2), sent from a copy of its head kept
    /// for the purpose; any other request is never repeated. When the new
    /// connection cannot be made (or closes before taking the request), the
    /// error hands the request back in [`SendError::unsent`] so the caller
    /// can try another upstream.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        req: Request<ReqBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let mut req = req;
        if let Some(mut sender) = self.checkout(addr) {
            let replay = replay_copy(&req);
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease { addr, sender })),
                Err(mut err) => match (err.take_message(), replay) {
                    (Some(unsent), _) => req = unsent,
                    (None, Some(copy)) => {
                        tracing::debug!(
                            %addr,
                            err = %err.error(),
                            "pooled connection closed under a safe request: sending it again"
                        );
                        req = copy;
                    }
                    (None, None) => {
                        return Err(SendError::sent(UpstreamError::exchange(err.into_error())));
                    }
                },
            }
        }
        let mut sender = match connect(addr).await {
            Ok(sender) => sender,
            Err(error) => return Err(SendError::unsent(error, req)),
        };
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, Lease { addr, sender })),
            // hyper hands the message back only if none of it was written.
            Err(mut err) => match err.take_message() {
                Some(unsent) => Err(SendError::unsent(
                    UpstreamError::Http(err.into_error()),
                    unsent,
                )),
                None => Err(SendError::sent(UpstreamError::exchange(err.into_error()))),
            },
        }
    }

    /// A ready idle connection to `addr`, dropping closed and stale ones.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<ReqBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(conn) = list.pop() {
            self.idle_total.fetch_sub(1, Ordering::Relaxed);
            if conn.sender.is_ready() && conn.since.elapsed() < self.limits.idle_timeout {
                return Some(conn.sender);
            }
            // Closed, busy finishing its last exchange, or stale: let it go.
        }
        None
    }

    /// Returns a connection whose exchange is complete: kept if it is
    /// still open and both bounds have room, else closed.
    pub(crate) fn give_back(&self, lease: Lease) {
        if !lease.sender.is_ready() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(lease.addr).or_default();
        if list.len() >= self.limits.idle_per_upstream {
            return;
        }
        let max = self.limits.idle_total;
        let counted = self
            .idle_total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            });
        if counted.is_ok() {
            list.push(Idle {
                sender: lease.sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes the idle connections past the idle timeout or already closed
    /// by their upstream; returns how many were let go.
    pub(crate) fn reap(&self) -> usize {
        let timeout = self.limits.idle_timeout;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let mut reaped = 0;
        idle.retain(|_, list| {
            list.retain(|conn| {
                let keep = !conn.sender.is_closed() && conn.since.elapsed() < timeout;
                reaped += usize::from(!keep);
                keep
            });
            !list.is_empty()
        });
        drop(idle);
        self.idle_total.fetch_sub(reaped, Ordering::Relaxed);
        reaped
    }

    /// How often the worker should call [`Pool::reap`]: a quarter of the
    /// idle timeout (so a connection outlives it by at most a quarter),
    /// at least every 10 ms and at most every 5 s.
    pub(crate) fn reap_interval(&self) -> Duration {
        (self.limits.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(|p| p.into_inner());
        let held: usize = idle.values().map(Vec::len).sum();
        self.idle_total.fetch_sub(held, Ordering::Relaxed);
    }
}

/// A copy of `req` to send again if its first connection dies under it,
/// for a safe request without a body; `None` for any other.
fn replay_copy(req: &Request<ReqBody>) -> Option<Request<ReqBody>> {
    let safe = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if !safe || !http_body::Body::is_end_stream(req.body()) {
        return None;
    }
    let mut copy = Request::new(ProgressBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Opens a connection to `addr` and spawns its driver on this worker.
async fn connect(addr: SocketAddr) -> Result<SendRequest<ReqBody>, UpstreamError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout)?
        .map_err(UpstreamError::Connect)?;
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%addr, %err, "cannot set TCP_NODELAY upstream");
    }
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Http)?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(%addr, %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
