//! The edge proxy: every HTTP request to `<app>.<domain>` enters here and is
//! forwarded to one of the app's machines.
//!
//! # Request lifecycle
//!
//! 1. **Accept.** [`serve`] runs one worker thread per CPU, each with its
//!    own single-threaded runtime accepting from the shared listening socket
//!    (TCP_NODELAY on), serving each connection with hyper's HTTP/1.1
//!    server, keep-alive on, under the connection caps and deadlines of
//!    [`EdgeOptions`] (see "Bounds" below).
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
//!    → the [`hangar_core::route::Waker`] starts another machine. A route
//!    replaced by a publish while the slot was claimed is picked again on
//!    the current one, so a removed machine gets no new request.
//! 5. **Forward.** The request URI is sent in origin form (`/path?query`);
//!    hop-by-hop headers go; `X-Forwarded-For/-Proto/-Host` are set; the
//!    client's `Host` stays as sent. The worker's own pool of hyper HTTP/1
//!    connections carries it: kept alive, handed back once the response
//!    body has ended, and a request a stale pooled connection could not take
//!    goes out again on a new one. If connecting to the machine fails
//!    (refused, reset, timed out: the request certainly unsent), the
//!    request is tried on up to two other machines of the app's current
//!    route (counted in `hangar_proxy_failovers_total`). A request that
//!    may have been sent is never replayed, with one exception: a safe
//!    request without a body (`GET`, `HEAD`, `OPTIONS`, `TRACE`) that a
//!    pooled connection closed under, unanswered, goes out once more on a
//!    new connection to the same machine (RFC 9110 §9.2.2). Bodies stream
//!    in both directions: the client's `Incoming` body is the upstream
//!    request body and the upstream's `Incoming` body is the response body.
//! 6. **Answer.** Hop-by-hop headers are stripped from the response. A
//!    failure before the upstream answered is a 502 naming the app and a
//!    short reason. The app's activity (in-flight count, last request) is
//!    held from the pick until the response body has finished streaming;
//!    the node's idle loop reads it through [`hangar_core::route::Activity`].
//!    So does its drain: each machine's in-flight count outlives the
//!    machine's removal from the route (a draining list on the route, kept
//!    while requests to it are in flight), so the node can wait for
//!    `in_flight_to` to reach 0 before it stops a replaced machine.
//!
//! # Design choices
//!
//! - The node agent publishes routes through [`hangar_core::route::RouteSink`]
//!   (whole sets, never deltas); writes copy the map, reads never lock.
//! - Errors are typed ([`ProxyError`]); routing errors carry their status and
//!   their `Display` is the text/plain body the client sees.
//! - No allocation per request beyond what forwarding needs: the URI is
//!   kept as the client sent it, the client IP header value is rendered once
//!   per connection, and bodies are never buffered.
//! - Nothing crosses threads per request: a worker's client connections,
//!   upstream connections and their tasks all live on that worker (the
//!   node's wakes run on the node's runtime).
//! - Shutdown is graceful: stop accepting, let in-flight requests finish
//!   (bounded by [`SHUTDOWN_GRACE`]), then drop what is left.
//!
//! # Bounds
//!
//! An anonymous client can hold nothing for ever ([`EdgeOptions`]):
//!
//! - connections: caps in total and per client address
//!   ([`hangar_core::admission`]), shared by all workers;
//! - headers: [`Timeouts::header`] to send a request's head, counted from
//!   when the connection waits for one, so it is also the keep-alive idle
//!   timeout (hyper starts the clock as soon as a connection is ready for
//!   its next request, not at its first byte);
//! - bodies: [`Timeouts::body_progress`] without a byte of request body
//!   while the upstream waits for one (408 and `Connection: close` if the
//!   upstream has not answered, else the connection is closed; either way
//!   the upstream request is cancelled), and as long for a write to the
//!   client to stay blocked (a client that stopped reading);
//! - tunnels: [`Timeouts::tunnel_idle`] without a byte either way closes
//!   both sides of an upgraded connection;
//! - the upstream pool: [`PoolLimits`] idle connections per upstream and
//!   worker, and in total, each closed after its idle timeout by a reaper
//!   on the worker's timer.
//!
//! A safe request riding a reused connection keeps a copy of its head (one
//! header map clone) so it can be sent again; that is the one allocation
//! per request the pool adds.
//!
//! # Layout
//!
//! `forward` (one request's trip), `table` (routes, picks, activity),
//! `pool` (upstream connections), `deadline` (body and write progress),
//! `tunnel` (upgraded connections), `options` ([`EdgeOptions`] and its
//! bounds), `trust` (trusted proxy networks), `error` ([`ProxyError`]).
//!
//! Protocol upgrades (WebSocket): a request with `Connection: upgrade` keeps
//! its `Upgrade` header; when the upstream answers 101 the two connections
//! are joined byte for byte, and the tunnel counts as activity while open.

