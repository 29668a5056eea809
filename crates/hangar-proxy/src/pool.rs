//! Keep-alive connections to upstreams, one pool per proxy worker thread.
//!
//! A worker's pool only ever holds connections whose driving task runs on
//! that worker's runtime, so a request and its upstream connection never
//! cross threads. A connection goes back to the pool when the response body
//! it carried has been read to its end ([`Lease`] dropped with the body);
//! a response abandoned half-way leaves its connection to close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long an unused upstream connection stays in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream; generous so a burst of concurrent
/// requests finds warm connections on its next round.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;
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
    /// a sent request is never replayed.
    pub(crate) unsent: Option<Request<Incoming>>,
}

impl SendError {
    /// A failure before the request was handed to any connection.
    fn unsent(error: UpstreamError, req: Request<Incoming>) -> Self {
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
    sender: SendRequest<Incoming>,
    /// When it was handed back, for [`IDLE_TIMEOUT`].
    since: Instant,
}

/// One worker's upstream connections, keyed by upstream address. The lock
/// is only ever taken by the worker's own thread, so it is uncontended.
#[derive(Default)]
pub(crate) struct Pool {
    /// Idle keep-alive connections per upstream, most recently used last.
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
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
    pub(crate) sender: SendRequest<Incoming>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("addr", &self.addr).finish()
    }
}

impl Pool {
    /// Sends `req` to `addr` over a pooled connection, or a new one. A
    /// request the pooled connection could not take (the upstream closed it
    /// while idle) is sent again on a new connection; one that was sent is
    /// never repeated. When the new connection cannot be made (or closes
    /// before taking the request), the error hands the request back in
    /// [`SendError::unsent`] so the caller can try another upstream.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let mut req = req;
        if let Some(mut sender) = self.checkout(addr) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease { addr, sender })),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::sent(UpstreamError::Http(err.into_error()))),
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
                None => Err(SendError::sent(UpstreamError::Http(err.into_error()))),
            },
        }
    }

    /// A ready idle connection to `addr`, dropping closed and stale ones.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(conn) = list.pop() {
            if conn.sender.is_ready() && conn.since.elapsed() < IDLE_TIMEOUT {
                return Some(conn.sender);
            }
            // Closed, busy finishing its last exchange, or stale: let it go.
        }
        None
    }

    /// Returns a connection whose exchange is complete.
    pub(crate) fn give_back(&self, lease: Lease) {
        if !lease.sender.is_ready() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(lease.addr).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(Idle {
                sender: lease.sender,
                since: Instant::now(),
            });
        }
    }
}

/// Opens a connection to `addr` and spawns its driver on this worker.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Incoming>, UpstreamError> {
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
