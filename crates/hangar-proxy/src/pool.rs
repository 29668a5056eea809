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
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("cannot connect: no answer within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error("{0}")]
    Http(#[source] hyper::Error),
}

/// An idle connection and when it was last used.
struct Idle {
    sender: SendRequest<Incoming>,
    since: Instant,
}

/// One worker's upstream connections, keyed by upstream address. The lock
/// is only ever taken by the worker's own thread, so it is uncontended.
#[derive(Default)]
pub(crate) struct Pool {
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
    pub(crate) addr: SocketAddr,
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
    /// never repeated.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let mut req = req;
        if let Some(mut sender) = self.checkout(addr) {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease { addr, sender })),
                Err(mut err) => match err.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(UpstreamError::Http(err.into_error())),
                },
            }
        }
        let mut sender = connect(addr).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Http)?;
        Ok((resp, Lease { addr, sender }))
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