mod accept;
mod admin;
mod deadline;
mod error;
mod forward;
mod options;
mod pool;
mod table;
mod tls;
mod trust;
mod tunnel;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use hangar_core::admission::Admission;
use http::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use accept::accept_admitted;
pub use admin::{
    ADMIN_HEADER_TIMEOUT, ADMIN_LIMITS, AdminOptions, serve_metrics, serve_metrics_with,
};
pub use deadline::{BodyStalled, ProgressBody, RequestBodyError};
pub use error::ProxyError;
pub use options::{DEFAULT_LIMITS, EdgeOptions, HEADER_TIMEOUT, MAX_TIMEOUT, PoolLimits, Timeouts};
pub use table::{RouteTable, normalize};
pub use tls::{ACME_TLS_ALPN, BoxFuture, Hello, Https, TlsPolicy, tls_accept};
pub use trust::IpNet;

use forward::{ConnCtx, Shared};

/// How long in-flight connections may run on after shutdown is requested.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves until `shutdown` resolves; then stops accepting, lets in-flight
/// connections finish (bounded, [`SHUTDOWN_GRACE`]), returns.
///
/// Runs one worker per CPU ([`std::thread::available_parallelism`]); see
/// [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    routes: Arc<RouteTable>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    serve_with(listener, routes, EdgeOptions::default(), shutdown).await
}

/// [`serve`] with `options`.
///
/// Thread per core, as nginx does it: each worker is an OS thread with its
/// own single-threaded tokio runtime, accepting from the same listening
/// socket, with its own upstream connection pool. A request's client
/// connection, its upstream connection and every wake-up between them stay
/// on one thread, so forwarding costs no cross-thread hand-off. The caller's
/// runtime only waits for `shutdown`.
pub async fn serve_with(
    listener: TcpListener,
    routes: Arc<RouteTable>,
    options: EdgeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    serve_edge(listener, routes, options, None, shutdown).await
}

/// [`serve_with`] on a TLS port: each connection's handshake is finished
/// with the config `policy` chooses for its ClientHello (a refused one is
/// closed), then served as HTTP/2 (ALPN `h2`) or HTTP/1.1, with
/// `X-Forwarded-Proto: https` and, for apps that chose it, HSTS.
pub async fn serve_tls(
    listener: TcpListener,
    routes: Arc<RouteTable>,
    options: EdgeOptions,
    policy: Arc<dyn TlsPolicy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    serve_edge(listener, routes, options, Some(policy), shutdown).await
}

async fn serve_edge(
    listener: TcpListener,
    routes: Arc<RouteTable>,
    options: EdgeOptions,
    tls: Option<Arc<dyn TlsPolicy>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ProxyError> {
    options.check()?;
    let https = options.https.clone();
    let workers = options.workers;
    let (timeouts, pool_limits) = (options.timeouts, options.pool);
    let idle_total = Arc::new(AtomicUsize::new(0));
    let trusted: Arc<[IpNet]> = options.trusted_proxies.into();
    let admission = Admission::new(options.limits);
    let local = listener.local_addr().map_err(ProxyError::Listener)?;
    let listener = listener.into_std().map_err(ProxyError::Listener)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %local, domain = routes.domain(), workers, scheme, "proxy listening");

    // `true` is sent once, on shutdown; every worker and connection watches it.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut finished = Vec::new();
    for n in 0..workers.max(1) {
        let socket = listener.try_clone().map_err(ProxyError::Listener)?;
        let (routes, stop) = (Arc::clone(&routes), stop_rx.clone());
        let trusted = Arc::clone(&trusted);
        let admission = Arc::clone(&admission);
        let pool = pool::Pool::new(pool_limits, Arc::clone(&idle_total));
        let (https, tls) = (https.clone(), tls.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name(format!("hangar-proxy-{n}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(err) => {
                        tracing::error!(%err, "proxy worker cannot start its runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => {
                            let shared = Arc::new(Shared {
                                routes,
                                pool,
                                trusted,
                                timeouts,
                                https,
                                tls,
                            });
                            worker(listener, shared, admission, stop).await
                        }
                        Err(err) => tracing::error!(%err, "proxy worker cannot watch the listener"),
                    }
                });
                let _ = done_tx.send(());
            });
        if let Err(err) = spawned {
            let _ = stop_tx.send(true);
            return Err(ProxyError::Listener(err));
        }
        finished.push(done_rx);
    }
    drop(listener);
    shutdown.await;
    tracing::info!("proxy shutting down: draining connections");
    let _ = stop_tx.send(true);
    for done in finished {
        // An Err means the worker thread ended without saying so (a panic,
        // already logged): nothing left to wait for.
        let _ = done.await;
    }
    tracing::info!("proxy stopped");
    Ok(())
}

