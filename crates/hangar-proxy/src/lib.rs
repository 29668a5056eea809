//! The edge proxy: every HTTP request to `<app>.<domain>` enters here and is
//! forwarded to one of the app's machines.
//!
//! # Request lifecycle
//!
//! 1. **Accept.** [`serve`] accepts TCP connections (TCP_NODELAY on) and
//!    serves each with hyper's HTTP/1.1 server, keep-alive on.
//! 2. **Host.** The app is named by the `Host` header (or, failing that, the
//!    authority of an absolute-form URI), normalised: lowercase, `:port` and
//!    one trailing dot stripped. Exactly one label before the domain is an
//!    app name; anything else is a 404 that says which domain Hangar serves.
//! 3. **Route lookup.** [`RouteTable`] maps the app name to its current
//!    upstream set with a lock-free [`arc_swap::ArcSwap`] load and one hash
//!    lookup. Unknown app → 404. A known app with no machine is woken through
//!    the [`hangar_core::route::Waker`] (one wake shared by all waiting
//!    requests, bounded by 30 s); if that fails, or no waker is set, 503 with
//!    `Retry-After: 5`.
//! 4. **Upstream pick.** The machine with the fewest requests in flight
//!    (ties round-robin), claimed with one atomic compare-and-swap so its
//!    hard concurrency limit always holds; all at the limit → the app's
//!    bounded wait queue, then 503 + `Retry-After: 1`; past the soft limit
//!    → the [`hangar_core::route::Waker`] starts another machine.
//! 5. **Forward.** The request URI becomes `http://<upstream><path?query>`;
//!    hop-by-hop headers go; `X-Forwarded-For/-Proto/-Host` are set; the
//!    client's `Host` stays as sent. One shared pooled hyper client sends it,
//!    so upstream connections are kept alive and reused. Bodies stream in
//!    both directions: the client's `Incoming` body is the upstream request
//!    body and the upstream's `Incoming` body is the response body.
//! 6. **Answer.** Hop-by-hop headers are stripped from the response. A
//!    failure before the upstream answered is a 502 naming the app and a
//!    short reason. The app's activity (in-flight count, last request) is
//!    held from the pick until the response body has finished streaming;
//!    the node's idle loop reads it through [`hangar_core::route::Activity`].
//!
//! # Design choices
//!
//! - The node agent publishes routes through [`hangar_core::route::RouteSink`]
//!   (whole sets, never deltas); writes copy the map, reads never lock.
//! - Errors are typed ([`ProxyError`]); routing errors carry their status and
//!   their `Display` is the text/plain body the client sees.
//! - No allocation per request beyond what forwarding needs: upstream
//!   authorities are pre-rendered when a route is set, the client IP header
//!   value once per connection, and bodies are never buffered.
//! - Shutdown is graceful: stop accepting, let in-flight requests finish
//!   (bounded by [`SHUTDOWN_GRACE`]), then drop what is left.
//!
//! Protocol upgrades (WebSocket): a request with `Connection: upgrade` keeps
//! its `Upgrade` header; when the upstream answers 101 the two connections
//! are joined byte for byte, and the tunnel counts as activity while open.

mod error;
mod forward;
mod table;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use error::ProxyError;
pub use table::RouteTable;

use forward::{ConnCtx, Shared};

/// How long in-flight connections may run on after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Pause after an accept error that is not about one connection (e.g. out of
/// file descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves until `shutdown` resolves; then stops accepting, lets in-flight
/// connections finish (bounded, [`SHUTDOWN_GRACE`]), returns.
pub async fn serve(
    listener: TcpListener,
    routes: Arc<RouteTable>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    let local = listener.local_addr().map_err(ProxyError::Listener)?;
    tracing::info!(addr = %local, domain = routes.domain(), "proxy listening");

    let shared = Arc::new(Shared {
        routes,
        client: forward::upstream_client(),
    });
    let mut http = http1::Builder::new();
    http.keep_alive(true).timer(TokioTimer::new());

    // `true` is sent once, on shutdown; every connection task watches it.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // Reap finished connection tasks so the set stays the size of
            // the live connections.
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                match done {
                    Err(err) if err.is_panic() => {
                        tracing::error!(%err, "connection task panicked");
                    }
                    _ => {}
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let conn = serve_connection(&http, &shared, stream, peer, stop_rx.clone());
                    connections.spawn(conn);
                }
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    if !is_per_connection_error(&err) {
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                }
            },
        }
    }

    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "proxy shutting down: draining connections"
    );
    // Receivers live in the tasks, so this cannot fail while any is running;
    // if none is, there is nothing to tell.
    let _ = stop_tx.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "grace period over: closing remaining connections"
        );
        connections.shutdown().await;
    }
    tracing::info!("proxy stopped");
    Ok(())
}

/// Errors that concern only the connection being accepted: retry at once.
/// Anything else (EMFILE, ENFILE, ENOMEM, ENOBUFS, …) gets a short back-off.
fn is_per_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Builds the future serving one client connection until it closes or, after
/// shutdown is signalled, until its in-flight request is answered.
fn serve_connection(
    http: &http1::Builder,
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %err, "cannot set TCP_NODELAY");
    }
    let client_ip = HeaderValue::from_str(&peer.ip().to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let ctx = Arc::new(ConnCtx {
        shared: Arc::clone(shared),
        client_ip,
    });
    let service = service_fn(move |req| forward::handle(Arc::clone(&ctx), req));
    let conn = http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    async move {
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(err) = result {
            tracing::debug!(%peer, %err, "client connection ended with an error");
        }
    }
}

/// Serves `GET /metrics` (Prometheus text format) on the admin listener
/// until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    routes: Arc<RouteTable>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    use http::{Response, StatusCode};
    use http_body_util::Full;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    tracing::warn!(%err, "admin accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let routes = Arc::clone(&routes);
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let routes = Arc::clone(&routes);
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(bytes::Bytes::from(routes.render_metrics())))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(bytes::Bytes::from_static(
                                b"only /metrics here\n",
                            )))
                    };
                    Ok::<_, std::convert::Infallible>(
                        resp.unwrap_or_else(|_| Response::new(Full::new(bytes::Bytes::new()))),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