/// One worker: accepts and serves connections on the current thread until
/// `stop` turns true, then drains them (bounded by [`SHUTDOWN_GRACE`]).
async fn worker(
    listener: TcpListener,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = http1::Builder::new();
    // hyper starts the header clock whenever the connection waits for a
    // request, so it is also the keep-alive idle timeout.
    http.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(shared.timeouts.header);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    // Streams at once per connection, and a ping to find dead peers: an
    // HTTP/2 connection's requests share its caps and deadlines otherwise.
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .keep_alive_interval(shared.timeouts.header)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let builders = Arc::new((http, h2));
    let mut reap = tokio::time::interval(shared.pool.reap_interval());
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            _ = reap.tick() => {
                let reaped = shared.pool.reap();
                if reaped > 0 {
                    tracing::trace!(reaped, "idle upstream connections closed");
                }
            }
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
            (stream, peer, admitted) = accept_admitted(&listener, &admission, "client") => {
                let conn = serve_connection(&builders, &shared, stream, peer, stop.clone());
                connections.spawn(async move {
                    let _admitted = admitted;
                    conn.await
                });
            }
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "grace period over: closing remaining connections"
        );
        connections.shutdown().await;
    }
}

/// HTTP/2 streams one connection may have open at once.
const H2_MAX_STREAMS: u32 = 128;
/// Largest HTTP/2 header block, decoded (as hyper's HTTP/1 default).
const H2_MAX_HEADER_LIST: u32 = 64 << 10;
/// How long an HTTP/2 keep-alive ping may go unanswered.
const H2_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

type Builders = Arc<(http1::Builder, http2::Builder<TokioExecutor>)>;

/// Builds the future serving one client connection until it closes or, after
/// shutdown is signalled, until its in-flight request is answered. On the
/// TLS port the handshake comes first.
fn serve_connection(
    builders: &Builders,
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %err, "cannot set TCP_NODELAY");
    }
    let client_ip = HeaderValue::from_str(&peer.ip().to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let trusted = shared.trusted.iter().any(|n| n.contains(peer.ip()));
    let ctx = Arc::new(ConnCtx {
        shared: Arc::clone(shared),
        client_ip,
        trusted,
    });
    let io = deadline::StallIo::new(stream, shared.timeouts.body_progress);
    let (builders, shared) = (Arc::clone(builders), Arc::clone(shared));
    async move {
        let Some(policy) = &shared.tls else {
            return serve_http1(&builders.0, io, ctx, peer, stop).await;
        };
        match tls::handshake(io, &**policy, shared.timeouts.header).await {
            Some(tls::Negotiated::Http1(tls)) => {
                serve_http1(&builders.0, tls, ctx, peer, stop).await
            }
            Some(tls::Negotiated::Http2(tls)) => {
                serve_http2(&builders.1, tls, ctx, peer, stop).await
            }
            None => {}
        }
    }
}

async fn serve_http1<I>(
    http: &http1::Builder,
    io: I,
    ctx: Arc<ConnCtx>,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| forward::handle(Arc::clone(&ctx), req));
    let conn = http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
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

async fn serve_http2<I>(
    http: &http2::Builder<TokioExecutor>,
    io: I,
    ctx: Arc<ConnCtx>,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| forward::handle(Arc::clone(&ctx), req));
    let conn = http.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, %err, "HTTP/2 client connection ended with an error");
    }
}
